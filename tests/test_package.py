"""Package-level promises: a cheap import, the kernel disk cache, the command line."""

import json
import os
import subprocess
import sys

import pytest

import fastvi


def _run(code, env=None):
    full_env = dict(os.environ, **(env or {}))
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        check=True,
        timeout=600,
    )
    return out.stdout


def test_import_loads_no_numba_and_no_scikit_learn():
    code = (
        "import sys, json, fastvi; "
        "print(json.dumps(sorted(m for m in ('numba', 'sklearn', 'scipy') "
        "if m in sys.modules)))"
    )
    assert json.loads(_run(code)) == []


def test_public_names_resolve_lazily():
    assert fastvi.BayesianGaussianMixture.__module__ == "fastvi.mixture"
    assert "BayesianGaussianMixture" in dir(fastvi)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fastvi.nope  # noqa: B018


_FIT_AND_REPORT = """
import json, warnings
import numpy as np
from fastvi import BayesianGaussianMixture
from fastvi.kernels import gmm
X = np.random.default_rng(0).normal(size=(200, 3))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    BayesianGaussianMixture(n_components=2, max_iter=3, random_state=0).fit(X)
stats = gmm.mixture_pass.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values())}))
"""


def test_kernels_are_cached_on_disk_for_the_next_process(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    first = json.loads(_run(_FIT_AND_REPORT, env))
    second = json.loads(_run(_FIT_AND_REPORT, env))
    assert first["misses"] >= 1  # compiled in the first process
    assert second["misses"] == 0 and second["hits"] >= 1  # loaded in the second


def test_command_line_demo_runs_small():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastvi",
            "demo",
            "--n-samples",
            "600",
            "--n-features",
            "2",
            "--true-clusters",
            "2",
            "--n-components",
            "3",
            "--max-iter",
            "30",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    assert "fastvi " in out and "scikit-learn " in out
    assert "same lower bound (1e-6): yes" in out


def test_command_line_reports_errors_in_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "fastvi", "demo", "--n-samples", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("fastvi: error:")
    assert len(out.stderr.strip().splitlines()) == 1
