"""Predictive distributions of the regressions, posterior draws and the ArviZ export."""

import math
import sys
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import integrate
from scipy.special import expit
from threadpoolctl import threadpool_limits

from fastvi import (
    BayesianGaussianMixture,
    BayesianLogisticRegression,
    BayesianPoissonRegression,
    LatentDirichletAllocation,
    UnivariateGaussian,
    VBLinearRegression,
    VBLogisticRegression,
)


def _linear(N=40, D=3, seed=0, noise=0.7):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    y = X @ rng.normal(0.0, 1.0, D) + 0.5 + rng.normal(0.0, noise, N)
    return X, y


def _binary(N=80, D=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    t = (rng.random(N) < expit(X @ np.array([1.5, -1.0, 0.0][:D]) + 0.3)).astype(int)
    return X, t


# ------------------------------------------------------------ linear predictive
@pytest.mark.slow
def test_linear_intervals_cover_at_the_nominal_level():
    """1000 data sets simulated from the model (N = 60, D = 3, an intercept, noise
    sd drawn per data set), 20 new points each: the central 50/90/95% intervals
    cover within 2% of their level."""
    rng = np.random.default_rng(0)
    levels = (0.5, 0.9, 0.95)
    hits = np.zeros(3)
    n = 0
    with threadpool_limits(1):
        for _ in range(1000):
            N, D = 60, 3
            w = rng.normal(0.0, 1.0, D)
            b = rng.normal()
            sd = math.exp(rng.normal(-0.5, 0.5))
            X = rng.standard_normal((N, D))
            y = X @ w + b + rng.normal(0.0, sd, N)
            Xt = rng.normal(0.0, 1.5, (20, D))
            yt = Xt @ w + b + rng.normal(0.0, sd, 20)
            est = VBLinearRegression().fit(X, y)
            for j, level in enumerate(levels):
                lo, hi = est.predict_interval(Xt, level)
                hits[j] += np.sum((yt >= lo) & (yt <= hi))
            n += 20
    coverage = hits / n
    assert np.all(np.abs(coverage - np.array(levels)) < 0.02), coverage


@pytest.mark.parametrize("ard", [False, True])
def test_linear_interval_holds_its_level_under_the_predictive_density(ard):
    X, y = _linear(N=12)  # few rows: a heavy-tailed predictive
    est = VBLinearRegression(ard=ard).fit(X, y)
    x = X[:3] * 2.0
    mean, sd = est.predict(x, return_std=True)
    for level in (0.5, 0.9, 0.99):
        lo, hi = est.predict_interval(x, level)
        assert_allclose(0.5 * (lo + hi), mean)
        for i in range(3):
            mass = integrate.quad(
                lambda v, i=i: math.exp(
                    est.predictive_log_density(x[i : i + 1], [v])[0]
                ),
                lo[i],
                hi[i],
            )[0]
            assert abs(mass - level) < 1e-7
    for i in range(3):  # a density whose sd is predict's
        row = x[i : i + 1]

        def density(v, row=row):
            return math.exp(est.predictive_log_density(row, [v])[0])

        total = integrate.quad(density, -np.inf, np.inf)[0]
        second = integrate.quad(
            lambda v, c=mean[i], f=density: f(v + c) * v * v, -np.inf, np.inf
        )[0]
        assert abs(total - 1.0) < 1e-7
        assert_allclose(math.sqrt(second), sd[i], rtol=1e-6)


def test_linear_predictive_is_the_scale_mixture_of_q():
    """Monte Carlo of y = m̃ + sqrt(x̃ᵀSx̃ + 1/α) z over q(α): its quantiles are the
    interval's ends, and it is wider than the Gaussian of the same sd in the tails."""
    X, y = _linear(N=8, D=2)
    est = VBLinearRegression().fit(X, y)
    x = X[:1] * 3.0
    rng = np.random.default_rng(1)
    alpha = rng.gamma(est.alpha_shape_, 1.0 / est.alpha_rate_, 400_000)
    mean, sd = est.predict(x, return_std=True)
    Xc = x - est.X_offset_
    var_w = float((Xc @ est.sigma_ @ Xc.T)[0, 0])
    draws = mean[0] + np.sqrt(var_w + 1.0 / alpha) * rng.standard_normal(alpha.shape)
    lo, hi = est.predict_interval(x, 0.95)
    ends = np.quantile(draws, [0.025, 0.975])
    assert_allclose(ends, [lo[0], hi[0]], atol=0.01 * sd[0])
    assert hi[0] - mean[0] > 1.959964 * sd[0]  # heavier than the Gaussian


def test_linear_predictive_checks_its_arguments():
    X, y = _linear()
    est = VBLinearRegression().fit(X, y)
    for level in (0, 1, 1.5, "a"):
        with pytest.raises(ValueError, match="level"):
            est.predict_interval(X, level)
    with pytest.raises(ValueError, match="features"):
        est.predict_interval(X[:, :2])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        VBLinearRegression().predict_interval(X)


# ---------------------------------------------------------- logistic predictive
def test_logistic_monte_carlo_predictive_matches_quadrature_and_probit():
    X, t = _binary()
    est = VBLogisticRegression().fit(X, t)
    x = X[:10] * 2.0
    mc = est.predictive_proba(x, method="mc", n_draws=200_000, random_state=0)
    # E[σ(a)], a ~ N(μ, s²), by Gauss-Hermite quadrature
    xt = np.column_stack([x, np.ones(10)])
    mean = np.append(est.coef_[0], est.intercept_[0])
    mu, s2 = xt @ mean, np.einsum("ij,jk,ik->i", xt, est.sigma_, xt)
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    exact = expit(mu[:, None] + np.sqrt(s2)[:, None] * nodes) @ weights
    exact /= weights.sum()
    assert_allclose(mc[:, 1], exact, atol=3e-3)
    assert_allclose(mc.sum(axis=1), 1.0)
    probit = est.predictive_proba(x)
    assert_allclose(probit, est.predict_proba(x))
    assert_allclose(probit[:, 1], exact, atol=0.02)  # the probit approximation
    with pytest.raises(ValueError, match="method"):
        est.predictive_proba(x, method="laplace")


def test_one_vs_rest_monte_carlo_predictive():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((150, 2))
    y = np.argmax(X @ rng.normal(0, 2, (2, 3)) + rng.gumbel(size=(150, 3)), axis=1)
    est = VBLogisticRegression().fit(X, y)
    mc = est.predictive_proba(X[:5], method="mc", n_draws=100_000, random_state=0)
    assert mc.shape == (5, 3)
    assert_allclose(mc.sum(axis=1), 1.0)
    assert_allclose(mc, est.predict_proba(X[:5]), atol=0.03)


def test_sgvi_logistic_predictive_methods_agree():
    X, t = _binary()
    est = BayesianLogisticRegression(random_state=0).fit(X, t)
    mc = est.predictive_proba(X[:10], n_draws=100_000, random_state=0)
    assert_allclose(mc, est.predict_proba(X[:10]), atol=0.02)  # 200 fixed draws
    assert_allclose(est.predictive_proba(X[:10], "probit"), mc, atol=0.02)
    with pytest.raises(ValueError, match="method"):
        est.predictive_proba(X, method="x")


# ------------------------------------------------------------ posterior draws
S = 40_000


def _assert_cov(draws, expected):
    """The draws' covariance within 5 Monte Carlo standard errors (Gaussian draws:
    var of an entry (S_ii S_jj + S_ij^2) / n)."""
    d = np.diag(expected)
    se = np.sqrt((np.outer(d, d) + expected**2) / draws.shape[0])
    assert np.all(np.abs(np.cov(draws.T) - expected) <= 5 * se)


def _assert_mean(draws, expected, sd_factor=5.0):
    draws = np.asarray(draws)
    se = draws.std(axis=0) / math.sqrt(draws.shape[0])
    assert np.all(np.abs(draws.mean(axis=0) - expected) <= sd_factor * se + 1e-12)


@pytest.mark.parametrize("ard", [False, True])
def test_linear_draws_match_the_fitted_attributes(ard):
    X, y = _linear()
    est = VBLinearRegression(ard=ard).fit(X, y)
    d = est.sample_posterior(S, random_state=0)
    assert d["coef_"].shape == (S, 3) and d["alpha_"].shape == (S,)
    assert d["lambda_"].shape == ((S, 3) if ard else (S,))
    _assert_mean(d["coef_"], est.coef_)
    _assert_cov(d["coef_"], est.sigma_)
    _assert_mean(d["alpha_"], est.alpha_)
    _assert_mean(d["lambda_"], est.lambda_)
    _assert_mean(d["intercept_"], est.intercept_)
    assert_allclose(d["intercept_"], est.y_offset_ - d["coef_"] @ est.X_offset_)


def test_logistic_draws_match_the_fitted_attributes():
    X, t = _binary()
    est = VBLogisticRegression().fit(X, t)
    d = est.sample_posterior(S, random_state=0)
    assert d["coef_"].shape == (S, 1, 3) and d["intercept_"].shape == (S, 1)
    _assert_mean(d["coef_"], est.coef_)
    _assert_mean(d["intercept_"], est.intercept_)
    _assert_mean(d["lambda_"], est.lambda_)
    joint = np.column_stack([d["coef_"][:, 0], d["intercept_"]])
    _assert_cov(joint, est.sigma_)
    est = VBLogisticRegression(fit_intercept=False).fit(X, t)
    d = est.sample_posterior(10, random_state=0)
    assert np.all(d["intercept_"] == 0.0)


def test_univariate_draws_match_the_fitted_attributes():
    rng = np.random.default_rng(0)
    est = UnivariateGaussian().fit(rng.normal(1.0, 2.0, 30))
    d = est.sample_posterior(S, random_state=0)
    _assert_mean(d["mu_mean_"], est.mu_mean_)
    _assert_mean(d["tau_mean_"], est.tau_mean_)
    assert_allclose(d["mu_mean_"].var(), est.mu_var_, rtol=0.03)


@pytest.mark.parametrize("family", ["meanfield", "fullrank"])
def test_sgvi_draws_match_the_fitted_attributes(family):
    X, t = _binary()
    est = BayesianLogisticRegression(family=family, random_state=0).fit(X, t)
    d = est.sample_posterior(S, random_state=0)
    _assert_mean(d["coef_"], est.coef_)
    _assert_mean(d["intercept_"], est.intercept_)
    joint = np.column_stack([d["coef_"], d["intercept_"]])
    _assert_cov(joint, est.posterior_cov_)
    rng = np.random.default_rng(1)
    Xp = rng.standard_normal((60, 2))
    yp = rng.poisson(np.exp(0.3 * Xp[:, 0]))
    est = BayesianPoissonRegression(fit_intercept=False, random_state=0).fit(Xp, yp)
    d = est.sample_posterior(100, random_state=0)
    assert set(d) == {"coef_"}


def test_lda_draws_are_topic_word_distributions():
    rng = np.random.default_rng(0)
    est = LatentDirichletAllocation(n_components=3, random_state=0).fit(
        rng.poisson(1.0, (30, 12))
    )
    d = est.sample_posterior(20_000, random_state=0)["components_"]
    assert d.shape == (20_000, 3, 12)
    assert_allclose(d.sum(axis=2), 1.0)
    lam = est.components_
    _assert_mean(d, lam / lam.sum(axis=1, keepdims=True))


# ------------------------------------------------------------------- ArviZ
def _fitted_estimators():
    X, y = _linear()
    _, t = _binary(N=40)
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [
            BayesianGaussianMixture(n_components=2, random_state=0).fit(X),
            LatentDirichletAllocation(n_components=2, random_state=0).fit(
                rng.poisson(1.0, (20, 8))
            ),
            UnivariateGaussian().fit(y),
            VBLinearRegression().fit(X, y),
            VBLogisticRegression().fit(X, t),
            BayesianLogisticRegression(random_state=0, max_iter=200).fit(X, t),
            BayesianPoissonRegression(random_state=0, max_iter=200).fit(
                X, rng.poisson(1.0, 40)
            ),
        ]


def test_every_estimator_exports_its_draws_to_arviz():
    pytest.importorskip("arviz")
    for est in _fitted_estimators():
        data = est.to_arviz(50, random_state=0)
        post = data["posterior"] if not hasattr(data, "posterior") else data.posterior
        draws = est.sample_posterior(50, random_state=0)
        assert set(post.data_vars) == {name.rstrip("_") for name in draws}
        for name, value in draws.items():
            assert_allclose(np.asarray(post[name.rstrip("_")])[0], value)
        assert data.attrs["inference_library"] == "fastvi"


def test_to_arviz_without_arviz_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)  # import arviz -> ImportError
    for est in _fitted_estimators():
        with pytest.raises(ImportError, match=r"fastvi\[arviz\]"):
            est.to_arviz(10)


def test_poisson_score_of_a_mean_that_underflows():
    """A row far out (x . coef near -2300) has a mean count that underflows to 0,
    which scikit-learn's d2_tweedie_score refuses ("strictly positive y_pred"):
    score computes the deviance from the log of the mean, which equals scikit-
    learn's wherever the means are positive."""
    from sklearn.metrics import d2_tweedie_score

    from fastvi.sgvi.estimators import _d2_poisson_from_log_mean

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    y = rng.poisson(np.exp(X @ [0.5, -0.3])).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = BayesianPoissonRegression(random_state=0).fit(X, y)
    mean = m.predict(X)
    w = rng.uniform(size=200)
    for sw in (None, w):
        assert_allclose(
            _d2_poisson_from_log_mean(y, np.log(mean), sw),
            d2_tweedie_score(y, mean, sample_weight=sw, power=1),
            rtol=1e-12,
        )
    far = X.copy()
    far[0] = [-5000.0, 0.0]
    assert m.predict(far)[0] == 0.0
    log_mean = m._predictive(far, "log_mean")
    assert -3000 < log_mean[0] < -1000
    for count in (0.0, 3.0):
        y[0] = count
        got = m.score(far, y)
        assert np.isfinite(got)
        # the same D^2 from the deviances written out, the far row by its log mean
        dev = 2 * (
            np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)), 0.0)
            - y * log_mean
            - y
            + np.exp(log_mean)
        )
        y_bar = y.mean()
        null = 2 * (
            np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / y_bar), 0.0)
            - y
            + y_bar
        )
        assert_allclose(got, 1 - dev.sum() / null.sum(), rtol=1e-12)
    assert m.score(far, y) < -10  # a count of 3 where the model says ~e^-2300
