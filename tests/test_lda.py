"""LatentDirichletAllocation: kernels against references, parity with scikit-learn,
invariants, API and bad input."""

import io
import pickle
import subprocess
import sys
from contextlib import redirect_stdout

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import digamma as scipy_digamma
from sklearn import decomposition as sk_decomposition
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastvi import LatentDirichletAllocation
from fastvi import lda as lda_mod
from fastvi.kernels import lda as kernels
from fastvi.kernels._config import jit
from fastvi.lda import _topic_bound, e_step_stats

from . import reference_lda as ref

FITTED = ["components_", "exp_dirichlet_component_"]


def corpus(n_docs=60, n_words=40, n_topics=5, doc_len=30, seed=0, empty=(3,)):
    """Counts drawn from the LDA generative process (a few empty documents)."""
    rng = np.random.default_rng(seed)
    topics = rng.dirichlet(np.full(n_words, 0.3), n_topics)
    theta = rng.dirichlet(np.full(n_topics, 0.5), n_docs)
    lengths = rng.poisson(doc_len, n_docs)
    X = rng.multinomial(lengths, theta @ topics).astype(np.float64)
    X[list(empty)] = 0.0
    return X


def fit_both(X, **params):
    ours = LatentDirichletAllocation(**params).fit(X)
    theirs = sk_decomposition.LatentDirichletAllocation(**params).fit(X)
    return ours, theirs


def assert_same_fit(ours, theirs, X, rtol=1e-6):
    assert_allclose(ours.components_, theirs.components_, rtol=rtol)
    # d log E[beta] = psi'(lambda) d lambda: a relative difference of lambda is
    # amplified about 1 / lambda times for the small pseudo-counts
    assert_allclose(
        ours.exp_dirichlet_component_, theirs.exp_dirichlet_component_, rtol=10 * rtol
    )
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.n_batch_iter_ == theirs.n_batch_iter_
    assert ours.doc_topic_prior_ == theirs.doc_topic_prior_
    assert ours.topic_word_prior_ == theirs.topic_word_prior_
    # the target is 0.1 %; the two agree far closer
    assert_allclose(ours.bound_, theirs.bound_, rtol=1e-6)
    assert_allclose(ours.transform(X), theirs.transform(X), rtol=1e-5, atol=1e-7)
    assert_allclose(ours.score(X), theirs.score(X), rtol=1e-6)
    assert_allclose(ours.perplexity(X), theirs.perplexity(X), rtol=1e-6)


# ------------------------------------------------------------------- digamma
@jit
def _digamma_each(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = kernels.digamma(x[i])
    return out


@jit
def _digamma_array(x):
    out = np.empty_like(x)
    kernels.digamma_array(x, out, x.size)
    return out


def test_digamma_within_1e_12_of_scipy():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            10.0 ** rng.uniform(-300, 300, 20_000),
            10.0 ** rng.uniform(-8, 8, 20_000),
            rng.uniform(0.0, 20.0, 20_000),
            kernels.PSI_ROOT + rng.uniform(-0.2, 0.2, 20_000),
            [kernels.PSI_ROOT, 1.0, 2.0, 7.999999999, 8.0, 8.000000001, 1e-300, 1e308],
        ]
    )
    want = scipy_digamma(x)
    for got in (_digamma_array(x), _digamma_each(x)):
        assert_allclose(got, want, rtol=1e-12, atol=0)


def test_digamma_edges():
    x = np.array([0.0, np.inf, np.nan])
    for got in (_digamma_array(x), _digamma_each(x)):
        assert got[0] == -np.inf
        assert got[1] == np.inf
        assert np.isnan(got[2])


def test_kernels_load_from_cache_in_a_fresh_process():
    # numba must be able to cache functions that call scipy's psi by symbol name
    X = corpus()
    for method in ("batch", "online"):
        LatentDirichletAllocation(
            n_components=3,
            max_iter=1,
            learning_method=method,
            batch_size=8,
            random_state=0,
        ).fit(X)
    code = (
        "import numpy as np, scipy.sparse as sp, warnings\n"
        "warnings.simplefilter('error')\n"
        "from fastvi import LatentDirichletAllocation as L\n"
        "from fastvi.kernels import lda as k\n"
        "X = sp.random(20, 30, density=0.3, random_state=0, format='csr') * 5\n"
        "for m in ('batch', 'online'):\n"
        "    L(n_components=3, max_iter=1, learning_method=m, batch_size=8,\n"
        "      random_state=0).fit(X)\n"
        "for f in (k.e_step_blocks, k.topic_word_blocks,\n"
        "          k.dirichlet_expectation_blocks, k.dirichlet_expectation_rows_blocks,\n"
        "          k.doc_terms_blocks, k.topic_terms_blocks):\n"
        "    assert f.stats.cache_hits and not f.stats.cache_misses, f.stats\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------- kernels
def _random_problem(rng, N, V, K, density=0.3, empty_docs=()):
    X = sp.random(N, V, density=density, random_state=rng, format="csr")
    X.data = np.ceil(X.data * 5.0)
    X = X.tolil()
    for d in empty_docs:
        X[d, :] = 0
    X = X.tocsr()
    X.eliminate_zeros()
    indptr = X.indptr.astype(np.int64)
    indices = X.indices.astype(np.int32)
    data = X.data.astype(np.float64)
    lam_t = rng.gamma(2.0, 1.0, (V, K)) + 0.05
    exp_beta_t = ref.dirichlet_expectation_t(lam_t)
    gamma0 = rng.gamma(100.0, 0.01, (N, K))
    return indptr, indices, data, lam_t, exp_beta_t, gamma0


KERNEL_CASES = [
    # (N, V, K, block, empty docs): one doc, one topic, partial blocks, empty docs
    (1, 5, 1, 16, ()),
    (1, 7, 3, 16, ()),
    (5, 6, 1, 2, (1,)),
    (37, 30, 4, 16, (0, 36)),
    (50, 300, 7, 8, (10,)),
]


@pytest.mark.parametrize("N, V, K, block, empty", KERNEL_CASES)
@pytest.mark.parametrize("max_iter", [0, 1, 100])
def test_e_step_matches_reference(N, V, K, block, empty, max_iter):
    rng = np.random.default_rng(N + V + K)
    indptr, indices, data, _, exp_beta_t, gamma0 = _random_problem(
        rng, N, V, K, empty_docs=empty
    )
    alpha, tol, eps = 0.1, 1e-4, np.finfo(np.float64).eps
    g_ref, et_ref, r_ref, ll_ref = ref.e_step(
        indptr, indices, data, exp_beta_t, gamma0, alpha, max_iter, tol, eps
    )
    gamma = gamma0.copy()
    exp_theta = np.full_like(gamma, np.nan)
    ratio = np.full_like(data, np.nan)
    ll = lda_mod._e_step_kernel(
        indptr, indices, data, exp_beta_t, gamma, exp_theta, alpha, max_iter, tol,
        eps, ratio, True, block=block,
    )  # fmt: skip
    assert ll.shape == (-(-N // block),)
    assert_allclose(gamma, g_ref, rtol=1e-11)
    assert_allclose(exp_theta, et_ref, rtol=1e-11)
    assert_allclose(ratio, r_ref, rtol=1e-11)
    blocks = [ll_ref[b : b + block].sum() for b in range(0, N, block)]
    assert_allclose(ll, blocks, rtol=1e-11, atol=1e-12)
    for d in empty:  # a document without words gets the prior
        if max_iter >= 1:
            assert_allclose(gamma[d], alpha, rtol=1e-15)


def test_e_step_with_topics_at_the_prior_matches_reference():
    # small alpha and many topics: most gamma_dk settle at alpha exactly, which is
    # when the kernel leaves those topics out of its sweeps
    rng = np.random.default_rng(7)
    indptr, indices, data, _, _, gamma0 = _random_problem(rng, 40, 200, 30, 0.4)
    lam_t = rng.gamma(0.3, 1.0, (200, 30)) + 0.01
    exp_beta_t = ref.dirichlet_expectation_t(lam_t)
    alpha, tol, eps = 0.01, 1e-9, np.finfo(np.float64).eps
    g_ref, et_ref, r_ref, ll_ref = ref.e_step(
        indptr, indices, data, exp_beta_t, gamma0, alpha, 200, tol, eps
    )
    gamma = gamma0.copy()
    exp_theta = np.empty_like(gamma)
    ratio = np.empty_like(data)
    ll = lda_mod._e_step_kernel(
        indptr, indices, data, exp_beta_t, gamma, exp_theta, alpha, 200, tol, eps,
        ratio, True, block=16,
    )  # fmt: skip
    assert np.mean(g_ref == alpha) > 0.3  # the case under test really occurs
    assert_array_equal(gamma == alpha, g_ref == alpha)
    assert_allclose(gamma, g_ref, rtol=1e-10)
    assert_allclose(exp_theta, et_ref, rtol=1e-10)
    assert_allclose(ratio, r_ref, rtol=1e-10)
    assert_allclose(ll.sum(), ll_ref.sum(), rtol=1e-12)


def test_csc_order_matches_reference():
    rng = np.random.default_rng(1)
    indptr, indices, *_ = _random_problem(rng, 40, 25, 2, empty_docs=(5,))
    for got, want in zip(
        kernels.csc_order(indptr, indices, 25), ref.csc_order(indptr, indices, 25)
    ):
        assert_array_equal(got, want)
    # a word that never occurs has an empty range
    col_ptr, _, _ = kernels.csc_order(indptr, indices, 30)
    assert_array_equal(col_ptr[26:], col_ptr[25])


@pytest.mark.parametrize("N, V, K, block, empty", KERNEL_CASES)
@pytest.mark.parametrize("decay, weight, scale", [(0.0, 1.0, 1.0), (0.7, 0.3, 12.5)])
def test_topic_word_update_matches_reference(
    N, V, K, block, empty, decay, weight, scale
):
    rng = np.random.default_rng(N * V)
    indptr, indices, data, lam_t, exp_beta_t, gamma0 = _random_problem(
        rng, N, V, K, empty_docs=empty
    )
    _, exp_theta, ratio, _ = ref.e_step(
        indptr, indices, data, exp_beta_t, gamma0, 0.1, 5, 1e-3, 1e-16
    )
    want = ref.topic_word_update(
        indptr, indices, ratio, exp_theta, exp_beta_t, lam_t, decay, weight, 0.2, scale
    )
    col_ptr, entry, doc = kernels.csc_order(indptr, indices, V)
    got = lam_t.copy()
    sums = lda_mod._topic_word_update(
        col_ptr, entry, doc, ratio, exp_theta, exp_beta_t, got, decay, weight, 0.2,
        scale, block=block,
    )  # fmt: skip
    assert_allclose(got, want, rtol=1e-12)
    assert sums.shape == (-(-V // block), K)
    assert_allclose(sums.sum(axis=0), want.sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("V, K, block", [(1, 1, 4), (9, 3, 4), (300, 10, 256)])
def test_dirichlet_expectation_matches_reference(V, K, block):
    rng = np.random.default_rng(V)
    lam_t = np.exp(rng.uniform(-5, 8, (V, K)))
    out = np.full_like(lam_t, np.nan)
    psi_sums = scipy_digamma(lam_t.sum(axis=0))
    lda_mod._dirichlet_expectation(lam_t, psi_sums, out, block=block)
    assert_allclose(out, ref.dirichlet_expectation_t(lam_t), rtol=1e-12)


@pytest.mark.parametrize("V, K, block", [(1, 1, 4), (9, 3, 4), (300, 10, 256)])
def test_dirichlet_expectation_rows_touch_only_those_rows(V, K, block):
    rng = np.random.default_rng(V + 1)
    lam_t = np.exp(rng.uniform(-5, 8, (V, K)))
    words = np.flatnonzero(rng.random(V) < 0.5).astype(np.int64)
    out = np.full_like(lam_t, np.nan)
    psi_sums = scipy_digamma(lam_t.sum(axis=0))
    lda_mod._dirichlet_expectation(lam_t, psi_sums, out, words, block=block)
    assert_allclose(out[words], ref.dirichlet_expectation_t(lam_t)[words], rtol=1e-12)
    others = np.setdiff1d(np.arange(V), words)
    assert np.isnan(out[others]).all()


@pytest.mark.parametrize("N, K, block", [(1, 1, 16), (5, 3, 2), (37, 7, 16)])
def test_doc_dirichlet_terms_match_reference(N, K, block):
    rng = np.random.default_rng(N)
    gamma = rng.gamma(0.5, 2.0, (N, K)) + 0.01
    gamma[0, 0] = 0.1  # a topic at the prior
    got = lda_mod._doc_terms(gamma, 0.1, block=block)
    assert got.shape == (-(-N // block),)
    want = [ref.dirichlet_terms(0.1, gamma[b : b + block]) for b in range(0, N, block)]
    assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("V, K, block", [(1, 1, 4), (9, 3, 4), (300, 10, 256)])
def test_topic_dirichlet_terms_match_reference(V, K, block):
    from scipy.special import gammaln

    rng = np.random.default_rng(V)
    lam_t = np.exp(rng.uniform(-5, 8, (V, K)))
    sums = lam_t.sum(axis=0)
    got = lda_mod._topic_terms(lam_t, 0.05, scipy_digamma(sums), block=block)
    assert got.shape == (-(-V // block),)
    per_topic = np.sum(gammaln(0.05 * V) - gammaln(sums))
    # single terms reach ~1e4 and cancel: compare on the scale of the terms
    scale = np.abs(gammaln(lam_t)).sum()
    want = ref.dirichlet_terms(0.05, lam_t.T)
    assert_allclose(got.sum() + per_topic, want, rtol=0, atol=1e-13 * scale)


# ------------------------------------------------------- parity with scikit-learn
@pytest.mark.parametrize("learning_method", ["batch", "online"])
@pytest.mark.parametrize("evaluate_every", [-1, 2])
def test_same_numbers_as_scikit_learn(learning_method, evaluate_every):
    X = corpus()
    params = dict(
        n_components=5,
        learning_method=learning_method,
        evaluate_every=evaluate_every,
        max_iter=8,
        batch_size=16,
        random_state=0,
    )
    ours, theirs = fit_both(X, **params)
    assert_same_fit(ours, theirs, X)


def test_same_numbers_with_explicit_settings_and_sparse_input():
    X = corpus(seed=1)
    params = dict(
        n_components=4,
        doc_topic_prior=0.3,
        topic_word_prior=0.05,
        max_doc_update_iter=7,
        mean_change_tol=1e-4,
        max_iter=5,
        random_state=3,
    )
    for fmt in (sp.csr_matrix, sp.csc_matrix, np.asarray):
        ours, theirs = fit_both(fmt(X), **params)
        assert_same_fit(ours, theirs, X)


def test_stops_on_perplexity_like_scikit_learn():
    X = corpus(seed=2)
    params = dict(
        n_components=3, evaluate_every=1, perp_tol=5.0, max_iter=50, random_state=0
    )
    ours, theirs = fit_both(X, **params)
    assert theirs.n_iter_ < 49  # the tolerance really stopped it early
    assert_same_fit(ours, theirs, X)


def test_partial_fit_same_numbers_as_scikit_learn():
    X = corpus(seed=4)
    params = dict(n_components=5, batch_size=20, total_samples=500, random_state=0)
    ours = LatentDirichletAllocation(**params)
    theirs = sk_decomposition.LatentDirichletAllocation(**params)
    for _ in range(3):
        ours.partial_fit(X)
        theirs.partial_fit(X)
    assert_allclose(ours.components_, theirs.components_, rtol=1e-6)
    assert_allclose(
        ours.exp_dirichlet_component_, theirs.exp_dirichlet_component_, rtol=1e-5
    )
    assert ours.n_batch_iter_ == theirs.n_batch_iter_
    assert_allclose(
        ours.perplexity(X, sub_sampling=True),
        theirs.perplexity(X, sub_sampling=True),
        rtol=1e-6,
    )


# scikit-learn's float32 reference fit (its _lda.py, np.dot of float32 rows through
# OpenBLAS) now and then raises a spurious "invalid value" flag on this machine (seen
# once in ~10 runs, never reproduced alone); our fit's values are compared below, so a
# NaN of ours still fails the test
@pytest.mark.filterwarnings("ignore:invalid value encountered in dot:RuntimeWarning")
def test_float32_input_stays_float32():
    X = corpus().astype(np.float32)
    ours, theirs = fit_both(X, n_components=5, max_iter=5, random_state=0)
    for name in FITTED:
        assert getattr(ours, name).dtype == np.float32
        # scikit-learn computes in float32 throughout; we round the topics to float32
        assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=2e-3)
    assert ours.transform(X).dtype == np.float32
    assert ours.transform(X.astype(np.float64)).dtype == np.float32
    assert_allclose(ours.bound_, theirs.bound_, rtol=1e-4)


def test_max_iter_zero_only_initializes():
    X = corpus()
    ours, theirs = fit_both(X, n_components=4, max_iter=0, random_state=5)
    # the same random draws, bit for bit
    assert_array_equal(ours.components_, theirs.components_)
    # scikit-learn's digamma is an approximation good to about 1e-9 (AS 103)
    assert_allclose(
        ours.exp_dirichlet_component_, theirs.exp_dirichlet_component_, rtol=1e-8
    )
    assert_same_fit(ours, theirs, X)


def test_perplexity_history_is_what_scikit_learn_prints():
    X = corpus(seed=3)
    params = dict(n_components=4, max_iter=6, evaluate_every=2, random_state=0)
    ours = LatentDirichletAllocation(**params).fit(X)
    out = io.StringIO()
    with redirect_stdout(out):
        sk_decomposition.LatentDirichletAllocation(verbose=1, **params).fit(X)
    printed = [
        float(line.split("perplexity: ")[1])
        for line in out.getvalue().splitlines()
        if "perplexity" in line
    ]
    assert len(printed) == len(ours.perplexity_history_) == 3
    assert_allclose(ours.perplexity_history_, printed, rtol=0, atol=1e-4)
    no_eval = LatentDirichletAllocation(n_components=4, max_iter=2).fit(X)
    assert no_eval.perplexity_history_ == []


# ------------------------------------------------------ the pure block E-step
def test_e_step_stats_of_blocks_sum_to_the_whole():
    X = sp.csr_matrix(corpus(n_docs=90, seed=6))
    est = LatentDirichletAllocation(n_components=5, max_iter=3, random_state=0).fit(X)
    args = (est.exp_dirichlet_component_, est.doc_topic_prior_)
    whole = e_step_stats(X, *args, compute_bound=True)
    parts = [e_step_stats(X[a:b], *args, compute_bound=True) for a, b in
             [(0, 17), (17, 60), (60, 90)]]  # fmt: skip
    assert_allclose(sum(p.sstats for p in parts), whole.sstats, rtol=1e-12, atol=1e-300)
    # each document's result does not depend on its block
    assert_array_equal(np.vstack([p.gamma for p in parts]), whole.gamma)
    assert_allclose(sum(p.doc_bound for p in parts), whole.doc_bound, rtol=1e-12)
    assert sum(p.n_tokens for p in parts) == whole.n_tokens == X.sum()
    # the documents' part plus the topics' part is the estimator's score
    lam_t = np.ascontiguousarray(est.components_.T)
    topic_part = _topic_bound(lam_t, est.topic_word_prior_)
    assert_allclose(whole.doc_bound + topic_part, est.score(X), rtol=1e-12)
    # and the statistic is phi weighted by the counts: its total is the word count
    assert_allclose(whole.sstats.sum(), X.sum(), rtol=1e-12)
    assert np.isnan(e_step_stats(X, *args).doc_bound)


def test_e_step_stats_give_the_batch_round():
    # one batch round of fit = eta + the statistic from the initial topics, with the
    # initial document values drawn from the same stream as scikit-learn draws them
    X = corpus(seed=7)
    K, V = 4, X.shape[1]
    start = LatentDirichletAllocation(n_components=K, max_iter=0, random_state=2).fit(X)
    one = LatentDirichletAllocation(n_components=K, max_iter=1, random_state=2).fit(X)
    rs = np.random.RandomState(2)
    rs.gamma(100.0, 0.01, (K, V))  # the initial topics
    gamma_init = rs.gamma(100.0, 0.01, (X.shape[0], K))
    stats = e_step_stats(
        X, start.exp_dirichlet_component_, start.doc_topic_prior_,
        gamma_init=gamma_init,
    )  # fmt: skip
    assert_allclose(one.components_, start.topic_word_prior_ + stats.sstats, rtol=1e-12)


def test_e_step_stats_bad_input():
    est = LatentDirichletAllocation(n_components=3, max_iter=1).fit(corpus())
    args = (est.exp_dirichlet_component_, 0.1)
    with pytest.raises(ValueError, match="Negative values"):
        e_step_stats(-corpus(), *args)
    with pytest.raises(ValueError, match="has 30 features"):
        e_step_stats(corpus(n_words=30), *args)
    with pytest.raises(ValueError, match="gamma_init has shape"):
        e_step_stats(corpus(), *args, gamma_init=np.ones((2, 3)))


# ----------------------------------------------------------------- invariants
def test_bitwise_identical_for_any_thread_count():
    # several document blocks and word blocks, so the parallel loops really split
    X = corpus(n_docs=150, n_words=700, n_topics=6, doc_len=60, seed=5)
    for method in ("batch", "online"):
        fits = [
            LatentDirichletAllocation(
                n_components=6,
                learning_method=method,
                batch_size=64,
                max_iter=3,
                evaluate_every=1,
                random_state=0,
                n_jobs=n_jobs,
            ).fit(X)
            for n_jobs in (1, 2, None)
        ]
        for other in fits[1:]:
            for name in FITTED:
                assert_array_equal(getattr(fits[0], name), getattr(other, name))
            assert fits[0].bound_ == other.bound_
            assert_array_equal(fits[0].transform(X), other.transform(X))


def test_empty_documents_get_the_prior():
    X = corpus()
    est = LatentDirichletAllocation(n_components=5, random_state=0).fit(X)
    rows = np.zeros((2, X.shape[1]))
    assert_allclose(est.transform(rows, normalize=False), est.doc_topic_prior_)
    assert_allclose(est.transform(rows), 1.0 / 5)


def test_fit_transform_equals_fit_then_transform():
    X = corpus()
    a = LatentDirichletAllocation(n_components=4, random_state=0)
    b = LatentDirichletAllocation(n_components=4, random_state=0)
    assert_array_equal(a.fit_transform(X), b.fit(X).transform(X))


def test_thread_setting_restored_after_fit_and_after_error():
    before = numba.get_num_threads()
    LatentDirichletAllocation(n_components=2, n_jobs=1, max_iter=2).fit(corpus())
    assert numba.get_num_threads() == before
    with pytest.raises(ValueError, match="n_jobs == 0"):
        LatentDirichletAllocation(n_components=2, n_jobs=0).fit(corpus())
    assert numba.get_num_threads() == before


def test_verbose_output_as_scikit_learn():
    X = corpus()
    outputs = []
    for cls in (LatentDirichletAllocation, sk_decomposition.LatentDirichletAllocation):
        out = io.StringIO()
        with redirect_stdout(out):
            cls(n_components=3, max_iter=3, evaluate_every=2, verbose=1).fit(X)
        outputs.append(out.getvalue())
    lines = [text.splitlines() for text in outputs]
    assert lines[0][0] == lines[1][0] == "iteration: 1 of max_iter: 3"
    assert lines[0][1].startswith("iteration: 2 of max_iter: 3, perplexity: ")
    assert len(lines[0]) == len(lines[1]) == 3


def test_pickle_round_trip():
    X = corpus()
    est = LatentDirichletAllocation(n_components=3, random_state=0).fit(X)
    again = pickle.loads(pickle.dumps(est))
    assert_array_equal(again.transform(X), est.transform(X))


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "X, message",
    [
        (
            -np.ones((3, 4)),
            "Negative values in data passed to LatentDirichletAllocation",
        ),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "Input X contains NaN"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), "Input X contains infinity"),
        (np.zeros((0, 4)), "0 sample"),
        (np.zeros((4, 0)), "0 feature"),
        (np.arange(10.0), "Expected 2D array, got 1D array"),
    ],
)
def test_bad_input_raises_clear_error(X, message):
    for method in ("fit", "partial_fit"):
        est = LatentDirichletAllocation(n_components=2)
        with pytest.raises(ValueError, match=message):
            getattr(est, method)(X)
        assert not hasattr(est, "components_")


@pytest.mark.parametrize("learning_method", ["batch", "online"])
def test_all_zero_corpus_is_refused_not_a_nan_bound(learning_method):
    # scikit-learn fits it and reports bound_ = nan (0 / 0 words, with a
    # RuntimeWarning); fastvi refuses: no words, no perplexity, nothing to learn
    est = LatentDirichletAllocation(n_components=2, learning_method=learning_method)
    with pytest.raises(ValueError, match="X has no words"):
        est.fit(np.zeros((5, 4)))
    assert not hasattr(est, "components_")


def test_all_zero_documents_perplexity_and_partial_fit():
    X = corpus()
    est = LatentDirichletAllocation(n_components=2, max_iter=2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="no words.*perplexity.*undefined"):
        est.perplexity(np.zeros((3, X.shape[1])))
    # a minibatch of empty documents is a valid online step: finite topics
    est.partial_fit(np.zeros((3, X.shape[1])))
    assert np.all(np.isfinite(est.components_))


@pytest.mark.parametrize("learning_method", ["batch", "online"])
@pytest.mark.parametrize("dtype, scale", [(np.float64, 1e307), (np.float32, 1e36)])
def test_counts_that_overflow_are_refused(learning_method, dtype, scale):
    X = (corpus(n_docs=20, n_words=10) * scale).astype(dtype)
    est = LatentDirichletAllocation(
        n_components=3, learning_method=learning_method, max_iter=3, random_state=0
    )
    name = np.dtype(dtype).name
    with pytest.raises(ValueError, match=f"sum to .*overflow {name} for totals above"):
        est.fit(X)
    assert not hasattr(est, "components_")
    with pytest.raises(ValueError, match="Rescale the counts"):
        est.partial_fit(X)
    assert not hasattr(est, "components_")
    fitted = LatentDirichletAllocation(n_components=3, max_iter=2, random_state=0)
    fitted.fit(corpus(n_docs=20, n_words=10).astype(dtype))
    before = fitted.components_.copy()
    with pytest.raises(ValueError, match="Rescale the counts"):
        fitted.partial_fit(X)
    assert_array_equal(fitted.components_, before)


def test_score_refuses_counts_that_overflow_as_perplexity_does():
    X = corpus(n_docs=20, n_words=10)
    est = LatentDirichletAllocation(n_components=3, max_iter=2, random_state=0)
    est.fit(X)
    for method in ("score", "perplexity"):
        with pytest.raises(
            ValueError,
            match="sum to .*overflow float64.*Rescale the counts",
        ):
            getattr(est, method)(X * 1e306)
    assert np.isfinite(est.score(X * 1e300))
    # documents without words: a score (the topics' part of the bound) as before
    assert np.isfinite(est.score(np.zeros_like(X)))


@pytest.mark.parametrize("prior", ["doc_topic_prior", "topic_word_prior"])
@pytest.mark.parametrize("learning_method", ["batch", "online", "scvb0"])
def test_a_prior_of_zero_is_refused(prior, learning_method):
    # scikit-learn accepts 0 and scores NaN: Dirichlet(0) is improper
    for method in ("fit", "partial_fit"):
        est = LatentDirichletAllocation(
            n_components=3, learning_method=learning_method, **{prior: 0.0}
        )
        with pytest.raises(ValueError, match=f"'{prior}' parameter .*\\(0.0, 1.0\\]"):
            getattr(est, method)(corpus())
    LatentDirichletAllocation(n_components=3, max_iter=2, **{prior: 1e-3}).fit(corpus())


def test_large_counts_below_the_limit_give_finite_results():
    X = corpus(n_docs=20, n_words=10)
    big = LatentDirichletAllocation(n_components=3, max_iter=5, random_state=0)
    big.fit(X * 1e300)
    assert np.all(np.isfinite(big.components_)) and np.isfinite(big.bound_)
    assert big.bound_ > 1.0


def test_nonfinite_topics_are_never_kept():
    from fastvi.lda import _check_finite_fit

    with pytest.raises(ValueError, match="overflowed"):
        _check_finite_fit(np.array([[1.0, np.inf]]), 1.0)
    with pytest.raises(ValueError, match="overflowed"):
        _check_finite_fit(np.ones((2, 2)), float("nan"))
    _check_finite_fit(np.ones((2, 2)), 3.0)


def test_negative_sparse_counts():
    X = sp.csr_matrix(np.array([[1.0, -1.0], [0.0, 2.0]]))
    with pytest.raises(ValueError, match="Negative values in data passed to"):
        LatentDirichletAllocation(n_components=2).fit(X)


def test_csr_with_indices_past_the_vocabulary_is_refused():
    X = sp.csr_matrix(corpus())
    est = LatentDirichletAllocation(n_components=2, max_iter=2).fit(X)
    bad = X.copy()
    bad.indices[3] = 10**6  # scipy does not check; the kernels would index by it
    for learning_method in ("batch", "online", "scvb0"):
        with pytest.raises(ValueError, match="not a valid CSR matrix"):
            LatentDirichletAllocation(learning_method=learning_method).fit(bad)
    for method in ("transform", "score", "perplexity", "partial_fit"):
        with pytest.raises(ValueError, match="not a valid CSR matrix"):
            getattr(est, method)(bad)


def test_different_vocabulary_size():
    est = LatentDirichletAllocation(n_components=2, max_iter=2).fit(corpus())
    for method in ("transform", "score", "perplexity"):
        with pytest.raises(ValueError, match="X has 30 features"):
            getattr(est, method)(corpus(n_words=30))
    with pytest.raises(ValueError, match="X has 30 features"):
        est.partial_fit(corpus(n_words=30))


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(n_components=0), "'n_components' parameter"),
        (dict(doc_topic_prior=1.5), "'doc_topic_prior' parameter"),
        (dict(topic_word_prior=-0.1), "'topic_word_prior' parameter"),
        (dict(learning_method="stochastic"), "'learning_method' parameter"),
        (dict(learning_offset=0.5), "'learning_offset' parameter"),
        (dict(batch_size=0), "'batch_size' parameter"),
        (dict(max_doc_update_iter=-1), "'max_doc_update_iter' parameter"),
    ],
)
def test_bad_hyperparameters_use_scikit_learn_messages(params, message):
    with pytest.raises(ValueError, match=message):
        LatentDirichletAllocation(**params).fit(corpus())


def test_failed_refit_leaves_previous_fit_intact():
    X = corpus()
    est = LatentDirichletAllocation(n_components=3, random_state=0).fit(X)
    saved = {name: getattr(est, name).copy() for name in FITTED}
    bound = est.bound_
    with pytest.raises(ValueError, match="Negative values"):
        est.fit(-X)
    with pytest.raises(ValueError, match="X has 30 features"):
        est.partial_fit(corpus(n_words=30))
    for name in FITTED:
        assert_array_equal(getattr(est, name), saved[name])
    assert est.bound_ == bound and est.n_features_in_ == X.shape[1]


def test_transform_before_fit():
    with pytest.raises(NotFittedError):
        LatentDirichletAllocation().transform(corpus())


# -------------------------------------------------- scikit-learn's checks
@parametrize_with_checks(
    [LatentDirichletAllocation(n_components=2, max_iter=3)],
    expected_failed_checks=lambda est: {},
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
