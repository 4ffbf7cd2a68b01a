"""Models for SGVI: log densities over named parameters with declared supports.

A model exposes its parameters (name, shape, support) and ``log_joint(theta, rows)``:
the log joint density ``log p(x, theta)`` at S parameter vectors at once (``theta`` is
(S, P) in the *constrained* space, columns in the order of ``params``) and its gradient
in ``theta``. :meth:`Model.log_density` maps an unconstrained draw ``z`` through each
parameter's transform, adds the log-Jacobian, and applies the chain rule, so the engine
only ever sees ``log p(x, T(z)) + log |det J_T(z)|`` and its gradient in ``z``
(Kucukelbir et al. 2017, §2.3).

Supports and their transforms ``theta = T(z)``:

``"real"``             theta = z                          log J = 0
``"positive"``         theta = exp(z)                     log J = z
``Interval(lo, hi)``   theta = lo + (hi - lo) sigmoid(z)   log J = log(hi - lo)
                                                            + log sigmoid(z)
                                                            + log sigmoid(-z)
``"ordered"``          increasing vector: first entry, then cumulative exp
``"simplex"``          K entries >= 0 summing to 1, from K - 1 unconstrained ones
                       (stick-breaking as in Stan)

The last two are vector supports (:mod:`fastvi.sgvi.supports` has their transforms).
A simplex has one unconstrained coordinate fewer than entries, so a model has
``size`` unconstrained coordinates (what q and the engine see; ``free_slices`` says
where each parameter lies in z) and ``theta_size`` constrained ones (what ``log_joint``
sees; ``slices`` says where each parameter lies in theta). Without a simplex the two
agree.

Built-in models: :class:`GLM` (logistic, Poisson with log link, Gaussian with known or
unknown noise scale; priors from :mod:`fastvi.sgvi.priors`; one fused Numba pass per
step, see ``fastvi.kernels.sgvi``),
:class:`EightSchools` (the non-centered hierarchical normal model). Any other model
subclasses :class:`Model` and writes ``log_joint`` in NumPy.
"""

import math
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
from scipy.special import expit, gammaln, log_expit

from ..rows import Max
from . import priors as _priors
from . import supports as _vec

__all__ = ["EightSchools", "GLM", "Interval", "Model", "Param"]

# Rows per parallel work item of the GLM kernels (fixed: results do not depend on the
# thread count) and bytes per transposed tile: a tile sits in L2, and long tiles
# amortize the per-tile reductions of the gradient's dot products. Tiles hold a power
# of 2 rows, so that a chunk holds whole tiles and a block of fastvi.rows (65536
# rows) whole chunks: a pass block by block (out of core) sums the very chunk
# partials of a pass over the whole array. (CPU time per pass, N = 1e5, S = 8, one
# thread: 512-row float64 tiles at D = 50 6-20% faster than 320-row ones, 256 at
# D = 100 5% faster than 160, 128 at D = 200 10% faster than 80.)
CHUNK_ROWS = 2048
_TILE_BYTES = 262144
_TILE_MAX_ROWS = 512
# Minibatch rows are gathered into a tile: there, L1-sized tiles of at most 128 rows
# win (the scattered reads and the transposing writes; 512-row tiles cost 35% more).
_GATHER_TILE_BYTES = 32768
_GATHER_TILE_MAX_ROWS = 128
# A data pass of fewer multiply-adds (rows x features x draws) than this runs on the
# calling thread: about a millisecond of work, less than what waking numba's thread
# pool can cost on a busy machine. The chunks, and so the bits, are the same.
SERIAL_WORK = 1 << 21
# Largest |x| a GLM accepts: the fit forms x . coef and, for its Laplace start,
# curvatures ~ sum_n x_n x_n^T, which must stay far from the dtype's overflow
_X_LIMIT = {np.float64: 1e100, np.float32: 1e15}


class Interval(NamedTuple):
    """Support ``(lo, hi)``; the transform is a scaled logistic sigmoid."""

    lo: float
    hi: float


class Param(NamedTuple):
    """A named model parameter: ``shape`` (``()`` for a scalar; an int ``n`` means
    ``(n,)``) and its support: ``"real"``, ``"positive"``, ``Interval(lo, hi)``, or
    for a vector (shape ``(K,)``) ``"ordered"`` or ``"simplex"``. ``size`` counts
    the constrained entries (K for a K-simplex, which has K - 1 unconstrained
    coordinates)."""

    name: str
    shape: tuple = ()
    support: object = "real"

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))


def _check_support(support, name, shape=None):
    if isinstance(support, str) and support in ("real", "positive"):
        return support
    if isinstance(support, str) and support in _vec.VECTOR_SUPPORTS:
        least = 2 if support == "simplex" else 1
        if shape is not None and (len(shape) != 1 or shape[0] < least):
            raise ValueError(
                f"Parameter {name!r}: a {support!r} support needs a vector of "
                f"shape (K,) with K >= {least}, got shape {shape}."
            )
        return support
    if isinstance(support, Interval):
        lo, hi = float(support.lo), float(support.hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"Parameter {name!r}: an interval support needs finite lo < hi, "
                f"got {support!r}."
            )
        return Interval(lo, hi)
    raise ValueError(
        f"Parameter {name!r}: support must be 'real', 'positive', Interval(lo, hi), "
        f"'ordered' or 'simplex', got {support!r}."
    )


class Model:
    """Base class: parameters, transforms, log-Jacobians, and the chain rule.

    Subclasses set ``params`` (a sequence of :class:`Param`) before calling
    ``super().__init__()``, set ``n_rows`` (the number of data rows a minibatch is
    drawn from; 0 when the model does not support minibatches) and implement
    ``log_joint(theta, rows, scale)`` returning ``(lp, grad)`` in the constrained
    space (theta and grad (S, theta_size)). A model without a gradient sets
    ``has_gradient = False`` and implements ``log_joint_value(theta, rows, scale)``
    instead (only ``estimator='score'`` can fit it).
    :class:`fastvi.sgvi.NumbaModel` builds a model from numba-jitted per-row
    functions.
    """

    n_rows = 0
    has_gradient = True

    def __init__(self):
        if not getattr(self, "params", None):
            raise ValueError(
                f"{type(self).__name__} has no parameters: set self.params (a list "
                "of Param) before calling super().__init__()."
            )
        params = []
        seen = set()
        for p in self.params:
            shape = (p.shape,) if isinstance(p.shape, Integral) else p.shape
            p = Param(p.name, tuple(int(s) for s in shape), p.support)
            if any(s < 0 for s in p.shape):
                raise ValueError(
                    f"Parameter {p.name!r}: shape must hold sizes >= 0, got {p.shape}."
                )
            if p.name in seen:
                raise ValueError(f"Duplicate parameter name {p.name!r}.")
            seen.add(p.name)
            support = _check_support(p.support, p.name, p.shape)
            params.append(p._replace(support=support))
        self.params = tuple(params)
        # slices: where each parameter lies in theta (constrained); free_slices: in z
        self.slices, self.free_slices = {}, {}
        start = free = 0
        lower, upper = [], []
        pos, itv, pos_t, itv_t, ez, et = [], [], [], [], [], []
        self._vector = []  # (support, z slice, theta slice) of vector supports
        for p in self.params:
            n = _vec.free_size(p.support, p.size)
            sl = slice(start, start + p.size)
            zsl = slice(free, free + n)
            self.slices[p.name] = sl
            self.free_slices[p.name] = zsl
            if p.support in _vec.VECTOR_SUPPORTS:
                self._vector.append((p.support, zsl, sl))
            else:
                idx, tdx = np.arange(zsl.start, zsl.stop), np.arange(sl.start, sl.stop)
                ez.append(idx)
                et.append(tdx)
                if p.support == "positive":
                    pos.append(idx)
                    pos_t.append(tdx)
                elif isinstance(p.support, Interval):
                    itv.append(idx)
                    itv_t.append(tdx)
                    lower.append(np.full(p.size, p.support.lo))
                    upper.append(np.full(p.size, p.support.hi))
            start, free = sl.stop, zsl.stop
        if start == 0:
            raise ValueError(
                f"{type(self).__name__} has no coordinates to fit: every parameter "
                "has a zero-size shape ("
                + ", ".join(f"{p.name!r} {p.shape}" for p in self.params)
                + "). Give a parameter at least one entry."
            )
        self.size = free
        self.theta_size = start

        def cat(parts, dtype=np.int64):
            return np.concatenate(parts) if parts else np.empty(0, dtype)

        # elementwise supports: indices in z (_pos, _itv) and in theta (_pos_t, ...)
        self._pos, self._itv = cat(pos), cat(itv)
        self._pos_t, self._itv_t = cat(pos_t), cat(itv_t)
        self._ez, self._et = cat(ez), cat(et)
        self._lo = cat(lower, np.float64)
        self._hi = cat(upper, np.float64)
        self.identity = self._pos.size == 0 and self._itv.size == 0 and not self._vector

    # ------------------------------------------------------------ naming
    def coordinate_names(self):
        """Names of the P unconstrained coordinates, e.g. ``coef[3]`` (a simplex
        ``w`` of K entries has K - 1: ``w.stick[0]`` .. ``w.stick[K-2]``)."""
        names = []
        for p in self.params:
            if p.shape == ():
                names.append(p.name)
            elif p.support == "simplex":
                names += [f"{p.name}.stick[{i}]" for i in range(p.size - 1)]
            else:
                for index in np.ndindex(*p.shape):
                    names.append(f"{p.name}[{', '.join(map(str, index))}]")
        return names

    # ------------------------------------------------------------ transforms
    def constrain(self, z):
        """theta = T(z) for draws z of shape (..., size); theta is (..., theta_size)."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim == 0 or z.shape[-1] != self.size:
            raise ValueError(
                f"z must have {self.size} unconstrained coordinates in its last "
                f"axis; got shape {z.shape}."
            )
        if not self._vector:
            theta = np.array(z, copy=True)
        else:
            theta = np.empty(z.shape[:-1] + (self.theta_size,))
            theta[..., self._et] = z[..., self._ez]
            for kind, zsl, sl in self._vector:
                theta[..., sl] = _vec.FORWARD[kind](z[..., zsl])[0]
        if self._pos.size:
            theta[..., self._pos_t] = np.exp(z[..., self._pos])
        if self._itv.size:
            u = z[..., self._itv]
            theta[..., self._itv_t] = self._lo + (self._hi - self._lo) * expit(u)
        return theta

    def unconstrain(self, theta):
        """z = T^{-1}(theta) for theta of shape (..., theta_size)."""
        theta = np.asarray(theta, dtype=np.float64)
        if theta.ndim == 0 or theta.shape[-1] != self.theta_size:
            raise ValueError(
                f"theta must have {self.theta_size} entries in its last axis; got "
                f"shape {theta.shape}."
            )
        if not self._vector:
            z = np.array(theta, copy=True)
        else:
            z = np.empty(theta.shape[:-1] + (self.size,))
            z[..., self._ez] = theta[..., self._et]
            for kind, zsl, sl in self._vector:
                z[..., zsl] = _vec.INVERSE[kind](theta[..., sl])
        if self._pos.size:
            z[..., self._pos] = np.log(theta[..., self._pos_t])
        if self._itv.size:
            u = (theta[..., self._itv_t] - self._lo) / (self._hi - self._lo)
            z[..., self._itv] = np.log(u) - np.log1p(-u)
        return z

    def log_density(self, z, rows=None, grad=True):
        """log p(x, T(z)) + log|J_T(z)| and its gradient in z, for z of shape (S, P).

        ``rows`` (int64 indices) restricts the likelihood to a minibatch, scaled by
        ``n_rows / len(rows)``. Returns ``(lp, grad)`` of shapes (S,) and (S, P);
        with ``grad=False`` (what the score-function estimator needs) only ``lp``,
        from :meth:`log_joint_value`.
        """
        scale = 1.0 if rows is None else self.n_rows / rows.shape[0]
        S = z.shape[0]
        if not grad:
            theta = z if self.identity else self.constrain(z)
            lp = self._checked_lp(self.log_joint_value(theta, rows, scale), S)
            return lp + self._log_jacobian(z)
        if not self.has_gradient:
            raise ValueError(
                f"{type(self).__name__} has no gradient; use estimator='score'."
            )
        if self.identity:
            return self._checked(self.log_joint(z, rows, scale), S)
        theta = self.constrain(z)
        lp, g_theta = self._checked(self.log_joint(theta, rows, scale), S)
        g_theta = np.asarray(g_theta, dtype=np.float64)
        if not self._vector:
            g = np.array(g_theta, copy=True)
        else:
            g = np.empty((S, self.size))
            g[:, self._ez] = g_theta[:, self._et]
            for kind, zsl, sl in self._vector:
                # chain rule and d log J / dz of the vector transform together
                g[:, zsl] = _vec.GRAD[kind](z[:, zsl], theta[:, sl], g_theta[:, sl])
        lp = lp + self._log_jacobian(z)
        if self._pos.size:
            # d theta / dz = theta; d log J / dz = 1
            g[:, self._pos] = g[:, self._pos] * theta[:, self._pos_t] + 1.0
        if self._itv.size:
            u = z[:, self._itv]
            width = self._hi - self._lo
            sig = expit(u)
            # d theta / dz = width s (1 - s); d log J / dz = 1 - 2 s
            g[:, self._itv] = g[:, self._itv] * width * sig * (1.0 - sig) + (
                1.0 - 2.0 * sig
            )
        return lp, g

    def _checked_lp(self, lp, S, method="_value"):
        """``lp`` as a float64 array of shape (S,), or a clear error: a scalar (or
        any other shape) would be broadcast silently over the draws."""
        shape = np.shape(lp)
        if shape != (S,):
            raise ValueError(
                f"{type(self).__name__}.log_joint{method} must return the log "
                f"density of each of the {S} draws, shape ({S},); it returned "
                + ("a scalar" if shape == () else f"shape {shape}")
                + "."
            )
        return np.asarray(lp, dtype=np.float64)

    def _checked(self, out, S):
        """``(lp, grad)`` of :meth:`log_joint` checked: shapes (S,) and (S, P)."""
        name = type(self).__name__
        if not isinstance(out, tuple) or len(out) != 2:
            raise ValueError(
                f"{name}.log_joint must return a pair (lp, grad); it returned "
                f"{type(out).__name__}."
            )
        lp, g = out
        lp = self._checked_lp(lp, S, "")
        P = self.theta_size
        if np.shape(g) != (S, P):
            raise ValueError(
                f"{name}.log_joint must return the gradient of each of the {S} "
                f"draws in the model's {P} parameter coordinates, shape "
                f"({S}, {P}); it returned shape {np.shape(g)}."
            )
        return lp, g

    def _log_jacobian(self, z):
        """log |det J_T(z)| per draw, shape (S,)."""
        out = np.zeros(z.shape[0])
        if self._pos.size:
            out += z[:, self._pos].sum(axis=1)
        if self._itv.size:
            u = z[:, self._itv]
            width = self._hi - self._lo
            out += (np.log(width) + log_expit(u) + log_expit(-u)).sum(axis=1)
        for kind, zsl, _ in self._vector:
            out += _vec.FORWARD[kind](z[:, zsl])[1]
        return out

    def log_joint_value(self, theta, rows, scale):
        """log p(x, theta) only (default: the first output of :meth:`log_joint`).

        Models without gradients (``has_gradient = False``) implement this one."""
        return self.log_joint(theta, rows, scale)[0]

    def log_joint(self, theta, rows, scale):  # pragma: no cover - abstract
        raise NotImplementedError

    def initial_point(self):
        """An unconstrained starting point for the variational mean (zeros)."""
        return np.zeros(self.size)


_FAMILIES = {"logistic": 0, "poisson": 1, "gaussian": 2}


def _glm_kernels():
    from ..kernels import sgvi

    return sgvi


def _serial(n_units, per_chunk, work):
    """Whether a pass of ``n_units`` (rows or tiles), ``per_chunk`` per work item and
    ``work`` multiply-adds, should run on the calling thread."""
    if n_units <= per_chunk or work < SERIAL_WORK:
        return True
    import numba

    return numba.get_num_threads() == 1


def _tile_rows_for(n_features, itemsize, gather=False):
    if gather:  # a multiple of 16
        tile = _GATHER_TILE_BYTES // max(1, n_features * itemsize)
        return max(16, min(_GATHER_TILE_MAX_ROWS, tile - tile % 16))
    tile = _TILE_BYTES // max(1, n_features * itemsize)  # a power of 2 (CHUNK_ROWS)
    return max(16, min(_TILE_MAX_ROWS, 1 << max(0, tile.bit_length() - 1)))


def _largest(block, start):
    """Block statistic: the largest |x| of the rows (inf when one is not finite)."""
    x = block[0] if type(block) is tuple else block
    big = float(np.max(np.abs(x))) if x.size else 0.0
    return Max(big if math.isfinite(big) else math.inf)


def _tile_array(n_tiles, n_features, tile, dtype):
    """An uninitialized (n_tiles, n_features, tile) array whose rows start on 64-byte
    boundaries (``tile``: a multiple of 16). NumPy aligns to 16 bytes, and a 512-bit
    load from such a row splits two cache lines: the kernel's pass over such tiles
    in cache took 1.13x as long (float64 and float32)."""
    dtype = np.dtype(dtype)
    size, lanes = n_tiles * n_features * tile, 64 // dtype.itemsize
    buf = np.empty(size + lanes, dtype)
    off = -(buf.ctypes.data // dtype.itemsize) % lanes
    return buf[off : off + size].reshape(n_tiles, n_features, tile)


def _glm_block(block, start, W, b, tau, family, tile, chunk_tiles, y):
    """Block statistic of the GLM pass: the kernel's per-chunk partials of the rows
    ``block`` (transposed into tiles here) with their targets ``y``, stacked in
    chunk order (``ll, gw, gb, ss``; summed in order by ``map_reduce``)."""
    X = block[0] if type(block) is tuple else block
    n, D = X.shape
    tiles = _tile_array((n + tile - 1) // tile, D, tile, np.float64)
    _glm_kernels().tile_rows(X, tile, tiles)
    y = np.ascontiguousarray(y, dtype=np.float64)
    return _glm_tiles(tiles, y, n, W, b, tau, family, chunk_tiles)


def _glm_tiles(tiles, y, n, W, b, tau, family, chunk_tiles):
    """The GLM kernel's per-chunk partials over ``tiles`` (``n`` rows transposed a
    tile at a time), on the calling thread when the pass is small."""
    k = _glm_kernels()
    serial = _serial(tiles.shape[0], chunk_tiles, n * tiles.shape[1] * W.shape[0])
    kernel = k.glm_pass_tiled_serial if serial else k.glm_pass_tiled
    return kernel(tiles, y, n, W, b, tau, family, chunk_tiles)


class GLM(Model):
    """Bayesian generalized linear model.

    ``y_n ~ family(eta_n)``, ``eta_n = x_n . coef + intercept``, with priors
    ``coef ~ coef_prior`` (independent over the coefficients), ``intercept ~
    intercept_prior`` and, for the Gaussian family with unknown noise, ``sigma ~
    sigma_prior``. The defaults are ``Normal(0, 1)``, ``Normal(0, 10)`` and
    ``HalfNormal(1)``.

    Parameters
    ----------
    X : (N, D) array, float64 or float32 (float32 runs the products in float32), or
        a :mod:`fastvi.rows` source (a file read block by block, a dask array): its
        every data pass is then a block statistic (``map_reduce``), bitwise the
        pass over the array in memory when the source's blocks (or dask chunks)
        hold a multiple of ``CHUNK_ROWS`` rows. Such a model takes no
        minibatches and no flat prior (its check needs every row at once).
    y : (N,) responses: 0/1 for ``"logistic"``, counts for ``"poisson"``, reals for
        ``"gaussian"``.
    family : {"logistic", "poisson", "gaussian"}
    prior_scale, intercept_prior_scale : float
        Shorthand for ``coef_prior=Normal(0, prior_scale)`` and
        ``intercept_prior=Normal(0, intercept_prior_scale)``.
    fit_intercept : bool
    noise_scale : float or None
        Gaussian family only: the known noise sd, or None to infer ``sigma`` (support
        positive).
    noise_prior_scale : float
        Shorthand for ``sigma_prior=HalfNormal(noise_prior_scale)``.
    minibatch : bool
        When True the data are kept row-major for gathering minibatch rows; otherwise
        a transposed, tiled copy of X is made once for full passes.
    coef_prior, intercept_prior, sigma_prior : Prior or None
        Priors from :mod:`fastvi.sgvi.priors`: ``Normal``, ``StudentT``, ``Cauchy``
        or ``Flat`` for ``coef`` and ``intercept`` (a ``coef_prior``'s fields may
        hold one value per coefficient); ``HalfNormal``, ``HalfStudentT``,
        ``HalfCauchy``, ``Exponential`` or ``Flat`` for ``sigma``. None: the
        shorthand's normal / half-normal. Giving a prior and a non-default
        shorthand for the same parameter is an error, and so is a prior for a
        parameter the model does not have (``intercept_prior`` with
        ``fit_intercept=False``, ``sigma_prior`` without an inferred sigma).

    Warns
    -----
    ImproperPosteriorWarning
        A flat prior leaves the posterior improper on these data (collinear
        columns, separable logistic data, ...: see
        :func:`fastvi.sgvi.priors.improper_reason`); a fit then means nothing.

    Notes
    -----
    The likelihood and its gradient for all S draws come from one pass over the
    rows (``fastvi.kernels.sgvi``); per-chunk partials are summed here in chunk
    order, so results do not depend on the number of threads. The priors add
    O(D) work per draw in NumPy.
    """

    def __init__(
        self,
        X,
        y,
        family="logistic",
        *,
        prior_scale=1.0,
        intercept_prior_scale=10.0,
        fit_intercept=True,
        noise_scale=None,
        noise_prior_scale=1.0,
        minibatch=False,
        coef_prior=None,
        intercept_prior=None,
        sigma_prior=None,
    ):
        if family not in _FAMILIES:
            raise ValueError(
                f"family must be one of {sorted(_FAMILIES)}, got {family!r}."
            )
        rows = None
        if hasattr(X, "map_reduce"):  # rows of fastvi.rows: in memory or not
            rows = X
            X = rows.in_memory()
        if X is not None:
            rows = None
            X = np.asarray(X)
            if X.dtype not in (np.float32, np.float64):
                X = X.astype(np.float64)
            X = np.ascontiguousarray(X)
        shape = X.shape if rows is None else rows.shape
        y = np.ascontiguousarray(y, dtype=np.float64)
        if len(shape) != 2 or y.shape != (shape[0],):
            raise ValueError(
                f"X must be 2-D and y 1-D of matching length; got X {shape}, "
                f"y {y.shape}."
            )
        if rows is not None and minibatch:
            raise ValueError(
                "Minibatches need the rows in memory (each step reads rows drawn "
                "at random from all of them); fit a source read block by block "
                "with full passes (batch_size=None)."
            )
        dtype = X.dtype if rows is None else np.dtype(np.float64)
        if rows is not None:  # the source checks its values as it reads them
            big = rows.map_reduce(_largest).value if shape[0] else 0.0
        else:
            big = float(np.max(np.abs(X))) if X.size else 0.0
        if not (math.isfinite(big) and np.all(np.isfinite(y))):
            raise ValueError("X and y must be finite (no NaN or infinity).")
        limit = _X_LIMIT[dtype.type]
        if big > limit:
            raise ValueError(
                f"X has values as large as {big:.3g}: beyond {limit:.0e} the "
                "products of the fit (x . coef, the curvature x x^T) overflow "
                f"{dtype}. Rescale the features (e.g. "
                "sklearn.preprocessing.StandardScaler)."
            )
        for name, value in (
            ("prior_scale", prior_scale),
            ("intercept_prior_scale", intercept_prior_scale),
            ("noise_prior_scale", noise_prior_scale),
        ):
            if not (isinstance(value, Real) and value > 0 and math.isfinite(value)):
                raise ValueError(
                    f"{name} must be a positive finite number, got {value!r}."
                )
            _priors.check_normal_scale(name, value)
        self.family = family
        self.family_code = _FAMILIES[family]
        self.prior_scale = float(prior_scale)
        self.intercept_prior_scale = float(intercept_prior_scale)
        self.fit_intercept = bool(fit_intercept)
        self.infer_noise = family == "gaussian" and noise_scale is None
        self.noise_scale = None if noise_scale is None else float(noise_scale)
        self.noise_prior_scale = float(noise_prior_scale)
        N, D = shape
        if intercept_prior is not None and not self.fit_intercept:
            raise ValueError(
                "intercept_prior was given, but fit_intercept=False: the model has "
                "no intercept."
            )
        if sigma_prior is not None and not self.infer_noise:
            raise ValueError(
                "sigma_prior was given, but the model has no sigma: it applies to "
                "family='gaussian' with noise_scale=None."
            )
        self.coef_prior = _priors.resolve(
            coef_prior,
            "coef_prior",
            "coef",
            D,
            False,
            ("prior_scale", prior_scale, 1.0, _priors.Normal(0.0, self.prior_scale)),
        )
        self.intercept_prior = (
            _priors.resolve(
                intercept_prior,
                "intercept_prior",
                "intercept",
                None,
                False,
                (
                    "intercept_prior_scale",
                    intercept_prior_scale,
                    10.0,
                    _priors.Normal(0.0, self.intercept_prior_scale),
                ),
            )
            if self.fit_intercept
            else None
        )
        self.sigma_prior = (
            _priors.resolve(
                sigma_prior,
                "sigma_prior",
                "sigma",
                None,
                True,
                (
                    "noise_prior_scale",
                    noise_prior_scale,
                    1.0,
                    _priors.HalfNormal(self.noise_prior_scale),
                ),
            )
            if self.infer_noise
            else None
        )
        if any(
            isinstance(p, _priors.Flat)
            for p in (self.coef_prior, self.intercept_prior, self.sigma_prior)
        ):
            if rows is not None:
                raise ValueError(
                    "A flat prior needs the rows in memory: whether the posterior "
                    "is proper is a linear program over all of them. Give every "
                    "parameter a proper prior, or load X into memory."
                )
            reason = _priors.improper_reason(
                X, y, family, self.coef_prior, self.intercept_prior, self.sigma_prior
            )
            if reason is not None:
                from .diagnostics import warn_user

                warn_user(
                    "The posterior is improper: " + reason + " Fits of it mean "
                    "nothing; give these parameters proper priors.",
                    _priors.ImproperPosteriorWarning,
                )
        self.n_rows = N
        self.n_features = D
        self.y = y
        self.dtype = dtype
        params = [Param("coef", (D,), "real")]
        if self.fit_intercept:
            params.append(Param("intercept", (), "real"))
        if self.infer_noise:
            params.append(Param("sigma", (), "positive"))
        self.params = params
        super().__init__()
        self._const_rows = -gammaln(y + 1.0) if family == "poisson" else np.zeros(0)
        self._const_total = float(self._const_rows.sum())  # 0.0 but for Poisson
        self.X, self.rows = X, rows
        self.minibatch = bool(minibatch)
        k = _glm_kernels()
        self._Xtiles = None
        self.tile = _tile_rows_for(D, dtype.itemsize, gather=self.minibatch)
        if rows is not None:  # the targets of every block, in block order
            ends = np.cumsum(rows.block_sizes())
            self._y_blocks = [(y[e - n : e],) for e, n in zip(ends, rows.block_sizes())]
        elif not self.minibatch:
            n_tiles = (N + self.tile - 1) // self.tile
            self._Xtiles = _tile_array(n_tiles, D, self.tile, dtype)
            k.tile_rows(X, self.tile, self._Xtiles)
        self._chunk_tiles = max(1, CHUNK_ROWS // self.tile)
        self._all_rows = np.arange(N, dtype=np.int64) if self.minibatch else None

    def initial_point(self):
        z = np.zeros(self.size)
        if self.infer_noise:
            z[self.slices["sigma"]] = math.log(max(float(np.std(self.y)), 1e-3))
        return z

    def _pass(self, W, b, tau, rows, grad=True):
        k = _glm_kernels()
        W = np.ascontiguousarray(W, dtype=self.dtype)
        b = np.ascontiguousarray(b, dtype=self.dtype)
        if rows is None and self._Xtiles is None:
            rows = self._all_rows  # a full pass of a model kept row-major
        S = W.shape[0]
        if not grad and (rows is not None or self.rows is None):
            return self._values(W, b, tau, rows)
        if rows is None and self.rows is not None:
            shared = (W, b, tau, self.family_code, self.tile, self._chunk_tiles)
            return self.rows.map_reduce(
                _glm_block, shared, local=self._y_blocks, ordered=True
            )
        if rows is not None and self.X is None:
            raise ValueError(
                "Minibatches need the rows in memory; this GLM reads its rows "
                "block by block (use batch_size=None)."
            )
        if rows is None:
            fixed = (self.n_rows, W, b, tau, self.family_code, self._chunk_tiles)
            parts = _glm_tiles(self._Xtiles, self.y, *fixed)
        else:
            rows = np.ascontiguousarray(rows, dtype=np.int64)
            chunk = self._chunk_tiles * self.tile
            M = rows.shape[0]
            serial = _serial(M, chunk, M * self.n_features * S)
            kernel = k.glm_pass_rows_serial if serial else k.glm_pass_rows
            parts = kernel(
                self.X, self.y, rows, W, b, tau, self.family_code, chunk, self.tile
            )
        return tuple(p.sum(axis=0) for p in parts)  # ll, gw, gb, ss

    def _values(self, W, b, tau, rows):
        """``_pass`` without the gradient (the likelihood's product and link only):
        ``(ll, 0, 0, ss)``, the per-chunk partials of the kernels' value-only pass
        (``glm_values_*``) summed in chunk order."""
        from ..kernels import sgvi as kv

        S, chunk = W.shape[0], self._chunk_tiles * self.tile
        M = self.n_rows if rows is None else rows.shape[0]
        serial = _serial(M, chunk, M * self.n_features * S)
        if rows is None:
            kernel = kv.glm_values_tiled_serial if serial else kv.glm_values_tiled
            fixed = (self.n_rows, W, b, tau, self.family_code, self._chunk_tiles)
            ll, ss = kernel(self._Xtiles, self.y, *fixed)
        else:
            kernel = kv.glm_values_rows_serial if serial else kv.glm_values_rows
            rows = np.ascontiguousarray(rows, dtype=np.int64)
            fixed = (W, b, tau, self.family_code, chunk, self.tile)
            ll, ss = kernel(self.X, self.y, rows, *fixed)
        return ll.sum(axis=0), 0.0, 0.0, ss.sum(axis=0)

    def log_joint_value(self, theta, rows, scale):
        return self.log_joint(theta, rows, scale, grad=False)[0]

    def log_joint(self, theta, rows, scale, grad=True):
        S = theta.shape[0]
        D = self.n_features
        W = theta[:, :D]
        b = theta[:, D] if self.fit_intercept else np.zeros(S)
        M = self.n_rows if rows is None else rows.shape[0]
        if self.family == "gaussian":
            if self.infer_noise:
                sigma = theta[:, self.slices["sigma"].start]
            else:
                sigma = np.full(S, self.noise_scale)
            tau = 1.0 / (sigma * sigma)
        else:
            tau = np.ones(S)
        ll, gw, gb, ss = self._pass(W, b, tau, rows, grad)
        grad = np.zeros_like(theta)
        if self.family == "gaussian":
            # -M log sigma - M/2 log(2 pi) - ss / (2 sigma^2); ll already holds the last
            ll = ll - M * (np.log(sigma) + 0.5 * math.log(2.0 * math.pi))
        elif self.family == "poisson":
            ll = ll + (
                self._const_total
                if rows is None
                else float(self._const_rows[rows].sum())
            )
        lp = scale * ll
        grad[:, :D] = scale * gw
        if self.fit_intercept:
            grad[:, D] = scale * gb
        if self.infer_noise:
            j = self.slices["sigma"].start
            grad[:, j] = scale * (-M / sigma + ss / sigma**3)
        lp, g_w = self.coef_prior._add(lp, W)
        grad[:, :D] += g_w
        if self.fit_intercept:
            lp, g_b = self.intercept_prior._add(lp, b[:, None])
            grad[:, D] += g_b[:, 0]
        if self.infer_noise:
            lp, g_s = self.sigma_prior._add(lp, sigma[:, None])
            grad[:, j] += g_s[:, 0]
        return lp, grad


class EightSchools(Model):
    """The hierarchical normal model of Rubin (1981), non-centered.

    ``mu ~ N(0, 5^2)``, ``tau ~ HalfCauchy(5)``, ``theta_tilde_j ~ N(0, 1)``,
    ``y_j ~ N(mu + tau theta_tilde_j, sigma_j^2)``. Defaults to the eight-schools
    data (Gelman et al., BDA3 §5.5).
    """

    Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
    SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)

    def __init__(self, y=None, sigma=None):
        self.y = np.asarray(self.Y if y is None else y, dtype=np.float64)
        self.sigma = np.asarray(
            self.SIGMA if sigma is None else sigma, dtype=np.float64
        )
        J = self.y.shape[0]
        if self.y.ndim != 1 or self.sigma.shape != (J,) or np.any(self.sigma <= 0):
            raise ValueError("y and sigma must be 1-D of equal length, sigma > 0.")
        self.params = [
            Param("mu", (), "real"),
            Param("tau", (), "positive"),
            Param("theta_tilde", (J,), "real"),
        ]
        super().__init__()

    def log_joint(self, theta, rows, scale):
        mu, tau, tt = theta[:, 0], theta[:, 1], theta[:, 2:]
        effect = mu[:, None] + tau[:, None] * tt
        r = (self.y - effect) / self.sigma
        inv_var = 1.0 / self.sigma**2
        lp = -0.5 * np.sum(r * r, axis=1)
        lp += -0.5 * mu * mu / 25.0
        lp += -np.log1p((tau / 5.0) ** 2)
        lp += -0.5 * np.sum(tt * tt, axis=1)
        d_eff = (self.y - effect) * inv_var  # d lp / d effect
        grad = np.empty_like(theta)
        grad[:, 0] = d_eff.sum(axis=1) - mu / 25.0
        grad[:, 1] = np.sum(d_eff * tt, axis=1) - 2.0 * tau / (25.0 + tau * tau)
        grad[:, 2:] = d_eff * tau[:, None] - tt
        return lp, grad
