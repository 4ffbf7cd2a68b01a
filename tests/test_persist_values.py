"""Saved models whose values are finite but invalid are refused when loaded.

A hand-made file can hold values no fit makes: a NaN bound, a negative Dirichlet
prior, a Wishart with too few degrees of freedom, a covariance that is not positive
definite, a Cholesky factor that is not triangular, an integer parameter beyond
int64. Each must be a ModelFileError naming the attribute (or parameter) when the
file is loaded, before any kernel sees it; every model a fit makes still loads.
"""

import copy
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning

from fastvi.batch.jobs import fit_cavi, fit_lda, fit_mixture
from fastvi.conjugate import (
    UnivariateGaussian,
    VBLinearRegression,
    VBLogisticRegression,
)
from fastvi.lda import LatentDirichletAllocation
from fastvi.mixture import BayesianGaussianMixture
from fastvi.persist import ModelFileError, load
from fastvi.sgvi import PSISWarning
from fastvi.sgvi.estimators import (
    BayesianLogisticRegression,
    BayesianPoissonRegression,
)

BIG = 10**30  # an integer that no int64 (nor a C long) holds


def _fit(est, *args, method="fit"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", PSISWarning)
        return getattr(est, method)(*args)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((120, 3)) + rng.integers(0, 3, (120, 1)) * 4.0
    return {
        "X": X,
        "counts": rng.poisson(0.8, (40, 25)).astype(np.float64),
        "x1": rng.normal(1.0, 2.0, 60),
        "y_lin": X @ [1.0, -0.5, 0.2] + 0.1 * rng.standard_normal(120),
        "y_two": X[:, 0] > X[:, 1],
        "y_three": np.array(["a", "b", "c"])[rng.integers(0, 3, 120)],
        "y_counts": rng.poisson(np.exp(0.1 * X[:, 0])).astype(np.float64),
    }


def _variants(data, tmp_path):
    """(name, fitted estimator or saved checkpoint path) of every kind of model."""
    X, counts = data["X"], data["counts"]
    gmm = dict(n_components=3, max_iter=4, random_state=0)
    constant = np.column_stack([X, np.full(X.shape[0], 2.5)])  # a singular prior
    sgvi = dict(max_iter=100, random_state=0)
    out = []
    for cov in ("full", "tied", "diag", "spherical"):
        for prior in ("dirichlet_process", "dirichlet_distribution"):
            est = BayesianGaussianMixture(
                covariance_type=cov, weight_concentration_prior_type=prior, **gmm
            )
            out.append((f"gmm-{cov}-{prior}", _fit(est, X)))
    out += [
        (
            "gmm-online",
            _fit(BayesianGaussianMixture(learning_method="online", **gmm), X),
        ),
        ("gmm-partial", _fit(BayesianGaussianMixture(**gmm), X, method="partial_fit")),
        ("gmm-max_iter-0", _fit(BayesianGaussianMixture(**{**gmm, "max_iter": 0}), X)),
        ("gmm-constant-feature", _fit(BayesianGaussianMixture(**gmm), constant)),
        (
            "gmm-tied-constant-feature",
            _fit(BayesianGaussianMixture(covariance_type="tied", **gmm), constant),
        ),
        (
            "gmm-float32",
            _fit(BayesianGaussianMixture(compute_dtype="float32", **gmm), X),
        ),
    ]
    lda = dict(n_components=3, max_iter=3, random_state=0)
    for method in ("batch", "online", "scvb0"):
        for dtype in (np.float64, np.float32):
            est = LatentDirichletAllocation(learning_method=method, **lda)
            out.append(
                (f"lda-{method}-{dtype.__name__}", est.fit(counts.astype(dtype)))
            )
    out.append(("lda-partial", LatentDirichletAllocation(**lda).partial_fit(counts)))
    out += [
        ("ug", _fit(UnivariateGaussian(), data["x1"])),
        ("ug-max_iter-0", _fit(UnivariateGaussian(max_iter=0), data["x1"])),
    ]
    for ard in (False, True):
        for fi in (False, True):
            est = VBLinearRegression(ard=ard, fit_intercept=fi)
            out.append((f"lin-ard{ard}-fi{fi}", _fit(est, X, data["y_lin"])))
    out.append(
        ("lin-max_iter-0", _fit(VBLinearRegression(max_iter=0), X, data["y_lin"]))
    )
    for target in ("y_two", "y_three"):
        for fi in (False, True):
            est = VBLogisticRegression(fit_intercept=fi)
            out.append((f"logit-{target}-fi{fi}", _fit(est, X, data[target])))
        est = VBLogisticRegression(max_iter=0)
        out.append((f"logit-{target}-max_iter-0", _fit(est, X, data[target])))
    for family in ("meanfield", "fullrank"):
        for method in ("auto", "sgd"):
            est = BayesianLogisticRegression(family=family, method=method, **sgvi)
            out.append((f"sgvi-logit-{family}-{method}", _fit(est, X, data["y_two"])))
        est = BayesianPoissonRegression(family=family, fit_intercept=False, **sgvi)
        out.append((f"sgvi-poisson-{family}", _fit(est, X, data["y_counts"])))
    for name, est, fit, args in [
        ("checkpoint-gmm", BayesianGaussianMixture(**gmm), fit_mixture, (X,)),
        ("checkpoint-lda", LatentDirichletAllocation(**lda), fit_lda, (counts,)),
        ("checkpoint-ug", UnivariateGaussian(), fit_cavi, (data["x1"],)),
        (
            "checkpoint-logit",
            VBLogisticRegression(max_iter=2),
            fit_cavi,
            (X, data["y_two"]),
        ),
    ]:
        path = tmp_path / f"{name}.npz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit(est, *args, checkpoint=path)
        out.append((name, path))
    return out


def test_every_fitted_model_still_loads(tmp_path, data):
    """Untampered models of every class and variant load (the checks below refuse
    nothing a fit makes: -inf bounds before the first round, singular covariance
    priors, float32 topics, checkpoints without derived attributes)."""
    for name, est in _variants(data, tmp_path):
        if isinstance(est, BaseEstimator):
            path = tmp_path / f"{name}.npz"
            est.save(path)
        else:  # a checkpoint's path
            path = est
        assert isinstance(load(path), BaseEstimator), name


# ---------------------------------------------------------------- tampered files
@pytest.fixture(scope="module")
def models(data):
    X = data["X"]
    gmm = dict(n_components=3, max_iter=5, random_state=0)
    return {
        "gmm": _fit(BayesianGaussianMixture(**gmm), X),
        "gmm-tied": _fit(BayesianGaussianMixture(covariance_type="tied", **gmm), X),
        "gmm-online": _fit(
            BayesianGaussianMixture(learning_method="online", batch_size=40, **gmm), X
        ),
        "lda": LatentDirichletAllocation(
            n_components=3, max_iter=2, random_state=0
        ).fit(data["counts"]),
        "ug": _fit(UnivariateGaussian(), data["x1"]),
        "lin": _fit(VBLinearRegression(), X, data["y_lin"]),
        "logit": _fit(VBLogisticRegression(), X, data["y_two"]),
        "logit-ovr": _fit(VBLogisticRegression(), X, data["y_three"]),
        "sgvi": _fit(
            BayesianLogisticRegression(family="fullrank", max_iter=100, random_state=0),
            X,
            data["y_two"],
        ),
    }


def _set(name, value):
    return lambda est: setattr(est, name, value(est) if callable(value) else value)


def _drop(name):
    return lambda est: delattr(est, name)


def _params(**params):
    return lambda est: est.set_params(**params)


def _edit(name, index, value):
    """A copy of the array attribute ``name`` with ``[index]`` set to ``value``."""

    def edit(est):
        array = np.array(getattr(est, name), dtype=np.float64)
        array[index] = value(array[index]) if callable(value) else value
        setattr(est, name, array)

    return edit


def _minus_identity(est, name):
    return -np.broadcast_to(np.eye(est.n_features_in_), getattr(est, name).shape)


NAN, INF = float("nan"), float("inf")

CASES = [
    # 1: bounds are finite (or -inf before the first round), histories finite
    ("gmm", "lower_bound_", _set("lower_bound_", NAN)),
    ("gmm", "lower_bound_", _set("lower_bound_", INF)),
    ("gmm", "lower_bounds_", _set("lower_bounds_", [1.0, NAN])),
    ("gmm-online", "lower_bounds_", _set("lower_bounds_", [-INF])),
    ("ug", "lower_bound_", _set("lower_bound_", NAN)),
    ("lin", "lower_bounds_", _set("lower_bounds_", [1.0, INF])),
    ("logit", "lower_bound_", _set("lower_bound_", NAN)),
    ("logit-ovr", "lower_bound_", _edit("lower_bound_", 1, NAN)),
    ("logit-ovr", "lower_bounds_", _set("lower_bounds_", [[1.0], [NAN], [2.0]])),
    ("lda", "perplexity_history_", _set("perplexity_history_", [NAN])),
    ("lda", "bound_", _set("bound_", INF)),
    # 2: Dirichlet parameters are positive
    ("lda", "doc_topic_prior_", _set("doc_topic_prior_", -1.0)),
    ("lda", "doc_topic_prior_", _set("doc_topic_prior_", 0.0)),
    ("lda", "topic_word_prior_", _set("topic_word_prior_", -1.0)),
    ("lda", "exp_dirichlet_component_", _edit("exp_dirichlet_component_", 0, -1.0)),
    ("lda", "n_batch_iter_", _set("n_batch_iter_", 0)),
    # 3: a Wishart's degrees of freedom exceed D - 1
    ("gmm", "degrees_of_freedom_", _set("degrees_of_freedom_", np.full(3, 1e-300))),
    ("gmm", "degrees_of_freedom_", _edit("degrees_of_freedom_", 0, 2.0)),
    ("gmm-tied", "degrees_of_freedom_", _set("degrees_of_freedom_", 2.0)),
    ("gmm", "degrees_of_freedom_prior_", _set("degrees_of_freedom_prior_", 1e-300)),
    ("gmm-tied", "degrees_of_freedom_prior_", _set("degrees_of_freedom_prior_", 1.5)),
    # 4: covariances positive definite, Cholesky factors triangular
    ("gmm", "covariances_", _edit("covariances_", 1, lambda c: -c)),
    ("gmm", "covariances_", _edit("covariances_", (0, 0, 1), lambda v: v + 1.0)),
    ("gmm", "precisions_cholesky_", _edit("precisions_cholesky_", (0, 2, 0), 5.0)),
    ("gmm-tied", "covariances_", _set("covariances_", lambda e: -e.covariances_)),
    ("gmm-tied", "precisions_cholesky_", _edit("precisions_cholesky_", (1, 0), 1.0)),
    ("gmm", "covariance_prior_", _set("covariance_prior_", lambda e: -np.eye(3))),
    ("lin", "sigma_", _set("sigma_", lambda e: _minus_identity(e, "sigma_"))),
    ("logit", "sigma_", _set("sigma_", lambda e: -np.eye(4))),
    ("logit", "_cov", _set("_cov", lambda e: -np.eye(4))),
    ("logit", "_factor", _edit("_factor", (3, 0), 1.0)),
    ("logit-ovr", "sigma_", _edit("sigma_", 2, lambda s: -s)),
    ("sgvi", "posterior_cov_", _set("posterior_cov_", lambda e: -np.eye(4))),
    ("sgvi", "_posterior_chol", _edit("_posterior_chol", (0, 3), 1.0)),
    # 5: what a fitted estimator always has is required
    ("logit-ovr", "lambda_shape_", _drop("lambda_shape_")),
    ("logit-ovr", "lambda_rate_", _drop("lambda_rate_")),
    ("logit-ovr", "lower_bounds_", _drop("lower_bounds_")),
    ("logit", "_proposal", _drop("_proposal")),
    ("logit", "lambda_", _drop("lambda_")),
    ("lin", "_log_det_sigma", _drop("_log_det_sigma")),
    ("lin", "alpha_", _drop("alpha_")),
    ("ug", "n_iter_", _drop("n_iter_")),
    ("sgvi", "fit_method_", _drop("fit_method_")),
    # other invariants the predictions rely on
    ("lin", "alpha_shape_", _set("alpha_shape_", 0.75)),  # E[1/alpha] needs a > 1
    ("gmm-online", "n_batch_iter_", _set("n_batch_iter_", 0)),
    (
        "ug",
        "exact_posterior_",
        _set("exact_posterior_", lambda e: e.exact_posterior_._replace(b=-1.0)),
    ),
    # 6: integer parameters fit int64
    ("lda", "max_doc_update_iter", _params(max_doc_update_iter=BIG)),
    ("lda", "evaluate_every", _params(evaluate_every=-BIG)),
    ("lda", "n_jobs", _params(n_jobs=BIG)),
    ("gmm", "max_iter", _params(max_iter=BIG)),
    ("gmm-online", "batch_size", _params(batch_size=BIG)),
    ("lin", "max_iter", _params(max_iter=BIG)),
    ("sgvi", "n_samples", _params(n_samples=BIG)),
]


@pytest.mark.parametrize(
    ("model", "attribute", "tamper"),
    CASES,
    ids=[f"{m}-{a}-{i}" for i, (m, a, _) in enumerate(CASES)],
)
def test_finite_but_invalid_values_are_refused(
    tmp_path, models, model, attribute, tamper
):
    est = copy.deepcopy(models[model])
    tamper(est)
    path = tmp_path / "tampered.npz"
    est.save(path)
    with pytest.raises(ModelFileError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    assert repr(attribute) in message, message


def test_messages_say_what_is_wrong(tmp_path, models):
    path = tmp_path / "m.npz"
    cases = [
        (
            "gmm",
            _set("degrees_of_freedom_", np.full(3, 1e-300)),
            "'degrees_of_freedom_' holds values not above 2 .D - 1 = 3 - 1.",
        ),
        ("lda", _set("doc_topic_prior_", -1.0), "'doc_topic_prior_' is -1.0, expected"),
        ("gmm", _edit("covariances_", 1, lambda c: -c), "not positive definite"),
        ("gmm", _edit("precisions_cholesky_", (0, 2, 0), 5.0), "not upper triangular"),
        (
            "logit-ovr",
            _drop("lambda_shape_"),
            r"missing attributes \['lambda_shape_'\]",
        ),
        ("gmm", _set("lower_bound_", NAN), "'lower_bound_' is nan"),
        (
            "lda",
            _params(max_doc_update_iter=BIG),
            "'max_doc_update_iter' parameter .* range \\[0, 9223372036854775807\\]",
        ),
    ]
    for model, tamper, match in cases:
        est = copy.deepcopy(models[model])
        tamper(est)
        est.save(path)
        with pytest.raises(ModelFileError, match=match):
            load(path)


@pytest.mark.parametrize(
    "est",
    [
        LatentDirichletAllocation(max_doc_update_iter=BIG),
        LatentDirichletAllocation(batch_size=2**63),
        BayesianGaussianMixture(n_components=BIG),
        VBLogisticRegression(max_iter=BIG),
        BayesianPoissonRegression(window=BIG, max_iter=50),
    ],
    ids=lambda est: type(est).__name__,
)
def test_fit_refuses_integer_parameters_beyond_int64(data, est):
    """The constraints that refuse them at load refuse them at fit: a clear
    ValueError naming the parameter, not an OverflowError from a kernel."""
    if isinstance(est, LatentDirichletAllocation):
        args = (data["counts"],)
    elif isinstance(est, BayesianGaussianMixture):
        args = (data["X"],)
    elif isinstance(est, BayesianPoissonRegression):
        args = (data["X"], data["y_counts"])
    else:
        args = (data["X"], data["y_two"])
    with pytest.raises(ValueError, match="parameter of .* 9223372036854775807"):
        est.fit(*args)


def test_a_prior_scikit_learn_calls_symmetric_loads(tmp_path):
    # np.allclose(A, A.T) is scikit-learn's test of a symmetric covariance_prior;
    # the fitted covariances inherit its asymmetry (2e-6 here)
    from fastvi import load

    X = np.random.default_rng(0).standard_normal((200, 2)) * 1e-3
    for prior in ([[1.0, 0.5 + 4e-6], [0.5, 1.0]], [[1e-6, 9e-9], [0.0, 1e-6]]):
        est = BayesianGaussianMixture(
            n_components=2, covariance_prior=np.array(prior), random_state=0
        ).fit(X)
        est.save(tmp_path / "m.npz")
        np.testing.assert_array_equal(
            load(tmp_path / "m.npz").covariances_, est.covariances_
        )
