"""Out-of-core vs in-memory ``BayesianGaussianMixture`` fits: time and peak memory.

Group ``"out-of-core diag N=<N>"`` holds the in-memory fit of a float64 ``.npy`` file
(``np.load`` then ``fit``; role ``"anchor"``) and the out-of-core fit of the same file
(``fit(NpyRows(path))``; role ``"fastvi"``); both give the same model (bitwise; the
final bounds are recorded in ``extra_info`` to show it). Each fit is 'diag',
``n_components=16``, 16 features, ``init_params='random_from_data'``, ``tol=0`` and a
fixed ``max_iter``. The peak resident memory of each way is measured once, untimed,
in a fresh subprocess (``VmHWM`` of ``/proc/self/status``; Linux), recorded as
``peak_rss_mb``. The out-of-core entry records ``ratio_to_in_memory`` (its median
over the in-memory median of the same run; the goal is at most 1.15) and
``prefetch`` (the blocks ``NpyRows`` reads ahead on its reader thread). Every entry
records ``cpu_s``, the median CPU time of the process (all its threads) over the
timed rounds: on a machine shared with other jobs, where the times are not the fit's
own, the CPU time and its ratio ``cpu_ratio_to_in_memory`` still are (nearly).

Two page-cache states, each its own group: ``warm`` (the file was read just before,
so the operating system serves it from memory) and ``cold`` (group name ending in
``cold``: before every timed round the file's pages are dropped from the page cache
with ``posix_fadvise(POSIX_FADV_DONTNEED)``, untimed, so the first read of the fit
comes from the disk and later passes usually from the page cache; Linux only, and a
virtual machine's host may still cache the disk). A file larger than the page cache
is read from the disk on every pass: neither group measures that.

Environment: ``FASTVI_BENCH_PROFILE`` = ``full`` (default; N = 1e6, 1e7 and 2e7,
the last two marked ``large``; files of 128 MB, 1.28 GB and 2.56 GB) or ``smoke``
(N = 1e5, 2 iterations).
"""

import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

PROFILES = {
    "full": {"sizes": (1_000_000, 10_000_000, 20_000_000), "max_iter": 5, "rounds": 3},
    "smoke": {"sizes": (100_000,), "max_iter": 2, "rounds": 3},
}
PROFILE_NAME = os.environ.get("FASTVI_BENCH_PROFILE", "full")
if PROFILE_NAME not in PROFILES:
    raise ValueError(
        f"FASTVI_BENCH_PROFILE={PROFILE_NAME!r}; expected one of {sorted(PROFILES)}"
    )
PROFILE = PROFILES[PROFILE_NAME]
LARGE = 5_000_000
N_FEATURES = 16
N_COMPONENTS = 16


def _params():
    return dict(
        n_components=N_COMPONENTS,
        covariance_type="diag",
        init_params="random_from_data",
        random_state=0,
        tol=0.0,
        max_iter=PROFILE["max_iter"],
    )


def _write_file(path, n):
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float64, shape=(n, N_FEATURES)
    )
    rng = np.random.default_rng(0)
    centers = rng.normal(0.0, 6.0, (32, N_FEATURES))
    step = 500_000
    for start in range(0, n, step):
        m = min(step, n - start)
        out[start : start + m] = centers[rng.integers(0, 32, m)] + rng.standard_normal(
            (m, N_FEATURES)
        )
    out.flush()
    del out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    made = {}
    for n in PROFILE["sizes"]:
        made[n] = folder / f"x{n}.npy"
        _write_file(made[n], n)
    return made


def _fit(path, how):
    from sklearn.exceptions import ConvergenceWarning

    from fastvi.batch.io import NpyRows
    from fastvi.mixture import BayesianGaussianMixture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = BayesianGaussianMixture(**_params())
        return est.fit(NpyRows(path) if how == "out-of-core" else np.load(path))


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent
_PEAK = """
import json, sys
sys.path.insert(0, {here!r})
import bench_batch
bench_batch._fit({path!r}, {how!r})
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(json.dumps(int(peak[0].split()[1]) / 1024))
"""


def measure_peak_rss_mb(path, how):
    """Peak RSS (MB) of a fresh process that fits ``path`` one way."""
    code = _PEAK.format(here=os.path.dirname(__file__), path=str(path), how=how)
    env = dict(os.environ, FASTVI_BENCH_PROFILE=PROFILE_NAME)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=3600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


CACHES = ("warm", "cold") if hasattr(os, "posix_fadvise") else ("warm",)
_IN_MEMORY = {}  # (n, cache) -> (median seconds, median CPU seconds), in-memory fit


def _timed_fit(path, how, cpu):
    """``_fit``, its process CPU time appended to ``cpu``."""
    start = time.process_time()
    try:
        return _fit(path, how)
    finally:
        cpu.append(time.process_time() - start)


def _drop_from_page_cache(path):
    """Ask the kernel to forget the file's cached pages (clean pages only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _cases():
    for n in PROFILE["sizes"]:
        marks = [pytest.mark.large] if n >= LARGE else []
        for cache in CACHES:
            for how in ("in-memory", "out-of-core"):
                yield pytest.param(n, how, cache, id=f"{how}-{cache}-N{n}", marks=marks)


@pytest.mark.parametrize(("n", "how", "cache"), list(_cases()))
def test_out_of_core_vs_in_memory(benchmark, files, n, how, cache):
    from fastvi.batch.io import NpyRows

    path = files[n]
    _fit(path, how)  # warm-up: compile or load the kernels, fill the page cache
    benchmark.group = f"out-of-core diag N={n}" + (" cold" if cache == "cold" else "")
    setup = (lambda: _drop_from_page_cache(path)) if cache == "cold" else None
    cpu = []
    est = benchmark.pedantic(
        _timed_fit,
        args=(path, how, cpu),
        setup=setup,
        rounds=PROFILE["rounds"],
        iterations=1,
    )
    # untimed under --benchmark-disable (the CI smoke run): no median, no ratio
    stats = getattr(benchmark, "stats", None)
    median = None if stats is None else stats.stats.median
    info = dict(
        role="fastvi" if how == "out-of-core" else "anchor",
        lower_bound=float(est.lower_bound_),
        n_iter=int(est.n_iter_),
        file_mb=os.path.getsize(path) / 2**20,
        peak_rss_mb=measure_peak_rss_mb(path, how),
        page_cache=cache,
        cpu_s=float(np.median(cpu)),
    )
    if how == "in-memory":
        _IN_MEMORY[n, cache] = (median, info["cpu_s"])
    else:
        info["prefetch"] = NpyRows(path).prefetch
        wall, cpu_s = _IN_MEMORY.get((n, cache), (None, None))
        if median is not None and wall is not None:
            info["ratio_to_in_memory"] = median / wall
        if cpu_s:
            info["cpu_ratio_to_in_memory"] = info["cpu_s"] / cpu_s
    benchmark.extra_info.update(info)
