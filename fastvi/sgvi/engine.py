"""The SGVI engine: variational families, gradient estimators, optimizers, stopping rules.

It follows NumPyro's ``infer/svi.py`` shape: :class:`SGVI` holds the model and the
settings; :class:`SGVIState` is an immutable tuple (variational parameters, optimizer
state, random key, step count); :meth:`SGVI.step` is a pure function of a state;
:meth:`SGVI.run` loops (with a tqdm progress bar when asked and installed) and can
resume from any state (``init_state``).

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

import math
import warnings
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
from scipy.linalg import solve_triangular
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


def _step_rng(key, step, retry):
    """The generator of step ``step``'s ``retry``-th draw (see the module docs)."""
    return np.random.Generator(np.random.Philox(key=key, counter=[0, 0, step, retry]))


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
        return float(np.sum(phi[self.dim :]) + 0.5 * self.dim * _LOG_2PI_E)

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
        if estimator == "stl":
            d = gz + eps / sigma
            out[: self.dim] = d.mean(axis=0)
            out[self.dim :] = (d * eps).mean(axis=0) * sigma
        else:
            out[: self.dim] = gz.mean(axis=0)
            out[self.dim :] = (gz * eps).mean(axis=0) * sigma + 1.0
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
        tri = (L / d[:, None])[self.rows, self.cols] / self.off_scale
        tri[self.diag_pos] = np.log(d)
        return np.concatenate([np.asarray(mean, dtype=np.float64), tri])

    def cov(self, phi):
        L = self.chol(phi)
        return L @ L.T

    def std(self, phi):
        return np.sqrt(np.sum(self.chol(phi) ** 2, axis=1))

    def sample(self, phi, eps, factor=None):
        L = self.chol(phi) if factor is None else factor
        return phi[: self.dim] + eps @ L.T

    def entropy(self, phi):
        return float(
            np.sum(phi[self.dim :][self.diag_pos]) + 0.5 * self.dim * _LOG_2PI_E
        )

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
            d = (
                gz
                + solve_triangular(
                    L, eps.T, lower=True, trans="T", check_finite=False
                ).T
            )
        else:
            d = gz
        out = np.empty(self.size)
        out[: self.dim] = d.mean(axis=0)
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


FAMILIES = {"meanfield": MeanField, "fullrank": FullRank}


# ------------------------------------------------------------------ optimizers
class Adam:
    """Adam (Kingma & Ba 2015, Algorithm 1) for gradient *ascent*."""

    def __init__(self, learning_rate=0.05, b1=0.9, b2=0.999, eps=1e-8):
        self.learning_rate = float(learning_rate)
        self.b1, self.b2, self.eps = float(b1), float(b2), float(eps)

    def init(self, phi):
        return (np.zeros_like(phi), np.zeros_like(phi), 0)

    def update(self, g, state, phi, scale=1.0):
        m, v, t = state
        t += 1
        m = self.b1 * m + (1.0 - self.b1) * g
        v = self.b2 * v + (1.0 - self.b2) * g * g
        mhat = m / (1.0 - self.b1**t)
        vhat = v / (1.0 - self.b2**t)
        lr = self.learning_rate * scale
        return phi + lr * mhat / (np.sqrt(vhat) + self.eps), (m, v, t)


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
        g2 = g * g
        s = g2 if k == 1 else self.alpha * g2 + (1.0 - self.alpha) * s
        rho = scale * eta * k ** (-0.5 + 1e-16) / (self.tau + np.sqrt(s))
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
    first stall.
    """

    def __init__(self, tol=1e-3, window=100, decay=(0.2,)):
        self.tol = float(tol)
        self.window = int(window)
        self.decay = tuple(float(f) for f in decay)
        if not all(0.0 < f < 1.0 for f in self.decay):
            raise ValueError(f"decay factors must be in (0, 1), got {decay!r}.")
        self.stage = 0
        self.start = 0
        self.pending_decay = None

    def __call__(self, elbo, n):
        w = self.window
        m = n - self.start
        if self.tol <= 0 or m < 2 * w or m % w:
            return False
        last = elbo[n - w : n]
        prev = elbo[n - 2 * w : n - w]
        gain = last.mean() - prev.mean()
        se = math.sqrt((last.var(ddof=1) + prev.var(ddof=1)) / w)
        if gain >= max(self.tol, 2.0 * se):
            return False
        if self.stage < len(self.decay):
            self.pending_decay = self.decay[self.stage]
            self.stage += 1
            self.start = n
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
    :class:`WindowConvergence` at a stall)."""

    params: np.ndarray
    opt_state: tuple
    key: int
    step: int
    lr_scale: float = 1.0


class SGVIResult(NamedTuple):
    """What :meth:`SGVI.run` returns.

    ``psis_khat`` is the PSIS k-hat of the final q (:meth:`SGVI.diagnose`) when
    ``run`` was asked for it (``psis_draws > 0``), else None."""

    state: SGVIState
    elbo: np.ndarray
    converged: bool
    n_iter: int
    psis_khat: float | None = None


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
    n_samples : int
        Draws of eps per step (S).
    batch_size : int or None
        Rows per minibatch, drawn without replacement each step; the likelihood is
        scaled by N / batch_size. None: all rows.
    init_scale : float
        Initial sd of every coordinate of q (NumPyro's AutoNormal uses 0.1).
    qmc : bool, default False
        Scrambled Sobol' eps instead of pseudo-random ones (module documentation).
    n_jobs : int or None
        Threads for the data pass of :meth:`run` (None: all). Results are bitwise
        identical for every value.
    max_retries : int
        A step whose log density, gradient or update is not finite is discarded and
        redrawn this many times before :class:`FloatingPointError` is raised naming
        the parameter (NumPyro's ``stable_update`` keeps the old state instead).
    """

    def __init__(
        self,
        model,
        family="meanfield",
        estimator="stl",
        optimizer=None,
        n_samples=1,
        batch_size=None,
        init_scale=0.1,
        max_retries=10,
        n_jobs=None,
        qmc=False,
    ):
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
        if not (isinstance(init_scale, Real) and init_scale > 0):
            raise ValueError(f"init_scale must be positive, got {init_scale!r}.")
        self.model = model
        self.family = FAMILIES[family](model.size)
        self.estimator = estimator
        self.optimizer = Adam() if optimizer is None else optimizer
        self.n_samples = int(n_samples)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.init_scale = float(init_scale)
        self.max_retries = int(max_retries)
        self.n_jobs = n_jobs
        self.qmc = bool(qmc)
        self._sobol = {}

    # ------------------------------------------------------------ state
    def init(self, seed=None, init_params=None):
        """A fresh state. ``init_params``: unconstrained mean of q (default: the
        model's initial point). The log density must be finite there.

        With ``StanAdaptive(eta=None)`` this runs Stan's eta search (its steps are
        not counted in ``state.step``)."""
        key = int(
            np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)[0] >> 1
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
        phi = self.family.init(mean, self.init_scale)
        opt = self.optimizer
        if isinstance(opt, StanAdaptive) and opt.eta is None:
            with thread_limits(self.n_jobs):
                eta, _ = self.adapt_eta(phi, key)
            return SGVIState(phi, opt.init(phi, eta), key, 0)
        return SGVIState(phi, opt.init(phi), key, 0)

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
    def gradient(self, phi, eps, rows=None):
        """``(grad, lp)``: the ELBO gradient estimate in q's packed parameters and the
        log densities of the draws, or ``(None, culprit)`` when something is not
        finite (``culprit``: indices of the bad coordinates of z, possibly empty)."""
        fam = self.family
        factor = fam.factor(phi)
        z = fam.sample(phi, eps, factor)
        if self.estimator == "score":
            lp = self.model.log_density(z, rows, grad=False)
            if not np.all(np.isfinite(lp)):
                return None, np.empty(0, np.int64)
            w = lp - fam.log_q_eps(phi, eps)
            return _score_combine(fam.score(phi, eps), w, True), lp
        lp, gz = self.model.log_density(z, rows)
        if not (np.all(np.isfinite(lp)) and np.all(np.isfinite(gz))):
            return None, np.flatnonzero(~np.all(np.isfinite(gz), axis=0))
        return fam.grad(phi, eps, gz, self.estimator, factor), lp

    def step(self, state):
        """One optimization step: returns ``(new_state, elbo_estimate)``.

        Pure: the same state gives the same result. :meth:`run` calls it inside
        ``fastvi._threads.thread_limits`` (numba threads, BLAS on one thread); a
        caller stepping by hand should do the same for speed.
        """
        fam = self.family
        phi = state.params
        last = None
        for retry in range(self.max_retries + 1):
            eps, rows = self.draws(state, retry)
            g, lp = self.gradient(phi, eps, rows)
            if g is None:
                last = (
                    "gradient of the log density",
                    lp,
                    self.model.coordinate_names(),
                )
                continue
            new_phi, opt_state = self.optimizer.update(
                g, state.opt_state, phi, state.lr_scale
            )
            if not np.all(np.isfinite(new_phi)):
                bad = np.flatnonzero(~np.isfinite(new_phi))
                names = fam.coordinate_names(self.model.coordinate_names())
                last = ("variational parameters after the update", bad, names)
                continue
            elbo = float(np.mean(lp)) + fam.entropy(phi)
            new = SGVIState(
                new_phi, opt_state, state.key, state.step + 1, state.lr_scale
            )
            return new, elbo
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

    def _log_density_values(self, z):
        out = np.empty(z.shape[0])
        for i in range(0, z.shape[0], _DRAW_BATCH):
            out[i : i + _DRAW_BATCH] = self.model.log_density(
                z[i : i + _DRAW_BATCH], None, grad=False
            )
        return out

    def adapt_eta(self, phi, key):
        """Stan's search for :class:`StanAdaptive`'s eta from q(phi); see there.

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
            p = phi
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
                    g, _ = self.gradient(p, eps, rows)
                    if g is None:  # Stan: a failed gradient counts as zero
                        g = np.zeros_like(p)
                    p, state = opt.update(g, state, p)
                    if not np.all(np.isfinite(p)):
                        return -np.inf
                return self.elbo(p, n, [key, _TAG_ADAPT, i, opt.adapt_iter])

        return select_eta(evaluate, elbo_init, opt.sequence)

    # ------------------------------------------------------------ the loop
    @announces("sgvi")
    def run(
        self,
        seed=None,
        max_iter=1000,
        convergence=None,
        init_state=None,
        progress_bar=False,
        init_params=None,
        psis_draws=0,
    ):
        """Run up to ``max_iter`` steps from ``init_state`` (or a fresh state).

        ``convergence`` is a callable ``(elbo_array, n_steps) -> bool`` such as
        :class:`WindowConvergence` (default) or :class:`StanConvergence`; ``None``
        uses ``WindowConvergence()``; a rule that sets ``pending_decay`` has the
        state's ``lr_scale`` multiplied by it. A :class:`DivergenceMonitor` watches
        the trace and warns (:class:`~fastvi.sgvi.diagnostics.ELBODivergenceWarning`)
        when it falls far below its best. ``psis_draws > 0`` also computes the PSIS
        k-hat of the final q from that many draws (:meth:`diagnose`, which warns
        above 0.7). Returns :class:`SGVIResult` (the ELBO of the steps of this run
        only).
        """
        with thread_limits(self.n_jobs):
            result = self._run(
                seed, max_iter, convergence, init_state, progress_bar, init_params
            )
            if psis_draws:
                khat = self.diagnose(result.state, psis_draws, stacklevel=3).khat
                result = result._replace(psis_khat=khat)
        return result

    def _run(self, seed, max_iter, convergence, init_state, progress_bar, init_params):
        state = self.init(seed, init_params) if init_state is None else init_state
        convergence = WindowConvergence() if convergence is None else convergence
        window = getattr(convergence, "window", None) or getattr(
            convergence, "eval_elbo", 100
        )
        monitor = DivergenceMonitor(window)
        offset = state.step
        elbo = np.empty(max_iter)
        bar = _progress(max_iter) if progress_bar else None
        converged = False
        n = 0
        step = self.step
        try:
            while n < max_iter:
                state, elbo[n] = step(state)
                n += 1
                if bar is not None:
                    bar.update(1)
                    if n % 50 == 0:
                        bar.set_postfix(elbo=f"{elbo[n - 1]:.4g}")
                monitor(elbo, n, offset, stacklevel=4)
                if convergence(elbo, n):
                    converged = True
                    break
                factor = getattr(convergence, "pending_decay", None)
                if factor is not None:
                    convergence.pending_decay = None
                    state = state._replace(lr_scale=state.lr_scale * factor)
        finally:
            if bar is not None:
                bar.close()
        return SGVIResult(state, elbo[:n].copy(), converged, n)

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
        :class:`~fastvi.sgvi.diagnostics.PSISWarning` is issued above 0.7."""
        from .diagnostics import diagnose_q

        with thread_limits(self.n_jobs):
            return diagnose_q(self, state, n_draws, seed, warn, stacklevel + 1)


def _progress(total):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional
        warnings.warn("progress_bar=True needs tqdm; running without.", stacklevel=3)
        return None
    return tqdm(total=total)
