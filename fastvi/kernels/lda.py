"""Kernels of latent Dirichlet allocation (batch and online variational Bayes).

Notation (Hoffman, Blei & Bach 2010; Blei, Ng & Jordan 2003): ``gamma`` (N, K) are the
documents' variational Dirichlet parameters, ``lam`` the topics' ones. Topic-side arrays
are stored transposed, **(V, K)** (``lam_t``, ``exp_beta_t`` = exp E[log beta]^T), so the
K values a word needs are contiguous.

One EM round is three kernels:

``e_step_blocks``
    Per document, the fixed-point iteration of Hoffman et al. (2010), Algorithm 2
    (gamma_dk = alpha + exp E[log theta_dk] sum_w n_dw exp E[log beta_kw] / phinorm_dw)
    until the mean absolute change of gamma_d is below ``tol``, directly on the CSR
    arrays. Documents are independent; a call computes a range of blocks of ``block``
    documents (the caller runs ranges on several threads). Each document's columns of
    exp E[log beta] are gathered once into a (K, n_d) array, one contiguous row per
    topic, so the two sweeps of an iteration (phinorm over the topics, then one dot
    product per topic) run along the words and vectorize, eight topics per pass. Besides
    gamma it writes exp E[log theta] (N, K), the per-entry ratio n_dw / phinorm_dw (one
    value per stored entry) and, per block, the likelihood part of the bound, sum_w n_dw
    log phinorm_dw. Topics whose update provably rounds to gamma_dk = alpha are left out
    of the sweeps (see ``_HALF_ULP``), and psi and exp are evaluated only for topics
    with gamma_dk != alpha (those at alpha share one value): late iterations of a
    document touch only its few live topics.
``csc_order``
    The stored entries grouped by word (a counting sort; documents ascending inside a
    word), computed once per corpus or minibatch.
``topic_word_blocks``
    The sufficient statistic sstats_wk = exp E[log beta_kw] sum_d ratio_dw exp E[log
    theta_dk] computed *word by word* from the grouped entries, fused with the M-step
    lam <- decay * lam + weight * (eta + scale * sstats) (batch: decay=0, weight=1,
    scale=1; online: Hoffman et al. 2010 eq. 6-7, decay = 1 - rho).

Then exp E[log beta] is refreshed: ``dirichlet_expectation_blocks`` for every word
(batch) or ``dirichlet_expectation_rows_blocks`` for the words of the next minibatch
only (online). ``doc_terms_blocks`` and ``topic_terms_blocks`` are the Dirichlet parts
of the bound (per-block partials), so evaluating it needs no (N, K) temporaries.

Determinism and memory
----------------------
Because the statistic is assembled per word (each word's documents in a fixed order)
rather than per document, no (n_blocks, V, K) partials exist and nothing is reduced
across threads: the extra memory is one float per stored entry plus the (N, K)
exp E[log theta]. The only cross-block reductions (the likelihood term and the topic
sums of lam) are per-block partials that the caller adds in block order. So every bit
of the result is the same for any thread count. Every kernel computes a range of
fixed-size blocks, each writing only its own outputs, and releases the GIL, so the
caller runs ranges on the fit's threads (``fastvi._threads.map_chunks``).

Digamma
-------
``digamma`` is psi(x) = psi(x + 8) - sum_{i<8} 1/(x + i) (DLMF 5.5.2) for x < 8 with the
eight reciprocals summed as one fraction, then the asymptotic series of DLMF 5.11.2 to
x^-14 and the polynomial log of ``_math``, so loops over topics vectorize (numba has no
SVML). Near the positive root x0 = 1.4616..., where the recurrence cancels, the array
routine replaces the value with scipy's compiled ``psi`` (``scipy_psi``, bound once at
import: the only non-numba dependency of the kernels). ``tests/test_lda.py`` checks it
within 1e-12 relative of ``scipy.special.digamma``.
"""

import math

import llvmlite.binding as llvm_binding
import numpy as np
from numba import types
from numba.extending import get_cython_function_address

from ._config import jit
from ._math import exp_nonpos, log_ge1

# scipy's compiled digamma (double version), called by symbol name so that kernels
# calling it can be cached: the symbol is registered again at every import.
_PSI_SYMBOL = "fastvi_scipy_special_psi"
llvm_binding.add_symbol(
    _PSI_SYMBOL,
    get_cython_function_address("scipy.special.cython_special", "__pyx_fuse_1psi"),
)
scipy_psi = types.ExternalFunction(_PSI_SYMBOL, types.float64(types.float64))

# positive root of psi and the half-width of the window where scipy's psi is used
PSI_ROOT = 1.4616321449683622
PSI_ROOT_WINDOW = 0.05


@jit
def _psi_shift(x):
    """sum_{i<8} 1/(x + i) for x < 8, else 0 (DLMF 5.5.2 recurrence term).

    The eight reciprocals are summed as one fraction num/den, accumulated left to right
    (all terms positive, so no cancellation): one division instead of eight.
    """
    num = 0.0
    den = 1.0
    for i in range(8):
        xi = x + i
        num = num * xi + den
        den = den * xi
    return num / den if x < 8.0 else 0.0


@jit
def _bernoulli_series(r2):
    """-sum_{k=1..7} B_2k / (2k) r2^(k - 1) (DLMF 5.11.2), r2 = 1 / y^2, in Horner form."""
    t = -1.0 / 12.0
    t = t * r2 + 691.0 / 32760.0
    t = t * r2 - 1.0 / 132.0
    t = t * r2 + 1.0 / 240.0
    t = t * r2 - 1.0 / 252.0
    t = t * r2 + 1.0 / 120.0
    return t * r2 - 1.0 / 12.0


@jit
def _psi_asymptotic(x):
    """psi(y) at y = x + 8 (x < 8) or y = x, by DLMF 5.11.2 to the y^-14 term.

    log y - 1/(2y) - sum_{k=1..7} B_2k / (2k y^2k); at y >= 8 the next term is below
    2e-15. NaN and inf are mapped to a finite y here and fixed by the caller.
    """
    y = x + 8.0 if x < 8.0 else x
    y = 8.0 if y != y or y == math.inf else y
    r = 1.0 / y
    r2 = r * r
    return log_ge1(y) - 0.5 * r + r2 * _bernoulli_series(r2)


@jit
def _psi_minus_log_y(x):
    """psi(x) - log(y) with y = x + 8 if x < 8 else x: T(y) - S(x) (DLMF 5.11.2 to the
    y^-14 term, 5.5.2), no log. exp(psi(x) - c) is then y exp(T(y) - S(x) - c): its
    relative error is the absolute error of the exponent, with no cancellation near
    psi's root.
    """
    y = x + 8.0 if x < 8.0 else x
    r = 1.0 / y
    r2 = r * r
    return (r2 * _bernoulli_series(r2) - 0.5 * r) - _psi_shift(x)


@jit
def exp_psi_minus(src, c, dst, n):
    """dst[i] = exp(psi(src[i]) - c[i]) for i < n (c[i] >= psi(src[i]) up to rounding).

    Three simple loops, so the first vectorizes (see ``_psi_minus_log_y``); the last
    uses the general formula for the rare arguments outside (0, 1e300].
    """
    for i in range(n):
        dst[i] = _psi_minus_log_y(src[i]) - c[i]
    for i in range(n):
        x = src[i]
        dst[i] = (x + 8.0 if x < 8.0 else x) * exp_nonpos(dst[i])
    for i in range(n):
        x = src[i]
        if not (0.0 < x <= 1e300):
            dst[i] = exp_nonpos(digamma(x) - c[i])


@jit
def exp_psi_minus_scalar(src, c, dst, n):
    """dst[i] = exp(psi(src[i]) - c) for i < n (see ``exp_psi_minus``)."""
    for i in range(n):
        dst[i] = _psi_minus_log_y(src[i]) - c
    for i in range(n):
        x = src[i]
        dst[i] = (x + 8.0 if x < 8.0 else x) * exp_nonpos(dst[i])
    for i in range(n):
        x = src[i]
        if not (0.0 < x <= 1e300):
            dst[i] = exp_nonpos(digamma(x) - c)


@jit
def digamma(x):
    """psi(x) for x >= 0, within 1e-12 relative of scipy's everywhere (scalar): the
    module doc's formula, scipy's psi near ``PSI_ROOT``; 0 gives -inf, inf inf, NaN NaN.
    """
    if abs(x - PSI_ROOT) < PSI_ROOT_WINDOW:
        return scipy_psi(x)
    if x != x or x == math.inf:
        return x
    if x == 0.0:
        return -math.inf
    return _psi_asymptotic(x) - _psi_shift(x)


@jit
def digamma_array(src, dst, n):
    """dst[:n] = psi(src[:n]): a vectorized pass, then scipy's psi near the root."""
    # two simple loops: LLVM vectorizes each, but not the two fused into one
    for i in range(n):
        dst[i] = _psi_asymptotic(src[i])
    for i in range(n):
        dst[i] -= _psi_shift(src[i])
    for i in range(n):
        x = src[i]
        if abs(x - PSI_ROOT) < PSI_ROOT_WINDOW or not (0.0 < x < math.inf):
            dst[i] = digamma(x)


@jit
def _exp_dirichlet(g, ps, out):
    """out = exp(E[log theta]) = exp(psi(g_k) - psi(sum g)) for theta ~ Dir(g)."""
    K = g.shape[0]
    total = 0.0
    for k in range(K):
        total += g[k]
    psi_total = digamma(total)
    digamma_array(g, ps, K)
    for k in range(K):
        # psi is increasing and g_k <= total, so the argument is <= 0
        out[k] = exp_nonpos(ps[k] - psi_total)


@jit
def _exp_dirichlet_sparse(g, alpha, psi_alpha, active, na, buf, idx, ps, out):
    """``_exp_dirichlet`` computing psi and exp only where g[k] != alpha.

    Only the topics ``active[:na]`` may differ from alpha (the others were just set
    to it). Every topic at the prior gets the one value exp(psi(alpha) - psi(sum g)).
    """
    K = g.shape[0]
    total = 0.0
    for k in range(K):
        total += g[k]
    m = 0
    for a in range(na):
        k = active[a]
        buf[m] = g[k]
        idx[m] = k
        m += 1 if g[k] != alpha else 0
    psi_total = digamma(total)
    exp_psi_minus_scalar(buf, psi_total, ps, m)
    at_prior = exp_nonpos(psi_alpha - psi_total)
    for k in range(K):
        out[k] = at_prior
    for i in range(m):
        out[idx[i]] = ps[i]


@jit
def _phinorm(WT, n, active, na, et, ph):
    """ph[j] = sum_a et[k_a] WT[k_a, j] over the topics k_a = active[a], a < na.

    Topics eight at a time, so each load and store of ph feeds eight FMAs and a
    sweep starts few loops (their set-up costs as much as a short document's
    words); the loops over the words are contiguous and vectorize.
    """
    for j in range(n):
        ph[j] = 0.0
    a = 0
    while a + 8 <= na:
        k = active[a : a + 8]
        e0, e1, e2, e3 = et[k[0]], et[k[1]], et[k[2]], et[k[3]]
        e4, e5, e6, e7 = et[k[4]], et[k[5]], et[k[6]], et[k[7]]
        w0, w1, w2, w3 = WT[k[0]], WT[k[1]], WT[k[2]], WT[k[3]]
        w4, w5, w6, w7 = WT[k[4]], WT[k[5]], WT[k[6]], WT[k[7]]
        for j in range(n):
            ph[j] += ((e0 * w0[j] + e1 * w1[j]) + (e2 * w2[j] + e3 * w3[j])) + (
                (e4 * w4[j] + e5 * w5[j]) + (e6 * w6[j] + e7 * w7[j])
            )
        a += 8
    while a < na:
        e0 = et[active[a]]
        w0 = WT[active[a]]
        for j in range(n):
            ph[j] += e0 * w0[j]
        a += 1


@jit
def _word_pass(WT, n, active, na, et, cnt, eps, ph, acc):
    """acc[a] = sum_j r_j WT[k_a, j] with r_j = cnt_j / (phinorm_j + eps).

    phinorm_j = sum_a et[k_a] WT[k_a, j] over the active topics k_a = active[a]
    (``_phinorm``); ``ph`` ends up holding r. Returns sum_j r_j.
    """
    _phinorm(WT, n, active, na, et, ph)
    total_r = 0.0
    for j in range(n):
        r = cnt[j] / (ph[j] + eps)
        ph[j] = r
        total_r += r
    a = 0
    while a + 8 <= na:
        k = active[a : a + 8]
        w0, w1, w2, w3 = WT[k[0]], WT[k[1]], WT[k[2]], WT[k[3]]
        w4, w5, w6, w7 = WT[k[4]], WT[k[5]], WT[k[6]], WT[k[7]]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        for j in range(n):
            r = ph[j]
            s0 += r * w0[j]
            s1 += r * w1[j]
            s2 += r * w2[j]
            s3 += r * w3[j]
            s4 += r * w4[j]
            s5 += r * w5[j]
            s6 += r * w6[j]
            s7 += r * w7[j]
        acc[a], acc[a + 1], acc[a + 2], acc[a + 3] = s0, s1, s2, s3
        acc[a + 4], acc[a + 5], acc[a + 6], acc[a + 7] = s4, s5, s6, s7
        a += 8
    while a < na:
        w0 = WT[active[a]]
        s0 = 0.0
        for j in range(n):
            s0 += ph[j] * w0[j]
        acc[a] = s0
        a += 1
    return total_r


# A topic whose exp E[log theta_k] times sum_j r_j is below alpha * 2^-54 (half an ulp
# of alpha) gets gamma_k = alpha exactly in the full update, because
# sum_j r_j exp E[log beta_kw] <= sum_j r_j (exp E[log beta] <= 1); such topics are
# left out of the O(n_d K) sweeps. The choice uses the previous sweep's sum_j r_j with
# a safety factor and is verified against the current one (else the sweep is redone
# with every topic), so skipping never changes gamma; it changes phinorm only by terms
# below 2^-54 of it, i.e. at the rounding level.
_HALF_ULP = 2.0**-54
_SAFETY = 1.0 / 16.0


@jit
def _compact_ids(et, K, skip_below, active):
    """Indices of the topics with et[k] > skip_below, ascending; returns their count."""
    na = 0
    for k in range(K):
        active[na] = k  # branch-free: the slot is kept only if the test holds
        na += 1 if et[k] > skip_below else 0
    return na


@jit
def _skipped_ok(et, K, skip_below, total_r, limit):
    """Every topic left out (et[k] <= skip_below) has et[k] * total_r < limit."""
    bad = 0
    for k in range(K):
        bad += 1 if (et[k] <= skip_below) & (et[k] * total_r >= limit) else 0
    return bad == 0


@jit
def e_step_blocks(
    b0,
    b1,
    indptr,
    indices,
    data,
    exp_beta_t,
    gamma,
    exp_theta,
    alpha,
    max_iter,
    tol,
    eps,
    block,
    ratio,
    want_ll,
    out_ll,
):
    """Blocks ``[b0, b1)`` of the per-document variational E-step over a CSR corpus.

    Block ``b`` is documents ``[b * block, min(N, (b + 1) * block))``; it writes only
    its documents' rows and entries and ``ll[b]``, so blocks can run on any thread in
    any order (``fastvi._threads.map_chunks``).

    Parameters
    ----------
    indptr : (N + 1,) int64, starting at 0
    indices, data : (nnz,) int32 word ids and float64 counts
    exp_beta_t : (V, K) exp E[log beta], transposed
    gamma : (N, K) float64, in: the initial values, out: the fitted ones
    exp_theta : (N, K) float64, out: exp E[log theta] of the fitted gamma
    alpha : doc-topic prior; max_iter, tol : iteration limit and mean-change tolerance
    eps : added to every phinorm (scikit-learn adds the input dtype's machine epsilon)
    block : documents per block (a constant, not the thread count)
    ratio : (nnz,) float64, out: n_dw / (phinorm_dw + eps) per stored entry
    want_ll : bool, compute the likelihood term of the bound
    out_ll : (n_blocks,) out: per-block sums of n_dw log phinorm_dw (zeros unless want_ll)
    """
    K = gamma.shape[1]
    N = gamma.shape[0]
    longest = 1
    for d in range(b0 * block, min(N, b1 * block)):
        longest = max(longest, indptr[d + 1] - indptr[d])
    # the document's columns of exp E[log beta], one contiguous row per topic
    WT = np.empty((K, longest))
    cnt = np.empty(longest)
    ph = np.empty(longest)
    g = np.empty(K)
    et = np.empty(K)
    acc = np.empty(K)
    ps = np.empty(K)
    ga = np.empty(K)
    buf = np.empty(K)
    active = np.empty(K, dtype=np.int64)
    idx = np.empty(K, dtype=np.int64)
    limit = alpha * _HALF_ULP
    ga[0] = alpha
    digamma_array(ga, ps, 1)
    psi_alpha = ps[0]
    for b in range(b0, b1):
        ll = 0.0
        for d in range(b * block, min(N, (b + 1) * block)):
            p0 = indptr[d]
            n = indptr[d + 1] - p0
            for j in range(n):
                w = indices[p0 + j]
                cnt[j] = data[p0 + j]
                for k in range(K):
                    WT[k, j] = exp_beta_t[w, k]
            for k in range(K):
                g[k] = gamma[d, k]
            _exp_dirichlet(g, ps, et)
            total_r = np.inf  # unknown before the first sweep: every topic is active
            for _ in range(max_iter):
                skip_below = _SAFETY * limit / total_r
                na = _compact_ids(et, K, skip_below, active)
                total_r = _word_pass(WT, n, active, na, et, cnt, eps, ph, acc)
                if na < K and not _skipped_ok(et, K, skip_below, total_r, limit):
                    # a topic left out would not round to alpha: redo with all topics
                    na = _compact_ids(et, K, -1.0, active)
                    total_r = _word_pass(WT, n, active, na, et, cnt, eps, ph, acc)
                for k in range(K):
                    ga[k] = alpha
                for a in range(na):
                    k = active[a]
                    ga[k] = et[k] * acc[a] + alpha
                change = 0.0
                for k in range(K):
                    change += abs(ga[k] - g[k])
                    g[k] = ga[k]
                _exp_dirichlet_sparse(g, alpha, psi_alpha, active, na, buf, idx, ps, et)
                if change / K < tol:
                    break
            # phinorm with the final exp E[log theta] and every topic: the statistic's
            # ratio and the bound
            na = _compact_ids(et, K, -1.0, active)
            _phinorm(WT, n, active, na, et, ph)
            for j in range(n):
                s = ph[j]
                ratio[p0 + j] = cnt[j] / (s + eps)
                if want_ll and cnt[j] != 0.0:
                    ll += cnt[j] * math.log(s)
            for k in range(K):
                gamma[d, k] = g[k]
                exp_theta[d, k] = et[k]
        out_ll[b] = ll


@jit
def csc_order(indptr, indices, n_words):
    """Stored entries grouped by word: (col_ptr, entry, doc).

    Word w's entries are ``entry[col_ptr[w]:col_ptr[w + 1]]`` (positions in the CSR
    arrays) of documents ``doc[...]``, documents ascending.
    """
    N = indptr.shape[0] - 1
    nnz = indptr[N] - indptr[0]
    col_ptr = np.zeros(n_words + 1, dtype=np.int64)
    for p in range(indptr[0], indptr[N]):
        col_ptr[indices[p] + 1] += 1
    for w in range(n_words):
        col_ptr[w + 1] += col_ptr[w]
    fill = col_ptr[:n_words].copy()
    entry = np.empty(nnz, dtype=np.int64)
    doc = np.empty(nnz, dtype=np.int32)  # document ids fit int32 (N < 2^31)
    for d in range(N):
        for p in range(indptr[d], indptr[d + 1]):
            w = indices[p]
            q = fill[w]
            entry[q] = p
            doc[q] = d
            fill[w] = q + 1
    return col_ptr, entry, doc


@jit
def topic_word_blocks(
    b0,
    b1,
    col_ptr,
    entry,
    doc,
    ratio,
    exp_theta,
    exp_beta_t,
    lam_t,
    decay,
    weight,
    eta,
    scale,
    block,
    sums,
):
    """Blocks ``[b0, b1)`` of words of the topic-word statistic and M-step, in place on
    ``lam_t`` (see the module doc).

    lam_t[w] <- decay * lam_t[w] + weight * (eta + scale * sstats[w]) with
    sstats[w, k] = exp_beta_t[w, k] * sum over w's entries of ratio * exp_theta[doc, k].
    Block ``b`` is words ``[b * block, min(V, (b + 1) * block))`` and writes ``sums[b]``
    (K,), the partial sums over its words of the new lam_t.
    """
    V, K = lam_t.shape
    acc = np.empty(K)
    for b in range(b0, b1):
        for k in range(K):
            sums[b, k] = 0.0
        for w in range(b * block, min(V, (b + 1) * block)):
            for k in range(K):
                acc[k] = 0.0
            for p in range(col_ptr[w], col_ptr[w + 1]):
                r = ratio[entry[p]]
                d = doc[p]
                for k in range(K):
                    acc[k] += r * exp_theta[d, k]
            for k in range(K):
                v = decay * lam_t[w, k] + weight * (
                    eta + scale * (acc[k] * exp_beta_t[w, k])
                )
                lam_t[w, k] = v
                sums[b, k] += v


@jit
def dirichlet_expectation_blocks(b0, b1, lam_t, psi_sums, block, out):
    """Blocks ``[b0, b1)`` of words of out[w, k] = exp(psi(lam_t[w, k]) - psi_sums[k]),
    psi_sums[k] = psi(sum_w lam)."""
    V = lam_t.shape[0]
    for b in range(b0, b1):
        for w in range(b * block, min(V, (b + 1) * block)):
            exp_psi_minus(lam_t[w], psi_sums, out[w], lam_t.shape[1])


@jit
def dirichlet_expectation_rows_blocks(b0, b1, lam_t, psi_sums, words, block, out):
    """``dirichlet_expectation_blocks`` for the rows ``words`` (int64) only, in blocks of
    ``block`` entries of ``words``.

    Online rounds need exp E[log beta] only for the words of the next minibatch; the
    other rows of ``out`` are left as they are.
    """
    n = words.shape[0]
    for b in range(b0, b1):
        for i in range(b * block, min(n, (b + 1) * block)):
            exp_psi_minus(lam_t[words[i]], psi_sums, out[words[i]], lam_t.shape[1])


@jit
def doc_terms_blocks(b0, b1, gamma, alpha, block, out):
    """Blocks ``[b0, b1)`` of rows of ``gamma`` of the documents' Dirichlet terms of the
    bound: ``out[b]`` is block ``b``'s sum, to be added in block order.

    For each row g (theta_d ~ Dir(g), prior Dir(alpha)): E[log p(theta_d | alpha)] -
    E[log q(theta_d | g)] = sum_k (alpha - g_k) E[log theta_dk] + log Gamma(g_k) -
    log Gamma(alpha) + log Gamma(K alpha) - log Gamma(sum_k g_k).
    """
    N, K = gamma.shape
    ps = np.empty(K)
    lg_alpha = math.lgamma(alpha)
    lg_total_prior = math.lgamma(alpha * K)
    for b in range(b0, b1):
        score = 0.0
        for d in range(b * block, min(N, (b + 1) * block)):
            g = gamma[d]
            total = 0.0
            for k in range(K):
                total += g[k]
            psi_total = digamma(total)
            digamma_array(g, ps, K)
            for k in range(K):
                score += (alpha - g[k]) * (ps[k] - psi_total)
                score += math.lgamma(g[k]) - lg_alpha
            score += lg_total_prior - math.lgamma(total)
        out[b] = score


@jit
def topic_terms_blocks(b0, b1, lam_t, eta, psi_sums, block, out):
    """Blocks ``[b0, b1)`` of words of the per-entry part of the topics' Dirichlet
    terms: ``out[b]`` is block ``b``'s sum, to be added in block order.

    sum_{w,k} (eta - lam_wk) E[log beta_kw] + log Gamma(lam_wk) - log Gamma(eta), with
    E[log beta_kw] = psi(lam_wk) - psi_sums[k]; the caller adds the per-topic part
    sum_k log Gamma(V eta) - log Gamma(sum_w lam_wk).
    """
    V, K = lam_t.shape
    ps = np.empty(K)
    lg_eta = math.lgamma(eta)
    for b in range(b0, b1):
        score = 0.0
        for w in range(b * block, min(V, (b + 1) * block)):
            row = lam_t[w]
            digamma_array(row, ps, K)
            for k in range(K):
                score += (eta - row[k]) * (ps[k] - psi_sums[k])
                score += math.lgamma(row[k]) - lg_eta
        out[b] = score
