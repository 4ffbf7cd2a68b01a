"""What a fitted estimator's attributes may be, and the check of loaded values.

Every estimator that :mod:`fastvi.persist` can load declares its fitted attributes
in a method ``_fitted_schema(self, attrs)``: a dict from attribute name to a spec
below (:class:`Array`, :class:`Int`, :class:`Real`, ...), written in terms of the
estimator's (already validated) constructor parameters; ``attrs``, the decoded
attribute values, may choose between variants (binary or one-vs-rest). Shapes name
their dimensions: an ``int`` is exact, a ``str`` is a dimension shared by every array (and
integer attribute) that names it, and ``(name, offset)`` is that dimension plus
``offset``. The first value met binds a named dimension; every later one must agree.
A lower bound ``above`` (of :class:`Real` and :class:`Array`) is a number or such a
dimension entry: ``above=("D", -1)`` is "greater than D - 1", a Wishart's degrees of
freedom over D features.

:func:`check_attributes` holds a dict of decoded attribute values against a schema:
only declared names, every ``required`` one present when the estimator is fitted at
all, dtypes, shapes, finiteness, signs and bounds as declared, and the matrices
that are factored or used as covariances positive definite (semi-definite where a
fit can make them singular), Cholesky factors triangular with a positive diagonal.
A loaded model whose values agree with each other this way can be handed to the
kernels, which index one array by another's size, take logs, digammas and Cholesky
factors of its values and trust them to be what a fit makes.

The constructor parameters saved beside the attributes are checked by the
estimator's own ``_parameter_constraints`` (scikit-learn's ``_validate_params``);
:func:`int64_params` closes their integer intervals at the int64 range, so that an
integer the kernels cannot take is refused there, at fit and at load alike.
"""

from __future__ import annotations

from numbers import Integral
from numbers import Real as _RealNumber

import numpy as np

__all__ = [
    "Array",
    "Bool",
    "Choice",
    "Either",
    "Estimators",
    "Floats",
    "Int",
    "Names",
    "NoneOr",
    "RandomStateSpec",
    "Real",
    "Record",
    "SchemaMismatch",
    "Seq",
    "check_attributes",
    "int64_params",
]

_FLOATS = ("f4", "f8")


class SchemaMismatch(ValueError):
    """A value that is not what the schema declares (the message says what)."""


class _Dims:
    """Named dimensions, bound by the first value that names them."""

    def __init__(self):
        self.values = {}

    def resolve(self, entry, actual, what):
        if isinstance(entry, int):
            if actual != entry:
                raise SchemaMismatch(f"{what} is {actual}, expected {entry}")
            return
        name, offset = (entry, 0) if isinstance(entry, str) else entry
        if name in self.values:
            expected = self.values[name] + offset
            if actual != expected:
                raise SchemaMismatch(
                    f"{what} is {actual}, expected {expected} (its {name} must "
                    "agree with the other arrays)"
                )
            return
        if actual - offset < 0:
            raise SchemaMismatch(f"{what} is {actual}, too small")
        self.values[name] = actual - offset

    def bound(self, entry):
        """``(value, text)`` of a bound: a number, or a named dimension (plus an
        offset) that an earlier value bound; ``text`` says where the value is from."""
        if not _names_dimension(entry):
            return entry, f"{entry}"
        name, offset = (entry, 0) if isinstance(entry, str) else entry
        if name not in self.values:
            raise SchemaMismatch(f"cannot be checked: its {name} is not known")
        value = self.values[name] + offset
        if not offset:
            return value, f"{value} ({name})"
        sign = "-" if offset < 0 else "+"
        return value, (
            f"{value} ({name} {sign} {abs(offset)} = {self.values[name]} {sign} "
            f"{abs(offset)})"
        )


def _names_dimension(entry):
    return isinstance(entry, (str, tuple))


class Spec:
    """Base of the specs; ``required``: a fitted estimator always has it.

    ``late``: the check reads a named dimension (a bound ``above``), so
    :func:`check_attributes` makes it after the others, when every dimension is bound.
    """

    late = False

    def __init__(self, required=False):
        self.required = required

    def check(self, value, dims):  # pragma: no cover - overridden
        raise NotImplementedError


# how far a matrix checked for definiteness may be from symmetric: |A_ij - A_ji| at
# most this times sqrt(A_ii A_jj) (fits make them symmetric to rounding; a
# Cholesky factorization reads one triangle only)
SYMMETRY_RTOL = 1e-6
# or within np.allclose's default tolerances, scikit-learn's test of a symmetric
# covariance_prior (a fit from such a prior must load)
SKLEARN_RTOL, SKLEARN_ATOL = 1e-5, 1e-8
# a positive semi-definite matrix: no eigenvalue below -PSD_RTOL times the largest
# (rounding of a singular one, such as the covariance of data with a constant column)
PSD_RTOL = 1e-8


class Array(Spec):
    """An ndarray of one of ``dtypes`` (native byte order) and ``shape``.

    Values (of float arrays): ``finite``: no NaN or infinity (``minus_inf``: -inf
    allowed too, a bound before the first round); ``positive``: every entry > 0;
    ``nonnegative``: every entry >= 0; ``above``: every entry greater than a number
    or a named dimension (plus an offset; see the module doc).

    Matrices (the last two axes, for a stack of them): ``positive_diagonal``: square
    with a positive diagonal; ``triangular``: ``'upper'`` or ``'lower'``, zero on the
    other side of the diagonal (with ``positive_diagonal``: a Cholesky factor);
    ``positive_definite``: symmetric (to ``SYMMETRY_RTOL``) and its Cholesky
    factorization succeeds (a covariance that is factored or sampled from);
    ``positive_semidefinite``: symmetric and no eigenvalue below ``-PSD_RTOL`` times
    the largest (a prior that may be singular).
    """

    def __init__(
        self,
        shape,
        dtypes=_FLOATS,
        *,
        finite=True,
        minus_inf=False,
        positive=False,
        nonnegative=False,
        above=None,
        positive_diagonal=False,
        triangular=None,
        positive_definite=False,
        positive_semidefinite=False,
        required=False,
    ):
        super().__init__(required)
        if triangular not in (None, "upper", "lower"):
            raise ValueError(f"triangular={triangular!r}")
        self.shape = tuple(shape)
        self.dtypes = tuple(np.dtype(d) for d in dtypes) if dtypes else None
        self.finite = finite
        self.minus_inf = minus_inf
        self.positive = positive
        self.nonnegative = nonnegative
        self.above = above
        self.late = _names_dimension(above)
        self.positive_diagonal = positive_diagonal
        self.triangular = triangular
        self.positive_definite = positive_definite
        self.positive_semidefinite = positive_semidefinite

    def check(self, value, dims):
        if not isinstance(value, np.ndarray):
            raise SchemaMismatch(f"is a {type(value).__name__}, expected an array")
        if self.dtypes is not None and value.dtype not in self.dtypes:
            raise SchemaMismatch(
                f"has dtype {value.dtype.str}, expected one of "
                f"{[d.str for d in self.dtypes]}"
            )
        if value.ndim != len(self.shape):
            raise SchemaMismatch(
                f"has shape {value.shape}, expected {len(self.shape)} dimensions"
            )
        for axis, (entry, actual) in enumerate(zip(self.shape, value.shape)):
            dims.resolve(entry, actual, f"has shape {value.shape}: axis {axis}")
        if value.dtype.kind not in "fc":
            return
        if self.finite:
            bad = ~np.isfinite(value)
            if self.minus_inf:
                bad &= value != -np.inf
            if np.any(bad):
                allowed = " (only -inf is allowed)" if self.minus_inf else ""
                raise SchemaMismatch(f"holds NaN or infinite values{allowed}")
        if self.positive and not np.all(value > 0):
            raise SchemaMismatch("holds values that are not positive")
        if self.nonnegative and not np.all(value >= 0):
            raise SchemaMismatch("holds negative values")
        if self.above is not None:
            bound, text = dims.bound(self.above)
            if not np.all(value > bound):
                raise SchemaMismatch(f"holds values not above {text}")
        if self.positive_diagonal and not np.all(
            np.diagonal(value, axis1=-2, axis2=-1) > 0
        ):
            raise SchemaMismatch("has a diagonal entry that is not positive")
        if self.triangular is not None:
            _check_triangular(value, self.triangular)
        if self.positive_definite:
            _check_positive_definite(value)
        if self.positive_semidefinite:
            _check_positive_semidefinite(value)


def _matrices(value):
    """``value`` as a float64 stack (n, D, D) of square matrices (or a mismatch)."""
    if value.ndim < 2 or value.shape[-1] != value.shape[-2]:
        raise SchemaMismatch(f"has shape {value.shape}, expected square matrices")
    return value.astype(np.float64, copy=False).reshape((-1, *value.shape[-2:]))


def _which(stack, index):
    return f"matrix {index} " if stack.shape[0] > 1 else ""


def _check_triangular(value, side):
    """Zero on the other side of the diagonal: a triangular factor."""
    stack = _matrices(value)
    mask = np.tri(stack.shape[-1], k=-1, dtype=bool)  # below the diagonal
    off = mask if side == "upper" else mask.T
    nonzero = np.any(stack[:, off] != 0, axis=-1)
    if np.any(nonzero):
        index = int(np.argmax(nonzero))
        raise SchemaMismatch(f"{_which(stack, index)}is not {side} triangular")


def _check_symmetric(stack):
    diag = np.abs(np.diagonal(stack, axis1=-2, axis2=-1))
    scale = np.sqrt(diag[:, :, np.newaxis] * diag[:, np.newaxis, :])
    other = np.swapaxes(stack, -1, -2)
    gap = np.abs(stack - other)
    # what scikit-learn accepts as a symmetric covariance_prior (np.allclose to
    # A.T) is symmetric here too, and the fitted covariances inherit it
    sklearn = gap <= SKLEARN_ATOL + SKLEARN_RTOL * np.abs(other)
    bad = np.any((gap > SYMMETRY_RTOL * scale) & ~sklearn, axis=(-2, -1))
    if np.any(bad):
        raise SchemaMismatch(f"{_which(stack, int(np.argmax(bad)))}is not symmetric")


def _check_positive_definite(value):
    """Symmetric, and a Cholesky factorization of every matrix succeeds."""
    stack = _matrices(value)
    _check_symmetric(stack)
    for index, matrix in enumerate(stack):
        try:
            np.linalg.cholesky(matrix)
        except np.linalg.LinAlgError:
            raise SchemaMismatch(
                f"{_which(stack, index)}is not positive definite"
            ) from None


def _check_positive_semidefinite(value):
    """Symmetric, with no eigenvalue below -PSD_RTOL times the largest."""
    stack = _matrices(value)
    _check_symmetric(stack)
    for index, matrix in enumerate(stack):
        eig = np.linalg.eigvalsh(matrix)
        if eig.size and eig[0] < -PSD_RTOL * max(abs(eig[0]), abs(eig[-1])):
            raise SchemaMismatch(
                f"{_which(stack, index)}is not positive semi-definite (eigenvalue "
                f"{eig[0]:.3g})"
            )


class Names(Spec):
    """Feature names: an object array of ``str`` of ``shape``."""

    def __init__(self, shape, required=False):
        super().__init__(required)
        self.shape = tuple(shape)

    def check(self, value, dims):
        if not isinstance(value, np.ndarray) or value.dtype != object:
            raise SchemaMismatch("expected an object array of strings")
        if value.ndim != len(self.shape):
            raise SchemaMismatch(f"has shape {value.shape}")
        for entry, actual in zip(self.shape, value.shape):
            dims.resolve(entry, actual, f"has shape {value.shape}:")
        if not all(isinstance(v, str) for v in value.ravel()):
            raise SchemaMismatch("expected strings")


def _is_int(value):
    return isinstance(value, (Integral, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


_INT64_MAX = int(np.iinfo(np.int64).max)


class Int(Spec):
    """An integer in [``low``, ``high``] (default 2**63 - 1); ``dim`` names the
    dimension it is."""

    def __init__(self, low=0, *, high=None, dim=None, required=False):
        super().__init__(required)
        self.low = low
        self.high = _INT64_MAX if high is None else min(int(high), _INT64_MAX)
        self.dim = dim

    def check(self, value, dims):
        if not _is_int(value):
            raise SchemaMismatch(f"is a {type(value).__name__}, expected an integer")
        if not self.low <= value <= self.high:
            raise SchemaMismatch(
                f"is out of range (expected an integer from {self.low} to {self.high})"
            )
        if self.dim is not None:
            dims.resolve(self.dim, int(value), f"is {value}:")


class Real(Spec):
    """A real number (int, float or NumPy scalar).

    ``finite``: not NaN nor infinite (``minus_inf``: -inf allowed too, a bound
    before the first round); ``positive``: > 0; ``above``: greater than a number or
    a named dimension (plus an offset; see the module doc). ``positive`` and
    ``above`` imply ``finite``.
    """

    def __init__(
        self,
        *,
        finite=False,
        minus_inf=False,
        positive=False,
        above=None,
        required=False,
    ):
        super().__init__(required)
        self.finite = finite or positive or above is not None
        self.minus_inf = minus_inf
        self.positive = positive
        self.above = above
        self.late = _names_dimension(above)

    def check(self, value, dims):
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (_RealNumber, np.integer, np.floating)
        ):
            raise SchemaMismatch(f"is a {type(value).__name__}, expected a number")
        try:
            number = float(value)
        except OverflowError:
            raise SchemaMismatch("is too large") from None
        if self.finite and not np.isfinite(number):
            if not (self.minus_inf and number == -np.inf):
                allowed = " (or -inf)" if self.minus_inf else ""
                raise SchemaMismatch(f"is {number}, expected a finite number{allowed}")
        if self.positive and not number > 0:
            raise SchemaMismatch(f"is {number}, expected a positive number")
        if self.above is not None:
            bound, text = dims.bound(self.above)
            if not number > bound:
                raise SchemaMismatch(f"is {number}, expected a number above {text}")


class Bool(Spec):
    """True or False (Python or NumPy)."""

    def check(self, value, dims):
        if not isinstance(value, (bool, np.bool_)):
            raise SchemaMismatch(f"is a {type(value).__name__}, expected a boolean")


class Floats(Spec):
    """A list of real numbers (a bound history); ``nested``: a list of such lists;
    ``finite``: every number finite."""

    def __init__(self, *, nested=False, finite=False, required=False):
        super().__init__(required)
        self.nested = nested
        self.finite = finite

    def check(self, value, dims):
        if not isinstance(value, list):
            raise SchemaMismatch(f"is a {type(value).__name__}, expected a list")
        for i, item in enumerate(value):
            spec = (
                Floats(finite=self.finite) if self.nested else Real(finite=self.finite)
            )
            try:
                spec.check(item, dims)
            except SchemaMismatch as exc:
                raise SchemaMismatch(f"item {i} {exc}") from None


class NoneOr(Spec):
    """None or a value of ``spec``."""

    def __init__(self, spec, required=False):
        super().__init__(required)
        self.spec = spec

    def check(self, value, dims):
        if value is not None:
            self.spec.check(value, dims)


class Either(Spec):
    """A value of one of ``specs`` (tried in order)."""

    def __init__(self, *specs, required=False):
        super().__init__(required)
        self.specs = specs

    def check(self, value, dims):
        problems = []
        for spec in self.specs:
            trial = _Dims()
            trial.values = dict(dims.values)
            try:
                spec.check(value, trial)
            except SchemaMismatch as exc:
                problems.append(str(exc))
                continue
            dims.values = trial.values
            return
        raise SchemaMismatch(" / ".join(problems))


class Seq(Spec):
    """A tuple (or list) of exactly ``len(items)`` values, one spec each."""

    def __init__(self, items, *, kind=tuple, required=False):
        super().__init__(required)
        self.items = tuple(items)
        self.kind = kind

    def check(self, value, dims):
        if type(value) is not self.kind or len(value) != len(self.items):
            raise SchemaMismatch(
                f"expected a {self.kind.__name__} of {len(self.items)} values"
            )
        for i, (spec, item) in enumerate(zip(self.items, value)):
            try:
                spec.check(item, dims)
            except SchemaMismatch as exc:
                raise SchemaMismatch(f"item {i} {exc}") from None


class Choice(Spec):
    """One of the strings ``values``."""

    def __init__(self, values, required=False):
        super().__init__(required)
        self.values = tuple(values)

    def check(self, value, dims):
        if not isinstance(value, str) or value not in self.values:
            raise SchemaMismatch(f"is {value!r}, expected one of {list(self.values)}")


class Record(Spec):
    """A named tuple of class ``cls`` whose fields hold values of ``fields``
    (a dict from field name to spec; every field of the class must be declared)."""

    def __init__(self, cls, fields, required=False):
        super().__init__(required)
        self.cls = cls
        self.fields = dict(fields)
        if set(self.fields) != set(cls._fields):
            raise TypeError(f"declare every field of {cls.__name__}")

    def check(self, value, dims):
        if type(value) is not self.cls:
            raise SchemaMismatch(
                f"is a {type(value).__name__}, expected a {self.cls.__name__}"
            )
        for field, spec in self.fields.items():
            try:
                spec.check(getattr(value, field), dims)
            except SchemaMismatch as exc:
                raise SchemaMismatch(f"field {field} {exc}") from None


class RandomStateSpec(Spec):
    """A ``numpy.random.RandomState``."""

    def check(self, value, dims):
        if not isinstance(value, np.random.RandomState):
            raise SchemaMismatch(f"is a {type(value).__name__}, expected a RandomState")


class Estimators(Spec):
    """A list of ``count`` fitted estimators of class ``cls`` (each already checked
    against its own schema) whose ``n_features_in_`` is the dimension ``dim``."""

    def __init__(self, cls, count, dim, required=False):
        super().__init__(required)
        self.cls = cls
        self.count = count
        self.dim = dim

    def check(self, value, dims):
        if not isinstance(value, list):
            raise SchemaMismatch("expected a list of estimators")
        dims.resolve(self.count, len(value), "has length")
        for est in value:
            if type(est) is not self.cls:
                raise SchemaMismatch(f"expected {self.cls.__name__} estimators")
            n = getattr(est, "n_features_in_", None)
            if n is None:
                raise SchemaMismatch("holds an unfitted estimator")
            dims.resolve(self.dim, n, "holds an estimator whose n_features_in_")


def check_attributes(schema, attrs):
    """Check decoded attribute values ``attrs`` against ``schema``.

    Raises
    ------
    SchemaMismatch
        naming the first attribute that is undeclared, missing or wrong.
    """
    unknown = sorted(set(attrs) - set(schema))
    if unknown:
        raise SchemaMismatch(f"undeclared attributes {unknown}")
    if attrs:
        missing = sorted(k for k, s in schema.items() if s.required and k not in attrs)
        if missing:
            raise SchemaMismatch(f"missing attributes {missing}")
    dims = _Dims()
    # the specs bounded by a named dimension last, when every dimension is bound
    for name, spec in sorted(schema.items(), key=lambda item: item[1].late):
        if name in attrs:
            try:
                spec.check(attrs[name], dims)
            except SchemaMismatch as exc:
                raise SchemaMismatch(f"attribute {name!r} {exc}") from None


_INT64_MIN = int(np.iinfo(np.int64).min)
_CLOSED = {
    (True, True): "both",
    (True, False): "left",
    (False, True): "right",
    (False, False): "neither",
}


def int64_params(constraints):
    """scikit-learn parameter ``constraints`` with every integer one held to int64.

    An ``Interval(Integral, ...)`` open at an end (``None``) is closed there at the
    int64 range, one beyond it is narrowed to it, and a bare ``Integral`` becomes the
    whole range: the kernels take integers as int64 (a C long), so a larger one would
    be an ``OverflowError`` deep inside a fit or a transform. ``_validate_params``
    refuses it instead, naming the parameter, at fit and when a model file is
    loaded. Other constraints are kept as they are.

    Parameters
    ----------
    constraints : dict
        An estimator's ``_parameter_constraints``.

    Returns
    -------
    dict
        A new dict of new lists.
    """
    from sklearn.utils._param_validation import Interval

    def bounded(option):
        if option is Integral:
            return Interval(Integral, _INT64_MIN, _INT64_MAX, closed="both")
        if not (isinstance(option, Interval) and option.type is Integral):
            return option
        left_closed = option.left is None or option.closed in ("left", "both")
        right_closed = option.right is None or option.closed in ("right", "both")
        left = _INT64_MIN if option.left is None else max(option.left, _INT64_MIN)
        right = _INT64_MAX if option.right is None else min(option.right, _INT64_MAX)
        return Interval(
            Integral, left, right, closed=_CLOSED[left_closed, right_closed]
        )

    return {
        name: [bounded(o) for o in options] for name, options in constraints.items()
    }
