"""Saved models (fastvi.persist): round trips, atomic writes, refused and broken files."""

import io
import json
import os
import pickle
import subprocess
import sys
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


# ------------------------------------------------- hostile and damaged files (issue 13)
def _npy(value):
    """The bytes of ``value`` as a .npy member."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
    return buf.getvalue()


def _npy_declaring(dtype, shape, payload=b""):
    """A .npy member whose header declares ``shape`` but holds only ``payload``."""
    buf = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + payload


def _write_zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _raw_members(path):
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _meta_text(path):
    with np.load(path, allow_pickle=False) as archive:
        return archive["__fastvi__"].tobytes().decode()


def _with_meta_text(path, text):
    """Rewrite the model file ``path`` with the metadata JSON ``text``."""
    members = _raw_members(path)
    members["__fastvi__.npy"] = _npy(np.frombuffer(text.encode(), np.uint8))
    _write_zip(path, members)


def _refused(path, match):
    with pytest.raises(ModelFileError, match=match) as info:
        load(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_crafted_tied_means_are_refused_before_any_kernel_runs(tmp_path):
    X2d = np.random.default_rng(4).standard_normal((50, 2))
    m = BayesianGaussianMixture(
        n_components=1,
        covariance_type="tied",
        weight_concentration_prior_type="dirichlet_distribution",
    ).fit(X2d)
    m.means_ = np.zeros((3, 2))
    path = tmp_path / "evil.npz"
    m.save(path)
    _refused(path, "means_")
    # the wrapper refuses the same disagreement in a model edited in memory
    with pytest.raises(ValueError, match="disagree"):
        m.predict(np.zeros((20, 2)))


def test_lda_with_narrow_exp_dirichlet_component_is_refused(tmp_path, counts):
    est = LatentDirichletAllocation(n_components=3, max_iter=2, random_state=0)
    est.fit(counts)
    est.exp_dirichlet_component_ = est.exp_dirichlet_component_[:, :-1].copy()
    path = tmp_path / "lda.npz"
    est.save(path)
    _refused(path, "exp_dirichlet_component_")
    with pytest.raises(ValueError, match="topics have shape"):
        est.transform(counts)


def test_every_array_must_agree_with_the_parameters(tmp_path, blobs):
    est = _quiet_fit(BayesianGaussianMixture(n_components=3, max_iter=3), blobs)
    path = tmp_path / "m.npz"
    for name, value, match in [
        ("precisions_cholesky_", np.zeros((3, 2, 2)), "precisions_cholesky_"),
        ("mean_precision_", np.ones(4), "mean_precision_"),
        ("means_", np.full((3, 3), np.nan), "means_.*NaN"),
        ("means_", np.zeros((3, 3), np.int64), "means_.*dtype"),
        ("means_", np.zeros((3, 3)).astype(">f8"), "means_.*dtype"),
        # n_features_in_ is the D every array must agree on
        ("n_features_in_", 4, "D must agree"),
    ]:
        edited = BayesianGaussianMixture(**est.get_params())
        edited.__dict__.update(vars(est))
        setattr(edited, name, value)
        save(edited, path)
        _refused(path, match)


def test_zip_bomb_is_refused_before_its_member_is_read(tmp_path, saved):
    # a deflated member of 1 GiB of zeros: the file is about 1 MB
    members = _raw_members(saved)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            if name != "attr.means_.npy":
                zf.writestr(name, data)
        with zf.open("attr.means_.npy", "w", force_zip64=True) as out:
            out.write(_npy_declaring("<f8", (1 << 27,)))
            chunk = bytes(1 << 20)
            for _ in range(1 << 10):
                out.write(chunk)
    assert bomb.stat().st_size < 2 << 20
    # in a fresh process: the peak memory of the load stays far below 1 GiB
    script = (
        "import resource, sys\n"
        "from fastvi.persist import ModelFileError, load\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    load(sys.argv[1])\n"
        "except ModelFileError as exc:\n"
        "    print(exc)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) // 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(bomb)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert "compressed" in out[0] and str(bomb) in out[0]
    assert int(out[1]) < 50  # MiB


def test_a_member_declaring_more_than_the_file_holds_is_refused(tmp_path, saved):
    meta = json.loads(_meta_text(saved))
    members = _raw_members(saved)
    huge = [1 << 31, 1]  # 16 GiB of float64 declared by a file of a few KB
    meta["arrays"]["attr.means_"]["shape"] = huge
    members["attr.means_.npy"] = _npy_declaring("<f8", tuple(huge), bytes(64))
    members["__fastvi__.npy"] = _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    _write_zip(saved, members)
    _refused(saved, "attr.means_")
    # the central directory itself claims a member far larger than the file
    data = bytearray(saved.read_bytes())
    for offset in _central_records(data, b"attr.means_.npy"):
        # compressed and uncompressed sizes of the record
        data[offset + 20 : offset + 28] = (0xFFFFFFF0).to_bytes(4, "little") * 2
    saved.write_bytes(bytes(data))
    _refused(saved, "declares")


def _central_records(data, name):
    """Offsets of the central directory records of member ``name``."""
    start = 0
    while True:
        start = data.find(b"PK\x01\x02", start)
        if start < 0:
            return
        length = int.from_bytes(data[start + 28 : start + 30], "little")
        if bytes(data[start + 46 : start + 46 + length]) == name:
            yield start
        start += 4


def test_devices_fifos_and_links_to_devices_are_refused(tmp_path):
    _refused("/dev/zero", "not a regular file")
    link = tmp_path / "model.npz"
    os.symlink("/dev/zero", link)
    _refused(link, "not a regular file")
    assert not is_model_file(link) and not is_model_file("/dev/zero")
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    # in a subprocess with a timeout: a regression must not hang the test run
    script = (
        "import sys\n"
        "from fastvi.persist import ModelFileError, is_model_file, load, "
        "read_metadata\n"
        "assert not is_model_file(sys.argv[1])\n"
        "for f in (load, read_metadata):\n"
        "    try:\n"
        "        f(sys.argv[1])\n"
        "    except ModelFileError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 2 and all("not a regular file" in line for line in out)


def test_files_that_are_not_npz_archives_of_npy_members(tmp_path, saved):
    raw = tmp_path / "raw.npz"
    raw.write_text(_meta_text(saved))  # the JSON alone, not in an archive
    _refused(raw, "not a fastvi model file")
    members = _raw_members(saved)
    _write_zip(saved, {**members, "notes.txt": b"hello"})
    _refused(saved, "notes.txt")
    _write_zip(saved, {**members, "attr.means_.npy": b'{"not": "an array"}'})
    _refused(saved, "corrupted")
    _write_zip(saved, {**members, "__fastvi__.npy": _meta_text(saved).encode()})
    _refused(saved, "corrupted")
    _write_zip(saved, members, zipfile.ZIP_DEFLATED)
    _refused(saved, "compressed")


def test_hostile_metadata_json_is_a_clear_error(saved):
    text = _meta_text(saved)
    deep = text.replace('"extra": {}', '"extra": ' + "[" * 100_000 + "]" * 100_000)
    assert deep != text
    _with_meta_text(saved, deep)
    _refused(saved, "nested deeper")
    _with_meta_text(saved, text.replace('"extra": {}', '"extra": ' + "7" * 5000))
    _refused(saved, "corrupted metadata")
    _with_meta_text(saved, text.replace('"n_iter_": 3', '"n_iter_": ' + "7" * 4000))
    _refused(saved, "n_iter_")
    _with_meta_text(saved, text)
    assert load(saved).n_iter_ == 3


@pytest.mark.parametrize(
    "name", ["__dict__", "predict", "__reduce_ex__", "score", "n_init", "stray_"]
)
def test_attribute_names_must_be_declared_fitted_attributes(saved, name):
    meta = json.loads(_meta_text(saved))
    meta["attributes"][name] = {"a": 1} if name == "__dict__" else 5
    _with_meta_text(saved, json.dumps(meta))
    message = _refused(saved, "attribute")
    assert name in message


def test_read_metadata_reads_no_array_data(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 100))
    saved = tmp_path / "lin.npz"
    _quiet_fit(VBLinearRegression(), X, X[:, 0]).save(saved)
    meta = json.loads(_meta_text(saved))
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo("attr.sigma_.npy")  # 80 kB
    # the last byte of the member's data: its CRC no longer matches
    data[info.header_offset + 30 + len(info.filename) + info.file_size - 1] ^= 0xFF
    saved.write_bytes(bytes(data))
    _refused(saved, "corrupted")
    assert read_metadata(saved) == meta
    assert is_model_file(saved)
