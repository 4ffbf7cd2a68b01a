"""A real text corpus built without downloads: the machine's own man pages.

``python bench/manpages.py [--max-docs N]`` builds the corpus and prints its size.

The English manual pages under ``/usr/share/man/man*/`` (gzip-compressed troff) are
read in sorted path order, stripped of troff requests and escapes, lower-cased and cut
into words of three or more letters; scikit-learn's English stop words are dropped.
The vocabulary is every word in at least ``MIN_DF`` training documents and at most
``MAX_DF_FRACTION`` of them; documents with fewer than ``MIN_TOKENS`` vocabulary
tokens are dropped. Every tenth document (after a seeded shuffle) is held out; the
training documents come in the shuffled order (the man pages' path order would feed
online learners one package's pages at a time).

The held-out measure is **document completion** (:func:`completion_log_likelihood`),
the same evaluator for every tool: each held-out document's tokens are split in two
halves at random (seeded); the document's topic proportions are folded in from the
first half with the tool's topic-word distributions held fixed, and the second half is
scored, log p(w) = log sum_k theta_k phi_kw, averaged over its tokens.

The corpus depends on the man pages installed, so the benchmark records its size and a
hash of its counts beside every figure.
"""

import gzip
import hashlib
import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp

MAN_ROOT = Path("/usr/share/man")
MIN_DF = 5
MAX_DF_FRACTION = 0.5
MIN_TOKENS = 20
HELD_OUT_EVERY = 10
MAX_BYTES = 2 << 20  # a man page larger than this (uncompressed) is cut there
SEED = 0

_COMMENT = re.compile(r"^[.']\s*\\\"[^\n]*$", re.MULTILINE)  # .\" comment lines
_REQUEST = re.compile(r"^[.']\s*\S+[ \t]*([^\n]*)$", re.MULTILINE)  # .XX arguments
_ESCAPE = re.compile(r"\\(?:f(?:\[[^\]]*\]|\(..|.)|\(..|\*(?:\(..|\[[^\]]*\]|.)|.)")
_WORD = re.compile(r"[a-z]{3,}")


def man_files(root=MAN_ROOT):
    """Sorted paths of the English man pages (``man1`` ... ``man9`` sections only)."""
    return sorted(
        p
        for p in root.glob("man*/*.gz")
        if p.parent.name[3:].isdigit() and p.is_file() and not p.is_symlink()
    )


def words_of(path):
    """The words of one man page: troff stripped, lower case, >= 3 letters."""
    with gzip.open(path, "rb") as f:
        raw = f.read(MAX_BYTES)
    text = raw.decode("utf-8", errors="replace")
    text = _COMMENT.sub("", text)
    # a request line such as ".SH NAME" or ".B word" keeps its arguments as text
    text = _REQUEST.sub(lambda m: m.group(1), text)
    text = _ESCAPE.sub(" ", text)
    return _WORD.findall(text.lower())


def build(max_docs=None, root=MAN_ROOT):
    """``(X_train, X_test, vocabulary)``: CSR count matrices (float64) and the words.

    ``max_docs`` keeps only the first that many man pages (a smaller corpus)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    files = man_files(root)[:max_docs]
    if not files:
        raise FileNotFoundError(f"no man pages under {root}/man*/")
    docs = [[w for w in words_of(p) if w not in ENGLISH_STOP_WORDS] for p in files]
    order = np.random.default_rng(SEED).permutation(len(docs))
    test_set = set(order[::HELD_OUT_EVERY].tolist())
    df = {}
    n_train = 0
    for i, doc in enumerate(docs):
        if i in test_set:
            continue
        n_train += 1
        for w in set(doc):
            df[w] = df.get(w, 0) + 1
    vocabulary = sorted(
        w for w, n in df.items() if n >= MIN_DF and n <= MAX_DF_FRACTION * n_train
    )
    index = {w: j for j, w in enumerate(vocabulary)}
    train, test = [], []
    for i in order.tolist():  # training documents in a seeded random order
        ids = [index[w] for w in docs[i] if w in index]
        if len(ids) < MIN_TOKENS:
            continue
        (test if i in test_set else train).append(
            np.bincount(ids, minlength=len(index))
        )
    to_csr = lambda rows: sp.csr_matrix(np.vstack(rows).astype(np.float64))  # noqa: E731
    return to_csr(train), to_csr(test), vocabulary


def fingerprint(X):
    """A short hash of a CSR count matrix (which corpus a figure was measured on)."""
    h = hashlib.sha256()
    for a in (X.indptr, X.indices, X.data):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


def split_halves(X_test, seed=SEED):
    """``(observed, scored)``: each held-out document's tokens split in two at random.

    The tokens of a document are shuffled (one seeded generator, documents in order)
    and the first ``n // 2`` are observed, the rest scored; both come back as CSR
    count matrices of X_test's shape."""
    rng = np.random.default_rng(seed)
    X_test = sp.csr_matrix(X_test)
    obs_rows, score_rows = [], []
    for d in range(X_test.shape[0]):
        lo, hi = X_test.indptr[d], X_test.indptr[d + 1]
        tokens = np.repeat(X_test.indices[lo:hi], X_test.data[lo:hi].astype(np.int64))
        rng.shuffle(tokens)
        half = tokens.size // 2
        obs_rows.append(np.bincount(tokens[:half], minlength=X_test.shape[1]))
        score_rows.append(np.bincount(tokens[half:], minlength=X_test.shape[1]))
    as_csr = lambda rows: sp.csr_matrix(np.vstack(rows).astype(np.float64))  # noqa: E731
    return as_csr(obs_rows), as_csr(score_rows)


def completion_log_likelihood(topic_word, observed, scored, alpha, n_iter=100):
    """Held-out log-likelihood per scored token (document completion).

    ``topic_word`` (K, V): each tool's topics, normalized here to distributions phi.
    For each document theta is folded in from ``observed`` by ``n_iter`` fixed-point
    steps theta_k <- (alpha + sum_w n_w r_wk) / (K alpha + n), r_wk proportional to
    theta_k phi_kw, from the uniform theta; then the mean over ``scored`` tokens of
    log sum_k theta_k phi_kw is returned."""
    phi = np.asarray(topic_word, dtype=np.float64)
    phi = phi / phi.sum(axis=1, keepdims=True)
    phi = np.maximum(phi, 1e-300)
    return _completion(
        np.ascontiguousarray(phi.T),
        observed.indptr.astype(np.int64),
        observed.indices.astype(np.int64),
        observed.data,
        scored.indptr.astype(np.int64),
        scored.indices.astype(np.int64),
        scored.data,
        float(alpha),
        int(n_iter),
    )


_KERNEL = None


def _completion(*args):
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.njit(parallel=True, cache=False)
        def kernel(phi_t, o_ptr, o_idx, o_cnt, s_ptr, s_idx, s_cnt, alpha, n_iter):
            n_docs = o_ptr.shape[0] - 1
            K = phi_t.shape[1]
            ll = np.zeros(n_docs)
            tokens = np.zeros(n_docs)
            for d in numba.prange(n_docs):
                theta = np.full(K, 1.0 / K)
                acc = np.empty(K)
                n_obs = 0.0
                for i in range(o_ptr[d], o_ptr[d + 1]):
                    n_obs += o_cnt[i]
                for _ in range(n_iter):
                    acc[:] = 0.0
                    for i in range(o_ptr[d], o_ptr[d + 1]):
                        row = phi_t[o_idx[i]]
                        z = 0.0
                        for k in range(K):
                            z += theta[k] * row[k]
                        c = o_cnt[i] / z
                        for k in range(K):
                            acc[k] += c * theta[k] * row[k]
                    for k in range(K):
                        theta[k] = (alpha + acc[k]) / (K * alpha + n_obs)
                for i in range(s_ptr[d], s_ptr[d + 1]):
                    row = phi_t[s_idx[i]]
                    p = 0.0
                    for k in range(K):
                        p += theta[k] * row[k]
                    ll[d] += s_cnt[i] * np.log(p)
                    tokens[d] += s_cnt[i]
            return ll.sum() / tokens.sum()

        _KERNEL = kernel
    return _KERNEL(*args)


def main(argv=None):
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-docs", type=int, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    X_train, X_test, vocabulary = build(args.max_docs)
    print(
        f"{X_train.shape[0]} training and {X_test.shape[0]} held-out documents, "
        f"{len(vocabulary)} words, {int(X_train.sum())} + {int(X_test.sum())} tokens, "
        f"hash {fingerprint(X_train)} ({time.perf_counter() - start:.1f} s)"
    )


if __name__ == "__main__":
    main()
