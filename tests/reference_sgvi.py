"""Slow, obviously correct NumPy references for the SGVI kernels and models."""

import numpy as np
from scipy.special import expit, log_expit


def glm_pass(X, y, W, b, tau, family, rows=None):
    """Totals of ``kernels.sgvi.glm_pass_*``: (ll, gw, gb, ss), one formula each."""
    X = np.asarray(X, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if rows is not None:
        X, y = X[rows], y[rows]
    eta = X @ W.T + b  # (M, S)
    yy = y[:, None]
    ss = np.zeros(W.shape[0])
    if family == 0:
        ll = yy * log_expit(eta) + (1.0 - yy) * log_expit(-eta)
        d = yy - expit(eta)
    elif family == 1:
        ll = yy * eta - np.exp(eta)
        d = yy - np.exp(eta)
    else:
        r = yy - eta
        ll = -0.5 * tau * r**2
        d = tau * r
        ss = np.sum(r**2, axis=0)
    return ll.sum(axis=0), d.T @ X, d.sum(axis=0), ss


def glm_log_joint(X, y, theta, family, prior_scale, intercept_prior_scale, noise=None):
    """log p(y, theta) of ``models.GLM`` written out with scipy.stats, per draw."""
    from scipy import stats

    D = X.shape[1]
    out = []
    for th in theta:
        w, b = th[:D], th[D]
        eta = X @ w + b
        if family == "logistic":
            ll = stats.bernoulli.logpmf(y, expit(eta)).sum()
        elif family == "poisson":
            ll = stats.poisson.logpmf(y, np.exp(eta)).sum()
        else:
            sigma = th[D + 1] if noise is None else noise
            ll = stats.norm.logpdf(y, eta, sigma).sum()
            if noise is None:
                ll += stats.halfnorm.logpdf(sigma, scale=1.0)
        ll += stats.norm.logpdf(w, 0.0, prior_scale).sum()
        ll += stats.norm.logpdf(b, 0.0, intercept_prior_scale)
        out.append(ll)
    return np.array(out)


def eight_schools_log_joint(y, sigma, theta):
    """log p(y, mu, tau, theta_tilde) of the non-centered eight-schools model."""
    from scipy import stats

    out = []
    for th in theta:
        mu, tau, tt = th[0], th[1], th[2:]
        lp = stats.norm.logpdf(mu, 0.0, 5.0) + stats.halfcauchy.logpdf(tau, scale=5.0)
        lp += stats.norm.logpdf(tt).sum()
        lp += stats.norm.logpdf(y, mu + tau * tt, sigma).sum()
        out.append(lp)
    return np.array(out)


def robust_regression_log_joint(X, y, theta, nu, scale=1.0):
    """log p of the Student-t regression user model of tests/test_sgvi_user.py at
    one constrained draw ``theta = [coef..., intercept, sigma]``: ``scale`` times the
    t log-likelihood, plus N(0, 1) coef, N(0, 10^2) intercept and half-normal(1)
    sigma priors without their normalizing constants."""
    from scipy import stats

    D = X.shape[1]
    w, b, sigma = theta[:D], theta[D], theta[D + 1]
    ll = stats.t.logpdf(y, nu, X @ w + b, sigma).sum()
    return scale * ll - 0.5 * (w @ w) - 0.5 * b * b / 100.0 - 0.5 * sigma**2


__all__ = [
    "eight_schools_log_joint",
    "glm_log_joint",
    "glm_pass",
    "robust_regression_log_joint",
]


def best_gaussian_logistic(
    X, y, mean, cov, prior_var, n_draws=40_000, seed=0, meanfield=False
):
    """The full-rank (or mean-field) Gaussian q that maximizes the ELBO of a
    logistic regression (``prior_var``: the prior variances of the coefficients and
    the intercept, the last column), by L-BFGS on ``n_draws`` fixed draws in the
    coordinates whitened by ``(mean, cov)`` (a start near the answer). Returns
    ``(mean, sds, elbo)``."""
    from scipy.optimize import minimize

    Z = np.column_stack([X, np.ones(len(y))])
    P = Z.shape[1]
    prec = 1.0 / np.asarray(prior_var, dtype=np.float64)
    C = np.diag(np.sqrt(np.diag(cov))) if meanfield else np.linalg.cholesky(cov)
    E = np.random.default_rng(seed).standard_normal((n_draws, P))
    tri = diag = np.diag_indices(P)
    if not meanfield:
        tri = np.tril_indices(P)

    def unpack(v):
        L = np.zeros((P, P))
        L[tri] = v[P:]
        L[diag] = np.exp(L[diag])
        return v[:P], L

    def f(v):
        m, L = unpack(v)
        w = mean + (m + E @ L.T) @ C.T
        eta = w @ Z.T
        ll = np.sum(y * eta + log_expit(-eta), axis=1) - 0.5 * (w * w) @ prec
        gu = ((y - expit(eta)) @ Z - w * prec) @ C
        GL = np.tril(gu.T @ E / n_draws)
        GL[diag] = GL[diag] * L[diag] + 1.0
        value = ll.mean() + np.sum(np.log(L[diag]))
        return -value, -np.r_[gu.mean(axis=0), GL[tri]]

    v0 = np.zeros(P + tri[0].size)
    r = minimize(f, v0, jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    m, L = unpack(r.x)
    S = C @ L @ L.T @ C.T
    return mean + C @ m, np.sqrt(np.diag(S)), -r.fun
