"""Slow, obviously correct NumPy references for fastvi's kernels.

Each function computes what the kernel of the same name computes, one formula at a time,
with no tiling, chunking or fused loops.
"""

import numpy as np
from scipy.special import logsumexp


def mixture_log_prob(X, kind, means, prec, const):
    """(N, K) expected log-densities ``const[k] - 0.5 * maha_k(x)``."""
    N = X.shape[0]
    K = const.shape[0]
    out = np.empty((N, K))
    for k in range(K):
        if kind == 0:  # full: || (x - m_k) @ U_k ||^2
            z = (X - means[k]) @ prec[k]
            maha = np.sum(z**2, axis=1)
        elif kind == 1:  # tied: means are already projected, || x @ U - proj_k ||^2
            z = X @ prec[0] - means[k]
            maha = np.sum(z**2, axis=1)
        else:  # diag: sum_d p_kd (x_d - m_kd)^2
            maha = np.sum(prec[k, 0] * (X - means[k]) ** 2, axis=1)
        out[:, k] = const[k] - 0.5 * maha
    return out


def mixture_pass(X, kind, means, prec, const, shift, resp_in=None):
    """Totals (not per-chunk parts) of what ``kernels.gmm.mixture_pass`` returns.

    Returns nk, sx, sq, norm, entropy, log_resp, lse.
    """
    N, D = X.shape
    K = const.shape[0]
    if resp_in is None:
        lp = mixture_log_prob(X, kind, means, prec, const)
        lse = logsumexp(lp, axis=1)
        log_resp = lp - lse[:, None]
        resp = np.exp(log_resp)
        entropy = -np.sum(resp * log_resp)
        norm = lse.sum()
    else:
        resp = resp_in
        log_resp = lse = None
        entropy = norm = 0.0
    nk = resp.sum(axis=0)
    sx = np.empty((K, D))
    Dq = D if kind == 0 else (1 if kind == 2 else 0)
    sq = np.zeros((K, Dq, D))
    for k in range(K):
        y = X - shift[k]
        sx[k] = resp[:, k] @ y
        if kind == 0:
            sq[k] = np.triu((resp[:, k, None] * y).T @ y)
        elif kind == 2:
            sq[k, 0] = resp[:, k] @ (y * y)
    return nk, sx, sq, norm, entropy, log_resp, lse


def centered_gram(X, center):
    """Upper triangle of sum_n (x_n - c)(x_n - c)^T."""
    Y = X - center
    return np.triu(Y.T @ Y)
