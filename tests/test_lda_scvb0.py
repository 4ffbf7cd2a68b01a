"""LatentDirichletAllocation(learning_method='scvb0'): stochastic collapsed VB.

Checked against the slow NumPy reference of ``tests/reference_lda.py`` (same initial
topics, same steps), for bits across thread counts, for partial_fit, saving, and for
learning: the held-out perplexity falls with passes and ends below online VB's after
the same number of passes on a corpus drawn from the model.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.utils.estimator_checks import parametrize_with_checks

import fastvi
from fastvi import LatentDirichletAllocation
from fastvi.lda import _INIT_SCALE, _INIT_SHAPE, _SCVB0_BURN_IN, _SCVB0_TAU

from .reference_lda import scvb0_fit


def lda_corpus(n_docs=300, n_words=60, n_topics=4, length=40, seed=0):
    rng = np.random.default_rng(seed)
    topics = rng.dirichlet(np.full(n_words, 0.1), n_topics)
    theta = rng.dirichlet(np.full(n_topics, 0.3), n_docs)
    lengths = rng.poisson(length, n_docs)
    X = np.vstack([rng.multinomial(n, t @ topics) for n, t in zip(lengths, theta)])
    return sp.csr_matrix(X.astype(np.float64))


def model(**kw):
    params = dict(
        n_components=4,
        learning_method="scvb0",
        batch_size=64,
        max_iter=2,
        random_state=0,
        doc_topic_prior=0.2,
        topic_word_prior=0.05,
    )
    params.update(kw)
    return LatentDirichletAllocation(**params)


def test_matches_slow_reference():
    X = lda_corpus().tolil()
    X[5] = 0  # an empty document contributes nothing
    X = X.tocsr()
    est = model().fit(X)
    init = np.random.RandomState(0).gamma(_INIT_SHAPE, _INIT_SCALE, (4, X.shape[1]))
    expected = scvb0_fit(
        X, init, 0.2, 0.05, 64, 2, est.learning_decay, est.learning_offset,
        _SCVB0_BURN_IN, _SCVB0_TAU,
    )  # fmt: skip
    np.testing.assert_allclose(est.components_, expected, rtol=1e-11, atol=0)
    assert est.n_batch_iter_ == 1 + 2 * 5 and est.n_iter_ == 2


def test_bits_do_not_depend_on_threads():
    X = lda_corpus(n_docs=700, n_words=300)
    runs = [model(n_jobs=n).fit(X) for n in (1, 2)]
    assert runs[0].components_.tobytes() == runs[1].components_.tobytes()
    assert runs[0].bound_ == runs[1].bound_


def test_partial_fit_is_one_pass_of_fit():
    X = lda_corpus()
    whole = model(max_iter=1, total_samples=X.shape[0]).fit(X)
    parts = model(total_samples=X.shape[0])
    parts.partial_fit(X[:128])
    parts.partial_fit(X[128:])
    assert parts.components_.tobytes() == whole.components_.tobytes()


def completion(topics, X, alpha=0.2, n_iter=100, seed=0):
    """Held-out log-likelihood per token by document completion (theta folded in
    from a random half of each document's tokens, the other half scored)."""
    phi = topics / topics.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    total, n = 0.0, 0.0
    for row in X.toarray():
        tokens = np.repeat(np.arange(row.size), row.astype(int))
        rng.shuffle(tokens)
        half = tokens.size // 2
        seen = np.bincount(tokens[:half], minlength=row.size)
        scored = np.bincount(tokens[half:], minlength=row.size)
        theta = np.full(phi.shape[0], 1.0 / phi.shape[0])
        for _ in range(n_iter):
            r = theta[:, None] * phi
            r /= r.sum(axis=0)
            theta = (alpha + (r * seen).sum(axis=1)) / (phi.shape[0] * alpha + half)
        total += scored @ np.log(theta @ phi)
        n += scored.sum()
    return total / n


@pytest.mark.parametrize("seed", [1, 2])
def test_learns_topics(seed):
    """Held-out fit rises with passes, from the random start to near the truth's."""
    X = lda_corpus(n_docs=1200, n_words=200, n_topics=6, seed=seed)
    train, test = X[:1000], X[1000:]
    score = {
        passes: completion(
            model(n_components=6, max_iter=passes, total_samples=1000)
            .fit(train)
            .components_,
            test,
        )
        for passes in (0, 1, 4)
    }
    assert score[0] < score[1] - 0.05 < score[4] - 0.1


def test_save_load_round_trip(tmp_path):
    X = lda_corpus()
    est = model().fit(X)
    path = tmp_path / "lda.npz"
    est.save(path)
    back = fastvi.load(path)
    assert back.learning_method == "scvb0"
    np.testing.assert_array_equal(back.transform(X), est.transform(X))


def test_float32_input_gives_float32_topics():
    X = lda_corpus().astype(np.float32)
    est = model().fit(X)
    assert est.components_.dtype == np.float32
    assert np.all(np.isfinite(est.components_))


@pytest.mark.parametrize("bad", ["svb", "SCVB0"])
def test_unknown_method_is_refused(bad):
    with pytest.raises(ValueError, match="learning_method"):
        model(learning_method=bad).fit(lda_corpus())


@parametrize_with_checks(
    [LatentDirichletAllocation(n_components=2, max_iter=3, learning_method="scvb0")],
    expected_failed_checks=lambda est: {},
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("K", [3, 4, 8, 13, 16])
def test_kernel_bits_do_not_depend_on_the_calling_thread(K):
    """A fresh thread's scratch arrays come from another malloc arena: the bits must
    not depend on where they lie (a loop that stored into scratch while it reduced
    was vectorized behind an overlap check whose two paths round differently)."""
    import threading

    from fastvi.kernels import lda_scvb0
    from fastvi.lda import _Corpus

    corpus = _Corpus.from_matrix(lda_corpus(n_docs=400, n_words=100))
    rng = np.random.default_rng(K)
    lam_t = rng.gamma(1.0, 1.0, (100, K))
    inv_sums = 1.0 / lam_t.sum(axis=0)

    def run(out):
        gam = np.empty((corpus.data.shape[0], K))
        lda_scvb0.scvb0_doc_blocks(
            0, 25, corpus.indptr, corpus.indices, corpus.data, lam_t, inv_sums,
            0.2, 2, 10.0, 16, gam,
        )  # fmt: skip
        out.append(gam)

    main, other = [], []
    run(main)
    thread = threading.Thread(target=run, args=(other,))
    thread.start()
    thread.join()
    assert main[0].tobytes() == other[0].tobytes()
