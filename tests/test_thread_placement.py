"""Bits do not depend on the thread a fit runs on.

A kernel's scratch arrays lie wherever ``np.empty`` puts them, and a fresh thread
allocates from another malloc arena. LLVM vectorizes a loop that stores into one array
while it reads another behind a runtime overlap check, and with reassociation allowed
its vector and scalar paths can round differently: such a kernel gives other bits in
another thread (found in the SCVB0 kernel, ``tests/test_lda_scvb0.py``). Each fit here
runs with ``n_jobs=1`` (all its work on the calling thread), once on the main thread
and once on a new one, for several sizes of the inner loops (components, topics,
features), and the bits must agree.
"""

import threading
import warnings

import numpy as np
import pytest

from fastvi import (
    BayesianGaussianMixture,
    BayesianLogisticRegression,
    LatentDirichletAllocation,
    VBLinearRegression,
    VBLogisticRegression,
)


def in_new_thread(fn):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def same_bits(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        here = fn()
        there = in_new_thread(fn)
    for a, b in zip(here, there):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def blobs(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 4.0, (k, d))
    return centers[rng.integers(0, k, n)] + rng.standard_normal((n, d))


@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("k, d", [(3, 3), (4, 4), (8, 5), (5, 8)])
def test_mixture(cov, k, d):
    X = blobs(3000, d, k)

    def fit():
        est = BayesianGaussianMixture(
            n_components=k, covariance_type=cov, max_iter=5, random_state=0, n_jobs=1
        ).fit(X)
        return est.means_, est.covariances_, est.lower_bound_

    same_bits(fit)


@pytest.mark.parametrize("method", ["batch", "online", "scvb0"])
@pytest.mark.parametrize("k", [3, 4, 8, 13])
def test_lda(method, k):
    rng = np.random.default_rng(k)
    X = rng.poisson(0.3, (500, 120)).astype(float)

    def fit():
        est = LatentDirichletAllocation(
            n_components=k,
            learning_method=method,
            batch_size=64,
            max_iter=2,
            random_state=0,
            n_jobs=1,
        ).fit(X)
        return est.components_, est.bound_, est.transform(X)

    same_bits(fit)


@pytest.mark.parametrize("d", [3, 4, 8, 13])
def test_conjugate_regressions(d):
    rng = np.random.default_rng(d)
    X = rng.standard_normal((2000, d))
    y = X @ rng.standard_normal(d) + rng.standard_normal(2000)

    def fit():
        lin = VBLinearRegression(n_jobs=1).fit(X, y)
        log = VBLogisticRegression(n_jobs=1).fit(X, y > 0)
        return lin.coef_, lin.sigma_, log.coef_, log.predict_proba(X)

    same_bits(fit)


@pytest.mark.parametrize("d", [3, 4, 8])
def test_sgvi_logistic(d):
    rng = np.random.default_rng(d)
    X = rng.standard_normal((1500, d))
    y = (X @ rng.standard_normal(d) + rng.logistic(size=1500)) > 0

    def fit():
        est = BayesianLogisticRegression(max_iter=300, random_state=0, n_jobs=1)
        est.fit(X, y)
        return est.coef_, est.intercept_

    same_bits(fit)
