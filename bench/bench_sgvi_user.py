"""Benchmarks of user models (``fastvi.sgvi.NumbaModel``) against the built-in GLM kernel.

Groups ``"sgvi-user logistic N=<N> D=<D> S=<S>"`` time one evaluation of the log
density and its gradient over all rows for S draws (``model.log_density(z)``: the
model's part of a full-batch SGVI step), the same logistic regression (coef ~ N(0, 1),
intercept ~ N(0, 10^2)) written three or four ways:

* ``glm`` (role ``anchor``): ``GLM(X, y)``, fastvi's tiled, fused kernel;
* ``numba``: ``NumbaModel`` with the per-row ``loglik``/``loglik_grad`` below, compiled
  with numba's defaults (no fast-math);
* ``numba-fastmath``: the same functions compiled with
  ``fastmath={"nsz", "arcp", "contract", "reassoc"}`` (fastvi's own set), which lets
  LLVM vectorize the dot product;
* ``numba-fd`` (small D only): ``loglik`` alone, its gradient by central finite
  differences in the kernel (2P + 1 calls per row and draw).

``extra_info``: ``ms`` (median), ``grad_max_rel_err`` (largest |g - g_glm| / max
|g_glm|), ``threads``; the ratio to ``glm`` is read off the group's table.

Environment: ``FASTVI_BENCH_PROFILE`` = ``full`` (N = 1e5, D = 50 and 5, S = 8, 7
rounds) or ``smoke`` (N = 1e4, 2 rounds).
"""

import math
import os

import numba
import numpy as np
import pytest

PROFILES = {
    "full": {"n": 100_000, "rounds": 7},
    "smoke": {"n": 10_000, "rounds": 2},
}
PROFILE_NAME = os.environ.get("FASTVI_BENCH_PROFILE", "full")
if PROFILE_NAME not in PROFILES:
    raise ValueError(
        f"FASTVI_BENCH_PROFILE={PROFILE_NAME!r}; expected one of {sorted(PROFILES)}"
    )
PROFILE = PROFILES[PROFILE_NAME]
S = 8
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}


# row = [x_0 .. x_{D-1}, y]; theta = [coef_0 .. coef_{D-1}, intercept]
@numba.njit(cache=True)
def loglik(theta, row):
    D = row.shape[0] - 1
    eta = theta[D]
    for d in range(D):
        eta += theta[d] * row[d]
    if eta > 0:
        return (row[D] - 1.0) * eta - math.log1p(math.exp(-eta))
    return row[D] * eta - math.log1p(math.exp(eta))


@numba.njit(cache=True)
def loglik_grad(theta, row, out):
    D = row.shape[0] - 1
    eta = theta[D]
    for d in range(D):
        eta += theta[d] * row[d]
    if eta > 0:
        p = 1.0 / (1.0 + math.exp(-eta))
    else:
        e = math.exp(eta)
        p = e / (1.0 + e)
    w = row[D] - p
    for d in range(D):
        out[d] = w * row[d]
    out[D] = w


@numba.njit(cache=True)
def logprior(theta):
    D = theta.shape[0] - 1
    lp = -0.5 * (theta[D] / 10.0) ** 2
    for d in range(D):
        lp -= 0.5 * theta[d] ** 2
    return lp


@numba.njit(cache=True)
def logprior_grad(theta, out):
    D = theta.shape[0] - 1
    out[D] = -theta[D] / 100.0
    for d in range(D):
        out[d] = -theta[d]


# the same log-likelihood with fast-math (own names: numba's cache keys on them)
@numba.njit(cache=True, fastmath=FASTMATH)
def loglik_fm(theta, row):
    D = row.shape[0] - 1
    eta = theta[D]
    for d in range(D):
        eta += theta[d] * row[d]
    if eta > 0:
        return (row[D] - 1.0) * eta - math.log1p(math.exp(-eta))
    return row[D] * eta - math.log1p(math.exp(eta))


@numba.njit(cache=True, fastmath=FASTMATH)
def loglik_grad_fm(theta, row, out):
    D = row.shape[0] - 1
    eta = theta[D]
    for d in range(D):
        eta += theta[d] * row[d]
    if eta > 0:
        p = 1.0 / (1.0 + math.exp(-eta))
    else:
        e = math.exp(eta)
        p = e / (1.0 + e)
    w = row[D] - p
    for d in range(D):
        out[d] = w * row[d]
    out[D] = w


def _data(n, D):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, D))
    beta = 0.3 * rng.standard_normal(D)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(X @ beta)))).astype(np.float64)
    return X, y


def _model(variant, X, y):
    from fastvi.sgvi import GLM, NumbaModel, Param

    if variant == "glm":
        return GLM(X, y)
    D = X.shape[1]
    params = [Param("coef", D), Param("intercept")]
    kw = dict(logprior=logprior, logprior_grad=logprior_grad)
    if variant == "numba":
        kw.update(loglik=loglik, loglik_grad=loglik_grad)
    elif variant == "numba-fastmath":
        kw.update(loglik=loglik_fm, loglik_grad=loglik_grad_fm)
    else:
        kw.update(loglik=loglik)
    return NumbaModel(params, data=np.column_stack([X, y]), **kw)


CASES = [(50, v) for v in ("glm", "numba", "numba-fastmath")] + [
    (5, v) for v in ("glm", "numba", "numba-fastmath", "numba-fd")
]


@pytest.mark.parametrize("D, variant", CASES, ids=[f"D={d}-{v}" for d, v in CASES])
def test_user_model_pass(benchmark, D, variant):
    n = PROFILE["n"]
    X, y = _data(n, D)
    model = _model(variant, X, y)
    z = np.random.default_rng(1).normal(0.0, 0.1, (S, D + 1))
    benchmark.group = f"sgvi-user logistic N={n:.0e} D={D} S={S}"
    model.log_density(z)  # warm-up: compile
    lp, g = benchmark.pedantic(
        model.log_density,
        args=(z,),
        rounds=PROFILE["rounds"],
        iterations=1,
        warmup_rounds=1,
    )
    _, g_ref = _model("glm", X, y).log_density(z)
    benchmark.extra_info.update(
        role="anchor" if variant == "glm" else "fastvi",
        variant=variant,
        grad_max_rel_err=float(np.abs(g - g_ref).max() / np.abs(g_ref).max()),
        threads=numba.get_num_threads(),
    )
    if benchmark.stats is not None:
        benchmark.extra_info["ms"] = 1e3 * benchmark.stats.stats.median
