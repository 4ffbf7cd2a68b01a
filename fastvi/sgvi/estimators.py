"""Bayesian logistic and Poisson regression fitted by SGVI, with scikit-learn's API."""

from functools import partial
from numbers import Integral, Real
from time import perf_counter

import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import _schema
from .._cavi import all_or_nothing, monitor_of
from .._compile import announces
from .._numerics import check_finite_prediction
from ..persist import SaveMixin
from ..rows import fit_rows, predict_rows
from .diagnostics import warn_user
from .engine import (
    FAMILIES,
    SGVI,
    Adam,
    Frame,
    RobbinsMonro,
    SGVIResult,
    SGVIRun,
    SGVIState,
    StanAdaptive,
    StanConvergence,
    WindowConvergence,
)
from .models import GLM
from .priors import Prior

__all__ = ["BayesianLogisticRegression", "BayesianPoissonRegression"]

# Draws of q kept after a fit for the posterior predictive (predict, predict_proba)
N_PREDICTIVE_DRAWS = 200


_OPTIMIZERS = ("adam", "robbins-monro", "stan")


class _Kept(_schema.Spec):
    """What a stopping rule or monitor has kept of a run (``SGVIRun.rule`` and
    ``.watch``): a dict of numbers, finite float arrays and lists or tuples of
    them (the engine checks the names and sizes when it resumes)."""

    def check(self, value, dims):
        def plain(v):
            if isinstance(v, np.ndarray):
                return v.dtype == np.float64 and bool(np.all(np.isfinite(v)))
            if isinstance(v, (list, tuple)):
                return all(plain(x) for x in v)
            return v is None or isinstance(v, (bool, Integral, Real))

        if not isinstance(value, dict) or not all(
            isinstance(k, str) and plain(v) for k, v in value.items()
        ):
            raise _schema.SchemaMismatch("is not a dict of numbers and float arrays")


class _SGVIRegressionBase(SaveMixin, BaseEstimator):
    _family = None  # "logistic" / "poisson", set by subclasses

    # integers held to int64 (_schema.int64_params): fit and load refuse larger ones
    _parameter_constraints: dict = _schema.int64_params(
        {
            "prior_scale": [Interval(Real, 0.0, None, closed="neither")],
            "intercept_prior_scale": [Interval(Real, 0.0, None, closed="neither")],
            "coef_prior": [None, Prior],
            "intercept_prior": [None, Prior],
            "fit_intercept": ["boolean"],
            "family": [StrOptions({"meanfield", "fullrank"})],
            "estimator": [StrOptions({"stl", "reparam", "score"})],
            "method": [StrOptions({"auto", "sgd"})],
            "optimizer": [StrOptions(set(_OPTIMIZERS))],
            "learning_rate": [Interval(Real, 0.0, None, closed="neither")],
            "n_samples": [Interval(Integral, 1, None, closed="left")],
            "batch_size": [None, Interval(Integral, 1, None, closed="left")],
            "max_iter": [Interval(Integral, 1, None, closed="left")],
            "tol": [Interval(Real, 0.0, None, closed="left")],
            "convergence": [StrOptions({"window", "stan"})],
            "window": [Interval(Integral, 2, None, closed="left")],
            "tol_rel_obj": [Interval(Real, 0.0, None, closed="left")],
            "eval_elbo": [Interval(Integral, 1, None, closed="left")],
            "init_scale": [None, Interval(Real, 0.0, None, closed="neither")],
            "progress_bar": ["boolean"],
            "verbose": ["verbose"],
            "verbose_interval": [Interval(Integral, 1, None, closed="left")],
            "qmc": ["boolean"],
            "warm_start": ["boolean"],
            "random_state": ["random_state"],
            "n_jobs": [None, Integral],
        }
    )

    def __init__(
        self,
        *,
        prior_scale=1.0,
        intercept_prior_scale=10.0,
        coef_prior=None,
        intercept_prior=None,
        fit_intercept=True,
        family="meanfield",
        estimator="stl",
        method="auto",
        optimizer="adam",
        learning_rate=0.05,
        n_samples=1,
        batch_size=None,
        max_iter=2000,
        tol=1e-3,
        convergence="window",
        window=100,
        tol_rel_obj=0.01,
        eval_elbo=100,
        init_scale=None,
        qmc=False,
        warm_start=False,
        random_state=None,
        n_jobs=None,
        progress_bar=False,
        verbose=0,
        verbose_interval=100,
    ):
        self.prior_scale = prior_scale
        self.intercept_prior_scale = intercept_prior_scale
        self.coef_prior = coef_prior
        self.intercept_prior = intercept_prior
        self.fit_intercept = fit_intercept
        self.family = family
        self.estimator = estimator
        self.method = method
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.convergence = convergence
        self.window = window
        self.tol_rel_obj = tol_rel_obj
        self.eval_elbo = eval_elbo
        self.init_scale = init_scale
        self.qmc = qmc
        self.warm_start = warm_start
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.progress_bar = progress_bar
        self.verbose = verbose
        self.verbose_interval = verbose_interval

    # ------------------------------------------------------------ saved models
    def _fitted_schema(self, attrs):
        """The fitted attributes a saved model may hold (see :mod:`fastvi._schema`).

        D = ``n_features_in_``, P = D + ``fit_intercept`` coordinates of q, K its
        packed parameters (2P mean-field, P + P(P+1)/2 full-rank). ``state_`` is
        kept whole (q's parameters, the optimizer's moments, the seed, the
        whitening frame) so that ``warm_start`` continues a loaded fit exactly as
        it would have continued the saved one; its layout follows the family and
        optimizer of the fit that made it (``_engine_key``).
        """
        S = _schema
        D = "D"
        fi = int(bool(self.fit_intercept))
        P = (D, fi)
        family, optimizer = self.family, self.optimizer
        key = attrs.get("_engine_key")
        if (
            isinstance(key, tuple)
            and len(key) == 3
            and isinstance(key[0], str)
            and isinstance(key[1], str)
            and key[0] in FAMILIES
            and key[1] in _OPTIMIZERS
        ):
            family, optimizer = key[0], key[1]
        n = attrs.get("n_features_in_")
        p = None
        if isinstance(n, (Integral, np.integer)) and not isinstance(
            n, (bool, np.bool_)
        ):
            p = int(n) + fi if n >= 1 else None
        if p is None:  # n_features_in_ is refused before these are used
            K, last = "K", None
        else:
            K = 2 * p if family == "meanfield" else p + p * (p + 1) // 2
            last = p - 1
        vec = S.Array((K,))
        opt_state = {
            "adam": S.Seq((vec, vec, S.Int(0), vec)),
            "robbins-monro": S.Seq((S.Int(0),)),
            "stan": S.Seq((vec, S.Int(0), S.Real(positive=True))),
        }[optimizer]
        B = S.Array((P,), positive=True)
        if family == "fullrank":  # a triangular factor, or sds above a size
            B = S.Either(S.Array((P, P), positive_diagonal=True, triangular="lower"), B)
        frame = S.Record(
            Frame,
            {
                "a": S.Array((P,)),
                "B": B,
                "corr": S.Seq(
                    (S.Real(finite=True), S.Int(0, high=last), S.Int(0, high=last))
                ),
            },
        )
        state = S.Record(
            SGVIState,
            {
                "params": S.Array((K,)),
                "opt_state": opt_state,
                "key": S.Int(0),
                "step": S.Int(0),
                "lr_scale": S.Real(positive=True),
                "frame": S.NoneOr(frame),
                "params_u": S.NoneOr(S.Array((K,))),
            },
            required=True,
        )
        run = S.Record(
            SGVIRun,
            {
                "state": state,
                "elbo": S.Array(("T",), finite=False),
                "rule": _Kept(),
                "watch": _Kept(),
                "converged": S.Bool(),
                "n_fixed": S.Int(0),
                "method": S.Choice(("sgd", "fixed+sgd")),
            },
        )
        return {
            "n_features_in_": S.Int(1, dim=D, required=True),
            "feature_names_in_": S.Names((D,)),
            "_engine_key": S.Seq(
                (S.Choice(FAMILIES), S.Choice(_OPTIMIZERS), S.Int(1, dim=P)),
                required=True,
            ),
            "state_": state,
            "posterior_mean_": S.Array((P,), required=True),
            # q's covariance factor (lower triangular: the draws' factor) and the
            # covariance, positive semi-definite (singular to rounding it may be)
            "_posterior_chol": S.Array(
                (P, P), positive_diagonal=True, triangular="lower", required=True
            ),
            "posterior_cov_": S.Array(
                (P, P), positive_semidefinite=True, required=True
            ),
            "_predictive_draws": S.Array((N_PREDICTIVE_DRAWS, P), required=True),
            "coef_": S.Array((D,), required=True),
            "coef_std_": S.Array((D,), required=True),
            "intercept_": S.Real(finite=True, required=True),
            "intercept_std_": S.Real(finite=True, required=True),
            "elbo_history_": S.Array(("T",), finite=False, required=True),
            "n_iter_": S.Int(0, required=True),
            "converged_": S.Bool(required=True),
            "fit_method_": S.Choice(("fixed", "sgd", "fixed+sgd"), required=True),
            "psis_khat_": S.Real(),
            # a checkpoint's run state (fastvi.batch.jobs.fit_sgvi), never a model's
            "run_": run,
            **self._target_schema(),
        }

    def _target_schema(self):
        return {}

    # ------------------------------------------------------------ fitting
    def _check_X(self, X, reset):
        return validate_data(
            self, X, reset=reset, dtype=[np.float64, np.float32], order="C"
        )

    @announces("sgvi")
    def fit(self, X, y):
        """Fit q to the posterior of the coefficients by SGVI.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a row-block source
            float32 input is kept in float32 for the data pass (faster); everything
            else is float64. A source such as :class:`fastvi.batch.io.NpyRows` (a
            float64 ``.npy`` file) fits out of core, a dask array on its workers
            (:mod:`fastvi.rows`; full passes only: ``batch_size=None``).
        y : array-like of shape (n_samples,)

        Returns
        -------
        self
        """
        self._validate_params()
        with all_or_nothing(self):
            rows = fit_rows(self, X, y, dtype=[np.float64, np.float32])
            y = rows.y.compute() if hasattr(rows.y, "compute") else rows.y
            self._fit(rows, self._encode_target(y))
        return self

    def _make_model(self, X, y, minibatch):
        return GLM(
            X,
            y,
            self._family,
            prior_scale=self.prior_scale,
            intercept_prior_scale=self.intercept_prior_scale,
            coef_prior=self.coef_prior,
            intercept_prior=self.intercept_prior,
            fit_intercept=self.fit_intercept,
            minibatch=minibatch,
        )

    def _fit(self, rows, y):
        N, D = rows.shape
        minibatch = self.batch_size is not None and self.batch_size < N
        model = self._make_model(rows, y, minibatch)
        if self.optimizer == "adam":
            opt = Adam(self.learning_rate)
        elif self.optimizer == "stan":
            opt = StanAdaptive()
        else:
            opt = RobbinsMonro(self.learning_rate)
        fixed = self._fixed_draws(minibatch)
        engine = SGVI(
            model,
            family=self.family,
            estimator=self.estimator,
            optimizer=opt,
            n_samples=self.n_samples,
            batch_size=self.batch_size,
            init_scale=self.init_scale,
            n_jobs=self.n_jobs,
            qmc=self.qmc,
            method="fixed" if fixed else "sgd",
        )
        if fixed:  # SGVI.run's default rule: the one the fixed-draw fit needs
            rule = None
        elif self.convergence == "window":
            rule = WindowConvergence(self.tol, self.window)
        else:
            rule = StanConvergence(self.tol_rel_obj, self.eval_elbo, self.max_iter)
        init_state = getattr(self, "state_", None) if self.warm_start else None
        if init_state is not None and (
            init_state.params.shape != (engine.family.size,)
            or getattr(self, "_engine_key", None) != self._engine_signature(model)
        ):
            init_state = None  # another problem: start afresh
        report = _Report(self, engine, init_state) if self.verbose else None
        monitor = monitor_of(self)
        watch = None if monitor.callback is None else partial(monitor.callback, self)
        result = engine.run(
            seed=_seed_from(self.random_state),
            max_iter=self.max_iter,
            convergence=rule,
            init_state=init_state,
            progress_bar=self.progress_bar,
            callback=report,
            resume=monitor.resume,
            monitor=watch,
        )
        if report is not None:
            report.end(result)
        history = getattr(self, "elbo_history_", None)
        self._store(result)
        if init_state is not None and history is not None:
            self.elbo_history_ = np.concatenate([history, result.elbo])
        stan = self.convergence == "stan"
        unconfirmed = result.stationarity is not None and not result.converged
        if (
            not result.converged
            and not unconfirmed  # the engine said why (StationarityWarning)
            and (self.tol_rel_obj if stan else self.tol) > 0
        ):
            why = {
                "fixed": "the fixed-draw fit (BFGS) did not reach its tolerance in "
                "max_iter={} iterations",
                "fixed+sgd": "the fixed draws' sampling error was too large, and "
                "the stochastic steps that followed did not converge in the rest "
                "of max_iter={}",
                "sgd": "the ELBO was still rising or q's means still moving after "
                "max_iter={} steps",
            }[result.method]
            warn_user(
                f"SGVI did not converge: {why.format(self.max_iter)}. Increase "
                "max_iter.",
                ConvergenceWarning,
            )

    def _fixed_draws(self, minibatch):
        """Whether ``method='auto'`` fits by fixed draws (see the class doc)."""
        return (
            self.method == "auto"
            and not minibatch
            and self.estimator != "score"
            and not self.qmc
            and (self.optimizer, self.learning_rate) == ("adam", 0.05)
            and (self.convergence, self.tol, self.window) == ("window", 1e-3, 100)
        )

    def _store(self, result):
        """Set the fitted attributes from the engine's ``result`` (an
        :class:`~fastvi.sgvi.engine.SGVIResult`); ``n_features_in_`` is set."""
        D = self.n_features_in_
        P = D + int(bool(self.fit_intercept))
        fam = FAMILIES[self.family](P)
        phi = result.state.params
        mean = fam.mean(phi).copy()
        self.state_ = result.state
        self._engine_key = (self.family, self.optimizer, P)
        self.posterior_mean_ = mean
        # q's covariance factor, used for draws: taken from the parameters, never
        # recomputed from posterior_cov_ (which may be singular to rounding).
        chol = fam.chol(phi) if hasattr(fam, "chol") else np.diag(fam.std(phi))
        self._posterior_chol, self.posterior_cov_ = chol, chol @ chol.T
        std = np.sqrt(np.sum(chol**2, axis=1))
        self.coef_ = mean[:D]
        self.coef_std_ = std[:D]
        self.intercept_ = float(mean[D]) if self.fit_intercept else 0.0
        self.intercept_std_ = float(std[D]) if self.fit_intercept else 0.0
        self.elbo_history_ = result.elbo
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.fit_method_ = result.method
        pred_rng = np.random.default_rng([result.state.key, result.state.step, 1 << 30])
        self._predictive_draws = self._draws(N_PREDICTIVE_DRAWS, pred_rng)

    def _checkpoint(self, run):
        """The model as a fit stopped at ``run`` (an :class:`SGVIRun`) leaves it
        (not converged: the run goes on), holding ``run`` as ``run_``: what a
        checkpoint saves (:func:`fastvi.batch.jobs.fit_sgvi`)."""
        ck = type(self)(**self.get_params(deep=False))
        for name in ("n_features_in_", "feature_names_in_", "classes_"):
            if hasattr(self, name):
                setattr(ck, name, getattr(self, name))
        ck._store(SGVIResult(run.state, run.elbo, False, run.elbo.shape[0]))
        ck.run_ = run
        return ck

    def _engine_signature(self, model):
        return (self.family, self.optimizer, model.size)

    def _draws(self, n_draws, rng):
        eps = rng.standard_normal((n_draws, self.posterior_mean_.shape[0]))
        return self.posterior_mean_ + eps @ self._posterior_chol.T

    def sample_posterior(self, n_draws, random_state=None):
        """Draws of the coefficients from the fitted q.

        Parameters
        ----------
        n_draws : int
        random_state : int, Generator, RandomState or None

        Returns
        -------
        draws : dict
            ``coef_`` (n_draws, n_features) and, with ``fit_intercept``,
            ``intercept_`` (n_draws,) (:func:`fastvi.posterior.sgvi_draws`).
        """
        from ..posterior import check_n_draws, generator, sgvi_draws

        check_is_fitted(self)
        return sgvi_draws(self, check_n_draws(n_draws), generator(random_state))

    def diagnose(self, X, y, n_draws=1000, random_state=None):
        """PSIS k-hat of the fitted q on the data ``X, y`` it was fitted to.

        Yao, Vehtari, Simpson & Gelman (2018): importance ratios log p - log q of
        ``n_draws`` draws from q, a generalized Pareto fit to the largest
        (:mod:`fastvi.sgvi.diagnostics`). Below 0.5 q is close to the posterior;
        above 0.7 a :class:`~fastvi.sgvi.PSISWarning` is issued and q's means and
        sds should not be trusted. Sets ``psis_khat_`` and returns it. The data
        are needed because the fit does not keep them. ``random_state=None``
        derives the draws' seed from the fit, so the k-hat of one fit is the same
        at every call.
        """
        check_is_fitted(self)
        if not isinstance(n_draws, Integral) or n_draws < 20:
            raise ValueError(f"n_draws must be an int >= 20, got {n_draws!r}.")
        X, y = validate_data(
            self, X, y, reset=False, dtype=[np.float64, np.float32], order="C"
        )
        y = self._encode_target(y, reset=False)
        model = self._make_model(X, y, minibatch=False)
        engine = SGVI(model, family=self.family, n_jobs=self.n_jobs)
        if self.state_.params.shape != (engine.family.size,):
            raise ValueError("X does not match the fitted model.")
        result = engine.diagnose(self.state_, int(n_draws), _seed_from(random_state))
        self.psis_khat_ = result.khat
        return result.khat

    def to_arviz(self, n_draws=1000, random_state=None):
        """Draws of q as ArviZ data (``posterior`` group: ``coef`` of shape
        (1, n_draws, n_features) and ``intercept``; ``sample_stats.elbo``: the ELBO
        trace over ``sgvi_step``). Needs the optional dependency arviz
        (``pip install 'fastvi[arviz]'``)."""
        from ..posterior import to_arviz

        draws = self.sample_posterior(n_draws, random_state)
        return to_arviz(draws, self.elbo_history_, "elbo", "sgvi_step", "SGVI")

    def loo(self, X, y, n_draws=2000, random_state=None):
        """PSIS-LOO expected log predictive density on the training data X, y.

        Draws of q (:meth:`sample_posterior`) and the pointwise likelihood of the
        model; see :mod:`fastvi.loo`. Returns a :class:`fastvi.loo.LOOResult`
        (``elpd_loo``, ``se``, ``p_loo``, ``pointwise``, ``khat``); a PSISWarning
        names the observations with k-hat above 0.7.
        """
        from ..loo import logistic_loglik, loo_from_loglik, poisson_loglik
        from ..posterior import check_n_draws

        check_is_fitted(self)
        n = check_n_draws(n_draws, minimum=20)
        X, y = validate_data(
            self, X, y, reset=False, dtype=[np.float64, np.float32], order="C"
        )
        y = self._encode_target(y, reset=False)
        X = np.asarray(X, dtype=np.float64)
        draws = self.sample_posterior(n, random_state)
        loglik = logistic_loglik if self._family == "logistic" else poisson_loglik
        return loo_from_loglik(loglik(self, X, y, draws))

    def _predictive(self, X, what, n_columns=None, dtype=np.float64):
        """``what`` (:func:`_predictive_rows`) of every row of ``X``: an array, or
        a lazy dask array for a dask ``X``."""
        check_is_fitted(self)
        args = (what, self._predictive_draws, self.fit_intercept)
        args += (getattr(self, "classes_", None),)
        return predict_rows(self, X).map_rows(
            _predictive_rows, args, n_columns=n_columns, dtype=dtype
        )


_PREDICTIVE_METHODS = {
    "mean": "BayesianPoissonRegression.predict",
    "log_mean": "BayesianPoissonRegression.score",
    "proba": "BayesianLogisticRegression.predict_proba",
    "decision": "BayesianLogisticRegression.decision_function",
    "predict": "BayesianLogisticRegression.predict",
}

# beyond this |log-odds| 1 - p loses digits (p within 5e-5 of 0 or 1): the log-odds
# come from log-sigmoids instead
_FAR_LOG_ODDS = 10.0


def _d2_poisson_from_log_mean(y, log_mean, sample_weight=None):
    """D^2 of Poisson counts ``y`` against means given by their logs:
    1 - sum w d(y, mu) / sum w d(y, mean of y), d(y, mu) = 2 (y log(y / mu) - y +
    mu), which stays finite when mu underflows (scikit-learn's
    ``d2_tweedie_score(power=1)`` for means above 0)."""
    from scipy.special import xlogy
    from sklearn.utils.validation import _check_sample_weight, check_consistent_length

    y = np.asarray(y, dtype=np.float64)
    log_mean = np.asarray(log_mean, dtype=np.float64)
    check_consistent_length(y, log_mean)
    w = _check_sample_weight(sample_weight, y)
    with np.errstate(under="ignore"):
        dev = 2.0 * (xlogy(y, y) - y * log_mean - y + np.exp(log_mean))
    y_bar = np.average(y, weights=w)
    dev_null = 2.0 * (xlogy(y, y) - xlogy(y, y_bar) - y + y_bar)
    return 1.0 - np.average(dev, weights=w) / np.average(dev_null, weights=w)


def _predictive_rows(X, what, draws, fit_intercept, classes):
    """Per-row posterior predictive of the 200 stored draws of q: the mean count
    (``'mean'``), the class probabilities (``'proba'``), their log-odds
    (``'decision'``) or the more probable class (``'predict'``)."""
    D = X.shape[1]
    method = _PREDICTIVE_METHODS[what]
    with np.errstate(over="ignore", invalid="ignore"):  # checked below
        eta = X @ draws[:, :D].T
        if fit_intercept:
            eta += draws[:, D]
    # inf - inf: a row too large for the model (an infinite eta, a sure class, is
    # a limit the sigmoid takes)
    check_finite_prediction(
        method, X, "the linear predictors x . coef", eta[np.isnan(eta)]
    )
    if what == "log_mean":  # the log of the mean count, which may underflow
        return logsumexp(eta, axis=1) - np.log(eta.shape[1])
    if what == "mean":
        with np.errstate(over="ignore"):
            mean = np.mean(np.exp(eta), axis=1)
            far = ~np.isfinite(mean)
            if np.any(far):  # a draw's exp overflows, the mean may not
                mean[far] = np.exp(logsumexp(eta[far], axis=1) - np.log(eta.shape[1]))
        check_finite_prediction(method, X, "the mean counts exp(x . coef)", mean)
        return mean
    # mean over draws of sigmoid(eta), computed stably
    p1 = np.mean(0.5 * (1.0 + np.tanh(0.5 * eta)), axis=1)
    if what == "proba":
        return np.column_stack([1.0 - p1, p1])
    if what == "decision":
        with np.errstate(divide="ignore"):
            odds = np.log(p1) - np.log1p(-p1)
        far = ~(np.abs(odds) <= _FAR_LOG_ODDS)
        if np.any(far):  # log mean sigmoid(eta) - log mean sigmoid(-eta)
            e = eta[far]
            with np.errstate(over="ignore", invalid="ignore"):
                odds[far] = logsumexp(-np.logaddexp(0.0, -e), axis=1) - logsumexp(
                    -np.logaddexp(0.0, e), axis=1
                )
        check_finite_prediction(method, X, "the log-odds", odds)
        return odds
    return classes[(p1 > 0.5).astype(int)]


class _Report:
    """Verbose output of a fit, in the manner of scikit-learn's mixtures: how q
    starts, every ``verbose_interval`` steps (BFGS iterations, for the fixed-draw
    fit) the mean ELBO of those steps (with ``verbose >= 2`` the time they took),
    and how the fit ended."""

    def __init__(self, est, engine, init_state):
        self.verbose = est.verbose
        self.interval = est.verbose_interval
        self.engine = engine
        self.resumed = init_state is not None
        self.last = perf_counter()

    def __call__(self, n, elbo, state):
        if n == 1:
            if self.resumed:
                start = f"resumed at step {state.step - 1}"
            elif state.frame is not None:
                start = "Laplace approximation (whitened steps)"
            else:
                start = "no usable mode: sd 0.1 at the initial point"
            print(
                f"SGVI: {self.engine.family.name} q of {self.engine.model.size} "
                f"coordinates; start: {start}"
            )
        if n % self.interval:
            return
        unit = "Iteration" if self.engine.method == "fixed" else "Step"
        line = f"  {unit} {n}\t mean ELBO {np.mean(elbo[-self.interval :]):.6g}"
        if self.verbose >= 2:
            now = perf_counter()
            line += f"\t time lapse {now - self.last:.5f}s"
            self.last = now
        print(line)

    def end(self, result):
        how = "converged" if result.converged else "did not converge"
        khat = (
            "" if result.psis_khat is None else f"; PSIS k-hat {result.psis_khat:.2f}"
        )
        unit = {
            "fixed": "BFGS iterations on fixed draws",
            "fixed+sgd": "BFGS iterations on fixed draws and stochastic steps",
            "sgd": "steps",
        }[result.method]
        print(f"SGVI {how} after {result.n_iter} {unit}{khat}")


def _seed_from(random_state):
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(np.iinfo(np.int64).max))
    return random_state


class BayesianLogisticRegression(ClassifierMixin, _SGVIRegressionBase):
    """Bayesian logistic regression fitted by variational inference (SGVI).

    ``y ~ Bernoulli(sigmoid(X coef + intercept))``, ``coef_d ~ coef_prior``
    (default ``N(0, prior_scale^2)``), ``intercept ~ intercept_prior`` (default
    ``N(0, intercept_prior_scale^2)``); q is a mean-field or full-rank Gaussian
    fitted by :class:`fastvi.sgvi.SGVI`: by default the ELBO on one fixed set of
    draws maximized by BFGS from the Laplace start (``method='auto'``), else by
    stochastic gradient steps. X may be in memory, a row-block source read out
    of core (:class:`fastvi.batch.io.NpyRows`) or a dask array (full passes).

    Parameters
    ----------
    prior_scale : float, default=1.0
        Prior sd of each coefficient (shorthand for ``coef_prior=Normal(0,
        prior_scale)``).
    intercept_prior_scale : float, default=10.0
        Prior sd of the intercept (shorthand for ``intercept_prior=Normal(0,
        intercept_prior_scale)``).
    coef_prior : Prior or None, default=None
        Prior of the coefficients from :mod:`fastvi.sgvi.priors`: ``Normal``,
        ``StudentT``, ``Cauchy`` or ``Flat``, its fields numbers or one value per
        feature (e.g. ``StudentT(3, 0.0, [2.5, 1.0, 1.0])``). None: the
        ``prior_scale`` normal. Giving it with a ``prior_scale`` other than 1 is
        an error (checked in ``fit``), and so is an array of the wrong length.
    intercept_prior : Prior or None, default=None
        Prior of the intercept (numbers only), as ``coef_prior``; None: the
        ``intercept_prior_scale`` normal. An error with ``fit_intercept=False``.
    fit_intercept : bool, default=True
        Fit an intercept (with its own prior); False: the linear predictor is
        ``X coef`` alone.
    family : {'meanfield', 'fullrank'}, default='meanfield'
        Gaussian family of q.
    estimator : {'stl', 'reparam', 'score'}, default='stl'
        Gradient estimator: "sticking the landing" (Roeder et al. 2017), the
        reparameterization gradient with closed-form entropy (Stan's ADVI), or the
        score-function gradient with a control variate (Ranganath et al. 2014;
        needs ``n_samples >= 2``, far noisier: for comparison).
    method : {'auto', 'sgd'}, default='auto'
        ``'auto'``: when the fit uses every row (``batch_size`` None) with the
        default optimizer and stopping settings (``optimizer``, ``learning_rate``,
        ``convergence``, ``tol``, ``window``), ``estimator`` is not ``'score'``
        and ``qmc`` is False, q is fitted on one fixed set of draws by BFGS from
        the Laplace start (DADVI, :mod:`fastvi.sgvi.fixed`: a few dozen data
        passes) and accepted when its estimated sampling error is small; when it
        is not, or there is no Laplace start, stochastic steps follow exactly as
        :meth:`fastvi.sgvi.SGVI.run` takes them. Other settings, and ``'sgd'``:
        stochastic steps only, with the settings below.
    optimizer : {'adam', 'robbins-monro', 'stan'}, default='adam'
        ``'stan'``: Stan ADVI's adaptive step-size sequence with its search for
        eta over {100, 10, 1, 0.1, 0.01} (50 steps each; ``learning_rate`` is
        not used).
    learning_rate : float, default=0.05
        Adam's step size, or the Robbins-Monro scale (rho_t = lr (t + 2)^-0.7).
    n_samples : int, default=1
        Monte Carlo draws of q per step (S).
    batch_size : int or None, default=None
        Minibatch rows per step (without replacement; likelihood scaled by N/B);
        None uses every row.
    max_iter : int, default=2000
        Maximum number of steps.
    tol : float, default=1e-3
        ``convergence='window'``: the ELBO has stalled when its windowed mean gains
        less than ``max(tol, 2 standard errors)`` (nats); at the first stall the
        step size is multiplied by 0.2 and the fit stops at the next stall
        (:class:`~fastvi.sgvi.WindowConvergence`); 0 disables early stopping. A fit
        whose windowed ELBO falls far below its best issues an
        :class:`~fastvi.sgvi.diagnostics.ELBODivergenceWarning`.
    convergence : {'window', 'stan'}, default='window'
        ``'stan'`` uses Stan ADVI's relative-change rule with ``tol_rel_obj`` and
        ``eval_elbo`` (circular buffer; mean or median below the tolerance).
    window : int, default=100
        Steps per window of the default rule.
    tol_rel_obj : float, default=0.01
        ``convergence='stan'``: the relative ELBO change below which the fit stops.
    eval_elbo : int, default=100
        ``convergence='stan'``: steps between ELBO evaluations of the rule.
    init_scale : float or None, default=None
        None: q starts at the Laplace approximation of the posterior and the
        steps are taken in the coordinates it whitens (scale-free; see
        :class:`fastvi.sgvi.SGVI`). A number: q starts at 0 with this sd in every
        coordinate and steps in the raw coordinates.
    qmc : bool, default=False
        Draw eps from a scrambled Sobol' sequence (randomized quasi-Monte Carlo;
        lower-variance gradients when ``n_samples`` is a power of 2 above 1).
    warm_start : bool, default=False
        Continue from the previous fit's state (same data shape and family) by
        stochastic steps (also after a fixed-draw fit: the fixed-draw fit only
        starts afresh).
    random_state : int, RandomState, Generator or None, default=None
        Seeds every draw; a fixed seed gives bitwise-identical fits for any
        ``n_jobs``.
    n_jobs : int, default=None
        Threads for the data pass (None: all).
    progress_bar : bool, default=False
        Show a tqdm progress bar of the steps (needs ``tqdm``).
    verbose : int, default=0
        1: print how q starts (the Laplace approximation or not), the mean ELBO of
        every ``verbose_interval`` steps, and how the fit ended (steps, converged,
        PSIS k-hat); 2: also the time of each interval.
    verbose_interval : int, default=100
        Steps between verbose lines.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    coef_ : ndarray of shape (n_features,)
        Posterior mean (under q) of the coefficients.
    coef_std_ : ndarray of shape (n_features,)
        Posterior sd (under q).
    intercept_, intercept_std_ : float
    posterior_mean_, posterior_cov_ : ndarray
        Mean and covariance of q over ``[coef..., intercept]``.
    elbo_history_ : ndarray
        ELBO estimate at every step (mean over the S draws plus q's entropy); for
        the fixed-draw fit the ELBO on its fixed draws after every BFGS
        iteration. Warm starts append to it.
    n_iter_ : int
        Iterations of the last fit: stochastic steps, or BFGS iterations of the
        fixed-draw fit (plus the stochastic steps after it, when they followed);
        ``max_iter`` bounds the sum.
    converged_ : bool
        Stochastic steps: the stopping rule fired. Fixed draws: the optimizer
        converged and two fresh sets of draws agree with the fit to 0.05 of
        q's sds in the means and 0.035 in log sd.
    fit_method_ : {'fixed', 'sgd', 'fixed+sgd'}
        How the last fit went (:attr:`fastvi.sgvi.SGVIResult.method`).
    state_ : SGVIState
        The engine's state (resume with ``warm_start=True`` or
        ``fastvi.sgvi.SGVI.run(init_state=...)``).
    psis_khat_ : float
        Set by :meth:`diagnose`: the PSIS k-hat of q (Yao et al. 2018); above 0.7
        q is unreliable.

    Notes
    -----
    ``predict_proba`` is the posterior predictive, the average of
    sigmoid(x coef_s + intercept_s) over 200 draws from q fixed at fit time.
    """

    _family = "logistic"

    def _target_schema(self):
        return {
            "classes_": _schema.Either(
                _schema.Array((2,), None), _schema.Names((2,)), required=True
            )
        }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # binary only, by design
        return tags

    def _encode_target(self, y, reset=True):
        check_classification_targets(y)
        if not reset:
            y = np.asarray(y)
            known = np.isin(y, self.classes_)
            if not np.all(known):
                raise ValueError(
                    f"y has labels not seen in fit: {np.unique(y[~known])[:5]!r}."
                )
            return (y == self.classes_[1]).astype(np.float64)
        classes, y_enc = np.unique(y, return_inverse=True)
        if classes.shape[0] != 2:
            raise ValueError(
                "Only binary classification is supported: "
                "BayesianLogisticRegression needs exactly two classes in y; got "
                f"{classes.shape[0]} class(es): {classes[:5]!r}."
            )
        self.classes_ = classes
        return y_enc.astype(np.float64)

    def predict_proba(self, X):
        """Posterior predictive class probabilities, shape (n_samples, 2)."""
        return self._predictive(X, "proba", 2)

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def decision_function(self, X):
        """Log-odds of the posterior predictive probability of ``classes_[1]``."""
        return self._predictive(X, "decision")

    def predict(self, X):
        """The class with the larger posterior predictive probability."""
        check_is_fitted(self)
        return self._predictive(X, "predict", dtype=self.classes_.dtype)

    def predictive_proba(self, X, method="mc", n_draws=1000, random_state=None):
        """Predictive class probabilities by Monte Carlo or the probit approximation.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        method : {'mc', 'probit'}, default='mc'
            ``'mc'``: E[σ(a)] over ``n_draws`` fresh draws of the linear predictor
            a = xᵀcoef + intercept, Gaussian under q (mean and variance from
            ``posterior_mean_`` and ``posterior_cov_``); :meth:`predict_proba` is
            the same with 200 draws of q fixed at fit time. ``'probit'``:
            σ(μ / sqrt(1 + π s² / 8)) (PRML eq. 4.155).
        n_draws : int, default=1000
        random_state : int, Generator, RandomState or None, default=None

        Returns
        -------
        proba : ndarray of shape (n_samples, 2)
        """
        from ..posterior import check_n_draws, generator
        from ..predictive import logistic_mc, logistic_probit

        check_is_fitted(self)
        if method not in ("mc", "probit"):
            raise ValueError(f"method must be 'mc' or 'probit', got {method!r}.")
        X = np.asarray(self._check_X(X, reset=False), dtype=np.float64)
        Xt = np.column_stack([X, np.ones(X.shape[0])]) if self.fit_intercept else X
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            mu = Xt @ self.posterior_mean_
            var = np.einsum("ij,jk,ik->i", Xt, self.posterior_cov_, Xt, optimize=True)
        check_finite_prediction(
            "BayesianLogisticRegression.predictive_proba",
            X,
            "the linear predictor's means and variances (x^T S x)",
            mu,
            var,
        )
        if method == "probit":
            p1 = logistic_probit(mu, var)
        else:
            p1 = logistic_mc(mu, var, check_n_draws(n_draws), generator(random_state))
        return np.column_stack([1.0 - p1, p1])


class BayesianPoissonRegression(RegressorMixin, _SGVIRegressionBase):
    """Bayesian Poisson regression (log link) fitted by stochastic-gradient VI.

    ``y ~ Poisson(exp(X coef + intercept))`` with the priors and parameters of
    :class:`BayesianLogisticRegression`; ``y`` must hold non-negative integer
    counts. ``predict`` returns the posterior predictive mean, the average of
    exp(x coef_s + intercept_s) over 200 draws from q; ``score`` is D^2, the
    fraction of Poisson deviance explained (as scikit-learn's ``PoissonRegressor``).
    """

    _family = "poisson"

    def _encode_target(self, y, reset=True):
        y = np.asarray(y, dtype=np.float64)  # 1-D: fit_rows or validate_data made it
        if not np.all(np.isfinite(y)):  # inf in an object array passes them
            raise ValueError("y contains NaN or infinity.")
        if np.any(y < 0):
            raise ValueError(
                "Poisson counts y must be non-negative; got negative values."
            )
        if np.any(y != np.floor(y)):
            raise ValueError(
                "Poisson counts y must be integers; got non-integer values."
            )
        return y

    def predict(self, X):
        """Posterior predictive mean of the counts, shape (n_samples,)."""
        return self._predictive(X, "mean")

    def score(self, X, y, sample_weight=None):
        """D^2: 1 - Poisson deviance / deviance of the mean of y.

        scikit-learn's ``d2_tweedie_score(power=1)``. Where a row's predicted mean
        underflows to 0 (x . coef below about -745), which that function refuses,
        the deviance is computed from the log of the mean instead (finite: a large
        penalty for a count above 0, none for a count of 0).
        """
        from sklearn.metrics import d2_tweedie_score

        mean = self.predict(X)
        if np.all(mean > 0.0):
            return d2_tweedie_score(y, mean, sample_weight=sample_weight, power=1)
        log_mean = self._predictive(X, "log_mean")
        return _d2_poisson_from_log_mean(y, log_mean, sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = True
        return tags
