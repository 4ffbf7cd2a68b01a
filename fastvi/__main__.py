"""The ``fastvi`` command line (also ``python -m fastvi``).

``fastvi demo`` fits BayesianGaussianMixture on generated data with fastvi and with
scikit-learn (same data, parameters and seed) and prints what each found and how long
it took.

Batch jobs::

    fastvi fit gmm|lda INPUT --output MODEL.npz [model options]
        [--checkpoint FILE --checkpoint-every N --resume] [--quiet] [--json]
    fastvi predict MODEL INPUT --output OUT.npy [--proba]
    fastvi score MODEL INPUT [--json]
    fastvi info FILE [--json]

Inputs: .npy (a float64 C-order file is fitted out of core, block by block, when
the initialization streams), .npz (dense, or SciPy sparse for LDA), .csv/.tsv
(``--header`` to skip a header line), .parquet (with pyarrow), docword.*.txt (LDA).
Errors print one line on stderr and exit with status 2; nothing is written to the
output path.

A progress bar on stderr (tqdm; one line per step without it; none with ``--quiet``
or ``--json``) shows, for gmm, the iteration, bound, change and rows/s and, for lda,
the epoch, the training perplexity in the epochs that evaluate it
(``--evaluate-every``) and documents/s.

Checkpoints (gmm and lda, 'batch' or 'online'): ``--checkpoint FILE`` saves the fit
state atomically every ``--checkpoint-every`` iterations (epochs for lda) and at the
last; ``--resume`` continues from it when it exists, and the model is then bitwise
the one of an uninterrupted run, also after a SIGKILL at any moment. A checkpoint
written for other data (a SHA-256 hash of every value tells) or other model
parameters is refused, and so is a checkpoint path that is the output file. Ctrl-C
during a checkpointed fit stops after the current iteration (epoch), writes the
checkpoint and exits with status 130; the checkpoint is deleted once the model file
is written.
"""

import argparse
import json
import os
import signal
import sys
import time
import warnings

import numpy as np

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

    # the first call compiles the kernels (or loads them from the disk cache); the
    # library says so on the 'fastvi' logger, which main() shows on stderr
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        BayesianGaussianMixture(**dict(params, max_iter=1), n_jobs=args.n_jobs).fit(
            X[: max(200, args.n_components)]
        )
    print(
        "kernel compile or cache load before the first fit: "
        f"{time.perf_counter() - t0:.2f} s",
        flush=True,
    )

    header = "library          effective  lower bound     iters  converged  fit (s)"
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        ours = BayesianGaussianMixture(**params, n_jobs=args.n_jobs).fit(X)
        t_ours = time.perf_counter() - t0
        rows.append("fastvi           " + _summary(ours, t_ours, args.threshold))
        if not args.no_compare:
            print(
                f"fastvi fitted in {t_ours:.2f} s; now scikit-learn on the same data "
                "(slower; --no-compare skips it)",
                flush=True,
            )
            t0 = time.perf_counter()
            theirs = SkBGM(**params).fit(X)
            t_theirs = time.perf_counter() - t0
            rows.append(
                "scikit-learn     " + _summary(theirs, t_theirs, args.threshold)
            )

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


_DESCRIPTION = """\
fastvi: fast variational inference on the CPU. The first use of a model on a
machine compiles its kernels (seconds, once; 'fastvi warmup' does it ahead of
time). 'fastvi COMMAND --help' lists a command's options.
"""


def _build_parser():
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fastvi",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastvi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="fit a Bayesian Gaussian mixture on built-in data",
        description="Fit BayesianGaussianMixture to generated blobs with fastvi and "
        "with scikit-learn (same data, parameters and seed) and print what each "
        "found and how long it took. The first run on a machine compiles fastvi's "
        "kernels first (once; see 'fastvi warmup').",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument(
        "--n-samples", type=int, default=20_000, help="number of generated points"
    )
    demo.add_argument(
        "--n-features", type=int, default=8, help="dimension of the points"
    )
    demo.add_argument(
        "--true-clusters",
        type=int,
        default=6,
        help="clusters the points are drawn from",
    )
    demo.add_argument(
        "--n-components",
        type=int,
        default=12,
        help="mixture components fitted (unneeded ones get ~0 weight)",
    )
    demo.add_argument(
        "--covariance-type",
        default="full",
        choices=["full", "tied", "diag", "spherical"],
        help="form of the components' covariances",
    )
    demo.add_argument(
        "--max-iter", type=int, default=500, help="CAVI iterations at most"
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the data and of the fits"
    )
    demo.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help="fastvi's threads (default: all cores)",
    )
    demo.add_argument(
        "--threshold",
        type=float,
        default=0.01,
        help="weight above which a component counts as effective",
    )
    demo.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the scikit-learn fit (the slow part of the demo)",
    )
    demo.set_defaults(func=_demo)
    _add_warmup_command(sub)
    _add_batch_commands(sub)
    from .report import add_command as add_report_command

    add_report_command(sub)
    return parser


def _add_warmup_command(sub):
    from ._compile import WARMUPS

    warm = sub.add_parser(
        "warmup",
        help="compile the kernels now, once per machine",
        description="Compile fastvi's kernels (or load them from the cache) by "
        "fitting each model once on tiny data, so that later processes start fast. "
        "Run it once when building an image, on each cluster node, or at the start "
        "of a CI job. The kernels are cached in FASTVI_CACHE_DIR, NUMBA_CACHE_DIR, or "
        "the user cache folder (~/.cache/fastvi on Linux).",
    )
    warm.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help=f"model families to compile: {', '.join(WARMUPS)} (default: all)",
    )
    warm.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    warm.set_defaults(func=_warmup)


def _warmup(args):
    from ._compile import WARMUPS, warmup

    names = args.models or list(WARMUPS)
    unknown = [m for m in names if m not in WARMUPS]
    if unknown:
        raise ValueError(
            f"unknown model {unknown[0]!r}{_did_you_mean(unknown[0], WARMUPS)}; "
            f"choose from {', '.join(WARMUPS)}"
        )
    bar = None
    if not args.quiet:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            bar = tqdm(total=len(names), unit="model", file=sys.stderr)

    def progress(name, seconds):
        if args.quiet:
            return
        if bar is not None:
            if seconds is None:
                bar.set_description(f"compiling {name}")
            else:
                bar.update(1)
        elif seconds is None:
            print(f"compiling {name} ...", file=sys.stderr, flush=True)
        else:
            print(f"  {name}: {seconds:.1f} s", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    try:
        seconds = warmup(names, progress)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        from .kernels._config import cache_dir

        each = ", ".join(f"{name} {secs:.1f} s" for name, secs in seconds.items())
        print(
            f"fastvi warmup: compiled in {time.perf_counter() - t0:.1f} s ({each}); "
            f"cache: {cache_dir()}"
        )
    return 0


def _did_you_mean(word, choices):
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show_library_log(args):
    """Show the library's INFO lines (the 'compiling ...' notice) on stderr."""
    import logging

    class _Stderr(logging.StreamHandler):
        # whatever sys.stderr is when a line is written (tests replace it)
        stream = property(lambda self: sys.stderr, lambda self, value: None)

    log = logging.getLogger("fastvi")
    if getattr(args, "quiet", False) or log.handlers:
        return
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("fastvi: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv=None):
    """Entry point of the ``fastvi`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    _show_library_log(args)
    try:
        return args.func(args)
    except (ValueError, OSError, TypeError) as exc:
        message = " ".join(str(exc).split())  # one line
        print(f"fastvi: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastvi: interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------- batch jobs
_GMM_OPTIONS = {
    "n_components": int,
    "covariance_type": str,
    "max_iter": int,
    "tol": float,
    "reg_covar": float,
    "n_init": int,
    "init_params": str,
    "weight_concentration_prior_type": str,
    "weight_concentration_prior": float,
    "random_state": int,
    "n_jobs": int,
}
_LDA_OPTIONS = {
    "n_components": int,
    "max_iter": int,
    "learning_method": str,
    "learning_decay": float,
    "learning_offset": float,
    "batch_size": int,
    "evaluate_every": int,
    "perp_tol": float,
    "doc_topic_prior": float,
    "topic_word_prior": float,
    "random_state": int,
    "n_jobs": int,
}
_CLASSES = {"gmm": "BayesianGaussianMixture", "lda": "LatentDirichletAllocation"}


def _add_batch_commands(sub):
    fit = sub.add_parser("fit", help="fit a model to a data file and save it")
    fit.add_argument("model", choices=sorted(_CLASSES))
    fit.add_argument("input")
    fit.add_argument("--output", "-o", required=True, help="model file (.npz)")
    for name, kind in {**_GMM_OPTIONS, **_LDA_OPTIONS}.items():
        fit.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=argparse.SUPPRESS
        )
    fit.add_argument("--block-rows", type=int, default=None)
    fit.add_argument(
        "--in-memory",
        action="store_true",
        help="load a .npy file whole instead of streaming it block by block",
    )
    fit.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="gmm, .npy input: fit on this Dask cluster (tcp://host:8786); the "
        "workers read the file at the same path",
    )
    fit.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="save the fit state to FILE (atomically) as the fit goes",
    )
    fit.add_argument(
        "--checkpoint-every",
        type=int,
        default=1,
        metavar="N",
        help="iterations (gmm) or epochs (lda) between checkpoints (default 1)",
    )
    fit.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint FILE if it exists (bitwise the "
        "uninterrupted model)",
    )
    _add_common(fit)
    fit.set_defaults(func=_fit)

    predict = sub.add_parser("predict", help="labels (gmm) or topic mixes (lda)")
    predict.add_argument("model_file")
    predict.add_argument("input")
    predict.add_argument("--output", "-o", required=True, help="result (.npy)")
    predict.add_argument(
        "--proba", action="store_true", help="gmm: component probabilities"
    )
    _add_common(predict)
    predict.set_defaults(func=_predict)

    score = sub.add_parser("score", help="mean log-likelihood (gmm) or bound (lda)")
    score.add_argument("model_file")
    score.add_argument("input")
    _add_common(score)
    score.set_defaults(func=_score)

    info = sub.add_parser("info", help="describe a model, checkpoint or data file")
    info.add_argument("file")
    info.add_argument("--format", dest="fmt", default="auto")
    info.add_argument("--header", action="store_true")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_info)


def _add_common(parser):
    parser.add_argument(
        "--format",
        dest="fmt",
        default="auto",
        choices=["auto", "npy", "npz", "csv", "tsv", "parquet", "docword"],
        help="input format (default: from the file name)",
    )
    parser.add_argument("--header", action="store_true", help="CSV has a header line")
    parser.add_argument("--quiet", "-q", action="store_true")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def _check_output(path, *inputs):
    """Fail before any work when the output cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{path}: the output path is a directory")
    if not os.path.isdir(directory):
        raise ValueError(f"{path}: the output directory does not exist")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"{path}: the output directory is not writable")
    for other in inputs:
        if other and _same_file(path, other):
            raise ValueError(f"{path}: the output would overwrite an input")


def _same_file(a, b):
    """Whether paths ``a`` and ``b`` name one file, existing or not yet.

    Compares the normalized absolute paths with symbolic links resolved (so
    ``x.npz``, ``./x.npz`` and a link to it agree even before the file exists),
    and the files themselves when both exist (hard links).
    """
    real = [os.path.normcase(os.path.realpath(os.path.abspath(p))) for p in (a, b)]
    if real[0] == real[1]:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _open_data(args, model, allow_stream):
    """The input as an array, a CSR matrix, or an out-of-core row source."""
    from .batch.io import DataError, NpyRows, data_format, read_data

    fmt = data_format(args.input, args.fmt)
    if model == "gmm" and fmt == "npy" and allow_stream:
        try:
            return NpyRows(args.input, **_block_rows(args))
        except DataError as exc:
            if "float64 C-order" not in str(exc):
                raise
    X = read_data(args.input, fmt=fmt, header=args.header)
    import scipy.sparse as sp

    if model == "gmm" and sp.issparse(X):
        raise DataError(f"{args.input}: gmm needs dense data, got a sparse matrix")
    if model == "lda":
        if sp.issparse(X):
            bad = X.data < 0
        else:
            bad = np.asarray(X) < 0
        if bad.any():
            raise DataError(f"{args.input}: lda needs non-negative counts")
    return X


def _open_on_cluster(args):
    """``(dask array, Client)`` for ``--scheduler``: the workers read the file."""
    from .batch.io import DataError, dask_rows, data_format

    if args.model != "gmm":
        raise ValueError("--scheduler is supported for 'gmm' only")
    if data_format(args.input, args.fmt) != "npy":
        raise DataError(f"{args.input}: --scheduler needs a float64 .npy file")
    try:
        from distributed import Client
    except ImportError:
        raise ValueError(
            '--scheduler needs dask.distributed: pip install "fastvi[dask]"'
        ) from None
    X = dask_rows(args.input, **_block_rows(args))
    try:
        client = Client(args.scheduler, timeout=30)
    except (OSError, TimeoutError) as exc:
        raise ValueError(
            f"--scheduler {args.scheduler}: cannot connect ({exc})"
        ) from None
    return X, client


def _block_rows(args):
    rows = getattr(args, "block_rows", None)
    return {} if rows is None else {"block_rows": rows}


def _estimator(args):
    options = _GMM_OPTIONS if args.model == "gmm" else _LDA_OPTIONS
    given = {
        k: getattr(args, k)
        for k in {**_GMM_OPTIONS, **_LDA_OPTIONS}
        if hasattr(args, k)
    }
    wrong = sorted(k for k in given if k not in options)
    if wrong:
        names = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise ValueError(f"{names}: not an option of '{args.model}'")
    if args.model == "gmm":
        from .mixture import BayesianGaussianMixture

        return BayesianGaussianMixture(**given)
    from .lda import LatentDirichletAllocation

    return LatentDirichletAllocation(**given)


class _StopFlag:
    """First Ctrl-C: stop after the current iteration; a second one: stop now."""

    def __init__(self):
        self.requested = False

    def __call__(self):
        return self.requested

    def handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nfastvi: stopping after this iteration (Ctrl-C again to abort)",
            file=sys.stderr,
        )


def _fit(args):
    from .batch.io import NpyRows

    _check_output(args.output, args.input)
    if args.resume and not args.checkpoint:
        raise ValueError("--resume needs --checkpoint FILE")
    if args.checkpoint:
        if _same_file(args.checkpoint, args.output):
            raise ValueError(
                f"--checkpoint {args.checkpoint}: is the output file {args.output}; "
                "the checkpoint is deleted once the model is written, so it needs a "
                "path of its own"
            )
        _check_output(args.checkpoint, args.input, args.output)
    est = _estimator(args)
    if not args.scheduler:
        streams = (
            args.model == "gmm"
            and not args.in_memory
            and est.init_params in ("random", "random_from_data")
        )
        X = _open_data(args, args.model, allow_stream=streams)
        return _run_fit(args, est, X, out_of_core=isinstance(X, NpyRows))
    X, client = _open_on_cluster(args)
    try:
        return _run_fit(args, est, X, out_of_core=True)
    finally:
        client.close()


def _run_fit(args, est, X, out_of_core):
    """Fit ``est`` to ``X`` (progress, checkpoints, Ctrl-C), save it, report."""
    from sklearn.exceptions import ConvergenceWarning

    from .batch.jobs import Interrupted, Progress, fit_lda, fit_mixture
    from .persist import save

    n_rows = X.shape[0]
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        progress = Progress(est.max_iter, n_rows, quiet=args.quiet or args.json)
        stop = _StopFlag()
        previous = None
        if args.checkpoint:
            previous = signal.signal(signal.SIGINT, stop.handler)
        try:
            (fit_mixture if args.model == "gmm" else fit_lda)(
                est,
                X,
                progress=progress,
                checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every,
                resume=args.resume,
                should_stop=stop,
            )
        except Interrupted as exc:
            progress.close()
            print(f"fastvi: {exc}; rerun with --resume to continue", file=sys.stderr)
            return 130
        finally:
            progress.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
    seconds = time.perf_counter() - t0
    save(est, args.output)
    if args.checkpoint and os.path.exists(args.checkpoint):
        os.unlink(args.checkpoint)  # the job is done: the model file replaces it
    summary = {
        "command": "fit",
        "model": args.model,
        "class": type(est).__name__,
        "input": args.input,
        "output": args.output,
        "n_samples": int(n_rows),
        "n_features": int(X.shape[1]),
        "out_of_core": out_of_core,
        "seconds": round(seconds, 6),
        "n_iter": int(est.n_iter_),
    }
    if args.model == "gmm":
        summary.update(
            converged=bool(est.converged_), lower_bound=float(est.lower_bound_)
        )
    else:
        summary.update(perplexity=float(est.bound_))
    not_converged = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    _report(args, summary, not_converged)
    return 0


def _report(args, summary, not_converged=False):
    if args.json:
        print(json.dumps(summary))
        return
    if args.quiet:
        return
    text = ", ".join(f"{k}={v}" for k, v in summary.items() if k != "command")
    print(f"fastvi {summary['command']}: {text}")
    if not_converged:
        print(
            "fastvi: warning: the fit did not converge (increase --max-iter or --tol)",
            file=sys.stderr,
        )


def _load_model(path):
    from .persist import load

    est, extra = load(path, return_extra=True)
    kinds = {v: k for k, v in _CLASSES.items()}
    name = type(est).__name__
    if name not in kinds:
        raise ValueError(f"{path}: holds a {name}; predict/score support gmm and lda")
    if not hasattr(est, "n_features_in_"):
        raise ValueError(f"{path}: the model is not fitted")
    return est, kinds[name]


def _check_features(est, X, path):
    if X.shape[1] != est.n_features_in_:
        raise ValueError(
            f"{path}: has {X.shape[1]} columns, the model expects {est.n_features_in_}"
        )


def _rows_of(X, model):
    """(start, stop, rows) blocks of a row source, or the whole array once."""
    from .batch.io import NpyRows

    if isinstance(X, NpyRows):
        for start, stop, view in X.iter_blocks():
            yield start, stop, view[1:]
    else:
        yield 0, X.shape[0], X


def _predict(args):
    from .persist import atomic_write

    _check_output(args.output, args.input, args.model_file)
    est, model = _load_model(args.model_file)
    if args.proba and model != "gmm":
        raise ValueError("--proba applies to gmm models")
    X = _open_data(args, model, allow_stream=True)
    _check_features(est, X, args.input)
    n = X.shape[0]
    if model == "lda":
        width, dtype = est.n_components, est.components_.dtype
    elif args.proba:
        width, dtype = est.n_components, np.dtype(np.float64)
    else:
        width, dtype = None, np.dtype(np.int64)
    shape = (n,) if width is None else (n, width)
    header = {"descr": dtype.str, "fortran_order": False, "shape": shape}
    with atomic_write(args.output) as fh:
        np.lib.format.write_array_header_2_0(fh, header)
        for _, _, rows in _rows_of(X, model):
            if model == "lda":
                out = est.transform(rows)
            elif args.proba:
                out = est.predict_proba(rows)
            else:
                out = est.predict(rows)
            fh.write(np.ascontiguousarray(out, dtype=dtype).tobytes())
    _report(
        args,
        {
            "command": "predict",
            "model": model,
            "input": args.input,
            "output": args.output,
            "shape": list(shape),
        },
    )
    return 0


def _score(args):
    est, model = _load_model(args.model_file)
    X = _open_data(args, model, allow_stream=True)
    _check_features(est, X, args.input)
    summary = {"command": "score", "model": model, "input": args.input}
    if model == "gmm":
        total = 0.0
        for _, _, rows in _rows_of(X, model):
            total += float(np.sum(est.score_samples(rows)))
        summary["mean_log_likelihood"] = total / X.shape[0]
    else:
        summary["log_likelihood_bound"] = float(est.score(X))
        summary["perplexity"] = float(est.perplexity(X))
    if args.json:
        print(json.dumps(summary))
    else:
        key = "mean_log_likelihood" if model == "gmm" else "log_likelihood_bound"
        print(f"{summary[key]:.10g}")
    return 0


def _info(args):
    from .batch.io import data_format, read_data
    from .persist import is_model_file, read_metadata

    path = args.file
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    if is_model_file(path):
        meta = read_metadata(path)
        summary = {
            "file": path,
            "kind": meta.get("kind"),
            "class": meta.get("class"),
            "format_version": meta.get("format_version"),
            "fastvi_version": meta.get("fastvi_version"),
            "params": meta.get("params"),
            "arrays": meta.get("arrays"),
        }
        extra = meta.get("extra") or {}
        if "iteration" in extra:
            summary["iteration"] = extra["iteration"]
            summary["converged"] = extra.get("converged")
    else:
        # a damaged model file is no model file (is_model_file): read_data then
        # says what is wrong with it as data
        X = read_data(path, fmt=args.fmt, header=args.header, check=False)
        summary = {
            "file": path,
            "kind": "data",
            "format": data_format(path, args.fmt),
            "shape": [int(v) for v in X.shape],
            "dtype": str(X.dtype),
        }
        if hasattr(X, "nnz"):
            summary["nnz"] = int(X.nnz)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            if key == "arrays":
                value = ", ".join(
                    f"{k} {v['dtype']} {tuple(v['shape'])}" for k, v in value.items()
                )
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
