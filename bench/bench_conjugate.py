"""Benchmarks of fastvi's conjugate models against scikit-learn and fastvi's SGVI.

Every group holds fastvi and its anchor, timed in the same run (``bench/report.py``):

* ``"linear N=<N>"``: ``VBLinearRegression`` vs ``BayesianRidge``;
* ``"ard N=<N>"``: ``VBLinearRegression(ard=True)`` vs ``ARDRegression``;
* ``"logistic N=<N>"``: ``VBLogisticRegression`` vs ``LogisticRegression`` (lbfgs, the
  anchor) and ``fastvi.BayesianLogisticRegression(family="fullrank")`` (SGVI, role
  ``fastvi_sgvi``; ``report.py`` pairs the faster fastvi entry with the anchor).

The three logistic fits are of the same model, w ~ N(0, I) with a broad intercept:
VBLogisticRegression's hyperprior is held at λ = 1 (``lambda_1 = lambda_2 = 1e8``),
LogisticRegression's ``C = 1`` is that prior (its intercept is not penalized; VB's and
SGVI's have sd 100), and SGVI gets ``prior_scale = 1`` (full-rank q, S = 8 draws per
full-data step, Adam's default step, its default stopping rule).

Each fit runs to its own default convergence test; the time is the whole ``fit``
(statistics, iterations, validation). Data: D = 50 standard-normal features, weights
drawn once (seed 0); a linear target with unit noise and 10 of the 50 true weights set
to 0 (so ARD has something to switch off), and a Bernoulli-logit target. A held-out set
of ``TEST_ROWS`` rows from the same model gives the accuracy in ``extra_info``:
``heldout_loglik`` is the mean predictive log-density (Gaussian with ``return_std`` for
the regressors, log ``predict_proba`` of the true class for the classifiers), plus
``heldout_rmse`` / ``heldout_accuracy``. ``lower_bound`` is fastvi's final ELBO (NaN for
the anchors; SGVI's is its last noisy estimate), ``n_iter`` the iterations (passes
over the data for VB, steps for SGVI) each took.

One table with time, iterations and held-out quality of every entry::

    python bench/bench_conjugate.py results.json

Environment:

``FASTVI_BENCH_PROFILE``
    ``full`` (default; N = 1e5 and 1e6) or ``smoke`` (N = 5e3, 1 round).
``FASTVI_BENCH_ROUNDS``
    Timed rounds per case (default 3; 1 for the smoke profile and for SGVI at
    N = 1e6).
``FASTVI_BENCH_ANCHOR_BLAS_THREADS``
    BLAS threads for scikit-learn (default 1, as in ``bench_mixture.py``).
"""

import math
import os
import warnings
from contextlib import nullcontext
from functools import lru_cache

import numpy as np
import pytest

PROFILES = {
    "full": {"sizes": (100_000, 1_000_000)},
    "smoke": {"sizes": (5_000,)},
}
PROFILE_NAME = os.environ.get("FASTVI_BENCH_PROFILE", "full")
if PROFILE_NAME not in PROFILES:
    raise ValueError(
        f"FASTVI_BENCH_PROFILE={PROFILE_NAME!r}; expected one of {sorted(PROFILES)}"
    )
PROFILE = PROFILES[PROFILE_NAME]

LARGE = 1_000_000
N_FEATURES = 50
TEST_ROWS = 20_000
SEED = 0
WARMUP_ROWS = 2_000
ANCHOR_BLAS_THREADS = int(os.environ.get("FASTVI_BENCH_ANCHOR_BLAS_THREADS", "1"))

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def short(n):
    """``100000`` -> ``"1e5"``."""
    mantissa, exponent = f"{n:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def true_weights():
    rng = np.random.default_rng(SEED)
    w = rng.normal(0.0, 0.5, N_FEATURES)
    w[rng.choice(N_FEATURES, 10, replace=False)] = 0.0
    return w


def make_data(kind, n_samples, seed):
    """X (n, 50) and a 'linear' or 'logistic' target from the fixed true weights."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, N_FEATURES))
    eta = X @ true_weights() + 0.5
    if kind == "linear":
        return X, eta + rng.standard_normal(n_samples)
    return X, (rng.uniform(size=n_samples) < 1.0 / (1.0 + np.exp(-eta))).astype(int)


@lru_cache(maxsize=2)
def train_data(kind, n_samples):
    return make_data(kind, n_samples, SEED + 1)


@lru_cache(maxsize=2)
def heldout_data(kind):
    return make_data(kind, TEST_ROWS, SEED + 2)


LIBRARIES = {
    "linear": ("fastvi", "sklearn"),
    "ard": ("fastvi", "sklearn"),
    "logistic": ("fastvi", "sklearn", "sgvi"),
}


def make_estimator(model, library):
    if library == "sgvi":
        from fastvi import BayesianLogisticRegression

        # S = 8 draws per step, as in the README's example; Adam's default step
        return BayesianLogisticRegression(
            prior_scale=1.0,
            intercept_prior_scale=100.0,
            family="fullrank",
            n_samples=8,
            random_state=SEED,
        )
    if library == "fastvi":
        from fastvi import VBLinearRegression, VBLogisticRegression

        if model == "logistic":
            # λ held at 1: the prior N(0, I) of LogisticRegression(C=1)
            return VBLogisticRegression(lambda_1=1e8, lambda_2=1e8)
        return VBLinearRegression(ard=model == "ard")
    from sklearn.linear_model import ARDRegression, BayesianRidge, LogisticRegression

    if model == "logistic":
        return LogisticRegression(C=1.0, max_iter=1000)
    return ARDRegression() if model == "ard" else BayesianRidge()


def blas_limit(library):
    if library in ("fastvi", "sgvi"):
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=ANCHOR_BLAS_THREADS, user_api="blas")


def library_info(library):
    if library in ("fastvi", "sgvi"):
        import numba

        import fastvi

        return {
            "library": "fastvi" if library == "fastvi" else "fastvi SGVI",
            "version": fastvi.__version__,
            "threads": numba.config.NUMBA_NUM_THREADS,
            "n_jobs": None,
        }
    import sklearn

    return {
        "library": "scikit-learn",
        "version": sklearn.__version__,
        "threads": ANCHOR_BLAS_THREADS,
    }


def heldout_quality(model_kind, estimator):
    X, y = heldout_data("logistic" if model_kind == "logistic" else "linear")
    if model_kind == "logistic":
        proba = estimator.predict_proba(X)
        p_true = proba[np.arange(y.shape[0]), np.searchsorted(estimator.classes_, y)]
        return {
            "heldout_loglik": float(np.mean(np.log(p_true))),
            "heldout_accuracy": float(np.mean(estimator.predict(X) == y)),
        }
    mean, std = estimator.predict(X, return_std=True)
    loglik = -0.5 * (math.log(2 * math.pi) + 2 * np.log(std) + ((y - mean) / std) ** 2)
    return {
        "heldout_loglik": float(np.mean(loglik)),
        "heldout_rmse": float(np.sqrt(np.mean((y - mean) ** 2))),
    }


def rounds_for(n_samples, library):
    if os.environ.get("FASTVI_BENCH_ROUNDS"):
        return int(os.environ["FASTVI_BENCH_ROUNDS"])
    # SGVI takes minutes at N = 1e6; everything else is timed by its median of three
    return (
        1
        if PROFILE_NAME == "smoke" or (n_samples >= LARGE and library == "sgvi")
        else 3
    )


@pytest.fixture(scope="session")
def warmed_up():
    """Fit every estimator once on a small slice: compiles (or loads) the kernels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model in ("linear", "ard", "logistic"):
            X, y = make_data(
                "logistic" if model == "logistic" else "linear", WARMUP_ROWS, 99
            )
            for library in LIBRARIES[model]:
                with blas_limit(library):
                    make_estimator(model, library).fit(X, y)


SIZES = [
    pytest.param(n, id=short(n), marks=[pytest.mark.large] if n >= LARGE else [])
    for n in PROFILE["sizes"]
]


CASES = [
    pytest.param(model, library, id=f"{model}-{library}")
    for model, libraries in LIBRARIES.items()
    for library in libraries
]
ROLES = {"fastvi": "fastvi", "sklearn": "anchor", "sgvi": "fastvi_sgvi"}


@pytest.mark.parametrize("model, library", CASES)
@pytest.mark.parametrize("n_samples", SIZES)
def test_fit(benchmark, warmed_up, n_samples, model, library):
    """Time to converge (each library's own stopping rule) and held-out quality."""
    benchmark.group = f"{model} N={short(n_samples)}"
    X, y = train_data("logistic" if model == "logistic" else "linear", n_samples)

    def fit():
        return make_estimator(model, library).fit(X, y)

    with blas_limit(library):
        estimator = benchmark.pedantic(
            fit, rounds=rounds_for(n_samples, library), iterations=1, warmup_rounds=0
        )
        quality = heldout_quality(model, estimator)
    n_iter = np.max(np.atleast_1d(estimator.n_iter_))
    if library == "sgvi":
        bound = float(np.mean(estimator.elbo_history_[-100:]))
    else:
        bound = float(getattr(estimator, "lower_bound_", math.nan))
    benchmark.extra_info.update(
        role=ROLES[library],
        model=model,
        n_samples=n_samples,
        n_features=N_FEATURES,
        n_iter=int(n_iter),
        lower_bound=bound,
        **library_info(library),
        **quality,
    )


def quality_table(path):
    """Markdown lines: every entry's median time, iterations and held-out quality."""
    import json

    with open(path) as handle:
        data = json.load(handle)
    lines = [
        "| case | library | median (s) | iters | held-out log-lik "
        "| held-out accuracy / RMSE |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        other = info.get("heldout_accuracy", info.get("heldout_rmse", math.nan))
        lines.append(
            f"| {bench['group']} | {info.get('library')} "
            f"| {bench['stats']['median']:.3f} | {info.get('n_iter')} "
            f"| {info.get('heldout_loglik', math.nan):.5f} | {other:.5f} |"
        )
    return lines


if __name__ == "__main__":
    import sys

    print("\n".join(quality_table(sys.argv[1])))
