"""The machine's own limits, measured in the benchmark run that quotes them.

A time means little without the ceiling it is held against. This module measures, in
the same process and run as the benchmarks, what the machine can do at most:

* ``dgemm_gflops`` / ``sgemm_gflops``: the best rate of a large square matrix product
  through NumPy's BLAS (float64 / float32) with the given number of threads;
* ``read_gbs``: the rate at which the cores together read a large float64 array (a
  parallel sum in fixed chunks, 8 bytes per element, the array far larger than the
  caches);

and counts the floating-point work of one mixture iteration (:func:`mixture_flops`),
so a report can quote a fraction of the peak beside each time (``bench/report.py``).

Everything here is measurement code for ``bench/``; nothing in ``fastvi`` uses it.
"""

import time

import numpy as np

GEMM_N = {"full": 2048, "smoke": 768}
READ_BYTES = {"full": 1 << 30, "smoke": 1 << 27}


def _best_seconds(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_gflops(dtype, threads, n=2048, repeats=5):
    """Best GFLOP/s of ``A @ B`` for ``n x n`` matrices of ``dtype`` on ``threads``
    BLAS threads (2 n^3 flops a product; the best of ``repeats``: a peak, not a mean).
    """
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n)).astype(dtype)
    B = rng.standard_normal((n, n)).astype(dtype)
    C = np.empty((n, n), dtype=dtype)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(A, B, out=C)  # wake the BLAS threads, fault the pages in
        seconds = _best_seconds(lambda: np.matmul(A, B, out=C), repeats)
    return 2.0 * n**3 / seconds / 1e9


_SUM = None


def _parallel_sum():
    """A numba kernel summing fixed 64 K-element chunks in parallel (compiled once)."""
    global _SUM
    if _SUM is None:
        import numba

        @numba.njit(parallel=True, fastmath=True, cache=False)
        def chunk_sums(x, chunk, out):
            for c in numba.prange(out.shape[0]):
                # unsigned bounds: with a signed index numba guards against negative
                # indices (wraparound) and the loop does not vectorize; that scalar
                # loop measured 10 GB/s on an AMD EPYC (znver4) that streams 35 GB/s
                start = np.uint64(c * chunk)
                stop = np.uint64(min((c + 1) * chunk, x.shape[0]))
                s = 0.0
                for i in range(start, stop):
                    s += x[i]
                out[c] = s

        _SUM = chunk_sums
    return _SUM


def read_gbs(threads, nbytes=1 << 30, repeats=5):
    """Best GB/s (1e9 bytes) at which ``threads`` numba threads read ``nbytes`` of
    float64 from memory (a parallel sum: every byte read once, nothing written)."""
    import numba

    kernel = _parallel_sum()
    x = np.ones(nbytes // 8)
    chunk = 1 << 16
    out = np.empty((x.size + chunk - 1) // chunk)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        kernel(x, chunk, out)  # compile and fault the pages in
        seconds = _best_seconds(lambda: kernel(x, chunk, out), repeats)
    finally:
        numba.set_num_threads(previous)
    return x.nbytes / seconds / 1e9


def simd():
    """``"AVX-512"``, ``"AVX2"`` or ``"neither"``: the widest vector unit numba
    targets on this CPU (the tables say which, since the peaks differ by 2x)."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    if features.get("avx512f"):
        return "AVX-512"
    if features.get("avx2"):
        return "AVX2"
    return "neither"


def measure(threads, profile="full"):
    """All limits for ``threads`` threads, as a JSON-ready dict."""
    import llvmlite.binding as llvm

    n = GEMM_N[profile]
    return {
        "threads": threads,
        "cpu_name": llvm.get_host_cpu_name(),
        "simd": simd(),
        "gemm_n": n,
        "dgemm_gflops": round(gemm_gflops(np.float64, threads, n), 2),
        "sgemm_gflops": round(gemm_gflops(np.float32, threads, n), 2),
        "read_bytes": READ_BYTES[profile],
        "read_gbs": round(read_gbs(threads, READ_BYTES[profile]), 2),
    }


def mixture_flops(covariance_type, n_samples, n_features, n_components):
    """Floating-point operations of one mixture iteration (E-step and M-step), the
    count the fraction of the GEMM peak is taken against.

    Per row and component, with D features:

    * 'full': the Mahalanobis term through a triangular factor, D(D+1)/2 multiply-adds
      (D(D+1) flops), plus 2D for the difference and its squared norm; the M-step's
      weighted scatter, symmetric, D(D+1) flops, plus 2D for the weighted sums of x.
      In all 2D(D+1) + 4D: 608 at D=16, so 19.5 GFLOP at N=1e6, K=32.
    * 'diag' (and 'spherical'): 3D for the precision-weighted squared difference,
      5D for the weighted sums of x and x^2: 8D.
    * 'tied': as 'full' with one shared factor; the scatter is one D x D sum over all
      rows, so D(D+1) + 2D per row and component and D(D+1) per row.

    Work that does not grow with N (the global update, digammas) is left out: at the
    benchmark's sizes it is below 0.1% of the total.
    """
    N, D, K = float(n_samples), float(n_features), float(n_components)
    if covariance_type == "full":
        per = 2 * D * (D + 1) + 4 * D
        return N * K * per
    if covariance_type in ("diag", "spherical"):
        return N * K * 8 * D
    if covariance_type == "tied":
        return N * K * (D * (D + 1) + 2 * D) + N * D * (D + 1)
    raise ValueError(f"unknown covariance_type {covariance_type!r}")
