"""Stochastic variational inference for BayesianGaussianMixture (partial_fit, online).

Oracles: one step with rho = 1 on the whole data is one CAVI iteration; the natural
parameters round-trip and the step is their convex combination, which is the
normalized geometric mixture q_cur^(1 - rho) q_target^rho of the densities (written
with scipy's, independently of the natural parameters); the online bound is
the CAVI bound at a CAVI optimum; on well-separated data the online fit gets within
1% of the batch bound; determinism, thread-count invariance and clean failures.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

import fastvi
from fastvi import BayesianGaussianMixture
from fastvi.mixture import _Data, _mean_outer, _natural_blend, _wishart_shape
from fastvi.rows import ArrayRows

COV_TYPES = ["full", "tied", "diag", "spherical"]
PRIORS = ["dirichlet_process", "dirichlet_distribution"]
PARAMS = [
    "weight_concentration_",
    "mean_precision_",
    "means_",
    "degrees_of_freedom_",
    "covariances_",
    "precisions_cholesky_",
    "weights_",
]


def blobs(n=600, d=3, k=4, seed=0, spread=4.0, offset=0.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, spread, size=(k, d))
    scales = rng.uniform(0.5, 1.5, size=(k, d))
    labels = rng.integers(0, k, size=n)
    return centers[labels] + scales[labels] * rng.normal(size=(n, d)) + offset


def quiet_fit(est, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X)


def fit_data(X):
    """The per-fit data of in-memory rows (what a fit's passes read)."""
    return _Data(ArrayRows(np.ascontiguousarray(X, dtype=np.float64)), X)


def flat(value):
    """An attribute as one array (the stick-breaking concentration is a tuple)."""
    if isinstance(value, tuple):
        return np.concatenate([np.ravel(v) for v in value])
    return np.ravel(np.asarray(value, dtype=np.float64))


def _natural_parameters(params, cov_type):
    """The natural parameters of the global factors (see ``_natural_blend``): the
    Dirichlet's alpha - 1 (the Betas' (a - 1, b - 1)), and -beta / 2, beta m,
    -(W^{-1} + beta m m^T) / 2, (nu - D) / 2 of the Normal-Wishart factors."""
    weights, beta, means, nu, covariances = params
    if isinstance(weights, tuple):
        eta_weights = (weights[0] - 1.0, weights[1] - 1.0)
    else:
        eta_weights = weights - 1.0
    w_inv = covariances * _wishart_shape(nu, cov_type)
    return (
        eta_weights,
        -0.5 * beta,
        beta[:, np.newaxis] * means,
        -0.5 * (w_inv + _mean_outer(beta, means, cov_type)),
        0.5 * (nu - means.shape[1]),
    )


def _from_natural(natural, cov_type):
    """Inverse of :func:`_natural_parameters`."""
    eta_weights, eta1, eta2, eta3, eta4 = natural
    if isinstance(eta_weights, tuple):
        weights = (eta_weights[0] + 1.0, eta_weights[1] + 1.0)
    else:
        weights = eta_weights + 1.0
    beta = -2.0 * eta1
    means = eta2 / beta[:, np.newaxis]
    nu = 2.0 * eta4 + eta2.shape[1]
    w_inv = -2.0 * eta3 - _mean_outer(beta, means, cov_type)
    return weights, beta, means, nu, w_inv / _wishart_shape(nu, cov_type)


def parameters(est):
    return est._variational_parameters()


# ------------------------------------------------- rho = 1, the whole data
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_rho_one_full_data_step_is_one_cavi_iteration(covariance_type, prior):
    # learning_offset=0 makes the first step's rho = 1 ** -kappa = 1, and
    # total_samples=N makes the minibatch statistics the data's: the first
    # partial_fit is fit's initialization followed by one CAVI iteration
    X = blobs(offset=50.0)  # far from the origin: no cancellation hides here
    common = dict(
        n_components=4,
        covariance_type=covariance_type,
        weight_concentration_prior_type=prior,
        random_state=3,
    )
    svi = BayesianGaussianMixture(
        learning_offset=0.0, total_samples=X.shape[0], **common
    ).partial_fit(X)
    cavi = quiet_fit(BayesianGaussianMixture(max_iter=1, **common), X)
    assert svi.n_batch_iter_ == 2
    for name in PARAMS:
        assert_allclose(
            flat(getattr(svi, name)),
            flat(getattr(cavi, name)),
            rtol=1e-12,
            err_msg=name,
        )
    assert_array_equal(svi.predict(X), cavi.predict(X))


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_rho_one_step_from_given_statistics_is_the_m_step(covariance_type):
    # the same responsibilities (one pass under the fitted globals), two updates:
    # the CAVI M-step and the stochastic step with rho = 1 (a half-way state first)
    X = blobs(seed=1)
    est = quiet_fit(
        BayesianGaussianMixture(
            n_components=3, covariance_type=covariance_type, max_iter=3, random_state=0
        ),
        X,
    )
    data = fit_data(X)
    stats = est._statistics(data, est.means_)
    batch = BayesianGaussianMixture(**est.get_params())
    batch.__dict__.update(est.__dict__)
    batch._update_globals(stats, data)
    est._update_globals(stats, data, rho=1.0)
    for name in PARAMS[:-1]:
        assert_allclose(
            flat(getattr(est, name)),
            flat(getattr(batch, name)),
            rtol=1e-13,
            err_msg=name,
        )


# ------------------------------------------------------- natural parameters
def two_states(covariance_type, prior):
    X = blobs(seed=2, offset=5.0)
    common = dict(
        n_components=3,
        covariance_type=covariance_type,
        weight_concentration_prior_type=prior,
        random_state=0,
    )
    a = quiet_fit(BayesianGaussianMixture(max_iter=1, **common), X)
    b = quiet_fit(
        BayesianGaussianMixture(max_iter=1, init_params="random", **common), X
    )
    return parameters(a), parameters(b)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_natural_parameters_round_trip(covariance_type, prior):
    state, _ = two_states(covariance_type, prior)
    natural = _natural_parameters(state, covariance_type)
    back = _from_natural(natural, covariance_type)
    for got, want in zip(back, state):
        assert_allclose(flat(got), flat(want), rtol=1e-10)
    # the Wishart term -(W^-1 + beta m m^T)/2 is negative definite (it is minus a
    # covariance-like sum), and eta1 = -beta/2 < 0
    assert np.all(natural[1] < 0)
    eta3 = natural[3]
    if covariance_type in ("full", "tied"):
        assert np.all(
            np.linalg.eigvalsh(np.atleast_3d(eta3).reshape(-1, *eta3.shape[-2:])) < 0
        )
    else:
        assert np.all(eta3 < 0)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_step_is_a_convex_combination_of_natural_parameters(covariance_type, prior):
    current, target = two_states(covariance_type, prior)
    nat_cur = _natural_parameters(current, covariance_type)
    nat_tgt = _natural_parameters(target, covariance_type)
    for rho in (0.0, 0.3, 1.0):
        mixed = []
        for c, t in zip(nat_cur, nat_tgt):
            if isinstance(c, tuple):
                mixed.append(tuple((1 - rho) * a + rho * b for a, b in zip(c, t)))
            else:
                mixed.append((1 - rho) * c + rho * t)
        want = _from_natural(tuple(mixed), covariance_type)
        got = _natural_blend(current, target, rho, covariance_type)
        for g, w in zip(got, want):
            assert_allclose(flat(g), flat(w), rtol=1e-9)
    for g, c in zip(_natural_blend(current, target, 0.0, covariance_type), current):
        assert_allclose(flat(g), flat(c), rtol=1e-14)


def log_normal_wishart(params, k, mu, lam, covariance_type):
    """log q(mu_k, Lambda_k) of component k, written out with scipy's densities.

    'full': N(mu | m, (beta Lambda)^-1) Wishart(Lambda | W, nu); 'diag': per feature
    N(mu_d | m_d, 1 / (beta lambda_d)) Gamma(lambda_d | nu / 2, rate W^-1_d / 2) (the
    one-dimensional Wishart); 'spherical': N(mu | m, I / (beta lambda))
    Gamma(lambda | D nu / 2, rate D W^-1 / 2), whose mean 1 / covariance is the
    fitted precision. W^-1 = nu * covariance (scikit-learn's normalization).
    """
    from scipy import stats

    _, beta, means, nu, covariances = params
    b, m, n = beta[k], means[k], nu[k]
    D = m.size
    if covariance_type == "full":
        w_inv = n * covariances[k]
        return stats.wishart.logpdf(
            lam, df=n, scale=np.linalg.inv(w_inv)
        ) + stats.multivariate_normal.logpdf(mu, m, np.linalg.inv(b * lam))
    if covariance_type == "diag":
        rate = 0.5 * n * covariances[k]
        gamma = stats.gamma.logpdf(lam, a=0.5 * n, scale=1.0 / rate)
        normal = stats.norm.logpdf(mu, m, 1.0 / np.sqrt(b * lam))
        return float(np.sum(gamma + normal))
    rate = 0.5 * D * n * covariances[k]
    gamma = stats.gamma.logpdf(lam, a=0.5 * D * n, scale=1.0 / rate)
    return float(gamma + np.sum(stats.norm.logpdf(mu, m, 1.0 / np.sqrt(b * lam))))


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_step_is_the_geometric_mixture_of_the_densities(covariance_type):
    # an oracle independent of _natural_parameters: a convex combination of natural
    # parameters is the normalized q_cur^(1 - rho) q_target^rho, so log q_step -
    # (1 - rho) log q_cur - rho log q_target is the same at every (mu, Lambda)
    current, target = two_states(covariance_type, "dirichlet_distribution")
    rho = 0.3
    step = _natural_blend(current, target, rho, covariance_type)
    rng = np.random.default_rng(0)
    D = current[2].shape[1]
    for k in range(current[2].shape[0]):
        diffs = []
        for _ in range(6):
            mu = current[2][k] + rng.normal(0.0, 3.0, size=D)
            if covariance_type == "full":
                a = rng.normal(size=(D, D))
                lam = a @ a.T + 0.5 * np.eye(D)
            elif covariance_type == "diag":
                lam = rng.uniform(0.2, 3.0, size=D)
            else:
                lam = rng.uniform(0.2, 3.0)
            args = (k, mu, lam, covariance_type)
            diffs.append(
                log_normal_wishart(step, *args)
                - (1 - rho) * log_normal_wishart(current, *args)
                - rho * log_normal_wishart(target, *args)
            )
        assert np.ptp(diffs) < 1e-8 * np.max(np.abs(diffs)) + 1e-8, diffs
    # the Dirichlet factor: the same property, at points of the simplex
    from scipy import stats

    diffs = []
    for pi in rng.dirichlet(np.ones(current[2].shape[0]), size=6):
        diffs.append(
            stats.dirichlet.logpdf(pi, step[0])
            - (1 - rho) * stats.dirichlet.logpdf(pi, current[0])
            - rho * stats.dirichlet.logpdf(pi, target[0])
        )
    assert np.ptp(diffs) < 1e-9


# ----------------------------------------------------------------- the bound
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_online_bound_is_the_cavi_bound_at_a_cavi_optimum(covariance_type, prior):
    # at a converged CAVI fit the optimal responsibilities are the last ones, so the
    # bound of any global factors (used by online fits) must equal scikit-learn's
    # bound; reg_covar=0 because scikit-learn's formula treats the regularized
    # update as an exact one (with reg_covar > 0 they differ by about
    # reg_covar/2 sum_k N_k Tr(precision_k))
    X = blobs(seed=4)
    est = BayesianGaussianMixture(
        n_components=4,
        covariance_type=covariance_type,
        weight_concentration_prior_type=prior,
        reg_covar=0.0,
        tol=1e-9,
        max_iter=1000,
        random_state=0,
    ).fit(X)
    assert est.converged_
    bound = est._sgd_evaluate(fit_data(X))
    assert_allclose(bound, est.lower_bound_, rtol=1e-11, atol=1e-8)
    # and away from the optimum it is a lower bound that CAVI steps raise
    early = quiet_fit(BayesianGaussianMixture(**{**est.get_params(), "max_iter": 1}), X)
    assert early._sgd_evaluate(fit_data(X)) < bound


# ------------------------------------------------------------- online fits
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_online_fit_reaches_the_batch_bound_within_one_percent(covariance_type):
    # a start far from the optimum ('random_from_data': the first CAVI iteration is
    # more than 5% below the final bound), so the steps have somewhere to go
    X = blobs(n=30_000, d=4, k=6, seed=5, spread=8.0)
    common = dict(
        n_components=6,
        covariance_type=covariance_type,
        init_params="random_from_data",
        random_state=0,
        tol=1e-3,
    )
    batch = BayesianGaussianMixture(max_iter=500, **common).fit(X)
    online = quiet_fit(
        BayesianGaussianMixture(
            learning_method="online",
            batch_size=300,
            learning_offset=1.0,
            learning_decay=0.51,
            max_iter=3,
            **common,
        ),
        X,
    )
    assert online.n_iter_ == 3 and len(online.lower_bounds_) == 3
    assert online.n_batch_iter_ == 1 + 3 * 100
    # both on the same footing: the bound of the final factors over all the data
    final_batch = batch._sgd_evaluate(fit_data(X))
    assert (final_batch - batch.lower_bounds_[0]) / abs(final_batch) > 0.05
    gap = (final_batch - online.lower_bound_) / abs(final_batch)
    assert gap < 0.01
    assert online.lower_bound_ == online.lower_bounds_[-1]
    assert_allclose(online.lower_bound_, online._sgd_evaluate(fit_data(X)))
    # and the fitted model finds the same clusters (up to their order)
    assert adjusted_rand_score(batch.predict(X), online.predict(X)) > 0.99


def test_online_fit_is_deterministic_thread_invariant_and_resumable():
    X = blobs(n=20_000, d=3, k=4, seed=6)
    common = dict(
        n_components=4,
        covariance_type="diag",
        learning_method="online",
        batch_size=9000,  # three minibatches of 6667 rows: two kernel chunks each
        random_state=7,
        tol=0.0,
    )
    one = quiet_fit(BayesianGaussianMixture(max_iter=4, n_jobs=1, **common), X)
    two = quiet_fit(BayesianGaussianMixture(max_iter=4, n_jobs=2, **common), X)
    again = quiet_fit(BayesianGaussianMixture(max_iter=4, n_jobs=1, **common), X)
    # two epochs, then two more with warm_start: the same minibatches, same model
    resumed = quiet_fit(BayesianGaussianMixture(max_iter=2, n_jobs=2, **common), X)
    resumed.set_params(warm_start=True)
    quiet_fit(resumed, X)
    for name in PARAMS:
        assert_array_equal(flat(getattr(one, name)), flat(getattr(two, name)))
        assert_array_equal(flat(getattr(one, name)), flat(getattr(again, name)))
        assert_array_equal(flat(getattr(one, name)), flat(getattr(resumed, name)))
    assert one.lower_bounds_ == two.lower_bounds_
    assert one.lower_bounds_[2:] == resumed.lower_bounds_
    assert one.n_batch_iter_ == resumed.n_batch_iter_ == 13
    other = quiet_fit(
        BayesianGaussianMixture(max_iter=4, **{**common, "random_state": 8}), X
    )
    assert not np.array_equal(one.means_, other.means_)
    # partial_fit on minibatches of several kernel chunks (two threads at work)
    fits = [
        BayesianGaussianMixture(
            n_components=4, covariance_type="full", random_state=0, n_jobs=n_jobs
        )
        for n_jobs in (1, 2)
    ]
    for rows in stream(X, 10_000):
        for est in fits:
            est.partial_fit(rows)
    for name in PARAMS:
        assert_array_equal(flat(getattr(fits[0], name)), flat(getattr(fits[1], name)))


def test_online_fit_job_stops_and_resumes_to_the_uninterrupted_model(tmp_path):
    # the job's monitor reaches the stochastic driver: progress, a checkpoint at the
    # stop, and a resume (a warm start) that gives the uninterrupted model bitwise
    from fastvi.batch.jobs import Interrupted, Progress, fit_mixture

    X = blobs(n=3000, d=2, k=3, seed=3)

    def make():
        return BayesianGaussianMixture(
            n_components=3, learning_method="online", batch_size=500, max_iter=5,
            tol=0.0, random_state=4,
        )  # fmt: skip

    reference = quiet_fit(make(), X)
    checkpoint = str(tmp_path / "ck.npz")
    with pytest.raises(Interrupted) as info:
        fit_mixture(make(), X, checkpoint=checkpoint, should_stop=lambda: True)
    assert info.value.iteration == 1
    lines = []
    progress = Progress(5, len(X), quiet=True)
    progress.update = lambda *args: lines.append(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        resumed = fit_mixture(
            make(), X, checkpoint=checkpoint, resume=True, progress=progress
        )
    assert [n for n, _, _ in lines] == [2, 3, 4, 5]
    assert [b for _, b, _ in lines] == reference.lower_bounds_[1:]
    assert resumed.lower_bounds_ == reference.lower_bounds_
    assert resumed.n_iter_ == 5 and resumed.n_batch_iter_ == reference.n_batch_iter_
    for name in PARAMS:
        assert_array_equal(flat(getattr(reference, name)), flat(getattr(resumed, name)))


def test_online_verbose_and_stop_rule(capsys):
    # the stochastic driver prints one line per epoch with the bound, and its stop
    # rule (|change| < tol) counts the stopping epoch, which the bounds list holds
    X = blobs(n=1200, d=2, k=3, seed=5)
    est = BayesianGaussianMixture(
        n_components=3, learning_method="online", batch_size=300, max_iter=50,
        tol=1e9, verbose=1, random_state=0,
    ).fit(X)  # fmt: skip
    assert est.converged_ and est.n_iter_ == 2 == len(est.lower_bounds_)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Initialization 0" and out[-1] == "Initialization converged."
    for epoch, line in enumerate(out[1:-1], 1):
        bound = est.lower_bounds_[epoch - 1]
        assert line == f"iteration: {epoch} of max_iter: 50, bound: {bound:.4f}"


def test_online_fit_with_restarts_keeps_the_best():
    X = blobs(seed=9)
    common = dict(
        n_components=4, learning_method="online", batch_size=100, max_iter=3, tol=0.0
    )
    best = quiet_fit(BayesianGaussianMixture(n_init=3, random_state=0, **common), X)
    assert best.lower_bound_ == best.lower_bounds_[-1]
    assert best.n_batch_iter_ == 1 + 3 * 6


# ------------------------------------------------------------ partial_fit
def stream(X, size):
    for start in range(0, X.shape[0], size):
        yield X[start : start + size]


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_partial_fit_over_a_stream(covariance_type):
    X = blobs(n=6000, d=3, k=4, seed=10, spread=8.0)
    order = np.random.default_rng(0).permutation(X.shape[0])
    X = X[order]
    common = dict(
        n_components=4,
        covariance_type=covariance_type,
        total_samples=X.shape[0],
        random_state=1,
    )
    a = BayesianGaussianMixture(**common)
    b = BayesianGaussianMixture(**common, n_jobs=1)
    for _ in range(2):
        for rows in stream(X, 500):
            a.partial_fit(rows)
            b.partial_fit(rows)
    assert a.n_batch_iter_ == 1 + 2 * 12
    check_is_fitted(a)
    for name in PARAMS:
        assert_array_equal(flat(getattr(a, name)), flat(getattr(b, name)))
    assert_allclose(a.weights_.sum(), 1.0)
    # a stream of 24 minibatches gets close to the batch optimum
    batch = BayesianGaussianMixture(**common, max_iter=500, tol=1e-4).fit(X)
    final_batch = batch._sgd_evaluate(fit_data(X))
    gap = (final_batch - a._sgd_evaluate(fit_data(X))) / abs(final_batch)
    assert gap < 0.02
    assert adjusted_rand_score(a.predict(X), batch.predict(X)) > 0.98


def test_partial_fit_continues_a_batch_fit_and_float32():
    X = blobs(seed=11)
    est = quiet_fit(
        BayesianGaussianMixture(n_components=3, max_iter=5, random_state=0), X
    )
    before = est.means_.copy()
    est.set_params(total_samples=X.shape[0])
    est.partial_fit(X[:100].astype(np.float32))
    assert est.n_batch_iter_ == 2
    assert est.means_.shape == before.shape and not np.array_equal(est.means_, before)


def test_online_warm_start_from_a_batch_fit():
    X = blobs(seed=14)
    est = quiet_fit(BayesianGaussianMixture(n_components=3, max_iter=4), X)
    batch_bound = est._sgd_evaluate(fit_data(X))
    est.set_params(learning_method="online", warm_start=True, batch_size=100)
    quiet_fit(est, X)
    assert est.n_iter_ == 4 and est.n_batch_iter_ == 1 + 4 * 6
    # from a good start the stochastic steps stay close to it
    assert abs(est.lower_bound_ - batch_bound) < 0.01 * abs(batch_bound)


def test_new_parameters_leave_batch_fits_alone():
    est = BayesianGaussianMixture()
    params = est.get_params()
    assert params["learning_method"] == "batch"
    assert params["batch_size"] == 4096
    assert params["learning_offset"] == 1.0
    assert params["learning_decay"] == 0.51
    assert params["total_samples"] == 1e6
    quiet_fit(BayesianGaussianMixture(n_components=2, max_iter=3), blobs())
    fitted = quiet_fit(BayesianGaussianMixture(n_components=2, max_iter=3), blobs())
    assert not hasattr(fitted, "n_batch_iter_")


def test_save_load_round_trip_of_online_and_partial_fits(tmp_path):
    X = blobs(seed=12)
    online = quiet_fit(
        BayesianGaussianMixture(
            n_components=3, learning_method="online", batch_size=200, max_iter=2
        ),
        X,
    )
    streamed = BayesianGaussianMixture(n_components=3, random_state=0)
    for rows in stream(X, 200):
        streamed.partial_fit(rows)
    for est, name in ((online, "online.npz"), (streamed, "stream.npz")):
        est.save(tmp_path / name)
        back = fastvi.load(tmp_path / name)
        assert back.get_params() == est.get_params()
        assert back.n_batch_iter_ == est.n_batch_iter_
        assert_array_equal(back.predict_proba(X), est.predict_proba(X))
        back.partial_fit(X[:50])
        est.partial_fit(X[:50])
        assert_array_equal(back.means_, est.means_)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "params, name",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -5}, "batch_size"),
        ({"learning_decay": 0.5}, "learning_decay"),
        ({"learning_decay": 0.2}, "learning_decay"),
        ({"learning_decay": 1.5}, "learning_decay"),
        ({"learning_offset": -1.0}, "learning_offset"),
        ({"total_samples": 0}, "total_samples"),
        ({"learning_method": "stochastic"}, "learning_method"),
    ],
)
def test_bad_parameters_raise_and_fit_nothing(params, name):
    X = blobs()
    for call in ("fit", "partial_fit"):
        est = BayesianGaussianMixture(n_components=2, **params)
        with pytest.raises(ValueError, match=f"'{name}' parameter"):
            getattr(est, call)(X)
        with pytest.raises(NotFittedError):
            check_is_fitted(est)


def test_partial_fit_with_other_features_leaves_the_model_as_it_was():
    X = blobs(seed=13)
    est = BayesianGaussianMixture(n_components=3, random_state=0)
    est.partial_fit(X[:200])
    est.partial_fit(X[200:400])
    snapshot = {
        k: flat(v) for k, v in vars(est).items() if k.endswith("_") and k in PARAMS
    }
    n_batch_iter = est.n_batch_iter_
    with pytest.raises(ValueError, match="X has 2 features, but .* expecting 3"):
        est.partial_fit(X[:100, :2])
    with pytest.raises(ValueError, match="NaN"):
        bad = X[:100].copy()
        bad[5, 1] = np.nan
        est.partial_fit(bad)
    assert est.n_batch_iter_ == n_batch_iter
    for k, v in snapshot.items():
        assert_array_equal(flat(getattr(est, k)), v)
    est.partial_fit(X[400:])  # still usable
    assert est.n_batch_iter_ == n_batch_iter + 1


def test_first_partial_fit_too_small_fits_nothing():
    est = BayesianGaussianMixture(n_components=5)
    with pytest.raises(ValueError, match="n_components = 5, n_samples = 3"):
        est.partial_fit(blobs()[:3])
    with pytest.raises(NotFittedError):
        check_is_fitted(est)
    assert not hasattr(est, "n_features_in_")


def test_online_fit_of_an_out_of_core_source_is_refused(tmp_path):
    from fastvi.batch.io import NpyRows

    X = blobs(n=300)
    np.save(tmp_path / "x.npy", X)
    source = NpyRows(tmp_path / "x.npy", block_rows=4096)
    est = BayesianGaussianMixture(
        n_components=2, learning_method="online", init_params="random"
    )
    with pytest.raises(ValueError, match="needs the data in memory"):
        est.fit(source)
    with pytest.raises(NotFittedError):
        check_is_fitted(est)


# -------------------------------------------------- scikit-learn's checks
@parametrize_with_checks(
    [
        BayesianGaussianMixture(
            n_components=2, max_iter=5, learning_method="online", batch_size=7
        )
    ],
    expected_failed_checks=lambda est: {},
)
def test_scikit_learn_estimator_checks_online(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
