"""Saved models: ``save(estimator, path)`` and ``load(path)``, never pickle.

File format (``format_version`` 1)
----------------------------------
A model file is one uncompressed NumPy ``.npz`` archive (a zip file, every member
CRC-checked on read) holding

* ``__fastvi__``: a ``uint8`` array with the UTF-8 bytes of a JSON document::

      {"format": "fastvi-model", "format_version": 1, "fastvi_version": "0.1.0",
       "class": "BayesianGaussianMixture", "kind": "model",
       "params": {...}, "attributes": {...},
       "arrays": {"attr.means_": {"dtype": "<f8", "shape": [3, 2]}, ...},
       "extra": {...}}

  ``params`` are the constructor parameters (``get_params(deep=False)``) and
  ``attributes`` every fitted attribute of the estimator, both encoded as below;
  ``arrays`` lists the name, dtype and shape of every other member of the archive;
  ``extra`` is free-form JSON (checkpoints keep their fit position there).
* one member per array value, named by its place (``attr.means_``,
  ``attr.weight_concentration_.0``, ``param.mean_prior``), with a numeric, boolean or
  fixed-width string dtype. Object arrays are never written, and :func:`load` opens
  the archive with ``allow_pickle=False``, so a file cannot run code when loaded.

Encoding of a value: JSON ``null``, booleans, integers, strings and finite floats stand
for themselves (Python's float repr round-trips exactly); anything else is an object
with a ``"type"`` tag: ``"float"`` (non-finite), ``"array"`` (``{"array": name}``),
``"scalar"`` (a NumPy scalar, stored as a 0-d array), ``"list"``, ``"tuple"``,
``"dict"`` (string keys), ``"str_array"`` (an object array of strings, such as
``feature_names_in_``), ``"random_state"`` (a ``numpy.random.RandomState``: its
Mersenne Twister key array and position), ``"posterior"`` (a fastvi named tuple: a
posterior, an SGVI state or run state, or a prior of :mod:`fastvi.sgvi.priors`) and
``"estimator"`` (a nested fastvi estimator, for example the per-class models of
``VBLogisticRegression``). Only the fastvi classes of the registry
(:mod:`fastvi._registry`) can be loaded: the class name selects one of them, it is
never imported from the file.

Reads are checked before anything computes: only a regular file is opened; every
member must be an uncompressed, unencrypted ``.npy`` no larger than the file, whose
header agrees with the metadata's dtype and shape (so a file costs at most its own
size to read); the JSON is at most 1 MB and 64 levels deep. The rebuilt estimator's
parameters pass its own validation (integers within int64), and its attributes must
be those its class declares in ``_fitted_schema`` (:mod:`fastvi._schema`): names,
every attribute a fit always sets, dtypes, shapes agreeing with the parameters and
each other, finite values, and the values a fit can make (positive Dirichlet and
Gamma parameters, Wishart degrees of freedom above D - 1, positive definite
covariances, triangular Cholesky factors, ...), so that no kernel is handed a
value it cannot take. Any problem is a :class:`ModelFileError` naming the file and
the attribute or parameter.

Writes are atomic: the archive goes to a temporary file in the target's directory,
is flushed and ``fsync``-ed, and replaces the target with ``os.replace`` (then the
directory is synced), so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import math
import os
import re
import secrets
import stat
import struct
import tokenize
import zipfile
import zlib
from numbers import Integral, Real

import numpy as np

from ._registry import ESTIMATORS
from ._schema import SchemaMismatch, check_attributes

__all__ = [
    "FORMAT_VERSION",
    "ModelFileError",
    "SaveMixin",
    "atomic_write",
    "is_model_file",
    "load",
    "read_metadata",
    "save",
]

FORMAT_VERSION = 1
_META_KEY = "__fastvi__"
_FORMAT_NAME = "fastvi-model"

# The classes a file may name, and where they live (the registry of fastvi's
# estimators). Nothing else can be loaded.
_CLASSES = {entry.name: entry.module for entry in ESTIMATORS}
_TUPLES = {
    "NormalGammaPosterior": "fastvi.conjugate",
    "SGVIState": "fastvi.sgvi.engine",
    "SGVIRun": "fastvi.sgvi.engine",  # a checkpoint's (fastvi.batch.jobs.fit_sgvi)
    "Frame": "fastvi.sgvi.engine",
    # priors, the values of the SGVI estimators' coef_prior / intercept_prior
    **{
        name: "fastvi.sgvi.priors"
        for name in (
            "Normal",
            "StudentT",
            "Cauchy",
            "HalfNormal",
            "HalfStudentT",
            "HalfCauchy",
            "Exponential",
            "Flat",
        )
    },
}


class ModelFileError(ValueError):
    """A model file that cannot be read: the message names the file and the problem."""


def _fastvi_version():
    import fastvi

    return fastvi.__version__


def _class_of(name, registry):
    return getattr(importlib.import_module(registry[name]), name)


# ----------------------------------------------------------------------- encoding
class _Encoder:
    def __init__(self):
        self.arrays = {}

    def _array(self, name, value):
        if value.dtype.hasobject:
            raise TypeError(f"{name}: object arrays cannot be saved")
        if value.dtype.kind not in "biufcSU":
            raise TypeError(f"{name}: arrays of dtype {value.dtype} cannot be saved")
        self.arrays[name] = value
        return {"type": "array", "array": name}

    def encode(self, value, name):
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.ndarray):
            if value.dtype == object and all(isinstance(v, str) for v in value.flat):
                self._array(name, value.astype(str))
                return {"type": "str_array", "array": name}
            return self._array(name, np.asarray(value))  # refuses other object arrays
        if isinstance(value, np.generic):
            self._array(name, np.asarray(value))
            return {"type": "scalar", "array": name}
        if isinstance(value, Integral):
            return int(value)
        if isinstance(value, Real):
            value = float(value)
            if math.isfinite(value):
                return value
            return {"type": "float", "repr": repr(value)}
        if isinstance(value, np.random.RandomState):
            kind, keys, pos, has_gauss, cached = value.get_state(legacy=True)
            return {
                "type": "random_state",
                "bit_generator": kind,
                "keys": self._array(name + ".keys", keys)["array"],
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            }
        cls_name = type(value).__name__
        if isinstance(value, tuple) and cls_name in _TUPLES:
            if type(value) is not _class_of(cls_name, _TUPLES):
                raise TypeError(f"{name}: unsupported named tuple {type(value)!r}")
            return {
                "type": "posterior",
                "class": cls_name,
                "fields": {
                    f: self.encode(getattr(value, f), f"{name}.{f}")
                    for f in value._fields
                },
            }
        if isinstance(value, (list, tuple)):
            return {
                "type": "list" if isinstance(value, list) else "tuple",
                "items": [self.encode(v, f"{name}.{i}") for i, v in enumerate(value)],
            }
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise TypeError(f"{name}: only dicts with string keys can be saved")
            return {
                "type": "dict",
                "items": {k: self.encode(v, f"{name}.{k}") for k, v in value.items()},
            }
        if cls_name in _CLASSES and type(value) is _class_of(cls_name, _CLASSES):
            return {"type": "estimator", **self.estimator(value, name)}
        raise TypeError(
            f"{name}: values of type {type(value).__name__} cannot be saved"
        )

    def estimator(self, est, prefix):
        params = {
            k: self.encode(v, f"{prefix}param.{k}")
            for k, v in est.get_params(deep=False).items()
        }
        attrs = {
            k: self.encode(v, f"{prefix}attr.{k}")
            for k, v in vars(est).items()
            if k not in params
        }
        return {"class": type(est).__name__, "params": params, "attributes": attrs}


class _Decoder:
    def __init__(self, arrays, where):
        self.arrays = arrays
        self.where = where
        self.used = set()

    def fail(self, problem):
        raise ModelFileError(f"{self.where}: {problem}")

    def array(self, name):
        if not isinstance(name, str) or name not in self.arrays:
            self.fail(f"the metadata refers to a missing array {name!r}")
        self.used.add(name)
        return self.arrays[name]

    def decode(self, spec):
        if spec is None or isinstance(spec, (bool, str, int, float)):
            return spec
        if isinstance(spec, list) or not isinstance(spec, dict):
            self.fail("malformed metadata (unexpected JSON value)")
        kind = spec.get("type")
        if kind == "array":
            return self.array(spec.get("array"))
        if kind == "scalar":
            value = self.array(spec.get("array"))
            if value.ndim != 0:
                self.fail("a scalar is stored as a non-scalar array")
            return value[()]
        if kind == "str_array":
            value = self.array(spec.get("array"))
            if value.dtype.kind != "U":
                self.fail("a string array is stored with a non-string dtype")
            return value.astype(object)
        if kind == "float":
            text = spec.get("repr")
            if text not in ("nan", "inf", "-inf"):
                self.fail(f"bad float {text!r}")
            return float(text)
        if kind in ("list", "tuple", "dict"):
            items, holder = spec.get("items"), dict if kind == "dict" else list
            if not isinstance(items, holder):
                self.fail(f"malformed metadata ({holder.__name__} without items)")
            if kind == "dict":
                return {k: self.decode(v) for k, v in items.items()}
            values = [self.decode(v) for v in items]
            return values if kind == "list" else tuple(values)
        if kind == "random_state":
            keys = self.array(spec.get("keys"))
            if keys.shape != (624,) or keys.dtype != np.uint32:
                self.fail("bad random state (its key is not 624 uint32 values)")
            state = np.random.RandomState()
            try:
                bits, pos = str(spec["bit_generator"]), int(spec["pos"])
                gauss = int(spec["has_gauss"]), float(spec["cached_gaussian"])
                state.set_state((bits, keys, pos, *gauss))
            except (KeyError, TypeError, ValueError, OverflowError, IndexError) as exc:
                self.fail(f"bad random state ({exc})")
            return state
        if kind == "posterior":
            name = spec.get("class")
            if name not in _TUPLES:
                self.fail(f"unknown named tuple {name!r}")
            fields = spec.get("fields")
            if not isinstance(fields, dict):
                self.fail("malformed metadata (named tuple without fields)")
            cls = _class_of(name, _TUPLES)
            try:
                return cls(**{k: self.decode(v) for k, v in fields.items()})
            except (TypeError, ValueError) as exc:  # a prior checks its values
                self.fail(f"bad {name} ({exc})")
        if kind == "estimator":
            return self.estimator(spec)
        self.fail(f"unknown value type {kind!r} in the metadata")

    def estimator(self, spec, expected=None):
        name = spec.get("class")
        if not isinstance(name, str) or name not in _CLASSES:
            self.fail(f"unknown or unsupported class {name!r}")
        if expected is not None and name != expected:
            self.fail(f"holds a {name}, not a {expected}")
        cls = _class_of(name, _CLASSES)
        params, attrs = spec.get("params"), spec.get("attributes")
        if not isinstance(params, dict) or not isinstance(attrs, dict):
            self.fail("malformed metadata (no params/attributes)")
        valid = cls().get_params(deep=False)
        unknown = sorted(set(params) - set(valid))
        if unknown:
            self.fail(f"parameters {unknown} are not parameters of {name}")
        for key in attrs:
            # never an instance's internals, a method or property of the class
            # (that would shadow it) or a parameter
            if key.startswith("__") or key in valid or hasattr(cls, key):
                self.fail(f"bad attribute name {key!r} for a {name}")
        params = {k: self.decode(v) for k, v in params.items()}
        try:
            est = cls(**params)
            est._validate_params()
        except (TypeError, ValueError) as exc:
            self.fail(f"bad parameters for a {name} ({exc})")
        values = {key: self.decode(value) for key, value in attrs.items()}
        try:
            check_attributes(est._fitted_schema(values), values)
        except SchemaMismatch as exc:
            self.fail(f"{name}: {exc}")
        for key, value in values.items():
            setattr(est, key, value)
        after = getattr(est, "_after_load", None)
        if after is not None:  # derived attributes a checkpoint does not hold
            after()
        return est


# ------------------------------------------------------------------ atomic write
@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside ``path``; on success it replaces ``path``.

    The file is flushed and fsync-ed before ``os.replace``; on any error (or
    ``KeyboardInterrupt``) the temporary file is removed and ``path`` is untouched.
    The new file gets the permissions an ordinary ``open(path, "w")`` would give it:
    those of the file it replaces, else ``0o666`` less the process's umask. An
    ``OSError`` while creating, writing or replacing the file (a full disk, say) is
    raised again, of the same class, with a message that names ``path`` (an error
    of the body that names another file, such as an input, is left as it is).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        existing = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        existing = None
    try:
        fd, tmp = _create_beside(path, directory)
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        try:
            if existing is not None and hasattr(os, "fchmod"):
                os.fchmod(fd, existing)
            with os.fdopen(fd, mode) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            if exc.filename is not None and exc.filename != tmp:
                raise  # about another file (an input read by the body): it says so
            raise _naming(exc, path) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _create_beside(path, directory):
    """``(fd, name)`` of a new, exclusively created file in ``directory``.

    Created with mode ``0o666`` so that the kernel applies the umask (as for any
    new file), where ``tempfile.mkstemp`` would give ``0o600``.
    """
    prefix = "." + os.path.basename(path) + "."
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = os.path.join(directory, prefix + secrets.token_hex(6) + ".tmp")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", directory)


def _naming(exc, path):
    """``exc`` (an ``OSError``) again, its message naming the file ``path``."""
    reason = exc.strerror or str(exc)
    if exc.errno is None:
        return OSError(f"writing {path}: {reason}")
    return OSError(exc.errno, f"writing {path}: {reason}")


# ----------------------------------------------------------------------- public
def save(estimator, path, *, extra=None, kind="model"):
    """Write a fitted (or unfitted) fastvi estimator to ``path`` atomically.

    Parameters
    ----------
    estimator : estimator
        One of ``BayesianGaussianMixture``, ``LatentDirichletAllocation``,
        ``UnivariateGaussian``, ``VBLinearRegression``, ``VBLogisticRegression``,
        ``BayesianLogisticRegression``, ``BayesianPoissonRegression``.
    path : str or path-like
        Written exactly as given (no suffix is added); ``.npz`` is conventional.
    extra : dict, optional
        JSON-serializable metadata stored beside the model (e.g. a checkpoint's
        position in the fit).
    kind : str, default='model'
        Recorded in the metadata ('model' or 'checkpoint').

    Notes
    -----
    The format is described in the module documentation of :mod:`fastvi.persist`.
    """
    name = type(estimator).__name__
    if name not in _CLASSES or type(estimator) is not _class_of(name, _CLASSES):
        raise TypeError(f"cannot save a {type(estimator).__name__}: not a fastvi model")
    encoder = _Encoder()
    spec = encoder.estimator(estimator, "")
    meta = {
        "format": _FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "fastvi_version": _fastvi_version(),
        "kind": kind,
        **spec,
        "arrays": {
            k: {"dtype": v.dtype.str, "shape": list(v.shape)}
            for k, v in encoder.arrays.items()
        },
        "extra": extra or {},
    }
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    members = {_META_KEY: blob, **encoder.arrays}
    with atomic_write(path) as fh:
        np.savez(fh, **members)


# ----------------------------------------------------------------- bounded reading
# Reading refuses, before it reads, anything a valid file cannot be: a member larger
# than the file, a compressed or encrypted member, a .npy header that disagrees with
# the metadata. So a hostile file costs at most its own size in memory and time.
_MAX_META_BYTES = 1 << 20  # the JSON header member
_MAX_JSON_DEPTH = 64
_MAX_MEMBERS = 100_000
_MAX_NDIM = 8
_MAX_ARRAY_BYTES = 1 << 40  # a global cap on one array, whatever the file size
_ARRAY_KINDS = "biufcSU"
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKETS = re.compile(r"[\[\]{}]")


class _Refused(Exception):
    """A problem found while reading; ``_open`` adds the file's name."""


@contextlib.contextmanager
def _regular_file(where):
    """The open file, refused unless it is a regular file (no FIFO, device, ...).

    ``O_NONBLOCK`` keeps the open of a FIFO swapped in after the check from hanging;
    the descriptor is checked again with ``fstat``.
    """
    try:
        info = os.stat(where)
    except FileNotFoundError:
        raise ModelFileError(f"{where}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{where}: cannot be read ({exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelFileError(f"{where}: is a directory, not a model file")
    refusal = (
        f"{where}: not a regular file (a device, FIFO or socket), so not a model file"
    )
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(refusal)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(where, flags)
    except OSError as exc:
        raise ModelFileError(f"{where}: cannot be read ({exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ModelFileError(refusal)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh, info.st_size


def _check_json_depth(text):
    """Refuse nesting deeper than _MAX_JSON_DEPTH before json.loads recurses."""
    depth = 0
    for bracket in _JSON_BRACKETS.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > _MAX_JSON_DEPTH:
            raise _Refused(
                f"corrupted metadata (nested deeper than {_MAX_JSON_DEPTH} levels)"
            )


def _listed_dtype(text, key):
    """The dtype a metadata entry names, only from the plain kinds save writes."""
    if not isinstance(text, str) or not re.fullmatch(r"[<>|=]?[biufcSU]\d{1,6}", text):
        raise _Refused(f"corrupted (array {key!r} has an unsupported dtype {text!r})")
    try:
        return np.dtype(text)
    except TypeError:
        raise _Refused(f"corrupted (array {key!r} has a bad dtype {text!r})") from None


def _shape_bytes(shape, dtype):
    count = 1
    for n in shape:
        count *= n
    return count * dtype.itemsize


class _Archive:
    """The members of an uncompressed .npz, each checked before it is read."""

    def __init__(self, fh, size):
        self.size = size
        try:
            self.zip = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError):
            raise _Refused(
                "not a fastvi model file (not an .npz archive, or truncated)"
            ) from None
        infos = self.zip.infolist()
        if len(infos) > _MAX_MEMBERS:
            raise _Refused(f"corrupted ({len(infos)} archive members)")
        self.members = {}
        for info in infos:
            name = info.filename
            if not name.endswith(".npy"):
                raise _Refused(f"corrupted (archive member {name!r} is not a .npy)")
            if name[:-4] in self.members:
                raise _Refused(f"corrupted (archive member {name!r} appears twice)")
            if info.flag_bits & 0x1:
                raise _Refused(f"refused: archive member {name!r} is encrypted")
            if info.compress_type != zipfile.ZIP_STORED:
                raise _Refused(
                    f"refused: archive member {name!r} is compressed (method "
                    f"{info.compress_type}); model files are written uncompressed"
                )
            if (
                info.file_size != info.compress_size
                or info.header_offset + info.compress_size > size
            ):
                raise _Refused(
                    f"corrupted or truncated (archive member {name!r} declares "
                    f"{info.file_size} bytes, the file has {size})"
                )
            self.members[name[:-4]] = info

    def open(self, key):
        """The member's stream after its .npy header, and (dtype, shape, fortran)."""
        info = self.members[key]
        stream = self.zip.open(info)
        try:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise _Refused(f"corrupted (member {key!r}: .npy version {version})")
            offset = stream.tell()
        except BaseException:
            stream.close()
            raise
        return stream, (dtype, shape, fortran, info.file_size - offset)

    def read(self, key, listed=None):
        """The array ``key``; ``listed``: the metadata's dtype and shape for it."""
        stream, (dtype, shape, fortran, n_bytes) = self.open(key)
        with stream:
            if dtype.hasobject:
                raise _Refused(
                    "refused: it holds a pickled (object) array, which could run "
                    "code when loaded"
                )
            if dtype.kind not in _ARRAY_KINDS or dtype.names or dtype.subdtype:
                raise _Refused(f"corrupted (array {key!r} has dtype {dtype.str})")
            if len(shape) > _MAX_NDIM or any(n < 0 for n in shape):
                raise _Refused(f"corrupted (array {key!r} has shape {shape})")
            if listed is not None and listed != (dtype, list(shape)):
                raise _Refused(
                    f"corrupted (array {key!r} has dtype {dtype.str} and shape "
                    f"{list(shape)}, the metadata says {listed[0].str} "
                    f"{listed[1]})"
                )
            expected = _shape_bytes(shape, dtype)
            if expected > _MAX_ARRAY_BYTES or expected != n_bytes:
                raise _Refused(
                    f"corrupted (array {key!r} of shape {list(shape)} needs "
                    f"{expected} bytes, its archive member holds {n_bytes})"
                )
            data = stream.read(n_bytes)
            if len(data) != n_bytes or stream.read(1):
                raise _Refused(f"truncated (array {key!r})")
        value = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        if n_bytes:
            flat = value.reshape(-1, order="A")  # a view: value is contiguous
            flat.view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
        return value


def _read_meta(archive):
    if _META_KEY not in archive.members:
        raise _Refused(f"not a fastvi model file (no '{_META_KEY}' entry)")
    if archive.members[_META_KEY].file_size > _MAX_META_BYTES:
        raise _Refused(f"corrupted (metadata larger than {_MAX_META_BYTES} bytes)")
    blob = archive.read(_META_KEY)
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise _Refused("corrupted metadata (not a byte array)")
    try:
        text = blob.tobytes().decode("utf-8")
        _check_json_depth(text)
        meta = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Refused(f"corrupted metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT_NAME:
        raise _Refused("not a fastvi model file (bad metadata)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise _Refused(
            f"format version {version!r} is not supported by fastvi "
            f"{_fastvi_version()} (which reads version {FORMAT_VERSION}); "
            f"the file was written by fastvi {meta.get('fastvi_version')!r}"
        )
    listed = meta.get("arrays")
    if not isinstance(listed, dict) or set(listed) != set(archive.members) - {
        _META_KEY
    }:
        raise _Refused("corrupted (the arrays do not match the metadata's list)")
    checked = {}
    for key, info in listed.items():
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("shape"), list)
            or len(info["shape"]) > _MAX_NDIM
            or not all(type(n) is int and n >= 0 for n in info["shape"])
        ):
            raise _Refused(f"corrupted (bad metadata entry for array {key!r})")
        checked[key] = (_listed_dtype(info.get("dtype"), key), info["shape"])
    return meta, checked


# Everything reading a damaged archive can raise: zipfile and zlib errors, short
# reads, bad .npy headers (ValueError), sizes that overflow. None escapes _open.
_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    RuntimeError,
    zlib.error,
    EOFError,
    struct.error,
    UnicodeDecodeError,
    OverflowError,
    MemoryError,
    ValueError,
    KeyError,
    OSError,
    # a mangled .npy header: numpy parses its dict as a Python literal
    SyntaxError,
    tokenize.TokenError,
)


def _open(path, read_arrays=True):
    """The metadata and (with ``read_arrays``) the arrays, or one ModelFileError."""
    where = os.fspath(path)
    try:
        with _regular_file(where) as (fh, size):
            archive = _Archive(fh, size)
            meta, listed = _read_meta(archive)
            arrays = {}
            for key, info in listed.items():
                if read_arrays:
                    arrays[key] = archive.read(key, info)
                else:  # the headers only
                    stream, (dtype, shape, _, n_bytes) = archive.open(key)
                    stream.close()
                    if info != (dtype, list(shape)) or n_bytes != _shape_bytes(
                        shape, dtype
                    ):
                        raise _Refused(f"corrupted (array {key!r})")
    except ModelFileError:
        raise
    except _Refused as exc:
        raise ModelFileError(f"{where}: {exc}") from None
    except _READ_ERRORS as exc:
        kind = type(exc).__name__
        raise ModelFileError(
            f"{where}: corrupted or truncated ({kind}: {exc})"
        ) from None
    return meta, arrays


def read_metadata(path):
    """The JSON metadata of a model file (its archive checked as :func:`load` does,
    the array headers too, but no array data read).

    Returns
    -------
    meta : dict
    """
    meta, _ = _open(path, read_arrays=False)
    return meta


def is_model_file(path):
    """True when ``path`` is a regular file, an ``.npz`` archive with fastvi model
    metadata (the archive's directory is read, nothing else)."""
    try:
        with _regular_file(os.fspath(path)) as (fh, _):
            with zipfile.ZipFile(fh) as zf:
                return _META_KEY + ".npy" in zf.namelist()
    except (ModelFileError, *_READ_ERRORS):
        return False


def load(path, *, expected_class=None, return_extra=False):
    """Load a model saved by :func:`save` (or ``est.save``); never unpickles.

    Parameters
    ----------
    path : str or path-like
    expected_class : str, optional
        Refuse a file that holds another class (e.g. ``"BayesianGaussianMixture"``).
    return_extra : bool, default=False
        Also return the file's ``extra`` metadata.

    Returns
    -------
    estimator : estimator
        A new instance of the saved class with the saved parameters and fitted
        attributes; its predictions are bitwise those of the saved estimator.
    extra : dict
        Only when ``return_extra`` is True.

    Raises
    ------
    ModelFileError
        (a ``ValueError``) for a missing, truncated, corrupted, wrong-class or
        incompatible-version file, naming the file and the problem.
    """
    where = os.fspath(path)
    meta, arrays = _open(where)
    decoder = _Decoder(arrays, where)
    try:
        est = decoder.estimator(meta, expected=expected_class)
    except ModelFileError:
        raise
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ModelFileError(f"{where}: cannot rebuild the model ({exc})") from None
    unused = sorted(set(arrays) - decoder.used)
    if unused:
        raise ModelFileError(f"{where}: corrupted (unreferenced arrays {unused})")
    if return_extra:
        extra = meta.get("extra", {})
        return est, extra if isinstance(extra, dict) else {}
    return est


class SaveMixin:
    """Adds :meth:`save` to an estimator (see :mod:`fastvi.persist`)."""

    def save(self, path):
        """Save the estimator to ``path`` (an ``.npz`` archive, written atomically).

        Load it back with ``fastvi.persist.load(path)``. No pickle is involved, so
        loading a file from anywhere cannot execute code.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        self
        """
        save(self, path)
        return self
