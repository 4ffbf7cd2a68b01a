"""Variational Bayesian Gaussian mixture: a drop-in for scikit-learn's estimator.

The model, priors, bound and update order are scikit-learn's (Bishop, PRML §10.2, with
scikit-learn's normalized Wishart parameterization and its constant-free bound), so a
fit gives the same numbers; the work over the data is one fused parallel pass per
iteration (``fastvi.kernels.gmm.mixture_chunks_*``) instead of a Python loop over
components.

Stochastic variational inference (Hoffman, Blei, Wang & Paisley 2013) runs on the same
pass: ``partial_fit`` and ``learning_method='online'`` take natural-gradient steps of the
global factors from the statistics of one minibatch (see :func:`_natural_blend`).
"""

import math
from contextlib import nullcontext
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
from scipy import linalg
from scipy.special import betaln, digamma, gammaln
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.mixture import BayesianGaussianMixture as SkBGM
from sklearn.mixture._gaussian_mixture import (  # the checks of scikit-learn's priors
    _check_precision_matrix,
    _check_precision_positivity,
    _check_shape,
)
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _schema
from ._cavi import CAVIMixin, Fit, all_or_nothing
from ._compile import announces
from ._numerics import (
    check_finite_prediction,
    check_finite_statistics,
    check_squares_overflow,
    finite_mean,
    max_abs,
)
from ._stochastic import State, StopRule, run
from ._threads import map_chunks, thread_limits
from .persist import SaveMixin
from .rows import ArrayRows, Max, fit_rows, predict_rows, source_rows

__all__ = ["BayesianGaussianMixture"]

# Rows per parallel work item. Fixed, so the reduction order (and therefore every bit of
# the result) does not depend on the number of threads.
CHUNK_ROWS = 4096
TILE_ROWS = 256

_KIND = {"full": 0, "tied": 1, "diag": 2, "spherical": 2}

_ILL_DEFINED = (
    "Fitting the mixture model failed because some components have "
    "ill-defined empirical covariance (for instance caused by singleton "
    "or collapsed samples). Try to decrease the number of components, "
    "increase reg_covar, or scale the input data."
)

_NO_LABELS = np.empty(0, dtype=np.int64)


def _gmm_kernels():
    # imported lazily: ``import fastvi`` must not pull in (or compile) kernels
    from .kernels import gmm

    return gmm


class _Stats(NamedTuple):
    """Sufficient statistics of one pass, summed over the rows.

    ``nk`` are the raw responsibility sums, ``sx``/``sq`` the first and second moments
    about ``shift`` (see ``fastvi.kernels.gmm``), ``norm`` the sum over rows of
    log-sum-exp and ``entropy`` -sum r log r.
    """

    nk: np.ndarray
    sx: np.ndarray
    sq: np.ndarray
    norm: float
    entropy: float
    shift: np.ndarray


class _Data:
    """The rows of one fit (:mod:`fastvi.rows`) and their moments, each computed once.

    ``array`` is the validated array when the data were given in memory (in its own
    dtype: an initialization that needs every row at once and the minibatches of
    online fits read it), else None. ``total`` and ``center`` are bitwise
    ``X.sum(axis=0)`` and ``X.mean(axis=0)`` of the float64 rows (``map_reduce`` in
    order), and ``mean`` is the mean in the dtype of the data given (scikit-learn's
    default mean prior).
    """

    def __init__(self, rows, array=None, n_jobs=None):
        self.rows, self.array, self.n_jobs = rows, array, n_jobs
        self.total = rows.map_reduce(_block_rows, n_jobs=n_jobs, ordered=True)
        self.center = self.total / rows.shape[0]
        self.mean = self.center
        if array is not None and array.dtype != np.float64:
            self.mean = array.mean(axis=0)
        self._gram = None

    def gram(self):
        """sum_n (x_n - c)(x_n - c)^T about the mean c: chunk partials in order."""
        if self._gram is None:
            gram = _symmetrize_upper(
                self.rows.map_reduce(
                    _block_gram,
                    shared=(_kernel_array(self.center),),
                    n_jobs=self.n_jobs,
                    ordered=True,
                )
            )
            if not np.isfinite(gram).all():
                # data out of memory are not range-checked up front (_fit_rows):
                # the in-memory message, from their largest |x|
                n, d = self.rows.shape
                check_squares_overflow("X", self.largest(), n * d)
                check_finite_statistics("X", gram)
            self._gram = gram
        return self._gram

    def largest(self):
        """max |x| over the rows (one more pass: for messages)."""
        return self.rows.map_reduce(_block_largest, n_jobs=self.n_jobs).value


class _PerBlock:
    """``local`` of a pass: ``make(start, size)`` of block i, made when the pass
    reaches the block (:meth:`fastvi.rows.Rows.map_reduce` asks in block order)."""

    def __init__(self, rows, make):
        self.sizes = np.asarray(rows.block_sizes())
        self.starts = np.cumsum(self.sizes) - self.sizes
        self.make = make

    def __getitem__(self, i):
        return self.make(int(self.starts[i]), int(self.sizes[i]))


# Block functions (:mod:`fastvi.rows`): the model's work on one block of rows.
def _block_rows(rows, start):
    """The rows themselves (as float64): summed in order, their column sums (NumPy's
    order)."""
    return np.asarray(rows, dtype=np.float64)


def _block_largest(rows, start):
    """max |x| of the block."""
    return Max(max_abs(rows))


def _block_gram(rows, start, center):
    """Per-chunk partials of the centered Gram matrix (upper triangles)."""
    return _centered_gram(_kernel_array(rows), center)


def _block_statistics(
    rows, start, kind, means, prec, const, shift, marks, resp=None, labels=None
):
    """Per-chunk partial statistics ``(nk, sx, sq, norm, entropy)`` of one block.

    The responsibilities are computed under the global factors (``means``, ``prec``,
    ``const``: :meth:`BayesianGaussianMixture._kernel_params`) or given: ``resp``
    (soft), ``labels`` (a component per row, -1 for none) or ``marks`` (the row
    index, in the whole data, of each component's one-hot row).
    """
    n = rows.shape[0]
    if marks.size:
        labels = np.full(n, -1, dtype=np.int64)
        inside = (marks >= start) & (marks < start + n)
        labels[marks[inside] - start] = np.flatnonzero(inside)
    return _mixture_pass(
        rows,
        kind,
        means,
        prec,
        const,
        shift,
        np.empty((0, const.shape[0])) if resp is None else resp,
        _NO_LABELS if labels is None else labels,
    )


_SCORE_METHODS = {
    "labels": "predict",
    "log_resp": "predict_proba",
    "norm": "score_samples",
}


def _score_block(rows, kind, means, prec, const, want):
    """Labels, log-responsibilities or log-densities (``want``) of one block."""
    N, D = rows.shape
    K = const.shape[0]
    dt = const.dtype  # the outputs come in the dtype of the pass
    log_resp = np.empty((N, K) if want == "log_resp" else (0, K), dt)
    # the log-densities for every ``want``: where one is not finite the row is too
    # large for the model, and its labels and responsibilities are meaningless too
    norm = np.empty(N, dt)
    labels = np.empty(N if want == "labels" else 0, dtype=np.int64)
    _mixture_pass(
        rows,
        kind,
        means,
        prec,
        const,
        np.empty((0, D)),
        np.empty((0, K)),
        _NO_LABELS,
        outs=(log_resp, norm, labels),
    )
    # (a damaged model, of non-finite parameters, gives its NaN as it is)
    if all(np.isfinite(a).all() for a in (means, prec, const)):
        check_finite_prediction(
            f"BayesianGaussianMixture.{_SCORE_METHODS[want]}",
            rows,
            "the log-densities",
            norm,
            dtype=np.dtype(dt).name,
            remedy=", or set compute_dtype='float64'" if dt == np.float32 else "",
        )
    return {"labels": labels, "log_resp": log_resp, "norm": norm}[want]


class BayesianGaussianMixture(SaveMixin, CAVIMixin, DensityMixin, BaseEstimator):
    """Variational Bayesian estimation of a Gaussian mixture (fast drop-in).

    Same parameters, defaults, fitted attributes and numbers as
    :class:`sklearn.mixture.BayesianGaussianMixture`; the iterations run in fused,
    parallel Numba kernels. See scikit-learn's documentation for the model.

    Parameters
    ----------
    n_components : int, default=1
        Upper bound on the number of mixture components.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
        Covariance parameterization of the components.
    tol : float, default=1e-3
        Stop when the absolute change of the lower bound is below ``tol``.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance estimate.
    max_iter : int, default=100
        Maximum number of CAVI iterations per initialization.
    n_init : int, default=1
        Number of initializations; the one with the highest bound is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        How the initial responsibilities are chosen (as in scikit-learn).
    weight_concentration_prior_type : {'dirichlet_process', 'dirichlet_distribution'}
        Prior on the weights (stick-breaking or finite Dirichlet).
    weight_concentration_prior : float, default=None
        Dirichlet concentration (gamma_0); ``1 / n_components`` when None.
    mean_precision_prior : float, default=None
        Precision prior on the means (beta_0); 1 when None.
    mean_prior : array-like of shape (n_features,), default=None
        Prior mean (m_0); the data mean when None.
    degrees_of_freedom_prior : float, default=None
        Wishart degrees of freedom (nu_0); ``n_features`` when None. Must exceed
        ``n_features - 1``.
    covariance_prior : float or array-like, default=None
        Wishart covariance prior (W_0^{-1}); the empirical covariance when None.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialization exactly as scikit-learn does.
    warm_start : bool, default=False
        Continue from the previous fit.
    verbose : int, default=0
    verbose_interval : int, default=10
    n_jobs : int, default=None
        Threads used by the kernels (None: all; negative: all but ``-n_jobs - 1``).
        Results are bitwise identical for every value.
    learning_method : {'batch', 'online'}, default='batch'
        'batch': CAVI over all the data in every iteration (scikit-learn's fit).
        'online': stochastic variational inference; :meth:`fit` makes ``max_iter``
        epochs over the data in shuffled minibatches of ``batch_size`` rows, one
        natural-gradient step of the global factors per minibatch, and evaluates the
        bound on all the data after every epoch (see Notes).
    batch_size : int, default=4096
        Rows per minibatch of an online :meth:`fit` (the last minibatches of an epoch
        are made equal in size, each at most ``batch_size``). The kernel splits rows
        into work items of 4096, so minibatches of several times that use several
        threads (smaller ones run on one). Not used by :meth:`partial_fit`, whose
        ``X`` is one minibatch.
    learning_offset : float, default=1.0
        tau_0 >= 0 of the step size ``rho_t = (learning_offset + t) ** -learning_decay``
        of step ``t = 1, 2, ...`` (``n_batch_iter_``); larger values damp the early
        steps.
    learning_decay : float, default=0.51
        kappa in (0.5, 1] of the step size: the Robbins-Monro conditions that make
        the stochastic steps converge (Hoffman et al. 2013, sec. 2.3). The defaults
        (tau_0 = 1, kappa = 0.51, close to the settings Hoffman et al. found best)
        keep the steps large for long. On the ``bench_mixture_svi`` blobs (1e6 rows)
        these defaults bring 'full' fits from a 'random_from_data' start within 1%
        of the batch bound in 1-2 epochs (three seeds); which local optimum a poor
        start ends in (how many clusters merge) depends on the seed and hardly on
        the step sizes (tau_0 from 0 to 64 and kappa up to 0.7 were tried).
    total_samples : float, default=1e6
        Number of rows N in the whole data set a :meth:`partial_fit` minibatch of B
        rows stands for: its statistics are scaled by N / B. An online :meth:`fit`
        uses the number of rows of its ``X`` instead.
    compute_dtype : {'float64', 'float32'}, default='float64'
        Precision of the passes over the data. 'float64' is scikit-learn's fit (the
        same numbers). 'float32' holds the rows in float32 and computes the
        responsibilities and their statistics on float32 lanes (twice the vector
        width; 1.7-1.9x faster per iteration, measured), while every sum leaving a
        tile of 512 rows, the global updates and the bound are float64: the model is
        within float32 precision of scikit-learn's fit on float32 input. Values
        whose squares overflow float32 are refused. Its default mean
        prior is the float64 mean of the rows (scikit-learn's float32 fit takes a
        float32 mean), so a fit of a float32 file out of core is bitwise the fit in
        memory. The float32 kernels are compiled the first time a fit asks for them.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_,
    weight_concentration_prior_, weight_concentration_, mean_precision_prior_,
    mean_precision_, mean_prior_, degrees_of_freedom_prior_, degrees_of_freedom_,
    covariance_prior_, converged_, n_iter_, lower_bound_, lower_bounds_,
    n_features_in_, feature_names_in_
        As in scikit-learn. With ``learning_method='online'``, ``n_iter_`` counts
        epochs and ``lower_bounds_`` holds the bound after each epoch. The batch
        bound does not fall with ``reg_covar=0``; with ``reg_covar > 0`` the M-step
        is not an exact coordinate step and a round can lower it by at most
        ``reg_covar / 2 * sum_k (N_k' - N_k) tr E[Lambda_k]`` (README, "The CAVI
        engine"), as scikit-learn's.
    n_batch_iter_ : int
        Stochastic steps taken so far plus one (the ``t`` of the next step, as in
        :class:`fastvi.LatentDirichletAllocation`); set by online fits and
        :meth:`partial_fit` only.

    Notes
    -----
    Updates follow PRML eqs. 10.46-10.67 with the degrees-of-freedom typo of eq. 10.63
    fixed (nu_k = nu_0 + N_k) and covariances normalized by nu_k, as scikit-learn does.
    The second moments are accumulated about the current component means (one pass),
    not about the new means (scikit-learn's second pass); the two agree to rounding.

    Stochastic variational inference (Hoffman, Blei, Wang & Paisley 2013, JMLR 14,
    Algorithm 1 and eqs. 24-26) takes the steps of :meth:`partial_fit` (the local
    step is the fused pass of a CAVI iteration, the intermediate parameters its M-step
    with the statistics scaled) in the natural parameters of every global factor
    (:func:`_natural_blend`); rho_t = 1 is exactly the CAVI M-step.
    With ``learning_method='online'`` the bound after an epoch is the
    evidence lower bound at the current global factors with the optimal
    responsibilities (one extra pass over the data), in scikit-learn's convention
    (the same constants dropped), so it can be compared with a batch fit's
    ``lower_bound_``; unlike a CAVI bound it can fall between epochs. ``tol`` is the
    same absolute change of the bound as in batch fits: the noise of the stochastic
    steps grows with N, so set it in proportion to the number of rows (for instance
    ``1e-5 * n_samples``) or expect a ``ConvergenceWarning`` after ``max_iter``
    epochs. The epoch permutations come from a seed drawn from ``random_state`` at
    initialization and the epoch number, so a ``warm_start`` continuation draws the
    same minibatches as an uninterrupted fit.
    """

    _nonfinite_advice = "check the input scale or increase reg_covar"

    # integers held to int64 (_schema.int64_params): fit and load refuse larger ones
    _parameter_constraints: dict = _schema.int64_params(
        {
            **SkBGM._parameter_constraints,  # scikit-learn's, for the same parameters
            "n_jobs": [None, Integral],
            "learning_method": [StrOptions({"batch", "online"})],
            "batch_size": [Interval(Integral, 1, None, closed="left")],
            "learning_offset": [Interval(Real, 0.0, None, closed="left")],
            "learning_decay": [Interval(Real, 0.5, 1.0, closed="right")],
            "total_samples": [Interval(Real, 0.0, None, closed="neither")],
            "compute_dtype": [StrOptions({"float64", "float32"})],
        }
    )

    def __init__(
        self,
        *,
        n_components=1,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=None,
        mean_precision_prior=None,
        mean_prior=None,
        degrees_of_freedom_prior=None,
        covariance_prior=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        n_jobs=None,
        learning_method="batch",
        batch_size=4096,
        learning_offset=1.0,
        learning_decay=0.51,
        total_samples=1e6,
        compute_dtype="float64",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.n_jobs = n_jobs
        self.learning_method = learning_method
        self.batch_size = batch_size
        self.learning_offset = learning_offset
        self.learning_decay = learning_decay
        self.total_samples = total_samples
        self.compute_dtype = compute_dtype

    def _fitted_schema(self, attrs):
        """The fitted attributes a saved model may hold (see :mod:`fastvi._schema`;
        ``attrs``, the decoded attributes, are not needed here).

        K = ``n_components``, D = ``n_features_in_``; the covariance shapes follow
        ``covariance_type`` and ``weight_concentration_`` the weight prior type.
        Every Wishart has more than D - 1 degrees of freedom (scikit-learn's rule for
        the prior; E[log det Lambda] takes digamma((nu - i) / 2) for i < D, for every
        covariance type), 'full' and 'tied' covariances are positive definite and
        their precisions' Cholesky factors upper triangular with a positive diagonal
        (the kernels read the factors; draws factor the covariances), the covariance
        prior is positive semi-definite (the default, the data's covariance, is
        singular where a feature is constant). A fit's bound is finite, or -inf
        before its first round (``max_iter=0``). ``weights_`` and ``precisions_`` are
        missing from a checkpoint written during a first fit, and the fit-loop
        attributes from a model made by :meth:`partial_fit` alone.
        """
        S = _schema
        K, D = self.n_components, "D"
        cov = {
            "full": (K, D, D),
            "tied": (D, D),
            "diag": (K, D),
            "spherical": (K,),
        }[self.covariance_type]
        elementwise = self.covariance_type in ("diag", "spherical")
        if self.covariance_type in ("full", "tied"):
            cov_prior = S.Array((D, D), positive_semidefinite=True, required=True)
        elif self.covariance_type == "diag":
            cov_prior = S.Array((D,), positive=True, required=True)
        else:
            cov_prior = S.Real(positive=True, required=True)
        concentration = S.Array((K,), positive=True)
        if self.weight_concentration_prior_type == "dirichlet_process":
            concentration = S.Seq((concentration, concentration), required=True)
        else:
            concentration.required = True
        wishart = (D, -1)  # the degrees of freedom exceed D - 1
        if self.covariance_type == "tied":
            dof = S.Real(above=wishart, required=True)
        else:
            dof = S.Array((K,), above=wishart, required=True)
        return {
            "n_features_in_": S.Int(1, dim=D, required=True),
            "feature_names_in_": S.Names((D,)),
            "weight_concentration_prior_": S.Real(positive=True, required=True),
            "mean_precision_prior_": S.Real(positive=True, required=True),
            "mean_prior_": S.Array((D,), required=True),
            "degrees_of_freedom_prior_": S.Real(above=wishart, required=True),
            "covariance_prior_": cov_prior,
            "weight_concentration_": concentration,
            "mean_precision_": S.Array((K,), positive=True, required=True),
            "means_": S.Array((K, D), required=True),
            "degrees_of_freedom_": dof,
            "covariances_": S.Array(
                cov,
                positive=elementwise,
                positive_definite=not elementwise,
                required=True,
            ),
            "precisions_cholesky_": S.Array(
                cov,
                positive=elementwise,
                positive_diagonal=not elementwise,
                triangular=None if elementwise else "upper",
                required=True,
            ),
            "weights_": S.Array((K,), nonnegative=True),
            "precisions_": S.Array(cov),
            "converged_": S.Bool(),
            "n_iter_": S.Int(0),
            "lower_bound_": S.Real(finite=True, minus_inf=True),
            "lower_bounds_": S.Floats(finite=True),
            # rho = (learning_offset + n_batch_iter_) ** -learning_decay, offset >= 0
            "n_batch_iter_": S.Int(1),
            "_svi_epoch": S.Int(0),
            "_svi_seed": S.Int(0),
        }

    # ------------------------------------------------------------------ public API
    @announces("mixture")
    def fit(self, X, y=None):
        """Fit the mixture by CAVI (``n_init`` restarts, best bound kept).

        With ``learning_method='online'`` each iteration is instead an epoch of
        stochastic natural-gradient steps over shuffled minibatches (see Notes and
        :meth:`partial_fit`), followed by one pass that evaluates the bound; the
        data must be in memory.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), a row-block source or a \
dask array
            A source (such as :class:`fastvi.batch.io.NpyRows`, a float64 ``.npy``
            file read in fixed row blocks) fits out of core: memory does not grow
            with the number of rows and the model is bitwise the in-memory one. A
            dask array or DataFrame fits where its chunks live; the model is bitwise
            the in-memory one when every chunk but the last holds a multiple of 4096
            rows, else equal to rounding (:mod:`fastvi.rows`). Out of memory,
            ``init_params`` must be 'random' or 'random_from_data' (the others need
            all the rows at once), ``learning_method`` 'batch', and a source's
            ``block_rows`` a multiple of 4096 (the kernels' chunk).
        y : Ignored

        Returns
        -------
        self : BayesianGaussianMixture
        """
        self._fit(X)
        return self

    @announces("mixture")
    def fit_predict(self, X, y=None):
        """Fit the mixture and return the most probable component of each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or as for :meth:`fit`
        y : Ignored

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        data = self._fit(X)
        # labels from a final local step, so fit_predict(X) == fit(X).predict(X)
        with thread_limits(self.n_jobs):
            return self._score(data.rows, "labels")

    def _fit(self, X):
        """Validate ``X``, wrap it in rows, run the CAVI driver; the fit's data.

        Every pass over the data is one ``map_reduce`` of a block function of
        :mod:`fastvi.rows`, summed in the kernels' chunk order, so the model is the
        same for any number of threads and, bitwise, in memory and out of core.
        """
        self._validate_params()
        with all_or_nothing(self):
            rows, array = self._fit_rows(X)
            if rows.shape[0] < self.n_components:
                raise ValueError(
                    "Expected n_samples >= n_components "
                    f"but got n_components = {self.n_components}, "
                    f"n_samples = {rows.shape[0]}"
                )
            with thread_limits(self.n_jobs):
                data = _Data(rows, array, self.n_jobs)
                self._check_parameters(data)
                online = self.learning_method == "online"
                rounds = self._sgd_rounds if online else None
                self._cavi_fit(data, check_random_state(self.random_state), rounds)
                self._set_derived()
        return data

    def _fit_rows(self, X):
        """``(rows, array)``: in memory, scikit-learn's validation (the array keeps
        a float32 dtype, as scikit-learn's fit does); otherwise the source's shape
        and values are checked here (a file's values on its first pass)."""
        rows = source_rows(X)
        if rows is None:
            X = validate_data(
                self, X, dtype=[np.float64, np.float32], ensure_min_samples=2
            )
            self._forget_other_fit(X.shape[1])
            # scatter matrices sum N squares (and a trace D of them)
            largest = max_abs(X)
            check_squares_overflow("X", largest, X.shape[0] * X.shape[1])
            self._check_float32_range(largest, X.shape[1])
            return ArrayRows(_kernel_array(X, self._kernel_dtype())), X
        self._forget_other_fit(rows.shape[1])
        where = "fits of a file or a dask array"
        if self.learning_method == "online":
            raise ValueError(
                "learning_method='online' draws minibatches in random order and "
                f"needs the data in memory; {where} are batch fits"
            )
        if self.init_params not in ("random", "random_from_data") and not (
            self.warm_start and hasattr(self, "converged_")
        ):
            raise ValueError(
                f"init_params={self.init_params!r} needs all the data in memory; "
                f"{where} support 'random' and 'random_from_data'"
            )
        if rows.block_rows % CHUNK_ROWS:
            raise ValueError(
                f"block_rows={rows.block_rows} must be a multiple of {CHUNK_ROWS}"
            )
        return fit_rows(self, X, supervised=False), None  # sets n_features_in_

    def _factors_fit(self, n_features):
        """Whether the fitted factors have the shapes that ``n_components``,
        ``covariance_type``, ``weight_concentration_prior_type`` and ``n_features``
        give (only a tied fit has one degrees of freedom for all components: its
        (D, D) covariance is not a diagonal fit's (K, D) where K = D)."""
        K, D, cov_type = self.n_components, n_features, self.covariance_type
        shapes = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}
        process = self.weight_concentration_prior_type == "dirichlet_process"
        return (
            np.shape(self.means_) == (K, D)
            and np.shape(self.covariances_) == shapes[cov_type]
            and np.ndim(self.degrees_of_freedom_) == (cov_type != "tied")
            and isinstance(self.weight_concentration_, tuple) == process
        )

    def _forget_other_fit(self, n_features):
        """A warm start resumes the fitted factors only where they fit the
        parameters and the data; after a change of ``n_components``,
        ``covariance_type``, ``weight_concentration_prior_type`` or the number of
        features the fit starts afresh, as a cold one (scikit-learn's fails)."""
        if self.warm_start and hasattr(self, "converged_"):
            if not self._factors_fit(n_features):
                del self.converged_

    @announces("mixture")
    def partial_fit(self, X, y=None):
        """One stochastic natural-gradient step of the global factors from a minibatch.

        The rows of ``X`` are one minibatch of a data set of ``total_samples`` rows:
        their responsibilities under the current global factors give the
        intermediate parameters (prior + ``total_samples / len(X)`` times their
        statistics), and every global factor moves to the convex combination
        ``(1 - rho) * current + rho * intermediate`` of its natural parameters, with
        ``rho = (learning_offset + n_batch_iter_) ** -learning_decay`` (Hoffman et al.
        2013, Algorithm 1). The first call on an unfitted estimator initializes the
        factors from ``X`` as :meth:`fit` does (``init_params``, ``random_state``, the
        default priors from ``X``, statistics scaled to ``total_samples`` rows) and
        then takes its step; later calls continue from the current factors (also
        those of an earlier :meth:`fit`). ``learning_method`` and ``batch_size`` are
        not used. If the call raises, the estimator is left as it was.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            One minibatch. The first call needs ``n_samples >= max(2,
            n_components)``.
        y : Ignored

        Returns
        -------
        self : BayesianGaussianMixture
        """
        self._validate_params()
        # factors of other parameters (set since a fit): the first call again
        first = not (
            hasattr(self, "precisions_cholesky_")
            and self._factors_fit(self.means_.shape[1])
        )
        with all_or_nothing(self):
            X = validate_data(
                self,
                X,
                dtype=[np.float64, np.float32],
                reset=first,
                ensure_min_samples=2 if first else 1,
            )
            # a minibatch's statistics are scaled up to total_samples rows
            n_rows = max(X.shape[0], int(min(self.total_samples, 2**62)))
            largest = max_abs(X)
            check_squares_overflow("X", largest, n_rows * X.shape[1])
            self._check_float32_range(largest, X.shape[1])
            if first and X.shape[0] < self.n_components:
                raise ValueError(
                    "The first partial_fit call initializes from its minibatch: "
                    "expected n_samples >= n_components but got n_components = "
                    f"{self.n_components}, n_samples = {X.shape[0]}"
                )
            scale = self.total_samples / X.shape[0]
            # one kernel work item runs on one thread (see _sgd_epoch)
            n_jobs = 1 if X.shape[0] <= CHUNK_ROWS else self.n_jobs
            with thread_limits(n_jobs):
                batch = _Data(ArrayRows(_kernel_array(X, self._kernel_dtype())), X)
                if first:
                    self._check_parameters(batch)
                    random_state = check_random_state(self.random_state)
                    self._initialize_from(batch, random_state, scale)
                if first or not hasattr(self, "n_batch_iter_"):  # or after a batch fit
                    self.n_batch_iter_ = 1
                self._svi_update(batch, scale)
                self._set_derived()
        return self

    def predict(self, X):
        """Most probable component of each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self._score_arrays(X, want="labels")

    def predict_proba(self, X):
        """Posterior probability of each component for each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        resp : ndarray of shape (n_samples, n_components)
        """
        return np.exp(self._score_arrays(X, want="log_resp"))

    def score_samples(self, X):
        """Log of the (variational) mixture density of each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_prob : ndarray of shape (n_samples,)
        """
        return self._score_arrays(X, want="norm")

    def score(self, X, y=None):
        """Mean of :meth:`score_samples` over ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        log_likelihood : float
        """
        return finite_mean("BayesianGaussianMixture.score", self.score_samples(X))

    def sample(self, n_samples=1):
        """Draw samples from the fitted mixture: scikit-learn's ``sample`` (its draws).

        Parameters
        ----------
        n_samples : int, default=1

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            Component of each sample.
        """
        check_is_fitted(self)
        if n_samples < 1:
            raise ValueError(
                "Invalid value for 'n_samples': %d . The sampling requires at "
                "least one sample." % n_samples
            )
        return SkBGM.sample(self, n_samples)

    # ------------------------------------------------------------ parameter checks
    def _check_parameters(self, data):
        """Resolve the priors (trailing-underscore attributes), scikit-learn's rules."""
        n_samples, n_features = data.rows.shape
        self.weight_concentration_prior_ = (
            1.0 / self.n_components
            if self.weight_concentration_prior is None
            else self.weight_concentration_prior
        )
        self.mean_precision_prior_ = (
            1.0 if self.mean_precision_prior is None else self.mean_precision_prior
        )
        if self.mean_prior is None:
            # float32 computation: the float64 mean, as out of core
            self.mean_prior_ = data.center if self._float32() else data.mean
        else:
            self.mean_prior_ = check_array(
                self.mean_prior, dtype=[np.float64, np.float32], ensure_2d=False
            )
            _check_shape(self.mean_prior_, (n_features,), "means")

        if self.degrees_of_freedom_prior is None:
            self.degrees_of_freedom_prior_ = n_features
        elif self.degrees_of_freedom_prior > n_features - 1.0:
            self.degrees_of_freedom_prior_ = self.degrees_of_freedom_prior
        else:
            raise ValueError(
                "The parameter 'degrees_of_freedom_prior' "
                "should be greater than %d, but got %.3f."
                % (n_features - 1, self.degrees_of_freedom_prior)
            )

        cov_type = self.covariance_type
        if self.covariance_prior is None:
            # scikit-learn's np.cov / np.var, from the centered Gram matrix: one pass
            # and no N x D temporary (equal to rounding)
            self.covariance_prior_ = _default_covariance_prior(
                data.gram(), n_samples, cov_type
            )
        elif cov_type == "spherical":
            self.covariance_prior_ = self.covariance_prior
        else:  # scikit-learn's checks of a matrix ('full', 'tied') or a diagonal
            prior = check_array(
                self.covariance_prior, dtype=[np.float64, np.float32], ensure_2d=False
            )
            matrix = cov_type != "diag"
            shape = (n_features, n_features) if matrix else (n_features,)
            _check_shape(prior, shape, f"{cov_type} covariance_prior")
            if matrix:
                _check_precision_matrix(prior, cov_type)
            else:
                _check_precision_positivity(prior, cov_type)
            self.covariance_prior_ = prior

    # --------------------------------------------------------------- CAVI hooks
    def _cavi_initialize(self, data, random_state):
        self._initialize_from(data, random_state)
        if self.learning_method == "online":
            self.n_batch_iter_ = 1
            self._svi_epoch = 0
            # epoch e shuffles with default_rng((seed, e)): a warm-started (or
            # resumed) fit draws the minibatches an uninterrupted fit draws
            self._svi_seed = int(random_state.randint(np.iinfo(np.int32).max))

    def _initialize_from(self, data, random_state, scale=1.0):
        """Global factors from the initial responsibilities (statistics scaled)."""
        shift = np.broadcast_to(data.center, (self.n_components, data.center.size))
        init = self._initial_resp(data, random_state)
        stats = self._statistics(data, shift.copy(), init=init)
        self._update_globals(stats, data, scale=scale)

    def _cavi_step(self, data):
        # local step: responsibilities and their statistics in one pass; then global
        stats = self._statistics(data, self.means_)
        self._update_globals(stats, data)
        return self._bound(stats.entropy)

    # ------------------------------------------------------ stochastic steps
    def _sgd_rounds(self, data, fit, clock):
        """One restart of an online fit: the epochs of the stochastic driver, its
        stop rule ``tol`` on the bound after every epoch (see :meth:`_cavi_fit`)."""
        start = State(fit.n_iter, fit.bound, fit.converged, fit.history)
        state = run(self, data, StopRule(self.tol), start)
        return Fit(state.epoch, state.history[-1], state.history, state.stopped)

    def _sgd_params(self, data):
        return self._cavi_get_state()

    def _sgd_set_params(self, data, params):
        self._cavi_set_state(params)

    def _sgd_epoch(self, data):
        """One epoch of stochastic steps over shuffled minibatches."""
        X = data.array
        n_samples = X.shape[0]
        if not hasattr(self, "_svi_seed"):  # warm start from a batch or partial fit
            seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
            self._svi_seed, self._svi_epoch = int(seed), 0
            self.n_batch_iter_ = getattr(self, "n_batch_iter_", 1)
        rng = np.random.default_rng((self._svi_seed, self._svi_epoch))
        order = rng.permutation(n_samples)
        n_batches = -(-n_samples // min(self.batch_size, n_samples))
        # a minibatch of one kernel work item runs on one thread anyway; waking the
        # others for every step costs more than the step on a busy machine
        one_chunk = -(-n_samples // n_batches) <= CHUNK_ROWS
        with thread_limits(1) if one_chunk else nullcontext():
            for rows in np.array_split(order, n_batches):
                # sorted: the gather reads X forward (the order of the rows within
                # a minibatch changes the step only by rounding)
                batch = _kernel_array(X[np.sort(rows)], self._kernel_dtype())
                batch = _Data(ArrayRows(batch), batch)
                self._svi_update(batch, n_samples / batch.rows.shape[0])
        self._svi_epoch += 1

    def _svi_update(self, batch, scale):
        """One natural-gradient step from the minibatch's ``_Data``."""
        rho = (self.learning_offset + self.n_batch_iter_) ** -self.learning_decay
        stats = self._statistics(batch, self.means_)
        # the tied update needs the minibatch's centered Gram matrix
        self._update_globals(stats, batch, scale=scale, rho=rho)
        self.n_batch_iter_ += 1

    def _sgd_evaluate(self, data):
        """Evidence lower bound at the current global factors, over all the data.

        With the optimal responsibilities (PRML eqs. 10.46-10.49) the data terms of
        the bound, sum_nk r_nk (log rho_nk - log r_nk), sum to sum_n logsumexp_k
        log rho_nk, which the pass returns; the global factors add
        E_q[log p(theta) - log q(theta)] (:meth:`_global_bound`). scikit-learn's
        constants are dropped, so after a converged CAVI fit this is its
        ``lower_bound_`` up to the last iteration's change.
        """
        n_samples, n_features = data.rows.shape
        stats = self._statistics(data, self.means_)
        # the kernel's log rho_nk holds -D/2 log(2 pi), which scikit-learn drops
        data_term = stats.norm + 0.5 * n_samples * n_features * math.log(2.0 * math.pi)
        return data_term + self._global_bound()

    def _global_bound(self):
        """E_q[log p(theta) - log q(theta)] of q(pi) and q(mu, Lambda), less constants.

        PRML eqs. 10.73-10.74 and 10.76-10.77 (and their Beta analogues for the
        stick-breaking prior) for any variational parameters, not only those of a
        CAVI update. Terms of the priors alone (K D/2 log beta_0, the prior's Wishart
        and Dirichlet/Beta normalizers, log pi^{D(D-1)/4} per component) are dropped,
        as scikit-learn's bound drops them.
        """
        D = self.means_.shape[1]
        K = self.n_components
        cov_type = self.covariance_type
        beta0, beta = self.mean_precision_prior_, self.mean_precision_
        nu0, nu = self.degrees_of_freedom_prior_, self.degrees_of_freedom_
        pc = self.precisions_cholesky_
        w0_inv = self.covariance_prior_
        diff = self.means_ - self.mean_prior_
        # quad_k = nu_k (m_k - m_0)^T W_k (m_k - m_0) and trace_k = nu_k Tr(W_0^-1 W_k)
        # with the precisions nu_k W_k = U_k U_k^T
        if cov_type == "full":
            quad = (np.einsum("kji,kj->ki", pc, diff) ** 2).sum(axis=1)
            trace = np.einsum("ij,kij->k", w0_inv, pc @ pc.transpose(0, 2, 1))
        elif cov_type == "tied":
            quad = ((diff @ pc) ** 2).sum(axis=1)
            trace = np.sum(w0_inv * (pc @ pc.T))
        elif cov_type == "diag":
            quad = (pc**2 * diff**2).sum(axis=1)
            trace = (w0_inv * pc**2).sum(axis=1)
        else:
            quad = pc**2 * (diff**2).sum(axis=1)
            trace = w0_inv * D * pc**2
        log_det_chol = self._log_det_cholesky()
        # E[log det Lambda_k] (PRML eq. 10.65), log det W_k = 2 log det U_k - D log nu
        e_log_det = (
            self._expected_log_det_lambda() + 2.0 * log_det_chol - D * np.log(nu)
        )
        log_wishart_norm = self._log_wishart_norm()
        gauss = (
            -0.5 * D * np.log(beta)
            + 0.5 * D * (1.0 - beta0 / beta)
            - 0.5 * beta0 * quad
        )
        wishart = (
            -0.5 * (trace - nu * D) - log_wishart_norm + 0.5 * (nu0 - nu) * e_log_det
        )
        # tied: K copies of the shared Wishart, as in scikit-learn's bound
        wishart = K * wishart[0] if cov_type == "tied" else np.sum(wishart)
        if self.weight_concentration_prior_type == "dirichlet_process":
            a, b = self.weight_concentration_
            gamma0 = self.weight_concentration_prior_
            dg = digamma(a + b)
            weights = np.sum(
                betaln(a, b)
                + (1.0 - a) * (digamma(a) - dg)
                + (gamma0 - b) * (digamma(b) - dg)
            )
        else:
            alpha = self.weight_concentration_
            e_log_pi = digamma(alpha) - digamma(np.sum(alpha))
            weights = (
                np.sum(gammaln(alpha))
                - gammaln(np.sum(alpha))
                + np.sum((self.weight_concentration_prior_ - alpha) * e_log_pi)
            )
        return float(np.sum(gauss) + wishart + weights)

    # the global factors (weight concentration, beta_k, m_k, nu_k, covariances) and
    # their precisions' Cholesky factors, then an online fit's step, epoch and seed
    _STATE = (
        "weight_concentration_ mean_precision_ means_ degrees_of_freedom_ "
        "covariances_ precisions_cholesky_ n_batch_iter_ _svi_epoch _svi_seed"
    ).split()

    def _cavi_get_state(self):
        online = self.learning_method == "online"
        return tuple(getattr(self, name) for name in self._STATE[: 9 if online else 6])

    def _cavi_set_state(self, state):
        self.__dict__.update(zip(self._STATE, state))  # 6 or 9 values

    # ---------------------------------------------------------- initialization
    def _initial_resp(self, data, random_state):
        """``(marks, local)`` of the first pass: the initial responsibilities,
        drawing from ``random_state`` as scikit-learn does.

        Hard initializations give no N x K array: ``marks``, the row of each
        component (the other rows have none), or for 'kmeans' a label per row, each
        block's slice in ``local``. 'random' draws each block's responsibilities
        when the pass reaches it (the stream of one draw of them all).
        """
        X, K = data.array, self.n_components
        if self.init_params == "random":
            # out of core, and for float32 computation, float64 (as out of core)
            dtype = np.float64 if X is None or self._float32() else X.dtype

            def draw(start, size):
                resp = random_state.uniform(size=(size, K)).astype(dtype)
                resp /= resp.sum(axis=1)[:, np.newaxis]
                return _kernel_array(resp), None

            return _NO_LABELS, _PerBlock(data.rows, draw)
        if self.init_params == "kmeans":
            from sklearn.cluster import KMeans

            km = KMeans(n_clusters=K, n_init=1, random_state=random_state).fit(X)
            labels = km.labels_.astype(np.int64)
            return _NO_LABELS, _PerBlock(
                data.rows, lambda start, size: (None, labels[start : start + size])
            )
        if self.init_params == "random_from_data":
            # scikit-learn's choice(n, K, replace=False) shuffles all n row numbers;
            # the same shuffle (the same draws) of int32 numbers takes half the
            # memory out of core: 4 bytes a row, 80 MB at 2e7 rows
            n_samples = data.rows.shape[0]
            order = np.arange(n_samples, dtype=np.int32 if n_samples < 2**31 else None)
            random_state.shuffle(order)
            return order[:K].astype(np.int64), None
        from sklearn.cluster import kmeans_plusplus  # "k-means++"

        return kmeans_plusplus(X, K, random_state=random_state)[1], None

    # ---------------------------------------------------------------- the pass
    def _kernel_params(self):
        """Arguments of the fused kernel for the current global factors."""
        D = self.means_.shape[1]
        K = self.n_components
        cov_type = self.covariance_type
        pc = self.precisions_cholesky_
        if cov_type == "full":
            means, prec = self.means_, pc
        elif cov_type == "tied":
            means, prec = self.means_ @ pc, pc[np.newaxis]
        elif cov_type == "diag":
            means, prec = self.means_, (pc**2)[:, np.newaxis, :]
        else:
            prec = np.repeat((pc**2)[:, np.newaxis], D, axis=1)[:, np.newaxis, :]
            means = self.means_
        const = (
            self._estimate_log_weights()
            + self._log_det_cholesky()
            - 0.5 * D * math.log(2.0 * math.pi)
            - 0.5 * D * np.log(self.degrees_of_freedom_)
            + 0.5 * (self._expected_log_det_lambda() - D / self.mean_precision_)
        )
        const = np.broadcast_to(const, (K,))
        dt = self._kernel_dtype()
        return (
            _kernel_array(means, dt),
            _kernel_array(prec, dt),
            _kernel_array(const, dt),
        )

    def _float32(self):
        return self.compute_dtype == "float32"

    def _check_float32_range(self, largest, n_features):
        """float32 computation: refuse values whose squares, summed in float32 over a
        tile's rows and the features, overflow float32 (deviations up to 2x)."""
        if not self._float32():
            return
        big = float(np.finfo(np.float32).max)
        tile = _tile_rows(np.float32)
        limit = math.sqrt(big / (4.0 * tile * n_features))
        if largest > limit:
            raise ValueError(
                f"X has values as large as {largest:.3g} in magnitude: with "
                "compute_dtype='float32' their squares, summed over a tile of "
                f"{tile} rows, overflow float32 (the limit here is about "
                f"{limit:.3g}). Rescale X or use compute_dtype='float64'."
            )

    def _kernel_dtype(self):
        """dtype of the rows and parameters of the passes (``compute_dtype``)."""
        return np.float32 if self._float32() else np.float64

    def _statistics(self, data, shift, init=None):
        """One pass: statistics of the responsibilities under the current factors,
        or of the initial ones (``init``: ``(marks, local)`` of
        :meth:`_initial_resp`), moments about ``shift``."""
        K, D = self.n_components, data.rows.shape[1]
        dt = self._kernel_dtype()
        if init is None:
            params, (marks, local) = self._kernel_params(), (_NO_LABELS, None)
        else:  # only the statistics are computed; the parameters are unused
            params, (marks, local) = (
                (np.zeros((K, D), dt), np.zeros((K, D, D), dt), np.zeros(K, dt)),
                init,
            )
        # float32 computation: the moments are about the float32 shift
        shift = _kernel_array(shift, dt)
        nk, sx, sq, norm, entropy = data.rows.map_reduce(
            _block_statistics,
            shared=(_KIND[self.covariance_type], *params, shift, marks),
            local=local,
            n_jobs=self.n_jobs,
            ordered=True,
        )
        if data.array is None and not (np.isfinite(sx).all() and np.isfinite(sq).all()):
            # data out of memory are not range-checked up front (_fit_rows): the
            # in-memory messages, from their largest |x|
            largest = data.largest()
            check_squares_overflow("X", largest, data.rows.shape[0] * D)
            self._check_float32_range(largest, D)
            if self._float32():
                raise ValueError(
                    "The sums of squares of X overflow float32 with "
                    "compute_dtype='float32': its values are too large. Rescale X "
                    "or use compute_dtype='float64'."
                )
            check_finite_statistics("X", sx, sq)
        return _Stats(nk, sx, sq, float(norm), float(entropy), shift)

    def _score(self, rows, want):
        """Labels, log-responsibilities or log-densities (``want``) of every row."""
        return rows.map_rows(
            _score_block,
            (_KIND[self.covariance_type], *self._kernel_params(), want),
            n_columns=self.n_components if want == "log_resp" else None,
            dtype=np.int64 if want == "labels" else self._kernel_dtype(),
            n_jobs=self.n_jobs,
        )

    @announces("mixture", complete=False)
    def _score_arrays(self, X, want):
        check_is_fitted(self)
        rows = predict_rows(self, X)
        with thread_limits(self.n_jobs):
            return self._score(rows, want)

    # ------------------------------------------------------------- global step
    def _update_globals(self, stats, data, scale=1.0, rho=None):
        """Closed-form updates of q(pi), q(mu, Lambda) from the statistics (M-step).

        ``scale`` multiplies the statistics (N / B for a minibatch of B of N rows).
        With ``rho`` the update gives the intermediate parameters lambda_hat, and the
        factors then move to (1 - rho) lambda + rho lambda_hat in natural parameters
        (Hoffman et al. 2013, eq. 26; :func:`_natural_blend`).
        """
        if rho is not None:
            current = self._variational_parameters()
        nk, xk, sk = self._gaussian_statistics(stats, data)
        if scale != 1.0:
            # xk and sk are averages and do not scale; the counts do
            nk = scale * stats.nk + 10 * np.finfo(np.float64).eps
        self._update_weights(nk)
        self.mean_precision_ = self.mean_precision_prior_ + nk
        self.means_ = (
            self.mean_precision_prior_ * self.mean_prior_ + nk[:, np.newaxis] * xk
        ) / self.mean_precision_[:, np.newaxis]
        self._update_wishart(nk, xk, sk)
        if rho is not None:
            blend = _natural_blend(
                current, self._variational_parameters(), rho, self.covariance_type
            )
            self.__dict__.update(zip(self._STATE[:5], blend, strict=True))
        self.precisions_cholesky_ = _precision_cholesky(
            self.covariances_, self.covariance_type, self.means_
        )

    def _variational_parameters(self):
        """(weight concentration, beta_k, m_k, nu_k, covariances) of the factors."""
        return tuple(getattr(self, name) for name in self._STATE[:5])

    def _gaussian_statistics(self, stats, data):
        """N_k, weighted means and (regularized) covariances from shifted moments."""
        reg = self.reg_covar
        raw = stats.nk
        nk = raw + 10 * np.finfo(np.float64).eps
        shift = stats.shift
        xk = (stats.sx + raw[:, np.newaxis] * shift) / nk[:, np.newaxis]
        d = xk - shift  # new mean about the shift
        a = stats.sx
        cov_type = self.covariance_type
        if cov_type == "full":
            second = _symmetrize_upper(stats.sq)
            # sum r (x - xk)(x - xk)^T = B - a d^T - d a^T + N d d^T
            ad = a[:, :, np.newaxis] * d[:, np.newaxis, :]
            sk = (
                second
                - ad
                - ad.transpose(0, 2, 1)
                + raw[:, np.newaxis, np.newaxis]
                * d[:, :, np.newaxis]
                * d[:, np.newaxis]
            ) / nk[:, np.newaxis, np.newaxis]
            idx = np.arange(sk.shape[1])
            sk[:, idx, idx] += reg
        elif cov_type == "tied":
            # scikit-learn's (X^T X - sum_k N_k x_k x_k^T) / sum_k N_k, written about
            # the data mean c so that it does not cancel catastrophically. X^T X runs
            # over all rows even when the responsibilities of some rows are all zero
            # (hard initializations); the c-terms below keep that exactly.
            center, n_rows = data.center, data.rows.shape[0]
            dc = xk - center
            dev_sum = data.total - n_rows * center
            excess = dev_sum - (nk[:, np.newaxis] * dc).sum(axis=0)
            cc = np.outer(center, center)
            sk = (
                data.gram()
                - (nk[:, np.newaxis] * dc).T @ dc
                + np.outer(excess, center)
                + np.outer(center, excess)
                + (n_rows - nk.sum()) * cc
            ) / nk.sum()
            sk.flat[:: sk.shape[0] + 1] += reg
        else:
            second = stats.sq[:, 0, :]
            sk = (second - 2.0 * a * d + raw[:, np.newaxis] * d * d) / nk[:, np.newaxis]
            sk = sk + reg
            if cov_type == "spherical":
                sk = sk.mean(axis=1)
        return nk, xk, sk

    def _update_weights(self, nk):
        if self.weight_concentration_prior_type == "dirichlet_process":
            # stick-breaking Beta(1 + N_k, gamma_0 + sum_{j > k} N_j)
            tail = np.hstack((np.cumsum(nk[::-1])[-2::-1], 0))
            self.weight_concentration_ = (
                1.0 + nk,
                self.weight_concentration_prior_ + tail,
            )
        else:
            self.weight_concentration_ = self.weight_concentration_prior_ + nk

    def _update_wishart(self, nk, xk, sk):
        """Normalized Wishart parameters: covariances_ = W_k^{-1} / nu_k."""
        K = self.n_components
        beta0 = self.mean_precision_prior_
        diff = xk - self.mean_prior_
        cov_type = self.covariance_type
        if cov_type == "full":
            self.degrees_of_freedom_ = self.degrees_of_freedom_prior_ + nk
            scale = nk * beta0 / self.mean_precision_
            cov = (
                self.covariance_prior_
                + nk[:, np.newaxis, np.newaxis] * sk
                + scale[:, np.newaxis, np.newaxis]
                * diff[:, :, np.newaxis]
                * diff[:, np.newaxis, :]
            )
            self.covariances_ = (
                cov / self.degrees_of_freedom_[:, np.newaxis, np.newaxis]
            )
        elif cov_type == "tied":
            self.degrees_of_freedom_ = self.degrees_of_freedom_prior_ + nk.sum() / K
            cov = (
                self.covariance_prior_
                + sk * nk.sum() / K
                + beta0 / K * ((nk / self.mean_precision_) * diff.T) @ diff
            )
            self.covariances_ = cov / self.degrees_of_freedom_
        elif cov_type == "diag":
            self.degrees_of_freedom_ = self.degrees_of_freedom_prior_ + nk
            cov = self.covariance_prior_ + nk[:, np.newaxis] * (
                sk + (beta0 / self.mean_precision_)[:, np.newaxis] * diff**2
            )
            self.covariances_ = cov / self.degrees_of_freedom_[:, np.newaxis]
        else:
            self.degrees_of_freedom_ = self.degrees_of_freedom_prior_ + nk
            cov = self.covariance_prior_ + nk * (
                sk + beta0 / self.mean_precision_ * np.mean(diff**2, axis=1)
            )
            self.covariances_ = cov / self.degrees_of_freedom_

    # ---------------------------------------------------------- expectations
    def _estimate_log_weights(self):
        """E[log pi_k] under q(pi) (stick-breaking or Dirichlet)."""
        if self.weight_concentration_prior_type == "dirichlet_process":
            a, b = self.weight_concentration_
            dg_sum = digamma(a + b)
            return (
                digamma(a)
                - dg_sum
                + np.hstack((0, np.cumsum(digamma(b) - dg_sum)[:-1]))
            )
        wc = self.weight_concentration_
        return digamma(wc) - digamma(np.sum(wc))

    def _log_det_cholesky(self):
        """log det of the precision Cholesky factor, per component (PRML 10.65 part)."""
        pc = self.precisions_cholesky_
        D = self.means_.shape[1]
        cov_type = self.covariance_type
        if cov_type == "full":
            return np.log(np.diagonal(pc, axis1=1, axis2=2)).sum(axis=1)
        if cov_type == "tied":
            return np.log(np.diag(pc)).sum()
        if cov_type == "diag":
            return np.log(pc).sum(axis=1)
        return D * np.log(pc)

    def _expected_log_det_lambda(self):
        """E[log det Lambda_k] without the log det W term (PRML eq. 10.65)."""
        D = self.means_.shape[1]
        nu = np.atleast_1d(self.degrees_of_freedom_)
        dg = digamma(0.5 * (nu - np.arange(D)[:, np.newaxis])).sum(axis=0)
        out = D * math.log(2.0) + dg
        return out if np.ndim(self.degrees_of_freedom_) else out[0]

    def _log_wishart_norm(self):
        """log of each Wishart factor's normalizer B(W_k, nu_k) (PRML eq. B.79)."""
        D = self.means_.shape[1]
        nu = self.degrees_of_freedom_
        return -(
            nu * (self._log_det_cholesky() - 0.5 * D * np.log(nu))
            + nu * D * 0.5 * math.log(2.0)
            + gammaln(0.5 * (np.atleast_1d(nu) - np.arange(D)[:, np.newaxis])).sum(
                axis=0
            )
        )

    def _bound(self, entropy):
        """scikit-learn's lower bound (constants dropped) after a CAVI round."""
        D = self.means_.shape[1]
        log_wishart_norm = self._log_wishart_norm()
        if self.covariance_type == "tied":
            log_wishart = self.n_components * float(log_wishart_norm[0])
        else:
            log_wishart = float(np.sum(log_wishart_norm))
        if self.weight_concentration_prior_type == "dirichlet_process":
            a, b = self.weight_concentration_
            log_norm_weight = -np.sum(betaln(a, b))
        else:
            wc = self.weight_concentration_
            log_norm_weight = gammaln(np.sum(wc)) - np.sum(gammaln(wc))
        return (
            entropy
            - log_wishart
            - log_norm_weight
            - 0.5 * D * np.sum(np.log(self.mean_precision_))
        )

    def _after_load(self):
        """A checkpoint written during a first fit holds the factors but not
        ``weights_`` and ``precisions_`` (set at the end of a fit): derived here, so
        that a loaded checkpoint samples and summarizes like a fitted model."""
        if hasattr(self, "precisions_cholesky_") and not hasattr(self, "weights_"):
            self._set_derived()

    def _set_derived(self):
        """weights_ and precisions_ from the fitted variational parameters."""
        if self.weight_concentration_prior_type == "dirichlet_process":
            a, b = self.weight_concentration_
            total = a + b
            weights = a / total * np.hstack((1, np.cumprod(b[:-1] / total[:-1])))
            self.weights_ = weights / weights.sum()
        else:
            self.weights_ = self.weight_concentration_ / np.sum(
                self.weight_concentration_
            )
        pc = self.precisions_cholesky_
        if self.covariance_type == "full":
            self.precisions_ = np.matmul(pc, pc.transpose(0, 2, 1))
        elif self.covariance_type == "tied":
            self.precisions_ = pc @ pc.T
        else:
            self.precisions_ = pc**2

    # ------------------------------------------- posterior predictive and draws
    def predictive_log_density(self, X):
        """Log of the posterior predictive density of each sample (Student-t mixture).

        Unlike :meth:`score_samples` (scikit-learn's density at the posterior means),
        this integrates the means and precisions over q: for ``'full'`` the mixture
        of multivariate Student-t's of PRML eq. 10.81; for the other covariance
        types the analogues derived in :mod:`fastvi.predictive`. It is wider than
        the plug-in density where the data are few.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
        """
        from .predictive import mixture_log_density

        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return mixture_log_density(self, X)

    def sample_predictive(self, n_samples=1, random_state=None):
        """Draw samples from the posterior predictive (the Student-t mixture).

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, Generator, RandomState or None, default=None

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            Component of each sample.
        """
        from .posterior import check_n_draws, generator
        from .predictive import mixture_sample

        check_is_fitted(self)
        n = check_n_draws(n_samples, "n_samples")
        return mixture_sample(self, n, generator(random_state))

    def sample_posterior(self, n_draws, random_state=None):
        """Draws of the mixture's parameters from q.

        Parameters
        ----------
        n_draws : int
        random_state : int, Generator, RandomState or None, default=None

        Returns
        -------
        draws : dict
            ``weights_`` (n_draws, K), ``means_`` (n_draws, K, D), ``precisions_``
            and ``covariances_`` (n_draws, *covariances_.shape); see
            :func:`fastvi.posterior.mixture_draws` for q per covariance type. The
            draws of ``means_`` and ``precisions_`` average to the attributes; those
            of ``weights_`` to E[pi] (for a Dirichlet process with the last stick
            set to 1, which ``weights_`` rescales instead).
        """
        from .posterior import check_n_draws, generator, mixture_draws

        check_is_fitted(self)
        return mixture_draws(self, check_n_draws(n_draws), generator(random_state))

    def to_arviz(self, n_draws=1000, random_state=None):
        """:meth:`sample_posterior` as ArviZ data (one chain), with the bound per
        iteration (``lower_bounds_``) as ``sample_stats.lower_bound``. Needs the
        optional dependency arviz (``pip install 'fastvi[arviz]'``)."""
        from .posterior import cavi_to_arviz

        return cavi_to_arviz(self, n_draws, random_state)


def _wishart_shape(nu, cov_type):
    """nu broadcast against the covariances of ``cov_type``."""
    if cov_type == "full":
        return nu[:, np.newaxis, np.newaxis]
    if cov_type == "diag":
        return nu[:, np.newaxis]
    return nu


def _mean_outer(weight, means, cov_type):
    """sum of weight_k m_k m_k^T in the shape of ``cov_type``'s W^{-1}."""
    if cov_type == "full":
        return (
            weight[:, np.newaxis, np.newaxis]
            * means[:, :, np.newaxis]
            * means[:, np.newaxis]
        )
    if cov_type == "tied":  # the shared factor averages the K components
        return (weight * means.T) @ means / means.shape[0]
    if cov_type == "diag":
        return weight[:, np.newaxis] * means**2
    return weight * np.mean(means**2, axis=1)


def _natural_blend(current, target, rho, cov_type):
    """The global factors at the natural parameters (1 - rho) eta(current) +
    rho eta(target), computed stably.

    ``current`` and ``target`` are ``(weight_concentration, beta, m, nu, covariances)``
    with scikit-learn's normalized covariances W^{-1} / nu. Writing each Normal-Wishart
    factor as exp(<eta, T(mu, Lambda)>) over the sufficient statistics
    T = (mu^T Lambda mu, Lambda mu, Lambda, log det Lambda) gives
    eta = (-beta / 2, beta m, -(W^{-1} + beta m m^T) / 2, (nu - D) / 2)
    (PRML eqs. 10.59-10.63 are eta_0 plus the expected statistics of the data). The
    Dirichlet's natural parameter is alpha - 1 and the stick-breaking Betas' are
    (a - 1, b - 1). 'tied' shares one Wishart whose W^{-1} + beta m m^T term and nu
    are the means over the components, as in scikit-learn's tied update; 'diag' and
    'spherical' keep the diagonal of W^{-1} + beta m m^T and its mean over features.

    The Dirichlet/Beta parameters, beta, beta m and nu are affine in the natural
    parameters and are combined directly. W^{-1} + beta m m^T is combined about the
    new mean m (sum_i w_i m_i m_i^T - beta m m^T = sum_i w_i (m_i - m)(m_i - m)^T
    for weights w_i summing to beta), which avoids the cancellation of forming and
    subtracting beta m m^T when the means are far from the origin. rho = 1 gives
    ``target`` (to rounding of the means).
    """
    keep = 1.0 - rho
    w_cur, b_cur, m_cur, nu_cur, c_cur = current
    w_new, b_new, m_new, nu_new, c_new = target
    if isinstance(w_cur, tuple):
        weights = tuple(keep * a + rho * b for a, b in zip(w_cur, w_new))
    else:
        weights = keep * w_cur + rho * w_new
    a_cur, a_new = keep * b_cur, rho * b_new
    beta = a_cur + a_new
    means = (a_cur[:, np.newaxis] * m_cur + a_new[:, np.newaxis] * m_new) / beta[
        :, np.newaxis
    ]
    nu = keep * nu_cur + rho * nu_new
    w_inv = (
        keep * (c_cur * _wishart_shape(nu_cur, cov_type))
        + rho * (c_new * _wishart_shape(nu_new, cov_type))
        + _mean_outer(a_cur, m_cur - means, cov_type)
        + _mean_outer(a_new, m_new - means, cov_type)
    )
    return weights, beta, means, nu, w_inv / _wishart_shape(nu, cov_type)


def _check_pass_shapes(X, kind, means, prec, const, shift, resp_in, labels_in):
    """Refuse arrays whose shapes disagree before the kernel indexes by them.

    The kernel reads the parameters, the shift and the given responsibilities by
    the sizes of ``X`` and ``const`` (K, D); an edited or damaged model must fail
    here, loud. (With given responsibilities the parameters are not read.)
    """
    N, D = X.shape
    K = const.shape[0]
    given = resp_in.shape[0] or labels_in.shape[0]
    prec_shape = {0: (K, D, D), 1: (1, D, D), 2: (K, 1, D)}[kind]
    bad = (
        const.ndim != 1
        or (not given and (means.shape != (K, D) or prec.shape != prec_shape))
        or (shift.shape[0] and shift.shape != (K, D))
        or (resp_in.shape[0] and resp_in.shape != (N, K))
        or (labels_in.shape[0] and labels_in.shape != (N,))
    )
    if bad:
        raise ValueError(
            f"the mixture's arrays disagree: means {means.shape}, precisions "
            f"{prec.shape}, {K} components, data with {D} features"
        )


def _kernel_array(a, dtype=np.float64):
    """``dtype``, C-contiguous and writable: one kernel signature, one compile.

    (numba types read-only arrays separately, so a read-only view such as a
    ``np.broadcast_to`` result would compile the kernel a second time.)
    """
    return np.require(a, dtype=dtype, requirements=["C", "W"])


def _tile_rows(dtype):
    """Rows per tile: ``TILE_ROWS`` float64 rows, twice as many float32 rows (the
    same bytes; measured ~10% faster for 'diag' than 256 float32 rows, N=1e6)."""
    return TILE_ROWS * 8 // np.dtype(dtype).itemsize


def _centered_gram(X64, center):
    """Per-chunk partials (C, D, D) of the centered Gram matrix (upper triangles)."""
    N, D = X64.shape
    parts = np.empty((-(-N // CHUNK_ROWS), D, D))
    map_chunks(_gmm_kernels().gram_chunks, len(parts), X64, center, CHUNK_ROWS, parts)
    return parts


def _mixture_pass(X, kind, means, prec, const, shift, resp_in, labels_in, outs=None):
    """One pass of ``kernels.gmm.mixture_chunks`` over all of X, on the fit's threads.

    ``outs``: ``(log_resp, norm, labels)`` arrays to fill, or None for statistics
    only. Returns the per-chunk partials ``(nk, sx, sq, norm, ent)`` (float64).
    The pass runs in the dtype of ``const`` (float64, or float32 lanes): ``X``, the
    other parameters and given responsibilities are converted to it.
    """
    dt = const.dtype
    X, means, prec, shift = (_kernel_array(a, dt) for a in (X, means, prec, shift))
    if resp_in.shape[0]:
        resp_in = _kernel_array(resp_in, dt)
    else:
        resp_in = np.empty((0, const.shape[0]), dt)
    _check_pass_shapes(X, kind, means, prec, const, shift, resp_in, labels_in)
    N, D = X.shape
    K = const.shape[0]
    C = -(-N // CHUNK_ROWS)
    Dq = {0: D, 1: 0, 2: 1}[kind]
    parts = (
        np.empty((C, K)),
        np.empty((C, K, D)),
        np.empty((C, K, Dq, D)),
        np.empty(C),
        np.empty(C),
    )
    if outs is None:
        outs = (np.empty((0, K), dt), np.empty(0, dt), _NO_LABELS)
    map_chunks(
        _gmm_kernels().mixture_chunks(kind, D),
        C,
        X,
        means,
        prec,
        const,
        shift,
        resp_in,
        labels_in,
        CHUNK_ROWS,
        _tile_rows(dt),
        *outs,
        *parts,
    )
    return parts


def _default_covariance_prior(gram, n_samples, cov_type):
    """scikit-learn's default covariance prior (np.cov / np.var, ddof=1) from the Gram."""
    cov = gram / (n_samples - 1)
    if cov_type in ("full", "tied"):
        return np.atleast_2d(cov)
    var = np.diagonal(cov).copy()
    return var if cov_type == "diag" else var.mean()


def _symmetrize_upper(a):
    """Fill the lower triangle of (..., D, D) arrays from their upper triangle."""
    upper = np.triu(a)
    return upper + np.swapaxes(np.triu(a, 1), -1, -2)


def _precision_cholesky(covariances, cov_type, means):
    """Upper-triangular U with U U^T = covariance^{-1}, or scikit-learn's error.

    A variance at or below the rounding level of the component mean, (8 ulp of
    |mean|)^2, is a zero variance that rounding made positive (a constant feature with
    reg_covar=0): it is ill-defined, as an exact zero is.
    """
    floor = (8.0 * np.finfo(np.float64).eps * np.abs(means)) ** 2
    if cov_type in ("full", "tied"):
        covs = covariances if cov_type == "full" else covariances[np.newaxis]
        floor = floor if cov_type == "full" else floor.max(axis=0, keepdims=True)
        D = covs.shape[-1]
        eye = np.eye(D)
        out = np.empty_like(covs)
        for k, cov in enumerate(covs):
            try:
                chol = linalg.cholesky(cov, lower=True)
            except linalg.LinAlgError:
                raise ValueError(_ILL_DEFINED) from None
            if np.any(np.diag(chol) ** 2 <= floor[k]):
                raise ValueError(_ILL_DEFINED)
            out[k] = linalg.solve_triangular(chol, eye, lower=True).T
        return out if cov_type == "full" else out[0]
    if cov_type == "spherical":
        floor = floor.max(axis=1)
    if np.any(covariances <= floor) or not np.all(np.isfinite(covariances)):
        raise ValueError(_ILL_DEFINED)
    return 1.0 / np.sqrt(covariances)
