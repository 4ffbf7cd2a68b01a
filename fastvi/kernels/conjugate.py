"""The local step of variational logistic regression (Jaakkola–Jordan), one fused pass.

For the current Gaussian factor q(w) = N(m, S) over the weights (and the intercept, when
the model has one) the pass computes, for every row x_n (with a trailing 1 appended
when ``intercept`` is true),

* the optimal local variational parameter ξ_n = sqrt(x_nᵀ (S + m mᵀ) x_n)
  (PRML eq. 10.163),
* the statistic the next global update needs, G = Σ_n 2 λ(ξ_n) x_n x_nᵀ (PRML eq.
  10.158 without the prior),
* optionally H = Σ_n [2 λ(ξ_n) (1 − r_n) + σ'(ξ_n) r_n] x_n x_nᵀ with r_n = a_n² / ξ_n²
  and a_n = mᵀ x_n: the curvature in m of the bound with ξ optimized out (see
  ``fastvi.conjugate`` for the Newton step it feeds), optionally over every k-th row
  only (a subsampled Hessian, fixed by the rows' global indices),
* the part of the bound that depends on ξ only: Σ_n [log σ(ξ_n) − ξ_n/2 + λ(ξ_n) ξ_n²]
  (from PRML eqs. 10.151 and 10.164), and Σ_n [log σ(ξ_n) − ξ_n/2], what remains of
  the likelihood terms once ξ is optimal (the "collapsed" bound needs no G),

with λ(ξ) = tanh(ξ/2) / (4ξ) (PRML eq. 10.150) and σ'(ξ) = σ(ξ)(1 − σ(ξ)). The targets
do not enter the pass: Σ_n (t_n − 1/2) x_n is fixed and computed once by the caller.

Layout and determinism
----------------------
Rows are split into chunks of ``chunk`` rows (a caller constant, independent of the
thread count); a kernel call computes a range of chunks and each chunk writes only its
own slice of the partial sums, so the caller can run ranges on several threads
(``fastvi._threads.map_chunks``); the caller adds the partials in chunk order, so the
result is bitwise identical for any number of threads. Inside a chunk rows go in tiles
of ``tile`` points transposed to (D̃, T) so that the innermost loops run over points:
x_nᵀ S x_n is ||x_nᵀ U||² with U the upper-triangular factor of S (U Uᵀ = S),
computed by ``tiles.maha_upper``, and the Gram matrices are accumulated in their upper
triangle only, in 2 x 4 register blocks (``tiles.gram_upper``; the lower triangle is
left at zero).
"""

import math

import numpy as np

from ._config import jit
from ._math import exp_clamped, log1p_unit
from .tiles import gram_upper, load_tile, maha_upper

# below this ξ, λ(ξ) comes from its series (1 − e^(−ξ) would lose digits)
_SERIES_XI = 1e-2


@jit
def jj_local(q, a2):
    """Per-row quantities from q = ξ² and a2 = (mᵀx)² (0 <= a2 <= q).

    Returns ``(xi, 2 λ(ξ), log σ(ξ) − ξ/2 + λ(ξ) ξ², hessian weight)`` where the
    Hessian weight is 2 λ(ξ)(1 − r) + σ'(ξ) r with r = a2 / q (r = 1 when q = 0, where
    both weights equal 1/4). One exponential serves every term (the vectorizable
    polynomial ``exp``/``log1p`` of ``_math``): with e = exp(−ξ),
    tanh(ξ/2) = (1 − e) / (1 + e), log σ(ξ) = −log1p(e), σ'(ξ) = e / (1 + e)².
    """
    xi = math.sqrt(q)
    e = exp_clamped(-xi)
    # tanh(ξ/2) / (4ξ) = 1/8 − ξ²/96 + ξ⁴/960 − 17 ξ⁶/161280 + … for small ξ; both
    # sides are computed and one is selected, so a loop over rows vectorizes
    series = 0.125 - q / 96.0 + q * q / 960.0
    direct = (1.0 - e) / ((1.0 + e) * 4.0 * xi)
    lam = series if xi < _SERIES_XI else direct
    term = -log1p_unit(e) - 0.5 * xi + lam * q
    r = a2 / q
    r = r if q > 0.0 else 1.0
    hw = 2.0 * lam * (1.0 - r) + e / ((1.0 + e) * (1.0 + e)) * r
    return xi, 2.0 * lam, term, hw


@jit
def jj_chunks(
    c0,
    c1,
    X,
    U,
    mean,
    intercept,
    grams,
    hessian,
    hstride,
    row0,
    chunk,
    tile,
    G,
    H,
    c,
    gv,
):
    """Chunks ``[c0, c1)`` of one pass of the Jaakkola–Jordan local step (see the
    module docstring).

    Chunk ``k`` is rows ``[k * chunk, min(N, (k + 1) * chunk))`` and writes only
    ``G[k], H[k], c[k], gv[k]``, so chunks can run on any thread in any order
    (``fastvi._threads.map_chunks``).

    Parameters
    ----------
    X : (N, D) float64, C-contiguous
    U : (D̃, D̃) float64, upper triangular with U Uᵀ = S; D̃ = D + 1 with an intercept
    mean : (D̃,) float64, m
    intercept : bool, whether x_n gets a trailing 1
    grams : bool, whether to accumulate G (False: the ξ sums only, half the work)
    hessian : bool, whether to accumulate H as well (only with ``grams``)
    hstride, row0 : H sums only the rows n with (row0 + n) % hstride == 0: a
        subsample fixed by the rows' global indices (``row0`` is the index of X's
        first row in the whole data), so blocks of one data set agree with one call
    chunk, tile : rows per chunk (the unit of work) / per transposed tile
    G : (C, D̃, D̃) or (C, 0, 0), H : (C, D̃, D̃) or (C, 0, 0), c : (C, 2), gv : (C, D̃)
        Per-chunk partial sums (C = ceil(N / chunk)), written, upper triangles only,
        of Σ 2 λ(ξ_n) x_n x_nᵀ and of the Hessian weights' Σ w_n x_n x_nᵀ (over the
        subsample only); ``c[:, 0]`` holds Σ [log σ(ξ_n) − ξ_n/2 + λ(ξ_n) ξ_n²],
        ``c[:, 1]`` Σ [log σ(ξ_n) − ξ_n/2]; ``gv`` holds Σ 2 λ(ξ_n) (mᵀx_n) x_n, which
        is G m and needs no G (so a pass without ``grams`` still gives the bound's
        gradient in m).
    """
    Dt = U.shape[0]
    Xt = np.empty((Dt, tile))
    Xh = np.empty((Dt, tile)) if hstride > 1 else Xt
    acc = np.empty(tile)
    acc2 = np.empty(tile)
    maha = np.empty(tile)
    a = np.empty(tile)
    w1 = np.empty(tile)
    w2 = np.empty(tile)
    N = X.shape[0]
    for k in range(c0, c1):
        start = k * chunk
        stop = min(N, start + chunk)
        G[k] = 0.0
        H[k] = 0.0
        gvk = gv[k]
        gvk[:] = 0.0
        total = 0.0
        collapsed = 0.0
        for t0 in range(start, stop, tile):
            T = min(tile, stop - t0)
            load_tile(X, t0, T, intercept, Xt)
            # x̃ᵀ S x̃ = ||x̃ᵀ U||² and a = mᵀ x̃
            maha_upper(U, Xt, T, acc, acc2, maha)
            for t in range(T):
                a[t] = 0.0
            for d in range(Dt):
                md = mean[d]
                for t in range(T):
                    a[t] += md * Xt[d, t]
            for t in range(T):
                a2 = a[t] * a[t]
                q = maha[t] + a2
                _, w, term, hw = jj_local(q, a2)
                total += term
                collapsed += term - 0.5 * w * q
                w1[t] = w
                w2[t] = hw
            for t in range(T):
                a[t] *= w1[t]
            for d in range(Dt):
                s = 0.0
                for t in range(T):
                    s += a[t] * Xt[d, t]
                gvk[d] += s
            if not grams:
                continue
            gram_upper(w1, Xt, T, G, k)
            if not hessian:
                continue
            if hstride == 1:
                gram_upper(w2, Xt, T, H, k)
                continue
            # the rows of the Hessian subsample and their weights, packed into the
            # first columns (w1 is free again)
            first = (hstride - (row0 + t0) % hstride) % hstride
            n_h = 0
            for t in range(first, T, hstride):
                for d in range(Dt):
                    Xh[d, n_h] = Xt[d, t]
                w1[n_h] = w2[t]
                n_h += 1
            if n_h > 0:
                gram_upper(w1, Xh, n_h, H, k)
        c[k, 0] = total
        c[k, 1] = collapsed
