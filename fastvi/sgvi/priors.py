"""Priors for :class:`fastvi.sgvi.GLM` and the SGVI estimators.

A prior is a small immutable value (a named tuple of numbers) that gives the log density
of a block of coordinates and its gradient, for S draws at once::

    from fastvi.sgvi.priors import Normal, StudentT, HalfCauchy

    GLM(X, y, "gaussian", coef_prior=StudentT(3, 0.0, [1.0, 2.5, 2.5]),
        intercept_prior=Normal(0.0, 10.0), sigma_prior=HalfCauchy(2.5))

============================  =======================================  =======
prior                         log density                              support
============================  =======================================  =======
``Normal(loc, scale)``        log N(x; loc, scale^2)                   real
``StudentT(df, loc, scale)``  log t_df((x - loc) / scale) - log scale  real
``Cauchy(loc, scale)``        StudentT with df = 1                     real
``HalfNormal(scale)``         log 2 + log N(x; 0, scale^2)             x >= 0
``HalfStudentT(df, scale)``   log 2 + log StudentT(x; df, 0, scale)    x >= 0
``HalfCauchy(scale)``         log 2 + log Cauchy(x; 0, scale)          x >= 0
``Exponential(rate)``         log rate - rate x                        x >= 0
``Flat()``                    0 (improper: the posterior may be too)   any
============================  =======================================  =======

Every field is a number or a 1-D array with one value per coordinate (a scale per
coefficient, say); values are checked when the prior is made (finite; ``scale``,
``df`` and ``rate`` positive), and the length of an array against the number of
coordinates where the prior is used. The densities are normalized (they agree with
``scipy.stats``), so an ELBO is the same number whichever way a prior is written.
Outside a positive prior's support the log density is ``-inf`` (gradient 0).

Priors are named tuples registered with :mod:`fastvi.persist`, so an estimator whose
parameters hold them saves and loads without pickle, and a loaded prior is checked
again by its constructor.
"""

import math
from typing import NamedTuple

import numpy as np
from scipy.special import gammaln

__all__ = [
    "Cauchy",
    "Exponential",
    "Flat",
    "HalfCauchy",
    "HalfNormal",
    "HalfStudentT",
    "ImproperPosteriorWarning",
    "Normal",
    "Prior",
    "StudentT",
    "improper_reason",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_PI = math.log(math.pi)
_LOG_2 = math.log(2.0)


def _log1p_sq(a):
    """log(1 + a^2), also for |a| so large that a^2 overflows."""
    a = np.abs(a)
    big = a > 1.0
    large = np.where(big, a, 1.0)
    small = np.where(big, 0.0, a)
    inv = 1.0 / large
    return np.where(
        big, 2.0 * np.log(large) + np.log1p(inv * inv), np.log1p(small * small)
    )


def _ratio(a):
    """a / (1 + a^2), also for |a| so large that a^2 overflows."""
    big = np.abs(a) > 1.0
    large = np.where(big, a, 1.0)
    small = np.where(big, 0.0, a)
    return np.where(big, 1.0 / (large + 1.0 / large), small / (1.0 + small * small))


def _check_field(prior, field, value, positive):
    """A field as a float or a read-only 1-D float64 array; a clear error otherwise."""
    try:
        arr = np.asarray(value)
        ok = arr.dtype.kind in "iuf"
    except (TypeError, ValueError):  # ragged nested sequences
        ok = False
    if not ok:
        raise ValueError(
            f"{prior}: {field} must be a real number or a 1-D array of real "
            f"numbers, got {value!r}."
        )
    arr = np.array(arr, dtype=np.float64)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] == 0):
        raise ValueError(
            f"{prior}: {field} must be a number or a non-empty 1-D array (one value "
            f"per coordinate), got shape {arr.shape}."
        )
    bad = ~np.isfinite(arr) | (arr <= 0.0) if positive else ~np.isfinite(arr)
    need = "positive and finite" if positive else "finite"
    if np.any(bad):
        if arr.ndim == 0:
            raise ValueError(f"{prior}: {field} must be {need}, got {float(arr)!r}.")
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{prior}: every {field} must be {need}; {field}[{i}] is {float(arr[i])!r}."
        )
    if arr.ndim == 0:
        return float(arr)
    arr.setflags(write=False)
    return arr


# Below this scale a Normal or half-normal prior's scale^2 underflows the normal
# float64 range and its precision 1 / scale^2 overflows
MIN_NORMAL_SCALE = math.sqrt(float(np.finfo(np.float64).tiny))


def check_normal_scale(field, value, owner=None):
    """Refuse a normal prior's scale (a number or an array) whose precision
    1 / scale^2 overflows float64; the message names ``owner`` and ``field``."""
    small = np.asarray(value) < MIN_NORMAL_SCALE
    if not np.any(small):
        return
    where, shown = field, float(np.min(value))
    if small.ndim:
        i = int(np.flatnonzero(small)[0])
        where, shown = f"{field}[{i}]", float(value[i])
    raise ValueError(
        ("" if owner is None else f"{owner}: ")
        + f"{where} is {shown!r}, below {MIN_NORMAL_SCALE:.3g}: the prior's "
        f"precision 1 / {field}^2 overflows float64. Give a scale of at least "
        f"{MIN_NORMAL_SCALE:.3g} (or rescale the parameter)."
    )


class Prior:
    """Base of the priors: checks, equality, and the log density interface.

    ``support`` is ``"real"`` (the prior is proper on the real line), ``"positive"``
    (on x >= 0) or ``"any"`` (:class:`Flat`). Subclasses implement
    :meth:`log_density`.
    """

    __slots__ = ()
    support = "real"
    _positive_fields = ()

    def _checked(self):
        name = type(self).__name__
        values = [
            _check_field(name, f, v, f in self._positive_fields)
            for f, v in zip(self._fields, self)
        ]
        lengths = {
            f: v.shape[0] for f, v in zip(self._fields, values) if np.ndim(v) == 1
        }
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"{name}: the arrays of one prior must have one length; got "
                + ", ".join(f"{f} of {n}" for f, n in lengths.items())
                + "."
            )
        return values

    @property
    def size(self):
        """The number of coordinates the fields are given for (None: numbers only,
        the prior applies to any number of coordinates)."""
        for v in self:
            if np.ndim(v) == 1:
                return v.shape[0]
        return None

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(
            np.shape(a) == np.shape(b) and np.array_equal(a, b)
            for a, b in zip(self, other)
        )

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self):
        return hash(
            (type(self).__name__,)
            + tuple(v.tobytes() if isinstance(v, np.ndarray) else v for v in self)
        )

    def log_density(self, x):
        """``(lp, grad)``: the log density summed over the last axis of ``x`` (shape
        (S, k): S draws of k coordinates), shape (S,), and its gradient, shape
        (S, k)."""
        raise NotImplementedError

    def _add(self, lp, x):
        """``lp + log_density(x)`` and the gradient (a subclass may keep the order
        of an older formula, so that defaults give the same bits)."""
        term, grad = self.log_density(x)
        return lp + term, grad


def _positive_only(x, lp, grad):
    """-inf (gradient 0) for draws with a coordinate below 0."""
    out = np.any(x < 0.0, axis=-1)
    if np.any(out):
        lp = np.where(out, -np.inf, lp)
        grad = np.where(x < 0.0, 0.0, grad)
    return lp, grad


class _NormalFields(NamedTuple):
    loc: object = 0.0
    scale: object = 1.0


class Normal(Prior, _NormalFields):
    """Normal prior N(loc, scale^2); ``loc`` and ``scale`` numbers or one per
    coordinate."""

    __slots__ = ()
    _positive_fields = ("scale",)

    def __new__(cls, loc=0.0, scale=1.0):
        self = super().__new__(cls, loc, scale)
        self = super().__new__(cls, *self._checked())
        check_normal_scale("scale", self.scale, cls.__name__)
        return self

    def log_density(self, x):
        d = x - self.loc
        k = x.shape[-1]
        if isinstance(self.scale, float):
            # the formula of GLM's fixed prior before priors were configurable, in the
            # same order, so that default fits keep their bits
            inv = 1.0 / (self.scale * self.scale)
            lp = -0.5 * inv * np.sum(d * d, axis=-1) - k * (
                math.log(self.scale) + _HALF_LOG_2PI
            )
            return lp, -inv * d
        inv = 1.0 / (self.scale * self.scale)
        lp = -0.5 * np.sum(inv * d * d, axis=-1) - (
            np.sum(np.log(self.scale)) + k * _HALF_LOG_2PI
        )
        return lp, -inv * d


def _student_t(x, df, loc, scale):
    """log t_df((x - loc) / scale) - log scale summed over the last axis, and its
    gradient."""
    k = x.shape[-1]
    sq = np.sqrt(df)
    a = (x - loc) / (scale * sq)  # r / sqrt(df)
    const = gammaln(0.5 * (df + 1.0)) - gammaln(0.5 * df) - 0.5 * np.log(df * math.pi)
    const = const - np.log(scale)
    const = k * const if np.ndim(const) == 0 else np.sum(const)
    lp = const - np.sum(0.5 * (df + 1.0) * _log1p_sq(a), axis=-1)
    # d/dx [-(df + 1)/2 log(1 + a^2)] = -(df + 1) a / (1 + a^2) / (scale sqrt(df))
    grad = -(df + 1.0) / (scale * sq) * _ratio(a)
    return lp, grad


class _StudentTFields(NamedTuple):
    df: object
    loc: object = 0.0
    scale: object = 1.0


class StudentT(Prior, _StudentTFields):
    """Student-t prior with ``df`` degrees of freedom, location ``loc`` and scale
    ``scale`` (numbers or one per coordinate)."""

    __slots__ = ()
    _positive_fields = ("df", "scale")

    def __new__(cls, df, loc=0.0, scale=1.0):
        self = super().__new__(cls, df, loc, scale)
        return super().__new__(cls, *self._checked())

    def log_density(self, x):
        return _student_t(x, self.df, self.loc, self.scale)


class _CauchyFields(NamedTuple):
    loc: object = 0.0
    scale: object = 1.0


def _cauchy(x, loc, scale):
    k = x.shape[-1]
    a = (x - loc) / scale
    const = -_LOG_PI - np.log(scale)
    const = k * const if np.ndim(const) == 0 else np.sum(const)
    lp = const - np.sum(_log1p_sq(a), axis=-1)
    return lp, -2.0 / scale * _ratio(a)


class Cauchy(Prior, _CauchyFields):
    """Cauchy prior (Student-t with one degree of freedom)."""

    __slots__ = ()
    _positive_fields = ("scale",)

    def __new__(cls, loc=0.0, scale=1.0):
        self = super().__new__(cls, loc, scale)
        return super().__new__(cls, *self._checked())

    def log_density(self, x):
        return _cauchy(x, self.loc, self.scale)


class _ScaleFields(NamedTuple):
    scale: object = 1.0


class HalfNormal(Prior, _ScaleFields):
    """Half-normal prior on x >= 0: twice N(0, scale^2) there."""

    __slots__ = ()
    support = "positive"
    _positive_fields = ("scale",)

    def __new__(cls, scale=1.0):
        self = super().__new__(cls, scale)
        self = super().__new__(cls, *self._checked())
        check_normal_scale("scale", self.scale, cls.__name__)
        return self

    def log_density(self, x):
        return self._add(np.zeros(x.shape[:-1]), x)

    def _add(self, lp, x):
        k = x.shape[-1]
        s = self.scale
        if isinstance(s, float):
            # the order of GLM's fixed half-normal on sigma before priors were
            # configurable: default fits keep their bits
            s2 = s * s
            lp = (
                lp
                - 0.5 * np.sum(x * x, axis=-1) / s2
                + k * math.log(2.0 / (math.sqrt(2.0 * math.pi) * s))
            )
            grad = -x / s2
        else:
            s2 = s * s
            lp = lp + (
                -0.5 * np.sum(x * x / s2, axis=-1)
                + np.sum(_LOG_2 - np.log(s) - _HALF_LOG_2PI)
            )
            grad = -x / s2
        return _positive_only(x, lp, grad)


class HalfCauchy(Prior, _ScaleFields):
    """Half-Cauchy prior on x >= 0: twice Cauchy(0, scale) there."""

    __slots__ = ()
    support = "positive"
    _positive_fields = ("scale",)

    def __new__(cls, scale=1.0):
        self = super().__new__(cls, scale)
        return super().__new__(cls, *self._checked())

    def log_density(self, x):
        lp, grad = _cauchy(x, 0.0, self.scale)
        return _positive_only(x, lp + x.shape[-1] * _LOG_2, grad)


class _HalfStudentTFields(NamedTuple):
    df: object
    scale: object = 1.0


class HalfStudentT(Prior, _HalfStudentTFields):
    """Half-Student-t prior on x >= 0: twice StudentT(df, 0, scale) there."""

    __slots__ = ()
    support = "positive"
    _positive_fields = ("df", "scale")

    def __new__(cls, df, scale=1.0):
        self = super().__new__(cls, df, scale)
        return super().__new__(cls, *self._checked())

    def log_density(self, x):
        lp, grad = _student_t(x, self.df, 0.0, self.scale)
        return _positive_only(x, lp + x.shape[-1] * _LOG_2, grad)


class _RateFields(NamedTuple):
    rate: object = 1.0


class Exponential(Prior, _RateFields):
    """Exponential prior on x >= 0 with rate ``rate`` (mean 1 / rate)."""

    __slots__ = ()
    support = "positive"
    _positive_fields = ("rate",)

    def __new__(cls, rate=1.0):
        self = super().__new__(cls, rate)
        return super().__new__(cls, *self._checked())

    def log_density(self, x):
        r = self.rate
        k = x.shape[-1]
        const = k * math.log(r) if isinstance(r, float) else np.sum(np.log(r))
        lp = const - np.sum(r * x, axis=-1)
        grad = np.broadcast_to(-r, x.shape).copy()
        return _positive_only(x, lp, grad)


class _NoFields(NamedTuple):
    pass


class Flat(Prior, _NoFields):
    """The improper flat prior (log density 0 everywhere on the parameter's support).

    The posterior can then be improper: a flat coefficient prior with separable
    logistic data, or with collinear features, has no normalizable posterior, and
    no variational fit of it means anything. :class:`fastvi.sgvi.GLM` checks the
    common cases and warns (:class:`ImproperPosteriorWarning`).
    """

    __slots__ = ()
    support = "any"

    def __new__(cls):
        return super().__new__(cls)

    def log_density(self, x):
        return np.zeros(x.shape[:-1]), np.zeros(x.shape)

    def _add(self, lp, x):
        return lp, np.zeros(x.shape)


class ImproperPosteriorWarning(UserWarning):
    """A flat prior leaves the posterior improper (not normalizable) on these data."""


#: the prior classes by name (the names persist registers)
PRIORS = {
    c.__name__: c
    for c in (
        Normal,
        StudentT,
        Cauchy,
        HalfNormal,
        HalfStudentT,
        HalfCauchy,
        Exponential,
        Flat,
    )
}


_REAL_PRIORS = "Normal, StudentT, Cauchy or Flat"
_POSITIVE_PRIORS = "HalfNormal, HalfStudentT, HalfCauchy, Exponential or Flat"


def resolve(prior, arg, param, n, positive, shorthand):
    """The prior of a model parameter, checked against where it is used.

    ``prior``: what the user gave as ``arg`` (None: the shorthand's prior);
    ``param``: the parameter's name; ``n``: its number of coordinates (None for a
    scalar); ``positive``: whether its support is x > 0; ``shorthand``: ``(name,
    value, default, prior)``, the older number-only argument and the prior it means.
    """
    short_name, value, default, short_prior = shorthand
    if prior is None:
        return short_prior
    if value != default:
        raise ValueError(
            f"Give {arg} or {short_name}, not both: {short_name}={value!r} is "
            f"shorthand for {arg}={short_prior!r}, and {arg}={prior!r} was given too."
        )
    if not isinstance(prior, Prior):
        raise ValueError(
            f"{arg} must be a prior from fastvi.sgvi.priors ("
            + ", ".join(PRIORS)
            + f"), got {prior!r}."
        )
    if positive and prior.support == "real":
        raise ValueError(
            f"{arg}={prior!r} is a prior on the whole real line, but {param} > 0: "
            f"use {_POSITIVE_PRIORS} (HalfNormal(s) is Stan's `{param} ~ normal(0, "
            f"s)` for a `real<lower=0> {param}`)."
        )
    if not positive and prior.support == "positive":
        raise ValueError(
            f"{arg}={prior!r} is a prior on x >= 0, but {param} takes any real "
            f"value: use {_REAL_PRIORS}."
        )
    size = prior.size
    if size is not None and n is None:
        raise ValueError(
            f"{arg}={prior!r} gives arrays of {size} values, but {param} is one "
            "number: give its fields as numbers."
        )
    if size is not None and size != n:
        raise ValueError(
            f"{arg}={prior!r} gives {size} values per field, but {param} has {n} "
            f"coordinates: give one value per coordinate, or a number for all."
        )
    return prior


def improper_reason(X, y, family, coef_prior, intercept_prior, sigma_prior):
    """Why a GLM with flat priors has an improper posterior on these data, or None.

    ``intercept_prior``/``sigma_prior`` are None where the model has no intercept /
    no sigma. With Z the columns of the design ``[X, 1]`` whose priors are flat, the
    posterior is improper (its density does not fall off along some ray ``t v``,
    ``v`` a direction in those coordinates, whatever the values of the others) when

    * Z has dependent columns (every family: the likelihood is constant along v);
    * logistic: the data are (quasi-)separable in Z: ``s_n z_n . v >= 0`` for every
      row, ``s_n = 2 y_n - 1``, not all 0 (Albert & Anderson 1984);
    * Poisson: ``z_n . v <= 0`` for every row, ``= 0`` where ``y_n > 0``, not all 0;
    * Gaussian with a flat prior on sigma: at most one row more than the flat
      coordinates (the density falls like ``sigma^-(N - |Z|)`` as sigma grows).

    The separation conditions are linear programs (scipy's HiGHS), solved only when
    some prior is flat. This checks these causes only; it proves nothing else.
    """
    N, D = X.shape
    flat = isinstance(coef_prior, Flat)
    names = ["coef"] if flat and D else []
    cols = [np.asarray(X, dtype=np.float64)] if flat and D else []
    if isinstance(intercept_prior, Flat):
        cols.append(np.ones((N, 1)))
        names.append("intercept")
    k = sum(c.shape[1] for c in cols)
    if isinstance(sigma_prior, Flat) and N - k <= 1:
        return (
            f"sigma has a flat prior and there are {N} rows for {k} coordinates "
            "with flat priors: the posterior of sigma falls off like "
            f"sigma^-{N - k}, which is not integrable; give sigma a proper prior."
        )
    if not k:
        return None
    Z = np.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]
    what = " and ".join(names) + (
        " have flat priors" if len(names) > 1 else " has a flat prior"
    )
    if family != "gaussian" and _mle_exists(Z, y, family):
        return None  # the fast answer; the exact checks below decide the rest
    # rank from the singular values of R (Z = QR): those of Z, at O(N k^2)
    sv = np.linalg.svd(np.linalg.qr(Z, mode="r"), compute_uv=False)
    if N < k or np.sum(sv > sv[0] * max(N, k) * np.finfo(np.float64).eps) < k:
        return (
            f"{what}, but its columns of the design are linearly dependent (or "
            "fewer rows than columns): the likelihood is constant along a "
            "direction of them."
        )
    if family == "gaussian":
        return None
    from scipy.optimize import linprog

    if family == "logistic":
        A = Z * (2.0 * y - 1.0)[:, None]  # rows s_n z_n
        res = linprog(
            -A.sum(axis=0),
            A_ub=-A,
            b_ub=np.zeros(N),
            bounds=[(-1.0, 1.0)] * k,
            method="highs",
        )
        how = "the data are separable (or quasi-separable) along them"
    else:  # poisson
        pos = y > 0
        A = Z[~pos]
        res = linprog(
            A.sum(axis=0),
            A_ub=A if A.shape[0] else None,
            b_ub=np.zeros(A.shape[0]) if A.shape[0] else None,
            A_eq=Z[pos] if np.any(pos) else None,
            b_eq=np.zeros(int(pos.sum())) if np.any(pos) else None,
            bounds=[(-1.0, 1.0)] * k,
            method="highs",
        )
        how = (
            "some direction of them lowers the rate of every zero count and "
            "leaves the rates of the positive counts unchanged"
        )
    if res.status != 0:
        return None
    if -res.fun > 1e-7 * max(1.0, float(np.abs(Z).sum(axis=0).max())):
        return (
            f"{what} and {how}: the likelihood does not fall off "
            "along that direction, so the posterior is improper."
        )
    return None


def _mle_exists(Z, y, family, max_iter=50):
    """Whether damped Newton finds the maximum-likelihood point of a logistic or
    Poisson regression on Z (no offset) cleanly: then Z has full rank and no
    direction along which the likelihood does not fall off (a finite maximizer of
    a concave function with a positive-definite Hessian). False means "not shown",
    not "improper"."""
    from scipy.special import expit

    def loglik(eta):
        if family == "logistic":
            return float(np.sum(y * eta - np.logaddexp(0.0, eta)))
        return float(np.sum(y * eta - np.exp(np.minimum(eta, 700.0))))

    v = np.zeros(Z.shape[1])
    eta = np.zeros(Z.shape[0])
    value = loglik(eta)
    with np.errstate(all="ignore"):
        for _ in range(max_iter):
            if family == "logistic":
                mu = expit(eta)
                w = mu * (1.0 - mu)
            else:
                mu = w = np.exp(np.minimum(eta, 700.0))
            g = Z.T @ (y - mu)
            Zw = Z * np.sqrt(w)[:, None]
            try:
                L = np.linalg.cholesky(Zw.T @ Zw)
            except np.linalg.LinAlgError:
                return False
            step = np.linalg.solve(L.T, np.linalg.solve(L, g))
            decrement = float(g @ step)
            if not np.isfinite(decrement):
                return False
            if decrement < 1e-9:
                # a finite maximizer, away from the saturation that separation drives
                # (separation drives the decrement below 1e-9 only where |eta| > 20)
                return bool(np.max(np.abs(eta), initial=0.0) < 20.0)
            t = 1.0
            while t > 1e-8:
                trial = Z @ (v + t * step)
                new = loglik(trial)
                if new >= value:
                    break
                t *= 0.5
            else:
                return False
            v, eta, value = v + t * step, trial, new
    return False
