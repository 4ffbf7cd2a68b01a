"""Saved models (fastvi.persist): round trips, atomic writes, refused and broken files."""

import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from fastvi.conjugate import (
    UnivariateGaussian,
    VBLinearRegression,
    VBLogisticRegression,
)
from fastvi.lda import LatentDirichletAllocation
from fastvi.mixture import BayesianGaussianMixture
from fastvi.persist import (
    FORMAT_VERSION,
    ModelFileError,
    atomic_write,
    is_model_file,
    load,
    read_metadata,
    save,
)


def _quiet_fit(est, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(*args)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 2.0], [0.0, 7.0, -3.0]])
    return centers[rng.integers(0, 3, 400)] + rng.standard_normal((400, 3))


@pytest.fixture(scope="module")
def counts():
    return np.random.default_rng(1).poisson(0.7, size=(60, 40)).astype(np.float64)


def _same_attributes(a, b):
    """Every fitted attribute equal bitwise (arrays, tuples, scalars)."""
    assert set(vars(a)) == set(vars(b))
    for key, value in vars(a).items():
        other = vars(b)[key]
        if isinstance(value, np.random.RandomState):
            sa, sb = value.get_state(), other.get_state()
            assert sa[0] == sb[0] and np.array_equal(sa[1], sb[1]) and sa[2:] == sb[2:]
        elif isinstance(value, (tuple, list)) and value and hasattr(value[0], "shape"):
            assert len(value) == len(other)
            for x, y in zip(value, other):
                np.testing.assert_array_equal(x, y)
        elif isinstance(value, list) and value and hasattr(value[0], "get_params"):
            for x, y in zip(value, other):
                _same_attributes(x, y)
        elif isinstance(value, np.ndarray):
            assert value.dtype == other.dtype and value.shape == other.shape, key
            np.testing.assert_array_equal(value, other)
        else:
            assert type(value) is type(other), key
            assert value == other or (value != value and other != other), key


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("prior_type", ["dirichlet_process", "dirichlet_distribution"])
def test_mixture_round_trip_is_bitwise(tmp_path, blobs, covariance_type, prior_type):
    est = _quiet_fit(
        BayesianGaussianMixture(
            n_components=4,
            covariance_type=covariance_type,
            weight_concentration_prior_type=prior_type,
            max_iter=30,
            random_state=np.random.RandomState(3),
        ),
        blobs,
    )
    path = tmp_path / "model.npz"
    assert est.save(path) is est
    back = load(path)
    assert type(back) is BayesianGaussianMixture
    assert back.get_params().keys() == est.get_params().keys()
    _same_attributes(est, back)
    for method in ("predict", "predict_proba", "score_samples"):
        np.testing.assert_array_equal(
            getattr(est, method)(blobs), getattr(back, method)(blobs)
        )
    # the saved random_state parameter (a RandomState) continues the same stream
    assert np.array_equal(est.sample(5)[0], back.sample(5)[0])


def test_mixture_with_feature_names_and_array_priors(tmp_path, blobs):
    est = _quiet_fit(
        BayesianGaussianMixture(
            n_components=2,
            mean_prior=[0.0, 1.0, 2.0],
            covariance_prior=np.eye(3) * 2.0,
            max_iter=5,
            random_state=0,
        ),
        blobs,
    )
    # what scikit-learn's validation stores for a data frame: an object array of str
    est.feature_names_in_ = np.array(["a", "b", "c"], dtype=object)
    save(est, tmp_path / "m.npz")
    back = load(tmp_path / "m.npz")
    assert back.feature_names_in_.dtype == object
    assert list(back.feature_names_in_) == ["a", "b", "c"]
    assert back.mean_prior == [0.0, 1.0, 2.0]
    np.testing.assert_array_equal(back.covariance_prior, np.eye(3) * 2.0)
    np.testing.assert_array_equal(est.means_, back.means_)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", ["batch", "online"])
def test_lda_round_trip_is_bitwise(tmp_path, counts, dtype, method):
    X = counts.astype(dtype)
    est = LatentDirichletAllocation(
        n_components=3, learning_method=method, max_iter=3, random_state=0
    ).fit(X)
    save(est, tmp_path / "lda.npz")
    back = load(tmp_path / "lda.npz")
    _same_attributes(est, back)
    assert back.components_.dtype == dtype
    np.testing.assert_array_equal(est.transform(X), back.transform(X))
    assert est.score(X) == back.score(X)
    # the saved random stream continues identically: partial_fit on both agrees
    est.partial_fit(X)
    back.partial_fit(X)
    np.testing.assert_array_equal(est.components_, back.components_)


def test_conjugate_models_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, 50)
    X = rng.standard_normal((80, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.1 * rng.standard_normal(80)
    labels = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    three = np.array(["a", "b", "c"])[rng.integers(0, 3, 80)]

    ug = _quiet_fit(UnivariateGaussian(), x)
    save(ug, tmp_path / "ug.npz")
    back = load(tmp_path / "ug.npz")
    assert back.exact_posterior_ == ug.exact_posterior_
    np.testing.assert_array_equal(ug.score_samples(x), back.score_samples(x))

    for ard in (False, True):
        lin = _quiet_fit(VBLinearRegression(ard=ard), X, y)
        save(lin, tmp_path / "lin.npz")
        back = load(tmp_path / "lin.npz")
        for a, b in zip(
            lin.predict(X, return_std=True), back.predict(X, return_std=True)
        ):
            np.testing.assert_array_equal(a, b)

    for target in (labels, three):
        logit = _quiet_fit(VBLogisticRegression(), X, target)
        save(logit, tmp_path / "logit.npz")
        back = load(tmp_path / "logit.npz")
        np.testing.assert_array_equal(logit.predict_proba(X), back.predict_proba(X))
        np.testing.assert_array_equal(logit.predict(X), back.predict(X))


def test_unfitted_estimator_round_trips_its_parameters(tmp_path):
    est = BayesianGaussianMixture(n_components=7, covariance_type="diag", tol=1e-5)
    save(est, tmp_path / "u.npz")
    assert load(tmp_path / "u.npz").get_params() == est.get_params()


def test_format_is_documented_npz_with_json_metadata(tmp_path, blobs):
    est = _quiet_fit(BayesianGaussianMixture(n_components=2, max_iter=3), blobs)
    path = tmp_path / "m.npz"
    save(est, path)
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(archive["__fastvi__"].tobytes())
        names = set(archive.files)
    assert meta["format"] == "fastvi-model"
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["class"] == "BayesianGaussianMixture"
    assert meta["params"]["n_components"] == 2
    assert names == set(meta["arrays"]) | {"__fastvi__"}
    assert meta["arrays"]["attr.means_"] == {"dtype": "<f8", "shape": [2, 3]}
    assert read_metadata(path)["class"] == "BayesianGaussianMixture"
    assert is_model_file(path)


def test_estimators_still_pickle(blobs):
    est = _quiet_fit(BayesianGaussianMixture(n_components=2, max_iter=3), blobs)
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(est.predict_proba(blobs), back.predict_proba(blobs))


def _rewrite(path, members):
    with open(path, "wb") as fh:
        np.savez(fh, **members)


def _members(path):
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


@pytest.fixture
def saved(tmp_path, blobs):
    est = _quiet_fit(BayesianGaussianMixture(n_components=2, max_iter=3), blobs)
    path = tmp_path / "m.npz"
    save(est, path)
    return path


def test_pickled_object_array_is_refused(saved):
    members = _members(saved)
    members["attr.means_"] = np.array([{"evil": 1}, None], dtype=object)
    _rewrite(saved, members)
    with pytest.raises(ModelFileError, match="pickled") as info:
        load(saved)
    assert str(saved) in str(info.value)


def test_truncated_file_is_a_clear_error(saved):
    data = saved.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        saved.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="truncated|corrupted") as info:
            load(saved)
        assert str(saved) in str(info.value)


def test_corrupted_bytes_are_a_clear_error(saved):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo("attr.means_.npy")
    # flip a byte inside the stored array data: the zip CRC no longer matches
    data[info.header_offset + 30 + len(info.filename) + info.extra.__len__() + 140] ^= (
        0xFF
    )
    saved.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupted") as err:
        load(saved)
    assert str(saved) in str(err.value)


def test_metadata_mismatch_and_version_and_class(saved):
    members = _members(saved)
    meta = json.loads(members["__fastvi__"].tobytes())

    def write(m, **arrays):
        blob = np.frombuffer(json.dumps(m).encode(), np.uint8)
        _rewrite(saved, {**members, **arrays, "__fastvi__": blob})

    write(dict(meta, format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match="format version"):
        load(saved)
    write(dict(meta, **{"class": "Pipeline"}))
    with pytest.raises(ModelFileError, match="unsupported class 'Pipeline'"):
        load(saved)
    write(meta, **{"attr.means_": np.zeros((5, 5))})
    with pytest.raises(ModelFileError, match="attr.means_"):
        load(saved)
    write(meta, extra_member=np.zeros(2))
    with pytest.raises(ModelFileError, match="do not match"):
        load(saved)
    write(meta)
    with pytest.raises(ModelFileError, match="LatentDirichletAllocation"):
        load(saved, expected_class="LatentDirichletAllocation")
    assert isinstance(load(saved, expected_class="BayesianGaussianMixture"), object)


def test_not_a_model_file(tmp_path):
    missing = tmp_path / "none.npz"
    with pytest.raises(ModelFileError, match="no such file"):
        load(missing)
    data = tmp_path / "data.npz"
    np.savez(data, X=np.zeros((3, 2)))
    with pytest.raises(ModelFileError, match="not a fastvi model file"):
        load(data)
    text = tmp_path / "x.csv"
    text.write_text("1,2\n")
    with pytest.raises(ModelFileError, match="not a fastvi model file"):
        load(text)
    assert not is_model_file(data) and not is_model_file(text)


def test_unsupported_values_are_refused_on_save(tmp_path, blobs):
    est = BayesianGaussianMixture(n_components=2)
    est.means_ = np.array([object(), object()], dtype=object)
    with pytest.raises(TypeError, match="object arrays"):
        save(est, tmp_path / "x.npz")
    assert not os.path.exists(tmp_path / "x.npz")
    with pytest.raises(TypeError, match="not a fastvi model"):
        save(object(), tmp_path / "x.npz")


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write(b"new, partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]  # no temporary file left behind
    with atomic_write(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new"
