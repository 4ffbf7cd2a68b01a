"""BayesianGaussianMixture(compute_dtype='float32'): float32 lanes, float64 sums.

Tolerances are multiples of float32's machine epsilon (EPS = 1.2e-7):

* the lower bound is a sum over N rows of D-dimensional log-densities, and
  scikit-learn's float32 fit sums them in float32: |difference| <= 16 EPS N D;
* means, covariances, precisions and weights: <= 256 EPS times the largest entry.
  Ten CAVI iterations from a 'random_from_data' start amplify rounding-level
  changes (measured up to 121 EPS for 'full' covariances at N=5000, D=8), and our
  float64 fit of the same float32 values is as far from scikit-learn's float32 fit
  as our float32 fit is; both comparisons are made below.
"""

import subprocess
import sys
import warnings

import numba
import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn import mixture as sk_mixture
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import InvalidParameterError

from fastvi import BayesianGaussianMixture
from fastvi.batch.io import NpyRows
from fastvi.persist import ModelFileError, load

from .test_mixture import COV_TYPES, FITTED, blobs

EPS = float(np.finfo(np.float32).eps)
PARAMS = ["means_", "covariances_", "precisions_cholesky_", "weights_"]


def _fit(X, cls=BayesianGaussianMixture, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cls(**params).fit(X)


def _assert_float32_close(a, b, n, d):
    assert len(a.lower_bounds_) == len(np.ravel(b.lower_bounds_))
    bound_gap = np.abs(np.asarray(a.lower_bounds_) - np.ravel(b.lower_bounds_))
    assert bound_gap.max() <= 16 * EPS * n * d
    for name in PARAMS:
        x, y = getattr(a, name), getattr(b, name)
        assert np.abs(x - y).max() <= 256 * EPS * np.abs(y).max(), name


@pytest.mark.parametrize("init_params", ["kmeans", "random_from_data"])
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_within_float32_precision_of_scikit_learn(covariance_type, init_params):
    n, d = 5000, 8
    X = blobs(n=n, d=d).astype(np.float32)
    params = dict(
        n_components=4,
        covariance_type=covariance_type,
        init_params=init_params,
        random_state=0,
        max_iter=10,
        tol=0.0,
    )
    ours = _fit(X, compute_dtype="float32", **params)
    theirs = _fit(X, sk_mixture.BayesianGaussianMixture, **params)
    reference = _fit(X.astype(np.float64), **params)  # float64 on the same values
    _assert_float32_close(ours, theirs, n, d)
    _assert_float32_close(ours, reference, n, d)
    # the model itself is float64 (float64 M-step and bound)
    assert ours.means_.dtype == np.float64
    assert ours.covariances_.dtype == np.float64


def test_default_is_float64_and_unchanged():
    X = blobs(n=600)
    a = _fit(X, n_components=3, random_state=0, max_iter=5)
    b = _fit(X, n_components=3, random_state=0, max_iter=5, compute_dtype="float64")
    assert BayesianGaussianMixture().compute_dtype == "float64"
    for name in FITTED:
        assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.lower_bounds_ == b.lower_bounds_


def test_outputs_in_float32_and_consistent():
    X = blobs(n=3000, d=4).astype(np.float32)
    est = _fit(X, n_components=3, random_state=0, compute_dtype="float32")
    proba = est.predict_proba(X)
    log_density = est.score_samples(X)
    assert proba.dtype == np.float32 and log_density.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=16 * EPS)
    assert_array_equal(est.predict(X), proba.argmax(axis=1))
    assert_array_equal(est.fit_predict(X), est.predict(X))
    ref = _fit(X.astype(np.float64), n_components=3, random_state=0)
    # the float32 log-density of a row: ~|log p| EPS per term, D + K terms
    np.testing.assert_allclose(
        log_density, ref.score_samples(X), atol=64 * EPS * np.abs(log_density).max()
    )


def test_float32_nan_in_the_parameters_stays_nan():
    X = blobs(n=500, d=3).astype(np.float32)
    est = _fit(X, n_components=2, random_state=0, compute_dtype="float32")
    est.means_ = est.means_.copy()
    est.means_[0, 0] = np.nan  # a damaged model: loud NaN, not a silent 0
    assert np.isnan(est.score_samples(X[:5])).all()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_bitwise_for_any_thread_count(covariance_type):
    X = blobs(n=5 * 4096 + 123, d=6).astype(np.float32)
    params = dict(
        n_components=4,
        covariance_type=covariance_type,
        random_state=1,
        max_iter=4,
        tol=0.0,
        init_params="random",
        compute_dtype="float32",
    )
    one = _fit(X, n_jobs=1, **params)
    two = _fit(X, n_jobs=2, **params)
    for name in FITTED:
        assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)
    assert one.lower_bounds_ == two.lower_bounds_
    assert_array_equal(one.predict_proba(X), two.predict_proba(X))


@pytest.mark.parametrize("init_params", ["random", "random_from_data"])
@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag"])
def test_out_of_core_float32_file_is_the_in_memory_fit(
    covariance_type, init_params, tmp_path
):
    X = blobs(n=3 * 4096 + 77, d=5).astype(np.float32)
    path = tmp_path / "x32.npy"
    np.save(path, X)
    params = dict(
        n_components=3,
        covariance_type=covariance_type,
        init_params=init_params,
        random_state=2,
        max_iter=4,
        tol=0.0,
        compute_dtype="float32",
    )
    memory = _fit(X, **params)
    source = NpyRows(path, block_rows=8192)
    assert source.file_dtype == np.float32
    fits = [
        _fit(source, **params),
        _fit(X.astype(np.float64), **params),  # the same values in float64
    ]
    for other in fits:
        for name in FITTED:
            assert_array_equal(getattr(memory, name), getattr(other, name), name)
        assert memory.lower_bounds_ == other.lower_bounds_


def test_float32_file_reads_the_values_of_the_file(tmp_path):
    X = blobs(n=5000, d=3).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    source = NpyRows(tmp_path / "x.npy", block_rows=4096)
    got = np.concatenate([view[1:].copy() for _, _, view in source.iter_blocks()])
    assert got.dtype == np.float64
    assert_array_equal(got, X.astype(np.float64))
    assert_array_equal(source.read_rows(10, 20), X[10:20].astype(np.float64))


def test_bad_compute_dtype_is_refused():
    with pytest.raises(InvalidParameterError, match="compute_dtype"):
        BayesianGaussianMixture(compute_dtype="float16").fit(blobs(n=50))


def test_save_and_load_keep_compute_dtype(tmp_path):
    import json

    X = blobs(n=800, d=3).astype(np.float32)
    est = _fit(X, n_components=3, random_state=0, compute_dtype="float32")
    path = tmp_path / "m.npz"
    est.save(path)
    back = load(path)
    assert back.compute_dtype == "float32"
    for method in ("predict", "predict_proba", "score_samples"):
        assert_array_equal(getattr(est, method)(X), getattr(back, method)(X))
    # a file naming a compute_dtype that does not exist is refused, naming it
    with np.load(path, allow_pickle=False) as archive:
        members = {k: archive[k] for k in archive.files}
    meta = json.loads(members["__fastvi__"].tobytes())
    text = json.dumps(meta).replace('"float32"', '"float16"')
    assert text != json.dumps(meta)
    members["__fastvi__"] = np.frombuffer(text.encode(), np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **members)
    with pytest.raises(ModelFileError, match="compute_dtype"):
        load(path)


_ONLY_FLOAT64 = """
import numpy as np, warnings
from fastvi import BayesianGaussianMixture
from fastvi.kernels import gmm
rng = np.random.default_rng(0)
X = rng.normal(size=(300, 3)).astype(np.float32)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    BayesianGaussianMixture(n_components=2, max_iter=2).fit(X)
dtypes = {str(sig[2].dtype) for sig in gmm.mixture_chunks(gmm.KIND_FULL, 3).signatures}
print(sorted(dtypes))
"""


def test_a_float64_fit_does_not_compile_the_float32_kernels():
    out = subprocess.run(
        [sys.executable, "-c", _ONLY_FLOAT64],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "['float64']"


def test_values_too_large_for_float32_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(5000, 3)) * 1e19).astype(np.float32)
    params = dict(n_components=2, init_params="random", compute_dtype="float32")
    with pytest.raises(ValueError, match="compute_dtype='float32'"):
        BayesianGaussianMixture(**params).fit(X)
    with pytest.raises(ValueError, match="compute_dtype='float32'"):
        BayesianGaussianMixture(**params).partial_fit(X)
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(ValueError, match="overflow float32"):
        BayesianGaussianMixture(**params).fit(NpyRows(tmp_path / "x.npy"))
    # the same values are fine in float64
    _fit(X, n_components=2, init_params="random", max_iter=2)


def test_online_and_partial_fit_in_float32_follow_float64():
    X = blobs(n=6000, d=4)
    params = dict(n_components=3, random_state=0, max_iter=3, tol=0.0)
    online = dict(params, learning_method="online", batch_size=1000)
    a = _fit(X.astype(np.float32), compute_dtype="float32", **online)
    b = _fit(X, **online)
    _assert_float32_close(a, b, *X.shape)
    c = BayesianGaussianMixture(compute_dtype="float32", **params)
    d = BayesianGaussianMixture(**params)
    for batch in np.array_split(X, 4):
        c.partial_fit(batch.astype(np.float32))
        d.partial_fit(batch)
    for name in PARAMS:
        x, y = getattr(c, name), getattr(d, name)
        assert np.abs(x - y).max() <= 256 * EPS * np.abs(y).max(), name


def test_dask_float32_is_the_in_memory_fit_to_rounding():
    da = pytest.importorskip("dask.array")
    X = blobs(n=3 * 4096 + 5, d=4).astype(np.float32)
    params = dict(
        n_components=3,
        init_params="random_from_data",
        random_state=0,
        max_iter=3,
        tol=0.0,
        compute_dtype="float32",
    )
    memory = _fit(X, **params)
    distributed = _fit(da.from_array(X, chunks=(8192, 4)), **params)
    for name in FITTED:
        np.testing.assert_allclose(
            getattr(distributed, name), getattr(memory, name), rtol=1e-9, atol=1e-12
        )
