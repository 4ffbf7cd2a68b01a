"""fastvi.plot: every picture drawn headless (Agg), checked by its axes, labels and
artists, and where the picture encodes numbers, by those numbers."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

matplotlib = pytest.importorskip(
    "matplotlib", reason='fastvi.plot needs matplotlib (pip install "fastvi[plot]")'
)
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from fastvi import (  # noqa: E402
    BayesianGaussianMixture,
    BayesianLogisticRegression,
    LatentDirichletAllocation,
    UnivariateGaussian,
    VBLinearRegression,
    VBLogisticRegression,
)
from fastvi import plot as fp  # noqa: E402
from fastvi.sgvi import Posterior  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _blobs(D=2, n=150, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[-5.0, 0.0, 1.0], [0.0, 4.0, -1.0], [5.0, -2.0, 0.0]])[:, :D]
    A = np.array([[1.0, 0.6, 0.0], [0.0, 0.5, 0.3], [0.0, 0.0, 0.8]])[:D, :D]
    return np.concatenate([c + rng.standard_normal((n, D)) @ A for c in centers])


def _fit_gmm(covariance_type, D=2, seed=0):
    return BayesianGaussianMixture(
        n_components=5,
        covariance_type=covariance_type,
        max_iter=1000,
        random_state=seed,
    ).fit(_blobs(D, seed=seed))


@pytest.fixture(scope="module")
def regression_data():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 4))
    w = np.array([1.0, -2.0, 0.0, 0.5])
    y = X @ w + rng.standard_normal(300)
    yb = (X @ w + rng.logistic(size=300) > 0).astype(int)
    y3 = np.digitize(X @ w + rng.standard_normal(300), [-1.0, 1.0])
    return X, y, yb, y3


@pytest.fixture(scope="module")
def linear(regression_data):
    X, y, _, _ = regression_data
    return VBLinearRegression().fit(X, y)


@pytest.fixture(scope="module")
def sgvi(regression_data):
    X, _, yb, _ = regression_data
    return BayesianLogisticRegression(random_state=0).fit(X, yb)


@pytest.fixture(scope="module")
def lda():
    rng = np.random.default_rng(2)
    counts = rng.poisson(1.0, (60, 30)).astype(float)
    return LatentDirichletAllocation(
        n_components=4, evaluate_every=1, max_iter=4, random_state=0
    ).fit(counts)


# ------------------------------------------------------------------ trace
def test_trace_of_a_cavi_fit_is_its_lower_bounds(linear):
    fig = fp.plot_trace(linear)
    (ax,) = fig.axes
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_ydata(), linear.lower_bounds_)
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, linear.n_iter_ + 1))
    assert ax.get_xlabel() == "iteration"
    assert ax.get_ylabel() == "lower bound"
    assert f"{linear.lower_bounds_[-1]:.6g}" in ax.get_title()


def _naive_rolling(values, w):
    out = np.empty(values.size)
    for i in range(values.size):
        win = values[max(0, i - w + 1) : i + 1]
        win = win[np.isfinite(win)]
        out[i] = win.mean() if win.size else np.nan
    return out


def test_trace_of_an_sgvi_fit_is_its_elbo_history_with_a_rolling_mean(sgvi):
    fig = fp.plot_trace(sgvi, window=25)
    ax = fig.axes[0]
    raw, smooth = ax.get_lines()
    np.testing.assert_array_equal(raw.get_ydata(), sgvi.elbo_history_)
    np.testing.assert_allclose(
        smooth.get_ydata(), _naive_rolling(sgvi.elbo_history_, 25), rtol=1e-12
    )
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "per step",
        "mean of 25 steps",
    ]
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "ELBO estimate"


def test_rolling_mean_skips_non_finite_steps():
    values = np.array([1.0, np.nan, 3.0, -np.inf, 5.0, 6.0, np.nan, np.nan, np.nan])
    for w in (1, 2, 3, 20):
        np.testing.assert_allclose(
            fp._rolling_mean(values, w), _naive_rolling(values, w), equal_nan=True
        )


def test_trace_of_a_posterior_or_a_sequence():
    elbo = -np.linspace(10, 1, 200)
    fig = fp.plot_trace(Posterior({}, {}, {}, elbo))
    assert len(fig.axes[0].get_lines()) == 2
    fig = fp.plot_trace([3.0, 2.0, 1.0])
    np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_ydata(), [3, 2, 1])
    with pytest.raises(ValueError, match="no ELBO trace"):
        fp.plot_trace(Posterior({}, {}, {}, None))
    with pytest.raises(ValueError, match="1-D"):
        fp.plot_trace(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="empty"):
        fp.plot_trace([])
    with pytest.raises(TypeError, match="plot_trace takes"):
        fp.plot_trace(object())


def test_trace_one_line_per_one_vs_rest_problem(regression_data):
    X, _, _, y3 = regression_data
    clf = VBLogisticRegression().fit(X, y3)
    ax = fp.plot_trace(clf).axes[0]
    lines = ax.get_lines()
    assert len(lines) == 3
    for line, history in zip(lines, clf.lower_bounds_):
        np.testing.assert_array_equal(line.get_ydata(), history)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "class 0 vs rest",
        "class 1 vs rest",
        "class 2 vs rest",
    ]


def test_trace_of_lda_is_the_perplexity_at_its_evaluations(lda):
    ax = fp.plot_trace(lda).axes[0]
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_ydata(), lda.perplexity_history_)
    np.testing.assert_array_equal(
        line.get_xdata(), np.arange(1, len(lda.perplexity_history_) + 1)
    )
    assert ax.get_ylabel() == "training perplexity"
    silent = LatentDirichletAllocation(n_components=2, max_iter=2, random_state=0)
    silent.fit(np.ones((5, 4)))
    with pytest.raises(ValueError, match="evaluate_every > 0"):
        fp.plot_trace(silent)


def test_trace_of_an_unfitted_estimator_is_refused():
    with pytest.raises(ValueError, match="fit it first"):
        fp.plot_trace(VBLinearRegression())


def test_trace_draws_into_a_given_axes(linear):
    fig, (a, b) = plt.subplots(1, 2)
    assert fp.plot_trace(linear, ax=b) is fig
    assert len(a.get_lines()) == 0 and len(b.get_lines()) == 1


# ------------------------------------------------------------------ mixture
def _reference_covariances(gmm):
    """covariances_ as (K, D, D), written out per type."""
    K, D = gmm.means_.shape
    c = gmm.covariances_
    if gmm.covariance_type == "full":
        return c
    if gmm.covariance_type == "tied":
        return np.array([c] * K)
    if gmm.covariance_type == "diag":
        return np.array([np.diag(row) for row in c])
    return np.array([v * np.eye(D) for v in c])


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_mixture_ellipses_are_the_component_covariances(covariance_type):
    gmm = _fit_gmm(covariance_type)
    X = _blobs(2)
    fig = fp.plot_mixture(gmm, X, n_std=(1.0, 2.0))
    ax_c, ax_w = fig.axes
    keep = np.flatnonzero(gmm.weights_ > 0.01)
    ellipses = [p for p in ax_c.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 2 * keep.size
    covs = _reference_covariances(gmm)
    for i, k in enumerate(keep):
        sd = np.sqrt(np.linalg.eigvalsh(covs[k]))  # ascending
        for j, n in enumerate((1.0, 2.0)):
            e = ellipses[2 * i + j]
            np.testing.assert_allclose(e.center, gmm.means_[k], rtol=1e-10)
            np.testing.assert_allclose(
                sorted([e.width, e.height]), 2 * n * sd, rtol=1e-8
            )
    # the data under them, colored by component; the weights beside
    points = ax_c.collections[0]
    assert points.get_offsets().shape == X.shape
    assert len(ax_w.patches) == gmm.n_components
    np.testing.assert_allclose([b.get_height() for b in ax_w.patches], gmm.weights_)
    assert ax_c.get_xlabel() == "x0" and ax_c.get_ylabel() == "x1"
    assert ax_w.get_xlabel() == "component" and ax_w.get_ylabel() == "weight"
    assert ax_c.get_title().startswith(f"{keep.size} of 5 components")


def test_mixture_ellipse_orientation_follows_the_covariance():
    gmm = _fit_gmm("full")
    fig = fp.plot_mixture(gmm, n_std=(1.0,))
    ax = fig.axes[0]
    for e, k in zip(ax.patches, np.flatnonzero(gmm.weights_ > 0.01)):
        values, vectors = np.linalg.eigh(gmm.covariances_[k])
        major = vectors[:, 1]
        theta = np.radians(e.angle)
        # the ellipse's width runs along angle: it is the major axis
        assert e.width >= e.height
        assert abs(abs(np.dot(major, [np.cos(theta), np.sin(theta)])) - 1) < 1e-8


def test_mixture_above_two_dimensions_uses_the_principal_axes():
    gmm = _fit_gmm("full", D=3)
    fig = fp.plot_mixture(gmm)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("PC 1") and ax.get_ylabel().startswith("PC 2")
    w = gmm.weights_ / gmm.weights_.sum()
    m = w @ gmm.means_
    total = sum(
        wk * (S + np.outer(mk - m, mk - m))
        for wk, S, mk in zip(w, gmm.covariances_, gmm.means_)
    )
    vectors = np.linalg.eigh(total)[1][:, ::-1][:, :2]
    keep = np.flatnonzero(gmm.weights_ > 0.01)
    centers = np.array([e.center for e in ax.patches[::2]])
    expected = (gmm.means_[keep] - m) @ vectors
    np.testing.assert_allclose(np.abs(centers), np.abs(expected), atol=1e-8)
    fig = fp.plot_mixture(gmm, dims=(0, 2))
    assert fig.axes[0].get_xlabel() == "x0" and fig.axes[0].get_ylabel() == "x2"


def test_mixture_in_one_dimension_draws_densities_that_integrate_to_one():
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(-3, 0.5, 200), rng.normal(2, 1.0, 200)])[:, None]
    gmm = BayesianGaussianMixture(n_components=3, random_state=0).fit(X)
    ax = fp.plot_mixture(gmm).axes[0]
    lines = ax.get_lines()
    keep = int(np.sum(gmm.weights_ > 0.01))
    assert len(lines) == keep + 1
    total = lines[-1]
    x, dens = total.get_xdata(), total.get_ydata()
    assert abs(np.sum((dens[1:] + dens[:-1]) / 2 * np.diff(x)) - 1) < 1e-3
    assert ax.get_ylabel() == "density"


def test_mixture_axes_choices_and_errors():
    gmm = _fit_gmm("diag")
    fig, ax = plt.subplots()
    assert fp.plot_mixture(gmm, ax=ax) is fig and len(fig.axes) == 1
    fig, pair = plt.subplots(1, 2)
    fp.plot_mixture(gmm, ax=tuple(pair))
    assert len(pair[1].patches) == 5
    few = fp.plot_mixture(gmm, _blobs(2), max_points=40).axes[0]
    assert few.collections[0].get_offsets().shape == (40, 2)
    with pytest.raises(ValueError, match="shape"):
        fp.plot_mixture(gmm, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="dims"):
        fp.plot_mixture(gmm, dims=(0, 0))
    with pytest.raises(ValueError, match="fitted"):
        fp.plot_mixture(BayesianGaussianMixture())


# ------------------------------------------------------------------ topics
def test_topics_show_each_topics_most_probable_words(lda):
    vocabulary = [f"word{v}" for v in range(30)]
    fig = fp.plot_topics(lda, vocabulary, n_words=6)
    ax, colorbar = fig.axes
    assert len(ax.texts) == 4 * 6
    probs = lda.components_ / lda.components_.sum(axis=1, keepdims=True)
    for t in range(4):
        top = np.argsort(-probs[t])[:6]
        row = [x.get_text() for x in ax.texts[6 * t : 6 * t + 6]]
        assert row == [vocabulary[i] for i in top]
    np.testing.assert_allclose(
        ax.images[0].get_array(), np.sort(probs, axis=1)[:, ::-1][:, :6]
    )
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        f"topic {t}" for t in range(4)
    ]
    assert ax.get_xlabel() == "rank" and colorbar.get_ylabel() == "P(word | topic)"


def test_topics_from_an_array_and_errors(lda):
    fig = fp.plot_topics(np.array([[1.0, 3.0, 2.0]]), ["a", "b", "c"], n_words=2)
    assert [t.get_text() for t in fig.axes[0].texts] == ["b", "c"]
    fig = fp.plot_topics(lda, topics=[2])
    assert len(fig.axes[0].texts) == 10 and fig.axes[0].texts[0].get_text()[0] == "w"
    with pytest.raises(ValueError, match="vocabulary has 2 words"):
        fp.plot_topics(lda, ["a", "b"])
    with pytest.raises(ValueError, match="non-negative"):
        fp.plot_topics(np.array([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="topics must be"):
        fp.plot_topics(lda, topics=[7])
    with pytest.raises(ValueError, match="fitted"):
        fp.plot_topics(LatentDirichletAllocation())


# ------------------------------------------------------------------ forest
def _bars(container):
    """(centers, lower, upper) of a horizontal ErrorbarContainer."""
    line, _, (bars,) = container.lines
    segments = np.array(bars.get_segments())
    return line.get_xdata(), segments[:, 0, 0], segments[:, 1, 0]


def test_forest_of_a_linear_regression_is_its_gaussian_q(linear):
    fig = fp.plot_forest(linear, level=0.9)
    ax = fig.axes[0]
    (container,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    mean, lo, hi = _bars(container)
    sd = np.sqrt(np.diag(linear.sigma_))
    np.testing.assert_allclose(mean, linear.coef_)
    np.testing.assert_allclose(hi - mean, 1.6448536269514722 * sd, rtol=1e-9)
    np.testing.assert_allclose(mean - lo, 1.6448536269514722 * sd, rtol=1e-9)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x0", "x1", "x2", "x3"]
    assert ax.get_xlabel() == "posterior mean and 90% interval"
    ax = fp.plot_forest(linear, include_intercept=True).axes[0]
    assert ax.get_yticklabels()[-1].get_text() == "intercept"


def test_forest_of_sgvi_and_one_vs_rest_models(sgvi, regression_data):
    ax = fp.plot_forest(sgvi, include_intercept=True).axes[0]
    (container,) = ax.containers
    mean, lo, hi = _bars(container)
    np.testing.assert_allclose(mean, np.append(sgvi.coef_, sgvi.intercept_))
    np.testing.assert_allclose(
        (hi - lo) / 2,
        1.959963984540054 * np.append(sgvi.coef_std_, sgvi.intercept_std_),
        rtol=1e-9,
    )
    X, _, _, y3 = regression_data
    clf = VBLogisticRegression().fit(X, y3)
    ax = fp.plot_forest(clf).axes[0]
    assert len(ax.containers) == 3
    for c, container in enumerate(ax.containers):
        mean, lo, hi = _bars(container)
        np.testing.assert_allclose(mean, clf.coef_[c])
        sd = np.sqrt(np.diag(clf.sigma_[c]))[:4]
        np.testing.assert_allclose((hi - lo) / 2, 1.959963984540054 * sd, rtol=1e-9)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "class 0",
        "class 1",
        "class 2",
    ]


def test_forest_from_arrays_and_errors(linear):
    ax = fp.plot_forest(
        mean=[0.0, 1.0], lower=[-1.0, 0.5], upper=[1.0, 2.0], names=["a", "b"]
    ).axes[0]
    mean, lo, hi = _bars(ax.containers[0])
    np.testing.assert_array_equal(lo, [-1.0, 0.5])
    np.testing.assert_array_equal(hi, [1.0, 2.0])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    with pytest.raises(ValueError, match="lower exceeds upper"):
        fp.plot_forest(mean=[0.0], lower=[1.0], upper=[0.5])
    with pytest.raises(ValueError, match="differ in length"):
        fp.plot_forest(mean=[0.0, 1.0], lower=[0.0], upper=[1.0])
    with pytest.raises(ValueError, match="not both"):
        fp.plot_forest(linear, mean=[0.0], lower=[0.0], upper=[0.0])
    with pytest.raises(ValueError, match="needs a model"):
        fp.plot_forest(mean=[0.0])
    with pytest.raises(ValueError, match="3 names for 4"):
        fp.plot_forest(linear, names=["a", "b", "c"])
    with pytest.raises(ValueError, match="level"):
        fp.plot_forest(linear, level=1.5)
    ug = UnivariateGaussian().fit(np.arange(5.0))
    with pytest.raises(TypeError, match="no posterior of its coefficients"):
        fp.plot_forest(ug)


# ------------------------------------------------------------------ k-hat
def test_khat_points_by_zone_and_thresholds():
    k = np.array([0.1, 0.4, 0.5, 0.55, 0.7, 0.71, 1.3, 0.2])
    ax = fp.plot_khat(k).axes[0]
    good, ok, bad = ax.collections
    np.testing.assert_array_equal(good.get_offsets()[:, 1], [0.1, 0.4, 0.5, 0.2])
    np.testing.assert_array_equal(good.get_offsets()[:, 0], [0, 1, 2, 7])
    np.testing.assert_array_equal(ok.get_offsets()[:, 1], [0.55, 0.7])
    np.testing.assert_array_equal(bad.get_offsets()[:, 1], [0.71, 1.3])
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines())
    assert levels == [0.5, 0.7]
    assert ax.get_title() == "2 of 8 observations above 0.7"
    assert ax.get_xlabel() == "observation" and "k" in ax.get_ylabel()
    with pytest.raises(ValueError, match="1 NaN values"):
        fp.plot_khat([0.1, np.nan])
    # k-hat is inf when an importance ratio is not finite: drawn at the top
    ax = fp.plot_khat([0.1, np.inf, 0.9]).axes[0]
    assert len(ax.collections) == 4
    np.testing.assert_array_equal(ax.collections[3].get_offsets()[:, 0], [1])
    assert ax.collections[3].get_offsets()[0, 1] >= 1.0
    assert ax.get_title() == "2 of 3 observations above 0.7"
    with pytest.raises(ValueError, match="1-D"):
        fp.plot_khat(np.zeros((2, 2)))


# ------------------------------------------------------------------ calibration
def test_calibration_bins_of_equal_count():
    rng = np.random.default_rng(4)
    p = rng.uniform(size=1000)
    y = (rng.uniform(size=1000) < p).astype(int)
    ax = fp.plot_calibration(y, np.column_stack([1 - p, p]), n_bins=5).axes[0]
    diagonal, points = ax.get_lines()[:2]
    np.testing.assert_array_equal(diagonal.get_ydata(), [0, 1])
    order = np.argsort(p, kind="stable")
    bins = np.array_split(order, 5)
    np.testing.assert_allclose(points.get_xdata(), [p[b].mean() for b in bins])
    np.testing.assert_allclose(points.get_ydata(), [y[b].mean() for b in bins])
    brier = np.mean((p - y) ** 2)
    assert f"{brier:.4f}" in ax.get_title()
    assert ax.get_xlabel() == "predicted probability"
    assert ax.get_ylabel() == "observed frequency"
    # the Wilson intervals cover the truth for calibrated predictions
    (container,) = ax.containers
    segments = np.array(container.lines[2][0].get_segments())
    lo, hi = segments[:, 0, 1], segments[:, 1, 1]
    truth = np.array([p[b].mean() for b in bins])
    assert np.all((lo < truth) & (truth < hi))


def test_calibration_errors():
    with pytest.raises(ValueError, match="0/1"):
        fp.plot_calibration([1, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fp.plot_calibration([1, 0], [1.5, 0.5])
    with pytest.raises(ValueError, match="one length"):
        fp.plot_calibration([1, 0, 1], [0.5, 0.5])
    ax = fp.plot_calibration(np.array([True, False]), [0.9, 0.1]).axes[0]
    assert len(ax.get_lines()[1].get_xdata()) == 2


def test_coverage_is_the_share_inside_each_interval():
    y = np.arange(10.0)
    lower = np.array([np.full(10, 2.0), np.full(10, 0.0)])
    upper = np.array([np.full(10, 6.0), np.full(10, 8.5)])
    ax = fp.plot_coverage(y, lower, upper, [0.5, 0.9]).axes[0]
    points = ax.get_lines()[1]
    np.testing.assert_array_equal(points.get_xdata(), [0.5, 0.9])
    np.testing.assert_allclose(points.get_ydata(), [0.5, 0.9])
    assert ax.get_xlabel() == "nominal level of the interval"
    assert ax.get_ylabel() == "observed coverage"
    with pytest.raises(ValueError, match="shape"):
        fp.plot_coverage(y, lower[:, :5], upper, [0.5, 0.9])
    with pytest.raises(ValueError, match="levels"):
        fp.plot_coverage(y, lower, upper, [0.5, 1.0])


# ------------------------------------------------------------------ the extra
def test_import_fastvi_plot_does_not_import_matplotlib():
    code = "import sys, fastvi.plot; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "fastvi\[plot\]"'):
        fp.plot_khat([0.1, 0.2])


def test_no_warnings_from_any_picture(linear, sgvi, lda):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ConvergenceWarning)
        for fig in (
            fp.plot_trace(linear),
            fp.plot_trace(sgvi),
            fp.plot_forest(sgvi),
            fp.plot_topics(lda),
            fp.plot_mixture(_fit_gmm("tied"), _blobs(2)),
            fp.plot_khat([0.1, 0.9]),
        ):
            fig.canvas.draw()


def test_forest_of_an_unfitted_regression_is_refused():
    with pytest.raises(ValueError, match="needs a fitted model"):
        fp.plot_forest(VBLinearRegression())
    with pytest.raises(ValueError, match="needs a fitted model"):
        fp.plot_forest(BayesianLogisticRegression())
