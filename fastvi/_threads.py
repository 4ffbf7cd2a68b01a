"""The one place that decides how many threads fastvi uses.

``thread_limits(n_jobs)`` sets numba's thread count for the kernels and limits BLAS to
one thread for the duration (on small machines OpenBLAS's spinning workers steal the
cores numba's threads need), then restores both in ``finally`` — also when the body
raises.
"""

from contextlib import contextmanager
from numbers import Integral

__all__ = ["resolve_n_jobs", "thread_limits"]


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
