"""Elementary functions for the hot loops.

numba from PyPI has no SVML, so ``math.exp`` inside a loop is a scalar libm call.
``exp_nonpos`` is a branch-free polynomial exp for the arguments the mixture kernels
need (log-responsibilities, always <= 0 up to rounding), within 3e-14 of ``np.exp`` and
about 3x cheaper than the libm call in our loops (measured: 2.2 vs 6.0 ns per value on
the 2-core development machine). LLVM does not vectorize it yet (``np.floor`` lowers to
a call it will not widen); that is the next thing to try when the exp shows up in
profiles.
"""

import llvmlite.ir as llvm_ir
import numpy as np
from numba import types
from numba.extending import intrinsic

from ._config import jit

_LOG2E = 1.4426950408889634
# ln 2 split in two (Cody & Waite) so that k * LN2_HI is exact for |k| < 2**11
_LN2_HI = 0.693145751953125
_LN2_LO = 1.42860682030941723212e-6
# exp(x) underflows to a subnormal below about -708.4; we flush there
_EXP_MIN = -708.0
# 1/n! for n = 0..13 (Taylor coefficients; |r| <= ln2/2 keeps the error < 1e-17)
_C = tuple(1.0 / float(np.prod(np.arange(1, n + 1))) for n in range(14))


@intrinsic
def bits_as_float64(typingctx, bits):
    """Reinterpret the bits of an int64 as a float64 (a no-op for the CPU)."""
    if not isinstance(bits, types.Integer):
        return None
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.DoubleType())

    return sig, codegen


@intrinsic
def bits_as_float32(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32 (a no-op for the CPU)."""
    if not isinstance(bits, types.Integer):
        return None
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.FloatType())

    return sig, codegen


@intrinsic
def float64_bits(typingctx, x):
    """Reinterpret the bits of a float64 as an int64 (a no-op for the CPU)."""
    if not isinstance(x, types.Float):
        return None
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.IntType(64))

    return sig, codegen


@jit
def exp_nonpos(x):
    """exp(x) for x <= ~0, as 0 below -708; within 3e-14 of ``np.exp``.

    Slightly positive x (rounding noise) is fine; NaN gives NaN.
    """
    x = max(x, _EXP_MIN) if x == x else x
    k = np.floor(x * _LOG2E + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _C[13]
    p = p * r + _C[12]
    p = p * r + _C[11]
    p = p * r + _C[10]
    p = p * r + _C[9]
    p = p * r + _C[8]
    p = p * r + _C[7]
    p = p * r + _C[6]
    p = p * r + _C[5]
    p = p * r + _C[4]
    p = p * r + _C[3]
    p = p * r + _C[2]
    p = p * r + _C[1]
    p = p * r + _C[0]
    # 2**k from its exponent bits; k in [-1022, 1] here
    scale = bits_as_float64((np.int64(k) + 1023) << 52) if x == x else 1.0
    res = p * scale
    return 0.0 if x <= _EXP_MIN else res
