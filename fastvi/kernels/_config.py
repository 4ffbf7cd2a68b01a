"""The one place that decides how fastvi's kernels are compiled.

Every kernel takes its decorator from here; no other module passes numba options.

* ``cache=True``: compiled machine code is stored next to the source (or in numba's
  user cache directory when that is read-only) so a second process loads instead of
  compiling.
* ``FASTMATH`` allows reassociation (so reductions over the contiguous point axis
  vectorize), contraction to FMA and reciprocal approximations, but *not* ``nnan`` or
  ``ninf``: NaN and inf checks inside kernels must keep working.
* ``error_model="numpy"``: division by zero gives inf/NaN like NumPy instead of raising,
  which keeps the division out of the vectorized loops' way.
"""

import numba

FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})

_COMMON = dict(cache=True, fastmath=set(FASTMATH), error_model="numpy", nogil=True)


def jit(func=None, **overrides):
    """Serial kernel decorator (``@jit``)."""
    opts = dict(_COMMON, **overrides)
    if func is None:
        return numba.njit(**opts)
    return numba.njit(**opts)(func)


def pjit(func=None, **overrides):
    """Parallel kernel decorator (``@pjit``): like :func:`jit` with ``parallel=True``."""
    opts = dict(_COMMON, parallel=True, **overrides)
    if func is None:
        return numba.njit(**opts)
    return numba.njit(**opts)(func)
