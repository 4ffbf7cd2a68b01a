"""The vector supports "ordered" and "simplex": transforms, inverses, log-Jacobians
against numerical derivatives, the chain rule of Model.log_density, and fits."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from fastvi.sgvi import SGVI, Interval, Model, Param, WindowConvergence
from fastvi.sgvi import supports as sup


def _num_jacobian(f, z, h=1e-6):
    """d f / d z (m, n) by central differences, f: (n,) -> (m,)."""
    cols = []
    for j in range(z.shape[0]):
        e = np.zeros_like(z)
        e[j] = h
        cols.append((f(z + e) - f(z - e)) / (2 * h))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("K", [1, 2, 3, 6])
def test_ordered_transform_inverse_and_log_jacobian(K):
    rng = np.random.default_rng(K)
    z = rng.normal(0.0, 1.5, size=(5, K))
    theta, log_j = sup.ordered_forward(z)
    assert np.all(np.diff(theta, axis=-1) > 0)
    assert_allclose(theta[:, 0], z[:, 0])
    assert_allclose(sup.ordered_inverse(theta), z, rtol=1e-12, atol=1e-12)
    for s in range(5):
        J = _num_jacobian(lambda v: sup.ordered_forward(v)[0], z[s])
        assert_allclose(log_j[s], np.linalg.slogdet(J)[1], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("K", [2, 3, 5])
def test_simplex_transform_inverse_and_log_jacobian(K):
    rng = np.random.default_rng(K)
    z = rng.normal(0.0, 1.5, size=(5, K - 1))
    theta, log_j = sup.simplex_forward(z)
    assert theta.shape == (5, K)
    assert np.all(theta > 0)
    assert_allclose(theta.sum(axis=-1), 1.0, rtol=1e-14)
    assert_allclose(sup.simplex_inverse(theta), z, rtol=1e-10, atol=1e-10)
    # the density is over the first K - 1 entries (the last is 1 minus their sum)
    for s in range(5):
        J = _num_jacobian(lambda v: sup.simplex_forward(v)[0][: K - 1], z[s])
        assert_allclose(log_j[s], np.linalg.slogdet(J)[1], rtol=1e-7, atol=1e-7)
    # z = 0 is the uniform simplex
    assert_allclose(sup.simplex_forward(np.zeros(K - 1))[0], np.full(K, 1.0 / K))


def test_simplex_far_in_the_tails_stays_finite():
    z = np.array([[40.0, -40.0, 3.0], [-700.0, 700.0, -700.0], [0.0, 0.0, 900.0]])
    theta, log_j = sup.simplex_forward(z)
    assert np.all(np.isfinite(theta)) and np.all(theta >= 0)
    assert_allclose(theta.sum(axis=-1), 1.0)
    assert np.all(np.isfinite(log_j))
    g = sup.simplex_grad(z, theta, np.ones_like(theta))
    assert np.all(np.isfinite(g))


class _Mixed(Model):
    """Every support at once; log p(theta) = sum_j c_j theta_j + 0.1 sum theta_j^2
    (smooth, with a gradient in theta that is easy to write)."""

    def __init__(self):
        self.params = [
            Param("a", 2),
            Param("cut", 3, "ordered"),
            Param("s", (), "positive"),
            Param("w", 4, "simplex"),
            Param("p", (), Interval(-1.0, 2.0)),
            Param("v", 3, "simplex"),
        ]
        super().__init__()
        self.c = np.linspace(-1.0, 1.5, self.theta_size)

    def log_joint(self, theta, rows, scale):
        lp = theta @ self.c + 0.1 * np.sum(theta * theta, axis=1)
        return lp, self.c + 0.2 * theta


def test_sizes_and_slices_with_vector_supports():
    m = _Mixed()
    assert m.theta_size == 2 + 3 + 1 + 4 + 1 + 3
    assert m.size == m.theta_size - 2  # each simplex has one free coordinate less
    assert m.slices["w"] == slice(6, 10) and m.free_slices["w"] == slice(6, 9)
    assert m.slices["v"] == slice(11, 14) and m.free_slices["v"] == slice(10, 12)
    names = m.coordinate_names()
    assert len(names) == m.size
    assert names[6:9] == ["w.stick[0]", "w.stick[1]", "w.stick[2]"]
    assert m.initial_point().shape == (m.size,)
    theta = m.constrain(np.zeros(m.size))
    assert_allclose(theta[m.slices["w"]], 0.25)
    assert_allclose(theta[m.slices["cut"]], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"12 unconstrained coordinates"):
        m.constrain(np.zeros(m.theta_size))
    with pytest.raises(ValueError, match=r"theta must have 14 entries"):
        m.unconstrain(np.zeros(m.size))


def test_log_density_chain_rule_with_every_support():
    m = _Mixed()
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 0.8, size=(4, m.size))
    theta = m.constrain(z)
    assert_allclose(m.unconstrain(theta), z, rtol=1e-10, atol=1e-10)
    lp, g = m.log_density(z)
    # the log-Jacobian: the density of theta's free entries (all of them but the
    # last entry of each simplex) against z's, numerically
    free = np.ones(m.theta_size, bool)
    free[[m.slices["w"].stop - 1, m.slices["v"].stop - 1]] = False
    for s in range(4):
        J = _num_jacobian(lambda v: m.constrain(v)[free], z[s])
        expect = (
            m.log_joint(theta[s : s + 1], None, 1.0)[0][0] + np.linalg.slogdet(J)[1]
        )
        assert_allclose(lp[s], expect, rtol=1e-8)
    num = np.empty_like(g)
    for j in range(m.size):
        e = np.zeros(m.size)
        e[j] = 1e-6
        num[:, j] = (m.log_density(z + e)[0] - m.log_density(z - e)[0]) / 2e-6
    assert_allclose(g, num, rtol=1e-6, atol=1e-6)
    # the value-only path agrees
    assert_allclose(m.log_density(z, grad=False), lp, rtol=1e-14)


@pytest.mark.parametrize(
    "param, match",
    [
        (Param("w", 1, "simplex"), r"'simplex' support needs a vector.*K >= 2"),
        (Param("w", (), "simplex"), r"shape \(K,\)"),
        (Param("c", (2, 2), "ordered"), r"'ordered' support needs a vector"),
        (Param("c", 3, "sorted"), "'ordered' or 'simplex'"),
    ],
)
def test_bad_vector_supports_are_clear_errors(param, match):
    class One(Model):
        def __init__(self):
            self.params = [param]
            super().__init__()

    with pytest.raises(ValueError, match=match):
        One()


class _Dirichlet(Model):
    """w ~ Dirichlet(alpha), cut ~ N(mu, 0.3^2) restricted to increasing vectors."""

    def __init__(self, alpha, mu):
        self.alpha = np.asarray(alpha, float)
        self.mu = np.asarray(mu, float)
        self.params = [
            Param("w", len(alpha), "simplex"),
            Param("cut", len(mu), "ordered"),
        ]
        super().__init__()

    def log_joint(self, theta, rows, scale):
        K = self.alpha.shape[0]
        w, c = theta[:, :K], theta[:, K:]
        r = (c - self.mu) / 0.3
        lp = np.sum((self.alpha - 1.0) * np.log(w), axis=1) - 0.5 * np.sum(r * r, 1)
        g = np.empty_like(theta)
        g[:, :K] = (self.alpha - 1.0) / w
        g[:, K:] = -r / 0.3
        return lp, g


def test_fit_a_dirichlet_and_an_ordered_vector():
    alpha = np.array([20.0, 30.0, 50.0])
    mu = np.array([-1.0, 0.5, 2.0])  # well separated: the ordering barely binds
    model = _Dirichlet(alpha, mu)
    engine = SGVI(model, family="fullrank", n_samples=8)
    # the moments are checked against the exact ones below; PSIS k-hat of this
    # 5-D product of near-Gaussians hovers near 0.7 and would warn
    res = engine.run(
        seed=0, max_iter=3000, convergence=WindowConvergence(), psis_draws=0
    )
    assert res.converged
    post = engine.posterior(res.state, 4000, seed=1)
    w = post.draws["w"]
    assert w.shape == (4000, 3)
    assert_allclose(w.sum(axis=1), 1.0)
    a0 = alpha.sum()
    mean = alpha / a0
    sd = np.sqrt(mean * (1 - mean) / (a0 + 1))
    assert np.all(np.abs(post.mean["w"] - mean) < 0.2 * sd)
    assert_allclose(post.sd["w"], sd, rtol=0.15)
    assert np.all(np.diff(post.draws["cut"], axis=1) > 0)
    assert np.all(np.abs(post.mean["cut"] - mu) < 0.1)
    assert_allclose(post.sd["cut"], 0.3, rtol=0.15)
