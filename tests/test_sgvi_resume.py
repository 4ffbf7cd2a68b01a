"""SGVI runs resume from a snapshot of their run state, bitwise (SGVI.run's
``monitor`` and ``resume``)."""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from fastvi.sgvi import (
    GLM,
    SGVI,
    EightSchools,
    RobbinsMonro,
    SGVIRun,
    StanAdaptive,
    StanConvergence,
    WindowConvergence,
)
from fastvi.sgvi.diagnostics import ELBODivergenceWarning, PSISWarning

EIGHT_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
EIGHT_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def _glm(family="logistic", N=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 3))
    eta = X @ [0.8, -0.5, 0.3] - 0.2
    if family == "logistic":
        y = (rng.random(N) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    else:
        y = rng.poisson(np.exp(eta)).astype(float)
    return GLM(X, y, family)


# engine settings, run settings: the window rule with its decays, drift test and
# iterate averaging; Stan's rule; minibatches; QMC draws; the fixed-draw fit that
# hands over to stochastic steps (eight schools); Stan's adaptive step sizes
CASES = {
    "window": (lambda: _glm(), {"method": "sgd"}, {}),
    "fullrank-minibatch": (
        lambda: _glm("poisson"),
        {"family": "fullrank", "batch_size": 64, "n_samples": 2},
        {},
    ),
    "qmc-reparam": (
        lambda: _glm(),
        {"qmc": True, "n_samples": 4, "estimator": "reparam", "method": "sgd"},
        {},
    ),
    "stan-rule": (lambda: _glm(), {"method": "sgd"}, {"rule": StanConvergence}),
    "robbins-monro": (lambda: _glm(), {"optimizer": RobbinsMonro(0.05)}, {}),
    "stan-adaptive": (lambda: _glm(), {"optimizer": StanAdaptive()}, {}),
    "fixed+sgd": (lambda: EightSchools(EIGHT_Y, EIGHT_SIGMA), {}, {}),
}


def _rule(run_kw):
    make = run_kw.get("rule")
    return None if make is None else make(eval_elbo=50)


def _run(engine, run_kw, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PSISWarning)
        warnings.simplefilter("ignore", ELBODivergenceWarning)
        return engine.run(
            seed=5,
            max_iter=run_kw.get("max_iter", 1500),
            convergence=_rule(run_kw),
            **kwargs,
        )


def assert_same_result(a, b):
    assert a.n_iter == b.n_iter and a.converged == b.converged
    assert a.method == b.method
    assert_array_equal(a.elbo, b.elbo)
    assert a.psis_khat == b.psis_khat or (
        np.isnan(a.psis_khat) and np.isnan(b.psis_khat)
    )
    for field in a.state._fields:
        x, y = getattr(a.state, field), getattr(b.state, field)
        if field == "opt_state":
            for u, v in zip(x, y):
                assert_array_equal(u, v)
        elif field == "frame":
            assert (x is None) == (y is None)
            if x is not None:
                assert_array_equal(x.a, y.a)
                assert_array_equal(x.B, y.B)
        else:
            assert_array_equal(x, y, field)


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_resumed_from_any_snapshot_ends_bitwise_as_the_whole_run(case):
    make_model, engine_kw, run_kw = CASES[case]
    model = make_model()
    snapshots, fixed_calls = {}, []

    def monitor(n, elbo, snapshot):
        assert elbo.shape == (n,) and not elbo.flags.writeable
        if snapshot is None:  # a fixed-draw iteration: no run state to resume
            fixed_calls.append(n)
        elif n in wanted or n % 97 == 0:
            snapshots[n] = snapshot()

    whole = _run(SGVI(model, **engine_kw), run_kw)
    wanted = {1, 2, 99, 100, 101, 200, 201, whole.n_iter - 1, whole.n_iter}
    watched = _run(SGVI(model, **engine_kw), run_kw, monitor=monitor)
    assert_same_result(whole, watched)  # watching changes nothing
    assert whole.converged or case == "stan-adaptive"
    if "rule" not in run_kw and whole.converged:  # through the step-size decays
        assert whole.state.lr_scale < 1.0
    if case == "fixed+sgd":  # the fixed-draw fit handed over: resumed as 'fixed+sgd'
        assert whole.method == "fixed+sgd"
    assert fixed_calls == list(range(1, len(fixed_calls) + 1))
    first_step = len(fixed_calls) + 1
    assert whole.n_iter in snapshots and min(snapshots) == first_step
    for n, snap in sorted(snapshots.items()):
        assert isinstance(snap, SGVIRun) and snap.elbo.shape == (n,)
        assert snap.converged == (n == whole.n_iter and whole.converged)
        # a fresh engine (its QMC cache empty) and a fresh rule
        resumed = _run(SGVI(model, **engine_kw), run_kw, resume=snap)
        assert_same_result(whole, resumed)
        # the snapshot is a copy: the resumed run left it as it was
        assert snap.elbo.shape == (n,)


def test_resume_refuses_what_is_not_a_run_of_this_q():
    model = _glm()
    snaps = []
    SGVI(model, method="sgd").run(
        seed=0,
        max_iter=30,
        psis_draws=0,
        monitor=lambda n, elbo, snapshot: snaps.append(snapshot()),
    )
    snap = snaps[-1]
    with pytest.raises(TypeError, match="resume must be an SGVIRun"):
        SGVI(model).run(resume=snap.state)
    with pytest.raises(ValueError, match="parameters, this engine's"):
        SGVI(model, family="fullrank").run(resume=snap, max_iter=30)
    with pytest.raises(ValueError, match="more than max_iter=20"):
        SGVI(model).run(resume=snap, max_iter=20)
    with pytest.raises(ValueError, match="not one of a StanConvergence"):
        SGVI(model).run(resume=snap, max_iter=30, convergence=StanConvergence())
    bad = snap._replace(rule={**snap.rule, "_sum": np.zeros(3)})
    with pytest.raises(ValueError, match="does not fit q"):
        SGVI(model).run(resume=bad, max_iter=30)
    with pytest.raises(ValueError, match="with other settings"):
        SGVI(model).run(resume=snap, max_iter=30, convergence=WindowConvergence(0.1))
    bad = snap._replace(rule={**snap.rule, "observe": None})
    with pytest.raises(ValueError, match="not one of a WindowConvergence"):
        SGVI(model).run(resume=bad, max_iter=30)


def test_a_fixed_draw_fit_has_no_snapshot_and_reruns_to_the_same_bits():
    """The fixed-draw fit (a few deterministic BFGS iterations) is not resumable
    midway: a run stopped there starts again, and ends with the same bits."""
    model = _glm()
    calls = []
    first = _run(SGVI(model), {}, monitor=lambda n, e, snap: calls.append((n, snap)))
    assert first.method == "fixed" and first.converged
    assert calls == [(n, None) for n in range(1, first.n_iter + 1)]

    def stop(n, elbo, snapshot):
        if n == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(SGVI(model), {}, monitor=stop)
    assert_same_result(first, _run(SGVI(model), {}))
