"""Export of SGVI posteriors to ArviZ (optional dependency)."""

import numpy as np

__all__ = ["to_arviz"]


def to_arviz(posterior):
    """A :class:`~fastvi.sgvi.engine.Posterior` as ArviZ data, one chain.

    ArviZ 1.x (the arviz-base rewrite) takes ``from_dict({group: {name: array}})``
    and returns an ``xarray.DataTree``; ArviZ 0.x takes the groups as keyword
    arguments and returns an ``InferenceData``. Both get a ``posterior`` group
    (dimensions ``chain``, ``draw``, then ``<name>_dim_<i>``) and, when the ELBO
    trace is known, ``sample_stats.elbo`` over the dimension ``sgvi_step``.
    """
    try:
        import arviz as az
    except ImportError as exc:
        raise ImportError(
            "to_arviz needs the optional dependency arviz: pip install 'fastvi[arviz]'."
        ) from exc
    post = {name: np.asarray(d)[None, ...] for name, d in posterior.draws.items()}
    groups = {"posterior": post}
    dims = {}
    if posterior.elbo is not None:
        # ArviZ reads a sample_stats variable as (chain, draw, ...); the trace is
        # not a draw, so it gets its own dimension after a chain of length 1.
        groups["sample_stats"] = {"elbo": np.asarray(posterior.elbo)[None, None, :]}
        dims["elbo"] = ["sgvi_step"]
    major = int(str(getattr(az, "__version__", "0")).split(".")[0])
    attrs = {"inference_library": "fastvi", "inference_method": "SGVI"}
    if major >= 1:  # attrs per group; "/" is the root's
        return az.from_dict(groups, dims=dims, attrs={"/": attrs})
    return az.from_dict(**groups, dims=dims, attrs=attrs)
