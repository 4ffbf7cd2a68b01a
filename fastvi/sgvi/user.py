"""User-written models: numba-jitted per-row log-likelihood and log prior functions.

:class:`NumbaModel` takes the user's functions, writes a small kernel module around
them (source in :mod:`fastvi.kernels.sgvi_user`) to fastvi's kernel cache directory
and imports it; the engine then gets log p and its gradient for all S draws from one
parallel pass over the rows, exactly as for the built-in GLMs. A function given
without its gradient gets one by central finite differences inside that same pass.

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

from .models import Interval, Model, Param, _serial

__all__ = ["LinearModel", "NumbaModel", "kernel_cache_dir"]

# Rows per parallel work item (fixed: results do not depend on the thread count)
CHUNK_ROWS = 512
_ROLES = ("loglik", "loglik_grad", "logprior", "logprior_grad")
# positional arguments of each role without and with ``hyper``
_ARITY = {
    "loglik": (2, 3),
    "loglik_grad": (3, 4),
    "logprior": (1, 2),
    "logprior_grad": (2, 3),
}
_SIGNATURE = {
    "loglik": "(theta, row[, hyper]) -> float",
    "loglik_grad": "(theta, row[, hyper], out) -> None",
    "logprior": "(theta[, hyper]) -> float",
    "logprior_grad": "(theta[, hyper], out) -> None",
}
# LinearModel's likelihood of the linear predictor eta
_LINEAR_ARITY = {"loglik": (3, 4), "loglik_grad": (4, 5)}
_LINEAR_SIGNATURE = {
    "loglik": "(eta, y, phi[, hyper]) -> float",
    "loglik_grad": "(eta, y, phi[, hyper], out) -> float (d loglik / d eta)",
}
# Central-difference step relative to max(|theta|, 1): the cube root of the machine
# epsilon balances rounding (eps |f| / h) against truncation (h^2 |f'''| / 6)
# (Nocedal & Wright 2006, eq. 8.8), about 6e-6.
FD_STEP = float(np.finfo(np.float64).eps ** (1.0 / 3.0))
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


def _form(role, f, has_hyper, linear=False):
    """``"plain"`` or ``"hyper"``: whether ``f`` takes the ``hyper`` argument,
    read from its number of positional parameters; a clear error otherwise.
    ``linear``: the likelihood roles of :class:`LinearModel`."""
    linear = linear and role in _LINEAR_ARITY
    arity = _LINEAR_ARITY if linear else _ARITY
    signature = _LINEAR_SIGNATURE if linear else _SIGNATURE
    try:
        sig = inspect.signature(f.py_func)
    except (TypeError, ValueError):  # pragma: no cover - a Python function
        return "hyper" if has_hyper else "plain"
    kinds = [p.kind for p in sig.parameters.values()]
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    n = sum(k in positional for k in kinds)
    plain, with_hyper = arity[role]
    if inspect.Parameter.VAR_POSITIONAL not in kinds:
        if n == plain:
            return "plain"
        if n == with_hyper:
            if not has_hyper:
                raise ValueError(
                    f"{role} takes {n} arguments, {signature[role]} with hyper, "
                    "but no hyper was given: pass NumbaModel(..., hyper=array)."
                )
            return "hyper"
    raise TypeError(
        f"{role} must take {plain} arguments, or {with_hyper} with hyper: "
        f"{role}{signature[role]}; it takes {sig}."
    )


def build_kernels(functions, forms, linear=False):
    """Import (writing it first if needed) the kernel module for ``functions``, a
    dict role -> numba dispatcher or None, with ``forms`` (role -> ``"plain"``,
    ``"hyper"``, ``"fd"`` or None, see :func:`fastvi.kernels.sgvi_user.adapters`).
    ``linear``: ``loglik`` is a likelihood of eta (:class:`LinearModel`). Returns
    the module."""
    import numba

    from ..kernels import sgvi_user as src

    given = {r: f for r, f in functions.items() if f is not None}
    where = {r: _importable(f) for r, f in given.items()}
    cacheable = all(w is not None for w in where.values())
    body = src.MISSING + "\n"
    lines = []
    for role in _ROLES:
        if role not in given:
            continue
        if cacheable:
            module, qualname = where[role]
            lines.append(f"from {module} import {qualname} as _user_{role}")
            # compiled into the kernels (numba IR inlining, under the kernels'
            # options): a call to the user's compiled function would cost more
            # than a small function's work (array arguments, reference counts)
            lines.append(f"_u_{role} = jit(_user_{role}.py_func, inline='always')")
        else:
            lines.append(f"_u_{role} = None  # set by fastvi after import")
    body += "\n".join(lines) + "\n"
    if linear:
        body += src.linear_adapters(forms, FD_STEP) + src.LINEAR
        forms = dict(forms, loglik=None, loglik_grad=None)
    body += src.adapters(forms) + src.SOURCE
    digest = hashlib.sha256()
    digest.update(f"{src.VERSION}\n{body}".encode())
    # NUMBA_BOUNDSCHECK=0 compiles the probes without their checks: not the same
    # module on disk
    digest.update(f"boundscheck:{numba.config.BOUNDSCHECK}".encode())
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
        names = ", ".join(
            f"{r}={f.py_func.__module__}.{f.py_func.__qualname__}"
            for r, f in given.items()
        )
        text = src.HEADER.format(version=src.VERSION, description=names) + body
        directory = kernel_cache_dir() if cacheable else tempfile.mkdtemp("fastvi")
        try:
            path = _write_module(directory, name, text)
        except OSError:
            path = _write_module(tempfile.mkdtemp("fastvi"), name, text)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        if cacheable:
            _LOADED[name] = module
        else:
            # numba reads the globals when it first compiles a kernel: now
            for role, f in given.items():
                setattr(module, f"_u_{role}", module.jit(f.py_func, inline="always"))
        return module


# Entries beyond theta, a data row, hyper and ``out`` when the widths are probed
_GUARD = 64


def _guarded(values, fill):
    """``values`` as the head of a longer buffer whose tail holds ``fill``: the
    head is a C-contiguous view, the type the kernels pass."""
    buf = np.full(values.shape[0] + max(_GUARD, values.shape[0]), fill)
    buf[: values.shape[0]] = values
    return buf, buf[: values.shape[0]]


def _same_value(a, b):
    return a == b or (a != a and b != b)


def _args(role, form, theta, row, hyper):
    """The arguments (before ``out``) the user's function of ``role`` takes."""
    args = [theta]
    if role.startswith("loglik"):
        args.append(row)
    if form == "hyper":
        args.append(hyper)
    return args


def _value_of(role, value, what):
    """``value`` as a float, or a clear error when it is not one number."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        shape = getattr(value, "shape", None)
        kind = (
            f"an array of shape {shape}" if shape is not None else type(value).__name__
        )
        raise TypeError(f"{role} must return one float ({what}); it returned {kind}.")
    return float(value)


def _out_of_bounds(role, error, where, sizes):
    """The ValueError for a bounds check that ``role`` failed ``where``."""
    grad = role.endswith("_grad")
    return ValueError(
        f"{role} reads "
        + (
            "or writes past the end of its inputs or out"
            if grad
            else "past the end of its inputs"
        )
        + f" (numba's bounds check: {error}) {where}: {sizes(role)}. Check the "
        "indices it uses against the model's params, the data's columns and hyper."
    )


def _bounds_checked(functions, sizes):
    """The user's functions as copies compiled with bounds checks
    (:func:`fastvi.kernels._config.bounds_checked`), for the probes that call them
    from Python before any kernel runs: an index however far out of bounds is then
    a ValueError naming the function, not a crash. ``sizes(role)`` describes what
    the function of ``role`` may index."""
    from ..kernels._config import bounds_checked

    def checked(role, f):
        copy = bounds_checked(f)
        where = "when called at the initial point or beside it" + (
            ", on the first or last data row" if role.startswith("loglik") else ""
        )

        def call(*args):
            try:
                return copy(*args)
            except IndexError as e:
                raise _out_of_bounds(role, e, where, sizes) from None

        return call

    return {r: None if f is None else checked(r, f) for r, f in functions.items()}


def _raise_at_row(functions, forms, where, sizes, inputs, n_out):
    """Call the likelihood (and its gradient, with an ``out`` of ``n_out``) of a
    model, compiled with bounds checks, on the ``inputs`` (hyper last) at which the
    generated probe saw them raise: their own exception propagates, a failed bounds
    check is a ValueError naming the function and ``where``; a ValueError in any
    case."""
    from ..kernels._config import bounds_checked

    for role in ("loglik", "loglik_grad"):
        f = functions.get(role)
        if f is None:
            continue
        copy = bounds_checked(f)
        args = list(inputs if forms[role] == "hyper" else inputs[:-1])
        if role == "loglik_grad":
            args.append(np.zeros(n_out))
        try:
            with np.errstate(all="ignore"):
                copy(*args)
        except IndexError as e:
            raise _out_of_bounds(role, e, where, sizes) from None
    raise ValueError(
        f"loglik or loglik_grad raised {where} in the compiled probe: "
        f"{sizes('loglik')}."
    )


def _probe_widths(functions, forms, theta, data, hyper):
    """Call the user's compiled functions once, at the initial point, with theta,
    the first data row and hyper placed in front of guard entries: a function that
    reads past theta's P entries, a row's K columns or hyper's H entries returns
    different values for two guard fills, and a gradient that writes past ``out``
    changes the guard. In the kernels either would read the next draw's or row's
    values, or write out of bounds, silently; here it is a clear error before any
    kernel runs."""
    P = theta.shape[0]
    row = None if data is None else data[0]
    where = f"theta has P={P} entries"
    if row is not None:
        where += f", a data row has K={row.shape[0]} columns"
    if hyper.shape[0] or any(f == "hyper" for f in forms.values()):
        where += f", hyper has H={hyper.shape[0]} entries"

    def inputs(role, fill):
        return _args(
            role,
            forms[role],
            _guarded(theta, fill)[1],
            None if row is None else _guarded(row, fill)[1],
            _guarded(hyper, fill)[1],
        )

    for role, takes_row in (("loglik", True), ("logprior", False)):
        f = functions.get(role)
        if f is None:
            continue
        values = []
        for fill in (np.nan, 0.5):
            with np.errstate(all="ignore"):
                value = f(*inputs(role, fill))
            what = "the log density of " + ("one row" if takes_row else "theta")
            values.append(_value_of(role, value, what))
        if not _same_value(*values):
            raise ValueError(
                f"{role} reads past the end of its inputs: {where} ({role} gives "
                f"{values[0]!r} or {values[1]!r} depending on what lies beyond "
                "them). Check the indices it uses against the model's params, "
                "the data's columns and hyper."
            )
        grad = role + "_grad"
        g = functions.get(grad)
        if g is None:
            continue
        results = []
        for fill in (np.nan, 0.5):
            out_buf, out = _guarded(np.zeros(P), fill)
            out[:] = 0.0
            with np.errstate(all="ignore"):
                returned = g(*inputs(grad, fill), out)
            if returned is not None:
                raise TypeError(
                    f"{grad} must write the gradient into out and return None "
                    f"({grad}{_SIGNATURE[grad]}); it returned "
                    f"{type(returned).__name__}."
                )
            tail = out_buf[P:]
            if not np.array_equal(tail, np.full(tail.shape, fill), equal_nan=True):
                raise ValueError(
                    f"{grad} writes past the end of out, which has P={P} "
                    "entries (one per entry of theta; model.slices says where "
                    "each parameter lies)."
                )
            results.append(out.copy())
        if not np.array_equal(results[0], results[1], equal_nan=True):
            raise ValueError(
                f"{grad} reads past the end of its inputs: {where}. Check the "
                "indices it uses against the model's params, the data's columns "
                "and hyper."
            )


def _theta_names(params):
    names = []
    for p in params:
        if p.shape == ():
            names.append(p.name)
        else:
            names += [
                f"{p.name}[{', '.join(map(str, i))}]" for i in np.ndindex(*p.shape)
            ]
    return names


class NumbaModel(Model):
    """A model from numba-jitted functions: per-row log-likelihood and log prior.

    ``log p(x, theta) = logprior(theta) + sum_n loglik(theta, data[n])``, with
    ``theta`` the constrained parameters of ``params`` flattened in order into one
    float64 vector of length ``theta_size`` (``model.slices[name]`` says where each
    lies; a ``"simplex"`` parameter of K entries takes K places). fastvi handles
    the transforms of the supports and their log-Jacobians, and builds the
    parallel pass over the rows around the functions (module documentation).

    Parameters
    ----------
    params : sequence of Param
    loglik : numba function ``(theta, row) -> float`` or ``(theta, row, hyper)``
        Log-likelihood of one data row ``row = data[n]`` (1-D float64, length K).
    loglik_grad : numba function ``(theta, row, out)`` or ``(theta, row, hyper,
        out)``, or None
        Writes d loglik / d theta into ``out`` (length ``theta_size``), which
        fastvi has zeroed, and returns None.
    logprior : numba function ``(theta) -> float`` or ``(theta, hyper)``, or None
        Log prior density (None: flat). With no ``loglik`` it is the whole log
        density.
    logprior_grad : numba function ``(theta, out)`` or ``(theta, hyper, out)``,
        or None
    data : (N, K) array or None
        The rows ``loglik`` reads; minibatches draw from them.
    hyper : 1-D array or None
        Hyperparameters and constants (prior scales, sizes, a design matrix
        raveled, ...), finite, copied once as float64 and passed to every function
        that takes the extra ``hyper`` argument (a function written without it
        keeps working). Integers are passed as floats (``int(hyper[0])`` inside).
    initial_point : (size,) array or None
        Unconstrained start for q's mean (default zeros).
    finite_differences : bool
        For a ``loglik`` or ``logprior`` given without its gradient: compute the
        gradient by central finite differences inside the kernel (default), so the
        model fits with the default estimator; False leaves the model without a
        gradient (only ``estimator='score'`` fits it).
    check_gradient : bool
        Compare each gradient function with central finite differences at two
        points (the initial point and one beside it) for the first and last rows,
        and raise a ValueError naming the coordinate where they disagree (more
        than a relative 1e-3). False skips it, e.g. for a log density with a kink.

    Notes
    -----
    Functions must be ``numba.njit``-compiled (``cache=True`` recommended) and
    accept a C-contiguous 1-D float64 ``theta``. They run in parallel threads: they
    must not write to global state. The kernels compile their bodies in (numba's
    ``inline="always"`` on their Python source) under fastvi's kernel options:
    fast-math reassociation and FMA contraction, but NaN and inf checks keep
    working; division by zero gives inf or NaN instead of raising. Functions they
    call are called, not inlined. A recursive function cannot be inlined.

    The widths are probed at construction: a function that reads past theta, a
    data row or hyper, or a gradient that writes past ``out``, is a clear error
    before any kernel runs (in the kernel it would read the next draw's or row's
    values, or write out of bounds). The probes, over every data row, run the
    functions compiled with bounds checks, so an index however far out of range
    is a ValueError, not a crash. Plain jitted helpers they call by name are
    checked at the first row only (mark a helper ``inline="always"`` to have it
    checked at every row).

    Finite differences cost ``2 P + 1`` calls of the function per row and per draw
    (P = ``theta_size``) instead of one call of each function: fine for a few
    dozen parameters, slow for hundreds. The step for ``theta_p`` is ``6e-6
    max(|theta_p|, 1)`` (the cube root of the machine epsilon), shrunk near a
    support's boundary (``6e-6`` times the distance to it: relative for positive
    parameters, simplex entries, interval ends and the gaps of an ordered vector),
    so the perturbed theta stays inside the support. The gradient is then
    accurate to 1e-12 to 1e-10 of its largest entry (measured on a logistic
    regression and eight schools) for smooth functions of parameters of order
    one; parameters of scale far below 1e-3 lose accuracy (rescale them), and so
    does a function that is smooth across a support's boundary when theta is very
    near it (the rounding error is about 1e-16 |f| / step). A
    simplex entry is perturbed alone (the entries then leave the simplex by 6e-6
    relative): the function must be defined just off the simplex.
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
        hyper=None,
        initial_point=None,
        finite_differences=True,
        check_gradient=True,
    ):
        if params is None or isinstance(params, (str, Param)) or not len(params):
            raise ValueError(
                "NumbaModel needs params: a non-empty list of Param, e.g. "
                "[Param('coef', 3), Param('sigma', (), 'positive')]."
            )
        self.params = [p if isinstance(p, Param) else Param(*p) for p in params]
        super().__init__()
        functions = {
            "loglik": loglik,
            "loglik_grad": loglik_grad,
            "logprior": logprior,
            "logprior_grad": logprior_grad,
        }
        if loglik is None and logprior is None:
            raise ValueError("NumbaModel needs loglik, logprior or both.")
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
        forms = self._setup(functions, hyper, finite_differences, initial_point)
        z0 = self.initial_point()
        probe = _bounds_checked(functions, self._sizes)
        _probe_widths(probe, forms, self.constrain(z0), data, self.hyper)
        if check_gradient:
            z1 = z0 + 0.5 * np.sin(1.0 + np.arange(self.size))
            self._check_gradients(probe, forms, self.constrain(np.stack([z0, z1])))
        self.kernels = build_kernels(functions, forms)
        if self._has_loglik and self.n_rows > 1:
            self._probe_rows(
                self.constrain(z0), forms, functions, forms["loglik_grad"] != "fd"
            )

    def _setup(self, functions, hyper, finite_differences, initial_point, linear=False):
        """Check the functions, ``hyper`` and ``initial_point`` and set the model's
        attributes from them; returns the forms (role -> how the function is
        called, see :func:`build_kernels`)."""
        for role, f in functions.items():
            if f is not None and not _is_numba_function(f):
                raise TypeError(
                    f"{role} must be a numba.njit function, got {type(f).__name__}."
                )
        for role in ("loglik", "logprior"):
            if functions[role + "_grad"] is not None and functions[role] is None:
                raise ValueError(f"{role}_grad was given without {role}.")
        self.hyper = self._checked_hyper(hyper)
        forms = {
            r: None if f is None else _form(r, f, hyper is not None, linear)
            for r, f in functions.items()
        }
        if hyper is not None and "hyper" not in forms.values():
            raise ValueError(
                "hyper was given but none of the functions takes it: add a hyper "
                "argument, e.g. loglik(theta, row, hyper), logprior(theta, hyper)."
            )
        for role in ("loglik", "logprior"):
            if functions[role] is not None and functions[role + "_grad"] is None:
                if finite_differences:
                    forms[role + "_grad"] = "fd"
        self.gradients = {
            role: (
                None
                if functions[role] is None
                else "analytic"
                if functions[role + "_grad"] is not None
                else "finite differences"
                if finite_differences
                else None
            )
            for role in ("loglik", "logprior")
        }
        self._fd = "finite differences" in self.gradients.values()
        self.has_gradient = all(
            functions[r] is None or forms[r + "_grad"] is not None
            for r in ("loglik", "logprior")
        )
        self._has_loglik = functions["loglik"] is not None
        self._has_prior = functions["logprior"] is not None
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
        return forms

    @staticmethod
    def _checked_hyper(hyper):
        if hyper is None:
            return np.zeros(0)
        h = np.asarray(hyper)
        if (
            h.dtype == object
            or np.iscomplexobj(h)
            or not (np.issubdtype(h.dtype, np.number) or h.dtype == bool)
        ):
            raise TypeError(
                f"hyper must be an array of real numbers; got dtype {h.dtype}."
            )
        if h.ndim > 1:
            raise ValueError(
                f"hyper must be 1-D (or a single number); got shape {h.shape}. "
                "Pass a matrix raveled (hyper=M.ravel()) with its sizes, and index "
                "it as M[i, j] = hyper[i * n_cols + j]."
            )
        h = np.array(np.atleast_1d(h), dtype=np.float64, copy=True)
        if not np.all(np.isfinite(h)):
            bad = np.flatnonzero(~np.isfinite(h))
            raise ValueError(
                f"hyper must be finite; entries {bad[:10].tolist()} are NaN or "
                "infinite."
            )
        return h

    def _check_gradients(self, functions, forms, thetas):
        """Each analytic gradient against central differences of its function."""
        names = _theta_names(self.params)
        rows = [] if self.data is None else [0, self.n_rows - 1]
        steps = self._fd_steps(thetas)
        for role in ("loglik", "logprior"):
            f, g = functions[role], functions[role + "_grad"]
            if g is None:
                continue
            for i, theta in enumerate(thetas):
                for n in rows if role == "loglik" else [None]:
                    row = None if n is None else self.data[n]

                    def value(t, role=role, f=f, row=row):
                        return float(f(*_args(role, forms[role], t, row, self.hyper)))

                    with np.errstate(all="ignore"):
                        f0 = value(theta)
                        out = np.zeros(theta.shape[0])
                        g(
                            *_args(role, forms[role + "_grad"], theta, row, self.hyper),
                            out,
                        )
                        num = np.empty_like(out)
                        for p in range(theta.shape[0]):
                            up, down = theta.copy(), theta.copy()
                            up[p] += steps[i, p]
                            down[p] -= steps[i, p]
                            num[p] = (value(up) - value(down)) / (up[p] - down[p])
                    if not (np.isfinite(f0) and np.all(np.isfinite(num))):
                        continue  # not a point to judge a gradient at
                    tol = 1e-3 * (np.abs(out) + np.abs(num)) + 1e-6 * (
                        1.0 + abs(f0) + np.abs(num).max()
                    )
                    bad = np.flatnonzero(~(np.abs(out - num) <= tol))
                    if bad.size:
                        p = bad[0]
                        at = (
                            "the initial point"
                            if i == 0
                            else "a point beside the initial point"
                        ) + ("" if n is None else f", data row {n}")
                        raise ValueError(
                            f"{role}_grad disagrees with central finite differences "
                            f"of {role} in {names[p]} (theta[{p}]): {out[p]!r} vs "
                            f"{num[p]!r} at {at}"
                            + (
                                f" ({bad.size} entries disagree)"
                                if bad.size > 1
                                else ""
                            )
                            + f". Check {role}_grad; if {role} is not smooth there, "
                            "pass check_gradient=False."
                        )

    def _probe_rows(self, theta, forms, functions, with_grad):
        """The width probe (:func:`_probe_widths`) over every data row, in the
        generated kernel: a function that takes indices from the row (a group
        index, say) can read past theta or hyper at some rows only."""
        P = theta.shape[0]
        t_a, t_b = _guarded(theta, np.nan)[1], _guarded(theta, 0.5)[1]
        h_a, h_b = _guarded(self.hyper, np.nan)[1], _guarded(self.hyper, 0.5)[1]
        n_out = P + _GUARD if with_grad else 0
        guard = np.array([0.5, -0.25])
        out_a, out_b = np.full(n_out, guard[0]), np.full(n_out, guard[1])
        with np.errstate(all="ignore"):
            n, raised = self.kernels.probe_rows(
                t_a, t_b, self.data, h_a, h_b, out_a, out_b, guard
            )
        if raised:
            # the row again, from Python: the function's own exception, or the
            # bounds check that failed, with its role
            where = f"at data row {n} (not at row 0)"
            inputs = (theta, self.data[n], self.hyper)
            _raise_at_row(functions, forms, where, self._sizes, inputs, P)
        if n >= 0:
            raise ValueError(
                f"loglik{'' if not with_grad else ' or loglik_grad'} reads past the "
                f"end of theta (P={P} entries) or hyper "
                f"(H={self.hyper.shape[0]}), or writes past out, at data row {n} "
                "(not at row 0): check the indices it takes from the data (e.g. "
                "a group index in a column) against the model's params."
            )

    def _sizes(self, role):
        """What the model's function of ``role`` may index, for messages."""
        text = f"theta has P={self.theta_size} entries"
        if self.data is not None and role.startswith("loglik"):
            text += f", a data row has K={self.data.shape[1]} columns"
        text += f", hyper has H={self.hyper.shape[0]}"
        return text + (
            f", out has P={self.theta_size}" if role.endswith("_grad") else ""
        )

    def _fd_steps(self, theta):
        """Central-difference steps (S, theta_size) for draws ``theta``:
        ``FD_STEP * max(|theta|, 1)``, and at most ``FD_STEP`` times the distance to
        the support's boundary, so that theta +- step stays inside it."""
        room = np.maximum(np.abs(theta), 1.0)
        for p in self.params:
            sl = self.slices[p.name]
            t = theta[:, sl]
            if p.support in ("positive", "simplex"):
                room[:, sl] = np.minimum(room[:, sl], t)
            elif isinstance(p.support, Interval):
                room[:, sl] = np.minimum(
                    room[:, sl], np.minimum(t - p.support.lo, p.support.hi - t)
                )
            elif p.support == "ordered" and p.size > 1:
                gap = np.diff(t, axis=1)
                left = np.concatenate([gap[:, :1], gap], axis=1)
                right = np.concatenate([gap, gap[:, -1:]], axis=1)
                room[:, sl] = np.minimum(room[:, sl], np.minimum(left, right))
        h = FD_STEP * room
        # steps whose theta +- h are exact: (up - down) is then 2 h whatever the
        # order the fast-math kernel evaluates it in (near 1 - 1e-8, rounding
        # theta + h alone would be a 1e-3 relative error in the step)
        return np.ascontiguousarray((theta + h) - theta)

    def initial_point(self):
        return np.zeros(self.size) if self._initial is None else self._initial.copy()

    def _serial_pass(self, n_rows, n_draws, with_grad):
        """Whether a pass over ``n_rows`` rows for ``n_draws`` draws runs on the
        calling thread: decided by its work, as for :class:`GLM`, estimated as one
        multiply-add per parameter and per data column for each (row, draw) call,
        2P + 1 calls with finite differences (waking the thread pool costs more
        than a small model's whole pass: the earnings regression fitted 7 times
        slower in parallel). Same chunks, same bits either way."""
        P = self.theta_size
        calls = (
            2 * P + 1
            if with_grad and self.gradients["loglik"] == "finite differences"
            else 1
        )
        work = n_rows * n_draws * calls * (P + self.data.shape[1])
        return _serial(n_rows, CHUNK_ROWS, work)

    def _evaluate(self, theta, rows, scale, with_grad):
        # the kernels index theta by P and data by the row indices unchecked
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        if theta.ndim != 2 or theta.shape[1] != self.theta_size:
            raise ValueError(
                f"theta must have shape (S, {self.theta_size}) for this model's "
                f"{self.theta_size} parameter entries; got shape {theta.shape}."
            )
        S, P = theta.shape
        lp = np.zeros(S)
        g = np.zeros((S, P))
        steps = self._fd_steps(theta) if with_grad and self._fd else np.zeros((S, 0))
        if self._has_loglik:
            if rows is not None:
                rows = np.ascontiguousarray(rows, dtype=np.int64)
                if rows.ndim != 1 or rows.shape[0] == 0:
                    raise ValueError("rows must be a non-empty 1-D array of indices.")
                if rows.min() < 0 or rows.max() >= self.n_rows:
                    raise ValueError(
                        f"row indices must lie in [0, {self.n_rows}); got "
                        f"{rows.min()} to {rows.max()}."
                    )
            ll, gl = self._loglik_pass(theta, rows, steps, with_grad)
            lp += scale * ll
            if with_grad:
                g += scale * gl
        if self._has_prior:
            lp_p = np.empty(S)
            g_p = np.zeros((S, P if with_grad else 0))
            self.kernels.prior_all(theta, self.hyper, steps, with_grad, lp_p, g_p)
            lp += lp_p
            if with_grad:
                g += g_p
        return lp, g

    def _loglik_pass(self, theta, rows, steps, with_grad):
        """sum_n loglik(theta[s], data[n]) over ``rows`` (None: all) and its gradient
        (S, P), per-chunk partials added in chunk order."""
        if rows is None:
            rows = self._all_rows
        kernel = (
            self.kernels.loglik_pass_serial
            if self._serial_pass(rows.shape[0], theta.shape[0], with_grad)
            else self.kernels.loglik_pass
        )
        ll, gl = kernel(
            theta, self.data, rows, self.hyper, steps, CHUNK_ROWS, with_grad
        )
        return ll.sum(axis=0), gl.sum(axis=0)

    def log_joint(self, theta, rows, scale):
        return self._evaluate(theta, rows, scale, True)

    def log_joint_value(self, theta, rows, scale):
        return self._evaluate(theta, rows, scale, False)[0]


def _probe_linear(functions, forms, eta, y, phi, hyper):
    """:func:`_probe_widths` for a likelihood of eta: ``phi`` and ``hyper`` in front
    of guard entries, ``out`` (K,) too; the value and d/d eta must be floats."""
    K = phi.shape[0]
    where = (
        f"phi has K={K} entries (the params after coef and intercept), hyper has "
        f"H={hyper.shape[0]}"
    )

    def args(role, fill):
        a = [eta, y, _guarded(phi, fill)[1]]
        return a + [_guarded(hyper, fill)[1]] if forms[role] == "hyper" else a

    results = {"loglik": [], "loglik_grad": []}
    for fill in (np.nan, 0.5):
        with np.errstate(all="ignore"):
            value = functions["loglik"](*args("loglik", fill))
        results["loglik"].append(
            [_value_of("loglik", value, "the log-likelihood of one row")]
        )
        g = functions["loglik_grad"]
        if g is None:
            continue
        out_buf, out = _guarded(np.zeros(K), fill)
        out[:] = 0.0
        with np.errstate(all="ignore"):
            d = g(*args("loglik_grad", fill), out)
        d = _value_of("loglik_grad", d, "d loglik / d eta; d / d phi go into out")
        tail = out_buf[K:]
        if not np.array_equal(tail, np.full(tail.shape, fill), equal_nan=True):
            raise ValueError(
                f"loglik_grad writes past the end of out, which has K={K} entries "
                "(one per entry of phi, the params after coef and intercept)."
            )
        results["loglik_grad"].append([d, *out])
    for role, (a, b) in ((r, v) for r, v in results.items() if v):
        if not all(map(_same_value, a, b)):
            raise ValueError(
                f"{role} reads past the end of its inputs: {where}. Check the "
                "indices it uses against the params and hyper."
            )


class LinearModel(NumbaModel):
    """A model whose rows enter through a linear predictor: a user's likelihood of
    ``eta``, fitted with the built-in :class:`GLM`'s tiled kernel.

    ``log p = logprior(theta) + sum_n loglik(eta_n, y_n, phi)`` with ``eta_n = X[n] .
    coef + intercept``. ``theta = [coef (D), intercept, the entries of params]``
    (constrained; ``model.slices`` places each); ``phi`` is the part of theta after
    coef and intercept (a scale, a dispersion; empty for logistic or Poisson
    regression). fastvi writes a kernel module around the functions, as for
    :class:`NumbaModel`, that computes eta for a tile of rows and all draws at once
    with the GLM's register-blocked products, calls ``loglik`` (compiled into the
    kernel) for each eta, and forms the gradient in coef as X^T (d loglik / d eta)
    with the same products. Written with :mod:`fastvi.sgvi.vmath`'s functions and
    without other parameters, the function is vectorized across rows.

    Parameters
    ----------
    X : (N, D) array
    y : (N,) array
        One number per row (a response; 0/1, a count, a real).
    loglik : numba function ``(eta, y, phi) -> float`` or ``(eta, y, phi, hyper)``
        Log-likelihood of one row given its linear predictor; ``phi`` is a 1-D view
        of the draw's other parameters.
    loglik_grad : numba function ``(eta, y, phi, out) -> float`` or ``(eta, y,
        phi, hyper, out)``, or None
        Returns d loglik / d eta and writes d loglik / d phi into ``out`` (zeroed,
        one entry per entry of phi). None: central finite differences in eta and
        phi inside the kernel (2 K + 3 calls of ``loglik`` per row and draw).
    params : sequence of Param
        The other parameters (phi), e.g. ``[Param("sigma", (), "positive")]``.
    fit_intercept : bool
    logprior, logprior_grad, hyper, initial_point, finite_differences,
    check_gradient
        As for :class:`NumbaModel`; ``logprior`` sees the whole theta (None: flat).
    minibatch : bool
        Keep X row-major only, for minibatch steps (no transposed copy).
    """

    def __init__(
        self,
        X,
        y,
        loglik,
        loglik_grad=None,
        *,
        params=(),
        fit_intercept=True,
        logprior=None,
        logprior_grad=None,
        hyper=None,
        minibatch=False,
        initial_point=None,
        finite_differences=True,
        check_gradient=True,
    ):
        from ..kernels.tiles import tile_rows
        from .models import _tile_rows_for

        X = np.ascontiguousarray(X, dtype=np.float64)
        y = np.ascontiguousarray(y, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0 or y.shape != (X.shape[0],):
            raise ValueError(
                "X must be a non-empty 2-D array (N, D) and y 1-D with one entry "
                f"per row; got X {X.shape}, y {y.shape}."
            )
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
            raise ValueError("X and y must be finite (no NaN or infinity).")
        if isinstance(params, (str, Param)):
            raise TypeError("params must be a list of Param, e.g. [Param('sigma')].")
        N, D = X.shape
        self.params = (
            [Param("coef", D)]
            + ([Param("intercept")] if fit_intercept else [])
            + [p if isinstance(p, Param) else Param(*p) for p in params]
        )
        Model.__init__(self)
        if loglik is None:
            raise ValueError("LinearModel needs loglik(eta, y, phi).")
        functions = {
            "loglik": loglik,
            "loglik_grad": loglik_grad,
            "logprior": logprior,
            "logprior_grad": logprior_grad,
        }
        self.n_rows, self.n_features = N, D
        self.fit_intercept = bool(fit_intercept)
        self.X, self.y, self.data = X, y, None
        forms = self._setup(functions, hyper, finite_differences, initial_point, True)
        self._phi = slice(D + self.fit_intercept, self.theta_size)
        self.tile = _tile_rows_for(D, 8)
        self._gather = np.empty((0, D, _tile_rows_for(D, 8, gather=True)))
        self._Xtiles = np.empty((0, D, self.tile))
        if not minibatch:
            self._Xtiles = np.empty(((N + self.tile - 1) // self.tile, D, self.tile))
            tile_rows(X, self.tile, self._Xtiles)
        z0 = self.initial_point()
        z1 = z0 + 0.5 * np.sin(1.0 + np.arange(self.size))
        thetas = self.constrain(np.stack([z0, z1]))
        eta = thetas[:, :D] @ X[[0, N - 1]].T  # (2 draws, 2 rows)
        if self.fit_intercept:
            eta += thetas[:, D : D + 1]
        phi = thetas[:, self._phi]
        probe = _bounds_checked(functions, self._sizes)
        _probe_linear(probe, forms, eta[0, 0], y[0], phi[0], self.hyper)
        prior = dict(probe, loglik=None, loglik_grad=None)
        _probe_widths(prior, forms, thetas[0], None, self.hyper)
        if check_gradient:
            self._check_gradients(prior, forms, thetas)
            self._check_linear_gradient(probe, forms, eta, phi, thetas)
        self.kernels = build_kernels(functions, forms, linear=True)
        # every row, for a function that takes an index from y: eta at the start
        eta_all = X @ thetas[0, :D] + (thetas[0, D] if self.fit_intercept else 0.0)
        with_grad = forms["loglik_grad"] not in (None, "fd")
        with np.errstate(all="ignore"):
            n = self.kernels.probe_linear_rows(
                eta_all, y, phi[0], self.hyper, with_grad
            )
        if n >= 0:
            inputs = (eta_all[n], y[n], phi[0], self.hyper)
            where = f"at data row {n}"
            K = phi.shape[1]
            _raise_at_row(functions, forms, where, self._sizes, inputs, K)

    def _sizes(self, role):
        """What the model's function of ``role`` may index, for messages."""
        if not role.startswith("loglik"):
            return super()._sizes(role)
        K = self.theta_size - self._phi.start
        text = (
            f"phi has K={K} entries (the params after coef and intercept), hyper "
            f"has H={self.hyper.shape[0]}"
        )
        return text + (f", out has K={K} (d / d phi)" if role.endswith("_grad") else "")

    def _check_linear_gradient(self, functions, forms, eta, phi, thetas):
        """loglik_grad (d/d eta, d/d phi) against central differences of loglik at
        the first and last rows, at the initial point and beside it."""
        g = functions["loglik_grad"]
        if g is None:
            return
        f = functions["loglik"]
        h_phi = self._fd_steps(thetas)[:, self._phi]
        names = ["eta"] + _theta_names(self.params)[self._phi]
        extra = [self.hyper] if forms["loglik"] == "hyper" else []
        extra_g = [self.hyper] if forms["loglik_grad"] == "hyper" else []
        for i in range(2):
            for j, n in enumerate((0, self.n_rows - 1)):
                x = np.concatenate([[eta[i, j]], phi[i]])
                h = np.concatenate([[FD_STEP * max(abs(x[0]), 1.0)], h_phi[i]])
                yv = self.y[n]

                def value(v, yv=yv):
                    return float(f(v[0], yv, v[1:].copy(), *extra))

                with np.errstate(all="ignore"):
                    f0 = value(x)
                    out = np.zeros(x.shape[0] - 1)
                    ana = np.concatenate(
                        [[g(x[0], yv, x[1:].copy(), *extra_g, out)], out]
                    )
                    num = np.empty_like(ana)
                    for p in range(x.shape[0]):
                        up, down = x.copy(), x.copy()
                        up[p] += h[p]
                        down[p] -= h[p]
                        num[p] = (value(up) - value(down)) / (up[p] - down[p])
                if not (np.isfinite(f0) and np.all(np.isfinite(num))):
                    continue
                tol = 1e-3 * (np.abs(ana) + np.abs(num)) + 1e-6 * (
                    1.0 + abs(f0) + np.abs(num).max()
                )
                bad = np.flatnonzero(~(np.abs(ana - num) <= tol))
                if bad.size:
                    p = bad[0]
                    raise ValueError(
                        f"loglik_grad disagrees with central finite differences of "
                        f"loglik in {names[p]}: {ana[p]!r} vs {num[p]!r} at eta = "
                        f"{x[0]!r}, y = {yv!r} (data row {n}). Check loglik_grad; "
                        "if loglik is not smooth there, pass check_gradient=False."
                    )

    def _loglik_pass(self, theta, rows, steps, with_grad):
        from .models import CHUNK_ROWS as GLM_CHUNK
        from .models import _serial

        S, P = theta.shape
        D = self.n_features
        W = np.ascontiguousarray(theta[:, :D])
        b = theta[:, D].copy() if self.fit_intercept else np.zeros(S)
        phi = np.ascontiguousarray(theta[:, self._phi])
        step = np.ascontiguousarray(
            steps[:, self._phi] if steps.shape[1] else phi[:, :0]
        )
        if rows is None and self._Xtiles.shape[0] == 0:
            rows = self._all_rows  # a full pass of a model kept row-major
        tiles = self._Xtiles if rows is None else self._gather
        tile = tiles.shape[2]
        chunk = max(1, GLM_CHUNK // tile) * tile
        M = self.n_rows if rows is None else rows.shape[0]
        K = phi.shape[1]
        fd = with_grad and self.gradients["loglik"] == "finite differences"
        work = M * S * (D + 1 + (2 * K + 3 if fd else 1))
        k = self.kernels
        kernel = k.linear_pass_serial if _serial(M, chunk, work) else k.linear_pass
        ll, gw, gb, gphi = kernel(
            self.X,
            tiles,
            self.y,
            np.empty(0, np.int64) if rows is None else rows,
            W,
            b,
            phi,
            self.hyper,
            step,
            chunk,
            with_grad,
        )
        g = np.zeros((S, P))
        if with_grad:
            g[:, :D] = gw.sum(axis=0)
            if self.fit_intercept:
                g[:, D] = gb.sum(axis=0)
            g[:, self._phi] = gphi.sum(axis=0)
        return ll.sum(axis=0), g
