"""Benchmarks of ``fastvi.BayesianGaussianMixture`` against scikit-learn's.

Every group holds fastvi and its anchor, timed in the same run, so the speed ratio is
read off one file (``bench/report.py``, ``bench/check_regression.py``):

* ``"<covariance_type> N=<N>"``: fastvi (all threads) vs scikit-learn, for 'full' and
  'diag' covariances;
* ``"threads full N=<N>"``: fastvi with ``n_jobs=2`` vs fastvi with ``n_jobs=1``;
* ``"float32 <covariance_type> N=<N>"``: fastvi with ``compute_dtype='float32'`` vs
  fastvi's default float64 path, both on the float32 copy of the data. The float32
  entry carries ``dtype='float32'`` in ``extra_info``, so ``bench/report.py`` holds it
  against the SGEMM peak measured in the same run (the float64 one against DGEMM).

Each fit is ``n_components=32`` on blobs of 32 well-separated centres in 16 dimensions,
``init_params='random_from_data'`` (cheap, identical in both libraries for the same
``random_state``), ``tol=0`` and a fixed ``max_iter``, so both do the same work. The
entry's role in its group (``"fastvi"`` or ``"anchor"``), the final lower bound,
``n_iter_``, threads and peak memory go into ``benchmark.extra_info``.

Environment:

``FASTVI_BENCH_PROFILE``
    ``full`` (default; N = 1e5 and 1e6, 5 iterations) or ``smoke`` (N = 2e4,
    2 iterations, 1 round: a CI check that the suite runs).
``FASTVI_BENCH_ROUNDS``
    Timed rounds per case. Default: 1 in the smoke profile; otherwise 3, except
    scikit-learn at N = 1e6 (about a minute per 'full' fit): 1.
``FASTVI_BENCH_ANCHOR_BLAS_THREADS``
    BLAS threads for scikit-learn (default 1, its fastest setting on the 2-core
    machine; fastvi runs BLAS on one thread as well).

Peak memory is measured in a fresh subprocess, untimed (see :func:`measure_memory`).
Run this file as a script only through :func:`measure_memory`.
"""

import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
import warnings
from contextlib import nullcontext
from functools import lru_cache

import numpy as np
import pytest
from limits import mixture_flops

PROFILES = {
    "full": {"sizes": (100_000, 1_000_000), "max_iter": 5},
    "smoke": {"sizes": (20_000,), "max_iter": 2},
}
PROFILE_NAME = os.environ.get("FASTVI_BENCH_PROFILE", "full")
if PROFILE_NAME not in PROFILES:
    raise ValueError(
        f"FASTVI_BENCH_PROFILE={PROFILE_NAME!r}; expected one of {sorted(PROFILES)}"
    )
PROFILE = PROFILES[PROFILE_NAME]

LARGE = 1_000_000  # cases at least this big are marked ``large``
N_FEATURES = 16
N_CENTERS = 32
N_COMPONENTS = 32
SEED = 0
WARMUP_ROWS = 2_000
# The peak is reached within every iteration (checked at N=1e5: max_iter=1 and 5 give
# the same peak to 0.01 MB), so the memory run stops after one: a minute less at N=1e6.
MEMORY_MAX_ITER = 1

# scikit-learn's 'full' fit (N=1e5, 2 iterations) took 2.6 s with one OpenBLAS thread
# and 6.3 s with two on the shared 2-core machine at a quiet moment, 67-219 s with two
# while another process was busy (OpenBLAS workers spin for a core).
ANCHOR_BLAS_THREADS = int(os.environ.get("FASTVI_BENCH_ANCHOR_BLAS_THREADS", "1"))

# tol=0 never converges; the warning is expected, not an error.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def short(n):
    """``100000`` -> ``"1e5"``, ``20000`` -> ``"2e4"`` (for ids and group names)."""
    mantissa, exponent = f"{n:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def make_blobs(n_samples, seed=SEED):
    """Well-separated blobs: centres uniform in [-10, 10]^16, unit-variance noise.

    With the default seed the centres are 17 to 46 apart (17 noise standard
    deviations at least), so the 32 clusters do not overlap.
    """
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10.0, 10.0, size=(N_CENTERS, N_FEATURES))
    labels = rng.integers(N_CENTERS, size=n_samples)
    X = rng.standard_normal((n_samples, N_FEATURES))
    X += centers[labels]
    return X


def make_estimator(
    library, covariance_type, max_iter, n_jobs=None, compute_dtype="float64"
):
    """An unfitted mixture of ``library`` (``"fastvi"`` or ``"sklearn"``)."""
    params = dict(
        n_components=N_COMPONENTS,
        covariance_type=covariance_type,
        init_params="random_from_data",
        random_state=0,
        tol=0.0,
        max_iter=max_iter,
    )
    if library == "fastvi":
        from fastvi import BayesianGaussianMixture

        return BayesianGaussianMixture(
            n_jobs=n_jobs, compute_dtype=compute_dtype, **params
        )
    from sklearn.mixture import BayesianGaussianMixture

    return BayesianGaussianMixture(**params)


def library_info(library, n_jobs):
    """Name, version and the number of threads the fit computes with."""
    if library == "fastvi":
        import numba

        import fastvi

        available = numba.config.NUMBA_NUM_THREADS
        threads = available if n_jobs is None else min(n_jobs, available)
        return {"library": "fastvi", "version": fastvi.__version__, "threads": threads}
    import sklearn
    from threadpoolctl import threadpool_info

    pools = threadpool_info()
    blas = [pool["num_threads"] for pool in pools if pool["user_api"] == "blas"]
    return {
        "library": "scikit-learn",
        "version": sklearn.__version__,
        "threads": max(blas, default=1),
    }


def blas_limit(library):
    """Context that gives the anchor its BLAS threads (fastvi sets its own)."""
    if library == "fastvi":
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=ANCHOR_BLAS_THREADS, user_api="blas")


def rounds_for(n_samples, library):
    """Timed rounds: ``FASTVI_BENCH_ROUNDS`` if set, else the profile's default."""
    if os.environ.get("FASTVI_BENCH_ROUNDS"):
        return int(os.environ["FASTVI_BENCH_ROUNDS"])
    if PROFILE_NAME == "smoke":
        return 1
    return 1 if library == "sklearn" and n_samples >= LARGE else 3


def measure_memory(
    library, covariance_type, n_samples, n_jobs=None, compute_dtype="float64", x32=False
):
    """Peak memory of one fit beyond X, in MB (1e6 bytes), from a fresh subprocess.

    Returns ``peak_mem_mb``, the tracemalloc peak (NumPy buffers, Python objects and
    the arrays numba's runtime allocates inside kernels, which tracemalloc sees too:
    numba's own ``test_nrt`` checks it; an 80 MB ``np.ones`` in ``@njit`` showed up as
    80 MB here), and ``peak_rss_mb``, the growth of the peak resident set
    (Linux ``VmHWM``, reset just before the fit), which also sees BLAS buffers, thread
    stacks and anything else allocated outside Python's allocators. A fresh process
    keeps memory freed by earlier benchmarks from hiding the fit's growth.
    """
    spec = dict(
        library=library,
        covariance_type=covariance_type,
        n_samples=n_samples,
        n_jobs=n_jobs,
        compute_dtype=compute_dtype,
        x32=x32,
    )
    proc = subprocess.run(
        [sys.executable, __file__, json.dumps(spec)], capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"memory subprocess failed:\n{proc.stderr}")
    return json.loads(proc.stdout.splitlines()[-1])


def _read_status_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _memory_child(spec):
    """Body of the :func:`measure_memory` subprocess: prints a JSON dict."""
    from sklearn.exceptions import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)
    library, cov, n_jobs = spec["library"], spec["covariance_type"], spec["n_jobs"]
    compute_dtype = spec.get("compute_dtype", "float64")
    X = make_blobs(spec["n_samples"])
    if spec.get("x32"):
        X = X.astype(np.float32)
    # compile (or load) kernels and start threads first: that memory is not the fit's
    with blas_limit(library):
        make_estimator(library, cov, 1, n_jobs, compute_dtype).fit(X[:WARMUP_ROWS])
        estimator = make_estimator(library, cov, MEMORY_MAX_ITER, n_jobs, compute_dtype)
        gc.collect()
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        rss_before = _read_status_kb("VmRSS")
        tracemalloc.start()
        estimator.fit(X)
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rss_growth = _read_status_kb("VmHWM") - rss_before
    print(
        json.dumps(
            {
                "peak_mem_mb": round(traced_peak / 1e6, 2),
                "peak_rss_mb": round(rss_growth * 1024 / 1e6, 2),
                "mem_max_iter": MEMORY_MAX_ITER,
            }
        )
    )


@pytest.fixture(scope="session")
def blobs():
    """``blobs(n)``: the data set of ``n`` rows, generated once per session."""
    return lru_cache(maxsize=2)(make_blobs)


@pytest.fixture(scope="session")
def blobs32(blobs):
    """``blobs32(n)``: the float32 copy of ``blobs(n)``."""
    return lru_cache(maxsize=2)(lambda n: blobs(n).astype(np.float32))


@pytest.fixture(scope="session")
def warmed_up():
    """Fit both libraries once on a small slice: compiles (or loads) fastvi's kernels
    and starts its threads, so no timed round pays for that."""
    X = make_blobs(WARMUP_ROWS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for library in ("fastvi", "sklearn"):
            for cov in ("full", "diag"):
                with blas_limit(library):
                    make_estimator(library, cov, max_iter=1).fit(X)
        for cov in ("full", "diag"):  # the float32 kernels (float32 group)
            make_estimator("fastvi", cov, 1, compute_dtype="float32").fit(
                X.astype(np.float32)
            )


def seconds_per_iteration(benchmark, fit_once, rounds, max_iter):
    """``(fit(max_iter) - fit(1)) / (max_iter - 1)`` in seconds, medians of
    ``rounds`` fits each: the cost of one iteration without initialization and
    set-up, the figure the fraction of the machine's peak is taken on. None when the
    benchmark ran untimed (``--benchmark-disable``)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None or max_iter < 2:
        return None
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fit_once()
        times.append(time.perf_counter() - start)
    return max(stats.stats.median - float(np.median(times)), 0.0) / (max_iter - 1)


def run_case(
    benchmark,
    X,
    library,
    covariance_type,
    n_jobs,
    role,
    limits,
    compute_dtype="float64",
):
    """Time ``fit`` with ``benchmark.pedantic`` and record quality, memory, the
    seconds per iteration and the work of one iteration beside the machine limits.
    ``dtype`` in ``extra_info`` is the precision of the computation (the GEMM peak
    the entry is held against)."""
    n_samples = X.shape[0]
    max_iter = PROFILE["max_iter"]
    rounds = rounds_for(n_samples, library)

    def fit(iterations=max_iter):
        return make_estimator(
            library, covariance_type, iterations, n_jobs, compute_dtype
        ).fit(X)

    with blas_limit(library):
        model = benchmark.pedantic(fit, rounds=rounds, iterations=1, warmup_rounds=0)
        per_iter = seconds_per_iteration(benchmark, lambda: fit(1), rounds, max_iter)
        info = library_info(library, n_jobs)
    benchmark.extra_info.update(
        seconds_per_iter=per_iter,
        gflop_per_iter=mixture_flops(
            covariance_type, n_samples, X.shape[1], N_COMPONENTS
        )
        / 1e9,
        limits=limits,
        role=role,
        covariance_type=covariance_type,
        n_samples=n_samples,
        n_features=X.shape[1],
        n_components=N_COMPONENTS,
        max_iter=max_iter,
        n_jobs=n_jobs,
        lower_bound=float(model.lower_bound_),
        n_iter=int(model.n_iter_),
        dtype=compute_dtype,
        x_dtype=str(X.dtype),
        **info,
        **measure_memory(
            library,
            covariance_type,
            n_samples,
            n_jobs,
            compute_dtype,
            x32=X.dtype == np.float32,
        ),
    )


SIZES = [
    pytest.param(n, id=short(n), marks=[pytest.mark.large] if n >= LARGE else [])
    for n in PROFILE["sizes"]
]


@pytest.mark.parametrize("library", ["fastvi", "sklearn"])
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("n_samples", SIZES)
def test_fit(
    benchmark, warmed_up, blobs, machine_limits, n_samples, covariance_type, library
):
    """fastvi (all threads) against scikit-learn."""
    benchmark.group = f"{covariance_type} N={short(n_samples)}"
    role = "fastvi" if library == "fastvi" else "anchor"
    X = blobs(n_samples)
    run_case(benchmark, X, library, covariance_type, None, role, machine_limits)


@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("n_samples", SIZES)
def test_threads(benchmark, warmed_up, blobs, machine_limits, n_samples, n_jobs):
    """fastvi 'full' with two threads against one thread."""
    benchmark.group = f"threads full N={short(n_samples)}"
    role = "anchor" if n_jobs == 1 else "fastvi"
    X = blobs(n_samples)
    run_case(benchmark, X, "fastvi", "full", n_jobs, role, machine_limits)


@pytest.mark.parametrize("compute_dtype", ["float32", "float64"])
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("n_samples", SIZES)
def test_float32(
    benchmark,
    warmed_up,
    blobs32,
    machine_limits,
    n_samples,
    covariance_type,
    compute_dtype,
):
    """fastvi's float32 computation against its float64 path, on float32 data."""
    benchmark.group = f"float32 {covariance_type} N={short(n_samples)}"
    role = "fastvi" if compute_dtype == "float32" else "anchor"
    X = blobs32(n_samples)
    run_case(
        benchmark,
        X,
        "fastvi",
        covariance_type,
        None,
        role,
        machine_limits,
        compute_dtype,
    )


if __name__ == "__main__":
    _memory_child(json.loads(sys.argv[1]))
