"""The ``fastvi`` command line (also ``python -m fastvi``).

``fastvi demo`` fits BayesianGaussianMixture on generated data with fastvi and with
scikit-learn (same data, parameters and seed) and prints what each found and how long
it took; ``fastvi warmup`` compiles the kernels; ``fastvi report`` is
:mod:`fastvi.report`'s. Batch jobs::

    fastvi fit MODEL INPUT --output MODEL.npz [model options] [--target COLUMN]
        [--checkpoint FILE --checkpoint-every N --resume|--overwrite] [--quiet] [--json]
    fastvi predict MODEL.npz INPUT --output OUT.npy|OUT.csv|OUT.tsv [--proba]
    fastvi score MODEL.npz INPUT [--json]
    fastvi info FILE [--json]

MODEL is one of the estimators of :mod:`fastvi._registry`; its options are made from
its class's parameters and docstring (:mod:`fastvi.batch.options`). A fit runs through
the job drivers of :mod:`fastvi.batch.jobs` (progress, checkpoints, resume, Ctrl-C).
What each command and option does is in its ``--help`` and in the README ("Batch
jobs": inputs, out-of-core fits, outputs, checkpoints, progress). Errors print one
line on stderr and exit with status 2; nothing is written to the output path.

The commands are the ``_add_*_command`` functions listed in ``_COMMANDS``: a new
command is one more such function.
"""

import argparse
import functools
import json
import os
import re
import signal
import sys
import time
import warnings

import numpy as np

from .batch.options import positive_int as _positive_int

__all__ = ["main"]


def _make_blobs(n_samples, n_features, n_clusters, seed):
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that suggest the closest choice.

    Errors print ``fastvi: error: <command>: <message>`` on one line (as every other
    error of the command line does) and exit with status 2; a wrong choice (a model,
    a ``--covariance-type``) adds "did you mean ...?".
    """

    def error(self, message):
        wrong = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if wrong:
            choices = re.findall(r"'([^']*)'", wrong.group(2))
            message += _did_you_mean(wrong.group(1), choices)
        where = self.prog.removeprefix("fastvi").strip()
        where = f"{where}: " if where else ""
        hint = f" ('{self.prog} --help' lists what it takes)"
        print(f"fastvi: error: {where}{message}{hint}", file=sys.stderr)
        sys.exit(2)


def _build_parser(argv=None):
    """The parser of every command (``_COMMANDS``); ``argv`` tells which model of
    ``fastvi fit MODEL`` gets its options (they are made by importing its class)."""
    from . import __version__

    parser = _Parser(
        prog="fastvi",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastvi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(sub, argv)
    return parser


def _add_demo_command(sub, argv):
    demo = sub.add_parser(
        "demo",
        help="fit a Bayesian Gaussian mixture on built-in data",
        description="Fit BayesianGaussianMixture to generated blobs with fastvi and "
        "with scikit-learn (same data, parameters and seed) and print what each "
        "found and how long it took. The first run on a machine compiles fastvi's "
        "kernels first (once; see 'fastvi warmup').",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = demo.add_argument
    add("--n-samples", type=int, default=20_000, help="number of generated points")
    add("--n-features", type=int, default=8, help="dimension of the points")
    add(
        "--true-clusters",
        type=int,
        default=6,
        help="clusters the points are drawn from",
    )
    add(
        "--n-components",
        type=int,
        default=12,
        help="mixture components fitted (unneeded ones get ~0 weight)",
    )
    add(
        "--covariance-type",
        default="full",
        choices=["full", "tied", "diag", "spherical"],
        help="form of the components' covariances",
    )
    add("--max-iter", type=int, default=500, help="CAVI iterations at most")
    add("--seed", type=int, default=0, help="seed of the data and of the fits")
    add("--n-jobs", type=int, help="fastvi's threads (default: all cores)")
    add(
        "--threshold",
        type=float,
        default=0.01,
        help="weight above which a component counts as effective",
    )
    add(
        "--no-compare",
        action="store_true",
        help="skip the scikit-learn fit (the slow part of the demo)",
    )
    demo.set_defaults(func=_demo)


def _add_warmup_command(sub, argv):
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


def _selected_model(argv):
    """The MODEL of ``fastvi fit MODEL ...`` in ``argv``, or None."""
    words = [
        w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")
    ]
    return words[1] if len(words) > 1 and words[0] == "fit" else None


def _unrecognized(args, extras):
    """One message for arguments no parser took, naming the closest option."""
    import difflib

    leaf = getattr(args, "_parser", None)
    flags = [] if leaf is None else list(leaf._option_string_actions)
    problems = []
    after_flag = False
    for word in extras:
        if not word.startswith("-"):
            if not after_flag:  # else the value of the unknown option before it
                problems.append(f"unexpected argument {word!r}")
            continue
        after_flag = True
        flag = word.split("=", 1)[0]
        owners = _models_with_option(flag) if getattr(args, "entry", None) else []
        if owners:
            problems.append(
                f"{flag} is not an option of '{args.entry.command}' (it is one of "
                f"{', '.join(owners)})"
            )
            continue
        close = difflib.get_close_matches(flag, flags, n=1)
        problems.append(
            f"unknown option {flag}" + (f" (did you mean {close[0]}?)" if close else "")
        )
    return "; ".join(problems)


def main(argv=None):
    """Entry point of the ``fastvi`` console script."""
    parser = _build_parser(argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        (getattr(args, "_parser", None) or parser).error(_unrecognized(args, extras))
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
# the SGVI models (fastvi.batch.jobs.fit_sgvi; lda: fit_lda; the others: fit_cavi)
_SGVI = ("sgvi-logistic", "sgvi-poisson")
# models that fit a float64 C-order .npy file out of core, block by block
_OUT_OF_CORE = ("gmm", "gaussian", "linear", "logistic", *_SGVI)


def _add_fit_command(sub, argv):
    from ._registry import ESTIMATORS

    fit = sub.add_parser(
        "fit",
        help="fit a model to a data file and save it",
        description="Fit MODEL to the data file INPUT and save it. 'fastvi fit MODEL "
        "--help' lists the options of MODEL: one per parameter of its estimator "
        "class, with the class's help text, default and choices.",
    )
    models = fit.add_subparsers(dest="model", required=True, metavar="MODEL")
    selected = _selected_model(argv)
    for entry in ESTIMATORS:
        _add_fit_model(models, entry, with_options=entry.command == selected)


def _add_fit_model(models, entry, with_options=True):
    """``fastvi fit ENTRY.command``; its model options only when ``with_options``."""
    model = models.add_parser(
        entry.command,
        help=f"{entry.name}: {entry.summary}",
        description=f"Fit fastvi.{entry.name} ({entry.summary}) to INPUT and save "
        "it to --output. Row and column numbers in messages count from 1.",
    )
    model.add_argument(
        "input", help="data file (.npy, .npz, .csv, .tsv, .parquet, docword.*.txt)"
    )
    model.add_argument(
        "--output", "-o", required=True, metavar="MODEL.npz", help="model file"
    )
    if entry.supervised:
        _add_target(
            model,
            "the column of INPUT that holds y, counted from 1 (default: the last); "
            "the other columns are the features",
        )
    names = []
    if with_options:
        from ._registry import by_class, estimator_class
        from .batch.options import add_model_options

        docs_from = estimator_class(entry.docs_from) if entry.docs_from else None
        names = add_model_options(
            model,
            estimator_class(entry.name),
            docs_from=docs_from,
            title=f"model options (the parameters of {entry.name})",
        )
        assert by_class(entry.name) is entry
    if entry.command in _OUT_OF_CORE:
        model.add_argument(
            "--block-rows",
            type=_positive_int,
            metavar="N",
            help="rows per block of an out-of-core .npy fit (default 65536: the "
            "blocks of an in-memory fit, so both give the same bits)",
        )
        model.add_argument(
            "--in-memory",
            action="store_true",
            help="load a .npy file whole instead of streaming it block by block",
        )
    if entry.command == "gmm":
        model.add_argument(
            "--scheduler",
            metavar="ADDRESS",
            help=".npy input: fit on this Dask cluster (tcp://host:8786); the "
            "workers read the file at the same path",
        )
    # every model's fit driver (fastvi.batch.jobs) takes checkpoints
    model.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="save the fit state to FILE (atomically) as the fit goes",
    )
    model.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=1,
        metavar="N",
        help=f"{entry.iterations} between checkpoints (default 1)",
    )
    model.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint FILE if it exists (bitwise the "
        "uninterrupted model)",
    )
    model.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh over an existing --checkpoint FILE",
    )
    _add_common(model)
    model.set_defaults(func=_fit, entry=entry, _params=names, _parser=model)
    return model


def _models_with_option(flag):
    """The models of ``fastvi fit`` that have option ``flag`` (imports them all)."""
    from ._registry import ESTIMATORS

    scratch = _Parser(prog="fastvi fit").add_subparsers()
    return [
        entry.command
        for entry in ESTIMATORS
        if flag in _add_fit_model(scratch, entry)._option_string_actions
    ]


def _column_number(text):
    """A column number counted from 1 (as messages count them)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a column number (1 is the first column), got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"columns are counted from 1 (the first column), got {value}"
        )
    return value


def _add_predict_command(sub, argv):
    predict = sub.add_parser(
        "predict",
        help="per-row predictions of a saved model",
        description="Predict for every row of INPUT with a saved model: the "
        "component (gmm), the topic mix (lda), the class (logistic, sgvi-logistic), "
        "the mean (linear, sgvi-poisson). The output's format follows its name: "
        ".npy, .csv or .tsv (one row per input row, numbers written exactly).",
    )
    predict.add_argument("model_file")
    predict.add_argument("input")
    predict.add_argument(
        "--output", "-o", required=True, help="result (.npy, .csv or .tsv)"
    )
    predict.add_argument(
        "--proba",
        action="store_true",
        help="probabilities: of the components (gmm) or classes (logistic, "
        "sgvi-logistic)",
    )
    _add_target(
        predict,
        "regressions and classifiers: drop this column of INPUT (counted from 1), "
        "the target of a training file; by default every column is a feature",
    )
    _add_common(predict)
    predict.set_defaults(func=_predict, _parser=predict)


def _add_score_command(sub, argv):
    score = sub.add_parser(
        "score",
        help="score a saved model on data (prints what the number is)",
        description="Score a saved model on INPUT: gmm the mean log-likelihood per "
        "row, lda the log-likelihood bound and perplexity, gaussian the mean log "
        "predictive density, linear R^2, logistic and sgvi-logistic the accuracy, "
        "sgvi-poisson D^2. The printed line names the number.",
    )
    score.add_argument("model_file")
    score.add_argument("input")
    _add_target(
        score,
        "regressions and classifiers: the column of INPUT holding y, counted from 1 "
        "(default: the last)",
    )
    _add_common(score)
    score.set_defaults(func=_score, _parser=score)


def _add_info_command(sub, argv):
    info = sub.add_parser(
        "info",
        help="describe a model, checkpoint or data file",
        description="Describe a file: for a model, its class, parameters, arrays "
        "and how its fit went (iterations, convergence, final bound); for a "
        "checkpoint, where the fit stands; for data, its format and shape.",
    )
    info.add_argument("file")
    _add_common(info, quiet=False)
    info.set_defaults(func=_info, _parser=info)


_FORMATS = ["auto", "npy", "npz", "csv", "tsv", "parquet", "docword"]


def _add_common(parser, quiet=True):
    parser.add_argument(
        "--format",
        dest="fmt",
        default="auto",
        choices=_FORMATS,
        help="input format (default: from the file name)",
    )
    parser.add_argument("--header", action="store_true", help="CSV has a header line")
    if quiet:
        parser.add_argument(
            "--quiet", "-q", action="store_true", help="no progress and no summary line"
        )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def _add_target(parser, help):
    parser.add_argument(
        "--target", type=_column_number, default=None, metavar="COLUMN", help=help
    )


def _add_report_command(sub, argv):
    from .report import add_command

    add_command(sub)


# Each adds one subcommand: add_command(subparsers, argv). A new command is a new
# function here (argv is there for commands whose options depend on it, as fit's).
_COMMANDS = [
    _add_demo_command,
    _add_warmup_command,
    _add_fit_command,
    _add_predict_command,
    _add_score_command,
    _add_info_command,
    _add_report_command,
]


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
    if model in _OUT_OF_CORE and fmt == "npy" and allow_stream:
        try:
            return NpyRows(args.input, **_block_rows(args))
        except DataError as exc:
            if "float64 C-order" not in str(exc):
                raise
    X = read_data(args.input, fmt=fmt, header=args.header)
    import scipy.sparse as sp

    if model != "lda" and sp.issparse(X):
        raise DataError(f"{args.input}: {model} needs dense data, got a sparse matrix")
    if model == "lda" and np.any((X.data if sp.issparse(X) else np.asarray(X)) < 0):
        raise DataError(f"{args.input}: lda needs non-negative counts")
    return X


def _split_target(args, X, column):
    """``(features, y)``: column ``column`` (from 1; None: the last) of ``X`` is y.

    An out-of-core source (:class:`~fastvi.batch.io.NpyRows`) stays out of core:
    y is read from the file's column (one number per row, in memory) and the
    features are its other columns, block by block (:class:`_WithoutColumn`).
    """
    from .batch.io import DataError, NpyRows

    n_columns = X.shape[1]
    if n_columns < 2:
        raise DataError(
            f"{args.input}: has 1 column; a regression or classifier needs the "
            "features and a target column"
        )
    j = n_columns if column is None else column
    if j > n_columns:
        raise DataError(
            f"{args.input}: --target {j}: the file has {n_columns} columns "
            "(counted from 1)"
        )
    if isinstance(X, NpyRows):
        return _WithoutColumn(X, j - 1), _column_of(args.input, j - 1)
    X = np.asarray(X)
    keep = [k for k in range(n_columns) if k != j - 1]
    return np.ascontiguousarray(X[:, keep]), np.array(X[:, j - 1])


def _column_of(path, j):
    """Column ``j`` (from 0) of a 2-D .npy file as float64, every value checked."""
    from .batch.io import DataError

    y = np.array(np.load(path, mmap_mode="r", allow_pickle=False)[:, j])
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise DataError(
            f"{path}: row {bad[0] + 1}, column {j + 1}: value {y[bad[0]]} is not finite"
        )
    return y


class _WithoutColumn:
    """The blocks of a block source (``iter_blocks``) without its column ``j``.

    Each block's other columns are copied, in order, into one buffer allocated
    once (with the spare first row of the source's convention), so the rows a fit
    sees are those of the in-memory array without that column: the same bits.
    """

    def __init__(self, source, j):
        self.source, self.j = source, j
        n, d = source.shape
        self.shape = (n, d - 1)
        self.block_rows = source.block_rows
        self.dtype = np.dtype(np.float64)
        self._keep = [k for k in range(d) if k != j]
        self._buffer = None

    def iter_blocks(self):
        if self._buffer is None:
            self._buffer = np.empty((self.block_rows + 1, self.shape[1]))
        for start, stop, view in self.source.iter_blocks():
            out = self._buffer[: 1 + stop - start]
            np.take(view[1:], self._keep, axis=1, out=out[1:])
            yield start, stop, out


def _open_on_cluster(args):
    """``(dask array, Client)`` for ``--scheduler``: the workers read the file."""
    from .batch.io import DataError, dask_rows, data_format

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
    """The model's estimator with the options given (validated before any work)."""
    from ._registry import estimator_class

    cls = estimator_class(args.entry.name)
    est = cls(**{k: getattr(args, k) for k in args._params if hasattr(args, k)})
    est._validate_params()
    return est


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


def _check_checkpoint(args):
    """Refuse checkpoint options that cannot work, before any work."""
    for flag in ("resume", "overwrite"):
        if getattr(args, flag) and not args.checkpoint:
            raise ValueError(f"--{flag} needs --checkpoint FILE")
    if args.resume and args.overwrite:
        raise ValueError(
            "--resume continues the checkpoint, --overwrite replaces it: pass one"
        )
    if not args.checkpoint:
        return
    if _same_file(args.checkpoint, args.output):
        raise ValueError(
            f"--checkpoint {args.checkpoint}: is the output file {args.output}; "
            "the checkpoint is deleted once the model is written, so it needs a "
            "path of its own"
        )
    _check_output(args.checkpoint, args.input, args.output)
    if os.path.exists(args.checkpoint) and not (args.resume or args.overwrite):
        raise ValueError(
            f"--checkpoint {args.checkpoint}: the file exists (an unfinished fit?); "
            "pass --resume to continue it or --overwrite to start afresh"
        )


def _fit(args):
    from .batch.io import NpyRows

    entry = args.entry
    _check_output(args.output, args.input)
    _check_checkpoint(args)
    est = _estimator(args)
    # a job runs on kernels loaded from numba's cache, never on ones it compiled
    # itself (the two may round differently: a resumed job must give the same bits)
    from ._compile import compile_in_child

    compile_in_child(type(est))
    y = None
    if entry.command == "gmm" and args.scheduler:
        X, client = _open_on_cluster(args)
        try:
            return _run_fit(args, est, X, None, out_of_core=True)
        finally:
            client.close()
    streams = entry.command in _OUT_OF_CORE and not args.in_memory
    if entry.command == "gmm":  # the other initializations need all rows at once
        streams = streams and est.init_params in ("random", "random_from_data")
    X = _open_data(args, entry.command, allow_stream=streams)
    if entry.supervised:
        X, y = _split_target(args, X, args.target)
    return _run_fit(
        args, est, X, y, out_of_core=isinstance(X, (NpyRows, _WithoutColumn))
    )


def _run_fit(args, est, X, y, out_of_core):
    """Fit ``est`` to ``X`` (progress, checkpoints, Ctrl-C), save it, report."""
    from sklearn.exceptions import ConvergenceWarning

    from .batch import jobs
    from .persist import save

    entry = args.entry
    n_rows = X.shape[0]
    checkpoint = getattr(args, "checkpoint", None)
    quiet = args.quiet or args.json
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        progress = jobs.Progress(est.max_iter, n_rows, quiet=quiet)
        stop = _StopFlag()
        previous = None
        if checkpoint:
            previous = signal.signal(signal.SIGINT, stop.handler)
        try:
            if entry.command == "lda":
                driver = jobs.fit_lda
            else:
                job = jobs.fit_sgvi if entry.command in _SGVI else jobs.fit_cavi
                driver = functools.partial(job, y=y)
            driver(
                est,
                X,
                progress=progress,
                checkpoint=checkpoint,
                checkpoint_every=args.checkpoint_every,
                resume=args.resume,
                should_stop=stop,
            )
        except jobs.Interrupted as exc:
            progress.close()
            print(f"fastvi: {exc}; rerun with --resume to continue", file=sys.stderr)
            return 130
        finally:
            progress.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
    seconds = time.perf_counter() - t0
    save(est, args.output)
    if checkpoint and os.path.exists(checkpoint):
        os.unlink(checkpoint)  # the job is done: the model file replaces it
    summary = {
        "command": "fit",
        "model": entry.command,
        "class": type(est).__name__,
        "input": args.input,
        "output": args.output,
        "n_samples": int(n_rows),
        "n_features": int(est.n_features_in_),
        "out_of_core": out_of_core,
        "seconds": round(seconds, 6),
        **_fit_facts(est),
    }
    not_converged = False
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            not_converged = True
        elif not args.quiet:
            text = " ".join(str(w.message).split())
            print(f"fastvi: warning: {text}", file=sys.stderr)
    _report(args, summary, not_converged)
    return 0


def _fit_facts(est):
    """How the fit of ``est`` went: iterations, convergence, the final bound.

    ``n_iter`` counts iterations (gmm and the CAVI models), epochs (lda) or steps
    (SGVI); VBLogisticRegression with more than two classes gives one value per
    class (one-vs-rest fits). The bound is the ELBO (``lower_bound``; SGVI:
    ``elbo``, the mean ELBO estimate of the last 100 steps) or, for lda, the training
    perplexity (``perplexity``).
    """

    def plain(value):
        value = np.asarray(value)
        return value.tolist() if value.ndim else value.item()

    facts = {}
    if hasattr(est, "n_iter_"):
        facts["n_iter"] = plain(est.n_iter_)
    if hasattr(est, "converged_"):
        facts["converged"] = bool(est.converged_)
    if hasattr(est, "lower_bound_"):
        facts["lower_bound"] = plain(est.lower_bound_)
    elif hasattr(est, "elbo_history_") and len(est.elbo_history_):
        facts["elbo"] = float(np.mean(est.elbo_history_[-100:]))
    elif hasattr(est, "bound_"):
        facts["perplexity"] = float(est.bound_)
    return facts


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
    """``(estimator, registry entry)`` of a model file, refused when not fitted."""
    from ._registry import by_class
    from .persist import load

    est, extra = load(path, return_extra=True)
    entry = by_class(type(est).__name__)
    if entry is None:  # cannot happen: persist loads registered classes only
        raise ValueError(f"{path}: holds a {type(est).__name__}, not a fastvi model")
    if not hasattr(est, "n_features_in_"):
        raise ValueError(f"{path}: the model is not fitted")
    return est, entry


def _check_features(est, X, path, target=None):
    if X.shape[1] != est.n_features_in_:
        hint = ""
        if target is None and X.shape[1] == est.n_features_in_ + 1:
            hint = (
                f"; if column {X.shape[1]} is the target, pass --target "
                f"{X.shape[1]} to drop it"
            )
        raise ValueError(
            f"{path}: has {X.shape[1]} columns, the model expects "
            f"{est.n_features_in_}{hint}"
        )


def _rows_of(X):
    """(start, stop, rows) blocks of a row source, or the whole array once."""
    from .batch.io import NpyRows

    if isinstance(X, NpyRows):
        for start, stop, view in X.iter_blocks():
            yield start, stop, view[1:]
    else:
        yield 0, X.shape[0], X


_OUTPUT_FORMATS = {".npy": "npy", ".csv": ",", ".tsv": "\t"}


def _output_format(path):
    for suffix, kind in _OUTPUT_FORMATS.items():
        if os.fspath(path).lower().endswith(suffix):
            return kind
    raise ValueError(f"{path}: unknown output format; name the file .npy, .csv or .tsv")


class _Output:
    """Writes predictions block by block to an open file, as .npy or text.

    The .npy header needs the shape and dtype: both come from the first block (the
    number of rows is known before). Text rows hold numbers written exactly
    (``%.17g`` for floats) without a header line.
    """

    def __init__(self, fh, kind, n_rows):
        self.fh, self.kind, self.n_rows = fh, kind, n_rows
        self.dtype = None
        self.shape = None

    def write(self, block):
        block = np.asarray(block)
        if self.dtype is None:
            self.dtype = block.dtype
            self.shape = (self.n_rows, *block.shape[1:])
            if self.kind == "npy":
                header = {
                    "descr": np.lib.format.dtype_to_descr(self.dtype),
                    "fortran_order": False,
                    "shape": self.shape,
                }
                np.lib.format.write_array_header_2_0(self.fh, header)
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if self.kind == "npy":
            self.fh.write(block.tobytes())
            return
        fmt = {"f": "%.17g", "i": "%d", "u": "%d", "b": "%d"}.get(
            block.dtype.kind, "%s"
        )
        np.savetxt(self.fh, block, fmt=fmt, delimiter=self.kind)


def _predict(args):
    from .persist import atomic_write

    kind = _output_format(args.output)
    _check_output(args.output, args.input, args.model_file)
    est, entry = _load_model(args.model_file)
    if args.proba and not hasattr(est, "predict_proba"):
        raise ValueError(
            f"--proba: a {entry.command} model has no probabilities (gmm, logistic "
            "and sgvi-logistic models do)"
        )
    if entry.command == "lda":
        method = est.transform
    elif args.proba:
        method = est.predict_proba
    elif hasattr(est, "predict"):
        method = est.predict
    else:
        raise ValueError(
            f"a {entry.command} model predicts nothing per row; 'fastvi score' gives "
            f"its {entry.score[1]}"
        )
    if args.target is not None and not entry.supervised:
        raise ValueError(f"--target: a {entry.command} model has no target column")
    X = _open_data(args, entry.command, allow_stream=entry.command == "gmm")
    if args.target is not None:
        X, _ = _split_target(args, X, args.target)
    _check_features(est, X, args.input, args.target if entry.supervised else 0)
    with atomic_write(args.output) as fh:
        out = _Output(fh, kind, X.shape[0])
        for _, _, rows in _rows_of(X):
            out.write(method(rows))
    _report(
        args,
        {
            "command": "predict",
            "model": entry.command,
            "input": args.input,
            "output": args.output,
            "shape": list(out.shape),
        },
    )
    return 0


def _score(args):
    from ._numerics import check_finite_prediction

    est, entry = _load_model(args.model_file)
    key, label = entry.score
    if args.target is not None and not entry.supervised:
        raise ValueError(f"--target: a {entry.command} model has no target column")
    X = _open_data(args, entry.command, allow_stream=entry.command == "gmm")
    y = None
    if entry.supervised:
        X, y = _split_target(args, X, args.target)
    _check_features(est, X, args.input, target=0)
    summary = {"command": "score", "model": entry.command, "input": args.input}
    lines = []
    if entry.command == "gmm":
        total = 0.0
        for _, _, rows in _rows_of(X):
            log_density = est.score_samples(rows)
            with np.errstate(over="ignore"):  # checked below
                total += float(np.sum(log_density))
        value = total / X.shape[0]
        check_finite_prediction(
            "fastvi score", None, "the log-densities, summed over the rows,", value
        )
    else:  # y is None for the unsupervised models, whose score takes y=None
        value = float(est.score(X, y))
    summary[key] = value
    summary["metric"] = label
    lines.append(f"{label}: {value:.10g}")
    if entry.command == "lda":
        summary["perplexity"] = float(est.perplexity(X))
        lines.append(f"perplexity: {summary['perplexity']:.10g}")
    if args.json:
        print(json.dumps(summary))
    else:  # the result itself, also with --quiet
        print("\n".join(lines))
    return 0


# the labels of :func:`_fit_facts` for people (n_iter: the model's entry.iterations)
_FACT_LABELS = {
    "n_iter": None,
    "converged": "converged",
    "lower_bound": "final lower bound (ELBO)",
    "elbo": "final ELBO (mean estimate of the last 100 steps)",
    "perplexity": "final training perplexity",
}


def _info(args):
    from ._registry import by_class
    from .batch.io import data_format, read_data
    from .persist import is_model_file, load, read_metadata

    path = args.file
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    lines = None
    if is_model_file(path):
        meta = read_metadata(path)
        keys = ("kind", "class", "format_version", "fastvi_version", "params", "arrays")
        summary = {"file": path, **{key: meta.get(key) for key in keys}}
        extra = meta.get("extra") or {}
        if "iteration" in extra:
            summary["iteration"] = extra["iteration"]
            summary["converged"] = extra.get("converged")
        entry = by_class(meta.get("class"))
        if meta.get("kind") == "model" and entry is not None:
            facts = _fit_facts(load(path))
            summary.update(model=entry.command, **facts)
            lines = [(_FACT_LABELS[k] or entry.iterations, v) for k, v in facts.items()]
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
        return 0
    shown = {k for k in summary if lines is not None and k in _FACT_LABELS}
    for key, value in summary.items():
        if key in shown:
            continue
        if key == "arrays":
            value = ", ".join(
                f"{k} {v['dtype']} {tuple(v['shape'])}" for k, v in value.items()
            )
        print(f"{key}: {value}")
    for label, value in lines or []:
        print(f"{label}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
