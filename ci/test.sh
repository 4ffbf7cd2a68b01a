#!/usr/bin/env bash
# CI entry point: a fresh virtual environment, the README's test command, and the
# benchmark smoke profile. Run from the repository root: `bash ci/test.sh`.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
VENV="${FASTVI_CI_VENV:-.venv-ci}"

echo "== environment"
"$PYTHON" -m venv --clear "$VENV"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
python --version
python -m pip install --quiet --upgrade pip

echo "== install and test (the README's test command)"
# keep in sync with README.md, "Run the tests"
python -m pip install --quiet -e ".[test,dask]"

python -m pip list 2>/dev/null | grep -iE '^(numpy|scipy|numba|llvmlite|scikit-learn|pytest|hypothesis|threadpoolctl) '
python -m threadpoolctl -i numpy
python -m numba -s | grep -E 'CPU Name|CPU Features|Threading layer|SVML State|Numba Version|llvmlite' || true

echo "== lint"
ruff check fastvi tests bench
ruff format --check fastvi tests bench

echo "== tests"
python -m pytest

echo "== benchmark smoke profile (runs each benchmark once, no timing assertions)"
FASTVI_BENCH_PROFILE=smoke python -m pytest bench/ -q --benchmark-disable -p no:cacheprovider
