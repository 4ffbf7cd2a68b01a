"""The SGVI engine: variational families, gradient estimators, optimizers, stopping rules.

It follows NumPyro's ``infer/svi.py`` shape: :class:`SGVI` holds the model and the
settings; :class:`SGVIState` is an immutable tuple (variational parameters, optimizer
state, random key, step count); :meth:`SGVI.step` is a pure function of a state;
:meth:`SGVI.run` loops (with a tqdm progress bar when asked and installed) and can
resume from any state (``init_state``).

By default (``method='auto'``) :meth:`SGVI.run` first fits q on one fixed set of
draws by BFGS from the Laplace start (DADVI: :mod:`fastvi.sgvi.fixed`) and takes
the stochastic steps below only when that fit's sampling error is too large.

One step, for draws eps_s ~ N(0, I), s = 1..S (Kucukelbir et al. 2017, eq. 7-8):

    z_s = mu + L eps_s                (mean-field: L = diag(exp(omega)))
    g_s = grad_z [log p(x, T(z_s)) + log|J_T(z_s)|]      (one data pass for all s)
    ELBO estimate = mean_s log p + H[q]                  (closed-form entropy)

and the gradient of the ELBO in (mu, L) is estimated by

* ``"stl"`` (default; Roeder, Wu & Duvenaud 2017): the path derivative of
  log p(z) - log q(z) with q's parameters held fixed inside log q, i.e. d_s = g_s +
  L^{-T} eps_s, then grad_mu = mean d_s and grad_L = tril(mean d_s eps_s^T). Its
  variance vanishes when q equals the posterior.
* ``"reparam"`` (Stan's ADVI): grad_mu = mean g_s, grad_L = tril(mean g_s eps_s^T)
  + diag(1 / L_ii) (the entropy's gradient in closed form).

* ``"score"`` (Ranganath, Gerrish & Blei 2014, "black box VI", §2 and §3.2):
  needs only log p, no gradient. With h_s = grad_lambda log q(z_s) and f_s = h_s
  (log p(z_s) - log q(z_s)), each component i of the gradient is
  mean_s (f_si - a_i h_si), with the control-variate scale a_i = Cov(f_i, h_i) /
  Var(h_i) estimated from the same S >= 2 draws (their control variate, one
  scale per component).

Mean-field q is parameterized by omega = log sigma. Full-rank L = diag(sigma) (I + M)
is parameterized by log sigma and the unitless strictly lower M (scaled by
1 / sqrt(P - 1)), so a step of fixed size (Adam's) is a fixed fraction of q's scale in
every parameter (see :class:`FullRank`); the chain rule maps the (mu, L) gradients
above to these.

With ``qmc=True`` the eps of step ``t`` are the points [t S, (t + 1) S) of one
scrambled Sobol' sequence (``scipy.stats.qmc.Sobol``, seeded from the run's key)
mapped through the normal quantile function; retries after a non-finite step use
pseudo-random draws. Blocks of S = 2^m consecutive points are balanced nets, so S
should be a power of 2 (with S = 1 QMC changes nothing useful).

Randomness: every draw of step ``t`` (and of its ``r``-th retry after a non-finite
step) comes from a counter-based generator, ``numpy.random.Philox`` with the run's key
and the counter's upper words set to ``(t, r)``: a seed reproduces a fit bit for bit
whatever the number of threads, and a resumed run draws exactly what an uninterrupted
one would. (Philox needs no seed hashing: a step's generator costs ~13 µs, a third of
``default_rng([key, t, r])``'s, which matters for millisecond minibatch steps.)
"""

import copy
import functools
import inspect
import math
import threading
import warnings
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
from scipy.linalg import solve_triangular
from scipy.linalg.lapack import dtrtrs
from scipy.special import ndtri

from .._compile import announces
from .._threads import thread_limits

__all__ = [
    "Adam",
    "FullRank",
    "MeanField",
    "Posterior",
    "RobbinsMonro",
    "SGVI",
    "SGVIResult",
    "SGVIRun",
    "SGVIState",
    "StanAdaptive",
    "StanConvergence",
    "DivergenceMonitor",
    "WindowConvergence",
    "select_eta",
]

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2PI_E = _LOG_2PI + 1.0
ESTIMATORS = ("stl", "reparam", "score")
# Draws per call of the model when many are evaluated at once (ELBO estimates, PSIS):
# bounds the per-chunk partial sums of the GLM kernels at (chunks, 64, D) doubles.
_DRAW_BATCH = 64
# SeedSequence words that keep the draws of the eta search and of the QMC scrambling
# apart ([key, tag, ...]); the steps draw from a Philox generator keyed by the run's
# key instead (_step_rng).
_TAG_ADAPT = 2**62 + 1
_TAG_QMC = 2**62 + 2
_TAG_PSIS = 2**62 + 3
_TAG_FIXED = 2**62 + 4
_TAG_STATIONARY = 2**62 + 5
METHODS = ("auto", "fixed", "sgd")
# The fixed-draw fit (fastvi.sgvi.fixed): pairs of draws per coordinate (at least
# _FIXED_MIN_PAIRS), the largest estimated sampling error it accepts (in q's sds
# for the means, in log sd for the sds), and how many times it may double its
# draws to get there before the stochastic steps take over.
_FIXED_MIN_PAIRS = 8
_FIXED_TOL_MEAN = 0.05
_FIXED_TOL_SD = 0.035
_FIXED_REPLICATES = 2
_FIXED_DOUBLE_MAX = 2.0
# before the fit, the gap between two sets of draws at the Laplace start
# (fixed.start_gap) above this many tolerances skips it (eight schools: 25-200)
_FIXED_SCREEN = 4.0
_FIXED_ROUNDS = 1
# A full-rank q whitens by the full Cholesky factor of the Laplace covariance up to
# this many coordinates (an O(P^3) change of coordinates per step), by its
# diagonal above.
_FULL_FRAME_MAX = 200
# The Laplace start finds the mode by Newton's method (one call of the model on
# P + 1 points per iteration) up to this many coordinates, by L-BFGS above.
_NEWTON_MAX = 64


def _step_rng(key, step, retry):
    """The generator of step ``step``'s ``retry``-th draw (see the module docs).

    ``Philox(key=key, counter=[0, 0, step, retry])`` wrapped in a ``Generator``:
    one per thread and key is kept and its state set (a quarter of the cost of
    making a new one, ~6 µs against ~25 µs); it is valid until the next call in
    the same thread."""
    cache = _RNG_CACHE
    if getattr(cache, "key", None) != key:
        cache.bit_generator = np.random.Philox(key=key)
        cache.generator = np.random.Generator(cache.bit_generator)
        cache.key_words = cache.bit_generator.state["state"]["key"].copy()
        cache.key = key
    cache.bit_generator.state = {
        "bit_generator": "Philox",
        "state": {
            "counter": np.array([0, 0, step, retry], dtype=np.uint64),
            "key": cache.key_words,
        },
        "buffer": np.zeros(4, dtype=np.uint64),
        "buffer_pos": 4,
        "has_uint32": 0,
        "uinteger": 0,
    }
    return cache.generator


_RNG_CACHE = threading.local()


def _score_combine(h, w, control_variate):
    """mean_s (h_s w_s - a h_s) with a = Cov(f, h) / Var(h) per component.

    Ranganath et al. (2014), §3.2, with f = h w; ``h`` (S, K), ``w`` (S,)."""
    f = h * w[:, None]
    if not control_variate:
        return f.mean(axis=0)
    hc = h - h.mean(axis=0)
    fc = f - f.mean(axis=0)
    var = np.sum(hc * hc, axis=0)
    cov = np.sum(fc * hc, axis=0)
    a = np.divide(cov, var, out=np.zeros_like(cov), where=var > 0)
    return (f - a * h).mean(axis=0)


# ------------------------------------------------------------------ families
class MeanField:
    """Diagonal Gaussian q(z) = N(mu, diag(sigma^2)), packed as [mu, log sigma]."""

    name = "meanfield"

    def __init__(self, dim):
        self.dim = int(dim)
        self.size = 2 * self.dim

    def init(self, mean, scale):
        return np.concatenate(
            [np.asarray(mean, float), np.full(self.dim, math.log(scale))]
        )

    def mean(self, phi):
        return phi[: self.dim]

    def std(self, phi):
        return np.exp(phi[self.dim :])

    def cov(self, phi):
        return np.diag(self.std(phi) ** 2)

    def factor(self, phi):
        """sigma: what :meth:`sample` and :meth:`grad` need of q's scale."""
        return np.exp(phi[self.dim :])

    def sample(self, phi, eps, factor=None):
        sigma = self.factor(phi) if factor is None else factor
        return phi[: self.dim] + sigma * eps

    def entropy(self, phi):
        return float(phi[self.dim :].sum() + 0.5 * self.dim * _LOG_2PI_E)

    def log_q(self, phi, z):
        sigma = np.exp(phi[self.dim :])
        u = (z - phi[: self.dim]) / sigma
        return (
            -0.5 * np.sum(u * u, axis=-1)
            - np.sum(phi[self.dim :])
            - 0.5 * self.dim * (math.log(2.0 * math.pi))
        )

    def grad(self, phi, eps, gz, estimator, factor=None):
        sigma = self.factor(phi) if factor is None else factor
        out = np.empty(self.size)
        w = 1.0 / eps.shape[0]  # means as sums times 1 / S (cheaper calls)
        if estimator == "stl":
            d = gz + eps / sigma
            out[: self.dim] = d.sum(axis=0) * w
            out[self.dim :] = (d * eps).sum(axis=0) * (w * sigma)
        else:
            out[: self.dim] = gz.sum(axis=0) * w
            out[self.dim :] = (gz * eps).sum(axis=0) * (w * sigma) + 1.0
        return out

    def log_q_eps(self, phi, eps):
        """log q(mu + sigma eps) for draws eps of shape (S, P)."""
        return (
            -0.5 * np.sum(eps * eps, axis=-1)
            - np.sum(phi[self.dim :])
            - 0.5 * self.dim * _LOG_2PI
        )

    def score(self, phi, eps):
        """grad_phi log q(z_s) at z_s = mu + sigma eps_s: (S, 2P) of
        [eps / sigma, eps^2 - 1] (the second in log sigma)."""
        return np.concatenate([eps / np.exp(phi[self.dim :]), eps * eps - 1.0], axis=1)

    def coordinate_names(self, names):
        return [f"mean of {n}" for n in names] + [f"log-scale of {n}" for n in names]

    def to_frame(self, phi, frame):
        """The parameters of q in the whitened coordinates u = B^{-1} (z - a) of
        ``frame`` (a :class:`Frame` with a diagonal ``B``)."""
        b = frame.B
        return np.concatenate(
            [(phi[: self.dim] - frame.a) / b, phi[self.dim :] - np.log(b)]
        )

    def from_frame(self, phi_u, frame):
        """The inverse of :meth:`to_frame`."""
        b = frame.B
        return np.concatenate(
            [frame.a + b * phi_u[: self.dim], phi_u[self.dim :] + np.log(b)]
        )


class FullRank:
    """Gaussian q(z) = N(mu, L L^T), L lower triangular with a positive diagonal.

    L is parameterized row by row relative to its diagonal, L = diag(sigma) (I + M)
    with M strictly lower triangular: L_ii = sigma_i, L_ij = sigma_i M_ij (j < i).
    Packed as [mu, the lower triangle row by row holding log sigma_i on the diagonal
    and M_ij / c below it, c = 1 / sqrt(P - 1)]. The off-diagonal parameters are
    then unitless, like log sigma: an optimizer step of fixed size (Adam's)
    changes L by a fixed *fraction* of its row's scale whatever the posterior's
    scale is. With L_ij itself as the parameter a step of Adam's default 0.05 was
    as large as the posterior sds of a 2,000-row logistic regression, and the
    fit's covariance grew without bound.
    The factor c keeps the change of a whole row of L (P - 1 entries moving at
    once) at the size of one step.
    """

    name = "fullrank"

    def __init__(self, dim):
        self.dim = int(dim)
        self.rows, self.cols = np.tril_indices(self.dim)
        self.diag_pos = np.flatnonzero(self.rows == self.cols)
        self.off_pos = np.flatnonzero(self.rows != self.cols)
        # M = off_scale * (the packed values): see the class documentation
        self.off_scale = 1.0 / math.sqrt(max(self.dim - 1, 1))
        self._flat = self.rows * self.dim + self.cols
        self._flat_diag = np.arange(self.dim) * (self.dim + 1)
        # row i of the packed triangle starts at diag_pos[i] - i
        self._row_starts = self.diag_pos - np.arange(self.dim)
        self.size = self.dim + self.rows.size

    def init(self, mean, scale):
        tri = np.zeros(self.rows.size)
        tri[self.diag_pos] = math.log(scale)
        return np.concatenate([np.asarray(mean, float), tri])

    def mean(self, phi):
        return phi[: self.dim]

    def chol(self, phi):
        """The Cholesky factor L of q's covariance (formed directly, never from
        L L^T)."""
        tri = phi[self.dim :]
        sigma = np.exp(tri[self.diag_pos])
        L = np.zeros(self.dim * self.dim)
        L[self._flat] = tri
        L *= self.off_scale
        L[self._flat_diag] = 1.0
        L = L.reshape(self.dim, self.dim)
        L *= sigma[:, None]
        return L

    factor = chol

    def pack(self, mean, L):
        """The packed parameters of N(mean, L L^T), ``L`` lower triangular with a
        positive diagonal (the inverse of :meth:`mean` and :meth:`chol`)."""
        L = np.asarray(L, dtype=np.float64)
        d = np.diag(L)
        if L.shape != (self.dim, self.dim) or not np.all(d > 0):
            raise ValueError(
                "L must be a square lower-triangular matrix with a positive diagonal."
            )
        return self._pack(np.asarray(mean, dtype=np.float64), L)

    def _pack(self, mean, L):
        """:meth:`pack` without its checks (``L`` known lower triangular, with a
        positive diagonal)."""
        d = L.reshape(-1)[self._flat_diag]
        out = np.empty(self.size)
        out[: self.dim] = mean
        tri = out[self.dim :]
        tri[:] = (L / d[:, None]).reshape(-1)[self._flat]
        tri /= self.off_scale
        tri[self.diag_pos] = np.log(d)
        return out

    def cov(self, phi):
        L = self.chol(phi)
        return L @ L.T

    def std(self, phi):
        return np.sqrt(np.sum(self.chol(phi) ** 2, axis=1))

    def sample(self, phi, eps, factor=None):
        L = self.chol(phi) if factor is None else factor
        return phi[: self.dim] + eps @ L.T

    def entropy(self, phi):
        return float(phi[self.dim :][self.diag_pos].sum() + 0.5 * self.dim * _LOG_2PI_E)

    def log_q(self, phi, z):
        L = self.chol(phi)
        u = solve_triangular(L, (z - phi[: self.dim]).T, lower=True).T
        logdet = np.sum(phi[self.dim :][self.diag_pos])
        return (
            -0.5 * np.sum(u * u, axis=-1)
            - logdet
            - 0.5 * self.dim * math.log(2.0 * math.pi)
        )

    def log_q_eps(self, phi, eps):
        """log q(mu + L eps) for draws eps of shape (S, P)."""
        return (
            -0.5 * np.sum(eps * eps, axis=-1)
            - np.sum(phi[self.dim :][self.diag_pos])
            - 0.5 * self.dim * _LOG_2PI
        )

    def _chain(self, L, gtri):
        """Gradients in the entries of tril(L) (``gtri``, (..., tri)) to gradients in
        the packed parameters: d/dM_ij = g_ij sigma_i and d/dlog sigma_i =
        sum_{j <= i} g_ij L_ij."""
        Lflat = L.reshape(-1)
        gl = gtri * Lflat[self._flat]
        out = gtri * (self.off_scale * Lflat[self._flat_diag][self.rows])
        out[..., self.diag_pos] = np.add.reduceat(gl, self._row_starts, axis=-1)
        return out

    def score(self, phi, eps):
        """grad_phi log q(z_s) at z_s = mu + L eps_s: (S, size).

        In mu: v = L^{-T} eps; in L: tril(v eps^T) - diag(1 / L_ii), then the chain
        rule to (log sigma, M)."""
        L = self.chol(phi)
        v = solve_triangular(L, eps.T, lower=True, trans="T").T
        tri = v[:, self.rows] * eps[:, self.cols]
        tri[:, self.diag_pos] -= 1.0 / np.diag(L)
        return np.concatenate([v, self._chain(L, tri)], axis=1)

    def grad(self, phi, eps, gz, estimator, factor=None):
        L = self.chol(phi) if factor is None else factor
        S = eps.shape[0]
        if estimator == "stl":
            # grad_z log q(z) = -L^{-T} eps
            # (scipy's LAPACK wrapper directly: solve_triangular's checks cost
            # more than the solve at these sizes)
            v, info = dtrtrs(L, eps.T, lower=1, trans=1)
            d = gz + v.T
        else:
            d = gz
        out = np.empty(self.size)
        out[: self.dim] = d.sum(axis=0) * (1.0 / S)
        gL = (d.T @ eps) / S
        if estimator == "reparam":
            gL[np.diag_indices(self.dim)] += 1.0 / np.diag(L)
        out[self.dim :] = self._chain(L, gL.reshape(-1)[self._flat])
        return out

    def coordinate_names(self, names):
        tri = [
            (f"log sd-scale of {names[i]}" if i == j else f"M[{names[i]}, {names[j]}]")
            for i, j in zip(self.rows, self.cols)
        ]
        return [f"mean of {n}" for n in names] + tri

    def to_frame(self, phi, frame):
        """The parameters of q in the whitened coordinates u = B^{-1} (z - a) of
        ``frame`` (:class:`Frame`; ``B`` lower triangular, or a vector for a
        diagonal B): N(B^{-1} (mu - a), (B^{-1} L) (B^{-1} L)^T)."""
        L = self.chol(phi)
        d = phi[: self.dim] - frame.a
        if frame.B.ndim == 1:
            return self.pack(d / frame.B, L / frame.B[:, None])
        # B^{-1} [d, L] in one LAPACK call (solve_triangular's checks cost more)
        sol, _ = dtrtrs(frame.B, np.column_stack([d, L]), lower=1)
        return self.pack(sol[:, 0], np.tril(sol[:, 1:]))

    def from_frame(self, phi_u, frame):
        """The inverse of :meth:`to_frame`."""
        L = self.chol(phi_u)
        mu = phi_u[: self.dim]
        if frame.B.ndim == 1:
            return self.pack(frame.a + frame.B * mu, frame.B[:, None] * L)
        # B L is lower triangular exactly (no term of its upper part is nonzero),
        # with a positive diagonal (B's times L's)
        return self._pack(frame.a + frame.B @ mu, frame.B @ L)


FAMILIES = {"meanfield": MeanField, "fullrank": FullRank}


# ------------------------------------------------------------------ optimizers
class Adam:
    """Adam (Kingma & Ba 2015, Algorithm 1) for gradient *ascent*.

    The moments are kept relative to the largest |gradient| seen so far in each
    coordinate (``c``): ``m / c`` and ``v / c^2``, so that ``g * g`` cannot overflow
    to infinity (with plain moments a gradient above ~1e154 made ``v`` infinite and
    every later step zero: the fit froze at its start). The step is the same
    number, ``mhat / (sqrt(vhat) + eps)``, up to rounding.
    """

    def __init__(self, learning_rate=0.05, b1=0.9, b2=0.999, eps=1e-8):
        self.learning_rate = float(learning_rate)
        self.b1, self.b2, self.eps = float(b1), float(b2), float(eps)

    def init(self, phi):
        return (np.zeros_like(phi), np.zeros_like(phi), 0, np.zeros_like(phi))

    def update(self, g, state, phi, scale=1.0):
        m, v, t, c = state
        t += 1
        cn = np.maximum(c, np.abs(g))
        if cn.all():  # the usual case: no division by zero to guard
            r = c / cn
            gs = g / cn
            eps = self.eps / cn
        else:
            live = cn > 0
            r = np.divide(c, cn, out=np.zeros_like(cn), where=live)
            gs = np.divide(g, cn, out=np.zeros_like(cn), where=live)
            eps = np.divide(self.eps, cn, out=np.ones_like(cn), where=live)
        m = self.b1 * (m * r) + (1.0 - self.b1) * gs
        r *= r
        r *= v
        gs *= gs
        v = self.b2 * r + (1.0 - self.b2) * gs
        # lr mhat / (sqrt(vhat) + eps), mhat = m / (1 - b1^t), vhat = v / (1 - b2^t)
        denom = np.sqrt(v / (1.0 - self.b2**t))
        denom += eps
        step = m * (self.learning_rate * scale / (1.0 - self.b1**t))
        step /= denom
        return phi + step, (m, v, t, cn)


class RobbinsMonro:
    """Plain stochastic gradient ascent with rho_t = lr (t + tau)^(-kappa).

    Robbins & Monro's conditions (sum rho = inf, sum rho^2 < inf) hold for kappa in
    (0.5, 1] (Hoffman et al. 2013, §2.3).
    """

    def __init__(self, learning_rate=0.1, tau=1.0, kappa=0.7):
        self.learning_rate = float(learning_rate)
        self.tau, self.kappa = float(tau), float(kappa)

    def init(self, phi):
        return (0,)

    def update(self, g, state, phi, scale=1.0):
        (t,) = state
        rho = scale * self.learning_rate * (t + 1 + self.tau) ** (-self.kappa)
        return phi + rho * g, (t + 1,)


class StanAdaptive:
    """Stan ADVI's adaptive step-size sequence (Kucukelbir et al. 2017, §3.3).

    ``s_k = alpha g_k^2 + (1 - alpha) s_{k-1}`` (``s_1 = g_1^2``) and
    ``rho_k = eta k^(-1/2 + 1e-16) / (tau + sqrt(s_k))``, per coordinate, with
    ``alpha = 0.1`` and ``tau = 1``.

    Parameters
    ----------
    eta : float or None, default None
        The step-size scale. None: chosen by Stan's search when the engine makes
        a fresh state (:meth:`SGVI.init`): from the same start, ``adapt_iter``
        steps with each eta of ``sequence`` in turn, the ELBO estimated after each
        run from ``elbo_samples`` draws; the search stops at the first eta whose
        ELBO is below the previous one's (when that one beat the initial ELBO) and
        keeps the previous one; the last eta is kept if it beats the initial ELBO;
        if none does, :class:`FloatingPointError` is raised (Stan's
        ``advi::adapt_eta``). The chosen eta is the last entry of the
        optimizer state, ``state.opt_state[2]``.
    alpha, tau : float
    adapt_iter : int, default 50
    elbo_samples : int, default 100
    sequence : tuple of float, default (100, 10, 1, 0.1, 0.01)
    """

    def __init__(
        self,
        eta=None,
        alpha=0.1,
        tau=1.0,
        adapt_iter=50,
        elbo_samples=100,
        sequence=(100.0, 10.0, 1.0, 0.1, 0.01),
    ):
        if eta is not None and not (isinstance(eta, Real) and eta > 0):
            raise ValueError(f"eta must be None or positive, got {eta!r}.")
        if not (isinstance(adapt_iter, Integral) and adapt_iter >= 1):
            raise ValueError(f"adapt_iter must be a positive int, got {adapt_iter!r}.")
        if not (isinstance(elbo_samples, Integral) and elbo_samples >= 1):
            raise ValueError(
                f"elbo_samples must be a positive int, got {elbo_samples!r}."
            )
        self.eta = None if eta is None else float(eta)
        self.alpha, self.tau = float(alpha), float(tau)
        self.adapt_iter = int(adapt_iter)
        self.elbo_samples = int(elbo_samples)
        self.sequence = tuple(float(e) for e in sequence)

    def init(self, phi, eta=None):
        eta = self.eta if eta is None else float(eta)
        return (np.zeros_like(phi), 0, eta)

    def update(self, g, state, phi, scale=1.0):
        s, k, eta = state
        if eta is None:
            raise ValueError(
                "StanAdaptive(eta=None) needs the state from SGVI.init, which runs "
                "the eta search."
            )
        k += 1
        # s holds the root of Stan's s_k, updated by hypot so that g * g cannot
        # overflow to infinity (which made every later step zero)
        a = np.abs(g)
        if k == 1:
            s = a
        else:
            s = np.hypot(math.sqrt(self.alpha) * a, math.sqrt(1.0 - self.alpha) * s)
        rho = scale * eta * k ** (-0.5 + 1e-16) / (self.tau + s)
        return phi + rho * g, (s, k, eta)


def select_eta(evaluate, elbo_init, sequence):
    """Stan's eta search (``advi::adapt_eta``) given ``evaluate(eta) -> ELBO``.

    Returns ``(eta, elbos)``, ``elbos`` the ELBO of each eta tried, in order.
    """
    elbos = []
    best_elbo = -np.inf
    best_eta = None
    last = len(sequence) - 1
    for i, eta in enumerate(sequence):
        elbo = evaluate(eta)
        elbo = elbo if np.isfinite(elbo) else -np.inf
        elbos.append(elbo)
        if elbo < best_elbo and best_elbo > elbo_init:
            return best_eta, elbos  # worse than the previous eta: keep that one
        if i < last:
            best_elbo, best_eta = elbo, eta
        elif elbo > elbo_init:
            return eta, elbos
    raise FloatingPointError(
        "All proposed step sizes eta in "
        f"{tuple(sequence)} failed to improve the initial ELBO ({elbo_init:.6g}; "
        f"after adaptation: {', '.join(f'{e:.6g}' for e in elbos)}). The model may "
        "be ill-conditioned or misspecified, or the initial point poor."
    )


# ------------------------------------------------------------------ stopping rules
class WindowConvergence:
    """Stop when the mean ELBO stops rising, judged against its own noise.

    Every ``window`` steps the mean ELBO of the last window is compared with that of
    the window before: the ELBO has stalled when the gain is below
    ``max(tol, 2 * se)``, ``se`` the standard error of the difference of the two
    means. Because the threshold is in nats and scales with the estimate's noise, a
    noisy ELBO (small S, small minibatches) or a large one (millions of rows) does not
    stop the fit early the way a relative-change rule can. ``tol=0`` disables it.

    A stall at a constant step size only means the iterates have reached the noise
    floor of that step size, where they jitter around the optimum: with one draw per
    step a full-rank q's sds scatter by tens of percent there. So at the first stall
    the step size is multiplied by each factor of ``decay`` in turn (the engine
    scales the optimizer's steps by ``SGVIState.lr_scale``) and the comparison starts
    afresh; the fit has converged at the stall after the last factor. This is the
    stationarity-then-decrease scheme of Dhaka et al. (2020) and Welandawe et al.
    (2022, "Robust, automated, and accurate black-box variational inference"), with
    the windowed-mean test above as the stationarity check. ``decay=()`` stops at the
    first stall. The default (0.2, 0.5) ends at a tenth of the step size: with
    one decrease, to a fifth, the averaged q of eight schools still scattered by
    0.7-0.84 in tau's sd ratio over seeds 0-4 (the best full-rank Gaussian's is
    0.83); with a second, by 0.80-0.82.

    With one draw per step the ELBO's noise can hide a slow climb (a plateau), so
    the engine also shows the rule q's parameters (:meth:`observe`; in the
    whitened coordinates of :class:`Frame`, where a unit is about one posterior
    sd): a window counts as stalled only when q's windowed means moved less than
    ``drift`` since the window before (checked at the last stall, after the step
    size has been lowered). The converged q is their average
    over the last window (:meth:`average`; iterate averaging, as in Welandawe et
    al.), which removes most of the jitter of the last iterates.

    Two adjacent windows cannot tell a slow, steady climb from a stall: with eight
    draws per step the windows' ELBO means have a standard error of ~0.05 nats on
    eight schools, so a climb of 0.08 nats per window passed for a stall and the
    fit stopped 0.15 nats below its optimum, 0.2 posterior sds off. So once
    ``lag + 1`` windows are in (always at the last stage, which runs at least
    that long), the last window is also compared with the window ``lag`` windows
    before it, where a steady climb has added up to ``lag`` times its per-window
    gain while the noise has not grown: a window is stalled only when both gains
    are within noise (a lagged Mann-Kendall-like trend check).
    """

    def __init__(self, tol=1e-3, window=100, decay=(0.2, 0.5), drift=0.1, lag=3):
        self.tol = float(tol)
        self.window = int(window)
        self.decay = tuple(float(f) for f in decay)
        if not all(0.0 < f < 1.0 for f in self.decay):
            raise ValueError(f"decay factors must be in (0, 1), got {decay!r}.")
        if not (isinstance(drift, Real) and drift > 0):
            raise ValueError(f"drift must be positive, got {drift!r}.")
        self.drift = float(drift)
        if not (isinstance(lag, Integral) and lag >= 1):
            raise ValueError(f"lag must be a positive int, got {lag!r}.")
        self.lag = int(lag)
        self.stage = 0
        self.start = 0
        self.pending_decay = None
        self._sum = None
        self._count = 0
        self._means = []

    def observe(self, x, n, n_means=None):
        """Take q's parameters after step ``n`` (the engine calls this; see
        :meth:`SGVI.run`): their mean over each window is kept. The first
        ``n_means`` entries (default: all) are q's means, those the drift test
        looks at."""
        self._n_means = n_means
        if self._sum is None or self._sum.shape != x.shape:
            self._sum = np.zeros_like(x)
            self._count = 0
        self._sum += x
        self._count += 1
        if (n - self.start) % self.window == 0:
            self._means = [*self._means[-self.lag :], self._sum / self._count]
            self._sum = np.zeros_like(x)
            self._count = 0

    def average(self):
        """q's parameters averaged over the last ``lag + 1`` complete windows of
        the stage (those the stopping test found level), or fewer when fewer are
        in; None before the first."""
        return np.mean(self._means, axis=0) if self._means else None

    def moved(self):
        """The largest change of q's windowed means between the last two windows
        (in posterior sds), or 0.0 when not observed."""
        if len(self._means) < 2:
            return 0.0
        k = getattr(self, "_n_means", None)
        d = self._means[-1][:k] - self._means[-2][:k]
        return float(np.max(np.abs(d)))

    def __call__(self, elbo, n):
        w = self.window
        m = n - self.start
        if self.tol <= 0 or m < 2 * w or m % w:
            return False
        final = self.stage == len(self.decay)
        last = elbo[n - w : n]
        lags = (1, self.lag) if m >= (self.lag + 1) * w else (1,)
        if final and len(lags) == 1 and self.lag > 1:
            return False  # the last stage runs lag + 1 windows at least
        for k in lags:
            prev = elbo[n - (k + 1) * w : n - k * w]
            gain = last.mean() - prev.mean()
            se = math.sqrt((last.var(ddof=1) + prev.var(ddof=1)) / w)
            if gain >= max(self.tol, 2.0 * se):
                return False
        if self.stage == len(self.decay) and self.moved() > self.drift:
            return False  # a slow plateau of the ELBO while q still moves
        if self.stage < len(self.decay):
            self.pending_decay = self.decay[self.stage]
            self.stage += 1
            self.start = n
            self._means = []
            return False
        return True


class DivergenceMonitor:
    """Warn when the ELBO trace diverges while staying finite.

    Every ``window`` steps the mean ELBO of the last window is compared with the best
    window mean so far. The fit is reported as diverging
    (:class:`~fastvi.sgvi.diagnostics.ELBODivergenceWarning`, once per run) when two
    consecutive windows both fall more than ``n_sd`` noise sds below that best, the
    noise sd being the per-step sd of the ELBO estimates within the best window. A
    window mean has standard error sd / sqrt(window), so a converged fit's windows
    scatter by about a tenth of that sd: a drop of ``n_sd = 5`` per-step sds is
    beyond noise by a factor of about fifty, and only a trend explains it. (Stan
    ADVI prints "MAY BE DIVERGING... INSPECT ELBO" when the relative ELBO change
    grows; a relative rule cannot tell a noisy ELBO from a falling one.)
    """

    def __init__(self, window=100, n_sd=5.0):
        self.window = int(window)
        self.n_sd = float(n_sd)
        self.best = None  # (mean, sd, first step, last step) of the best window
        self.below = 0
        self.warned = False

    def __call__(self, elbo, n, offset=0, stacklevel=2):
        w = self.window
        if self.warned or n < w or n % w:
            return False
        last = elbo[n - w : n]
        mean = float(last.mean())
        if self.best is None or mean > self.best[0]:
            sd = float(last.std(ddof=1)) if w > 1 else 0.0
            self.best = (mean, sd, offset + n - w, offset + n - 1)
            self.below = 0
            return False
        best, sd, b0, b1 = self.best
        gap = best - mean
        self.below = self.below + 1 if gap > self.n_sd * sd and gap > 0 else 0
        if self.below < 2:
            return False
        from .diagnostics import ELBODivergenceWarning

        self.warned = True
        warnings.warn(
            f"SGVI may be diverging: the mean ELBO of steps {offset + n - w}-"
            f"{offset + n - 1} ({mean:.6g}) is {gap / max(sd, 1e-300):.3g} noise sds "
            f"below its best ({best:.6g}, steps {b0}-{b1}), and so was the window "
            "before. Inspect the ELBO trace; try a smaller learning rate or "
            "init_scale.",
            ELBODivergenceWarning,
            stacklevel=stacklevel,
        )
        return True


class StanConvergence:
    """Stan ADVI's rule (``tol_rel_obj``, ``eval_elbo``).

    Every ``eval_elbo`` steps the ELBO (here: the mean of the per-step estimates over
    those steps; Stan draws ``elbo_samples`` fresh ones) is compared with the previous
    evaluation; the relative change |(prev - cur) / cur| goes into a circular buffer of
    ``max(0.1 * max_iter / eval_elbo, 2)`` entries; the fit has converged when the
    buffer's mean or its median is below ``tol_rel_obj`` (Stan: "MEAN/MEDIAN ELBO
    CONVERGED").
    """

    def __init__(self, tol_rel_obj=0.01, eval_elbo=100, max_iter=10000):
        self.tol_rel_obj = float(tol_rel_obj)
        self.eval_elbo = int(eval_elbo)
        self.size = max(int(0.1 * max_iter / self.eval_elbo), 2)
        self.buffer = []
        self.previous = None

    def __call__(self, elbo, n):
        e = self.eval_elbo
        if self.tol_rel_obj <= 0 or n % e or n < e:
            return False
        current = float(elbo[n - e : n].mean())
        if self.previous is not None:
            rel = abs((self.previous - current) / current)
            self.buffer.append(rel)
            if len(self.buffer) > self.size:
                self.buffer.pop(0)
        self.previous = current
        if not self.buffer:
            return False
        return bool(
            np.mean(self.buffer) < self.tol_rel_obj
            or np.median(self.buffer) < self.tol_rel_obj
        )


# ------------------------------------------------------------------ state and driver
class SGVIState(NamedTuple):
    """Everything a step needs: ``params`` (packed variational parameters, see the
    family), ``opt_state``, the random ``key``, ``step`` (steps taken) and
    ``lr_scale``, the factor on the optimizer's step size (lowered by
    :class:`WindowConvergence` at a stall), ``frame`` (the whitening
    :class:`Frame`, or None) and ``params_u``."""

    params: np.ndarray
    opt_state: tuple
    key: int
    step: int
    lr_scale: float = 1.0
    frame: "Frame | None" = None
    #: ``params`` in the frame's coordinates (``family.to_frame``), kept by the
    #: steps so that they need not convert back every step (and a resumed run
    #: steps from exactly the numbers an uninterrupted one would); None: convert.
    #: A state whose ``params`` are replaced by hand needs ``params_u=None``.
    params_u: "np.ndarray | None" = None


def _scaled_eigh(H):
    """``(c, w, V)`` with H = diag(1/c) V diag(w) V' diag(1/c), c = 1/sqrt(|H_ii|):
    the eigen-decomposition of H scaled to a unit diagonal, whose eigenvalues are
    those of the correlations (within [0, P] at a mode), so that curvatures of
    different scales (sds of 1e-4 beside 1e3) are resolved to the precision of
    each. None when H's diagonal is zero or not finite, or eigh fails."""
    d = np.abs(np.diag(H))
    top = np.max(d) if d.size else 0.0
    if not (np.all(np.isfinite(d)) and top > 0):
        return None
    # any positive scaling is exact; a zero entry takes a floor far below the rest
    c = 1.0 / np.sqrt(np.maximum(d, 1e-30 * top))
    Hs = c[:, None] * H * c
    try:
        w, V = np.linalg.eigh(0.5 * (Hs + Hs.T))
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(w)):
        return None
    return c, w, V


class Frame(NamedTuple):
    """Whitened coordinates u of the unconstrained space, z = a + B u.

    ``B`` is lower triangular (P, P), or a vector (P,) for a diagonal B. Made by
    :meth:`SGVI.laplace` from the mode ``a`` of the log density and its curvature
    H there (B = chol(H^{-1}) for a full-rank q, B = 1 / sqrt(diag H) for a
    mean-field one). The optimizer steps in q's parameters in these coordinates, so
    a step of Adam's fixed size is a fixed fraction of the posterior's sd in every
    direction, whatever the parameters' scales, locations and correlations.
    ``corr``: the largest |correlation| of the Laplace approximation and the pair
    of coordinates it is between (for advice when a mean-field q fits badly).
    """

    a: np.ndarray
    B: np.ndarray
    corr: tuple = (0.0, 0, 0)

    def push(self, u):
        """Points in u (S, P) to points in z: a + B u."""
        return self.a + (u * self.B if self.B.ndim == 1 else u @ self.B.T)

    def pullback(self, gz):
        """Gradients in z (S, P) to gradients in u: gz B."""
        return gz * self.B if self.B.ndim == 1 else gz @ self.B


class SGVIResult(NamedTuple):
    """What :meth:`SGVI.run` returns.

    ``psis_khat`` is the PSIS k-hat of the final q (:meth:`SGVI.diagnose`),
    computed at the end of every run unless ``psis_draws=0`` (then None)."""

    state: SGVIState
    elbo: np.ndarray
    converged: bool
    n_iter: int
    psis_khat: float | None = None
    #: how q was fitted: ``"fixed"`` (fixed draws and BFGS), ``"sgd"``
    #: (stochastic steps) or ``"fixed+sgd"`` (stochastic steps from the fixed-draw
    #: fit, whose sampling error was too large)
    method: str = "sgd"
    #: for a converged run of stochastic steps on all rows: how far, in q's sds,
    #: the ELBO's gradient at q points (:func:`~fastvi.sgvi.diagnostics.
    #: stationarity_gap`, with two standard errors); above
    #: ``STATIONARITY_TOLERANCE`` the run is reported not converged. None: not
    #: checked (fixed-draw fits, minibatches, ``psis_draws=0``, no convergence).
    stationarity: float | None = None


class SGVIRun(NamedTuple):
    """Where a run of stochastic steps stands: all :meth:`SGVI.run` needs to go on
    (``resume=``) and end bitwise as the run would have without the stop.

    ``state``: the engine's state after the last step; ``elbo``: the ELBO trace so
    far (the fixed-draw iterations of a ``'fixed+sgd'`` run first, ``n_fixed`` of
    them); ``rule`` and ``watch``: what the stopping rule and the
    :class:`DivergenceMonitor` have kept of the trace (their attributes: window
    sums and means for iterate averaging, the stage of the step-size decays, ...);
    ``converged``: the rule fired at the last step. A snapshot: nothing in it is
    changed by the run that made it.
    """

    state: SGVIState
    elbo: np.ndarray
    rule: dict
    watch: dict
    converged: bool = False
    n_fixed: int = 0
    method: str = "sgd"


class Posterior(NamedTuple):
    """Draws of q mapped to the constrained space, with their means and sds.

    ``draws``, ``mean`` and ``sd`` are dicts keyed by parameter name; ``draws[name]``
    has shape ``(n_draws, *param.shape)``. ``elbo`` is the ELBO trace when known.
    """

    draws: dict
    mean: dict
    sd: dict
    elbo: np.ndarray | None = None

    def to_arviz(self):
        """The draws as ArviZ data (one chain), when ``arviz`` is installed.

        ArviZ >= 1.0 returns an ``xarray.DataTree``, older versions an
        ``InferenceData``; either way with a ``posterior`` group and, when the
        ELBO trace is known, a ``sample_stats`` group holding it as ``elbo``
        (dimension ``sgvi_step``, kept apart from the draws).
        """
        from .output import to_arviz

        return to_arviz(self)


def _snapshot_run(run):
    """``run`` (an :class:`SGVIRun` holding the live rule and monitor) as a
    snapshot: copies of the trace and of their attributes (what they have kept)."""
    rule, watch = (copy.deepcopy(vars(obj)) for obj in (run.rule, run.watch))
    return run._replace(elbo=run.elbo.copy(), rule=rule, watch=watch)


def _same(a, b):
    try:
        return bool(np.array_equal(a, b))
    except (TypeError, ValueError):
        return False


def _restore(obj, saved, size):
    """Set ``obj``'s attributes to ``saved`` (from :func:`_snapshot_run`), refused
    unless they include those ``obj`` has (some are made as the run goes), shadow
    nothing of its class, keep its settings (its constructor's parameters) and its
    arrays have ``size`` numbers."""

    def arrays(v):
        if isinstance(v, np.ndarray):
            yield v
        elif isinstance(v, (list, tuple)):
            for item in v:
                yield from arrays(item)

    if (
        not isinstance(saved, dict)
        or not set(vars(obj)) <= set(saved)
        or any(
            not isinstance(k, str) or k.startswith("__") or hasattr(type(obj), k)
            for k in saved
        )
    ):
        raise ValueError(
            f"resume: the saved state is not one of a {type(obj).__name__}"
        )
    settings = inspect.signature(type(obj)).parameters
    if any(
        k in settings and k in vars(obj) and not _same(saved[k], vars(obj)[k])
        for k in saved
    ):
        raise ValueError(
            f"resume: the saved state is of a {type(obj).__name__} with other settings"
        )
    if any(a.shape != (size,) for a in arrays(list(saved.values()))):
        raise ValueError(
            f"resume: the saved state of the {type(obj).__name__} does not fit q "
            f"({size} parameters)"
        )
    vars(obj).update(copy.deepcopy(saved))


class SGVI:
    """Stochastic-gradient variational inference for a :class:`~fastvi.sgvi.models.Model`.

    Parameters
    ----------
    model : Model
    family : {'meanfield', 'fullrank'}
    estimator : {'stl', 'reparam', 'score'}
        Gradient estimator (see the module documentation). ``'score'`` needs only
        the log density (models with ``has_gradient = False``) and n_samples >= 2.
    optimizer : Adam, StanAdaptive or RobbinsMonro, default Adam(0.05)
    n_samples : int, default 8
        Draws of eps per step (S). With one draw per step a full-rank q of a
        skewed posterior (eight schools) jitters by more than 0.2 posterior sds
        around its optimum; eight (one data pass for all of them) bring it within.
    batch_size : int or None
        Rows per minibatch, drawn without replacement each step; the likelihood is
        scaled by N / batch_size. None: all rows.
    init_scale : float or None, default None
        None: :meth:`init` finds the mode of the log density in the
        unconstrained space (Newton's method from the initial point, L-BFGS
        above 64 coordinates or where Newton fails) and its curvature
        (differences of the gradient), starts q at that Laplace
        approximation (mean-field: sds 1 / sqrt(diag H), the best mean-field
        Gaussian of a Gaussian posterior) and steps in the coordinates it
        whitens (:class:`Frame`): steps are then scale-free, so far-from-zero,
        tiny-sd and strongly correlated parameters converge in the same few
        hundred steps. A number: q starts at the initial point with this sd in
        every coordinate (NumPyro's AutoNormal uses 0.1) and steps in the raw
        coordinates, as also happens (with sd 0.1) when there is no usable mode
        (a non-finite optimum or a curvature that is not positive definite), for
        ``estimator='score'`` and for ``StanAdaptive(eta=None)`` (Stan's eta
        search is defined from its own start; at the optimum no eta improves the
        ELBO).
    qmc : bool, default False
        Scrambled Sobol' eps instead of pseudo-random ones (module documentation).
    n_jobs : int or None
        Threads for the data pass of :meth:`run` (None: all). Results are bitwise
        identical for every value.
    max_retries : int
        A step whose log density, gradient or update is not finite is discarded and
        redrawn this many times before :class:`FloatingPointError` is raised naming
        the parameter (NumPyro's ``stable_update`` keeps the old state instead).
    method : {'auto', 'fixed', 'sgd'}, default 'auto'
        How :meth:`run` fits q. ``'sgd'``: stochastic steps (:meth:`step`) until
        the stopping rule fires. ``'fixed'``: first the ELBO on one fixed set of
        draws, maximized by BFGS from the Laplace start (DADVI; see
        :mod:`fastvi.sgvi.fixed`), accepted when its estimated sampling error is
        below 0.05 of q's sds in the means and 0.035 in log sd (from two fresh
        sets of draws; the draws are doubled once to get there when that may
        help); when it is not (or two sets of draws already disagree far beyond
        that at the start), the run takes exactly the stochastic steps of
        ``'sgd'`` from the Laplace start. It applies to fresh runs (no
        ``init_state``) with the default stopping rule (``convergence=None``),
        all rows and a Laplace start; other runs take stochastic steps.
        ``'auto'``: ``'fixed'`` when no optimizer is given, ``batch_size`` is
        None, ``estimator`` is not ``'score'`` and ``qmc`` is False, else
        ``'sgd'``.
    """

    def __init__(
        self,
        model,
        family="meanfield",
        estimator="stl",
        optimizer=None,
        n_samples=8,
        batch_size=None,
        init_scale=None,
        max_retries=10,
        n_jobs=None,
        qmc=False,
        method="auto",
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        if method == "fixed" and (batch_size is not None or estimator == "score"):
            raise ValueError(
                "method='fixed' needs all rows (batch_size=None) and the gradient "
                "of the log density (estimator 'stl' or 'reparam')."
            )
        if family not in FAMILIES:
            raise ValueError(
                f"family must be one of {sorted(FAMILIES)}, got {family!r}."
            )
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"estimator must be one of {ESTIMATORS}, got {estimator!r}."
            )
        if not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}.")
        if estimator == "score" and n_samples < 2:
            raise ValueError(
                "estimator='score' needs n_samples >= 2: its control variate is "
                f"estimated from the draws of each step; got n_samples={n_samples}."
            )
        if estimator != "score" and not getattr(model, "has_gradient", True):
            raise ValueError(
                f"estimator={estimator!r} needs the gradient of the log density, "
                f"which this {type(model).__name__} does not provide; use "
                "estimator='score'."
            )
        if batch_size is not None:
            if not isinstance(batch_size, Integral) or batch_size < 1:
                raise ValueError(
                    f"batch_size must be None or a positive int, got {batch_size!r}."
                )
            if model.n_rows == 0:
                raise ValueError(
                    "This model has no data rows to draw minibatches from."
                )
            if batch_size >= model.n_rows:
                batch_size = None
        if init_scale is not None and not (
            isinstance(init_scale, Real) and 0 < init_scale < math.inf
        ):
            raise ValueError(
                f"init_scale must be None or positive, got {init_scale!r}."
            )
        self.model = model
        self.family = FAMILIES[family](model.size)
        self.estimator = estimator
        if method == "auto":
            method = (
                "fixed"
                if optimizer is None
                and batch_size is None
                and estimator != "score"
                and not qmc
                else "sgd"
            )
        self.method = method
        self.optimizer = Adam() if optimizer is None else optimizer
        self.n_samples = int(n_samples)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.init_scale = None if init_scale is None else float(init_scale)
        self.max_retries = int(max_retries)
        self.n_jobs = n_jobs
        self.qmc = bool(qmc)
        self._sobol = {}

    # ------------------------------------------------------------ state
    def init(self, seed=None, init_params=None):
        """A fresh state. ``init_params``: unconstrained mean of q, or a pair
        ``(mean, scale)`` (scale: a positive number or one per coordinate; q's sd
        there); default: the model's initial point. The log density must be finite
        there. With ``init_scale=None`` (and no scale given) q starts at the
        Laplace approximation found from that point (see the class documentation).

        With ``StanAdaptive(eta=None)`` this runs Stan's eta search (its steps are
        not counted in ``state.step``)."""
        key = int(
            np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)[0] >> 1
        )
        scale = None
        if isinstance(init_params, tuple) and len(init_params) == 2:
            init_params, scale = init_params
            scale = np.asarray(scale, dtype=np.float64)
            if scale.shape not in ((), (self.model.size,)) or not np.all(
                np.isfinite(scale) & (scale > 0)
            ):
                raise ValueError(
                    "The scale in init_params=(mean, scale) must be a positive "
                    f"number or {self.model.size} positive numbers."
                )
        mean = (
            self.model.initial_point()
            if init_params is None
            else np.asarray(init_params, dtype=np.float64)
        )
        if mean.shape != (self.model.size,):
            raise ValueError(
                f"init_params must have shape ({self.model.size},), got {mean.shape}."
            )
        names = self.model.coordinate_names()
        if self.estimator == "score":
            lp = self.model.log_density(mean[None, :], None, grad=False)
            g = np.zeros((1, self.model.size))
        else:
            lp, g = self.model.log_density(mean[None, :], None)
        if not np.isfinite(lp[0]) or not np.all(np.isfinite(g)):
            raise ValueError(
                "The log density is not finite at the initial point "
                f"(log density {lp[0]!r}; non-finite gradient for "
                f"{self._bad_names(g[0], names)})."
            )
        frame = None
        stan_search = isinstance(self.optimizer, StanAdaptive) and (
            self.optimizer.eta is None
        )
        if (
            self.init_scale is None
            and scale is None
            and self.estimator != "score"
            and not stan_search
        ):
            with thread_limits(self.n_jobs):
                found = self.laplace(mean)
            if found is not None:
                frame, phi = found
        if frame is None:
            if scale is None:
                phi = self.family.init(
                    mean, 0.1 if self.init_scale is None else self.init_scale
                )
            else:
                phi = self.family.init(mean, 1.0)
                sc = np.broadcast_to(scale, (self.model.size,))
                if isinstance(self.family, FullRank):
                    phi = self.family.pack(mean, np.diag(sc))
                else:
                    phi[self.model.size :] = np.log(sc)
        phi_u = phi if frame is None else self.family.to_frame(phi, frame)
        opt = self.optimizer
        if isinstance(opt, StanAdaptive) and opt.eta is None:
            with thread_limits(self.n_jobs):
                eta, _ = self.adapt_eta(phi, key, frame)
            return SGVIState(phi, opt.init(phi_u, eta), key, 0, 1.0, frame)
        kept_u = None if frame is None else phi_u
        return SGVIState(phi, opt.init(phi_u), key, 0, 1.0, frame, kept_u)

    def laplace(self, z0, max_iter=1000):
        """``(frame, phi)``: the whitening :class:`Frame` at the mode of the log
        density found from ``z0`` (:meth:`_newton`, else L-BFGS and central
        differences of the gradient), and q's packed parameters there (the
        Laplace approximation N(mode, H^{-1}); mean-field: sds 1 / sqrt(H_ii)).
        None when no usable mode is found (a non-finite optimum or a curvature
        that is not positive definite)."""
        from scipy.optimize import minimize

        model = self.model
        P = model.size
        best = [math.inf, np.asarray(z0, dtype=np.float64).copy()]

        def objective(z):
            lp, g = model.log_density(z[None, :], None)
            lp, g = float(lp[0]), g[0]
            if not (math.isfinite(lp) and np.all(np.isfinite(g))):
                return math.inf, np.zeros(P)
            if -lp < best[0]:
                best[0], best[1] = -lp, z.copy()
            return -lp, -g

        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = self._newton(best[1]) if P <= _NEWTON_MAX else None
            if found is not None:
                a, H = found
            else:
                try:
                    minimize(
                        objective,
                        best[1],
                        jac=True,
                        method="L-BFGS-B",
                        options={"maxiter": int(max_iter), "maxcor": 20},
                    )
                except (ValueError, FloatingPointError, OverflowError):
                    pass
                a = best[1]
                if not (math.isfinite(best[0]) and np.all(np.isfinite(a))):
                    return None
                # curvature: central differences of the gradient, first with
                # steps on the scale of a, then with steps of 1/100 of the sds
                h = 1e-4 * np.maximum(np.abs(a), 1.0)
                H = self._hessian(a, h)
                if H is None:
                    return None
                d = np.diag(H)
                if np.all(np.isfinite(d)) and np.all(d > 0):
                    H2 = self._hessian(a, 1e-2 / np.sqrt(d))
                    H = H if H2 is None else H2
            found = _scaled_eigh(H)
            if found is None:
                return None
            c, w, V = found
            # H = diag(1/c) V w V' diag(1/c): the condition is that of the
            # correlations, so sds of any spread (1e-4 and 1e3) are no reason to
            # refuse, only a curvature that is flat along some direction
            if not (w[0] > 1e-12 * w[-1] and w[-1] > 0):
                return None
            cov = c[:, None] * ((V / w) @ V.T) * c
            cov = 0.5 * (cov + cov.T)
            sd = np.sqrt(np.diag(cov))
            corr = cov / np.outer(sd, sd) - np.eye(P)
            i, j = np.unravel_index(np.argmax(np.abs(corr)), corr.shape)
            top = (float(abs(corr[i, j])), int(i), int(j))
            fam = self.family
            if isinstance(fam, MeanField):
                b = 1.0 / np.sqrt(np.diag(H))
                frame = Frame(a, b, top)
                phi = fam.from_frame(fam.init(np.zeros(P), 1.0), frame)
            else:
                try:
                    C = np.linalg.cholesky(cov)
                except np.linalg.LinAlgError:
                    return None
                frame = Frame(a, C if P <= _FULL_FRAME_MAX else sd, top)
                phi = fam.pack(a, C)
            if not np.all(np.isfinite(phi)):
                return None
        return frame, phi

    def _newton(self, z, max_iter=100):
        """``(mode, H)`` by Newton's method on -log p with backtracking, H (-d^2
        log p / dz^2) from forward differences of the gradient along the P axes
        (steps of 1/1000 of the last iterate's sds), so that an iteration is one
        call of the model on P + 1 points; None when H is not positive definite
        or an iteration fails (the caller falls back to L-BFGS). Stops when the
        Newton decrement g' H^-1 g is below 1e-6 (the mode within ~1e-3 sds)."""
        h = 1e-4 * np.maximum(np.abs(z), 1.0)
        best = None
        t = 1.0
        for _ in range(max_iter):
            pts = np.concatenate([z[None, :], z + np.diag(h)])
            lp, g = self.model.log_density(pts, None)
            if not np.all(np.isfinite(g[1:])):
                return None
            if not (math.isfinite(lp[0]) and np.all(np.isfinite(g[0]))) or (
                best is not None and lp[0] < best[1] + 1e-4 * t * best[2]
            ):
                if best is None or t < 1e-6:
                    return None
                t *= 0.25  # backtrack
                z = best[0] + t * best[3]
                continue
            H = -(g[1:] - g[0]) / h[:, None]
            H = 0.5 * (H + H.T)
            found = _scaled_eigh(H)
            if found is None or not found[1][-1] > 0:
                return None
            c, w, V = found
            # away from the mode log p need not be concave: step by |H|
            # (saddle-free Newton, Dauphin et al. 2014), in the scaled coordinates
            w_abs = np.maximum(np.abs(w), 1e-10 * w[-1])
            d = c * (V @ ((V.T @ (c * g[0])) / w_abs))
            dec = float(g[0] @ d)
            if dec < 1e-6 and w[0] > 0:
                return z, H
            best = (z, float(lp[0]), dec, d)
            sd = c * np.sqrt((V * V) @ (1.0 / w_abs))
            h = np.minimum(1e-3 * sd, 1e-2 * np.maximum(np.abs(z), 1.0))
            t = 1.0
            z = z + d
        return None

    def _hessian(self, z, h):
        """-d^2 log p / dz^2 at z by central differences of the gradient (steps h)."""
        P = z.shape[0]
        E = np.diag(h)
        pts = np.concatenate([z + E, z - E])
        g = np.empty_like(pts)
        for i in range(0, pts.shape[0], _DRAW_BATCH):
            lp, g[i : i + _DRAW_BATCH] = self.model.log_density(
                pts[i : i + _DRAW_BATCH], None
            )
            if not np.all(np.isfinite(lp)):
                return None
        H = -(g[:P] - g[P:]) / (2.0 * h[:, None])
        if not np.all(np.isfinite(H)):
            return None
        return 0.5 * (H + H.T)

    @staticmethod
    def _bad_names(values, names):
        bad = [names[i] for i in np.flatnonzero(~np.isfinite(values))]
        if not bad:
            return "none"
        return ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")

    def _eps(self, rng, key, step, retry):
        S, P = self.n_samples, self.model.size
        if not self.qmc or retry:
            return rng.standard_normal((S, P))
        from scipy.stats import qmc

        sobol = self._sobol.get(key)
        if sobol is None:
            if len(self._sobol) > 8:
                self._sobol.clear()
            seed = np.random.default_rng([key, _TAG_QMC])
            sobol = self._sobol[key] = qmc.Sobol(P, scramble=True, seed=seed)
        start = step * S
        if sobol.num_generated != start:
            sobol.reset()
            if start:
                sobol.fast_forward(start)
        u = sobol.random(S)
        # keep the normal quantiles finite: u in [2^-53, 1 - 2^-53]
        return ndtri(np.clip(u, 2.0**-53, 1.0 - 2.0**-53))

    def draws(self, state, retry=0):
        """The eps (S, P) and minibatch rows (or None) of the state's next step."""
        rng = _step_rng(state.key, state.step, retry)
        eps = self._eps(rng, state.key, state.step, retry)
        rows = None
        if self.batch_size is not None:
            # the rows' order does not matter to the sums: no shuffle (2.5x cheaper)
            rows = rng.choice(
                self.model.n_rows, self.batch_size, replace=False, shuffle=False
            )
        return eps, rows

    # ------------------------------------------------------------ one step
    def gradient(self, phi, eps, rows=None, frame=None, phi_u=None):
        """``(grad, lp)``: the ELBO gradient estimate in q's packed parameters and the
        log densities of the draws, or ``(None, culprit)`` when something is not
        finite (``culprit``: indices of the bad coordinates of z, possibly empty).

        With a ``frame`` the gradient is in the packed parameters of q in the
        frame's coordinates (``phi_u``, :meth:`FullRank.to_frame`)."""
        fam = self.family
        if frame is not None and phi_u is None:
            phi_u = fam.to_frame(phi, frame)
        own = phi if frame is None else phi_u
        # draws in q's own coordinates, then z = a + B u for a frame
        factor = fam.factor(own)
        z = fam.sample(own, eps, factor)
        if frame is not None:
            z = frame.push(z)
        if self.estimator == "score":
            lp = self.model.log_density(z, rows, grad=False)
            if not np.all(np.isfinite(lp)):
                return None, np.empty(0, np.int64)
            w = lp - fam.log_q_eps(phi, eps)
            return _score_combine(fam.score(own, eps), w, True), lp
        lp, gz = self.model.log_density(z, rows)
        if not (np.isfinite(lp).all() and np.isfinite(gz).all()):
            return None, np.flatnonzero(~np.all(np.isfinite(gz), axis=0))
        if frame is not None:
            gz = frame.pullback(gz)
        g = fam.grad(own, eps, gz, self.estimator, factor)
        if not np.isfinite(g).all():
            return None, np.empty(0, np.int64)
        return g, lp

    def step(self, state):
        """One optimization step: returns ``(new_state, elbo_estimate)``.

        Pure: the same state gives the same result. :meth:`run` calls it inside
        ``fastvi._threads.thread_limits`` (numba threads, BLAS on one thread); a
        caller stepping by hand should do the same for speed.
        """
        new, elbo, _ = self._step(state)
        return new, elbo

    def _step(self, state):
        """:meth:`step`, also returning q's new parameters in the state's frame."""
        fam = self.family
        phi = state.params
        frame = state.frame
        if frame is None:
            phi_u = phi
        elif state.params_u is not None:
            phi_u = state.params_u
        else:
            phi_u = fam.to_frame(phi, frame)
        last = None
        for retry in range(self.max_retries + 1):
            eps, rows = self.draws(state, retry)
            g, lp = self.gradient(phi, eps, rows, frame, phi_u)
            if g is None:
                last = (
                    "gradient of the log density",
                    lp,
                    self.model.coordinate_names(),
                )
                continue
            new_u, opt_state = self.optimizer.update(
                g, state.opt_state, phi_u, state.lr_scale
            )
            new_phi = new_u if frame is None else fam.from_frame(new_u, frame)
            if not np.isfinite(new_phi).all():
                bad = np.flatnonzero(~np.isfinite(new_phi))
                names = fam.coordinate_names(self.model.coordinate_names())
                last = ("variational parameters after the update", bad, names)
                continue
            # mean_s [log p(z_s) - log q(z_s)]: unbiased like mean log p + H[q],
            # but without the chi-square noise of |eps|^2 / 2 (sd sqrt(P / (2 S))
            # per step), which vanishes as q nears the posterior; computed as
            # mean log p + H[q] + (mean_s |eps_s|^2 - P) / 2
            S, P = eps.shape
            elbo = (
                float(lp.sum()) / S
                + fam.entropy(phi)
                + 0.5 * (float(np.vdot(eps, eps)) / S - P)
            )
            new = state._replace(
                params=new_phi,
                opt_state=opt_state,
                step=state.step + 1,
                params_u=None if frame is None else new_u,
            )
            return new, elbo, new_u
        what, bad, names = last
        culprits = (
            ", ".join(names[i] for i in bad[:5]) if bad.size else "the log density"
        )
        raise FloatingPointError(
            f"SGVI diverged at step {state.step}: the {what} stayed non-finite in "
            f"{self.max_retries + 1} draws (parameters: {culprits}). Try a smaller "
            "learning rate, a smaller init_scale or rescaling the data."
        )

    # ------------------------------------------------------------ Stan's eta search
    def elbo(self, phi, n_draws=100, seed=None):
        """ELBO of q(phi) on all the data: mean log p over ``n_draws`` fresh draws plus
        q's entropy (Stan's ``calc_ELBO``); -inf when a draw is not finite."""
        rng = np.random.default_rng(seed)
        eps = rng.standard_normal((int(n_draws), self.model.size))
        lp = self._log_density_values(self.family.sample(phi, eps))
        if not np.all(np.isfinite(lp)):
            return -np.inf
        return float(lp.mean()) + self.family.entropy(phi)

    def _draws_per_call(self):
        # _DRAW_BATCH, or more while draws x rows stay below 2^16 for a model
        # that says its rows (a small model's call costs about as much for 1 as
        # for 256 draws)
        rows = self.model.n_rows
        return _DRAW_BATCH if rows < 1 else max(_DRAW_BATCH, 2**16 // rows)

    def _log_density_values(self, z):
        n = self._draws_per_call()
        out = np.empty(z.shape[0])
        for i in range(0, z.shape[0], n):
            out[i : i + n] = self.model.log_density(z[i : i + n], None, grad=False)
        return out

    def _log_density_grads(self, z):
        """The gradients of the log density at the draws ``z`` (all rows)."""
        n = self._draws_per_call()
        out = np.empty_like(z)
        for i in range(0, z.shape[0], n):
            out[i : i + n] = self.model.log_density(z[i : i + n], None)[1]
        return out

    def adapt_eta(self, phi, key, frame=None):
        """Stan's search for :class:`StanAdaptive`'s eta from q(phi); see there
        (steps in the coordinates of ``frame`` when given).

        Returns ``(eta, elbos)``."""
        opt = self.optimizer
        n = opt.elbo_samples
        with np.errstate(all="ignore"):
            elbo_init = self.elbo(phi, n, [key, _TAG_ADAPT, 0])
        if not np.isfinite(elbo_init):
            raise FloatingPointError(
                "Cannot compute the ELBO of the initial q: the log density is not "
                "finite at some of its draws."
            )

        def evaluate(eta):
            i = opt.sequence.index(eta) + 1
            fam = self.family
            p = phi if frame is None else fam.to_frame(phi, frame)
            state = opt.init(p, eta)
            with np.errstate(all="ignore"):
                for t in range(opt.adapt_iter):
                    rng = np.random.default_rng([key, _TAG_ADAPT, i, t])
                    eps = rng.standard_normal((self.n_samples, self.model.size))
                    rows = None
                    if self.batch_size is not None:
                        rows = rng.choice(
                            self.model.n_rows, self.batch_size, replace=False
                        )
                    pz = p if frame is None else fam.from_frame(p, frame)
                    if not np.all(np.isfinite(pz)):
                        return -np.inf
                    g, _ = self.gradient(pz, eps, rows, frame, p)
                    if g is None:  # Stan: a failed gradient counts as zero
                        g = np.zeros_like(p)
                    p, state = opt.update(g, state, p)
                    if not np.all(np.isfinite(p)):
                        return -np.inf
                pz = p if frame is None else fam.from_frame(p, frame)
                if not np.all(np.isfinite(pz)):
                    return -np.inf
                return self.elbo(pz, n, [key, _TAG_ADAPT, i, opt.adapt_iter])

        return select_eta(evaluate, elbo_init, opt.sequence)

    # ------------------------------------------------------------ the loop
    @announces("sgvi")
    def run(
        self,
        seed=None,
        max_iter=5000,
        convergence=None,
        init_state=None,
        progress_bar=False,
        init_params=None,
        psis_draws=None,
        callback=None,
        resume=None,
        monitor=None,
    ):
        """Run up to ``max_iter`` steps from ``init_state`` (or a fresh state).

        ``convergence`` is a callable ``(elbo_array, n_steps) -> bool`` such as
        :class:`WindowConvergence` (default) or :class:`StanConvergence`; ``None``
        uses ``WindowConvergence()``; a rule that sets ``pending_decay`` has the
        state's ``lr_scale`` multiplied by it. A rule with an ``observe(x, n)``
        method is shown q's parameters after every step (in the state's
        :class:`Frame` when it has one, else with the means divided by q's sds),
        and when it has an ``average()`` the converged q is the average of the
        parameters over its last windows (iterate averaging). A
        :class:`DivergenceMonitor` watches the trace and warns
        (:class:`~fastvi.sgvi.diagnostics.ELBODivergenceWarning`) when it falls far
        below its best.

        At the end the PSIS k-hat of the final q is computed from ``psis_draws``
        draws (None: between 256 and 1000, half the draws the run took; 0: none)
        with a seed derived from the run's (a k-hat above 0.7 from fewer than 1000
        draws is recomputed from 1000); when the run converged and k-hat is
        above 0.7 a :class:`~fastvi.sgvi.diagnostics.PSISWarning` names the
        likely cause and a remedy that applies to this fit (not when the log
        importance ratios vary so little that k-hat is noise: see
        :func:`~fastvi.sgvi.diagnostics.untrustworthy`). Returns
        :class:`SGVIResult` (the ELBO of the steps of this run only).

        ``callback(n, elbo, state)``, when given, is called after every step with
        the number of steps of this run, their ELBO values (a read-only view) and
        the state (verbose output; it must not change the state).

        ``monitor(n, elbo, snapshot)``, when given, is called likewise (``n``: the
        steps of the run so far, fixed-draw iterations included); ``snapshot()``,
        called during the call, returns the :class:`SGVIRun` where the run stands
        (None in the fixed-draw iterations: they are deterministic, and a run
        stopped among them is rerun from the start). ``resume``: such an
        :class:`SGVIRun` to go on from, with ``max_iter`` and a ``convergence`` rule
        as the run had (a fresh one: it gets the saved rule's state); ``seed``,
        ``init_state`` and ``init_params`` are then not used, and the result is
        bitwise the one of the run that made the snapshot had it not stopped (its
        parameters, ELBO trace, ``n_iter``, ``converged`` and k-hat).
        """
        with thread_limits(self.n_jobs):
            result = self._run(
                seed,
                max_iter,
                convergence,
                init_state,
                progress_bar,
                init_params,
                callback,
                resume,
                monitor,
            )
            if psis_draws is None:
                psis_draws = min(1000, max(256, result.n_iter * self.n_samples // 2))
            if psis_draws:
                from .diagnostics import untrustworthy

                diag = self.diagnose(result.state, psis_draws, warn=False)
                if (
                    result.converged
                    and psis_draws < 1000
                    and untrustworthy(diag.khat, diag.log_weights)
                ):
                    # k-hat from a few hundred draws is noisy and biased upward
                    # (a sound mean-field fit showed 0.81 on 256 draws, 0.33 on
                    # 1000): an alarm is confirmed on 1000 draws before it is raised
                    diag = self.diagnose(result.state, 1000, warn=False)
                khat = diag.khat
                result = result._replace(psis_khat=khat)
                # a run that stopped before converging says so (converged False);
                # a converged one whose q misses the posterior says why
                if result.converged and untrustworthy(khat, diag.log_weights):
                    from .diagnostics import PSISWarning, warn_user

                    warn_user(
                        self._psis_message(khat, result.state, result.converged),
                        PSISWarning,
                    )
                elif result.converged:
                    self._check_correlation(result.state)
                if (
                    result.converged
                    and result.method != "fixed"
                    and self.batch_size is None
                    and self.estimator != "score"
                ):
                    result = self._check_stationary(result, psis_draws)
        return result

    def _check_stationary(self, result, n_draws):
        """A converged run of stochastic steps whose q the ELBO's gradient on
        fresh draws does not confirm as its optimum is reported not converged,
        with a :class:`~fastvi.sgvi.diagnostics.StationarityWarning` (the
        stopping rule watches the ELBO's noisy trace; when the gradient is
        heavy-tailed, as at the edge of separable classes, Adam's steps stall
        away from the optimum while the trace looks flat)."""
        from .diagnostics import (
            STATIONARITY_TOLERANCE,
            StationarityWarning,
            stationarity_gap,
            warn_user,
        )

        state = result.state
        # more draws when a model's rows are few (the gradient's rare large
        # values are what a heavy tail hides; a stall at separable classes was
        # 0.08-3.7 on sets of 2^14 draws, 0.68-2.0 on 2^16, 0.86-1.5 on 2^18): up
        # to 2^24 row evaluations and 2^22 numbers per array, at most 2^18 draws
        if self.model.n_rows >= 1:
            budget = min(2**18, 2**24 // self.model.n_rows, 2**22 // self.model.size)
            n_draws = max(n_draws, budget)
        seed = [state.key, _TAG_STATIONARY, state.step]
        gap, i = stationarity_gap(self, state, n_draws, seed)
        for again in (1, 2):
            if gap <= STATIONARITY_TOLERANCE:
                break
            # one antithetic pair in a heavy tail can carry a set of draws past
            # the tolerance at the optimum (a Poisson fit of one nonzero count:
            # 1.15 on one set, 0.23 on 2^20 draws; 1 or 2 of 5 sets of 2^16 above
            # it): every one of three sets must be
            gap2, i2 = stationarity_gap(self, state, n_draws, [*seed, again])
            if gap2 < gap:
                gap, i = gap2, i2
        result = result._replace(stationarity=gap)
        if gap <= STATIONARITY_TOLERANCE:
            return result
        name = self.model.coordinate_names()[i]
        warn_user(
            "SGVI's stopping rule fired, but q is not confirmed at the ELBO's "
            f"optimum: on three sets of {2 * max(int(n_draws) // 2, 2)} fresh draws the "
            f"ELBO's gradient asks for a step of at least {gap:.3g} of q's sds in "
            f"{name} (with its sampling error; tolerance {STATIONARITY_TOLERANCE}). The "
            "gradient varies too much between draws for the stochastic steps to "
            "settle (heavy tails: separable classes, a hard boundary or a funnel "
            "in the posterior). converged is False: check q against MCMC, or make "
            "the posterior better behaved (more informative priors, rescaled "
            "features).",
            StationarityWarning,
        )
        return result._replace(converged=False)

    def _check_correlation(self, state):
        """Warn when a mean-field q fits a strongly correlated posterior (k-hat
        flags such fits only by chance; see
        :class:`~fastvi.sgvi.diagnostics.CorrelationWarning`)."""
        from .diagnostics import CORRELATION_THRESHOLD, CorrelationWarning, warn_user

        frame = state.frame
        if not isinstance(self.family, MeanField) or frame is None:
            return
        r, i, j = frame.corr
        if r > CORRELATION_THRESHOLD:
            names = self.model.coordinate_names()
            warn_user(
                f"The posterior is strongly correlated (correlation {r:.2f} between "
                f"{names[i]} and {names[j]} at its mode): a mean-field q's sds are "
                f"too small there (as little as {math.sqrt(1.0 - r * r):.2f} of the "
                "posterior's). Use family='fullrank'.",
                CorrelationWarning,
            )

    def _psis_message(self, khat, state, converged):
        """What a k-hat above 0.7 most likely means for this fit, and what to do."""
        if math.isnan(khat):
            head = (
                "PSIS k-hat of the fitted q cannot be computed (the log density is "
                "not finite at some of q's draws, or a few draws hold all the "
                "importance weight): q is far from the posterior and its means and "
                "sds are not reliable. "
            )
        else:
            head = (
                f"PSIS k-hat of the fitted q is {khat:.2f} > {_khat_threshold()} "
                "(Yao et al. 2018): q is far from the posterior in the tails and "
                "its means and sds are not reliable. "
            )
        frame = state.frame
        names = self.model.coordinate_names()
        if not converged:
            return head + (
                "The fit stopped before converging: run more steps (max_iter) and "
                "check the ELBO trace."
            )
        if isinstance(self.family, MeanField) and frame is not None:
            r, i, j = frame.corr
            if r > 0.5:
                return head + (
                    "q is mean-field but the posterior is correlated (correlation "
                    f"{r:.2f} between {names[i]} and {names[j]} at its mode): use "
                    "family='fullrank'."
                )
        if frame is None and self.init_scale is not None:
            return head + (
                f"The fit started at the initial point with init_scale="
                f"{self.init_scale:g} and stepped in the raw coordinates, where "
                "Adam's steps are not scale-free (too large for parameters with "
                "small posterior sds, too small for large ones): leave "
                "init_scale=None (the default: a Laplace start and whitened "
                "steps), or rescale the data."
            )
        if frame is None:
            return head + (
                "The fit could not start from a Laplace approximation (no finite "
                "mode with a positive-definite curvature): check the model (an "
                "improper posterior, a parameter the data do not identify) or give "
                "init_params near the posterior."
            )
        return head + (
            "The posterior is not close to a Gaussian in the unconstrained space "
            "(skewed or heavy-tailed, e.g. a hierarchical scale near zero), so no "
            "Gaussian q fits it well: reparameterize the model (e.g. non-centered "
            "hierarchies), or reweight q's draws by importance sampling or use MCMC."
        )

    def _observed(self, phi, phi_u, frame):
        """q's parameters as shown to a stopping rule: in the frame's coordinates,
        or with the means divided by q's sds."""
        if frame is not None:
            return phi_u
        x = phi.copy()
        x[: self.model.size] /= self.family.std(phi)
        return x

    def _run(
        self,
        seed,
        max_iter,
        convergence,
        init_state,
        progress_bar,
        init_params,
        callback=None,
        resume=None,
        monitor=None,
    ):
        if resume is not None:
            self._check_resume(resume, max_iter)
            return self._steps(
                resume.state,
                max_iter,
                convergence,
                progress_bar,
                callback,
                monitor,
                resume,
            )
        fresh = init_state is None
        state = self.init(seed, init_params) if fresh else init_state
        if (
            self.method == "fixed"
            and fresh
            and convergence is None
            and state.frame is not None
            and self.batch_size is None
        ):
            fixed = self._run_fixed(state, max_iter, progress_bar, callback, monitor)
            if fixed.converged or fixed.n_iter >= max_iter:
                return fixed
            # the fixed draws' sampling error is too large: the stochastic steps
            # of method='sgd' exactly (from the Laplace start, the same draws;
            # from the fixed-draw q they ended farther off on eight schools, whose
            # tau it had too wide), numbered after the fixed-draw iterations
            start = SGVIRun(state, fixed.elbo, None, None, False, fixed.n_iter)
            return self._steps(
                state,
                max_iter,
                None,
                progress_bar,
                callback,
                monitor,
                start._replace(method="fixed+sgd"),
            )
        return self._steps(
            state, max_iter, convergence, progress_bar, callback, monitor
        )

    def _check_resume(self, run, max_iter):
        """Refuse a ``resume`` that is no :class:`SGVIRun` of this engine's q."""
        if not isinstance(run, SGVIRun) or not isinstance(run.state, SGVIState):
            raise TypeError(f"resume must be an SGVIRun, got {type(run).__name__}.")
        if np.shape(run.state.params) != (self.family.size,):
            raise ValueError(
                f"resume: the run's q has {np.size(run.state.params)} parameters, "
                f"this engine's {self.family.size}."
            )
        n = np.shape(run.elbo)[0] if np.ndim(run.elbo) == 1 else -1
        if not 0 <= run.n_fixed <= n <= max_iter:
            raise ValueError(
                f"resume: the run has {n} steps ({run.n_fixed} fixed-draw "
                f"iterations), more than max_iter={max_iter} or not a trace."
            )

    def _steps(
        self, state, max_iter, convergence, progress_bar, callback, monitor, start=None
    ):
        """The stochastic steps from ``state`` until the stopping rule fires or the
        run has ``max_iter`` steps; ``start``: an :class:`SGVIRun` to go on from
        (its trace, rule and monitor; a rule of None: a fresh one)."""
        convergence = WindowConvergence() if convergence is None else convergence
        window = getattr(convergence, "window", None) or getattr(
            convergence, "eval_elbo", 100
        )
        observe = getattr(convergence, "observe", None)
        watch = DivergenceMonitor(window)
        n_fixed, method, converged = 0, "sgd", False
        trace = np.empty(max_iter)
        n = 0
        if start is not None:
            n_fixed, method, converged = start.n_fixed, start.method, start.converged
            n = start.elbo.shape[0] - n_fixed
            trace[: n_fixed + n] = start.elbo
            if start.rule is not None:
                _restore(convergence, start.rule, self.family.size)
                _restore(watch, start.watch, self.family.size)
        elbo = trace[n_fixed:]  # the steps' own trace, as the rule and monitor see it
        offset = state.step - n
        bar = _progress(max_iter - n_fixed) if progress_bar else None
        if bar is not None and n:
            bar.update(n)
        step = self._step
        try:
            while n < max_iter - n_fixed and not converged:
                state, elbo[n], phi_u = step(state)
                n += 1
                if observe is not None:
                    observe(
                        self._observed(state.params, phi_u, state.frame),
                        n,
                        n_means=self.model.size,
                    )
                if bar is not None:
                    bar.update(1)
                    if n % 50 == 0:
                        bar.set_postfix(elbo=f"{elbo[n - 1]:.4g}")
                watch(elbo, n, offset, stacklevel=5)
                converged = bool(convergence(elbo, n))
                factor = getattr(convergence, "pending_decay", None)
                if factor is not None and not converged:
                    convergence.pending_decay = None
                    state = state._replace(lr_scale=state.lr_scale * factor)
                if callback is not None or monitor is not None:
                    seen = trace[: n_fixed + n]
                    seen.flags.writeable = False
                if callback is not None:
                    callback(n_fixed + n, seen, state)
                if monitor is not None:
                    run = SGVIRun(
                        state, seen, convergence, watch, converged, n_fixed, method
                    )
                    monitor(n_fixed + n, seen, functools.partial(_snapshot_run, run))
        finally:
            if bar is not None:
                bar.close()
        average = getattr(convergence, "average", None)
        if converged and observe is not None and average is not None:
            state = self._averaged(state, average())
        return SGVIResult(
            state, trace[: n_fixed + n].copy(), converged, n_fixed + n, method=method
        )

    def _run_fixed(self, state, max_iter, progress_bar, callback, monitor=None):
        """The fixed-draw fit (see ``method``) from a fresh state with a frame:
        BFGS on 2M cubature draws (M = max(8, P) pairs), doubled while the
        estimated sampling error is above the tolerance. Returns an
        :class:`SGVIResult` (``n_iter``: BFGS iterations; ``elbo``: F after each)
        with ``converged`` when the error is within it."""
        from .fixed import (
            cubature_draws,
            fixed_draw_fit,
            objective,
            replicate_gap,
            start_gap,
        )

        fam, frame = self.family, state.frame
        P = self.model.size
        phi_u = state.params_u
        if phi_u is None:
            phi_u = fam.to_frame(state.params, frame)
        M = max(_FIXED_MIN_PAIRS, P)
        traces = []
        n = 0
        bar = _progress(max_iter) if progress_bar else None
        converged = False
        cb = None
        if callback is not None or bar is not None or monitor is not None:
            seen = []

            def cb(p, value):
                seen.append(value)
                if bar is not None:
                    bar.update(1)
                trace = np.array(seen)
                trace.flags.writeable = False
                if monitor is not None:  # no snapshot: a resume reruns these
                    monitor(len(seen), trace, None)
                if callback is not None:
                    s = state._replace(
                        params=fam.from_frame(p, frame),
                        params_u=p.copy(),
                        step=state.step + len(seen),
                    )
                    callback(len(seen), trace, s)

        try:
            for r in range(_FIXED_ROUNDS + 1):
                rng = np.random.default_rng([state.key, _TAG_FIXED, r])
                E = cubature_draws(rng, P, M)
                f_E, _ = objective(self, frame, E)
                if r == 0:
                    # screen: do two sets of draws already disagree at the start?
                    gm, gs = start_gap(
                        self, frame, phi_u, f_E, cubature_draws(rng, P, M)
                    )
                    if max(gm / _FIXED_TOL_MEAN, gs / _FIXED_TOL_SD) > _FIXED_SCREEN:
                        break
                x, ok, it, trace, _, hess_inv = fixed_draw_fit(
                    self, frame, phi_u, E, max_iter - n, callback=cb, f=f_E
                )
                n += it
                traces.append(trace)
                if not ok:
                    break
                phi_u = x
                sets = [cubature_draws(rng, P, M) for _ in range(_FIXED_REPLICATES)]
                gap_mean, gap_sd = replicate_gap(self, frame, phi_u, hess_inv, sets)
                if gap_mean <= _FIXED_TOL_MEAN and gap_sd <= _FIXED_TOL_SD:
                    converged = True
                    break
                # doubling the draws shrinks the gap by about sqrt(2): a gap far
                # above the tolerance (eight schools': 2-3 times) is not worth it
                if (
                    n >= max_iter
                    or max(gap_mean / _FIXED_TOL_MEAN, gap_sd / _FIXED_TOL_SD)
                    > _FIXED_DOUBLE_MAX
                ):
                    break
                M *= 2
        finally:
            if bar is not None:
                bar.close()
        phi = fam.from_frame(phi_u, frame)
        if not np.all(np.isfinite(phi)):
            phi_u = fam.to_frame(state.params, frame)
            phi = state.params
        new = state._replace(params=phi, params_u=phi_u, step=state.step + n)
        elbo = np.concatenate(traces) if traces else np.empty(0)
        return SGVIResult(new, elbo, converged, n, method="fixed")

    def _averaged(self, state, x):
        """The state with q's parameters set to their average ``x`` (as observed)."""
        if x is None or not np.all(np.isfinite(x)):
            return state
        if state.frame is not None:
            phi = self.family.from_frame(x, state.frame)
        else:
            phi = x.copy()
            phi[: self.model.size] *= self.family.std(state.params)
        if not np.all(np.isfinite(phi)):
            return state
        return state._replace(
            params=phi, params_u=None if state.frame is None else x.copy()
        )

    # ------------------------------------------------------------ output
    def sample(self, state, n_draws, seed=None):
        """``n_draws`` draws of q in the unconstrained space, shape (n_draws, P)."""
        if not isinstance(n_draws, Integral) or n_draws < 1:
            raise ValueError(f"n_draws must be a positive int, got {n_draws!r}.")
        rng = np.random.default_rng(seed)
        eps = rng.standard_normal((int(n_draws), self.model.size))
        return self.family.sample(state.params, eps)

    def posterior(self, state, n_draws=1000, seed=None, elbo=None):
        """Draws of q in the constrained space, per parameter, with means and sds
        (a :class:`Posterior`; ``elbo``: a trace to keep with them)."""
        theta = self.model.constrain(self.sample(state, n_draws, seed))
        draws, mean, sd = {}, {}, {}
        for p in self.model.params:
            d = theta[:, self.model.slices[p.name]].reshape((-1, *p.shape))
            draws[p.name] = d
            mean[p.name] = d.mean(axis=0)
            sd[p.name] = d.std(axis=0, ddof=1) if d.shape[0] > 1 else np.zeros(p.shape)
        return Posterior(draws, mean, sd, None if elbo is None else np.asarray(elbo))

    def diagnose(self, state, n_draws=1000, seed=None, warn=True, stacklevel=2):
        """PSIS k-hat of q (Yao, Vehtari, Simpson & Gelman 2018): see
        :func:`fastvi.sgvi.diagnostics.psis_khat`. Returns
        :class:`~fastvi.sgvi.diagnostics.PSISDiagnostic`; with ``warn`` a
        :class:`~fastvi.sgvi.diagnostics.PSISWarning` is issued above 0.7.
        ``seed=None`` derives the draws' seed from the state (its key and step), so
        a fit's k-hat is reproducible."""
        from .diagnostics import diagnose_q

        if seed is None:
            seed = [state.key, _TAG_PSIS, state.step]
        with thread_limits(self.n_jobs):
            return diagnose_q(self, state, n_draws, seed, warn, stacklevel + 1)


def _khat_threshold():
    from .diagnostics import KHAT_THRESHOLD

    return KHAT_THRESHOLD


def _progress(total):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional
        warnings.warn("progress_bar=True needs tqdm; running without.", stacklevel=3)
        return None
    return tqdm(total=total)
