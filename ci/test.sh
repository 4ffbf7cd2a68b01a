#!/usr/bin/env bash
# CI entry point: a fresh virtual environment, the README's two commands in order, the
# tests, and the benchmark smoke profile. Run from the repository root: `bash ci/test.sh`.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
ROOT="$PWD"
VENV="${FASTVI_CI_VENV:-.venv-ci}"

echo "== environment"
"$PYTHON" -m venv --clear "$VENV"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
python --version
python -m pip install --quiet --upgrade pip

echo "== the README's two commands, in order, in this fresh environment"
# keep in sync with README.md, "Set up and try it" and "Run the tests": the first
# installs fastvi and runs the demo (which compiles and caches the kernels), the
# second replaces that install with an editable one; the install must still work
# from any folder afterwards (a cache inside the package once broke it)
python -m pip install --quiet . && fastvi demo
python -m pip install --quiet -e ".[test,dask,plot]"
(
    cd "$(mktemp -d)"
    python -c "
import os, sysconfig, fastvi
from fastvi import BayesianGaussianMixture
here = os.path.dirname(os.path.abspath(fastvi.__file__))
assert here == os.path.join('$ROOT', 'fastvi'), here
left = os.path.join(sysconfig.get_paths()['purelib'], 'fastvi')
assert not os.path.exists(left), f'the first install left {left} behind'
print('fastvi imports from', here)
"
    fastvi --version
)

python -m pip list 2>/dev/null | grep -iE '^(numpy|scipy|numba|llvmlite|scikit-learn|pytest|hypothesis|threadpoolctl|matplotlib) '
python -m threadpoolctl -i numpy
python -m numba -s | grep -E 'CPU Name|CPU Features|Threading layer|SVML State|Numba Version|llvmlite' || true

echo "== a headless browser for the report test (best effort)"
# tests/test_report.py opens a generated report in headless Chromium; as root on a
# Debian-like system CI installs Debian's package, elsewhere the test skips and says why
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
    if ! { apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends chromium fonts-liberation; } >/dev/null 2>&1; then
        echo "could not install chromium: the browser check of the report is skipped"
    fi
fi
if command -v chromium >/dev/null 2>&1; then
    chromium --version 2>/dev/null || true
else
    echo "no chromium: the browser check of the report is skipped"
fi

echo "== lint"
ruff check fastvi tests bench
ruff format --check fastvi tests bench

echo "== tests"
python -m pytest

echo "== benchmark smoke profile (runs each benchmark once, no timing assertions)"
FASTVI_BENCH_PROFILE=smoke python -m pytest bench/ -q --benchmark-disable -p no:cacheprovider
