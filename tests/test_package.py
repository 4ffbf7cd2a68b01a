"""Package-level promises: a cheap import, the kernel disk cache, the command line."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastvi


def _run(code, env=None):
    full_env = dict(os.environ, **(env or {}))
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        check=True,
        timeout=600,
    )
    return out.stdout


def test_import_loads_no_numba_and_no_scikit_learn():
    code = (
        "import sys, json, fastvi; "
        "print(json.dumps(sorted(m for m in ('numba', 'sklearn', 'scipy') "
        "if m in sys.modules)))"
    )
    assert json.loads(_run(code)) == []


def test_public_names_resolve_lazily():
    assert fastvi.BayesianGaussianMixture.__module__ == "fastvi.mixture"
    assert "BayesianGaussianMixture" in dir(fastvi)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fastvi.nope  # noqa: B018


_FIT_AND_REPORT = """
import json, logging, warnings
logging.basicConfig(level=logging.INFO, format="LOG %(name)s: %(message)s")
import numpy as np
from fastvi import BayesianGaussianMixture
from fastvi.kernels import gmm
X = np.random.default_rng(0).normal(size=(200, 3))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    BayesianGaussianMixture(n_components=2, max_iter=3, covariance_type="diag",
                            random_state=0, verbose=VERBOSE).fit(X)
stats = gmm.mixture_chunks_diag.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values())}))
"""
_NOTICE = "compiling fastvi's mixture kernels for this machine"


def _env_without_cache():
    """This process's environment for a child, without the cache folder settings."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("FASTVI_CACHE_DIR", "NUMBA_CACHE_DIR")
    }


def _fit_in_fresh_process(env, verbose=0, cwd=None):
    full_env = _env_without_cache()
    full_env.update(env)
    out = subprocess.run(
        [sys.executable, "-c", _FIT_AND_REPORT.replace("VERBOSE", str(verbose))],
        capture_output=True,
        text=True,
        env=full_env,
        check=True,
        timeout=600,
        cwd=cwd,
    )
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]), out.stderr, lines[:-1]


def _cache_files(folder):
    return [
        os.path.join(d, f)
        for d, _, files in os.walk(folder)
        for f in files
        if f.endswith((".nbi", ".nbc"))
    ]


def test_kernels_are_cached_in_fastvi_cache_dir_never_in_the_package(tmp_path):
    package = os.path.dirname(fastvi.__file__)
    before = set(_cache_files(package))
    env = {"FASTVI_CACHE_DIR": str(tmp_path / "cache")}
    first, log1, out1 = _fit_in_fresh_process(env, verbose=1)
    second, log2, out2 = _fit_in_fresh_process(env, verbose=1)
    assert first["misses"] >= 1  # compiled in the first process
    assert second["misses"] == 0 and second["hits"] >= 1  # loaded in the second
    assert _cache_files(tmp_path / "cache")
    assert set(_cache_files(package)) == before  # nothing written into the package
    # the first compile is announced once: on the logger, and on stderr with verbose
    assert log1.count(_NOTICE) == 2  # the logging line and the verbose print
    assert f"LOG fastvi: {_NOTICE}" in log1
    assert _NOTICE not in log2


def test_another_installation_announces_its_own_first_compile(tmp_path):
    # numba caches per source folder, so a second installation (a new virtual
    # environment, a pip install after a clone) compiles again and must say so
    env = {"FASTVI_CACHE_DIR": str(tmp_path / "cache")}
    first, log1, _ = _fit_in_fresh_process(env, verbose=1)
    assert first["misses"] >= 1 and _NOTICE in log1
    site = tmp_path / "site"
    shutil.copytree(
        os.path.dirname(fastvi.__file__),
        site / "fastvi",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    env["PYTHONPATH"] = str(site)
    copy, log2, _ = _fit_in_fresh_process(env, verbose=1, cwd=tmp_path)
    assert copy["misses"] >= 1  # compiled again, for the copy's folder
    assert _NOTICE in log2


def test_numba_cache_dir_is_honoured_and_fastvi_cache_dir_wins(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    first, _, _ = _fit_in_fresh_process(env)
    assert first["misses"] >= 1 and _cache_files(tmp_path / "numba")
    env["FASTVI_CACHE_DIR"] = str(tmp_path / "fastvi")
    _fit_in_fresh_process(env)
    assert _cache_files(tmp_path / "fastvi")


def test_default_cache_is_the_user_cache_folder(tmp_path):
    if sys.platform in ("win32", "darwin"):
        pytest.skip("XDG_CACHE_HOME is the Linux convention")
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    _fit_in_fresh_process(env)
    assert _cache_files(tmp_path / "xdg" / "fastvi")
    assert os.listdir(tmp_path / "xdg" / "fastvi" / "compiled")  # the notice's mark


def test_an_unwritable_cache_dir_falls_back_to_a_temporary_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {
        "FASTVI_CACHE_DIR": str(blocker / "cache"),  # cannot be created
        "TMPDIR": str(tmp_path / "tmp"),
    }
    (tmp_path / "tmp").mkdir()
    first, _, _ = _fit_in_fresh_process(env)
    second, _, _ = _fit_in_fresh_process(env)
    assert first["misses"] >= 1
    assert second["misses"] == 0 and second["hits"] >= 1
    assert _cache_files(tmp_path / "tmp")


def test_warmup_compiles_ahead_and_the_next_fit_is_silent(tmp_path):
    env = _env_without_cache()
    env["FASTVI_CACHE_DIR"] = str(tmp_path)
    out = _cli("warmup", "gmm", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("fastvi warmup: compiled in")
    assert str(tmp_path) in out.stdout
    stats, log, _ = _fit_in_fresh_process({"FASTVI_CACHE_DIR": str(tmp_path)}, 1)
    assert stats["misses"] == 0 and stats["hits"] >= 1
    assert _NOTICE not in log


def _cli(*args, env=None, cwd=None):
    """``python -m fastvi ARGS`` in a subprocess (not checked: tests read rc)."""
    return subprocess.run(
        [sys.executable, "-m", "fastvi", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=900,
    )


def test_warmup_names_an_unknown_model():
    out = _cli("warmup", "gmx")
    assert out.returncode == 2
    assert "unknown model 'gmx' (did you mean 'gmm'?)" in out.stderr


def test_version_and_plain_help():
    assert _cli("--version").stdout.strip() == f"fastvi {fastvi.__version__}"
    text = _cli("--help").stdout
    assert "``" not in text and "warmup" in text
    demo = _cli("demo", "--help").stdout
    # every option of the demo says what it does
    assert "--no-compare" in demo and "skip the scikit-learn fit" in demo
    assert "number of generated points" in demo


def test_command_line_demo_runs_small():
    small = ("--n-samples", "600", "--n-features", "2", "--true-clusters", "2")
    out = _cli("demo", *small, "--n-components", "3", "--max-iter", "30")
    assert out.returncode == 0, out.stderr
    assert "fastvi " in out.stdout and "scikit-learn " in out.stdout
    assert "same lower bound (1e-6): yes" in out.stdout


def test_command_line_reports_errors_in_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "fastvi", "demo", "--n-samples", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("fastvi: error:")
    assert len(out.stderr.strip().splitlines()) == 1


_FRESH_OR_CACHED = """
import hashlib, warnings
import numpy as np
from fastvi import BayesianGaussianMixture, LatentDirichletAllocation
from fastvi.kernels import gmm, lda
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
X = rng.normal(size=(6000, 16)) * 3
counts = rng.poisson(0.3, size=(400, 200)).astype(float)
fits = [BayesianGaussianMixture(n_components=8, covariance_type=cov, max_iter=3,
                                random_state=0).fit(X) for cov in ("diag", "spherical")]
fits += [LatentDirichletAllocation(n_components=5, learning_method=m, max_iter=2,
                                   random_state=0).fit(counts) for m in ("batch", "online")]
digest = hashlib.sha1()
for f in fits[:2]:
    digest.update(f.means_.tobytes() + f.covariances_.tobytes())
for f in fits[2:]:
    digest.update(f.components_.tobytes())
stats = gmm.mixture_chunks_diag.stats
print(digest.hexdigest(), sum(stats.cache_misses.values()), sum(stats.cache_hits.values()))
"""


def test_fits_give_the_same_bits_on_fresh_and_on_cached_kernels(tmp_path):
    """A kernel's helper that LLVM did not inline ran as its own compiled copy in the
    process that compiled it, and as the copy inside the caller's machine code in a
    process that loaded the caller from the cache; the two copies were optimized
    apart and summed in different orders ('diag' and 'spherical' mixtures, LDA: last
    bits). Every kernel is now inlined into its callers (``forceinline``), so both
    processes run the same code."""
    env = _env_without_cache()
    env["FASTVI_CACHE_DIR"] = str(tmp_path / "cache")
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", _FRESH_OR_CACHED],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        assert out.returncode == 0, out.stderr
        runs.append(out.stdout.split())
    (fresh, misses, hits), (cached, misses2, hits2) = runs
    assert (misses, hits, misses2, hits2) == ("1", "0", "0", "1")  # compiled, loaded
    assert fresh == cached


_STALE_SHARED = """
import sys
sys.path.insert(0, sys.argv[1])
from fastvi.kernels import _config
if sys.argv[2] == "changed":  # as after an edit of tiles.py alone
    _config.kernels_digest = lambda folder=None: "another tiles.py"
import usesjit
usesjit.f(1.0)
print(usesjit.f.stats.cache_misses.__len__(), usesjit.f.stats.cache_hits.__len__())
"""


def test_a_change_to_a_shared_kernel_module_recompiles_the_kernels(tmp_path):
    """numba reuses a cached kernel while the hash of the kernel's own file is
    unchanged, but the code holds what it inlined from the shared modules; fastvi's
    stamp adds a digest of every module in fastvi/kernels, so an upgrade or a pull
    that changed only tiles.py (or _math.py) recompiles the mixture's kernels."""
    from fastvi.kernels import _config

    (tmp_path / "usesjit.py").write_text(
        "from fastvi.kernels._config import jit\n\n\n"
        "@jit\ndef f(x):\n    return x + 1.0\n"
    )
    env = _env_without_cache()
    env["FASTVI_CACHE_DIR"] = str(tmp_path / "cache")
    counts = []
    for state in ("same", "same", "changed", "changed", "same"):
        out = subprocess.run(
            [sys.executable, "-c", _STALE_SHARED, str(tmp_path), state],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        counts.append(tuple(out.stdout.split()))
    # compiled, loaded; compiled again for the changed modules, then loaded; the
    # original modules' entry is stale now (one index per function), so compiled
    assert counts == [("1", "0"), ("0", "1"), ("1", "0"), ("0", "1"), ("1", "0")]
    # the digest reads the folder's modules: any edit changes it
    copy = tmp_path / "kernels"
    shutil.copytree(os.path.dirname(_config.__file__), copy)
    before = _config.kernels_digest(str(copy))
    with open(copy / "tiles.py", "a") as fh:
        fh.write("\n# an edit\n")
    assert _config.kernels_digest.__wrapped__(str(copy)) != before


def test_batch_jobs_on_a_cold_cache_give_the_bits_of_later_jobs(tmp_path):
    """numba's freshly compiled code could round differently from the same code loaded
    from its cache (the test above), so a job compiles in a child process first
    and runs on cached code: the job that found the cache cold and the next one give
    the same bits (a job killed on a cold machine resumes bitwise)."""
    env = _env_without_cache()
    env["FASTVI_CACHE_DIR"] = str(tmp_path / "cache")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 6)) + rng.integers(0, 4, size=(5000, 1))
    np.save(tmp_path / "X.npy", X)
    models = []
    for i in range(2):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "fastvi",
                "fit",
                "gmm",
                str(tmp_path / "X.npy"),
                "-o",
                str(tmp_path / f"m{i}.npz"),
                "--n-components",
                "5",
                "--covariance-type",
                "diag",
                "--max-iter",
                "5",
                "--random-state",
                "0",
                "--quiet",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        assert out.returncode == 0, out.stderr
        models.append(fastvi.load(tmp_path / f"m{i}.npz"))
    for name in ("means_", "covariances_", "weights_"):
        a, b = getattr(models[0], name), getattr(models[1], name)
        assert a.tobytes() == b.tobytes(), name
