"""Fixed-draw VI: the ELBO on one set of draws, maximized by a quasi-Newton method.

Giordano, Ingram & Broderick (2024, "Black box variational inference with a
deterministic objective: faster, more accurate, and even more black box", JMLR 25):
with the draws eps_1..eps_N fixed, the ELBO estimate

    F(phi) = (1/N) sum_n log p(mu + L eps_n) + H[q_phi]

is a deterministic function of q's parameters phi, so a second-order method
(here BFGS, in the whitened coordinates of the Laplace start, where q starts at
N(0, I)) converges in a few iterations and its stop (a small gradient of F) is
well defined. Its answer differs from the ELBO's optimum by the sampling error of
the N draws, which is what :func:`sampling_error` estimates (below).

The draws are N = 2M antithetic pairs (eps, -eps), the M base draws whitened so
that their second moment is exactly the identity (M >= P): the draws' mean is 0
and their covariance I exactly, and every odd moment vanishes. F's gradient is
then exact for a log density that is a polynomial of degree 3 in z (the draws
are a randomized cubature rule of degree 3, like the unscented transform): a
Gaussian posterior is fitted exactly, and the error on a near-Gaussian one comes
only from fourth and higher derivatives.

Its answer's sampling error is checked by replication (the engine, with
:func:`replicate_gap`): F is evaluated on fresh sets of draws at the optimum,
and one quasi-Newton step (the optimizer's inverse Hessian times that gradient:
linear response, Giordano et al. §4) estimates where their optimum lies. The fit
is accepted when those optima agree with it to 0.05 of q's sds in every mean and
0.035 in every log sd; else the draws are doubled once (when the gap is within
twice the tolerance), and if they still do not agree the engine takes stochastic
steps from the Laplace start instead. Before the fit, :func:`start_gap` screens
out posteriors whose fixed-draw optima are far apart already at the start (for
the price of one more set of draws), which would only waste the fit.
(A per-draw standard error of the gradient was tried first: on eight schools'
funnel it was small while the fit's tau sd was 1.4 times the posterior's.)
"""

import math
import warnings

import numpy as np
from scipy.linalg.lapack import dtrtrs
from scipy.optimize import minimize

from .engine import _DRAW_BATCH, FullRank

__all__ = [
    "cubature_draws",
    "fixed_draw_fit",
    "objective",
    "replicate_gap",
    "start_gap",
]

#: BFGS keeps a dense inverse Hessian of q's parameters; above this many
#: parameters L-BFGS is used instead
_DENSE_MAX = 1000


def cubature_draws(rng, P, M):
    """2M draws (2M, P): M standard normal draws whitened to a second moment of
    exactly I (M >= P), followed by their negatives."""
    if M < P:
        raise ValueError(f"cubature_draws needs M >= P, got M={M}, P={P}.")
    for _ in range(10):
        e = rng.standard_normal((M, P))
        C = e.T @ e / M
        try:
            Lc = np.linalg.cholesky(C)
        except np.linalg.LinAlgError:
            continue
        # e Lc^{-T}: second moment Lc^{-1} C Lc^{-T} = I
        e, info = dtrtrs(Lc, e.T, lower=1)
        if info == 0 and np.all(np.isfinite(e)):
            return np.concatenate([e.T, -e.T])
    raise FloatingPointError("Could not whiten the fixed draws.")  # pragma: no cover


def objective(engine, frame, E):
    """``(f, evals)``: ``f(p)`` is -F on the draws ``E`` and its gradient in q's
    packed parameters in the frame's coordinates (the last point's values are
    kept: asked again, they cost nothing; ``f.keep(p, out)`` stores values
    found otherwise); ``evals[0]`` counts the draws evaluated."""
    evals = [0]
    last = [None, None]

    def keep(p, out):
        last[0], last[1] = np.array(p, dtype=np.float64), out

    def f(p):
        if last[0] is not None and np.array_equal(p, last[0]):
            return last[1]
        evals[0] += E.shape[0]
        out = values(engine, frame, p, [E])[0]
        keep(p, out)
        return out

    f.keep, f.draws = keep, E
    return f, evals


def values(engine, frame, p, sets):
    """``[(-F, -grad F)]`` at ``p`` on each set of draws in ``sets``, from one
    call of the model on all of them while they are at most ``_DRAW_BATCH``
    draws together (a small model's call costs about as much for 1 as for 64
    draws), else from one call per set; ``(inf, 0)`` where not finite."""
    if len(sets) > 1 and sum(e.shape[0] for e in sets) > _DRAW_BATCH:
        return [values(engine, frame, p, [e])[0] for e in sets]
    fam = engine.family
    bad = (math.inf, np.zeros_like(p))
    with np.errstate(all="ignore"):
        fac = fam.factor(p)
        E = sets[0] if len(sets) == 1 else np.concatenate(sets)
        lp, gz = engine.model.log_density(frame.push(fam.sample(p, E, fac)), None)
        gu = frame.pullback(gz)
        entropy = fam.entropy(p)
        out, i = [], 0
        for e in sets:
            j = i + e.shape[0]
            if not (np.all(np.isfinite(lp[i:j])) and np.all(np.isfinite(gu[i:j]))):
                out.append(bad)
            else:
                g = fam.grad(p, e, gu[i:j], "reparam", fac)
                value = float(lp[i:j].mean()) + entropy
                ok = math.isfinite(value) and np.all(np.isfinite(g))
                out.append((-value, -g) if ok else bad)
            i = j
    return out


def fixed_draw_fit(engine, frame, phi_u, E, max_iter, gtol=1e-3, callback=None, f=None):
    """Maximize F on the draws ``E`` from q's parameters ``phi_u`` (in the frame's
    coordinates); ``callback(p, F)`` after every iteration; ``f``: the
    :func:`objective` of ``E`` when made already. Returns ``(phi_u,
    converged, n_iter, elbo_trace, n_evals, hess_inv)``: ``converged`` when the
    optimizer met its gradient tolerance with a finite F. The default ``gtol``
    (on every component of F's gradient in the whitened coordinates, where q's
    means and log sds are in posterior sds) leaves q about 1e-3 sds from F's
    optimum, 50 times below the replicate check's tolerance; 1e-5 took 1-4 more
    iterations on the posteriordb fixtures and changed no mean by 0.001 sds."""
    evals = [0]
    if f is None:
        f, evals = objective(engine, frame, E)
    trace = []
    last = {}

    def wrapped(p):
        last["value"], g = f(p)
        return last["value"], g

    def on_iter(p):
        # the line search's last evaluation is at the point it accepted
        trace.append(-last["value"])
        if callback is not None:
            callback(p, trace[-1])

    if engine.family.size <= _DENSE_MAX:
        # BFGS from the inverse Hessian of -F at the optimum for a standard
        # normal posterior (the whitened Laplace start's): near-Newton steps at
        # once (scipy's BFGS, from the identity, took twice the iterations and
        # ~0.1 ms of overhead each)
        with np.errstate(all="ignore"):
            x, converged, nit, hess_inv = _bfgs(
                wrapped, phi_u, _h_inv(engine), max_iter, gtol, on_iter
            )
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                res = minimize(
                    wrapped,
                    phi_u,
                    jac=True,
                    method="L-BFGS-B",
                    options={"maxiter": int(max_iter), "pgtol": gtol},
                    callback=on_iter,
                )
        x, nit = np.asarray(res.x, dtype=np.float64), int(res.nit)
        converged = bool(res.success) and math.isfinite(res.fun)
        converged = converged and bool(np.all(np.isfinite(x)))
        # an operator (never made dense: it would hold size^2 numbers)
        hess_inv = res.hess_inv
    trace = np.asarray(trace, dtype=np.float64)
    return x, converged, nit, trace, evals[0], hess_inv


def _bfgs(f, x, h0, max_iter, gtol, callback):
    """Minimize ``f`` (value and gradient) by BFGS from ``x`` with the diagonal
    inverse Hessian ``h0``, backtracking to a sufficient decrease (Armijo); the
    update is skipped when the curvature s'y is not positive. Returns ``(x,
    converged, n_iter, H)``: converged when max |gradient| <= ``gtol`` at a
    finite value."""
    v, g = f(x)
    H = np.diag(h0)
    for it in range(int(max_iter)):
        if not math.isfinite(v):
            return x, False, it, H
        if np.max(np.abs(g)) <= gtol:
            return x, True, it, H
        p = -(H @ g)
        slope = float(g @ p)
        if not slope < 0:  # not a descent direction: restart from h0
            H = np.diag(h0)
            p = -h0 * g
            slope = float(g @ p)
        t = 1.0
        while True:
            v1, g1 = f(x + t * p)
            if v1 <= v + 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-10:
                return x, False, it, H
        s, y = t * p, g1 - g
        sy = float(s @ y)
        if sy > 0:
            Hy = H @ y
            H = H + ((sy + y @ Hy) / sy**2) * np.outer(s, s)
            H -= (np.outer(Hy, s) + np.outer(s, Hy)) / sy
        x, v, g = x + s, v1, g1
        callback(x)
    return x, False, int(max_iter), H


def replicate_gap(engine, frame, phi_u, hess_inv, sets):
    """How far the optima of F on the fresh draws of each array in ``sets`` are
    from ``phi_u``, the optimum on other draws, by one quasi-Newton step each:
    delta = H^{-1} grad F_E (``hess_inv``: the optimizer's estimate of H^{-1}
    at ``phi_u``). Returns ``(mean_gap, log_sd_gap)``, the largest over the
    sets: the largest |change of q's mean| in q's sds and |change of log sd|;
    inf when not finite."""
    gaps = []
    for value, g in values(engine, frame, phi_u, sets):
        if not math.isfinite(value):
            return math.inf, math.inf
        with np.errstate(all="ignore"):
            delta = -np.asarray(hess_inv.dot(g)).reshape(-1)
        gaps.append(_gaps(engine.family, phi_u, delta))
    return tuple(np.max(gaps, axis=0))


def start_gap(engine, frame, phi_u, f_E, F):
    """:func:`replicate_gap` before the fit, at the Laplace start ``phi_u``: how
    far apart the optima on the draws of ``f_E`` (an :func:`objective`, which
    keeps its value there) and on the draws ``F`` are, by one Newton step on
    the difference of their gradients with the Hessian of -F for a standard
    normal posterior in the whitened coordinates (1 in q's means, 2 in log sd,
    1 / (P - 1) in a full-rank q's unitless off-diagonal entries; diagonal).
    Cheap (the draws of ``F`` once) and rough: it only screens out posteriors
    whose fixed-draw fits are far apart (eight schools: gaps of 1-10 sds
    against 0.01 on the regressions)."""
    (value_e, g_e), (value_f, g_f) = values(engine, frame, phi_u, [f_E.draws, F])
    f_E.keep(phi_u, (value_e, g_e))
    if not (math.isfinite(value_e) and math.isfinite(value_f)):
        return math.inf, math.inf
    with np.errstate(all="ignore"):
        delta = -_h_inv(engine) * (g_f - g_e)
    return _gaps(engine.family, phi_u, delta)


def _h_inv(engine):
    """The diagonal inverse Hessian of -F in q's parameters at q = N(0, I) for a
    standard normal posterior, in the whitened coordinates: 1 in q's means, 1/2
    in log sd, P - 1 in a full-rank q's unitless off-diagonal entries."""
    fam, P = engine.family, engine.model.size
    h_inv = np.ones(fam.size)
    if isinstance(fam, FullRank):
        tri = h_inv[P:]
        tri[:] = max(P - 1, 1)
        tri[fam.diag_pos] = 0.5
    else:
        h_inv[P:] = 0.5
    return h_inv


def _gaps(fam, phi_u, delta):
    """The largest |change of q's mean| (in q's sds) and |change of log sd| when
    q's parameters move from ``phi_u`` by ``delta``; inf when not finite."""
    with np.errstate(all="ignore"):
        moved = phi_u + delta
        sd0, sd1 = fam.std(phi_u), fam.std(moved)
        mean_gap = np.abs(fam.mean(moved) - fam.mean(phi_u)) / sd0
        sd_gap = np.abs(np.log(sd1 / sd0))
    a, b = float(np.max(mean_gap)), float(np.max(sd_gap))
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf, math.inf
    return a, b
