"""`fastvi report`: one self-contained HTML page per saved model, checked by its
images (each a valid, non-blank PNG), its summary, its refusals, and in a real
headless Chromium (screenshot not blank, every image decoded by the browser)."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip(
    "matplotlib", reason='fastvi report needs matplotlib (pip install "fastvi[plot]")'
)
matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402

from fastvi import (  # noqa: E402
    BayesianGaussianMixture,
    BayesianLogisticRegression,
    LatentDirichletAllocation,
    UnivariateGaussian,
    VBLinearRegression,
    VBLogisticRegression,
)
from fastvi.__main__ import main  # noqa: E402

_PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Saved models and their data files."""
    d = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    out = {}
    X = np.concatenate([rng.normal(c, 0.6, (150, 2)) for c in (-3.0, 0.0, 3.0)])
    X[:, 1] += 0.5 * X[:, 0]
    gmm = BayesianGaussianMixture(n_components=5, max_iter=500, random_state=0).fit(X)
    gmm.save(d / "gmm.npz")
    np.save(d / "gmm_data.npy", X)
    Xr = rng.standard_normal((200, 3))
    w = np.array([1.0, -1.5, 0.0])
    y = Xr @ w + rng.standard_normal(200)
    VBLinearRegression().fit(Xr, y).save(d / "linear.npz")
    np.save(d / "linear_data.npy", np.column_stack([Xr, y]))
    yb = (Xr @ w + rng.logistic(size=200) > 0).astype(float)
    VBLogisticRegression().fit(Xr, yb).save(d / "logistic.npz")
    BayesianLogisticRegression(random_state=0).fit(Xr, yb).save(d / "sgvi.npz")
    np.save(d / "logistic_data.npy", np.column_stack([yb, Xr]))  # y first
    counts = rng.poisson(1.0, (60, 25)).astype(float)
    LatentDirichletAllocation(
        n_components=3, evaluate_every=1, max_iter=4, random_state=0
    ).fit(counts).save(d / "lda.npz")
    LatentDirichletAllocation(n_components=3, max_iter=2, random_state=0).fit(
        counts
    ).save(d / "lda_quiet.npz")
    np.save(d / "lda_data.npy", counts)
    (d / "vocab.txt").write_text("".join(f"token{v}\n" for v in range(25)))
    UnivariateGaussian().fit(rng.normal(size=40)).save(d / "ug.npz")
    for name in os.listdir(d):
        out[name] = str(d / name)
    out["dir"] = str(d)
    return out


def _pngs(page):
    """Decoded PNG images of the page (asserting each is a valid, non-blank PNG)."""
    images = []
    for data in _PNG.findall(page):
        raw = base64.b64decode(data, validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        image = mpimg.imread(io.BytesIO(raw), format="png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.02  # not a blank picture
        images.append(image)
    return images


def _report(files, tmp_path, model, *args):
    out = tmp_path / "report.html"
    code = main(["report", files[model], *args, "-o", str(out), "--quiet"])
    assert code == 0
    return out.read_text(encoding="utf-8")


def _self_contained(page):
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "<link" not in page
    assert "http://" not in page and "https://" not in page
    sources = re.findall(r'src="([^"]{0,30})', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


@pytest.mark.parametrize(
    "model, data, extra, n_images, texts",
    [
        (
            "gmm.npz",
            "gmm_data.npy",
            [],
            2,
            ["components with weight", "Clusters.", "converged"],
        ),
        ("gmm.npz", None, [], 2, ["Components by weight", "final lower bound"]),
        (
            "linear.npz",
            "linear_data.npy",
            [],
            4,
            [
                "score(X, y)",
                "Predictive interval coverage.",
                "converged",
                "ELPD by PSIS-LOO",
                "PSIS-LOO k-hat per observation.",
            ],
        ),
        (
            "logistic.npz",
            "logistic_data.npy",
            ["--target-column", "0"],
            4,
            ["Calibration.", "score(X, y)", "converged", "ELPD by PSIS-LOO"],
        ),
        (
            "sgvi.npz",
            "logistic_data.npy",
            ["--target-column", "0"],
            4,
            ["PSIS k-hat of q", "final ELBO (mean of the last", "ELPD by PSIS-LOO"],
        ),
        (
            "lda.npz",
            "lda_data.npy",
            ["--vocabulary", "vocab.txt"],
            2,
            ["perplexity of the data", "token", "Topics."],
        ),
        (
            "ug.npz",
            None,
            [],
            1,
            ["exact log evidence - lower bound", "E[mu]", "converged"],
        ),
    ],
)
def test_report_pictures_and_summary(
    files, tmp_path, model, data, extra, n_images, texts
):
    extra = [files[a] if a in files else a for a in extra]
    args = ([files[data]] if data else []) + extra
    page = _report(files, tmp_path, model, *args)
    _self_contained(page)
    assert len(_pngs(page)) == n_images
    for text in ("iterations (n_iter_)", "Parameters", *texts):
        assert text in page, text
    assert "Notes" not in page  # nothing failed or warned


def test_report_notes_a_picture_it_cannot_draw(files, tmp_path):
    page = _report(files, tmp_path, "lda_quiet.npz")
    assert len(_pngs(page)) == 1  # the topics; no trace without evaluate_every
    assert "trace of the fit: not drawn" in page and "evaluate_every &gt; 0" in page


def test_report_json_summary(files, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", files["linear.npz"], "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["class"] == "VBLinearRegression" and summary["images"] == 2
    assert summary["bytes"] == len(out.read_bytes())


@pytest.mark.parametrize(
    "args, message",
    [
        (["gmm.npz", "-o", "gmm.npz"], "would overwrite an input"),
        (["gmm.npz", "linear_data.npy", "-o", "{out}"], "has 4 columns"),
        (["linear.npz", "gmm_data.npy", "-o", "{out}"], "needs 4: its 3 features"),
        (["gmm_data.npy", "-o", "{out}"], "gmm_data.npy"),
        (["gmm.npz", "-o", "{missing}/r.html"], "directory does not exist"),
        (["lda.npz", "--vocabulary", "vocab_short", "-o", "{out}"], "2 words"),
    ],
)
def test_report_refusals_are_one_line_and_write_nothing(
    files, tmp_path, capsys, args, message
):
    (tmp_path / "vocab_short").write_text("a\nb\n")
    out = tmp_path / "r.html"
    names = {"out": str(out), "missing": str(tmp_path / "nope")}
    argv = []
    for a in args:
        if a in files:
            a = files[a]
        elif a == "vocab_short":
            a = str(tmp_path / a)
        argv.append(a.format(**names))
    assert main(["report", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastvi: error:") and message in err
    assert not out.exists()


def test_report_without_matplotlib_names_the_extra(
    files, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "r.html"
    assert main(["report", files["gmm.npz"], "-o", str(out)]) == 2
    assert 'pip install "fastvi[plot]"' in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------ a real browser
def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no Chromium on PATH (CI installs Debian's 'chromium' package with apt-get "
        "when it runs as root); the browser check of the report is skipped"
    )


def _browser(tmp_path, *args):
    command = [
        _chromium(),
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--virtual-time-budget=10000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--no-sandbox")  # Chromium refuses to run as root otherwise
    run = subprocess.run(
        command + list(args), capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


_COUNT_IMAGES = (
    "<script>window.addEventListener('load', () => { document.title = 'images ' + "
    "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length + "
    "' of ' + document.images.length; });</script></body>"
)


def _images_loaded(tmp_path, page, name):
    """'images N of M': how many of the page's images the browser decoded."""
    probe = tmp_path / name
    probe.write_text(page.replace("</body>", _COUNT_IMAGES), encoding="utf-8")
    dom = _browser(tmp_path, "--dump-dom", probe.as_uri())
    found = re.search(r"<title>(images \d+ of \d+)</title>", dom)
    assert found, dom[:500]
    return found.group(1)


def test_report_in_headless_chromium(files, tmp_path):
    page = _report(files, tmp_path, "gmm.npz", files["gmm_data.npy"])
    report = tmp_path / "report.html"
    shot = tmp_path / "shot.png"
    _browser(
        tmp_path, f"--screenshot={shot}", "--window-size=1100,1600", report.as_uri()
    )
    image = mpimg.imread(shot)
    assert image.shape[:2] == (1600, 1100)
    rgb = image[..., :3]
    assert rgb.std() > 0.05  # not a blank page
    background = np.median(rgb.reshape(-1, 3), axis=0)
    different = np.abs(rgb - background).max(axis=2) > 0.1
    assert different.mean() > 0.05  # text, tables and pictures cover the page
    # every image decodes in the browser; a damaged one is seen by the same check
    assert _images_loaded(tmp_path, page, "probe.html") == "images 2 of 2"
    # (a PNG's signature damaged; a truncated PNG still shows its header's size in
    # the browser, which is why _pngs decodes every image whole as well)
    broken = page.replace("base64,iVBORw0KGgo", "base64,AAAAAAAAAAA", 1)
    assert broken != page
    assert _images_loaded(tmp_path, broken, "broken.html") == "images 1 of 2"


def test_render_shows_the_models_own_psis_loo(files):
    from fastvi import VBLogisticRegression, load
    from fastvi.report import render

    data = np.load(files["linear_data.npy"])
    X, y = data[:, :-1], data[:, -1]
    est = load(files["linear.npz"])
    result = est.loo(X, y, random_state=0)
    page = render(est, X, y)
    assert len(_pngs(page)) == 4 and "PSIS-LOO k-hat per observation." in page
    assert f"{result.elpd_loo:.2f} ± {result.se:.2f}" in page
    # one-vs-rest classifiers have no LOO: the page says so instead of failing
    rng = np.random.default_rng(0)
    X3 = rng.standard_normal((60, 2))
    y3 = np.argmax(X3 @ rng.standard_normal((2, 3)), axis=1)
    page = render(VBLogisticRegression().fit(X3, y3), X3, y3)
    assert "PSIS-LOO: not computed" in page
