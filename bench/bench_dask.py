"""``BayesianGaussianMixture`` on a Dask array vs in memory: time per round, overhead.

Group ``"dask <covariance_type> N=<N>"`` holds three fits of the same data and
parameters (``n_components=32``, 16 features, ``init_params='random_from_data'``,
``tol=0``, a fixed ``max_iter``):

* ``in-memory`` (role ``"anchor"``): a NumPy array, all threads;
* ``dask-threads`` (role ``"fastvi"``): a dask array on dask's local scheduler;
* ``dask-cluster`` (role ``"fastvi_cluster"``): the dask array persisted on a
  ``LocalCluster`` of 2 worker processes with 1 thread each, started by this module.

Each entry's ``extra_info`` holds ``seconds_per_round`` (fit time over the number of
passes: ``max_iter`` rounds plus the passes of the initialization and data moments),
the number of chunks, the bytes of statistics one chunk returns per round, and the
final lower bound (equal across the three to rounding). The ratio dask / in-memory is
the overhead of the scheduler and of moving statistics; with 2 cores the cluster
cannot be faster than in-memory (the same cores run both), so this measures cost only.
(The in-memory ``fit`` also makes one last labelling pass, as ``fit_predict`` does:
its per-round figure is slightly pessimistic.)

Environment: ``FASTVI_BENCH_PROFILE`` = ``full`` (default; N = 1e6, chunks of 1.25e5
rows) or ``smoke`` (N = 2e4, 2 iterations).
"""

import logging
import os
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

PROFILES = {
    "full": {"n": 1_000_000, "chunk": 125_000, "max_iter": 5},
    "smoke": {"n": 20_000, "chunk": 5_000, "max_iter": 2},
}
PROFILE_NAME = os.environ.get("FASTVI_BENCH_PROFILE", "full")
if PROFILE_NAME not in PROFILES:
    raise ValueError(
        f"FASTVI_BENCH_PROFILE={PROFILE_NAME!r}; expected one of {sorted(PROFILES)}"
    )
PROFILE = PROFILES[PROFILE_NAME]
N_FEATURES = 16
N_COMPONENTS = 32
# passes over the data besides the CAVI rounds: column sums (mean prior), centered
# Gram (covariance prior) and the initial statistics
EXTRA_PASSES = 3

pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    # persisting the in-memory data on the cluster ships it once, untimed
    pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning"),
]


def _blobs(n):
    rng = np.random.default_rng(0)
    centers = rng.uniform(-10.0, 10.0, size=(32, N_FEATURES))
    return centers[rng.integers(32, size=n)] + rng.standard_normal((n, N_FEATURES))


@pytest.fixture(scope="module")
def data():
    return _blobs(PROFILE["n"])


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            # free ports only: distributed starts the scheduler's HTTP server on 8787
            # even without a dashboard, unless it is given another address
            scheduler_port=0,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            worker_dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


def _fit(X, covariance_type):
    from fastvi import BayesianGaussianMixture

    est = BayesianGaussianMixture(
        n_components=N_COMPONENTS,
        covariance_type=covariance_type,
        init_params="random_from_data",
        random_state=0,
        tol=0.0,
        max_iter=PROFILE["max_iter"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X)


def _chunk_bytes(covariance_type):
    K, D = N_COMPONENTS, N_FEATURES
    second = K * D * D if covariance_type in ("full", "tied") else K * D
    return 8 * (K + K * D + second + 2)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("how", ["in-memory", "dask-threads", "dask-cluster"])
def test_dask_overhead(benchmark, data, client, covariance_type, how):
    import dask

    X = data
    n_chunks = 1
    context = dask.config.set(scheduler="threads")
    if how != "in-memory":
        X = da.from_array(data, chunks=(PROFILE["chunk"], N_FEATURES))
        n_chunks = X.numblocks[0]
    if how == "dask-cluster":
        context = dask.config.set(scheduler=client.get)
        X = client.persist(X)
        with client.as_current():
            distributed.wait(X)
    with context:
        _fit(X, covariance_type)  # warm-up: compile or load the kernels everywhere
        benchmark.group = f"dask {covariance_type} N={PROFILE['n']}"
        est = benchmark.pedantic(
            _fit, args=(X, covariance_type), rounds=3, iterations=1
        )
    role = {"in-memory": "anchor", "dask-threads": "fastvi"}.get(how, "fastvi_cluster")
    passes = PROFILE["max_iter"] + EXTRA_PASSES
    benchmark.extra_info.update(
        role=role,
        how=how,
        n_chunks=n_chunks,
        passes=passes,
        statistics_bytes_per_chunk=_chunk_bytes(covariance_type),
        lower_bound=float(est.lower_bound_),
    )
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info["seconds_per_round"] = median / passes
