"""The one place that decides how many threads fastvi uses.

``thread_limits(n_jobs)`` sets numba's thread count for the kernels and limits BLAS to
one thread for the duration (on small machines OpenBLAS's spinning workers steal the
cores numba's threads need), then restores both in ``finally`` — also when the body
raises.

Fits may run in several threads of one process at once, and the two settings have
different scopes. numba's thread count is per thread (``numba.set_num_threads`` sets
it for the calling thread only), so each ``thread_limits`` saves and restores its own
thread's value. The BLAS limit is process-wide: a counter of the active
``thread_limits`` bodies (under a lock) makes the first one in save the BLAS limits
and set them to one, and the last one out restore what the first one saved, whatever
the order in which overlapping fits end.
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


# the process-wide BLAS limit: how many thread_limits bodies are active, and the
# limiter of the first one (holding the limits from before it)
_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None


_controller = (None, -1)  # (threadpoolctl controller, len(sys.modules) when made)


def _blas_controller():
    """A cached ``ThreadpoolController``: making one scans every loaded shared
    library (1-5 ms, a tenth of a small SGVI fit); it is made again when modules
    were imported since (a BLAS is loaded by importing the module that links it)."""
    global _controller
    import sys

    from threadpoolctl import ThreadpoolController

    controller, seen = _controller
    if controller is None or seen != len(sys.modules):
        controller = ThreadpoolController()
        _controller = (controller, len(sys.modules))
    return controller


def _blas_enter():
    global _blas_users, _blas_limiter

    with _blas_lock:
        if _blas_users == 0:
            with _blas_control():
                _blas_limiter = _blas_controller().limit(limits=1, user_api="blas")
        _blas_users += 1


def _blas_exit():
    global _blas_users, _blas_limiter
    with _blas_lock:
        _blas_users -= 1
        if _blas_users == 0:
            limiter, _blas_limiter = _blas_limiter, None
            with _blas_control():
                limiter.restore_original_limits()


@contextmanager
def _blas_control():
    """Let this thread change a process-wide OpenBLAS pool for the body.

    threadpoolctl (3.8 and later) lets only one thread resize OpenBLAS's shared
    pthreads pool, the first one that did (until a ``with threadpool_limits`` of
    that thread ends), and silently ignores the others: the fit that restores the
    limits may run in another thread than the one that set them. fastvi's own
    changes take turns under ``_blas_lock``, so the thread making one takes the
    control for it and lets it go again (older threadpoolctl: nothing to do).
    """
    try:
        from threadpoolctl import OpenBLASController

        release = OpenBLASController.clear_controlling_thread
    except (ImportError, AttributeError):
        yield
        return
    release(force=True)
    try:
        yield
    finally:
        release(force=True)


@contextmanager
def thread_limits(n_jobs):
    """Run the body with ``n_jobs`` numba threads and single-threaded BLAS.

    On exit this thread's numba thread count is what it was on entry; the BLAS
    limits are restored when the last overlapping ``thread_limits`` of the process
    exits (see the module documentation).
    """
    import numba

    n_threads = resolve_n_jobs(n_jobs)
    previous = numba.get_num_threads()  # this thread's (numba's count is per thread)
    _blas_enter()
    try:
        numba.set_num_threads(n_threads)
        yield n_threads
    finally:
        try:
            numba.set_num_threads(previous)
        finally:
            _blas_exit()


# ------------------------------------------------------------------ chunked kernels
# Kernels are serial numba functions that release the GIL (``nogil=True``) and compute
# a range of fixed-size row chunks, each chunk writing only its own slice of the
# partial-sums arrays. ``map_chunks`` runs such a kernel over all chunks on the
# threads of the current fit (``thread_limits``) plus the calling thread. Which thread
# computes which chunk changes from run to run; what a chunk computes does not, and
# the caller combines the partials in chunk order, so results are bitwise identical
# for any thread count. A numba ``prange`` would do the same, but compiling a parallel
# kernel re-optimizes everything it calls once more: the mixture's first fit spent
# 20.5 s of CPU in numba's compile events instead of 7.0 s on the loaded 2-core
# development machine (about 0.7 s more when it was idle; README, "Compile time"). The
# threads also run two fits' kernels at once safely, which numba's workqueue layer
# cannot.
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
