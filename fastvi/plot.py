"""Pictures of fitted models (the ``plot`` extra: ``pip install "fastvi[plot]"``).

One function per picture. Each draws into ``ax`` when given (a matplotlib ``Axes``;
:func:`plot_mixture` also takes a pair) and otherwise into a new ``pyplot`` figure,
and returns the :class:`matplotlib.figure.Figure`:

- :func:`plot_trace`: the bound or ELBO trace of any fit (``lower_bounds_`` of the
  CAVI estimators, ``elbo_history_`` of the SGVI estimators, an
  :class:`~fastvi.sgvi.SGVIResult` or :class:`~fastvi.sgvi.Posterior`, LDA's
  ``perplexity_history_``, or a plain sequence);
- :func:`plot_mixture`: a Gaussian mixture's components, projected to 2-D with
  their covariance ellipses, beside a bar of the weights;
- :func:`plot_topics`: LDA's most probable words per topic;
- :func:`plot_forest`: a regression's coefficients with posterior intervals;
- :func:`plot_khat`: PSIS k-hat per observation, with the 0.5 and 0.7 thresholds;
- :func:`plot_calibration`: predicted probabilities against observed frequencies;
- :func:`plot_coverage`: predictive intervals' observed coverage against their level.

matplotlib is imported when a function is called, never by ``import fastvi``.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

__all__ = [
    "plot_calibration",
    "plot_coverage",
    "plot_forest",
    "plot_khat",
    "plot_mixture",
    "plot_topics",
    "plot_trace",
]

_MISSING = 'fastvi.plot needs matplotlib: pip install "fastvi[plot]"'


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ImportError(_MISSING) from None
    return matplotlib


def _axes(ax, figsize):
    """``(figure, ax)``: ``ax``'s figure, or a new pyplot figure with one axes."""
    _matplotlib()
    if ax is not None:
        return ax.get_figure(), ax
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def _colors(n):
    """``n`` distinct colors (tab10, tab20 beyond ten, cycled beyond twenty)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _check_fitted(model, attribute, what):
    if not hasattr(model, attribute):
        raise ValueError(
            f"{type(model).__name__} has no {attribute}: {what} needs a fitted model"
        )


def _z(level):
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + 0.5 * level)


# ------------------------------------------------------------------ trace
def _trace_of(fit):
    """``(series, x, xlabel, ylabel, noisy)``; ``series``: list of (label, values)."""
    if hasattr(fit, "elbo_history_"):  # SGVI estimators
        values = np.asarray(fit.elbo_history_, dtype=float)
        return [(None, values)], None, "step", "ELBO estimate", True
    if hasattr(fit, "lower_bounds_"):  # CAVI estimators and the mixture
        history = fit.lower_bounds_
        online = getattr(fit, "learning_method", "batch") == "online"
        xlabel = "epoch" if online else "iteration"
        if len(history) and isinstance(history[0], (list, tuple, np.ndarray)):
            classes = getattr(fit, "classes_", range(len(history)))
            series = [
                (f"class {c} vs rest", np.asarray(h, dtype=float))
                for c, h in zip(classes, history)
            ]
        else:
            series = [(None, np.asarray(history, dtype=float))]
        return series, None, xlabel, "lower bound", False
    if hasattr(fit, "perplexity_history_"):  # LatentDirichletAllocation
        values = np.asarray(fit.perplexity_history_, dtype=float)
        if values.size == 0:
            raise ValueError(
                "this LatentDirichletAllocation recorded no trace: it keeps the "
                "training perplexity only when fitted with evaluate_every > 0"
            )
        every = max(int(getattr(fit, "evaluate_every", 1)), 1)
        x = every * np.arange(1, values.size + 1)
        return [(None, values)], x, "epoch", "training perplexity", False
    if hasattr(fit, "elbo") and not callable(fit.elbo):  # SGVIResult, Posterior
        if fit.elbo is None:
            raise ValueError("this Posterior holds no ELBO trace (elbo is None)")
        values = np.asarray(fit.elbo, dtype=float)
        return [(None, values)], None, "step", "ELBO estimate", True
    if hasattr(fit, "fit") and hasattr(fit, "get_params"):
        raise ValueError(
            f"{type(fit).__name__} holds no trace: fit it first (a fitted model has "
            "lower_bounds_, elbo_history_ or perplexity_history_)"
        )
    try:
        values = np.asarray(fit, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(
            "plot_trace takes a fitted fastvi estimator, an SGVIResult, a Posterior "
            f"or a sequence of numbers, got {type(fit).__name__}"
        ) from None
    if values.ndim != 1:
        raise ValueError(f"a trace must be 1-D, got shape {values.shape}")
    return [(None, values)], None, "iteration", "bound", False


def _rolling_mean(values, window):
    """Mean of the finite values among the last ``window`` (NaN where none)."""
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    hi = np.arange(1, values.size + 1)
    lo = np.maximum(hi - window, 0)
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / n, np.nan)


def plot_trace(fit, *, window=None, ax=None):
    """The bound or ELBO trace of a fit.

    Parameters
    ----------
    fit : fitted estimator, SGVIResult, Posterior or sequence of float
        A CAVI estimator's ``lower_bounds_`` (the one-vs-rest
        ``VBLogisticRegression``: one line per class), an SGVI estimator's
        ``elbo_history_``, the ``elbo`` of :meth:`fastvi.sgvi.SGVI.run`'s result,
        LDA's ``perplexity_history_`` (recorded with ``evaluate_every > 0``).
    window : int, optional
        SGVI traces are per-step Monte Carlo estimates: they are drawn faintly with
        their rolling mean over ``window`` steps on top (default: 1/50 of the steps,
        at least 1).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    series, x, xlabel, ylabel, noisy = _trace_of(fit)
    if all(values.size == 0 for _, values in series):
        raise ValueError("the trace is empty: nothing to plot")
    if window is not None and int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window!r}")
    fig, ax = _axes(ax, (6.0, 3.5))
    finals = []
    for (label, values), color in zip(series, _colors(len(series))):
        steps = np.arange(1, values.size + 1) if x is None else x
        if noisy:
            w = max(values.size // 50, 1) if window is None else int(window)
            ax.plot(steps, values, color=color, alpha=0.3, lw=0.8, label="per step")
            smooth = _rolling_mean(values, w)
            ax.plot(steps, smooth, color=color, lw=1.6, label=f"mean of {w} steps")
            values = smooth
        else:
            marker = "o" if values.size <= 40 else None
            ax.plot(steps, values, color=color, marker=marker, ms=3, label=label)
        finite = values[np.isfinite(values)]
        if finite.size:
            finals.append(f"{finite[-1]:.6g}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel}: final {', '.join(finals)}", fontsize="medium")
    if noisy or len(series) > 1:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


# ------------------------------------------------------------------ mixture
def _full_covariances(model, K, D):
    cov = np.asarray(model.covariances_, dtype=float)
    kind = getattr(model, "covariance_type", "full")
    if kind == "full":
        return cov
    if kind == "tied":
        return np.broadcast_to(cov, (K, D, D))
    if kind == "diag":
        return cov[:, :, None] * np.eye(D)
    if kind == "spherical":
        return cov[:, None, None] * np.eye(D)
    raise ValueError(f"unknown covariance_type {kind!r}")


def _feature_names(model, D):
    names = getattr(model, "feature_names_in_", None)
    if names is not None and len(names) == D:
        return [str(v) for v in names]
    return [f"x{d}" for d in range(D)]


def _projection(weights, means, covs, dims, names):
    """``(P, center, labels)``: points map to ``(x - center) @ P.T`` in 2-D."""
    K, D = means.shape
    if dims is not None:
        dims = [int(d) for d in dims]
        if len(dims) != 2 or len(set(dims)) != 2 or not all(0 <= d < D for d in dims):
            raise ValueError(
                f"dims must be two different features in [0, {D}), got {dims}"
            )
        return np.eye(D)[dims], np.zeros(D), [names[d] for d in dims]
    if D == 2:
        return np.eye(2), np.zeros(2), names
    # principal axes of the mixture's own covariance: sum_k w_k (S_k + m_k m_k') - m m'
    w = weights / weights.sum()
    center = w @ means
    spread = np.einsum("k,kij->ij", w, covs) + np.einsum(
        "k,ki,kj->ij", w, means - center, means - center
    )
    values, vectors = np.linalg.eigh(spread)
    order = np.argsort(values)[::-1][:2]
    P = vectors[:, order].T
    P *= np.where(P[np.arange(2), np.argmax(np.abs(P), axis=1)] < 0, -1.0, 1.0)[:, None]
    share = values[order] / max(values.sum(), np.finfo(float).tiny)
    labels = [
        f"PC {i + 1} ({100 * s:.0f}% of the variance)" for i, s in enumerate(share)
    ]
    return P, center, labels


def plot_mixture(
    model,
    X=None,
    *,
    dims=None,
    threshold=0.01,
    n_std=(1.0, 2.0),
    max_points=5000,
    random_state=0,
    ax=None,
):
    """A Gaussian mixture's components: means and covariance ellipses in 2-D, and
    a bar of the weights.

    Parameters
    ----------
    model : fitted BayesianGaussianMixture (or any object with ``weights_``,
        ``means_``, ``covariances_`` and ``covariance_type``)
    X : array-like of shape (n_samples, n_features), optional
        Points drawn under the ellipses, colored by ``model.predict`` (at most
        ``max_points``, a random subset drawn with ``random_state``).
    dims : pair of int, optional
        Two features to show. By default 2-D data are shown as they are and higher
        dimensions on the two principal axes of the mixture's covariance
        (sum_k w_k (Sigma_k + m_k m_k') - m m'); 1-D data as the weighted component
        densities.
    threshold : float, default=0.01
        Components of smaller weight get no ellipse and a grey bar.
    n_std : sequence of float, default=(1, 2)
        Ellipses at these numbers of standard deviations (of ``covariances_``,
        projected).
    ax : Axes or pair of Axes, optional
        One Axes: the components only; a pair: components and weights. None: a new
        figure with both.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    from matplotlib.patches import Ellipse

    _check_fitted(model, "weights_", "plot_mixture")
    weights = np.asarray(model.weights_, dtype=float)
    means = np.asarray(model.means_, dtype=float)
    K, D = means.shape
    covs = _full_covariances(model, K, D)
    names = _feature_names(model, D)
    if ax is None:
        import matplotlib.pyplot as plt

        fig, (ax_c, ax_w) = plt.subplots(
            1,
            2,
            figsize=(9.0, 4.2),
            width_ratios=(2.2, 1.0),
            layout="constrained",
        )
    elif isinstance(ax, (tuple, list)):
        ax_c, ax_w = ax
        fig = ax_c.get_figure()
    else:
        ax_c, ax_w, fig = ax, None, ax.get_figure()
    colors = _colors(K)
    keep = weights > threshold
    if X is not None:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != D:
            raise ValueError(f"X must have shape (n, {D}), got {X.shape}")
        if X.shape[0] > max_points:
            rng = np.random.default_rng(random_state)
            X = X[np.sort(rng.choice(X.shape[0], max_points, replace=False))]
        labels = np.asarray(model.predict(X)) if hasattr(model, "predict") else None
    if D == 1:
        sd = np.sqrt(covs[:, 0, 0])
        lo = np.min(means[:, 0] - 4 * sd)
        hi = np.max(means[:, 0] + 4 * sd)
        if X is not None:
            lo, hi = min(lo, X.min()), max(hi, X.max())
            ax_c.hist(X[:, 0], bins=50, density=True, color="0.8", label="data")
        grid = np.linspace(lo, hi, 400)
        dens = (
            weights[:, None]
            * np.exp(-0.5 * ((grid - means[:, :1]) / sd[:, None]) ** 2)
            / (np.sqrt(2 * np.pi) * sd[:, None])
        )
        for k in np.flatnonzero(keep):
            ax_c.plot(grid, dens[k], color=colors[k], lw=1.2)
        ax_c.plot(grid, dens.sum(axis=0), color="k", lw=1.6, label="mixture")
        ax_c.set_xlabel(names[0])
        ax_c.set_ylabel("density")
        ax_c.legend(fontsize="small")
    else:
        P, center, axis_labels = _projection(weights, means, covs, dims, names)
        if X is not None:
            Z = (X - center) @ P.T
            point_colors = (
                "0.5" if labels is None else [colors[k % K] for k in labels.astype(int)]
            )
            ax_c.scatter(
                Z[:, 0], Z[:, 1], s=4, c=point_colors, alpha=0.35, linewidths=0
            )
        M = (means - center) @ P.T
        for k in np.flatnonzero(keep):
            S = P @ covs[k] @ P.T
            values, vectors = np.linalg.eigh(S)
            values = np.maximum(values, 0.0)
            angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
            for n in n_std:
                ax_c.add_patch(
                    Ellipse(
                        M[k],
                        2 * n * np.sqrt(values[1]),
                        2 * n * np.sqrt(values[0]),
                        angle=angle,
                        fill=False,
                        edgecolor=colors[k],
                        lw=1.5 if n == n_std[0] else 0.9,
                    )
                )
        ax_c.scatter(
            M[keep, 0],
            M[keep, 1],
            marker="x",
            c=[colors[k] for k in np.flatnonzero(keep)],
        )
        ax_c.autoscale_view()
        ax_c.set_xlabel(axis_labels[0])
        ax_c.set_ylabel(axis_labels[1])
    ax_c.set_title(
        f"{int(keep.sum())} of {K} components above weight {threshold:g}",
        fontsize="medium",
    )
    if ax_w is not None:
        bar_colors = [colors[k] if keep[k] else "0.8" for k in range(K)]
        ax_w.bar(np.arange(K), weights, color=bar_colors)
        ax_w.axhline(threshold, color="0.4", ls="--", lw=0.8)
        ax_w.set_xlabel("component")
        ax_w.set_ylabel("weight")
        ax_w.set_title("weights", fontsize="medium")
    return fig


# ------------------------------------------------------------------ topics
def plot_topics(model, vocabulary=None, *, n_words=10, topics=None, ax=None):
    """The most probable words of each topic, on a heat map of their probability.

    Parameters
    ----------
    model : fitted LatentDirichletAllocation, or an array of shape (n_topics,
        n_words) of positive topic-word weights (rows are normalized)
    vocabulary : sequence of str, optional
        The word of each column. Default: ``feature_names_in_`` when the model was
        fitted to a DataFrame, else ``w0, w1, ...``.
    n_words : int, default=10
    topics : sequence of int, optional
        Topics to show (default all).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if hasattr(model, "fit"):
        _check_fitted(model, "components_", "plot_topics")
        weights = np.asarray(model.components_, dtype=float)
    else:
        weights = np.asarray(model, dtype=float)
    if weights.ndim != 2 or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(
            "topic-word weights must be a finite, non-negative 2-D array, got "
            f"shape {weights.shape}"
        )
    K, V = weights.shape
    if vocabulary is None:
        names = getattr(model, "feature_names_in_", None)
        vocabulary = [f"w{v}" for v in range(V)] if names is None else names
    vocabulary = [str(w) for w in vocabulary]
    if len(vocabulary) != V:
        raise ValueError(f"the vocabulary has {len(vocabulary)} words, the topics {V}")
    n_words = int(n_words)
    if not 1 <= n_words:
        raise ValueError(f"n_words must be >= 1, got {n_words}")
    n_words = min(n_words, V)
    topics = np.arange(K) if topics is None else np.asarray(topics, dtype=int)
    if topics.size == 0 or np.any((topics < 0) | (topics >= K)):
        raise ValueError(f"topics must be indices in [0, {K})")
    probs = weights[topics] / weights[topics].sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :n_words]
    shown = np.take_along_axis(probs, top, axis=1)
    fig, ax = _axes(ax, (1.15 * n_words + 1.5, 0.42 * topics.size + 1.2))
    image = ax.imshow(shown, aspect="auto", cmap="Blues", vmin=0.0)
    dark = shown > 0.55 * shown.max()
    for i in range(topics.size):
        for j in range(n_words):
            word = vocabulary[top[i, j]]
            word = word if len(word) <= 12 else word[:11] + "\u2026"
            ax.text(
                j,
                i,
                word,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark[i, j] else "black",
            )
    ax.set_yticks(np.arange(topics.size), [f"topic {t}" for t in topics])
    ax.set_xticks(np.arange(n_words), [str(r + 1) for r in range(n_words)])
    ax.set_xlabel("rank")
    ax.set_ylabel("topic")
    fig.colorbar(image, ax=ax, label="P(word | topic)", shrink=0.8)
    return fig


# ------------------------------------------------------------------ forest
def _coefficients(model, include_intercept):
    """``[(label, names, mean, sd)]``, one entry per series (one-vs-rest classes)."""
    if not hasattr(model, "fit_intercept"):
        raise TypeError(
            f"{type(model).__name__} has no posterior of its coefficients; "
            "plot_forest takes VBLinearRegression, VBLogisticRegression, "
            "BayesianLogisticRegression, BayesianPoissonRegression, or mean=, "
            "lower=, upper= arrays"
        )
    _check_fitted(model, "coef_", "plot_forest")
    if hasattr(model, "coef_std_"):  # the SGVI estimators
        D = model.coef_.shape[0]
        names = _feature_names(model, D)
        mean, sd = np.asarray(model.coef_, float), np.asarray(model.coef_std_, float)
        if include_intercept and getattr(model, "fit_intercept", False):
            names = names + ["intercept"]
            mean = np.append(mean, model.intercept_)
            sd = np.append(sd, model.intercept_std_)
        return [(None, names, mean, sd)]
    coef = np.asarray(model.coef_, dtype=float)
    sigma = np.asarray(model.sigma_, dtype=float)
    if coef.ndim == 1:  # VBLinearRegression: q(w); the intercept is y0 - x0 @ w
        names = _feature_names(model, coef.shape[0])
        sd = np.sqrt(np.diag(sigma))
        mean = coef
        if include_intercept and getattr(model, "fit_intercept", False):
            x0 = np.asarray(model.X_offset_, dtype=float)
            names = names + ["intercept"]
            mean = np.append(mean, model.intercept_)
            sd = np.append(sd, np.sqrt(max(x0 @ sigma @ x0, 0.0)))
        return [(None, names, mean, sd)]
    # VBLogisticRegression: sigma_ over (w, b), the intercept last
    sigmas = sigma[None] if sigma.ndim == 2 else sigma
    D = coef.shape[1]
    classes = getattr(model, "classes_", None)
    out = []
    for c in range(coef.shape[0]):
        sd_all = np.sqrt(np.diag(sigmas[c]))
        names = _feature_names(model, D)
        mean, sd = coef[c], sd_all[:D]
        if include_intercept and getattr(model, "fit_intercept", False):
            names = names + ["intercept"]
            mean = np.append(mean, np.asarray(model.intercept_, float)[c])
            sd = np.append(sd, sd_all[D])
        label = None
        if coef.shape[0] > 1:
            label = f"class {classes[c]}" if classes is not None else f"class {c}"
        out.append((label, names, mean, sd))
    return out


def plot_forest(
    model=None,
    *,
    level=0.95,
    include_intercept=False,
    mean=None,
    lower=None,
    upper=None,
    names=None,
    ax=None,
):
    """A forest plot: each coefficient's posterior mean and central interval.

    Parameters
    ----------
    model : fitted regression, optional
        ``VBLinearRegression``, ``VBLogisticRegression`` (one-vs-rest: one series
        per class), ``BayesianLogisticRegression`` or ``BayesianPoissonRegression``.
        Their q is Gaussian in the coefficients, so the interval is mean +- z sd.
    level : float, default=0.95
        Central probability of the interval.
    include_intercept : bool, default=False
        Add the intercept (often on another scale than the coefficients).
    mean, lower, upper : array-like of shape (n_coefficients,), optional
        Instead of ``model``: any point estimates and intervals (draws' quantiles,
        another library's fit).
    names : sequence of str, optional
        Row labels (default: the model's feature names, or x0, x1, ...).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if model is not None:
        if mean is not None or lower is not None or upper is not None:
            raise ValueError("give either a model or mean=, lower=, upper=, not both")
        z = _z(level)
        series = [
            (label, rows, m, m - z * s, m + z * s)
            for label, rows, m, s in _coefficients(model, include_intercept)
        ]
        xlabel = f"posterior mean and {100 * level:g}% interval"
    else:
        if mean is None or lower is None or upper is None:
            raise ValueError("plot_forest needs a model, or mean=, lower= and upper=")
        m, lo, hi = (np.asarray(v, dtype=float).ravel() for v in (mean, lower, upper))
        if not m.shape == lo.shape == hi.shape:
            raise ValueError(
                f"mean, lower and upper differ in length: {m.size}, {lo.size}, {hi.size}"
            )
        if np.any(lo > hi):
            raise ValueError("lower exceeds upper for some coefficient")
        rows = [f"x{d}" for d in range(m.size)]
        series = [(None, rows, m, lo, hi)]
        xlabel = "estimate and interval"
    if names is not None:
        names = [str(v) for v in names]
        if len(names) != series[0][2].size:
            raise ValueError(f"{len(names)} names for {series[0][2].size} coefficients")
        series = [(label, names, m, lo, hi) for label, _, m, lo, hi in series]
    rows = series[0][1]
    fig, ax = _axes(ax, (6.0, 0.32 * len(rows) * max(len(series), 1) ** 0.5 + 1.4))
    n = len(series)
    offsets = (np.arange(n) - (n - 1) / 2) * (0.6 / max(n, 1))
    for (label, _, m, lo, hi), off, color in zip(series, offsets, _colors(n)):
        y = np.arange(m.size) + off
        ax.errorbar(
            m,
            y,
            xerr=[m - lo, hi - m],
            fmt="o",
            ms=4,
            capsize=2,
            color=color,
            label=label,
        )
    ax.axvline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_yticks(np.arange(len(rows)), rows)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the first coefficient on top
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    if n > 1:
        ax.legend(fontsize="small")
    return fig


# ------------------------------------------------------------------ k-hat
def plot_khat(khat, *, ax=None):
    """PSIS k-hat per observation (PSIS-LOO), with the 0.5 and 0.7 thresholds.

    Below 0.5 the importance-sampling estimate of that observation's leave-one-out
    term is reliable, 0.5-0.7 usable, above 0.7 not (Vehtari, Gelman & Gabry 2017;
    Vehtari et al. 2024).

    Parameters
    ----------
    khat : array-like of shape (n_observations,)
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    k = np.asarray(khat, dtype=float)
    if k.ndim != 1 or k.size == 0:
        raise ValueError(f"khat must be a non-empty 1-D array, got shape {k.shape}")
    if np.any(np.isnan(k)) or np.any(np.isneginf(k)):
        raise ValueError(
            f"khat holds {int(np.sum(np.isnan(k) | np.isneginf(k)))} NaN values "
            "(k-hat is undefined when a tail holds too few distinct weights: use "
            "more draws)"
        )
    fig, ax = _axes(ax, (6.0, 3.2))
    idx = np.arange(k.size)
    infinite = np.isinf(k)
    zones = [
        (k <= 0.5, "tab:blue", "o", "k \u2264 0.5"),
        ((k > 0.5) & (k <= 0.7), "tab:orange", "o", "0.5 < k \u2264 0.7"),
        ((k > 0.7) & ~infinite, "tab:red", "o", "k > 0.7"),
    ]
    for mask, color, marker, label in zones:
        ax.scatter(
            idx[mask],
            k[mask],
            s=10,
            color=color,
            marker=marker,
            label=f"{label}: {mask.sum()}",
        )
    if infinite.any():  # a non-finite importance ratio: drawn at the top
        top = 1.1 * max(np.max(k[~infinite], initial=0.7), 1.0)
        ax.scatter(
            idx[infinite],
            np.full(int(infinite.sum()), top),
            s=24,
            color="tab:red",
            marker="^",
            label=f"k = inf: {int(infinite.sum())}",
        )
    ax.axhline(0.5, color="tab:orange", ls="--", lw=0.9)
    ax.axhline(0.7, color="tab:red", ls="--", lw=0.9)
    ax.set_xlabel("observation")
    ax.set_ylabel("PSIS k\u0302")
    ax.set_title(
        f"{int((k > 0.7).sum())} of {k.size} observations above 0.7",
        fontsize="medium",
    )
    ax.legend(fontsize="small", loc="upper right")
    return fig


# ------------------------------------------------------------------ calibration
def _wilson(hits, n, z=1.96):
    """95% Wilson score interval of a binomial proportion."""
    p = hits / n
    denom = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return center - half, center + half


def plot_calibration(y_true, proba, *, n_bins=10, ax=None):
    """Reliability diagram of predicted probabilities.

    The predictions are cut into ``n_bins`` bins of equal count; each bin's mean
    predicted probability is plotted against the observed frequency of the event,
    with a 95% Wilson interval. Well calibrated predictions lie on the diagonal.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        1 where the event happened, 0 where not (e.g. ``y == clf.classes_[1]``).
    proba : array-like of shape (n_samples,) or (n_samples, 2)
        Predicted probability of the event (``predict_proba(X)``: its second column).
    n_bins : int, default=10
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    p = np.asarray(proba, dtype=float)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    y = np.asarray(y_true)
    if p.ndim != 1 or y.shape != p.shape:
        raise ValueError(
            f"y_true and proba must be 1-D of one length, got {y.shape} and {p.shape}"
        )
    if p.size == 0 or not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("proba must be non-empty probabilities in [0, 1]")
    if y.dtype == bool:
        y = y.astype(float)
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError(
            "y_true must be 0/1 (1: the event proba predicts); encode labels as "
            "y == clf.classes_[1]"
        )
    y = y.astype(float)
    n_bins = int(n_bins)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    order = np.argsort(p, kind="stable")
    bins = [b for b in np.array_split(order, min(n_bins, p.size)) if b.size]
    mean_p = np.array([p[b].mean() for b in bins])
    hits = np.array([y[b].sum() for b in bins])
    counts = np.array([b.size for b in bins], dtype=float)
    freq = hits / counts
    lo, hi = _wilson(hits, counts)
    fig, ax = _axes(ax, (4.5, 4.2))
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.9, label="perfect")
    ax.errorbar(
        mean_p,
        freq,
        yerr=[freq - lo, hi - freq],
        fmt="o-",
        ms=4,
        capsize=2,
        color="tab:blue",
        label=f"{len(bins)} bins of ~{int(round(counts.mean()))}",
    )
    brier = float(np.mean((p - y) ** 2))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"calibration (Brier score {brier:.4f})", fontsize="medium")
    ax.legend(fontsize="small", loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def plot_coverage(y_true, lower, upper, levels, *, ax=None):
    """Observed coverage of central predictive intervals against their level.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
    lower, upper : array-like of shape (n_levels, n_samples)
        The interval of each level for each observation.
    levels : array-like of shape (n_levels,)
        Nominal levels in (0, 1).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
        Each level's observed coverage with a 95% Wilson interval; calibrated
        intervals lie on the diagonal.
    """
    y = np.asarray(y_true, dtype=float)
    levels = np.atleast_1d(np.asarray(levels, dtype=float))
    lo = np.asarray(lower, dtype=float).reshape(levels.size, -1)
    hi = np.asarray(upper, dtype=float).reshape(levels.size, -1)
    if y.ndim != 1 or lo.shape != (levels.size, y.size) or hi.shape != lo.shape:
        raise ValueError(
            f"lower and upper must have shape (n_levels, n_samples) = "
            f"({levels.size}, {y.size})"
        )
    if np.any((levels <= 0) | (levels >= 1)):
        raise ValueError("levels must be in (0, 1)")
    if not (
        np.all(np.isfinite(y)) and np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))
    ):
        raise ValueError("y_true, lower and upper must be finite")
    inside = (lo <= y) & (y <= hi)
    hits = inside.sum(axis=1).astype(float)
    cover = hits / y.size
    w_lo, w_hi = _wilson(hits, float(y.size))
    fig, ax = _axes(ax, (4.5, 4.2))
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.9, label="nominal")
    ax.errorbar(
        levels,
        cover,
        yerr=[cover - w_lo, w_hi - cover],
        fmt="o",
        ms=4,
        capsize=2,
        color="tab:blue",
        label=f"observed ({y.size} points)",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal level of the interval")
    ax.set_ylabel("observed coverage")
    ax.set_title("predictive interval coverage", fontsize="medium")
    ax.legend(fontsize="small", loc="upper left")
    ax.grid(alpha=0.3)
    return fig
