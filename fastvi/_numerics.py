"""Input-scale checks shared by the models: say what overflows, and the remedy.

The CAVI models work from sums of squares and products of the data (Gram matrices,
scatter matrices, E‖y − Xw‖²). Finite values above about ``sqrt(max float64 / n)``
make those sums overflow to inf, and a later check would then report "infs or NaNs"
in an input that has none; values below about ``sqrt(smallest normal float64)`` make
them underflow to zero. These helpers refuse such data with a message that names the
problem and the remedy (rescaling), before any statistic is computed.

At prediction time the new rows can be far larger than the training data: a
predictive log-density or variance of such a row overflows (it is not representable,
or its computation passes through a square that is not). The prediction methods
check what they return with :func:`check_finite_prediction` (a test of the result,
so no input whose answer is representable is refused), in the block functions of
:mod:`fastvi.rows` where the rows are at hand.
"""

import math

import numpy as np

__all__ = [
    "check_finite_prediction",
    "check_finite_statistics",
    "finite_mean",
    "check_squares_overflow",
    "max_abs",
]

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


def check_finite_prediction(
    method, X, what, *values, dtype="float64", remedy="", name="X"
):
    """Right or loud at prediction time: ``values`` (what ``method`` computes from the
    rows ``X``, or None where they are not at hand) must be finite.

    Non-finite values computed from finite rows mean the rows are too large for the
    model (``what`` overflows ``dtype``); ``remedy`` is added to the message's
    advice (such as the other ``compute_dtype``), ``name`` names the input.
    """
    if all(np.all(np.isfinite(v)) for v in values):
        return
    size = "too large" if X is None else f"as large as {max_abs(np.asarray(X)):.3g}"
    raise ValueError(
        f"{name} has values {size} in magnitude: {what} overflow {dtype} in "
        f"{method}. Rescale {name} the same way as the training data{remedy}."
    )


def finite_mean(method, log_density, what="the log-densities"):
    """The mean of per-row ``log_density`` (a ``score``), refused where the sum
    over the rows overflows though every row's value is finite."""
    with np.errstate(over="ignore"):  # checked below
        value = float(np.mean(log_density))
    check_finite_prediction(method, None, f"{what}, summed over the rows,", value)
    return value
