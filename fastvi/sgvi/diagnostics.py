"""The PSIS k-hat diagnostic of a fitted variational approximation.

Yao, Vehtari, Simpson & Gelman (2018), "Yes, but did it work?: Evaluating variational
inference": draw z_1..z_M from q, take the log importance ratios
log w_m = log p(x, z_m) - log q(z_m), and fit a generalized Pareto distribution to the
largest ones, as Pareto-smoothed importance sampling does (Vehtari, Simpson, Gelman,
Yao & Gabry, "Pareto smoothed importance sampling", 2015/2024). Its shape k-hat
says how heavy the tail of the ratios is, i.e. how badly q misses the posterior:

* k-hat < 0.5: q is close to the posterior; importance sampling would converge fast;
* 0.5 <= k-hat < 0.7: usable, with care;
* k-hat > 0.7: the ratios' variance is effectively infinite; q is not trustworthy
  (a :class:`PSISWarning` is issued).

``M_tail = ceil(min(M / 5, 3 sqrt(M)))`` ratios go into the fit, as exceedances over
the next-largest one. The GPD is fitted by the empirical-Bayes method of Zhang &
Stephens (2009, Technometrics 51(3)), written here from their formulas, with
Vehtari et al.'s changes:
``m = 30 + floor(sqrt(n))`` grid points and the estimate of k shrunk towards 0.5 by a
weakly informative prior worth 10 observations, k <- (n k + 5) / (n + 10).
"""

import math
import warnings
from typing import NamedTuple

import numpy as np
from sklearn.exceptions import ConvergenceWarning

__all__ = [
    "CorrelationWarning",
    "PSISDiagnostic",
    "PSISWarning",
    "StationarityWarning",
    "gpd_fit",
    "psis_khat",
]

#: k-hat above which q is flagged (Yao et al. 2018)
KHAT_THRESHOLD = 0.7


#: spread of the log importance ratios (the largest minus the median) up to which a
#: k-hat above the threshold is not reported: every draw's weight is then within a
#: factor e of the typical one, so q is as good as the posterior for its means and
#: sds, and k-hat, which measures only the shape of the weights' tail, is mostly
#: noise there (measured: 0.26-0.66 over four seeds on one near-exact fit whose
#: log weights had sds of 0.06-0.1, a spread of ~0.2-0.35 over 1000 draws). The
#: spread, not the sd, decides: when q misses a mode, a few draws in the tail of q
#: reach it and carry large weights while the sd of all the log weights stays
#: small (q on the lesser mode of 0.02 N(0, 1) + 0.98 N(6, 1): sd 0.18, spread
#: above 5, k-hat 2.4).
LOG_WEIGHT_SPREAD_FLOOR = 1.0


def untrustworthy(khat, log_weights):
    """Whether k-hat flags q: above the threshold with weights that are not level
    (:data:`LOG_WEIGHT_SPREAD_FLOOR`), or not computable (NaN: log p not finite at
    some of q's draws, or fewer than 5 draws holding all the weight) with weights
    that are not level."""
    lw = np.asarray(log_weights, dtype=np.float64)
    if math.isnan(khat):
        if not np.all(np.isfinite(lw)):
            return True
    elif not khat > KHAT_THRESHOLD:
        return False
    finite = lw[np.isfinite(lw)]
    if finite.shape[0] < lw.shape[0] or finite.shape[0] < 2:
        return True
    return float(np.max(finite) - np.median(finite)) > LOG_WEIGHT_SPREAD_FLOOR


class PSISWarning(UserWarning):
    """The PSIS k-hat of a fitted q is above 0.7: q is a poor approximation."""


class CorrelationWarning(PSISWarning):
    """A mean-field q of a strongly correlated posterior: its sds are too small.

    Issued at the end of a converged mean-field fit whose Laplace approximation
    has a correlation above ``CORRELATION_THRESHOLD``, whatever k-hat says (k-hat
    of such fits ranged 0.66-1.02 over seeds 0-4 on kidiq, so it flags them only
    by chance). A subclass of :class:`PSISWarning`.
    """


#: |correlation| at the mode above which a mean-field fit is warned about: the
#: best mean-field Gaussian's sd is then below sqrt(1 - 0.9^2) = 0.44 of the
#: marginal sd for a Gaussian pair
CORRELATION_THRESHOLD = 0.9


class ELBODivergenceWarning(UserWarning):
    """The ELBO trace of an SGVI run fell far below its best while staying finite.

    Issued by :class:`fastvi.sgvi.engine.DivergenceMonitor` (in the spirit of Stan
    ADVI's "MAY BE DIVERGING... INSPECT ELBO"): q's parameters are moving away from
    the optimum, usually because the learning rate is too large.
    """


class PSISDiagnostic(NamedTuple):
    """``khat``; ``log_weights`` (M,) log p - log q of the draws; ``n_tail``."""

    khat: float
    log_weights: np.ndarray
    n_tail: int


def gpd_fit(x, prior=True):
    """Generalized Pareto fit to exceedances ``x`` > 0 (Zhang & Stephens 2009).

    The GPD here has density (1/sigma) (1 + k x / sigma)^(-1/k - 1). Writing
    b = -k / sigma, the profile log-likelihood is
    l(b) = n [log(-b / k(b)) - k(b) - 1] with k(b) = mean(log(1 - b x)); the
    estimate of b is the posterior mean over the grid
    b_j = 1 / x_(n) + (1 - sqrt(m / (j - 1/2))) / (3 x_(q)),  j = 1..m,
    (x_(q) the first-quartile order statistic) with weights proportional to
    exp(l(b_j)); then k = k(b_hat), sigma = -k / b_hat.

    Parameters
    ----------
    x : (n,) array of positive exceedances, n >= 2
    prior : bool, default True
        Shrink k towards 0.5 (Vehtari et al.'s weakly informative prior).

    Returns
    -------
    k, sigma : float
    """
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = x.shape[0]
    if n < 2 or not np.all(np.isfinite(x)) or x[0] <= 0:
        raise ValueError("gpd_fit needs at least 2 finite, positive exceedances.")
    # the fit does not depend on x's units: x in units of a power of 2 near its
    # largest value (exact), so exceedances of 1e-310 do not overflow 1 / x
    scale = math.ldexp(1.0, math.frexp(x[-1])[1])
    x = x / scale
    m = 30 + int(math.sqrt(n))
    j = np.arange(1, m + 1)
    quartile = x[int(n / 4.0 + 0.5) - 1]
    with np.errstate(over="ignore", divide="ignore"):
        b = 1.0 / x[-1] + (1.0 - np.sqrt(m / (j - 0.5))) / (3.0 * quartile)
    if not np.all(np.isfinite(b)):
        # the first quartile lies some 300 orders of magnitude below the largest
        # exceedance: a tail too heavy for the fit to resolve, the worst case
        return math.inf, math.inf
    k_of_b = np.log1p(-b[:, None] * x).mean(axis=1)
    profile = n * (np.log(-b / k_of_b) - k_of_b - 1.0)
    # weights exp(l_j) / sum exp(l_i), computed as 1 / sum_i exp(l_i - l_j)
    with np.errstate(over="ignore"):  # exp(+large) = inf: that weight is 0
        w = 1.0 / np.exp(profile[None, :] - profile[:, None]).sum(axis=1)
    keep = w >= 10.0 * np.finfo(float).eps
    w = w[keep] / w[keep].sum()
    b_hat = float(np.sum(b[keep] * w))
    k = float(np.log1p(-b_hat * x).mean())
    sigma = -k / b_hat * scale
    if prior:
        k = (n * k + 10 * 0.5) / (n + 10)
    return k, sigma


def psis_khat(log_weights):
    """Pareto k-hat of importance ratios given on the log scale, shape (M,).

    Returns ``(khat, n_tail)``; ``khat`` is ``inf`` when a weight is not finite
    (log p - log q = NaN or +inf: the worst case) or the tail's weights span
    some 300 orders of magnitude (:func:`gpd_fit`), and NaN when the tail holds
    fewer than 5 distinct values.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    M = lw.shape[0]
    n_tail = int(math.ceil(min(0.2 * M, 3.0 * math.sqrt(M))))
    if np.any(np.isnan(lw)) or np.any(np.isposinf(lw)):
        return math.inf, n_tail
    lw = np.sort(lw[np.isfinite(lw)])
    if lw.shape[0] <= n_tail:
        return math.nan, n_tail
    lw = lw - lw[-1]
    cutoff = lw[-n_tail - 1]
    exceed = np.exp(lw[-n_tail:]) - math.exp(cutoff)
    exceed = exceed[exceed > 0]
    if exceed.shape[0] < 5:
        return math.nan, n_tail
    return gpd_fit(exceed)[0], n_tail


#: the largest step, in q's sds, that the ELBO's gradient at a converged q may ask
#: for (with two standard errors) before q is reported unconfirmed: measured
#: 0.01-0.16 on the default fits of six posteriordb posteriors (seeds 0-4, both
#: families; eight schools' funnel the largest), and 1.4-65 on a logistic
#: regression of separable classes that stopped 1.8 sds off the optimum
STATIONARITY_TOLERANCE = 0.5


class StationarityWarning(ConvergenceWarning):
    """The stopping rule fired, but the ELBO's gradient at q, estimated on fresh
    draws, does not confirm that q is at the ELBO's optimum."""


def stationarity_gap(engine, state, n_draws, seed):
    """``(bound, index)``: how far from q the ELBO's gradient points, in q's sds.

    At the ELBO's optimum over Gaussians, E_q[grad log p(z)] = 0. On ``n_draws``
    antithetic draws of q, ``u = L' grad log p(z)`` (L: q's Cholesky factor, or
    its sds for a mean-field q) estimates, coordinate by coordinate, the Newton
    step on q's means in units of q's sds (q's covariance standing in for the
    inverse curvature, as it does at the optimum). ``bound`` is the largest
    |mean of u| plus two standard errors (over the antithetic pairs), ``index``
    its coordinate; ``inf`` when the gradient is not finite at some draw."""
    fam = engine.family
    P = engine.model.size
    half = max(int(n_draws) // 2, 2)
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((half, P))
    e = np.concatenate([e, -e])
    z = fam.sample(state.params, e)
    with np.errstate(all="ignore"):
        g = engine._log_density_grads(z)
    if not np.all(np.isfinite(g)):
        return math.inf, 0
    phi = state.params
    u = g @ fam.chol(phi) if hasattr(fam, "chol") else g * fam.std(phi)
    pairs = 0.5 * (u[:half] + u[half:])
    # (a median of group means was tried: robust to the heavy tails, it also
    # missed the separable classes' stall, whose gradient is in those tails)
    bound = np.abs(pairs.mean(axis=0)) + 2.0 * pairs.std(axis=0, ddof=1) / math.sqrt(
        half
    )
    i = int(np.argmax(bound))
    return float(bound[i]), i


def warn_user(message, category):
    """``warnings.warn`` attributed to the first caller outside fastvi (the user's
    line), however deep inside fastvi the warning is raised."""
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame = sys._getframe(0)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        root + os.sep
    ):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


def diagnose_q(engine, state, n_draws, seed, warn, stacklevel):
    """k-hat of the engine's q at ``state`` from ``n_draws`` draws (engine method)."""
    if n_draws < 20:
        raise ValueError(f"n_draws must be at least 20, got {n_draws!r}.")
    fam = engine.family
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((int(n_draws), engine.model.size))
    z = fam.sample(state.params, eps)
    with np.errstate(all="ignore"):
        lp = engine._log_density_values(z)
        lw = lp - fam.log_q_eps(state.params, eps)
    khat, n_tail = psis_khat(lw)
    if warn and untrustworthy(khat, lw):
        warn_user(engine._psis_message(khat, state, True), PSISWarning)
    return PSISDiagnostic(float(khat), lw, n_tail)
