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
"""

import numpy as np

from ._config import jit
from ._math import exp_nonpos

KIND_FULL = 0
KIND_TIED = 1
KIND_DIAG = 2


@jit
def _load_tile(X, t0, T, Xt):
    """Xt[d, t] = X[t0 + t, d]: the tile transposed so points are contiguous."""
    D = X.shape[1]
    for t in range(T):
        for d in range(D):
            Xt[d, t] = X[t0 + t, d]


@jit
def _tri_column(U, j, Y, T, acc):
    """acc[t] <- sum_{i <= j} U[i, j] * Y[i, t]  (column j of (Y^T U)^T, U upper).

    Four rows per sweep so each load/store of ``acc`` feeds four FMAs: the sweep is
    bound by memory operations otherwise.
    """
    for t in range(T):
        acc[t] = 0.0
    n = j + 1
    i = 0
    while i + 4 <= n:
        u0 = U[i, j]
        u1 = U[i + 1, j]
        u2 = U[i + 2, j]
        u3 = U[i + 3, j]
        for t in range(T):
            acc[t] += (
                u0 * Y[i, t] + u1 * Y[i + 1, t] + u2 * Y[i + 2, t] + u3 * Y[i + 3, t]
            )
        i += 4
    while i < n:
        u0 = U[i, j]
        for t in range(T):
            acc[t] += u0 * Y[i, t]
        i += 1


@jit
def _maha_upper(U, Y, T, acc, acc2, maha):
    """maha[t] <- || Y[:, t]^T U ||^2 for upper-triangular U.

    Columns go in pairs (j, j + 1) that share the loads of rows 0..j, and rows in
    blocks of four, so every load or store feeds more than one FMA.
    """
    D = Y.shape[0]
    for t in range(T):
        maha[t] = 0.0
    j = 0
    while j + 1 < D:
        for t in range(T):
            acc[t] = 0.0
            acc2[t] = 0.0
        n = j + 1
        i = 0
        while i + 4 <= n:
            a0 = U[i, j]
            a1 = U[i + 1, j]
            a2 = U[i + 2, j]
            a3 = U[i + 3, j]
            b0 = U[i, j + 1]
            b1 = U[i + 1, j + 1]
            b2 = U[i + 2, j + 1]
            b3 = U[i + 3, j + 1]
            for t in range(T):
                y0 = Y[i, t]
                y1 = Y[i + 1, t]
                y2 = Y[i + 2, t]
                y3 = Y[i + 3, t]
                acc[t] += a0 * y0 + a1 * y1 + a2 * y2 + a3 * y3
                acc2[t] += b0 * y0 + b1 * y1 + b2 * y2 + b3 * y3
            i += 4
        while i < n:
            a0 = U[i, j]
            b0 = U[i, j + 1]
            for t in range(T):
                y0 = Y[i, t]
                acc[t] += a0 * y0
                acc2[t] += b0 * y0
            i += 1
        last = U[j + 1, j + 1]  # row j + 1 only reaches column j + 1
        for t in range(T):
            z = acc2[t] + last * Y[j + 1, t]
            maha[t] += acc[t] * acc[t] + z * z
        j += 2
    if j < D:  # odd D: the last column alone
        _tri_column(U, j, Y, T, acc)
        for t in range(T):
            maha[t] += acc[t] * acc[t]


@jit
def _logprob_full(Xt, T, means, prec, const, LP, Y, acc, acc2, maha):
    K, D = means.shape
    for k in range(K):
        for d in range(D):
            m = means[k, d]
            for t in range(T):
                Y[d, t] = Xt[d, t] - m
        # maha = || (x - m_k) @ U_k ||^2
        _maha_upper(prec[k], Y, T, acc, acc2, maha)
        c = const[k]
        for t in range(T):
            LP[k, t] = c - 0.5 * maha[t]


@jit
def _weighted_sq_dist(A, T, centre, weight, acc):
    """acc[t] <- sum_d weight[d] * (A[d, t] - centre[d])^2, four features a sweep."""
    D = A.shape[0]
    for t in range(T):
        acc[t] = 0.0
    d = 0
    while d + 4 <= D:
        m0 = centre[d]
        m1 = centre[d + 1]
        m2 = centre[d + 2]
        m3 = centre[d + 3]
        p0 = weight[d]
        p1 = weight[d + 1]
        p2 = weight[d + 2]
        p3 = weight[d + 3]
        for t in range(T):
            e0 = A[d, t] - m0
            e1 = A[d + 1, t] - m1
            e2 = A[d + 2, t] - m2
            e3 = A[d + 3, t] - m3
            acc[t] += p0 * e0 * e0 + p1 * e1 * e1 + p2 * e2 * e2 + p3 * e3 * e3
        d += 4
    while d < D:
        m0 = centre[d]
        p0 = weight[d]
        for t in range(T):
            e0 = A[d, t] - m0
            acc[t] += p0 * e0 * e0
        d += 1


@jit
def _logprob_tied(Xt, T, proj, prec, const, LP, Y, acc):
    K, D = proj.shape
    # Y <- (x @ U)^T for the tile, shared by all components
    U = prec[0]
    for j in range(D):
        _tri_column(U, j, Xt, T, acc)
        for t in range(T):
            Y[j, t] = acc[t]
    ones = np.ones(D)
    for k in range(K):
        _weighted_sq_dist(Y, T, proj[k], ones, acc)
        c = const[k]
        for t in range(T):
            LP[k, t] = c - 0.5 * acc[t]


@jit
def _logprob_diag(Xt, T, means, prec, const, LP, acc):
    K = means.shape[0]
    for k in range(K):
        _weighted_sq_dist(Xt, T, means[k], prec[k, 0], acc)
        c = const[k]
        for t in range(T):
            LP[k, t] = c - 0.5 * acc[t]


@jit
def _normalize(T, K, LP, R, mx, s):
    """R <- softmax over k of LP; returns sum_t lse_t and the entropy -sum r log r.

    On return ``mx[t]`` holds log-sum-exp of column t.
    """
    for t in range(T):
        mx[t] = LP[0, t]
    for k in range(1, K):
        for t in range(T):
            mx[t] = max(mx[t], LP[k, t])
    for t in range(T):
        s[t] = 0.0
    for k in range(K):
        for t in range(T):
            e = exp_nonpos(LP[k, t] - mx[t])
            R[k, t] = e
            s[t] += e
    for t in range(T):
        s[t] = 1.0 / s[t]
        mx[t] = mx[t] - np.log(s[t])  # mx <- lse = max + log(sum)
    norm = 0.0
    ent = 0.0
    for k in range(K):
        for t in range(T):
            r = R[k, t] * s[t]
            R[k, t] = r
            ent -= r * (LP[k, t] - mx[t])
    for t in range(T):
        norm += mx[t]
    return norm, ent


@jit
def _accumulate(Xt, T, shift, R, kind, Y, W, nk, sx, sq):
    """Add this tile's sufficient statistics into one chunk's partials (nk, sx, sq)."""
    K, D = shift.shape
    for k in range(K):
        tot = 0.0
        for t in range(T):
            tot += R[k, t]
        nk[k] += tot
        if kind != KIND_FULL:
            # fused, store-free: sum r y and (diag) sum r y^2 with y = x - shift
            for d in range(D):
                m = shift[k, d]
                a = 0.0
                b = 0.0
                for t in range(T):
                    y = Xt[d, t] - m
                    ry = R[k, t] * y
                    a += ry
                    b += ry * y
                sx[k, d] += a
                if kind == KIND_DIAG:
                    sq[k, 0, d] += b
            continue
        # full: Y = x - shift and W = r * Y for the tile, then the upper triangle of
        # W Y^T in 2 x 4 blocks so that each load feeds two FMAs. The block is the
        # same as ``conjugate._gram_upper``, written out here on purpose: calling that
        # function with ``sq[k]`` made a 'full' fit (N=5e5, K=32, D=16) ~15% slower.
        for d in range(D):
            m = shift[k, d]
            a = 0.0
            for t in range(T):
                y = Xt[d, t] - m
                Y[d, t] = y
                ry = R[k, t] * y
                W[d, t] = ry
                a += ry
            sx[k, d] += a
        i = 0
        while i < D:
            i1 = i + 1 if i + 1 < D else i  # last odd row: computed twice, kept once
            j = i
            while j < D:
                j1 = min(j + 1, D - 1)
                j2 = min(j + 2, D - 1)
                j3 = min(j + 3, D - 1)
                a0 = 0.0
                a1 = 0.0
                a2 = 0.0
                a3 = 0.0
                b0 = 0.0
                b1 = 0.0
                b2 = 0.0
                b3 = 0.0
                for t in range(T):
                    w0 = W[i, t]
                    w1 = W[i1, t]
                    y0 = Y[j, t]
                    y1 = Y[j1, t]
                    y2 = Y[j2, t]
                    y3 = Y[j3, t]
                    a0 += w0 * y0
                    a1 += w0 * y1
                    a2 += w0 * y2
                    a3 += w0 * y3
                    b0 += w1 * y0
                    b1 += w1 * y1
                    b2 += w1 * y2
                    b3 += w1 * y3
                # write back only real entries of the upper triangle
                sq[k, i, j] += a0
                if j + 1 < D:
                    sq[k, i, j + 1] += a1
                if j + 2 < D:
                    sq[k, i, j + 2] += a2
                if j + 3 < D:
                    sq[k, i, j + 3] += a3
                if i + 1 < D:
                    if j >= i + 1:
                        sq[k, i + 1, j] += b0
                    if j + 1 < D and j + 1 >= i + 1:
                        sq[k, i + 1, j + 1] += b1
                    if j + 2 < D:
                        sq[k, i + 1, j + 2] += b2
                    if j + 3 < D:
                        sq[k, i + 1, j + 3] += b3
                j += 4
            i += 2


def _specialize(kind, name):
    """``mixture_chunks`` compiled for one ``kind`` (a constant of the code)."""

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
        X : (N, D) float64, C-contiguous
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
        D = X.shape[1]
        K = const.shape[0]
        N = X.shape[0]
        given = resp_in.shape[0] == N
        hard = labels_in.shape[0] == N
        want_stats = shift.shape[0] == K
        want_lr = out_log_resp.shape[0] == N
        want_norm = out_norm.shape[0] == N
        want_labels = out_labels.shape[0] == N
        Xt = np.empty((D, tile))
        Y = np.empty((D, tile))
        W = np.empty((D, tile))
        LP = np.empty((K, tile))
        R = np.empty((K, tile))
        acc = np.empty(tile)
        maha = np.empty(tile)
        mx = np.empty(tile)
        s = np.empty(tile)
        acc2 = np.empty(tile)
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
                _load_tile(X, t0, T, Xt)
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
                    if kind == KIND_FULL:
                        _logprob_full(Xt, T, means, prec, const, LP, Y, acc, acc2, maha)
                    elif kind == KIND_TIED:
                        _logprob_tied(Xt, T, means, prec, const, LP, Y, acc)
                    else:
                        _logprob_diag(Xt, T, means, prec, const, LP, acc)
                    tn, te = _normalize(T, K, LP, R, mx, s)
                    c_norm += tn
                    c_ent += te
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
                    _accumulate(Xt, T, shift, R, kind, Y, W, nk[c], sx[c], sq[c])
            norm[c] = c_norm
            ent[c] = c_ent

    mixture_chunks.__name__ = mixture_chunks.__qualname__ = name
    return jit(mixture_chunks)


mixture_chunks_full = _specialize(KIND_FULL, "mixture_chunks_full")
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


def mixture_chunks(kind):
    """The ``mixture_chunks`` kernel of covariance ``kind`` (KIND_FULL, _TIED, _DIAG)."""
    return (mixture_chunks_full, mixture_chunks_tied, mixture_chunks_diag)[kind]
