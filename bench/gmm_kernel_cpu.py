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
    args = parser.parse_args()
    import numba
    from threadpoolctl import threadpool_limits

    from fastvi.kernels import gmm

    numba.set_num_threads(1)  # the kernel runs on this thread (map_chunks is not used)
    threadpool_limits(1, "blas")
    dt = np.dtype(args.dtype)
    rows, D, K = 4096, 16, 32
    tile = 256 * 8 // dt.itemsize  # fastvi.mixture._tile_rows
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
        call = (
            X, means, prec, const, means, np.empty((0, K), dt), np.empty(0, np.int64),
            rows, tile, np.empty((0, K), dt), np.empty(0, dt), np.empty(0, np.int64),
            *out, np.empty(1), np.empty(1),
        )  # fmt: skip
        kernel = gmm.mixture_chunks(
            {"full": gmm.KIND_FULL, "diag": gmm.KIND_DIAG}[kind]
        )
        flops = mixture_flops(kind, rows, D, K)
        cases.append((kind, lambda k=kernel, a=call: k(0, 1, *a), flops))
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
                f"{stat.__name__:6s} {name:5s} {t * 1e3:7.3f} ms/call "
                f"{t * 1e6 / rows if name != 'gemm' else float('nan'):6.3f} s per 1e6 rows "
                f"{flops / t / 1e9:6.1f} GFLOP/s  {flops / t / peak:6.1%} of the GEMM"
            )


if __name__ == "__main__":
    main()
