"""Posterior predictive distributions of the fitted variational posteriors.

Each is the predictive *under q*: p(x̃ | X) ≈ ∫ p(x̃ | z) q(z) dz, with q the fitted
factors (PRML §10.2.3 for the mixture). The estimators' thin methods call these.

Mixture: a Student-t mixture for every covariance type
----------------------------------------------------------
q factorizes as q(pi) prod_k q(mu_k, Lambda_k), so the predictive is
sum_k E[pi_k] E_q[N(x | mu_k, Lambda_k^-1)], with E[pi] from
:func:`fastvi.posterior.mixture_weight_means`. Writing beta_k = ``mean_precision_``,
nu_k = ``degrees_of_freedom_``, m_k = ``means_`` and C_k = ``covariances_``
(scikit-learn's normalization: C_k = W_k^-1 / nu_k):

* ``'full'`` (PRML eq. 10.81): mu_k | Lambda_k ~ N(m_k, (beta_k Lambda_k)^-1) and
  Lambda_k ~ W(W_k, nu_k) give x - m_k | Lambda_k ~ N(0, (1 + beta_k) / beta_k
  Lambda_k^-1) and, integrating the Wishart, a multivariate Student-t with
  nu'_k = nu_k + 1 - D degrees of freedom and scale matrix
  (1 + beta_k) / (beta_k nu'_k) W_k^-1 = (1 + beta_k) nu_k / (beta_k nu'_k) C_k.
* ``'tied'``: the same with the one shared Wishart (nu, W): component k is
  St(m_k, (1 + beta_k) nu / (beta_k nu') C, nu' = nu + 1 - D). Only the marginal
  q(mu_k, Lambda) enters each term, so sharing Lambda changes nothing else.
* ``'diag'``: read as independent precisions lambda_kd ~ Gamma(nu_k / 2,
  rate nu_k C_kd / 2) (these are the marginals of the Wishart's diagonal, and the
  exact conjugate update of a model with Gamma(nu_0 / 2, c_0d / 2) priors: the
  rate b_0 + (N_k S_kd + beta_0 N_k / beta_k (x̄_kd - m_0d)²) / 2 is nu_k C_kd / 2
  by scikit-learn's update of C). Then x_d - m_kd | lambda_kd ~
  N(0, (1 + beta_k) / (beta_k lambda_kd)) and each dimension is a Student-t with
  2 (nu_k / 2) = nu_k degrees of freedom and scale² (b / a)(1 + beta_k) / beta_k =
  C_kd (1 + beta_k) / beta_k: a *product* of D univariate t's.
* ``'spherical'``: Lambda_k = lambda_k I with lambda_k ~ Gamma(nu_k D / 2,
  rate nu_k D C_k / 2) (the conjugate update of a model with a Gamma(nu_0 D / 2,
  c_0 D / 2) prior: its shape gains D / 2 per point and its rate half the squared
  distances summed over the D dimensions, which scikit-learn's C_k averages). Then
  x - m_k | lambda_k ~ N(0, (1 + beta_k) / (beta_k lambda_k) I) and the predictive
  is a multivariate t with nu_k D degrees of freedom and scale matrix
  C_k (1 + beta_k) / beta_k I.

In one dimension the four agree (nu_k degrees of freedom, scale² C_k (1 + beta_k) /
beta_k). scikit-learn's bound uses the full Wishart's E[log det Lambda] (digamma of
(nu - i) / 2, i < D) for the diag and spherical types too; those expectations, not
the factors themselves, are what its diag and spherical fits leave approximate. The
draws of :func:`fastvi.posterior.mixture_draws` follow the same q, so the predictive
is the average of the plug-in densities over them.

Linear regression: the noise precision integrated out
----------------------------------------------------------
Under q(w) q(α), y | x, α ~ N(m̃, s² + 1/α) with m̃ the predicted mean and
s² = x̃ᵀ S x̃, and α ~ Gamma(a, b): a Gaussian scale mixture. With s² = 0 it is a
Student-t with 2a degrees of freedom and scale sqrt(b / a); otherwise it lies
between that t and the Gaussian N(m̃, s² + b / a). Its standard deviation is
sqrt(s² + E[1/α]) = sqrt(s² + b / (a - 1)), which ``predict(return_std=True)``
returns. The density and the central intervals are computed by 48-point
Gauss-Hermite quadrature over α after mapping it to a standard normal through the
Gamma quantile function (as :meth:`fastvi.UnivariateGaussian.score_samples`), the
interval's half-width by safeguarded Newton steps on the mixture's CDF.
"""

import math

import numpy as np
from scipy.special import gammainccinv, gammaincinv, gammaln, logsumexp, ndtr, ndtri

from ._numerics import check_finite_prediction
from .posterior import mixture_weight_means

__all__ = [
    "linear_interval",
    "linear_log_density",
    "logistic_probit",
    "mixture_components",
    "mixture_log_density",
    "mixture_sample",
    "split_tokens",
]

_LOG_2PI = math.log(2.0 * math.pi)
_GH_NODES = 48


# ------------------------------------------------------------------- Student-t
def log1p_far(q, c, z):
    """log(1 + q / c) per row, where q = ‖z‖² over the last axis of ``z``.

    Far from its centre a Student-t's log density, -(nu + D) / 2 log(1 + q / c), is
    finite while q itself overflows: rows where q is infinite are computed from z
    scaled by its largest entry. (An infinite z, a row too large for even that,
    stays non-finite, for the caller to refuse.)
    """
    out = np.log1p(q / c)
    far = ~np.isfinite(q)
    if np.any(far):
        z = np.asarray(z)[far]
        s = np.max(np.abs(z), axis=-1)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            w = np.sum((z / s[..., np.newaxis]) ** 2, axis=-1)  # in [1, D]
            out[far] = 2.0 * np.log(s) + np.log(w / c) + np.log1p(c / (s * s * w))
    return out


# ----------------------------------------------------------------------- mixture
def mixture_components(est):
    """Student-t parameters of the predictive's components (see module doc).

    Returns ``(weights, dof, scale, kind)``: E[pi] (K,), degrees of freedom (K,),
    the factor c_k multiplying C_k in the scale matrix (K,), and ``'mvt'`` (one
    D-variate t per component) or ``'product'`` (D independent univariate t's:
    ``'diag'``).
    """
    K, D = est.means_.shape
    beta = np.asarray(est.mean_precision_, dtype=np.float64)
    nu = np.broadcast_to(
        np.asarray(est.degrees_of_freedom_, dtype=np.float64), (K,)
    ).copy()
    weights = mixture_weight_means(est)
    cov_type = est.covariance_type
    if cov_type in ("full", "tied"):
        dof = nu + 1.0 - D
        scale = (1.0 + beta) * nu / (beta * dof)
        return weights, dof, scale, "mvt"
    if cov_type == "diag":
        return weights, nu, (1.0 + beta) / beta, "product"
    return weights, nu * D, (1.0 + beta) / beta, "mvt"


def _precision_factors(est):
    """Per component, a factor P_k with C_k^-1 = P_k P_kᵀ, (K, D, D), or the
    per-dimension 1 / sqrt(C_kd) (K, D) for 'diag', or (K,) for 'spherical'."""
    K, D = est.means_.shape
    pc = np.asarray(est.precisions_cholesky_, dtype=np.float64)
    if est.covariance_type == "tied":
        return np.broadcast_to(pc, (K, D, D))
    return pc


def mixture_log_density(est, X):
    """log p(x | training data) under q for every row of X (float64 (N, D))."""
    K, D = est.means_.shape
    weights, dof, scale, kind = mixture_components(est)
    means = np.asarray(est.means_, dtype=np.float64)
    P = _precision_factors(est)
    log_comp = np.empty((X.shape[0], K))
    for k in range(K):
        with np.errstate(over="ignore", invalid="ignore"):  # far rows: log1p_far
            diff = X - means[k]
            nu = dof[k]
            if kind == "product":
                z = diff * P[k]
                terms = log1p_far(z**2, scale[k] * nu, z[..., np.newaxis])
                log_comp[:, k] = (
                    D * (gammaln(0.5 * (nu + 1.0)) - gammaln(0.5 * nu))
                    - 0.5 * D * (math.log(nu * math.pi) + math.log(scale[k]))
                    + np.sum(np.log(P[k]))
                    - 0.5 * (nu + 1.0) * np.sum(terms, axis=1)
                )
                continue
            if est.covariance_type == "spherical":
                z = diff * P[k]
                maha = np.sum(diff**2, axis=1) * P[k] ** 2
                log_det_p = D * math.log(P[k])
            else:
                z = diff @ P[k]
                maha = np.sum(z**2, axis=1)
                log_det_p = float(np.sum(np.log(np.diag(P[k]))))
            log_comp[:, k] = (
                gammaln(0.5 * (nu + D))
                - gammaln(0.5 * nu)
                - 0.5 * D * (math.log(nu * math.pi) + math.log(scale[k]))
                + log_det_p
                - 0.5 * (nu + D) * log1p_far(maha, scale[k] * nu, z)
            )
    check_finite_prediction(
        "BayesianGaussianMixture.predictive_log_density",
        X,
        "the predictive log-densities",
        log_comp,
    )
    with np.errstate(divide="ignore"):  # a weight of exactly 0 is a -inf term
        return logsumexp(log_comp + np.log(weights), axis=1)


def mixture_sample(est, n_samples, rng):
    """Draws from the predictive Student-t mixture: (X (n, D), component (n,))."""
    K, D = est.means_.shape
    weights, dof, scale, kind = mixture_components(est)
    counts = rng.multinomial(n_samples, weights / weights.sum())
    cov = np.asarray(est.covariances_, dtype=np.float64)
    means = np.asarray(est.means_, dtype=np.float64)
    out = []
    for k, n in enumerate(counts):
        n = int(n)
        z = rng.standard_normal((n, D))
        if kind == "product":
            u = rng.chisquare(dof[k], size=(n, D)) / dof[k]
            x = z * np.sqrt(scale[k] * cov[k] / u)
        else:
            u = rng.chisquare(dof[k], size=(n, 1)) / dof[k]
            if est.covariance_type == "spherical":
                root = math.sqrt(cov[k]) * np.eye(D)
            elif est.covariance_type == "tied":
                root = np.linalg.cholesky(cov)
            else:
                root = np.linalg.cholesky(cov[k])
            x = (z @ root.T) * np.sqrt(scale[k] / u)
        out.append(means[k] + x)
    labels = np.repeat(np.arange(K), counts)
    return np.vstack(out), labels


# ------------------------------------------------------------ linear regression
def _gamma_nodes(shape, rate):
    """Gauss-Hermite nodes of alpha ~ Gamma(shape, rate) and their log weights."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(_GH_NODES)
    log_w = np.log(weights / math.sqrt(2.0 * math.pi))
    lower = nodes < 0
    alpha = np.empty_like(nodes)
    alpha[lower] = gammaincinv(shape, ndtr(nodes[lower])) / rate
    alpha[~lower] = gammainccinv(shape, ndtr(-nodes[~lower])) / rate
    return alpha, log_w


def linear_moments(est, X):
    """Predicted mean and the weight part of the variance, x̃ᵀ S x̃, per row."""
    y_mean = X @ est.coef_ + est.intercept_
    Xc = X - est.X_offset_
    var_w = np.einsum("ij,jk,ik->i", Xc, est.sigma_, Xc, optimize=True)
    return y_mean, np.maximum(var_w, 0.0)


def linear_log_density(est, X, y):
    """log p(y | x, training data) under q(w) q(α), per row (the module doc)."""
    mean, var_w = linear_moments(est, X)
    alpha, log_w = _gamma_nodes(est.alpha_shape_, est.alpha_rate_)
    var = var_w[:, np.newaxis] + 1.0 / alpha
    dev = (np.asarray(y, dtype=np.float64) - mean)[:, np.newaxis] ** 2
    return logsumexp(-0.5 * (_LOG_2PI + np.log(var) + dev / var) + log_w, axis=1)


def linear_interval(est, X, level):
    """Central ``level`` interval of the predictive: (lower, upper), each (N,)."""
    mean, var_w = linear_moments(est, X)
    alpha, log_w = _gamma_nodes(est.alpha_shape_, est.alpha_rate_)
    w = np.exp(log_w)
    sd = np.sqrt(var_w[:, np.newaxis] + 1.0 / alpha)  # (N, nodes)
    z = ndtri(0.5 * (1.0 + level))
    # F(h) = sum_j w_j (2 Phi(h / sd_j) - 1) is increasing; every term is below
    # ``level`` at z min(sd) and above it at z max(sd): a bracket
    lo = z * sd.min(axis=1)
    hi = z * sd.max(axis=1)
    h = z * np.sqrt(var_w + est.alpha_rate_ / (est.alpha_shape_ - 1.0))
    h = np.clip(h, lo, hi)
    for _ in range(100):
        t = h[:, np.newaxis] / sd
        F = (2.0 * ndtr(t) - 1.0) @ w / w.sum()
        dF = (2.0 * np.exp(-0.5 * t * t) / (math.sqrt(2.0 * math.pi) * sd)) @ w
        dF /= w.sum()
        below = F < level
        lo = np.where(below, h, lo)
        hi = np.where(below, hi, h)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = h - (F - level) / dF
        bisect = 0.5 * (lo + hi)
        inside = np.isfinite(step) & (step > lo) & (step < hi)
        new = np.where(inside, step, bisect)
        done = np.abs(new - h) <= 1e-13 * np.maximum(h, 1e-300)
        h = new
        if np.all(done):
            break
    return mean - h, mean + h


# -------------------------------------------------------------------- logistic
def logistic_probit(mu, var):
    """σ(κ(s²) μ), κ(s²) = (1 + π s² / 8)^-1/2 (PRML eq. 4.155)."""
    from scipy.special import expit

    return expit(mu / np.sqrt(1.0 + math.pi / 8.0 * np.maximum(var, 0.0)))


def logistic_mc(mu, var, n_draws, rng):
    """E[σ(a)] for a ~ N(μ, s²) per row, by ``n_draws`` Monte Carlo draws.

    The draws are of the linear predictor's posterior (exact for a Gaussian q(w)),
    shared across rows (common random numbers).
    """
    from scipy.special import expit

    eps = rng.standard_normal(n_draws)
    a = mu[:, np.newaxis] + np.sqrt(np.maximum(var, 0.0))[:, np.newaxis] * eps
    return expit(a).mean(axis=1)


# ---------------------------------------------------------- LDA completion
def split_tokens(X, observed_fraction=0.5, random_state=None):
    """Split each document's tokens into an observed and a held-out part.

    Every token of ``X`` (a count matrix, dense or sparse) is observed with
    probability ``observed_fraction``, independently (binomial thinning of each
    count). Returns ``(X_observed, X_heldout)`` of X's kind, summing to X.
    """
    import scipy.sparse as sp

    from .posterior import generator

    if not 0.0 < observed_fraction < 1.0:
        raise ValueError(
            f"observed_fraction must be in (0, 1), got {observed_fraction!r}."
        )
    rng = generator(random_state)
    if sp.issparse(X):
        X = sp.csr_matrix(X, copy=True)
        X.sum_duplicates()
        counts = X.data
    else:
        X = np.asarray(X)
        counts = X
    if np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise ValueError("split_tokens needs non-negative integer counts.")
    obs = rng.binomial(counts.astype(np.int64), observed_fraction).astype(X.dtype)
    if sp.issparse(X):
        # own copies of the structure: eliminate_zeros edits it in place
        X_obs = sp.csr_matrix((obs, X.indices.copy(), X.indptr.copy()), shape=X.shape)
        X_held = sp.csr_matrix(
            (X.data - obs, X.indices.copy(), X.indptr.copy()), shape=X.shape
        )
        X_obs.eliminate_zeros()
        X_held.eliminate_zeros()
        return X_obs, X_held
    return obs, X - obs


def lda_completion(est, gamma, X_heldout):
    """Log-likelihood per held-out token given folded-in gamma (the E-step's).

    sum_dw n_dw log sum_k E[theta_dk] E[beta_kw] / sum_dw n_dw, with E[theta_d] =
    gamma_d / sum(gamma_d) and E[beta_k] = lambda_k / sum(lambda_k) (Hoffman et al.
    2013, §4: the predictive of a held-out word under the variational posterior).
    """
    import scipy.sparse as sp

    theta = gamma / gamma.sum(axis=1, keepdims=True)
    lam = np.asarray(est.components_, dtype=np.float64)
    beta = lam / lam.sum(axis=1, keepdims=True)
    Xh = sp.csr_matrix(X_heldout, dtype=np.float64)
    n_tokens = float(Xh.sum())
    if not n_tokens > 0:
        raise ValueError("X_heldout holds no tokens: nothing to score.")
    rows = np.repeat(np.arange(Xh.shape[0]), np.diff(Xh.indptr))
    # p(w | d) only at the held-out entries: no (n_docs, V) matrix
    p = np.einsum("ek,ke->e", theta[rows], beta[:, Xh.indices], optimize=True)
    return float(np.sum(Xh.data * np.log(p)) / n_tokens)
