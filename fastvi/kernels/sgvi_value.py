"""The GLM log-likelihood alone, for many parameter draws (no gradient).

What the PSIS k-hat check at the end of an SGVI fit (and the score-function
estimator) needs: ``ll[s] = sum_n f(y_n, x_n . W[s] + b[s])`` with the families and
layout of :mod:`fastvi.kernels.sgvi`, whose gradient pass would spend half its
multiply-adds on the X^T r product nobody reads. Here each tile takes the one
product eta (S x T) = W (S x D) . Xt (D x T) (``linear_predictor``) and one sweep
of the link, in float64 (``softplus``/``exp`` of ``_math``) from eta in the dtype
of X, except float32 logistic terms (``softplus32``, summed in float32 over a tile).

Determinism: rows go in chunks of a caller-fixed size; ``prange`` runs over chunks,
each writing its own row of the partials (``ll``, ``ss``: (C, S) float64), which
the caller adds in chunk order, so the bits do not depend on the thread count.
"""

import numpy as np
from numba import prange

from ._config import jit, twins, wide_vectors
from ._math import exp_clamped, softplus, softplus32
from .sgvi import FAMILY_LOGISTIC, FAMILY_POISSON, linear_predictor
from .tiles import gather_tile, scratch


@jit
def _link_sums(E, yt, T, family, tau, ll, ss):
    """Adds sum_t f(y_t, E[s, t]) into ll[s] (Gaussian: sum_t r^2 into ss[s])."""
    wide_vectors()
    for s in range(E.shape[0]):
        acc = 0.0
        if family == FAMILY_LOGISTIC and E.itemsize == 4:
            # float32 data: float32 terms (twice the vector width), summed in
            # float32 over the tile's rows only, as the gradient pass does
            acc32 = np.float32(0.0)
            for t in range(T):
                eta = E[s, t]
                acc32 += yt[t] * eta - softplus32(eta)
            acc = np.float64(acc32)
        elif family == FAMILY_LOGISTIC:
            for t in range(T):
                eta = np.float64(E[s, t])
                acc += yt[t] * eta - softplus(eta)
        elif family == FAMILY_POISSON:
            for t in range(T):
                eta = np.float64(E[s, t])
                acc += yt[t] * eta - exp_clamped(eta)
        else:
            for t in range(T):
                r = yt[t] - np.float64(E[s, t])
                acc += r * r
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
