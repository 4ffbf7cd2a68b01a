"""The local step of variational logistic regression (Jaakkola–Jordan), one fused pass.

For the current Gaussian factor q(w) = N(m, S) over the weights (and the intercept, when
the model has one) the pass computes, for every row x_n (with a trailing 1 appended
when ``intercept`` is true),

* the optimal local variational parameter ξ_n = sqrt(x_nᵀ (S + m mᵀ) x_n)
  (PRML eq. 10.163),
* the statistics the next global update needs: Σ_n 2 λ(ξ_n) x_n x_nᵀ (PRML eq. 10.158
  without the prior) and Σ_n (t_n − 1/2) x_n (eq. 10.157),
* the part of the bound that depends on ξ only: Σ_n [log σ(ξ_n) − ξ_n/2 + λ(ξ_n) ξ_n²]
  (from PRML eq. 10.151 and 10.164),

with λ(ξ) = tanh(ξ/2) / (4ξ) = (σ(ξ) − 1/2) / (2ξ) (PRML eq. 10.150).

Layout and determinism
----------------------
The caller passes ``F = [L, m]`` (D̃ x (D̃ + 1)) with L Lᵀ = S, so ξ_n² = ||x_n F||² is
one small matrix product per tile of rows. Rows are split into chunks of ``chunk`` rows
(a caller constant, independent of the thread count); ``prange`` runs over chunks and
each chunk writes only its own slice of the partial sums; the caller adds the partials
in chunk order. The products inside a tile are BLAS calls (``np.dot``) on fixed-size
buffers, so the result is bitwise identical for any number of numba threads as long as
BLAS runs on one thread (``fastvi._threads.thread_limits`` sees to that).
"""

import math

import numpy as np
from numba import prange

from ._config import jit, pjit


@jit
def jj_lambda(xi):
    """λ(ξ) = tanh(ξ/2) / (4ξ) for ξ >= 0; its series 1/8 − ξ²/96 near 0."""
    if xi < 1e-4:
        return 0.125 - xi * xi / 96.0
    return math.tanh(0.5 * xi) / (4.0 * xi)


@jit
def log_sigmoid_nonneg(x):
    """log σ(x) = −log(1 + exp(−x)) for x >= 0."""
    return -math.log1p(math.exp(-x))


@jit
def _jj_chunk(X, s, F, intercept, start, stop, tile, out_xi, G, h):
    """Rows [start, stop): adds into this chunk's G (D̃, D̃) and h (D̃,).

    Returns this chunk's Σ [log σ(ξ) − ξ/2 + λ(ξ) ξ²].
    """
    D = X.shape[1]
    Dt = F.shape[0]
    want_xi = out_xi.shape[0] == X.shape[0]
    Xb = np.empty((tile, Dt))
    Wb = np.empty((tile, Dt))
    Z = np.empty((tile, Dt + 1))
    part = np.empty((Dt, Dt))
    xi = np.empty(tile)
    total = 0.0
    for t0 in range(start, stop, tile):
        T = min(tile, stop - t0)
        if T < tile:  # the last, short tile of the data: zero rows add nothing
            Xb[:] = 0.0
        for t in range(T):
            for d in range(D):
                Xb[t, d] = X[t0 + t, d]
            if intercept:
                Xb[t, D] = 1.0
        # Z = Xb [L, m]: xi^2 = ||x L||^2 + (x . m)^2
        np.dot(Xb, F, Z)
        for t in range(T):
            q = 0.0
            for j in range(Dt + 1):
                q += Z[t, j] * Z[t, j]
            x = math.sqrt(q)
            xi[t] = x
            lam = jj_lambda(x)
            total += log_sigmoid_nonneg(x) - 0.5 * x + lam * q
            w = 2.0 * lam
            st = s[t0 + t]
            for j in range(Dt):
                v = Xb[t, j]
                Wb[t, j] = w * v
                h[j] += st * v
        for t in range(T, tile):
            for j in range(Dt):
                Wb[t, j] = 0.0
        # G += Wbᵀ Xb = Σ_t 2 λ(ξ_t) x_t x_tᵀ
        np.dot(Wb.T, Xb, part)
        for i in range(Dt):
            for j in range(Dt):
                G[i, j] += part[i, j]
        if want_xi:
            for t in range(T):
                out_xi[t0 + t] = xi[t]
    return total


@pjit
def jj_pass(X, s, F, intercept, chunk, tile, out_xi):
    """One pass of the Jaakkola–Jordan local step (see the module docstring).

    Parameters
    ----------
    X : (N, D) float64, C-contiguous
    s : (N,) float64, the targets minus 1/2 (t_n − 1/2 with t_n in {0, 1})
    F : (D̃, D̃ + 1) float64, ``[L, m]`` with L Lᵀ = S; D̃ = D + 1 with an intercept
    intercept : bool, whether x_n gets a trailing 1
    chunk, tile : rows per parallel work item / per BLAS tile
    out_xi : (N,) to receive ξ_n, or (0,) for none

    Returns
    -------
    G : (C, D̃, D̃), h : (C, D̃), c : (C,)
        Per-chunk partial sums (C = ceil(N / chunk)) of Σ 2 λ(ξ_n) x_n x_nᵀ,
        Σ s_n x_n and Σ [log σ(ξ_n) − ξ_n/2 + λ(ξ_n) ξ_n²].
    """
    N = X.shape[0]
    Dt = F.shape[0]
    n_chunks = (N + chunk - 1) // chunk
    G = np.zeros((n_chunks, Dt, Dt))
    h = np.zeros((n_chunks, Dt))
    c = np.zeros(n_chunks)
    for k in prange(n_chunks):
        start = k * chunk
        stop = min(N, start + chunk)
        c[k] = _jj_chunk(X, s, F, intercept, start, stop, tile, out_xi, G[k], h[k])
    return G, h, c
