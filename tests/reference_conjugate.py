"""Slow, obviously correct references for fastvi.conjugate and its kernel.

* :func:`jj_pass` — what ``fastvi.kernels.conjugate.jj_pass`` computes, one formula at
  a time with full arrays (no chunks, tiles or BLAS tricks).
* :func:`linear_log_evidence` — the exact log marginal likelihood of Bayesian linear
  regression with Gamma hyperpriors, by quadrature over both precisions.
* :func:`logistic_reference_posterior` — the posterior of Bayesian logistic regression
  with a fixed prior precision by importance sampling from a Laplace approximation.
"""

import numpy as np
from scipy import optimize
from scipy.special import expit, gammaln, log_expit, logsumexp


def with_intercept(X, intercept):
    return np.column_stack([X, np.ones(X.shape[0])]) if intercept else X


def jj_pass(X, s, mean, cov, intercept):
    """ξ_n, Σ 2 λ(ξ_n) x xᵀ, Σ s_n x, Σ [log σ(ξ) − ξ/2 + λ(ξ) ξ²] and H (PRML §10.6).

    H = Σ w_n x xᵀ with w_n = 2 λ(ξ_n)(1 − r_n) + σ(ξ_n)(1 − σ(ξ_n)) r_n and
    r_n = (mᵀx_n)² / ξ_n² (1 where ξ_n = 0): the second derivative in m of
    −Σ log(2 cosh(ξ_n / 2)), written out by hand.
    """
    Xt = with_intercept(X, intercept)
    second = cov + np.outer(mean, mean)
    xi = np.sqrt(np.einsum("ni,ij,nj->n", Xt, second, Xt))
    lam = np.where(xi > 0, np.tanh(xi / 2) / (4 * np.where(xi > 0, xi, 1.0)), 0.125)
    gram = (Xt * (2 * lam)[:, None]).T @ Xt
    h = Xt.T @ s
    terms = np.sum(log_expit(xi) - xi / 2 + lam * xi**2)
    a = Xt @ mean
    r = np.where(xi > 0, a**2 / np.where(xi > 0, xi, 1.0) ** 2, 1.0)
    sig = expit(xi)
    w = 2 * lam * (1 - r) + sig * (1 - sig) * r
    hess = (Xt * w[:, None]).T @ Xt
    return xi, gram, h, terms, hess


def collapsed_bound_terms(X, mean, cov, intercept):
    """−Σ log(2 cosh(ξ_n / 2)) with ξ_n² = x̃ᵀ(S + m mᵀ)x̃: the ξ-dependent part of
    the Jaakkola–Jordan bound once ξ is optimal (its m-derivatives are the gradient
    and H of the Newton proposal)."""
    Xt = with_intercept(X, intercept)
    xi = np.sqrt(np.einsum("ni,ij,nj->n", Xt, cov + np.outer(mean, mean), Xt))
    return -np.sum(xi / 2 + np.log1p(np.exp(-xi)))


def _log_gamma_density_of_log(u, shape, rate):
    """log density of u = log x when x ~ Gamma(shape, rate)."""
    return shape * np.log(rate) - gammaln(shape) + shape * u - rate * np.exp(u)


def linear_log_evidence_given(Xc, yc, log_alpha, log_lam):
    """log p(y | α, λ) for y = Xw + noise, w ~ N(0, λ⁻¹ I), noise precision α.

    PRML eq. 3.86, written with a Cholesky factor; the precisions are given by their
    logarithms.
    """
    n, d = Xc.shape
    alpha, lam = np.exp(log_alpha), np.exp(log_lam)
    A = lam * np.eye(d) + alpha * Xc.T @ Xc
    chol = np.linalg.cholesky(A)
    m = alpha * np.linalg.solve(A, Xc.T @ yc)
    E = 0.5 * alpha * np.sum((yc - Xc @ m) ** 2) + 0.5 * lam * m @ m
    return (
        0.5 * d * log_lam
        + 0.5 * n * log_alpha
        - E
        - np.sum(np.log(np.diag(chol)))
        - 0.5 * n * np.log(2 * np.pi)
    )


def linear_log_evidence(Xc, yc, alpha_prior, lambda_prior, n_grid=161, width=9.0):
    """log p(y) = log ∫∫ p(y | α, λ) p(α) p(λ) dα dλ by a trapezoid rule in log α, log λ.

    The grid is centred on the mode of the integrand (found numerically) and spans
    ``width`` curvature standard deviations each way (the integrand is smooth and
    unimodal in the log precisions, so the rule converges fast).
    """

    def neg(v):
        u_a, u_l = v
        return -(
            linear_log_evidence_given(Xc, yc, u_a, u_l)
            + _log_gamma_density_of_log(u_a, *alpha_prior)
            + _log_gamma_density_of_log(u_l, *lambda_prior)
        )

    start = np.array([-np.log(np.var(yc)), 0.0])
    res = optimize.minimize(neg, start, method="Nelder-Mead", options={"xatol": 1e-8})
    mode = res.x
    # curvature by finite differences for the grid's extent
    eps = 1e-3
    widths = []
    for k in range(2):
        e = np.zeros(2)
        e[k] = eps
        curv = (neg(mode + e) - 2 * neg(mode) + neg(mode - e)) / eps**2
        # capped: a flat direction must not push the grid to under/overflow
        widths.append(min(width / np.sqrt(max(curv, 1e-12)), 15.0))
    ua = np.linspace(mode[0] - widths[0], mode[0] + widths[0], n_grid)
    ul = np.linspace(mode[1] - widths[1], mode[1] + widths[1], n_grid)
    vals = np.array([[-neg((a, b)) for b in ul] for a in ua])
    da, dl = ua[1] - ua[0], ul[1] - ul[0]
    w_a = np.full(n_grid, da)
    w_a[[0, -1]] *= 0.5
    w_l = np.full(n_grid, dl)
    w_l[[0, -1]] *= 0.5
    return float(logsumexp(vals + np.log(w_a)[:, None] + np.log(w_l)[None, :]))


def logistic_reference_posterior(X, t, lam, intercept_precision, n_draws, seed):
    """Posterior of (w, b) under w ~ N(0, λ⁻¹ I), b ~ N(0, p0⁻¹), Bernoulli-logit.

    Importance sampling with a multivariate Student-t (5 degrees of freedom) proposal
    at the Laplace approximation (MAP and inverse Hessian). Returns the weighted mean,
    covariance, the draws, their normalized weights, the effective sample size and
    the log evidence estimate log mean(p(t, w) / proposal(w)).
    """
    Xt = with_intercept(X, True)
    n, d = Xt.shape
    prior_prec = np.full(d, lam)
    prior_prec[-1] = intercept_precision
    sign = 2 * t - 1

    def log_joint(W):  # W: (S, d)
        logits = W @ Xt.T
        loglik = np.sum(log_expit(sign[None, :] * logits), axis=1)
        logprior = 0.5 * np.sum(np.log(prior_prec / (2 * np.pi))) - 0.5 * np.sum(
            prior_prec * W**2, axis=1
        )
        return loglik + logprior

    def neg_and_grad(w):
        z = Xt @ w
        p = expit(z)
        val = -np.sum(log_expit(sign * z)) + 0.5 * np.sum(prior_prec * w**2)
        grad = Xt.T @ (p - t) + prior_prec * w
        return val, grad

    res = optimize.minimize(
        neg_and_grad, np.zeros(d), jac=True, method="L-BFGS-B", options={"gtol": 1e-10}
    )
    w_map = res.x
    p = expit(Xt @ w_map)
    hess = (Xt * (p * (1 - p))[:, None]).T @ Xt + np.diag(prior_prec)
    cov = np.linalg.inv(hess)
    chol = np.linalg.cholesky(cov)
    rng = np.random.default_rng(seed)
    nu = 5.0
    z = rng.standard_normal((n_draws, d))
    g = rng.chisquare(nu, size=n_draws) / nu
    draws = w_map + (z @ chol.T) / np.sqrt(g)[:, None]
    # log density of the multivariate t proposal
    dev = np.linalg.solve(chol, (draws - w_map).T).T
    maha = np.sum(dev**2, axis=1)
    log_q = (
        gammaln((nu + d) / 2)
        - gammaln(nu / 2)
        - 0.5 * d * np.log(nu * np.pi)
        - np.sum(np.log(np.diag(chol)))
        - 0.5 * (nu + d) * np.log1p(maha / nu)
    )
    log_w = (
        np.concatenate(
            [log_joint(draws[i : i + 2000]) for i in range(0, n_draws, 2000)]
        )
        - log_q
    )
    log_evidence = float(logsumexp(log_w) - np.log(n_draws))
    weights = np.exp(log_w - logsumexp(log_w))
    mean = weights @ draws
    centred = draws - mean
    post_cov = (centred * weights[:, None]).T @ centred
    ess = 1.0 / np.sum(weights**2)
    return mean, post_cov, draws, weights, ess, log_evidence
