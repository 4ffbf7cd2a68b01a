"""Benchmarks of SGVI logistic regression: fastvi against NumPyro's SVI.

Groups ``"sgvi N=<N> S=<S> <full|mb1024>"`` hold, timed in the same run:

* ``fastvi-float32`` / ``fastvi-float64``: ``fastvi.sgvi.SGVI`` on ``GLM(X, y)``
  (mean-field, STL, Adam(0.01)), X in that dtype;
* ``numpyro`` (the anchor, only when ``numpyro`` and ``jax`` are importable):
  ``SVI`` with ``AutoNormal``, ``Adam(0.01)``,
  ``Trace_ELBO(num_particles=S, vectorize_particles=True)``, a jitted ``update``,
  JAX on the CPU in float32 (its default).

Each timed round runs a fixed number of steps (``steps`` of the profile for full
batches, ``mb_steps`` for minibatches) after a warm-up (compilation) of the same
length (fastvi's runs skip the end-of-run PSIS k-hat, a diagnostic NumPyro's steps
do not compute either); ``extra_info`` records ``ms_per_step``, the mean ELBO of the
last steps (``final_elbo``; NumPyro's is minus its loss) and the role in the group,
and beside the time the machine's limits measured in the same run (``limits``, from
``bench/limits.py``): ``gflop_per_iter``, the arithmetic of one step's data pass,
4 M D S flops for M rows (the S linear predictors X w_s, 2 M D S, and the gradients
X^T r_s, 2 M D S; the link terms and the optimizer are left out), ``bound_ms``, that
work at the GEMM peak of the step's precision (DGEMM for float64, SGEMM for float32,
NumPyro's included), and ``fraction_of_bound`` = bound_ms / ms_per_step (the
median round; ``ms_per_step_min`` and ``fraction_of_bound_min`` take the fastest:
on a shared machine a parallel step waits for a descheduled thread now and then).
``seconds_per_iter`` and ``dtype`` let ``bench/report.py`` put the fraction in its
limits table. The other side of the roofline: ``read_ms``, the step's rows of X
(M D values of the step's precision) at the read bandwidth measured in the same run,
``roofline_ms`` = max(bound_ms, read_ms) and ``fraction_of_roofline`` =
roofline_ms / ms_per_step. A full-batch step's X does not stay in cache between
steps at N=1e5 and above (40 MB of float64 at D=50), so on a machine whose read
bandwidth is low beside its GEMM peak the step cannot reach the arithmetic bound.

Groups ``"sgvi-to-elbo N=<N> S=<S> <full|mb>"`` time the run to a fixed ELBO, the same
for both libraries: ``target = ref - 0.01 (ref - init)`` (99 % of the way), where
``ref`` is the ELBO of the mean-field Laplace approximation (the posterior mode by
Newton's method, sds 1 / sqrt(diag H), the mean-field optimum of a Gaussian posterior)
and ``init`` that of the common start (mean 0, sd 0.1). Every ELBO here is computed by
one NumPy evaluator from q's means and sds on all rows, float64, with 16 fixed draws
(common random numbers), so the libraries' own noisy estimates play no part. An
untimed probe run evaluates it every ``CHECK`` steps and finds the first check at
which the target is met; the timed run then repeats exactly that many steps from the
same seed (both libraries are deterministic given it), so the time excludes the
evaluations and the compilation. ``extra_info``: ``steps_to_target``, the ELBO
reached, the target; a case that does not reach it within ``max_steps`` is skipped.
The timed run is the optimization alone, for both libraries (as in round 1); what a
fastvi fit adds at its end, the PSIS k-hat check on all rows (256 to 1000 draws:
NumPyro has none), is timed apart, once, in CPU seconds: ``psis_check_cpu_seconds``
(at N = 1e6 it costs more than a 1024-row minibatch run to the target).

The data: D = 50 standard-normal features, coefficients N(0, 0.3^2), Bernoulli labels.

Environment: ``FASTVI_BENCH_PROFILE`` = ``full`` (N = 1e5 and 1e6, S = 1 and 8, full
batch and 1024-row minibatches, 50 full-batch or 500 minibatch steps, 3 rounds;
to-ELBO runs of up to 4000 steps, one timed round)
or ``smoke`` (N = 2e4, S = 8, 10 steps, 1 round; to-ELBO with a 90 % target).
"""

import os
import time

import numpy as np
import pytest

PROFILES = {
    "full": {
        "sizes": (100_000, 1_000_000),
        "samples": (1, 8),
        "steps": 50,
        "mb_steps": 500,
        "rounds": 3,
        "max_steps": 4000,
        "fraction": 0.99,
    },
    "smoke": {
        "sizes": (20_000,),
        "samples": (8,),
        "steps": 10,
        "mb_steps": 10,
        "rounds": 1,
        "max_steps": 300,
        "fraction": 0.9,
    },
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
CHECK = 25  # steps between ELBO evaluations of the probe run
INIT_SCALE = 0.1  # NumPyro's AutoNormal default, used by both


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


def fastvi_runner(X, y, S, batch, dtype, psis_draws=None):
    """``run(steps)`` continues the fit for ``steps`` steps. ``psis_draws`` goes to
    ``SGVI.run``: None keeps its end-of-run PSIS k-hat (at least 256 draws on all
    rows, as a fit pays it), 0 leaves it out (the step benchmark: at 50 steps of 8
    draws it would add the work of 32 more full-batch steps to every round)."""
    from fastvi.sgvi import GLM, SGVI, Adam, WindowConvergence

    model = GLM(X.astype(dtype), y, minibatch=batch is not None)
    engine = SGVI(
        model, n_samples=S, batch_size=batch, optimizer=Adam(LR), init_scale=INIT_SCALE
    )
    start = engine.init(0)
    state = {"s": start}

    def run(steps):
        res = engine.run(
            max_iter=steps,
            convergence=WindowConvergence(tol=0),
            init_state=state["s"],
            psis_draws=psis_draws,
        )
        state["s"] = res.state
        return res.elbo

    def params():
        phi = state["s"].params
        return engine.family.mean(phi).copy(), engine.family.std(phi).copy()

    def reset():
        state["s"] = start

    def check(steps):
        """CPU seconds of the end-of-run PSIS k-hat that ``SGVI.run`` pays after
        ``steps`` steps (its default draws: half the run's, 256 to 1000, all rows)."""
        draws = min(1000, max(256, steps * S // 2))
        start_cpu = time.process_time()
        engine.diagnose(state["s"], draws, warn=False)
        return time.process_time() - start_cpu

    run.params = params
    run.reset = reset
    run.check = check
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
        AutoNormal(model, init_scale=INIT_SCALE),
        Adam(LR),
        Trace_ELBO(num_particles=S, vectorize_particles=True),
    )
    Xj = jnp.asarray(X, dtype=jnp.float32)
    yj = jnp.asarray(y, dtype=jnp.float32)
    update = jax.jit(svi.update)
    start = svi.init(jax.random.PRNGKey(0), Xj, yj)
    state = {"s": start}

    def run(steps):
        losses = []
        s = state["s"]
        for _ in range(steps):
            s, loss = update(s, Xj, yj)
            losses.append(loss)
        losses[-1].block_until_ready()
        state["s"] = s
        return -np.asarray(losses, dtype=np.float64)

    def params():
        p = svi.get_params(state["s"])
        mean = np.append(np.asarray(p["w_auto_loc"]), float(p["b_auto_loc"]))
        sd = np.append(np.asarray(p["w_auto_scale"]), float(p["b_auto_scale"]))
        return mean.astype(np.float64), sd.astype(np.float64)

    def reset():
        state["s"] = start

    run.params = params
    run.reset = reset
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
def test_sgvi_step(benchmark, machine_limits, library, n, S, batch):
    X, y = logistic_data(n)
    # minibatch steps take a millisecond or less: more of them per timed round
    steps = PROFILE["steps"] if batch is None else PROFILE["mb_steps"]
    if library == "numpyro":
        run = numpyro_runner(X, y, S, batch)
    else:
        dtype = np.float32 if library.endswith("32") else np.float64
        run = fastvi_runner(X, y, S, batch, dtype, psis_draws=0)
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
    dtype = "float64" if library == "fastvi-float64" else "float32"
    gflop = step_flops(n if batch is None else batch, S) / 1e9
    peak = machine_limits["dgemm_gflops" if dtype == "float64" else "sgemm_gflops"]
    rows = n if batch is None else batch
    read_ms = 1e3 * rows * D * (8 if dtype == "float64" else 4) / 1e9
    read_ms /= machine_limits["read_gbs"]
    roofline_ms = max(1e3 * gflop / peak, read_ms)
    benchmark.extra_info.update(
        dtype=dtype,
        gflop_per_iter=gflop,
        limits=machine_limits,
        bound_ms=1e3 * gflop / peak,
        read_ms=read_ms,
        roofline_ms=roofline_ms,
    )
    if benchmark.stats is not None:  # None under --benchmark-disable (CI smoke)
        seconds = benchmark.stats.stats.median / steps
        best = benchmark.stats.stats.min / steps
        benchmark.extra_info.update(
            ms_per_step=1e3 * seconds,
            ms_per_step_min=1e3 * best,
            seconds_per_iter=seconds,
            fraction_of_bound=gflop / peak / seconds,
            fraction_of_bound_min=gflop / peak / best,
            fraction_of_roofline=roofline_ms / 1e3 / seconds,
        )


def step_flops(rows, S):
    """Flops of one step's data pass over ``rows`` rows with S draws: the forward
    products X w_s and the gradients X^T r_s, 2 rows D S each (see the module docs)."""
    return 4.0 * rows * D * S


# ------------------------------------------------------------------ time to an ELBO
_REFERENCE = {}
EVAL_DRAWS = 16


def elbo_of(X, y, mean, sd):
    """ELBO of the mean-field q (mean, sd over [w, b]) on all rows: 16 fixed draws."""
    from scipy.special import log_expit

    P = D + 1
    prec = np.r_[np.ones(D), 0.01]  # priors N(0, 1) on w, N(0, 10^2) on b
    eps = np.random.default_rng(123).standard_normal((EVAL_DRAWS, P))
    Z = mean + sd * eps
    total = np.zeros(EVAL_DRAWS)
    for i in range(0, X.shape[0], 100_000):  # blocks: no N x 16 temporaries
        eta = X[i : i + 100_000] @ Z[:, :D].T + Z[:, D]
        yb = y[i : i + 100_000, None]
        total += (yb * log_expit(eta) + (1.0 - yb) * log_expit(-eta)).sum(axis=0)
    log_prior = -0.5 * np.sum(Z * Z * prec, axis=1) - 0.5 * np.sum(
        np.log(2 * np.pi / prec)
    )
    entropy = np.sum(np.log(sd)) + 0.5 * P * np.log(2 * np.pi * np.e)
    return float(np.mean(total + log_prior) + entropy)


def elbo_target(n):
    """(target, ref, init) ELBOs of the data of size n (see the module docs)."""
    if n not in _REFERENCE:
        X, y = logistic_data(n)
        prec = np.r_[np.ones(D), 0.01]
        w = np.zeros(D + 1)
        for _ in range(8):  # Newton's method for the posterior mode
            eta = X @ w[:D] + w[D]
            p = 1.0 / (1.0 + np.exp(-eta))
            r = p * (1.0 - p)
            H = np.empty((D + 1, D + 1))
            H[:D, :D] = (X * r[:, None]).T @ X
            H[:D, D] = H[D, :D] = X.T @ r
            H[D, D] = r.sum()
            H += np.diag(prec)
            g = np.append(X.T @ (y - p), np.sum(y - p)) - prec * w
            w = w + np.linalg.solve(H, g)
        ref = elbo_of(X, y, w, 1.0 / np.sqrt(np.diag(H)))
        init = elbo_of(X, y, np.zeros(D + 1), np.full(D + 1, INIT_SCALE))
        target = ref - (1.0 - PROFILE["fraction"]) * (ref - init)
        _REFERENCE.clear()
        _REFERENCE[n] = (target, ref, init)
    return _REFERENCE[n]


def make_runner(library, X, y, S, batch):
    if library == "numpyro":
        return numpyro_runner(X, y, S, batch)
    dtype = np.float32 if library.endswith("32") else np.float64
    return fastvi_runner(X, y, S, batch, dtype, psis_draws=0)


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
def test_sgvi_time_to_elbo(benchmark, library, n, S, batch):
    X, y = logistic_data(n)
    target, ref, init = elbo_target(n)
    # untimed probe: the first check at which the common ELBO reaches the target
    probe = make_runner(library, X, y, S, batch)
    steps = 0
    reached = None
    while steps < PROFILE["max_steps"]:
        probe(CHECK)
        steps += CHECK
        value = elbo_of(X, y, *probe.params())
        if value >= target:
            reached = value
            break
    if reached is None:
        pytest.skip(
            f"{library} did not reach the ELBO target in {PROFILE['max_steps']} steps"
        )
    benchmark.group = (
        f"sgvi-to-elbo N={short(n)} S={S} {'full' if batch is None else 'mb'}"
    )

    def setup():  # back to the start: the same seed, already compiled by the probe
        probe.reset()
        return (steps,), {}

    # one round: a run of hundreds of steps is its own average, and at N = 1e6 a
    # NumPyro run to the target takes about a minute
    benchmark.pedantic(probe, setup=setup, rounds=1, iterations=1)
    check = elbo_of(X, y, *probe.params())
    assert check >= target, (check, target)  # the timed run did reach it
    if library != "numpyro":
        benchmark.extra_info["psis_check_cpu_seconds"] = probe.check(steps)
    benchmark.extra_info.update(
        role="anchor" if library == "numpyro" else "fastvi",
        library=library,
        steps_to_target=steps,
        elbo_reached=reached,
        elbo_target=target,
        elbo_reference=ref,
        elbo_init=init,
    )
