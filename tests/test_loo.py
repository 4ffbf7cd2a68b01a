"""PSIS-LOO of the regressions, checked against brute-force refits."""

import math
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.special import expit, logsumexp
from threadpoolctl import threadpool_limits

from fastvi import (
    BayesianLogisticRegression,
    BayesianPoissonRegression,
    VBLinearRegression,
    VBLogisticRegression,
)
from fastvi.loo import loo_from_loglik, psis_smooth
from fastvi.sgvi import PSISWarning


# ------------------------------------------------------------------ smoothing
def test_psis_smooth_recovers_the_pareto_shape_of_the_ratios():
    rng = np.random.default_rng(0)
    for k in (0.3, 0.8):
        # ratios with a generalized Pareto tail of shape k: r = u^-k
        log_r = -k * np.log(rng.random(20_000))
        lw, khat = psis_smooth(log_r)
        assert abs(khat - k) < 0.1, (k, khat)
        assert abs(logsumexp(lw)) < 1e-12
        # the smoothed weights never rise above the largest raw ratio
        assert lw.max() <= (log_r - log_r.max()).max() - logsumexp(lw - lw.max()) + 1e-9


def test_psis_smooth_keeps_constant_ratios():
    lw, khat = psis_smooth(np.full(100, 3.0))
    assert math.isnan(khat)
    assert_allclose(lw, -math.log(100))


def test_loo_from_loglik_is_exact_for_a_flat_likelihood():
    """When p(y_i | theta) does not vary over the draws every estimate is log p."""
    ll = np.tile(np.array([-1.0, -2.0, -0.5]), (200, 1))
    res = loo_from_loglik(ll)
    assert_allclose(res.pointwise, [-1.0, -2.0, -0.5])
    assert_allclose(res.elpd_loo, -3.5)
    assert abs(res.p_loo) < 1e-12
    assert res.n_draws == 200 and res.khat.shape == (3,)


def test_loo_warns_on_influential_observations_and_refuses_bad_input():
    rng = np.random.default_rng(1)
    ll = rng.normal(-1.0, 0.1, (1000, 4))
    ll[:, 0] = 1.2 * np.log(rng.random(1000))  # ratios with a k = 1.2 tail
    with pytest.warns(PSISWarning, match="1 of 4 observations"):
        res = loo_from_loglik(ll)
    assert res.khat[0] > 0.7 and np.all(res.khat[1:] < 0.7)
    with pytest.raises(ValueError, match="n_draws >= 20"):
        loo_from_loglik(ll[:10])
    ll[3, 2] = np.nan
    with pytest.raises(ValueError, match="not finite for 1 observation"):
        loo_from_loglik(ll)


# ---------------------------------------------------------- brute-force refits
def _linear(N, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 2))
    y = X @ np.array([1.0, -0.5]) + 0.3 + rng.normal(0.0, 0.8, N)
    return X, y


def _binary(N, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 2))
    t = (rng.random(N) < expit(X @ np.array([1.5, -1.0]) + 0.3)).astype(int)
    return X, t


def _leave_one_out(N):
    keep = np.ones(N, dtype=bool)
    for i in range(N):
        keep[:] = True
        keep[i] = False
        yield i, keep


def _close_to_refits(res, exact):
    """PSIS-LOO from q's draws vs N refits (see fastvi.loo: q's error is in both)."""
    diff = res.pointwise - exact
    assert np.abs(diff).max() < 0.4, np.abs(diff).max()
    assert abs(res.elpd_loo - exact.sum()) < 0.05 * abs(exact.sum()), (
        res.elpd_loo,
        exact.sum(),
    )
    assert np.corrcoef(res.pointwise, exact)[0, 1] > 0.98


def _bernoulli_predictive(mean, cov, x, t):
    """log E[σ(±a)], a = x̃ᵀw ~ N(x̃ᵀm, x̃ᵀSx̃), by Gauss-Hermite quadrature."""
    xt = np.append(x, 1.0)
    mu, sd = xt @ mean, math.sqrt(xt @ cov @ xt)
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    p1 = expit(mu + sd * nodes) @ weights / weights.sum()
    return math.log(p1 if t == 1 else 1.0 - p1)


def test_linear_loo_matches_brute_force_refits():
    X, y = _linear(30)
    N = X.shape[0]
    with threadpool_limits(1):
        est = VBLinearRegression().fit(X, y)
        res = est.loo(X, y, n_draws=4000, random_state=0)
        exact = np.empty(N)
        for i, keep in _leave_one_out(N):
            refit = VBLinearRegression().fit(X[keep], y[keep])
            exact[i] = refit.predictive_log_density(X[i : i + 1], y[i : i + 1])[0]
    assert np.all(res.khat < 0.7)
    _close_to_refits(res, exact)
    # LOO is below the in-sample fit by about the number of parameters
    lppd = res.elpd_loo + res.p_loo
    assert 2.0 < res.p_loo < 6.0 and lppd > res.elpd_loo
    assert_allclose(res.se, math.sqrt(N * np.var(res.pointwise)))


def test_cavi_logistic_loo_matches_brute_force_refits():
    X, t = _binary(40)
    N = X.shape[0]
    with threadpool_limits(1):
        est = VBLogisticRegression().fit(X, t)
        res = est.loo(X, t, n_draws=4000, random_state=0)
        exact = np.empty(N)
        for i, keep in _leave_one_out(N):
            r = VBLogisticRegression().fit(X[keep], t[keep])
            mean = np.append(r.coef_[0], r.intercept_[0])
            exact[i] = _bernoulli_predictive(mean, r.sigma_, X[i], t[i])
    assert np.all(res.khat < 0.7)
    _close_to_refits(res, exact)


@pytest.mark.slow
def test_sgvi_logistic_loo_matches_brute_force_refits():
    X, t = _binary(30, seed=3)
    N = X.shape[0]

    def fit(X, t):
        with warnings.catch_warnings():  # k-hat of q itself: not what is tested
            warnings.simplefilter("ignore", PSISWarning)
            est = BayesianLogisticRegression(family="fullrank", random_state=0)
            return est.fit(X, t)

    est = fit(X, t)
    res = est.loo(X, t, n_draws=4000, random_state=0)
    exact = np.empty(N)
    for i, keep in _leave_one_out(N):
        r = fit(X[keep], t[keep])
        exact[i] = _bernoulli_predictive(
            r.posterior_mean_, r.posterior_cov_, X[i], t[i]
        )
    assert np.all(res.khat < 0.7)
    _close_to_refits(res, exact)


def test_poisson_loo_runs_and_names_its_shapes():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 2))
    y = rng.poisson(np.exp(0.5 * X[:, 0] + 0.2))
    with warnings.catch_warnings():  # k-hat of q itself: not what is tested
        warnings.simplefilter("ignore", PSISWarning)
        est = BayesianPoissonRegression(random_state=0).fit(X, y)
    res = est.loo(X, y, n_draws=1000, random_state=0)
    assert res.pointwise.shape == (50,) and res.khat.shape == (50,)
    assert np.isfinite(res.elpd_loo) and 0.5 < res.p_loo < 6.0
    again = est.loo(X, y, n_draws=1000, random_state=0)
    assert again.elpd_loo == res.elpd_loo


def test_loo_argument_checks():
    X, t = _binary(40)
    est = VBLogisticRegression().fit(X, t)
    with pytest.raises(ValueError, match="n_draws"):
        est.loo(X, t, n_draws=10)
    with pytest.raises(ValueError, match="labels not seen"):
        est.loo(X, np.where(t == 1, 5, 0))
    rng = np.random.default_rng(0)
    y3 = rng.integers(0, 3, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ovr = VBLogisticRegression().fit(X, y3)
    with pytest.raises(ValueError, match="one-vs-rest"):
        ovr.loo(X, y3)
    Xl, yl = _linear(20)
    lin = VBLinearRegression().fit(Xl, yl)
    with pytest.raises(ValueError, match="features"):
        lin.loo(Xl[:, :1], yl)
