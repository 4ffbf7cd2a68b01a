"""The coordinate-ascent (CAVI) driver every conjugate model in fastvi uses.

A model supplies its coordinate updates and its bound through four hooks; the driver owns
the loop: restarts (``n_init``), ``warm_start``, the stopping rule, verbose output, the
bound history, ``ConvergenceWarning`` and the choice of the best restart. Its behaviour
follows scikit-learn's ``BaseMixture.fit_predict`` so drop-in estimators stop at exactly
the same iteration.

Hooks a model implements
------------------------
``_cavi_initialize(data, random_state)``
    Set every global factor to its initial value (consumes ``random_state``).
``_cavi_step(data) -> float``
    One round: update every factor once (local factors first, then global ones) and
    return the bound after the round. Each update maximizes the bound in its
    coordinate, so the returned value does not fall (PRML eq. 10.9) beyond rounding;
    a fall is a bug, except where a model documents why its updates are not exact
    coordinate steps (BayesianGaussianMixture with ``reg_covar > 0``) or where the
    rounding is large (VBLinearRegression with a numerically singular design).
``_cavi_get_state() -> tuple`` / ``_cavi_set_state(state)``
    Snapshot and restore the global factors (fresh arrays: steps never mutate a
    snapshot in place).

Parameters read from the estimator: ``n_init``, ``max_iter``, ``tol`` (absolute change of
the bound), ``warm_start``, ``verbose``, ``verbose_interval``.

A caller watches a fit through a :class:`Monitor` handed to the driver for the duration
of one fit (``with monitoring(est, Monitor(callback=report)): est.fit(X)``), never
through attributes of the estimator: the driver keeps its clocks and position (a
:class:`Fit`) in local variables, so a fit leaves nothing transient on the estimator.

Attributes set: ``converged_``, ``n_iter_``, ``lower_bound_``, ``lower_bounds_``.
"""

import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from numbers import Integral, Real
from time import perf_counter

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval

__all__ = [
    "CAVI_PARAMETER_CONSTRAINTS",
    "CAVIMixin",
    "Fit",
    "Monitor",
    "all_or_nothing",
    "monitor_of",
    "monitoring",
]

# scikit-learn constraints of the loop parameters the driver reads (``n_init`` is left
# to each model: some have only one sensible start)
CAVI_PARAMETER_CONSTRAINTS = {
    "tol": [Interval(Real, 0.0, None, closed="left")],
    "max_iter": [Interval(Integral, 0, None, closed="left")],
    "warm_start": ["boolean"],
    "verbose": ["verbose"],
    "verbose_interval": [Interval(Integral, 1, None, closed="left")],
}


@dataclass(frozen=True)
class Monitor:
    """What a caller watches and supplies in one fit (see :func:`monitoring`).

    Parameters
    ----------
    callback : callable, optional
        Called after every round of the fit's driver. The CAVI driver calls
        ``callback(estimator, n_iter, bound, change)``; the stochastic driver
        (:mod:`fastvi._stochastic`) ``callback(estimator, epoch, value, snapshot)``.
        It may raise to stop the fit.
    resume : object, optional
        A fit state to continue from: for the stochastic driver a ``snapshot()`` of
        an earlier epoch; for the CAVI driver a :class:`Fit`.
    """

    callback: object = None
    resume: object = None


@dataclass
class Fit:
    """Where one CAVI restart stands: rounds done, the bound after the last one and
    after each, and whether the stopping rule was met (not the model's factors)."""

    n_iter: int = 0
    bound: float = -np.inf
    history: list = field(default_factory=list)
    converged: bool = False


# the monitors of the fits running in this thread (or task): (estimator, monitor) pairs
_MONITORS = ContextVar("fastvi_monitors", default=())


@contextmanager
def monitoring(estimator, monitor):
    """Hand ``monitor`` to the driver of ``estimator``'s fits inside the block.

    Only fits of that very estimator see it (a model fitting inner estimators, such
    as one-vs-rest classes, does not pass it on); the estimator itself is not touched.
    """
    token = _MONITORS.set(_MONITORS.get() + ((estimator, monitor),))
    try:
        yield monitor
    finally:
        _MONITORS.reset(token)


def monitor_of(estimator):
    """The :class:`Monitor` of ``estimator``'s current fit (an empty one if none)."""
    for watched, monitor in reversed(_MONITORS.get()):
        if watched is estimator:
            return monitor
    return _NO_MONITOR


_NO_MONITOR = Monitor()


@contextmanager
def all_or_nothing(estimator):
    """Restore ``estimator`` if the body raises: never leave a half-fitted model.

    Fitting code only rebinds attributes (it never mutates fitted arrays in place), so a
    shallow copy of the instance dictionary is a complete snapshot, except for random
    generators, which a fit advances in place: the state of every ``RandomState`` the
    estimator holds (a ``random_state`` passed by the user, a ``random_state_``) is
    saved too and set back, so a failed fit leaves them where they were.
    """
    saved = dict(estimator.__dict__)
    generators = {
        id(value): (value, value.get_state())
        for value in saved.values()
        if isinstance(value, np.random.RandomState)
    }
    try:
        yield
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(saved)
        for generator, state in generators.values():
            generator.set_state(state)
        raise


class CAVIMixin:
    """Template fit loop for coordinate-ascent variational inference (see module doc)."""

    # the remedy the non-finite-bound error names; a model with a regularization
    # parameter (BayesianGaussianMixture's reg_covar) names it too
    _nonfinite_advice = "check the input scale (for example, standardize the data)"

    _convergence_message = (
        "Best performing initialization did not converge. "
        "Try different init parameters, or increase max_iter, "
        "tol, or check for degenerate data."
    )

    def _cavi_fit(self, data, random_state, rounds=None):
        """Run the restarts and keep the best; returns nothing, sets fitted state.

        ``rounds(data, fit, clock)``, the loop of one restart from the :class:`Fit`
        it starts at, returns the restart's :class:`Fit`: the CAVI rounds by default;
        an online mixture passes epochs of :mod:`fastvi._stochastic`.
        """
        rounds = self._cavi_rounds if rounds is None else rounds
        resume = monitor_of(self).resume  # a checkpoint's Fit, continued
        warm = resume is not None or (self.warm_start and hasattr(self, "converged_"))
        start = resume or Fit(bound=self.lower_bound_ if warm else -np.inf)
        best = None  # (Fit, state) of the best restart
        for init in range(1 if warm else self.n_init):
            clock = self._cavi_verbose_init_begin(init)
            if not warm:
                self._cavi_initialize(data, random_state)
            if self.max_iter == 0:
                # 0 iterations means "just initialize"; the last restart's start is kept
                best = (resume or Fit(), self._cavi_get_state())
                continue
            fit = rounds(data, replace(start, history=list(start.history)), clock)
            self._cavi_verbose_init_end(fit.bound, fit.converged, clock)
            if best is None or fit.bound > best[0].bound or best[0].bound == -np.inf:
                best = (fit, self._cavi_get_state())

        fit, state = best
        if not fit.converged and self.max_iter > 0:
            warnings.warn(self._convergence_message, ConvergenceWarning, stacklevel=3)
        self._cavi_set_state(state)
        self.converged_, self.n_iter_ = fit.converged, fit.n_iter
        self.lower_bound_, self.lower_bounds_ = fit.bound, fit.history

    def _cavi_rounds(self, data, fit, clock):
        """The CAVI loop of one restart (see :meth:`_cavi_fit`)."""
        callback = monitor_of(self).callback
        while fit.n_iter < self.max_iter and not fit.converged:
            previous, fit.bound = fit.bound, float(self._cavi_step(data))
            fit.n_iter += 1
            fit.history.append(fit.bound)
            change = fit.bound - previous
            self._cavi_verbose_iter_end(fit.n_iter, change, clock)
            if not np.isfinite(fit.bound):
                raise ValueError(
                    f"The variational bound became {fit.bound} at iteration "
                    f"{fit.n_iter}; {self._nonfinite_advice}."
                )
            fit.converged = abs(change) < self.tol
            if callback is not None:
                callback(self, fit.n_iter, fit.bound, change)
        return fit

    # verbose output, in scikit-learn's format; ``clock`` is [start of the restart,
    # end of the last printed iteration] (a local of the loop, not an attribute)
    def _cavi_verbose_init_begin(self, init):
        if self.verbose >= 1:
            print("Initialization %d" % init)
        now = perf_counter()
        return [now, now]

    def _cavi_verbose_iter_end(self, n_iter, change, clock):
        if n_iter % self.verbose_interval != 0:
            return
        if self.verbose == 1:
            print("  Iteration %d" % n_iter)
        elif self.verbose >= 2:
            now = perf_counter()
            print(
                "  Iteration %d\t time lapse %.5fs\t ll change %.5f"
                % (n_iter, now - clock[1], change)
            )
            clock[1] = now

    def _cavi_verbose_init_end(self, bound, converged, clock):
        message = "converged" if converged else "did not converge"
        if self.verbose == 1:
            print(f"Initialization {message}.")
        elif self.verbose >= 2:
            elapsed = perf_counter() - clock[0]
            print(
                f"Initialization {message}. time lapse {elapsed:.5f}s\t lower bound"
                f" {bound:.5f}."
            )
