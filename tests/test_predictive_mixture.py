"""The mixture's posterior predictive (Student-t mixture) and its posterior draws."""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import integrate
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning

from fastvi import BayesianGaussianMixture
from fastvi.posterior import mixture_weight_means

COV_TYPES = ["full", "tied", "diag", "spherical"]
PRIORS = ["dirichlet_process", "dirichlet_distribution"]


def _data(n, D, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, (n - n // 2, D))
    b = rng.normal(3.0, 0.5, (n // 2, D)) * np.linspace(1.0, 2.0, D)
    return np.vstack([a, b])


def _fit(X, cov_type, prior="dirichlet_process", K=3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return BayesianGaussianMixture(
            n_components=K,
            covariance_type=cov_type,
            weight_concentration_prior_type=prior,
            max_iter=500,
            random_state=0,
        ).fit(X)


def _plugin_log_densities(est, draws, X):
    """log sum_k pi_k N(x | mu_k, Lambda_k^-1) for every draw: (n_draws, N)."""
    S = draws["weights_"].shape[0]
    K, D = est.means_.shape
    out = np.empty((S, X.shape[0]))
    for s in range(S):
        comps = []
        for k in range(K):
            lam = draws["precisions_"][s]
            if est.covariance_type != "tied":
                lam = lam[k]
            if est.covariance_type in ("diag", "spherical"):
                lam = np.diag(np.broadcast_to(lam, (D,)))
            diff = X - draws["means_"][s, k]
            comps.append(
                np.log(draws["weights_"][s, k])
                + 0.5 * np.linalg.slogdet(lam)[1]
                - 0.5 * D * np.log(2 * np.pi)
                - 0.5 * np.einsum("ij,jk,ik->i", diff, lam, diff)
            )
        out[s] = logsumexp(comps, axis=0)
    return out


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_predictive_integrates_to_one_in_1d(cov_type, prior):
    est = _fit(_data(25, 1), cov_type, prior)
    total, err = integrate.quad(
        lambda x: float(np.exp(est.predictive_log_density([[x]]))[0]),
        -np.inf,
        np.inf,
        limit=400,
    )
    assert abs(total - 1.0) < 1e-6, (total, err)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_predictive_integrates_to_one_in_2d(cov_type, prior):
    est = _fit(_data(30, 2), cov_type, prior)
    # x = c + s tan(u) maps (-pi/2, pi/2) onto the line, so the heavy t tails of
    # the nearly empty components (few degrees of freedom) are integrated too
    u, w = np.polynomial.legendre.leggauss(400)
    u, w = u * np.pi / 2, w * np.pi / 2
    axes = []
    for d in range(2):
        centre, spread = est.means_[:, d].mean(), 3.0
        axes.append((centre + spread * np.tan(u), w * spread / np.cos(u) ** 2))
    grid = np.array(np.meshgrid(axes[0][0], axes[1][0], indexing="ij"))
    dens = np.exp(est.predictive_log_density(grid.reshape(2, -1).T))
    total = axes[0][1] @ dens.reshape(400, 400) @ axes[1][1]
    assert abs(total - 1.0) < 2e-4, total


@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_predictive_is_the_average_plugin_density_over_posterior_draws(cov_type, D):
    est = _fit(_data(30, D), cov_type)
    draws = est.sample_posterior(4000, random_state=1)
    rng = np.random.default_rng(2)
    X = est.means_[rng.integers(0, 3, 8)] + rng.normal(0.0, 1.0, (8, D))
    dens = np.exp(_plugin_log_densities(est, draws, X))
    mc = dens.mean(axis=0)
    se = dens.std(axis=0, ddof=1) / np.sqrt(dens.shape[0])
    pred = np.exp(est.predictive_log_density(X))
    z = (mc - pred) / se
    assert np.all(np.abs(z) < 4.5), z


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_predictive_beats_plugin_on_held_out_data_when_n_is_small(cov_type):
    wins = 0
    for seed in range(5):
        X = _data(20, 2, seed)
        held = _data(4000, 2, seed + 100)
        est = _fit(X, cov_type, K=2)
        gain = est.predictive_log_density(held).mean() - est.score(held)
        wins += gain > 0
    assert wins == 5


def test_predictive_approaches_plugin_when_n_is_large():
    X = _data(20000, 2)
    est = _fit(X, "full", K=2)
    held = _data(500, 2, 7)
    diff = est.predictive_log_density(held) - est.score_samples(held)
    # O(D / N) apart, most in the tails, where the t's are wider
    assert np.abs(diff).max() < 1e-2 and abs(diff.mean()) < 1e-3


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_sample_predictive_moments(cov_type):
    est = _fit(_data(40, 2), cov_type, "dirichlet_distribution", K=2)
    X, labels = est.sample_predictive(200_000, random_state=0)
    assert X.shape == (200_000, 2) and labels.shape == (200_000,)
    w = mixture_weight_means(est)
    assert_allclose(np.bincount(labels, minlength=2) / len(labels), w, atol=5e-3)
    for k in range(2):
        xs = X[labels == k]
        assert_allclose(xs.mean(axis=0), est.means_[k], atol=0.05)
        # the t's covariance: scale matrix * nu / (nu - 2)
        from fastvi.predictive import mixture_components

        _, dof, scale, _ = mixture_components(est)
        cov = est.covariances_ if cov_type == "tied" else est.covariances_[k]
        cov = np.diag(np.broadcast_to(cov, (2,))) if cov.ndim < 2 else cov
        expected = scale[k] * cov * dof[k] / (dof[k] - 2.0)
        assert_allclose(np.cov(xs.T), expected, rtol=0.1, atol=0.02)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_posterior_draws_match_the_fitted_attributes(cov_type, prior):
    est = _fit(_data(60, 3), cov_type, prior)
    draws = est.sample_posterior(20000, random_state=0)
    K, D = est.means_.shape
    cov_shape = est.covariances_.shape
    assert draws["weights_"].shape == (20000, K)
    assert draws["means_"].shape == (20000, K, D)
    assert draws["precisions_"].shape == (20000, *cov_shape)
    assert draws["covariances_"].shape == (20000, *cov_shape)
    assert_allclose(draws["weights_"].sum(axis=1), 1.0)
    assert_allclose(
        draws["weights_"].mean(axis=0), mixture_weight_means(est), atol=0.01
    )
    if prior == "dirichlet_distribution":
        assert_allclose(mixture_weight_means(est), est.weights_)
    else:  # the truncation differs from weights_ by the mass past the last stick
        a, b = est.weight_concentration_
        assert (
            np.abs(mixture_weight_means(est) - est.weights_).max()
            <= np.prod(b / (a + b)) + 1e-12
        )
    # means: E[mu_k] = m_k, each within 5 Monte Carlo standard errors
    se = draws["means_"].std(axis=0) / np.sqrt(20000)
    assert np.all(np.abs(draws["means_"].mean(axis=0) - est.means_) < 5 * se)
    # precisions: E[Lambda_k] = precisions_
    prec = draws["precisions_"]
    se = prec.std(axis=0) / np.sqrt(20000)
    assert np.all(np.abs(prec.mean(axis=0) - est.precisions_) <= 5 * se + 1e-12)
    # covariances_: the inverse of each precision draw
    if cov_type in ("full", "tied"):
        assert_allclose(
            np.einsum("...ij,...jk->...ik", prec[:5], draws["covariances_"][:5]),
            np.broadcast_to(np.eye(D), prec[:5].shape),
            atol=1e-8,
        )
    else:
        assert_allclose(prec * draws["covariances_"], 1.0)
    # E[mu_k mu_kᵀ] - m mᵀ = E[Lambda^-1] / beta: the draws' spread of the means
    if cov_type == "full":
        nu, beta = est.degrees_of_freedom_[0], est.mean_precision_[0]
        expected = est.covariances_[0] * nu / (nu - D - 1) / beta
        assert_allclose(np.cov(draws["means_"][:, 0].T), expected, rtol=0.08)


def test_draws_are_reproducible_and_checked():
    est = _fit(_data(30, 2), "full")
    a = est.sample_posterior(5, random_state=3)
    b = est.sample_posterior(5, random_state=np.random.default_rng(3))
    for name in a:
        assert_allclose(a[name], b[name])
    with pytest.raises(ValueError, match="n_draws"):
        est.sample_posterior(0)
    with pytest.raises(ValueError, match="n_samples"):
        est.sample_predictive(0)
    with pytest.raises(ValueError, match="random_state"):
        est.sample_posterior(3, random_state="x")
    with pytest.raises(ValueError, match="features"):
        est.predictive_log_density(np.zeros((3, 5)))
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        BayesianGaussianMixture().predictive_log_density(np.zeros((3, 2)))
    with pytest.raises(NotFittedError):
        BayesianGaussianMixture().sample_posterior(3)


def test_saved_model_gives_the_same_predictive(tmp_path):
    from fastvi import load

    X = _data(30, 2)
    for cov_type in COV_TYPES:
        est = _fit(X, cov_type)
        est.save(tmp_path / "m.npz")
        back = load(tmp_path / "m.npz")
        np.testing.assert_array_equal(
            est.predictive_log_density(X), back.predictive_log_density(X)
        )
        a, b = (m.sample_posterior(3, random_state=0) for m in (est, back))
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
