"""The ``fastvi`` command line (also ``python -m fastvi``).

``fastvi demo`` fits BayesianGaussianMixture on generated data with fastvi and with
scikit-learn (same data, parameters and seed) and prints what each found and how long
it took.
"""

import argparse
import sys
import time
import warnings

__all__ = ["main"]


def _make_blobs(n_samples, n_features, n_clusters, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 6.0, size=(n_clusters, n_features))
    scales = rng.uniform(0.5, 1.5, size=(n_clusters, 1))
    labels = rng.integers(0, n_clusters, size=n_samples)
    X = centers[labels] + scales[labels] * rng.standard_normal((n_samples, n_features))
    return X


def _summary(est, seconds, threshold):
    effective = int((est.weights_ > threshold).sum())
    return (
        f"{effective:>9d}  {est.lower_bound_:>14.4f}  {est.n_iter_:>5d}  "
        f"{str(est.converged_):>9s}  {seconds:>9.3f}"
    )


def _demo(args):
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture as SkBGM

    from fastvi import BayesianGaussianMixture

    X = _make_blobs(args.n_samples, args.n_features, args.true_clusters, args.seed)
    params = dict(
        n_components=args.n_components,
        covariance_type=args.covariance_type,
        max_iter=args.max_iter,
        random_state=args.seed,
    )
    print(
        f"fastvi demo: BayesianGaussianMixture on {args.n_samples:,} x "
        f"{args.n_features} generated points from {args.true_clusters} clusters, "
        f"n_components={args.n_components}, covariance_type='{args.covariance_type}'"
    )

    # the first call compiles the kernels (or loads them from numba's disk cache)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        BayesianGaussianMixture(**dict(params, max_iter=1), n_jobs=args.n_jobs).fit(
            X[: max(200, args.n_components)]
        )
    warmup = time.perf_counter() - t0

    header = "library          effective  lower bound     iters  converged  fit (s)"
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        ours = BayesianGaussianMixture(**params, n_jobs=args.n_jobs).fit(X)
        t_ours = time.perf_counter() - t0
        rows.append("fastvi           " + _summary(ours, t_ours, args.threshold))
        if not args.no_compare:
            t0 = time.perf_counter()
            theirs = SkBGM(**params).fit(X)
            t_theirs = time.perf_counter() - t0
            rows.append(
                "scikit-learn     " + _summary(theirs, t_theirs, args.threshold)
            )

    print(f"kernel compile or cache load before the first fit: {warmup:.2f} s")
    print(header)
    print("\n".join(rows))
    if not args.no_compare:
        same = np.isclose(ours.lower_bound_, theirs.lower_bound_, rtol=1e-6)
        print(
            f"speed-up: {t_theirs / t_ours:.1f}x; same lower bound (1e-6): "
            f"{'yes' if same else 'no'}; effective = components with weight > "
            f"{args.threshold:g}"
        )
    return 0


def _build_parser():
    parser = argparse.ArgumentParser(prog="fastvi", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="fit a Bayesian Gaussian mixture on built-in data"
    )
    demo.add_argument("--n-samples", type=int, default=20_000)
    demo.add_argument("--n-features", type=int, default=8)
    demo.add_argument("--true-clusters", type=int, default=6)
    demo.add_argument("--n-components", type=int, default=12)
    demo.add_argument(
        "--covariance-type",
        default="full",
        choices=["full", "tied", "diag", "spherical"],
    )
    demo.add_argument("--max-iter", type=int, default=500)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--n-jobs", type=int, default=None)
    demo.add_argument("--threshold", type=float, default=0.01)
    demo.add_argument(
        "--no-compare", action="store_true", help="skip the scikit-learn fit"
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    """Entry point of the ``fastvi`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:
        print(f"fastvi: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
