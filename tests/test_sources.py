"""Every conjugate estimator and the mixture on every data source (``fastvi.rows``).

The matrix: estimator x source (in memory, a ``.npy`` file read block by block, a dask
array). Out-of-core fits are bitwise the in-memory fits, and so are Dask fits whose
row chunks are the blocks (other chunkings agree to 1e-10: tests/test_dask.py);
1 and 2 threads give the same bits. The data span three blocks (the last partial),
so the sums go through the block tree. The mixture and the SGVI estimators sum in
order (``map_reduce(..., ordered=True)``): their file and Dask fits are bitwise the
in-memory fits for any block or chunk size that is a multiple of the kernels' chunk.
"""

import warnings
from functools import cache

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

from fastvi import UnivariateGaussian, VBLinearRegression, VBLogisticRegression
from fastvi.batch.io import DataError, NpyRows
from fastvi.rows import BLOCK_ROWS, ArrayRows, FileRows, Max, fold_in_order, tree_sum

N = 2 * BLOCK_ROWS + 1234  # three blocks, the last one partial


# ------------------------------------------------------------------ the tree
class _Expr:
    """A "number" whose + writes down the tree it was added in."""

    def __init__(self, text):
        self.text = text

    def __add__(self, other):
        return _Expr(f"({self.text}+{other.text})")


def _level_by_level(parts):
    """The documented tree: neighbours paired level by level, odd last part carried."""
    while len(parts) > 1:
        paired = [a + b for a, b in zip(parts[::2], parts[1::2])]
        parts = paired + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


@pytest.mark.parametrize("n", range(1, 40))
def test_tree_sum_is_the_level_by_level_tree(n):
    parts = [_Expr(str(i)) for i in range(n)]
    assert tree_sum(iter(parts)).text == _level_by_level(parts).text


def test_tree_sum_adds_tuples_and_maxima_and_refuses_nothing():
    total = tree_sum([(1, np.ones(2), Max(3)), (2, np.ones(2), Max(-1))])
    assert total[0] == 3 and total[2].value == 3
    np.testing.assert_array_equal(total[1], [2.0, 2.0])
    with pytest.raises(ValueError, match="no rows"):
        tree_sum([])


# ------------------------------------------------------------------ sources
def _blocks_sum(block, start, weight):
    rows, targets = block
    if sp.issparse(rows):  # CSR blocks hold the same rows
        assert rows.format == "csr"
        rows = rows.toarray()
    return rows.sum(axis=0) * weight, float(targets @ targets), Max(start)


def _local_sum(block, start, offset):
    return float(block[0].sum()) + offset


def test_every_source_gives_the_same_bits(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 3)) * np.array([1.0, 1e3, 1e-3])
    y = rng.normal(size=N)
    np.save(tmp_path / "x.npy", X)
    sources = [
        ArrayRows(X, y),
        ArrayRows(sp.csr_matrix(X), y),
        FileRows(NpyRows(tmp_path / "x.npy"), y),
    ]
    results = [rows.map_reduce(_blocks_sum, shared=(2.0,)) for rows in sources]
    for other in results[1:]:
        np.testing.assert_array_equal(other[0], results[0][0])
        assert other[1] == results[0][1]
        assert other[2].value == 2 * BLOCK_ROWS
    np.testing.assert_allclose(results[0][0], 2.0 * X.sum(axis=0), rtol=1e-12)
    # per-block arguments, per-row results, every k-th row
    offsets = [[10.0], [20.0], [30.0]]
    assert sources[2].map_reduce(_local_sum, local=offsets) == sources[0].map_reduce(
        _local_sum, local=offsets
    )
    np.testing.assert_array_equal(sources[2].map_rows(np.sum, (1,)), X.sum(axis=1))
    for rows in sources[::2]:
        sub = rows.subsample(7)
        np.testing.assert_array_equal(sub.X, X[::7])
        np.testing.assert_array_equal(sub.y, y[::7])
    np.testing.assert_array_equal(
        ArrayRows(X, np.arange(N) % 3).unique_targets(), [0, 1, 2]
    )


# ------------------------------------------------------------------ the matrix
def _data(kind):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(N, 4)) + np.array([0.0, 1.0, -2.0, 0.5])
    w = np.array([1.0, -0.5, 0.25, 2.0])
    if kind == "gaussian":
        return X[:, :1] * 2.0 + 3.0, None
    if kind == "linear":
        return X, X @ w + 0.3 + rng.normal(size=N)
    logits = np.column_stack([X @ w, -(X @ w), 0.5 * X[:, 0]])
    if kind == "binary":
        return X, np.where(logits[:, 0] + rng.logistic(size=N) > 0, "yes", "no")
    return X, np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)


ESTIMATORS = {
    "gaussian": lambda **kw: UnivariateGaussian(),
    "linear": lambda **kw: VBLinearRegression(**kw),
    "ard": lambda **kw: VBLinearRegression(ard=True, fit_intercept=False, **kw),
    "binary": lambda **kw: VBLogisticRegression(**kw),
    "ovr": lambda **kw: VBLogisticRegression(max_iter=30, **kw),
}
DATA = {"gaussian": "gaussian", "linear": "linear", "ard": "linear"}
FITTED = {
    UnivariateGaussian: ("mu_mean_", "mu_precision_", "tau_shape_", "tau_rate_"),
    VBLinearRegression: ("coef_", "sigma_", "alpha_shape_", "alpha_rate_", "lambda_"),
    VBLogisticRegression: ("coef_", "intercept_", "sigma_", "lambda_"),
}


def _source(kind, X, tmp_path):
    if kind == "memory":
        return X
    if kind == "file":
        np.save(tmp_path / "x.npy", X)
        return NpyRows(tmp_path / "x.npy")
    da = pytest.importorskip("dask.array")
    return da.from_array(X, chunks=(BLOCK_ROWS, X.shape[1]))


def _fit(name, X, y, **kw):
    est = ESTIMATORS[name](**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X) if y is None else est.fit(X, y)


@cache
def _in_memory(name):
    X, y = _data(DATA.get(name, name))
    return _fit(name, X, y)


def _assert_same_bits(a, b):
    np.testing.assert_array_equal(a.n_iter_, b.n_iter_)
    np.testing.assert_array_equal(a.lower_bound_, b.lower_bound_)
    assert a.lower_bounds_ == b.lower_bounds_
    for name in FITTED[type(a)]:
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), name)


def _predictions(est, X):
    if isinstance(est, VBLogisticRegression):
        out = [est.predict_proba(X), est.decision_function(X), est.predict(X)]
    elif isinstance(est, VBLinearRegression):
        out = [est.predict(X), *est.predict(X, return_std=True)]
    else:
        out = [est.score_samples(X)]
    return [np.asarray(o.compute() if hasattr(o, "compute") else o) for o in out]


@pytest.mark.parametrize("source", ["memory", "file", "dask"])
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_matrix_every_source_gives_the_in_memory_bits(name, source, tmp_path):
    X, y = _data(DATA.get(name, name))
    a = _in_memory(name)
    b = _fit(name, _source(source, X, tmp_path), y)
    _assert_same_bits(a, b)
    if name in ("binary", "ovr"):
        assert a.n_iter_ is not None and X.shape[0] >= 32 * 1024  # subsample start
    for p, q in zip(_predictions(a, X), _predictions(b, _source(source, X, tmp_path))):
        np.testing.assert_array_equal(q, p)


@pytest.mark.parametrize("name", ["linear", "binary"])
def test_matrix_thread_counts_give_the_same_bits(name, tmp_path):
    X, y = _data(name)
    one = _fit(name, _source("file", X, tmp_path), y, n_jobs=1)
    two = _fit(name, _source("file", X, tmp_path), y, n_jobs=2)
    _assert_same_bits(one, two)
    _assert_same_bits(_in_memory(name), one)


def test_file_sources_say_what_is_wrong(tmp_path):
    X, y = _data("linear")
    X = X[:5000]
    y = y[:5000]
    np.save(tmp_path / "x.npy", X)
    source = NpyRows(tmp_path / "x.npy")
    est = VBLinearRegression()
    with pytest.raises(ValueError, match=r"y has shape \(4999,\); expected \(5000,\)"):
        est.fit(source, y[:-1])
    with pytest.raises(ValueError, match="requires y to be passed"):
        est.fit(source, None)
    with pytest.raises(ValueError, match="needs X of shape"):
        UnivariateGaussian().fit(source)
    X[4321, 2] = np.nan
    np.save(tmp_path / "bad.npy", X)
    with pytest.raises(DataError, match=r"bad.npy: row 4322, column 3"):
        est.fit(NpyRows(tmp_path / "bad.npy"), y)
    assert not hasattr(est, "coef_")
    fitted = VBLogisticRegression().fit(X[:100, :3], y[:100] > 0)
    with pytest.raises(ValueError, match="X has 4 features"):
        fitted.predict(source)


def test_sums_that_overflow_are_refused_without_a_warning(tmp_path):
    # the first pass sums values near the float64 limit: inf, refused by the scale
    # check with its message (no RuntimeWarning, an error in this suite)
    x = np.full((40, 1), 1e307)
    np.save(tmp_path / "x.npy", x)
    for X in (x, NpyRows(tmp_path / "x.npy")):
        with pytest.raises(ValueError, match="X has values as large as 1e"):
            UnivariateGaussian().fit(X)
        with pytest.raises(ValueError, match="X has values as large as 1e"):
            VBLinearRegression().fit(X, np.arange(40.0))


# ------------------------------------------------------- sums in order (the mixture)
def _stacked(rng, n, shape):
    return rng.normal(size=(n, *shape)) * 10.0 ** rng.integers(-8, 9, size=(n, *shape))


def _in_one_buffer(pieces):
    """Each piece as a view of one reused buffer (as a file's blocks), and a copy."""
    buffer = np.empty((max(map(len, pieces)), *pieces[0].shape[1:]))
    for piece in pieces:
        view = buffer[: len(piece)]
        view[...] = piece
        yield view, piece.copy()


@pytest.mark.parametrize(
    "shape", [(), (1,), (2,), (3,), (2, 3), (2, 0, 3), (2, 3, 3), (32, 16, 16)]
)
def test_fold_in_order_is_numpys_sum_of_the_concatenation(shape):
    rng = np.random.default_rng(7)
    parts = _stacked(rng, 300, shape)
    for cuts in ([150], [1, 2, 3, 200], list(range(7, 300, 7))):
        got = fold_in_order(_in_one_buffer(np.split(parts, cuts)))
        want = parts.sum(axis=0)
        for g in got:
            np.testing.assert_array_equal(g, want)
    with pytest.raises(ValueError, match="no rows"):
        fold_in_order([])


@pytest.mark.parametrize("d", [1, 3])
def test_ordered_map_reduce_has_numpys_bits_for_any_block_size(d, tmp_path):
    rng = np.random.default_rng(8)
    X = _stacked(rng, BLOCK_ROWS + 3 * 4096 + 17, (d,))
    np.save(tmp_path / "x.npy", X)
    sources = [
        ArrayRows(X),
        ArrayRows(X, block_rows=3 * 4096),
        FileRows(NpyRows(tmp_path / "x.npy", block_rows=4096)),
    ]
    for rows in sources:
        total = rows.map_reduce(lambda block, start: block, ordered=True)
        np.testing.assert_array_equal(total, X.sum(axis=0))
    assert list(sources[1].block_sizes()) == [3 * 4096] * 6 + [4113]
    assert sum(sources[2].block_sizes()) == X.shape[0]


def test_ordered_map_reduce_on_dask_folds_the_chunks_in_order():
    da = pytest.importorskip("dask.array")
    from fastvi._dask import DaskRows

    X = _stacked(np.random.default_rng(9), 1000, (3,))
    rows = DaskRows(da.from_array(X, chunks=(300, 3)))
    assert list(rows.block_sizes()) == [300, 300, 300, 100]
    total = rows.map_reduce(lambda block, start: (block, block[:, :1]), ordered=True)
    np.testing.assert_array_equal(total[0], X.sum(axis=0))
    np.testing.assert_array_equal(total[1], X[:, :1].sum(axis=0))


@cache
def _mixture_data():
    rng = np.random.default_rng(3)
    centers = rng.normal(0.0, 4.0, size=(3, 3)) + 20.0
    return centers[rng.integers(0, 3, N)] + rng.normal(size=(N, 3))


def _mixture(X, covariance_type, init_params):
    from fastvi import BayesianGaussianMixture

    est = BayesianGaussianMixture(
        n_components=3,
        covariance_type=covariance_type,
        init_params=init_params,
        random_state=0,
        max_iter=4,
        tol=0.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X)


@pytest.mark.parametrize("source", ["file", "file 3 chunks", "dask 3 chunks"])
@pytest.mark.parametrize(
    ("covariance_type", "init_params"),
    [("full", "random_from_data"), ("tied", "random"), ("diag", "random")],
)
def test_matrix_mixture_every_source(source, covariance_type, init_params, tmp_path):
    # in order: any multiple of the kernels' 4096-row chunk gives the bits
    X = _mixture_data()
    a = _mixture(X, covariance_type, init_params)
    block_rows = 3 * 4096 if source.endswith("3 chunks") else BLOCK_ROWS
    if source.startswith("dask"):
        da = pytest.importorskip("dask.array")
        Xs = da.from_array(X, chunks=(block_rows, 3))
    else:
        np.save(tmp_path / "x.npy", X)
        Xs = NpyRows(tmp_path / "x.npy", block_rows=block_rows)
    b = _mixture(Xs, covariance_type, init_params)
    assert b.lower_bounds_ == a.lower_bounds_
    names = ("means_", "covariances_", "precisions_cholesky_", "weights_")
    for name in (*names, "mean_prior_", "covariance_prior_"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), name)
    scores = b.score_samples(Xs)
    scores = scores.compute() if hasattr(scores, "compute") else scores
    np.testing.assert_array_equal(scores, a.score_samples(X))


# ------------------------------------------------------- the SGVI estimators
def _sgvi(name, **kw):
    from fastvi import BayesianLogisticRegression, BayesianPoissonRegression

    cls = (
        BayesianLogisticRegression if name == "logistic" else BayesianPoissonRegression
    )
    return cls(random_state=0, **kw)


def _sgvi_data(name):
    X, y = _data("binary")
    if name == "poisson":
        w = np.array([0.3, -0.2, 0.1, 0.4])
        y = np.random.default_rng(2).poisson(np.exp(X @ w - 0.5))
    return X, y


def _sgvi_fit(name, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PSIS / correlation advice on a mean-field q
        return _sgvi(name, **kw).fit(X, y)


@cache
def _sgvi_in_memory(name, method):
    return _sgvi_fit(name, *_sgvi_data(name), method=method, max_iter=40)


def _sgvi_predictions(est, X):
    if est._family == "logistic":
        out = [est.predict_proba(X), est.decision_function(X), est.predict(X)]
    else:
        out = [est.predict(X)]
    return [np.asarray(o.compute() if hasattr(o, "compute") else o) for o in out]


@pytest.mark.parametrize("method", ["auto", "sgd"])
@pytest.mark.parametrize("source", ["file", "dask"])
@pytest.mark.parametrize("name", ["logistic", "poisson"])
def test_matrix_sgvi_every_source(name, source, method, tmp_path):
    """Every data pass (Laplace start, fixed-draw BFGS or stochastic steps, PSIS)
    is a block statistic summed in chunk order: a file and Dask (on one thread,
    the in-memory fit on all) give the in-memory bits, so BFGS takes the same path."""
    X, y = _sgvi_data(name)
    a = _sgvi_in_memory(name, method)
    b = _sgvi_fit(
        name, _source(source, X, tmp_path), y, method=method, max_iter=40, n_jobs=1
    )
    assert a.fit_method_ == b.fit_method_ == ("fixed" if method == "auto" else "sgd")
    assert (a.n_iter_, a.converged_) == (b.n_iter_, b.converged_)
    np.testing.assert_array_equal(b.state_.params, a.state_.params)
    names = ("posterior_mean_", "posterior_cov_", "elbo_history_", "_predictive_draws")
    for attr in names:
        np.testing.assert_array_equal(getattr(b, attr), getattr(a, attr), attr)
    pa, pb = _sgvi_predictions(a, X), _sgvi_predictions(b, _source(source, X, tmp_path))
    for p, q in zip(pa, pb):
        np.testing.assert_array_equal(q, p)


def test_sgvi_out_of_core_thread_counts_and_what_is_refused(tmp_path):
    X, y = _sgvi_data("logistic")
    one, two = (
        _sgvi_fit("logistic", _source("file", X, tmp_path), y, n_jobs=n) for n in (1, 2)
    )
    np.testing.assert_array_equal(one.posterior_cov_, two.posterior_cov_)
    np.testing.assert_array_equal(one.elbo_history_, two.elbo_history_)
    source = _source("file", X, tmp_path)
    with pytest.raises(ValueError, match=r"Minibatches need the rows in memory"):
        _sgvi("logistic", batch_size=100).fit(source, y)
    from fastvi.sgvi.priors import Flat

    with pytest.raises(ValueError, match="A flat prior needs the rows in memory"):
        _sgvi("logistic", intercept_prior=Flat()).fit(source, y)
    with pytest.raises(ValueError, match=r"y has shape \(3,\)"):
        _sgvi("poisson").fit(source, y[:3])
    X[17, 1] = np.inf
    np.save(tmp_path / "bad.npy", X)
    with pytest.raises(DataError, match=r"bad.npy: row 18, column 2"):
        _sgvi("logistic").fit(NpyRows(tmp_path / "bad.npy"), y)
