"""The command line over the registry: every model, options from docstrings, polish.

Runs ``fastvi.__main__.main`` in this process (the kernels compile once per run);
``tests/test_batch.py`` runs it as a subprocess for the out-of-core and checkpoint
jobs.
"""

import inspect
import json
import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import fastvi
import fastvi.__main__ as cli
from fastvi import _registry, persist
from fastvi.batch.io import DataError, NpyRows, read_data
from fastvi.batch.options import MANAGED, model_parameters, parse_parameters
from fastvi.persist import load

ENTRIES = {entry.command: entry for entry in _registry.ESTIMATORS}


def run(capsys, *args):
    """``(status, stdout, stderr)`` of ``fastvi ARGS`` (argparse exits included)."""
    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as exc:
        status = exc.code
    out = capsys.readouterr()
    return status, out.out, out.err


def one_line_error(err, *needles):
    assert err.startswith("fastvi: error:"), err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


# ------------------------------------------------------------------- registry
def test_one_registry_serves_lazy_imports_persist_and_the_cli():
    names = {entry.name: entry.module for entry in _registry.ESTIMATORS}
    assert len(names) == 7
    assert {k: v for k, v in fastvi._LAZY.items() if k != "load"} == names
    assert persist._CLASSES == names
    assert not hasattr(cli, "_CLASSES")  # the CLI reads the registry
    for name, module in names.items():
        cls = _registry.estimator_class(name)
        assert cls.__module__ == module and getattr(fastvi, name) is cls
        assert _registry.by_class(name).name == name
    parser = cli._build_parser(["fit"])
    fit = parser._subparsers._group_actions[0].choices["fit"]
    models = fit._subparsers._group_actions[0].choices
    assert sorted(models) == sorted(ENTRIES)
    assert {"BayesianLogisticRegression", "BayesianPoissonRegression"} <= set(names)


def test_parse_parameters_reads_numpydoc():
    doc = """Summary.

    Parameters
    ----------
    a, b : float, default=1.0
        Shared text
        over two lines.
    kind : {'x', 'y'}, default='x'
    n : int

    Returns
    -------
    c : float
        Not a parameter.
    """
    found = parse_parameters(doc)
    assert found == {
        "a": ("float, default=1.0", "Shared text over two lines."),
        "b": ("float, default=1.0", "Shared text over two lines."),
        "kind": ("{'x', 'y'}, default='x'", ""),
        "n": ("int", ""),
    }
    assert parse_parameters("No sections.") == {}


@pytest.mark.parametrize("command", sorted(ENTRIES))
def test_fit_options_come_from_the_parameters_and_docstring(command, capsys):
    entry = ENTRIES[command]
    cls = _registry.estimator_class(entry.name)
    parser = cli._build_parser(["fit", command])
    fit = parser._subparsers._group_actions[0].choices["fit"]
    model = fit._subparsers._group_actions[0].choices[command]
    actions = {a.dest: a for a in model._actions}
    docs = parse_parameters(cls.__doc__)
    if entry.docs_from:
        docs = {
            **parse_parameters(_registry.estimator_class(entry.docs_from).__doc__),
            **docs,
        }
    signature = inspect.signature(cls).parameters
    for name, param in signature.items():
        if name in MANAGED:
            assert name not in actions, name
            continue
        action = actions[name]
        assert action.option_strings[0] == "--" + name.replace("_", "-")
        kind, text = docs[name]
        assert text, f"{entry.name}.{name} has no help text in its docstring"
        prose = re.sub(r":\w+:`[^`]*`", "", text)  # cross-references are shortened
        for word in re.findall(r"[A-Za-z]{4,}", prose):  # the docstring's words
            assert word in action.help, (name, word)
        default = repr(param.default) if isinstance(param.default, str) else None
        assert f"(default: {default or param.default})" in action.help
        if "{" in kind:
            assert action.choices == [
                c.strip(" '") for c in kind[1:].split("}")[0].split(",")
            ]
    # only this model's options: none of another model's parameters
    others = {
        n
        for e in _registry.ESTIMATORS
        for n, *_ in model_parameters(_registry.estimator_class(e.name))
    } - set(signature)
    assert not others & set(actions)
    status, out, _ = run(capsys, "fit", command, "--help")
    assert status == 0 and "model options" in out


def test_fit_help_shows_help_defaults_and_choices(capsys):
    status, out, _ = run(capsys, "fit", "gmm", "--help")
    assert status == 0
    text = " ".join(out.split())
    assert "--covariance-type {full,tied,diag,spherical}" in text
    assert "Covariance parameterization of the components. (default: 'full')" in text
    assert "--perp-tol" not in text and "--doc-topic-prior" not in text
    status, out, _ = run(capsys, "fit", "lda", "--help")
    assert "--perp-tol" in out and "--covariance-type" not in out
    assert "epochs between checkpoints" in " ".join(out.split())


@pytest.mark.parametrize(
    "command, checkpoints, out_of_core",
    [
        ("gmm", True, True),
        ("lda", True, False),
        ("gaussian", True, True),
        ("linear", True, True),
        ("logistic", True, True),
        ("sgvi-logistic", True, True),
        ("sgvi-poisson", True, True),
    ],
)
def test_fit_help_offers_checkpoints_and_blocks_where_the_driver_has_them(
    command, checkpoints, out_of_core, capsys
):
    status, out, _ = run(capsys, "fit", command, "--help")
    assert status == 0
    for flag in ("--checkpoint ", "--checkpoint-every", "--resume", "--overwrite"):
        assert (flag in out) == checkpoints, flag
    for flag in ("--block-rows", "--in-memory"):
        assert (flag in out) == out_of_core, flag


def test_cavi_fit_shows_progress_and_refuses_one_vs_rest_checkpoints(
    tmp_path, capsys, monkeypatch
):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):  # the plain progress lines
        if name == "tqdm":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 3))
    np.save(tmp_path / "x.npy", np.column_stack([X, X @ [1.0, 2.0, 3.0]]))
    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    fit = ["fit", "linear", tmp_path / "x.npy", "-o", tmp_path / "m.npz"]
    status, out, err = run(capsys, *fit, "--max-iter", 3, "--tol", 0)
    assert status == 0, err
    lines = [line for line in err.splitlines() if line.startswith("iteration")]
    assert [line.split()[1] for line in lines] == ["1", "2", "3"], err
    assert "bound" in lines[0] and "rows/s" in lines[0]
    assert "out_of_core=True" in out
    np.save(tmp_path / "c.npy", np.column_stack([X, np.arange(400) % 3]))
    ck = tmp_path / "ck.npz"
    status, _, err = run(
        capsys,
        "fit",
        "logistic",
        tmp_path / "c.npy",
        "-o",
        tmp_path / "c.npz",
        "--checkpoint",
        ck,
    )
    assert status == 2 and not ck.exists()
    one_line_error(err, "need two classes; y has 3", "fit without a checkpoint")


# ------------------------------------------------------- every model, end to end
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    w = np.array([1.0, -2.0, 0.5])
    files = {}
    blobs = np.concatenate([rng.normal(m, 1.0, (100, 2)) for m in (-6, 0, 6)])
    np.save(folder / "blobs.npy", blobs)
    files["gmm"] = (folder / "blobs.npy", ["--n-components", 3, "--random-state", 0])
    counts = sp.random(60, 40, density=0.3, random_state=1, format="csr") * 5
    counts.data = np.ceil(counts.data)
    sp.save_npz(folder / "counts.npz", counts)
    files["lda"] = (folder / "counts.npz", ["--n-components", 3, "--random-state", 0])
    np.save(folder / "one.npy", rng.normal(2.0, 3.0, (300, 1)))
    files["gaussian"] = (folder / "one.npy", [])
    y = X @ w + 0.1 * rng.normal(size=300)
    np.savetxt(folder / "lin.csv", np.column_stack([X, y]), delimiter=",")
    files["linear"] = (folder / "lin.csv", [])
    labels = (X @ w + rng.logistic(size=300) > 0).astype(float)
    np.savetxt(folder / "log.csv", np.column_stack([X, labels]), delimiter=",")
    files["logistic"] = (folder / "log.csv", [])
    files["sgvi-logistic"] = (folder / "log.csv", ["--random-state", 0])
    counts_y = rng.poisson(np.exp(0.3 * X @ w)).astype(float)
    np.savetxt(folder / "poi.csv", np.column_stack([X, counts_y]), delimiter=",")
    files["sgvi-poisson"] = (folder / "poi.csv", ["--random-state", 0])
    return files


def features(command, path):
    X = read_data(path)
    if ENTRIES[command].supervised:
        return np.asarray(X)[:, :-1], np.asarray(X)[:, -1]
    return X, None


@pytest.mark.parametrize("command", sorted(ENTRIES))
def test_every_model_fits_predicts_scores_and_tells_its_fit(
    command, data, tmp_path, capsys
):
    entry = ENTRIES[command]
    path, options = data[command]
    model = tmp_path / "m.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        status, out, err = run(
            capsys,
            "fit",
            command,
            path,
            "-o",
            model,
            "--max-iter",
            7,
            *options,
            "--json",
        )
    assert status == 0, err
    summary = json.loads(out)
    est = load(model)
    assert type(est).__name__ == entry.name and est.max_iter == 7
    assert summary["model"] == command and "n_iter" in summary
    X, y = features(command, path)

    # info: iterations, convergence, final bound
    status, out, err = run(capsys, "info", model)
    assert status == 0, err
    assert f"{entry.iterations}: " in out
    if hasattr(est, "converged_"):
        assert f"converged: {est.converged_}" in out
    assert "final" in out
    info = json.loads(run(capsys, "info", model, "--json")[1])
    assert info["n_iter"] == np.asarray(est.n_iter_).tolist()

    # score: the number comes with what it is
    key, label = entry.score
    status, out, err = run(capsys, "score", model, path)
    assert status == 0, err
    assert out.startswith(f"{label}: ")
    expected = est.score(X, y) if y is not None else est.score(X)
    if command == "gmm":
        expected = np.mean(est.score_samples(X))
    shown = float(out.splitlines()[0].split(": ")[1])
    np.testing.assert_allclose(shown, expected, rtol=1e-9)
    scored = json.loads(run(capsys, "score", model, path, "--json")[1])
    assert scored["metric"] == label and np.isclose(scored[key], expected, rtol=1e-12)

    # predict, for every model that predicts
    target = ["--target", X.shape[1] + 1] if y is not None else []
    status, _, err = run(
        capsys, "predict", model, path, "-o", tmp_path / "p.npy", *target
    )
    if command == "gaussian":
        assert status == 2
        one_line_error(err, "predicts nothing per row", "fastvi score")
        return
    assert status == 0, err
    method = est.transform if command == "lda" else est.predict
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), method(X))
    if y is not None:  # the training file without --target: the column is named
        status, _, err = run(capsys, "predict", model, path, "-o", tmp_path / "q.npy")
        one_line_error(
            err, f"has {X.shape[1] + 1} columns", f"--target {X.shape[1] + 1}"
        )
        assert not (tmp_path / "q.npy").exists()


def test_target_column_counts_from_one(data, tmp_path, capsys):
    path, _ = data["linear"]
    table = np.loadtxt(path, delimiter=",")
    first = tmp_path / "first.csv"
    np.savetxt(first, table[:, [3, 0, 1, 2]], delimiter=",")
    for source, target in ((path, []), (first, ["--target", 1])):
        out = tmp_path / f"m{len(target)}.npz"
        status, _, err = run(capsys, "fit", "linear", source, "-o", out, "-q", *target)
        assert status == 0, err
    a, b = load(tmp_path / "m0.npz"), load(tmp_path / "m2.npz")
    np.testing.assert_array_equal(a.coef_, b.coef_)
    status, _, err = run(capsys, "fit", "linear", path, "-o", out, "--target", 9)
    one_line_error(err, "--target 9", "4 columns")
    status, _, err = run(capsys, "fit", "linear", path, "-o", out, "--target", 0)
    one_line_error(err, "counted from 1")


@pytest.mark.parametrize(
    "command, scale", [("gmm", 1e160), ("gaussian", 1e160), ("linear", 1e200)]
)
def test_score_and_predict_of_rows_too_large_exit_with_the_error(
    command, scale, data, tmp_path, capsys
):
    path, options = data[command]
    model = tmp_path / "m.npz"
    status, _, err = run(capsys, "fit", command, path, "-o", model, "-q", *options)
    assert status == 0, err
    X, y = features(command, path)
    big = tmp_path / "big.npy"  # the target, if any, as it was
    np.save(big, X * scale if y is None else np.column_stack([X * scale, y]))
    target = [] if y is None else ["--target", X.shape[1] + 1]
    status, out, err = run(capsys, "score", model, big, *target)
    assert status == 2 and out == ""  # it printed nan or -inf before, status 0
    one_line_error(err, "has values", "overflow float64", "Rescale X")
    if command == "gmm":
        status, _, err = run(capsys, "predict", model, big, "-o", tmp_path / "p.npy")
        assert status == 2 and not (tmp_path / "p.npy").exists()
        one_line_error(err, "X has values as large as", "BayesianGaussianMixture")


def test_conjugate_fit_shows_progress(data, tmp_path, capsys):
    path, _ = data["linear"]
    status, _, err = run(capsys, "fit", "linear", path, "-o", tmp_path / "m.npz")
    assert status == 0 and "bound" in err


# ----------------------------------------------------------------- CLI polish
def test_predict_writes_csv_or_npy_by_extension(data, tmp_path, capsys):
    path, options = data["gmm"]
    model = tmp_path / "m.npz"
    assert run(capsys, "fit", "gmm", path, "-o", model, *options, "-q")[0] == 0
    est = load(model)
    X = np.load(path)
    for name, proba in (("p.csv", ["--proba"]), ("l.csv", []), ("p.npy", ["--proba"])):
        status, _, err = run(
            capsys, "predict", model, path, "-o", tmp_path / name, *proba
        )
        assert status == 0, err
    np.testing.assert_array_equal(
        np.loadtxt(tmp_path / "p.csv", delimiter=","), est.predict_proba(X)
    )
    assert (tmp_path / "l.csv").read_text().splitlines()[:3] == [
        str(v) for v in est.predict(X)[:3]
    ]
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), est.predict_proba(X))
    status, _, err = run(capsys, "predict", model, path, "-o", tmp_path / "p.txt")
    one_line_error(err, "unknown output format", ".npy, .csv or .tsv")
    assert not (tmp_path / "p.txt").exists()


def test_predict_streams_an_out_of_core_file_to_csv(tmp_path, capsys):
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(m, 1.0, (150, 2)) for m in (-5, 5)])
    np.save(tmp_path / "x.npy", X)
    model = tmp_path / "m.npz"
    fit = ["fit", "gmm", tmp_path / "x.npy", "-o", model, "--n-components", 2]
    assert (
        run(capsys, *fit, "--init-params", "random", "--random-state", 0, "-q")[0] == 0
    )
    status, _, err = run(
        capsys,
        "predict",
        model,
        tmp_path / "x.npy",
        "-o",
        tmp_path / "p.csv",
        "--proba",
    )
    assert status == 0, err
    est = load(model)
    np.testing.assert_array_equal(
        np.loadtxt(tmp_path / "p.csv", delimiter=","), est.predict_proba(X)
    )


@pytest.mark.parametrize("command", ["sgvi-logistic", "sgvi-poisson"])
def test_sgvi_fits_a_npy_file_out_of_core_with_the_in_memory_bits(
    command, tmp_path, capsys
):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(5000, 3))
    eta = X @ [0.5, -1.0, 0.25]
    if command == "sgvi-poisson":
        y = rng.poisson(np.exp(eta))
    else:
        y = eta + rng.logistic(size=5000) > 0
    np.save(tmp_path / "x.npy", np.column_stack([X, y]))
    models = []
    for how in ("--block-rows", "--in-memory"):
        model = tmp_path / f"{how[2:]}.npz"
        extra = [how, 2048] if how == "--block-rows" else [how]
        status, out, err = run(
            capsys,
            "fit",
            command,
            tmp_path / "x.npy",
            "-o",
            model,
            *extra,
            "--json",
            "--random-state",
            0,
            "--family",
            "fullrank",
        )
        assert status == 0, err
        assert json.loads(out)["out_of_core"] == (how == "--block-rows")
        models.append(load(model))
    a, b = models
    assert a.fit_method_ == b.fit_method_ == "fixed" and a.converged_
    for name in ("posterior_mean_", "posterior_cov_", "elbo_history_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), name)


@pytest.mark.parametrize(
    "args, needles",
    [
        (("fit", "gmn", "x.npy", "-o", "m.npz"), ["invalid choice: 'gmn'", "'gmm'"]),
        (("fit", "sgvi-logistc", "x.npy", "-o", "m.npz"), ["'sgvi-logistic'"]),
        (
            ("fit", "gmm", "x.npy", "-o", "m.npz", "--n-componets", "3"),
            ["unknown option --n-componets (did you mean --n-components?)"],
        ),
        (
            ("fit", "gmm", "x.npy", "-o", "m.npz", "--covariance-type", "ful"),
            ["invalid choice: 'ful'", "did you mean 'full'?"],
        ),
        (
            ("fit", "gmm", "x.npy", "-o", "m.npz", "--perp-tol", "1"),
            ["--perp-tol is not an option of 'gmm' (it is one of lda)"],
        ),
        (
            ("fit", "sgvi-logistic", "x.csv", "-o", "m.npz", "--n-components", "3"),
            [
                "--n-components is not an option of 'sgvi-logistic' (it is one of gmm, lda)"
            ],
        ),
        (("predcit", "m.npz", "x.npy"), ["did you mean 'predict'?"]),
    ],
)
def test_misspellings_get_did_you_mean(args, needles, capsys):
    status, _, err = run(capsys, *args)
    assert status == 2
    one_line_error(err, *needles)


def test_a_csv_header_without_header_suggests_it(tmp_path, capsys):
    np.savetxt(
        tmp_path / "h.csv", np.ones((5, 2)), delimiter=",", header="a,b", comments=""
    )
    with pytest.raises(DataError, match="pass --header to skip it"):
        read_data(tmp_path / "h.csv")
    assert read_data(tmp_path / "h.csv", header=True).shape == (5, 2)
    (tmp_path / "bad.csv").write_text("1,2\n3,x\n")  # a bad value is no header
    with pytest.raises(DataError) as info:
        read_data(tmp_path / "bad.csv")
    assert "--header" not in str(info.value)
    status, _, err = run(capsys, "info", tmp_path / "h.csv")
    one_line_error(err, "pass --header")
    assert run(capsys, "info", tmp_path / "h.csv", "--header")[0] == 0


def test_rows_and_columns_count_from_one(tmp_path):
    (tmp_path / "first.csv").write_text("nan,1\n2,3\n")
    with pytest.raises(DataError, match=r"first.csv: row 1, column 1: value nan"):
        read_data(tmp_path / "first.csv")
    (tmp_path / "h.csv").write_text("a,b\n1,2\n3,inf\n")
    with pytest.raises(DataError, match=r"h.csv: row 2, column 2: value inf"):
        read_data(tmp_path / "h.csv", header=True)
    (tmp_path / "text.csv").write_text("1,2\n3,4\n5,x\n")
    with pytest.raises(DataError, match=r"text.csv: row 3, column 2: 'x' is not"):
        read_data(tmp_path / "text.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3,4\n5\n")
    with pytest.raises(DataError, match=r"ragged.csv: row 3: has 1 columns, the rows"):
        read_data(tmp_path / "ragged.csv")
    X = np.zeros((10, 2))
    X[9, 1] = np.inf
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(DataError, match=r"x.npy: row 10, column 2"):
        for _ in NpyRows(tmp_path / "x.npy", block_rows=4).iter_blocks():
            pass


@pytest.mark.parametrize("command", ["gmm", "sgvi-poisson"])
def test_an_existing_checkpoint_needs_resume_or_overwrite(
    command, data, tmp_path, capsys
):
    path, options = data[command]
    out, ck = tmp_path / "m.npz", tmp_path / "ck.npz"
    ck.write_bytes(b"an earlier run's checkpoint")
    fit = ["fit", command, path, "-o", out, *options, "--checkpoint", ck, "-q"]
    status, _, err = run(capsys, *fit)
    assert status == 2
    one_line_error(err, str(ck), "exists", "--resume", "--overwrite")
    assert ck.read_bytes() == b"an earlier run's checkpoint" and not out.exists()
    status, _, err = run(capsys, *fit, "--resume", "--overwrite")
    one_line_error(err, "pass one")
    status, _, err = run(capsys, *fit, "--overwrite")
    assert status == 0, err
    assert out.exists() and not ck.exists()  # the model replaced the checkpoint
    status, _, err = run(capsys, "fit", command, path, "-o", out, "--overwrite")
    one_line_error(err, "--overwrite needs --checkpoint")


@pytest.mark.parametrize("command", sorted(ENTRIES))
def test_max_iter_zero_is_refused(command, data, tmp_path, capsys):
    path, _ = data[command]
    status, _, err = run(
        capsys, "fit", command, path, "-o", tmp_path / "m.npz", "--max-iter", 0
    )
    assert status == 2
    one_line_error(err, "--max-iter", "must be at least 1")
    assert not (tmp_path / "m.npz").exists()


def test_checkpoint_every_zero_is_refused(data, tmp_path, capsys):
    path, _ = data["lda"]
    args = ["--checkpoint", tmp_path / "c.npz", "--checkpoint-every", 0]
    status, _, err = run(capsys, "fit", "lda", path, "-o", tmp_path / "m.npz", *args)
    assert status == 2
    one_line_error(err, "--checkpoint-every", "must be at least 1")
