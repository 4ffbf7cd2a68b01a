"""One thread's CPU time of the mixture kernel against one thread's GEMM, interleaved.

On a shared machine wall-clock times say little. This script calls
``fastvi.kernels.gmm.mixture_chunks`` on one chunk (4096 rows, D=16, K=32) on the
calling thread, alternating with a 768 x 768 NumPy matrix product on one BLAS thread,
and reports the minimum and the median of each one's thread CPU time
(``time.thread_time``) over many short calls: short calls are rarely interrupted,
and alternating them exposes both to the same load. The fraction is the kernel's rate
(``bench/limits.py``'s ``mixture_flops``) over the GEMM's.

    python bench/gmm_kernel_cpu.py                    # float64, 'full' and 'diag'
    python bench/gmm_kernel_cpu.py --dtype float32 --repeats 300
    python bench/gmm_kernel_cpu.py --split            # + E-step alone, M-step alone
    python bench/gmm_kernel_cpu.py --parts            # 'full': each microkernel alone

``--parts`` times the pieces of a 'full' pass one at a time on a tile already in
cache (the kernel module's private helpers, in loops compiled here), in ns per point
and component: where the pass's time goes.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from limits import mixture_flops  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--repeats", type=int, default=150)
    parser.add_argument("--kinds", default="full,diag")
    parser.add_argument("--tile", type=int, help="rows per tile (default: the fit's)")
    parser.add_argument(
        "--split",
        action="store_true",
        help="also time the E-step alone (no statistics) and the M-step alone "
        "(responsibilities given)",
    )
    parser.add_argument(
        "--parts", action="store_true", help="time each piece of a 'full' pass alone"
    )
    args = parser.parse_args()
    if args.parts:
        return parts(np.dtype(args.dtype), args.repeats)
    import numba
    from threadpoolctl import threadpool_limits

    from fastvi.kernels import gmm

    numba.set_num_threads(1)  # the kernel runs on this thread (map_chunks is not used)
    threadpool_limits(1, "blas")
    dt = np.dtype(args.dtype)
    rows, D, K = 4096, 16, 32
    tile = args.tile or 256 * 8 // dt.itemsize  # fastvi.mixture._tile_rows
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 5, (K, D))
    X = (centers[rng.integers(0, K, rows)] + rng.normal(0, 1, (rows, D))).astype(dt)
    means = (centers + rng.normal(0, 0.3, (K, D))).astype(dt)
    const = rng.normal(0, 1, K).astype(dt)
    n = 768
    A, B = (rng.normal(size=(n, n)).astype(dt) for _ in range(2))
    C = np.empty((n, n), dt)
    cases = [("gemm", lambda: np.matmul(A, B, out=C), 2.0 * n**3)]
    for kind in args.kinds.split(","):
        if kind == "full":
            U = np.eye(D) + np.triu(rng.normal(0, 0.06, (K, D, D)))
            prec, Dq = U.astype(dt), D
        else:
            prec, Dq = rng.uniform(0.5, 2, (K, 1, D)).astype(dt), 1
        out = (np.empty((1, K)), np.empty((1, K, D)), np.empty((1, K, Dq, D)))
        resp = rng.dirichlet(np.ones(K), rows).astype(dt)
        variants = {"": (means, np.empty((0, K), dt))}
        if args.split:  # E: no shift, so no statistics; M: given responsibilities
            variants.update(E=(np.empty((0, D), dt), variants[""][1]), M=(means, resp))
        kernel = gmm.mixture_chunks(
            {"full": gmm.KIND_FULL, "diag": gmm.KIND_DIAG}[kind], D
        )
        for part, (shift, resp_in) in variants.items():
            call = (
                X, means, prec, const, shift, resp_in, np.empty(0, np.int64), rows,
                tile, np.empty((0, K), dt), np.empty(0, dt), np.empty(0, np.int64),
                *out, np.empty(1), np.empty(1),
            )  # fmt: skip
            flops = mixture_flops(kind, rows, D, K)  # of a whole pass, for E and M too
            fn = lambda k=kernel, a=call: k(0, 1, *a)  # noqa: E731
            cases.append((kind + part, fn, flops))
    for _, fn, _ in cases:
        fn()  # compile, warm up
    times = [[] for _ in cases]
    for _ in range(args.repeats):
        for (_, fn, _), ts in zip(cases, times):
            start = time.thread_time()
            fn()
            ts.append(time.thread_time() - start)
    print(f"{dt}, one thread, {args.repeats} interleaved calls")
    for stat in (np.min, np.median):
        peak = cases[0][2] / stat(times[0])
        for (name, _, flops), ts in zip(cases, times):
            t = stat(ts)
            print(
                f"{stat.__name__:6s} {name:6s} {t * 1e3:7.3f} ms/call "
                f"{t * 1e6 / rows if name != 'gemm' else float('nan'):6.3f} s per 1e6 rows "
                f"{flops / t / 1e9:6.1f} GFLOP/s  {flops / t / peak:6.1%} of the GEMM"
            )


def parts(dt, repeats, D=16, K=32):
    """ns per point and component of each piece of a 'full' pass (see the doc)."""
    from fastvi.kernels import gmm, tiles
    from fastvi.kernels._config import jit, wide_vectors

    sweep = {8: 8, 16: 16}.get(D, 0)  # as mixture_chunks(KIND_FULL, D) picks it

    @jit
    def loop(piece, n, Xt, T, Up, Bp, const, LP, Z, rows, R, shift, Y, nk, sx, sq, X):
        # as in the kernel, which inlines the pieces: 512-bit vectors, and a stack
        # realigned for their spills (without it the times depend on the stack depth)
        wide_vectors()
        for _ in range(n):
            if piece == 0:
                tiles.load_tile(X, 0, T, False, Xt)
            elif piece == 1:
                if sweep == 16:
                    gmm._logprob_full16(Xt, T, Up, Bp, const, LP)
                elif sweep == 8:
                    gmm._logprob_full8(Xt, T, Up, Bp, const, LP)
                else:
                    gmm._logprob_full(Xt, T, Up, Bp, const, LP, Z, rows[0])
            elif piece == 2:
                gmm._normalize(T, K, LP, Z, rows[1], rows[2])
            elif piece == 3:
                for k in range(K):
                    tiles.gram_upper(R[k], Y, T, sq, k)
            else:
                gmm._accumulate(Xt, T, shift, R, gmm.KIND_FULL, Y, nk, sx, sq)

    rng = np.random.default_rng(0)
    T = 256 * 8 // dt.itemsize
    Xt, Y, LP, R, Z = (tiles.scratch(m, T, np.zeros(1, dt)) for m in (D, D, K, K, K))
    rows = tiles.scratch(3, T, Xt)
    Xt[:], Y[:], R[:] = (rng.normal(size=a.shape) for a in (Xt, Y, R))
    U = np.triu(rng.normal(size=(K, D, D))).astype(dt)
    args = (Xt, T, U, rng.normal(size=(K, D)).astype(dt), np.zeros(K, dt), LP, Z)
    args += (rows, R, rng.normal(size=(K, D)).astype(dt), Y, np.zeros(K))
    args += (np.zeros((K, D)), np.zeros((K, D, D)), rng.normal(size=(T, D)).astype(dt))
    names = ["copy rows", "maha + LP", "normalize", "gram", "x-m + gram"]
    n = 16
    for piece in range(len(names)):
        loop(piece, 1, *args)  # compile, warm up
    times = [[] for _ in names]
    for _ in range(repeats):
        for piece, ts in enumerate(times):
            start = time.thread_time()
            loop(piece, n, *args)
            ts.append(time.thread_time() - start)
    print(f"{dt}, one thread, T={T}, ns per point and component")
    for name, ts in zip(names, times):
        per = 1e9 / (n * T * K)
        print(f"{name:11s} min {min(ts) * per:6.3f}  median {np.median(ts) * per:6.3f}")


if __name__ == "__main__":
    main()
