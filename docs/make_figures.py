"""Make the README's pictures: one of each kind that fastvi.plot draws.

    pip install -e ".[plot]"
    python docs/make_figures.py [OUTPUT_FOLDER]      # default: docs/figures

Every fit is seeded, and the data are generated here or bundled with scikit-learn
(``load_diabetes``, ``load_breast_cancer``), so the script needs no network.
"""

import os
import sys
import warnings

import numpy as np
from matplotlib.figure import Figure
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from fastvi import (
    BayesianGaussianMixture,
    BayesianLogisticRegression,
    LatentDirichletAllocation,
    VBLinearRegression,
    VBLogisticRegression,
)
from fastvi import plot as fp

DPI = 90


def _save(fig, folder, name):
    path = os.path.join(folder, name)
    fig.savefig(path, dpi=DPI)
    print(f"{path}: {os.path.getsize(path) / 1024:.0f} KB")


def _split(X, y, seed):
    rng = np.random.default_rng(seed)
    test = rng.permutation(X.shape[0]) < X.shape[0] // 3
    return X[~test], y[~test], X[test], y[test]


def breast_cancer():
    data = load_breast_cancer()
    return StandardScaler().fit_transform(data.data), data.target, data.feature_names


def trace(folder):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 5, (6, 4))
    X = centers[rng.integers(0, 6, 3000)] + rng.standard_normal((3000, 4))
    gmm = BayesianGaussianMixture(
        n_components=12, init_params="random_from_data", max_iter=500, random_state=0
    ).fit(X)
    Xb, yb, _ = breast_cancer()
    # started at 0 with sd 0.1 (not at the Laplace approximation) so the climb shows
    sgvi = BayesianLogisticRegression(
        init_scale=0.1, n_samples=4, random_state=0, max_iter=3000
    ).fit(Xb, yb)
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    fp.plot_trace(gmm, ax=left)
    left.set_title("BayesianGaussianMixture (CAVI)", fontsize="medium")
    fp.plot_trace(sgvi, ax=right)
    right.set_title("BayesianLogisticRegression (SGVI)", fontsize="medium")
    _save(fig, folder, "trace.png")


def mixture(folder):
    rng = np.random.default_rng(1)
    shapes = [
        ([-6, 0], [[1.5, 1.2], [1.2, 1.5]]),
        ([0, 4], [[0.3, 0.0], [0.0, 2.0]]),
        ([5, -1], [[2.0, -0.8], [-0.8, 0.7]]),
        ([0, -5], [[0.6, 0.0], [0.0, 0.6]]),
    ]
    X = np.concatenate(
        [
            rng.multivariate_normal(m, S, size=n)
            for (m, S), n in zip(shapes, (500, 300, 400, 200))
        ]
    )
    gmm = BayesianGaussianMixture(n_components=10, max_iter=1000, random_state=0).fit(X)
    fig = Figure(figsize=(9.5, 4.2), layout="constrained")
    fp.plot_mixture(gmm, X, ax=tuple(fig.subplots(1, 2, width_ratios=(2.2, 1.0))))
    _save(fig, folder, "mixture.png")


def topics(folder):
    themes = {
        "space": "orbit rocket launch planet moon nasa satellite crew mars telescope",
        "cooking": "recipe oven flour butter sugar bake garlic onion simmer dough",
        "football": "goal match league striker referee penalty coach season fans pitch",
        "markets": "stock bond yield inflation rate bank earnings shares investor fund",
        "music": "album guitar concert band song tour drummer chorus vinyl lyrics",
    }
    vocabulary = [w for words in themes.values() for w in words.split()]
    common = "said year people time new also first".split()
    vocabulary += common
    K, V = len(themes), len(vocabulary)
    rng = np.random.default_rng(2)
    beta = np.full((K, V), 0.02)
    for k in range(K):
        beta[k, 10 * k : 10 * k + 10] = rng.dirichlet(np.ones(10)) * 8
        beta[k, -len(common) :] = 0.15
    beta /= beta.sum(axis=1, keepdims=True)
    counts = np.zeros((800, V))
    for d in range(800):
        theta = rng.dirichlet(np.full(K, 0.3))
        counts[d] = rng.multinomial(80, theta @ beta)
    lda = LatentDirichletAllocation(n_components=K, max_iter=30, random_state=0)
    lda.fit(counts)
    fig = Figure(figsize=(10.5, 3.2), layout="constrained")
    fp.plot_topics(lda, vocabulary, n_words=8, ax=fig.add_subplot())
    _save(fig, folder, "topics.png")


def forest(folder):
    data = load_diabetes()
    X = StandardScaler().fit_transform(data.data)
    reg = VBLinearRegression().fit(X, data.target)
    fig = Figure(figsize=(6, 3.8), layout="constrained")
    ax = fig.add_subplot()
    fp.plot_forest(reg, names=data.feature_names, ax=ax)
    ax.set_title(
        "VBLinearRegression on load_diabetes (standardized)", fontsize="medium"
    )
    _save(fig, folder, "forest.png")


def khat(folder):
    """PSIS-LOO k-hat per observation of a Bayesian logistic regression
    (``loo``: Pareto-smoothed importance sampling over draws of q)."""
    X, y, _ = breast_cancer()
    est = BayesianLogisticRegression(family="fullrank", random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the k-hat warning is what the picture shows
        k = est.loo(X, y, random_state=1).khat
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.add_subplot()
    fp.plot_khat(k, ax=ax)
    ax.set_title(
        "PSIS-LOO, breast cancer logistic regression: " + ax.get_title(),
        fontsize="medium",
    )
    _save(fig, folder, "khat.png")


def calibration(folder):
    # logistic data of moderate signal (on breast cancer nearly every probability is
    # 0 or 1, which leaves a reliability diagram little to show)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 6))
    w = np.array([1.2, -0.8, 0.5, 0.0, 0.3, -0.4])
    y = (rng.uniform(size=3000) < 1 / (1 + np.exp(-(X @ w - 0.3)))).astype(int)
    Xtr, ytr, Xte, yte = _split(X, y, 3)
    clf = VBLogisticRegression().fit(Xtr, ytr)
    data = load_diabetes()
    Xd = StandardScaler().fit_transform(data.data)
    Xtr, ytr, Xte2, yte2 = _split(Xd, data.target, 4)
    reg = VBLinearRegression().fit(Xtr, ytr)
    mean, sd = reg.predict(Xte2, return_std=True)
    levels = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    from statistics import NormalDist

    z = np.array([NormalDist().inv_cdf(0.5 + lv / 2) for lv in levels])
    fig = Figure(figsize=(9, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    fp.plot_calibration(yte, clf.predict_proba(Xte), n_bins=10, ax=left)
    left.set_title(
        "VBLogisticRegression, simulated, held-out: " + left.get_title(),
        fontsize="small",
    )
    fp.plot_coverage(
        yte2, mean - z[:, None] * sd, mean + z[:, None] * sd, levels, ax=right
    )
    right.set_title(
        "VBLinearRegression, load_diabetes, held-out: Gaussian intervals",
        fontsize="small",
    )
    _save(fig, folder, "calibration.png")


def main(folder="docs/figures"):
    os.makedirs(folder, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for make in (trace, mixture, topics, forest, khat, calibration):
            make(folder)


if __name__ == "__main__":
    main(*sys.argv[1:])
