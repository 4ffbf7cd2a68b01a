"""Worker of tests/test_persist_fuzz.py: load and use many model files, one line each.

``python -m tests.persist_fuzz_worker JOBS.json`` reads a list of jobs
``{"path", "input", "cli"}`` and for each prints ``START i`` before touching the file
and ``DONE i STATUS`` after: ``refused`` (ModelFileError), ``used`` (loaded, and every
method ran or raised ValueError; a warm-start ``fit`` may also raise
FloatingPointError), or ``BAD ...`` (any other exception). A crash (a
signal) leaves a ``START`` line without its ``DONE``: the test names that file.
"""

import contextlib
import io
import json
import sys
import warnings

import numpy as np

from fastvi.__main__ import main as cli_main
from fastvi.persist import ModelFileError, load

_METHODS = {
    "BayesianGaussianMixture": ("predict", "predict_proba", "score_samples", "score"),
    "LatentDirichletAllocation": ("transform", "score", "perplexity"),
    "UnivariateGaussian": ("score_samples", "score"),
    "VBLinearRegression": ("predict",),
    "VBLogisticRegression": ("predict", "predict_proba", "decision_function"),
    "BayesianLogisticRegression": (
        "predict",
        "predict_proba",
        "decision_function",
        "sample_posterior",
        "diagnose",
        "fit",
    ),
    "BayesianPoissonRegression": ("predict", "sample_posterior", "diagnose", "fit"),
}


def _call(est, method, X):
    if method == "sample_posterior":
        return est.sample_posterior(5, random_state=0)
    if method in ("diagnose", "fit"):  # a warm start from the loaded state
        y = (X[:, 0] > 0).astype(np.float64)
        if method == "fit":
            est.set_params(warm_start=True, max_iter=5)
            return est.fit(X, y)
        return est.diagnose(X, y, n_draws=20)
    return getattr(est, method)(X)


def _use(path, X):
    try:
        est = load(path)
    except ModelFileError:
        return "refused"
    for method in _METHODS[type(est).__name__]:
        try:
            _call(est, method, X)
        except ValueError:
            pass
        except FloatingPointError:
            # a warm start from finite but absurd saved values: the engine's
            # clear error naming the parameter whose steps stay non-finite
            if method != "fit":
                raise
    return "used"


def _cli(path, data, out):
    quiet = io.StringIO()
    codes = []
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        for argv in (
            ["predict", path, data, "-o", out],
            ["score", path, data],
            ["info", path],
        ):
            codes.append(cli_main(argv))
    bad = [c for c in codes if c not in (0, 2)]
    return f"BAD cli exit codes {codes}" if bad else None


def main(jobs_file):
    warnings.simplefilter("ignore")
    with open(jobs_file) as fh:
        jobs = json.load(fh)
    inputs = {}
    for i, job in enumerate(jobs):
        print(f"START {i}", flush=True)
        if job["input"] not in inputs:
            inputs[job["input"]] = np.load(job["input"])
        try:
            status = _use(job["path"], inputs[job["input"]])
            if job["cli"]:
                status = _cli(job["path"], job["input"], job["out"]) or status
        except Exception as exc:  # noqa: BLE001 - reported, not swallowed
            status = f"BAD {type(exc).__name__}: {exc}"
        print(f"DONE {i} {' '.join(status.split())}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
