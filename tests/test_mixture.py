"""BayesianGaussianMixture: parity with scikit-learn, invariants, API and bad input."""

import functools
import io
import itertools
import pickle
import re
import warnings
from contextlib import redirect_stdout

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from sklearn import mixture as sk_mixture
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastvi import BayesianGaussianMixture
from fastvi._cavi import Monitor, monitoring

COV_TYPES = ["full", "tied", "diag", "spherical"]
PRIORS = ["dirichlet_process", "dirichlet_distribution"]
INITS = ["kmeans", "k-means++", "random", "random_from_data"]

FITTED = [
    "weights_",
    "means_",
    "covariances_",
    "precisions_",
    "precisions_cholesky_",
    "mean_precision_",
    "degrees_of_freedom_",
    "mean_prior_",
    "covariance_prior_",
]


def blobs(n=240, d=3, k=4, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 4.0, size=(k, d))
    scales = rng.uniform(0.5, 1.5, size=(k, d))
    labels = rng.integers(0, k, size=n)
    return centers[labels] + scales[labels] * rng.normal(size=(n, d)) + offset


def fit_both(X, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = BayesianGaussianMixture(**params).fit(X)
        theirs = sk_mixture.BayesianGaussianMixture(**params).fit(X)
    return ours, theirs


def assert_same_fit(ours, theirs, rtol=1e-6):
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.converged_ == theirs.converged_
    assert_allclose(ours.lower_bounds_, np.ravel(theirs.lower_bounds_), rtol=rtol)
    assert_allclose(ours.lower_bound_, np.ravel(theirs.lower_bound_)[0], rtol=rtol)
    for name in FITTED:
        a, b = getattr(ours, name), getattr(theirs, name)
        scale = np.max(np.abs(b))
        assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=name)
    for a, b in zip(
        np.atleast_1d(ours.weight_concentration_[0]),
        np.atleast_1d(theirs.weight_concentration_[0]),
    ):
        assert_allclose(a, b, rtol=rtol)
    assert ours.weight_concentration_prior_ == theirs.weight_concentration_prior_
    assert ours.mean_precision_prior_ == theirs.mean_precision_prior_
    assert ours.degrees_of_freedom_prior_ == theirs.degrees_of_freedom_prior_


# ----------------------------------------------------------------- parity
@pytest.mark.parametrize("init_params", INITS)
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_same_numbers_as_scikit_learn(covariance_type, prior, init_params):
    X = blobs(offset=20.0)
    params = dict(
        n_components=5,
        covariance_type=covariance_type,
        weight_concentration_prior_type=prior,
        init_params=init_params,
        random_state=0,
        max_iter=40,
    )
    ours, theirs = fit_both(X, **params)
    assert_same_fit(ours, theirs)
    assert_array_equal(ours.predict(X), theirs.predict(X))
    assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-7)
    assert_allclose(ours.score_samples(X), theirs.score_samples(X), rtol=1e-7)
    assert_allclose(ours.score(X), theirs.score(X), rtol=1e-7)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_same_numbers_with_explicit_priors(covariance_type):
    X = blobs(d=2)
    d = X.shape[1]
    cov_prior = {
        "full": np.array([[2.0, 0.3], [0.3, 1.0]]),
        "tied": np.array([[2.0, 0.3], [0.3, 1.0]]),
        "diag": np.array([2.0, 1.0]),
        "spherical": 1.5,
    }[covariance_type]
    params = dict(
        n_components=3,
        covariance_type=covariance_type,
        weight_concentration_prior=0.5,
        mean_precision_prior=0.1,
        mean_prior=np.zeros(d),
        degrees_of_freedom_prior=d + 1.5,
        covariance_prior=cov_prior,
        random_state=1,
        n_init=2,
        tol=1e-5,
        reg_covar=1e-4,
    )
    ours, theirs = fit_both(X, **params)
    assert_same_fit(ours, theirs)


def test_same_numbers_for_float32_input():
    X = blobs().astype(np.float32)
    ours, theirs = fit_both(X, n_components=3, random_state=0, max_iter=20)
    # scikit-learn works in float32 for float32 input; we compute in float64
    assert_allclose(ours.lower_bounds_, np.ravel(theirs.lower_bounds_), rtol=1e-4)
    assert ours.means_.dtype == np.float64


def test_sample_same_draws_as_scikit_learn():
    X = blobs()
    for cov in COV_TYPES:
        ours, theirs = fit_both(X, n_components=3, covariance_type=cov, random_state=3)
        xs_a, ys_a = ours.sample(50)
        xs_b, ys_b = theirs.sample(50)
        assert_array_equal(ys_a, ys_b)
        assert_allclose(xs_a, xs_b, rtol=1e-6, atol=1e-6)


def test_max_iter_zero_only_initializes():
    X = blobs()
    ours, theirs = fit_both(X, n_components=3, max_iter=0, random_state=0, n_init=2)
    assert ours.n_iter_ == 0 and ours.lower_bounds_ == []
    assert ours.lower_bound_ == -np.inf
    assert_allclose(ours.means_, theirs.means_, rtol=1e-10)


def test_fit_predict_equals_fit_then_predict():
    X = blobs()
    est = BayesianGaussianMixture(n_components=4, random_state=0, max_iter=5, tol=0)
    with pytest.warns(ConvergenceWarning):
        labels = est.fit_predict(X)
    assert_array_equal(labels, est.predict(X))


# ------------------------------------------------------------ invariants
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_bound_never_falls_stepping_with_warm_start(covariance_type):
    X = blobs(n=300, offset=5.0, seed=1)
    est = BayesianGaussianMixture(
        n_components=6,
        covariance_type=covariance_type,
        warm_start=True,
        max_iter=1,
        random_state=0,
        tol=0,
    )
    bounds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(40):
            est.fit(X)
            bounds.append(est.lower_bound_)
    steps = np.diff(bounds)
    assert np.all(steps >= -1e-9 * np.abs(bounds[1:])), steps.min()
    assert bounds[-1] > bounds[0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(8, 80),
    d=st.integers(1, 4),
    k=st.integers(1, 5),
    covariance_type=st.sampled_from(COV_TYPES),
    prior=st.sampled_from(PRIORS),
    init_params=st.sampled_from(INITS),
)
def test_bound_never_falls_on_random_problems(
    seed, n, d, k, covariance_type, prior, init_params
):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0) + rng.normal(0, 10.0, d)
    k = min(k, n)
    est = BayesianGaussianMixture(
        n_components=k,
        covariance_type=covariance_type,
        weight_concentration_prior_type=prior,
        init_params=init_params,
        random_state=seed,
        max_iter=30,
        reg_covar=1e-4,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    bounds = np.asarray(est.lower_bounds_)
    assert np.all(np.isfinite(bounds))
    assert np.all(np.diff(bounds) >= -1e-8 * np.abs(bounds[1:]) - 1e-9)


def _responsibility_sums(est):
    if est.weight_concentration_prior_type == "dirichlet_process":
        return est.weight_concentration_[0] - 1.0
    return est.weight_concentration_ - est.weight_concentration_prior_


def _trace_of_precisions(est):
    """tr E[Lambda_k] per component (the precisions are normalized: nu_k W_k)."""
    pc = est.precisions_cholesky_
    if est.covariance_type == "full":
        return np.einsum("kij,kij->k", pc, pc)
    if est.covariance_type == "tied":
        return np.full(est.n_components, np.sum(pc * pc))
    if est.covariance_type == "diag":
        return (pc**2).sum(axis=1)
    return est.means_.shape[1] * pc**2


def _record_round(rounds, est, n_iter, bound, change):
    rounds.append((bound, _responsibility_sums(est), _trace_of_precisions(est)))


@pytest.mark.slow
def test_bound_falls_at_most_by_the_reg_covar_term_on_1000_problems():
    # lower_bounds_ is scikit-learn's bound. The E-step maximizes the ELBO F and the
    # M-step maximizes G = F - H with H = reg_covar / 2 sum_k N_k tr E[Lambda_k]
    # (reg_covar added to each covariance estimate); the bound after round t is
    # max over the globals of G, so from round t to t + 1 it can fall by at most
    # H(N^(t+1), q_t) - H(N^(t), q_t) (the README states this). 'tied' shares
    # one Lambda, and sum_k N_k = N does not change: it never falls.
    # reg_covar = 0 gives an exact coordinate ascent.
    falls_beyond_rounding = 0
    for seed in range(1000):
        rng = np.random.default_rng(seed)
        n, d, k = int(rng.integers(6, 60)), int(rng.integers(1, 4)), 0
        k = int(rng.integers(1, min(n, 5) + 1))
        covariance_type = COV_TYPES[seed % 4]
        reg_covar = 0.0 if seed % 3 == 0 else 1e-6
        # data scales down to 1e-3, where reg_covar is as large as the variances
        scale = 10.0 ** rng.uniform(-3.0, 1.0)
        centers = 3.0 * rng.normal(size=(3, d))
        X = (centers[rng.integers(3, size=n)] + rng.normal(size=(n, d))) * scale
        est = BayesianGaussianMixture(
            n_components=k,
            covariance_type=covariance_type,
            weight_concentration_prior_type=PRIORS[(seed // 4) % 2],
            init_params=INITS[(seed // 8) % len(INITS)],
            reg_covar=reg_covar,
            random_state=seed,
            max_iter=10,
            tol=0.0,
            n_jobs=1,  # tiny problems: waking threads would cost more than the work
        )
        rounds = []
        monitor = Monitor(callback=functools.partial(_record_round, rounds))
        with warnings.catch_warnings(), monitoring(est, monitor):
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X)
        for (before, nk_before, trace), (after, nk_after, _) in itertools.pairwise(
            rounds
        ):
            allowed = 0.0
            if covariance_type != "tied":
                allowed = max(
                    0.5 * reg_covar * np.sum((nk_after - nk_before) * trace), 0
                )
            rounding = 1e-12 * abs(after)
            assert before - after <= allowed + rounding, (seed, before, after, allowed)
            falls_beyond_rounding += before - after > rounding
    # the allowance is exercised: some bounds do fall with reg_covar > 0
    assert falls_beyond_rounding > 0


def test_bitwise_identical_for_any_thread_count():
    # several row chunks so the parallel reduction really is split
    X = blobs(n=9000, d=3, k=5, seed=2)
    fits = []
    for n_jobs in (1, 2, None):
        est = BayesianGaussianMixture(
            n_components=5, random_state=0, max_iter=8, tol=0, n_jobs=n_jobs
        )
        with pytest.warns(ConvergenceWarning):
            est.fit(X)
        fits.append(est)
    for other in fits[1:]:
        assert_array_equal(fits[0].lower_bounds_, other.lower_bounds_)
        for name in FITTED:
            assert_array_equal(getattr(fits[0], name), getattr(other, name))
        assert_array_equal(fits[0].predict_proba(X), other.predict_proba(X))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_thread_setting_restored_after_fit_and_after_error():
    before = numba.get_num_threads()
    X = blobs()
    BayesianGaussianMixture(n_components=2, n_jobs=1, random_state=0).fit(X)
    assert numba.get_num_threads() == before
    bad = BayesianGaussianMixture(n_components=2, n_jobs=1, reg_covar=0.0)
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        bad.fit(np.ones((20, 2)))
    assert numba.get_num_threads() == before


def test_n_init_keeps_the_best_restart():
    X = blobs(k=6, seed=4)
    singles = []
    rs = np.random.RandomState(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        best = BayesianGaussianMixture(n_components=6, n_init=3, random_state=7).fit(X)
        # the three restarts, drawn from the same random stream one after another
        for _ in range(3):
            singles.append(
                BayesianGaussianMixture(n_components=6, random_state=rs).fit(X)
            )
    assert best.lower_bound_ == pytest.approx(max(s.lower_bound_ for s in singles))


def test_warm_start_continues_where_it_left_off():
    X = blobs()
    params = dict(n_components=3, random_state=0, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full = BayesianGaussianMixture(max_iter=6, **params).fit(X)
        warm = BayesianGaussianMixture(max_iter=3, warm_start=True, **params).fit(X)
        warm.fit(X)
    assert_allclose(warm.means_, full.means_, rtol=1e-12)
    assert_allclose(warm.lower_bound_, full.lower_bound_, rtol=1e-12)


def test_convergence_warning_and_verbose_output():
    X = blobs()
    est = BayesianGaussianMixture(
        n_components=3, max_iter=2, tol=0, verbose=2, verbose_interval=1, random_state=0
    )
    out = io.StringIO()
    with (
        redirect_stdout(out),
        pytest.warns(ConvergenceWarning, match="did not converge"),
    ):
        est.fit(X)
    text = out.getvalue()
    assert "Initialization 0" in text
    assert re.search(r"Iteration 2\t time lapse [0-9.]+s\t ll change", text)
    assert "did not converge. time lapse" in text


def test_pickle_round_trip():
    X = blobs()
    est = BayesianGaussianMixture(n_components=3, random_state=0).fit(X)
    again = pickle.loads(pickle.dumps(est))
    assert_array_equal(again.predict_proba(X), est.predict_proba(X))


def test_n_jobs_values():
    X = blobs()
    for n_jobs in (None, 1, -1, -2, 64):
        BayesianGaussianMixture(n_components=2, n_jobs=n_jobs, random_state=0).fit(X)
    with pytest.raises(ValueError, match="n_jobs == 0"):
        BayesianGaussianMixture(n_components=2, n_jobs=0).fit(X)


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "X, message",
    [
        (np.array([[0.0, np.nan], [1.0, 2.0], [2.0, 3.0]]), "Input X contains NaN"),
        (
            np.array([[0.0, np.inf], [1.0, 2.0], [2.0, 3.0]]),
            "Input X contains infinity",
        ),
        (np.arange(10.0), "Expected 2D array, got 1D array"),
        (np.zeros((4, 3, 2)), "Found array with dim 3"),
        (np.array([["a", "b"], ["c", "d"]], dtype=object), "could not convert"),
        (np.ones((3, 2), dtype=complex), "Complex data not supported"),
        (np.zeros((1, 2)), "minimum of 2 is required"),
        (np.zeros((0, 2)), "minimum of 2 is required"),
    ],
)
def test_bad_input_raises_clear_error(X, message):
    est = BayesianGaussianMixture(n_components=1)
    with pytest.raises(ValueError, match=message):
        est.fit(X)
    assert not hasattr(est, "means_")


@pytest.mark.parametrize("scale", [1e155, 1e300])
def test_huge_finite_input_is_reported_as_overflow_not_as_inf(scale):
    X = blobs(n=50, seed=0) * scale
    for method in ("fit", "partial_fit"):
        est = BayesianGaussianMixture(n_components=2, random_state=0)
        with pytest.raises(ValueError, match="X has values as large as .*overflow"):
            getattr(est, method)(X)
        assert not hasattr(est, "means_")
    BayesianGaussianMixture(n_components=2, random_state=0).fit(X / scale * 1e150)


@pytest.mark.parametrize(
    "compute_dtype, scale", [("float64", 1e160), ("float32", 1e20)]
)
@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_predictions_on_rows_too_large_for_the_model_are_refused(
    covariance_type, compute_dtype, scale
):
    X = blobs(n=60, seed=1)
    est = BayesianGaussianMixture(
        n_components=2,
        covariance_type=covariance_type,
        compute_dtype=compute_dtype,
        random_state=0,
    ).fit(X)
    big = X * scale  # finite, but their log-densities are not (-1e320 and less)
    for method in ("predict", "predict_proba", "score_samples", "score"):
        with pytest.raises(
            ValueError,
            match=f"X has values as large as .* the log-densities overflow "
            f"{compute_dtype} in BayesianGaussianMixture.*Rescale X",
        ):
            getattr(est, method)(big)
    # the rows that fit give their numbers as before, those of the model itself
    assert np.isfinite(est.score_samples(X)).all()
    if compute_dtype == "float32":  # the remedy the message names
        est.set_params(compute_dtype="float64")
        assert np.isfinite(est.score_samples(big)).all()


def test_bigger_mean_than_the_log_densities_hold_is_refused():
    est = BayesianGaussianMixture(n_components=2, random_state=0).fit(blobs(n=60))
    far = blobs(n=60)[:1] * 1e153  # a log-density near -1e307: twice that overflows
    assert np.isfinite(est.score_samples(far)).all()
    with pytest.raises(ValueError, match="summed over the rows, overflow float64"):
        est.score(np.repeat(far, 4096, axis=0))


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_predictive_log_density_of_far_rows_is_finite_or_refused(covariance_type):
    # a Student-t's log density falls like log |x|: finite where |x|^2 is not
    X = blobs(n=60, seed=1)
    est = BayesianGaussianMixture(
        n_components=2, covariance_type=covariance_type, random_state=0
    ).fit(X)
    near = est.predictive_log_density(X[:5] * 1e100)
    far = est.predictive_log_density(X[:5] * 1e200)
    assert np.isfinite(far).all()
    # about -(nu + D) log |x| per component: 200 / 100 = 2 times as negative
    assert_allclose(far / near, 2.0, rtol=0.01)
    # beyond: even the rows scaled by the precisions overflow
    small = BayesianGaussianMixture(
        n_components=2, covariance_type=covariance_type, random_state=0
    ).fit(X * 1e-6)
    with pytest.raises(ValueError, match="predictive log-densities overflow"):
        small.predictive_log_density(np.full((2, 3), 1e307))


@pytest.mark.parametrize(
    "change",
    [
        dict(covariance_type="diag"),  # diag (K, D) has tied's (D, D) shape at K = D
        dict(covariance_type="tied", n_components=3),
        dict(covariance_type="spherical"),
        dict(n_components=5),
        dict(n_components=2),
        dict(weight_concentration_prior_type="dirichlet_distribution"),
    ],
)
def test_warm_start_with_other_factors_starts_afresh(change):
    X = blobs(d=3)
    params = dict(n_components=3, random_state=0, max_iter=5, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm = BayesianGaussianMixture(warm_start=True, **params).fit(X)
        warm.set_params(**change).fit(X)
        cold = BayesianGaussianMixture(**{**params, **change}).fit(X)
        # and partial_fit: the first call of the new parameters
        first = BayesianGaussianMixture(**{**params, **change}).partial_fit(X)
        again = BayesianGaussianMixture(**params).fit(X).set_params(**change)
        again.partial_fit(X)
    for name in FITTED:
        assert_array_equal(getattr(warm, name), getattr(cold, name))
    assert warm.n_iter_ == cold.n_iter_
    for name in FITTED:
        assert_array_equal(getattr(again, name), getattr(first, name))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_warm_start_on_other_features_starts_afresh():
    X = blobs(d=3)
    params = dict(n_components=2, random_state=0)
    warm = BayesianGaussianMixture(warm_start=True, **params).fit(X)
    warm.fit(X[:, :2])
    cold = BayesianGaussianMixture(**params).fit(X[:, :2])
    assert_array_equal(warm.means_, cold.means_)
    assert warm.n_features_in_ == 2


def test_nonfinite_bound_names_reg_covar():
    class Broken(BayesianGaussianMixture):
        def _cavi_step(self, data):
            super()._cavi_step(data)
            return float("nan")

    with pytest.raises(ValueError, match="became nan.*increase reg_covar"):
        Broken(n_components=2).fit(blobs(n=50, seed=0))


def test_fewer_samples_than_components():
    with pytest.raises(ValueError, match="Expected n_samples >= n_components"):
        BayesianGaussianMixture(n_components=5).fit(blobs(n=4))


def test_bad_hyperparameters_use_scikit_learn_messages():
    X = blobs()
    with pytest.raises(ValueError, match="'n_components' parameter"):
        BayesianGaussianMixture(n_components=0).fit(X)
    with pytest.raises(ValueError, match="'covariance_type' parameter"):
        BayesianGaussianMixture(covariance_type="banana").fit(X)
    with pytest.raises(ValueError, match="should be greater than 2, but got 2.000"):
        BayesianGaussianMixture(degrees_of_freedom_prior=2.0).fit(X)
    with pytest.raises(ValueError, match="symmetric, positive-definite"):
        BayesianGaussianMixture(covariance_prior=-np.eye(3)).fit(X)
    with pytest.raises(ValueError, match="'diag precision' should be positive"):
        BayesianGaussianMixture(
            covariance_type="diag", covariance_prior=np.array([1.0, -1.0, 1.0])
        ).fit(X)
    with pytest.raises(ValueError, match="should have the shape of"):
        BayesianGaussianMixture(mean_prior=np.zeros(2)).fit(X)


def test_wrong_number_of_features_at_predict():
    est = BayesianGaussianMixture(n_components=2, random_state=0).fit(blobs(d=3))
    with pytest.raises(ValueError, match="X has 2 features"):
        est.predict(blobs(d=2))


def test_predict_before_fit():
    with pytest.raises(NotFittedError):
        BayesianGaussianMixture().predict(blobs())


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_failed_refit_leaves_previous_fit_intact():
    X = blobs()
    est = BayesianGaussianMixture(n_components=2, random_state=0).fit(X)
    means = est.means_.copy()
    est.set_params(reg_covar=0.0, covariance_type="diag")
    X_bad = np.zeros((50, 3))
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        est.fit(X_bad)
    assert_array_equal(est.means_, means)
    assert est.covariances_.shape == (2, 3, 3)  # still the earlier 'full' fit


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_singular_data_rescued_by_reg_covar_or_clear_error(covariance_type):
    # duplicate points and a constant feature
    X = np.repeat(np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]), 10, axis=0)
    est = BayesianGaussianMixture(
        n_components=2, covariance_type=covariance_type, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    for name in FITTED + ["lower_bounds_"]:
        assert np.all(np.isfinite(getattr(est, name))), name
    est.set_params(reg_covar=0.0)
    if covariance_type == "spherical":
        # one variance pooled over features: well defined even without reg_covar
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X)
        assert np.all(np.isfinite(est.covariances_))
    else:
        with pytest.raises(ValueError, match="ill-defined empirical covariance"):
            est.fit(X)


# -------------------------------------------------- scikit-learn's checks
@parametrize_with_checks(
    [BayesianGaussianMixture(n_components=2, max_iter=5, n_init=2)],
    expected_failed_checks=lambda est: {},
)
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
