"""Tiles of rows and the microkernels that run on them (shared by the kernel modules).

A tile is ``T`` rows of X copied transposed to (D, T), so the points are the innermost,
contiguous loop: the loops over features and components sit outside and LLVM
vectorizes along the points (see ``shared/PERFORMANCE.md``: tiling took the mixture
kernel from 3-5x to 16-23x scikit-learn). The microkernels below are register blocked:
every load or store of a tile row feeds several multiply-adds.

``scratch``
    a tile-shaped scratch array on 64-byte boundaries (whole 512-bit loads).
``load_tile``, ``gather_tile``, ``tile_rows``
    copy rows into tiles: a range, rows by index, or all of X at once.
``prefetch_l2``, ``prefetch_rows``
    ask for a cache line, or every line of some rows by index, ahead of their use.
``tri_column``, ``maha_upper``, ``maha_blocked``
    x^T U products with an upper-triangular U (precision Cholesky factors, covariance
    factors): one column of it, or the squared norm ||x^T U||^2 per point
    (``maha_blocked``: ||x^T U - b||^2 on a factor zero-padded to a multiple of 8, in
    4 x 8 register blocks).
``maha_unrolled8``, ``maha_unrolled16``
    ``c - 0.5 ||x^T U - b||^2`` per point for factors padded to Dp = 8 or 16, as one
    straight-line sweep: every z_j and its square stay in registers.
``weighted_sq_dist``
    sum_d w_d (a_d - c_d)^2 per point (diagonal precisions, projected means).
``gram_upper``
    the upper triangle of a weighted Gram matrix sum_t r_t y_t y_t^T of a tile.
``like``
    a scalar in the dtype of an array, so a float32 tile's arithmetic stays float32
    (a float64 literal such as ``0.5`` or ``0.0`` would promote it to float64 and
    halve the vector width).

The microkernels run in the dtype of their tiles (float64, or float32 for the float32
mixture lanes: twice the vector width); sums over a tile's points are kept in that
dtype and added into the caller's (float64) outputs.
"""

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._config import jit, jit_source, wide_vectors


@intrinsic
def like(typingctx, x, arr):
    """``x`` converted to the dtype of the array ``arr`` (a no-op for the same dtype)."""
    if not isinstance(arr, types.Array) or not isinstance(x, types.Number):
        return None

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], signature.args[0], signature.return_type)

    return arr.dtype(x, arr), codegen


@jit
def scratch(rows, cols, like_array):
    """An uninitialized (rows, >= cols) scratch array in the dtype of ``like_array``
    whose rows start on 64-byte boundaries.

    numba's ``np.empty`` aligns to 32 bytes: a 512-bit load from such a row splits two
    cache lines every other time, and the tiled loops ran about 1.4x slower.
    """
    lanes = 64 // like_array.itemsize
    width = -(-cols // lanes) * lanes
    buf = np.empty(rows * width + lanes, dtype=like_array.dtype)
    off = (lanes - (buf.ctypes.data // like_array.itemsize) % lanes) % lanes
    return buf[off : off + rows * width].reshape((rows, width))


@jit
def load_tile(X, t0, T, intercept, Xt):
    """Xt[d, t] = X[t0 + t, d] for t < T; with ``intercept`` also Xt[D, t] = 1."""
    wide_vectors()
    D = X.shape[1]
    for t in range(T):
        for d in range(D):
            Xt[d, t] = X[t0 + t, d]
    if intercept:
        for t in range(T):
            Xt[D, t] = 1.0


@intrinsic
def prefetch_l2(typingctx, arr, offset):
    """Prefetch the cache line of element ``offset`` of ``arr``'s buffer into L2
    (``prefetcht1``; never faults, so an offset past the end is harmless)."""

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i8p = builder.bitcast(
            builder.gep(ary.data, [args[1]]), ir.IntType(8).as_pointer()
        )
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch")
        builder.call(fn, [i8p, i32(0), i32(2), i32(1)])  # read, locality 2, data
        return context.get_dummy_value()

    return types.none(arr, types.intp), codegen


#: rows of a block of gather_tile (and of NumbaModel's row loop): the next block's
#: cache lines are requested before each block is copied
GATHER_AHEAD = 16


@jit
def gather_tile(X, rows, t0, T, Xt):
    """Xt[d, t] = X[rows[t0 + t], d] for t < T (a minibatch's rows).

    The rows go in blocks of ``GATHER_AHEAD``, the next block's rows (into the next
    tile's) prefetched before each: random rows of an X larger than the caches each
    cost a miss and often a page walk, and one at a time they made a 1024-row float32
    minibatch pass of 50 features 5x slower than contiguous rows (AMD EPYC, znver4).
    """
    D = X.shape[1]
    M = rows.shape[0]
    lanes = 64 // X.itemsize
    # rows in blocks of GATHER_AHEAD, the next block's rows prefetched before each
    # block (and the first block's at the start: the tile before, if any, asked for
    # them already, and then these are cheap)
    prefetch_rows(X, rows, t0, min(M, t0 + GATHER_AHEAD), D, lanes)
    for b in range(0, T, GATHER_AHEAD):
        j0 = t0 + b + GATHER_AHEAD
        prefetch_rows(X, rows, j0, min(M, j0 + GATHER_AHEAD), D, lanes)
        for t in range(b, min(T, b + GATHER_AHEAD)):
            n = rows[t0 + t]
            for d in range(D):
                Xt[d, t] = X[n, d]


@jit
def prefetch_rows(X, rows, j0, j1, D, lanes):
    """Prefetch every cache line of the rows rows[j0:j1] of the C-ordered X (``D``
    columns, ``lanes`` elements a line; an offset past the end of X does not fault:
    a prefetch is a hint)."""
    for j in range(j0, j1):
        for e in range(0, D + lanes, lanes):
            prefetch_l2(X, rows[j] * D + e)


@jit
def tile_rows(X, tile, out):
    """out[i, d, t] = X[i * tile + t, d]; the padding of the last tile is zeroed."""
    N, D = X.shape
    n_tiles = out.shape[0]
    for i in range(n_tiles):
        for d in range(D):
            for t in range(tile):
                n = i * tile + t
                out[i, d, t] = X[n, d] if n < N else 0.0


@jit
def tri_column(U, j, Y, T, acc):
    """acc[t] <- sum_{i <= j} U[i, j] * Y[i, t]  (column j of (Y^T U)^T, U upper).

    Four rows per sweep so each load/store of ``acc`` feeds four FMAs: the sweep is
    bound by memory operations otherwise.
    """
    wide_vectors()
    for t in range(T):
        acc[t] = 0.0
    n = j + 1
    i = 0
    while i + 4 <= n:
        u0 = U[i, j]
        u1 = U[i + 1, j]
        u2 = U[i + 2, j]
        u3 = U[i + 3, j]
        for t in range(T):
            acc[t] += (
                u0 * Y[i, t] + u1 * Y[i + 1, t] + u2 * Y[i + 2, t] + u3 * Y[i + 3, t]
            )
        i += 4
    while i < n:
        u0 = U[i, j]
        for t in range(T):
            acc[t] += u0 * Y[i, t]
        i += 1


@jit
def maha_upper(U, Y, T, acc, acc2, maha):
    """maha[t] <- || Y[:, t]^T U ||^2 for upper-triangular U.

    Columns go in pairs (j, j + 1) that share the loads of rows 0..j, and rows in
    blocks of four, so every load or store feeds more than one FMA.
    """
    wide_vectors()
    D = Y.shape[0]
    for t in range(T):
        maha[t] = 0.0
    j = 0
    while j + 1 < D:
        for t in range(T):
            acc[t] = 0.0
            acc2[t] = 0.0
        n = j + 1
        i = 0
        while i + 4 <= n:
            a0 = U[i, j]
            a1 = U[i + 1, j]
            a2 = U[i + 2, j]
            a3 = U[i + 3, j]
            b0 = U[i, j + 1]
            b1 = U[i + 1, j + 1]
            b2 = U[i + 2, j + 1]
            b3 = U[i + 3, j + 1]
            for t in range(T):
                y0 = Y[i, t]
                y1 = Y[i + 1, t]
                y2 = Y[i + 2, t]
                y3 = Y[i + 3, t]
                acc[t] += a0 * y0 + a1 * y1 + a2 * y2 + a3 * y3
                acc2[t] += b0 * y0 + b1 * y1 + b2 * y2 + b3 * y3
            i += 4
        while i < n:
            a0 = U[i, j]
            b0 = U[i, j + 1]
            for t in range(T):
                y0 = Y[i, t]
                acc[t] += a0 * y0
                acc2[t] += b0 * y0
            i += 1
        last = U[j + 1, j + 1]  # row j + 1 only reaches column j + 1
        for t in range(T):
            z = acc2[t] + last * Y[j + 1, t]
            maha[t] += acc[t] * acc[t] + z * z
        j += 2
    if j < D:  # odd D: the last column alone
        tri_column(U, j, Y, T, acc)
        for t in range(T):
            maha[t] += acc[t] * acc[t]


@jit
def weighted_sq_dist(A, T, centre, weight, acc):
    """acc[t] <- sum_d weight[d] * (A[d, t] - centre[d])^2, four features a sweep."""
    wide_vectors()
    D = A.shape[0]
    for t in range(T):
        acc[t] = 0.0
    d = 0
    while d + 4 <= D:
        m0 = centre[d]
        m1 = centre[d + 1]
        m2 = centre[d + 2]
        m3 = centre[d + 3]
        p0 = weight[d]
        p1 = weight[d + 1]
        p2 = weight[d + 2]
        p3 = weight[d + 3]
        for t in range(T):
            e0 = A[d, t] - m0
            e1 = A[d + 1, t] - m1
            e2 = A[d + 2, t] - m2
            e3 = A[d + 3, t] - m3
            acc[t] += p0 * e0 * e0 + p1 * e1 * e1 + p2 * e2 * e2 + p3 * e3 * e3
        d += 4
    while d < D:
        m0 = centre[d]
        p0 = weight[d]
        for t in range(T):
            e0 = A[d, t] - m0
            acc[t] += p0 * e0 * e0
        d += 1


@jit
def gram_upper(r, Y, T, out, k):
    """out[k, i, j] += sum_t r[t] Y[i, t] Y[j, t] for j >= i, in 2 x 4 register blocks.

    The weighted rows r Y[i] are formed in registers, not read from a weighted copy
    of the tile: storing that copy cost more than the multiplies (a 'full' mixture
    pass ran ~8% faster without it, thread CPU time, D=16, K=32). Each load of a Y
    element feeds two or four FMAs; entries below the diagonal are never written.
    ``out`` is indexed with ``k`` rather than passed as the view ``out[k]``: the
    mixture kernel calls this per component and tile, and its 'full' fit measured ~15%
    slower with the view (N=5e5, K=32, D=16); indexed, it is as fast
    as the inline copy it replaced (thread CPU time of a 'full' pass, same run).
    """
    wide_vectors()
    D = Y.shape[0]
    i = 0
    while i < D:
        i1 = i + 1 if i + 1 < D else i  # last odd row: computed twice, kept once
        j = i
        while j < D:
            j1 = min(j + 1, D - 1)
            j2 = min(j + 2, D - 1)
            j3 = min(j + 3, D - 1)
            a0 = like(0.0, Y)
            a1 = like(0.0, Y)
            a2 = like(0.0, Y)
            a3 = like(0.0, Y)
            b0 = like(0.0, Y)
            b1 = like(0.0, Y)
            b2 = like(0.0, Y)
            b3 = like(0.0, Y)
            for t in range(T):
                rt = r[t]
                w0 = rt * Y[i, t]
                w1 = rt * Y[i1, t]
                y0 = Y[j, t]
                y1 = Y[j1, t]
                y2 = Y[j2, t]
                y3 = Y[j3, t]
                a0 += w0 * y0
                a1 += w0 * y1
                a2 += w0 * y2
                a3 += w0 * y3
                b0 += w1 * y0
                b1 += w1 * y1
                b2 += w1 * y2
                b3 += w1 * y3
            # write back only real entries of the upper triangle
            out[k, i, j] += a0
            if j + 1 < D:
                out[k, i, j + 1] += a1
            if j + 2 < D:
                out[k, i, j + 2] += a2
            if j + 3 < D:
                out[k, i, j + 3] += a3
            if i + 1 < D:
                if j >= i + 1:
                    out[k, i + 1, j] += b0
                if j + 1 < D and j + 1 >= i + 1:
                    out[k, i + 1, j + 1] += b1
                if j + 2 < D:
                    out[k, i + 1, j + 2] += b2
                if j + 3 < D:
                    out[k, i + 1, j + 3] += b3
            j += 4
        i += 2


@jit
def _tri_rows4x8(U, i0, j0, X, T, Z):
    """Z[c, t] += sum_{r < 4} U[i0 + r, j0 + c] * X[i0 + r, t] for c < 8: a 4 x 8
    register block (each load of X feeds 8 FMAs, each load and store of Z 4)."""
    wide_vectors()
    a0, a1, a2, a3 = U[i0, j0], U[i0 + 1, j0], U[i0 + 2, j0], U[i0 + 3, j0]
    b0, b1, b2, b3 = (
        U[i0, j0 + 1],
        U[i0 + 1, j0 + 1],
        U[i0 + 2, j0 + 1],
        U[i0 + 3, j0 + 1],
    )
    c0, c1, c2, c3 = (
        U[i0, j0 + 2],
        U[i0 + 1, j0 + 2],
        U[i0 + 2, j0 + 2],
        U[i0 + 3, j0 + 2],
    )
    d0, d1, d2, d3 = (
        U[i0, j0 + 3],
        U[i0 + 1, j0 + 3],
        U[i0 + 2, j0 + 3],
        U[i0 + 3, j0 + 3],
    )
    e0, e1, e2, e3 = (
        U[i0, j0 + 4],
        U[i0 + 1, j0 + 4],
        U[i0 + 2, j0 + 4],
        U[i0 + 3, j0 + 4],
    )
    f0, f1, f2, f3 = (
        U[i0, j0 + 5],
        U[i0 + 1, j0 + 5],
        U[i0 + 2, j0 + 5],
        U[i0 + 3, j0 + 5],
    )
    g0, g1, g2, g3 = (
        U[i0, j0 + 6],
        U[i0 + 1, j0 + 6],
        U[i0 + 2, j0 + 6],
        U[i0 + 3, j0 + 6],
    )
    h0, h1, h2, h3 = (
        U[i0, j0 + 7],
        U[i0 + 1, j0 + 7],
        U[i0 + 2, j0 + 7],
        U[i0 + 3, j0 + 7],
    )
    for t in range(T):
        x0 = X[i0, t]
        x1 = X[i0 + 1, t]
        x2 = X[i0 + 2, t]
        x3 = X[i0 + 3, t]
        Z[0, t] += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
        Z[1, t] += b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3
        Z[2, t] += c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3
        Z[3, t] += d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3
        Z[4, t] += e0 * x0 + e1 * x1 + e2 * x2 + e3 * x3
        Z[5, t] += f0 * x0 + f1 * x1 + f2 * x2 + f3 * x3
        Z[6, t] += g0 * x0 + g1 * x1 + g2 * x2 + g3 * x3
        Z[7, t] += h0 * x0 + h1 * x1 + h2 * x2 + h3 * x3


@jit
def _tri_corner4(U, j0, X, T, Z):
    """The lower-right 4 x 4 corner of an 8 x 8 diagonal block of upper-triangular U:
    Z[4 + c, t] += sum_{r <= c} U[j0 + 4 + r, j0 + 4 + c] * X[j0 + 4 + r, t]."""
    wide_vectors()
    i = j0 + 4
    a0 = U[i, i]
    b0, b1 = U[i, i + 1], U[i + 1, i + 1]
    c0, c1, c2 = U[i, i + 2], U[i + 1, i + 2], U[i + 2, i + 2]
    d0, d1, d2, d3 = U[i, i + 3], U[i + 1, i + 3], U[i + 2, i + 3], U[i + 3, i + 3]
    for t in range(T):
        x0 = X[i, t]
        x1 = X[i + 1, t]
        x2 = X[i + 2, t]
        x3 = X[i + 3, t]
        Z[4, t] += a0 * x0
        Z[5, t] += b0 * x0 + b1 * x1
        Z[6, t] += c0 * x0 + c1 * x1 + c2 * x2
        Z[7, t] += d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3


@jit
def maha_blocked(U, b, X, T, Z, maha):
    """maha[t] <- || X[:, t]^T U - b ||^2 for upper-triangular U (Dp, Dp).

    ``Dp`` is a multiple of 8: U and ``b`` zero-padded beyond the D features (U also
    exactly zero below its diagonal), and ``X`` (Dp, >= T) has zero rows beyond them
    too. ``Z`` (8, >= T) is scratch. Columns of U go eight at a time: z = x^T U[:, j0:j0
    + 8] - b[j0:j0 + 8] is built in ``Z`` from 4 x 8 register blocks of the rows above
    and in the diagonal block (each load of Z feeds 4 FMAs, each of X 8; maha_upper's
    sweeps: 2 and 2) and the diagonal block's last triangle, then its squares are added
    to ``maha``. (x - m)^T U is computed as x^T U - m^T U with ``b = m^T U``, as
    scikit-learn does, so no centred copy of the tile is stored.
    """
    wide_vectors()
    Dp = U.shape[0]
    for t in range(T):
        maha[t] = 0.0
    for j0 in range(0, Dp, 8):
        b0, b1, b2, b3 = -b[j0], -b[j0 + 1], -b[j0 + 2], -b[j0 + 3]
        b4, b5, b6, b7 = -b[j0 + 4], -b[j0 + 5], -b[j0 + 6], -b[j0 + 7]
        for t in range(T):  # one sweep, not eight short ones
            Z[0, t] = b0
            Z[1, t] = b1
            Z[2, t] = b2
            Z[3, t] = b3
            Z[4, t] = b4
            Z[5, t] = b5
            Z[6, t] = b6
            Z[7, t] = b7
        for i0 in range(0, j0 + 4, 4):  # the first half of the diagonal block too
            _tri_rows4x8(U, i0, j0, X, T, Z)
        _tri_corner4(U, j0, X, T, Z)
        for t in range(T):
            z0 = Z[0, t]
            z1 = Z[1, t]
            z2 = Z[2, t]
            z3 = Z[3, t]
            z4 = Z[4, t]
            z5 = Z[5, t]
            z6 = Z[6, t]
            z7 = Z[7, t]
            maha[t] += (z0 * z0 + z1 * z1 + z2 * z2 + z3 * z3) + (
                z4 * z4 + z5 * z5 + z6 * z6 + z7 * z7
            )


def _maha_unrolled_source(Dp):
    """Source of ``maha_unrolled{Dp}(U, b, c, X, T, out)``: ``out[t] = c - 0.5 ||X[:,
    t]^T U - b||^2`` for an upper-triangular (Dp, Dp) ``U`` (zero-padded as for
    :func:`maha_blocked`), written out term by term.

    One sweep over the points: the Dp values of a point's column are loaded once,
    each z_j = sum_{i <= j} x_i U[i, j] - b_j is formed and squared in registers
    (Dp (Dp + 1) / 2 multiply-adds, no stores but ``out``), and the U entries are
    loop invariants. :func:`maha_blocked` stores and reloads z between its 4 x 8
    blocks; for Dp = 16 this sweep took 6.6 ns per point and component against 7.7
    (one thread, float64, AMD EPYC znver4; README). For Dp = 24 and 32 the live
    values outgrow the 32 vector registers and it was slower (23.5 against 15.2 ns
    at 24), so the caller keeps :func:`maha_blocked` there.
    """
    lines = [f"def maha_unrolled{Dp}(U, b, c, X, T, out):"]
    lines += [f"    u{i}_{j} = U[{i}, {j}]" for i in range(Dp) for j in range(i, Dp)]
    lines += [f"    b{j} = b[{j}]" for j in range(Dp)]
    lines += ["    half = like(0.5, out)", "    for t in range(T):"]
    lines += [f"        x{i} = X[{i}, t]" for i in range(Dp)]
    for j in range(Dp):
        terms = " + ".join(f"x{i} * u{i}_{j}" for i in range(j + 1))
        lines.append(f"        z{j} = ({terms}) - b{j}")
    squares = " + ".join(f"z{j} * z{j}" for j in range(Dp))
    lines.append(f"        out[t] = c - half * ({squares})")
    return "\n".join(lines) + "\n"


maha_unrolled8 = jit_source(
    _maha_unrolled_source(8), "maha_unrolled8", {"like": like, "__name__": __name__}
)
maha_unrolled16 = jit_source(
    _maha_unrolled_source(16), "maha_unrolled16", {"like": like, "__name__": __name__}
)
