"""The stochastic driver: epochs of natural-gradient steps (mixture and LDA fits).

A fit is a run of epochs; each epoch takes the model's steps over its rows (online:
one natural-gradient step per minibatch, rho_t = (offset + t)^-decay; LDA's 'batch'
method: one full step), and every ``every`` epochs the :class:`StopRule` evaluates
its value (a bound, a perplexity) on all the rows and stops when it moved by less than
``tol``. Unlike a CAVI bound (:mod:`fastvi._cavi`) the value may fall between epochs:
the steps are noisy.

Hooks a model implements (``data`` is what the model's fit passes to :func:`run`)
------------------------------------------------------------------------------------
``_sgd_epoch(data)``
    The steps of one epoch (they advance the model's step count and generators).
``_sgd_evaluate(data) -> float``
    The stop rule's value at the current global parameters.
``_sgd_params(data)`` / ``_sgd_set_params(data, params)``
    Copy and restore what the next epochs read besides :class:`State`'s position:
    the global parameters, the step count and the random states the epochs draw
    from. With them a fit resumes bitwise.

The driver owns the loop, the stop rule, verbose output (scikit-learn's LDA format),
the non-finite check and the fit's :class:`fastvi._cavi.Monitor`: its ``resume`` (a
:class:`State` with ``params``) is where the fit starts, and its callback is called
after every epoch as ``callback(estimator, epoch, value, snapshot)``, ``value`` being
NaN in an epoch that evaluated none and ``snapshot()`` the :class:`State` at the end
of the epoch with the model's ``params``. It may raise to stop the fit.
"""

from dataclasses import dataclass, field, replace

import numpy as np

from ._cavi import monitor_of

__all__ = ["State", "StopRule", "run"]


@dataclass
class State:
    """Where a stochastic fit stands: its position, not the model's parameters."""

    epoch: int = 0  # epochs done
    last: float | None = None  # the stop rule's reference: the last value kept
    stopped: bool = False  # the stop rule ended the fit
    history: list = field(default_factory=list)  # every value evaluated, in order
    change: float = np.nan  # of the value in the last epoch (NaN: none evaluated)
    params: object = None  # the model's _sgd_params, in a snapshot or a resume

    def copy(self, params=None):
        return replace(self, history=list(self.history), params=params)


@dataclass(frozen=True)
class StopRule:
    """Evaluate ``name`` every ``every`` epochs (never when ``every < 1``); stop when
    it changed by less than ``tol`` since the last evaluation (never at the first)."""

    tol: float
    every: int = 1
    name: str = "bound"

    def due(self, epoch):
        return self.every > 0 and epoch % self.every == 0

    def met(self, last, value):
        return last is not None and abs(value - last) < self.tol


def run(model, data, stop, state=None):
    """Epochs from ``state`` (the monitor's resume first; else a fresh
    :class:`State`) until ``model.max_iter`` epochs or the stop rule; the final
    state. The position lives here, in local variables: nothing on the model."""
    monitor = monitor_of(model)
    if monitor.resume is not None:
        state = monitor.resume.copy()
        model._sgd_set_params(data, monitor.resume.params)
    state = State() if state is None else state
    while state.epoch < model.max_iter and not state.stopped:
        model._sgd_epoch(data)
        state.epoch += 1
        value = state.change = np.nan
        if stop.due(state.epoch):
            value = float(model._sgd_evaluate(data))
            if not np.isfinite(value):
                raise ValueError(
                    f"The {stop.name} became {value} at epoch {state.epoch}; "
                    f"{model._nonfinite_advice}."
                )
            state.change = value - (-np.inf if state.last is None else state.last)
            state.history.append(value)
            state.stopped = stop.met(state.last, value)
            if not state.stopped:
                state.last = value
        if model.verbose:
            shown = f", {stop.name}: {value:.4f}" if np.isfinite(value) else ""
            print(f"iteration: {state.epoch} of max_iter: {model.max_iter}{shown}")
        if monitor.callback is not None:
            monitor.callback(
                model,
                state.epoch,
                value,
                lambda: state.copy(model._sgd_params(data)),  # the epoch's snapshot
            )
    return state
