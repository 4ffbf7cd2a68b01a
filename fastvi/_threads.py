"""The one place that decides how many threads fastvi uses.

``thread_limits(n_jobs)`` sets numba's thread count for the kernels and limits BLAS to
one thread for the duration (on small machines OpenBLAS's spinning workers steal the
cores numba's threads need), then restores both in ``finally`` — also when the body
raises.
"""

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from numbers import Integral

__all__ = ["map_chunks", "resolve_n_jobs", "thread_limits"]


def _max_threads():
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def resolve_n_jobs(n_jobs):
    """Map scikit-learn's ``n_jobs`` convention to a thread count.

    ``None`` and ``-1`` mean all available threads; ``-2`` all but one, and so on;
    a positive value is capped at what numba can use. ``0`` is an error.
    """
    available = _max_threads()
    if n_jobs is None:
        return available
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, Integral):
        raise ValueError(f"n_jobs must be None or an int, got {n_jobs!r}.")
    n_jobs = int(n_jobs)
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 has no meaning; use None or a non-zero int.")
    if n_jobs < 0:
        return max(1, available + 1 + n_jobs)
    return min(n_jobs, available)


@contextmanager
def thread_limits(n_jobs):
    """Run the body with ``n_jobs`` numba threads and single-threaded BLAS."""
    import numba
    from threadpoolctl import threadpool_limits

    n_threads = resolve_n_jobs(n_jobs)
    previous = numba.get_num_threads()
    blas = threadpool_limits(limits=1, user_api="blas")
    try:
        numba.set_num_threads(n_threads)
        yield n_threads
    finally:
        numba.set_num_threads(previous)
        blas.restore_original_limits()


# ------------------------------------------------------------------ chunked kernels
# Kernels are serial numba functions that release the GIL (``nogil=True``) and compute
# a range of fixed-size row chunks, each chunk writing only its own slice of the
# partial-sums arrays. ``map_chunks`` runs such a kernel over all chunks on the
# threads of the current fit (``thread_limits``) plus the calling thread. Which thread
# computes which chunk changes from run to run; what a chunk computes does not, and
# the caller combines the partials in chunk order, so results are bitwise identical
# for any thread count. A numba ``prange`` would do the same, but compiling a parallel
# kernel re-optimizes everything it calls once more, which doubled the first fit's
# compile time (bench/compile_time.py); a serial kernel compiles once.
_POOL = None
_POOL_LOCK = threading.Lock()


def _pool():
    global _POOL
    with _POOL_LOCK:
        # a pool inherited through fork() has no threads in the child: make a new one
        if _POOL is None or _POOL[0] != os.getpid():
            workers = max(1, _max_threads() - 1)
            _POOL = (os.getpid(), ThreadPoolExecutor(workers, "fastvi"))
        return _POOL[1]


def map_chunks(kernel, n_chunks, *args):
    """``kernel(c0, c1, *args)`` over ``[0, n_chunks)`` in pieces, on this fit's threads.

    The number of threads is numba's for the calling thread (set by
    :func:`thread_limits`). Pieces of several chunks are handed out in turn until none
    are left; the first exception raised by any piece is re-raised here after every
    piece has ended.
    """
    import numba

    n_threads = min(numba.get_num_threads(), n_chunks)
    if n_threads <= 1:
        if n_chunks > 0:
            kernel(0, n_chunks, *args)
        return
    step = -(-n_chunks // (4 * n_threads))
    starts = itertools.count(0, step)  # next() is atomic under the GIL

    def work():
        for c0 in starts:
            if c0 >= n_chunks:
                return
            kernel(c0, min(n_chunks, c0 + step), *args)

    helpers = [_pool().submit(work) for _ in range(n_threads - 1)]
    try:
        work()
    finally:
        errors = [f.exception() for f in helpers]
    for error in errors:
        if error is not None:
            raise error
