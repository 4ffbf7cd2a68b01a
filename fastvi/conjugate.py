"""Coordinate-ascent VI beyond mixtures: three classic conjugate(-ish) models.

* :class:`UnivariateGaussian` — the textbook example of CAVI (PRML §10.1.3): Gaussian
  data with unknown mean and precision, a Normal–Gamma prior and the factorized
  q(μ) q(τ), beside the exact Normal–Gamma posterior it approximates.
* :class:`VBLinearRegression` — Bayesian linear regression with unknown noise precision
  and Gamma hyperpriors on the weight precision (one shared or one per feature, ARD),
  mean-field q(w) q(α) q(β) (PRML §10.3, Drugowitsch 2013).
* :class:`VBLogisticRegression` — logistic regression with the Jaakkola–Jordan bound,
  per-datapoint ξ_n and a Gamma hyperprior on the weight precision (PRML §10.6,
  Bishop & Svensén 2003, Drugowitsch 2013); the ξ updates and the statistics they feed
  run in one parallel kernel (``fastvi.kernels.conjugate.jj_pass``).

All three run on the CAVI engine (:mod:`fastvi._cavi`) and report the *full* evidence
lower bound, every constant included, so ``lower_bound_`` can be compared with a log
marginal likelihood. Their initializations are deterministic and the objectives have a
single optimum in practice, so they have no restarts (``n_init`` is fixed to 1).
"""

import math
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
from scipy import linalg
from scipy.special import (
    digamma,
    expit,
    gammainccinv,
    gammaincinv,
    gammaln,
    logsumexp,
    ndtr,
)
from sklearn.base import BaseEstimator, ClassifierMixin, DensityMixin, RegressorMixin
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._cavi import CAVI_PARAMETER_CONSTRAINTS, CAVIMixin, all_or_nothing
from ._threads import resolve_n_jobs, thread_limits
from .persist import SaveMixin

__all__ = ["UnivariateGaussian", "VBLinearRegression", "VBLogisticRegression"]

_LOG_2PI = math.log(2.0 * math.pi)

# Rows per parallel work item of the logistic kernel and per BLAS tile inside it. Fixed,
# so the reduction order (and every bit of the result) does not depend on n_jobs.
CHUNK_ROWS = 4096
TILE_ROWS = 256
# Rows per block of the one-off statistics pass of the linear regression.
STATS_ROWS = 16384


# ---------------------------------------------------------------- Gamma helpers
def _gamma_moments(shape, rate):
    """E[x] and E[log x] under Gamma(shape, rate)."""
    return shape / rate, digamma(shape) - np.log(rate)


def _gamma_entropy(shape, rate):
    """Entropy of Gamma(shape, rate) (rate parameterization)."""
    return shape - np.log(rate) + gammaln(shape) + (1.0 - shape) * digamma(shape)


def _gamma_log_prior(shape0, rate0, mean, mean_log):
    """E_q[log Gamma(x | shape0, rate0)] given E_q[x] and E_q[log x]."""
    return (
        shape0 * math.log(rate0)
        - gammaln(shape0)
        + (shape0 - 1.0) * mean_log
        - rate0 * mean
    )


def _chol_inverse(precision):
    """Covariance S = P⁻¹, its upper factor L (L Lᵀ = S) and log det S.

    With P = C Cᵀ (C lower), S = C⁻ᵀ C⁻¹, so L = C⁻ᵀ.
    """
    try:
        chol = linalg.cholesky(precision, lower=True)
    except linalg.LinAlgError:
        raise ValueError(
            "The posterior precision matrix is not positive definite; "
            "check the input for extreme values."
        ) from None
    c_inv = linalg.solve_triangular(chol, np.eye(chol.shape[0]), lower=True)
    factor = np.ascontiguousarray(c_inv.T)
    cov = factor @ factor.T
    return cov, factor, -2.0 * float(np.sum(np.log(np.diag(chol))))


# ============================================================ UnivariateGaussian
class NormalGammaPosterior(NamedTuple):
    """A Normal–Gamma distribution: τ ~ Gamma(a, b), μ | τ ~ N(mu, (kappa τ)⁻¹).

    Used for the exact posterior of :class:`UnivariateGaussian` (PRML eqs. 2.154,
    2.155 with the updates of Murphy 2007 "Conjugate Bayesian analysis of the
    Gaussian distribution", §4).

    Attributes
    ----------
    mu, kappa, a, b : float
        Location, precision scale of μ, shape and rate of τ.
    n_samples : int
        Number of observations the posterior conditions on.
    log_evidence : float
        log p(X), the exact log marginal likelihood of the data.
    """

    mu: float
    kappa: float
    a: float
    b: float
    n_samples: int
    log_evidence: float

    @property
    def mean_mu(self) -> float:
        """E[μ] under the posterior."""
        return self.mu

    @property
    def var_mu(self) -> float:
        """Marginal var(μ) (a Student-t with 2a degrees of freedom); inf if a <= 1."""
        return self.b / (self.kappa * (self.a - 1.0)) if self.a > 1.0 else math.inf

    @property
    def mean_tau(self) -> float:
        """E[τ] = a / b."""
        return self.a / self.b

    @property
    def var_tau(self) -> float:
        """var(τ) = a / b²."""
        return self.a / self.b**2

    def predictive_logpdf(self, x):
        """log p(x̃ | X): a Student-t with 2a degrees of freedom (Murphy 2007 eq. 100).

        Parameters
        ----------
        x : array-like of shape (n_samples,)

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
        """
        from scipy.stats import t as student_t

        scale = math.sqrt(self.b * (self.kappa + 1.0) / (self.a * self.kappa))
        return student_t.logpdf(
            np.asarray(x, dtype=float), 2.0 * self.a, self.mu, scale
        )


class UnivariateGaussian(SaveMixin, CAVIMixin, DensityMixin, BaseEstimator):
    """Mean-field VI for a Gaussian with unknown mean and precision (PRML §10.1.3).

    Model: x_n ~ N(μ, τ⁻¹) i.i.d., μ | τ ~ N(mu0, (lambda0 τ)⁻¹), τ ~ Gamma(a0, b0)
    (shape, rate). The approximation is q(μ) q(τ) with q(μ) = N(mu_mean_,
    mu_precision_⁻¹) and q(τ) = Gamma(tau_shape_, tau_rate_), found by CAVI. The exact
    posterior is Normal–Gamma and is exposed as :attr:`exact_posterior_`, so the
    factorized answer can be compared with it: E[μ] agrees exactly, E[τ] agrees at
    convergence, and the mean-field var(μ) is too small (PRML Fig. 10.4).

    Parameters
    ----------
    mu0 : float, default=0.0
        Prior mean of μ.
    lambda0 : float, default=1e-3
        Prior precision scale of μ (the prior precision of μ is ``lambda0 * τ``).
    a0 : float, default=1e-3
        Shape of the Gamma prior on τ.
    b0 : float, default=1e-3
        Rate of the Gamma prior on τ.
    tol : float, default=1e-6
        Stop when the absolute change of the lower bound (in nats, for the whole data
        set) is below ``tol``. The coordinate updates contract by a factor of order
        1/N per round, so a few rounds reach this.
    max_iter : int, default=100
        Maximum number of CAVI rounds.
    warm_start : bool, default=False
        Continue from the previous fit's factors instead of the initial q(τ).
    verbose : int, default=0
    verbose_interval : int, default=10

    Attributes
    ----------
    mu_mean_, mu_precision_ : float
        Mean and precision of q(μ) (PRML eqs. 10.26, 10.27).
    tau_shape_, tau_rate_ : float
        Shape and rate of q(τ) (PRML eqs. 10.29, 10.30).
    mu_var_, tau_mean_ : float
        var(μ) and E[τ] under q.
    exact_posterior_ : NormalGammaPosterior
        The exact posterior (with ``mean_mu``, ``var_mu``, ``mean_tau``, ``var_tau``,
        ``log_evidence`` and ``predictive_logpdf``).
    lower_bound_ : float
        The full ELBO (every constant included) at the end of the fit; it is at most
        ``exact_posterior_.log_evidence``.
    lower_bounds_ : list of float
        The bound after each CAVI round.
    n_iter_ : int
    converged_ : bool
    n_features_in_ : int
        Always 1.

    Notes
    -----
    The rounds update q(μ) then q(τ) (PRML eqs. 10.25–10.30, where the Gamma rate uses
    E_μ[Σ (x_n − μ)² + λ0 (μ − μ0)²] including the variance of q(μ)). The bound is
    E[log p(X, μ, τ)] + H[q(μ)] + H[q(τ)] written out in full. The initial q(τ) has
    the prior mean a0 / b0, as in PRML Fig. 10.4, which starts from a poor guess on
    purpose. ``n_init`` is fixed to 1: the model has a single optimum.
    """

    n_init = 1

    _parameter_constraints: dict = {
        "mu0": [Real],
        "lambda0": [Interval(Real, 0.0, None, closed="neither")],
        "a0": [Interval(Real, 0.0, None, closed="neither")],
        "b0": [Interval(Real, 0.0, None, closed="neither")],
        **CAVI_PARAMETER_CONSTRAINTS,
    }

    def __init__(
        self,
        *,
        mu0=0.0,
        lambda0=1e-3,
        a0=1e-3,
        b0=1e-3,
        tol=1e-6,
        max_iter=100,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
    ):
        self.mu0 = mu0
        self.lambda0 = lambda0
        self.a0 = a0
        self.b0 = b0
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval

    def fit(self, X, y=None):
        """Fit q(μ) q(τ) by CAVI and compute the exact posterior.

        Parameters
        ----------
        X : array-like of shape (n_samples,) or (n_samples, 1)
        y : Ignored

        Returns
        -------
        self : UnivariateGaussian
        """
        self._validate_params()
        with all_or_nothing(self):
            x = self._check_x(X)
            self.n_features_in_ = 1
            n = x.shape[0]
            xbar = float(np.mean(x))
            spread = float(np.sum((x - xbar) ** 2))
            data = (n, xbar, spread)
            self._cavi_fit(data, None)
            self.exact_posterior_ = self._exact(n, xbar, spread)
        return self

    @staticmethod
    def _check_x(X):
        x = check_array(X, ensure_2d=False, dtype=np.float64, input_name="X")
        if x.ndim == 2:
            if x.shape[1] != 1:
                raise ValueError(
                    "UnivariateGaussian needs X of shape (n_samples,) or "
                    f"(n_samples, 1); got shape {x.shape}."
                )
            x = x[:, 0]
        if x.ndim != 1:
            raise ValueError(f"Expected 1D or 2D X, got {x.ndim}D.")
        if x.shape[0] < 1:
            raise ValueError(
                "Found array with 0 sample(s); a minimum of 1 is required."
            )
        return x

    # CAVI hooks
    def _cavi_initialize(self, data, random_state):
        n = data[0]
        # q(τ) with the shape it will have and the prior's mean a0 / b0
        self.tau_shape_ = self.a0 + 0.5 * (n + 1)
        self.tau_rate_ = self.tau_shape_ * self.b0 / self.a0
        self.mu_mean_ = float(self.mu0)
        self.mu_precision_ = self.lambda0 * self.tau_shape_ / self.tau_rate_

    def _cavi_step(self, data):
        n, xbar, spread = data
        lam0, mu0 = self.lambda0, self.mu0
        # q(μ): PRML eqs. 10.26, 10.27
        e_tau = self.tau_shape_ / self.tau_rate_
        mu = (lam0 * mu0 + n * xbar) / (lam0 + n)
        prec = (lam0 + n) * e_tau
        # q(τ): PRML eqs. 10.29, 10.30 (E over q(μ) includes 1 / prec)
        sq_data = spread + n * (xbar - mu) ** 2 + n / prec
        sq_prior = (mu - mu0) ** 2 + 1.0 / prec
        a = self.a0 + 0.5 * (n + 1)
        b = self.b0 + 0.5 * (sq_data + lam0 * sq_prior)
        self.mu_mean_, self.mu_precision_ = float(mu), float(prec)
        self.tau_shape_, self.tau_rate_ = float(a), float(b)
        self.mu_var_ = 1.0 / self.mu_precision_
        self.tau_mean_ = a / b
        # the full bound at the new factors
        e_tau, e_log_tau = _gamma_moments(a, b)
        loglik = 0.5 * n * (e_log_tau - _LOG_2PI) - 0.5 * e_tau * sq_data
        log_prior_mu = 0.5 * (math.log(lam0) + e_log_tau - _LOG_2PI) - (
            0.5 * lam0 * e_tau * sq_prior
        )
        log_prior_tau = _gamma_log_prior(self.a0, self.b0, e_tau, e_log_tau)
        entropy_mu = 0.5 * (1.0 + _LOG_2PI - math.log(prec))
        entropy_tau = _gamma_entropy(a, b)
        return loglik + log_prior_mu + log_prior_tau + entropy_mu + entropy_tau

    def _cavi_get_state(self):
        return (self.mu_mean_, self.mu_precision_, self.tau_shape_, self.tau_rate_)

    def _cavi_set_state(self, state):
        self.mu_mean_, self.mu_precision_, self.tau_shape_, self.tau_rate_ = state
        self.mu_var_ = 1.0 / self.mu_precision_
        self.tau_mean_ = self.tau_shape_ / self.tau_rate_

    def _exact(self, n, xbar, spread):
        """Normal–Gamma posterior and log evidence (Murphy 2007 eqs. 86–89, 95)."""
        kappa = self.lambda0 + n
        mu = (self.lambda0 * self.mu0 + n * xbar) / kappa
        a = self.a0 + 0.5 * n
        b = (
            self.b0
            + 0.5 * spread
            + self.lambda0 * n * (xbar - self.mu0) ** 2 / (2.0 * kappa)
        )
        log_evidence = (
            gammaln(a)
            - gammaln(self.a0)
            + self.a0 * math.log(self.b0)
            - a * math.log(b)
            + 0.5 * math.log(self.lambda0 / kappa)
            - 0.5 * n * _LOG_2PI
        )
        return NormalGammaPosterior(
            float(mu), float(kappa), float(a), float(b), int(n), float(log_evidence)
        )

    def score_samples(self, X):
        """Log predictive density of each sample under q(μ) q(τ).

        The predictive ∫∫ N(x | μ, τ⁻¹) q(μ) q(τ) dμ dτ is, after the Gaussian
        integral over μ, E_q(τ)[N(x | E[μ], τ⁻¹ + var(μ))]; the remaining expectation
        over τ is computed by 48-point Gauss–Hermite quadrature after mapping τ to a
        standard normal through the Gamma quantile function (accurate to ~1e-10 for
        every shape). The exact posterior's Student-t predictive is
        ``exact_posterior_.predictive_logpdf``.

        Parameters
        ----------
        X : array-like of shape (n_samples,) or (n_samples, 1)

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        x = self._check_x(X)
        nodes, weights = np.polynomial.hermite_e.hermegauss(48)
        log_w = np.log(weights / math.sqrt(2.0 * math.pi))
        a, b = self.tau_shape_, self.tau_rate_
        lower = nodes < 0
        tau = np.empty_like(nodes)
        tau[lower] = gammaincinv(a, ndtr(nodes[lower])) / b
        tau[~lower] = gammainccinv(a, ndtr(-nodes[~lower])) / b
        var = 1.0 / tau + self.mu_var_
        dev = (x[:, np.newaxis] - self.mu_mean_) ** 2
        log_norm = -0.5 * (_LOG_2PI + np.log(var) + dev / var)
        return logsumexp(log_norm + log_w, axis=1)

    def score(self, X, y=None):
        """Mean log predictive density (see :meth:`score_samples`).

        Parameters
        ----------
        X : array-like of shape (n_samples,) or (n_samples, 1)
        y : Ignored

        Returns
        -------
        score : float
        """
        return float(np.mean(self.score_samples(X)))


# ============================================================ VBLinearRegression
class VBLinearRegression(SaveMixin, CAVIMixin, RegressorMixin, BaseEstimator):
    """Variational Bayesian linear regression, shared or ARD weight precisions.

    Model (scikit-learn's names: ``alpha`` is the *noise* precision, ``lambda`` the
    *weight* precision, as in :class:`sklearn.linear_model.BayesianRidge`)::

        y_n | w, α ~ N(wᵀ x_n, α⁻¹),           α ~ Gamma(alpha_1, alpha_2)
        w_d | λ    ~ N(0, λ_d⁻¹),              λ_d ~ Gamma(lambda_1, lambda_2)

    with one shared λ (``ard=False``) or one per feature (``ard=True``). The posterior
    is approximated by q(w) q(α) q(λ) (Gaussian, Gamma, Gamma) found by CAVI; unlike
    BayesianRidge/ARDRegression, which maximize the evidence over α and λ, the
    precisions get posteriors of their own.

    Parameters
    ----------
    ard : bool, default=False
        One precision per weight (automatic relevance determination) instead of one
        shared precision.
    fit_intercept : bool, default=True
        Centre X and y before fitting and set ``intercept_`` from the means, as
        BayesianRidge does (the intercept is a point estimate, outside the model).
    alpha_1, alpha_2 : float, default=1e-6
        Shape and rate of the Gamma prior on the noise precision α.
    lambda_1, lambda_2 : float, default=1e-6
        Shape and rate of the Gamma prior on the weight precision(s) λ.
    tol : float, default=1e-6
        Stop when the absolute change of the lower bound (in nats, for the whole data
        set) is below ``tol``. Each round costs O(D³), so a tight default is cheap;
        it sits well above the rounding noise of the bound for N up to ~1e8.
    max_iter : int, default=1000
        Maximum number of CAVI rounds. Shared-precision fits take tens of rounds;
        ARD fits can take hundreds while irrelevant weights are switched off (the
        λ_d updates converge linearly, as EM's do), at O(D³) each.
    warm_start : bool, default=False
        Continue from the previous fit's factors.
    verbose : int, default=0
    verbose_interval : int, default=10
    n_jobs : int, default=None
        BLAS threads for the one pass over the data (the statistics XᵀX, Xᵀy, yᵀy);
        None: all. The CAVI rounds work on D x D matrices only.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
        Posterior mean of w.
    intercept_ : float
        ``y_offset_ - X_offset_ @ coef_`` (0 without an intercept).
    sigma_ : ndarray of shape (n_features, n_features)
        Posterior covariance of w.
    alpha_ : float
        E[α], posterior mean of the noise precision.
    lambda_ : float or ndarray of shape (n_features,)
        E[λ], posterior mean of the weight precision(s) (an array when ``ard``).
    alpha_shape_, alpha_rate_ : float
        Parameters of q(α) = Gamma(shape, rate).
    lambda_shape_, lambda_rate_ : float or ndarray of shape (n_features,)
        Parameters of q(λ).
    X_offset_ : ndarray of shape (n_features,)
    y_offset_ : float
    lower_bound_ : float
        The full ELBO of the centred problem, every constant included.
    lower_bounds_ : list of float
        The bound after every CAVI round.
    n_iter_ : int
    converged_ : bool
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    Notes
    -----
    Updates (PRML eqs. 10.96–10.100 with the noise precision made a random variable,
    Drugowitsch 2013 §2 for the mean-field variant):
    S⁻¹ = E[α] XᵀX + diag(E[λ]), m = E[α] S Xᵀy; q(α) = Gamma(α1 + N/2, α2 +
    E‖y − Xw‖²/2); q(λ) = Gamma(λ1 + D/2, λ2 + E[wᵀw]/2) (shared) or
    Gamma(λ1 + 1/2, λ2 + E[w_d²]/2) (ARD). Every round reads only the statistics
    XᵀX, Xᵀy and yᵀy, computed once about the column means in blocks of rows with
    BLAS (a GEMM over blocks reaches the machine's DGEMM rate, which no hand-written
    kernel here beats, and centring the blocks avoids the cancellation of
    XᵀX − N x̄ x̄ᵀ). ``n_init`` is fixed to 1: the initialization (E[α] = 1/var(y),
    E[λ] = 1, as BayesianRidge) is deterministic.

    ``predict(X, return_std=True)`` returns the mean and standard deviation of the
    predictive distribution under q: var = xᵀ S x + E[1/α], with x centred by
    ``X_offset_`` as BayesianRidge does (the intercept's uncertainty is ignored).
    """

    n_init = 1

    _parameter_constraints: dict = {
        "ard": ["boolean"],
        "fit_intercept": ["boolean"],
        "alpha_1": [Interval(Real, 0.0, None, closed="neither")],
        "alpha_2": [Interval(Real, 0.0, None, closed="neither")],
        "lambda_1": [Interval(Real, 0.0, None, closed="neither")],
        "lambda_2": [Interval(Real, 0.0, None, closed="neither")],
        **CAVI_PARAMETER_CONSTRAINTS,
        "n_jobs": [None, Integral],
    }

    def __init__(
        self,
        *,
        ard=False,
        fit_intercept=True,
        alpha_1=1e-6,
        alpha_2=1e-6,
        lambda_1=1e-6,
        lambda_2=1e-6,
        tol=1e-6,
        max_iter=1000,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        n_jobs=None,
    ):
        self.ard = ard
        self.fit_intercept = fit_intercept
        self.alpha_1 = alpha_1
        self.alpha_2 = alpha_2
        self.lambda_1 = lambda_1
        self.lambda_2 = lambda_2
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.n_jobs = n_jobs

    def fit(self, X, y):
        """Fit q(w) q(α) q(λ) by CAVI.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        self : VBLinearRegression
        """
        self._validate_params()
        with all_or_nothing(self):
            X, y = validate_data(
                self, X, y, dtype=np.float64, y_numeric=True, ensure_min_samples=2
            )
            X = np.ascontiguousarray(X, dtype=np.float64)
            y = np.ascontiguousarray(y, dtype=np.float64)
            if self.warm_start and hasattr(self, "converged_"):
                if self.coef_.shape[0] != X.shape[1]:
                    del self.converged_  # a new problem: start afresh
            data = self._statistics(X, y)
            self._cavi_fit(data, None)
            self.intercept_ = (
                float(self.y_offset_ - self.X_offset_ @ self.coef_)
                if self.fit_intercept
                else 0.0
            )
        return self

    def _statistics(self, X, y):
        """Centred XᵀX, Xᵀy, yᵀy in row blocks (BLAS) and the offsets."""
        n, d = X.shape
        if self.fit_intercept:
            x_off, y_off = X.mean(axis=0), float(y.mean())
        else:
            x_off, y_off = np.zeros(d), 0.0
        gram = np.zeros((d, d))
        xty = np.zeros(d)
        yty = 0.0
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=resolve_n_jobs(self.n_jobs), user_api="blas"):
            for start in range(0, n, STATS_ROWS):
                xb = X[start : start + STATS_ROWS] - x_off
                yb = y[start : start + STATS_ROWS] - y_off
                gram += xb.T @ xb
                xty += xb.T @ yb
                yty += float(yb @ yb)
        if yty == 0.0 or (self.fit_intercept and np.ptp(y) == 0.0):
            raise ValueError(
                "The target y is constant"
                + (" (all zero)" if not self.fit_intercept else "")
                + "; VBLinearRegression needs a target that varies."
            )
        self.X_offset_, self.y_offset_ = x_off, y_off
        gram = 0.5 * (gram + gram.T)
        return n, gram, xty, yty, float(np.var(y))

    # CAVI hooks
    def _cavi_initialize(self, data, random_state):
        n, gram, _, _, var_y = data
        d = gram.shape[0]
        # E[α] = 1 / var(y) and E[λ] = 1 (BayesianRidge's defaults) as Gamma factors
        # with the shapes they will have
        self.alpha_shape_ = self.alpha_1 + 0.5 * n
        self.alpha_rate_ = self.alpha_shape_ * var_y
        if self.ard:
            self.lambda_shape_ = np.full(d, self.lambda_1 + 0.5)
        else:
            self.lambda_shape_ = self.lambda_1 + 0.5 * d
        self.lambda_rate_ = self.lambda_shape_ * 1.0
        self.coef_ = np.zeros(d)
        self.sigma_ = np.eye(d)
        self._log_det_sigma = 0.0

    def _cavi_step(self, data):
        n, gram, xty, yty, _ = data
        d = gram.shape[0]
        e_alpha = self.alpha_shape_ / self.alpha_rate_
        e_lambda = self.lambda_shape_ / self.lambda_rate_
        # q(w): S⁻¹ = E[α] XᵀX + diag(E[λ]), m = E[α] S Xᵀy
        precision = e_alpha * gram
        precision[np.diag_indices(d)] += e_lambda
        sigma, _, log_det = _chol_inverse(precision)
        coef = e_alpha * (sigma @ xty)
        # E‖y − Xw‖² = yᵀy − 2 mᵀXᵀy + mᵀXᵀXm + tr(XᵀX S); the first three are the
        # squared residual of the mean, clipped at 0 against rounding
        resid = max(yty - 2.0 * coef @ xty + coef @ gram @ coef, 0.0)
        e_sq_resid = resid + float(np.sum(gram * sigma))
        # q(α)
        a_alpha = self.alpha_1 + 0.5 * n
        b_alpha = self.alpha_2 + 0.5 * e_sq_resid
        # q(λ)
        e_w2 = coef**2 + np.diag(sigma)
        if self.ard:
            a_lambda = np.full(d, self.lambda_1 + 0.5)
            b_lambda = self.lambda_2 + 0.5 * e_w2
        else:
            a_lambda = self.lambda_1 + 0.5 * d
            b_lambda = self.lambda_2 + 0.5 * float(np.sum(e_w2))
        self.coef_, self.sigma_, self._log_det_sigma = coef, sigma, log_det
        self.alpha_shape_, self.alpha_rate_ = a_alpha, b_alpha
        self.lambda_shape_, self.lambda_rate_ = a_lambda, b_lambda
        self._set_means()
        return self._bound(n, e_sq_resid, e_w2)

    def _bound(self, n, e_sq_resid, e_w2):
        d = self.coef_.shape[0]
        e_alpha, e_log_alpha = _gamma_moments(self.alpha_shape_, self.alpha_rate_)
        e_lambda, e_log_lambda = _gamma_moments(self.lambda_shape_, self.lambda_rate_)
        loglik = 0.5 * n * (e_log_alpha - _LOG_2PI) - 0.5 * e_alpha * e_sq_resid
        if self.ard:
            log_prior_w = 0.5 * (
                np.sum(e_log_lambda) - d * _LOG_2PI - np.sum(e_lambda * e_w2)
            )
            log_prior_lambda = np.sum(
                _gamma_log_prior(self.lambda_1, self.lambda_2, e_lambda, e_log_lambda)
            )
            entropy_lambda = np.sum(
                _gamma_entropy(self.lambda_shape_, self.lambda_rate_)
            )
        else:
            log_prior_w = 0.5 * (
                d * e_log_lambda - d * _LOG_2PI - e_lambda * np.sum(e_w2)
            )
            log_prior_lambda = _gamma_log_prior(
                self.lambda_1, self.lambda_2, e_lambda, e_log_lambda
            )
            entropy_lambda = _gamma_entropy(self.lambda_shape_, self.lambda_rate_)
        log_prior_alpha = _gamma_log_prior(
            self.alpha_1, self.alpha_2, e_alpha, e_log_alpha
        )
        entropy_w = 0.5 * (d * (1.0 + _LOG_2PI) + self._log_det_sigma)
        entropy_alpha = _gamma_entropy(self.alpha_shape_, self.alpha_rate_)
        return float(
            loglik
            + log_prior_w
            + log_prior_alpha
            + log_prior_lambda
            + entropy_w
            + entropy_alpha
            + entropy_lambda
        )

    def _set_means(self):
        self.alpha_ = float(self.alpha_shape_ / self.alpha_rate_)
        lam = self.lambda_shape_ / self.lambda_rate_
        self.lambda_ = lam if self.ard else float(lam)

    def _cavi_get_state(self):
        return (
            self.coef_,
            self.sigma_,
            self._log_det_sigma,
            self.alpha_shape_,
            self.alpha_rate_,
            self.lambda_shape_,
            self.lambda_rate_,
        )

    def _cavi_set_state(self, state):
        (
            self.coef_,
            self.sigma_,
            self._log_det_sigma,
            self.alpha_shape_,
            self.alpha_rate_,
            self.lambda_shape_,
            self.lambda_rate_,
        ) = state
        self._set_means()

    def predict(self, X, return_std=False):
        """Mean (and standard deviation) of the predictive distribution under q.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        return_std : bool, default=False
            Also return the predictive standard deviation, sqrt(xᵀ S x + E[1/α])
            with x centred by ``X_offset_`` (noise included).

        Returns
        -------
        y_mean : ndarray of shape (n_samples,)
        y_std : ndarray of shape (n_samples,)
            Only with ``return_std=True``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        y_mean = X @ self.coef_ + self.intercept_
        if not return_std:
            return y_mean
        Xc = X - self.X_offset_
        var_w = np.einsum("ij,jk,ik->i", Xc, self.sigma_, Xc, optimize=True)
        # E[1/α] = rate / (shape - 1) under q(α) (shape > 1 since N >= 2)
        noise = self.alpha_rate_ / (self.alpha_shape_ - 1.0)
        return y_mean, np.sqrt(np.maximum(var_w, 0.0) + noise)


# ========================================================== VBLogisticRegression
def _jj_kernels():
    # imported lazily: ``import fastvi`` must not pull in (or compile) kernels
    from .kernels import conjugate

    return conjugate


class VBLogisticRegression(SaveMixin, CAVIMixin, ClassifierMixin, BaseEstimator):
    """Variational Bayesian logistic regression with the Jaakkola–Jordan bound.

    Model: p(t_n = 1 | w) = σ(wᵀ x_n + b), w ~ N(0, λ⁻¹ I), λ ~ Gamma(lambda_1,
    lambda_2), intercept b ~ N(0, intercept_precision⁻¹) (fixed, broad). The
    approximation is q(w, b) q(λ), Gaussian and Gamma, found by CAVI on the
    Jaakkola–Jordan lower bound with one variational parameter ξ_n per data point.
    More than two classes are fitted one-vs-rest.

    Parameters
    ----------
    fit_intercept : bool, default=True
        Add an intercept (with its own fixed Gaussian prior, not shrunk by λ).
    lambda_1, lambda_2 : float, default=1e-6
        Shape and rate of the Gamma hyperprior on the weight precision λ (the names of
        :class:`VBLinearRegression` and scikit-learn's BayesianRidge).
    intercept_precision : float, default=1e-4
        Prior precision of the intercept (prior standard deviation 100).
    tol : float, default=1e-3
        Stop when the absolute change of the lower bound (in nats, summed over the
        data set) is below ``tol``. Each round is a pass over the data, so the default
        is looser than the linear model's; predictions stop moving well before.
    max_iter : int, default=200
        Maximum number of CAVI rounds (passes over the data).
    warm_start : bool, default=False
        Continue from the previous fit's factors (the same classes are required).
    verbose : int, default=0
    verbose_interval : int, default=10
    n_jobs : int, default=None
        Threads of the ξ kernel (None: all; negative: all but ``-n_jobs - 1``).
        Results are bitwise identical for every value.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
        Posterior mean of the weights (one row per one-vs-rest problem).
    intercept_ : ndarray of shape (1,) or (n_classes,)
        Posterior mean of the intercept (0 without one).
    sigma_ : ndarray of shape (D̃, D̃) or (n_classes, D̃, D̃)
        Posterior covariance of (w, b), the intercept last; D̃ = n_features + 1 with
        an intercept, n_features without.
    lambda_ : float or ndarray of shape (n_classes,)
        E[λ], the posterior mean of the weight precision.
    lambda_shape_, lambda_rate_ : float or ndarray of shape (n_classes,)
        Parameters of q(λ).
    lower_bound_ : float or ndarray of shape (n_classes,)
        The full Jaakkola–Jordan ELBO (every constant included); per class for
        one-vs-rest.
    lower_bounds_ : list of float, or list of such lists (one-vs-rest)
    n_iter_ : int or ndarray of shape (n_classes,)
    converged_ : bool
        For one-vs-rest, whether every binary problem converged.
    estimators_ : list of VBLogisticRegression
        The binary fits (only for more than two classes).
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    Notes
    -----
    One round (PRML §10.6): the local step sets ξ_n² = x̃_nᵀ (S + m mᵀ) x̃_n (eq.
    10.163) and accumulates G = Σ 2 λ(ξ_n) x̃_n x̃_nᵀ, h = Σ (t_n − 1/2) x̃_n and
    Σ [log σ(ξ_n) − ξ_n/2 + λ(ξ_n) ξ_n²] in one parallel pass; then the global step
    sets S⁻¹ = diag(E[λ], …, E[λ], intercept_precision) + G, m = S h (eqs. 10.157,
    10.158) and q(λ) = Gamma(λ1 + D/2, λ2 + E[wᵀw]/2) (Bishop & Svensén 2003;
    Drugowitsch 2013 eqs. 20–22). The bound after the round uses the pass's ξ with
    the new q: Σ[log σ(ξ) − ξ/2 + λ(ξ)ξ²] + mᵀh − tr((S + m mᵀ) G)/2 + prior terms +
    entropies (PRML eq. 10.164 in full), so every round costs one pass.

    ``predict_proba`` uses the probit approximation of the predictive,
    σ(κ(s²) μ) with μ = E[wᵀx̃], s² = x̃ᵀ S x̃ and κ(s²) = (1 + π s²/8)^(−1/2)
    (PRML eq. 4.155). ``decision_function`` returns the log-odds of that
    probability, κ(s²) μ, so that it ranks samples as ``predict_proba`` does; it is
    therefore not exactly ``X @ coef_.T + intercept_``. For one-vs-rest the class
    probabilities are normalized to sum to 1.
    ``n_init`` is fixed to 1: the initialization (m = 0, S = I, E[λ] = 1) is
    deterministic.
    """

    n_init = 1

    _parameter_constraints: dict = {
        "fit_intercept": ["boolean"],
        "lambda_1": [Interval(Real, 0.0, None, closed="neither")],
        "lambda_2": [Interval(Real, 0.0, None, closed="neither")],
        "intercept_precision": [Interval(Real, 0.0, None, closed="neither")],
        **CAVI_PARAMETER_CONSTRAINTS,
        "n_jobs": [None, Integral],
    }

    def __init__(
        self,
        *,
        fit_intercept=True,
        lambda_1=1e-6,
        lambda_2=1e-6,
        intercept_precision=1e-4,
        tol=1e-3,
        max_iter=200,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        n_jobs=None,
    ):
        self.fit_intercept = fit_intercept
        self.lambda_1 = lambda_1
        self.lambda_2 = lambda_2
        self.intercept_precision = intercept_precision
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------ public API
    def fit(self, X, y):
        """Fit the posterior by CAVI (one-vs-rest for more than two classes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Labels of any kind (at least two distinct values).

        Returns
        -------
        self : VBLogisticRegression
        """
        self._validate_params()
        with all_or_nothing(self):
            X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
            check_classification_targets(y)
            classes, y_idx = np.unique(y, return_inverse=True)
            if classes.shape[0] < 2:
                raise ValueError(
                    "VBLogisticRegression needs samples of at least 2 classes in the "
                    f"data, but the data contains only one class: {classes[0]!r}."
                )
            warm = (
                self.warm_start
                and hasattr(self, "classes_")
                and np.array_equal(self.classes_, classes)
                and self.coef_.shape[1] == X.shape[1]
            )
            # float64, C-contiguous and writable: one kernel signature, one compile
            # (numba types read-only arrays separately)
            X = np.require(X, dtype=np.float64, requirements=["C", "W"])
            with thread_limits(self.n_jobs):
                if classes.shape[0] == 2:
                    if not warm and hasattr(self, "converged_"):
                        del self.converged_
                    self.__dict__.pop("estimators_", None)
                    self._fit_binary(X, (y_idx == 1).astype(np.float64))
                else:
                    self._fit_ovr(X, y_idx, classes.shape[0], warm)
            self.classes_ = classes
        return self

    def decision_function(self, X):
        """Log-odds of :meth:`predict_proba`: κ(s²) μ per sample (see Notes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        scores = self._moderated_logits(X)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict_proba(self, X):
        """Predictive class probabilities (probit approximation, PRML eq. 4.155).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        p = expit(self._moderated_logits(X))
        if p.shape[1] == 1:
            return np.column_stack([1.0 - p[:, 0], p[:, 0]])
        return p / p.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        return np.log(self.predict_proba(X))

    def predict(self, X):
        """Most probable class under the predictive distribution.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.intp)]
        return self.classes_[np.argmax(scores, axis=1)]

    # -------------------------------------------------------------- internals
    def _moderated_logits(self, X):
        """κ(s²) μ for every (sample, binary problem): (n_samples, n_problems)."""
        n_problems = self.coef_.shape[0]
        sigmas = self.sigma_ if self.sigma_.ndim == 3 else self.sigma_[np.newaxis]
        d = X.shape[1]
        out = np.empty((X.shape[0], n_problems))
        for k in range(n_problems):
            mu = X @ self.coef_[k] + self.intercept_[k]
            s = sigmas[k]
            var = np.einsum("ij,jk,ik->i", X, s[:d, :d], X, optimize=True)
            if self.fit_intercept:
                var += 2.0 * (X @ s[:d, d]) + s[d, d]
            kappa = 1.0 / np.sqrt(1.0 + math.pi / 8.0 * np.maximum(var, 0.0))
            out[:, k] = kappa * mu
        return out

    def _fit_ovr(self, X, y_idx, n_classes, warm):
        if warm and hasattr(self, "estimators_"):
            estimators = self.estimators_
            for est in estimators:
                est.set_params(**self.get_params())
        else:
            estimators = [
                VBLogisticRegression(**self.get_params()) for _ in range(n_classes)
            ]
        for k, est in enumerate(estimators):
            est.n_features_in_ = self.n_features_in_
            est.classes_ = np.array([0, 1])
            est._fit_binary(X, (y_idx == k).astype(np.float64))
        self.estimators_ = estimators
        self.coef_ = np.vstack([est.coef_ for est in estimators])
        self.intercept_ = np.concatenate([est.intercept_ for est in estimators])
        self.sigma_ = np.stack([est.sigma_ for est in estimators])
        self.lambda_shape_ = np.array([est.lambda_shape_ for est in estimators])
        self.lambda_rate_ = np.array([est.lambda_rate_ for est in estimators])
        self.lambda_ = self.lambda_shape_ / self.lambda_rate_
        self.lower_bound_ = np.array([est.lower_bound_ for est in estimators])
        self.lower_bounds_ = [est.lower_bounds_ for est in estimators]
        self.n_iter_ = np.array([est.n_iter_ for est in estimators])
        self.converged_ = all(est.converged_ for est in estimators)

    def _fit_binary(self, X, t):
        """CAVI on one binary problem; ``t`` holds 0/1 targets as float64."""
        data = (X, np.ascontiguousarray(t - 0.5))
        self._cavi_fit(data, None)

    def _pass(self, X, s, out_xi=None):
        """The kernel's totals: G, h and Σ[log σ(ξ) − ξ/2 + λ(ξ) ξ²]."""
        factor = np.ascontiguousarray(
            np.column_stack([self._factor, self._mean]), dtype=np.float64
        )
        parts = _jj_kernels().jj_pass(
            X,
            s,
            factor,
            bool(self.fit_intercept),
            CHUNK_ROWS,
            TILE_ROWS,
            np.empty(0) if out_xi is None else out_xi,
        )
        gram, h, c = parts
        gram = gram.sum(axis=0)
        return 0.5 * (gram + gram.T), h.sum(axis=0), float(c.sum())

    # CAVI hooks
    def _cavi_initialize(self, data, random_state):
        X = data[0]
        d_tilde = X.shape[1] + int(self.fit_intercept)
        self._mean = np.zeros(d_tilde)
        self._factor = np.eye(d_tilde)
        self._cov = np.eye(d_tilde)
        self._log_det = 0.0
        self.lambda_shape_ = self.lambda_1 + 0.5 * X.shape[1]
        self.lambda_rate_ = self.lambda_shape_
        self._publish()

    def _cavi_step(self, data):
        X, s = data
        # local step: ξ from the current q(w), and the statistics it feeds
        stats = self._pass(X, s)
        # global step: q(w), then q(λ), with ξ fixed
        return self._global_update(stats)

    def _global_update(self, stats):
        """q(w) then q(λ) for fixed ξ; returns the bound at the new factors."""
        gram, h, xi_terms = stats
        d = gram.shape[0] - int(self.fit_intercept)
        d_tilde = gram.shape[0]
        # q(w): S⁻¹ = prior precision + G, m = S h (PRML eqs. 10.157, 10.158)
        e_lambda = self.lambda_shape_ / self.lambda_rate_
        precision = gram.copy()
        idx = np.arange(d)
        precision[idx, idx] += e_lambda
        if self.fit_intercept:
            precision[d, d] += self.intercept_precision
        cov, factor, log_det = _chol_inverse(precision)
        mean = cov @ h
        # q(λ) (Drugowitsch 2013 eq. 22)
        e_ww = float(mean[:d] @ mean[:d] + np.trace(cov[:d, :d]))
        a = self.lambda_1 + 0.5 * d
        b = self.lambda_2 + 0.5 * e_ww
        self._mean, self._cov, self._factor, self._log_det = mean, cov, factor, log_det
        self.lambda_shape_, self.lambda_rate_ = a, b
        self._publish()
        # the full bound at (ξ of the pass, new q(w), new q(λ))
        second = cov + np.outer(mean, mean)
        loglik = xi_terms + float(mean @ h) - 0.5 * float(np.sum(second * gram))
        e_lam, e_log_lam = _gamma_moments(a, b)
        log_prior_w = 0.5 * (d * (e_log_lam - _LOG_2PI) - e_lam * e_ww)
        if self.fit_intercept:
            p0 = self.intercept_precision
            log_prior_w += 0.5 * (math.log(p0) - _LOG_2PI - p0 * second[d, d])
        log_prior_lam = _gamma_log_prior(self.lambda_1, self.lambda_2, e_lam, e_log_lam)
        entropy_w = 0.5 * (d_tilde * (1.0 + _LOG_2PI) + log_det)
        entropy_lam = _gamma_entropy(a, b)
        return float(loglik + log_prior_w + log_prior_lam + entropy_w + entropy_lam)

    def _publish(self):
        """Public attributes from the variational parameters."""
        d = self._mean.shape[0] - int(self.fit_intercept)
        self.coef_ = self._mean[np.newaxis, :d].copy()
        self.intercept_ = self._mean[d:].copy() if self.fit_intercept else np.zeros(1)
        self.sigma_ = self._cov
        self.lambda_ = float(self.lambda_shape_ / self.lambda_rate_)

    def _cavi_get_state(self):
        return (
            self._mean,
            self._cov,
            self._factor,
            self._log_det,
            self.lambda_shape_,
            self.lambda_rate_,
        )

    def _cavi_set_state(self, state):
        (
            self._mean,
            self._cov,
            self._factor,
            self._log_det,
            self.lambda_shape_,
            self.lambda_rate_,
        ) = state
        self._publish()
