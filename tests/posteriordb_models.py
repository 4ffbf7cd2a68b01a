"""The six posteriordb fixtures of ``tests/data/posteriordb`` written with fastvi's
public model API (as a user would), the measure that judges a fitted q against the
NUTS reference, and direct scipy evaluations of the Stan programs for checking the
log densities."""

import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from fastvi.sgvi import GLM, Model, Param
from fastvi.sgvi.priors import Flat, HalfCauchy, Normal

DATA = Path(__file__).parent / "data" / "posteriordb"


def _data(name):
    return json.loads((DATA / name).read_text())


def reference(posterior):
    """{Stan name: (mean, sd)} of posteriordb's reference draws."""
    d = json.loads((DATA / f"reference-{posterior}.json").read_text())
    return {k: (v["mean"], v["sd"]) for k, v in d["params"].items()}


class NormalRegression(Model):
    """y ~ normal(sum_k coefficient blocks . X columns, sigma).

    ``blocks``: (name, n_columns, prior sd or None for flat); the columns of ``X``
    follow the blocks in order. ``sigma_cauchy``: the scale of a half-Cauchy prior on
    sigma, or None for a flat one."""

    def __init__(self, X, y, blocks, sigma_cauchy=None):
        self.X = np.ascontiguousarray(X, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        self.blocks = blocks
        self.sigma_cauchy = sigma_cauchy
        self.params = [
            Param(name, () if n == 1 and name == "alpha" else (n,))
            for name, n, _ in blocks
        ] + [Param("sigma", (), "positive")]
        prior_sd = []
        for _, n, sd in blocks:
            prior_sd += [math.inf if sd is None else sd] * n
        self.prior_prec = 1.0 / np.square(np.asarray(prior_sd))
        super().__init__()

    def log_joint(self, theta, rows, scale):
        K = self.X.shape[1]
        b = theta[:, :K]
        sigma = theta[:, K]
        r = self.y[:, None] - self.X @ b.T  # (N, S)
        N = self.y.shape[0]
        ss = np.sum(r * r, axis=0)
        lp = -N * np.log(sigma) - 0.5 * ss / sigma**2
        g = np.empty_like(theta)
        g[:, :K] = (self.X.T @ r).T / sigma[:, None] ** 2
        g[:, K] = -N / sigma + ss / sigma**3
        lp -= 0.5 * np.sum(self.prior_prec * b * b, axis=1)
        g[:, :K] -= self.prior_prec * b
        if self.sigma_cauchy is not None:
            c = self.sigma_cauchy
            lp -= np.log1p((sigma / c) ** 2)
            g[:, K] -= 2.0 * sigma / (c * c + sigma * sigma)
        return lp, g

    def scipy_log_density(self, theta):
        """log p(y, theta) of the Stan program, evaluated directly (one theta)."""
        K = self.X.shape[1]
        b, sigma = theta[:K], theta[K]
        lp = stats.norm.logpdf(self.y, self.X @ b, sigma).sum()
        start = 0
        for _, n, sd in self.blocks:
            if sd is not None:
                lp += stats.norm.logpdf(b[start : start + n], 0.0, sd).sum()
            start += n
        if self.sigma_cauchy is not None:
            lp += stats.cauchy.logpdf(sigma, 0.0, self.sigma_cauchy)
        return lp

    def stan_draws(self, theta):
        """{Stan name: draws} from constrained draws (n, P)."""
        out = {}
        j = 0
        for name, n, _ in self.blocks:
            if name == "alpha" and n == 1:
                out["alpha"] = theta[:, j]
            else:
                for i in range(n):
                    out[f"{name}[{i + 1}]"] = theta[:, j + i]
            j += n
        out["sigma"] = theta[:, j]
        return out


class GLMRegression(GLM):
    """A normal regression written as a :class:`fastvi.sgvi.GLM` with its priors:
    ``y ~ normal(intercept + X coef, sigma)``. ``names``: the Stan names of the
    intercept and of the coefficients (a name and a 1-based start index for
    ``name[i]``); ``scipy_priors``: the Stan program's priors for
    :meth:`scipy_log_density`, as ``(intercept, coef, sigma)`` logpdfs (None: flat).
    """

    def __init__(self, X, y, names, scipy_priors, **priors):
        super().__init__(X, y, "gaussian", **priors)
        self.names = names
        self.scipy_priors = scipy_priors

    def scipy_log_density(self, theta):
        D = self.n_features
        coef, b, sigma = theta[:D], theta[D], theta[D + 1]
        lp = stats.norm.logpdf(self.y, self.X @ coef + b, sigma).sum()
        for prior, value in zip(self.scipy_priors, (b, coef, sigma)):
            if prior is not None:
                lp += np.sum(prior(value))
        return lp

    def stan_draws(self, theta):
        D = self.n_features
        intercept, (coef, first) = self.names
        out = {intercept: theta[:, D]}
        for i in range(D):
            out[f"{coef}[{first + i}]"] = theta[:, i]
        out["sigma"] = theta[:, D + 1]
        return out


class EightSchoolsNC(Model):
    """eight_schools_noncentered.stan: theta_trans ~ N(0, 1), mu ~ N(0, 5),
    tau ~ half-Cauchy(0, 5), y ~ N(mu + tau theta_trans, sigma)."""

    def __init__(self, y, sigma):
        self.y = np.asarray(y, dtype=np.float64)
        self.sigma = np.asarray(sigma, dtype=np.float64)
        J = self.y.shape[0]
        self.params = [
            Param("theta_trans", (J,)),
            Param("mu"),
            Param("tau", (), "positive"),
        ]
        super().__init__()

    def log_joint(self, theta, rows, scale):
        J = self.y.shape[0]
        tt, mu, tau = theta[:, :J], theta[:, J], theta[:, J + 1]
        eff = mu[:, None] + tau[:, None] * tt
        d = (self.y - eff) / self.sigma**2
        lp = (
            -0.5 * np.sum(tt * tt, axis=1)
            - 0.5 * np.sum((self.y - eff) ** 2 / self.sigma**2, axis=1)
            - 0.5 * mu * mu / 25.0
            - np.log1p((tau / 5.0) ** 2)
        )
        g = np.empty_like(theta)
        g[:, :J] = -tt + d * tau[:, None]
        g[:, J] = d.sum(axis=1) - mu / 25.0
        g[:, J + 1] = np.sum(d * tt, axis=1) - 2.0 * tau / (25.0 + tau * tau)
        return lp, g

    def scipy_log_density(self, theta):
        J = self.y.shape[0]
        tt, mu, tau = theta[:J], theta[J], theta[J + 1]
        return (
            stats.norm.logpdf(tt, 0, 1).sum()
            + stats.norm.logpdf(self.y, tt * tau + mu, self.sigma).sum()
            + stats.norm.logpdf(mu, 0, 5)
            + stats.cauchy.logpdf(tau, 0, 5)
        )

    def stan_draws(self, theta):
        J = self.y.shape[0]
        out = {f"theta_trans[{j + 1}]": theta[:, j] for j in range(J)}
        out["mu"] = theta[:, J]
        out["tau"] = theta[:, J + 1]
        for j in range(J):
            out[f"theta[{j + 1}]"] = theta[:, j] * theta[:, J + 1] + theta[:, J]
        return out


def _kidiq():
    # beta[1] (flat) is the intercept, beta[2] (flat) mom_iq's coefficient
    d = _data("kidiq.json")
    X = np.asarray(d["mom_iq"], dtype=np.float64)[:, None]
    return GLMRegression(
        X,
        d["kid_score"],
        ("beta[1]", ("beta", 2)),
        (None, None, lambda s: stats.cauchy.logpdf(s, 0.0, 2.5)),
        coef_prior=Flat(),
        intercept_prior=Flat(),
        sigma_prior=HalfCauchy(2.5),
    )


def _mesquite():
    d = _data("mesquite.json")
    volume = np.log(
        np.asarray(d["diam1"]) * np.asarray(d["diam2"]) * np.asarray(d["canopy_height"])
    )
    X = np.column_stack([np.ones(d["N"]), volume])
    return NormalRegression(X, np.log(d["weight"]), [("beta", 2, None)])


def _nes():
    d = _data("nes1976.json")
    age = np.asarray(d["age_discrete"])
    X = np.column_stack(
        [
            np.ones(d["N"]),
            d["real_ideo"],
            d["race_adj"],
            age == 2,
            age == 3,
            age == 4,
            d["educ1"],
            d["gender"],
            d["income"],
        ]
    ).astype(np.float64)
    return NormalRegression(X, d["partyid7"], [("beta", 9, None)])


def _kidiq_interaction():
    d = _data("kidiq_with_mom_work.json")
    hs = np.asarray(d["mom_hs"], dtype=np.float64)
    iq = np.asarray(d["mom_iq"], dtype=np.float64)
    # Stan's sd() is the sample sd (N - 1)
    zhs = (hs - hs.mean()) / (2.0 * hs.std(ddof=1))
    ziq = (iq - iq.mean()) / (2.0 * iq.std(ddof=1))
    X = np.column_stack([np.ones(d["N"]), zhs, ziq, zhs * ziq])
    return NormalRegression(X, d["kid_score"], [("beta", 4, None)])


def _ark():
    d = _data("arK.json")
    K, T = d["K"], d["T"]
    y = np.asarray(d["y"], dtype=np.float64)
    lags = np.column_stack([y[K - k : T - k] for k in range(1, K + 1)])
    return GLMRegression(
        lags,
        y[K:],
        ("alpha", ("beta", 1)),
        (
            lambda a: stats.norm.logpdf(a, 0.0, 10.0),
            lambda b: stats.norm.logpdf(b, 0.0, 10.0),
            lambda s: stats.cauchy.logpdf(s, 0.0, 2.5),
        ),
        coef_prior=Normal(0.0, 10.0),
        intercept_prior=Normal(0.0, 10.0),
        sigma_prior=HalfCauchy(2.5),
    )


def _eight_schools():
    d = _data("eight_schools.json")
    return EightSchoolsNC(d["y"], d["sigma"])


#: posterior name -> model builder
POSTERIORS = {
    "eight_schools-eight_schools_noncentered": _eight_schools,
    "kidiq-kidscore_momiq": _kidiq,
    "mesquite-logmesquite_logvolume": _mesquite,
    "nes1976-nes": _nes,
    "kidiq_with_mom_work-kidscore_interaction_z": _kidiq_interaction,
    "arK-arK": _ark,
}


def summaries(model, theta):
    """{Stan name: (mean, sd)} of constrained draws ``theta`` (n, P)."""
    return {
        k: (float(v.mean()), float(v.std(ddof=1)))
        for k, v in model.stan_draws(theta).items()
    }


def accuracy(got, ref):
    """(max |mean - mean_ref| / sd_ref, min sd ratio, max sd ratio) over the names of
    ``ref``; ``got`` and ``ref`` are {name: (mean, sd)}."""
    z = [abs(got[k][0] - m) / s for k, (m, s) in ref.items()]
    r = [got[k][1] / s for k, (m, s) in ref.items()]
    return max(z), min(r), max(r)


def is_right(acc, z_max=0.2, lo=0.75, hi=1.33):
    z, rmin, rmax = acc
    return z <= z_max and lo <= rmin and rmax <= hi
