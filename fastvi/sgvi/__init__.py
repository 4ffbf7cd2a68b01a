"""SGVI: stochastic-gradient variational inference with the reparameterization trick.

See :mod:`fastvi.sgvi.engine` for the engine, :mod:`fastvi.sgvi.models` for models,
:mod:`fastvi.sgvi.estimators` for the scikit-learn-style estimators. (The PSIS k-hat
diagnostic, user-written numba models and the score-function estimator are not built
yet: see issue 4.)
"""

from .engine import (
    SGVI,
    Adam,
    FullRank,
    MeanField,
    RobbinsMonro,
    SGVIResult,
    SGVIState,
    StanConvergence,
    WindowConvergence,
)
from .models import GLM, EightSchools, Interval, Model, Param

__all__ = [
    "Adam",
    "EightSchools",
    "FullRank",
    "GLM",
    "Interval",
    "MeanField",
    "Model",
    "Param",
    "RobbinsMonro",
    "SGVI",
    "SGVIResult",
    "SGVIState",
    "StanConvergence",
    "WindowConvergence",
]
