"""Kernels of stochastic collapsed variational Bayes for LDA (SCVB0).

SCVB0 (Foulds, Boyles, DuBois, Smyth & Welling, KDD 2013; the CVB0 update of
Asuncion, Welling, Smyth & Teh, UAI 2009) keeps expected counts instead of Dirichlet
parameters: N_theta (a document's topic counts), N_phi (V, K) (the topics' word
counts) and N_z (K,) = sum_w N_phi. Here the topics are held as
``lam_t = eta + N_phi`` (V, K), the same pseudo-counts online variational Bayes keeps
in lambda, so every other part of the estimator (transform, perplexity, saving)
reads them unchanged; then (N_phi[w, k] + eta) / (N_z[k] + V eta) is
``lam_t[w, k] / sums[k]`` with ``sums = lam_t.sum(axis=0)``.

``scvb0_doc_blocks``
    Per document d of a minibatch, with the topics held fixed: N_theta starts uniform
    (C_d / K, C_d the document's length) and each stored entry (word w, count c) is
    visited ``burn_in + 1`` times in order; a visit computes the CVB0 responsibility
    gamma_k proportional to lam_t[w, k] / sums[k] * (N_theta[k] + alpha) and moves
    N_theta toward C_d gamma with step rho_t = (tau + t)^-KAPPA_THETA, applied
    c times at once ("clumping": N_theta <- (1 - rho)^c N_theta + (1 - (1 - rho)^c)
    C_d gamma), t counting the visits of the document. The last visit writes
    ``c * gamma`` for the entry into ``gam`` (n_entries, K). The steps rho_t are a
    table computed once per call, and (1 - rho)^c needs no pow for the usual c = 1.
``scvb0_topic_blocks``
    The minibatch statistic N_hat_phi[w] = sum of ``gam`` over w's entries (from the
    word-grouped order of ``kernels.lda.csc_order``, documents ascending), fused with
    the topic step lam_t <- decay * lam_t + weight * (eta + scale * N_hat_phi), which
    is N_phi <- (1 - rho) N_phi + rho * scale * N_hat_phi written on lam_t (decay =
    1 - rho, weight = rho, scale = corpus size over minibatch size); per-block sums of
    the new lam_t for the caller to add in block order.

Documents are independent given the topics, each writes only its own rows of ``gam``,
and the statistic is assembled word by word in a fixed order, so results are the same
bits for any number of threads. N_theta is not kept between visits of a document
(memory stays proportional to the minibatch, as out-of-core fits need); the burn-in
visits stand in for it.
"""

import math

import numpy as np

from ._config import jit

# the decay of the document-level step of Foulds et al. (2013): rho = (tau + t)^-0.9
KAPPA_THETA = 0.9


@jit
def _doc(indptr, indices, data, lam_t, inv_sums, alpha, burn_in, steps, d, n_theta,
         g, gam):  # fmt: skip
    K = lam_t.shape[1]
    p0, p1 = indptr[d], indptr[d + 1]
    length = 0.0
    for p in range(p0, p1):
        length += data[p]
    if length <= 0.0:
        for p in range(p0, p1):
            for k in range(K):
                gam[p, k] = 0.0
        return
    for k in range(K):
        n_theta[k] = length / K
    t = 0
    for visit in range(burn_in + 1):
        last = visit == burn_in
        for p in range(p0, p1):
            w = indices[p]
            c = data[p]
            for k in range(K):
                g[k] = lam_t[w, k] * inv_sums[k] * (n_theta[k] + alpha)
            # the sum in a loop of its own: a loop that stores into g while it reduces
            # is vectorized behind a runtime overlap check of g against n_theta, and
            # its scalar and vector paths sum in different orders (reassociation),
            # so the bits would depend on where the scratch arrays were allocated
            z = 0.0
            for k in range(K):
                z += g[k]
            inv_z = 1.0 / z
            rho = steps[t]
            t += 1
            # (1 - rho)^c; pow(x, 1) is x exactly, and most counts are 1
            keep = 1.0 - rho if c == 1.0 else math.pow(1.0 - rho, c)
            move = (1.0 - keep) * length
            for k in range(K):
                gk = g[k] * inv_z
                n_theta[k] = keep * n_theta[k] + move * gk
                if last:
                    gam[p, k] = c * gk


@jit
def scvb0_doc_blocks(
    b0, b1, indptr, indices, data, lam_t, inv_sums, alpha, burn_in, tau, block, gam
):
    """Blocks ``[b0, b1)`` of ``block`` documents: their entries' ``c * gamma`` into
    ``gam`` (see the module doc)."""
    K = lam_t.shape[1]
    n_docs = indptr.shape[0] - 1
    n_theta = np.empty(K)
    g = np.empty(K)
    longest = 0
    for d in range(b0 * block, min(n_docs, b1 * block)):
        longest = max(longest, indptr[d + 1] - indptr[d])
    # rho_t for every visit of the longest document, computed once: two pow calls
    # per entry visit cost more than the visit's loops over the topics
    steps = np.empty((burn_in + 1) * longest)
    for t in range(steps.shape[0]):
        steps[t] = math.pow(tau + t, -KAPPA_THETA)
    for b in range(b0, b1):
        for d in range(b * block, min(n_docs, (b + 1) * block)):
            _doc(indptr, indices, data, lam_t, inv_sums, alpha, burn_in, steps, d,
                 n_theta, g, gam)  # fmt: skip


@jit
def scvb0_topic_blocks(
    b0, b1, col_ptr, entry, gam, lam_t, decay, weight, eta, scale, block, sums
):
    """Blocks ``[b0, b1)`` of ``block`` words: lam_t[w] <- decay * lam_t[w] + weight *
    (eta + scale * sum of gam over w's entries), in place; ``sums[b]`` (K,) is the
    block's partial sum of the new lam_t."""
    V, K = lam_t.shape
    acc = np.empty(K)
    for b in range(b0, b1):
        s = sums[b]
        for k in range(K):
            s[k] = 0.0
        for w in range(b * block, min(V, (b + 1) * block)):
            for k in range(K):
                acc[k] = 0.0
            for q in range(col_ptr[w], col_ptr[w + 1]):
                row = gam[entry[q]]
                for k in range(K):
                    acc[k] += row[k]
            for k in range(K):
                v = decay * lam_t[w, k] + weight * (eta + scale * acc[k])
                lam_t[w, k] = v
                s[k] += v
