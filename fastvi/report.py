"""``fastvi report MODEL.npz [DATA] -o report.html``: one self-contained HTML page.

The page holds a summary of a saved model (its parameters, how the fit went, its
diagnostics, its fitted quantities) and the pictures of :mod:`fastvi.plot` that apply
to it, as PNG images embedded in the page (``data:`` URIs) with inline CSS: it opens
from the file, with no network and no server.

DATA (optional) is read like the batch commands' inputs (.npy, .npz, .csv/.tsv,
.parquet, docword). For the regressions its last column (or ``--target-column``) is
y and the others are X. With data the page adds what needs it: the points under a
mixture's ellipses, the score of the model on the data, the calibration of a
classifier's probabilities, the coverage of a linear regression's predictive
intervals and, for the SGVI regressions, the PSIS k-hat of q.

:func:`render` builds the page from an estimator in Python.
"""

from __future__ import annotations

import base64
import html
import io
import os
import warnings

import numpy as np

__all__ = ["add_command", "render", "write_report"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       background: #f6f7f9; color: #1d232a; }
main { max-width: 1060px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.5em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.15em; margin: 1.6em 0 0.5em; border-bottom: 1px solid #d8dde3;
     padding-bottom: 0.2em; }
p.sub { color: #5b6570; margin: 0 0 1em; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr));
        gap: 14px; }
.card { background: #fff; border: 1px solid #dde2e8; border-radius: 6px;
        padding: 10px 14px; }
.card h3 { font-size: 0.95em; margin: 0.2em 0 0.5em; color: #37414b; }
table { border-collapse: collapse; font-size: 0.86em; width: 100%; }
td, th { padding: 3px 8px; border-bottom: 1px solid #eef0f3; text-align: left;
         vertical-align: top; }
th { color: #5b6570; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { background: #fff; border: 1px solid #dde2e8; border-radius: 6px;
         margin: 0 0 14px; padding: 10px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { font-size: 0.85em; color: #4a545e; margin-top: 6px; }
.warn { color: #9a3b00; }
.note { color: #5b6570; font-size: 0.88em; }
"""

_REGRESSIONS = (
    "VBLinearRegression",
    "VBLogisticRegression",
    "BayesianLogisticRegression",
    "BayesianPoissonRegression",
)


# ------------------------------------------------------------------ helpers
def _fmt(value):
    """A short text for a table cell."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    if isinstance(value, np.ndarray):
        if value.size <= 6:
            return "[" + ", ".join(_fmt(v) for v in value.ravel()) + "]"
        return f"array of shape {value.shape}"
    if isinstance(value, (list, tuple)) and len(value) <= 6:
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, (list, tuple)):
        return f"{len(value)} values"
    return str(value)


def _table(rows, header=None):
    """HTML table of ``rows`` (sequences of cell values, escaped here)."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header))
    for row in rows:
        cells = []
        for cell in row:
            text = html.escape(_fmt(cell))
            numeric = isinstance(cell, (int, float, np.integer, np.floating))
            numeric = numeric and not isinstance(cell, (bool, np.bool_))
            cells.append(
                f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"
            )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _upper_first(text):
    return text[:1].upper() + text[1:]


def _card(title, body):
    return f'<div class="card"><h3>{html.escape(title)}</h3>{body}</div>'


def _png(fig, dpi=96):
    """The figure as a base64 PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(**kwargs):
    """A matplotlib Figure outside pyplot (no backend, no global state)."""
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


# ------------------------------------------------------------------ the parts
def _fit_rows(est):
    rows = []
    n_iter = getattr(est, "n_iter_", None)
    if n_iter is not None:
        rows.append(("iterations (n_iter_)", n_iter))
    if hasattr(est, "converged_"):
        rows.append(("converged", est.converged_))
    if hasattr(est, "elbo_history_"):
        elbo = np.asarray(est.elbo_history_, dtype=float)
        tail = elbo[-min(100, elbo.size) :]
        tail = tail[np.isfinite(tail)]
        if tail.size:
            rows.append(
                (f"final ELBO (mean of the last {tail.size} steps)", tail.mean())
            )
    elif hasattr(est, "lower_bound_"):
        rows.append(("final lower bound", est.lower_bound_))
    if hasattr(est, "bound_") and type(est).__name__ == "LatentDirichletAllocation":
        rows.append(("final training perplexity (bound_)", est.bound_))
    return rows


def _parameter_section(est, name, vocabulary):
    """(title, html) of the fitted quantities."""
    if name == "BayesianGaussianMixture":
        weights = np.asarray(est.weights_)
        order = np.argsort(-weights)
        rows = []
        for k in order[: min(12, weights.size)]:
            mean = np.asarray(est.means_[k])
            rows.append((int(k), float(weights[k]), mean[:6]))
        more = "" if weights.size <= 12 else f" (the 12 largest of {weights.size})"
        return (
            f"components by weight{more}",
            _table(rows, ("component", "weight", "mean (first 6 features)")),
        )
    if name == "LatentDirichletAllocation":
        probs = est.components_ / est.components_.sum(axis=1, keepdims=True)
        rows = []
        for t in range(min(probs.shape[0], 30)):
            top = np.argsort(-probs[t], kind="stable")[:8]
            rows.append((t, ", ".join(vocabulary[i] for i in top)))
        return "topics: the most probable words", _table(rows, ("topic", "words"))
    if name in _REGRESSIONS:
        from .plot import _coefficients

        rows = []
        for label, names, mean, sd in _coefficients(est, include_intercept=True):
            for n, m, s in zip(names, mean, sd):
                row = (n, float(m), float(s), float(m - 1.96 * s), float(m + 1.96 * s))
                rows.append(((label,) if label else ()) + row)
        header = ("coefficient", "mean", "sd", "2.5%", "97.5%")
        if rows and len(rows[0]) == 6:
            header = ("problem",) + header
        return "coefficients under q", _table(rows[:200], header)
    if name == "UnivariateGaussian":
        post = getattr(est, "exact_posterior_", None)
        rows = [
            ("E[mu] under q", est.mu_mean_),
            ("sd[mu] under q", float(np.sqrt(est.mu_var_))),
            ("E[tau] under q", est.tau_mean_),
        ]
        if post is not None:
            rows += [
                ("E[mu], exact posterior", post.mean_mu),
                ("sd[mu], exact posterior", float(np.sqrt(post.var_mu))),
                ("E[tau], exact posterior", post.mean_tau),
                ("log evidence, exact", post.log_evidence),
            ]
        return "posterior", _table(rows)
    return "fitted quantities", "<p class='note'>no summary for this class</p>"


def _split_target(est, data, target_column):
    import scipy.sparse as sp

    if sp.issparse(data):
        raise ValueError("regression data must be dense (X columns and y)")
    data = np.asarray(data, dtype=float)
    width = est.n_features_in_ + 1
    if data.ndim != 2 or data.shape[1] != width:
        raise ValueError(
            f"the data have {data.shape[1] if data.ndim == 2 else '?'} columns; "
            f"this {type(est).__name__} needs {width}: its {width - 1} features "
            "and y"
        )
    col = target_column % width
    y = data[:, col]
    X = np.delete(data, col, axis=1)
    return X, y


def _coverage_intervals(est, X, levels):
    """(lower, upper, how) of the linear regression's predictive intervals."""
    if callable(getattr(est, "predict_interval", None)):
        lows, highs = [], []
        for level in levels:
            lo, hi = est.predict_interval(X, level)
            lows.append(np.asarray(lo, float))
            highs.append(np.asarray(hi, float))
        return np.array(lows), np.array(highs), "predict_interval(X, level)"
    from statistics import NormalDist

    mean, sd = est.predict(X, return_std=True)
    z = np.array([NormalDist().inv_cdf(0.5 + 0.5 * lv) for lv in levels])
    return (
        mean - z[:, None] * sd,
        mean + z[:, None] * sd,
        "mean \u00b1 z \u00b7 sd of predict(X, return_std=True), a Gaussian predictive",
    )


def render(
    est,
    X=None,
    y=None,
    *,
    title=None,
    source=None,
    metadata=None,
    vocabulary=None,
    max_points=5000,
):
    """The HTML page of a fitted estimator, as a string.

    Parameters
    ----------
    est : fitted fastvi estimator
    X, y : array-like, optional
        Data to show and score the model on (y for the regressions).
    title : str, optional
    source : str, optional
        Where the model came from (shown under the title).
    metadata : dict, optional
        The model file's metadata (:func:`fastvi.persist.read_metadata`).
    vocabulary : sequence of str, optional
        LDA's words (default ``feature_names_in_``, else w0, w1, ...).
    max_points : int, default=5000
        Points drawn under a mixture's ellipses at most.

    Returns
    -------
    str
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(
            'fastvi report needs matplotlib: pip install "fastvi[plot]"'
        ) from None
    from . import plot

    name = type(est).__name__
    if not hasattr(est, "n_features_in_"):
        raise ValueError(f"the {name} is not fitted: nothing to report")
    if name == "LatentDirichletAllocation":
        V = est.components_.shape[1]
        if vocabulary is None:
            names = getattr(est, "feature_names_in_", None)
            vocabulary = [f"w{v}" for v in range(V)] if names is None else names
        vocabulary = [str(w) for w in vocabulary]
        if len(vocabulary) != V:
            raise ValueError(
                f"the vocabulary has {len(vocabulary)} words, the model {V}"
            )
    figures = []  # (title, base64 png, caption)
    notes = []
    diagnostics = []

    def add(title, draw, caption, size):
        fig = _figure(figsize=size)
        try:
            draw(fig)
        except (ValueError, TypeError) as exc:
            notes.append(f"{title}: not drawn ({exc})")
            return
        figures.append((title, _png(fig), caption))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # ---------------------------------------------------------- the fit
        add(
            "trace of the fit",
            lambda fig: plot.plot_trace(est, ax=fig.add_subplot()),
            "The ELBO at every step, a noisy Monte Carlo estimate (faint), with its "
            "rolling mean: it should rise and level off."
            if hasattr(est, "elbo_history_")
            else "The training perplexity at each evaluation: it should fall and level "
            "off."
            if name == "LatentDirichletAllocation"
            else "The lower bound after every iteration: coordinate ascent raises it "
            "to a plateau.",
            (7.0, 3.4),
        )
        # ---------------------------------------------------------- per model
        if name == "BayesianGaussianMixture":
            effective = int(np.sum(est.weights_ > 0.01))
            diagnostics.append(("components with weight > 0.01", effective))
            if X is not None:
                diagnostics.append(("mean log-likelihood of the data", est.score(X)))

            def mixture(fig):
                axes = fig.subplots(1, 2, width_ratios=(2.2, 1.0))
                plot.plot_mixture(est, X, ax=tuple(axes), max_points=max_points)

            add(
                "clusters",
                mixture,
                "Each component's mean (x) and 1- and 2-sd ellipses of its covariance, "
                "projected to two dimensions"
                + (", over the data colored by component" if X is not None else "")
                + "; right: the weights (grey: below 0.01).",
                (9.5, 4.3),
            )
        elif name == "LatentDirichletAllocation":
            if X is not None:
                diagnostics.append(("perplexity of the data", est.perplexity(X)))
            K = est.components_.shape[0]
            shown = min(K, 30)
            add(
                "topics",
                lambda fig: plot.plot_topics(
                    est,
                    vocabulary,
                    topics=np.arange(shown),
                    ax=fig.add_subplot(),
                ),
                "Each topic's ten most probable words, shaded by probability"
                + (f" (the first {shown} of {K} topics)." if shown < K else "."),
                (12.5, 0.42 * shown + 1.3),
            )
        elif name in _REGRESSIONS:
            n_coef = est.coef_.size + 1
            add(
                "coefficients",
                lambda fig: plot.plot_forest(
                    est, include_intercept=False, ax=fig.add_subplot()
                ),
                "Posterior mean and central 95% interval of each coefficient under q "
                "(Gaussian); the dashed line is zero.",
                (7.0, min(0.3 * n_coef + 1.4, 30.0)),
            )
            if X is not None:
                diagnostics.append(("score(X, y)", est.score(X, y)))
                if hasattr(est, "diagnose"):
                    khat = est.diagnose(X, y)
                    verdict = (
                        "good"
                        if khat <= 0.5
                        else "usable"
                        if khat <= 0.7
                        else "unreliable"
                    )
                    diagnostics.append(("PSIS k-hat of q", f"{khat:.3f} ({verdict})"))
                classes = getattr(est, "classes_", None)
                if hasattr(est, "predict_proba") and len(classes) == 2:
                    event = (y == classes[1]).astype(float)
                    proba = est.predict_proba(X)[:, 1]
                    add(
                        "calibration",
                        lambda fig: plot.plot_calibration(
                            event, proba, ax=fig.add_subplot()
                        ),
                        f"Predicted probability of class {classes[1]} against the "
                        "observed frequency in ten bins of equal count, with 95% "
                        "intervals; calibrated predictions lie on the diagonal.",
                        (4.8, 4.4),
                    )
                elif name == "VBLinearRegression":
                    levels = np.array([0.5, 0.8, 0.9, 0.95, 0.99])
                    lo, hi, how = _coverage_intervals(est, X, levels)
                    add(
                        "predictive interval coverage",
                        lambda fig: plot.plot_coverage(
                            y, lo, hi, levels, ax=fig.add_subplot()
                        ),
                        "The share of the data inside central predictive intervals "
                        f"({how}) against their level, with 95% intervals.",
                        (4.8, 4.4),
                    )
                loo = getattr(est, "loo", None)
                result = None
                if callable(loo):  # PSIS-LOO, where the estimator offers it
                    try:
                        result = loo(X, y, random_state=0)  # the same page twice
                    except ValueError as error:  # e.g. one-vs-rest classifiers
                        notes.append(f"PSIS-LOO: not computed ({error})")
                if result is not None:
                    khat_i = np.asarray(result.khat)
                    diagnostics.append(
                        (
                            "ELPD by PSIS-LOO (± se)",
                            f"{result.elpd_loo:.2f} ± {result.se:.2f}",
                        )
                    )
                    add(
                        "PSIS-LOO k-hat per observation",
                        lambda fig: plot.plot_khat(khat_i, ax=fig.add_subplot()),
                        "Above 0.7 the observation's leave-one-out estimate is "
                        "unreliable.",
                        (7.0, 3.3),
                    )
        elif name == "UnivariateGaussian":
            post = getattr(est, "exact_posterior_", None)
            if post is not None:
                diagnostics.append(
                    (
                        "exact log evidence - lower bound",
                        post.log_evidence - est.lower_bound_,
                    )
                )
    for w in caught:
        notes.append(f"{w.category.__name__}: {w.message}")

    # ---------------------------------------------------------- the page
    meta = metadata or {}
    params = est.get_params()
    param_rows = [(k, params[k]) for k in sorted(params)]
    model_rows = [("class", name)]
    if meta.get("fastvi_version"):
        model_rows.append(("saved by fastvi", meta["fastvi_version"]))
    model_rows.append(("features", est.n_features_in_))
    if X is not None:
        model_rows.append(("data rows", X.shape[0]))
    fit_rows = _fit_rows(est) or [("fit", "no fit history")]
    section_title, section_html = _parameter_section(est, name, vocabulary)
    title = title or f"fastvi report: {name}"
    sub = html.escape(source) if source else ""
    cards = [
        _card("model", _table(model_rows)),
        _card("fit", _table(fit_rows)),
        _card(
            "diagnostics",
            _table(diagnostics)
            if diagnostics
            else "<p class='note'>none without data (give DATA for more)</p>",
        ),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">{sub}</p>',
        '<h2>Summary</h2><div class="grid">' + "".join(cards) + "</div>",
        f"<h2>{html.escape(_upper_first(section_title))}</h2>",
        f'<div class="card">{section_html}</div>',
        "<h2>Pictures</h2>",
    ]
    for fig_title, data, caption in figures:
        parts.append(
            f'<figure><img alt="{html.escape(fig_title)}" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption><b>{html.escape(_upper_first(fig_title))}.</b> "
            f"{html.escape(caption)}</figcaption></figure>"
        )
    if notes:
        parts.append(
            "<h2>Notes</h2><ul>"
            + "".join(f'<li class="warn">{html.escape(n)}</li>' for n in notes)
            + "</ul>"
        )
    parts.append("<h2>Parameters</h2>")
    parts.append(f'<div class="card">{_table(param_rows)}</div>')
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ the command
def _same_file(a, b):
    real = [os.path.realpath(os.path.abspath(p)) for p in (a, b)]
    if real[0] == real[1]:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_report(
    model_path,
    output,
    data_path=None,
    *,
    fmt="auto",
    header=False,
    target_column=-1,
    vocabulary_path=None,
    title=None,
):
    """Load ``model_path`` (and ``data_path``), render the page, write ``output``
    atomically. Returns a summary dict."""
    from .batch.io import read_data
    from .persist import atomic_write, load, read_metadata

    for other in (model_path, data_path, vocabulary_path):
        if other and _same_file(output, other):
            raise ValueError(f"{output}: the output would overwrite an input")
    directory = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise ValueError(f"{output}: the output path is a directory")
    if not os.path.isdir(directory):
        raise ValueError(f"{output}: the output directory does not exist")
    est = load(model_path)
    meta = read_metadata(model_path)
    X = y = None
    if data_path is not None:
        data = read_data(data_path, fmt=fmt, header=header)
        name = type(est).__name__
        if name in _REGRESSIONS:
            X, y = _split_target(est, data, target_column)
        else:
            X = data
            if name == "UnivariateGaussian":
                X = np.asarray(X, dtype=float).reshape(-1)
            elif X.shape[1] != est.n_features_in_:
                raise ValueError(
                    f"{data_path}: has {X.shape[1]} columns, the model expects "
                    f"{est.n_features_in_}"
                )
            if name == "BayesianGaussianMixture":
                import scipy.sparse as sp

                if sp.issparse(X):
                    raise ValueError(f"{data_path}: gmm needs dense data")
                X = np.asarray(X, dtype=float)
    vocabulary = None
    if vocabulary_path is not None:
        with open(vocabulary_path, encoding="utf-8") as fh:
            vocabulary = [line.rstrip("\n") for line in fh if line.strip()]
    source = os.path.basename(model_path)
    if data_path is not None:
        source += f" on {os.path.basename(data_path)}"
    page = render(
        est,
        X,
        y,
        title=title,
        source=source,
        metadata=meta,
        vocabulary=vocabulary,
    )
    with atomic_write(output, "w") as fh:
        fh.write(page)
    return {
        "command": "report",
        "class": type(est).__name__,
        "output": os.fspath(output),
        "images": page.count("data:image/png;base64,"),
        "bytes": len(page.encode("utf-8")),
    }


def _run(args):
    import json

    try:
        summary = write_report(
            args.model_file,
            args.output,
            args.data,
            fmt=args.fmt,
            header=args.header,
            target_column=args.target_column,
            vocabulary_path=args.vocabulary,
            title=args.title,
        )
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        print(
            f"fastvi report: {summary['class']} -> {summary['output']} "
            f"({summary['images']} pictures, {summary['bytes']:,} bytes)"
        )
    return 0


def add_command(sub):
    """Register ``fastvi report`` on the command line's subparsers."""
    report = sub.add_parser(
        "report",
        help="an HTML page of a saved model: summary and pictures",
        description="Write one self-contained HTML page (inline CSS, PNG pictures "
        "embedded; opens with no network and no server) with the model's "
        "parameters, fit and diagnostics, and the pictures that apply to it: the "
        "bound/ELBO trace, a mixture's clusters, LDA's topics, a regression's "
        "coefficients, and with DATA the calibration or coverage of its "
        'predictions. Needs matplotlib (pip install "fastvi[plot]").',
    )
    report.add_argument("model_file", metavar="MODEL")
    report.add_argument(
        "data",
        nargs="?",
        default=None,
        metavar="DATA",
        help="data to show and score the model on (regressions: y is the last "
        "column unless --target-column)",
    )
    report.add_argument("--output", "-o", required=True, help="the page (.html)")
    report.add_argument(
        "--format",
        dest="fmt",
        default="auto",
        choices=["auto", "npy", "npz", "csv", "tsv", "parquet", "docword"],
        help="DATA's format (default: from the file name)",
    )
    report.add_argument("--header", action="store_true", help="CSV has a header line")
    report.add_argument(
        "--target-column",
        type=int,
        default=-1,
        help="regressions: DATA's column holding y (default -1, the last)",
    )
    report.add_argument(
        "--vocabulary",
        default=None,
        metavar="FILE",
        help="lda: a text file with one word per line, in column order",
    )
    report.add_argument("--title", default=None)
    report.add_argument("--quiet", "-q", action="store_true")
    report.add_argument("--json", action="store_true", help="print a JSON summary")
    report.set_defaults(func=_run)
