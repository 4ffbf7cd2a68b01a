"""LDA document completion, checked against a slow NumPy reference."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose
from scipy.special import digamma

from fastvi import LatentDirichletAllocation
from fastvi.predictive import split_tokens


def _reference_completion(est, X_obs, X_held):
    """Fold in each document's theta by the fixed-point E-step written out per
    document on dense counts (Hoffman, Blei & Bach 2010, Algorithm 2, from gamma = 1
    as transform starts), then score the held-out tokens one (document, word) at a
    time under E[theta_d] and E[beta]."""
    X_obs = np.asarray(X_obs, dtype=np.float64)
    X_held = np.asarray(X_held, dtype=np.float64)
    lam = np.asarray(est.components_, dtype=np.float64)
    K = lam.shape[0]
    alpha = est.doc_topic_prior_
    exp_log_beta = np.exp(digamma(lam) - digamma(lam.sum(axis=1, keepdims=True)))
    beta_mean = lam / lam.sum(axis=1, keepdims=True)
    eps = np.finfo(np.float64).eps
    total, tokens = 0.0, 0.0
    for d in range(X_obs.shape[0]):
        words = np.nonzero(X_obs[d])[0]
        counts = X_obs[d, words]
        gamma = np.ones(K)
        exp_log_theta = np.exp(digamma(gamma) - digamma(gamma.sum()))
        for _ in range(est.max_doc_update_iter):
            last = gamma
            phinorm = exp_log_theta @ exp_log_beta[:, words] + eps
            gamma = alpha + exp_log_theta * (
                exp_log_beta[:, words] @ (counts / phinorm)
            )
            exp_log_theta = np.exp(digamma(gamma) - digamma(gamma.sum()))
            if np.mean(np.abs(gamma - last)) < est.mean_change_tol:
                break
        theta = gamma / gamma.sum()
        for w in np.nonzero(X_held[d])[0]:
            p = sum(theta[k] * beta_mean[k, w] for k in range(K))
            total += X_held[d, w] * math.log(p)
            tokens += X_held[d, w]
    return total / tokens


def _corpus(n_docs=60, n_words=40, K=4, seed=0):
    rng = np.random.default_rng(seed)
    topics = rng.dirichlet(np.full(n_words, 0.2), K)
    theta = rng.dirichlet(np.full(K, 0.3), n_docs)
    lengths = rng.integers(5, 60, n_docs)
    return np.array([rng.multinomial(n, t @ topics) for n, t in zip(lengths, theta)])


@pytest.mark.parametrize("sparse", [False, True])
def test_completion_matches_the_slow_reference(sparse):
    X = _corpus()
    est = LatentDirichletAllocation(n_components=4, random_state=0).fit(X[:40])
    held_docs = X[40:]
    X_obs, X_held = split_tokens(held_docs, 0.5, random_state=0)
    assert_allclose(X_obs + X_held, held_docs)
    expected = _reference_completion(est, X_obs, X_held)
    if sparse:
        X_obs, X_held = sp.csr_matrix(X_obs), sp.csr_matrix(X_held)
    got = est.completion_score(X_obs, X_held)
    assert_allclose(got, expected, rtol=1e-9)


def test_completion_prefers_the_true_number_of_topics_to_one_topic():
    X = _corpus(n_docs=200, seed=1)
    X_obs, X_held = split_tokens(X[150:], 0.5, random_state=1)
    scores = {
        K: LatentDirichletAllocation(n_components=K, max_iter=30, random_state=0)
        .fit(X[:150])
        .completion_score(X_obs, X_held)
        for K in (1, 4)
    }
    assert scores[4] > scores[1] + 0.05, scores


def test_split_tokens_is_binomial_thinning():
    X = _corpus()
    a, b = split_tokens(sp.csr_matrix(X), 0.3, random_state=2)
    assert sp.issparse(a) and sp.issparse(b)
    assert_allclose((a + b).toarray(), X)
    assert abs(a.sum() / X.sum() - 0.3) < 0.02
    a2, _ = split_tokens(sp.csr_matrix(X), 0.3, random_state=2)
    assert_allclose(a.toarray(), a2.toarray())
    for bad in (0.0, 1.0, 2.0):
        with pytest.raises(ValueError, match="observed_fraction"):
            split_tokens(X, bad)
    with pytest.raises(ValueError, match="integer counts"):
        split_tokens(X + 0.5)


def test_completion_checks_its_arguments():
    X = _corpus()
    est = LatentDirichletAllocation(n_components=3, random_state=0).fit(X)
    with pytest.raises(ValueError, match="same documents"):
        est.completion_score(X[:5], X[:6])
    with pytest.raises(ValueError, match="no tokens"):
        est.completion_score(X[:5], np.zeros_like(X[:5]))
    with pytest.raises(ValueError, match="features"):
        est.completion_score(X[:5, :10], X[:5, :10])
    with pytest.raises(ValueError, match="Negative"):
        est.completion_score(-X[:5], X[:5])
