"""CPU time of an SGVI full-batch step, against the arithmetic bound and NumPyro.

For a shared machine, where wall-clock times say little: everything here is CPU time
(``time.process_time``, all threads of the process), the minimum of ``--rounds``
rounds, on one thread (numba's serial GLM kernel, BLAS limited to one thread; run
NumPyro with ``--xla-single`` to give XLA one thread too). Logistic regression,
N = 1e5, D = 50, S = 8, the data of ``bench_sgvi.py``.

* ``kernel``: ``glm_pass_tiled_serial`` over the model's tiles (the step's data pass);
* ``step``: a whole ``SGVI`` step (kernel, priors, Adam, draws; ``NUMBA_NUM_THREADS=1``
  is set here before numba loads, or the parallel kernel's waiting threads are counted);
* ``bound``: 4 N D S flops at the one-thread DGEMM (float64) or SGEMM (float32) peak
  measured the same way (best of 3 products of 1024 x 1024 matrices);
* ``numpyro``: NumPyro's jitted SVI step (``bench_sgvi.numpyro_runner``), with
  ``--numpyro``.

    python bench/sgvi_kernel_cpu.py [--rounds 15] [--numpyro] [--xla-single]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def best_cpu(fn, reps, rounds):
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        fn(reps)
        best = min(best, (time.process_time() - start) / reps)
    return best


def gemm_peak(np, dtype, rng):
    """Best 1-thread GFLOP/s (CPU time) of a 1024 x 1024 product of ``dtype``."""
    A = rng.standard_normal((1024, 1024)).astype(dtype)
    C = A @ A
    seconds = best_cpu(lambda r: [np.matmul(A, A, out=C) for _ in range(r)], 3, 3)
    return 2 * 1024**3 / seconds


def fastvi_cell(np, bs, X, y, S, dtype, rounds, rng):
    """(kernel seconds, step seconds) of the float ``dtype`` full-batch step."""
    from fastvi.kernels import sgvi as k
    from fastvi.sgvi import GLM

    N, D = X.shape
    model = GLM(X.astype(dtype), y)
    W = (0.1 * rng.standard_normal((S, D))).astype(dtype)
    b = np.zeros(S, dtype)
    tau = np.ones(S)
    fixed = (model._Xtiles, model.y, N, W, b, tau, 0, model._chunk_tiles)

    def kernel(reps):
        for _ in range(reps):
            k.glm_pass_tiled_serial(*fixed)

    kernel(1)
    seconds = best_cpu(kernel, 5, rounds)
    run = bs.fastvi_runner(X, y, S, None, dtype, psis_draws=0)
    run(10)
    return seconds, best_cpu(run, 10, max(3, rounds // 3))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--numpyro", action="store_true")
    parser.add_argument("--xla-single", action="store_true")
    args = parser.parse_args()
    if args.xla_single:
        os.environ["XLA_FLAGS"] = (
            "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )
    import bench_sgvi as bs
    import numpy as np
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    N, S = 100_000, 8
    X, y = bs.logistic_data(N)
    flops = bs.step_flops(N, S)
    rng = np.random.default_rng(1)
    for dtype in (np.float64, np.float32):
        peak = gemm_peak(np, dtype, rng)
        seconds, step = fastvi_cell(np, bs, X, y, S, dtype, args.rounds, rng)
        bound = flops / peak
        print(
            f"{np.dtype(dtype).name}: kernel {1e3 * seconds:.2f} ms, step "
            f"{1e3 * step:.2f} ms, bound {1e3 * bound:.2f} ms (1-thread GEMM "
            f"{peak / 1e9:.1f} GFLOP/s): {bound / seconds:.0%} of the bound (kernel), "
            f"{bound / step:.0%} (step)",
            flush=True,
        )
    if args.numpyro:
        run = bs.numpyro_runner(X, y, S, None)
        run(20)
        step = best_cpu(run, 20, max(3, args.rounds // 3))
        print(
            f"numpyro (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}): step "
            f"{1e3 * step:.2f} ms CPU"
        )


if __name__ == "__main__":
    main()
