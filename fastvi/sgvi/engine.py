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

The diagonal of L is parameterized by its log (mean-field: omega = log sigma), so the
chain rule multiplies the diagonal gradients by L_ii.

Randomness: every draw of step ``t`` (and of its ``r``-th retry after a non-finite
step) comes from ``numpy.random.default_rng([key, t, r])``: a seed reproduces a fit
bit for bit whatever the number of threads, and a resumed run draws exactly what an
uninterrupted one would.
"""

import math
import warnings
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
from scipy.linalg import solve_triangular

from .._threads import thread_limits

__all__ = [
    "Adam",
    "FullRank",
    "MeanField",
    "RobbinsMonro",
    "SGVI",
    "SGVIResult",
    "SGVIState",
    "StanConvergence",
    "WindowConvergence",
]

_LOG_2PI_E = math.log(2.0 * math.pi) + 1.0
ESTIMATORS = ("stl", "reparam")


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

    def sample(self, phi, eps):
        return phi[: self.dim] + np.exp(phi[self.dim :]) * eps

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

    def grad(self, phi, eps, gz, estimator):
        sigma = np.exp(phi[self.dim :])
        out = np.empty(self.size)
        if estimator == "stl":
            d = gz + eps / sigma
            out[: self.dim] = d.mean(axis=0)
            out[self.dim :] = (d * eps).mean(axis=0) * sigma
        else:
            out[: self.dim] = gz.mean(axis=0)
            out[self.dim :] = (gz * eps).mean(axis=0) * sigma + 1.0
        return out

    def coordinate_names(self, names):
        return [f"mean of {n}" for n in names] + [f"log-scale of {n}" for n in names]


class FullRank:
    """Gaussian q(z) = N(mu, L L^T), L lower triangular with a positive diagonal.

    Packed as [mu, the lower triangle of L row by row with log L_ii on the diagonal].
    """

    name = "fullrank"

    def __init__(self, dim):
        self.dim = int(dim)
        self.rows, self.cols = np.tril_indices(self.dim)
        self.diag_pos = np.flatnonzero(self.rows == self.cols)
        self.size = self.dim + self.rows.size

    def init(self, mean, scale):
        tri = np.zeros(self.rows.size)
        tri[self.diag_pos] = math.log(scale)
        return np.concatenate([np.asarray(mean, float), tri])

    def mean(self, phi):
        return phi[: self.dim]

    def chol(self, phi):
        tri = phi[self.dim :].copy()
        tri[self.diag_pos] = np.exp(tri[self.diag_pos])
        L = np.zeros((self.dim, self.dim))
        L[self.rows, self.cols] = tri
        return L

    def cov(self, phi):
        L = self.chol(phi)
        return L @ L.T

    def std(self, phi):
        return np.sqrt(np.sum(self.chol(phi) ** 2, axis=1))

    def sample(self, phi, eps):
        return phi[: self.dim] + eps @ self.chol(phi).T

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

    def grad(self, phi, eps, gz, estimator):
        L = self.chol(phi)
        S = eps.shape[0]
        if estimator == "stl":
            # grad_z log q(z) = -L^{-T} eps
            d = gz + solve_triangular(L, eps.T, lower=True, trans="T").T
        else:
            d = gz
        out = np.empty(self.size)
        out[: self.dim] = d.mean(axis=0)
        gL = (d.T @ eps) / S
        if estimator == "reparam":
            gL[np.diag_indices(self.dim)] += 1.0 / np.diag(L)
        tri = gL[self.rows, self.cols]
        tri[self.diag_pos] *= np.diag(L)
        out[self.dim :] = tri
        return out

    def coordinate_names(self, names):
        tri = [
            (
                f"log L[{names[i]}, {names[j]}]"
                if i == j
                else f"L[{names[i]}, {names[j]}]"
            )
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

    def update(self, g, state, phi):
        m, v, t = state
        t += 1
        m = self.b1 * m + (1.0 - self.b1) * g
        v = self.b2 * v + (1.0 - self.b2) * g * g
        mhat = m / (1.0 - self.b1**t)
        vhat = v / (1.0 - self.b2**t)
        return phi + self.learning_rate * mhat / (np.sqrt(vhat) + self.eps), (m, v, t)


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

    def update(self, g, state, phi):
        (t,) = state
        rho = self.learning_rate * (t + 1 + self.tau) ** (-self.kappa)
        return phi + rho * g, (t + 1,)


# ------------------------------------------------------------------ stopping rules
class WindowConvergence:
    """Stop when the mean ELBO stops rising, judged against its own noise.

    Every ``window`` steps the mean ELBO of the last window is compared with that of
    the window before: the fit has converged when the gain is below
    ``max(tol, 2 * se)``, ``se`` the standard error of the difference of the two
    means. Because the threshold is in nats and scales with the estimate's noise, a
    noisy ELBO (small S, small minibatches) or a large one (millions of rows) does not
    stop the fit early the way a relative-change rule can. ``tol=0`` disables it.
    """

    def __init__(self, tol=1e-3, window=100):
        self.tol = float(tol)
        self.window = int(window)

    def __call__(self, elbo, n):
        w = self.window
        if self.tol <= 0 or n < 2 * w or n % w:
            return False
        last = elbo[n - w : n]
        prev = elbo[n - 2 * w : n - w]
        gain = last.mean() - prev.mean()
        se = math.sqrt((last.var(ddof=1) + prev.var(ddof=1)) / w)
        return bool(gain < max(self.tol, 2.0 * se))


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
    family), ``opt_state``, the random ``key`` and ``step`` (steps taken)."""

    params: np.ndarray
    opt_state: tuple
    key: int
    step: int


class SGVIResult(NamedTuple):
    """What :meth:`SGVI.run` returns."""

    state: SGVIState
    elbo: np.ndarray
    converged: bool
    n_iter: int


class SGVI:
    """Stochastic-gradient variational inference for a :class:`~fastvi.sgvi.models.Model`.

    Parameters
    ----------
    model : Model
    family : {'meanfield', 'fullrank'}
    estimator : {'stl', 'reparam'}
        Gradient estimator (see the module documentation).
    optimizer : Adam or RobbinsMonro, default Adam(0.05)
    n_samples : int
        Draws of eps per step (S).
    batch_size : int or None
        Rows per minibatch, drawn without replacement each step; the likelihood is
        scaled by N / batch_size. None: all rows.
    init_scale : float
        Initial sd of every coordinate of q (NumPyro's AutoNormal uses 0.1).
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

    # ------------------------------------------------------------ state
    def init(self, seed=None, init_params=None):
        """A fresh state. ``init_params``: unconstrained mean of q (default: the
        model's initial point). The log density must be finite there."""
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
        lp, g = self.model.log_density(mean[None, :], None)
        if not np.isfinite(lp[0]) or not np.all(np.isfinite(g)):
            raise ValueError(
                "The log density is not finite at the initial point "
                f"(log density {lp[0]!r}; non-finite gradient for "
                f"{self._bad_names(g[0], self.model.coordinate_names())})."
            )
        phi = self.family.init(mean, self.init_scale)
        return SGVIState(phi, self.optimizer.init(phi), key, 0)

    @staticmethod
    def _bad_names(values, names):
        bad = [names[i] for i in np.flatnonzero(~np.isfinite(values))]
        if not bad:
            return "none"
        return ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")

    def draws(self, state, retry=0):
        """The eps (S, P) and minibatch rows (or None) of the state's next step."""
        rng = np.random.default_rng([state.key, state.step, retry])
        eps = rng.standard_normal((self.n_samples, self.model.size))
        rows = None
        if self.batch_size is not None:
            rows = rng.choice(self.model.n_rows, self.batch_size, replace=False)
        return eps, rows

    # ------------------------------------------------------------ one step
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
            z = fam.sample(phi, eps)
            lp, gz = self.model.log_density(z, rows)
            if not (np.all(np.isfinite(lp)) and np.all(np.isfinite(gz))):
                bad = np.flatnonzero(~np.all(np.isfinite(gz), axis=0))
                last = (
                    "gradient of the log density",
                    bad,
                    self.model.coordinate_names(),
                )
                continue
            g = fam.grad(phi, eps, gz, self.estimator)
            new_phi, opt_state = self.optimizer.update(g, state.opt_state, phi)
            if not np.all(np.isfinite(new_phi)):
                bad = np.flatnonzero(~np.isfinite(new_phi))
                names = fam.coordinate_names(self.model.coordinate_names())
                last = ("variational parameters after the update", bad, names)
                continue
            elbo = float(np.mean(lp)) + fam.entropy(phi)
            return SGVIState(new_phi, opt_state, state.key, state.step + 1), elbo
        what, bad, names = last
        culprits = (
            ", ".join(names[i] for i in bad[:5]) if bad.size else "the log density"
        )
        raise FloatingPointError(
            f"SGVI diverged at step {state.step}: the {what} stayed non-finite in "
            f"{self.max_retries + 1} draws (parameters: {culprits}). Try a smaller "
            "learning rate, a smaller init_scale or rescaling the data."
        )

    # ------------------------------------------------------------ the loop
    def run(
        self,
        seed=None,
        max_iter=1000,
        convergence=None,
        init_state=None,
        progress_bar=False,
        init_params=None,
    ):
        """Run up to ``max_iter`` steps from ``init_state`` (or a fresh state).

        ``convergence`` is a callable ``(elbo_array, n_steps) -> bool`` such as
        :class:`WindowConvergence` (default) or :class:`StanConvergence`; ``None``
        uses ``WindowConvergence()``. Returns :class:`SGVIResult` (the ELBO of the
        steps of this run only).
        """
        with thread_limits(self.n_jobs):
            return self._run(
                seed, max_iter, convergence, init_state, progress_bar, init_params
            )

    def _run(self, seed, max_iter, convergence, init_state, progress_bar, init_params):
        state = self.init(seed, init_params) if init_state is None else init_state
        convergence = WindowConvergence() if convergence is None else convergence
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
                if convergence(elbo, n):
                    converged = True
                    break
        finally:
            if bar is not None:
                bar.close()
        return SGVIResult(state, elbo[:n].copy(), converged, n)


def _progress(total):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional
        warnings.warn("progress_bar=True needs tqdm; running without.", stacklevel=3)
        return None
    return tqdm(total=total)
