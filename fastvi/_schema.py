"""What a fitted estimator's attributes may be, and the check of loaded values.

Every estimator that :mod:`fastvi.persist` can load declares its fitted attributes
in a method ``_fitted_schema(self, attrs)``: a dict from attribute name to a spec
below (:class:`Array`, :class:`Int`, :class:`Real`, ...), written in terms of the
estimator's (already validated) constructor parameters; ``attrs``, the decoded
attribute values, may choose between variants (binary or one-vs-rest). Shapes name
their dimensions: an ``int`` is exact, a ``str`` is a dimension shared by every array (and
integer attribute) that names it, and ``(name, offset)`` is that dimension plus
``offset``. The first value met binds a named dimension; every later one must agree.

:func:`check_attributes` holds a dict of decoded attribute values against a schema:
only declared names, every ``required`` one present when the estimator is fitted at
all, dtypes, shapes, finiteness and signs as declared. A loaded model whose arrays
agree with each other this way can be handed to the kernels, which index one array
by another's size and trust them to agree.
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
    "Posterior",
    "RandomStateSpec",
    "Real",
    "Record",
    "SchemaMismatch",
    "Seq",
    "check_attributes",
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


class Spec:
    """Base of the specs; ``required``: a fitted estimator always has it."""

    def __init__(self, required=False):
        self.required = required

    def check(self, value, dims):  # pragma: no cover - overridden
        raise NotImplementedError


class Array(Spec):
    """An ndarray of one of ``dtypes`` (native byte order) and ``shape``.

    ``finite``: no NaN or infinity; ``positive``: every entry > 0;
    ``positive_diagonal``: a (stack of) square matrices with a positive diagonal.
    """

    def __init__(
        self,
        shape,
        dtypes=_FLOATS,
        *,
        finite=True,
        positive=False,
        positive_diagonal=False,
        required=False,
    ):
        super().__init__(required)
        self.shape = tuple(shape)
        self.dtypes = tuple(np.dtype(d) for d in dtypes) if dtypes else None
        self.finite = finite
        self.positive = positive
        self.positive_diagonal = positive_diagonal

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
        if self.finite and not np.all(np.isfinite(value)):
            raise SchemaMismatch("holds NaN or infinite values")
        if self.positive and not np.all(value > 0):
            raise SchemaMismatch("holds values that are not positive")
        if self.positive_diagonal and not np.all(
            np.diagonal(value, axis1=-2, axis2=-1) > 0
        ):
            raise SchemaMismatch("has a diagonal entry that is not positive")


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
    """A real number (int, float or NumPy scalar); optionally finite / positive."""

    def __init__(self, *, finite=False, positive=False, required=False):
        super().__init__(required)
        self.finite = finite or positive
        self.positive = positive

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
            raise SchemaMismatch(f"is {number}, expected a finite number")
        if self.positive and not number > 0:
            raise SchemaMismatch(f"is {number}, expected a positive number")


class Bool(Spec):
    """True or False (Python or NumPy)."""

    def check(self, value, dims):
        if not isinstance(value, (bool, np.bool_)):
            raise SchemaMismatch(f"is a {type(value).__name__}, expected a boolean")


class Floats(Spec):
    """A list of real numbers (a bound history); ``nested``: a list of such lists."""

    def __init__(self, *, nested=False, required=False):
        super().__init__(required)
        self.nested = nested

    def check(self, value, dims):
        if not isinstance(value, list):
            raise SchemaMismatch(f"is a {type(value).__name__}, expected a list")
        for item in value:
            if self.nested:
                Floats().check(item, dims)
            else:
                Real().check(item, dims)


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


class Posterior(Spec):
    """A named tuple of class ``cls`` whose fields are finite numbers (n an int)."""

    def __init__(self, cls, required=False):
        super().__init__(required)
        self.cls = cls

    def check(self, value, dims):
        if type(value) is not self.cls:
            raise SchemaMismatch(f"expected a {self.cls.__name__}")
        for field in value._fields:
            item = getattr(value, field)
            spec = Int() if field.startswith("n_") else Real(finite=True)
            try:
                spec.check(item, dims)
            except SchemaMismatch as exc:
                raise SchemaMismatch(f"field {field} {exc}") from None


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
    for name, spec in schema.items():
        if name in attrs:
            try:
                spec.check(attrs[name], dims)
            except SchemaMismatch as exc:
                raise SchemaMismatch(f"attribute {name!r} {exc}") from None
