"""Benchmarks of user models (``fastvi.sgvi.LinearModel``, ``NumbaModel``) against
the built-in GLM kernel.

Groups ``"sgvi-user logistic N=<N> D=<D> S=<S>"`` time one evaluation of the log
density and its gradient over all rows for S draws (``model.log_density(z)``: the
model's part of a full-batch SGVI step), the same logistic regression (coef ~ N(0, 1),
intercept ~ N(0, 10^2)) written several ways:

* ``glm`` (role ``anchor``): ``GLM(X, y)``, fastvi's tiled, fused kernel;
* ``linear``: ``LinearModel`` with the likelihood of eta written with
  ``fastvi.sgvi.vmath`` (vectorizable): the GLM's tiled kernel around the user's
  function;
* ``linear-libm``: the same with ``math.exp``/``math.log1p`` and a branch (scalar
  library calls, not vectorized);
* ``linear-fd``: ``linear`` without its gradient (central differences in eta);
* ``numba``: ``NumbaModel`` with the per-row ``loglik``/``loglik_grad`` below (one
  call per row and draw), compiled with numba's defaults;
* ``numba-fastmath``: the same functions compiled with fastvi's fast-math set;
* ``numba-fd`` (small D only): ``loglik`` alone, its gradient by central finite
  differences in the kernel (2P + 1 calls per row and draw).

Besides pytest-benchmark's wall-clock rounds, each case measures its CPU time and the
``glm`` anchor's on one thread, interleaved, min of ``rounds`` (``time.process_time``;
robust on a shared machine), and reports ``cpu_ms``, ``glm_cpu_ms`` and
``ratio_to_glm`` in ``extra_info``, with ``grad_max_rel_err`` (largest |g - g_glm| /
max |g_glm|) and ``threads``. ``python bench/bench_sgvi_user.py`` prints the same as a
table, in one run.

Environment: ``FASTVI_BENCH_PROFILE`` = ``full`` (N = 1e5, D = 50 and 5, S = 8, 7
rounds) or ``smoke`` (N = 1e4, 2 rounds).
"""

import math
import os
import time

import numba
import numpy as np
import pytest

from fastvi.sgvi import vmath

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


# the same likelihood as a function of eta, for LinearModel
@numba.njit(cache=True)
def logistic_eta(eta, y, phi):
    return y * eta - vmath.softplus(eta)


@numba.njit(cache=True)
def logistic_eta_grad(eta, y, phi, out):
    return y - vmath.sigmoid(eta)


@numba.njit(cache=True)
def logistic_eta_libm(eta, y, phi):
    if eta > 0:
        return (y - 1.0) * eta - math.log1p(math.exp(-eta))
    return y * eta - math.log1p(math.exp(eta))


@numba.njit(cache=True)
def logistic_eta_libm_grad(eta, y, phi, out):
    if eta > 0:
        return y - 1.0 / (1.0 + math.exp(-eta))
    e = math.exp(eta)
    return y - e / (1.0 + e)


def _data(n, D):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, D))
    beta = 0.3 * rng.standard_normal(D)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(X @ beta)))).astype(np.float64)
    return X, y


def _model(variant, X, y):
    from fastvi.sgvi import GLM, LinearModel, NumbaModel, Param

    if variant == "glm":
        return GLM(X, y)
    D = X.shape[1]
    kw = dict(logprior=logprior, logprior_grad=logprior_grad)
    if variant.startswith("linear"):
        f, g = {
            "linear": (logistic_eta, logistic_eta_grad),
            "linear-libm": (logistic_eta_libm, logistic_eta_libm_grad),
            "linear-fd": (logistic_eta, None),
        }[variant]
        return LinearModel(X, y, f, g, **kw)
    params = [Param("coef", D), Param("intercept")]
    if variant == "numba":
        kw.update(loglik=loglik, loglik_grad=loglik_grad)
    elif variant == "numba-fastmath":
        kw.update(loglik=loglik_fm, loglik_grad=loglik_grad_fm)
    else:
        kw.update(loglik=loglik)
    return NumbaModel(params, data=np.column_stack([X, y]), **kw)


VARIANTS = ("glm", "linear", "linear-libm", "linear-fd", "numba", "numba-fastmath")
CASES = [(50, v) for v in VARIANTS] + [(5, v) for v in VARIANTS + ("numba-fd",)]


def _cpu_ms(models, z, rounds):
    """Min over ``rounds`` of each model's CPU time per evaluation on one thread,
    interleaved (ms)."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        best = [math.inf] * len(models)
        for _ in range(rounds):
            for i, m in enumerate(models):
                t = time.process_time()
                m.log_density(z)
                best[i] = min(best[i], time.process_time() - t)
    finally:
        numba.set_num_threads(before)
    return [1e3 * b for b in best]


def _case(D, variant, n):
    X, y = _data(n, D)
    model = _model(variant, X, y)
    glm = _model("glm", X, y)
    z = np.random.default_rng(1).normal(0.0, 0.1, (S, D + 1))
    model.log_density(z)  # warm-up: compile
    _, g = model.log_density(z)
    _, g_ref = glm.log_density(z)
    cpu, cpu_glm = _cpu_ms([model, glm], z, PROFILE["rounds"])
    info = dict(
        variant=variant,
        cpu_ms=cpu,
        glm_cpu_ms=cpu_glm,
        ratio_to_glm=cpu / cpu_glm,
        grad_max_rel_err=float(np.abs(g - g_ref).max() / np.abs(g_ref).max()),
    )
    return model, z, info


@pytest.mark.parametrize("D, variant", CASES, ids=[f"D={d}-{v}" for d, v in CASES])
def test_user_model_pass(benchmark, D, variant):
    n = PROFILE["n"]
    model, z, info = _case(D, variant, n)
    benchmark.group = f"sgvi-user logistic N={n:.0e} D={D} S={S}"
    benchmark.pedantic(
        model.log_density,
        args=(z,),
        rounds=PROFILE["rounds"],
        iterations=1,
        warmup_rounds=1,
    )
    benchmark.extra_info.update(
        info,
        role="anchor" if variant == "glm" else "fastvi",
        threads=numba.get_num_threads(),
    )
    if benchmark.stats is not None:
        benchmark.extra_info["ms"] = 1e3 * benchmark.stats.stats.median


if __name__ == "__main__":
    n = PROFILE["n"]
    print(
        f"one log density + gradient, logistic, N={n}, S={S}, one thread, "
        f"CPU ms (min of {PROFILE['rounds']}, interleaved with the GLM anchor)"
    )
    print(
        f"{'D':>3} {'variant':<15} {'ms':>9} {'GLM ms':>9} {'ratio':>7} {'grad err':>9}"
    )
    for D, variant in CASES:
        if variant == "glm":
            continue
        info = _case(D, variant, n)[2]
        print(
            f"{D:>3} {variant:<15} {info['cpu_ms']:>9.2f} {info['glm_cpu_ms']:>9.2f} "
            f"{info['ratio_to_glm']:>6.2f}x {info['grad_max_rel_err']:>9.1e}"
        )
