"""The GLM's value-only pass (fastvi.kernels.sgvi, glm_values_*): what PSIS k-hat and the
score-function estimator read, against the NumPy reference and the gradient pass."""

import numba
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fastvi.kernels import sgvi as k
from fastvi.kernels import sgvi as kv
from fastvi.sgvi import GLM

from . import reference_sgvi as ref


def _problem(N, D, S, family, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D)).astype(dtype)
    W = (rng.standard_normal((S, D)) / np.sqrt(D)).astype(dtype)
    b = rng.standard_normal(S).astype(dtype)
    y = [
        (rng.random(N) < 0.5).astype(np.float64),
        rng.poisson(2.0, N).astype(np.float64),
        rng.standard_normal(N) * 2.0,
    ][family]
    return X, y, W, b, rng.uniform(0.5, 2.0, S)


def _tiled(X, tile):
    out = np.empty((-(-X.shape[0] // tile), X.shape[1], tile), dtype=X.dtype)
    k.tile_rows(X, tile, out)
    return out


def _check(parts, want):
    ll, ss = (p.sum(axis=0) for p in parts)
    for got, w in ((ll, want[0]), (ss, want[3])):
        assert_allclose(got, w, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(w).max()))


@pytest.mark.parametrize("family", [0, 1, 2])
def test_values_match_reference_every_block_shape(family):
    # the product's register blocks and leftovers (draws 4/1, features 4/2/1); the
    # serial twins give the parallel kernels' bits
    N, tile = 200, 32
    for D in (1, 2, 3, 5, 7, 50):
        for S in (1, 3, 4, 6, 9):
            X, y, W, b, tau = _problem(N, D, S, family, np.float64, seed=D + 10 * S)
            want = ref.glm_pass(X, y, W, b, tau, family)
            args = (_tiled(X, tile), y, N, W, b, tau, family, 2)
            par, ser = kv.glm_values_tiled(*args), kv.glm_values_tiled_serial(*args)
            rows = np.random.default_rng(S).permutation(N)
            args = (X, y, rows, W, b, tau, family, 48, 16)
            rpar, rser = kv.glm_values_rows(*args), kv.glm_values_rows_serial(*args)
            for p, q in zip(par + rpar, ser + rser):
                assert_array_equal(p, q)
            _check(par, want)
            _check(rpar, want)
            # a minibatch: a subset of the rows, repeated rows allowed
            sub = np.random.default_rng(D).integers(0, N, 77)
            part = kv.glm_values_rows(X, y, sub, W, b, tau, family, 48, 16)
            _check(part, ref.glm_pass(X, y, W, b, tau, family, rows=sub))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("minibatch", [False, True])
@pytest.mark.parametrize("family", ["logistic", "poisson", "gaussian"])
def test_model_values_equal_the_gradient_pass(family, minibatch, dtype):
    X, y, *_ = _problem(
        3000, 11, 1, ["logistic", "poisson", "gaussian"].index(family), dtype, 7
    )
    model = GLM(X, y, family, minibatch=minibatch)
    z = 0.3 * np.random.default_rng(8).standard_normal((10, model.size))
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    want = model.log_density(z, None)[0]
    assert_allclose(model.log_density(z, None, grad=False), want, rtol=rtol)
    if minibatch:
        rows = np.random.default_rng(9).integers(0, 3000, 500)
        want = model.log_density(z, rows)[0]
        assert_allclose(model.log_density(z, rows, grad=False), want, rtol=rtol)


@pytest.mark.parametrize("minibatch", [False, True])
def test_model_values_bitwise_across_thread_counts(minibatch):
    # large enough (rows x features x draws) to run the parallel kernels
    X, y, *_ = _problem(40000, 20, 1, 0, np.float64, seed=11)
    model = GLM(X, y, minibatch=minibatch)
    z = 0.2 * np.random.default_rng(12).standard_normal((16, model.size))
    out = []
    previous = numba.get_num_threads()
    try:
        for n in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(n)
            out.append(model.log_density(z, None, grad=False))
    finally:
        numba.set_num_threads(previous)
    assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("scale", [1.0, 300.0])
@pytest.mark.parametrize("family", [0, 1, 2])
def test_float32_values_close_to_float64_reference(family, scale):
    # float32 data (float32 logistic terms); scale 300: |eta| up to ~1e3 for the
    # logistic family, where softplus is eta itself or 0
    X, y, W, b, tau = _problem(700, 13, 5, family, np.float32, seed=13)
    if family == 0:
        W = (W * scale).astype(np.float32)
    par = kv.glm_values_tiled(_tiled(X, 64), y, 700, W, b, tau, family, 2)
    want = ref.glm_pass(X, y, W, b, tau, family)
    for got, w in ((par[0].sum(axis=0), want[0]), (par[1].sum(axis=0), want[3])):
        assert_allclose(got, w, rtol=2e-5, atol=2e-5 * np.abs(w).max())
    nan = W.copy()
    nan[1, 0] = np.nan
    ll = kv.glm_values_tiled(_tiled(X, 64), y, 700, nan, b, tau, family, 2)[0]
    assert np.isnan(ll.sum(axis=0)[1]) and np.isfinite(ll.sum(axis=0)[[0, 2]]).all()
