"""What a fit leaves behind in the process: thread settings, random generators, files."""

import errno
import os
import stat
import threading
import warnings

import numpy as np
import pytest

from fastvi._cavi import Monitor, monitoring
from fastvi.lda import LatentDirichletAllocation
from fastvi.mixture import BayesianGaussianMixture
from fastvi.persist import atomic_write, save
from fastvi.sgvi.engine import SGVI
from fastvi.sgvi.estimators import (
    BayesianLogisticRegression,
    BayesianPoissonRegression,
)

WAIT = 120  # seconds: a deadlock guard only, never reached when the test passes


# ------------------------------------------------------------------- threads
def blas_limits():
    from threadpoolctl import threadpool_info

    return [
        lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"
    ]


@pytest.fixture
def blas_at_two():
    """BLAS at two threads for the test (so that a leaked limit of one shows)."""
    from threadpoolctl import threadpool_limits

    if not blas_limits():
        pytest.skip("no BLAS library loaded")
    with threadpool_limits(limits=2, user_api="blas"):
        if min(blas_limits()) < 2:
            pytest.skip("BLAS cannot use two threads here")
        yield blas_limits()


@pytest.mark.parametrize("first_out", ["first in", "last in"])
def test_overlapping_fits_in_threads_restore_blas_and_numba(blas_at_two, first_out):
    """Fit A starts, fit B starts while A runs, then one of them ends while the
    other still runs (events make the order, no sleeps). BLAS stays at one thread
    until both have ended and is then as before; numba's thread count is restored
    in each thread."""
    import numba

    X = np.random.default_rng(0).normal(size=(300, 2))
    a_inside, b_inside = threading.Event(), threading.Event()
    a_done, b_done = threading.Event(), threading.Event()
    seen, errors = {}, []

    def hold(name, n_iter):
        if n_iter != 1:
            return
        if name == "a":
            a_inside.set()
            assert b_inside.wait(WAIT)
            if first_out == "last in":
                assert b_done.wait(WAIT)  # B ends while A runs
        else:
            b_inside.set()
            if first_out == "first in":
                assert a_done.wait(WAIT)  # A ends while B runs
        seen[name + " inside"] = blas_limits()

    def run(name, done):
        try:
            numba.set_num_threads(1)  # this thread's count (numba's is per thread)
            # converges at the second round (tol): no warning (catch_warnings is
            # not thread-safe)
            est = BayesianGaussianMixture(
                n_components=2, max_iter=3, tol=1e10, random_state=0, n_jobs=2
            )
            monitor = Monitor(callback=lambda m, n, b, c: hold(name, n))
            with monitoring(est, monitor):
                est.fit(X)
            seen[name + " numba"] = numba.get_num_threads()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            a_inside.set()
            b_inside.set()
        finally:
            done.set()

    a = threading.Thread(target=run, args=("a", a_done))
    b = threading.Thread(target=run, args=("b", b_done))
    a.start()
    assert a_inside.wait(WAIT)
    b.start()
    a.join(WAIT)
    b.join(WAIT)
    assert not errors, errors
    assert seen["a inside"] == seen["b inside"] == [1] * len(blas_at_two)
    assert seen["a numba"] == seen["b numba"] == 1
    assert blas_limits() == blas_at_two


def test_nested_and_failing_thread_limits_restore(blas_at_two):
    import numba

    from fastvi._threads import thread_limits

    before = numba.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with thread_limits(1):
            with thread_limits(2):
                assert blas_limits() == [1] * len(blas_at_two)
            assert numba.get_num_threads() == 1
            assert blas_limits() == [1] * len(blas_at_two)
            raise RuntimeError("inside")
    assert numba.get_num_threads() == before
    assert blas_limits() == blas_at_two


# ------------------------------------------------- random generators of failed fits
class Forced(Exception):
    pass


def fail_after_draws(monkeypatch, cls, method, generator):
    """Make ``cls.method`` raise, after checking the fit has drawn from
    ``generator`` by then (so the test cannot pass by not drawing at all)."""
    start = state_of(generator)

    def forced(*args, **kwargs):
        assert not same_state(state_of(generator), start), "nothing drawn yet"
        raise Forced

    monkeypatch.setattr(cls, method, forced)


def state_of(generator):
    return generator.get_state(legacy=False)


def same_state(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


def gmm_data():
    return np.random.default_rng(1).normal(size=(200, 2))


def counts():
    return np.random.default_rng(2).poisson(1.0, size=(40, 12)).astype(float)


def regression_data(kind):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(100, 3))
    y = (X[:, 0] > 0).astype(int) if kind == "logistic" else rng.poisson(1.0, 100)
    return X, y


def npy_rows(tmp_path):
    from fastvi.batch.io import NpyRows

    np.save(tmp_path / "x.npy", gmm_data())
    return NpyRows(tmp_path / "x.npy")


# (name, make estimator, fit, class and method made to raise mid-fit)
CASES = [
    (
        "gmm fit",
        lambda rs: BayesianGaussianMixture(n_components=2, random_state=rs),
        lambda est, tmp: est.fit(gmm_data()),
        (BayesianGaussianMixture, "_cavi_step"),
    ),
    (
        "gmm fit out of core",
        lambda rs: BayesianGaussianMixture(
            n_components=2, init_params="random", random_state=rs
        ),
        lambda est, tmp: est.fit(npy_rows(tmp)),
        (BayesianGaussianMixture, "_cavi_step"),
    ),
    (
        "gmm fit_predict",
        lambda rs: BayesianGaussianMixture(n_components=2, random_state=rs),
        lambda est, tmp: est.fit_predict(gmm_data()),
        (BayesianGaussianMixture, "_cavi_step"),
    ),
    (
        "gmm partial_fit",
        lambda rs: BayesianGaussianMixture(n_components=2, random_state=rs),
        lambda est, tmp: est.partial_fit(gmm_data()),
        (BayesianGaussianMixture, "_svi_update"),
    ),
    (
        "gmm online fit",
        lambda rs: BayesianGaussianMixture(
            n_components=2, learning_method="online", random_state=rs
        ),
        lambda est, tmp: est.fit(gmm_data()),
        (BayesianGaussianMixture, "_svi_update"),
    ),
    (
        "lda fit",
        lambda rs: LatentDirichletAllocation(n_components=3, random_state=rs),
        lambda est, tmp: est.fit(counts()),
        (LatentDirichletAllocation, "_sgd_epoch"),
    ),
    (
        "lda partial_fit",
        lambda rs: LatentDirichletAllocation(n_components=3, random_state=rs),
        lambda est, tmp: est.partial_fit(counts()),
        (LatentDirichletAllocation, "_store_topics"),
    ),
    (
        "BayesianLogisticRegression fit",
        lambda rs: BayesianLogisticRegression(random_state=rs),
        lambda est, tmp: est.fit(*regression_data("logistic")),
        (SGVI, "run"),
    ),
    (
        "BayesianPoissonRegression fit",
        lambda rs: BayesianPoissonRegression(random_state=rs),
        lambda est, tmp: est.fit(*regression_data("poisson")),
        (SGVI, "run"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_failed_fit_leaves_a_passed_random_state_where_it_was(
    tmp_path, monkeypatch, case
):
    name, make, fit, (cls, method) = case
    generator = np.random.RandomState(5)
    est = make(generator)
    before = state_of(generator)
    fail_after_draws(monkeypatch, cls, method, generator)
    with pytest.raises(Forced):
        fit(est, tmp_path)
    assert same_state(state_of(generator), before)
    assert est.random_state is generator
    assert set(vars(est)) == set(vars(make(generator)))


def test_a_failed_lda_partial_fit_leaves_its_own_random_state_where_it_was(
    monkeypatch,
):
    est = LatentDirichletAllocation(n_components=3, random_state=0)
    est.partial_fit(counts())
    before = state_of(est.random_state_)
    fail_after_draws(
        monkeypatch, LatentDirichletAllocation, "_store_topics", est.random_state_
    )
    with pytest.raises(Forced):
        est.partial_fit(counts())
    assert same_state(state_of(est.random_state_), before)


# ---------------------------------------------------------------------- files
def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def test_atomic_write_respects_the_umask_and_keeps_the_mode(tmp_path, umask):
    target = tmp_path / "f.bin"
    with atomic_write(target) as fh:
        fh.write(b"one")
    assert mode(target) == 0o644
    os.chmod(target, 0o604)
    with atomic_write(target) as fh:
        fh.write(b"two")
    assert (mode(target), target.read_bytes()) == (0o604, b"two")
    umask(0o077)
    save(BayesianGaussianMixture(), tmp_path / "m.npz")
    assert mode(tmp_path / "m.npz") == 0o600
    umask(0o002)
    save(BayesianGaussianMixture(), tmp_path / "g.npz")
    assert mode(tmp_path / "g.npz") == 0o664
    assert sorted(os.listdir(tmp_path)) == ["f.bin", "g.npz", "m.npz"]


def test_write_errors_name_the_file(tmp_path, monkeypatch):
    target = tmp_path / "model.npz"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def body_write_fails():
        with atomic_write(target) as fh:
            fh.write(b"x")
            raise full

    with pytest.raises(OSError, match=f"writing {target}: No space left") as info:
        body_write_fails()
    assert info.value.errno == errno.ENOSPC

    def no_fsync(fd):
        raise full

    monkeypatch.setattr(os, "fsync", no_fsync)
    with pytest.raises(OSError, match=f"writing {target}: No space left"):
        save(BayesianGaussianMixture(), target)
    monkeypatch.undo()

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "t"))

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(PermissionError, match=f"writing {target}: Permission"):
        save(BayesianGaussianMixture(), target)
    monkeypatch.undo()
    # an error about another file (an input the body reads) keeps its own message
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        with atomic_write(target):
            open(tmp_path / "missing.npy", "rb")
    assert os.listdir(tmp_path) == []


def test_fits_in_two_threads_at_once_equal_the_fits_one_after_the_other():
    # the mixture, LDA and logistic kernels are serial and release the GIL: two fits
    # may run them at the same moment (numba's workqueue layer could not run two
    # parallel kernels at once), and each gets the bits it gets alone
    from fastvi.conjugate import VBLogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30_000, 6)) + rng.integers(0, 4, size=(30_000, 1))
    counts = rng.poisson(0.4, size=(3_000, 200)).astype(float)
    y = X[:, 0] + rng.normal(size=len(X)) > 1.5
    fits = {
        "gmm": lambda: (
            BayesianGaussianMixture(
                n_components=4, max_iter=15, random_state=0, n_jobs=2
            )
            .fit(X)
            .means_
        ),
        "lda": lambda: (
            LatentDirichletAllocation(
                n_components=5, max_iter=4, random_state=0, n_jobs=2
            )
            .fit(counts)
            .components_
        ),
        "logit": lambda: VBLogisticRegression(n_jobs=2).fit(X, y).coef_,
        # a fresh thread allocates its scratch arrays elsewhere (another malloc arena);
        # a kernel whose vectorized and scalar paths round differently would show it
        "lda-scvb0": lambda: (
            LatentDirichletAllocation(
                n_components=5,
                learning_method="scvb0",
                max_iter=2,
                random_state=0,
                n_jobs=2,
            )
            .fit(counts)
            .components_
        ),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = {name: fit() for name, fit in fits.items()}
        together = {}
        start = threading.Barrier(len(fits))

        def run(name):
            start.wait()
            for _ in range(2):
                together[name] = fits[name]()

        threads = [threading.Thread(target=run, args=(name,)) for name in fits]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for name in fits:
        np.testing.assert_array_equal(together[name], alone[name], err_msg=name)
