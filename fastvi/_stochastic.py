"""The stochastic driver: epochs of natural-gradient steps (mixture and LDA fits).

Each epoch takes the model's steps (online: one per minibatch, rho_t = (offset +
t)^-decay; LDA's 'batch': one full step); every ``every`` epochs the :class:`StopRule`
evaluates its value (a bound, a perplexity), which unlike a CAVI bound may fall.
A model implements ``_sgd_epoch(data)`` (one epoch's steps), ``_sgd_evaluate(data)``
(the value) and ``_sgd_params(data)`` / ``_sgd_set_params(data, params)`` (copy and
restore the global parameters, step count and random states: with them and the
:class:`State`, a fit resumes bitwise). The driver owns the loop, the stop rule,
verbose lines (scikit-learn's LDA format), the non-finite check and the fit's
:class:`fastvi._cavi.Monitor`: it starts from its ``resume`` (a ``snapshot()``) and
calls ``callback(estimator, epoch, value, snapshot)`` after every epoch (``value``
NaN when none was evaluated; ``snapshot()`` the State with the model's params).
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
    """Epochs from ``state``, else the monitor's resume (else a fresh one), until
    ``model.max_iter`` epochs or the stop rule; the final :class:`State`."""
    monitor = monitor_of(model)
    if state is None and monitor.resume is not None:
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
