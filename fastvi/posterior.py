"""Draws from the fitted variational posteriors, and their export to ArviZ.

Every estimator's ``sample_posterior(n_draws, random_state)`` returns a dict whose keys
are the names of its fitted attributes and whose values hold ``n_draws`` draws of the
quantity that attribute summarizes, stacked on a new first axis: ``draws[name]`` has
shape ``(n_draws, *shape_of(getattr(est, name)))``. For the posterior means among them
(``means_``, ``precisions_``, ``coef_``, ``alpha_``, ...) the mean of the draws tends to
the attribute. Where a fitted attribute is a *plug-in* value rather than a mean, the
draws are of the same quantity and their mean differs, as documented per estimator
below (``covariances_`` of a mixture: the draws are Lambda_k^-1, whose mean is
W_k^-1 / (nu_k - D - 1), while the attribute is W_k^-1 / nu_k, the inverse of E[Lambda_k];
``components_`` of LDA: the draws are topic-word *probabilities*, whose mean is
``components_`` normalized to rows summing to 1).

The functions here read only fitted attributes (those a saved model keeps), never
the data, and draw with ``numpy.random.Generator`` s.

References: Bishop, PRML §10.2 (the mixture's q), §10.1.3 (the univariate Gaussian);
Blei & Jordan (2006), "Variational inference for Dirichlet process mixtures" (the
truncated stick-breaking q, with q(v_K = 1) = 1).
"""

from numbers import Integral

import numpy as np
from sklearn.utils.validation import check_is_fitted

__all__ = [
    "cavi_to_arviz",
    "check_n_draws",
    "generator",
    "lda_draws",
    "linear_draws",
    "logistic_draws",
    "mixture_draws",
    "mixture_weight_means",
    "sgvi_draws",
    "to_arviz",
    "univariate_draws",
    "wishart_draws",
]


def generator(random_state):
    """A ``numpy.random.Generator`` from None, an int, a Generator or a RandomState.

    A RandomState gives one integer seed drawn from it (so it advances, as
    scikit-learn's own random states do).
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    if random_state is None or isinstance(random_state, Integral):
        return np.random.default_rng(random_state)
    raise ValueError(
        "random_state must be None, an int, a numpy Generator or a RandomState; got "
        f"{random_state!r}."
    )


def check_n_draws(n_draws, name="n_draws", minimum=1):
    """``n_draws`` as an int >= ``minimum``, or a ValueError naming it."""
    if (
        isinstance(n_draws, bool)
        or not isinstance(n_draws, Integral)
        or n_draws < minimum
    ):
        raise ValueError(f"{name} must be an int >= {minimum}, got {n_draws!r}.")
    return int(n_draws)


# ----------------------------------------------------------------- distributions
def wishart_draws(rng, n_draws, nu, factor):
    """Draws of Wishart(nu, W) with W = factor @ factor.T, shape (n_draws, D, D).

    Bartlett decomposition: W^(1/2) A Aᵀ W^(1/2)ᵀ with A lower triangular,
    A_ii = sqrt(chi²_(nu - i)), A_ij ~ N(0, 1) below the diagonal; any square root
    of W serves. Returns the draws and their factors ``factor @ A`` (each draw is
    F Fᵀ for its F), which give Lambda^-1 and N(0, Lambda^-1) draws without another
    Cholesky factorization.
    """
    D = factor.shape[0]
    A = np.zeros((n_draws, D, D))
    rows, cols = np.tril_indices(D, -1)
    A[:, rows, cols] = rng.standard_normal((n_draws, rows.shape[0]))
    diag = np.arange(D)
    A[:, diag, diag] = np.sqrt(rng.chisquare(nu - diag, size=(n_draws, D)))
    F = factor @ A
    return F @ np.swapaxes(F, 1, 2), F


def _precision_factor_draws(rng, n_draws, nu, precisions):
    """Wishart draws whose mean is ``precisions`` (= nu W): (draws, factors)."""
    factor = np.linalg.cholesky(precisions / nu)
    return wishart_draws(rng, n_draws, nu, factor)


def _gaussian_from_precision_factor(rng, F, scale):
    """Draws of N(0, (scale F Fᵀ)^-1) for a stack of factors F: (..., D)."""
    z = rng.standard_normal(F.shape[:-1])
    # x = F^-T z / sqrt(scale): cov = F^-T F^-1 / scale = (F Fᵀ)^-1 / scale
    x = np.linalg.solve(np.swapaxes(F, -1, -2), z[..., np.newaxis])[..., 0]
    return x / np.sqrt(scale)


# ----------------------------------------------------------------------- mixture
def mixture_weight_means(est):
    """E[pi] under q(pi): the mixing weights of the posterior predictive.

    Finite Dirichlet: alpha_k / sum(alpha). Dirichlet process (stick-breaking
    Beta(a_k, b_k)): E[pi_k] = E[v_k] prod_{j<k} (1 - E[v_j]) with the last stick
    v_K = 1, the truncation of Blei & Jordan (2006), so the weights sum to 1 exactly.
    scikit-learn's ``weights_`` instead keeps q(v_K) and rescales the weights to sum
    to 1; the two differ by at most the mass prod_k E[1 - v_k] beyond the last stick.
    """
    if est.weight_concentration_prior_type == "dirichlet_process":
        a, b = (np.asarray(p, dtype=np.float64) for p in est.weight_concentration_)
        e_v = a / (a + b)
        e_v[-1] = 1.0
        return e_v * np.concatenate(([1.0], np.cumprod(1.0 - e_v[:-1])))
    wc = np.asarray(est.weight_concentration_, dtype=np.float64)
    return wc / wc.sum()


def _weight_draws(est, rng, n_draws):
    if est.weight_concentration_prior_type == "dirichlet_process":
        a, b = (np.asarray(p, dtype=np.float64) for p in est.weight_concentration_)
        v = rng.beta(a, b, size=(n_draws, a.shape[0]))
        v[:, -1] = 1.0
        rest = np.cumprod(1.0 - v[:, :-1], axis=1)
        return v * np.concatenate((np.ones((n_draws, 1)), rest), axis=1)
    return rng.dirichlet(np.asarray(est.weight_concentration_, np.float64), n_draws)


def mixture_draws(est, n_draws, rng):
    """``sample_posterior`` of :class:`fastvi.BayesianGaussianMixture`.

    q(pi) prod_k q(mu_k, Lambda_k) as the fitted attributes describe it, with
    beta_k = ``mean_precision_``, nu_k = ``degrees_of_freedom_`` and the covariance
    C_k = ``covariances_`` (C_k = W_k^-1 / nu_k, so E[Lambda_k] = C_k^-1 =
    ``precisions_``):

    * ``'full'``: Lambda_k ~ Wishart(nu_k, W_k), mu_k | Lambda_k ~ N(m_k,
      (beta_k Lambda_k)^-1) (PRML eqs. 10.59-10.63);
    * ``'tied'``: one Lambda ~ Wishart(nu, W) shared by the components, each
      mu_k | Lambda ~ N(m_k, (beta_k Lambda)^-1) (nu as fitted: scikit-learn's
      nu_0 + N / K);
    * ``'diag'``: independent precisions lambda_kd ~ Gamma(nu_k / 2,
      rate nu_k C_kd / 2) and mu_kd | lambda_kd ~ N(m_kd, (beta_k lambda_kd)^-1);
    * ``'spherical'``: Lambda_k = lambda_k I, lambda_k ~ Gamma(nu_k D / 2,
      rate nu_k D C_k / 2), mu_k | lambda_k ~ N(m_k, (beta_k lambda_k)^-1 I).

    The diag and spherical factors are the exact conjugate updates of a model with
    Gamma priors on the diagonal (shape nu_0 / 2, rate c_0d / 2) or on the single
    precision (shape nu_0 D / 2, rate c_0 D / 2), c_0 = ``covariance_prior_``: their
    parameters are the fitted attributes exactly (see :mod:`fastvi.predictive`).

    Keys: ``weights_`` (n, K), ``means_`` (n, K, D), ``precisions_`` and
    ``covariances_`` (n, *covariances_.shape); ``covariances_`` holds the inverses of
    the precision draws.
    """
    K, D = est.means_.shape
    beta = np.asarray(est.mean_precision_, dtype=np.float64)
    nu = np.asarray(est.degrees_of_freedom_, dtype=np.float64)
    means = np.asarray(est.means_, dtype=np.float64)
    cov = np.asarray(est.covariances_, dtype=np.float64)
    out = {"weights_": _weight_draws(est, rng, n_draws)}
    cov_type = est.covariance_type
    if cov_type in ("full", "tied"):
        if cov_type == "full":
            prec = np.empty((n_draws, K, D, D))
            mu = np.empty((n_draws, K, D))
            for k in range(K):
                prec[:, k], F = _precision_factor_draws(
                    rng, n_draws, nu[k], np.linalg.inv(cov[k])
                )
                mu[:, k] = means[k] + _gaussian_from_precision_factor(rng, F, beta[k])
        else:
            prec, F = _precision_factor_draws(
                rng, n_draws, float(nu), np.linalg.inv(cov)
            )
            F = np.repeat(F[:, np.newaxis], K, axis=1)
            mu = means + _gaussian_from_precision_factor(rng, F, beta[:, np.newaxis])
        out["means_"] = mu
        out["precisions_"] = prec
        out["covariances_"] = np.linalg.inv(prec)
        return out
    if cov_type == "diag":
        shape = 0.5 * nu[:, np.newaxis] * np.ones((K, D))
        rate = 0.5 * nu[:, np.newaxis] * cov
        lam = rng.gamma(shape, 1.0 / rate, size=(n_draws, K, D))
        scale = beta[:, np.newaxis] * lam
    else:
        shape = 0.5 * nu * D
        lam = rng.gamma(shape, 1.0 / (shape * cov), size=(n_draws, K))
        scale = (beta * lam)[..., np.newaxis]
    out["means_"] = means + rng.standard_normal((n_draws, K, D)) / np.sqrt(scale)
    out["precisions_"] = lam
    out["covariances_"] = 1.0 / lam
    return out


# ------------------------------------------------------------------------ others
def lda_draws(est, n_draws, rng):
    """``sample_posterior`` of :class:`fastvi.LatentDirichletAllocation`.

    ``components_``: (n, K, V) draws of the topic-word distributions
    beta_k ~ Dirichlet(lambda_k), lambda = ``components_``; their mean is
    ``components_`` with its rows normalized to sum to 1. The per-document topic
    proportions are local (one q(theta_d) per document, found by :meth:`transform`)
    and are not part of the fitted model.
    """
    lam = np.asarray(est.components_, dtype=np.float64)
    # Dirichlet by normalized Gammas (numpy's dirichlet takes one alpha vector)
    g = rng.standard_gamma(lam, size=(n_draws, *lam.shape))
    total = g.sum(axis=2, keepdims=True)
    if not np.all(total > 0):  # every Gamma of a row underflowed (tiny lambda)
        raise FloatingPointError(
            "a topic's Dirichlet draw underflowed (components_ too small to sample)."
        )
    return {"components_": g / total}


def univariate_draws(est, n_draws, rng):
    """``sample_posterior`` of :class:`fastvi.UnivariateGaussian`: q(mu) q(tau).

    ``mu_mean_``: draws of mu ~ N(``mu_mean_``, 1 / ``mu_precision_``);
    ``tau_mean_``: draws of tau ~ Gamma(``tau_shape_``, rate ``tau_rate_``).
    """
    mu = est.mu_mean_ + rng.standard_normal(n_draws) / np.sqrt(est.mu_precision_)
    tau = rng.gamma(est.tau_shape_, 1.0 / est.tau_rate_, size=n_draws)
    return {"mu_mean_": mu, "tau_mean_": tau}


def linear_draws(est, n_draws, rng):
    """``sample_posterior`` of :class:`fastvi.VBLinearRegression`: q(w) q(α) q(λ).

    ``coef_`` (n, D) from N(``coef_``, ``sigma_``); ``alpha_`` (n,) the noise
    precision from Gamma(``alpha_shape_``, ``alpha_rate_``); ``lambda_`` (n,) or
    (n, D) with ``ard`` the weight precision(s); ``intercept_`` (n,) =
    ``y_offset_ - X_offset_ @ coef`` per draw (the intercept is a point estimate
    outside the model: it moves only with the weights).
    """
    coef = np.asarray(est.coef_, dtype=np.float64)
    factor = np.linalg.cholesky(np.asarray(est.sigma_, dtype=np.float64))
    w = coef + rng.standard_normal((n_draws, coef.shape[0])) @ factor.T
    alpha = rng.gamma(est.alpha_shape_, 1.0 / est.alpha_rate_, size=n_draws)
    lam_shape = np.asarray(est.lambda_shape_, dtype=np.float64)
    lam = rng.gamma(
        lam_shape,
        1.0 / np.asarray(est.lambda_rate_, dtype=np.float64),
        size=(n_draws, *lam_shape.shape),
    )
    if est.fit_intercept:
        intercept = est.y_offset_ - w @ np.asarray(est.X_offset_, dtype=np.float64)
    else:
        intercept = np.zeros(n_draws)
    return {"coef_": w, "intercept_": intercept, "alpha_": alpha, "lambda_": lam}


def _logistic_mean_cov(est):
    """(mean, covariance) of q(w, b) per binary problem: (P, D̃), (P, D̃, D̃)."""
    coef = np.asarray(est.coef_, dtype=np.float64)
    sigma = np.asarray(est.sigma_, dtype=np.float64)
    if sigma.ndim == 2:
        sigma = sigma[np.newaxis]
    if est.fit_intercept:
        mean = np.column_stack([coef, np.asarray(est.intercept_, np.float64)])
    else:
        mean = coef
    return mean, sigma


def logistic_draws(est, n_draws, rng):
    """``sample_posterior`` of :class:`fastvi.VBLogisticRegression`: q(w, b) q(λ).

    ``coef_`` (n, P, D) and ``intercept_`` (n, P) from the Gaussian q(w, b) of each
    of the P binary problems (P = 1 for two classes, one per class for
    one-vs-rest; zeros without an intercept); ``lambda_`` (n,) or (n, P) from
    q(λ) = Gamma(``lambda_shape_``, ``lambda_rate_``).
    """
    mean, sigma = _logistic_mean_cov(est)
    P, Dt = mean.shape
    D = est.coef_.shape[1]
    draws = np.empty((n_draws, P, Dt))
    for k in range(P):
        factor = np.linalg.cholesky(sigma[k])
        draws[:, k] = mean[k] + rng.standard_normal((n_draws, Dt)) @ factor.T
    lam_shape = np.asarray(est.lambda_shape_, dtype=np.float64)
    lam = rng.gamma(
        lam_shape,
        1.0 / np.asarray(est.lambda_rate_, dtype=np.float64),
        size=(n_draws, *lam_shape.shape),
    )
    intercept = draws[:, :, D] if est.fit_intercept else np.zeros((n_draws, P))
    return {"coef_": draws[:, :, :D], "intercept_": intercept, "lambda_": lam}


def sgvi_draws(est, n_draws, rng):
    """``sample_posterior`` of the SGVI regressions: ``coef_`` (n, D) and, with an
    intercept, ``intercept_`` (n,), from the fitted Gaussian q."""
    check_is_fitted(est)
    z = est._draws(n_draws, rng)
    D = est.coef_.shape[0]
    out = {"coef_": z[:, :D]}
    if est.fit_intercept:
        out["intercept_"] = z[:, D]
    return out


# ----------------------------------------------------------------------- ArviZ
def to_arviz(draws, trace=None, trace_name="elbo", trace_dim="iteration", method=""):
    """Draws (a ``sample_posterior`` dict) as ArviZ data with one chain.

    Variables are named after the attributes without their trailing underscore
    (``coef_`` -> ``coef``). ``trace``, when given, goes into ``sample_stats`` as
    ``trace_name`` over its own dimension ``trace_dim`` (a fit's bound per iteration
    is not a draw). ArviZ >= 1.0 returns an ``xarray.DataTree``, older versions an
    ``InferenceData``.
    """
    try:
        import arviz as az
    except ImportError as exc:
        raise ImportError(
            "to_arviz needs the optional dependency arviz: "
            "pip install 'fastvi[arviz]' (or pip install arviz)."
        ) from exc
    post = {
        name.rstrip("_"): np.asarray(value)[np.newaxis, ...]
        for name, value in draws.items()
    }
    groups = {"posterior": post}
    dims = {}
    if trace is not None:
        groups["sample_stats"] = {
            trace_name: np.asarray(trace, dtype=np.float64)[np.newaxis, np.newaxis, :]
        }
        dims[trace_name] = [trace_dim]
    attrs = {"inference_library": "fastvi", "inference_method": method}
    major = int(str(getattr(az, "__version__", "0")).split(".")[0])
    if major >= 1:  # attrs per group; "/" is the root's
        return az.from_dict(groups, dims=dims, attrs={"/": attrs})
    return az.from_dict(**groups, dims=dims, attrs=attrs)


def cavi_to_arviz(est, n_draws, random_state):
    """``to_arviz`` of a CAVI estimator: its draws and ``lower_bounds_``."""
    draws = est.sample_posterior(n_draws, random_state)
    trace = getattr(est, "lower_bounds_", None)
    if trace is not None and len(trace) and np.ndim(trace[0]):
        trace = None  # one-vs-rest: one trace per class, of different lengths
    return to_arviz(draws, trace, "lower_bound", "cavi_iteration", "CAVI")
