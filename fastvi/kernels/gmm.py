"""One fused pass over the data for Gaussian mixtures (the local CAVI step).

For each point the pass computes the expected log-density under every component,
log-sum-exp over components, the responsibilities, and accumulates the per-component
sufficient statistics — all without an N x K array unless the caller asks for one.

Layout and determinism
----------------------
Rows are split into chunks of ``chunk`` rows (a caller constant that does not depend on
the thread count); a kernel call computes a range of chunks, and each chunk writes only
its own slice of the partial-statistics arrays, so the caller can run ranges on several
threads (``fastvi._threads.map_chunks``; the kernels release the GIL). The caller sums
the partials in chunk order, so the result is bitwise identical for any number of
threads. Inside a chunk, rows go in tiles
of ``tile`` points transposed to (D, T) so the innermost loop runs over points, which
are contiguous: that is what lets LLVM vectorize the triangular products.

Kinds (``kind``)
----------------
``KIND_FULL``  per-component upper-triangular precision Cholesky ``prec[k]`` (D, D);
               statistics: N_k, sum r (x - s_k), sum r (x - s_k)(x - s_k)^T (upper part).
``KIND_TIED``  one shared factor ``prec[0]`` (D, D) and ``proj[k] = means[k] @ prec[0]``;
               statistics: N_k, sum r (x - s_k).
``KIND_DIAG``  per-feature precisions ``prec[k, 0, :]`` (spherical passes them repeated);
               statistics: N_k, sum r (x - s_k), sum r (x - s_k)**2.

``s_k`` is the shift ``shift[k]`` (the caller passes the current component means), which
keeps the second moments well conditioned when the data sit far from the origin.

The expected log-density of x under component k is ``const[k] - 0.5 * maha_k(x)`` with
``maha_k(x) = || (x - m_k) @ prec[k] ||**2``; ``const`` carries everything that does not
depend on x (E[log pi_k], log-determinants, digamma terms) and is computed by the caller.

float32 lanes
-------------
The kernels run in the dtype of ``X``: float32 data with float32 parameters compile a
separate specialization (only when a fit asks for it) whose tiles, Mahalanobis and
Gram microkernels, exp and per-tile sums are float32, twice the vector width of
float64. Every sum leaving a tile (the per-chunk partials ``nk``, ``sx``, ``sq``,
``norm``, ``ent``) is float64, so the rounding of a float32 pass is that of sums over
at most ``tile`` points (the caller passes 512 float32 rows, the
bytes of 256 float64 rows). float64 data keep the float64 code unchanged.
"""

import numpy as np
from numba.core import types
from numba.extending import overload

from ._config import jit, wide_vectors
from ._math import exp_neg32, exp_nonpos, log_ge1_32
from .tiles import (
    gram_upper,
    like,
    load_tile,
    maha_blocked,
    maha_unrolled8,
    maha_unrolled16,
    scratch,
    tri_column,
    weighted_sq_dist,
)

KIND_FULL = 0
KIND_TIED = 1
KIND_DIAG = 2

# float32 passes flush exp(x) to 0 below exp(-64) ~ 1.6e-28 (exp_nonpos: exp(-708)).
# A responsibility r >= 1.6e-28 / K keeps r y and r y^2 normal for deviations |y| above
# ~1e-4 (K=32); near exp(-87), the float32 limit, they were subnormal for a few points
# in some iterations, and each subnormal result costs a microcode assist: 'diag'
# passes ran up to 1.3x slower, depending on the iteration. Dropped terms are below
# 1.6e-28 of the row's largest one, far under float32 rounding.
RESP_LO_32 = np.float32(-64.0)


@jit
def _logprob_full(Xt, T, Up, Bp, const, LP, Z, maha):
    """LP[k] = const[k] - 0.5 || x @ U_k - m_k @ U_k ||^2 for the tile's points, in
    4 x 8 blocks (``tiles.maha_blocked``; factors padded to more than 16)."""
    wide_vectors()
    K = Up.shape[0]
    half = like(0.5, LP)
    for k in range(K):
        maha_blocked(Up[k], Bp[k], Xt, T, Z, maha)
        c = const[k]
        for t in range(T):
            LP[k, t] = c - half * maha[t]


@jit
def _logprob_full8(Xt, T, Up, Bp, const, LP):
    """:func:`_logprob_full` for factors padded to 8, in one straight-line sweep."""
    wide_vectors()
    for k in range(Up.shape[0]):
        maha_unrolled8(Up[k], Bp[k], const[k], Xt, T, LP[k])


@jit
def _logprob_full16(Xt, T, Up, Bp, const, LP):
    """:func:`_logprob_full` for factors padded to 16, in one straight-line sweep."""
    wide_vectors()
    for k in range(Up.shape[0]):
        maha_unrolled16(Up[k], Bp[k], const[k], Xt, T, LP[k])


@jit
def _padded_factors(means, prec, dtype_like):
    """(Up, Bp): the upper triangles of ``prec`` zero-padded to (K, Dp, Dp), Dp the
    next multiple of 8, and ``Bp[k] = means[k] @ prec[k]`` (summed in float64), in the
    dtype of ``dtype_like`` (``tiles.maha_blocked``)."""
    K, D = means.shape
    Dp = -(-D // 8) * 8
    Up = np.zeros((K, Dp, Dp), dtype=dtype_like.dtype)
    Bp = np.zeros((K, Dp), dtype=dtype_like.dtype)
    for k in range(K):
        for j in range(D):
            acc = 0.0
            for i in range(j + 1):
                u = prec[k, i, j]
                Up[k, i, j] = u
                acc += np.float64(means[k, i]) * np.float64(u)
            Bp[k, j] = acc
    return Up, Bp


@jit
def _logprob_tied(Xt, T, proj, prec, const, LP, Y, acc):
    wide_vectors()
    K, D = proj.shape
    # Y <- (x @ U)^T for the tile, shared by all components
    U = prec[0]
    for j in range(D):
        tri_column(U, j, Xt, T, acc)
        for t in range(T):
            Y[j, t] = acc[t]
    ones = np.ones(D, dtype=Y.dtype)
    half = like(0.5, LP)
    for k in range(K):
        weighted_sq_dist(Y, T, proj[k], ones, acc)
        c = const[k]
        for t in range(T):
            LP[k, t] = c - half * acc[t]


@jit
def _logprob_diag(Xt, T, means, prec, const, LP, acc):
    wide_vectors()
    K = means.shape[0]
    half = like(0.5, LP)
    for k in range(K):
        weighted_sq_dist(Xt, T, means[k], prec[k, 0], acc)
        c = const[k]
        for t in range(T):
            LP[k, t] = c - half * acc[t]


def _exp_lanes(x):
    """exp(x) for x <= ~0 in the dtype of x (compiled code only, see below)."""
    raise NotImplementedError("only callable from compiled kernels")


@overload(_exp_lanes)
def _exp_lanes_impl(x):
    # chosen when the caller is typed, so a float64 kernel never compiles the
    # float32 polynomial and a float32 kernel never compiles the float64 one
    if x == types.float32:
        lo, zero = RESP_LO_32, np.float32(0.0)

        def exp32(x):
            return zero if x < lo else exp_neg32(x)  # NaN stays NaN

        return exp32
    return lambda x: exp_nonpos(x)


def _lse_lanes(T, mx, s):
    """mx[t] <- mx[t] + log(s[t]) and s[t] <- 1 / s[t] (compiled code only)."""
    raise NotImplementedError("only callable from compiled kernels")


@overload(_lse_lanes)
def _lse_lanes_impl(T, mx, s):
    if s.dtype == types.float32:

        def lse32(T, mx, s):
            # a polynomial log (s >= 1: the largest term is exp(0)): the loop
            # vectorizes, where libm's logf left it one scalar call per point
            wide_vectors()
            for t in range(T):
                mx[t] = mx[t] + log_ge1_32(s[t])
                s[t] = np.float32(1.0) / s[t]

        return lse32

    def lse(T, mx, s):
        for t in range(T):
            s[t] = 1.0 / s[t]
            mx[t] = mx[t] - np.log(s[t])  # mx <- lse = max + log(sum)

    return lse


@jit
def _normalize(T, K, LP, R, mx, s):
    """R <- softmax over k of LP; returns sum_t lse_t and the entropy -sum r log r.

    On return ``mx[t]`` holds log-sum-exp of column t. The two sums are in the dtype
    of ``LP`` (float32 tiles: over this tile's points only).
    """
    wide_vectors()
    for t in range(T):
        mx[t] = LP[0, t]
    for k in range(1, K):
        for t in range(T):
            mx[t] = max(mx[t], LP[k, t])
    for t in range(T):
        s[t] = 0.0
    for k in range(K):
        for t in range(T):
            e = _exp_lanes(LP[k, t] - mx[t])
            R[k, t] = e
            s[t] += e
    _lse_lanes(T, mx, s)
    norm = like(0.0, LP)
    ent = like(0.0, LP)
    for k in range(K):
        for t in range(T):
            r = R[k, t] * s[t]
            R[k, t] = r
            ent -= r * (LP[k, t] - mx[t])
    for t in range(T):
        norm += mx[t]
    return norm, ent


@jit
def _accumulate(Xt, T, shift, R, kind, Y, nk, sx, sq):
    """Add this tile's sufficient statistics into one chunk's partials (nk, sx, sq).

    Sums over the tile's points run in the tile's dtype; the partials are float64.
    """
    wide_vectors()
    K, D = shift.shape
    for k in range(K):
        tot = like(0.0, R)
        for t in range(T):
            tot += R[k, t]
        nk[k] += tot
        if kind != KIND_FULL:
            # fused, store-free: sum r y and (diag) sum r y^2 with y = x - shift
            for d in range(D):
                m = shift[k, d]
                a = like(0.0, R)
                b = like(0.0, R)
                for t in range(T):
                    y = Xt[d, t] - m
                    ry = R[k, t] * y
                    a += ry
                    b += ry * y
                sx[k, d] += a
                if kind == KIND_DIAG:
                    sq[k, 0, d] += b
            continue
        # full: Y = x - shift for the tile, then the upper triangle of sum r y y^T
        for d in range(D):
            m = shift[k, d]
            a = like(0.0, R)
            for t in range(T):
                y = Xt[d, t] - m
                Y[d, t] = y
                a += R[k, t] * y
            sx[k, d] += a
        gram_upper(R[k], Y, T, sq, k)


def _specialize(kind, name, sweep=0):
    """``mixture_chunks`` compiled for one ``kind`` and, for KIND_FULL, one
    Mahalanobis ``sweep``: 8 or 16 for factors padded to that size
    (:func:`_logprob_full8`, :func:`_logprob_full16`), else 0 (:func:`_logprob_full`).
    Both are constants of the code: a kernel compiles only its own branch."""

    def mixture_chunks(
        c0,
        c1,
        X,
        means,
        prec,
        const,
        shift,
        resp_in,
        labels_in,
        chunk,
        tile,
        out_log_resp,
        out_norm,
        out_labels,
        nk,
        sx,
        sq,
        norm,
        ent,
    ):
        """Chunks ``[c0, c1)`` of one pass over X: responsibilities and their statistics.

        Chunk ``c`` is rows ``[c * chunk, min(N, (c + 1) * chunk))``; it writes only
        ``nk[c], sx[c], sq[c], norm[c], ent[c]`` (and its rows of the outputs), so
        chunks can run on any thread in any order (``fastvi._threads.map_chunks``).
        ``kind`` is a constant of the compiled code: a fit compiles only its own
        covariance type's branch (one kernel per kind; the others' code is pruned).

        Parameters
        ----------
        X : (N, D) float64 or float32, C-contiguous; ``means``, ``prec``, ``const``,
            ``shift``, ``resp_in``, ``out_log_resp`` and ``out_norm`` in its dtype (the
            partials ``nk`` .. ``ent`` are float64 for both)
        means : (K, D) component means (for KIND_TIED: ``means @ prec[0]``)
        prec : (K, D, D) for full, (1, D, D) for tied, (K, 1, D) for diag
        const : (K,) the x-independent part of each expected log-density
        shift : (K, D) per-component shift of the accumulated moments, or (0, D) to skip
            the statistics (scoring only)
        resp_in : (N, K) responsibilities to use instead of computing them, or (0, K)
        labels_in : (N,) int64 hard assignments to use instead (a label outside [0, K)
            means the row belongs to no component), or (0,)
        chunk, tile : rows per chunk (the unit of work) / per transposed tile
        out_log_resp : (N, K) to receive log-responsibilities, or (0, K) for none
        out_norm : (N,) to receive log-sum-exp per row, or (0,) for none
        out_labels : (N,) int64 to receive the most probable component, or (0,)
        nk : (C, K), sx : (C, K, D), sq : (C, K, Dq, D), norm : (C,), ent : (C,)
            Per-chunk partial sums, written (not added to), C = ceil(N / chunk). ``sq``
            has Dq = D (full, upper triangle filled), 1 (diag) or 0 (tied). ``norm`` is
            the sum of log-sum-exp and ``ent`` of -r log r over the chunk's rows (0 when
            resp_in or labels_in is given).
        """
        wide_vectors()
        D = X.shape[1]
        K = const.shape[0]
        N = X.shape[0]
        given = resp_in.shape[0] == N
        hard = labels_in.shape[0] == N
        want_stats = shift.shape[0] == K
        want_lr = out_log_resp.shape[0] == N
        want_norm = out_norm.shape[0] == N
        want_labels = out_labels.shape[0] == N
        # scratch in the dtype of X: float32 data run on float32 lanes
        # full: the tile's features padded with zero rows to a multiple of 8
        # (tiles.maha_blocked)
        Dp = -(-D // 8) * 8 if kind == KIND_FULL else D
        Xt = scratch(Dp, tile, X)
        Xt[D:] = 0.0
        if kind == KIND_FULL:
            Up, Bp = _padded_factors(means, prec, X)
        else:
            Up, Bp = np.empty((0, 0, 0), X.dtype), np.empty((0, 0), X.dtype)
        Z = scratch(8, tile, X)
        Y = scratch(D, tile, X)
        LP = scratch(K, tile, X)
        R = scratch(K, tile, X)
        rows = scratch(4, tile, X)
        acc = rows[0]
        maha = rows[1]
        mx = rows[2]
        s = rows[3]
        for c in range(c0, c1):
            start = c * chunk
            stop = min(N, start + chunk)
            nk[c] = 0.0
            sx[c] = 0.0
            sq[c] = 0.0
            c_norm = 0.0
            c_ent = 0.0
            for t0 in range(start, stop, tile):
                T = min(tile, stop - t0)
                load_tile(X, t0, T, False, Xt)
                if given:
                    for k in range(K):
                        for t in range(T):
                            R[k, t] = resp_in[t0 + t, k]
                elif hard:
                    # one-hot responsibilities from labels; a label outside [0, K) is a
                    # row that belongs to no component (k-means++ initializations mark K
                    # rows)
                    for k in range(K):
                        for t in range(T):
                            R[k, t] = 1.0 if labels_in[t0 + t] == k else 0.0
                else:
                    if kind == KIND_FULL and sweep == 8:
                        _logprob_full8(Xt, T, Up, Bp, const, LP)
                    elif kind == KIND_FULL and sweep == 16:
                        _logprob_full16(Xt, T, Up, Bp, const, LP)
                    elif kind == KIND_FULL:
                        _logprob_full(Xt, T, Up, Bp, const, LP, Z, maha)
                    elif kind == KIND_TIED:
                        _logprob_tied(Xt, T, means, prec, const, LP, Y, acc)
                    else:
                        _logprob_diag(Xt, T, means, prec, const, LP, acc)
                    tn, te = _normalize(T, K, LP, R, mx, s)
                    c_norm += np.float64(tn)
                    c_ent += np.float64(te)
                    if want_lr:
                        for t in range(T):
                            for k in range(K):
                                out_log_resp[t0 + t, k] = LP[k, t] - mx[t]
                    if want_norm:
                        for t in range(T):
                            out_norm[t0 + t] = mx[t]
                    if want_labels:
                        # first maximum over components, as np.argmax of the
                        # log-responsibilities
                        for t in range(T):
                            best = 0
                            for k in range(1, K):
                                if LP[k, t] > LP[best, t]:
                                    best = k
                            out_labels[t0 + t] = best
                if want_stats:
                    _accumulate(Xt, T, shift, R, kind, Y, nk[c], sx[c], sq[c])
            norm[c] = c_norm
            ent[c] = c_ent

    mixture_chunks.__name__ = mixture_chunks.__qualname__ = name
    return jit(mixture_chunks)


mixture_chunks_full = _specialize(KIND_FULL, "mixture_chunks_full")
mixture_chunks_full8 = _specialize(KIND_FULL, "mixture_chunks_full8", 8)
mixture_chunks_full16 = _specialize(KIND_FULL, "mixture_chunks_full16", 16)
mixture_chunks_tied = _specialize(KIND_TIED, "mixture_chunks_tied")
mixture_chunks_diag = _specialize(KIND_DIAG, "mixture_chunks_diag")


@jit
def _gram_rows(X, start, stop, center, out):
    D = X.shape[1]
    y = np.empty(D)
    for n in range(start, stop):
        for d in range(D):
            y[d] = X[n, d] - center[d]
        for i in range(D):
            yi = y[i]
            for j in range(i, D):
                out[i, j] += yi * y[j]


@jit
def gram_chunks(c0, c1, X, center, chunk, out):
    """Chunks ``[c0, c1)`` of sum_n (x_n - center)(x_n - center)^T, upper triangle:
    ``out[c]`` (D, D) is written with chunk ``c``'s rows (see ``mixture_chunks``)."""
    N = X.shape[0]
    for c in range(c0, c1):
        out[c] = 0.0
        _gram_rows(X, c * chunk, min(N, (c + 1) * chunk), center, out[c])


def mixture_chunks(kind, n_features):
    """The ``mixture_chunks`` kernel of covariance ``kind`` (KIND_FULL, _TIED, _DIAG)
    for ``n_features`` features ('full' with up to 8, or up to 16, features has a
    kernel of its own: :func:`_specialize`)."""
    if kind == KIND_FULL and n_features <= 16:
        return mixture_chunks_full8 if n_features <= 8 else mixture_chunks_full16
    return (mixture_chunks_full, mixture_chunks_tied, mixture_chunks_diag)[kind]
