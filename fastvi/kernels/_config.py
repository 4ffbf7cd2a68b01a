"""The one place that decides how fastvi's kernels are compiled and where they are cached.

Every kernel takes its decorator from here; no other module passes numba options.

* Caching: compiled machine code is stored in fastvi's own cache folder,
  :func:`cache_dir`, never inside the installed package, so uninstalling leaves
  nothing behind and a read-only installation still caches. A second process loads
  the kernels instead of compiling them again. A cached kernel is reused only while
  its own file *and* every module of ``fastvi/kernels`` are unchanged
  (:func:`kernels_digest`): its machine code holds the helpers it inlined from the
  shared modules, which numba's own check (a hash of the kernel's file) does not see.
* ``FASTMATH`` allows reassociation (so reductions over the contiguous point axis
  vectorize), contraction to FMA and reciprocal approximations, but *not* ``nnan`` or
  ``ninf``: NaN and inf checks inside kernels must keep working.
* ``error_model="numpy"``: division by zero gives inf/NaN like NumPy instead of raising,
  which keeps the division out of the vectorized loops' way.
* ``forceinline``: every kernel is inlined into its callers (LLVM ``alwaysinline``).
  A helper left as a call ran, in the process that compiled it, as its own compiled
  copy, and in a process that loaded the caller from the cache as the copy linked
  into the caller's machine code; the two were optimized apart and could sum in
  different orders (last bits of 'diag' mixtures and LDA differed between a cold and
  a warm cache). Inlined, both processes run the caller's one code; it was also as
  fast or faster (``bench/gmm_kernel_cpu.py``, ``bench/sgvi_kernel_cpu.py``).
"""

import functools
import getpass
import hashlib
import os
import sys
import tempfile
import types

import numba
from numba.core import caching
from numba.core import types as numba_types
from numba.extending import intrinsic

FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})

_COMMON = dict(
    fastmath=set(FASTMATH), error_model="numpy", nogil=True, forceinline=True
)


def cache_dir():
    """The folder that holds fastvi's compiled kernels.

    ``FASTVI_CACHE_DIR`` when set, else ``NUMBA_CACHE_DIR`` when set, else the
    platform's user cache folder: ``$XDG_CACHE_HOME/fastvi`` or ``~/.cache/fastvi``
    on Linux, ``~/Library/Caches/fastvi`` on macOS, ``%LOCALAPPDATA%\\fastvi\\Cache``
    on Windows.
    """
    for var in ("FASTVI_CACHE_DIR", "NUMBA_CACHE_DIR"):
        path = os.environ.get(var)
        if path:
            return os.path.abspath(os.path.expanduser(path))
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
        return os.path.join(base, "fastvi", "Cache")
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "Caches", "fastvi")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return os.path.join(base, "fastvi")


def fallback_cache_dir():
    """Where kernels are cached when :func:`cache_dir` cannot be written."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (some containers)
        user = "anonymous"
    return os.path.join(tempfile.gettempdir(), f"fastvi-cache-{user}")


@functools.cache
def kernels_digest(folder=None):
    """A hash of every module of ``folder`` (default: ``fastvi/kernels``), read once.

    Part of every cached kernel's freshness stamp: a kernel's compiled code holds
    what it inlined from the shared modules (``_math``, ``tiles``, ``_config``; the
    generated models' kernels also from ``sgvi``), so a change to any of them must
    recompile it. numba's check hashes only the kernel's own file: after an upgrade
    or a ``git pull`` that changed ``tiles.py`` alone, the mixture's cached kernels
    would have kept the old code.
    """
    folder = folder or os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    try:
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                h.update(name.encode())
                with open(os.path.join(folder, name), "rb") as fh:
                    h.update(hashlib.sha256(fh.read()).digest())
    except OSError:  # no readable sources: a frozen application, whose numba stamp
        return "no sources"  # is its executable's (a new build recompiles)
    return h.hexdigest()


class _Locator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """numba cache locator: a kernel of ``dir/file.py`` is cached in
    ``cache_dir()/file-folder_<hash of dir>`` (numba's own naming of sub-folders),
    or under :func:`fallback_cache_dir` when that is not writable; its stamp adds
    :func:`kernels_digest` to numba's hash of the file."""

    _base = staticmethod(cache_dir)

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        sub = self.get_suitable_cache_subpath(py_file)
        self._cache_path = os.path.join(self._base(), sub)

    def get_cache_path(self):
        return self._cache_path

    def get_source_stamp(self):
        return super().get_source_stamp(), kernels_digest()


class _FallbackLocator(_Locator):
    _base = staticmethod(fallback_cache_dir)


class _CacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_Locator, _FallbackLocator]


class _FunctionCache(caching.FunctionCache):
    _impl_class = _CacheImpl


def _cached(dispatcher):
    # what ``cache=True`` does (Dispatcher.enable_caching), with fastvi's locator
    dispatcher._cache = _FunctionCache(dispatcher.py_func)
    return dispatcher


def jit(func=None, **overrides):
    """Serial kernel decorator (``@jit``)."""
    opts = dict(_COMMON, **overrides)
    if func is None:
        return lambda f: _cached(numba.njit(**opts)(f))
    return _cached(numba.njit(**opts)(func))


def pjit(func=None, **overrides):
    """Parallel kernel decorator (``@pjit``): like :func:`jit` with ``parallel=True``."""
    return jit(func, parallel=True, **overrides)


def twins(func):
    """``(parallel, serial)`` kernels compiled from the one Python function ``func``.

    ``prange`` is a plain ``range`` in the serial kernel, which runs on the calling
    thread: the same chunks, the same bits, for inputs too small to be worth waking
    the thread pool. The serial one is compiled from a copy of ``func`` named
    ``<name>_serial``, so the two have separate entries in numba's cache (which keys
    on the qualified name, not on the compile options).
    """
    serial = types.FunctionType(
        func.__code__,
        func.__globals__,
        func.__name__ + "_serial",
        func.__defaults__,
        func.__closure__,
    )
    serial.__qualname__ = func.__qualname__ + "_serial"
    serial.__module__ = func.__module__
    serial.__doc__ = (
        f":func:`{func.__name__}` on the calling thread (same chunks, same bits), "
        "for inputs too small to be worth waking the thread pool."
    )
    return pjit(func), jit(serial)


def jit_source(source, name, namespace):
    """The function ``name`` defined by the Python ``source`` (executed in a copy
    of ``namespace``), compiled to be inlined into the kernels that call it.

    For microkernels generated as text (``tiles.maha_unrolled8``): numba inlines
    them into their callers before compiling (``inline="always"``), so they run as
    the callers' own code under the callers' options and are cached with them (a
    function without a source file has no cache of its own). A change of the
    generator changes its module, which the kernels' cache check covers
    (:func:`kernels_digest`).
    """
    scope = dict(namespace)
    scope.setdefault("__name__", __name__)
    exec(compile(source, f"<fastvi generated {name}>", "exec"), scope)
    return numba.njit(**_COMMON, inline="always")(scope[name])


@functools.lru_cache(maxsize=64)
def bounds_checked(dispatcher):
    """A copy of a user's numba function compiled with bounds checks.

    For the probes that call a user's model functions before any kernel does
    (``fastvi.sgvi.NumbaModel``): an index past an array's end, however far, raises
    ``IndexError`` in the copy instead of reading or writing another object's
    memory (which can crash the process). The numba functions it calls by a global
    name or from its closure are replaced by checked copies too, recursively; one
    reached otherwise (an attribute of a module, say) keeps its own options. The
    user's options are kept except ``cache`` (numba's cache does not key on
    ``boundscheck``, so a cached copy could be the unchecked code) and
    ``parallel`` (an exception inside a parallel loop surfaces as a SystemError).
    """
    return _checked_copy(dispatcher, {})


def _checked_copy(dispatcher, done):
    from numba.core.registry import CPUDispatcher

    if dispatcher in done:  # recursion
        return done[dispatcher]
    py = dispatcher.py_func

    def swap(value):
        return _checked_copy(value, done) if isinstance(value, CPUDispatcher) else value

    closure = py.__closure__
    if closure is not None:
        closure = tuple(types.CellType(swap(c.cell_contents)) for c in closure)
    scope = dict(py.__globals__)
    func = types.FunctionType(py.__code__, scope, py.__name__, py.__defaults__, closure)
    func.__qualname__ = py.__qualname__
    options = {
        k: v
        for k, v in dispatcher.targetoptions.items()
        if k not in ("cache", "nopython", "parallel")
    }
    options["boundscheck"] = True
    done[dispatcher] = copy = numba.njit(**options)(func)
    # globals are read when the copy compiles (its first call), after this
    for name in py.__code__.co_names:
        if name in scope:
            scope[name] = swap(scope[name])
    return copy


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorize the calling kernel with 512-bit registers, and spill them
    to aligned stack slots.

    LLVM's tuning for Intel's AVX-512 cores prefers 256-bit vectors (``prefer-256-bit``)
    for auto-vectorized loops, which halves the FMA rate on cores with two 512-bit FMA
    units. Calling this at the top of a jitted function sets the function attribute
    ``"prefer-vector-width"="512"`` on it. Harmless without AVX-512 (LLVM then keeps
    256-bit vectors).

    It also sets ``"stackrealign"`` (on this function only: a ``prange`` body is a
    function of its own). numba's functions do not realign the stack, so LLVM
    spills 512-bit registers with unaligned moves to slots whose alignment depends
    on where the caller's stack happens to be: most of them then straddle two cache
    lines, and the kernel's speed depends on the calling thread's stack depth
    (README, "Aligned spills, and a straight-line Mahalanobis sweep"). Realigned,
    the cost is one ``and`` at the kernel's entry.
    """

    def codegen(context, builder, signature, args):
        # llvmlite only knows keyword attributes; a string attribute is written as is
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        set.add(builder.function.attributes, '"stackrealign"')
        return context.get_dummy_value()

    return numba_types.none(), codegen
