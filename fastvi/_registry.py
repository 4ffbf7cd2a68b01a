"""The estimator classes of fastvi: one list, read by every part that names them.

``fastvi/__init__.py`` imports them lazily from here, :mod:`fastvi.persist` loads only
the classes listed here (its allowlist: a file names a class, the class is never
imported from the file), and the command line (``fastvi fit MODEL``) offers one model
per entry. Adding an estimator to fastvi means adding one :class:`Entry` here.

Importing this module imports nothing else (``import fastvi`` stays cheap).
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

__all__ = ["ESTIMATORS", "Entry", "by_class", "estimator_class"]


class Entry(NamedTuple):
    """One estimator class and how the command line presents it."""

    name: str  # the class name (as exported by ``fastvi`` and written in model files)
    module: str  # the module that defines it
    command: str  # its name on the command line (``fastvi fit COMMAND``)
    summary: str  # one line for ``fastvi fit --help``
    score: tuple  # (JSON key, printed label) of what ``score`` returns
    supervised: bool = False  # whether ``fit`` takes a target y (a column of the input)
    iterations: str = "iterations"  # what ``n_iter_`` counts ('epochs', 'steps')
    # a class whose numpydoc "Parameters" section documents this one's parameters
    # where its own docstring does not
    docs_from: str | None = None


ESTIMATORS = (
    Entry(
        "BayesianGaussianMixture",
        "fastvi.mixture",
        "gmm",
        "Bayesian Gaussian mixture (CAVI or online SVI; out of core for .npy)",
        score=("mean_log_likelihood", "mean log-likelihood per row"),
    ),
    Entry(
        "LatentDirichletAllocation",
        "fastvi.lda",
        "lda",
        "latent Dirichlet allocation topic model of document-word counts",
        iterations="epochs",
        score=("log_likelihood_bound", "log-likelihood bound of the documents"),
    ),
    Entry(
        "UnivariateGaussian",
        "fastvi.conjugate",
        "gaussian",
        "Gaussian with unknown mean and precision (one column)",
        score=("mean_log_predictive", "mean log predictive density per row"),
    ),
    Entry(
        "VBLinearRegression",
        "fastvi.conjugate",
        "linear",
        "variational Bayesian linear regression (shared or ARD precisions)",
        supervised=True,
        score=("r2", "R^2 (coefficient of determination)"),
    ),
    Entry(
        "VBLogisticRegression",
        "fastvi.conjugate",
        "logistic",
        "variational Bayesian logistic regression (Jaakkola-Jordan bound)",
        supervised=True,
        score=("accuracy", "accuracy (fraction of rows classified right)"),
    ),
    Entry(
        "BayesianLogisticRegression",
        "fastvi.sgvi.estimators",
        "sgvi-logistic",
        "Bayesian logistic regression fitted by stochastic-gradient VI",
        supervised=True,
        iterations="steps",
        score=("accuracy", "accuracy (fraction of rows classified right)"),
    ),
    Entry(
        "BayesianPoissonRegression",
        "fastvi.sgvi.estimators",
        "sgvi-poisson",
        "Bayesian Poisson regression (log link) fitted by stochastic-gradient VI",
        supervised=True,
        iterations="steps",
        score=("d2", "D^2 (fraction of Poisson deviance explained)"),
        docs_from="BayesianLogisticRegression",
    ),
)

_BY_CLASS = {entry.name: entry for entry in ESTIMATORS}


def by_class(name):
    """The :class:`Entry` of class ``name``, or None."""
    return _BY_CLASS.get(name)


def estimator_class(name):
    """The class ``name`` of the registry (KeyError for any other name)."""
    return getattr(importlib.import_module(_BY_CLASS[name].module), name)
