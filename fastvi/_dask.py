"""Fitting on Dask arrays: the kernels run on the workers, only statistics travel.

A CAVI round over data held in a ``dask.array.Array`` is a map and a reduce: every row
chunk goes through the same numba kernel as in-memory data, on the worker that holds
it, and returns its partial sufficient statistics (never rows), summed as
:mod:`fastvi.rows` sums blocks (ordered sums by a chain of small tasks).

``dask.compute`` uses the active ``dask.distributed.Client`` when there is one and dask's
local threaded scheduler otherwise. Numba's parallel regions are not meant to be
launched from several threads of one process at once, so a process-wide lock makes the
kernel calls of one worker process take turns; each call uses the worker's threads
(a distributed worker's ``nthreads``, or the estimator's ``n_jobs`` on the local
scheduler) inside the kernel instead.

dask is an optional dependency (``pip install "fastvi[dask]"``); nothing here imports
it before a dask collection is seen.
"""

import functools
import sys
import threading

import numpy as np

from .rows import Rows, add, fold_step, fold_total, one_values, tree_sum

__all__ = ["DaskRows", "is_dask_collection", "raise_if_nonfinite"]

# one kernel call per process at a time (see the module documentation)
_KERNEL_LOCK = threading.Lock()


def is_dask_collection(X):
    """True for a dask array or DataFrame, without importing dask."""
    if not hasattr(X, "__dask_graph__"):
        return False
    return type(X).__module__.split(".")[0] in ("dask", "dask_expr")


def _worker_threads(default):
    """The thread count a task may use: the distributed worker's, else ``default``."""
    if "distributed" not in sys.modules:
        return default
    from distributed import get_worker

    try:
        return get_worker().state.nthreads
    except ValueError:  # not inside a distributed worker
        return default


def _run_block(fn, block, start, shared, local, n_jobs):
    """Task body: ``fn(rows, start, *shared, *local)`` under the kernel lock."""
    from ._threads import thread_limits

    with _KERNEL_LOCK, thread_limits(_worker_threads(n_jobs)):
        return fn(block, start, *shared, *local)


def _run_rows(block, fn, args, n_jobs):
    """Task body of :meth:`DaskRows.map_rows` under the kernel lock."""
    from ._threads import thread_limits

    with _KERNEL_LOCK, thread_limits(_worker_threads(n_jobs)):
        return fn(np.ascontiguousarray(block, dtype=np.float64), *args)


class DaskRows(Rows):
    """Rows of a 2-D dask collection (and optional aligned targets), chunked by row.

    The Dask implementation of :class:`fastvi.rows.Rows`: its blocks are the row
    chunks, and the partial results are summed in the same tree as in memory.

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_features), or dask DataFrame
        Columns are gathered into one chunk (a row chunk is a kernel's unit of
        work); unknown chunk sizes (from a DataFrame) are computed once.
    y : dask or NumPy array of shape (n_samples,), optional
        Rechunked to the rows of ``X``; each task receives ``(rows, targets)``.
        The blocks are cast to float64 on the workers.
    """

    def __init__(self, X, y=None):
        try:
            import dask
            import dask.array as da
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                'fitting on Dask collections needs dask: pip install "fastvi[dask]" '
                '(or pip install "dask[array]" distributed)'
            ) from exc
        if hasattr(X, "to_dask_array"):  # a dask DataFrame
            X = X.to_dask_array(lengths=True)
        if not isinstance(X, da.Array):
            raise TypeError(
                f"expected a dask array or DataFrame, got {type(X).__name__}"
            )
        if X.ndim != 2:
            raise ValueError(
                f"Expected 2D array, got {X.ndim}D dask array instead. Reshape your "
                "data either using array.reshape(-1, 1) if your data has a single "
                "feature or array.reshape(1, -1) if it contains a single sample."
            )
        if any(np.isnan(c) for c in X.chunks[0]):
            X = X.compute_chunk_sizes()
        if X.dtype.kind not in "biuf":
            raise ValueError(
                f"dask array of dtype {X.dtype} given; fastvi needs numeric data"
            )
        if X.numblocks[1] != 1:
            X = X.rechunk({1: -1})
        self.array = X = X.astype(np.float64)
        self.shape = tuple(int(s) for s in X.shape)
        self.sizes = np.asarray(X.chunks[0], dtype=np.int64)
        self.starts = np.cumsum(self.sizes) - self.sizes
        blocks = list(X.to_delayed().ravel())
        self.y = None
        if y is not None:
            y = da.asarray(y)
            if y.ndim != 1 or int(y.shape[0]) != self.shape[0]:
                raise ValueError(
                    f"y has shape {tuple(y.shape)}; expected ({self.shape[0]},) "
                    "to match X"
                )
            self.y = y = y.rechunk((X.chunks[0],))
            blocks = [
                dask.delayed(tuple, pure=True)([b, t])
                for b, t in zip(blocks, y.to_delayed().ravel())
            ]
        self._blocks = blocks
        self._dask = dask

    def block_sizes(self):
        """The number of rows of every chunk, in order."""
        return self.sizes.tolist()

    def blocks(self):
        """``(start, chunk)`` computed and brought here one chunk at a time, in
        order (for a consumer that must see the rows in sequence)."""
        for start, block in zip(self.starts, self._blocks):
            yield int(start), self._dask.compute(block)[0]

    def map_reduce(self, fn, shared=(), local=None, n_jobs=None, ordered=False):
        """:meth:`fastvi.rows.Rows.map_reduce` in tasks: ``shared`` travels once per
        call (one graph key), ``local[i]`` only to chunk ``i``; ``n_jobs`` is the
        kernel thread count on dask's local scheduler (workers use their own)."""
        delayed = self._dask.delayed
        shared_key = delayed(tuple(shared), pure=True)
        mine = (lambda i: ()) if local is None else (lambda i: tuple(local[i]))
        run = delayed(_run_block, pure=True)
        tasks = [
            run(fn, block, int(start), shared_key, mine(i), n_jobs)
            for i, (start, block) in enumerate(zip(self.starts, self._blocks))
        ]
        if ordered:  # the kernels run in parallel, the small folds in a chain
            acc = functools.reduce(delayed(fold_step, pure=True), tasks, None)
            ones = [delayed(one_values, pure=True)(task) for task in tasks]
            total = delayed(fold_total, pure=True)(acc, ones)
        else:
            total = tree_sum(tasks, add=lambda a, b: delayed(add, pure=True)(a, b))
        return self._dask.compute(total)[0]

    def map_rows(self, fn, args=(), n_columns=None, dtype=np.float64, n_jobs=None):
        """Lazy per-row results: ``fn(rows, *args)`` on every chunk, as a dask array
        with the row chunks of ``X`` and ``n_columns`` columns (1-D when None)."""
        if n_columns is None:
            layout = {"drop_axis": 1, "meta": np.empty(0, dtype)}
        else:
            chunks = (self.array.chunks[0], (n_columns,))
            layout = {"chunks": chunks, "meta": np.empty((0, 0), dtype)}
        return self.array.map_blocks(_run_rows, fn, args, n_jobs, dtype=dtype, **layout)

    def subsample(self, stride):
        """Every ``stride``-th row (and target), brought to the client."""
        from .rows import ArrayRows

        parts = [self.array[::stride]]
        if self.y is not None:
            parts.append(self.y[::stride])
        parts = self._dask.compute(*parts)
        X = np.require(parts[0], dtype=np.float64, requirements=["C", "W"])
        return ArrayRows(X, None if self.y is None else np.asarray(parts[1]))

    def unique_targets(self):
        """Sorted distinct targets, computed on the workers."""
        return np.unique(self.y.map_blocks(np.unique).compute())

    def check_finite(self, n_jobs=None):
        """Raise scikit-learn's message if any value (of X, then y) is NaN or inf."""
        counts = self.map_reduce(_count_nonfinite, n_jobs=n_jobs)
        raise_if_nonfinite("X", *counts[:2])
        raise_if_nonfinite("y", *counts[2:])


def raise_if_nonfinite(name, n_nan, n_inf, dtype=np.float64):
    """scikit-learn's message for NaN / infinite values counted in ``name``."""
    if n_nan:
        raise ValueError(f"Input {name} contains NaN.")
    if n_inf:
        raise ValueError(
            f"Input {name} contains infinity or a value too large for "
            f"{np.dtype(dtype)!r}."
        )


def _count_nonfinite(block, start):
    """Task: NaN and infinity counts of the rows (and of the targets, if any)."""
    parts = block if isinstance(block, tuple) else (block, np.zeros(0))
    counts = []
    for values in parts:
        values = np.asarray(values)
        if values.dtype.kind not in "fc":  # integers, labels: always finite
            counts += [0, 0]
            continue
        n_nan = int(np.isnan(values).sum())
        counts += [n_nan, int((~np.isfinite(values)).sum()) - n_nan]
    return tuple(counts)
