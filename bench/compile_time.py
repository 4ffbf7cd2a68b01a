"""Cold- and warm-cache cost of each model's first fit, in fresh processes.

Usage: ``python bench/compile_time.py [--repeats 3] [--json OUT] [MODEL ...]``

For every model, one new Python process per measurement imports fastvi and fits the
model once on small generated data. "cold" runs with an empty kernel cache
(``FASTVI_CACHE_DIR`` and ``NUMBA_CACHE_DIR`` pointing at a new directory: every
kernel the fit uses compiles), "warm" in a second process that reuses the directory
the cold run filled (kernels load from disk). The figure of merit is CPU time (user
+ system, all threads, ``resource.getrusage``), which is steadier than wall time on
a shared machine; wall time is printed beside it. "beyond warm" is cold minus warm:
what compiling costs a user once.

The budget (issue 12): at most 6 s of CPU beyond warm for the first
BayesianGaussianMixture fit (20,000 x 8, 'full', 12 components) and at most 8 s for
every other model. The table says which rows meet it. ``MODEL[variant]`` rows fit
the same class with other parameters (``BayesianGaussianMixture[float32]``: the
float32 computation, whose kernels are separate specializations compiled only when a
fit asks for them); they have their model's budget.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

# the fit each child runs, by model name; the data are generated in the child
FITS = {
    "BayesianGaussianMixture": (
        "X = rng.normal(size=(20000, 8))\n"
        "BayesianGaussianMixture(n_components=12, covariance_type='full',"
        " random_state=0).fit(X)"
    ),
    "BayesianGaussianMixture[float32]": (
        "X = rng.normal(size=(20000, 8)).astype(np.float32)\n"
        "BayesianGaussianMixture(n_components=12, covariance_type='full',"
        " random_state=0, compute_dtype='float32').fit(X)"
    ),
    "LatentDirichletAllocation": (
        "X = rng.poisson(0.3, size=(2000, 500)).astype(float)\n"
        "LatentDirichletAllocation(n_components=10, max_iter=5,"
        " random_state=0).fit(X)"
    ),
    "UnivariateGaussian": "UnivariateGaussian().fit(rng.normal(size=1000))",
    "VBLinearRegression": (
        "X = rng.normal(size=(2000, 10))\n"
        "VBLinearRegression().fit(X, X @ rng.normal(size=10) + rng.normal(size=2000))"
    ),
    "VBLogisticRegression": (
        "X = rng.normal(size=(2000, 10))\n"
        "VBLogisticRegression().fit(X, (X[:, 0] + rng.normal(size=2000)) > 0)"
    ),
    "BayesianLogisticRegression": (
        "X = rng.normal(size=(2000, 10))\n"
        "BayesianLogisticRegression(random_state=0).fit("
        "X, (X[:, 0] + rng.normal(size=2000)) > 0)"
    ),
    "BayesianPoissonRegression": (
        "X = rng.normal(size=(2000, 5)) * 0.3\n"
        "BayesianPoissonRegression(random_state=0).fit("
        "X, rng.poisson(np.exp(X[:, 0])))"
    ),
}
BUDGET = {"BayesianGaussianMixture": 6.0, "BayesianGaussianMixture[float32]": 6.0}
DEFAULT_BUDGET = 8.0

_CHILD = r"""
import json, resource, sys, time, warnings
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0, w0 = cpu(), time.perf_counter()
import numpy as np
import fastvi
from fastvi import {model}
rng = np.random.default_rng(0)
warnings.simplefilter("ignore")
{fit}
print(json.dumps({{"cpu": cpu() - c0, "wall": time.perf_counter() - w0}}))
"""


def _child(model, cache_dir):
    env = dict(os.environ, FASTVI_CACHE_DIR=cache_dir, NUMBA_CACHE_DIR=cache_dir)
    code = _CHILD.format(model=model.split("[")[0], fit=FITS[model])
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    if res.returncode:
        sys.exit(f"{model}: the child failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(models, repeats):
    """``{model: {"cold": [...], "warm": [...]}}`` of child results."""
    runs = {m: {"cold": [], "warm": []} for m in models}
    for _ in range(repeats):
        for model in models:
            with tempfile.TemporaryDirectory(prefix="fastvi-cache-") as cache:
                runs[model]["cold"].append(_child(model, cache))
                runs[model]["warm"].append(_child(model, cache))
    return runs


def table(runs):
    lines = [
        "| model | cold CPU s | warm CPU s | beyond warm (budget) | cold wall s |",
        "|---|--:|--:|--:|--:|",
    ]
    for model, r in runs.items():
        cold = statistics.median(x["cpu"] for x in r["cold"])
        warm = statistics.median(x["cpu"] for x in r["warm"])
        wall = statistics.median(x["wall"] for x in r["cold"])
        budget = BUDGET.get(model, DEFAULT_BUDGET)
        mark = "ok" if cold - warm <= budget else "OVER"
        lines.append(
            f"| {model} | {cold:.1f} | {warm:.1f} | {cold - warm:.1f} "
            f"(<= {budget:g}: {mark}) | {wall:.1f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="default: all of " + ", ".join(FITS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the raw measurements here")
    args = parser.parse_args()
    models = args.models or list(FITS)
    unknown = [m for m in models if m not in FITS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    runs = measure(models, args.repeats)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(runs, fh, indent=1)
    print(f"median of {args.repeats} fresh processes per cell; CPU = user + system")
    print(table(runs))


if __name__ == "__main__":
    main()
