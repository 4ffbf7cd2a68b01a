"""Vectorizable elementary functions for users' numba model functions.

numba from PyPI has no vector math library, so ``math.exp`` or ``math.log`` in a
likelihood makes every row a scalar library call, and the loop over a tile's rows
cannot use the CPU's vector lanes. These are fastvi's own branch-free polynomials
(:mod:`fastvi.kernels._math`, a few ulp from the libm values); called from a
:class:`~fastvi.sgvi.LinearModel` likelihood they let the generated kernel vectorize
it, as the built-in :class:`~fastvi.sgvi.GLM` kernel is::

    from fastvi.sgvi import vmath

    @numba.njit
    def bernoulli_logit(eta, y, phi):
        return y * eta - vmath.softplus(eta)

``exp(x)`` (0 below -708, inf above 709), ``log(y)`` (y >= 0), ``log1p(x)``
(x >= -1), ``softplus(x) = log(1 + exp(x))``, ``sigmoid(x) = 1 / (1 + exp(-x))``.
"""

from ..kernels._math import exp_clamped as exp
from ..kernels._math import log1p, sigmoid, softplus
from ..kernels._math import log_pos as log

__all__ = ["exp", "log", "log1p", "sigmoid", "softplus"]
