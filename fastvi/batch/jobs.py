"""Fitting as a batch job: progress, checkpoints, resume, stop on request.

``fit_mixture`` runs ``BayesianGaussianMixture.fit`` unchanged (the CAVI loop of
``fastvi._cavi``) with a per-iteration callback that

* reports the iteration, bound, change and rows/s to a :class:`Progress`;
* every ``checkpoint_every`` iterations (and at the last one) saves the fit state
  atomically (the :mod:`fastvi.persist` format, ``kind='checkpoint'``; its ``extra``
  metadata holds the iteration, the bound history, the data's fingerprint and the
  parameters);
* raises :class:`Interrupted` after the current iteration when ``should_stop()`` is
  true (the command line sets it on Ctrl-C), having written a checkpoint.

Resume (``resume=True`` and the checkpoint exists): the saved global factors are put
back and the fit continues with ``warm_start=True`` for the remaining iterations; the
CAVI updates are deterministic given the factors, so the final model is bitwise the
one of an uninterrupted run (``n_iter_`` and ``lower_bounds_`` are stitched together).
A checkpoint written for other data or other parameters is refused.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import numpy as np

from ..persist import load, save
from .io import DataError, fingerprint

__all__ = ["Interrupted", "Progress", "fit_mixture"]

# parameters that may differ between the run that wrote a checkpoint and the resume
_FREE_PARAMS = ("max_iter", "warm_start", "verbose", "verbose_interval", "n_jobs")


class Interrupted(Exception):
    """The fit stopped on request after ``iteration`` (a checkpoint was written)."""

    def __init__(self, iteration, checkpoint):
        super().__init__(
            f"interrupted after iteration {iteration}"
            + (f"; checkpoint {checkpoint} written" if checkpoint else "")
        )
        self.iteration = iteration
        self.checkpoint = checkpoint


class Progress:
    """Per-iteration progress on stderr: a tqdm bar when tqdm is importable.

    Shows the iteration, the bound, its change and rows per second. Without tqdm,
    one plain line per iteration. ``quiet=True`` shows nothing.
    """

    def __init__(self, total, n_rows, quiet=False, stream=None, desc="fit"):
        self.n_rows = n_rows
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self._last = time.perf_counter()
        self._bar = None
        if quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=desc, unit="it", file=self.stream)

    def start_at(self, iteration):
        if self._bar is not None and iteration:
            self._bar.update(iteration)
        self._last = time.perf_counter()

    def update(self, iteration, bound, change):
        now = time.perf_counter()
        rate = self.n_rows / max(now - self._last, 1e-9)
        self._last = now
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.set_postfix(
                bound=f"{bound:.6g}",
                change=f"{change:.3g}",
                rows_s=f"{rate:.3g}",
                refresh=False,
            )
            self._bar.update(1)
        else:
            print(
                f"iteration {iteration}  bound {bound:.10g}  change {change:.4g}  "
                f"{rate:.4g} rows/s",
                file=self.stream,
                flush=True,
            )

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _param_signature(est):
    """The parameters that determine the fitted model, as comparable JSON."""

    def plain(value):
        if isinstance(value, np.ndarray):
            return {"array": value.tolist()}
        if isinstance(value, np.random.RandomState):
            return {"random_state": "instance"}
        if isinstance(value, np.generic):
            return value.item()
        return value

    params = est.get_params(deep=False)
    return json.loads(
        json.dumps(
            {k: plain(v) for k, v in sorted(params.items()) if k not in _FREE_PARAMS}
        )
    )


def _restore_from(est, checkpoint, data_print):
    ck, extra = load(checkpoint, expected_class=type(est).__name__, return_extra=True)
    if extra.get("data") != data_print:
        raise DataError(
            f"{checkpoint}: the checkpoint was written for other data "
            f"({extra.get('data')} vs {data_print}); delete it to start afresh"
        )
    if extra.get("params") != _param_signature(est):
        raise ValueError(
            f"{checkpoint}: the checkpoint was written with other model parameters; "
            "delete it to start afresh"
        )
    try:
        done = int(extra["iteration"])
        history = [float(b) for b in extra["history"]]
        bound = float(extra["bound"])
        converged = bool(extra["converged"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{checkpoint}: not a checkpoint (no fit position)") from None
    params = set(est.get_params(deep=False))
    for key, value in vars(ck).items():
        if key not in params:
            setattr(est, key, value)
    return done, history, bound, converged


def fit_mixture(
    est,
    X,
    *,
    progress=None,
    checkpoint=None,
    checkpoint_every=1,
    resume=False,
    should_stop=None,
):
    """Fit a ``BayesianGaussianMixture`` with progress, checkpoints and resume.

    Parameters
    ----------
    est : BayesianGaussianMixture
    X : array-like or :class:`fastvi.batch.io.NpyRows`
    progress : Progress, optional
    checkpoint : str, optional
        Path of the checkpoint file (written atomically).
    checkpoint_every : int, default=1
        Iterations between checkpoints (the last iteration is always saved).
    resume : bool, default=False
        Continue from ``checkpoint`` when it exists (else start afresh).
    should_stop : callable, optional
        Polled after every iteration; when it returns True the fit stops there with
        :class:`Interrupted` (after writing a checkpoint, if any).

    Returns
    -------
    est : the fitted estimator (bitwise the model of an uninterrupted ``est.fit(X)``)
    """
    if checkpoint is not None and est.n_init != 1:
        raise ValueError("checkpoints need n_init=1 (restarts are not checkpointed)")
    if int(checkpoint_every) < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    max_iter, warm_start = est.max_iter, est.warm_start
    data_print = fingerprint(X) if checkpoint is not None else None
    signature = _param_signature(est) if checkpoint is not None else None
    done, history = 0, []
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        done, history, bound, converged = _restore_from(est, checkpoint, data_print)
        if converged or done >= max_iter:
            # the checkpointed run had finished: what fit() would have set
            est.converged_ = converged
            est.n_iter_ = done
            est.lower_bound_ = bound
            est.lower_bounds_ = list(history)
            est._set_derived()
            if not converged and max_iter > 0:
                from sklearn.exceptions import ConvergenceWarning

                warnings.warn(
                    est._convergence_message, ConvergenceWarning, stacklevel=2
                )
            return est
        est.set_params(warm_start=True, max_iter=max_iter - done)
        est.lower_bound_ = bound
        est.converged_ = False
    if progress is not None:
        progress.start_at(done)
    segment = []

    def write_checkpoint(model, iteration, bound, converged):
        running = {"max_iter": model.max_iter, "warm_start": model.warm_start}
        model.set_params(max_iter=max_iter, warm_start=warm_start)
        try:
            save(
                model,
                checkpoint,
                kind="checkpoint",
                extra={
                    "iteration": iteration,
                    "bound": bound,
                    "history": history + segment,
                    "converged": converged,
                    "data": data_print,
                    "params": signature,
                },
            )
        finally:
            model.set_params(**running)

    def callback(model, n_iter, bound, change):
        iteration = done + n_iter
        segment.append(bound)
        if progress is not None:
            progress.update(iteration, bound, change)
        stop = should_stop is not None and should_stop()
        if checkpoint is not None:
            converged = abs(change) < model.tol
            if (
                stop
                or converged
                or iteration % checkpoint_every == 0
                or iteration >= max_iter
            ):
                write_checkpoint(model, iteration, bound, converged)
        if stop:
            raise Interrupted(iteration, checkpoint)

    est._iteration_callback = callback
    try:
        est.fit(X)
    finally:
        est.__dict__.pop("_iteration_callback", None)
        est.set_params(max_iter=max_iter, warm_start=warm_start)
    if done:
        est.n_iter_ = done + est.n_iter_
        est.lower_bounds_ = history + list(est.lower_bounds_)
    return est
