"""Saying when kernels compile, and compiling them ahead of time (``fastvi warmup``).

numba compiles a kernel the first time it is called and caches the machine code on
disk (:func:`fastvi.kernels._config.cache_dir`); later processes load it. The first
fit on a machine therefore takes seconds longer than the next, and that must not be
silent. :func:`compiling` wraps the public methods that call kernels: before the first
compile of a kernel group on this machine it logs one line on the ``fastvi`` logger
(INFO), and prints it on stderr too when the estimator's ``verbose`` is set; the
command line shows the logger's lines. After a fit the group is marked as compiled in
the cache folder, so the line is not repeated.

Code numba has just compiled and the same code loaded from its cache could differ in the
last bits of floating-point results: a helper kernel that was not inlined ran as its own
compiled copy in the compiling process and as the caller's linked copy in a process that
loaded the caller (``kernels/_config.py``, where every kernel is now inlined for this
reason; ``tests/test_package.py`` checks both processes give the same bits). Batch jobs
still compile in a child process first (:func:`compile_in_child`) and run on cached
kernels, so that numba code that fastvi does not decorate (NumPy functions numba
implements) cannot bring the difference back into a job that is resumed later.

The mark's name is a hash of everything numba's cache depends on: the kernel sources
and the folder they are installed in, the numba, llvmlite and Python versions, and the
processor. A new fastvi, another installation of it, a new numba or another machine
(a shared home folder) gets the line again, as it recompiles.
"""

import contextlib
import functools
import hashlib
import logging
import os
import sys
import time

__all__ = [
    "GROUPS",
    "WARMUPS",
    "announces",
    "compile_in_child",
    "compiling",
    "is_compiled",
    "mark_compiled",
    "warmup",
]

log = logging.getLogger("fastvi")

# kernel group -> (what the user reads, kernel modules it compiles, CPU seconds of
# the first fit beyond a warm one, rounded up, on the 2-core development machine:
# bench/compile_time.py, README "Compile time")
GROUPS = {
    "mixture": ("mixture", ("gmm",), 5),
    "lda": ("topic-model", ("lda",), 7),
    "conjugate": ("regression", ("conjugate",), 4),
    "sgvi": ("SGVI", ("sgvi",), 6),
}

_announced = set()  # groups announced (or found compiled) in this process


def _stamp(group):
    """A hash naming what the compiled code of ``group`` depends on."""
    import llvmlite
    import numba
    from llvmlite import binding

    from .kernels import _config

    h = hashlib.sha256()
    h.update(f"{numba.__version__} {llvmlite.__version__} {sys.version}".encode())
    h.update(binding.get_host_cpu_name().encode())
    h.update(binding.get_host_cpu_features().flatten().encode())
    folder = os.path.dirname(os.path.abspath(_config.__file__))
    # numba's cache is per source folder too: another installation compiles anew
    h.update(folder.encode())
    # a change to any kernel module recompiles every kernel (kernels_digest)
    h.update(f"{group} {_config.kernels_digest()}".encode())
    return h.hexdigest()[:24]


def _mark_path(group):
    from .kernels._config import cache_dir

    return os.path.join(cache_dir(), "compiled", f"{group}-{_stamp(group)}")


def is_compiled(group):
    """Whether this machine's cache holds ``group``'s kernels (a fit has run)."""
    try:
        return os.path.exists(_mark_path(group))
    except OSError:
        return False


def mark_compiled(group, seconds=None):
    """Record that ``group``'s kernels are in the cache (best effort)."""
    try:
        path = _mark_path(group)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write("" if seconds is None else f"{seconds:.2f}\n")
    except OSError:  # a read-only cache folder: the line shows again next time
        pass


def _cpu():
    return time.process_time()


@contextlib.contextmanager
def compiling(group, verbose=False, *, complete=True):
    """Announce ``group``'s first compile on this machine around the body.

    ``complete``: the body compiles everything a fit needs (a fit, not a predict), so
    on success the group is marked compiled.
    """
    if group in _announced:
        yield
        return
    _announced.add(group)
    if is_compiled(group):
        yield
        return
    label, _, seconds = GROUPS[group]
    message = (
        f"compiling fastvi's {label} kernels for this machine "
        f"(once, ~{seconds} s of CPU; `fastvi warmup` does it ahead of time)"
    )
    log.info(message)
    if verbose:
        print(message, file=sys.stderr, flush=True)
    start = _cpu()
    try:
        yield
    except BaseException:
        _announced.discard(group)
        raise
    if complete:
        mark_compiled(group, _cpu() - start)
    else:
        _announced.discard(group)


def announces(group, *, complete=True):
    """Method decorator: run the method inside :func:`compiling` for ``group``."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if group in _announced:
                return method(self, *args, **kwargs)
            with compiling(group, getattr(self, "verbose", 0), complete=complete):
                return method(self, *args, **kwargs)

        return wrapper

    return decorate


# ------------------------------------------------------------------------ warmup
def _warm_mixture(rng):
    from .mixture import BayesianGaussianMixture

    X = rng.normal(size=(300, 3))
    # read-only data (a memory-mapped .npy, as the command line reads it) is another
    # numba signature: compile that too
    frozen = X.copy()
    frozen.setflags(write=False)
    for cov in ("full", "tied", "diag", "spherical"):
        for data in (X, frozen):
            BayesianGaussianMixture(
                n_components=3, covariance_type=cov, max_iter=3, random_state=0
            ).fit(data).score_samples(data)
        # compute_dtype='float32': separate float32 kernels (always writable rows)
        BayesianGaussianMixture(
            n_components=3,
            covariance_type=cov,
            max_iter=3,
            random_state=0,
            compute_dtype="float32",
        ).fit(X).score_samples(X)


def _warm_lda(rng):
    from .lda import LatentDirichletAllocation

    X = rng.poisson(0.5, size=(60, 40)).astype(float)
    for method in ("batch", "online", "scvb0"):
        LatentDirichletAllocation(
            n_components=3,
            max_iter=2,
            learning_method=method,
            batch_size=20,
            evaluate_every=1,
            random_state=0,
        ).fit(X).perplexity(X)


def _warm_conjugate(rng):
    from .conjugate import UnivariateGaussian, VBLinearRegression, VBLogisticRegression

    X = rng.normal(size=(200, 3))
    frozen = X.copy()
    frozen.setflags(write=False)  # read-only data: another numba signature
    y = X[:, 0] + rng.normal(size=200) > 0
    for data in (X, frozen):
        UnivariateGaussian().fit(data[:, 0])
        VBLinearRegression().fit(data, data @ [1.0, -1.0, 0.5] + rng.normal(size=200))
        VBLogisticRegression().fit(data, y).predict_proba(data)
        VBLogisticRegression().fit(data, rng.integers(0, 3, size=200))


def _warm_sgvi(rng):
    from .sgvi.estimators import BayesianLogisticRegression, BayesianPoissonRegression

    X = rng.normal(size=(200, 3))
    y = X[:, 0] + rng.normal(size=200) > 0
    counts = rng.poisson(1.0, size=200)
    for dtype in (float, "float32"):
        Xd = X.astype(dtype)
        BayesianLogisticRegression(max_iter=20, random_state=0).fit(Xd, y)
        BayesianPoissonRegression(max_iter=20, random_state=0).fit(Xd, counts)


# model names the command line accepts -> (kernel group, warm-up fits)
WARMUPS = {
    "gmm": ("mixture", _warm_mixture),
    "lda": ("lda", _warm_lda),
    "conjugate": ("conjugate", _warm_conjugate),
    "sgvi": ("sgvi", _warm_sgvi),
}


def warmup(models=None, progress=None):
    """Compile (or load from the cache) the kernels of ``models`` (default: all).

    ``progress(name, None)`` is called before each and ``progress(name, seconds)``
    after it. Returns ``{name: seconds}`` of wall time.
    """
    import warnings

    import numpy as np

    names = list(WARMUPS) if not models else list(models)
    unknown = [m for m in names if m not in WARMUPS]
    if unknown:
        raise ValueError(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(WARMUPS)}"
        )
    seconds = {}
    for name in names:
        group, fits = WARMUPS[name]
        if progress is not None:
            progress(name, None)
        start = time.perf_counter()
        cpu = _cpu()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _announced.add(group)  # warmup reports its own progress
            fits(np.random.default_rng(0))
        mark_compiled(group, _cpu() - cpu)
        seconds[name] = time.perf_counter() - start
        if progress is not None:
            progress(name, seconds[name])
    return seconds


# the module an estimator lives in -> the warm-up that compiles its kernels
_WARMUP_OF_MODULE = {
    "fastvi.mixture": "gmm",
    "fastvi.lda": "lda",
    "fastvi.conjugate": "conjugate",
    "fastvi.sgvi.estimators": "sgvi",
}


def compile_in_child(estimator_class):
    """Compile the kernels of ``estimator_class`` in a child process, if needed.

    numba's freshly compiled code and its cached code may round differently (module
    documentation), so a batch job must not run on code this process compiled: the
    child (``fastvi warmup NAME``) compiles the group's kernels into the cache and
    this process then loads them. Returns True when the group is compiled (or was
    already); False when the child failed (the job then compiles in-process, with
    the usual notice, and says so on the ``fastvi`` logger).
    """
    import subprocess

    name = _WARMUP_OF_MODULE.get(estimator_class.__module__)
    if name is None:
        return False
    group = WARMUPS[name][0]
    if is_compiled(group):
        return True
    label, _, seconds = GROUPS[group]
    log.info(
        f"compiling fastvi's {label} kernels for this machine in a child process "
        f"(once, ~{seconds} s of CPU or more; `fastvi warmup` does it ahead of time)"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fastvi", "warmup", name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.returncode or not is_compiled(group):
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no message"]
        log.warning(
            f"compiling in a child process failed ({tail[0]}); compiling in this "
            "one: a resumed job may then differ in the last bits"
        )
        return False
    _announced.add(group)
    return True
