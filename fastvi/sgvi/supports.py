"""Vector supports: ``"ordered"`` and ``"simplex"`` (transforms, inverses, log-Jacobians
and the chain rule), used by :class:`fastvi.sgvi.Model` for parameters declared with
them.

Each transform maps the unconstrained block ``z`` (..., n) of a parameter to its
constrained value ``theta`` (..., K); every function works on the last axis.

``"ordered"`` (K = n): ``theta_0 = z_0``, ``theta_k = theta_{k-1} + exp(z_k)``;
``log |J| = sum_{k >= 1} z_k`` (Stan reference manual, "Ordered vector").

``"simplex"`` (n = K - 1): stick-breaking as in Stan ("Unit simplex"): for
``i = 0 .. K-2``, ``u_i = sigmoid(z_i - log(K - 1 - i))``, ``theta_i = r_i u_i`` with
``r_0 = 1`` and ``r_{i+1} = r_i - theta_i``, and ``theta_{K-1} = r_{K-1}``;
``log |J| = sum_i [log u_i + log(1 - u_i) + log r_i]``. The offset makes ``z = 0``
the uniform simplex.
"""

import numpy as np
from scipy.special import expit, log_expit

__all__ = ["VECTOR_SUPPORTS", "free_size"]

VECTOR_SUPPORTS = ("ordered", "simplex")


def free_size(support, size):
    """Unconstrained coordinates of a parameter of ``size`` constrained entries."""
    return size - 1 if support == "simplex" else size


# ------------------------------------------------------------------ ordered
def ordered_forward(z):
    """theta = T(z) and log |J| (shape z.shape[:-1])."""
    theta = np.empty_like(z)
    theta[..., :1] = z[..., :1]
    theta[..., 1:] = np.exp(z[..., 1:])
    np.cumsum(theta, axis=-1, out=theta)
    return theta, z[..., 1:].sum(axis=-1)


def ordered_inverse(theta):
    z = np.empty_like(theta)
    z[..., :1] = theta[..., :1]
    with np.errstate(divide="ignore", invalid="ignore"):
        z[..., 1:] = np.log(np.diff(theta, axis=-1))
    return z


def ordered_grad(z, theta, g):
    """d/dz [f(T(z)) + log |J|] from ``g`` = df/dtheta: d theta_j / d z_k is 1 for
    k = 0 and exp(z_k) for 1 <= k <= j, so the k-th entry is a tail sum of g."""
    tail = np.cumsum(g[..., ::-1], axis=-1)[..., ::-1]
    out = np.empty_like(z)
    out[..., :1] = tail[..., :1]
    out[..., 1:] = np.exp(z[..., 1:]) * tail[..., 1:] + 1.0
    return out


# ------------------------------------------------------------------ simplex
def _offset(n):
    # log(K - 1 - i) for i = 0 .. K-2, with n = K - 1
    return np.log(np.arange(n, 0, -1, dtype=np.float64))


def simplex_forward(z):
    n = z.shape[-1]
    v = z - _offset(n)
    u = expit(v)
    # log r_i = sum_{j < i} log(1 - u_j); r by cumulative products (no log needed)
    log1mu = log_expit(-v)
    log_r = np.concatenate(
        [np.zeros(z.shape[:-1] + (1,)), np.cumsum(log1mu, axis=-1)], axis=-1
    )
    r = np.exp(log_r)
    theta = np.empty(z.shape[:-1] + (n + 1,))
    theta[..., :n] = r[..., :n] * u
    theta[..., n] = r[..., n]
    log_j = (log_expit(v) + log1mu + log_r[..., :n]).sum(axis=-1)
    return theta, log_j


def simplex_inverse(theta):
    K = theta.shape[-1]
    n = K - 1
    r = 1.0 - np.concatenate(
        [np.zeros(theta.shape[:-1] + (1,)), np.cumsum(theta[..., : n - 1], axis=-1)],
        axis=-1,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        u = theta[..., :n] / r
        return np.log(u) - np.log1p(-u) + _offset(n)


def simplex_grad(z, theta, g):
    """Reverse pass of the stick-breaking, written with b_i = r_i * (adjoint of r_i)
    so that no 1/r_i appears (r_i underflows far out in the tails):
    b_{K-1} = g_{K-1} theta_{K-1};
    dz_i = g_i theta_i (1 - u_i) - b_{i+1} u_i + 1 - 2 u_i;
    b_i = g_i theta_i + b_{i+1} + 1 (the 1 from log r_i in log |J|)."""
    n = z.shape[-1]
    u = expit(z - _offset(n))
    gt = g * theta
    out = np.empty_like(z)
    b = gt[..., n]
    for i in range(n - 1, -1, -1):
        out[..., i] = (
            gt[..., i] * (1.0 - u[..., i]) - b * u[..., i] + 1.0 - 2.0 * u[..., i]
        )
        b = gt[..., i] + b + 1.0
    return out


FORWARD = {"ordered": ordered_forward, "simplex": simplex_forward}
INVERSE = {"ordered": ordered_inverse, "simplex": simplex_inverse}
GRAD = {"ordered": ordered_grad, "simplex": simplex_grad}
