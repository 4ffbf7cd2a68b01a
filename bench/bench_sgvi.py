"""Benchmarks of SGVI logistic regression: fastvi against NumPyro's SVI.

Groups ``"sgvi N=<N> S=<S> <full|mb1024>"`` hold, timed in the same run:

* ``fastvi-float32`` / ``fastvi-float64``: ``fastvi.sgvi.SGVI`` on ``GLM(X, y)``
  (mean-field, STL, Adam(0.01)), X in that dtype;
* ``numpyro`` (the anchor, only when ``numpyro`` and ``jax`` are importable):
  ``SVI`` with ``AutoNormal``, ``Adam(0.01)``,
  ``Trace_ELBO(num_particles=S, vectorize_particles=True)``, a jitted ``update``,
  JAX on the CPU in float32 (its default).

Each timed round runs ``STEPS`` steps after a warm-up (compilation) of the same
length; ``extra_info`` records ``ms_per_step``, the mean ELBO of the last steps
(``final_elbo``; NumPyro's is minus its loss) and the role in the group.
The data: D = 50 standard-normal features, coefficients N(0, 0.3^2), Bernoulli labels.

Environment: ``FASTVI_BENCH_PROFILE`` = ``full`` (N = 1e5 and 1e6, S = 1 and 8, full
batch and 1024-row minibatches, 50 steps, 3 rounds) or ``smoke`` (N = 2e4, S = 8,
10 steps, 1 round).
"""

import os

import numpy as np
import pytest

PROFILES = {
    "full": {
        "sizes": (100_000, 1_000_000),
        "samples": (1, 8),
        "steps": 50,
        "rounds": 3,
    },
    "smoke": {"sizes": (20_000,), "samples": (8,), "steps": 10, "rounds": 1},
}
PROFILE_NAME = os.environ.get("FASTVI_BENCH_PROFILE", "full")
if PROFILE_NAME not in PROFILES:
    raise ValueError(
        f"FASTVI_BENCH_PROFILE={PROFILE_NAME!r}; expected one of {sorted(PROFILES)}"
    )
PROFILE = PROFILES[PROFILE_NAME]
D = 50
BATCH = 1024
LR = 0.01
LARGE = 1_000_000


def short(n):
    mantissa, exponent = f"{n:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


_DATA = {}


def logistic_data(n):
    if n not in _DATA:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((n, D))
        beta = 0.3 * rng.standard_normal(D)
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(X @ beta)))).astype(np.float64)
        _DATA.clear()
        _DATA[n] = (X, y)
    return _DATA[n]


def fastvi_runner(X, y, S, batch, dtype):
    from fastvi.sgvi import GLM, SGVI, Adam, WindowConvergence

    model = GLM(X.astype(dtype), y, minibatch=batch is not None)
    engine = SGVI(model, n_samples=S, batch_size=batch, optimizer=Adam(LR))
    state = {"s": engine.init(0)}

    def run(steps):
        res = engine.run(
            max_iter=steps, convergence=WindowConvergence(tol=0), init_state=state["s"]
        )
        state["s"] = res.state
        return res.elbo

    return run


def numpyro_runner(X, y, S, batch):
    jax = pytest.importorskip("jax")
    numpyro = pytest.importorskip("numpyro")
    import jax.numpy as jnp
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.optim import Adam

    N = X.shape[0]

    def model(X, y):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
        b = numpyro.sample("b", dist.Normal(0.0, 10.0))
        with numpyro.plate("data", N, subsample_size=batch) as idx:
            numpyro.sample("obs", dist.Bernoulli(logits=X[idx] @ w + b), obs=y[idx])

    svi = SVI(
        model,
        AutoNormal(model),
        Adam(LR),
        Trace_ELBO(num_particles=S, vectorize_particles=True),
    )
    Xj = jnp.asarray(X, dtype=jnp.float32)
    yj = jnp.asarray(y, dtype=jnp.float32)
    update = jax.jit(svi.update)
    state = {"s": svi.init(jax.random.PRNGKey(0), Xj, yj)}

    def run(steps):
        losses = []
        s = state["s"]
        for _ in range(steps):
            s, loss = update(s, Xj, yj)
            losses.append(loss)
        losses[-1].block_until_ready()
        state["s"] = s
        return -np.asarray(losses, dtype=np.float64)

    return run


CASES = [
    (n, S, batch)
    for n in PROFILE["sizes"]
    for S in PROFILE["samples"]
    for batch in (None, BATCH)
]


@pytest.mark.parametrize("library", ["fastvi-float32", "fastvi-float64", "numpyro"])
@pytest.mark.parametrize(
    "n, S, batch",
    [
        pytest.param(*c, marks=[pytest.mark.large] if c[0] >= LARGE else [])
        for c in CASES
    ],
    ids=[
        f"N={short(n)}-S={S}-{'full' if b is None else f'mb{b}'}" for n, S, b in CASES
    ],
)
def test_sgvi_step(benchmark, library, n, S, batch):
    X, y = logistic_data(n)
    steps = PROFILE["steps"]
    if library == "numpyro":
        run = numpyro_runner(X, y, S, batch)
    else:
        dtype = np.float32 if library.endswith("32") else np.float64
        run = fastvi_runner(X, y, S, batch, dtype)
    benchmark.group = f"sgvi N={short(n)} S={S} {'full' if batch is None else 'mb'}"
    run(steps)  # warm-up: compile and leave the start-up transient
    elbo = benchmark.pedantic(
        run, args=(steps,), rounds=PROFILE["rounds"], iterations=1, warmup_rounds=0
    )
    benchmark.extra_info.update(
        role="anchor" if library == "numpyro" else "fastvi",
        library=library,
        final_elbo=float(np.mean(elbo[-min(10, len(elbo)) :])),
        steps=steps,
    )
    if benchmark.stats is not None:  # None under --benchmark-disable (CI smoke)
        benchmark.extra_info["ms_per_step"] = 1e3 * benchmark.stats.stats.median / steps
