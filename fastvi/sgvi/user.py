"""User-written models: numba-jitted per-row log-likelihood and log prior functions.

:class:`NumbaModel` takes the user's functions, writes a small kernel module around
them (source in :mod:`fastvi.kernels.sgvi_user`) to fastvi's kernel cache directory
and imports it; the engine then gets log p and its gradient for all S draws from one
parallel pass over the rows, exactly as for the built-in GLMs.

Cache directory: ``sgvi_user_kernels`` in fastvi's kernel cache folder
(:func:`fastvi.kernels._config.cache_dir`: ``$FASTVI_CACHE_DIR``, ``$NUMBA_CACHE_DIR``
or the user cache folder); a temporary directory when it is not writable. The module's name
is a hash of fastvi's kernel source and of the source of the user's functions, so
editing them makes a new module. Numba caches the compiled kernels next to it, so a
second process loads them instead of compiling (about a second instead of several)
— when the user's functions live in an importable module file. Functions defined in
``__main__``, a notebook or another function are compiled in every process (into a
module in a temporary directory). As with any numba cache, a change to a helper that
the user's functions call, in another function, is not noticed: rename or touch the
function whose source changes, or clear the cache directory.
"""

import hashlib
import importlib.util
import inspect
import os
import sys
import tempfile
import threading

import numpy as np

from .models import Model, Param, _serial

__all__ = ["NumbaModel", "kernel_cache_dir"]

# Rows per parallel work item (fixed: results do not depend on the thread count)
CHUNK_ROWS = 512
_ROLES = ("loglik", "loglik_grad", "logprior", "logprior_grad")
_MISSING = {
    "loglik": "_missing_value",
    "loglik_grad": "_missing_grad",
    "logprior": "_missing_prior",
    "logprior_grad": "_missing_prior_grad",
}
_LOCK = threading.Lock()
_LOADED = {}


def kernel_cache_dir():
    """Where generated kernel modules are kept (numba caches them in the same
    cache folder, like every fastvi kernel)."""
    from ..kernels._config import cache_dir

    return os.path.join(cache_dir(), "sgvi_user_kernels")


def _is_numba_function(f):
    try:
        from numba.core.registry import CPUDispatcher
    except ImportError:  # pragma: no cover - numba is a dependency
        return False
    return isinstance(f, CPUDispatcher)


def _importable(f):
    """``(module, qualname)`` when ``f`` can be imported by name, else None."""
    py = f.py_func
    module, qualname = py.__module__, py.__qualname__
    if module in (None, "__main__") or "<" in qualname or "." in qualname:
        return None
    mod = sys.modules.get(module)
    if mod is None or not getattr(mod, "__file__", None):
        return None
    if getattr(mod, qualname, None) is not f:
        return None
    return module, qualname


def _source_of(f):
    try:
        return inspect.getsource(f.py_func)
    except (OSError, TypeError):
        code = f.py_func.__code__
        return repr((code.co_code, code.co_consts, code.co_names))


def _write_module(directory, name, text):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name + ".py")
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return path
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)  # atomic: concurrent processes see a whole file
    return path


def _import_file(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_kernels(functions):
    """Import (writing it first if needed) the kernel module for ``functions``, a
    dict role -> numba dispatcher or None. Returns the module."""
    from ..kernels import sgvi_user as src

    given = {r: f for r, f in functions.items() if f is not None}
    where = {r: _importable(f) for r, f in given.items()}
    cacheable = all(w is not None for w in where.values())
    digest = hashlib.sha256()
    digest.update(f"{src.VERSION}\n{src.SOURCE}\n{src.MISSING}".encode())
    for role in _ROLES:
        f = given.get(role)
        digest.update(f"{role}:{where.get(role)}:".encode())
        if f is not None:
            digest.update(_source_of(f).encode())
    name = "fastvi_sgvi_user_" + digest.hexdigest()[:20]
    if not cacheable:
        # not importable by name: the module gets the functions after import, so a
        # compiled kernel on disk would not know which functions it holds; use a
        # directory of this process only
        name += f"_p{os.getpid()}_{id(functions):x}"
    with _LOCK:
        if cacheable and name in _LOADED:
            return _LOADED[name]
        lines = []
        for role in _ROLES:
            if role not in given:
                lines.append(f"_{role} = {_MISSING[role]}")
            elif cacheable:
                module, qualname = where[role]
                lines.append(f"from {module} import {qualname} as _{role}")
            else:
                lines.append(f"_{role} = None  # set by fastvi after import")
        names = ", ".join(
            f"{r}={f.py_func.__module__}.{f.py_func.__qualname__}"
            for r, f in given.items()
        )
        text = (
            src.HEADER.format(version=src.VERSION, description=names)
            + src.MISSING
            + "\n".join(lines)
            + "\n"
            + src.SOURCE
        )
        directory = kernel_cache_dir() if cacheable else tempfile.mkdtemp("fastvi")
        try:
            path = _write_module(directory, name, text)
        except OSError:
            path = _write_module(tempfile.mkdtemp("fastvi"), name, text)
        if cacheable:
            module = _import_file(name, path)
        else:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            # numba reads the globals when it first compiles a kernel: now
            for role, f in given.items():
                setattr(module, f"_{role}", f)
        if cacheable:
            _LOADED[name] = module
        return module


# Entries beyond theta, a data row and ``out`` when the widths are probed
_GUARD = 64


def _guarded(values, fill):
    """``values`` as the head of a longer buffer whose tail holds ``fill``: the
    head is a C-contiguous view, the type the kernels pass."""
    buf = np.full(values.shape[0] + max(_GUARD, values.shape[0]), fill)
    buf[: values.shape[0]] = values
    return buf, buf[: values.shape[0]]


def _same_value(a, b):
    return a == b or (a != a and b != b)


def _probe_widths(functions, theta, data):
    """Call the user's compiled functions once, at the initial point, with theta and
    the first data row placed in front of guard entries: a function that reads
    past theta's P entries or a row's K columns returns different values for two
    guard fills, and a gradient that writes past ``out`` changes the guard. In the
    kernels either would read the next draw's or row's values, or write out of
    bounds, silently; here it is a clear error before any kernel runs."""
    P = theta.shape[0]
    row = None if data is None else data[0]
    K = None if row is None else row.shape[0]
    where = f"theta has P={P} entries" + (
        "" if K is None else f" and a data row has K={K} columns"
    )

    def inputs(fill):
        out = [_guarded(theta, fill)[1]]
        if row is not None:
            out.append(_guarded(row, fill)[1])
        return out

    for role, takes_row in (("loglik", True), ("logprior", False)):
        f = functions.get(role)
        if f is None:
            continue
        values = []
        for fill in (np.nan, 0.5):
            args = inputs(fill)
            with np.errstate(all="ignore"):
                value = f(*(args if takes_row else args[:1]))
            if isinstance(value, (bool, np.bool_)) or not isinstance(
                value, (int, float, np.integer, np.floating)
            ):
                shape = getattr(value, "shape", None)
                what = (
                    f"an array of shape {shape}"
                    if shape is not None
                    else type(value).__name__
                )
                raise TypeError(
                    f"{role} must return one float (the log density of "
                    f"{'one row' if takes_row else 'theta'}); it returned {what}."
                )
            values.append(float(value))
        if not _same_value(*values):
            raise ValueError(
                f"{role} reads past the end of its inputs: {where} ({role} gives "
                f"{values[0]!r} or {values[1]!r} depending on what lies beyond "
                "them). Check the indices it uses against the model's params and "
                "the data's columns."
            )
        g = functions.get(role + "_grad")
        if g is None:
            continue
        results = []
        for fill in (np.nan, 0.5):
            args = inputs(fill)
            out_buf, out = _guarded(np.zeros(P), fill)
            with np.errstate(all="ignore"):
                g(*(args if takes_row else args[:1]), out)
            tail = out_buf[P:]
            if not np.array_equal(tail, np.full(tail.shape, fill), equal_nan=True):
                raise ValueError(
                    f"{role}_grad writes past the end of out, which has P={P} "
                    "entries (one per parameter coordinate, "
                    "model.slices says where each parameter lies)."
                )
            results.append(out.copy())
        if not np.array_equal(results[0], results[1], equal_nan=True):
            raise ValueError(
                f"{role}_grad reads past the end of its inputs: {where}. Check "
                "the indices it uses against the model's params and the data's "
                "columns."
            )


class NumbaModel(Model):
    """A model from numba-jitted functions: per-row log-likelihood and log prior.

    ``log p(x, theta) = logprior(theta) + sum_n loglik(theta, data[n])``, with
    ``theta`` the constrained parameters of ``params`` flattened in order into one
    float64 vector of length P (``model.slices[name]`` says where each lies). fastvi
    handles the transforms of the supports and their log-Jacobians, and builds the
    parallel pass over the rows around the functions (module documentation).

    Parameters
    ----------
    params : sequence of Param
    loglik : numba function ``(theta, row) -> float`` or None
        Log-likelihood of one data row ``row = data[n]`` (1-D float64, length K).
    loglik_grad : numba function ``(theta, row, out) -> None`` or None
        Writes d loglik / d theta into ``out`` (P,), which fastvi has zeroed.
    logprior : numba function ``(theta) -> float`` or None
        Log prior density (None: flat). With no ``loglik`` it is the whole log
        density.
    logprior_grad : numba function ``(theta, out) -> None`` or None
    data : (N, K) array or None
        The rows ``loglik`` reads; minibatches draw from them.
    initial_point : (P,) array or None
        Unconstrained start for q's mean (default zeros).

    Without the gradients (``loglik_grad``/``logprior_grad`` for every function
    given) only ``estimator='score'`` can fit the model.

    Notes
    -----
    Functions must be ``numba.njit``-compiled (``cache=True`` recommended) and
    accept a C-contiguous 1-D float64 ``theta``. They run in parallel threads: they
    must not write to global state.
    """

    def __init__(
        self,
        params,
        *,
        loglik=None,
        loglik_grad=None,
        logprior=None,
        logprior_grad=None,
        data=None,
        initial_point=None,
    ):
        self.params = [p if isinstance(p, Param) else Param(*p) for p in params]
        super().__init__()
        functions = {
            "loglik": loglik,
            "loglik_grad": loglik_grad,
            "logprior": logprior,
            "logprior_grad": logprior_grad,
        }
        for role, f in functions.items():
            if f is not None and not _is_numba_function(f):
                raise TypeError(
                    f"{role} must be a numba.njit function, got {type(f).__name__}."
                )
        if loglik is None and logprior is None:
            raise ValueError("NumbaModel needs loglik, logprior or both.")
        if loglik_grad is not None and loglik is None:
            raise ValueError("loglik_grad was given without loglik.")
        if logprior_grad is not None and logprior is None:
            raise ValueError("logprior_grad was given without logprior.")
        if loglik is not None:
            if data is None:
                raise ValueError("loglik needs data (an (N, K) array of rows).")
            data = np.ascontiguousarray(data, dtype=np.float64)
            if data.ndim != 2 or data.shape[0] == 0:
                raise ValueError(
                    f"data must be a non-empty 2-D array (N, K); got shape {data.shape}."
                )
            if not np.all(np.isfinite(data)):
                raise ValueError("data contains NaN or infinity.")
            self.n_rows = data.shape[0]
        elif data is not None:
            raise ValueError("data was given without loglik.")
        self.data = data
        self.has_gradient = (loglik is None or loglik_grad is not None) and (
            logprior is None or logprior_grad is not None
        )
        self._has_loglik = loglik is not None
        self._has_prior = logprior is not None
        self._all_rows = (
            np.arange(self.n_rows, dtype=np.int64) if self._has_loglik else None
        )
        if initial_point is not None:
            initial_point = np.asarray(initial_point, dtype=np.float64)
            if initial_point.shape != (self.size,):
                raise ValueError(
                    f"initial_point must have shape ({self.size},), got "
                    f"{initial_point.shape}."
                )
        self._initial = initial_point
        _probe_widths(functions, self.constrain(self.initial_point()), data)
        self.kernels = build_kernels(functions)

    def initial_point(self):
        return np.zeros(self.size) if self._initial is None else self._initial.copy()

    def _serial_pass(self, n_rows, n_draws):
        """Whether a pass over ``n_rows`` rows for ``n_draws`` draws runs on the
        calling thread: decided by its work, as for :class:`GLM`, estimated as one
        multiply-add per parameter and per data column for each (row, draw) call
        (waking the thread pool costs more than a small model's whole pass: the
        earnings regression fitted 7 times slower in parallel). Same chunks, same
        bits either way."""
        work = n_rows * n_draws * (self.size + self.data.shape[1])
        return _serial(n_rows, CHUNK_ROWS, work)

    def _evaluate(self, theta, rows, scale, with_grad):
        # the kernels index theta by P and data by the row indices unchecked
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        if theta.ndim != 2 or theta.shape[1] != self.size:
            raise ValueError(
                f"theta must have shape (S, {self.size}) for this model's "
                f"{self.size} parameters; got shape {theta.shape}."
            )
        S, P = theta.shape
        lp = np.zeros(S)
        g = np.zeros((S, P))
        k = self.kernels
        if self._has_loglik:
            if rows is None:
                rows = self._all_rows
            else:
                rows = np.ascontiguousarray(rows, dtype=np.int64)
                if rows.ndim != 1 or rows.shape[0] == 0:
                    raise ValueError("rows must be a non-empty 1-D array of indices.")
                if rows.min() < 0 or rows.max() >= self.n_rows:
                    raise ValueError(
                        f"row indices must lie in [0, {self.n_rows}); got "
                        f"{rows.min()} to {rows.max()}."
                    )
            kernel = (
                k.loglik_pass_serial
                if self._serial_pass(rows.shape[0], S)
                else k.loglik_pass
            )
            ll, gl = kernel(theta, self.data, rows, CHUNK_ROWS, with_grad)
            lp += scale * ll.sum(axis=0)
            if with_grad:
                g += scale * gl.sum(axis=0)
        if self._has_prior:
            lp_p = np.empty(S)
            g_p = np.zeros((S, P if with_grad else 0))
            k.prior_all(theta, with_grad, lp_p, g_p)
            lp += lp_p
            if with_grad:
                g += g_p
        return lp, g

    def log_joint(self, theta, rows, scale):
        return self._evaluate(theta, rows, scale, True)

    def log_joint_value(self, theta, rows, scale):
        return self._evaluate(theta, rows, scale, False)[0]
