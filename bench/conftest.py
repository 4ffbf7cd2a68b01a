"""pytest configuration of the benchmark suite (``python -m pytest bench/``).

* Collects ``bench_*.py`` modules, so benchmarks stay apart from the unit tests'
  ``test_*.py`` files (which the root configuration collects from ``tests/`` only).
* Registers the ``large`` marker: the N = 1e6 cases, which ``-m "not large"`` leaves
  out.
* Shows pytest-benchmark's warnings instead of failing on them.
* Adds library versions and thread settings to pytest-benchmark's ``machine_info``, so
  every saved or ``--benchmark-json`` file says what produced its numbers.
"""

import os
from importlib.metadata import PackageNotFoundError, version

import pytest

_LIBRARIES = (
    "fastvi",
    "numpy",
    "scipy",
    "scikit-learn",
    "numba",
    "threadpoolctl",
    "pytest-benchmark",
)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.addinivalue_line(
        "markers", "large: N=1e6 cases (minutes); leave out with -m 'not large'"
    )
    # The root configuration turns warnings into errors; pytest-benchmark's are notes
    # (e.g. "machine_info is different" when comparing across library versions).
    config.addinivalue_line(
        "filterwarnings", "default::pytest_benchmark.logger.PytestBenchmarkWarning"
    )


def pytest_collect_file(file_path, parent):
    # Paths named on the command line are collected by pytest itself whatever their
    # name; returning a second Module for them would run every benchmark twice.
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _version(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record versions, BLAS and numba thread settings and the bench profile."""
    import numba
    import numpy  # noqa: F401  load both BLAS libraries now, so that the record
    import scipy.linalg  # noqa: F401  is the same at the start and end of a run
    from threadpoolctl import threadpool_info

    machine_info["libraries"] = {name: _version(name) for name in _LIBRARIES}
    keys = ("internal_api", "version", "num_threads")
    machine_info["blas"] = sorted(
        (
            {key: pool.get(key) for key in keys}
            for pool in threadpool_info()
            if pool["user_api"] == "blas"
        ),
        key=lambda pool: (pool["internal_api"], pool["version"]),
    )
    machine_info["numba_num_threads"] = numba.config.NUMBA_NUM_THREADS
    machine_info["numba_threading_layer"] = numba.config.THREADING_LAYER
    machine_info["bench_profile"] = os.environ.get("FASTVI_BENCH_PROFILE", "full")


@pytest.fixture(scope="session")
def machine_limits():
    """The machine's DGEMM/SGEMM peaks and read bandwidth on all of fastvi's threads,
    measured once per run (``bench/limits.py``); benchmarks copy them into their
    ``extra_info`` so every entry carries the ceiling its time is held against."""
    import numba
    from limits import measure

    smoke = os.environ.get("FASTVI_BENCH_PROFILE", "full") == "smoke"
    return measure(numba.config.NUMBA_NUM_THREADS, "smoke" if smoke else "full")
