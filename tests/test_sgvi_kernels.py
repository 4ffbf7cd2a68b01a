"""The SGVI kernels against their NumPy references (tests/reference_sgvi.py)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fastvi.kernels import sgvi as k
from fastvi.kernels._config import jit
from fastvi.kernels._math import exp_clamped, log1p_unit

from . import reference_sgvi as ref


@jit
def _apply_exp(a):
    out = np.empty_like(a)
    for i in range(a.size):
        out[i] = exp_clamped(a[i])
    return out


@jit
def _apply_log1p(a):
    out = np.empty_like(a)
    for i in range(a.size):
        out[i] = log1p_unit(a[i])
    return out


@jit
def _apply_logistic32(eta, y):
    term = np.empty_like(eta)
    grad = np.empty_like(eta)
    for i in range(eta.size):
        term[i], grad[i] = k._logistic_terms32(eta[i], y[i])
    return term, grad


def test_float32_logistic_terms_match_float64():
    # y eta - softplus(eta) and y - sigmoid(eta) in float32, against float64 scipy
    from scipy.special import expit, log_expit

    rng = np.random.default_rng(1)
    eta = np.concatenate(
        [
            rng.uniform(-100.0, 100.0, 20000),
            rng.normal(0.0, 2.0, 20000),
            [0.0, -0.0, 1e-30, -1e-30, 0.8813736, -0.8813736, 86.9, -87.5, 104.0],
            [-500.0, 800.0, 3.4e38, -3.4e38],
        ]
    ).astype(np.float32)
    y = (rng.random(eta.size) < 0.5).astype(np.float32)
    term, grad = _apply_logistic32(eta, y)
    e64 = eta.astype(np.float64)
    want_term = y * e64 + log_expit(-e64)
    want_grad = y - expit(e64)
    # float32 rounding of values up to |eta|: relative to max(1, |term|)
    assert_allclose(term, want_term, rtol=4e-7, atol=4e-7)
    assert_allclose(grad, want_grad, rtol=0, atol=2.5e-7)
    t_nan, g_nan = _apply_logistic32(
        np.array([np.nan], np.float32), np.ones(1, np.float32)
    )
    assert np.isnan(t_nan[0]) and np.isnan(g_nan[0])


def test_exp_clamped_matches_numpy():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.uniform(-708, 709, 20000), rng.uniform(-1, 1, 2000), [0.0, -0.0, 1e-300]]
    )
    assert_allclose(_apply_exp(x), np.exp(x), rtol=5e-14, atol=0)
    edges = _apply_exp(np.array([-708.5, -1e6, -np.inf, 709.5, np.inf, np.nan]))
    assert_array_equal(edges[:3], 0.0)
    assert np.isposinf(edges[3]) and np.isposinf(edges[4]) and np.isnan(edges[5])


def test_log1p_unit_matches_numpy():
    e = np.concatenate(
        [np.linspace(0.0, 1.0, 5001), [1e-300, 1e-17, 1e-9, np.sqrt(2) - 1, 0.41421356]]
    )
    assert_allclose(_apply_log1p(e), np.log1p(e), rtol=2e-15, atol=0)


def _problem(N, D, S, family, dtype, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D)).astype(dtype)
    W = (scale * rng.standard_normal((S, D)) / np.sqrt(D)).astype(dtype)
    b = rng.standard_normal(S).astype(dtype)
    if family == 0:
        y = (rng.random(N) < 0.5).astype(np.float64)
    elif family == 1:
        y = rng.poisson(2.0, N).astype(np.float64)
    else:
        y = rng.standard_normal(N) * 2.0
    tau = rng.uniform(0.5, 2.0, S)
    return X, y, W, b, tau


def _tiled(X, tile):
    n_tiles = (X.shape[0] + tile - 1) // tile
    out = np.empty((n_tiles, X.shape[1], tile), dtype=X.dtype)
    k.tile_rows(X, tile, out)
    return out


@pytest.mark.parametrize("family", [0, 1, 2])
@pytest.mark.parametrize(
    "N, D, S", [(1, 1, 1), (37, 5, 3), (300, 7, 8), (1000, 50, 5), (129, 4, 4)]
)
def test_glm_pass_tiled_matches_reference(family, N, D, S):
    X, y, W, b, tau = _problem(N, D, S, family, np.float64)
    tile, chunk_tiles = 32, 3
    parts = k.glm_pass_tiled(_tiled(X, tile), y, N, W, b, tau, family, chunk_tiles)
    n_tiles = (N + tile - 1) // tile
    assert parts[0].shape[0] == (n_tiles + chunk_tiles - 1) // chunk_tiles
    got = [p.sum(axis=0) for p in parts]
    want = ref.glm_pass(X, y, W, b, tau, family)
    for g, w in zip(got, want):
        assert_allclose(g, w, rtol=1e-11, atol=1e-9 * max(1.0, np.abs(w).max()))


@pytest.mark.parametrize("serial", [False, True])
@pytest.mark.parametrize("family", [0, 1, 2])
def test_glm_pass_rows_matches_reference(family, serial):
    X, y, W, b, tau = _problem(500, 6, 3, family, np.float64, seed=1)
    rows = np.random.default_rng(2).choice(500, 77, replace=False)
    kernel = k.glm_pass_rows_serial if serial else k.glm_pass_rows
    parts = kernel(X, y, rows, W, b, tau, family, 32, 16)
    got = [p.sum(axis=0) for p in parts]
    want = ref.glm_pass(X, y, W, b, tau, family, rows=rows)
    for g, w in zip(got, want):
        assert_allclose(g, w, rtol=1e-11, atol=1e-9 * max(1.0, np.abs(w).max()))


@pytest.mark.parametrize("family", [0, 1, 2])
def test_glm_pass_tiled_every_block_shape(family):
    # every combination of the products' register blocks and their leftovers
    # (draws: 4, 2, 1; features: 4, 2, 1): float64 within 1e-12 of the reference,
    # relative to the largest entry of each output, and the parallel pass bitwise the
    # serial one
    N, tile, chunk_tiles = 200, 64, 2
    for D in (1, 2, 3, 4, 5, 6, 7, 9, 50):
        for S in range(1, 10):
            X, y, W, b, tau = _problem(N, D, S, family, np.float64, seed=D * 10 + S)
            Xt = _tiled(X, tile)
            parts = k.glm_pass_tiled(Xt, y, N, W, b, tau, family, chunk_tiles)
            serial = k.glm_pass_tiled_serial(Xt, y, N, W, b, tau, family, chunk_tiles)
            want = ref.glm_pass(X, y, W, b, tau, family)
            for p, q, w in zip(parts, serial, want):
                assert_array_equal(p, q)
                scale = max(np.abs(w).max(), 1e-300)
                err = np.abs(p.sum(axis=0) - w).max() / scale
                assert err <= 1e-12, (D, S, err)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gather_tile_copies_the_rows_it_is_given(dtype):
    # rows in any order, repeated, the last row of X (whose prefetch of the lines
    # ahead runs past the end of X: a hint, never a fault), fewer rows than a block
    # of the prefetch (tiles.GATHER_AHEAD = 16), tiles of whole and partial blocks
    # and tiles that do not start at 0
    from fastvi.kernels.tiles import gather_tile

    X = np.random.default_rng(5).standard_normal((37, 21)).astype(dtype)
    for rows in ([36, 0, 5, 36, 17] * 9, [36, 2, 36], list(range(36, -1, -1))):
        rows = np.array(rows, dtype=np.int64)
        for tile in (16, 10, 40):
            for t0 in range(0, rows.shape[0], tile):
                T = min(tile, rows.shape[0] - t0)
                Xt = np.full((21, tile), np.nan, dtype=dtype)
                gather_tile(X, rows, t0, T, Xt)
                assert_array_equal(Xt[:, :T], X[rows[t0 : t0 + T]].T)
                assert np.isnan(Xt[:, T:]).all()


def test_serial_and_parallel_rows_agree_bitwise():
    X, y, W, b, tau = _problem(3000, 9, 5, 0, np.float64, seed=3)
    rows = np.random.default_rng(4).choice(3000, 2000, replace=False)
    a = k.glm_pass_rows(X, y, rows, W, b, tau, 0, 256, 64)
    s = k.glm_pass_rows_serial(X, y, rows, W, b, tau, 0, 256, 64)
    for p, q in zip(a, s):
        assert_array_equal(p, q)


@pytest.mark.parametrize("family", [0, 1, 2])
def test_glm_pass_float32_close_to_float64(family):
    X, y, W, b, tau = _problem(700, 13, 4, family, np.float32, seed=5)
    parts = k.glm_pass_tiled(_tiled(X, 64), y, 700, W, b, tau, family, 2)
    got = [p.sum(axis=0) for p in parts]
    want = ref.glm_pass(X, y, W, b, tau, family)
    for g, w in zip(got, want):
        assert_allclose(g, w, rtol=2e-5, atol=2e-5 * np.abs(w).max())


def test_logistic_extreme_linear_predictors():
    # |eta| up to 800: log-likelihood and gradient stay finite and exact
    X = np.array([[1.0], [1.0], [1.0], [1.0]])
    y = np.array([1.0, 0.0, 1.0, 0.0])
    W = np.array([[800.0], [-800.0], [30.0], [1e-12]])
    b = np.zeros(4)
    parts = k.glm_pass_tiled(_tiled(X, 16), y, 4, W, b, np.ones(4), 0, 1)
    ll, gw, gb, _ = (p.sum(axis=0) for p in parts)
    want = ref.glm_pass(X, y, W, b, np.ones(4), 0)
    assert np.all(np.isfinite(ll)) and np.all(np.isfinite(gw))
    assert_allclose(ll, want[0], rtol=1e-13)
    assert_allclose(gw, want[1], rtol=1e-13, atol=1e-300)


def test_logistic_extreme_linear_predictors_float32():
    X = np.ones((4, 1), np.float32)
    y = np.array([1.0, 0.0, 1.0, 0.0])
    W = np.array([[800.0], [-800.0], [30.0], [1e-12]], np.float32)
    b = np.zeros(4, np.float32)
    parts = k.glm_pass_tiled(_tiled(X, 16), y, 4, W, b, np.ones(4), 0, 1)
    ll, gw, gb, _ = (p.sum(axis=0) for p in parts)
    want = ref.glm_pass(X.astype(np.float64), y, W.astype(np.float64), b, np.ones(4), 0)
    assert np.all(np.isfinite(ll)) and np.all(np.isfinite(gw))
    assert_allclose(ll, want[0], rtol=1e-6)
    assert_allclose(gw, want[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_in_draws_propagates(dtype):
    X, y, W, b, tau = _problem(40, 3, 2, 0, dtype)
    W[1, 0] = np.nan
    parts = k.glm_pass_tiled(_tiled(X, 16), y, 40, W, b, tau, 0, 1)
    ll = parts[0].sum(axis=0)
    assert np.isfinite(ll[0]) and np.isnan(ll[1])


def test_tile_rows_pads_with_zeros():
    X = np.arange(10.0).reshape(5, 2)
    out = _tiled(X, 4)
    assert out.shape == (2, 2, 4)
    assert_array_equal(out[0], X[:4].T)
    assert_array_equal(out[1][:, 0], X[4])
    assert_array_equal(out[1][:, 1:], 0.0)


_TWINS_SCRIPT = """
import json
import numpy as np
from fastvi.kernels import sgvi as k
rng = np.random.default_rng(0)
X = rng.normal(size=(300, 4))
y = (rng.random(300) < 0.5) * 1.0
W, b, tau = rng.normal(size=(3, 4)), rng.normal(size=3), np.ones(3)
rows = np.arange(0, 300, 2)
out = {}
for f in (k.glm_pass_rows, k.glm_pass_rows_serial):
    parts = f(X, y, rows, W, b, tau, 0, 64, 16)
    out[f.py_func.__name__] = {
        "hits": sum(f.stats.cache_hits.values()),
        "misses": sum(f.stats.cache_misses.values()),
        "parallel": bool(f.targetoptions.get("parallel")),
        "ll": parts[0].sum(axis=0).tolist(),
    }
print(json.dumps(out))
"""


def _run_fresh(env):
    import json
    import os
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    full.update(env)
    out = subprocess.run(
        [sys.executable, "-c", _TWINS_SCRIPT],
        capture_output=True,
        text=True,
        env=full,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_serial_twin_is_its_own_kernel_in_the_cache(tmp_path):
    # the serial twin is compiled from the parallel kernel's source; it must get its
    # own cache entry (numba's cache keys on the name, not the options), or a process
    # would load one for the other
    env = {"FASTVI_CACHE_DIR": str(tmp_path / "cache")}
    first = _run_fresh(env)
    second = _run_fresh(env)
    par, ser = first["glm_pass_rows"], first["glm_pass_rows_serial"]
    assert par["parallel"] and not ser["parallel"]
    assert par["misses"] == 1 and ser["misses"] == 1
    assert par["hits"] == 0 and ser["hits"] == 0
    for name in ("glm_pass_rows", "glm_pass_rows_serial"):
        assert second[name]["hits"] == 1 and second[name]["misses"] == 0
    assert ser["ll"] == par["ll"] == second["glm_pass_rows_serial"]["ll"]
