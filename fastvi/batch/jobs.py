"""Fitting as a batch job: progress, checkpoints, resume, stop on request.

``fit_cavi`` runs the unchanged ``fit`` of a CAVI model (any estimator whose ``fit``
runs the driver of ``fastvi._cavi`` once; ``fit_mixture`` is the same job) with a
per-iteration monitor (:class:`fastvi._cavi.Monitor`) that reports to a
:class:`Progress`, saves checkpoints atomically (the :mod:`fastvi.persist` format,
``kind='checkpoint'``; its ``extra`` metadata holds the iteration, the bound history,
the data's fingerprint and the parameters) and raises :class:`Interrupted` after the
iteration in which ``should_stop()`` (the command line's Ctrl-C) became true.

The model after every round is complete (its private factors included: the logistic
model's Newton proposal and bound), so its checkpoint is that model as a fit of that
many rounds leaves it, and a resume is a warm start from it that goes on from the
checkpoint's :class:`fastvi._cavi.Fit` (rounds, bound history, convergence): the CAVI
updates are deterministic given the factors, so the final model is bitwise the one of
an uninterrupted run. A checkpoint written for other data, targets or parameters is
refused. The data is identified by its shape and a SHA-256 hash of every value
(:func:`fastvi.batch.io.fingerprint`), the targets beside it: in-memory data before
the fit, out-of-core data (a block source such as :class:`~fastvi.batch.io.NpyRows`)
as the fit's first pass reads its blocks, so a resume on other data stops with an
error when that pass ends, before the restored state is used and before anything is
written. If the job raises, the estimator is left as it was. One-vs-rest logistic
fits (more than two classes) are not checkpointed: refused with a message.

``fit_lda`` does the same for ``LatentDirichletAllocation`` epoch by epoch (its fit
runs the stochastic driver, :mod:`fastvi._stochastic`): a checkpoint holds the topics
(float64), the random state, the counters, ``perplexity_history_`` and, in ``extra``,
the stop rule's reference perplexity and digamma of the topic totals as the loop had
them. ``fit_sgvi`` does it for the SGVI estimators, step by step.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from sklearn.base import is_classifier

from .._cavi import Fit, Monitor, all_or_nothing, monitoring
from .._stochastic import State
from ..persist import load, save
from ..rows import is_block_source
from .io import DataDigest, DataError, fingerprint
from .options import MANAGED

__all__ = ["Interrupted", "Progress", "fit_cavi", "fit_lda", "fit_mixture", "fit_sgvi"]

# parameters that may differ between the run that wrote a checkpoint and the resume
_FREE_PARAMS = MANAGED | {"max_iter", "n_jobs"}


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

    def update_epoch(self, epoch, perplexity):
        """One LDA epoch: ``perplexity`` is NaN when the epoch did not evaluate it.

        The bar shows the last evaluated perplexity and documents per second; the
        plain lines show the perplexity of the epochs that evaluated it.
        """
        now = time.perf_counter()
        rate = self.n_rows / max(now - self._last, 1e-9)
        self._last = now
        if self.quiet:
            return
        evaluated = np.isfinite(perplexity)
        if self._bar is not None:
            if evaluated:
                self._perplexity = perplexity  # shown until the next evaluation
            fields = {}
            if getattr(self, "_perplexity", None) is not None:
                fields["perplexity"] = f"{self._perplexity:.6g}"
            self._bar.set_postfix(**fields, docs_s=f"{rate:.3g}", refresh=False)
            self._bar.update(1)
        else:
            text = f"  perplexity {perplexity:.10g}" if evaluated else ""
            print(
                f"epoch {epoch}{text}  {rate:.4g} docs/s", file=self.stream, flush=True
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


def _check_data(checkpoint, saved, now):
    """Refuse a checkpoint whose data fingerprint is not ``now``.

    ``now`` may hold only the shape (out-of-core data before its first pass); the
    hash is then compared when that pass ends.
    """
    if not isinstance(saved, dict) or "sha256" not in saved:
        raise DataError(
            f"{checkpoint}: the checkpoint holds no hash of all of its data (written "
            "by an older fastvi), so it cannot be tied to this data; delete it to "
            "start afresh"
        )
    if saved.get("shape") != now["shape"]:
        raise DataError(
            f"{checkpoint}: the checkpoint was written for other data (of shape "
            f"{saved.get('shape')}; this data has shape {now['shape']}); delete it "
            "to start afresh"
        )
    if "sha256" in now and saved["sha256"] != now["sha256"]:
        raise DataError(
            f"{checkpoint}: the checkpoint was written for other data (same shape "
            f"{now['shape']}, other values: sha256 {saved['sha256'][:12]}... vs "
            f"{now['sha256'][:12]}...); delete it to start afresh"
        )


def _open(est, data_print, y, checkpoint, resume):
    """``(target_print, signature, found)``: the targets' fingerprint and parameter
    signature a checkpoint holds (None without a checkpoint) and, on a resume from
    an existing one, its ``(estimator, extra)`` (else None), refused for other
    data, targets or parameters."""
    if checkpoint is None:
        return None, None, None
    target_print = None if y is None else _target_print(y)
    signature = _param_signature(est)
    if not (resume and os.path.exists(checkpoint)):
        return target_print, signature, None
    ck, extra = load(checkpoint, expected_class=type(est).__name__, return_extra=True)
    _check_data(checkpoint, extra.get("data"), data_print)
    if extra.get("params") != signature:
        raise ValueError(
            f"{checkpoint}: the checkpoint was written with other model parameters; "
            "delete it to start afresh"
        )
    if extra.get("target") != target_print:
        raise DataError(
            f"{checkpoint}: the checkpoint was written for other targets y; "
            "delete it to start afresh"
        )
    return target_print, signature, (ck, extra)


class _HashedRows:
    """A row source passed through unchanged, fingerprinted by the fit's first pass.

    The first pass that reads every block (the data mean, before any iteration)
    feeds each block to a :class:`~fastvi.batch.io.DataDigest` as it goes by, so the
    fingerprint of out-of-core data costs no read of its own; it is the digest
    :func:`~fastvi.batch.io.fingerprint` gives. When that pass ends, ``check(print)``
    runs (a resume compares with the checkpoint there: before the fit uses the
    restored state, and before anything is written).
    """

    def __init__(self, source):
        self.source = source
        self.shape = tuple(source.shape)
        self.block_rows = source.block_rows
        self.dtype = np.dtype(getattr(source, "dtype", np.float64))
        self.fingerprint = None
        self.check = None

    def iter_blocks(self):
        if self.fingerprint is not None:
            yield from self.source.iter_blocks()
            return
        digest = DataDigest(self.shape, self.dtype)
        for start, stop, view in self.source.iter_blocks():
            digest.update_rows(view[1:])  # before the consumer sees the block
            yield start, stop, view
        self.fingerprint = digest.fingerprint()
        if self.check is not None:
            self.check(self.fingerprint)


def _target_print(y):
    """Shape and SHA-256 hash of the targets ``y`` (numbers, or labels of any kind)."""
    y = np.asarray(y)
    if y.dtype.kind in "biuf":
        return fingerprint(y.reshape(len(y), -1))
    labels, codes = np.unique(y, return_inverse=True)
    found = fingerprint(codes.reshape(len(y), -1))
    found["labels"] = [str(v) for v in labels]
    return found


def fit_cavi(
    est,
    X,
    y=None,
    *,
    progress=None,
    checkpoint=None,
    checkpoint_every=1,
    resume=False,
    should_stop=None,
):
    """Fit a CAVI model (``UnivariateGaussian``, ``VBLinearRegression``,
    ``VBLogisticRegression``, ``BayesianGaussianMixture``) with progress,
    checkpoints and resume.

    Parameters
    ----------
    est : estimator
        Its ``fit`` runs the CAVI driver (:mod:`fastvi._cavi`) once; checkpoints
        need ``n_init=1`` (restarts are not checkpointed).
    X : array-like or a row-block source (:class:`fastvi.batch.io.NpyRows`)
        A block source is fitted out of core and fingerprinted as the fit's first
        pass reads it.
    y : array-like of shape (n_samples,), optional
        The targets (in memory), for the supervised models.
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
    est : the fitted estimator (bitwise the model of an uninterrupted ``est.fit``)
    """
    every = _check_job(est, y, checkpoint, checkpoint_every)
    with all_or_nothing(est):
        return _cavi_job(est, X, y, progress, checkpoint, every, resume, should_stop)


def _check_job(est, y, checkpoint, checkpoint_every):
    """Refuse what a CAVI job cannot checkpoint; ``checkpoint_every`` as an int."""
    if checkpoint is not None and getattr(est, "n_init", 1) != 1:
        raise ValueError("checkpoints need n_init=1 (restarts are not checkpointed)")
    if int(checkpoint_every) < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if checkpoint is not None and y is not None and is_classifier(est):
        labels = np.unique(np.asarray(y))
        if labels.shape[0] > 2:
            raise ValueError(
                f"checkpoints of {type(est).__name__} need two classes; y has "
                f"{labels.shape[0]}, fitted one-vs-rest (one CAVI fit per class), "
                "which is not checkpointed: fit without a checkpoint"
            )
    return int(checkpoint_every)


# the job of a BayesianGaussianMixture (batch or online) is the CAVI job, without y
fit_mixture = fit_cavi


def _end_of_round(n, last, every, should_stop, checkpoint, write):
    """A job's policy after round ``n``: ``write()`` a checkpoint every ``every``
    rounds, at the ``last()`` one and at a stop on request, then raise
    :class:`Interrupted` on request."""
    stop = should_stop is not None and should_stop()
    if checkpoint is not None and (stop or last() or n % every == 0):
        write()
    if stop:
        raise Interrupted(n, checkpoint)


def _cavi_job(est, X, y, progress, checkpoint, checkpoint_every, resume, should_stop):
    """The one CAVI job loop, as the module docstring describes it (the callers
    restore ``est`` if this raises). A resumed run that had finished makes only the
    fit's passes over the data (which check the data's hash) and its final state."""
    max_iter, warm_start = est.max_iter, est.warm_start
    hashed = data_print = None
    if checkpoint is not None:
        if is_block_source(X):
            # out of core: hashed as the fit's first pass reads the blocks
            X = hashed = _HashedRows(X)
            data_print = {"shape": [int(v) for v in X.shape]}
        else:
            data_print = fingerprint(X)
    target_print, signature, found = _open(est, data_print, y, checkpoint, resume)
    start = None
    if found is not None:
        ck, extra = found
        try:
            start = Fit(
                int(extra["iteration"]),
                history=[float(b) for b in extra["history"]],
                bound=float(extra["bound"]),
                converged=bool(extra["converged"]),
            )
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{checkpoint}: not a checkpoint (no fit position)"
            ) from None
        if hashed is not None:
            saved = extra["data"]
            hashed.check = lambda now: _check_data(checkpoint, saved, now)
        params = set(est.get_params(deep=False))
        for key, value in vars(ck).items():
            if key not in params:
                setattr(est, key, value)
        est.set_params(warm_start=True)
    if progress is not None:
        progress.start_at(0 if start is None else start.n_iter)
    bounds = [] if start is None else list(start.history)

    def write_checkpoint(model, iteration, bound, converged):
        data = data_print if hashed is None else hashed.fingerprint
        if data is None or "sha256" not in data:  # cannot happen: a pass came first
            raise RuntimeError("no data fingerprint before the first checkpoint")
        # the model after this round, as a fit of ``iteration`` rounds leaves it
        ck = object.__new__(type(model))
        ck.__dict__.update(model.__dict__)
        ck.set_params(warm_start=warm_start)
        ck.n_iter_, ck.converged_ = iteration, converged
        ck.lower_bound_, ck.lower_bounds_ = bound, list(bounds)
        extra = {
            "iteration": iteration,
            "bound": bound,
            "history": list(bounds),
            "converged": converged,
            "data": data,
        }
        if y is not None:
            extra["target"] = target_print
        extra["params"] = signature
        save(ck, checkpoint, kind="checkpoint", extra=extra)

    def callback(model, iteration, bound, change):
        bounds.append(bound)
        if progress is not None:
            progress.update(iteration, bound, change)
        converged = abs(change) < model.tol  # (a non-finite bound never gets here)
        _end_of_round(
            iteration, lambda: converged or iteration >= max_iter, checkpoint_every,
            should_stop, checkpoint,
            lambda: write_checkpoint(model, iteration, bound, converged),
        )  # fmt: skip

    monitor = Monitor(callback, start)
    if getattr(est, "learning_method", None) == "online":  # the stochastic driver
        monitor = Monitor(lambda m, e, v, s: callback(m, e, v, s().change), start)
    try:
        with monitoring(est, monitor):
            est.fit(X, y)  # y=None: the unsupervised models' fit(X, y=None)
    finally:
        est.set_params(warm_start=warm_start)
    return est


def _lda_checkpoint_state(ck, extra, checkpoint):
    """The fit state (a :class:`fastvi._stochastic.State`) an LDA checkpoint holds."""
    try:
        last = extra["last_perplexity"]
        return State(
            epoch=int(extra["iteration"]),
            stopped=bool(extra["converged"]),
            last=None if last is None else float(last),
            history=[float(v) for v in ck.perplexity_history_],
            params={
                "components": np.asarray(ck.components_, dtype=np.float64),
                "psi_sums": np.asarray(extra["psi_sums"], dtype=np.float64),
                "stale": bool(extra["stale"]),
                "n_batch_iter_": int(ck.n_batch_iter_),
                "random_state": ck.random_state_.get_state(legacy=True),
            },
        )
    except (KeyError, AttributeError, TypeError, ValueError):
        raise ValueError(f"{checkpoint}: not a checkpoint (no fit position)") from None


def fit_lda(
    est,
    X,
    *,
    progress=None,
    checkpoint=None,
    checkpoint_every=1,
    resume=False,
    should_stop=None,
):
    """Fit a ``LatentDirichletAllocation`` with progress, checkpoints and resume:
    the parameters of :func:`fit_cavi` without ``y``, counted in epochs (the
    progress shows the training perplexity, :meth:`Progress.update_epoch`). ``X``
    holds the counts in memory (not a Dask array). The fitted model is bitwise the
    one of an uninterrupted ``est.fit(X)``, for 'batch' and 'online' learning.
    """
    from .._dask import is_dask_collection

    checkpoint_every = _check_job(est, None, checkpoint, checkpoint_every)
    if is_dask_collection(X) and (
        checkpoint is not None or progress is not None or should_stop is not None
    ):
        raise ValueError(
            "progress, checkpoints and stop requests need in-memory data, not a "
            "Dask array"
        )
    data_print = fingerprint(X) if checkpoint is not None else None
    _, signature, found = _open(est, data_print, None, checkpoint, resume)
    state = None if found is None else _lda_checkpoint_state(*found, checkpoint)
    if progress is not None:
        progress.start_at(0 if state is None else min(state.epoch, est.max_iter))

    def write_checkpoint(model, state):
        ck = type(model)(**model.get_params(deep=False))
        skip = ("components_", "exp_dirichlet_component_", "bound_")
        for key, value in vars(model).items():
            if not key.startswith("_") and key not in skip:
                setattr(ck, key, value)
        params = state.params
        ck.n_iter_ = state.epoch - state.stopped
        ck.n_batch_iter_ = params["n_batch_iter_"]
        ck.perplexity_history_, ck.components_ = state.history, params["components"]
        ck.random_state_ = np.random.RandomState()
        ck.random_state_.set_state(params["random_state"])
        save(
            ck,
            checkpoint,
            kind="checkpoint",
            extra={
                "iteration": state.epoch,
                "converged": state.stopped,
                "last_perplexity": state.last,
                "psi_sums": params["psi_sums"].tolist(),
                "stale": params["stale"],
                "data": data_print,
                "params": signature,
            },
        )

    def callback(model, epoch, perplexity, snapshot):
        if progress is not None:
            progress.update_epoch(epoch, perplexity)
        state = None if checkpoint is None else snapshot()
        _end_of_round(
            epoch, lambda: state.stopped or epoch >= model.max_iter, checkpoint_every,
            should_stop, checkpoint, lambda: write_checkpoint(model, state),
        )  # fmt: skip

    with monitoring(est, Monitor(callback=callback, resume=state)):
        est.fit(X)
    return est


def fit_sgvi(
    est,
    X,
    y,
    *,
    progress=None,
    checkpoint=None,
    checkpoint_every=1,
    resume=False,
    should_stop=None,
):
    """Fit ``BayesianLogisticRegression`` or ``BayesianPoissonRegression`` with
    progress, checkpoints and resume: the parameters of :func:`fit_cavi`, counted
    in SGVI steps (the progress shows each step's ELBO estimate).

    A checkpoint is the model as a fit stopped at that step leaves it, holding the
    run's state (``run_``, a :class:`fastvi.sgvi.engine.SGVIRun`: the engine's
    state with its counter-based random key, the stopping rule's windows and
    averaging sums, the divergence monitor's, the ELBO trace); the job's model
    never holds it. A resume goes on from that state and ends bitwise as the
    uninterrupted fit. The fixed-draw fit (``method='fixed'``: a few
    deterministic BFGS iterations) writes no checkpoint: a job stopped there
    starts again on resume, with the same result. Needs ``warm_start=False``.
    """
    every = _check_job(est, None, checkpoint, checkpoint_every)
    if checkpoint is not None and est.warm_start:
        raise ValueError("checkpoints need warm_start=False")
    with all_or_nothing(est):
        data_print = None if checkpoint is None else fingerprint(X)
        target_print, signature, found = _open(est, data_print, y, checkpoint, resume)
        run = None if found is None else getattr(found[0], "run_", None)
        if found is not None and run is None:
            raise ValueError(f"{checkpoint}: not a checkpoint (no run state)")
        if progress is not None:
            progress.start_at(0 if run is None else run.elbo.shape[0])

        def callback(model, n, elbo, snapshot):
            if progress is not None:
                change = elbo[-1] - elbo[-2] if n > 1 else np.inf
                progress.update(n, elbo[-1], change)

            def write():
                at = snapshot()
                extra = {
                    "iteration": n,
                    "converged": at.converged,
                    "data": data_print,
                    "target": target_print,
                    "params": signature,
                }
                save(model._checkpoint(at), checkpoint, kind="checkpoint", extra=extra)

            written = None if snapshot is None else checkpoint  # none in 'fixed' fits
            _end_of_round(
                n, lambda: n >= model.max_iter, every, should_stop, written, write
            )

        with monitoring(est, Monitor(callback=callback, resume=run)):
            est.fit(X, y)
    return est
