"""Batch and match (BaM) on eight schools and the regression fixtures: a measurement.

Cai, Modi, Pillaud-Vivien, Margossian, Gower, Blei & Saul (ICML 2024), "Batch and
match: black-box variational inference with a score-based divergence". Each
iteration draws B points z_b ~ q_t = N(mu, Sigma), takes the scores g_b =
grad log p(z_b) (one call of the model for the batch) and moves q to the minimizer
of the batch's score-based divergence plus a KL proximity term (weight 1/lambda):

    U = lambda Gamma + lambda/(1+lambda) gbar gbar'
    V = Sigma + lambda C + lambda/(1+lambda) (mu - zbar)(mu - zbar)'
    Sigma' = 2 V (I + (I + 4 U V)^{1/2})^{-1}
    mu' = mu/(1+lambda) + lambda/(1+lambda) (Sigma' gbar + zbar)

(zbar, gbar: batch means; C, Gamma: covariances of the z's and g's, 1/B.) With
V = L L' (Cholesky), U V = L^{-T} (L' U L) L', so Sigma' = L Q diag(2 / (1 +
sqrt(1 + 4 e))) Q' L' with L' U L = Q diag(e) Q': symmetric and positive
definite by construction. For a Gaussian target and lambda -> infinity one step
with B > P draws is exact (C (Gamma C)^{-1/2} = the target's covariance).

Everything runs in the whitened coordinates of the engine's Laplace start (its
Frame: z = a + B u, q starts at N(0, I)), from ``SGVI(model, family='fullrank')
.init(seed)``, so the Laplace start's gradient evaluations are counted as the
engine's. Counted: every row passed to the model's ``log_joint``; CPU time:
``time.process_time`` of the start plus the iterations (without the untimed
accuracy probes, which are made afterwards from the recorded (mu, Sigma)).
Accuracy against NUTS as ``tests/test_sgvi_posteriordb.py`` measures it
(10,000 draws of q; right: every mean within 0.2 reference sds, every sd ratio
within 0.75-1.33).

Stopping rules tried (neither needs the reference):

* ``move``: over a window of w iterations, the largest change of q's mean (in
  q's sds) and of q's log sds between the window's first and last iterate is
  below ``tol``;
* ``avg``: iterate averaging over the last half of the run, stopped when two
  successive window averages agree to ``tol`` (in q's sds / log sds).

Run: ``PYTHONPATH=. python bench/eight_schools_bam.py [part] [--seeds N]``
(parts: gaussian, sweep, fixed_point, long, rules, restart, fixtures, cpu;
default all, ~20 minutes on a loaded 2-core machine).
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_posteriordb import Counting  # noqa: E402
from fastvi.sgvi import SGVI  # noqa: E402
from tests.posteriordb_models import (  # noqa: E402
    POSTERIORS,
    accuracy,
    is_right,
    reference,
    summaries,
)

EIGHT = "eight_schools-eight_schools_noncentered"


def bam_step(mu, Sigma, Z, G, lam):
    """One BaM update from q = N(mu, Sigma) with the batch Z (B, P) drawn from
    q and its scores G (B, P)."""
    B = Z.shape[0]
    zbar, gbar = Z.mean(0), G.mean(0)
    dz, dg = Z - zbar, G - gbar
    C = dz.T @ dz / B
    Gam = dg.T @ dg / B
    r = lam / (1.0 + lam)
    U = lam * Gam + r * np.outer(gbar, gbar)
    dm = mu - zbar
    V = Sigma + lam * C + r * np.outer(dm, dm)
    Lv = np.linalg.cholesky(V)
    M = Lv.T @ U @ Lv
    e, Q = np.linalg.eigh(0.5 * (M + M.T))
    e = np.maximum(e, 0.0)
    W = Lv @ Q
    S_new = (W * (2.0 / (1.0 + np.sqrt(1.0 + 4.0 * e)))) @ W.T
    S_new = 0.5 * (S_new + S_new.T)
    mu_new = mu / (1.0 + lam) + r * (S_new @ gbar + zbar)
    return mu_new, S_new


def schedule(kind, B, P):
    if kind == "paper":  # lambda_t = B D / (t + 1)
        return lambda t: B * P / (t + 1.0)
    if kind.startswith("const"):
        c = float(kind[5:])
        return lambda t: c
    if kind.startswith("decay"):  # c / (1 + t / 10)
        c = float(kind[5:])
        return lambda t: c / (1.0 + t / 10.0)
    raise ValueError(kind)


def stop_move(hist, w, tol):
    """Largest change over the last w iterations of q's mean (in q's sds) and
    log sds."""
    if len(hist) <= w:
        return False
    m0, S0 = hist[-w - 1]
    m1, S1 = hist[-1]
    s0, s1 = np.sqrt(np.diag(S0)), np.sqrt(np.diag(S1))
    dm = np.max(np.abs(m1 - m0) / s1)
    ds = np.max(np.abs(np.log(s1 / s0)))
    return max(dm, ds) < tol


def run_bam(name, seed, B, sched, n_iter, rule=None, w=10, tol=0.05, start=None):
    """BaM from the engine's Laplace start. Returns (hist, evals, cpu, stop_at,
    frame, model): hist[t] = (mu, Sigma) in whitened coordinates after t
    iterations, evals[t] the gradient evaluations by then; stop_at the
    iteration where ``rule`` fired (None: never). ``start``: (mu, Sigma) in the
    whitened coordinates to start from instead of the Laplace start N(0, I)."""
    model = POSTERIORS[name]()
    counter = Counting(model)
    engine = SGVI(model, family="fullrank")
    lam_of = schedule(sched, B, model.size)
    t0 = time.process_time()
    state = engine.init(seed)
    frame = state.frame
    t_init = time.process_time() - t0
    P = model.size
    mu, Sigma = (np.zeros(P), np.eye(P)) if start is None else start
    rng = np.random.default_rng([seed, 777])
    hist = [(mu, Sigma)]
    evals = [counter.rows]
    stop_at = None
    avg = []
    for t in range(n_iter):
        L = np.linalg.cholesky(Sigma)
        eps = rng.standard_normal((B, P))
        U = mu + eps @ L.T
        lp, gz = model.log_density(frame.push(U), None)
        G = frame.pullback(gz)
        if not (np.all(np.isfinite(lp)) and np.all(np.isfinite(G))):
            continue
        mu, Sigma = bam_step(mu, Sigma, U, G, lam_of(t))
        hist.append((mu, Sigma))
        evals.append(counter.rows)
        if rule == "move" and stop_at is None and stop_move(hist, w, tol):
            stop_at = t + 1
            break
        if rule == "avg" and stop_at is None and (t + 1) % w == 0:
            avg.append(_average(hist[len(hist) // 2 :]))
            if len(avg) >= 2 and _close(avg[-1], avg[-2], tol):
                stop_at = t + 1
                hist.append(avg[-1])
                evals.append(counter.rows)
                break
    cpu = time.process_time() - t0
    return hist, evals, (cpu, t_init), stop_at, frame, model


def _average(hist):
    mus = np.mean([m for m, _ in hist], axis=0)
    # the average of q's covariances plus the spread of the means: the mixture's
    # covariance would be too wide; the plain average of Sigma is used
    Ss = np.mean([S for _, S in hist], axis=0)
    return mus, Ss


def _close(a, b, tol):
    (m0, S0), (m1, S1) = a, b
    s0, s1 = np.sqrt(np.diag(S0)), np.sqrt(np.diag(S1))
    return max(np.max(np.abs(m1 - m0) / s1), np.max(np.abs(np.log(s1 / s0)))) < tol


EPS_EVAL = np.random.default_rng(12345).standard_normal((10_000, 64))


def quality(name, model, frame, mu, Sigma):
    P = model.size
    L = np.linalg.cholesky(Sigma)
    u = mu + EPS_EVAL[:, :P] @ L.T
    theta = model.constrain(frame.push(u))
    return accuracy(summaries(model, theta), reference(name))


def report_run(name, seed, B, sched, n_iter, probes):
    hist, evals, cpu, _, frame, model = run_bam(name, seed, B, sched, n_iter)
    out = []
    first_right = None
    for t in range(len(hist)):
        if t in probes or first_right is None:
            acc = quality(name, model, frame, *hist[t])
            if first_right is None and is_right(acc):
                first_right = (t, evals[t])
            if t in probes:
                z, lo, hi = acc
                out.append(f"{t}:{z:.2f}/{lo:.2f}-{hi:.2f}")
    total, t_init = cpu
    return " ".join(out), first_right, (total - t_init) / (len(hist) - 1), evals[0]


def part_sweep(seeds):
    """Error against NUTS after t iterations, and the first right iterate (an
    oracle stop), for B in {4, 8, 16, 32} and five lambda schedules."""
    probes = {0, 1, 2, 5, 10, 20, 40, 80, 160, 300}
    for B in (4, 8, 16, 32):
        for sched in ("paper", "const1", "const4", "const16", "decay16"):
            print(f"== eight schools B={B} lambda={sched}")
            for seed in seeds:
                s, fr, per, start = report_run(EIGHT, seed, B, sched, 300, probes)
                print(
                    f" seed {seed} start {start} first right (it, evals) {fr} "
                    f"{per * 1e6:.0f} us/it | it:max|z|/sd ratios {s}",
                    flush=True,
                )


def part_fixed_point(seeds):
    """Where BaM goes with a large batch (B = 4096): q averaged over the last
    half of the iterations, every parameter's error, and tau's sd ratio per
    iterate."""
    ref = reference(EIGHT)
    for B, sched, n in ((4096, "const1", 80), (4096, "decay4", 120)):
        for seed in seeds:
            hist, evals, cpu, _, frame, model = run_bam(EIGHT, seed, B, sched, n)
            m, S = _average(hist[n // 2 :])
            got = _summaries(model, frame, m, S)
            print(f"== B={B} lambda={sched} seed {seed} (averaged over {n // 2}-{n})")
            print("  ", accuracy(got, ref))
            print(
                "  ",
                {
                    k: (
                        round((got[k][0] - ref[k][0]) / ref[k][1], 2),
                        round(got[k][1] / ref[k][1], 2),
                    )
                    for k in ref
                },
            )
            rs = []
            for t in range(n // 2, n + 1, 5):
                g = _summaries(model, frame, *hist[t])
                rs.append(round(g["tau"][1] / ref["tau"][1], 2))
            print("   tau's sd ratio per 5th iterate:", rs, flush=True)


def _summaries(model, frame, mu, Sigma):
    L = np.linalg.cholesky(Sigma)
    u = mu + EPS_EVAL[:, : model.size] @ L.T
    return summaries(model, model.constrain(frame.push(u)))


def part_long(seeds):
    """Long runs at B = 16 and 32: q averaged over the last half and the last
    100 iterations (where a stopping rule with a tight tolerance would end)."""
    ref = reference(EIGHT)
    for B, sched, n in (
        (16, "const1", 1000),
        (16, "decay4", 1000),
        (32, "const1", 600),
    ):
        for seed in seeds:
            hist, evals, cpu, _, frame, model = run_bam(EIGHT, seed, B, sched, n)
            for a in (n // 2, n - 100):
                got = _summaries(model, frame, *_average(hist[a : n + 1]))
                z, lo, hi = accuracy(got, ref)
                print(
                    f"B={B} lambda={sched} seed {seed} averaged {a}-{n}: max|z| "
                    f"{z:.3f} sd ratios {lo:.2f}-{hi:.2f} (tau "
                    f"{got['tau'][1] / ref['tau'][1]:.2f})",
                    flush=True,
                )


def part_restart(seeds):
    """The averaging rule started at BaM's own fixed point (the B = 4096 run's
    average over iterations 40-80, seed 0) instead of the Laplace start: what
    the rule returns when no transient from the too-wide start is averaged in."""
    hist, _, _, _, _, _ = run_bam(EIGHT, 0, 4096, "const1", 80)
    start = _average(hist[40:])
    for B, sched in ((16, "const1"), (16, "decay4"), (16, "paper"), (32, "paper")):
        rows = []
        for seed in seeds:
            hist, evals, _, stop, frame, model = run_bam(
                EIGHT, seed, B, sched, 400, "avg", 10, 0.05, start=start
            )
            rows.append((evals[-1], quality(EIGHT, model, frame, *hist[-1])))
        right = sum(bool(is_right(a)) for _, a in rows)
        print(
            f"from BaM's fixed point: B={B} lambda={sched} rule=avg tol=0.05: right "
            f"{right}/{len(rows)}; evals {min(r[0] for r in rows)}-"
            f"{max(r[0] for r in rows)}; sd ratios {min(r[1][1] for r in rows):.2f}-"
            f"{max(r[1][2] for r in rows):.2f}",
            flush=True,
        )


def part_rules(seeds, names=(EIGHT,)):
    """The reference-free stopping rules: where they stop (iterations, gradient
    evaluations with the Laplace start's, CPU ms) and the error there."""
    configs = [
        (B, sched, rule, w, tol)
        for B in (16, 32)
        for sched in ("const1", "decay4", "paper")
        for rule, w, tol in (("move", 10, 0.1), ("avg", 10, 0.05), ("avg", 10, 0.02))
    ]
    for name in names:
        for B, sched, rule, w, tol in configs:
            rows = []
            for seed in seeds:
                hist, evals, (cpu, _), stop, frame, model = run_bam(
                    name, seed, B, sched, 400, rule, w, tol
                )
                acc = quality(name, model, frame, *hist[-1])
                rows.append((stop, evals[-1], cpu, acc))
            stops = [r[0] for r in rows]
            right = sum(bool(is_right(r[3])) for r in rows)
            print(
                f"{name.split('-', 1)[1]} B={B} lambda={sched} rule={rule} "
                f"w={w} tol={tol}: stopped {sum(s is not None for s in stops)}"
                f"/{len(rows)}, right {right}/{len(rows)}; evals "
                f"{min(r[1] for r in rows)}-{max(r[1] for r in rows)}, CPU ms "
                f"{1e3 * min(r[2] for r in rows):.1f}-{1e3 * max(r[2] for r in rows):.1f}"
                f"; max|z| {min(r[3][0] for r in rows):.2f}-"
                f"{max(r[3][0] for r in rows):.2f}, sd ratios "
                f"{min(r[3][1] for r in rows):.2f}-{max(r[3][2] for r in rows):.2f}",
                flush=True,
            )


def part_gaussian():
    """The update on a Gaussian target N(m, S) (P = 10, B = 16): at a large
    lambda one step is exact up to 1/lambda and the next to rounding; at lambda
    1 it converges too, slowly from this start (the mean 24 target sds away: q
    shrinks along the mean's error and the mean moves little per step)."""
    P, B = 10, 16
    rng = np.random.default_rng(1)
    A = rng.standard_normal((P, P))
    S = A @ A.T / P + 0.1 * np.eye(P)
    m, S_inv = 3.0 * rng.standard_normal(P), np.linalg.inv(S)
    for lam in (1e8, 1.0):
        mu, Sigma = np.zeros(P), np.eye(P)
        for t in range(1000):
            L = np.linalg.cholesky(Sigma)
            Z = mu + rng.standard_normal((B, P)) @ L.T
            mu, Sigma = bam_step(mu, Sigma, Z, -(Z - m) @ S_inv, lam)
            if t in (0, 1, 9, 99, 999):
                print(
                    f"lambda={lam:g} iteration {t + 1}: max |mu - m| "
                    f"{np.abs(mu - m).max():.2e}, max |Sigma - S| "
                    f"{np.abs(Sigma - S).max():.2e}"
                )


def part_fixtures(seeds):
    """The regression fixtures from the same start, for reference."""
    probes = {0, 1, 2, 3, 5, 10, 20}
    for name in list(POSTERIORS)[1:]:
        for B, sched in ((16, "paper"), (16, "const4"), (32, "const16")):
            for seed in seeds:
                s, fr, per, start = report_run(name, seed, B, sched, 20, probes)
                print(
                    f"{name.split('-', 1)[1]} B={B} lambda={sched} seed {seed} "
                    f"start {start} first right {fr} | {s}",
                    flush=True,
                )
    part_rules(seeds[:3], names=list(POSTERIORS)[1:])


def part_cpu():
    """CPU time per iteration (min of 7 runs of 100 iterations, B = 16), with
    and without the model call."""
    for B in (16, 32):
        best = np.inf
        for _ in range(7):
            _, _, (cpu, t_init), _, _, _ = run_bam(EIGHT, 0, B, "const1", 100)
            best = min(best, (cpu - t_init) / 100)
        print(f"B={B}: {best * 1e6:.0f} us per iteration (min of 7)")
    model = POSTERIORS[EIGHT]()
    U = np.random.default_rng(0).standard_normal((16, model.size))
    best = np.inf
    for _ in range(7):
        t0 = time.process_time()
        for _ in range(100):
            model.log_density(U, None)
        best = min(best, (time.process_time() - t0) / 100)
    print(f"the model's call on 16 draws: {best * 1e6:.0f} us (min of 7)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "part",
        nargs="?",
        default="all",
        choices=[
            "all",
            "gaussian",
            "sweep",
            "fixed_point",
            "long",
            "rules",
            "restart",
            "fixtures",
            "cpu",
        ],
    )
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    seeds = list(range(args.seeds))
    parts = {
        "gaussian": part_gaussian,
        "sweep": lambda: part_sweep(seeds),
        "fixed_point": lambda: part_fixed_point(seeds[:2]),
        "long": lambda: part_long(seeds[:3]),
        "rules": lambda: part_rules(seeds),
        "restart": lambda: part_restart(seeds),
        "fixtures": lambda: part_fixtures(seeds[:3]),
        "cpu": part_cpu,
    }
    for key, fn in parts.items():
        if args.part in ("all", key):
            print(f"######## {key}")
            fn()


if __name__ == "__main__":
    main()
