"""SGVI: stochastic-gradient variational inference with the reparameterization trick.

See :mod:`fastvi.sgvi.engine` for the engine, :mod:`fastvi.sgvi.models` for models,
:mod:`fastvi.sgvi.estimators` for the scikit-learn-style estimators,
:mod:`fastvi.sgvi.user` for models from user-written numba functions
(:class:`NumbaModel`, :class:`LinearModel`; :mod:`fastvi.sgvi.vmath` for their
vectorizable exp and log) and :mod:`fastvi.sgvi.diagnostics` for the PSIS k-hat
diagnostic.
"""

from .diagnostics import (
    CorrelationWarning,
    ELBODivergenceWarning,
    PSISDiagnostic,
    PSISWarning,
    StationarityWarning,
    gpd_fit,
    psis_khat,
)
from .engine import (
    SGVI,
    Adam,
    DivergenceMonitor,
    FullRank,
    MeanField,
    Posterior,
    RobbinsMonro,
    SGVIResult,
    SGVIRun,
    SGVIState,
    StanAdaptive,
    StanConvergence,
    WindowConvergence,
    select_eta,
)
from .models import GLM, EightSchools, Interval, Model, Param
from .user import LinearModel, NumbaModel

__all__ = [
    "Adam",
    "DivergenceMonitor",
    "EightSchools",
    "CorrelationWarning",
    "ELBODivergenceWarning",
    "FullRank",
    "GLM",
    "Interval",
    "LinearModel",
    "MeanField",
    "Model",
    "NumbaModel",
    "Param",
    "Posterior",
    "PSISDiagnostic",
    "PSISWarning",
    "RobbinsMonro",
    "SGVI",
    "SGVIResult",
    "SGVIRun",
    "StationarityWarning",
    "SGVIState",
    "StanAdaptive",
    "StanConvergence",
    "WindowConvergence",
    "gpd_fit",
    "psis_khat",
    "select_eta",
]
