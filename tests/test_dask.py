"""Fits on Dask arrays: the local scheduler and a 2-process LocalCluster started here.

Every fit is compared with the in-memory fit of the same data (1e-10 relative, same
iteration count), including uneven chunks and a worker killed in the middle of a fit.
"""

import contextlib
import logging
import socket
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

from fastvi._cavi import Monitor, monitoring  # noqa: E402
from fastvi._dask import DaskRows, is_dask_collection  # noqa: E402


def _sum_and_rows(block, start):
    return block.sum(axis=0), float(block.shape[0]), float(start)


@contextlib.contextmanager
def _ports_taken(*ports):
    """Listen on those of ``ports`` (on 127.0.0.1) that are free, so they are all busy.

    The cluster below must not need any fixed port: one left open by another cluster
    or a dashboard would otherwise make its start fail (a port warning is an error
    in this suite).
    """
    with contextlib.ExitStack() as stack:
        for port in ports:
            sock = stack.enter_context(socket.socket())
            with contextlib.suppress(OSError):  # already taken: fine as well
                sock.bind(("127.0.0.1", port))
                sock.listen()
        yield


@pytest.fixture(scope="module")
def client():
    """A 2-worker, 1-thread-each LocalCluster of separate processes, for this module.

    Every port is a free one the system picks: the scheduler's, the workers' and
    their HTTP servers' (distributed starts the scheduler's on 8787 even without a
    dashboard unless given another address). 8786 and 8787 are held meanwhile.
    """
    with (
        _ports_taken(8786, 8787),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            scheduler_port=0,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            worker_dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_is_dask_collection():
    X = np.ones((4, 2))
    assert not is_dask_collection(X)
    assert is_dask_collection(da.from_array(X, chunks=2))


def test_map_reduce_is_the_in_memory_sum():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1003, 3))
    rows = DaskRows(da.from_array(X, chunks=((100, 400, 3, 500), (2, 1))))
    assert rows.array.numblocks == (4, 1)  # columns gathered into one chunk
    np.testing.assert_array_equal(rows.starts, [0, 100, 500, 503])
    total, n, starts = rows.map_reduce(_sum_and_rows)
    np.testing.assert_allclose(total, X.sum(axis=0), rtol=1e-13)
    assert n == 1003 and starts == 0 + 100 + 500 + 503


def test_map_reduce_is_deterministic_across_schedulers(client):
    # the same chunking gives the bitwise same sum on threads, in one process and
    # on two worker processes: the tree is fixed by the chunk order
    X = np.random.default_rng(1).normal(size=(5000, 4)) * 1e3
    rows = DaskRows(da.from_array(X, chunks=(333, 4)))
    on_cluster = rows.map_reduce(_sum_and_rows)[0]
    for result in (_local(rows, "threads"), _local(rows, "sync")):
        np.testing.assert_array_equal(result, on_cluster)


def _local(rows, scheduler):
    import dask

    with dask.config.set(scheduler=scheduler):
        return rows.map_reduce(_sum_and_rows)[0]


def test_targets_follow_the_row_chunks():
    X = np.arange(20.0).reshape(10, 2)
    y = np.arange(10.0)

    def block_sums(block, start):
        rows, targets = block
        assert rows.shape[0] == targets.shape[0]
        return (rows[:, 0] * targets).sum(), float(start)

    rows = DaskRows(da.from_array(X, chunks=(3, 2)), y=da.from_array(y, chunks=5))
    total, _ = rows.map_reduce(block_sums)
    assert total == (X[:, 0] * y).sum()
    with pytest.raises(ValueError, match=r"y has shape \(9,\)"):
        DaskRows(da.from_array(X, chunks=3), y=y[:9])


def test_check_finite_uses_scikit_learns_messages():
    X = np.ones((10, 2))
    DaskRows(da.from_array(X, chunks=4)).check_finite()
    X[7, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        DaskRows(da.from_array(X, chunks=4)).check_finite()
    X[7, 1] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        DaskRows(da.from_array(X, chunks=4)).check_finite()


def test_bad_collections():
    with pytest.raises(ValueError, match="Expected 2D array, got 1D"):
        DaskRows(da.ones(5, chunks=2))
    with pytest.raises(ValueError, match="numeric"):
        DaskRows(da.from_array(np.array([["a", "b"]]), chunks=1))
    with pytest.raises(TypeError, match="expected a dask array"):
        DaskRows(np.ones((3, 2)))


def test_dataframe_with_unknown_divisions():
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    X = np.random.default_rng(2).normal(size=(50, 3))
    frame = dd.from_pandas(pd.DataFrame(X, columns=list("abc")), npartitions=3)
    rows = DaskRows(frame)
    assert rows.shape == (50, 3)
    np.testing.assert_allclose(rows.map_reduce(_sum_and_rows)[0], X.sum(axis=0))


def test_missing_dask_names_the_install(monkeypatch):
    from fastvi import _dask

    X = da.ones((4, 2), chunks=2)
    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(ImportError, match=r"pip install \"fastvi\[dask\]\""):
        _dask.DaskRows(X)


# ---------------------------------------------------------- BayesianGaussianMixture
def _blobs(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[-4.0, 0.0, 1.0], [0.0, 3.0, -1.0], [4.0, -2.0, 0.0]])
    X = centers[rng.integers(0, 3, n)] + rng.normal(size=(n, 3))
    return X


def _gmm(**kw):
    from fastvi import BayesianGaussianMixture

    params = dict(n_components=4, init_params="random_from_data", random_state=3)
    params.update(kw)
    params.setdefault("max_iter", 30)
    return BayesianGaussianMixture(**params)


def _fit(est, X, y=None):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X) if y is None else est.fit(X, y)


def _assert_same_model(a, b, rtol=1e-10):
    assert a.n_iter_ == b.n_iter_
    assert a.converged_ == b.converged_
    np.testing.assert_allclose(b.lower_bounds_, a.lower_bounds_, rtol=rtol)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(
            getattr(b, name), getattr(a, name), rtol=rtol, atol=1e-12, err_msg=name
        )


@pytest.mark.parametrize(
    ("cov", "init"),
    [
        ("full", "random_from_data"),
        ("tied", "random_from_data"),
        ("diag", "random"),
        ("spherical", "random_from_data"),
    ],
)
def test_mixture_on_uneven_chunks_equals_in_memory(cov, init):
    X = _blobs(2000)
    chunks = ((700, 1, 299, 1000), (2, 1))  # uneven rows, split columns
    kw = dict(covariance_type=cov, init_params=init, tol=1e-6, max_iter=15)
    a = _fit(_gmm(**kw), X)
    b = _fit(_gmm(**kw), da.from_array(X, chunks=chunks))
    _assert_same_model(a, b)


def test_mixture_on_a_local_cluster_equals_in_memory(client):
    X = _blobs(5000, seed=1)
    a = _fit(_gmm(covariance_type="full", tol=1e-8), X)
    Xd = client.persist(da.from_array(X, chunks=(900, 3)))
    b = _fit(_gmm(covariance_type="full", tol=1e-8), Xd)
    _assert_same_model(a, b)
    # scoring stays lazy and on the workers
    labels = b.predict(Xd)
    assert isinstance(labels, da.Array)
    np.testing.assert_array_equal(labels.compute(), a.predict(X))
    np.testing.assert_allclose(
        b.predict_proba(Xd).compute(), a.predict_proba(X), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(b.score(Xd), a.score(X), rtol=1e-12)


def test_mixture_survives_a_killed_worker(client):
    import os
    import signal

    X = _blobs(5000, seed=2)
    a = _fit(_gmm(covariance_type="diag", tol=0.0, max_iter=12), X)
    Xd = client.persist(da.from_array(X, chunks=(500, 3)))
    client.wait_for_workers(2)
    killed = []

    def kill_one(estimator, n_iter, bound, change):
        if n_iter == 3:  # the kill lands between rounds; its chunks are lost
            pids = client.run(os.getpid)
            victim = sorted(pids)[0]
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(victim)

    b = _gmm(covariance_type="diag", tol=0.0, max_iter=12)
    with monitoring(b, Monitor(callback=kill_one)):
        _fit(b, Xd)
    assert killed
    _assert_same_model(a, b)


def test_mixture_dask_bad_input_leaves_the_estimator_untouched():
    X = _blobs(400)
    est = _gmm(max_iter=3)
    X[123, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        est.fit(da.from_array(X, chunks=100))
    assert not hasattr(est, "means_")
    with pytest.raises(ValueError, match="init_params='kmeans' needs all the data"):
        _gmm(init_params="kmeans").fit(da.from_array(_blobs(400), chunks=100))
    fitted = _fit(_gmm(max_iter=3), _blobs(400))
    with pytest.raises(ValueError, match="X has 2 features"):
        fitted.predict(da.ones((10, 2), chunks=5))


@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
def test_mixture_dask_values_too_large_get_the_in_memory_message(cov):
    X = _blobs(400) * 1e160
    message = "X has values as large as .* overflow float64 .* Rescale X"
    with pytest.raises(ValueError, match=message):
        _gmm(covariance_type=cov).fit(X)
    est = _gmm(covariance_type=cov)
    with pytest.raises(ValueError, match=message):
        est.fit(da.from_array(X, chunks=100))
    assert not hasattr(est, "means_")


def test_cli_fit_on_a_scheduler(client, tmp_path, capsys):
    import json

    from fastvi import load
    from fastvi.__main__ import main

    X = _blobs(3000, seed=4)
    path = tmp_path / "x.npy"
    np.save(path, X)
    out = tmp_path / "model.npz"
    argv = ["fit", "gmm", str(path), "--output", str(out), "--json"]
    argv += ["--n-components", "4", "--init-params", "random_from_data"]
    argv += ["--random-state", "3", "--max-iter", "30", "--block-rows", "700"]
    assert main([*argv, "--scheduler", client.scheduler.address]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["out_of_core"] and summary["n_samples"] == 3000
    on_cluster = load(out)
    in_memory = _fit(_gmm(max_iter=30), X)
    _assert_same_model(in_memory, on_cluster)
    # a format the workers do not read: one clear line, nothing written
    out.unlink()
    np.savetxt(tmp_path / "x.csv", X[:10], delimiter=",")
    csv = [*argv[:2], str(tmp_path / "x.csv"), *argv[3:]]
    assert main([*csv, "--scheduler", client.scheduler.address]) != 0
    assert "--scheduler needs a float64 .npy file" in capsys.readouterr().err
    assert not out.exists()


# -------------------------------------------------------------- conjugate models
def _regression(n=1500, d=5, seed=5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) + 1.0
    w = rng.normal(size=d)
    return X, X @ w + 0.5 + rng.normal(scale=0.7, size=n), w


@pytest.mark.parametrize("ard", [False, True])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_linear_regression_on_dask_equals_in_memory(ard, fit_intercept):
    from fastvi import VBLinearRegression

    X, y, _ = _regression()
    kw = dict(ard=ard, fit_intercept=fit_intercept)
    a = _fit(VBLinearRegression(**kw), X, y)
    Xd, yd = (
        da.from_array(X, chunks=((600, 1, 899), (5,))),
        da.from_array(y, chunks=700),
    )
    b = _fit(VBLinearRegression(**kw), Xd, yd)
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(b.lower_bounds_, a.lower_bounds_, rtol=1e-10)
    for name in ("coef_", "sigma_", "alpha_", "lambda_"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-10)
    assert b.intercept_ == pytest.approx(a.intercept_, rel=1e-10, abs=1e-12)
    mean, std = b.predict(Xd, return_std=True)
    assert isinstance(mean, da.Array) and isinstance(std, da.Array)
    mean0, std0 = a.predict(X, return_std=True)
    np.testing.assert_allclose(mean.compute(), mean0, rtol=1e-10)
    np.testing.assert_allclose(std.compute(), std0, rtol=1e-10)


def _classification(n, d=4, seed=6, n_classes=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, n_classes))
    logits = X @ W + rng.gumbel(size=(n, n_classes))
    return X, np.array(["ant", "bee", "cat"])[:n_classes][np.argmax(logits, axis=1)]


@pytest.mark.parametrize(("n", "n_classes"), [(2000, 2), (40_000, 2), (900, 3)])
def test_logistic_regression_on_dask_equals_in_memory(client, n, n_classes):
    # 40,000 rows take the subsample start (its rows come to the client); three
    # classes fit one-vs-rest; string labels stay on the workers
    from fastvi import VBLogisticRegression

    X, y = _classification(n, n_classes=n_classes)
    a = _fit(VBLogisticRegression(), X, y)
    chunk = max(n // 3 + 5, 1)  # not a multiple of the Hessian stride
    Xd, yd = da.from_array(X, chunks=chunk), da.from_array(y, chunks=chunk)
    b = _fit(VBLogisticRegression(), client.persist(Xd), client.persist(yd))
    np.testing.assert_array_equal(b.classes_, a.classes_)
    np.testing.assert_array_equal(b.n_iter_, a.n_iter_)
    np.testing.assert_allclose(b.lower_bound_, a.lower_bound_, rtol=1e-10)
    np.testing.assert_allclose(b.coef_, a.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.intercept_, a.intercept_, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(b.predict(Xd).compute(), a.predict(X))
    np.testing.assert_allclose(
        b.predict_proba(Xd).compute(), a.predict_proba(X), rtol=1e-8
    )


def test_univariate_gaussian_on_dask_equals_in_memory():
    from fastvi import UnivariateGaussian

    x = np.random.default_rng(7).normal(3.0, 2.0, size=1001)
    a = _fit(UnivariateGaussian(), x)
    b = _fit(UnivariateGaussian(), da.from_array(x, chunks=300))
    assert a.n_iter_ == b.n_iter_
    for name in ("mu_mean_", "mu_precision_", "tau_shape_", "tau_rate_"):
        assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-12)
    with pytest.raises(ValueError, match="shape \\(n_samples,\\) or"):
        UnivariateGaussian().fit(da.ones((10, 2), chunks=5))


def test_conjugate_dask_bad_input():
    from fastvi import VBLinearRegression, VBLogisticRegression

    X, y, _ = _regression(50)
    X[3, 1] = np.inf
    est = VBLinearRegression()
    with pytest.raises(ValueError, match="Input X contains infinity"):
        est.fit(da.from_array(X, chunks=20), da.from_array(y, chunks=20))
    assert not hasattr(est, "coef_")
    X[3, 1] = 0.0
    y[7] = np.nan
    with pytest.raises(ValueError, match="Input y contains NaN"):
        est.fit(da.from_array(X, chunks=20), da.from_array(y, chunks=20))
    with pytest.raises(ValueError, match="target y is constant"):
        est.fit(da.from_array(X, chunks=20), da.ones(50, chunks=20))
    with pytest.raises(ValueError, match="only one class"):
        VBLogisticRegression().fit(da.from_array(X, chunks=20), da.ones(50, chunks=20))
    with pytest.raises(ValueError, match="y has shape"):
        est.fit(da.from_array(X, chunks=20), da.ones(49, chunks=20))


# ---------------------------------------------------------------------------- LDA
def _counts(n_docs=300, n_words=80, seed=8):
    return np.random.default_rng(seed).poisson(0.3, (n_docs, n_words)).astype(float)


@pytest.mark.parametrize("layout", ["dense-uneven", "sparse-chunks", "cluster"])
def test_lda_batch_on_dask_equals_in_memory(request, layout):
    import scipy.sparse as sp

    from fastvi import LatentDirichletAllocation

    X = _counts()
    kw = dict(n_components=5, random_state=0, max_iter=6, evaluate_every=2)
    a = LatentDirichletAllocation(**kw).fit(X)
    if layout == "dense-uneven":
        Xd = da.from_array(X, chunks=((70, 1, 129, 100), (30, 50)))
    elif layout == "sparse-chunks":  # scipy.sparse blocks stay sparse on the workers
        Xd = da.from_array(sp.csr_matrix(X), chunks=(100, 80), asarray=False)
    else:
        client = request.getfixturevalue("client")
        Xd = client.persist(da.from_array(X, chunks=(90, 80)))
    b = LatentDirichletAllocation(**kw).fit(Xd)
    assert (a.n_iter_, a.n_batch_iter_) == (b.n_iter_, b.n_batch_iter_)
    np.testing.assert_allclose(b.components_, a.components_, rtol=1e-10)
    np.testing.assert_allclose(b.perplexity_history_, a.perplexity_history_, rtol=1e-10)
    assert b.bound_ == pytest.approx(a.bound_, rel=1e-10)
    if layout != "sparse-chunks":
        topics = b.transform(Xd)
        assert isinstance(topics, da.Array)
        np.testing.assert_allclose(topics.compute(), a.transform(X), rtol=1e-9)


def test_lda_dask_bad_input():
    from fastvi import LatentDirichletAllocation

    X = _counts(40, 10)
    X[5, 3] = -1.0
    est = LatentDirichletAllocation(n_components=2)
    with pytest.raises(ValueError, match="Negative values in data passed to"):
        est.fit(da.from_array(X, chunks=10))
    assert not hasattr(est, "components_")
