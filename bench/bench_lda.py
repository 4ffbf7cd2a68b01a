"""Benchmarks of ``fastvi.LatentDirichletAllocation`` against scikit-learn's.

One group per learning method (``"lda <method> N=<docs>"``) holds, timed in the same
run on the same corpus:

* fastvi with ``n_jobs=2`` (role ``"fastvi"``) and ``n_jobs=1`` (role ``"fastvi_1"``);
* scikit-learn with ``n_jobs=1`` (role ``"anchor"``) and ``n_jobs=2`` (role
  ``"anchor_2"``; joblib processes, whose documents all start from copies of one
  random state, so its perplexity differs slightly from ``n_jobs=1``).

* gensim's ``LdaMulticore`` (role ``"gensim"``; one worker process beside the main
  one, gensim's own recommendation for two cores), when gensim is installed; skipped
  otherwise. It uses the same priors, step size (``decay`` = kappa, ``offset`` =
  tau_0), minibatch size (``chunksize`` = 128, online group; the whole corpus per
  update with ``batch=True``, batch group), per-document iteration limit and
  tolerance.

``bench/report.py`` compares the fastest ``"fastvi*"`` and the fastest ``"anchor*"``
entry of a group (scikit-learn's best setting); every entry is in the JSON, and
``python bench/bench_lda.py table lda.json`` prints them all. Every entry's
``extra_info`` holds the training perplexity after the fit, ``n_iter``,
``n_batch_iter``, the corpus size and the peak memory of the fit beyond the input
(:func:`measure_memory`).

Perplexity is scikit-learn's definition for every row: exp(-bound / number of
tokens) on the training corpus, the bound evaluated from the fitted topics with a
fresh E-step started from ones. For gensim it is computed the same way from its
topics (``state.get_lambda()``) by :func:`perplexity_from_topics`; gensim's own
``log_perplexity`` evaluates the same bound from random starting points and reports
it per word (its logged "perplexity" is 2 to the minus that), so it is not used.

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
``FASTVI_BENCH_MEMORY``
    ``0`` skips the memory measurement (default ``1``).

Peak memory is measured in a fresh subprocess, untimed, for a fit of
``MEMORY_MAX_ITER`` epoch(s) (the peak is reached in every epoch or in the final
bound evaluation): ``peak_mem_mb`` is the tracemalloc peak (NumPy buffers and the
arrays numba allocates inside kernels, which tracemalloc sees too), ``peak_rss_mb``
the growth of the peak resident set (``VmHWM``, reset just before the fit). Neither
counts the memory of worker *processes* (scikit-learn ``n_jobs=2``, gensim's
worker), so those entries get no memory figures; their per-process memory is at
least the single-process one.
"""

import gc
import json
import os
import subprocess
import sys
import tracemalloc
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
MEMORY_MAX_ITER = 1
GENSIM_WORKERS = 1


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


class GensimLDA:
    """gensim's ``LdaMulticore`` behind ``fit(X)``, with scikit-learn's defaults.

    alpha = eta = 1 / K, kappa = 0.7, tau_0 = 10, 100 iterations per document,
    tolerance 1e-3, float64; ``components_`` is gensim's lambda after the fit.
    """

    def __init__(self, learning_method, max_iter):
        self.learning_method = learning_method
        self.max_iter = max_iter

    def fit(self, X):
        from gensim.matutils import Sparse2Corpus
        from gensim.models import LdaMulticore

        K = PROFILE["n_topics"]
        model = LdaMulticore(
            Sparse2Corpus(X, documents_columns=False),
            num_topics=K,
            id2word={w: str(w) for w in range(X.shape[1])},
            workers=GENSIM_WORKERS,
            chunksize=BATCH_SIZE,
            passes=self.max_iter,
            batch=self.learning_method == "batch",
            alpha=1.0 / K,
            eta=1.0 / K,
            decay=0.7,
            offset=10.0,
            eval_every=None,
            iterations=100,
            gamma_threshold=1e-3,
            random_state=0,
            dtype=np.float64,
        )
        self.components_ = np.asarray(model.state.get_lambda(), dtype=np.float64)
        return self


def perplexity_from_topics(X, components, doc_topic_prior, topic_word_prior):
    """scikit-learn's ``perplexity(X)`` for topics ``components`` (K, V) = lambda."""
    from scipy.special import digamma

    from fastvi.lda import _topic_bound, e_step_stats

    exp_topic_word = np.exp(
        digamma(components) - digamma(components.sum(axis=1, keepdims=True))
    )
    stats = e_step_stats(
        X, exp_topic_word, doc_topic_prior, compute_bound=True, n_jobs=None
    )
    bound = stats.doc_bound + _topic_bound(components.T, topic_word_prior)
    return float(np.exp(-bound / stats.n_tokens))


def gensim_version():
    try:
        import gensim
    except ImportError:
        return None
    return gensim.__version__


def fit_perplexity(library, model, X):
    """Training perplexity after the fit (see the module doc)."""
    if library == "gensim":
        prior = 1.0 / PROFILE["n_topics"]
        return perplexity_from_topics(X, model.components_, prior, prior)
    return float(model.bound_)


def measure_memory(library, learning_method, n_jobs):
    """Peak memory of one fit beyond X, in MB (1e6 bytes), from a fresh subprocess."""
    spec = dict(
        library=library,
        learning_method=learning_method,
        n_jobs=n_jobs,
        profile=PROFILE,
    )
    proc = subprocess.run(
        [sys.executable, __file__, "memory-child", json.dumps(spec)],
        capture_output=True,
        text=True,
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
    PROFILE.update(spec["profile"])
    library, method, n_jobs = spec["library"], spec["learning_method"], spec["n_jobs"]
    X = make_corpus(
        PROFILE["n_docs"], PROFILE["n_words"], PROFILE["n_topics"], PROFILE["doc_len"]
    )
    # compile (or load) kernels and start threads first: that memory is not the fit's
    make_estimator(library, method, n_jobs, 1).fit(X[:WARMUP_DOCS])
    estimator = make_estimator(library, method, n_jobs, MEMORY_MAX_ITER)
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
    ("gensim", GENSIM_WORKERS, "gensim"),
]
# memory is measured where one process does all the work (see the module doc)
MEMORY_ROLES = {"fastvi", "fastvi_1", "anchor"}


@pytest.mark.parametrize("learning_method", ["batch", "online"])
@pytest.mark.parametrize(
    "library, n_jobs, role", CASES, ids=[f"{lib}-jobs{j}" for lib, j, _ in CASES]
)
def test_lda_fit(
    benchmark, lda_warmed_up, lda_corpus, learning_method, library, n_jobs, role
):
    if library == "gensim" and gensim_version() is None:
        pytest.skip("gensim is not installed (optional anchor)")
    X = lda_corpus
    benchmark.group = f"lda {learning_method} N={X.shape[0]}"
    max_iter = PROFILE["max_iter"]

    def fit():
        if library == "gensim":
            return GensimLDA(learning_method, max_iter).fit(X)
        return make_estimator(library, learning_method, n_jobs, max_iter).fit(X)

    model = benchmark.pedantic(fit, rounds=rounds(), iterations=1, warmup_rounds=0)
    names = {"fastvi": "fastvi", "sklearn": "scikit-learn", "gensim": "gensim"}
    info = dict(
        role=role,
        library=names[library],
        n_jobs=n_jobs,
        learning_method=learning_method,
        n_docs=X.shape[0],
        n_words=X.shape[1],
        nnz=int(X.nnz),
        n_components=PROFILE["n_topics"],
        max_iter=max_iter,
        batch_size=BATCH_SIZE,
        perplexity=fit_perplexity(library, model, X),
        profile=PROFILE_NAME,
    )
    if library == "gensim":
        info.update(version=gensim_version(), workers=n_jobs)
    else:
        info.update(n_iter=int(model.n_iter_), n_batch_iter=int(model.n_batch_iter_))
    if role in MEMORY_ROLES and os.environ.get("FASTVI_BENCH_MEMORY", "1") != "0":
        info.update(measure_memory(library, learning_method, n_jobs))
    benchmark.extra_info.update(info)


def print_table(path):
    """Every entry of a ``--benchmark-json`` file: time, perplexity and memory."""
    with open(path) as f:
        data = json.load(f)
    print(
        "| group | library | n_jobs | median s | perplexity | peak MB | peak RSS MB |"
    )
    print("|---|---|--:|--:|--:|--:|--:|")
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if "perplexity" not in info:
            continue
        mem = [info.get(k) for k in ("peak_mem_mb", "peak_rss_mb")]
        mem = ["–" if v is None else f"{v:.0f}" for v in mem]
        print(
            f"| {bench['group']} | {info['library']} | {info['n_jobs']} "
            f"| {bench['stats']['median']:.2f} | {info['perplexity']:.2f} "
            f"| {mem[0]} | {mem[1]} |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["memory-child"]:
        _memory_child(json.loads(sys.argv[2]))
    elif sys.argv[1:2] == ["table"]:
        print_table(sys.argv[2])
    else:
        raise SystemExit("usage: bench_lda.py table RESULT.json")
