"""Slow, obviously correct NumPy references for ``fastvi.kernels.lda``.

Each function computes what the kernel of the same name computes, one document or one
formula at a time, with no blocks, gathers or fused loops.
"""

import numpy as np
from scipy.special import digamma, gammaln


def exp_dirichlet(g):
    """exp(E[log theta]) for theta ~ Dir(g), one row or many."""
    g = np.asarray(g, dtype=np.float64)
    return np.exp(digamma(g) - digamma(g.sum(axis=-1, keepdims=True)))


def e_step(indptr, indices, data, exp_beta_t, gamma0, alpha, max_iter, tol, eps):
    """Per-document fixed point (Hoffman et al. 2010, Algorithm 2).

    Returns gamma, exp_theta, ratio (per stored entry) and the per-document likelihood
    terms sum_w n_dw log phinorm_dw.
    """
    N, K = gamma0.shape
    gamma = gamma0.astype(np.float64).copy()
    exp_theta = np.empty_like(gamma)
    ratio = np.empty(len(data))
    ll = np.zeros(N)
    for d in range(N):
        lo, hi = indptr[d], indptr[d + 1]
        ids, cnts = indices[lo:hi], data[lo:hi]
        beta_d = exp_beta_t[ids].T  # (K, n_d)
        g = gamma[d].copy()
        et = exp_dirichlet(g)
        for _ in range(max_iter):
            phinorm = et @ beta_d + eps
            new = et * (beta_d @ (cnts / phinorm)) + alpha
            change = np.mean(np.abs(new - g))
            g = new
            et = exp_dirichlet(g)
            if change < tol:
                break
        phinorm = et @ beta_d
        ratio[lo:hi] = cnts / (phinorm + eps)
        nz = cnts != 0
        ll[d] = np.sum(cnts[nz] * np.log(phinorm[nz]))
        gamma[d] = g
        exp_theta[d] = et
    return gamma, exp_theta, ratio, ll


def csc_order(indptr, indices, n_words):
    """(col_ptr, entry, doc): stored entries grouped by word, documents ascending."""
    doc_of = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    entry = np.argsort(indices, kind="stable")
    col_ptr = np.concatenate([[0], np.cumsum(np.bincount(indices, minlength=n_words))])
    return col_ptr, entry, doc_of[entry]


def topic_word_stats(indptr, indices, ratio, exp_theta, exp_beta_t):
    """(V, K) sstats[w, k] = exp_beta[k, w] * sum_d ratio_dw exp_theta[d, k]."""
    N = len(indptr) - 1
    V = exp_beta_t.shape[0]
    R = np.zeros((N, V))
    for d in range(N):
        lo, hi = indptr[d], indptr[d + 1]
        np.add.at(R[d], indices[lo:hi], ratio[lo:hi])
    return (R.T @ exp_theta) * exp_beta_t


def topic_word_update(
    indptr, indices, ratio, exp_theta, exp_beta_t, lam_t, decay, weight, eta, scale
):
    """New lam_t = decay * lam_t + weight * (eta + scale * sstats)."""
    sstats = topic_word_stats(indptr, indices, ratio, exp_theta, exp_beta_t)
    return decay * lam_t + weight * (eta + scale * sstats)


def dirichlet_expectation_t(lam_t):
    """exp(E[log beta])^T from lambda^T (V, K): columns are the topics."""
    return np.exp(digamma(lam_t) - digamma(lam_t.sum(axis=0)))


def dirichlet_terms(prior, distr):
    """sum over rows of E[log p(x | prior)] - E[log q(x | distr)], x ~ Dir(row)."""
    distr = np.asarray(distr, dtype=np.float64)
    size = distr.shape[1]
    totals = distr.sum(axis=1)
    e_log = digamma(distr) - digamma(totals)[:, np.newaxis]
    return (
        np.sum((prior - distr) * e_log)
        + np.sum(gammaln(distr) - gammaln(prior))
        + np.sum(gammaln(prior * size) - gammaln(totals))
    )


def scvb0_fit(
    X, components, alpha, eta, batch_size, passes, kappa, tau0, burn_in, tau_theta
):
    """SCVB0 (Foulds et al. 2013) written out token entry by token entry.

    ``components`` (K, V) are the initial pseudo-counts lambda = eta + N_phi; returns
    the final ones. Each document starts from N_theta = C_d / K and visits its stored
    entries ``burn_in + 1`` times with step (tau_theta + t)^-0.9, a count c applying
    the step c times; the last visit's c * gamma are the document's statistic. After each
    minibatch N_phi <- (1 - rho) N_phi + rho (D / |M|) N_hat_phi, rho = (tau0 +
    t)^-kappa with t = 1, 2, ... counting minibatches.
    """
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
    D, V = X.shape
    lam = np.array(components, dtype=np.float64)
    K = lam.shape[0]
    step = 1
    for _ in range(passes):
        for start in range(0, D, batch_size):
            docs = range(start, min(D, start + batch_size))
            phi = lam / lam.sum(axis=1, keepdims=True)
            stat = np.zeros((K, V))
            for d in docs:
                words = np.flatnonzero(X[d])
                length = X[d].sum()
                if length == 0:
                    continue
                n_theta = np.full(K, length / K)
                t = 0
                for visit in range(burn_in + 1):
                    for w in words:
                        c = X[d, w]
                        g = phi[:, w] * (n_theta + alpha)
                        g = g / g.sum()
                        rho_theta = (tau_theta + t) ** -0.9
                        t += 1
                        keep = (1.0 - rho_theta) ** c
                        n_theta = keep * n_theta + (1.0 - keep) * length * g
                        if visit == burn_in:
                            stat[:, w] += c * g
            rho = (tau0 + step) ** -kappa
            lam = (1.0 - rho) * lam + rho * (eta + D / len(docs) * stat)
            step += 1
    return lam
