"""Saved SGVI estimators (BayesianLogisticRegression, BayesianPoissonRegression):
round trips, warm starts from a loaded model, and files that must be refused."""

import json
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from fastvi import BayesianLogisticRegression, BayesianPoissonRegression
from fastvi.persist import ModelFileError, load, read_metadata, save
from fastvi.sgvi import PSISWarning


def _fit(est, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", PSISWarning)
        return est.fit(*args)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((150, 3))
    eta = X @ [1.0, -0.5, 0.25]
    y_bin = (rng.random(150) < 1.0 / (1.0 + np.exp(-eta))).astype(int)
    counts = rng.poisson(np.exp(0.3 + 0.4 * eta)).astype(np.float64)
    return X, y_bin, counts


def _same(a, b, where="value"):
    """Equal bitwise, recursing into tuples (named or not) and dicts."""
    assert type(a) is type(b), where
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), where


def _same_model(a, b):
    assert a.get_params() == b.get_params() or all(
        str(v) == str(b.get_params()[k]) for k, v in a.get_params().items()
    )
    assert set(vars(a)) == set(vars(b))
    for key, value in vars(a).items():
        _same(value, vars(b)[key], key)


_CONFIGS = [
    ("meanfield", "adam"),
    ("fullrank", "adam"),
    ("meanfield", "robbins-monro"),
    ("fullrank", "stan"),
]


@pytest.mark.parametrize(("family", "optimizer"), _CONFIGS)
def test_logistic_round_trip_is_bitwise(tmp_path, data, family, optimizer):
    X, y, _ = data
    est = _fit(
        BayesianLogisticRegression(
            family=family, optimizer=optimizer, max_iter=300, random_state=3
        ),
        X,
        y,
    )
    path = tmp_path / "m.npz"
    assert est.save(path) is est
    back = load(path, expected_class="BayesianLogisticRegression")
    assert type(back) is BayesianLogisticRegression
    _same_model(est, back)
    for method in ("predict", "predict_proba", "decision_function"):
        np.testing.assert_array_equal(getattr(est, method)(X), getattr(back, method)(X))
    draws, back_draws = (m.sample_posterior(7, random_state=1) for m in (est, back))
    assert draws.keys() == back_draws.keys()
    for name in draws:
        np.testing.assert_array_equal(draws[name], back_draws[name])
    # the k-hat of a fit takes its seed from the fit: the same after loading
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSISWarning)
        assert est.diagnose(X, y, n_draws=200) == back.diagnose(X, y, n_draws=200)


@pytest.mark.parametrize(("family", "optimizer"), _CONFIGS[:2])
def test_poisson_round_trip_is_bitwise(tmp_path, data, family, optimizer):
    X, _, counts = data
    est = _fit(
        BayesianPoissonRegression(
            family=family, optimizer=optimizer, max_iter=300, random_state=4
        ),
        X,
        counts,
    )
    est.save(tmp_path / "p.npz")
    back = load(tmp_path / "p.npz")
    _same_model(est, back)
    np.testing.assert_array_equal(est.predict(X), back.predict(X))
    assert est.score(X, counts) == back.score(X, counts)


@pytest.mark.parametrize(("family", "optimizer"), _CONFIGS)
def test_warm_start_from_a_loaded_model_continues_the_saved_fit(
    tmp_path, data, family, optimizer
):
    X, y, _ = data
    params = dict(
        family=family, optimizer=optimizer, max_iter=200, random_state=5, method="sgd"
    )
    est = _fit(BayesianLogisticRegression(**params), X, y)
    est.save(tmp_path / "m.npz")
    back = load(tmp_path / "m.npz")
    for model in (est, back):
        model.set_params(warm_start=True, max_iter=60)
        _fit(model, X, y)
    # both continued from the saved state (optimizer moments, seed, frame)
    assert back.state_.step == est.state_.step > 200
    _same_model(est, back)
    assert back.elbo_history_.shape[0] == est.elbo_history_.shape[0] > 200


def test_string_labels_feature_names_and_unfitted(tmp_path, data):
    pd = pytest.importorskip("pandas")
    X, y, _ = data
    X = pd.DataFrame(X, columns=["a", "b", "c"])
    labels = np.array(["no", "yes"])[y]
    est = _fit(BayesianLogisticRegression(max_iter=200, random_state=0), X, labels)
    est.save(tmp_path / "s.npz")
    back = load(tmp_path / "s.npz")
    assert list(back.classes_) == ["no", "yes"]
    assert list(back.feature_names_in_) == ["a", "b", "c"]
    np.testing.assert_array_equal(est.predict_proba(X), back.predict_proba(X))
    # an unfitted estimator keeps its parameters
    BayesianPoissonRegression(prior_scale=2.5, family="fullrank").save(
        tmp_path / "u.npz"
    )
    unfitted = load(tmp_path / "u.npz")
    assert unfitted.prior_scale == 2.5 and unfitted.family == "fullrank"
    assert not hasattr(unfitted, "state_")


def test_parameters_changed_after_the_fit_still_load(tmp_path, data):
    """The state's layout is that of the fit which made it (``_engine_key``), not
    of parameters set later; a warm start with other settings starts afresh."""
    X, y, _ = data
    est = _fit(BayesianLogisticRegression(max_iter=150, random_state=0), X, y)
    est.set_params(family="fullrank", optimizer="stan")
    est.save(tmp_path / "m.npz")
    back = load(tmp_path / "m.npz")
    _same_model(est, back)
    back.set_params(warm_start=True, max_iter=80)
    _fit(back, X, y)
    assert back.state_.step <= 80  # a fresh state, not the mean-field Adam one


def test_only_the_fitted_model_is_saved(tmp_path, data):
    """No per-fit bookkeeping in the file: exactly the attributes predictions and
    warm starts need."""
    X, _, counts = data
    est = _fit(BayesianPoissonRegression(max_iter=100, random_state=0), X, counts)
    est.save(tmp_path / "p.npz")
    attributes = set(read_metadata(tmp_path / "p.npz")["attributes"])
    assert attributes == {
        "n_features_in_",
        "state_",
        "_engine_key",
        "posterior_mean_",
        "_posterior_chol",
        "posterior_cov_",
        "coef_",
        "coef_std_",
        "intercept_",
        "intercept_std_",
        "elbo_history_",
        "n_iter_",
        "converged_",
        "fit_method_",
        "_predictive_draws",
    }
    assert attributes <= set(est._fitted_schema({}))


# ------------------------------------------------------------ refused files
def _refused(path, match):
    with pytest.raises(ModelFileError, match=match) as info:
        load(path)
    assert str(path) in str(info.value)


@pytest.fixture(scope="module")
def fitted(data):
    X, y, _ = data
    return {
        family: _fit(
            BayesianLogisticRegression(family=family, max_iter=150, random_state=1),
            X,
            y,
        )
        for family in ("meanfield", "fullrank")
    }


def _edited(est, name, value):
    copy = type(est)(**est.get_params())
    copy.__dict__.update(vars(est))
    setattr(copy, name, value)
    return copy


def _state(est, **fields):
    return est.state_._replace(**fields)


def _frame(est, **fields):
    return est.state_._replace(frame=est.state_.frame._replace(**fields))


@pytest.mark.parametrize("family", ["meanfield", "fullrank"])
def test_every_array_must_agree_with_the_parameters(tmp_path, fitted, family):
    est = fitted[family]
    P = est.posterior_mean_.shape[0]
    K = est.state_.params.shape[0]
    m, v, t, c = est.state_.opt_state
    path = tmp_path / "bad.npz"
    cases = [
        ("posterior_mean_", np.zeros(P + 1), "posterior_mean_"),
        ("posterior_mean_", np.full(P, np.nan), "posterior_mean_.*NaN"),
        ("coef_", np.zeros(P), "coef_"),
        ("_posterior_chol", np.zeros((P, P)), "_posterior_chol.*diagonal"),
        ("_posterior_chol", np.eye(P + 1), "_posterior_chol"),
        ("posterior_cov_", np.eye(P)[:, :-1], "posterior_cov_"),
        ("_predictive_draws", np.zeros((10, P)), "_predictive_draws"),
        ("_predictive_draws", np.zeros((200, P - 1)), "_predictive_draws"),
        ("classes_", np.array([0, 1, 2]), "classes_"),
        ("n_features_in_", 4, "D must agree"),
        ("_engine_key", (family, "adam", P + 1), "_engine_key"),
        ("_engine_key", ("diagonal", "adam", P), "_engine_key"),
        ("state_", tuple(est.state_), "state_.*SGVIState"),
        ("state_", _state(est, params=np.zeros(K + 1)), "state_.*params"),
        ("state_", _state(est, params=np.zeros(K).astype(">f8")), "params.*dtype"),
        ("state_", _state(est, opt_state=(m, v[:-1], t, c)), "opt_state"),
        ("state_", _state(est, opt_state=(t,)), "opt_state"),
        ("state_", _state(est, opt_state=(m, v, -1, c)), "opt_state"),
        ("state_", _state(est, key=-3), "key"),
        ("state_", _state(est, lr_scale=0.0), "lr_scale"),
        ("state_", _state(est, lr_scale=np.inf), "lr_scale"),
        ("state_", _frame(est, a=np.zeros(P + 1)), "frame.*a"),
        ("state_", _frame(est, B=np.zeros((P, P + 1))), "frame.*B"),
        ("state_", _frame(est, B=-np.ones(P)), "frame.*B"),
        ("state_", _frame(est, corr=(0.5, 0, P)), "frame.*corr"),
        ("state_", _frame(est, corr=(np.nan, 0, 1)), "frame.*corr"),
    ]
    if family == "meanfield":  # a full-rank frame in a mean-field state
        cases.append(("state_", _frame(est, B=np.eye(P)), "frame.*B"))
        # a key that names another family than the state's layout
        cases.append(("_engine_key", ("fullrank", "adam", P), "params"))
    for name, value, match in cases:
        save(_edited(est, name, value), path)
        _refused(path, match)


def test_a_state_whose_optimizer_disagrees_with_its_key_is_refused(tmp_path, fitted):
    est = fitted["meanfield"]
    for key in [("meanfield", "stan", 4), ("meanfield", "robbins-monro", 4)]:
        save(_edited(est, "_engine_key", key), tmp_path / "k.npz")
        _refused(tmp_path / "k.npz", "opt_state")


def test_hand_made_named_tuples_are_refused(tmp_path, fitted):
    """The metadata can name only fastvi's named tuples, with their own fields."""
    path = tmp_path / "m.npz"
    fitted["meanfield"].save(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("__fastvi__").tobytes())

    def rename(spec):
        spec["class"] = "Posterior"

    def add_field(spec):
        spec["fields"]["evil"] = 1

    def drop_params(spec):
        del spec["fields"]["params"]

    for edit, match in [
        (rename, "unknown named tuple 'Posterior'"),
        (add_field, "bad SGVIState"),
        (drop_params, "bad SGVIState"),
    ]:
        edited = json.loads(json.dumps(meta))
        edit(edited["attributes"]["state_"])
        kept = dict(arrays)
        if edit is drop_params:  # no unreferenced array left behind
            del kept["attr.state_.params"], edited["arrays"]["attr.state_.params"]
        blob = np.frombuffer(json.dumps(edited).encode(), dtype=np.uint8)
        bad = tmp_path / "bad.npz"
        with open(bad, "wb") as fh:
            np.savez(fh, __fastvi__=blob, **kept)
        _refused(bad, match)
