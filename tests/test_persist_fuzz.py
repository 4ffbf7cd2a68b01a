"""Fuzzing fastvi.persist.load: mutated model files give a clean error or a model.

For every estimator class (and a checkpoint of ``fit_mixture``) a fixed-seed
generator writes mutants of a saved model: random byte flips and truncations of the
file, and rewritten archives with an array's shape, dtype or values edited (with or
without the metadata following), members renamed, dropped or added, the metadata
JSON edited or its bytes flipped. One subprocess loads every mutant and uses it
(predict / score / transform, and the command line's ``main`` for gmm and lda), so
a crash shows as a signal, naming the last file it started; a small sample also
goes through ``python -m fastvi`` processes. Passing: no signal, no hang, and every
file either refused with ModelFileError or loaded into a model whose methods return
or raise ValueError (exit code 0 or 2 on the command line).
"""

import copy
import io
import json
import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from fastvi.batch.jobs import fit_mixture
from fastvi.conjugate import (
    UnivariateGaussian,
    VBLinearRegression,
    VBLogisticRegression,
)
from fastvi.lda import LatentDirichletAllocation
from fastvi.mixture import BayesianGaussianMixture
from fastvi.sgvi import PSISWarning
from fastvi.sgvi.estimators import (
    BayesianLogisticRegression,
    BayesianPoissonRegression,
)

SEED = 1313
PER_CLASS = 1000
CHECKPOINT_MUTANTS = 300
SGVI_MUTANTS = 1000  # per SGVI class, as for the others
CLI_REFUSED_SAMPLE = 2  # beside one loadable mutant per variant
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fit(est, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", PSISWarning)
        return est.fit(*args)


def _models(tmp):
    """(group, name, path, input .npy, cli) of every saved model variant."""
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((120, 3)) + rng.integers(0, 3, (120, 1)) * 4.0
    counts = rng.poisson(0.8, (40, 25)).astype(np.float64)
    x1 = rng.normal(1.0, 2.0, 60)
    y_lin = X @ [1.0, -0.5, 0.2] + 0.1 * rng.standard_normal(120)
    y_two = X[:, 0] > X[:, 1]
    y_three = np.array(["a", "b", "c"])[rng.integers(0, 3, 120)]
    y_counts = rng.poisson(np.exp(0.1 * X[:, 0])).astype(np.float64)
    inputs = {"X": X[:40], "counts": counts[:15], "x1": x1[:20]}
    for name, value in inputs.items():
        np.save(tmp / f"{name}.npy", value)
    gmm = dict(n_components=3, max_iter=4, random_state=0)
    variants = [
        ("gmm", "full-dp", BayesianGaussianMixture(**gmm), (X,), "X", True),
        (
            "gmm",
            "tied-dd",
            BayesianGaussianMixture(
                covariance_type="tied",
                weight_concentration_prior_type="dirichlet_distribution",
                **gmm,
            ),
            (X,),
            "X",
            True,
        ),
        (
            "gmm",
            "diag-dp",
            BayesianGaussianMixture(covariance_type="diag", **gmm),
            (X,),
            "X",
            True,
        ),
        (
            "gmm",
            "spherical-dd",
            BayesianGaussianMixture(
                covariance_type="spherical",
                weight_concentration_prior_type="dirichlet_distribution",
                **gmm,
            ),
            (X,),
            "X",
            True,
        ),
        (
            "gmm",
            "online",
            BayesianGaussianMixture(learning_method="online", batch_size=40, **gmm),
            (X,),
            "X",
            True,
        ),
        (
            "lda",
            "batch",
            LatentDirichletAllocation(n_components=3, max_iter=3, random_state=0),
            (counts,),
            "counts",
            True,
        ),
        (
            "lda",
            "online-f32",
            LatentDirichletAllocation(
                n_components=3, learning_method="online", max_iter=2, random_state=0
            ),
            (counts.astype(np.float32),),
            "counts",
            True,
        ),
        ("ug", "ug", UnivariateGaussian(), (x1,), "x1", False),
        ("lin", "plain", VBLinearRegression(), (X, y_lin), "X", False),
        ("lin", "ard", VBLinearRegression(ard=True), (X, y_lin), "X", False),
        ("logit", "binary", VBLogisticRegression(), (X, y_two), "X", False),
        ("logit", "ovr", VBLogisticRegression(), (X, y_three), "X", False),
    ]
    sgvi = dict(max_iter=100, random_state=0)
    variants += [
        (
            "sgvi-logit",
            "meanfield-adam",
            BayesianLogisticRegression(**sgvi),
            (X, y_two),
            "X",
            False,
        ),
        (
            "sgvi-logit",
            "fullrank-stan",
            BayesianLogisticRegression(family="fullrank", optimizer="stan", **sgvi),
            (X, y_three == "a"),
            "X",
            False,
        ),
        (
            "sgvi-poisson",
            "fullrank-adam",
            BayesianPoissonRegression(family="fullrank", **sgvi),
            (X, y_counts),
            "X",
            False,
        ),
        (
            "sgvi-poisson",
            "meanfield-rm",
            BayesianPoissonRegression(optimizer="robbins-monro", **sgvi),
            (X, y_counts),
            "X",
            False,
        ),
    ]
    models = []
    for group, name, est, args, data, cli in variants:
        path = tmp / f"{group}-{name}.npz"
        _fit(est, *args).save(path)
        models.append((group, name, path, tmp / f"{data}.npy", cli))
    checkpoint = tmp / "checkpoint.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit_mixture(BayesianGaussianMixture(**gmm), X, checkpoint=checkpoint)
    models.append(("checkpoint", "gmm", checkpoint, tmp / "X.npy", True))
    return models


# ------------------------------------------------------------------ mutations
def _read(path):
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    meta = json.loads(_array(members["__fastvi__.npy"]).tobytes())
    return members, meta


def _array(data):
    return np.load(io.BytesIO(data), allow_pickle=True)


def _npy(value):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, value, allow_pickle=True)
    return buf.getvalue()


def _pack(members, meta_text=None, compression=zipfile.ZIP_STORED):
    members = dict(members)
    if meta_text is not None:
        members["__fastvi__.npy"] = _npy(np.frombuffer(meta_text.encode(), np.uint8))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _edited_array(rng, value):
    """``value`` with its shape, dtype or values changed."""
    how = rng.integers(0, 4)
    if how == 0 and value.ndim:  # shape
        axis = int(rng.integers(0, value.ndim))
        pick = rng.integers(0, 5)
        if pick == 0:
            return np.concatenate([value, value.take([0], axis=axis)], axis=axis)
        if pick == 1:
            return np.delete(value, 0, axis=axis) if value.shape[axis] else value
        if pick == 2:
            return value.T.copy()
        if pick == 3:
            return value.reshape(-1)
        return value[np.newaxis]
    if how == 0:
        return np.stack([value, value])
    if how == 1:  # dtype
        dtypes = ["<f4", "<i8", "<i4", "|u1", "|b1", "<c16", ">f8", "<U3", "|S2"]
        try:
            return value.astype(dtypes[rng.integers(0, len(dtypes))])
        except (ValueError, TypeError, OverflowError):
            return value.astype("<U3")
    if how == 2 and value.size and value.dtype.kind in "fc":  # values
        out = value.copy()
        flat = out.reshape(-1)
        bad = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e308, -1e308, 1e-320]
        for _ in range(int(rng.integers(1, 4))):
            flat[rng.integers(0, flat.size)] = bad[rng.integers(0, len(bad))]
        return out
    if how == 2 and value.size and value.dtype.kind in "iu":
        out = value.copy()
        out.reshape(-1)[rng.integers(0, out.size)] = np.iinfo(out.dtype).max
        return out
    return np.zeros((int(rng.integers(0, 3)),) * int(rng.integers(0, 4)))


_JSON_VALUES = [
    0,
    -1,
    1,
    2,
    7,
    10**6,
    2**63,
    -(2**70),
    0.5,
    -2.5,
    1e308,
    "x",
    "full",
    "tied",
    "diag",
    "spherical",
    "dirichlet_process",
    "online",
    None,
    True,
    False,
    [],
    {},
    [1, 2, 3],
    {"type": "float", "repr": "nan"},
    {"type": "float", "repr": "-inf"},
    {"type": "list", "items": [1.0, "x"]},
    {"type": "tuple", "items": []},
    {"type": "dict", "items": {"a": 1}},
    {"type": "posterior", "class": "NormalGammaPosterior", "fields": {"mu": 1}},
    {"type": "estimator", "class": "VBLogisticRegression", "params": {}},
    {"type": "random_state", "bit_generator": "MT19937", "keys": "none"},
    {"type": "nope"},
]
_NAMES = [
    "__dict__",
    "__class__",
    "predict",
    "_fitted_schema",
    "n_init",
    "stray_",
    "weights_",
    "estimators_",
    "_svi_seed",
    "exact_posterior_",
]


def _edit_json(rng, meta):
    meta = copy.deepcopy(meta)
    where = meta["params"] if rng.random() < 0.3 else meta["attributes"]
    keys = sorted(where)
    pick = rng.integers(0, 4)
    if pick == 0 and keys:
        del where[keys[rng.integers(0, len(keys))]]
    elif pick == 1:
        where[_NAMES[rng.integers(0, len(_NAMES))]] = copy.deepcopy(
            _JSON_VALUES[rng.integers(0, len(_JSON_VALUES))]
        )
    elif keys:
        key = keys[rng.integers(0, len(keys))]
        value = where[key]
        if isinstance(value, dict) and value.get("type") == "array" and pick == 2:
            others = sorted(meta["arrays"])
            value["array"] = others[rng.integers(0, len(others))]
        else:
            where[key] = copy.deepcopy(_JSON_VALUES[rng.integers(0, len(_JSON_VALUES))])
    return json.dumps(meta)


def _mutant(rng, data, members, meta):
    """The bytes of one mutant of the model file ``data``."""
    kind = rng.integers(0, 8)
    keys = sorted(k for k in members if k != "__fastvi__.npy")
    if kind == 0:  # byte flips anywhere
        out = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            out[rng.integers(0, len(out))] ^= int(rng.integers(1, 256))
        return bytes(out)
    if kind == 1:  # truncation
        return data[: int(rng.integers(0, len(data)))]
    if kind in (2, 3) and keys:  # an array edited, the metadata following or not
        key = keys[rng.integers(0, len(keys))]
        value = _edited_array(rng, _array(members[key]))
        edited = dict(members)
        edited[key] = _npy(value)
        new_meta = copy.deepcopy(meta)
        if rng.random() < 0.8:
            new_meta["arrays"][key[:-4]] = {
                "dtype": value.dtype.str,
                "shape": list(value.shape),
            }
        return _pack(edited, json.dumps(new_meta))
    if kind == 4 and keys:  # members renamed, dropped or added
        edited = dict(members)
        new_meta = copy.deepcopy(meta)
        key = keys[rng.integers(0, len(keys))]
        pick = rng.integers(0, 4)
        if pick == 0:
            edited[key[:-4] + "x.npy"] = edited.pop(key)
            if rng.random() < 0.5:
                new_meta["arrays"][key[:-4] + "x"] = new_meta["arrays"].pop(key[:-4])
        elif pick == 1:
            del edited[key]
            new_meta["arrays"].pop(key[:-4], None)
        elif pick == 2:
            edited["attr.extra_.npy"] = _npy(np.zeros(3))
            new_meta["arrays"]["attr.extra_"] = {"dtype": "<f8", "shape": [3]}
            if rng.random() < 0.5:
                new_meta["attributes"]["extra_"] = {
                    "type": "array",
                    "array": "attr.extra_",
                }
        else:
            edited["notes.txt"] = b"not an array"
        return _pack(edited, json.dumps(new_meta))
    if kind == 5:  # metadata JSON edited
        return _pack(members, _edit_json(rng, meta))
    if kind == 6:  # metadata bytes flipped (a valid CRC over them)
        text = bytearray(json.dumps(meta).encode())
        for _ in range(int(rng.integers(1, 4))):
            text[rng.integers(0, len(text))] = int(rng.integers(32, 127))
        return _pack(members, text.decode("latin-1"))
    # compressed, or an object array member
    if rng.random() < 0.5 or not keys:
        return _pack(members, compression=zipfile.ZIP_DEFLATED)
    edited = dict(members)
    edited[keys[0]] = _npy(np.array([{"evil": 1}, None], dtype=object))
    return _pack(edited)


def _write_mutants(models, out_dir):
    """Jobs for the worker: every mutant file, with its input and CLI flag."""
    rng = np.random.default_rng(SEED)
    by_group = {}
    for model in models:
        by_group.setdefault(model[0], []).append(model)
    jobs = []
    for group, variants in by_group.items():
        total = {"checkpoint": CHECKPOINT_MUTANTS, "sgvi-logit": SGVI_MUTANTS}.get(
            group, SGVI_MUTANTS if group == "sgvi-poisson" else PER_CLASS
        )
        for i in range(total):
            _, name, path, data_file, cli = variants[i % len(variants)]
            data = path.read_bytes()
            members, meta = _read(path)
            target = out_dir / f"{group}-{name}-{i:04d}.npz"
            with np.errstate(all="ignore"):  # casts of 1e308 to float32, ...
                target.write_bytes(_mutant(rng, data, members, meta))
            jobs.append(
                {
                    "path": str(target),
                    "input": str(data_file),
                    "cli": cli,
                    "out": str(out_dir / "out.npy"),
                    "group": group,
                }
            )
    return jobs


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_mutated_model_files_never_crash(tmp_path):
    models = _models(tmp_path)
    mutants = tmp_path / "mutants"
    mutants.mkdir()
    jobs = _write_mutants(models, mutants)
    groups = {job["group"] for job in jobs}
    assert groups == {
        "gmm",
        "lda",
        "ug",
        "lin",
        "logit",
        "checkpoint",
        "sgvi-logit",
        "sgvi-poisson",
    }
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.persist_fuzz_worker", str(jobs_file)],
            capture_output=True,
            text=True,
            timeout=900,
            env=_env(),
            cwd=ROOT,
        )
        stdout, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout, rc = (exc.stdout or b"").decode(), "timeout"
    lines = stdout.splitlines()
    started = [int(line.split()[1]) for line in lines if line.startswith("START")]
    if rc != 0:
        culprit = jobs[started[-1]]["path"] if started else None
        pytest.fail(
            f"the worker ended with {rc} (a signal if negative) on {culprit}; "
            f"stderr: {proc.stderr[-2000:] if rc != 'timeout' else ''}"
        )
    done = {}
    for line in lines:
        if line.startswith("DONE"):
            _, index, status = line.split(" ", 2)
            done[int(index)] = status
    assert len(done) == len(jobs)
    bad = {jobs[i]["path"]: s for i, s in done.items() if s.startswith("BAD")}
    (tmp_path / "bad.json").write_text(json.dumps(bad, indent=1))
    assert not bad, f"{len(bad)} files: " + "; ".join(
        f"{k}: {v}" for k, v in list(bad.items())[:10]
    )
    # the fuzzing reaches both outcomes for every group
    for group in groups:
        statuses = {done[i] for i, job in enumerate(jobs) if job["group"] == group}
        assert {"refused", "used"} <= statuses, (group, statuses)

    # a sample through real `python -m fastvi` processes (each start costs seconds):
    # one mutant per variant that loaded into a model, and a few refused ones
    rng = np.random.default_rng(SEED + 1)
    sample = []
    for group, name, _, _, cli in models:
        prefix = str(mutants / f"{group}-{name}-")
        mine = [i for i, job in enumerate(jobs) if job["path"].startswith(prefix)]
        used = [i for i in mine if done[i] == "used"]
        if cli and used:
            sample.append(int(rng.choice(used)))
    refused = [i for i, s in done.items() if s == "refused" and jobs[i]["cli"]]
    sample += [int(i) for i in rng.choice(refused, CLI_REFUSED_SAMPLE, replace=False)]
    for i in sample:
        job = jobs[i]
        for argv in (
            ["predict", job["path"], job["input"], "-o", job["out"]],
            ["score", job["path"], job["input"]],
        ):
            run = subprocess.run(
                [sys.executable, "-m", "fastvi", *argv],
                capture_output=True,
                text=True,
                timeout=120,
                env=_env(),
                cwd=ROOT,
            )
            assert run.returncode in (0, 2), (job["path"], argv[0], run.stderr)
