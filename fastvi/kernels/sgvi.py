"""Monte Carlo log-likelihood and gradient of generalized linear models (SGVI hot loop).

One pass over the rows of ``X`` (all of them, or the minibatch ``rows``) evaluates,
for each of the ``S`` parameter draws ``(W[s], b[s])`` at once,

    eta[n, s] = x_n . W[s] + b[s]
    ll[s]    = sum_n  f(y_n, eta[n, s])
    gw[s, :] = sum_n  f'(y_n, eta[n, s]) x_n
    gb[s]    = sum_n  f'(y_n, eta[n, s])

with ``f`` the per-row log-likelihood of the family (``f'`` its derivative in ``eta``):

``FAMILY_LOGISTIC``  f = y eta - log(1 + exp(eta)),      f' = y - sigmoid(eta)
``FAMILY_POISSON``   f = y eta - exp(eta),               f' = y - exp(eta)
                     (the constant -log y! is added by the caller)
``FAMILY_GAUSSIAN``  f = -tau[s] (y - eta)**2 / 2,       f' = tau[s] (y - eta)
                     (``ss[s]`` also receives sum_n (y - eta)**2, for a noise scale)

Layout and determinism
----------------------
Rows go in chunks of ``chunk`` (a caller constant independent of the thread count);
``prange`` runs over chunks and every chunk writes only its own row of the partial-sum
arrays, which the caller adds in chunk order: results are bitwise identical for any
number of threads. Inside a chunk, ``tile`` rows are copied transposed to (D, T), so
that both products — eta (S x T) = W (S x D) . Xt (D x T) and g (S x D) = R (S x T) .
Xt^T — run with the rows as the contiguous, vectorized inner loop while the tile sits in
cache (the caller sizes the tiles: L2-sized for pre-transposed data, L1-sized for
gathered minibatch rows): X is read from memory once per step for all S draws.

The products run in the dtype of ``X`` (float32 input gives the float32 speed), and a
tile's responses are taken in that dtype too. The per-element likelihood terms use
branch-free polynomial ``exp``/``log1p`` (numba from PyPI has no vector libm): in
float64, except the logistic terms of float32 data, which run in float32 (twice the
vector width; summed in float32 over a tile's rows only). Every sum leaving a tile is
float64.

``linear_predictor`` and ``gradient_tile`` (the two products of a tile) are public: the
kernels that :class:`fastvi.sgvi.LinearModel` generates around a user's likelihood of
eta (``fastvi.kernels.sgvi_user``) run the same products.
"""

import numpy as np
from numba import prange

from ._config import FASTMATH, jit, twins, wide_vectors
from ._math import (
    LN2,
    LN2_32,
    SQRT2M1,
    SQRT2M1_32,
    atanh2_32,
    atanh2_estrin,
    exp_clamped,
    exp_neg32,
    log1p_split,
    recip_pos,
    recip_pos32,
    softplus,
    softplus32,
)
from .tiles import (  # noqa: F401  (tile_rows: sgvi.models)
    gather_tile,
    prefetch_l2,
    scratch,
    tile_rows,
)

FAMILY_LOGISTIC = 0
FAMILY_POISSON = 1
FAMILY_GAUSSIAN = 2
_F32 = np.float32
_PW_BLOCK = 64  # rows of a block of the pointwise loop (prefetches between blocks)


@jit
def _logistic_terms32(eta, yv):
    """float32 (y eta - softplus(eta), y - sigmoid(eta)) for float32 eta and y.

    exp(-|eta|) is clamped at exp(-87) (the smallest normal float32 is exp(-87.3)),
    which changes neither term in float32; NaN propagates to both.
    """
    one = _F32(1.0)
    e = exp_neg32(-abs(eta))
    big = one if e > SQRT2M1_32 else _F32(0.0)
    num = e - big
    den = e + _F32(2.0) + big
    # one reciprocal serves both 1 / (1 + e) and log1p's ratio num / den
    q = recip_pos32((one + e) * den)
    lg = atanh2_32(num * (one + e) * q) + (LN2_32 if e > SQRT2M1_32 else _F32(0.0))
    sig = (one if eta >= _F32(0.0) else e) * den * q
    return yv * eta - (max(eta, _F32(0.0)) + lg), yv - sig


@jit
def linear_predictor(Xt, T, W, b, E):
    """E[s, t] = b[s] + sum_d W[s, d] Xt[d, t].

    Register-blocked 4 draws x 4 features: each sweep over the tile's rows loads four
    feature rows and four accumulator rows for sixteen multiply-adds. Two or three
    leftover features take one 4 x 2 sweep (and a 4 x 1), not one sweep each.
    """
    wide_vectors()
    S, D = W.shape
    for s in range(S):
        bs = b[s]
        for t in range(T):
            E[s, t] = bs
    s = 0
    while s + 4 <= S:
        d = 0
        while d + 4 <= D:
            w00 = W[s, d]
            w01 = W[s, d + 1]
            w02 = W[s, d + 2]
            w03 = W[s, d + 3]
            w10 = W[s + 1, d]
            w11 = W[s + 1, d + 1]
            w12 = W[s + 1, d + 2]
            w13 = W[s + 1, d + 3]
            w20 = W[s + 2, d]
            w21 = W[s + 2, d + 1]
            w22 = W[s + 2, d + 2]
            w23 = W[s + 2, d + 3]
            w30 = W[s + 3, d]
            w31 = W[s + 3, d + 1]
            w32 = W[s + 3, d + 2]
            w33 = W[s + 3, d + 3]
            for t in range(T):
                x0 = Xt[d, t]
                x1 = Xt[d + 1, t]
                x2 = Xt[d + 2, t]
                x3 = Xt[d + 3, t]
                # a chain of four multiply-adds per draw (summing the products first
                # takes a multiply and an add more)
                E[s, t] = E[s, t] + w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
                E[s + 1, t] = E[s + 1, t] + w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
                E[s + 2, t] = E[s + 2, t] + w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
                E[s + 3, t] = E[s + 3, t] + w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3
            d += 4
        if d + 2 <= D:  # two features left over (D = 50): one sweep, not two
            w00 = W[s, d]
            w01 = W[s, d + 1]
            w10 = W[s + 1, d]
            w11 = W[s + 1, d + 1]
            w20 = W[s + 2, d]
            w21 = W[s + 2, d + 1]
            w30 = W[s + 3, d]
            w31 = W[s + 3, d + 1]
            for t in range(T):
                x0 = Xt[d, t]
                x1 = Xt[d + 1, t]
                E[s, t] += w00 * x0 + w01 * x1
                E[s + 1, t] += w10 * x0 + w11 * x1
                E[s + 2, t] += w20 * x0 + w21 * x1
                E[s + 3, t] += w30 * x0 + w31 * x1
            d += 2
        if d < D:
            w0 = W[s, d]
            w1 = W[s + 1, d]
            w2 = W[s + 2, d]
            w3 = W[s + 3, d]
            for t in range(T):
                x0 = Xt[d, t]
                E[s, t] += w0 * x0
                E[s + 1, t] += w1 * x0
                E[s + 2, t] += w2 * x0
                E[s + 3, t] += w3 * x0
        s += 4
    while s < S:
        d = 0
        while d + 4 <= D:
            w0 = W[s, d]
            w1 = W[s, d + 1]
            w2 = W[s, d + 2]
            w3 = W[s, d + 3]
            for t in range(T):
                E[s, t] += (
                    w0 * Xt[d, t]
                    + w1 * Xt[d + 1, t]
                    + w2 * Xt[d + 2, t]
                    + w3 * Xt[d + 3, t]
                )
            d += 4
        while d < D:
            w0 = W[s, d]
            for t in range(T):
                E[s, t] += w0 * Xt[d, t]
            d += 1
        s += 1


@jit
def _pointwise(E, yt, T, family, tau, ll, ss, nxt, pf0, pf1):
    """E[s, t] <- f'(y_t, eta) in place; adds sum_t f into ll[s] (and residuals**2).

    Meanwhile the elements [pf0, pf1) of ``nxt`` (the next tile) are prefetched into
    L2, a few cache lines per block of rows: the products of a tile are compute bound
    and this loop touches no memory, so here the read of the next tile overlaps.
    """
    wide_vectors()
    S = E.shape[0]
    # blocks only when there is something to prefetch (short loops cost remainders)
    block = _PW_BLOCK if pf1 > pf0 else max(T, 1)
    n_blocks = S * ((T + block - 1) // block)
    lanes = 64 // E.itemsize
    per_block = ((pf1 - pf0 + n_blocks - 1) // n_blocks + lanes - 1) // lanes * lanes
    pf = pf0
    for s in range(S):
        acc = 0.0
        acc2 = 0.0
        ts = tau[s]
        for t0 in range(0, T, block):
            stop = min(pf1, pf + per_block)
            while pf < stop:
                prefetch_l2(nxt, pf)
                pf += lanes
            # unsigned bounds: no negative-index wraparound, so the loops vectorize
            u0 = np.uint64(t0)
            t1 = np.uint64(min(T, t0 + block))
            if family == FAMILY_LOGISTIC and E.itemsize == 4:
                # float32 data: float32 arithmetic, summed in float32 over a block of
                # rows (a float64 sum would halve the vector width), then in float64
                acc32 = _F32(0.0)
                for t in range(u0, t1):
                    term, r = _logistic_terms32(E[s, t], yt[t])
                    acc32 += term
                    E[s, t] = r
                acc += np.float64(acc32)
            elif family == FAMILY_LOGISTIC:
                for t in range(u0, t1):
                    eta = np.float64(E[s, t])
                    yv = yt[t]
                    e = exp_clamped(-abs(eta))
                    # one reciprocal serves both 1 / (1 + e) and log1p's num / den
                    num, den = log1p_split(e)
                    q = recip_pos((1.0 + e) * den)
                    lg = atanh2_estrin(num * (1.0 + e) * q)
                    lg += LN2 if e > SQRT2M1 else 0.0
                    # sigmoid(eta) = 1 / (1 + e) for eta >= 0, e / (1 + e) otherwise
                    sig = (1.0 if eta >= 0.0 else e) * den * q
                    # y eta - softplus(eta), softplus = max(eta, 0) + log1p(exp(-|eta|))
                    acc += yv * eta - (max(eta, 0.0) + lg)
                    E[s, t] = yv - sig
            elif family == FAMILY_POISSON:
                for t in range(u0, t1):
                    eta = np.float64(E[s, t])
                    yv = yt[t]
                    mu = exp_clamped(eta)
                    acc += yv * eta - mu
                    E[s, t] = yv - mu
            else:
                for t in range(u0, t1):
                    r = yt[t] - np.float64(E[s, t])
                    acc2 += r * r
                    E[s, t] = ts * r
        if family == FAMILY_GAUSSIAN:
            acc = -0.5 * ts * acc2
        ll[s] += acc
        ss[s] += acc2


@jit
def gradient_tile(Xt, T, R, gw, gb, zero):
    """gw[s, d] += sum_t R[s, t] Xt[d, t] and gb[s] += sum_t R[s, t].

    Blocked 4 draws x 4 features: sixteen independent dot products per sweep, eight
    loads for sixteen multiply-adds (2 x 4 took six loads for eight; 4 x 4 measured
    5-15% faster, AVX-512 and AVX2 code, N = 1e5, D = 50, S = 8). Leftover features
    go in a pair, then singly; leftover draws in pairs, then singly.
    """
    wide_vectors()
    S, D = gw.shape
    for s in range(S):
        a = zero
        for t in range(T):
            a += R[s, t]
        gb[s] += a
    s = 0
    while s + 4 <= S:
        d = 0
        while d + 4 <= D:
            a00 = zero
            a01 = zero
            a02 = zero
            a03 = zero
            a10 = zero
            a11 = zero
            a12 = zero
            a13 = zero
            a20 = zero
            a21 = zero
            a22 = zero
            a23 = zero
            a30 = zero
            a31 = zero
            a32 = zero
            a33 = zero
            for t in range(T):
                r0 = R[s, t]
                r1 = R[s + 1, t]
                r2 = R[s + 2, t]
                r3 = R[s + 3, t]
                x0 = Xt[d, t]
                x1 = Xt[d + 1, t]
                x2 = Xt[d + 2, t]
                x3 = Xt[d + 3, t]
                a00 += r0 * x0
                a01 += r0 * x1
                a02 += r0 * x2
                a03 += r0 * x3
                a10 += r1 * x0
                a11 += r1 * x1
                a12 += r1 * x2
                a13 += r1 * x3
                a20 += r2 * x0
                a21 += r2 * x1
                a22 += r2 * x2
                a23 += r2 * x3
                a30 += r3 * x0
                a31 += r3 * x1
                a32 += r3 * x2
                a33 += r3 * x3
            gw[s, d] += a00
            gw[s, d + 1] += a01
            gw[s, d + 2] += a02
            gw[s, d + 3] += a03
            gw[s + 1, d] += a10
            gw[s + 1, d + 1] += a11
            gw[s + 1, d + 2] += a12
            gw[s + 1, d + 3] += a13
            gw[s + 2, d] += a20
            gw[s + 2, d + 1] += a21
            gw[s + 2, d + 2] += a22
            gw[s + 2, d + 3] += a23
            gw[s + 3, d] += a30
            gw[s + 3, d + 1] += a31
            gw[s + 3, d + 2] += a32
            gw[s + 3, d + 3] += a33
            d += 4
        if d + 2 <= D:  # two features left over: one sweep, not two
            a00 = zero
            a01 = zero
            a10 = zero
            a11 = zero
            a20 = zero
            a21 = zero
            a30 = zero
            a31 = zero
            for t in range(T):
                x0 = Xt[d, t]
                x1 = Xt[d + 1, t]
                r0 = R[s, t]
                r1 = R[s + 1, t]
                r2 = R[s + 2, t]
                r3 = R[s + 3, t]
                a00 += r0 * x0
                a01 += r0 * x1
                a10 += r1 * x0
                a11 += r1 * x1
                a20 += r2 * x0
                a21 += r2 * x1
                a30 += r3 * x0
                a31 += r3 * x1
            gw[s, d] += a00
            gw[s, d + 1] += a01
            gw[s + 1, d] += a10
            gw[s + 1, d + 1] += a11
            gw[s + 2, d] += a20
            gw[s + 2, d + 1] += a21
            gw[s + 3, d] += a30
            gw[s + 3, d + 1] += a31
            d += 2
        if d < D:
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            for t in range(T):
                x0 = Xt[d, t]
                a0 += R[s, t] * x0
                a1 += R[s + 1, t] * x0
                a2 += R[s + 2, t] * x0
                a3 += R[s + 3, t] * x0
            gw[s, d] += a0
            gw[s + 1, d] += a1
            gw[s + 2, d] += a2
            gw[s + 3, d] += a3
        s += 4
    while s + 2 <= S:
        d = 0
        while d + 4 <= D:
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            c0 = zero
            c1 = zero
            c2 = zero
            c3 = zero
            for t in range(T):
                r = R[s, t]
                q = R[s + 1, t]
                x0 = Xt[d, t]
                x1 = Xt[d + 1, t]
                x2 = Xt[d + 2, t]
                x3 = Xt[d + 3, t]
                a0 += r * x0
                a1 += r * x1
                a2 += r * x2
                a3 += r * x3
                c0 += q * x0
                c1 += q * x1
                c2 += q * x2
                c3 += q * x3
            gw[s, d] += a0
            gw[s, d + 1] += a1
            gw[s, d + 2] += a2
            gw[s, d + 3] += a3
            gw[s + 1, d] += c0
            gw[s + 1, d + 1] += c1
            gw[s + 1, d + 2] += c2
            gw[s + 1, d + 3] += c3
            d += 4
        while d < D:
            a0 = zero
            c0 = zero
            for t in range(T):
                x0 = Xt[d, t]
                a0 += R[s, t] * x0
                c0 += R[s + 1, t] * x0
            gw[s, d] += a0
            gw[s + 1, d] += c0
            d += 1
        s += 2
    while s < S:
        d = 0
        while d + 4 <= D:
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            for t in range(T):
                r = R[s, t]
                a0 += r * Xt[d, t]
                a1 += r * Xt[d + 1, t]
                a2 += r * Xt[d + 2, t]
                a3 += r * Xt[d + 3, t]
            gw[s, d] += a0
            gw[s, d + 1] += a1
            gw[s, d + 2] += a2
            gw[s, d + 3] += a3
            d += 4
        while d < D:
            a0 = zero
            for t in range(T):
                a0 += R[s, t] * Xt[d, t]
            gw[s, d] += a0
            d += 1
        s += 1


@jit
def _tile_pass(Xt, yt, T, W, b, tau, family, E, zero, ll, gw, gb, ss, nxt, pf0, pf1):
    linear_predictor(Xt, T, W, b, E)
    _pointwise(E, yt, T, family, tau, ll, ss, nxt, pf0, pf1)
    gradient_tile(Xt, T, E, gw, gb, zero)


@jit
def _tiled_chunk(Xtiles, y, N, c0, c1, W, b, tau, family, ll, gw, gb, ss):
    """Tiles [c0, c1) of the pre-transposed data; adds into this chunk's partials."""
    tile = Xtiles.shape[2]
    S = W.shape[0]
    E = scratch(S, tile, Xtiles)
    yt = np.empty(tile, dtype=Xtiles.dtype)
    zero = np.zeros(1, dtype=Xtiles.dtype)[0]
    size = Xtiles.shape[1] * tile
    for i in range(c0, c1):
        t0 = i * tile
        T = min(tile, N - t0)
        for t in range(T):
            yt[t] = y[t0 + t]
        # the next tile of this chunk is read while this one computes
        pf1 = size * (i + 2) if i + 1 < c1 else 0
        _tile_pass(
            Xtiles[i],
            yt,
            T,
            W,
            b,
            tau,
            family,
            E,
            zero,
            ll,
            gw,
            gb,
            ss,
            Xtiles,
            size * (i + 1),
            pf1,
        )


@jit
def _rows_chunk(X, y, rows, start, stop, tile, W, b, tau, family, ll, gw, gb, ss):
    """Rows rows[start:stop] of X, gathered and transposed a tile at a time."""
    D = X.shape[1]
    S = W.shape[0]
    Xt = scratch(D, tile, X)
    yt = np.empty(tile, dtype=X.dtype)
    E = scratch(S, tile, X)
    zero = np.zeros(1, dtype=X.dtype)[0]
    for t0 in range(start, stop, tile):
        T = min(tile, stop - t0)
        gather_tile(X, rows, t0, T, Xt)
        for t in range(T):
            yt[t] = y[rows[t0 + t]]
        _tile_pass(Xt, yt, T, W, b, tau, family, E, zero, ll, gw, gb, ss, Xt, 0, 0)


def glm_pass_tiled(Xtiles, y, N, W, b, tau, family, chunk_tiles):
    """Per-chunk partial sums of the GLM log-likelihood and its gradient over all rows.

    Parameters
    ----------
    Xtiles : (n_tiles, D, tile) float64 or float32, C-contiguous
        The data transposed a tile at a time: ``Xtiles[i, d, t] = X[i * tile + t, d]``
        (the last tile zero-padded), made once per fit by the caller.
    y : (N,) float64 responses
    N : number of rows
    W : (S, D) coefficient draws, dtype of ``Xtiles``
    b : (S,) intercept draws, dtype of ``Xtiles``
    tau : (S,) float64 noise precisions (``FAMILY_GAUSSIAN`` only; ignored otherwise)
    family : int, one of FAMILY_LOGISTIC, FAMILY_POISSON, FAMILY_GAUSSIAN
    chunk_tiles : tiles per parallel work item (fixed by the caller, never by threads)

    Returns
    -------
    ll : (C, S), gw : (C, S, D), gb : (C, S), ss : (C, S) float64
        Per-chunk sums (C = ceil(n_tiles / chunk_tiles)) over the chunk's rows of f,
        f' x, f' and (Gaussian) the squared residual; the caller adds them in order.
    """
    n_tiles, D, _ = Xtiles.shape
    S = W.shape[0]
    n_chunks = (n_tiles + chunk_tiles - 1) // chunk_tiles
    ll = np.zeros((n_chunks, S))
    gw = np.zeros((n_chunks, S, D))
    gb = np.zeros((n_chunks, S))
    ss = np.zeros((n_chunks, S))
    for c in prange(n_chunks):
        c0 = c * chunk_tiles
        c1 = min(n_tiles, c0 + chunk_tiles)
        _tiled_chunk(
            Xtiles, y, N, c0, c1, W, b, tau, family, ll[c], gw[c], gb[c], ss[c]
        )
    return ll, gw, gb, ss


glm_pass_tiled, glm_pass_tiled_serial = twins(glm_pass_tiled)


def glm_pass_rows(X, y, rows, W, b, tau, family, chunk, tile):
    """:func:`glm_pass_tiled` over the minibatch ``rows`` (int64, (M,)) of a row-major
    ``X`` (N, D): per-chunk partials, C = ceil(M / chunk)."""
    D = X.shape[1]
    S = W.shape[0]
    M = rows.shape[0]
    n_chunks = (M + chunk - 1) // chunk
    ll = np.zeros((n_chunks, S))
    gw = np.zeros((n_chunks, S, D))
    gb = np.zeros((n_chunks, S))
    ss = np.zeros((n_chunks, S))
    for c in prange(n_chunks):
        start = c * chunk
        stop = min(M, start + chunk)
        _rows_chunk(
            X, y, rows, start, stop, tile, W, b, tau, family, ll[c], gw[c], gb[c], ss[c]
        )
    return ll, gw, gb, ss


glm_pass_rows, glm_pass_rows_serial = twins(glm_pass_rows)


# ---------------------------------------------------- the value-only pass
# The GLM log-likelihood alone, for many parameter draws (no gradient).
#
# What the PSIS k-hat check at the end of an SGVI fit (and the score-function
# estimator) needs: ``ll[s] = sum_n f(y_n, x_n . W[s] + b[s])`` with the families and
# layout of the passes above, which would spend half their multiply-adds on the X^T r
# product nobody reads. Here each tile takes the one
# product eta (S x T) = W (S x D) . Xt (D x T) (``linear_predictor``) and one sweep
# of the link, in float64 (``softplus``/``exp`` of ``_math``) from eta in the dtype
# of X, except float32 logistic terms (``softplus32``, summed in float32 over a tile).
#
# Determinism: rows go in chunks of a caller-fixed size; ``prange`` runs over chunks,
# each writing its own row of the partials (``ll``, ``ss``: (C, S) float64), which
# the caller adds in chunk order, so the bits do not depend on the thread count.


@jit(fastmath=set(FASTMATH - {"reassoc"}))
def _sum_in_order(v, T):
    """v[0] + ... + v[T-1] in one fixed order: eight running sums (v[t] goes to the
    one of t % 8), added pairwise at the end. No reassociation here, so the bits do
    not depend on how LLVM vectorizes or inlines the caller (with ``reassoc`` a
    kernel loaded from the cache and its freshly compiled twin summed a tile's link
    terms one ulp apart)."""
    acc = np.zeros(8, dtype=v.dtype)
    n8 = T - T % 8
    for t0 in range(0, n8, 8):
        for j in range(8):
            acc[j] += v[t0 + j]
    for t in range(n8, T):
        acc[t - n8] += v[t]
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + (
        (acc[4] + acc[5]) + (acc[6] + acc[7])
    )


@jit
def _link_sums(E, yt, T, family, tau, ll, ss):
    """Adds sum_t f(y_t, E[s, t]) into ll[s] (Gaussian: sum_t r^2 into ss[s]); the
    terms are formed elementwise (vectorized) and summed by :func:`_sum_in_order`."""
    wide_vectors()
    terms = np.empty(T)
    for s in range(E.shape[0]):
        if family == FAMILY_LOGISTIC and E.itemsize == 4:
            # float32 data: float32 terms (twice the vector width), summed in
            # float32 over the tile's rows only, as the gradient pass does; E is
            # scratch, so the terms go back into it
            for t in range(T):
                eta = E[s, t]
                E[s, t] = yt[t] * eta - softplus32(eta)
            acc = np.float64(_sum_in_order(E[s], T))
        else:
            if family == FAMILY_LOGISTIC:
                for t in range(T):
                    eta = np.float64(E[s, t])
                    terms[t] = yt[t] * eta - softplus(eta)
            elif family == FAMILY_POISSON:
                for t in range(T):
                    eta = np.float64(E[s, t])
                    terms[t] = yt[t] * eta - exp_clamped(eta)
            else:
                for t in range(T):
                    r = yt[t] - np.float64(E[s, t])
                    terms[t] = r * r
            acc = _sum_in_order(terms, T)
            if family != FAMILY_LOGISTIC and family != FAMILY_POISSON:
                ss[s] += acc
                acc = -0.5 * tau[s] * acc
        ll[s] += acc


def glm_values_tiled(Xtiles, y, N, W, b, tau, family, chunk_tiles):
    """Per-chunk sums ``(ll, ss)``, each (C, S) float64, of the log-likelihood (and
    the Gaussian squared residuals) over all ``N`` rows of the pre-transposed
    ``Xtiles``; arguments as for :func:`fastvi.kernels.sgvi.glm_pass_tiled`."""
    n_tiles, D, tile = Xtiles.shape
    S = W.shape[0]
    n_chunks = (n_tiles + chunk_tiles - 1) // chunk_tiles
    ll = np.zeros((n_chunks, S))
    ss = np.zeros((n_chunks, S))
    for c in prange(n_chunks):
        E = scratch(S, tile, Xtiles)
        yt = np.empty(tile, dtype=Xtiles.dtype)  # y in X's dtype, as the pass
        for i in range(c * chunk_tiles, min(n_tiles, (c + 1) * chunk_tiles)):
            T = min(tile, N - i * tile)
            for t in range(T):
                yt[t] = y[i * tile + t]
            linear_predictor(Xtiles[i], T, W, b, E)
            _link_sums(E, yt, T, family, tau, ll[c], ss[c])
    return ll, ss


glm_values_tiled, glm_values_tiled_serial = twins(glm_values_tiled)


def glm_values_rows(X, y, rows, W, b, tau, family, chunk, tile):
    """:func:`glm_values_tiled` over the rows ``rows`` (int64, (M,)) of a row-major
    ``X``, gathered ``tile`` at a time: C = ceil(M / chunk) chunks."""
    D = X.shape[1]
    S = W.shape[0]
    M = rows.shape[0]
    n_chunks = (M + chunk - 1) // chunk
    ll = np.zeros((n_chunks, S))
    ss = np.zeros((n_chunks, S))
    for c in prange(n_chunks):
        Xt = scratch(D, tile, X)
        E = scratch(S, tile, X)
        yt = np.empty(tile, dtype=X.dtype)
        for t0 in range(c * chunk, min(M, (c + 1) * chunk), tile):
            T = min(tile, min(M, (c + 1) * chunk) - t0)
            gather_tile(X, rows, t0, T, Xt)
            for t in range(T):
                yt[t] = y[rows[t0 + t]]
            linear_predictor(Xt, T, W, b, E)
            _link_sums(E, yt, T, family, tau, ll[c], ss[c])
    return ll, ss


glm_values_rows, glm_values_rows_serial = twins(glm_values_rows)
