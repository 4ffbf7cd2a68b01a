"""Every kernel against its NumPy reference (tests/reference.py), small and edge inputs."""

import numba
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fastvi._threads import map_chunks
from fastvi.kernels import gmm
from fastvi.kernels._config import jit
from fastvi.kernels._math import exp_nonpos, log_ge1_32

from . import reference as ref


@jit
def _exp_array(a):
    out = np.empty_like(a)
    for i in range(a.size):
        out[i] = exp_nonpos(a[i])
    return out


def test_exp_nonpos_matches_numpy():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            -rng.exponential(30.0, 20000),
            -rng.uniform(0, 1e-3, 1000),
            [0.0, -0.0, -1e-300, 1e-15, -707.9, -708.0 + 1e-9],
        ]
    )
    got = _exp_array(x)
    want = np.exp(x)
    keep = x > -708.0
    assert_allclose(got[keep], want[keep], rtol=5e-14, atol=0)
    assert np.all(got[~keep] == 0.0)


def test_exp_nonpos_edges():
    x = np.array([-708.5, -745.2, -1e6, -np.inf, np.nan])
    got = _exp_array(x)
    assert_array_equal(got[:4], 0.0)
    assert np.isnan(got[4])


@jit
def _log32_array(a):
    out = np.empty_like(a)
    for i in range(a.size):
        out[i] = log_ge1_32(a[i])
    return out


def test_log_ge1_32_matches_numpy():
    rng = np.random.default_rng(0)
    y = np.concatenate(
        [
            [1.0, np.nextafter(np.float32(1), np.float32(2)), np.sqrt(2.0), 64.0],
            1.0 + rng.exponential(5.0, 20000),
            2.0 ** rng.uniform(0, 127, 5000),
            2.0 ** np.arange(128),
        ]
    ).astype(np.float32)
    got = _log32_array(y)
    assert got.dtype == np.float32 and got[0] == 0.0
    want = np.log(y.astype(np.float64))
    # within 4 float32 ulp of the value (or of 1e-7 near y = 1)
    ulp = np.spacing(np.maximum(np.abs(want), 1e-7).astype(np.float32))
    assert np.all(np.abs(got - want) <= 4 * ulp)


def _random_params(rng, kind, K, D, scale=1.0):
    means = rng.normal(0.0, 2.0 * scale, size=(K, D))
    const = rng.normal(size=K)
    if kind == 0:
        prec = np.triu(rng.normal(size=(K, D, D))) / scale
        idx = np.arange(D)
        prec[:, idx, idx] = np.abs(prec[:, idx, idx]) + 0.5 / scale
    elif kind == 1:
        U = np.triu(rng.normal(size=(D, D))) / scale
        U[np.arange(D), np.arange(D)] = np.abs(np.diag(U)) + 0.5 / scale
        prec = U[np.newaxis]
        means = means @ U  # the kernel takes projected means for 'tied'
    else:
        prec = rng.uniform(0.2, 2.0, size=(K, 1, D)) / scale**2
    return means, prec, const


def _mixture_pass(X, kind, means, prec, const, shift, resp, labels, chunk, tile, *outs):
    """All chunks of ``gmm.mixture_chunks`` on this thread's numba thread count; the
    partials start as NaN, so a chunk that adds to them instead of writing shows."""
    N, D = X.shape
    K = const.shape[0]
    C = -(-N // chunk)
    Dq = {0: D, 1: 0, 2: 1}[kind]
    parts = tuple(
        np.full(shape, np.nan) for shape in ((C, K), (C, K, D), (C, K, Dq, D), C, C)
    )
    args = (X, means, prec, const, shift, resp, labels, chunk, tile)
    map_chunks(gmm.mixture_chunks(kind, D), C, *args, *outs, *parts)
    return parts


def _run(X, kind, means, prec, const, shift, resp_in=None, chunk=64, tile=16):
    N = X.shape[0]
    K = const.shape[0]
    lr = np.full((N, K), np.nan)
    lse = np.full(N, np.nan)
    lab = np.full(N, -7, dtype=np.int64)
    given = np.empty((0, K)) if resp_in is None else resp_in
    no_labels = np.empty(0, dtype=np.int64)
    parts = _mixture_pass(
        X, kind, means, prec, const, shift, given, no_labels, chunk, tile, lr, lse, lab
    )
    if resp_in is None:
        # the labels output is the first maximum of the log-responsibilities
        assert_array_equal(lab, np.argmax(lr, axis=1))
    return parts, lr, lse


CASES = [
    # (N, K, D, chunk, tile): single row, single component, partial tiles and chunks
    (1, 1, 1, 64, 16),
    (1, 3, 2, 64, 16),
    (7, 1, 3, 64, 16),
    (100, 3, 4, 64, 16),
    (257, 4, 5, 64, 16),
    (300, 2, 1, 4096, 256),
    (130, 5, 6, 32, 8),
    # 'full' pads the features to a multiple of 8: 8, 16 (tiles.maha_unrolled), 24, 40
    (150, 3, 13, 64, 16),
    (90, 2, 16, 64, 32),
    (70, 3, 17, 64, 16),
    (60, 2, 33, 32, 16),
]


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["full", "tied", "diag"])
@pytest.mark.parametrize("N,K,D,chunk,tile", CASES)
def test_mixture_pass_matches_reference(kind, N, K, D, chunk, tile):
    rng = np.random.default_rng(N * 100 + K * 10 + D)
    X = rng.normal(size=(N, D)) * 3.0
    means, prec, const = _random_params(rng, kind, K, D)
    shift = rng.normal(size=(K, D))
    (nk, sx, sq, norm, ent), lr, lse = _run(
        X, kind, means, prec, const, shift, None, chunk, tile
    )
    r_nk, r_sx, r_sq, r_norm, r_ent, r_lr, r_lse = ref.mixture_pass(
        X, kind, means, prec, const, shift
    )
    n_chunks = -(-N // chunk)
    assert nk.shape == (n_chunks, K)
    assert_allclose(nk.sum(0), r_nk, rtol=1e-12, atol=1e-12)
    assert_allclose(sx.sum(0), r_sx, rtol=1e-11, atol=1e-10)
    assert_allclose(sq.sum(0), r_sq, rtol=1e-11, atol=1e-10)
    assert_allclose(norm.sum(), r_norm, rtol=1e-12)
    assert_allclose(ent.sum(), r_ent, rtol=1e-10, atol=1e-10)
    assert_allclose(lr, r_lr, rtol=1e-12, atol=1e-11)
    assert_allclose(lse, r_lse, rtol=1e-13)


@pytest.mark.parametrize(
    "kind,offset", [(0, 0.0), (1, 0.0), (2, 0.0), (2, 1e4)], ids=str
)
@pytest.mark.parametrize("D", [7, 12, 20])
def test_float32_pass_within_float32_precision_of_reference(kind, offset, D):
    # float32 lanes (512-row tiles, float32 exp and log, the flush below exp(-64))
    # against the float64 reference on the same float32 values ('full': features padded
    # to 8, 16 and 24)
    rng = np.random.default_rng(5)
    N, K = 3000, 6
    X = (rng.normal(size=(N, D)) * 3.0 + offset).astype(np.float32)
    means, prec, const = _random_params(rng, kind, K, D)
    means = means + (offset * prec[0].sum(0) if kind == 1 else offset)
    shift = means + rng.normal(size=(K, D)) if kind != 1 else X[:K].astype(float)
    args = [a.astype(np.float32) for a in (means, prec, const, shift)]
    lr = np.full((N, K), np.nan, np.float32)
    lse = np.full(N, np.nan, np.float32)
    no = np.empty(0, np.int64)
    resp = np.empty((0, K), np.float32)
    parts = _mixture_pass(X, kind, *args, resp, no, 1024, 512, lr, lse, no)
    want = ref.mixture_pass(X.astype(float), kind, *(a.astype(float) for a in args))
    for got, r in zip(parts[:3], want[:3]):  # nk, sx, sq
        assert_allclose(got.sum(0), r, rtol=0, atol=1e-6 * np.abs(r).max(initial=1))
    assert_allclose(parts[3].sum(), want[3], rtol=1e-6)  # sum of log-sum-exp
    assert_allclose(parts[4].sum(), want[4], rtol=0, atol=1e-5 * N)  # entropy
    assert_allclose(lr, want[5], rtol=0, atol=1e-6 * np.abs(want[5]).max())
    assert_allclose(lse, want[6], rtol=2e-6, atol=1e-5)


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["full", "tied", "diag"])
def test_mixture_pass_given_responsibilities(kind):
    rng = np.random.default_rng(1)
    N, K, D = 150, 3, 4
    X = rng.normal(size=(N, D)) + 50.0  # far from the origin: the shift matters
    resp = rng.dirichlet(np.ones(K), size=N)
    shift = np.tile(X.mean(0), (K, 1))
    zeros = (np.zeros((K, D)), np.zeros((K, D, D)), np.zeros(K))
    (nk, sx, sq, norm, ent), lr, lse = _run(X, kind, *zeros, shift, resp_in=resp)
    r_nk, r_sx, r_sq, *_ = ref.mixture_pass(X, kind, *zeros, shift, resp_in=resp)
    assert_allclose(nk.sum(0), r_nk, rtol=1e-12)
    assert_allclose(sx.sum(0), r_sx, rtol=1e-10, atol=1e-10)
    assert_allclose(sq.sum(0), r_sq, rtol=1e-10, atol=1e-10)
    assert norm.sum() == 0.0 and ent.sum() == 0.0
    assert np.isnan(lr).all() and np.isnan(lse).all()  # outputs untouched


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["full", "tied", "diag"])
def test_mixture_pass_given_labels_equals_one_hot_responsibilities(kind):
    rng = np.random.default_rng(6)
    N, K, D = 140, 4, 3
    X = rng.normal(size=(N, D)) - 30.0
    labels = rng.integers(-1, K, size=N)  # -1: the row belongs to no component
    resp = np.zeros((N, K))
    resp[labels >= 0, labels[labels >= 0]] = 1.0
    shift = rng.normal(size=(K, D))
    zeros = (np.zeros((K, D)), np.zeros((K, D, D)), np.zeros(K))
    empty_out = (np.empty((0, K)), np.empty(0), np.empty(0, dtype=np.int64))
    by_labels = _mixture_pass(
        X, kind, *zeros, shift, np.empty((0, K)), labels, 32, 8, *empty_out
    )
    r_nk, r_sx, r_sq, *_ = ref.mixture_pass(X, kind, *zeros, shift, resp_in=resp)
    assert_allclose(by_labels[0].sum(0), r_nk, rtol=1e-12)
    assert_allclose(by_labels[1].sum(0), r_sx, rtol=1e-11, atol=1e-10)
    assert_allclose(by_labels[2].sum(0), r_sq, rtol=1e-11, atol=1e-10)


def test_mixture_pass_scoring_only_skips_statistics():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(90, 3))
    means, prec, const = _random_params(rng, 0, 4, 3)
    (nk, sx, sq, norm, ent), lr, lse = _run(X, 0, means, prec, const, np.empty((0, 3)))
    assert not nk.any() and not sx.any() and not sq.any()
    _, _, _, _, _, r_lr, r_lse = ref.mixture_pass(X, 0, means, prec, const, means)
    assert_allclose(lr, r_lr, rtol=1e-12, atol=1e-11)
    assert_allclose(lse, r_lse, rtol=1e-13)


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_mixture_pass_extreme_magnitudes(scale):
    rng = np.random.default_rng(3)
    N, K, D = 200, 3, 3
    X = rng.normal(size=(N, D)) * scale
    means, prec, const = _random_params(rng, 0, K, D, scale=scale)
    shift = means.copy()
    (nk, sx, sq, norm, ent), lr, lse = _run(X, 0, means, prec, const, shift)
    r = ref.mixture_pass(X, 0, means, prec, const, shift)
    assert np.all(np.isfinite(lr))
    assert_allclose(nk.sum(0), r[0], rtol=1e-11, atol=1e-12)
    assert_allclose(sq.sum(0), r[2], rtol=1e-9, atol=1e-12 * scale**2)
    assert_allclose(lr, r[5], rtol=1e-10, atol=1e-10)


def test_mixture_pass_far_apart_components_underflow_cleanly():
    # responsibilities of exactly 0 and 1: no NaN from 0 * log 0
    X = np.array([[0.0], [1000.0]])
    means = np.array([[0.0], [1000.0]])
    prec = np.ones((2, 1, 1))
    const = np.zeros(2)
    (nk, _, _, _, ent), lr, _ = _run(X, 0, means, prec, const, means)
    assert_array_equal(nk.sum(0), [1.0, 1.0])
    assert ent.sum() == 0.0
    assert np.all(np.isfinite(lr[[0, 1], [0, 1]]))


def test_mixture_pass_propagates_nan():
    X = np.array([[0.0, np.nan], [1.0, 2.0]])
    means, prec, const = _random_params(np.random.default_rng(4), 0, 2, 2)
    (nk, *_), lr, lse = _run(X, 0, means, prec, const, means)
    assert np.isnan(lse[0]) and np.isfinite(lse[1])


def test_mixture_pass_bitwise_identical_across_thread_counts():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1000, 4))
    means, prec, const = _random_params(rng, 0, 3, 4)
    results = []
    previous = numba.get_num_threads()
    try:
        for n in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(n)
            results.append(_run(X, 0, means, prec, const, means, chunk=64, tile=16))
    finally:
        numba.set_num_threads(previous)
    (a, lr_a, lse_a), (b, lr_b, lse_b) = results
    for x, y in zip(a, b):
        assert_array_equal(x, y)
    assert_array_equal(lr_a, lr_b)


@pytest.mark.parametrize("N,chunk", [(1, 4), (10, 4), (33, 8)])
def test_centered_gram_matches_reference(N, chunk):
    rng = np.random.default_rng(N)
    X = rng.normal(size=(N, 3)) + 7.0
    c = X.mean(0)
    parts = np.full((-(-N // chunk), 3, 3), np.nan)
    map_chunks(gmm.gram_chunks, len(parts), X, c, chunk, parts)
    assert parts.shape == (-(-N // chunk), 3, 3)
    assert_allclose(parts.sum(0), ref.centered_gram(X, c), rtol=1e-12, atol=1e-12)


def test_kernel_modules_share_only_the_shared_modules():
    # model kernels import the shared modules (_config, _math, tiles), never each other
    # and never a private name; nothing in fastvi.kernels imports the Python layer
    import ast
    import pathlib

    import fastvi.kernels

    shared = {"_config", "_math", "tiles"}
    folder = pathlib.Path(fastvi.kernels.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                where = f"{path.name}: from {'.' * node.level}{node.module}"
                assert node.level in (0, 1), where  # no '..': the Python layer
                assert node.level == 0 or node.module in shared, where
                if node.level == 1:
                    assert not [a.name for a in node.names if a.name[0] == "_"], where
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("fastvi") for a in node.names), path
