"""Monitors reach a fit's driver without touching the estimator (fastvi._cavi)."""

import contextlib
import io
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from fastvi._cavi import Monitor, monitor_of, monitoring
from fastvi.batch.jobs import Progress, fit_cavi, fit_lda, fit_mixture, fit_sgvi
from fastvi.conjugate import UnivariateGaussian, VBLinearRegression
from fastvi.lda import LatentDirichletAllocation
from fastvi.mixture import BayesianGaussianMixture
from fastvi.sgvi.estimators import BayesianLogisticRegression


def _quietly(fn, *args, **kwargs):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*args, **kwargs)


def _names(est):
    return sorted(vars(est))


def test_monitor_calls_back_only_for_its_estimator_and_only_inside_the_block():
    X = np.random.default_rng(0).normal(size=(50, 1))
    watched, other = UnivariateGaussian(tol=0.0, max_iter=3), UnivariateGaussian()
    seen = []
    monitor = Monitor(callback=lambda est, n, bound, change: seen.append((est, n)))
    with monitoring(watched, monitor) as handed:
        assert handed is monitor and monitor_of(watched) is monitor
        assert monitor_of(other).callback is None
        _quietly(other.fit, X)
        assert seen == []
        _quietly(watched.fit, X)
    assert [n for _, n in seen] == [1, 2, 3]
    assert all(est is watched for est, _ in seen)
    assert monitor_of(watched).callback is None
    _quietly(watched.fit, X)  # after the block: no more calls
    assert len(seen) == 3


def test_a_raising_callback_stops_the_fit_and_leaves_the_estimator_as_it_was():
    X = np.random.default_rng(1).normal(size=(50, 1))
    est = UnivariateGaussian(tol=0.0, max_iter=5)

    def stop(est, n, bound, change):
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), monitoring(est, Monitor(callback=stop)):
        est.fit(X)
    assert _names(est) == _names(UnivariateGaussian())


@pytest.mark.parametrize("verbose", [0, 2])
def test_jobs_leave_nothing_transient_on_the_estimator(tmp_path, verbose):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 2))
    y = X @ [1.0, -2.0] + rng.normal(size=300)
    progress = Progress(total=4, n_rows=300, quiet=True)

    def job(make, fit, *args):
        # the names of a plain, silent fit: verbose clocks and job hooks add none
        plain = _quietly(make().set_params(verbose=0).fit, *args)
        checkpoint = str(tmp_path / f"{type(plain).__name__}.npz")
        jobbed = _quietly(fit, make(), *args, progress=progress, checkpoint=checkpoint)
        assert _names(jobbed) == _names(plain)
        resumed = _quietly(
            fit, make(), *args, progress=progress, checkpoint=checkpoint, resume=True
        )
        assert _names(resumed) == _names(plain)
        assert _names(_quietly(make().fit, *args)) == _names(plain)

    job(
        lambda: UnivariateGaussian(max_iter=4, verbose=verbose),
        fit_cavi,
        X[:, :1],
    )
    job(lambda: VBLinearRegression(max_iter=4, verbose=verbose), fit_cavi, X, y)
    job(
        lambda: BayesianGaussianMixture(
            n_components=2, max_iter=4, random_state=0, n_jobs=1, verbose=verbose
        ),
        fit_mixture,
        X,
    )
    job(
        lambda: BayesianLogisticRegression(
            max_iter=40, random_state=0, verbose=verbose
        ),
        fit_sgvi,
        X,
        y > 0,
    )
    counts = rng.poisson(1.0, size=(40, 30)).astype(float)
    job(
        lambda: LatentDirichletAllocation(
            n_components=3, max_iter=3, evaluate_every=1, random_state=0
        ),
        fit_lda,
        counts,
    )
