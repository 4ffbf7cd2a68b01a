"""Randomized: no SGVI fit freezes at its start on scaled or unscaled data (issue 14).

Logistic and Poisson GLMs on random problems (seeded: rows, features, true weights
and one scale factor per feature drawn from 1e-3..1e3), both families. Each fit must
end at the posterior (judged against the exact mode and Laplace sds computed by
scipy/Newton on the same model), or report that it did not converge with a
warning that says so. Extreme feature values are a clear error.
"""

import warnings

import numpy as np
import pytest
from scipy.special import expit
from sklearn.exceptions import ConvergenceWarning

from fastvi import BayesianLogisticRegression, BayesianPoissonRegression
from fastvi.sgvi import SGVI, Param
from fastvi.sgvi.diagnostics import PSISWarning, StationarityWarning
from fastvi.sgvi.models import Model

from .reference_sgvi import best_gaussian_logistic
from .test_sgvi_posteriordb import _map_and_sds

CLASSES = {"logistic": BayesianLogisticRegression, "poisson": BayesianPoissonRegression}


def _problem(seed, kind):
    rng = np.random.default_rng([14, seed])
    N = int(rng.integers(150, 600))
    D = int(rng.integers(1, 6))
    X0 = rng.standard_normal((N, D))
    w = rng.uniform(-0.6, 0.6, size=D)
    scale = 10.0 ** rng.uniform(-3, 3, size=D)
    if kind == "logistic":
        y = (rng.random(N) < expit(X0 @ w + rng.uniform(-1, 1))).astype(float)
    else:
        y = rng.poisson(np.exp(X0 @ w + rng.uniform(-0.5, 1.0))).astype(float)
    return X0 * scale, y, scale


@pytest.mark.parametrize("family", ["fullrank", "meanfield"])
@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize("seed", range(5))
def test_random_scaled_glm_fit_is_right_or_says_not(seed, kind, family):
    X, y, scale = _problem(seed, kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = CLASSES[kind](family=family, random_state=seed).fit(X, y)
    mode, sd = _map_and_sds(X, y, kind)
    got = np.r_[est.coef_, est.intercept_]
    got_sd = np.r_[est.coef_std_, est.intercept_std_]
    if not est.converged_:
        # loud, for the right reason
        assert any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return
    # means within 0.3 Laplace sds of the mode (the fit this guards against
    # returned coef_ = 0, converged); sds within 30% of Laplace's (the features
    # are independent, so the posterior is close to its Laplace approximation
    # and a mean-field q matches it too)
    assert np.all(np.abs(got - mode) < 0.3 * sd), (scale, got, mode, sd)
    assert np.all(np.abs(got_sd / sd - 1) < 0.3), (scale, got_sd / sd)


@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize("factor", [1e101, 1e200, 1e300])
def test_extreme_feature_values_are_a_clear_error(kind, factor):
    X = np.random.default_rng(0).standard_normal((50, 2))
    X[:, 1] *= factor
    y = np.arange(50) % 2
    with pytest.raises(ValueError, match="Rescale the features"):
        CLASSES[kind]().fit(X, y)


@pytest.mark.parametrize("family", ["fullrank", "meanfield"])
def test_raw_coordinate_fit_on_scaled_data_is_loud(family):
    """With init_scale given, q starts at 0 and steps in the raw coordinates, which
    are not scale-free: on this problem (feature scales 4.9, 8e-3, 167, 7e-3) the
    fit ends hundreds of posterior sds off. It must say so, with a remedy that
    applies (was: converged, no warning, k-hat NaN)."""
    X, y, _ = _problem(2, "poisson")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = BayesianPoissonRegression(
            family=family, random_state=2, init_scale=0.1
        ).fit(X, y)
    mode, sd = _map_and_sds(X, y, "poisson")
    got = np.r_[est.coef_, est.intercept_]
    assert np.max(np.abs(got - mode) / sd) > 1.0  # the premise: a bad fit
    messages = [str(w.message) for w in caught]
    if est.converged_:
        assert any("init_scale=None" in m for m in messages), messages
        assert not any("family='fullrank'" in m for m in messages)
    else:
        assert any(issubclass(w.category, ConvergenceWarning) for w in caught)


def test_a_nan_khat_flags_q_unless_the_weights_are_level():
    from fastvi.sgvi.diagnostics import untrustworthy

    rng = np.random.default_rng(0)
    assert untrustworthy(np.nan, np.r_[rng.normal(size=99), -np.inf])
    assert untrustworthy(np.nan, np.r_[np.zeros(99), 1e3])  # one draw holds it all
    assert not untrustworthy(np.nan, np.zeros(100))  # q equal to the posterior
    assert not untrustworthy(0.3, rng.normal(size=100))


def test_a_few_large_weights_flag_q_though_the_others_are_level():
    # q on the lesser mode of a mixture: the draws in q's tail that reach the other
    # mode carry large weights while the sd of all the log weights stays small
    from fastvi.sgvi.diagnostics import untrustworthy

    rng = np.random.default_rng(1)
    lw = np.r_[rng.normal(scale=0.02, size=996), rng.uniform(2, 4, size=4)]
    assert np.std(lw) < 0.3  # below the sd floor this replaces
    assert untrustworthy(1.5, lw)
    assert not untrustworthy(1.5, rng.normal(scale=0.08, size=1000))  # near-exact q


class _Gaussian(Model):
    """An exact Gaussian posterior N(mu, diag(sd^2)) in P coordinates."""

    def __init__(self, mu, sd):
        self.mu, self.sd = np.asarray(mu, float), np.asarray(sd, float)
        self.params = [Param("x", (self.mu.size,))]
        super().__init__()

    def log_joint(self, theta, rows, scale):
        r = (theta - self.mu) / self.sd
        return -0.5 * np.sum(r * r, axis=1), -r / self.sd


class _TwoModes(Model):
    """w N(0, 1) + (1 - w) N(6, 1): a q started at 0 can settle on the lesser mode."""

    def __init__(self, w):
        self.w = w
        self.params = [Param("x", ())]
        super().__init__()

    def log_joint(self, theta, rows, scale):
        x = theta[:, 0]
        a = np.log(self.w) - 0.5 * x * x
        b = np.log1p(-self.w) - 0.5 * (x - 6.0) ** 2
        lp = np.logaddexp(a, b)
        pa = np.exp(a - lp)
        return lp, (pa * -x + (1.0 - pa) * (6.0 - x))[:, None]


@pytest.mark.parametrize("family", ["meanfield", "fullrank"])
@pytest.mark.parametrize(
    "mu, sd",
    [
        ([0.0, 0.0], [1e-4, 1e3]),
        ([0.02, -1.5e5], [0.01, 1e5]),
        ([1e-6, 3e4, -2.0], [1e-7, 1e4, 1.0]),
    ],
)
def test_sds_of_any_spread_are_fitted_from_the_laplace_start(mu, sd, family):
    # the Laplace start was refused for curvatures whose eigenvalues spread over more
    # than 1e12 (sds 1e-4 and 1e3), and Adam's steps from q = N(0, 0.1^2) then
    # reported convergence with sd[0] 18x too wide (k-hat cannot see a q too wide)
    engine = SGVI(_Gaussian(mu, sd), family=family)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = engine.run(seed=0)
    assert result.converged and result.method == "fixed"
    phi, sd = result.state.params, np.asarray(sd)
    # q is exact here: its mean within 1e-3 sds, its sds within 1%
    assert np.all(np.abs(engine.family.mean(phi) - mu) < 1e-3 * sd)
    got_sd = np.sqrt(np.diag(engine.family.cov(phi)))
    assert np.all(np.abs(got_sd / sd - 1) < 0.01), got_sd


@pytest.mark.parametrize("seed", range(3))
def test_a_q_that_misses_the_main_mode_is_flagged(seed):
    # 0.02 N(0, 1) + 0.98 N(6, 1) from 0: at seed 0 q settled on the lesser mode with
    # k-hat 2.4 and no warning (the log weights' sd, 0.18, was below the old floor)
    engine = SGVI(_TwoModes(0.02))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = engine.run(seed=seed)
    mean = float(engine.family.mean(result.state.params)[0])
    flagged = not result.converged or any(
        issubclass(w.category, PSISWarning) for w in caught
    )
    assert abs(mean - 6.0) < 0.3 or flagged, (mean, result.psis_khat)


def test_stationarity_gap_measures_the_step_to_the_optimum():
    from fastvi.sgvi.diagnostics import stationarity_gap

    engine = SGVI(_Gaussian([1.0, -2.0], [0.5, 3.0]), family="fullrank")
    state = engine.init(0)
    at = state._replace(
        params=engine.family.pack(np.array([1.0, -2.0]), np.diag([0.5, 3.0]))
    )
    gap, _ = stationarity_gap(engine, at, 2000, 0)
    assert gap < 0.1  # the exact q: the gradient is -eps, whose pairs cancel
    off = at._replace(
        params=engine.family.pack(np.array([1.0, -5.0]), np.diag([0.5, 3.0]))
    )
    gap, i = stationarity_gap(engine, off, 2000, 0)
    assert i == 1 and 0.95 < gap < 1.1  # one sd off in x[1]


@pytest.fixture(scope="module")
def separable():
    # one feature on a scale of 1e3 and classes separated at 0: the posterior has
    # a cliff where the classes start to overlap
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 1))
    return x * 1e3, (x[:, 0] > 0).astype(float)


@pytest.mark.parametrize("family", ["fullrank", "meanfield"])
@pytest.mark.parametrize("seed", range(3))
def test_a_fit_that_stalls_at_a_cliff_says_so(separable, family, seed):
    # the default fits stopped 1.3-1.95 sds (coef_) from the best Gaussian, with the
    # ELBO 0.5 nats below it, reported converged (PSIS k-hat cannot see a q that is
    # too narrow on the side of a cliff)
    X, y = separable
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = BayesianLogisticRegression(family=family, random_state=seed).fit(X, y)
    flagged = any(
        issubclass(w.category, (PSISWarning, ConvergenceWarning)) for w in caught
    )
    if est.converged_ and not flagged:
        mean = np.r_[est.coef_, est.intercept_]
        best, sd, _ = best_gaussian_logistic(
            X,
            y,
            mean,
            est.posterior_cov_,
            [1.0, 100.0],
            meanfield=family == "meanfield",
        )
        assert np.all(np.abs(mean - best) < 0.5 * sd), (mean, best, sd)
    if not est.converged_:
        assert any(issubclass(w.category, StationarityWarning) for w in caught) or any(
            issubclass(w.category, ConvergenceWarning) for w in caught
        )


def test_heavy_tailed_gradients_at_the_optimum_rarely_raise_the_alarm():
    # one nonzero count among 20 and wide priors: at the optimum a few antithetic
    # pairs in the gradient's tail carried one set of draws past the tolerance at
    # 7 of 40 seeds (the gap on 2^20 draws: 0.23); three sets must agree now
    from fastvi.sgvi import engine as sgvi_engine

    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 2))
    y = np.zeros(20)
    y[0] = 1
    gaps = []
    original = sgvi_engine.SGVI._check_stationary

    def spy(self, result, n_draws):
        out = original(self, result, n_draws)
        gaps.append(out.stationarity)
        return out

    sgvi_engine.SGVI._check_stationary = spy
    try:
        for seed in range(12):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                BayesianPoissonRegression(
                    prior_scale=10,
                    intercept_prior_scale=10,
                    family="fullrank",
                    method="sgd",
                    random_state=seed,
                    max_iter=20000,
                ).fit(X, y)
    finally:
        sgvi_engine.SGVI._check_stationary = original
    assert len(gaps) >= 10  # the converged fits were checked
    # seed 10 is flagged and is off (its gap on nine fresh sets: 1.05-2.93)
    assert sum(g > 0.5 for g in gaps) <= 1, gaps
