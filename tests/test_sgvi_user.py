"""User-written SGVI models: numba-jitted per-row functions (fastvi.sgvi.NumbaModel).

The user's functions live in a module file written to a temporary directory, as a
user's would; the kernels fastvi generates around them go to a temporary
FASTVI_CACHE_DIR. A fresh subprocess compiles and fits, a second one must load the
compiled kernels from numba's cache.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats

from fastvi.sgvi import SGVI, Model, NumbaModel, Param, WindowConvergence

from . import reference_sgvi as ref

NO_STOP = WindowConvergence(tol=0)
NU = 4.0

# Robust (Student-t, nu = 4) linear regression: the README's user-model example.
USER_MODULE = textwrap.dedent(
    """
    import math

    import numba

    NU = 4.0
    CONST = math.lgamma((NU + 1) / 2) - math.lgamma(NU / 2) - 0.5 * math.log(NU * math.pi)


    # theta = [coef_0 .. coef_{D-1}, intercept, sigma]; row = [x_0 .. x_{D-1}, y]
    @numba.njit(cache=True)
    def loglik(theta, row):
        D = row.shape[0] - 1
        eta = theta[D]
        for d in range(D):
            eta += theta[d] * row[d]
        sigma = theta[D + 1]
        r = (row[D] - eta) / sigma
        return CONST - math.log(sigma) - 0.5 * (NU + 1) * math.log1p(r * r / NU)


    @numba.njit(cache=True)
    def loglik_grad(theta, row, out):
        D = row.shape[0] - 1
        eta = theta[D]
        for d in range(D):
            eta += theta[d] * row[d]
        sigma = theta[D + 1]
        r = (row[D] - eta) / sigma
        w = (NU + 1) * r / (sigma * (NU + r * r))  # d loglik / d eta
        for d in range(D):
            out[d] = w * row[d]
        out[D] = w
        out[D + 1] = -1.0 / sigma + w * r


    # coef ~ N(0, 1), intercept ~ N(0, 10^2), sigma ~ half-normal(1) (unnormalized)
    @numba.njit(cache=True)
    def logprior(theta):
        D = theta.shape[0] - 2
        lp = -0.5 * theta[D] ** 2 / 100.0 - 0.5 * theta[D + 1] ** 2
        for d in range(D):
            lp -= 0.5 * theta[d] ** 2
        return lp


    @numba.njit(cache=True)
    def logprior_grad(theta, out):
        D = theta.shape[0] - 2
        for d in range(D):
            out[d] = -theta[d]
        out[D] = -theta[D] / 100.0
        out[D + 1] = -theta[D + 1]


    # a log density without a gradient: independent N(1, 0.5^2) and N(-2, 2^2)
    @numba.njit(cache=True)
    def gauss2(theta):
        a = (theta[0] - 1.0) / 0.5
        b = (theta[1] + 2.0) / 2.0
        return -0.5 * (a * a + b * b)


    # not finite at theta[0] <= 0
    @numba.njit(cache=True)
    def log_first(theta):
        if theta[0] <= 0.0:
            return -math.inf
        return math.log(theta[0]) - theta[0]
    """
)

FIT_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("error")
    import numpy as np
    import robust_user_model as m
    from fastvi.sgvi import SGVI, NumbaModel, Param, WindowConvergence
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1200, 3))
    y = X @ np.array([1.0, -0.5, 0.0]) + 0.3 + 0.5 * rng.standard_t(4.0, 1200)
    model = NumbaModel(
        [Param("coef", (3,)), Param("intercept"), Param("sigma", (), "positive")],
        loglik=m.loglik, loglik_grad=m.loglik_grad,
        logprior=m.logprior, logprior_grad=m.logprior_grad,
        data=np.column_stack([X, y]),
    )
    engine = SGVI(model, n_samples=4)
    res = engine.run(seed=0, max_iter=250, convergence=WindowConvergence(tol=0))
    post = engine.posterior(res.state, 2000, seed=1)
    k = model.kernels
    fns = (k.loglik_pass, k.loglik_pass_serial, k.prior_all)
    print(json.dumps({
        "params": res.state.params.tolist(),
        "coef": post.mean["coef"].tolist(),
        "sigma": float(post.mean["sigma"]),
        "hits": sum(sum(f.stats.cache_hits.values()) for f in fns),
        "misses": sum(sum(f.stats.cache_misses.values()) for f in fns),
    }))
    """
)


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user module, imported; kernels cached in a temporary directory."""
    root = tmp_path_factory.mktemp("user_model")
    (root / "robust_user_model.py").write_text(USER_MODULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTVI_CACHE_DIR", str(root / "cache"))
        mp.syspath_prepend(str(root))
        import robust_user_model

        yield robust_user_model
        sys.modules.pop("robust_user_model", None)


def _robust_data(N=1500, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 2))
    y = X @ np.array([1.0, -0.5]) + 0.3 + 0.5 * rng.standard_t(NU, N)
    return X, y


def _robust_model(user, X, y):
    return NumbaModel(
        [
            Param("coef", (X.shape[1],)),
            Param("intercept"),
            Param("sigma", (), "positive"),
        ],
        loglik=user.loglik,
        loglik_grad=user.loglik_grad,
        logprior=user.logprior,
        logprior_grad=user.logprior_grad,
        data=np.column_stack([X, y]),
    )


def test_user_model_density_and_gradient(user):
    X, y = _robust_data()
    model = _robust_model(user, X, y)
    assert model.has_gradient and model.n_rows == 1500
    rng = np.random.default_rng(1)
    z = 0.3 * rng.standard_normal((3, model.size))
    theta = model.constrain(z)
    lp, g = model.log_density(z)
    rows = np.array([5, 900, 17, 1499, 0, 3, 250, 251, 1000, 42])

    def reference(s, rows=None, scale=1.0):
        Xr, yr = (X, y) if rows is None else (X[rows], y[rows])
        return ref.robust_regression_log_joint(Xr, yr, theta[s], NU, scale) + z[s, 3]

    lp_rows, _ = model.log_density(z, rows)
    for s in range(3):
        assert_allclose(lp[s], reference(s), rtol=1e-11)
        # a minibatch: the sum over its rows, scaled by N / B
        assert_allclose(lp_rows[s], reference(s, rows, 150.0), rtol=1e-11)
    num = np.empty_like(g)
    for j in range(model.size):
        e = np.zeros(model.size)
        e[j] = 1e-6
        num[:, j] = (model.log_density(z + e)[0] - model.log_density(z - e)[0]) / 2e-6
    assert_allclose(g, num, rtol=1e-5, atol=1e-5 * np.abs(num).max())
    # the generated kernels: parallel and serial agree bitwise, one row works
    k = model.kernels
    args = (
        np.ascontiguousarray(theta),
        model.data,
        np.arange(1500),
        model.hyper,
        np.zeros((3, 0)),
        64,
        True,
    )
    for a, b in zip(k.loglik_pass(*args), k.loglik_pass_serial(*args)):
        assert_array_equal(a, b)
    ll1, g1 = k.loglik_pass(
        theta, model.data, np.array([7]), model.hyper, np.zeros((3, 0)), 64, True
    )
    assert ll1.shape == (1, 3) and g1.shape == (1, 3, 4)
    w = theta[:, :2] @ X[7] + theta[:, 2]
    assert_allclose(ll1[0], stats.t.logpdf(y[7], NU, w, theta[:, 3]), rtol=1e-12)
    # all rows in another order, in parallel chunks: the same sums
    assert_allclose(
        model.log_density(z, np.arange(1500)[::-1].copy())[0], lp, rtol=1e-12
    )


def test_user_model_fit_is_thread_invariant_and_recovers_the_truth(user):
    X, y = _robust_data()
    model = _robust_model(user, X, y)
    fits = []
    for n_jobs, batch in ((1, None), (2, None), (1, 700), (2, 700)):
        engine = SGVI(model, n_samples=4, batch_size=batch, n_jobs=n_jobs)
        fits.append(engine.run(seed=0, max_iter=40, convergence=NO_STOP))
    assert_array_equal(fits[0].state.params, fits[1].state.params)
    assert_array_equal(fits[2].state.params, fits[3].state.params)
    engine = SGVI(model, n_samples=4)
    state = engine.run(
        max_iter=260, convergence=NO_STOP, init_state=fits[0].state
    ).state
    mean = model.constrain(engine.family.mean(state.params)[None])[0]
    assert_allclose(mean[:3], [1.0, -0.5, 0.3], atol=0.1)
    assert 0.35 < mean[3] < 0.65


def test_user_density_without_gradient_fits_by_score(user):
    model = NumbaModel(
        [Param("a"), Param("b")], logprior=user.gauss2, finite_differences=False
    )
    assert not model.has_gradient and model.n_rows == 0
    assert model.gradients == {"loglik": None, "logprior": None}
    with pytest.raises(ValueError, match="estimator='score'"):
        SGVI(model)
    engine = SGVI(model, estimator="score", n_samples=16)
    res = engine.run(seed=0, max_iter=1500, convergence=NO_STOP)
    assert_allclose(engine.family.mean(res.state.params), [1.0, -2.0], atol=0.15)
    assert_allclose(engine.family.std(res.state.params), [0.5, 2.0], rtol=0.15)


def test_functions_defined_in_a_function_work_uncached(tmp_path, monkeypatch):
    import numba

    monkeypatch.setenv("FASTVI_CACHE_DIR", str(tmp_path))

    def make(center):
        @numba.njit
        def logprior(theta):
            return -0.5 * (theta[0] - center) ** 2

        @numba.njit
        def logprior_grad(theta, out):
            out[0] = -(theta[0] - center)

        return logprior, logprior_grad

    means = []
    for center in (3.0, -1.0):  # same source, different closures: two modules
        lp, grad = make(center)
        model = NumbaModel([Param("x")], logprior=lp, logprior_grad=grad)
        engine = SGVI(model, n_samples=4)
        res = engine.run(seed=0, max_iter=400, convergence=NO_STOP)
        means.append(engine.family.mean(res.state.params)[0])
        # compiled in a directory of this process, not in the cache directory
        assert not str(model.kernels.__file__).startswith(str(tmp_path))
    assert_allclose(means, [3.0, -1.0], atol=0.05)


def test_user_model_bad_input(user):
    X, y = _robust_data(N=20)
    params = [Param("coef", (2,)), Param("intercept"), Param("sigma", (), "positive")]

    def not_jitted(theta, row):
        return 0.0

    with pytest.raises(TypeError, match="loglik must be a numba.njit function"):
        NumbaModel(params, loglik=not_jitted, data=np.column_stack([X, y]))
    bad = np.column_stack([X, y])
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        NumbaModel(params, loglik=user.loglik, data=bad)
    with pytest.raises(ValueError, match="needs data"):
        NumbaModel(params, loglik=user.loglik)
    with pytest.raises(ValueError, match="2-D"):
        NumbaModel(params, loglik=user.loglik, data=y)
    with pytest.raises(ValueError, match="loglik, logprior or both"):
        NumbaModel(params)
    model = NumbaModel([Param("x")], logprior=user.log_first, finite_differences=False)
    with pytest.raises(ValueError, match="not finite at the initial point"):
        SGVI(model, estimator="score", n_samples=2).init(0)
    # a start where it is finite works
    init = SGVI(model, estimator="score", n_samples=2).init(0, init_params=[1.0])
    assert init.step == 0


def _run_fit(root, env):
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", FIT_SCRIPT],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_user_model_compiles_in_a_fresh_process_and_is_cached(tmp_path):
    (tmp_path / "robust_user_model.py").write_text(USER_MODULE)
    env = dict(os.environ)
    env["FASTVI_CACHE_DIR"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    first = _run_fit(tmp_path, env)
    assert first["misses"] >= 2 and first["hits"] == 0  # compiled here
    assert_allclose(first["coef"], [1.0, -0.5, 0.0], atol=0.15)
    assert 0.35 < first["sigma"] < 0.7 and math.isfinite(first["sigma"])
    generated = list((tmp_path / "cache" / "sgvi_user_kernels").glob("*.py"))
    assert len(generated) == 1
    second = _run_fit(tmp_path, env)
    assert second["misses"] == 0 and second["hits"] >= 2  # loaded from the cache
    assert second["params"] == first["params"]


def test_widths_that_disagree_are_clear_errors_before_any_kernel(user):
    """A model whose params or data columns do not match what its functions index
    would read the next draw's or row's values in the kernels (a NaN at the start,
    or a silently wrong fit): the widths are probed first."""
    X, y = _robust_data(N=20)
    good = [Param("coef", (2,)), Param("intercept"), Param("sigma", (), "positive")]
    # one column too many: the functions take coef of width 3 and read sigma past P
    wide = np.column_stack([X, X[:, 0], y])
    with pytest.raises(ValueError, match=r"loglik reads past.*P=4.*K=4"):
        NumbaModel(good, loglik=user.loglik, data=wide)
    # a parameter too few, with the gradient: the same
    short = [Param("coef", (1,)), Param("intercept"), Param("sigma", (), "positive")]
    with pytest.raises(ValueError, match=r"loglik reads past.*P=3.*K=3"):
        NumbaModel(
            short, loglik=user.loglik, loglik_grad=user.loglik_grad, data=np.c_[X, y]
        )
    # the widths that agree pass the probe
    model = NumbaModel(
        good, loglik=user.loglik, loglik_grad=user.loglik_grad, data=np.c_[X, y]
    )
    # theta of another width, and row indices out of range, never reach a kernel
    with pytest.raises(ValueError, match=r"shape \(S, 4\)"):
        model.log_joint(np.ones((2, 5)), None, 1.0)
    with pytest.raises(ValueError, match=r"row indices must lie in \[0, 20\)"):
        model.log_joint(np.ones((2, 4)), np.array([3, 20]), 1.0)
    with pytest.raises(ValueError, match=r"row indices must lie in \[0, 20\)"):
        model.log_joint(np.ones((2, 4)), np.array([-1, 2]), 1.0)


def test_user_functions_that_write_past_out_or_return_arrays():
    import numba

    @numba.njit
    def logprior(theta):
        return -0.5 * (theta[0] ** 2 + theta[1] ** 2)

    @numba.njit
    def grad_past_out(theta, out):
        for i in range(3):  # P is 2
            out[i] = -theta[min(i, 1)]

    @numba.njit
    def returns_array(theta):
        return -0.5 * theta * theta

    @numba.njit
    def reads_past_theta_in_grad(theta, out):
        out[0] = -theta[0]
        out[1] = -theta[1] + 0.0 * theta[2]

    two = [Param("x", 2)]
    with pytest.raises(
        ValueError,
        match=r"logprior_grad reads or writes past the end of its .* out has P=2",
    ):
        NumbaModel(two, logprior=logprior, logprior_grad=grad_past_out)
    with pytest.raises(TypeError, match=r"logprior must return one float.*\(2,\)"):
        NumbaModel(two, logprior=returns_array)
    with pytest.raises(ValueError, match="logprior_grad reads or writes past the end"):
        NumbaModel(two, logprior=logprior, logprior_grad=reads_past_theta_in_grad)


class _ScalarModel(Model):
    """log_joint returns a scalar lp (or a gradient of the wrong shape)."""

    def __init__(self, bad):
        self.params = [Param("x", 2)]
        self.bad = bad
        super().__init__()

    def log_joint(self, theta, rows, scale):
        lp = -0.5 * np.sum(theta**2, axis=1)
        g = -theta
        if self.bad == "scalar":
            return float(lp.sum()), g
        if self.bad == "grad":
            return lp, g[:, :1]
        if self.bad == "flat-grad":
            return lp, g.sum(axis=1)
        return lp

    def log_joint_value(self, theta, rows, scale):
        return float(-0.5 * np.sum(theta**2))


@pytest.mark.parametrize("S", [1, 3])
def test_model_outputs_of_the_wrong_shape_are_clear_errors(S):
    z = np.zeros((S, 2))
    for bad, match in [
        (
            "scalar",
            rf"log_joint must return the log density of each of the {S} "
            rf"draws, shape \({S},\); it returned a scalar",
        ),
        ("grad", rf"gradient .* shape \({S}, 2\); it returned shape \({S}, 1\)"),
        ("flat-grad", rf"shape \({S}, 2\); it returned shape \({S},\)"),
        ("pair", "must return a pair"),
    ]:
        with pytest.raises(ValueError, match=match):
            _ScalarModel(bad).log_density(z)
    with pytest.raises(ValueError, match=r"log_joint_value must return .*a scalar"):
        _ScalarModel("scalar").log_density(z, grad=False)
    # and through the engine, at the first evaluation
    with pytest.raises(ValueError, match="it returned a scalar"):
        SGVI(_ScalarModel("scalar")).init(0)


def test_the_pass_runs_in_parallel_by_work_not_by_rows(user, monkeypatch):
    """A small model on more rows than one chunk runs on the calling thread (waking
    the pool cost more than its whole pass); the same bits either way."""
    import numba

    from fastvi.sgvi.models import SERIAL_WORK
    from fastvi.sgvi.user import CHUNK_ROWS

    X, y = _robust_data(N=4 * CHUNK_ROWS)
    params = [Param("coef", (2,)), Param("intercept"), Param("sigma", (), "positive")]
    model = NumbaModel(
        params, loglik=user.loglik, loglik_grad=user.loglik_grad, data=np.c_[X, y]
    )
    N, P, K = model.n_rows, model.size, model.data.shape[1]
    k = model.kernels
    calls = []

    def spy(name):
        kernel = getattr(k, name)

        def wrapped(*args):
            calls.append(name)
            return kernel(*args)

        return wrapped

    monkeypatch.setattr(k, "loglik_pass", spy("loglik_pass"))
    monkeypatch.setattr(k, "loglik_pass_serial", spy("loglik_pass_serial"))
    theta = np.tile([1.0, -0.5, 0.3, 0.5], (8, 1))
    assert N * 8 * (P + K) < SERIAL_WORK  # a small model: 8 draws of 2048 rows
    small = model.log_joint(theta, None, 1.0)
    assert calls == ["loglik_pass_serial"]
    S = SERIAL_WORK // (N * (P + K)) + 1  # enough draws to be worth the threads
    big = model.log_joint(np.tile(theta[:1], (S, 1)), None, 1.0)
    expected = "loglik_pass" if numba.get_num_threads() > 1 else "loglik_pass_serial"
    assert calls[1] == expected
    assert_array_equal(big[0][:8], small[0])
    assert_array_equal(big[1][:8], small[1])
    # a minibatch of one chunk or less is always serial
    model.log_joint(np.tile(theta[:1], (S, 1)), np.arange(CHUNK_ROWS), 1.0)
    assert calls[2] == "loglik_pass_serial"
