"""Input-scale checks shared by the conjugate models: say what overflows, up front.

The CAVI models work from sums of squares and products of the data (Gram matrices,
scatter matrices, E‖y − Xw‖²). Finite values above about ``sqrt(max float64 / n)``
make those sums overflow to inf, and a later check would then report "infs or NaNs"
in an input that has none; values below about ``sqrt(smallest normal float64)`` make
them underflow to zero. These helpers refuse such data with a message that names the
problem and the remedy (rescaling), before any statistic is computed.
"""

import math

import numpy as np

__all__ = ["check_finite_statistics", "check_squares_overflow", "max_abs"]

_MAX = float(np.finfo(np.float64).max)


def max_abs(a):
    """max |a| of a float array (0 for an empty one), without a temporary copy."""
    if a.size == 0:
        return 0.0
    return float(max(-np.min(a), np.max(a)))


def check_squares_overflow(name, largest, n_terms):
    """Refuse values whose squares, summed over ``n_terms`` terms, overflow float64.

    Deviations from a mean can be twice the largest value, hence the factor 4.
    """
    limit = math.sqrt(_MAX / (4.0 * max(int(n_terms), 1)))
    if largest > limit:
        raise ValueError(
            f"{name} has values as large as {largest:.3g} in magnitude: their squares "
            f"and products, summed over {int(n_terms)} terms, overflow float64 (the "
            f"limit here is about {limit:.3g}). Rescale {name} (for example, "
            "standardize it)."
        )


def check_finite_statistics(name, *statistics):
    """After the fact (data that never came to this process): sums that overflowed."""
    if not all(np.all(np.isfinite(s)) for s in statistics):
        raise ValueError(
            f"The sums of squares and products of {name} overflow float64: its "
            f"values are too large. Rescale {name} (for example, standardize it)."
        )
