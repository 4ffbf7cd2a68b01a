"""Benchmarks of ``fastvi.LatentDirichletAllocation`` against scikit-learn's.

One group per learning method (``"lda <method> N=<docs>"``) holds, timed in the same
run on the same corpus:

* fastvi with ``n_jobs=2`` (role ``"fastvi"``) and ``n_jobs=1`` (role ``"fastvi_1"``);
* scikit-learn with ``n_jobs=1`` (role ``"anchor"``) and ``n_jobs=2`` (role
  ``"anchor_2"``; joblib processes, whose documents all start from copies of one
  random state, so its perplexity differs slightly from ``n_jobs=1``).

``bench/report.py`` compares the fastest ``"fastvi*"`` and the fastest ``"anchor*"``
entry of a group (scikit-learn's best setting); all four are in the JSON. Every
entry's ``extra_info`` holds the training perplexity (``bound_``) after the fit,
``n_iter``, ``n_batch_iter`` and the corpus size.

The corpus is drawn from the LDA generative process with a fixed seed (not
downloaded): topics ~ Dirichlet(0.05) over the vocabulary, document proportions ~
Dirichlet(0.1) over the true topics, Poisson document lengths.

Environment:

``FASTVI_BENCH_PROFILE``
    ``full`` (default; 20,000 documents, vocabulary 10,000, about 100 tokens per
    document, 100 true topics, ``n_components=100``, 2 epochs) or ``smoke`` (400
    documents, vocabulary 300, 10 topics, 2 epochs: a CI check that the file runs).
``FASTVI_BENCH_LDA_DOCS``
    Use only the first this many documents of the full corpus (a reduced case).
``FASTVI_BENCH_ROUNDS``
    Timed rounds per case (default 1: a scikit-learn batch fit of the full corpus
    takes about half a minute per epoch on the 2-core machine).
"""

import os
from functools import lru_cache

import numpy as np
import pytest
import scipy.sparse as sp

PROFILES = {
    "full": dict(n_docs=20_000, n_words=10_000, n_topics=100, doc_len=100, max_iter=2),
    "smoke": dict(n_docs=400, n_words=300, n_topics=10, doc_len=50, max_iter=2),
}
PROFILE_NAME = os.environ.get("FASTVI_BENCH_PROFILE", "full")
if PROFILE_NAME not in PROFILES:
    raise ValueError(
        f"FASTVI_BENCH_PROFILE={PROFILE_NAME!r}; expected one of {sorted(PROFILES)}"
    )
PROFILE = dict(PROFILES[PROFILE_NAME])
if os.environ.get("FASTVI_BENCH_LDA_DOCS"):
    PROFILE["n_docs"] = min(PROFILE["n_docs"], int(os.environ["FASTVI_BENCH_LDA_DOCS"]))
SEED = 0
BATCH_SIZE = 128  # scikit-learn's default minibatch
WARMUP_DOCS = 200


def make_corpus(n_docs, n_words, n_topics, doc_len, seed=SEED, chunk=1000):
    """CSR counts from the LDA generative process, generated ``chunk`` docs at a time."""
    rng = np.random.default_rng(seed)
    topics = rng.dirichlet(np.full(n_words, 0.05), n_topics)
    parts = []
    for start in range(0, n_docs, chunk):
        n = min(chunk, n_docs - start)
        theta = rng.dirichlet(np.full(n_topics, 0.1), n)
        lengths = rng.poisson(doc_len, n)
        p = theta @ topics
        p /= p.sum(axis=1, keepdims=True)
        parts.append(sp.csr_matrix(rng.multinomial(lengths, p).astype(np.float64)))
    return sp.vstack(parts, format="csr")


def make_estimator(library, learning_method, n_jobs, max_iter):
    params = dict(
        n_components=PROFILE["n_topics"],
        learning_method=learning_method,
        batch_size=BATCH_SIZE,
        max_iter=max_iter,
        random_state=0,
        n_jobs=n_jobs,
    )
    if library == "fastvi":
        from fastvi import LatentDirichletAllocation
    else:
        from sklearn.decomposition import LatentDirichletAllocation
    return LatentDirichletAllocation(**params)


def rounds():
    return int(os.environ.get("FASTVI_BENCH_ROUNDS", "1"))


@pytest.fixture(scope="session")
def lda_corpus():
    """The profile's corpus, generated once per session."""
    return lru_cache(maxsize=1)(make_corpus)(
        PROFILE["n_docs"], PROFILE["n_words"], PROFILE["n_topics"], PROFILE["doc_len"]
    )


@pytest.fixture(scope="session")
def lda_warmed_up(lda_corpus):
    """Compile (or load) fastvi's kernels and start its threads before timing."""
    X = lda_corpus[:WARMUP_DOCS]
    for method in ("batch", "online"):
        for n_jobs in (1, 2):
            make_estimator("fastvi", method, n_jobs, 1).fit(X)


CASES = [
    ("fastvi", 2, "fastvi"),
    ("fastvi", 1, "fastvi_1"),
    ("sklearn", 1, "anchor"),
    ("sklearn", 2, "anchor_2"),
]


@pytest.mark.parametrize("learning_method", ["batch", "online"])
@pytest.mark.parametrize(
    "library, n_jobs, role", CASES, ids=[f"{lib}-jobs{j}" for lib, j, _ in CASES]
)
def test_lda_fit(
    benchmark, lda_warmed_up, lda_corpus, learning_method, library, n_jobs, role
):
    X = lda_corpus
    benchmark.group = f"lda {learning_method} N={X.shape[0]}"
    max_iter = PROFILE["max_iter"]

    def fit():
        return make_estimator(library, learning_method, n_jobs, max_iter).fit(X)

    model = benchmark.pedantic(fit, rounds=rounds(), iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(
        role=role,
        library="fastvi" if library == "fastvi" else "scikit-learn",
        n_jobs=n_jobs,
        learning_method=learning_method,
        n_docs=X.shape[0],
        n_words=X.shape[1],
        nnz=int(X.nnz),
        n_components=PROFILE["n_topics"],
        max_iter=max_iter,
        batch_size=BATCH_SIZE,
        perplexity=float(model.bound_),
        n_iter=int(model.n_iter_),
        n_batch_iter=int(model.n_batch_iter_),
        profile=PROFILE_NAME,
    )
