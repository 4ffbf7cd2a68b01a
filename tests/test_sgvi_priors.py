"""Priors of the GLM and the SGVI estimators (fastvi.sgvi.priors): densities and
gradients against scipy.stats and finite differences, checks and their messages,
default fits unchanged to the bit, an exact conjugate posterior, flat priors that
leave the posterior improper, and the estimators' parameters (clone, save/load)."""

import copy
import json
import math
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats
from scipy.special import expit
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from fastvi import BayesianLogisticRegression, BayesianPoissonRegression
from fastvi.persist import ModelFileError, load, save
from fastvi.sgvi import GLM, SGVI, PSISWarning
from fastvi.sgvi.priors import (
    Cauchy,
    Exponential,
    Flat,
    HalfCauchy,
    HalfNormal,
    HalfStudentT,
    ImproperPosteriorWarning,
    Normal,
    StudentT,
    improper_reason,
)

K = 3
LOC = np.array([0.5, -1.0, 2.0])
SCALE = np.array([0.7, 1.5, 3.0])
DF = np.array([1.5, 4.0, 30.0])

# (prior, scipy logpdf of one coordinate j at x, positive support)
CASES = [
    (Normal(0.3, 2.0), lambda x, j: stats.norm.logpdf(x, 0.3, 2.0), False),
    (Normal(LOC, SCALE), lambda x, j: stats.norm.logpdf(x, LOC[j], SCALE[j]), False),
    (StudentT(3.0, -0.2, 1.5), lambda x, j: stats.t.logpdf(x, 3.0, -0.2, 1.5), False),
    (
        StudentT(DF, LOC, SCALE),
        lambda x, j: stats.t.logpdf(x, DF[j], LOC[j], SCALE[j]),
        False,
    ),
    (Cauchy(1.0, 2.5), lambda x, j: stats.cauchy.logpdf(x, 1.0, 2.5), False),
    (
        Cauchy(LOC, SCALE),
        lambda x, j: stats.cauchy.logpdf(x, LOC[j], SCALE[j]),
        False,
    ),
    (HalfNormal(1.7), lambda x, j: stats.halfnorm.logpdf(x, scale=1.7), True),
    (HalfNormal(SCALE), lambda x, j: stats.halfnorm.logpdf(x, scale=SCALE[j]), True),
    (HalfCauchy(2.5), lambda x, j: stats.halfcauchy.logpdf(x, scale=2.5), True),
    (
        HalfCauchy(SCALE),
        lambda x, j: stats.halfcauchy.logpdf(x, scale=SCALE[j]),
        True,
    ),
    (
        HalfStudentT(4.0, 2.0),
        lambda x, j: math.log(2.0) + stats.t.logpdf(x, 4.0, 0.0, 2.0),
        True,
    ),
    (
        HalfStudentT(DF, SCALE),
        lambda x, j: math.log(2.0) + stats.t.logpdf(x, DF[j], 0.0, SCALE[j]),
        True,
    ),
    (Exponential(0.8), lambda x, j: stats.expon.logpdf(x, scale=1 / 0.8), True),
    (
        Exponential(1.0 / SCALE),
        lambda x, j: stats.expon.logpdf(x, scale=SCALE[j]),
        True,
    ),
    (Flat(), lambda x, j: 0.0, False),
]


def _draws(positive, S=5, seed=0):
    x = np.random.default_rng(seed).normal(0.0, 3.0, size=(S, K))
    return np.abs(x) + 0.05 if positive else x


@pytest.mark.parametrize(("prior", "logpdf", "positive"), CASES, ids=repr)
def test_log_density_matches_scipy_and_finite_differences(prior, logpdf, positive):
    x = _draws(positive)
    lp, grad = prior.log_density(x)
    assert lp.shape == (x.shape[0],) and grad.shape == x.shape
    direct = [sum(logpdf(row[j], j) for j in range(K)) for row in x]
    assert_allclose(lp, direct, rtol=1e-12, atol=1e-12)
    h = 1e-6
    for j in range(K):
        e = np.zeros(K)
        e[j] = h
        fd = (prior.log_density(x + e)[0] - prior.log_density(x - e)[0]) / (2 * h)
        assert_allclose(grad[:, j], fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "prior",
    [StudentT(2.0, 0.0, 1.0), Cauchy(0.0, 1.0), HalfCauchy(1.0), HalfStudentT(3.0)],
    ids=repr,
)
def test_heavy_tails_stay_finite_far_out(prior):
    """log(1 + r^2) and r / (1 + r^2) computed without overflow at r ~ 1e200."""
    x = np.array([[1e200], [1e-200], [3.0]])
    lp, grad = prior.log_density(x)
    assert np.all(np.isfinite(lp)) and np.all(np.isfinite(grad))
    df = 1.0 if isinstance(prior, (Cauchy, HalfCauchy)) else prior.df
    half = math.log(2.0) if isinstance(prior, (HalfCauchy, HalfStudentT)) else 0.0
    # far out: log t = const - (df + 1) log|x|, slope -(df + 1) / x
    const = stats.t.logpdf(0.0, df) + half
    assert_allclose(lp[0], const - (df + 1) * (math.log(1e200) - 0.5 * math.log(df)))
    assert_allclose(grad[0, 0], -(df + 1) / 1e200, rtol=1e-12)
    assert_allclose(lp[2], stats.t.logpdf(3.0, df) + half, rtol=1e-12)


@pytest.mark.parametrize(
    "prior", [HalfNormal(1.0), HalfCauchy(1.0), HalfStudentT(3.0), Exponential(2.0)]
)
def test_positive_priors_are_minus_infinity_below_zero(prior):
    lp, grad = prior.log_density(np.array([[-0.5, 1.0], [0.5, 1.0]]))
    assert lp[0] == -np.inf and np.isfinite(lp[1])
    assert grad[0, 0] == 0.0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Normal(0.0, -1.0), "Normal: scale must be positive and finite"),
        (lambda: Normal(0.0, 0.0), "scale must be positive"),
        (lambda: Normal(np.inf, 1.0), "Normal: loc must be finite"),
        (lambda: Normal(0.0, [1.0, np.nan]), r"scale\[1\] is nan"),
        (lambda: Cauchy(0.0, [1.0, -2.0, 3.0]), r"every scale .*scale\[1\] is -2.0"),
        (lambda: StudentT(0.0), "StudentT: df must be positive"),
        (lambda: HalfStudentT(np.nan, 1.0), "HalfStudentT: df must be positive"),
        (lambda: Exponential(-2.0), "Exponential: rate must be positive"),
        (lambda: HalfCauchy("wide"), "scale must be a real number"),
        (lambda: Normal(0.0, True), "scale must be a real number"),
        (lambda: Normal(0.0, [[1.0, 2.0]]), r"1-D array .* shape \(1, 2\)"),
        (lambda: Normal(0.0, []), r"non-empty"),
        (lambda: StudentT(3.0, [0.0, 1.0], [1.0, 2.0, 3.0]), "loc of 2, scale of 3"),
        # 1 / scale^2 overflows: a ZeroDivisionError, or -inf, in the fit before
        (lambda: Normal(0.0, 1e-300), "Normal: scale is 1e-300, below 1.49e-154"),
        (lambda: HalfNormal([1.0, 1e-200]), r"HalfNormal: scale\[1\] is 1e-200, below"),
    ],
)
def test_bad_prior_values_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_priors_are_values():
    p = Normal(0.0, [1.0, 2.0])
    assert p == Normal(0, np.array([1, 2])) and p != Normal(0.0, [1.0, 3.0])
    assert p != Cauchy(0.0, [1.0, 2.0])
    assert hash(p) == hash(Normal(0.0, [1.0, 2.0]))
    assert copy.deepcopy(p) == p and p.size == 2 and Normal().size is None
    assert not p.scale.flags.writeable  # a prior cannot be changed in place
    assert Flat() == Flat()


# ------------------------------------------------------------------ the GLM
def _data(family, N=120, D=K, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    eta = X @ np.linspace(-1.0, 1.0, D) + 0.3
    if family == "logistic":
        y = (rng.random(N) < expit(eta)).astype(float)
    elif family == "poisson":
        y = rng.poisson(np.exp(0.5 * eta)).astype(float)
    else:
        y = eta + 0.8 * rng.standard_normal(N)
    return X, y


def _scipy_log_joint(X, y, theta, family, coef, intercept, sigma, noise=None):
    """log p(y, theta) with the likelihood and priors written out with scipy."""
    D = X.shape[1]
    out = []
    for th in theta:
        w, b = th[:D], th[D]
        eta = X @ w + b
        if family == "logistic":
            lp = stats.bernoulli.logpmf(y, expit(eta)).sum()
        elif family == "poisson":
            lp = stats.poisson.logpmf(y, np.exp(eta)).sum()
        else:
            s = th[D + 1] if noise is None else noise
            lp = stats.norm.logpdf(y, eta, s).sum()
            if noise is None:
                lp += sigma(s)
        out.append(lp + np.sum(coef(w)) + intercept(b))
    return np.array(out)


@pytest.mark.parametrize("family", ["logistic", "poisson", "gaussian"])
def test_glm_with_priors_matches_scipy(family):
    """A scale per coefficient, a Student-t intercept and a half-Cauchy sigma."""
    X, y = _data(family)
    priors = {
        "coef_prior": Normal(LOC, SCALE),
        "intercept_prior": StudentT(4.0, 1.0, 2.5),
    }
    if family == "gaussian":
        priors["sigma_prior"] = HalfCauchy(2.0)
    model = GLM(X, y, family, **priors)
    z = np.random.default_rng(1).normal(0.0, 0.4, size=(4, model.size))
    theta = model.constrain(z)
    lp, grad = model.log_joint(theta, None, 1.0)
    direct = _scipy_log_joint(
        X,
        y,
        theta,
        family,
        lambda w: stats.norm.logpdf(w, LOC, SCALE),
        lambda b: stats.t.logpdf(b, 4.0, 1.0, 2.5),
        lambda s: stats.halfcauchy.logpdf(s, scale=2.0),
    )
    assert_allclose(lp, direct, rtol=1e-10)
    h = 1e-6
    for j in range(model.size):
        e = np.zeros(model.size)
        e[j] = h
        fd = (
            model.log_joint(theta + e, None, 1.0)[0]
            - model.log_joint(theta - e, None, 1.0)[0]
        ) / (2 * h)
        assert_allclose(grad[:, j], fd, rtol=1e-5, atol=1e-5)


def _old_log_joint(model, theta, lik):
    """The priors of the GLM before they were configurable, added in the order of
    that code to the likelihood ``lik`` (= log_joint of the same model with flat
    priors): N(0, prior_scale) on coef, N(0, intercept_prior_scale) on the
    intercept, half-normal(noise_prior_scale) on sigma."""
    lp, grad = lik[0].copy(), lik[1].copy()
    D = model.n_features

    def normal(t, s):
        inv = 1.0 / (s * s)
        return (
            -0.5 * inv * np.sum(t * t, axis=-1)
            - t.shape[-1] * (math.log(s) + 0.5 * math.log(2.0 * math.pi)),
            -inv * t,
        )

    lp_w, g_w = normal(theta[:, :D], model.prior_scale)
    lp = lp + lp_w
    grad[:, :D] += g_w
    lp_b, g_b = normal(theta[:, D][:, None], model.intercept_prior_scale)
    lp = lp + lp_b
    grad[:, D] += g_b[:, 0]
    if model.infer_noise:
        sigma = theta[:, D + 1]
        s2 = model.noise_prior_scale**2
        lp = (
            lp
            - 0.5 * sigma * sigma / s2
            + math.log(2.0 / (math.sqrt(2.0 * math.pi) * model.noise_prior_scale))
        )
        grad[:, D + 1] += -sigma / s2
    return lp, grad


@pytest.mark.parametrize("family", ["logistic", "poisson", "gaussian"])
@pytest.mark.parametrize(
    "shorthand",
    [{}, {"prior_scale": 0.3, "intercept_prior_scale": 4.0, "noise_prior_scale": 2.0}],
)
def test_default_and_shorthand_priors_keep_their_bits(family, shorthand):
    if family != "gaussian":
        shorthand = {k: v for k, v in shorthand.items() if k != "noise_prior_scale"}
    X, y = _data(family)
    model = GLM(X, y, family, **shorthand)
    flat = {"coef_prior": Flat(), "intercept_prior": Flat()}
    if family == "gaussian":
        flat["sigma_prior"] = Flat()
    lik_model = GLM(X, y, family, **flat)
    z = np.random.default_rng(2).normal(0.0, 0.5, size=(6, model.size))
    theta = model.constrain(z)
    lp, grad = model.log_joint(theta, None, 1.0)
    old = _old_log_joint(model, theta, lik_model.log_joint(theta, None, 1.0))
    assert_array_equal(lp, old[0])
    assert_array_equal(grad, old[1])
    # the shorthand and the prior it stands for are the same model
    explicit = {
        "coef_prior": Normal(0.0, shorthand.get("prior_scale", 1.0)),
        "intercept_prior": Normal(0.0, shorthand.get("intercept_prior_scale", 10.0)),
    }
    if family == "gaussian":
        explicit["sigma_prior"] = HalfNormal(shorthand.get("noise_prior_scale", 1.0))
    lp2, grad2 = GLM(X, y, family, **explicit).log_joint(theta, None, 1.0)
    assert_array_equal(lp, lp2)
    assert_array_equal(grad, grad2)


def test_estimator_default_fit_equals_the_explicit_default_priors():
    X, y = _data("logistic")
    a = BayesianLogisticRegression(family="fullrank", random_state=0).fit(X, y)
    b = BayesianLogisticRegression(
        family="fullrank",
        random_state=0,
        coef_prior=Normal(0.0, 1.0),
        intercept_prior=Normal(0.0, 10.0),
    ).fit(X, y)
    assert_array_equal(a.posterior_mean_, b.posterior_mean_)
    assert_array_equal(a.posterior_cov_, b.posterior_cov_)


@pytest.mark.parametrize(
    ("family", "kwargs", "match"),
    [
        (
            "gaussian",
            {"sigma_prior": Normal(0.0, 1.0)},
            r"sigma_prior=Normal.* whole real line, but sigma > 0: use HalfNormal",
        ),
        ("gaussian", {"sigma_prior": Cauchy(0.0, 2.5)}, "but sigma > 0"),
        (
            "logistic",
            {"coef_prior": HalfNormal(1.0)},
            "coef_prior=HalfNormal.* x >= 0, but coef takes any real value",
        ),
        ("logistic", {"intercept_prior": Exponential(1.0)}, "intercept takes any"),
        (
            "logistic",
            {"coef_prior": Normal(0.0, [1.0, 2.0])},
            "gives 2 values per field, but coef has 3 coordinates",
        ),
        (
            "logistic",
            {"intercept_prior": Normal(0.0, [1.0, 2.0, 3.0])},
            "intercept is one number",
        ),
        (
            "gaussian",
            {"sigma_prior": HalfNormal([1.0, 2.0, 3.0])},
            "sigma is one number",
        ),
        (
            "logistic",
            {"coef_prior": Cauchy(0.0, 1.0), "prior_scale": 2.0},
            "Give coef_prior or prior_scale, not both",
        ),
        (
            "logistic",
            {"intercept_prior": Flat(), "intercept_prior_scale": 5.0},
            "not both",
        ),
        (
            "gaussian",
            {"sigma_prior": Flat(), "noise_prior_scale": 5.0},
            "not both",
        ),
        (
            "logistic",
            {"intercept_prior": Flat(), "fit_intercept": False},
            "fit_intercept=False",
        ),
        ("logistic", {"sigma_prior": HalfNormal(1.0)}, "has no sigma"),
        (
            "gaussian",
            {"sigma_prior": HalfNormal(1.0), "noise_scale": 1.0},
            "has no sigma",
        ),
        ("logistic", {"coef_prior": 2.5}, "coef_prior must be a prior"),
        ("logistic", {"coef_prior": stats.norm(0, 1)}, "must be a prior"),
    ],
)
def test_bad_glm_priors_are_clear_errors(family, kwargs, match):
    X, y = _data(family)
    with pytest.raises(ValueError, match=match):
        GLM(X, y, family, **kwargs)


def test_conjugate_gaussian_posterior_is_exact():
    """Known noise and normal priors (a location and a scale per coefficient): the
    posterior is Gaussian, N(m, V) with V = (Z'Z / s^2 + diag(1/tau^2))^-1 and
    m = V (Z'y / s^2 + mu / tau^2); a full-rank fit finds it."""
    rng = np.random.default_rng(5)
    N, D, noise = 40, K, 1.3
    X = rng.standard_normal((N, D))
    y = X @ [0.5, -1.0, 2.0] + 1.0 + noise * rng.standard_normal(N)
    mu = np.r_[LOC, 2.0]
    tau = np.r_[SCALE * 0.5, 0.4]
    model = GLM(
        X,
        y,
        "gaussian",
        noise_scale=noise,
        coef_prior=Normal(LOC, SCALE * 0.5),
        intercept_prior=Normal(2.0, 0.4),
    )
    Z = np.column_stack([X, np.ones(N)])
    V = np.linalg.inv(Z.T @ Z / noise**2 + np.diag(tau**-2))
    m = V @ (Z.T @ y / noise**2 + mu / tau**2)
    # the log density is the exact posterior's up to a constant
    theta = rng.standard_normal((5, D + 1))
    lp = model.log_joint(theta, None, 1.0)[0]
    exact = stats.multivariate_normal(m, V).logpdf(theta)
    assert_allclose(lp - exact, (lp - exact)[0], rtol=0, atol=1e-9)
    res = SGVI(model, family="fullrank").run(seed=0)
    fam = SGVI(model, family="fullrank").family
    mean, cov = fam.mean(res.state.params), fam.cov(res.state.params)
    sd = np.sqrt(np.diag(V))
    assert res.converged
    assert np.all(np.abs(mean - m) < 0.05 * sd), (mean - m) / sd
    assert_allclose(np.sqrt(np.diag(cov)) / sd, 1.0, atol=0.05)


# ------------------------------------------------------------------ flat priors
def _separable(N=60):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((N, 2))
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).astype(float)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("separable", "separable"),
        ("one class", "separable"),
        ("collinear", "linearly dependent"),
        ("zero counts", "zero count"),
        ("flat sigma", "sigma has a flat prior"),
    ],
)
def test_flat_priors_that_leave_the_posterior_improper_warn(case, match):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 2))
    priors = {"coef_prior": Flat(), "intercept_prior": Flat()}
    if case == "separable":
        X, y = _separable()
        family = "logistic"
    elif case == "one class":
        y, family = np.ones(30), "logistic"
        priors = {"intercept_prior": Flat()}  # the intercept alone runs off
    elif case == "collinear":
        X = np.column_stack([X[:, 0], 2.0 * X[:, 0]])
        y, family = X[:, 0] + rng.standard_normal(30), "gaussian"
    elif case == "zero counts":
        # an indicator whose rows all have zero counts: its coefficient runs to -inf
        X[:, 1] = X[:, 0] > 0.5
        y = np.where(X[:, 1] > 0, 0.0, rng.poisson(2.0, 30))
        family = "poisson"
        priors = {"coef_prior": Flat()}
    else:  # 3 rows, 2 flat coordinates: p(sigma | y) ~ sigma^-1 far out
        X, y = X[:3, :1], np.array([0.3, -0.2, 1.0])
        family = "gaussian"
        priors["sigma_prior"] = Flat()
    with pytest.warns(ImproperPosteriorWarning, match=match) as rec:
        GLM(X, y, family, **priors)
    assert rec[0].filename == __file__


@pytest.mark.parametrize("family", ["logistic", "poisson", "gaussian"])
def test_flat_priors_on_proper_posteriors_do_not_warn(family):
    X, y = _data(family, N=200)
    priors = {"coef_prior": Flat(), "intercept_prior": Flat()}
    if family == "gaussian":
        priors["sigma_prior"] = Flat()
    sigma = priors.get("sigma_prior")
    assert improper_reason(X, y, family, Flat(), Flat(), sigma) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GLM(X, y, family, **priors)


def test_flat_prior_fit_of_an_improper_posterior_does_not_crash():
    """The warning at the start; the fit ends (not converged, or with the PSIS
    warning) rather than crashing."""
    X, y = _separable()
    est = BayesianLogisticRegression(coef_prior=Flat(), max_iter=300, random_state=0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        est.fit(X, y)
    kinds = {w.category for w in rec}
    assert ImproperPosteriorWarning in kinds
    assert np.all(np.isfinite(est.posterior_mean_))


def test_flat_priors_fit_an_ordinary_regression_like_least_squares():
    """Flat coefficients and intercept, known noise: the posterior mean is the
    least-squares fit and the covariance s^2 (Z'Z)^-1."""
    X, y = _data("gaussian", N=80)
    noise = 0.8
    model = GLM(
        X, y, "gaussian", noise_scale=noise, coef_prior=Flat(), intercept_prior=Flat()
    )
    Z = np.column_stack([X, np.ones(len(y))])
    m = np.linalg.lstsq(Z, y, rcond=None)[0]
    V = noise**2 * np.linalg.inv(Z.T @ Z)
    engine = SGVI(model, family="fullrank")
    res = engine.run(seed=0)
    sd = np.sqrt(np.diag(V))
    assert res.converged
    assert np.all(np.abs(engine.family.mean(res.state.params) - m) < 0.05 * sd)
    assert_allclose(engine.family.std(res.state.params) / sd, 1.0, atol=0.05)


# ------------------------------------------------------------------ estimators
def _quiet_fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", PSISWarning)
        return est.fit(X, y)


def test_estimator_params_clone_and_set_params():
    p = StudentT(3.0, 0.0, [1.0, 2.0, 2.5])
    est = BayesianPoissonRegression(coef_prior=p, intercept_prior=Cauchy(0.0, 5.0))
    assert est.get_params()["coef_prior"] is p  # stored unchanged
    twin = clone(est)
    assert twin.get_params()["coef_prior"] == p
    assert twin.set_params(coef_prior=Flat()).coef_prior == Flat()
    assert "coef_prior=StudentT" in repr(est)


def test_estimator_priors_change_the_fit():
    """A tight prior centred away from 0 pulls the coefficients there."""
    X, y = _data("logistic", N=60)
    free = _quiet_fit(BayesianLogisticRegression(random_state=0), X, y)
    pulled = _quiet_fit(
        BayesianLogisticRegression(
            random_state=0, coef_prior=Normal([3.0, 3.0, 3.0], 0.05)
        ),
        X,
        y,
    )
    assert np.all(np.abs(pulled.coef_ - 3.0) < 0.2)
    assert np.all(np.abs(free.coef_ - 3.0) > 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"coef_prior": Normal(0.0, [1.0, 2.0])}, "but coef has 3 coordinates"),
        ({"coef_prior": HalfCauchy(1.0)}, "coef takes any real value"),
        ({"coef_prior": Cauchy(), "prior_scale": 2.0}, "not both"),
        ({"intercept_prior": Normal(), "fit_intercept": False}, "fit_intercept"),
        ({"prior_scale": 1e-300}, "prior_scale is 1e-300, below .* 1 / prior_scale"),
        ({"intercept_prior_scale": 1e-300}, "intercept_prior_scale is 1e-300, below"),
    ],
)
def test_estimator_prior_errors_come_from_fit(kwargs, match):
    X, y = _data("logistic")
    est = BayesianLogisticRegression(**kwargs)  # __init__ only stores them
    with pytest.raises(ValueError, match=match):
        est.fit(X, y)
    with pytest.raises(ValueError, match="coef_prior"):
        BayesianLogisticRegression(coef_prior="normal").fit(X, y)


@pytest.mark.parametrize("cls", [BayesianLogisticRegression, BayesianPoissonRegression])
def test_priors_survive_save_and_load(tmp_path, cls):
    family = "logistic" if cls is BayesianLogisticRegression else "poisson"
    X, y = _data(family)
    est = _quiet_fit(
        cls(
            coef_prior=StudentT([3.0, 4.0, 5.0], 0.0, np.array([1.0, 2.0, 2.5])),
            intercept_prior=Cauchy(0.5, 5.0),
            max_iter=200,
            random_state=0,
        ),
        X,
        y,
    )
    path = tmp_path / "m.npz"
    est.save(path)
    back = load(path)
    assert type(back.coef_prior) is StudentT and back.coef_prior == est.coef_prior
    assert back.intercept_prior == Cauchy(0.5, 5.0)
    assert_array_equal(back.predict(X), est.predict(X))
    # the loaded priors give the same model: a warm start continues identically
    a = _quiet_fit(est.set_params(warm_start=True, max_iter=20), X, y)
    b = _quiet_fit(back.set_params(warm_start=True, max_iter=20), X, y)
    assert_array_equal(a.posterior_mean_, b.posterior_mean_)
    for prior in (Flat(), HalfNormal(2.0), Exponential([1.0, 2.0])):  # any prior
        save(cls(coef_prior=prior), path)
        assert load(path).coef_prior == prior


def _tampered(tmp_path, edit):
    path = tmp_path / "m.npz"
    BayesianLogisticRegression(coef_prior=Normal(0.0, 2.0)).save(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("__fastvi__").tobytes())
    edit(meta["params"]["coef_prior"])
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as fh:
        np.savez(fh, __fastvi__=blob, **arrays)
    return bad


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s["fields"].update(scale=-2.0), "bad Normal.*scale must be posit"),
        (lambda s: s["fields"].update(scale="2"), "bad Normal.*real number"),
        (lambda s: s["fields"].update(df=3.0), "bad Normal"),
        (lambda s: s.update({"class": "Gamma"}), "unknown named tuple 'Gamma'"),
    ],
)
def test_a_bad_prior_in_a_file_is_refused(tmp_path, edit, match):
    bad = _tampered(tmp_path, edit)
    with pytest.raises(ModelFileError, match=match) as info:
        load(bad)
    assert str(bad) in str(info.value)


def test_the_exact_check_decides_where_the_fast_one_cannot():
    """Overlapping logistic data with a far-out row: the maximum-likelihood point
    is finite but saturates that row (|eta| > 20), so the Newton shortcut does not
    vouch for it and the linear program does: proper, no warning. Moving that
    row's label makes the data separable: improper."""
    from fastvi.sgvi.priors import _mle_exists

    x = np.r_[np.linspace(-2.0, 2.0, 20), 400.0][:, None]
    y = (x[:, 0] > 0).astype(float)
    y[[8, 12]] = y[[12, 8]]  # two swapped labels: overlap (slope ~3 at the mode)
    assert not _mle_exists(np.column_stack([x, np.ones(21)]), y, "logistic")
    assert improper_reason(x, y, "logistic", Flat(), Flat(), None) is None
    sep = (x[:, 0] > 0).astype(float)
    assert "separable" in improper_reason(x, sep, "logistic", Flat(), Flat(), None)
