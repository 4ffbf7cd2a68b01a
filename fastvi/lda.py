"""Latent Dirichlet allocation by variational Bayes: a drop-in for scikit-learn's.

Same model, parameters, random draws, update order, bound and perplexity as
:class:`sklearn.decomposition.LatentDirichletAllocation`, so a fit gives the same
numbers; the per-document E-step and the topic-word statistics run in parallel Numba
kernels directly on the CSR arrays (``fastvi.kernels.lda``) instead of a Python loop
over documents.

The fit's loop: the stochastic driver
------------------------------------
Every learning method runs its epochs through :mod:`fastvi._stochastic` with
scikit-learn's stop rule: the training perplexity (a separate E-step from ones)
every ``evaluate_every`` epochs (by default never), stopping when it moved by less
than ``perp_tol``, the stopping epoch not counted in ``n_iter_``. The CAVI driver's
bound every round would cost an extra E-step per epoch (about 80% of the epoch's).

Where the documents live
------------------------
A fit reads its documents through :class:`fastvi.rows.Rows`: an in-memory corpus
(views of one CSR matrix), a file read block by block
(:class:`fastvi.batch.io.DocwordRows`, :class:`~fastvi.batch.io.SparseNpzRows`) or a
dask array. A batch round maps the E-step of a block (:func:`_block_stats`: its
statistic, bound terms and word count, which add) over blocks of ``BLOCK_ROWS``
documents and sums them in the fixed tree of ``map_reduce``; online rounds take the
minibatches in row order across blocks (:func:`_minibatches`). So out-of-core fits
are bitwise the in-memory fits, in memory bounded by a block, and a corpus of one
block gives the bits of the whole-corpus round. :func:`e_step_stats` is the same
E-step as a public pure function.
"""

from numbers import Real
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.special import digamma, gammaln
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.decomposition import LatentDirichletAllocation as SkLDA
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    check_array,
    check_is_fitted,
    check_non_negative,
    validate_data,
)

from . import _schema
from ._cavi import all_or_nothing
from ._compile import announces
from ._stochastic import StopRule, run
from ._threads import map_chunks, thread_limits
from .persist import SaveMixin
from .rows import Rows, predict_rows, source_rows

__all__ = ["BlockStats", "LatentDirichletAllocation", "e_step_stats"]

# Documents per parallel E-step work item and words per parallel M-step work item.
# Fixed, so no result depends on the number of threads (see fastvi.kernels.lda).
DOC_BLOCK = 16
WORD_BLOCK = 256

# SCVB0: visits of each document's entries before the one that counts, and tau of the
# document-level step (10 + t)^-0.9 (Foulds et al. 2013 use one visit and tau = 10).
# On 7,200 man pages of bench/manpages.py (K = 50) two visits took the held-out
# log-likelihood after 1/2/4 passes to -5.528/-5.455/-5.423 (online VB: -5.522/-5.482/
# -5.462); four visits did better per pass (-5.493/-5.426/-5.398) but not per second,
# and tau = 3 did worse.
_SCVB0_BURN_IN = 2
_SCVB0_TAU = 10.0

# scikit-learn's initial values: Gamma(shape=100, scale=0.01), mean 1, sd 0.1
_INIT_SHAPE = 100.0
_INIT_SCALE = 0.01


def _lda_kernels():
    # imported lazily: ``import fastvi`` must not pull in (or compile) kernels
    from .kernels import lda

    return lda


# The kernels over all blocks, on the fit's threads (fastvi._threads.map_chunks): each
# block writes only its own outputs, and per-block partials are returned for the caller
# to add in block order.
def _e_step_kernel(
    indptr, indices, data, exp_beta_t, gamma, exp_theta, alpha, max_iter, tol, eps,
    ratio, want_ll, block=DOC_BLOCK,
):  # fmt: skip
    """``kernels.lda.e_step_blocks`` over every document; per-block ``ll``."""
    ll = np.empty(-(-gamma.shape[0] // block))
    map_chunks(
        _lda_kernels().e_step_blocks, len(ll), indptr, indices, data, exp_beta_t,
        gamma, exp_theta, alpha, max_iter, tol, eps, block, ratio, want_ll, ll,
    )  # fmt: skip
    return ll


def _topic_word_update(
    col_ptr, entry, doc, ratio, exp_theta, exp_beta_t, lam_t, decay, weight, eta,
    scale, block=WORD_BLOCK,
):  # fmt: skip
    """``kernels.lda.topic_word_blocks`` over every word; per-block sums (n, K)."""
    sums = np.empty((-(-lam_t.shape[0] // block), lam_t.shape[1]))
    map_chunks(
        _lda_kernels().topic_word_blocks, len(sums), col_ptr, entry, doc, ratio,
        exp_theta, exp_beta_t, lam_t, decay, weight, eta, scale, block, sums,
    )  # fmt: skip
    return sums


def _scvb0_docs(indptr, indices, data, lam_t, inv_sums, alpha, burn_in, tau, gam,
                block=DOC_BLOCK):  # fmt: skip
    """``kernels.lda_scvb0.scvb0_doc_blocks`` over every document of a minibatch."""
    from .kernels import lda_scvb0

    n = -(-(indptr.shape[0] - 1) // block)
    map_chunks(
        lda_scvb0.scvb0_doc_blocks, n, indptr, indices, data, lam_t, inv_sums, alpha,
        burn_in, tau, block, gam,
    )  # fmt: skip


def _scvb0_topics(col_ptr, entry, gam, lam_t, decay, weight, eta, scale,
                  block=WORD_BLOCK):  # fmt: skip
    """``kernels.lda_scvb0.scvb0_topic_blocks`` over every word; per-block sums."""
    from .kernels import lda_scvb0

    sums = np.empty((-(-lam_t.shape[0] // block), lam_t.shape[1]))
    map_chunks(
        lda_scvb0.scvb0_topic_blocks, len(sums), col_ptr, entry, gam, lam_t, decay,
        weight, eta, scale, block, sums,
    )  # fmt: skip
    return sums


def _dirichlet_expectation(lam_t, psi_sums, out, words=None, block=WORD_BLOCK):
    """exp E[log beta]^T into ``out``: every row, or only the rows ``words``."""
    kernels = _lda_kernels()
    if words is None:
        n = -(-lam_t.shape[0] // block)
        map_chunks(kernels.dirichlet_expectation_blocks, n, lam_t, psi_sums, block, out)
    else:
        n = -(-words.shape[0] // block)
        map_chunks(
            kernels.dirichlet_expectation_rows_blocks,
            n, lam_t, psi_sums, words, block, out,
        )  # fmt: skip


def _doc_terms(gamma, alpha, block=DOC_BLOCK):
    """``kernels.lda.doc_terms_blocks`` over every row of gamma; per-block sums."""
    out = np.empty(-(-gamma.shape[0] // block))
    map_chunks(_lda_kernels().doc_terms_blocks, len(out), gamma, alpha, block, out)
    return out


def _topic_terms(lam_t, eta, psi_sums, block=WORD_BLOCK):
    """``kernels.lda.topic_terms_blocks`` over every word; per-block sums."""
    out = np.empty(-(-lam_t.shape[0] // block))
    map_chunks(
        _lda_kernels().topic_terms_blocks, len(out), lam_t, eta, psi_sums, block, out
    )
    return out


class _Corpus:
    """A document-word count matrix as the kernels want it (CSR: int64 indptr, int32
    word ids, float64 counts).

    ``entries()`` groups the stored entries by word (computed on first use).
    """

    __slots__ = ("indptr", "indices", "data", "n_docs", "n_words", "_csc")

    def __init__(self, indptr, indices, data, n_words):
        self.indptr = indptr
        self.indices = indices
        self.data = data
        self.n_docs = indptr.shape[0] - 1
        self.n_words = n_words
        self._csc = None

    @classmethod
    def from_matrix(cls, X):
        """From a validated dense array or CSR matrix (duplicates summed)."""
        if not sp.issparse(X):
            X = sp.csr_matrix(X)
        else:
            try:  # scipy's constructors leave indices unchecked: kernels index by them
                X.check_format(full_check=True)
            except ValueError as exc:
                raise ValueError(f"X is not a valid CSR matrix: {exc}") from None
            if not X.has_canonical_format:
                X = X.copy()
                X.sum_duplicates()
        if max(X.shape) >= 2**31:
            raise ValueError(
                f"X has shape {X.shape}; at most 2**31 - 1 documents and words."
            )
        # word ids as int32 (scipy's usual index type: no copy); positions int64
        return cls(
            np.ascontiguousarray(X.indptr, dtype=np.int64),
            np.ascontiguousarray(X.indices, dtype=np.int32),
            np.ascontiguousarray(X.data, dtype=np.float64),
            X.shape[1],
        )

    def rows(self, start, stop):
        """Documents [start, stop) as a corpus (views of the entry arrays)."""
        p0, p1 = self.indptr[start], self.indptr[stop]
        return _Corpus(
            self.indptr[start : stop + 1] - p0,
            self.indices[p0:p1],
            self.data[p0:p1],
            self.n_words,
        )

    def entries(self):
        if self._csc is None:
            self._csc = _lda_kernels().csc_order(
                self.indptr, self.indices, self.n_words
            )
        return self._csc

    def drop_entries(self):
        """Free the grouping computed by :meth:`entries`."""
        self._csc = None

    def words(self):
        """The word ids that occur in these documents (int64, ascending)."""
        col_ptr = self.entries()[0]
        return np.flatnonzero(col_ptr[1:] != col_ptr[:-1]).astype(np.int64)

    def word_count(self):
        with np.errstate(over="ignore"):  # inf: the callers refuse such counts
            return float(self.data.sum())


class _Topics:
    """Working copy of the topic factors, transposed to (V, K) for the kernels.

    ``lam_t`` is lambda^T and ``exp_beta_t`` exp(E[log beta])^T; both are private
    arrays updated in place during a call, written back to the estimator (as fresh
    (K, V) arrays) only at its end. After an M-step (:meth:`set_sums`) ``exp_beta_t``
    is stale; :meth:`refresh` recomputes it, for every word or, in online rounds, only
    for the rows of the words the next minibatch contains (the E-step and the
    statistic of a minibatch read no other rows).
    """

    __slots__ = ("lam_t", "exp_beta_t", "psi_sums", "sums", "stale")

    def __init__(self, components):
        self.lam_t = np.array(components.T, dtype=np.float64, order="C")
        self.exp_beta_t = np.empty_like(self.lam_t)
        self.set_sums(self.lam_t.sum(axis=0))
        self.refresh()

    def set_sums(self, sums):
        """lam_t changed; ``sums`` are its new topic totals sum_w lam_t[w, k]."""
        self.sums = sums
        self.psi_sums = digamma(sums)
        self.stale = True

    def refresh(self, words=None):
        """Bring exp_beta_t up to date: every row, or only the rows ``words``."""
        if not self.stale:
            return
        if words is None:
            _dirichlet_expectation(self.lam_t, self.psi_sums, self.exp_beta_t)
            self.stale = False
        else:
            _dirichlet_expectation(self.lam_t, self.psi_sums, self.exp_beta_t, words)


def _topic_bound(lam_t, eta):
    """The topics' Dirichlet terms of the bound from lambda^T (V, K)."""
    lam_t = np.ascontiguousarray(lam_t, dtype=np.float64)
    V = lam_t.shape[0]
    sums = lam_t.sum(axis=0)
    terms = _topic_terms(lam_t, eta, digamma(sums))
    per_topic = np.sum(gammaln(eta * V) - gammaln(sums))
    return float(terms.sum()) + float(per_topic)


# Above this total count the statistics (lambda, gamma) and the bound, whose terms grow
# like count x log(count), overflow the dtype; a fraction of its largest value leaves
# room for the bound's logarithmic factors (a few thousand at most).
_COUNT_HEADROOM = 1e4


def _count_limit(dtype):
    return float(np.finfo(dtype).max) / _COUNT_HEADROOM


def _check_word_total(total, dtype, whom, allow_empty=False):
    """Refuse a corpus without words, or with counts so large that LDA overflows."""
    if total == 0.0 and not allow_empty:
        raise ValueError(
            f"X has no words (every count is zero) in {whom}: the perplexity, "
            "exp(-bound / number of words), is undefined"
            + ("" if whom.endswith("perplexity") else ", and there is nothing to fit")
            + "."
        )
    limit = _count_limit(dtype)
    if not total <= limit:
        size = f"{total:.3g}" if np.isfinite(total) else "more than float64 holds"
        raise ValueError(
            f"The counts in X sum to {size}: LDA's topic statistics and bound "
            f"overflow {np.dtype(dtype).name} for totals above {limit:.3g}. "
            "Rescale the counts (for example divide X by a constant)."
        )


def _check_finite_fit(components, bound=0.0):
    """The last line of defence: a fit never ends with non-finite topics or bound."""
    if not (np.all(np.isfinite(components)) and np.isfinite(bound)):
        raise ValueError(
            "The topic statistics overflowed (non-finite components_ or bound); "
            "the counts are too large for the dtype. Rescale the counts (for "
            "example divide X by a constant)."
        )


class BlockStats(NamedTuple):
    """What :func:`e_step_stats` returns for one block of documents."""

    sstats: np.ndarray
    """(K, V) float64: sum over the block's documents of n_dw phi_dwk."""
    gamma: np.ndarray
    """(n_docs, K) float64: the documents' fitted variational parameters."""
    doc_bound: float
    """The block's part of the bound (NaN unless ``compute_bound``)."""
    n_tokens: float
    """Sum of the block's counts (the perplexity's denominator)."""


def e_step_stats(
    X,
    exp_topic_word,
    doc_topic_prior,
    *,
    gamma_init=None,
    max_doc_update_iter=100,
    mean_change_tol=1e-3,
    eps=None,
    compute_bound=False,
    n_jobs=1,
):
    """E-step of one block of documents: its partial sufficient statistics (pure).

    No estimator state is read or written: everything the E-step needs is an
    argument, so the function can be mapped over the row chunks of a large (e.g.
    Dask) matrix and the results combined by summing.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_docs, V)
        Non-negative counts of this block's documents (any row range of the corpus).
    exp_topic_word : ndarray of shape (K, V)
        exp(E[log beta]) of the current topics (an estimator's
        ``exp_dirichlet_component_``).
    doc_topic_prior : float
        alpha.
    gamma_init : ndarray of shape (n_docs, K), default=None
        Initial document parameters; None: all ones (scikit-learn's start when it
        transforms or evaluates). A fit starts from Gamma(100, 0.01) draws.
    max_doc_update_iter, mean_change_tol : int, float
        The per-document fixed-point iteration's limit and tolerance.
    eps : float, default=None
        Added to every phinorm; None: the machine epsilon of X's dtype (as
        scikit-learn).
    compute_bound : bool, default=False
        Also compute ``doc_bound``.
    n_jobs : int, default=1
        Numba threads for this call (1 suits a task inside a parallel scheduler).

    Returns
    -------
    stats : BlockStats
        ``sstats`` (K, V) with sum over blocks giving the batch M-step lambda =
        eta + sum(sstats); ``gamma``; ``doc_bound`` = sum_dw n_dw log phinorm_dw + the
        documents' Dirichlet terms (the full bound adds the topics' terms once);
        ``n_tokens``.

    Notes
    -----
    Hoffman, Blei & Bach (2010), Algorithm 2 (the E-step) and eq. 5 (the bound).
    Each document's result does not depend on the block it is in, so ``gamma`` is
    bitwise the same for any blocking; ``sstats`` of the blocks sum to the whole
    corpus's up to rounding (the estimator's own batch round accumulates the
    statistic word by word over the whole corpus instead).
    """
    X = check_array(X, accept_sparse="csr", dtype=[np.float64, np.float32])
    check_non_negative(X, "e_step_stats")
    exp_beta_t = np.ascontiguousarray(np.asarray(exp_topic_word).T, dtype=np.float64)
    K, V = exp_beta_t.shape[1], exp_beta_t.shape[0]
    if X.shape[1] != V:
        raise ValueError(
            f"X has {X.shape[1]} features but exp_topic_word has {V} columns."
        )
    if eps is None:
        eps = float(np.finfo(X.dtype).eps)
    corpus = _Corpus.from_matrix(X)
    if gamma_init is None:
        gamma = np.ones((corpus.n_docs, K))
    else:
        gamma = np.array(gamma_init, dtype=np.float64, order="C")
        if gamma.shape != (corpus.n_docs, K):
            raise ValueError(
                f"gamma_init has shape {gamma.shape}; expected {(corpus.n_docs, K)}."
            )
    with thread_limits(n_jobs):
        acc, ll, terms, n_tokens = _block_e_step(
            corpus, exp_beta_t, gamma, float(doc_topic_prior),
            int(max_doc_update_iter), float(mean_change_tol), float(eps), True,
            bool(compute_bound),
        )  # fmt: skip
    doc_bound = ll + terms if compute_bound else float("nan")
    return BlockStats(
        np.ascontiguousarray((acc * exp_beta_t).T),
        gamma,
        doc_bound,
        corpus.word_count(),
    )


class LatentDirichletAllocation(
    SaveMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Latent Dirichlet allocation with batch or online variational Bayes (fast).

    Same parameters, defaults, fitted attributes, random draws and numbers as
    :class:`sklearn.decomposition.LatentDirichletAllocation`; the per-document
    updates and the topic-word statistics run in parallel Numba kernels.

    Parameters
    ----------
    n_components : int, default=10
        Number of topics.
    doc_topic_prior : float, default=None
        Prior of the document-topic distribution theta (alpha); ``1 / n_components``
        when None.
    topic_word_prior : float, default=None
        Prior of the topic-word distribution beta (eta); ``1 / n_components`` when
        None.
    learning_method : {'batch', 'online', 'scvb0'}, default='batch'
        'batch' uses all documents in every M-step; 'online' updates the topics from
        minibatches of ``batch_size`` documents with step size
        ``(learning_offset + n_batch_iter_) ** -learning_decay``. 'scvb0' (not in
        scikit-learn) takes the same minibatch steps with stochastic collapsed
        variational Bayes (Foulds et al. 2013): about a third of online VB's cost
        per pass, and on real text a better held-out fit after the same passes
        (``bench/bench_lda_corpus.py``; on a small corpus of few minibatches it can
        trail online VB). ``components_`` then holds eta plus the expected
        topic-word counts, which every other method reads as lambda.
    learning_decay : float, default=0.7
        kappa of the online step size; (0.5, 1] guarantees asymptotic convergence.
    learning_offset : float, default=10.0
        tau_0 of the online step size (>= 1).
    max_iter : int, default=10
        Passes over the data (epochs) in :meth:`fit`.
    batch_size : int, default=128
        Documents per minibatch (online learning and :meth:`partial_fit`).
    evaluate_every : int, default=-1
        Evaluate the training perplexity every this many epochs in :meth:`fit` and stop
        when it changes by less than ``perp_tol``; 0 or negative: never.
    total_samples : int, default=1e6
        Total number of documents assumed by :meth:`partial_fit`.
    perp_tol : float, default=1e-1
        Perplexity tolerance (used when ``evaluate_every > 0``).
    mean_change_tol : float, default=1e-3
        E-step stopping tolerance on the mean absolute change of a document's
        topic parameters.
    max_doc_update_iter : int, default=100
        Maximum E-step iterations per document.
    n_jobs : int, default=None
        Threads used by the kernels (None: all; negative: all but ``-n_jobs - 1``).
        Results are bitwise identical for every value.
    verbose : int, default=0
        Verbosity level (prints as scikit-learn does).
    random_state : int, RandomState instance or None, default=None
        Seeds the initial topics and each E-step's initial document values exactly as
        scikit-learn does.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Variational parameters lambda of the topic-word distributions.
    exp_dirichlet_component_ : ndarray of shape (n_components, n_features)
        exp(E[log beta]).
    n_batch_iter_ : int
        Number of EM steps taken, plus one (scikit-learn's convention).
    n_iter_ : int
        Number of passes over the data.
    bound_ : float
        Final perplexity on the training set.
    perplexity_history_ : list of float
        The training perplexities evaluated during :meth:`fit` (every
        ``evaluate_every`` epochs, the last one included when it stopped the fit;
        empty when ``evaluate_every <= 0``).
    doc_topic_prior_, topic_word_prior_ : float
        The priors used.
    random_state_ : RandomState
        The random stream the initial values are drawn from.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Defined only when X has string feature names.

    Notes
    -----
    E-step: Hoffman, Blei & Bach (2010), Algorithm 2 (gamma_dk = alpha + sum_w n_dw
    phi_dwk with phi_dwk proportional to exp(E[log theta_dk] + E[log beta_kw]));
    batch M-step lambda = eta + sum_d n_dw phi_dwk (Blei, Ng & Jordan 2003, eq. 9 in
    the smoothed model); online M-step lambda <- (1 - rho_t) lambda + rho_t lambda_hat,
    rho_t = (tau_0 + t)^-kappa (Hoffman et al. 2010, eqs. 6-7). The bound and
    perplexity are those of scikit-learn (Hoffman et al. 2010, eq. 5 plus the
    Dirichlet terms). E[log theta] and E[log beta] use an accurate digamma; scikit-learn
    uses a faster approximation (error up to about 1e-9), so the two agree to about
    1e-8 relative, not to the last bit.

    Departures from scikit-learn: ``n_jobs=None`` means all threads (the result does
    not depend on it; scikit-learn's does, because with ``n_jobs > 1`` its workers
    receive copies of one random state); :meth:`perplexity` checks the number of
    features instead of resetting ``n_features_in_``; duplicate entries of a sparse
    input are summed. float32 input gives float32 ``components_`` and outputs (rounded
    after every M-step, as scikit-learn stores them); the kernels compute in float64.
    """

    # the remedy the stochastic driver's non-finite-perplexity error names
    _nonfinite_advice = "rescale the counts (for example divide X by a constant)"

    # integers held to int64 (_schema.int64_params): fit and load refuse larger ones
    # (max_doc_update_iter is an int64 argument of the E-step kernel)
    _parameter_constraints: dict = _schema.int64_params(
        {
            **SkLDA._parameter_constraints,  # scikit-learn's, for the same parameters
            "learning_method": [StrOptions({"batch", "online", "scvb0"})],
            # scikit-learn also accepts 0: a Dirichlet with concentration 0 is
            # improper, its bound log Gamma(0) infinite (scikit-learn's scores come
            # out NaN)
            "doc_topic_prior": [None, Interval(Real, 0, 1, closed="right")],
            "topic_word_prior": [None, Interval(Real, 0, 1, closed="right")],
        }
    )

    def __init__(
        self,
        n_components=10,
        *,
        doc_topic_prior=None,
        topic_word_prior=None,
        learning_method="batch",
        learning_decay=0.7,
        learning_offset=10.0,
        max_iter=10,
        batch_size=128,
        evaluate_every=-1,
        total_samples=1e6,
        perp_tol=1e-1,
        mean_change_tol=1e-3,
        max_doc_update_iter=100,
        n_jobs=None,
        verbose=0,
        random_state=None,
    ):
        self.n_components = n_components
        self.doc_topic_prior = doc_topic_prior
        self.topic_word_prior = topic_word_prior
        self.learning_method = learning_method
        self.learning_decay = learning_decay
        self.learning_offset = learning_offset
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.evaluate_every = evaluate_every
        self.total_samples = total_samples
        self.perp_tol = perp_tol
        self.mean_change_tol = mean_change_tol
        self.max_doc_update_iter = max_doc_update_iter
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.random_state = random_state

    def _fitted_schema(self, attrs):
        """The fitted attributes a saved model may hold (see :mod:`fastvi._schema`;
        ``attrs``, the decoded attributes, are not needed here).

        K = ``n_components`` topics over V = ``n_features_in_`` words. A checkpoint
        of :func:`fastvi.batch.jobs.fit_lda` has no ``exp_dirichlet_component_``.
        The priors and topics are Dirichlet parameters (positive); exp(E[log beta])
        may underflow to 0 (float32 topics), never below; perplexities are finite.
        """
        S = _schema
        K, V = self.n_components, "V"
        return {
            "n_features_in_": S.Int(1, dim=V, required=True),
            "feature_names_in_": S.Names((V,)),
            "random_state_": S.RandomStateSpec(required=True),
            "n_batch_iter_": S.Int(1, required=True),  # steps taken plus one
            "n_iter_": S.Int(0, required=True),
            "perplexity_history_": S.Floats(finite=True, required=True),
            "doc_topic_prior_": S.Real(positive=True, required=True),
            "topic_word_prior_": S.Real(positive=True, required=True),
            "components_": S.Array((K, V), positive=True, required=True),
            "exp_dirichlet_component_": S.Array((K, V), nonnegative=True),
            "bound_": S.Real(finite=True),
        }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float32", "float64"]
        return tags

    @property
    def _n_features_out(self):
        """Number of transformed output features."""
        return self.components_.shape[0]

    # ------------------------------------------------------------------ public API
    @announces("lda")
    def fit(self, X, y=None):
        """Learn the topics from X by batch or online variational Bayes.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Document-word counts.
        y : Ignored

        Returns
        -------
        self : LatentDirichletAllocation
        """
        self._validate_params()
        with all_or_nothing(self):
            rows, dtype = self._fit_rows(X)
            with thread_limits(self.n_jobs):
                # the topics live in ``topics`` during the fit and become
                # ``components_`` at its end (no second copy meanwhile)
                topics = self._init_latent_vars(rows.shape[1], dtype, store=False)
                stop = StopRule(self.perp_tol, self.evaluate_every, "perplexity")
                state = run(self, (rows, topics, dtype), stop)
                # scikit-learn does not count the epoch whose check stopped the fit
                self.n_iter_ = state.epoch - state.stopped
                self.perplexity_history_ = state.history
                self._store_topics(topics, dtype)
                self.bound_ = self._rows_perplexity(rows, topics, dtype)
                _check_finite_fit(self.components_, self.bound_)
        return self

    def _fit_rows(self, X):
        """``(rows, dtype)``: X validated and wrapped in a :class:`fastvi.rows.Rows`.

        In memory: scikit-learn's checks, then one CSR corpus whose blocks are
        views. A file source (:class:`fastvi.batch.io.DocwordRows`,
        :class:`~fastvi.batch.io.SparseNpzRows`) or a dask array: one pass counts
        negative, NaN and infinite values and the words (a file source names the
        line or row of a bad value as it reads it); such fits compute in float64.
        """
        whom = "LatentDirichletAllocation.fit"
        rows = source_rows(X)
        if rows is None:
            X = self._check_non_neg_array(X, True, whom)
            corpus = _Corpus.from_matrix(X)
            rows, dtype, total = _CorpusRows(corpus), X.dtype, corpus.word_count()
        else:
            from ._dask import raise_if_nonfinite

            if rows.shape[0] < 1:
                raise ValueError(
                    "Found array with 0 sample(s); a minimum of 1 is required."
                )
            n_negative, n_nan, n_inf, total = rows.map_reduce(
                _count_bad, n_jobs=self.n_jobs
            )
            raise_if_nonfinite("X", n_nan, n_inf)
            if n_negative:
                raise ValueError(f"Negative values in data passed to {whom}")
            self.n_features_in_ = rows.shape[1]
            self.__dict__.pop("feature_names_in_", None)
            dtype = np.dtype(np.float64)
        _check_word_total(total, dtype, whom)
        return rows, dtype

    @announces("lda")
    def partial_fit(self, X, y=None):
        """Online updates from the minibatches of X (online variational Bayes, or
        SCVB0 steps when ``learning_method='scvb0'``).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Document-word counts.
        y : Ignored

        Returns
        -------
        self : LatentDirichletAllocation
        """
        self._validate_params()
        with all_or_nothing(self):
            first_time = not hasattr(self, "components_")
            X = self._check_non_neg_array(
                X, first_time, "LatentDirichletAllocation.partial_fit"
            )
            corpus = _Corpus.from_matrix(X)
            # a minibatch of empty documents is a legitimate (if useless) update
            _check_word_total(
                corpus.word_count(),
                X.dtype,
                "LatentDirichletAllocation.partial_fit",
                allow_empty=True,
            )
            if first_time:
                self._init_latent_vars(corpus.n_words, X.dtype)
            if corpus.n_words != self.components_.shape[1]:
                raise ValueError(
                    "The provided data has %d dimensions while "
                    "the model was trained with feature size %d."
                    % (corpus.n_words, self.components_.shape[1])
                )
            dtype = self.components_.dtype
            with thread_limits(self.n_jobs):
                topics = _Topics(self.components_)
                for batch in _minibatches(_CorpusRows(corpus), self.batch_size):
                    self._round(batch, topics, dtype, self.total_samples)
                self._store_topics(topics, dtype)
                _check_finite_fit(self.components_)
        return self

    @announces("lda", complete=False)
    def transform(self, X, *, normalize=True):
        """Topic proportions of the documents in X under the fitted topics.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Document-word counts.
        normalize : bool, default=True
            Normalize each row to sum to one (else the variational parameters gamma).

        Returns
        -------
        doc_topic_distr : ndarray of shape (n_samples, n_components)
        """
        check_is_fitted(self)
        if source_rows(X) is not None:  # per block: an array, or a lazy dask array
            return predict_rows(self, X).map_rows(
                _transform_block,
                (self, normalize),
                n_columns=self.n_components,
                dtype=self.components_.dtype,
                n_jobs=self.n_jobs,
            )
        X = self._check_non_neg_array(X, False, "LatentDirichletAllocation.transform")
        gamma = self._unnormalized_transform(X)
        if normalize:
            gamma /= gamma.sum(axis=1)[:, np.newaxis]
        return gamma.astype(self.components_.dtype, copy=False)

    def fit_transform(self, X, y=None, *, normalize=True):
        """Fit to X, then return its topic proportions (:meth:`fit` + :meth:`transform`).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : Ignored
        normalize : bool, default=True

        Returns
        -------
        doc_topic_distr : ndarray of shape (n_samples, n_components)
        """
        return self.fit(X, y).transform(X, normalize=normalize)

    @announces("lda", complete=False)
    def score(self, X, y=None):
        """Approximate log-likelihood of X: the variational bound.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        score : float
        """
        return self._score(X, "score", sub_sampling=False)[0]

    @announces("lda", complete=False)
    def perplexity(self, X, sub_sampling=False):
        """Approximate perplexity of X: exp(-bound / number of words).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        sub_sampling : bool, default=False
            Scale the document terms to ``total_samples`` documents.

        Returns
        -------
        perplexity : float
        """
        bound, corpus = self._score(X, "perplexity", sub_sampling)
        word_count = corpus.word_count()
        if sub_sampling:
            word_count *= float(self.total_samples) / corpus.n_docs
        # no words: the per-word bound is undefined; huge counts: it overflows
        _check_word_total(
            word_count, np.float64, "LatentDirichletAllocation.perplexity"
        )
        return float(np.exp(-bound / word_count))

    # ------------------------------------------------------------------ internals
    def _score(self, X, method, sub_sampling):
        """``(bound, corpus)``: the variational bound of X (``method``: the caller)."""
        check_is_fitted(self)
        whom = f"LatentDirichletAllocation.{method}"
        corpus = _Corpus.from_matrix(self._check_non_neg_array(X, False, whom))
        # counts so large that the bound overflows: refused as by perplexity
        _check_word_total(corpus.word_count(), np.float64, whom, allow_empty=True)
        with thread_limits(self.n_jobs):
            score = self._transform_corpus(corpus, bound=True)[1]
            if sub_sampling:
                score *= float(self.total_samples) / corpus.n_docs
            score += _topic_bound(self.components_.T, float(self.topic_word_prior_))
        return float(score), corpus

    def _check_non_neg_array(self, X, reset, whom):
        dtype = [np.float64, np.float32] if reset else self.components_.dtype
        X = validate_data(self, X, reset=reset, accept_sparse="csr", dtype=dtype)
        check_non_negative(X, whom)
        return X

    def _init_latent_vars(self, n_features, dtype, store=True):
        """Priors and the random initial topics, drawn as scikit-learn draws them.

        Returns them as a ``_Topics``; also stores them as ``components_`` and
        ``exp_dirichlet_component_`` when ``store``.
        """
        self.random_state_ = check_random_state(self.random_state)
        self.n_batch_iter_ = 1
        self.n_iter_ = 0
        self.perplexity_history_ = []
        K = self.n_components
        self.doc_topic_prior_ = (
            1.0 / K if self.doc_topic_prior is None else self.doc_topic_prior
        )
        self.topic_word_prior_ = (
            1.0 / K if self.topic_word_prior is None else self.topic_word_prior
        )
        components = self.random_state_.gamma(
            _INIT_SHAPE, _INIT_SCALE, (K, n_features)
        ).astype(dtype, copy=False)
        with thread_limits(self.n_jobs):
            topics = _Topics(components)
            if store:
                self._store_topics(topics, dtype)
        return topics

    def _store_topics(self, topics, dtype):
        topics.refresh()
        self.components_ = np.ascontiguousarray(topics.lam_t.T).astype(
            dtype, copy=False
        )
        self.exp_dirichlet_component_ = np.ascontiguousarray(
            topics.exp_beta_t.T
        ).astype(dtype, copy=False)

    # ------------------------------------------- hooks of fastvi._stochastic
    def _sgd_epoch(self, data):
        """One epoch: a batch EM round, or online rounds over minibatches of
        ``batch_size`` documents in row order, across block boundaries (the
        in-memory minibatches wherever the documents live)."""
        rows, topics, dtype = data
        if self.learning_method == "batch":
            self._batch_round(rows, topics, dtype)
        else:
            for batch in _minibatches(rows, self.batch_size):
                self._round(batch, topics, dtype, total_samples=rows.shape[0])

    def _sgd_evaluate(self, data):
        return self._rows_perplexity(*data)

    def _sgd_params(self, data):
        """Copies of what the next epochs read: lambda, digamma of its topic totals
        as computed (recomputing may differ in the last bit), whether exp(E[log
        beta]) awaits a refresh, the step count and the E-steps' random state."""
        topics = data[1]
        return {
            "components": np.array(topics.lam_t.T, dtype=np.float64, order="C"),
            "psi_sums": np.array(topics.psi_sums, dtype=np.float64),
            "stale": bool(topics.stale),
            "n_batch_iter_": int(self.n_batch_iter_),
            "random_state": self.random_state_.get_state(legacy=True),
        }

    def _sgd_set_params(self, data, params):
        topics = data[1]
        components = np.asarray(params["components"], dtype=np.float64)
        psi_sums = np.asarray(params["psi_sums"], dtype=np.float64)
        if components.shape != topics.lam_t.T.shape or psi_sums.shape != (
            components.shape[0],
        ):
            raise ValueError(
                f"the saved fit state has topics of shape {components.shape}; "
                f"expected {topics.lam_t.T.shape}"
            )
        topics.lam_t[...] = components.T
        topics.psi_sums = psi_sums.copy()
        topics.stale = True
        if not params["stale"]:
            topics.refresh()
        self.random_state_.set_state(tuple(params["random_state"]))
        self.n_batch_iter_ = int(params["n_batch_iter_"])

    def _e_step_args(self, exp_beta_t, dtype, statistic, bound):
        """The ``shared`` arguments of :func:`_block_stats` (after the block)."""
        return (
            exp_beta_t,
            float(self.doc_topic_prior_),
            int(self.max_doc_update_iter),
            float(self.mean_change_tol),
            # scikit-learn adds the machine epsilon of the input's dtype to phinorm
            float(np.finfo(dtype).eps),
            statistic,
            bound,
        )

    def _batch_round(self, rows, topics, dtype):
        """One batch EM round: the E-step of every block from Gamma(100, 0.01)
        starts (:class:`_Draws`), the blocks' statistics summed (``map_reduce``),
        then the M-step lambda = eta + sstats (Blei et al. 2003, eq. 9)."""
        topics.refresh()
        acc = rows.map_reduce(
            _block_stats,
            shared=self._e_step_args(topics.exp_beta_t, dtype, True, False),
            local=_Draws(self, rows.block_sizes(), dtype),
            n_jobs=self.n_jobs,
        )[0]
        # sstats = acc * exp E[log beta]: the kernel of the in-memory round, fed one
        # entry per word whose only "document" holds the summed acc, computes
        # lambda and its topic sums with the same operations (fused as there)
        V = acc.shape[0]
        words = np.arange(V, dtype=np.int64)
        sums = _topic_word_update(
            np.arange(V + 1, dtype=np.int64), words, words.astype(np.int32),
            np.ones(V), acc, topics.exp_beta_t, topics.lam_t, 0.0, 1.0,
            float(self.topic_word_prior_), 1.0,
        )  # fmt: skip
        self._set_topic_sums(topics, sums, dtype)

    def _set_topic_sums(self, topics, sums, dtype):
        """After an M-step: lambda's topic totals, rounded as scikit-learn stores."""
        if dtype == np.float32:
            # scikit-learn keeps components_ in float32 between rounds
            topics.lam_t[...] = topics.lam_t.astype(np.float32)
            sums = topics.lam_t.sum(axis=0)
        else:
            sums = sums.sum(axis=0)
        topics.set_sums(sums)
        self.n_batch_iter_ += 1

    def _rows_perplexity(self, rows, topics, dtype):
        """Training perplexity: an E-step from ones over every block, the bound's
        document terms and the word count summed (``map_reduce``)."""
        topics.refresh()
        _, ll, doc_terms, n_tokens = rows.map_reduce(
            _block_stats,
            shared=self._e_step_args(topics.exp_beta_t, dtype, False, True),
            n_jobs=self.n_jobs,
        )
        # as _score: sum n log phinorm + the documents' and the topics' terms
        bound = float(ll) + float(doc_terms)
        bound += _topic_bound(topics.lam_t, float(self.topic_word_prior_))
        _check_word_total(n_tokens, np.float64, "LatentDirichletAllocation.perplexity")
        return float(np.exp(-bound / n_tokens))

    def _round(self, corpus, topics, dtype, total_samples):
        """One minibatch step of the chosen online learning method."""
        if self.learning_method == "scvb0":
            self._scvb0_round(corpus, topics, dtype, total_samples)
        else:
            self._em_round(corpus, topics, dtype, total_samples)

    def _scvb0_round(self, corpus, topics, dtype, total_samples):
        """One SCVB0 minibatch step (``fastvi.kernels.lda_scvb0``): the documents'
        responsibilities under the current topics, then N_phi <- (1 - rho) N_phi +
        rho * (total_samples / n_docs) * N_hat_phi with scikit-learn's online step
        rho = (learning_offset + n_batch_iter_)^-learning_decay."""
        gam = np.empty((corpus.data.shape[0], self.n_components))
        _scvb0_docs(
            corpus.indptr,
            corpus.indices,
            corpus.data,
            topics.lam_t,
            1.0 / topics.sums,
            float(self.doc_topic_prior_),
            _SCVB0_BURN_IN,
            _SCVB0_TAU,
            gam,
        )
        rho = float(
            np.power(self.learning_offset + self.n_batch_iter_, -self.learning_decay)
        )
        col_ptr, entry, _ = corpus.entries()
        sums = _scvb0_topics(
            col_ptr,
            entry,
            gam,
            topics.lam_t,
            1.0 - rho,
            rho,
            float(self.topic_word_prior_),
            float(total_samples) / max(corpus.n_docs, 1),
        )
        self._set_topic_sums(topics, sums, dtype)

    def _em_round(self, corpus, topics, dtype, total_samples):
        """One online E-step and M-step (Hoffman et al. 2010, eqs. 6-7)."""
        topics.refresh(corpus.words())
        gamma = self._initial_gamma(corpus.n_docs, dtype, random_init=True)
        e_step = self._e_step_args(topics.exp_beta_t, dtype, False, False)[:5]
        exp_theta, ratio, _ = _e_step(corpus, gamma, *e_step, False)
        weight = float(
            np.power(self.learning_offset + self.n_batch_iter_, -self.learning_decay)
        )
        decay, scale = 1.0 - weight, float(total_samples) / corpus.n_docs
        col_ptr, entry, doc = corpus.entries()
        sums = _topic_word_update(
            col_ptr,
            entry,
            doc,
            ratio,
            exp_theta,
            topics.exp_beta_t,
            topics.lam_t,
            decay,
            weight,
            float(self.topic_word_prior_),
            scale,
        )
        self._set_topic_sums(topics, sums, dtype)

    def _initial_gamma(self, n_docs, dtype, random_init):
        shape = (n_docs, self.n_components)
        if not random_init:
            return np.ones(shape)
        draws = self.random_state_.gamma(_INIT_SHAPE, _INIT_SCALE, shape)
        return draws.astype(dtype, copy=False).astype(np.float64, copy=False)

    def _transform_corpus(self, corpus, bound=False):
        """gamma from ones (:func:`_block_e_step`) and, with ``bound``, the
        documents' part of the bound, sum n_dw log phinorm_dw + their Dirichlet
        terms (scikit-learn's ``_approx_bound`` less the topics' terms)."""
        if not hasattr(self, "exp_dirichlet_component_"):
            raise NotFittedError(
                "this LatentDirichletAllocation has no exp_dirichlet_component_ "
                "(a fit checkpoint, not a fitted model): fit or resume it first"
            )
        exp_beta_t = np.array(self.exp_dirichlet_component_.T, np.float64, order="C")
        dtype = getattr(self, "components_", np.empty(0)).dtype
        gamma = self._initial_gamma(corpus.n_docs, dtype, False)
        args = self._e_step_args(exp_beta_t, dtype, False, bound)
        with thread_limits(self.n_jobs):
            _, ll, terms, _ = _block_e_step(corpus, exp_beta_t, gamma, *args[1:])
        return gamma, ll + terms

    def _unnormalized_transform(self, X):
        gamma, _ = self._transform_corpus(_Corpus.from_matrix(X))
        return gamma

    # ------------------------------------------- held-out criticism and draws
    @announces("lda", complete=False)
    def completion_score(self, X_observed, X_heldout):
        """Document completion: log-likelihood per held-out token.

        Each document's topic proportions are folded in from its observed part
        (q(theta_d) by the E-step of :meth:`transform`), and its held-out tokens are
        scored under E[theta_d] and E[beta] (Wallach et al. 2009; Hoffman et al.
        2013, §4): sum_dw n_dw log sum_k E[theta_dk] E[beta_kw], divided by the
        number of held-out tokens. Higher is better; exp(-score) is the held-out
        perplexity. Split the documents with :func:`fastvi.predictive.split_tokens`.

        Parameters
        ----------
        X_observed : {array-like, sparse matrix} of shape (n_docs, n_features)
            The counts the topic proportions are inferred from.
        X_heldout : {array-like, sparse matrix} of shape (n_docs, n_features)
            The counts scored (the same documents, row for row).

        Returns
        -------
        score : float
        """
        from .predictive import lda_completion

        check_is_fitted(self)
        whom = "LatentDirichletAllocation.completion_score"
        X_observed = self._check_non_neg_array(X_observed, False, whom)
        X_heldout = self._check_non_neg_array(X_heldout, False, whom)
        if X_observed.shape != X_heldout.shape:
            raise ValueError(
                f"X_observed has shape {X_observed.shape} but X_heldout has "
                f"{X_heldout.shape}: they must be the same documents."
            )
        gamma = self._unnormalized_transform(X_observed)
        return lda_completion(self, np.asarray(gamma, np.float64), X_heldout)

    def sample_posterior(self, n_draws, random_state=None):
        """Draws of the topic-word distributions from q(beta) = prod_k Dir(lambda_k).

        Parameters
        ----------
        n_draws : int
        random_state : int, Generator, RandomState or None, default=None

        Returns
        -------
        draws : dict
            ``components_`` (n_draws, K, V): topic-word probabilities, whose mean is
            ``components_`` normalized to rows summing to 1.
        """
        from .posterior import check_n_draws, generator, lda_draws

        check_is_fitted(self)
        return lda_draws(self, check_n_draws(n_draws), generator(random_state))

    def to_arviz(self, n_draws=100, random_state=None):
        """:meth:`sample_posterior` as ArviZ data (``components``), the training
        perplexities evaluated in the fit as ``sample_stats.perplexity``. Needs the
        optional dependency arviz (``pip install 'fastvi[arviz]'``)."""
        from .posterior import to_arviz

        draws = self.sample_posterior(n_draws, random_state)
        trace = getattr(self, "perplexity_history_", None) or None
        return to_arviz(draws, trace, "perplexity", "evaluation", "CAVI")


# ----------------------------------------------------- the corpus as Rows of documents
class _CorpusRows(Rows):
    """An in-memory corpus as :class:`fastvi.rows.Rows`: blocks of ``BLOCK_ROWS``
    documents, views of the corpus's arrays (a file holds the same blocks)."""

    def __init__(self, corpus):
        self.corpus = corpus
        self.shape = (corpus.n_docs, corpus.n_words)

    def blocks(self):
        n = self.shape[0]
        for start in range(0, n, self.block_rows):
            yield start, self.corpus.rows(start, min(n, start + self.block_rows))


def _as_corpus(block):
    """A block of documents (a corpus view, a CSR matrix or a dense array)."""
    return block if isinstance(block, _Corpus) else _Corpus.from_matrix(block)


class _Draws:
    """The per-block ``local`` argument of a batch round: each block's E-step start,
    Gamma(100, 0.01) as scikit-learn draws it for all documents at once, drawn from
    ``random_state_`` when the block asks (in block order: the same stream, but
    never every document's values in memory at once, except on Dask, whose graph
    holds them)."""

    def __init__(self, est, sizes, dtype):
        self.est, self.sizes, self.dtype, self.next = est, sizes, dtype, 0

    def __getitem__(self, i):
        if i != self.next:
            raise RuntimeError(
                f"block {i} asked for its draws before block {self.next}"
            )
        self.next += 1
        return (self.est._initial_gamma(int(self.sizes[i]), self.dtype, True),)


def _e_step(corpus, gamma, exp_beta_t, alpha, max_iter, tol, eps, bound):
    """The E-step of some documents, ``gamma`` updated in place: ``(exp_theta, ratio,
    ll)`` (the kernel's outputs; ``ll`` per block, zeros unless ``bound``)."""
    # the kernel indexes exp_beta_t by word and topic: a model whose topics disagree
    # with the data or with n_components must fail here, loud
    V, K = exp_beta_t.shape
    if corpus.n_words != V or gamma.shape != (corpus.n_docs, K):
        raise ValueError(
            f"the topics have shape {(K, V)}, expected ({gamma.shape[1]}, "
            f"{corpus.n_words}) for this data"
        )
    exp_theta = np.empty_like(gamma)
    ratio = np.empty_like(corpus.data)
    ll = _e_step_kernel(
        corpus.indptr, corpus.indices, corpus.data, exp_beta_t, gamma, exp_theta,
        alpha, max_iter, tol, eps, ratio, bound,
    )  # fmt: skip
    return exp_theta, ratio, ll


def _block_e_step(corpus, exp_beta_t, gamma, alpha, max_iter, tol, eps, statistic,
                  bound):  # fmt: skip
    """The E-step of one block of documents, ``gamma`` updated in place.

    Returns ``(acc, ll, doc_terms, n_tokens)``: acc (V, K) = sum over the block's
    entries of n_dw / phinorm_dw * exp E[log theta_dk] (the statistic before its
    factor exp E[log beta_kw]; 0.0 unless ``statistic``), and, when ``bound``,
    sum n_dw log phinorm_dw, the documents' Dirichlet terms and the word count.
    """
    args = (exp_beta_t, alpha, max_iter, tol, eps, bound)
    exp_theta, ratio, ll = _e_step(corpus, gamma, *args)
    V, K = exp_beta_t.shape
    acc = 0.0
    if statistic:
        col_ptr, entry, doc = corpus.entries()
        corpus.drop_entries()
        acc = np.zeros((V, K))
        # lam <- 0 * lam + 1 * (0 + 1 * (acc * 1)): acc itself, exactly
        _topic_word_update(
            col_ptr, entry, doc, ratio, exp_theta, np.ones((V, K)), acc,
            0.0, 1.0, 0.0, 1.0,
        )  # fmt: skip
    if not bound:
        return acc, 0.0, 0.0, 0.0
    terms = float(_doc_terms(gamma, alpha).sum())
    return acc, float(ll.sum()), terms, corpus.word_count()


def _block_stats(block, start, exp_beta_t, alpha, max_iter, tol, eps, statistic,
                 bound, gamma=None):  # fmt: skip
    """Block function of the fits (``Rows.map_reduce``): :func:`_block_e_step` of
    the block's documents from ``gamma`` (None: ones). Pure; the results add."""
    corpus = _as_corpus(block)
    if gamma is None:
        gamma = np.ones((corpus.n_docs, exp_beta_t.shape[1]))
    else:  # the draws may be a graph's value (Dask): never written in place
        gamma = np.array(gamma, dtype=np.float64, order="C")
    return _block_e_step(
        corpus, exp_beta_t, gamma, alpha, max_iter, tol, eps, statistic, bound
    )


def _count_bad(block, start):
    """Block function: counts of negative, NaN and infinite values, and the words."""
    values = block.data if sp.issparse(block) else np.asarray(block)
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return (
            int((values < 0).sum()),
            int(np.isnan(values).sum()),
            int(np.isinf(values).sum()),
            float(values.sum()),
        )


def _minibatches(rows, size):
    """Minibatches of ``size`` documents, in row order across block boundaries (a
    minibatch that straddles two blocks joins their documents): the minibatches of
    the in-memory corpus, one block in memory at a time."""
    carry = None
    for _, block in rows.blocks():
        corpus = _as_corpus(block)
        if carry is not None:
            corpus = _Corpus(
                np.concatenate((carry.indptr, corpus.indptr[1:] + carry.indptr[-1])),
                np.concatenate((carry.indices, corpus.indices)),
                np.concatenate((carry.data, corpus.data)),
                corpus.n_words,
            )
        n = corpus.n_docs
        full = n - n % size
        for start in range(0, full, size):
            yield corpus.rows(start, start + size)
        carry = None
        if full < n:  # copied: a source may reuse its block's memory
            tail = corpus.rows(full, n)
            carry = _Corpus(tail.indptr, tail.indices.copy(), tail.data.copy(),
                            tail.n_words)  # fmt: skip
    if carry is not None:
        yield carry


def _transform_block(rows, est, normalize):
    """Block function of :meth:`LatentDirichletAllocation.transform` on a source."""
    return est.transform(rows, normalize=normalize)
