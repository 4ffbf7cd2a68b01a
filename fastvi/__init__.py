"""fastvi: fast variational inference on the CPU.

Estimators are imported lazily so that ``import fastvi`` stays cheap: it loads neither
numba nor scikit-learn and compiles nothing.
"""

from ._registry import ESTIMATORS as _ESTIMATORS

__version__ = "0.1.0"

# name -> module; the estimators come from the one registry (fastvi._registry)
_LAZY = {entry.name: entry.module for entry in _ESTIMATORS}
_LAZY["load"] = "fastvi.persist"

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastvi' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
