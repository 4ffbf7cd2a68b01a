"""LinearModel: a user's likelihood of the linear predictor, in the GLM's tiled kernel.

Checked against the built-in GLM kernel (the same likelihood: the same log density and
gradient to rounding), a slow NumPy oracle per model (logistic, Poisson, Student-t
with a scale, negative binomial through finite differences), the per-row NumbaModel
path, and across thread counts (bitwise). The user's functions live in a module file
in a temporary directory, as a user's would; the kernels go to a temporary
FASTVI_CACHE_DIR.
"""

import math
import sys
import textwrap

import numba
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import special, stats

from fastvi.sgvi import GLM, SGVI, LinearModel, NumbaModel, Param, vmath
from fastvi.sgvi.priors import Flat

NU = 4.0
T_CONST = math.lgamma((NU + 1) / 2) - math.lgamma(NU / 2) - 0.5 * math.log(NU * math.pi)

USER_MODULE = textwrap.dedent(
    """
    import math

    import numba

    from fastvi.sgvi import vmath


    @numba.njit(cache=True)
    def logistic(eta, y, phi):
        return y * eta - vmath.softplus(eta)


    @numba.njit(cache=True)
    def logistic_grad(eta, y, phi, out):
        return y - vmath.sigmoid(eta)


    @numba.njit(cache=True)
    def poisson(eta, y, phi):
        return y * eta - vmath.exp(eta)


    @numba.njit(cache=True)
    def poisson_grad(eta, y, phi, out):
        return y - vmath.exp(eta)


    # Student-t(nu) errors with scale phi[0]; hyper = [nu, normalizing constant]
    @numba.njit(cache=True)
    def student(eta, y, phi, hyper):
        nu = hyper[0]
        r = (y - eta) / phi[0]
        return hyper[1] - vmath.log(phi[0]) - 0.5 * (nu + 1) * vmath.log1p(r * r / nu)


    @numba.njit(cache=True)
    def student_grad(eta, y, phi, hyper, out):
        nu = hyper[0]
        r = (y - eta) / phi[0]
        w = (nu + 1) * r / (phi[0] * (nu + r * r))
        out[0] = -1.0 / phi[0] + w * r
        return w


    # negative binomial, mean exp(eta), dispersion phi[0] (no gradient: digamma)
    @numba.njit(cache=True)
    def negbin(eta, y, phi):
        a = phi[0]
        log_den = math.log(a + math.exp(eta))
        return (
            math.lgamma(y + a) - math.lgamma(a) - math.lgamma(y + 1.0)
            + a * (math.log(a) - log_den) + y * (eta - log_den)
        )


    # normal errors with scale phi[0] around eta + phi[1] (two other parameters)
    @numba.njit(cache=True)
    def gauss2(eta, y, phi):
        r = (y - eta - phi[1]) / phi[0]
        return -0.5 * r * r - vmath.log(phi[0])


    @numba.njit(cache=True)
    def gauss2_grad(eta, y, phi, out):
        r = (y - eta - phi[1]) / phi[0]
        out[0] = (r * r - 1.0) / phi[0]
        out[1] = r / phi[0]
        return r / phi[0]


    # coef ~ N(0, 1), intercept ~ N(0, 10^2), the rest ~ N(0, 1)
    @numba.njit(cache=True)
    def prior(theta, hyper):
        D = int(hyper[2])
        lp = -0.5 * (theta[D] / 10.0) ** 2
        for d in range(theta.shape[0]):
            if d != D:
                lp -= 0.5 * theta[d] ** 2
        return lp


    @numba.njit(cache=True)
    def prior_grad(theta, hyper, out):
        D = int(hyper[2])
        for d in range(theta.shape[0]):
            out[d] = -theta[d]
        out[D] = -theta[D] / 100.0


    @numba.njit(cache=True)
    def reads_past_phi(eta, y, phi):
        return y * eta - phi[1]


    # a Gaussian likelihood whose precision hyper[y] is picked by the count y
    @numba.njit(cache=True)
    def indexed_by_y(eta, y, phi, hyper):
        return -0.5 * hyper[int(y)] * (y - eta) ** 2


    @numba.njit(cache=True)
    def writes_past_out(eta, y, phi, out):
        out[1] = 1.0
        return y - eta


    @numba.njit(cache=True)
    def returns_array(eta, y, phi):
        return phi * eta


    @numba.njit(cache=True)
    def wrong_grad(eta, y, phi, out):
        return y + vmath.sigmoid(eta)


    @numba.njit(cache=True)
    def two_args(eta, y):
        return eta * y


    # the Student-t model row by row, for NumbaModel: row = [x, y],
    # theta = [coef, intercept, sigma]
    @numba.njit(cache=True)
    def student_row(theta, row, hyper):
        D = row.shape[0] - 1
        eta = theta[D]
        for d in range(D):
            eta += theta[d] * row[d]
        nu = hyper[0]
        r = (row[D] - eta) / theta[D + 1]
        return hyper[1] - math.log(theta[D + 1]) - 0.5 * (nu + 1) * math.log1p(r * r / nu)
    """
)


@pytest.fixture(scope="module")
def um(tmp_path_factory):
    root = tmp_path_factory.mktemp("linear_user_model")
    (root / "linear_user_model.py").write_text(USER_MODULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTVI_CACHE_DIR", str(root / "cache"))
        mp.syspath_prepend(str(root))
        import linear_user_model

        yield linear_user_model
        sys.modules.pop("linear_user_model", None)


def _data(kind, N=3000, D=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    eta = X @ (0.4 * rng.standard_normal(D)) + 0.2
    if kind == "logistic":
        y = (rng.random(N) < special.expit(eta)).astype(float)
    elif kind == "poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
    elif kind == "negbin":
        y = rng.negative_binomial(3.0, 3.0 / (3.0 + np.exp(eta))).astype(float)
    else:
        y = eta + 0.5 * rng.standard_t(NU, N)
    return X, y


def _oracle(kind, X, y, theta, rows=None, scale=1.0):
    """log-likelihood and its gradient in theta = [coef, intercept, phi], in NumPy."""
    Xr, yr = (X, y) if rows is None else (X[rows], y[rows])
    D = X.shape[1]
    eta = theta[:, :D] @ Xr.T + theta[:, D : D + 1]  # (S, M)
    extra = np.zeros((theta.shape[0], theta.shape[1] - D - 1))
    if kind == "logistic":
        ll = yr * eta - np.logaddexp(0.0, eta)
        d = yr - special.expit(eta)
    elif kind == "poisson":
        ll = yr * eta - np.exp(eta)
        d = yr - np.exp(eta)
    else:
        sigma = theta[:, D + 1 : D + 2]
        ll = stats.t.logpdf(yr, NU, eta, sigma)
        r = (yr - eta) / sigma
        d = (NU + 1) * r / (sigma * (NU + r * r))
        extra[:, 0] = (-1.0 / sigma + d * r).sum(axis=1)
    grad = np.concatenate([d @ Xr, d.sum(axis=1, keepdims=True), extra], axis=1)
    return scale * ll.sum(axis=1), scale * grad


def _student(um, X, y, grad=True, **kw):
    return LinearModel(
        X,
        y,
        um.student,
        um.student_grad if grad else None,
        params=[Param("sigma", (), "positive")],
        hyper=[NU, T_CONST],
        **kw,
    )


def _draws(model, S=4, seed=1, spread=0.3):
    z = spread * np.random.default_rng(seed).standard_normal((S, model.size))
    return model.constrain(z)


@pytest.mark.parametrize("family", ["logistic", "poisson"])
def test_the_same_likelihood_as_the_glm_kernel(um, family):
    X, y = _data(family)
    f, g = {
        "logistic": (um.logistic, um.logistic_grad),
        "poisson": (um.poisson, um.poisson_grad),
    }[family]
    model = LinearModel(X, y, f, g)
    assert model.params[0] == Param("coef", (5,)) and model.theta_size == 6
    assert model.gradients == {"loglik": "analytic", "logprior": None}
    glm = GLM(X, y, family, coef_prior=Flat(), intercept_prior=Flat())
    theta = _draws(model, S=8)
    rows = np.array([4, 2999, 17, 17, 0, 1234])
    for r, scale in ((None, 1.0), (rows, 500.0)):
        lp, grad = model.log_joint(theta, r, scale)
        lp_glm, grad_glm = glm.log_joint(theta, r, scale)
        if family == "poisson":  # GLM adds -log y!
            lp_glm -= scale * -special.gammaln(y[r] + 1.0).sum()
        assert_allclose(lp, lp_glm, rtol=1e-12)
        assert_allclose(grad, grad_glm, rtol=1e-12, atol=1e-12 * np.abs(grad).max())
        lp_o, grad_o = _oracle(family, X, y, theta, r, scale)
        assert_allclose(lp, lp_o, rtol=1e-11)
        assert_allclose(grad, grad_o, rtol=1e-10, atol=1e-11 * np.abs(grad_o).max())
        # the value-only pass sums the same terms in a loop of its own, which LLVM
        # may vectorize differently (reassociated sums): equal to rounding (on an
        # AMD Zen 4 one of eight sums came out one ulp apart)
        assert_allclose(model.log_joint_value(theta, r, scale), lp, rtol=1e-14)


def test_a_scale_parameter_and_finite_differences_against_the_oracle(um):
    X, y = _data("student")
    exact = _student(um, X, y)
    fd = _student(um, X, y, grad=False)
    kept_row_major = _student(um, X, y, minibatch=True)
    assert fd.gradients["loglik"] == "finite differences" and fd.has_gradient
    assert exact.slices["sigma"] == slice(6, 7)
    theta = _draws(exact)
    theta[:, 6] = [0.3, 0.5, 1.0, 2.0]
    rows = np.arange(0, 3000, 7)
    for r, scale in ((None, 1.0), (rows, 7.0)):
        lp_o, grad_o = _oracle("student", X, y, theta, r, scale)
        lp, grad = exact.log_joint(theta, r, scale)
        assert_allclose(lp, lp_o, rtol=1e-12)
        assert_allclose(grad, grad_o, rtol=1e-10, atol=1e-11 * np.abs(grad_o).max())
        lp_fd, grad_fd = fd.log_joint(theta, r, scale)
        assert_array_equal(lp_fd, lp)
        assert_allclose(grad_fd, grad_o, rtol=1e-7, atol=1e-8 * np.abs(grad_o).max())
        lp_m, grad_m = kept_row_major.log_joint(theta, r, scale)
        assert_allclose(lp_m, lp, rtol=1e-13)
        assert_allclose(grad_m, grad, rtol=1e-12, atol=1e-13 * np.abs(grad).max())
    # the per-row NumbaModel path: the same density
    per_row = NumbaModel(
        exact.params,
        loglik=um.student_row,
        data=np.column_stack([X, y]),
        hyper=[NU, T_CONST],
    )
    lp_row, grad_row = per_row.log_joint(theta, None, 1.0)
    assert_allclose(lp_row, exact.log_joint(theta, None, 1.0)[0], rtol=1e-12)
    grad_o = _oracle("student", X, y, theta)[1]
    assert_allclose(grad_row, grad_o, rtol=1e-7, atol=1e-8 * np.abs(grad_o).max())


def test_negative_binomial_by_finite_differences(um):
    X, y = _data("negbin", N=800, D=3)
    model = LinearModel(X, y, um.negbin, params=[Param("alpha", (), "positive")])
    theta = _draws(model)
    lp, grad = model.log_joint(theta, None, 1.0)
    eta = theta[:, :3] @ X.T + theta[:, 3:4]
    a = theta[:, 4:5]
    p = a / (a + np.exp(eta))
    assert_allclose(lp, stats.nbinom.logpmf(y, a, p).sum(axis=1), rtol=1e-11)
    d_eta = y - np.exp(eta) * (y + a) / (a + np.exp(eta))
    d_a = (
        special.digamma(y + a)
        - special.digamma(a)
        + np.log(p)
        + 1.0
        - (y + a) / (a + np.exp(eta))
    )
    want = np.concatenate(
        [d_eta @ X, d_eta.sum(1, keepdims=True), d_a.sum(1, keepdims=True)], axis=1
    )
    assert_allclose(grad, want, rtol=1e-6, atol=1e-7 * np.abs(want).max())


def test_two_other_parameters(um):
    X, y = _data("student", N=1500, D=3)
    params = [Param("sigma", (), "positive"), Param("shift")]
    exact = LinearModel(X, y, um.gauss2, um.gauss2_grad, params=params)
    fd = LinearModel(X, y, um.gauss2, params=params)
    theta = _draws(exact)
    lp, grad = exact.log_joint(theta, None, 1.0)
    eta = theta[:, :3] @ X.T + theta[:, 3:4]
    sigma, shift = theta[:, 4:5], theta[:, 5:6]
    r = (y - eta - shift) / sigma
    assert_allclose(lp, (-0.5 * r * r - np.log(sigma)).sum(axis=1), rtol=1e-12)
    d = r / sigma
    want = np.concatenate(
        [
            d @ X,
            d.sum(1, keepdims=True),
            ((r * r - 1) / sigma).sum(1, keepdims=True),
            d.sum(1, keepdims=True),
        ],
        axis=1,
    )
    assert_allclose(grad, want, rtol=1e-11, atol=1e-12 * np.abs(want).max())
    assert_allclose(
        fd.log_joint(theta, None, 1.0)[1],
        want,
        rtol=1e-7,
        atol=1e-8 * np.abs(want).max(),
    )


def test_bitwise_identical_for_any_thread_count(um):
    X, y = _data("student", N=20000, D=7)
    model = _student(um, X, y)
    theta = _draws(model, S=8)
    k = model.kernels
    D = 7
    args = (
        model.X,
        model._Xtiles,
        model.y,
        np.empty(0, np.int64),
        np.ascontiguousarray(theta[:, :D]),
        theta[:, D].copy(),
        np.ascontiguousarray(theta[:, D + 1 :]),
        model.hyper,
        np.zeros((8, 0)),
        2 * model.tile,
        True,
    )
    before = numba.get_num_threads()
    try:
        outs = []
        for n in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(n)
            outs.append(k.linear_pass(*args))
        outs.append(k.linear_pass_serial(*args))
    finally:
        numba.set_num_threads(before)
    assert outs[0][0].shape[0] > 2  # several chunks
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert_array_equal(a, b)
    fits = [SGVI(model, n_samples=4, n_jobs=n).run(seed=0, max_iter=30) for n in (1, 2)]
    assert_array_equal(fits[0].state.params, fits[1].state.params)


def test_fits_like_the_glm(um):
    X, y = _data("logistic", N=2000, D=3)
    model = LinearModel(
        X,
        y,
        um.logistic,
        um.logistic_grad,
        logprior=um.prior,
        logprior_grad=um.prior_grad,
        hyper=[0.0, 0.0, 3.0],
    )
    glm = GLM(X, y)  # coef ~ N(0, 1), intercept ~ N(0, 10^2): the same prior
    fits = [SGVI(m, family="fullrank").run(seed=0) for m in (model, glm)]
    assert fits[0].converged and fits[1].converged
    assert_allclose(fits[0].state.params, fits[1].state.params, atol=1e-6)


def test_clear_errors(um):
    X, y = _data("logistic", N=50, D=2)
    with pytest.raises(ValueError, match="y 1-D with one entry per row"):
        LinearModel(X, y[:-1], um.logistic)
    with pytest.raises(ValueError, match="finite"):
        LinearModel(np.where(X > 1, np.nan, X), y, um.logistic)
    with pytest.raises(TypeError, match="numba.njit"):
        LinearModel(X, y, lambda eta, y, phi: 0.0)
    with pytest.raises(TypeError, match=r"loglik must take 3 arguments.*\(eta, y, phi"):
        LinearModel(X, y, um.two_args)
    with pytest.raises(ValueError, match="reads past the end.*phi has K=1"):
        LinearModel(X, y, um.reads_past_phi, params=[Param("s")])
    with pytest.raises(
        ValueError, match=r"writes past the end of its inputs or out.*out has K=1"
    ):
        LinearModel(X, y, um.logistic, um.writes_past_out, params=[Param("s")])
    with pytest.raises(TypeError, match="loglik must return one float"):
        LinearModel(X, y, um.returns_array, params=[Param("s")])
    with pytest.raises(ValueError, match="loglik_grad disagrees.*in eta"):
        LinearModel(X, y, um.logistic, um.wrong_grad)
    # an index taken from y, far out of hyper at one row only (was a crash in the
    # first pass): every row is probed with bounds checks
    counts = np.zeros(50)
    counts[20] = 1e8
    with pytest.raises(ValueError, match=r"loglik reads past .* at data row 20"):
        LinearModel(X, counts, um.indexed_by_y, hyper=np.ones(3))
    LinearModel(X, np.minimum(counts, 2.0), um.indexed_by_y, hyper=np.ones(3))
    with pytest.raises(ValueError, match="Duplicate parameter name 'coef'"):
        LinearModel(X, y, um.logistic, params=[Param("coef")])
    with pytest.raises(TypeError, match="list of Param"):
        LinearModel(X, y, um.logistic, params=Param("s"))
    with pytest.raises(ValueError, match="hyper was given but none"):
        LinearModel(X, y, um.logistic, hyper=[1.0])
    model = LinearModel(X, y, um.logistic, um.logistic_grad, fit_intercept=False)
    with pytest.raises(ValueError, match=r"theta must have shape \(S, 2\)"):
        model.log_joint(np.zeros((3, 3)), None, 1.0)
    with pytest.raises(ValueError, match=r"row indices must lie in \[0, 50\)"):
        model.log_joint(np.zeros((3, 2)), np.array([50]), 1.0)


def test_vmath_against_numpy():
    x = np.concatenate([np.linspace(-700, 700, 4001), np.linspace(-3, 3, 4001)])
    pos = np.concatenate([np.logspace(-307, 307, 2001), [0.0, np.inf]])
    small = np.concatenate([np.linspace(-0.999, 3, 8001), np.logspace(-300, 0, 301)])
    # exp(x) is |x| times as sensitive to rounding as x: 700 eps = 8e-14 at the ends
    for f, ref, xs, rtol in (
        (vmath.exp, np.exp, x, 5e-14),
        (vmath.softplus, lambda v: np.logaddexp(0.0, v), x, 5e-14),
        (vmath.sigmoid, special.expit, x, 5e-14),
        (vmath.log, np.log, pos, 4e-15),
        (vmath.log1p, np.log1p, np.concatenate([small, -small[small < 1]]), 4e-15),
    ):
        with np.errstate(divide="ignore"):
            want = ref(xs)
        got = np.array([f(v) for v in xs])
        assert_allclose(got, want, rtol=rtol, atol=0)
    assert math.isnan(vmath.log(-1.0)) and math.isnan(vmath.softplus(math.nan))
    assert math.isnan(vmath.log1p(-2.0)) and vmath.log1p(-1.0) == -math.inf
