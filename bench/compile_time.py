"""Cold- and warm-cache first-fit time of fastvi in fresh processes.

Usage: ``python bench/compile_time.py [--repeats 3]``

Each measurement is a new Python process that imports fastvi and fits a small
BayesianGaussianMixture once per covariance type. "cold" uses an empty numba cache
directory (everything compiles); "warm" reuses the directory the cold run filled
(kernels load from disk). Prints the median of the repeats.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, sys, time, warnings
t0 = time.perf_counter()
import numpy as np
import fastvi
t_import = time.perf_counter() - t0
from fastvi import BayesianGaussianMixture
X = np.random.default_rng(0).normal(size=(500, 4))
out = {"import fastvi": t_import}
warnings.simplefilter("ignore")
for cov in ("full", "tied", "diag", "spherical"):
    t0 = time.perf_counter()
    BayesianGaussianMixture(n_components=3, covariance_type=cov, max_iter=2,
                            random_state=0).fit(X)
    out[f"first fit {cov}"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def _child(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    res = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True
    )
    if res.returncode:
        sys.exit(res.stderr)
    return json.loads(res.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = {"cold": [], "warm": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            runs["cold"].append(_child(cache))
            runs["warm"].append(_child(cache))
    keys = list(runs["cold"][0])
    print(f"median of {args.repeats} fresh processes, seconds")
    print(f"| {'step':<20} | {'cold cache':>10} | {'warm cache':>10} |")
    print(f"|{'-' * 22}|{'-' * 12}|{'-' * 12}|")
    for key in keys:
        cold = statistics.median(r[key] for r in runs["cold"])
        warm = statistics.median(r[key] for r in runs["warm"])
        print(f"| {key:<20} | {cold:>10.2f} | {warm:>10.2f} |")


if __name__ == "__main__":
    main()
