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
  run in one parallel kernel (``fastvi.kernels.conjugate.jj_chunks``), and safeguarded
  Newton proposals cut the rounds from ~30 to 4–7.

The data passes are pure functions of a block of rows and the current global
parameters, whose results add up over blocks: :func:`linear_block_stats` and
:func:`logistic_block_stats` (with :func:`logistic_target_stats`, computed once).
The models never see where the rows live: each ``fit`` wraps its data in a
:mod:`fastvi.rows` source (an array in memory, a ``.npy`` file read block by block
such as :class:`fastvi.batch.io.NpyRows`, or a dask array) and maps these functions
over its blocks; out-of-core fits are bitwise the in-memory ones.

All three run on the CAVI engine (:mod:`fastvi._cavi`) and report the *full* evidence
lower bound, every constant included, so ``lower_bound_`` can be compared with a log
marginal likelihood. Their initializations are deterministic and the objectives have a
single optimum in practice, so they have no restarts (``n_init`` is fixed to 1).
"""

import math
from numbers import Integral, Real
from operator import attrgetter
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

from . import _schema
from ._cavi import CAVI_PARAMETER_CONSTRAINTS, CAVIMixin, all_or_nothing
from ._compile import announces
from ._numerics import (
    check_finite_prediction,
    check_finite_statistics,
    check_squares_overflow,
    finite_mean,
    max_abs,
)
from ._threads import map_chunks, thread_limits
from .persist import SaveMixin
from .rows import (
    ArrayRows,
    Max,
    fit_rows,
    numeric_target,
    predict_rows,
    source_rows,
)

__all__ = [
    "LinearBlockStats",
    "LogisticBlockStats",
    "UnivariateGaussian",
    "VBLinearRegression",
    "VBLogisticRegression",
    "linear_block_stats",
    "logistic_block_stats",
    "logistic_target_stats",
]

_LOG_2PI = math.log(2.0 * math.pi)

# Rows per parallel work item of the logistic kernel and per transposed tile inside it.
# Fixed, so the reduction order (and every bit of the result) does not depend on n_jobs.
CHUNK_ROWS = 4096
TILE_ROWS = 64
# Rows per block of the one-off statistics pass of the linear regression.
STATS_ROWS = 16384
# VBLogisticRegression's start on every k-th row, k = N // (WARM_TARGET_PER_COEF D̃)
# clipped to [WARM_STRIDE, WARM_MAX_STRIDE] (when there are at least WARM_MIN_ROWS rows
# and WARM_ROWS_PER_COEF subsample rows per coefficient): rounds on the subsample
# until the bound, in full-data nats, gains less than WARM_TOL_PER_ROW per row of the
# data (at most WARM_MAX_ROUNDS rounds). Measured at N = 1e6, D = 50: k = 32 took 12%
# less time than k = 16 (the same 4 full-data passes); k = 64 no less than 32.
WARM_STRIDE = 16
WARM_MAX_STRIDE = 64
WARM_TARGET_PER_COEF = 640
WARM_MIN_ROWS = 32 * 1024
WARM_ROWS_PER_COEF = 40
WARM_TOL_PER_ROW = 1e-4
WARM_MAX_ROUNDS = 30
# The Newton proposal's curvature H sums every k-th row only, with
# k = N // (HESSIAN_ROWS_PER_COEF D̃) clipped to [1, HESSIAN_MAX_STRIDE] (a subsampled
# Newton step: Byrd, Chin, Neveitt & Nocedal 2011; Roosta-Khorasani & Mahoney 2019).
# Its relative error, about sqrt(D̃ k / N) <= 3%, slows the Newton steps' convergence
# only slightly, and the proposals are checked against the exact bound anyway.
HESSIAN_ROWS_PER_COEF = 1000
HESSIAN_MAX_STRIDE = 4
# the initial q(w) = N(0, INIT_VARIANCE I): ξ starts at ~0, where the first round is
# the first Newton (IRLS) step of the logistic MAP from w = 0
INIT_VARIANCE = 1e-10


# below this sum of squared target deviations 1 / var(y) is within a factor 1e4 of
# overflowing (the smallest normal float64 is 2.2e-308)
_SMALLEST_SUM_OF_SQUARES = 1e4 * float(np.finfo(np.float64).tiny)


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


def _augmented_root(gram, xty, yty):
    """A square root R of the augmented Gram matrix A = [[XᵀX, Xᵀy], [yᵀX, yᵀy]].

    RᵀR is A projected onto the positive semi-definite matrices (the negative
    eigenvalues of A scaled to a unit diagonal, rounding of a singular A, set to 0), so
    that ‖y − Xm‖² = ‖R [m; −1]‖² is a sum of squares, a smooth function of m computed to
    a few ulps, where yᵀy − 2 mᵀXᵀy + mᵀXᵀXm cancels
    when the noise is small (rounding of relative size ~ ε yᵀy / ‖y − Xm‖², which
    made the bound oscillate at convergence). Scaling first keeps the rounding of each
    entry relative to its own scale (X and y on very different scales).
    """
    d = gram.shape[0]
    aug = np.empty((d + 1, d + 1))
    aug[:d, :d] = gram
    aug[:d, d] = aug[d, :d] = xty
    aug[d, d] = yty
    scale = np.sqrt(np.diag(aug))
    scale[scale == 0.0] = 1.0
    values, vectors = linalg.eigh(aug / np.outer(scale, scale))
    return (np.sqrt(np.maximum(values, 0.0))[:, None] * vectors.T) * scale


# ----------------------------------------- per-block statistics (module docstring)
def _add_fields(a, b):
    """``a + b`` of two statistics, field by field (None stays None)."""
    return type(a)(*(None if x is None else x + y for x, y in zip(a, b)))


class LinearBlockStats(NamedTuple):
    """Sufficient statistics of :class:`VBLinearRegression` over a block of rows.

    Every field is a sum over rows, so the statistics of several blocks add field
    by field (see :func:`linear_block_stats`).
    """

    n_samples: int
    #: Σ (x − x_offset)(x − x_offset)ᵀ, shape (D, D)
    gram: np.ndarray
    #: Σ (x − x_offset)(y − y_offset), shape (D,)
    xty: np.ndarray
    #: Σ (y − y_offset)²
    yty: float

    __add__ = _add_fields


def linear_block_stats(X, y, x_offset, y_offset):
    """The statistics VBLinearRegression reads, for one block of rows.

    Pure: no estimator state; rows are centred by the given offsets (the column and
    target means of the whole data set for a model with an intercept, zeros
    without), which a distributed caller computes first in a separate reduction.
    Works on sub-blocks of ``STATS_ROWS`` rows on the threads that the caller's
    ``fastvi._threads.thread_limits`` sets (which also holds BLAS to one thread)
    and adds their results in sub-block order, so the result does not depend on
    the number of threads (a multi-threaded GEMM's does).

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features), float64
    y : ndarray of shape (n_rows,), float64
    x_offset : ndarray of shape (n_features,)
    y_offset : float

    Returns
    -------
    stats : LinearBlockStats
        Add the results of several blocks with ``+`` (or ``sum``-like reductions).
    """
    n, d = X.shape
    m = -(-n // STATS_ROWS)
    grams, xtys, ytys = np.empty((m, d, d)), np.empty((m, d)), np.empty(m)

    def sub_blocks(c0, c1):
        for c in range(c0, c1):
            xb = X[c * STATS_ROWS : (c + 1) * STATS_ROWS] - x_offset
            yb = y[c * STATS_ROWS : (c + 1) * STATS_ROWS] - y_offset
            grams[c], xtys[c], ytys[c] = xb.T @ xb, xb.T @ yb, yb @ yb

    map_chunks(sub_blocks, m)
    gram, xty, yty = np.zeros((d, d)), np.zeros(d), 0.0
    for c in range(m):
        gram += grams[c]
        xty += xtys[c]
        yty += float(ytys[c])
    return LinearBlockStats(int(n), gram, xty, yty)


class LogisticBlockStats(NamedTuple):
    """What one Jaakkola–Jordan pass over a block of rows returns.

    Every field is a sum over rows, so the statistics of several blocks add field
    by field (see :func:`logistic_block_stats`).
    """

    n_samples: int
    #: G = Σ 2 λ(ξ_n) x̃_n x̃_nᵀ, shape (D̃, D̃), symmetric; None when not asked for
    gram: np.ndarray | None
    #: H = Σ [2 λ(ξ_n)(1 − r_n) + σ'(ξ_n) r_n] x̃_n x̃_nᵀ, or None when not asked for
    hessian: np.ndarray | None
    #: Σ [log σ(ξ_n) − ξ_n/2 + λ(ξ_n) ξ_n²]
    xi_terms: float
    #: Σ [log σ(ξ_n) − ξ_n/2] = −Σ log(2 cosh(ξ_n/2))
    collapsed_terms: float
    #: rows that H sums over (every ``hessian_stride``-th); 0 when H is None
    hessian_rows: int = 0
    #: Σ 2 λ(ξ_n) (mᵀx̃_n) x̃_n = G m at the pass's mean m, shape (D̃,); even without G
    gram_mean: np.ndarray | None = None

    __add__ = _add_fields

    def scaled_hessian(self):
        """H scaled from its subsample to all the rows: an estimate of the full H."""
        return self.hessian * (self.n_samples / self.hessian_rows)


def _symmetric_from_upper(parts):
    """Sum per-chunk upper triangles in chunk order and mirror the result."""
    upper = parts.sum(axis=0)
    return upper + np.tril(upper.T, -1)


def logistic_block_stats(
    X,
    mean,
    factor,
    *,
    fit_intercept,
    grams=True,
    hessian=False,
    hessian_stride=1,
    first_row=0,
):
    """One Jaakkola–Jordan local step over a block of rows (PRML §10.6).

    Pure: it reads only the rows and q(w) = N(mean, factor factorᵀ), computes the
    optimal ξ_n of every row (PRML eq. 10.163) and returns the statistics the global
    step needs. The parallel kernel splits the block into fixed ``CHUNK_ROWS``-row
    chunks and the chunk partials are added here in chunk order, so the result does
    not depend on the number of numba threads (set by the caller, e.g. with
    ``fastvi._threads.thread_limits``).

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features), float64, C-contiguous, writable
    mean : ndarray of shape (D̃,)
        Mean of q over (w, b), the intercept last; D̃ = n_features + fit_intercept.
    factor : ndarray of shape (D̃, D̃)
        Upper-triangular U with U Uᵀ = S, the covariance of q.
    fit_intercept : bool
        Whether every row gets a trailing 1.
    grams : bool, default=True
        Accumulate G (and H). Without, only the two sums over ξ come back, for half
        the work: enough for the bound at q with optimal ξ.
    hessian : bool, default=False
        Also accumulate H, the curvature that the Newton proposal uses.
    hessian_stride : int, default=1
        H sums only the rows whose index in the whole data set is a multiple of
        ``hessian_stride`` (:meth:`LogisticBlockStats.scaled_hessian` scales it up).
    first_row : int, default=0
        Index of the block's first row in the whole data set, so that blocks of one
        data set pick the same Hessian rows as a single call over all of it.

    Returns
    -------
    stats : LogisticBlockStats
        Add the results of several blocks with ``+``. The targets do not enter: their
        statistic X̃ᵀ(t − 1/2) is fixed (:func:`logistic_target_stats`).
    """
    if hessian_stride < 1 or first_row < 0:
        raise ValueError(
            f"hessian_stride must be >= 1 and first_row >= 0; got {hessian_stride} "
            f"and {first_row}."
        )
    from .kernels import conjugate as kernels  # lazily: ``import fastvi`` compiles none

    G, H, c, gv = _jj_pass(
        kernels,
        X,
        np.ascontiguousarray(factor, dtype=np.float64),
        np.ascontiguousarray(mean, dtype=np.float64),
        bool(fit_intercept),
        bool(grams),
        bool(hessian),
        int(hessian_stride),
        int(first_row),
    )
    sums = c.sum(axis=0)
    with_h = grams and hessian
    n = int(X.shape[0])
    k = int(hessian_stride)
    return LogisticBlockStats(
        n,
        _symmetric_from_upper(G) if grams else None,
        _symmetric_from_upper(H) if with_h else None,
        float(sums[0]),
        float(sums[1]),
        (first_row + n + k - 1) // k - (first_row + k - 1) // k if with_h else 0,
        gv.sum(axis=0),
    )


def logistic_target_stats(X, s, *, fit_intercept):
    """h = X̃ᵀ s for one block of rows, with s = t − 1/2 (PRML eq. 10.157).

    Fixed during a fit (ξ does not enter), so it is computed once. Add the results
    of several blocks.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
    s : ndarray of shape (n_rows,)
    fit_intercept : bool

    Returns
    -------
    h : ndarray of shape (D̃,)
    """
    h = X.T @ s
    return np.append(h, s.sum()) if fit_intercept else h


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

        from .predictive import log1p_far

        x = np.asarray(x, dtype=float)
        scale = math.sqrt(self.b * (self.kappa + 1.0) / (self.a * self.kappa))
        df = 2.0 * self.a
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.asarray(student_t.logpdf(x, df, self.mu, scale))
            far = ~np.isfinite(out)
            if np.any(far):  # (x - mu)^2 overflowed: the density's log does not
                z = (x[far] - self.mu) / scale
                out[far] = (
                    gammaln(0.5 * (df + 1.0))
                    - gammaln(0.5 * df)
                    - 0.5 * math.log(df * math.pi)
                    - math.log(scale)
                    - 0.5 * (df + 1.0) * log1p_far(z * z, df, z[..., np.newaxis])
                )
        check_finite_prediction(
            "NormalGammaPosterior.predictive_logpdf",
            x,
            "the predictive log-densities",
            out,
        )
        return out[()]  # a number for a number


def _schema_history():
    """The fit-loop attributes of ``CAVIMixin`` (see :mod:`fastvi._schema`): every
    fit (and checkpoint) sets them; the bound is finite, or -inf before the first
    round (``max_iter=0``), and the bounds of the rounds are finite."""
    return {
        "converged_": _schema.Bool(required=True),
        "n_iter_": _schema.Int(0, required=True),
        "lower_bound_": _schema.Real(finite=True, minus_inf=True, required=True),
        "lower_bounds_": _schema.Floats(finite=True, required=True),
    }


def _schema_classes(count):
    """``classes_``: ``count`` labels (an array of any plain dtype, or of str)."""
    return _schema.Either(
        _schema.Array((count,), None), _schema.Names((count,)), required=True
    )


def _set_attrs(est, names, values):
    """Set the attributes ``names`` (a space-separated string) of ``est``."""
    est.__dict__.update(zip(names.split(), values, strict=True))


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

    _parameter_constraints: dict = _schema.int64_params(
        {
            "mu0": [Interval(Real, None, None, closed="neither")],  # finite
            "lambda0": [Interval(Real, 0.0, None, closed="neither")],
            "a0": [Interval(Real, 0.0, None, closed="neither")],
            "b0": [Interval(Real, 0.0, None, closed="neither")],
            **CAVI_PARAMETER_CONSTRAINTS,
        }
    )

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

    def _fitted_schema(self, attrs):
        """The fitted attributes a saved model may hold (see :mod:`fastvi._schema`).

        A checkpoint written during the fit has no ``exact_posterior_`` yet.
        """
        S = _schema
        positive = S.Real(positive=True)
        return {
            "n_features_in_": S.Int(1, dim=1, required=True),
            "tau_shape_": S.Real(positive=True, required=True),
            "tau_rate_": S.Real(positive=True, required=True),
            "mu_mean_": S.Real(finite=True, required=True),
            "mu_precision_": S.Real(positive=True, required=True),
            "mu_var_": S.Real(positive=True, required=True),
            "tau_mean_": S.Real(positive=True, required=True),
            "exact_posterior_": S.Record(
                NormalGammaPosterior,
                {
                    "mu": S.Real(finite=True),
                    "kappa": positive,
                    "a": positive,
                    "b": positive,
                    "n_samples": S.Int(1),
                    "log_evidence": S.Real(finite=True),
                },
            ),
            **_schema_history(),
        }

    def fit(self, X, y=None):
        """Fit q(μ) q(τ) by CAVI and compute the exact posterior.

        Parameters
        ----------
        X : array-like of shape (n_samples,) or (n_samples, 1), or a row-block source
            A source such as :class:`fastvi.batch.io.NpyRows` (a float64 ``.npy``
            file) fits out of core, a dask array on its workers (:mod:`fastvi.rows`).
        y : Ignored

        Returns
        -------
        self : UnivariateGaussian
        """
        self._validate_params()
        with all_or_nothing(self):
            rows = self._rows(X)
            n, total, largest = rows.map_reduce(_column_sum)
            check_squares_overflow("X", largest.value, n)
            xbar = float(total / n)
            spread = float(rows.map_reduce(_column_spread, shared=(xbar,)))
            check_finite_statistics("X", xbar, spread)
            self._check_prior_mean(n, xbar)
            self.n_features_in_ = 1
            self._cavi_fit((n, xbar, spread), None)
            self.exact_posterior_ = self._exact(n, xbar, spread)
        return self

    def _check_prior_mean(self, n, xbar):
        """Refuse a ``mu0`` so far from the data that the fit overflows: it enters as
        lambda0 mu0 and as (x̄ − mu0)² summed over n terms (with the factor 4 of
        :func:`fastvi._numerics.check_squares_overflow`) and times lambda0 n."""
        with np.errstate(over="ignore", invalid="ignore"):
            sq = np.float64(xbar - self.mu0) ** 2
            squares = 4.0 * (n + 1) * sq
            scaled = (2.0 * self.lambda0 * np.float64(self.mu0), self.lambda0 * n * sq)
        where = (
            f"mu0={self.mu0!r} is too far from the data (their mean is {xbar:.3g}) "
            "for float64"
        )
        remedy = (
            "Give mu0 on the scale of X (rescale X and mu0 together, for example "
            "standardize X and transform mu0 the same way)"
        )
        if not np.isfinite(squares):
            raise ValueError(
                f"{where}: (mean(X) - mu0)^2, summed over {n} terms, overflows. "
                f"{remedy}."
            )
        if not np.all(np.isfinite(scaled)):
            raise ValueError(
                f"{where} with lambda0={self.lambda0!r}: lambda0 * mu0 and lambda0 "
                f"* n * (mean(X) - mu0)^2 overflow. {remedy}, or use a smaller "
                "lambda0."
            )

    @staticmethod
    def _rows(X):
        """One column of rows, wherever they are."""
        rows = source_rows(X, ensure_2d=False)
        if rows is None:
            x = check_array(X, ensure_2d=False, dtype=np.float64, input_name="X")
            rows = ArrayRows(np.require(x.reshape(len(x), -1), requirements="W"))
        if rows.shape[1] != 1:
            raise ValueError(
                "UnivariateGaussian needs X of shape (n_samples,) or "
                f"(n_samples, 1); got shape {rows.shape}."
            )
        if rows.shape[0] < 1:
            raise ValueError(
                "Found array with 0 sample(s); a minimum of 1 is required."
            )
        rows.check_finite()
        return rows

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
        self._cavi_set_state((float(mu), float(prec), float(a), float(b)))
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

    _STATE = "mu_mean_ mu_precision_ tau_shape_ tau_rate_"

    def _cavi_get_state(self):
        return attrgetter(*self._STATE.split())(self)

    def _cavi_set_state(self, state):
        _set_attrs(self, self._STATE, state)
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
        args = (self.mu_mean_, self.mu_var_, self.tau_shape_, self.tau_rate_)
        return self._rows(X).map_rows(_gaussian_log_density, args)

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
        return finite_mean(
            "UnivariateGaussian.score",
            self.score_samples(X),
            "the predictive log-densities",
        )

    # ------------------------------------------------------ posterior draws
    def sample_posterior(self, n_draws, random_state=None):
        """Draws of (μ, τ) from q(μ) q(τ).

        Parameters
        ----------
        n_draws : int
        random_state : int, Generator, RandomState or None, default=None

        Returns
        -------
        draws : dict
            ``mu_mean_`` (n_draws,): μ ~ N(``mu_mean_``, 1 / ``mu_precision_``);
            ``tau_mean_`` (n_draws,): τ ~ Gamma(``tau_shape_``, rate ``tau_rate_``).
        """
        from .posterior import check_n_draws, generator, univariate_draws

        check_is_fitted(self)
        return univariate_draws(self, check_n_draws(n_draws), generator(random_state))

    def to_arviz(self, n_draws=1000, random_state=None):
        """:meth:`sample_posterior` as ArviZ data (variables ``mu_mean`` and
        ``tau_mean``), the bound per round as ``sample_stats.lower_bound``. Needs
        the optional dependency arviz (``pip install 'fastvi[arviz]'``)."""
        from .posterior import cavi_to_arviz

        return cavi_to_arviz(self, n_draws, random_state)


def _column_sum(block, start):
    """Block statistic: rows, Σ x and max |x| of one column."""
    with np.errstate(over="ignore"):  # too large: refused with a clear message
        return block.shape[0], float(block.sum()), Max(max_abs(block))


def _column_spread(block, start, mean):
    """Block statistic: Σ (x − mean)²."""
    return float(np.sum((block - mean) ** 2))


def _gaussian_log_density(x, mu_mean, mu_var, tau_shape, tau_rate):
    """UnivariateGaussian's predictive log density of every row (score_samples)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(48)
    log_w = np.log(weights / math.sqrt(2.0 * math.pi))
    lower = nodes < 0
    tau = np.empty_like(nodes)
    tau[lower] = gammaincinv(tau_shape, ndtr(nodes[lower])) / tau_rate
    tau[~lower] = gammainccinv(tau_shape, ndtr(-nodes[~lower])) / tau_rate
    var = 1.0 / tau + mu_var
    with np.errstate(over="ignore", invalid="ignore"):
        dev = (x[:, :1] - mu_mean) ** 2
        log_norm = -0.5 * (_LOG_2PI + np.log(var) + dev / var)
    out = logsumexp(log_norm + log_w, axis=1)
    check_finite_prediction(
        "UnivariateGaussian.score_samples", x, "the predictive log-densities", out
    )
    return out


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
        Threads for the one pass over the data (the statistics XᵀX, Xᵀy, yᵀy);
        None: all. Results are bitwise identical for every value. The CAVI rounds
        work on D x D matrices only.

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
    XᵀX − N x̄ x̄ᵀ). E‖y − Xw‖² is evaluated as sums of squares (see
    ``_augmented_root``), so the bound does not fall beyond a few ulps when the noise
    is small; with a numerically singular design (cond(X) ≳ 1e6) it can (README, "The
    CAVI engine"). ``n_init`` is fixed to 1: the initialization (E[α] = 1/var(y),
    E[λ] = 1, as BayesianRidge) is deterministic.

    ``predict(X, return_std=True)`` returns the mean and standard deviation of the
    predictive distribution under q: var = xᵀ S x + E[1/α], with x centred by
    ``X_offset_`` as BayesianRidge does (the intercept's uncertainty is ignored).
    """

    n_init = 1

    _parameter_constraints: dict = _schema.int64_params(
        {
            "ard": ["boolean"],
            "fit_intercept": ["boolean"],
            "alpha_1": [Interval(Real, 0.0, None, closed="neither")],
            "alpha_2": [Interval(Real, 0.0, None, closed="neither")],
            "lambda_1": [Interval(Real, 0.0, None, closed="neither")],
            "lambda_2": [Interval(Real, 0.0, None, closed="neither")],
            **CAVI_PARAMETER_CONSTRAINTS,
            "n_jobs": [None, Integral],
        }
    )

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

    def _fitted_schema(self, attrs):
        """The fitted attributes a saved model may hold (see :mod:`fastvi._schema`).

        D = ``n_features_in_``; with ``ard`` the q(λ) parameters are per feature.
        ``sigma_`` is positive definite (draws factor it), and ``alpha_shape_`` =
        alpha_1 + N/2 with N >= 2 exceeds 1 (E[1/α] = rate / (shape - 1)).
        """
        S = _schema
        D = "D"
        if self.ard:
            lam = [S.Array((D,), positive=True, required=True) for _ in range(3)]
        else:
            lam = [S.Real(positive=True, required=True) for _ in range(3)]
        return {
            "n_features_in_": S.Int(1, dim=D, required=True),
            "feature_names_in_": S.Names((D,)),
            "X_offset_": S.Array((D,), required=True),
            "y_offset_": S.Real(finite=True, required=True),
            "alpha_shape_": S.Real(above=1, required=True),
            "alpha_rate_": S.Real(positive=True, required=True),
            "lambda_shape_": lam[0],
            "lambda_rate_": lam[1],
            "coef_": S.Array((D,), required=True),
            "sigma_": S.Array((D, D), positive_definite=True, required=True),
            "_log_det_sigma": S.Real(finite=True, required=True),
            "alpha_": S.Real(positive=True, required=True),
            "lambda_": lam[2],
            "intercept_": S.Real(finite=True, required=True),
            **_schema_history(),
        }

    def fit(self, X, y):
        """Fit q(w) q(α) q(λ) by CAVI.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a row-block source
            A source such as :class:`fastvi.batch.io.NpyRows` (a float64 ``.npy``
            file) fits out of core, a dask array on its workers (:mod:`fastvi.rows`).
        y : array-like of shape (n_samples,)

        Returns
        -------
        self : VBLinearRegression
        """
        self._validate_params()
        with all_or_nothing(self):
            rows = fit_rows(self, X, y, y_numeric=True)
            if self.warm_start and hasattr(self, "converged_"):
                if self.coef_.shape[0] != rows.shape[1]:
                    del self.converged_  # a new problem: start afresh
            self._cavi_fit(self._statistics(rows), None)
        return self

    def _statistics(self, rows):
        """Centred XᵀX, Xᵀy, yᵀy (:func:`linear_block_stats`) and the offsets: the
        moments in one pass, the centred statistics in a second."""
        n, d = rows.shape
        with thread_limits(self.n_jobs):
            x_sum, y_sum, y_min, y_max, x_big = rows.map_reduce(
                _linear_moments, n_jobs=self.n_jobs
            )
            y_min, y_max = -y_min.value, y_max.value
            check_squares_overflow("X", x_big.value, n * (d + 1))
            check_squares_overflow("y", max(-y_min, y_max), n * (d + 1))
            if self.fit_intercept:
                x_off, y_off = x_sum / n, float(y_sum / n)
            else:
                x_off, y_off = np.zeros(d), 0.0
            stats = rows.map_reduce(
                _linear_stats, shared=(x_off, y_off), n_jobs=self.n_jobs
            )
        # the target's spread: its range with an intercept, else its largest |y|
        y_range = y_max - y_min if self.fit_intercept else max(-y_min, y_max)
        check_finite_statistics("X and y", stats.gram, stats.xty, stats.yty)
        if y_range == 0.0:
            raise ValueError(
                "The target y is constant"
                + (" (all zero)" if not self.fit_intercept else "")
                + "; VBLinearRegression needs a target that varies."
            )
        if stats.yty < _SMALLEST_SUM_OF_SQUARES:
            # y varies, but by so little that (y - mean)^2 underflows: the noise
            # precision 1 / var(y) would overflow
            what = "varies only by" if self.fit_intercept else "is at most"
            raise ValueError(
                f"The target y {what} {y_range:.3g}: its squares underflow float64, "
                "so the noise precision cannot be represented. Rescale y (for "
                "example, standardize it)."
            )
        self.X_offset_, self.y_offset_ = x_off, y_off
        gram = 0.5 * (stats.gram + stats.gram.T)
        # var(y): the centred sum of squares, or from the raw moments without centring
        mean = y_sum / n
        var_y = stats.yty / n if self.fit_intercept else stats.yty / n - mean * mean
        root = _augmented_root(gram, stats.xty, stats.yty)
        # the rounds read XᵀX, Xᵀy, yᵀy from the root, so that the bound's residual
        # ‖R [m; −1]‖² and the updates describe one positive semi-definite problem
        gram = root[:, :d].T @ root[:, :d]
        gram = 0.5 * (gram + gram.T)
        xty = root[:, :d].T @ root[:, d]
        return n, gram, xty, root, float(max(var_y, 0.0))

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
        n, gram, xty, root, _ = data
        d = gram.shape[0]
        e_alpha = self.alpha_shape_ / self.alpha_rate_
        e_lambda = self.lambda_shape_ / self.lambda_rate_
        # q(w): S⁻¹ = E[α] XᵀX + diag(E[λ]), m = E[α] S Xᵀy
        precision = e_alpha * gram
        precision[np.diag_indices(d)] += e_lambda
        sigma, factor, log_det = _chol_inverse(precision)
        # m = E[α] L (Lᵀ Xᵀy) with S = L Lᵀ: two triangular products, accurate where
        # S @ Xᵀy loses the small components of m to the rounding of S's large ones
        coef = e_alpha * (factor @ (factor.T @ xty))
        # E‖y − Xw‖² = ‖y − Xm‖² + tr(XᵀX S), the first as the sum of squares
        # ‖R [m; −1]‖² (see _augmented_root), the second from S (E[α] XᵀX + diag E[λ])
        # = I, free of the cancellation of Σ (XᵀX)_ij S_ij with correlated features
        resid = root @ np.append(coef, -1.0)
        trace = max(d - float(np.sum(e_lambda * np.diag(sigma))), 0.0) / e_alpha
        e_sq_resid = float(resid @ resid) + trace
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
        self._cavi_set_state(
            (coef, sigma, log_det, a_alpha, b_alpha, a_lambda, b_lambda)
        )
        return self._bound(n, e_sq_resid, e_w2)

    def _bound(self, n, e_sq_resid, e_w2):
        d = self.coef_.shape[0]
        e_alpha, e_log_alpha = _gamma_moments(self.alpha_shape_, self.alpha_rate_)
        e_lambda, e_log_lambda = _gamma_moments(self.lambda_shape_, self.lambda_rate_)
        loglik = 0.5 * n * (e_log_alpha - _LOG_2PI) - 0.5 * e_alpha * e_sq_resid
        if self.ard:
            sum_log_lambda, lambda_w2 = np.sum(e_log_lambda), np.sum(e_lambda * e_w2)
        else:
            sum_log_lambda, lambda_w2 = d * e_log_lambda, e_lambda * np.sum(e_w2)
        log_prior_w = 0.5 * (sum_log_lambda - d * _LOG_2PI - lambda_w2)
        # a sum over the ARD precisions (one term when shared)
        log_prior_lambda = np.sum(
            _gamma_log_prior(self.lambda_1, self.lambda_2, e_lambda, e_log_lambda)
        )
        entropy_lambda = np.sum(_gamma_entropy(self.lambda_shape_, self.lambda_rate_))
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
        # after every round: the model of any round is complete (a checkpoint)
        self.alpha_ = float(self.alpha_shape_ / self.alpha_rate_)
        lam = self.lambda_shape_ / self.lambda_rate_
        self.lambda_ = lam if self.ard else float(lam)
        offset = self.y_offset_ - self.X_offset_ @ self.coef_
        self.intercept_ = float(offset) if self.fit_intercept else 0.0

    _STATE = (
        "coef_ sigma_ _log_det_sigma alpha_shape_ alpha_rate_ lambda_shape_ "
        "lambda_rate_"
    )

    def _cavi_get_state(self):
        return attrgetter(*self._STATE.split())(self)

    def _cavi_set_state(self, state):
        _set_attrs(self, self._STATE, state)
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
        # E[1/α] = rate / (shape - 1) under q(α) (shape > 1 since N >= 2)
        noise = self.alpha_rate_ / (self.alpha_shape_ - 1.0) if return_std else None
        args = (self.coef_, self.intercept_, self.X_offset_, self.sigma_, noise)
        out = predict_rows(self, X).map_rows(
            _linear_predict, args, n_columns=2 if return_std else None
        )
        return (out[:, 0], out[:, 1]) if return_std else out

    def score(self, X, y, sample_weight=None):
        """R² of :meth:`predict` (scikit-learn's ``RegressorMixin.score``), refused
        where the squared residuals overflow (R² would be -inf).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        score : float
        """
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            value = super().score(X, y, sample_weight=sample_weight)
        check_finite_prediction(
            "VBLinearRegression.score",
            None,
            "the squared residuals of R^2",
            value,
            name="X or y",
        )
        return value

    # ---------------------------------------- posterior predictive and draws
    def predict_interval(self, X, level=0.9):
        """Central interval of the predictive distribution with α integrated out.

        The predictive under q(w) q(α) is N(y | m̃, x̃ᵀ S x̃ + 1/α) averaged over
        q(α) = Gamma(``alpha_shape_``, ``alpha_rate_``): a Student-t with
        2 ``alpha_shape_`` degrees of freedom where x̃ᵀ S x̃ = 0, between that and a
        Gaussian elsewhere (see :mod:`fastvi.predictive`); its sd is the one
        :meth:`predict` returns with ``return_std=True``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        level : float in (0, 1), default=0.9
            Probability the interval holds under the predictive.

        Returns
        -------
        lower, upper : ndarray of shape (n_samples,)
        """
        from .predictive import linear_interval

        check_is_fitted(self)
        if not (isinstance(level, Real) and 0.0 < level < 1.0):
            raise ValueError(f"level must be a number in (0, 1), got {level!r}.")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            lower, upper = linear_interval(self, X, float(level))
        check_finite_prediction(
            "VBLinearRegression.predict_interval",
            X,
            "the predictive means and variances (x^T S x)",
            lower,
            upper,
        )
        return lower, upper

    def predictive_log_density(self, X, y):
        """log p(y_i | x_i, training data) under q, α integrated out (see
        :meth:`predict_interval`), shape (n_samples,)."""
        from .predictive import linear_log_density

        check_is_fitted(self)
        y = numeric_target(self, y)
        X, y = validate_data(self, X, y, reset=False, dtype=np.float64, y_numeric=True)
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            out = linear_log_density(self, X, y)
        check_finite_prediction(
            "VBLinearRegression.predictive_log_density",
            X,
            "the predictive variances (x^T S x)",
            out,
        )
        return out

    def sample_posterior(self, n_draws, random_state=None):
        """Draws of the parameters from q(w) q(α) q(λ).

        Parameters
        ----------
        n_draws : int
        random_state : int, Generator, RandomState or None, default=None

        Returns
        -------
        draws : dict
            ``coef_`` (n_draws, D), ``intercept_`` (n_draws,) (``y_offset_ -
            X_offset_ @ coef`` per draw), ``alpha_`` (n_draws,), ``lambda_``
            (n_draws,) or (n_draws, D) with ``ard``
            (:func:`fastvi.posterior.linear_draws`).
        """
        from .posterior import check_n_draws, generator, linear_draws

        check_is_fitted(self)
        return linear_draws(self, check_n_draws(n_draws), generator(random_state))

    def to_arviz(self, n_draws=1000, random_state=None):
        """:meth:`sample_posterior` as ArviZ data, the bound per round as
        ``sample_stats.lower_bound``. Needs the optional dependency arviz
        (``pip install 'fastvi[arviz]'``)."""
        from .posterior import cavi_to_arviz

        return cavi_to_arviz(self, n_draws, random_state)

    def loo(self, X, y, n_draws=2000, random_state=None):
        """PSIS-LOO expected log predictive density on the training data X, y.

        Parameters
        ----------
        X, y : the data the model was fitted to
        n_draws : int >= 20, default=2000
            Draws of q (:meth:`sample_posterior`).
        random_state : int, Generator, RandomState or None, default=None

        Returns
        -------
        result : fastvi.loo.LOOResult
            ``elpd_loo``, ``se``, ``p_loo``, ``pointwise`` and ``khat`` per
            observation (:mod:`fastvi.loo`); a PSISWarning names the observations
            with k-hat above 0.7.
        """
        from .loo import linear_loglik, loo_from_loglik
        from .posterior import check_n_draws

        check_is_fitted(self)
        n = check_n_draws(n_draws, minimum=20)
        y = numeric_target(self, y)
        X, y = validate_data(self, X, y, reset=False, dtype=np.float64, y_numeric=True)
        draws = self.sample_posterior(n, random_state)
        return loo_from_loglik(linear_loglik(self, X, y, draws))


# ========================================================== VBLogisticRegression
def _linear_moments(block, start):
    """Block statistic: Σ x, Σ y, −min y, max y (as ``Max``) and max |x|."""
    X, y = block
    with np.errstate(over="ignore"):  # too large: refused with a clear message
        return (
            X.sum(axis=0),
            float(y.sum()),
            Max(-y.min()),
            Max(y.max()),
            Max(max_abs(X)),
        )


def _linear_stats(block, start, x_offset, y_offset):
    """Block statistic: :func:`linear_block_stats` of the block."""
    return linear_block_stats(*block, x_offset, y_offset)


def _linear_predict(X, coef, intercept, offset, sigma, noise):
    """Predictive mean, or (mean, standard deviation) per row with ``noise``."""
    with np.errstate(over="ignore", invalid="ignore"):  # checked below
        y_mean = X @ coef + intercept
        if noise is None:
            check_finite_prediction(
                "VBLinearRegression.predict", X, "the predicted means", y_mean
            )
            return y_mean
        Xc = X - offset
        var_w = np.einsum("ij,jk,ik->i", Xc, sigma, Xc, optimize=True)
    check_finite_prediction(
        "VBLinearRegression.predict",
        X,
        "the predictive means and variances (x^T S x)",
        y_mean,
        var_w,
    )
    return np.column_stack([y_mean, np.sqrt(np.maximum(var_w, 0.0) + noise)])


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
        data set) is below ``tol``. An absolute change in nats measures the distance
        to the optimum in posterior standard deviations whatever N is (near the
        optimum the bound falls by about half the squared distance in that unit), so
        the same ``tol`` means the same accuracy at N = 1e3 and 1e7; a relative
        tolerance would loosen the fit as N grows. Rounds converge quadratically, so
        a tighter ``tol`` costs about one more round.
    max_iter : int, default=200
        Maximum number of CAVI rounds (passes over the data; a rejected proposal
        costs one more pass in its round).
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
    The bound (PRML eq. 10.164 in full, plus q(λ)'s terms) depends on the local
    parameters ξ_n and on q. For fixed q the optimal ξ_n² = x̃_nᵀ (S + m mᵀ) x̃_n
    (eq. 10.163); for fixed ξ the optimal q(w) has S⁻¹ = diag(E[λ], …, E[λ],
    intercept_precision) + G with G = Σ 2 λ(ξ_n) x̃_n x̃_nᵀ and m = S h,
    h = Σ (t_n − 1/2) x̃_n (eqs. 10.157, 10.158), and q(λ) = Gamma(λ1 + D/2,
    λ2 + E[wᵀw]/2) (Bishop & Svensén 2003; Drugowitsch 2013 eqs. 20–22). Plain
    coordinate ascent alternates the two and converges linearly and slowly (the bound
    curvature 2 λ(ξ) is up to twice the logistic one: ~30 rounds on the benchmark
    problem). Each round here is instead:

    1. One parallel pass over the rows (:func:`logistic_block_stats`) at the
       *proposal* q' of the previous round: ξ at q', G, H and the ξ terms, which give
       the bound at q' with its optimal ξ, L*(q'). If L*(q') is at least the last
       reported bound, q' is accepted; otherwise the pass is repeated at the last
       coordinate-ascent factors (a rejected proposal costs a pass, never the bound).
    2. The coordinate-ascent update above from the accepted point's ξ; its bound is
       what the round reports, so the bound never falls.
    3. A new proposal: a Newton step in m of the bound with ξ optimized out,
       L*(m) = Σ −log(2 cosh(ξ_n/2)) + mᵀh − mᵀ P m / 2 + …, whose gradient is
       h − (G + P) m and whose curvature is H + P with H = Σ [2 λ(ξ_n)(1 − r_n) +
       σ'(ξ_n) r_n] x̃_n x̃_nᵀ, r_n = (mᵀx̃_n)² / ξ_n² (P the prior precision); the
       covariance is the new S. Near the optimum this converges quadratically: 4–7
       passes in place of ~30. With many rows per coefficient H is summed over every
       k-th row only (k <= 4, at least 1000 rows per coefficient) and scaled up: a
       subsampled Newton step (Byrd et al. 2011), which saves most of H's cost and,
       with an error of a few percent in the curvature, hardly slows convergence.

    When the Newton decrement gᵀ(H + P)⁻¹g/2 of the pending proposal is below ``tol``
    the round first evaluates L*(q') alone — it needs ξ only, not G, because with
    optimal ξ the terms λ(ξ_n) ξ_n² cancel, leaving Σ [log σ(ξ_n) − ξ_n/2] — in a
    half-price pass; if q' gains less than ``tol`` it becomes the fitted q with that
    exact bound and the fit ends, otherwise the round goes on as above.

    The first round starts from ξ ≈ 0, where it is the first IRLS step of the MAP
    from w = 0. With at least ``WARM_MIN_ROWS`` rows (and 40 per coefficient) the
    rounds first run on every k-th row (k = 16 to 64, about 640 rows per coefficient)
    with the likelihood scaled to N rows, and the full data start from that fit,
    about sqrt(k) posterior standard deviations from their optimum. The subsample
    rounds happen before the first reported round, and the fit reaches the same
    fixed point (to ``tol``) with or without them. The first full-data round then
    costs half a pass: at the subsample's factors it needs only the ξ sums (the
    exact bound L*) and G m = Σ 2 λ(ξ_n) (mᵀx̃_n) x̃_n, which gives the gradient
    without G, while the Newton proposal borrows the subsample's last H scaled to
    N rows. Then come ~2 full passes and a half-price check.

    ``predict_proba`` uses the probit approximation of the predictive,
    σ(κ(s²) μ) with μ = E[wᵀx̃], s² = x̃ᵀ S x̃ and κ(s²) = (1 + π s²/8)^(−1/2)
    (PRML eq. 4.155). ``decision_function`` returns the log-odds of that
    probability, κ(s²) μ, so that it ranks samples as ``predict_proba`` does; it is
    therefore not exactly ``X @ coef_.T + intercept_``. For one-vs-rest the class
    probabilities are normalized to sum to 1.
    ``n_init`` is fixed to 1: the initialization (m = 0, S = 1e-10 I, E[λ] = 1,
    then the subsample rounds) is deterministic.
    """

    n_init = 1

    _parameter_constraints: dict = _schema.int64_params(
        {
            "fit_intercept": ["boolean"],
            "lambda_1": [Interval(Real, 0.0, None, closed="neither")],
            "lambda_2": [Interval(Real, 0.0, None, closed="neither")],
            "intercept_precision": [Interval(Real, 0.0, None, closed="neither")],
            **CAVI_PARAMETER_CONSTRAINTS,
            "n_jobs": [None, Integral],
        }
    )

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

    def _fitted_schema(self, attrs):
        """The fitted attributes a saved model may hold (see :mod:`fastvi._schema`).

        D = ``n_features_in_``, P = D + ``fit_intercept`` coefficients. A binary
        model keeps its factors (``_mean``, ...); with C > 2 classes the one-vs-rest
        model (it has ``estimators_``) stacks C binary models' results. Every
        variant has all of its attributes after a fit (and in a checkpoint). The
        covariances of q(w, b) are positive definite (draws factor them) and their
        factors (``_factor``, passed to the ξ kernel) upper triangular with a
        positive diagonal; the bound is finite, or -inf before the first round.
        """
        S = _schema
        D = "D"
        P = (D, int(bool(self.fit_intercept)))
        common = {
            "n_features_in_": S.Int(1, dim=D, required=True),
            "feature_names_in_": S.Names((D,)),
            "converged_": S.Bool(required=True),
        }
        if "estimators_" in attrs:
            C = "C"
            return {
                **common,
                "estimators_": S.Estimators(type(self), C, D, required=True),
                "coef_": S.Array((C, D), required=True),
                "intercept_": S.Array((C,), required=True),
                "sigma_": S.Array((C, P, P), positive_definite=True, required=True),
                "lambda_shape_": S.Array((C,), positive=True, required=True),
                "lambda_rate_": S.Array((C,), positive=True, required=True),
                "lambda_": S.Array((C,), positive=True, required=True),
                "lower_bound_": S.Array((C,), minus_inf=True, required=True),
                "lower_bounds_": S.Floats(nested=True, finite=True, required=True),
                "n_iter_": S.Array((C,), ("i8", "i4"), required=True),
                "classes_": _schema_classes(C),
            }
        cov = S.Array((P, P), positive_definite=True, required=True)
        factor = S.Array(
            (P, P), positive_diagonal=True, triangular="upper", required=True
        )
        return {
            **common,
            "_mean": S.Array((P,), required=True),
            "_cov": cov,
            "_factor": factor,
            "_log_det": S.Real(finite=True, required=True),
            "lambda_shape_": S.Real(positive=True, required=True),
            "lambda_rate_": S.Real(positive=True, required=True),
            # the pending Newton proposal: q's parameters, as the factors above
            "_proposal": S.NoneOr(
                S.Seq(
                    (
                        S.Array((P,)),
                        S.Array((P, P), positive_definite=True),
                        S.Array((P, P), positive_diagonal=True, triangular="upper"),
                        S.Real(finite=True),
                        S.Real(positive=True),
                        S.Real(positive=True),
                    )
                ),
                required=True,
            ),
            "_predicted_gain": S.Real(required=True),
            "_bound": S.Real(required=True),
            "_warm_hessian": S.NoneOr(S.Array((P, P)), required=True),
            "coef_": S.Array((1, D), required=True),
            "intercept_": S.Array((1,), required=True),
            "sigma_": cov,
            "lambda_": S.Real(positive=True, required=True),
            "n_iter_": S.Int(0, required=True),
            "lower_bound_": S.Real(finite=True, minus_inf=True, required=True),
            "lower_bounds_": S.Floats(finite=True, required=True),
            "classes_": _schema_classes(2),
        }

    # ------------------------------------------------------------------ public API
    @announces("conjugate")
    def fit(self, X, y):
        """Fit the posterior by CAVI (one-vs-rest for more than two classes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a row-block source
            A source such as :class:`fastvi.batch.io.NpyRows` (a float64 ``.npy``
            file) fits out of core, a dask array on its workers (:mod:`fastvi.rows`).
        y : array-like of shape (n_samples,)
            Labels of any kind (at least two distinct values).

        Returns
        -------
        self : VBLogisticRegression
        """
        self._validate_params()
        with all_or_nothing(self):
            rows = fit_rows(self, X, y)
            classes = rows.unique_targets()
            check_classification_targets(classes)
            if classes.shape[0] < 2:
                raise ValueError(
                    "VBLogisticRegression needs samples of at least 2 classes in the "
                    f"data, but the data contains only one class: {classes[0]!r}."
                )
            warm = (
                self.warm_start
                and hasattr(self, "classes_")
                and np.array_equal(self.classes_, classes)
                and self.coef_.shape[1] == rows.shape[1]
                # q's width: the features, and the intercept if the last fit had one
                # (a fit_intercept switched since then is a new problem)
                and self.sigma_.shape[-1] == rows.shape[1] + int(self.fit_intercept)
            )
            # the largest |x| (so that the squares cannot overflow), and, from the
            # same pass, the target statistic of every class
            h, largest = rows.map_reduce(
                _target_stats, shared=(classes, self.fit_intercept)
            )
            n, d = rows.shape
            check_squares_overflow("X", largest.value, n * (d + 1))
            # the CAVI data of each class k against the rest: (rows, k, its h);
            # classes_ set first: the model after any round is complete (a checkpoint)
            problems = [(rows, c, hk) for c, hk in zip(classes, h)]
            self.classes_ = classes
            with thread_limits(self.n_jobs):
                if classes.shape[0] == 2:
                    if not warm and hasattr(self, "converged_"):
                        del self.converged_
                    self.__dict__.pop("estimators_", None)
                    self._cavi_fit(problems[1], None)
                else:
                    self._fit_ovr(problems, warm)
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
        return self._rows_out(X, "decision_function", self.coef_.shape[0], float)

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
        return self._rows_out(X, "predict_proba", len(self.classes_), float)

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
        check_is_fitted(self)
        return self._rows_out(X, "predict", 1, self.classes_.dtype)

    # -------------------------------------------------------------- internals
    def _rows_out(self, X, what, n_columns, dtype):
        """``what`` of every row (:func:`_logistic_rows`); one column comes back 1-D."""
        sigmas = self.sigma_ if self.sigma_.ndim == 3 else self.sigma_[np.newaxis]
        args = (what, self.coef_, self.intercept_, sigmas, self.classes_)
        n_columns = None if n_columns == 1 else n_columns
        return predict_rows(self, X).map_rows(_logistic_rows, args, n_columns, dtype)

    def _fit_ovr(self, problems, warm):
        if warm and hasattr(self, "estimators_"):
            estimators = self.estimators_
            for est in estimators:
                est.set_params(**self.get_params())
        else:
            estimators = [VBLogisticRegression(**self.get_params()) for _ in problems]
        for est, problem in zip(estimators, problems):
            est.n_features_in_ = self.n_features_in_
            est.classes_ = np.array([0, 1])
            est._cavi_fit(problem, None)
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

    # q(w, b) q(λ) travels as one tuple: (mean, cov, upper factor of cov, log det cov,
    # shape, rate)
    _FACTORS = "_mean _cov _factor _log_det lambda_shape_ lambda_rate_"

    def _factors(self):
        return attrgetter(*self._FACTORS.split())(self)

    def _set_factors(self, q):
        _set_attrs(self, self._FACTORS, q)

    def _local(self, rows, q, scale, grams=True):
        """The pass at the factors ``q``; statistics multiplied by ``scale``."""
        per_stride = HESSIAN_ROWS_PER_COEF * q[0].shape[0]  # see the constant
        stride = int(min(max(rows.shape[0] // per_stride, 1), HESSIAN_MAX_STRIDE))
        stats = rows.map_reduce(
            _logistic_stats,
            shared=(q[0], q[2], self.fit_intercept, grams, stride),
            n_jobs=self.n_jobs,
        )
        if scale != 1.0:  # the sums scaled, not the row counts
            stats = stats._make(
                v if v is None or k in ("n_samples", "hessian_rows") else scale * v
                for k, v in stats._asdict().items()
            )
        return stats

    def _round(self, rows, h, scale=1.0):
        """One safeguarded round (see Notes).

        Returns the bound at the new factors and the (scaled) curvature H the round's
        proposal used, or None when the round made no Newton step of its own.
        """
        if getattr(self, "_warm_hessian", None) is not None:
            return self._first_full_round(rows, h), None
        current = self._factors()
        proposal = self._proposal
        stats = None
        if proposal is not None and self._predicted_gain < self.tol:
            # Probably the last round: check the proposal at half price first (no G)
            check = self._local(rows, proposal, scale, grams=False)
            gain = self._collapsed_bound(check, h, proposal) - self._bound
            if 0.0 <= gain < self.tol:
                # converged: the proposal, with its exact bound, ends the fit
                self._set_factors(proposal)
                self._proposal, self._predicted_gain = None, np.inf
                self._bound += gain
                return self._bound, None
            if gain < 0.0:
                proposal = None
        if proposal is not None:
            stats = self._local(rows, proposal, scale)
            if self._bound_at(stats, h, proposal) >= self._bound:
                current = proposal  # accepted: it beats the last bound
            else:
                stats = None
        if stats is None:
            stats = self._local(rows, current, scale)
        new = self._update(stats, h, current)
        bound = self._bound_at(stats, h, new)
        hessian = stats.scaled_hessian()
        self._proposal, self._predicted_gain = self._newton_proposal(
            stats, h, current, new, hessian
        )
        self._set_factors(new)
        self._bound = bound
        return bound, hessian

    def _first_full_round(self, rows, h):
        """The first full-data round after the subsample start, at half price (class
        Notes); the factors stay q, so its coordinate update is the next round's."""
        hessian, self._warm_hessian = self._warm_hessian, None
        q = self._factors()
        stats = self._local(rows, q, 1.0, grams=False)
        self._bound = self._collapsed_bound(stats, h, q)
        self._proposal, self._predicted_gain = self._newton_proposal(
            stats, h, q, q, hessian=hessian
        )
        return self._bound

    def _prior_diagonal(self, q):
        """diag of the prior precision of (w, b) under q(λ): E[λ], …, E[λ], p0."""
        prior = np.full(q[0].shape[0], q[4] / q[5])
        if self.fit_intercept:
            prior[-1] = self.intercept_precision
        return prior

    def _update(self, stats, h, q):
        """CAVI for fixed ξ: q(w) then q(λ) (PRML eqs. 10.157, 10.158; Drugowitsch
        2013 eq. 22), from the ξ of the pass at ``q``."""
        d = q[0].shape[0] - int(self.fit_intercept)
        precision = stats.gram.copy()
        precision[np.diag_indices_from(precision)] += self._prior_diagonal(q)
        cov, factor, log_det = _chol_inverse(precision)
        mean = cov @ h
        e_ww = float(mean[:d] @ mean[:d] + np.trace(cov[:d, :d]))
        a = self.lambda_1 + 0.5 * d
        b = self.lambda_2 + 0.5 * e_ww
        return mean, cov, factor, log_det, a, b

    def _newton_proposal(self, stats, h, q, new, hessian):
        """A Newton step in the mean of the bound with ξ optimized out (see Notes).

        The gradient comes from the pass at ``q`` (``G m`` without G:
        ``stats.gram_mean``), the curvature from ``hessian`` (an estimate of H).
        The proposal keeps ``new``'s covariance and q(λ)'s shape; its rate follows
        from the proposed mean. Returns it (None if the curvature is not positive
        definite) and the gain it predicts.
        """
        d = q[0].shape[0] - int(self.fit_intercept)
        prior = self._prior_diagonal(q)
        grad = h - stats.gram_mean - prior * q[0]
        curvature = hessian.copy()
        curvature[np.diag_indices_from(curvature)] += prior
        try:
            step = linalg.cho_solve(linalg.cho_factor(curvature), grad)
        except linalg.LinAlgError:
            return None, np.inf
        mean = q[0] + step
        if not np.all(np.isfinite(mean)):
            return None, np.inf
        cov = new[1]
        e_ww = float(mean[:d] @ mean[:d] + np.trace(cov[:d, :d]))
        proposal = (mean, cov, new[2], new[3], new[4], self.lambda_2 + 0.5 * e_ww)
        # the Newton decrement gᵀ H⁻¹ g / 2: the gain the step predicts
        return proposal, 0.5 * float(step @ grad)

    def _bound_at(self, stats, h, q):
        """The full bound at (ξ of the pass, q): PRML eq. 10.164 plus q(λ)'s terms."""
        mean, cov = q[0], q[1]
        second = cov + np.outer(mean, mean)
        loglik = (
            stats.xi_terms + float(mean @ h) - 0.5 * float(np.sum(second * stats.gram))
        )
        return float(loglik + self._prior_and_entropy(q))

    def _collapsed_bound(self, stats, h, q):
        """The bound at q with ξ optimal for q, which needs no G.

        With ξ_n² = x̃_nᵀ (S + m mᵀ) x̃_n the row terms λ(ξ_n) ξ_n² and
        −tr((S + m mᵀ) 2 λ(ξ_n) x̃_n x̃_nᵀ)/2 cancel, leaving Σ [log σ(ξ_n) − ξ_n/2].
        """
        loglik = stats.collapsed_terms + float(q[0] @ h)
        return float(loglik + self._prior_and_entropy(q))

    def _prior_and_entropy(self, q):
        """E[log p(w, b | λ)] + E[log p(λ)] + H[q(w, b)] + H[q(λ)]."""
        mean, cov, _, log_det, a, b = q
        d_tilde = mean.shape[0]
        d = d_tilde - int(self.fit_intercept)
        e_ww = float(mean[:d] @ mean[:d] + np.trace(cov[:d, :d]))
        e_lam, e_log_lam = _gamma_moments(a, b)
        log_prior_w = 0.5 * (d * (e_log_lam - _LOG_2PI) - e_lam * e_ww)
        if self.fit_intercept:
            p0 = self.intercept_precision
            second_b = cov[d, d] + mean[d] ** 2
            log_prior_w += 0.5 * (math.log(p0) - _LOG_2PI - p0 * second_b)
        log_prior_lam = _gamma_log_prior(self.lambda_1, self.lambda_2, e_lam, e_log_lam)
        entropy_w = 0.5 * (d_tilde * (1.0 + _LOG_2PI) + log_det)
        entropy_lam = _gamma_entropy(a, b)
        return log_prior_w + log_prior_lam + entropy_w + entropy_lam

    def _subsample_start(self, rows, positive):
        """Rounds on every k-th row (k of 16 to 64), likelihood scaled to N rows."""
        d_tilde = rows.shape[1] + int(self.fit_intercept)
        stride = rows.shape[0] // (WARM_TARGET_PER_COEF * d_tilde)
        stride = min(max(stride, WARM_STRIDE), WARM_MAX_STRIDE)
        Xs = rows.subsample(stride)
        scale = rows.shape[0] / Xs.shape[0]
        hs = Xs.map_reduce(_target_stats, shared=([positive], self.fit_intercept))
        hs = scale * hs[0][0]
        previous, warm_hessian = -np.inf, None
        for _ in range(WARM_MAX_ROUNDS):
            bound, hessian = self._round(Xs, hs, scale)
            if hessian is not None:
                warm_hessian = hessian
            if bound - previous < WARM_TOL_PER_ROW * rows.shape[0]:
                break
            previous = bound
        # the full data start afresh from the subsample's factors, with its last
        # curvature for a first proposal (_first_full_round)
        self._restart(warm_hessian)

    def _restart(self, warm_hessian=None):
        """No pending proposal, no bound yet (and the curvature of a warm start)."""
        self._proposal, self._predicted_gain = None, np.inf
        self._bound, self._warm_hessian = -np.inf, warm_hessian

    # CAVI hooks
    def _cavi_initialize(self, data, random_state):
        rows, positive, _ = data
        d_tilde = rows.shape[1] + int(self.fit_intercept)
        self._mean = np.zeros(d_tilde)
        self._cov = np.eye(d_tilde) * INIT_VARIANCE
        self._factor = np.eye(d_tilde) * math.sqrt(INIT_VARIANCE)
        self._log_det = d_tilde * math.log(INIT_VARIANCE)
        self.lambda_shape_ = self.lambda_1 + 0.5 * rows.shape[1]
        self.lambda_rate_ = self.lambda_shape_  # E[λ] = 1
        self._restart()
        rows_needed = max(WARM_MIN_ROWS, WARM_STRIDE * WARM_ROWS_PER_COEF * d_tilde)
        if rows.shape[0] >= rows_needed:
            self._subsample_start(rows, positive)
        self._publish()

    def _cavi_step(self, data):
        rows, _, h = data
        bound, _ = self._round(rows, h)
        self._publish()
        return bound

    def _publish(self):
        """Public attributes from the variational parameters."""
        d = self._mean.shape[0] - int(self.fit_intercept)
        self.coef_ = self._mean[np.newaxis, :d].copy()
        self.intercept_ = self._mean[d:].copy() if self.fit_intercept else np.zeros(1)
        self.sigma_ = self._cov
        self.lambda_ = float(self.lambda_shape_ / self.lambda_rate_)

    def _cavi_get_state(self):
        return (self._factors(), self._bound, self._proposal, self._predicted_gain)

    def _cavi_set_state(self, state):
        q, self._bound, self._proposal, self._predicted_gain = state
        self._set_factors(q)
        self._publish()

    # ---------------------------------------- posterior predictive and draws
    def predictive_proba(self, X, method="probit", n_draws=1000, random_state=None):
        """Predictive class probabilities by the probit approximation or Monte Carlo.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        method : {'probit', 'mc'}, default='probit'
            ``'probit'``: :meth:`predict_proba` (PRML eq. 4.155). ``'mc'``: E[σ(a)]
            over ``n_draws`` draws of the linear predictor a = w̃ᵀx̃, which is
            Gaussian under q(w, b) (mean μ, variance x̃ᵀ S x̃), per binary problem;
            one-vs-rest probabilities are normalized to sum to 1 as in
            :meth:`predict_proba`.
        n_draws : int, default=1000
        random_state : int, Generator, RandomState or None, default=None

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        from .posterior import _logistic_mean_cov, check_n_draws, generator
        from .predictive import logistic_mc

        if method == "probit":
            return self.predict_proba(X)
        if method != "mc":
            raise ValueError(f"method must be 'probit' or 'mc', got {method!r}.")
        check_is_fitted(self)
        n = check_n_draws(n_draws)
        rng = generator(random_state)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        mean, sigma = _logistic_mean_cov(self)
        Xt = np.column_stack([X, np.ones(X.shape[0])]) if self.fit_intercept else X
        p = np.empty((X.shape[0], mean.shape[0]))
        for k in range(mean.shape[0]):
            with np.errstate(over="ignore", invalid="ignore"):  # checked below
                mu = Xt @ mean[k]
                var = np.einsum("ij,jk,ik->i", Xt, sigma[k], Xt, optimize=True)
            check_finite_prediction(
                "VBLogisticRegression.predictive_proba",
                X,
                "the linear predictor's means and variances (x^T S x)",
                mu,
                var,
            )
            p[:, k] = logistic_mc(mu, var, n, rng)
        if p.shape[1] == 1:
            return np.column_stack([1.0 - p[:, 0], p[:, 0]])
        return p / p.sum(axis=1, keepdims=True)

    def sample_posterior(self, n_draws, random_state=None):
        """Draws of the parameters from q(w, b) q(λ).

        Parameters
        ----------
        n_draws : int
        random_state : int, Generator, RandomState or None, default=None

        Returns
        -------
        draws : dict
            ``coef_`` (n_draws, P, D), ``intercept_`` (n_draws, P), ``lambda_``
            (n_draws,) or (n_draws, P): P = 1 binary problem for two classes, one
            per class for one-vs-rest (:func:`fastvi.posterior.logistic_draws`).
        """
        from .posterior import check_n_draws, generator, logistic_draws

        check_is_fitted(self)
        return logistic_draws(self, check_n_draws(n_draws), generator(random_state))

    def to_arviz(self, n_draws=1000, random_state=None):
        """:meth:`sample_posterior` as ArviZ data, the bound per round as
        ``sample_stats.lower_bound`` (binary fits). Needs the optional dependency
        arviz (``pip install 'fastvi[arviz]'``)."""
        from .posterior import cavi_to_arviz

        return cavi_to_arviz(self, n_draws, random_state)

    def loo(self, X, y, n_draws=2000, random_state=None):
        """PSIS-LOO expected log predictive density on the training data (binary).

        See :meth:`VBLinearRegression.loo`; the pointwise likelihood is
        Bernoulli(σ(w̃ᵀx̃)) for each draw of q(w, b). One-vs-rest models have no
        single likelihood and are refused.
        """
        from .loo import logistic_loglik, loo_from_loglik
        from .posterior import check_n_draws

        check_is_fitted(self)
        if len(self.classes_) != 2:
            raise ValueError(
                "loo needs a binary VBLogisticRegression; this one is one-vs-rest "
                f"over {len(self.classes_)} classes."
            )
        n = check_n_draws(n_draws, minimum=20)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}.")
        known = np.isin(y, self.classes_)
        if not np.all(known):
            raise ValueError(
                f"y has labels not seen in fit: {np.unique(y[~known])[:5]!r}."
            )
        draws = self.sample_posterior(n, random_state)
        t = (y == self.classes_[1]).astype(np.float64)
        return loo_from_loglik(logistic_loglik(self, X, t, draws))


# ============================================================ block functions
# What the logistic regression computes on each block of rows (``fastvi.rows``).
def _target_stats(block, start, classes, fit_intercept):
    """Block statistic: X̃ᵀ(t_k − 1/2) for every class k (rows of an array), and
    max |x| (:func:`logistic_target_stats`)."""
    X, labels = block[0], np.asarray(block[1])
    h = [
        logistic_target_stats(X, (labels == c) - 0.5, fit_intercept=fit_intercept)
        for c in classes
    ]
    return np.array(h), Max(max_abs(X))


def _logistic_stats(block, start, mean, factor, fit_intercept, grams, stride):
    """Block statistic: :func:`logistic_block_stats` (G and H with ``grams``)."""
    X = block[0] if type(block) is tuple else block
    return logistic_block_stats(
        np.require(X, dtype=np.float64, requirements=["C", "W"]),
        mean,
        factor,
        fit_intercept=fit_intercept,
        grams=grams,
        hessian=grams,
        hessian_stride=stride,
        first_row=start,
    )


def _logistic_rows(X, what, coef, intercept, sigmas, classes):
    """VBLogisticRegression's ``what`` ('decision_function', 'predict_proba',
    'predict') of every row, from the moderated logits κ(s²) μ (PRML eq. 4.155)."""
    n_problems = coef.shape[0]
    d = X.shape[1]
    scores = np.empty((X.shape[0], n_problems))
    for k in range(n_problems):
        s = sigmas[k]
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            mu = X @ coef[k] + intercept[k]
            var = np.einsum("ij,jk,ik->i", X, s[:d, :d], X, optimize=True)
            if s.shape[0] > d:  # with an intercept
                var += 2.0 * (X @ s[:d, d]) + s[d, d]
        # an overflowed variance would make kappa 0: scores of 0, silently
        check_finite_prediction(
            f"VBLogisticRegression.{what}",
            X,
            "the linear predictor's means and variances (x^T S x)",
            mu,
            var,
        )
        kappa = 1.0 / np.sqrt(1.0 + math.pi / 8.0 * np.maximum(var, 0.0))
        scores[:, k] = kappa * mu
    if what == "predict":
        if n_problems == 1:
            return classes[(scores[:, 0] > 0).astype(np.intp)]
        return classes[np.argmax(scores, axis=1)]
    if what == "decision_function":
        return scores[:, 0] if n_problems == 1 else scores
    p = expit(scores)
    if n_problems == 1:
        return np.column_stack([1.0 - p[:, 0], p[:, 0]])
    return p / p.sum(axis=1, keepdims=True)


def _jj_pass(kernels, X, U, mean, intercept, grams, hessian, hstride, row0):
    """All chunks of ``kernels.jj_chunks`` on the fit's threads: per-chunk partials
    ``(G, H, c, gv)`` (see that kernel)."""
    N = X.shape[0]
    Dt = U.shape[0]
    C = -(-N // CHUNK_ROWS)
    Dg = Dt if grams else 0
    Dh = Dt if grams and hessian else 0
    parts = (
        np.empty((C, Dg, Dg)),
        np.empty((C, Dh, Dh)),
        np.empty((C, 2)),
        np.empty((C, Dt)),
    )
    map_chunks(
        kernels.jj_chunks,
        C,
        X,
        U,
        mean,
        intercept,
        grams,
        hessian,
        hstride,
        row0,
        CHUNK_ROWS,
        TILE_ROWS,
        *parts,
    )
    return parts
