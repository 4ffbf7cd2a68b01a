"""Stochastic (online) against batch variational inference for the Gaussian mixture.

The question is not speed per pass but the bound reached per pass over the data:
each group holds

* ``anchor``: the batch CAVI fit (``learning_method='batch'``) run to convergence;
* ``fastvi``: the stochastic fit (``learning_method='online'``, default
  ``batch_size``, ``learning_offset`` and ``learning_decay``) for a fixed number of
  epochs,

both from the same start (``random_state=0`` unless ``FASTVI_BENCH_SVI_SEEDS`` says
otherwise, and ``init_params`` 'random_from_data', as in ``bench_mixture.py``: one
data point per component, far from the optimum; or 'k-means++', close to it) on the
blobs of ``bench_mixture.py`` (32 well-separated centres in 16 dimensions,
``n_components=32``). Groups are named
``"svi <covariance_type> <init_params> N=<N>"``. ``benchmark.extra_info`` records

* ``passes``: passes over the data that updated the model (CAVI iterations, or
  epochs), not counting the initialization (the same for both);
* ``eval_passes``: extra passes that only evaluated the bound (one after every
  online epoch; none for batch, whose bound comes with its iteration);
* ``passes_to_1pct``: updating passes until the bound was within 1% of the final
  batch bound (``None`` if never);
* ``bounds``: the bound after every pass; ``final_bound``: the evidence lower bound
  of the final model with the optimal responsibilities, over all the data (the same
  quantity for both, scikit-learn's constants dropped); ``rel_gap``:
  ``(batch final bound - final_bound) / |batch final bound|``.

The batch bound history is scikit-learn's bound at (previous responsibilities, new
globals), which is at most the optimal-responsibility bound, so ``passes_to_1pct`` of
the batch fit is, if anything, counted late by a fraction of an iteration.

Environment:

``FASTVI_BENCH_PROFILE``
    ``full`` (default; N = 1e6, 'diag' and 'full', batch up to 200 iterations, online
    10 epochs) or ``smoke`` (N = 2e4, 2 online epochs, 1 round: a CI check that the
    suite runs).
``FASTVI_BENCH_ROUNDS``
    Timed rounds per case (default 1: the fits run for minutes).
``FASTVI_BENCH_SVI_SEEDS``
    Comma-separated ``random_state`` values of both fits (default ``0``). From
    'random_from_data' both fits end in local optima with some clusters merged, and
    which optimum each reaches changes with the seed (an extra merge costs about 1%
    of the bound for 'full' and 5% for 'diag'), so judge a change of the online
    defaults over several seeds (for instance ``0,1,2``); groups of seeds other than
    0 are named ``"... N=<N> rs=<seed>"``.

Timings are of whole fits (initialization, passes and, online, the evaluation
passes); compare ``passes`` and ``final_bound`` first, times second.
"""

import os
import warnings
from functools import lru_cache

import numpy as np
import pytest

PROFILES = {
    "full": {"sizes": (1_000_000,), "batch_max_iter": 200, "epochs": 10},
    "smoke": {"sizes": (20_000,), "batch_max_iter": 30, "epochs": 2},
}
PROFILE_NAME = os.environ.get("FASTVI_BENCH_PROFILE", "full")
if PROFILE_NAME not in PROFILES:
    raise ValueError(
        f"FASTVI_BENCH_PROFILE={PROFILE_NAME!r}; expected one of {sorted(PROFILES)}"
    )
PROFILE = PROFILES[PROFILE_NAME]

LARGE = 1_000_000
N_FEATURES = 16
N_CENTERS = 32
N_COMPONENTS = 32
SEED = 0
WARMUP_ROWS = 2_000
# absolute tolerance of both fits, per row of data (the bound is a sum over rows)
TOL_PER_ROW = 1e-6
GAP = 0.01
INITS = ("random_from_data", "k-means++")

# online fits run a fixed number of epochs (tol is rarely met by a noisy bound)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def short(n):
    """``1000000`` -> ``"1e6"``."""
    mantissa, exponent = f"{n:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def make_blobs(n_samples, seed=SEED):
    """The blobs of ``bench_mixture.py``: 32 centres in [-10, 10]^16, unit noise."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10.0, 10.0, size=(N_CENTERS, N_FEATURES))
    labels = rng.integers(N_CENTERS, size=n_samples)
    X = rng.standard_normal((n_samples, N_FEATURES))
    X += centers[labels]
    return X


def make_estimator(
    method, covariance_type, n_samples, max_iter, init_params, random_state=0
):
    from fastvi import BayesianGaussianMixture

    return BayesianGaussianMixture(
        n_components=N_COMPONENTS,
        covariance_type=covariance_type,
        init_params=init_params,
        random_state=random_state,
        tol=TOL_PER_ROW * n_samples,
        max_iter=max_iter,
        learning_method=method,
    )


def final_bound(model, X):
    """The bound of the fitted factors with optimal responsibilities (one pass)."""
    from fastvi.mixture import _Data
    from fastvi.rows import ArrayRows

    return float(model._sgd_evaluate(_Data(ArrayRows(X), X)))


_REFERENCES = {}


def batch_reference(covariance_type, n_samples, init_params, random_state=0):
    """Final bound of the batch fit: the timed batch entry's, else fitted untimed."""
    key = (covariance_type, n_samples, init_params, random_state)
    if key not in _REFERENCES:
        X = blobs_of(n_samples)
        model = make_estimator(
            "batch",
            covariance_type,
            n_samples,
            PROFILE["batch_max_iter"],
            init_params,
            random_state,
        ).fit(X)
        _REFERENCES[key] = final_bound(model, X)
    return _REFERENCES[key]


@lru_cache(maxsize=1)
def blobs_of(n_samples):
    return make_blobs(n_samples)


def passes_to(bounds, target):
    """1-based index of the first bound within ``GAP`` of ``target``, or None."""
    for i, bound in enumerate(bounds, start=1):
        if (target - bound) / abs(target) <= GAP:
            return i
    return None


@pytest.fixture(scope="session")
def warmed_up():
    """Compile (or load) the kernels and start the threads before any timing."""
    X = make_blobs(WARMUP_ROWS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cov in ("full", "diag"):
            for method in ("batch", "online"):
                model = make_estimator(method, cov, WARMUP_ROWS, 1, INITS[0]).fit(X)
                final_bound(model, X)


def rounds():
    return int(os.environ.get("FASTVI_BENCH_ROUNDS", "1"))


SIZES = [
    pytest.param(n, id=short(n), marks=[pytest.mark.large] if n >= LARGE else [])
    for n in PROFILE["sizes"]
]
SEEDS = [int(s) for s in os.environ.get("FASTVI_BENCH_SVI_SEEDS", "0").split(",")]


@pytest.mark.parametrize("method", ["batch", "online"])
@pytest.mark.parametrize("random_state", SEEDS, ids=lambda s: f"rs{s}")
@pytest.mark.parametrize("init_params", INITS)
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@pytest.mark.parametrize("n_samples", SIZES)
def test_bound_per_pass(
    benchmark, warmed_up, n_samples, covariance_type, init_params, random_state, method
):
    """Batch CAVI to convergence against a fixed number of online epochs."""
    import numba

    import fastvi

    benchmark.group = f"svi {covariance_type} {init_params} N={short(n_samples)}"
    if random_state != 0:
        benchmark.group += f" rs={random_state}"
    X = blobs_of(n_samples)
    max_iter = PROFILE["batch_max_iter"] if method == "batch" else PROFILE["epochs"]

    def fit():
        return make_estimator(
            method, covariance_type, n_samples, max_iter, init_params, random_state
        ).fit(X)

    model = benchmark.pedantic(fit, rounds=rounds(), iterations=1, warmup_rounds=0)
    bounds = [float(b) for b in model.lower_bounds_]
    final = final_bound(model, X)
    if method == "batch":  # the reference of the online entry of this group
        _REFERENCES[(covariance_type, n_samples, init_params, random_state)] = final
    reference = batch_reference(covariance_type, n_samples, init_params, random_state)
    benchmark.extra_info.update(
        role="anchor" if method == "batch" else "fastvi",
        library="fastvi",
        version=fastvi.__version__,
        threads=numba.config.NUMBA_NUM_THREADS,
        learning_method=method,
        covariance_type=covariance_type,
        init_params=init_params,
        random_state=random_state,
        n_samples=n_samples,
        n_features=N_FEATURES,
        n_components=N_COMPONENTS,
        batch_size=model.batch_size,
        learning_offset=model.learning_offset,
        learning_decay=model.learning_decay,
        tol=model.tol,
        passes=int(model.n_iter_),
        eval_passes=int(model.n_iter_) if method == "online" else 0,
        passes_to_1pct=passes_to(bounds, reference),
        converged=bool(model.converged_),
        # components holding at least half a uniform share: 32 when every
        # cluster has its own component, fewer in a merged local optimum
        components_used=int((model.weights_ > 0.5 / N_COMPONENTS).sum()),
        bounds=bounds,
        final_bound=final,
        batch_final_bound=reference,
        rel_gap=(reference - final) / abs(reference),
    )
