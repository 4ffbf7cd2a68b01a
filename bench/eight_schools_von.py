"""Natural-gradient Newton steps (variational online Newton) on eight schools.

q = N(mu, Lambda^{-1}). Each iteration draws M antithetic pairs z = mu +- L eps
(Lambda^{-1} = L L'), calls the model once on the 2M draws for their gradients g,
and estimates minus the expected Hessian by Stein's lemma, E_q[grad^2 log p] =
E_q[Lambda (z - mu) g'], on the pairs:

    A = -sym( mean_m  L^{-T} eps_m (g+_m - g-_m)' / 2 )

The precision moves toward A with the positive-definite form of the update of
Lin, Schmidt & Khan (ICML 2020, "Handling the positive-definite constraint in the
Bayesian learning rule"), and the mean by a Newton step:

    Lambda <- Lambda + r (A - Lambda) + r^2/2 (A - Lambda) Lambda^{-1} (A - Lambda)
    mu     <- mu + r Lambda^{-1} mean(g)

with r = ``--rho`` for 20 iterations, then ``rho * 20 / (t + 1)``. The fixed point is
the reverse-KL optimum ADVI seeks. q starts at N(0, I) in the model's unconstrained
coordinates. Accuracy against NUTS as ``tests/test_sgvi_posteriordb.py`` measures it
(max |z| of the means in reference sds / smallest / largest sd ratio; 20,000 draws
of q); "avg" is q with the mean and covariance averaged over the last half of the
iterates. Evaluations: every draw passed to the model; CPU: ``time.process_time`` of
the iterations alone.

Run: ``PYTHONPATH=. python bench/eight_schools_von.py [--pairs 8] [--seeds 5]``
(README, issue 14's list of what was tried for eight schools).
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.posteriordb_models import POSTERIORS, accuracy, reference, summaries  # noqa

NAME = "eight_schools-eight_schools_noncentered"


def von(model, seed, pairs, rho, iters):
    """The iterates ``[(mu, Lambda)]`` and the number of draws evaluated."""
    P = model.size
    rng = np.random.default_rng(seed)
    mu, lam = np.zeros(P), np.eye(P)
    history, draws = [], 0
    for t in range(iters):
        cov = np.linalg.inv(lam)
        L = np.linalg.cholesky(cov)
        eps = rng.standard_normal((pairs, P))
        step = eps @ L.T
        _, g = model.log_density(np.vstack([mu + step, mu - step]))
        draws += 2 * pairs
        H = (np.linalg.inv(L).T @ eps.T) @ ((g[:pairs] - g[pairs:]) / 2) / pairs
        r = rho if t < 20 else rho * 20 / (t + 1)
        delta = -(H + H.T) / 2 - lam
        lam = lam + r * delta + 0.5 * r * r * delta @ cov @ delta
        lam = (lam + lam.T) / 2
        mu = mu + r * np.linalg.solve(lam, g.mean(axis=0))
        history.append((mu.copy(), lam.copy()))
    return history, draws


def error(model, ref, mu, cov):
    z = mu + np.random.default_rng(99).standard_normal((20_000, mu.size)) @ (
        np.linalg.cholesky(cov).T
    )
    return accuracy(summaries(model, model.constrain(z)), ref)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--rho", type=float, default=0.3)
    parser.add_argument("--iters", type=int, default=80)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    model, ref = POSTERIORS[NAME](), reference(NAME)
    for seed in range(args.seeds):
        start = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            history, draws = von(model, seed, args.pairs, args.rho, args.iters)
        cpu = time.process_time() - start
        cells = []
        for i in (10, 20, 40, 60, 80, 120, 160):
            if i <= len(history):
                mu, lam = history[i - 1]
                cells.append(
                    f"{i}: %.2f/%.2f/%.2f" % error(model, ref, mu, np.linalg.inv(lam))
                )
        half = history[len(history) // 2 :]
        mu = np.mean([h[0] for h in half], axis=0)
        cov = np.mean([np.linalg.inv(h[1]) for h in half], axis=0)
        cells.append("avg: %.2f/%.2f/%.2f" % error(model, ref, mu, cov))
        print(
            f"seed {seed}: {draws} evaluations, {1e3 * cpu:.1f} ms CPU; "
            + "  ".join(cells)
        )


if __name__ == "__main__":
    main()
