"""The fixed-draw fit (DADVI with cubature draws) that SGVI.run takes by default."""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose

from fastvi.sgvi import SGVI, Adam, Model, Param, PSISWarning, fixed
from fastvi.sgvi.fixed import cubature_draws

from .posteriordb_models import POSTERIORS

EIGHT = next(n for n in POSTERIORS if "eight" in n)


class _Gaussian(Model):
    """A correlated Gaussian posterior N(m, C) on three real parameters."""

    def __init__(self):
        self.params = [Param("x", 3)]
        A = np.array([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [-0.3, 0.8, 0.1]])
        self.m = np.array([87.6, -3.0, 0.001])
        self.C = A @ A.T
        self.H = np.linalg.inv(self.C)
        super().__init__()

    def log_joint(self, theta, rows, scale):
        d = theta - self.m
        return -0.5 * np.einsum("si,ij,sj->s", d, self.H, d), -(d @ self.H)


class _Skewed(Model):
    """s ~ Gamma(30, 10), x | s ~ N(s, 1): a little skewed in log s, so the
    Laplace start is not q's optimum."""

    def __init__(self):
        self.params = [Param("s", (), "positive"), Param("x", ())]
        super().__init__()

    def log_joint(self, theta, rows, scale):
        s, x = theta[:, 0], theta[:, 1]
        lp = 29.0 * np.log(s) - 10.0 * s - 0.5 * (x - s) ** 2
        g = np.column_stack([29.0 / s - 10.0 + (x - s), -(x - s)])
        return lp, g


def test_cubature_draws_match_the_first_three_moments_exactly():
    E = cubature_draws(np.random.default_rng(0), 4, 6)
    assert E.shape == (12, 4)
    assert_allclose(E.mean(axis=0), 0.0, atol=1e-13)
    assert_allclose(E.T @ E / 12, np.eye(4), atol=1e-12)
    assert_allclose(np.einsum("si,sj,sk->ijk", E, E, E), 0.0, atol=1e-11)
    with pytest.raises(ValueError, match="M >= P"):
        cubature_draws(np.random.default_rng(0), 4, 3)


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("family", ["fullrank", "meanfield"])
def test_a_gaussian_posterior_is_fitted_exactly_in_a_few_iterations(
    family, dense, monkeypatch
):
    """The draws integrate quadratics exactly, so on a Gaussian posterior the
    fixed-draw optimum is the exact best q of the family: the posterior itself
    (full-rank) or N(m, diag(1 / diag H)) (mean-field)."""
    if not dense:  # the L-BFGS-B branch (large q)
        monkeypatch.setattr(fixed, "_DENSE_MAX", 1)
    model = _Gaussian()
    with warnings.catch_warnings():
        # mean-field on a correlation of 0.95: warned, rightly
        warnings.simplefilter("ignore", PSISWarning)
        res = SGVI(model, family=family).run(seed=3)
    assert res.converged and res.method == "fixed"
    assert res.n_iter <= 20 and res.state.step == res.n_iter
    fam = SGVI(model, family=family).family
    # BFGS stops at a gradient of 1e-5 in the whitened coordinates: the means
    # are exact to ~1e-5 posterior sds
    sd_post = np.sqrt(np.diag(model.C))
    assert_allclose((fam.mean(res.state.params) - model.m) / sd_post, 0, atol=1e-5)
    if family == "fullrank":
        assert_allclose(fam.cov(res.state.params), model.C, rtol=1e-6, atol=1e-9)
    else:
        sd = 1.0 / np.sqrt(np.diag(model.H))
        assert_allclose(fam.std(res.state.params), sd, rtol=1e-6)
    assert np.all(np.diff(res.elbo) >= -1e-9)  # BFGS: F never decreases


def test_a_funnel_hands_over_to_stochastic_steps():
    """Eight schools' tau is far from Gaussian: two sets of fixed draws disagree
    about q far beyond the tolerance already at the start, so the fit takes the
    stochastic steps from the Laplace start instead (and is right:
    tests/test_sgvi_posteriordb.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSISWarning)
        res = SGVI(POSTERIORS[EIGHT](), family="fullrank").run(seed=1)
    assert res.method == "fixed+sgd" and res.converged
    assert res.elbo.shape == (res.n_iter,)
    # the stochastic steps are those of method='sgd' exactly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSISWarning)
        sgd = SGVI(POSTERIORS[EIGHT](), family="fullrank", method="sgd").run(seed=1)
    assert_allclose(res.state.params, sgd.state.params, rtol=0, atol=0)
    assert_allclose(res.elbo[-sgd.n_iter :], sgd.elbo, rtol=0, atol=0)
    # screened out before the fit: two sets of draws disagree at the start
    assert res.n_iter == sgd.n_iter


def test_method_resolution_and_errors():
    model = _Gaussian()
    assert SGVI(model).method == "fixed"
    assert SGVI(model, optimizer=Adam(0.05)).method == "sgd"
    assert SGVI(model, qmc=True).method == "sgd"
    assert SGVI(model, estimator="score", n_samples=4).method == "sgd"
    # an explicit stopping rule or a resumed state: stochastic steps
    from fastvi.sgvi import WindowConvergence

    engine = SGVI(model)
    res = engine.run(seed=0, max_iter=300, convergence=WindowConvergence())
    assert res.method == "sgd"
    assert engine.run(init_state=res.state, max_iter=5).method == "sgd"
    with pytest.raises(ValueError, match="method must be one of"):
        SGVI(model, method="newton")
    with pytest.raises(ValueError, match="batch_size=None"):
        SGVI(model, method="fixed", estimator="score", n_samples=4)


def test_callback_and_max_iter():
    model = _Skewed()
    seen = []
    warnings.simplefilter("ignore", PSISWarning)  # pytest restores the filters
    res = SGVI(model, family="fullrank").run(
        seed=0, callback=lambda n, elbo, state: seen.append((n, elbo.size, state.step))
    )
    assert res.converged and res.method == "fixed" and res.n_iter > 2
    assert [s[0] for s in seen] == list(range(1, res.n_iter + 1))
    assert all(n == size for n, size, _ in seen)
    short = SGVI(model, family="fullrank").run(seed=0, max_iter=2)
    assert short.n_iter == 2 and not short.converged and short.method == "fixed"


def test_the_limited_memory_branch_finds_the_same_optimum(monkeypatch):
    """Above _DENSE_MAX parameters BFGS's dense inverse Hessian is not kept:
    L-BFGS-B, whose inverse-Hessian operator the replicate check uses."""
    warnings.simplefilter("ignore", PSISWarning)
    dense = SGVI(_Skewed(), family="fullrank").run(seed=2)
    monkeypatch.setattr(fixed, "_DENSE_MAX", 1)
    limited = SGVI(_Skewed(), family="fullrank").run(seed=2)
    assert dense.method == limited.method == "fixed" and limited.converged
    assert limited.n_iter > 2
    assert_allclose(limited.state.params, dense.state.params, rtol=0, atol=1e-4)


@pytest.mark.parametrize("model", [_Gaussian(), _Skewed()], ids=["gaussian", "skewed"])
def test_the_newton_laplace_start_matches_lbfgs(model, monkeypatch):
    """The Laplace start's Newton iterations (forward-difference Hessians, one
    call of the model per iteration) find the mode and curvature that L-BFGS
    with central differences finds, in fewer calls of the model."""
    from fastvi.sgvi import engine

    calls = []
    inner = model.log_joint
    monkeypatch.setattr(
        model, "log_joint", lambda t, r, s: calls.append(1) or inner(t, r, s)
    )
    eng = SGVI(model, family="fullrank")
    z0 = model.initial_point()
    frame, phi = eng.laplace(z0)
    n_newton = len(calls)
    monkeypatch.setattr(engine, "_NEWTON_MAX", 0)
    frame2, phi2 = eng.laplace(z0)
    sd = eng.family.std(phi2)
    assert_allclose((frame.a - frame2.a) / sd, 0, atol=1e-3)
    assert_allclose(eng.family.cov(phi), eng.family.cov(phi2), rtol=1e-3, atol=0)
    assert n_newton < len(calls) - n_newton


def test_sets_of_draws_in_one_call_give_each_set_its_own_values():
    """The screen and the replicate check evaluate their sets of draws in one
    call of the model: each set's -F and gradient are those of its own call."""
    model = _Skewed()
    eng = SGVI(model, family="fullrank")
    state = eng.init(0)
    rng = np.random.default_rng(5)
    sets = [cubature_draws(rng, 2, 8) for _ in range(2)]
    p = state.params_u + 0.1 * rng.standard_normal(state.params_u.shape)
    together = fixed.values(eng, state.frame, p, sets)
    for E, (value, grad) in zip(sets, together):
        f, _ = fixed.objective(eng, state.frame, E)
        alone = f(p)
        assert_allclose(value, alone[0], rtol=1e-12)
        assert_allclose(grad, alone[1], rtol=1e-10, atol=1e-12)
    assert together[0][0] != together[1][0]
