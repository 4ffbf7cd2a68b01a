"""NumbaModel's API: the hyper argument, width probes with hyper, finite-difference
gradients inside the kernel (accuracy, supports, fits against the analytic-gradient
fits), the gradient check, and the errors of functions of the wrong form.

The user's functions live in a module file written to a temporary directory, as a
user's would; the generated kernels go to a temporary FASTVI_CACHE_DIR.
"""

import sys
import textwrap

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats

from fastvi.sgvi import GLM, SGVI, Interval, NumbaModel, Param, WindowConvergence

from . import posteriordb_models as pdb

USER_MODULE = textwrap.dedent(
    """
    import math

    import numba


    # Student-t regression with nu and the prior scales in hyper = [nu, s_coef, s_b]
    # theta = [coef_0 .. coef_{D-1}, intercept, sigma]; row = [x_0 .. x_{D-1}, y]
    @numba.njit(cache=True)
    def t_loglik(theta, row, hyper):
        nu = hyper[0]
        D = row.shape[0] - 1
        eta = theta[D]
        for d in range(D):
            eta += theta[d] * row[d]
        sigma = theta[D + 1]
        r = (row[D] - eta) / sigma
        const = (
            math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2)
            - 0.5 * math.log(nu * math.pi)
        )
        return const - math.log(sigma) - 0.5 * (nu + 1) * math.log1p(r * r / nu)


    @numba.njit(cache=True)
    def t_loglik_grad(theta, row, hyper, out):
        nu = hyper[0]
        D = row.shape[0] - 1
        eta = theta[D]
        for d in range(D):
            eta += theta[d] * row[d]
        sigma = theta[D + 1]
        r = (row[D] - eta) / sigma
        w = (nu + 1) * r / (sigma * (nu + r * r))
        for d in range(D):
            out[d] = w * row[d]
        out[D] = w
        out[D + 1] = -1.0 / sigma + w * r


    @numba.njit(cache=True)
    def t_logprior(theta, hyper):
        D = theta.shape[0] - 2
        lp = -0.5 * (theta[D] / hyper[2]) ** 2 - 0.5 * theta[D + 1] ** 2
        for d in range(D):
            lp -= 0.5 * (theta[d] / hyper[1]) ** 2
        return lp


    # the same prior without hyper (scales 1, 10), to mix the two forms
    @numba.njit(cache=True)
    def t_logprior_plain(theta):
        D = theta.shape[0] - 2
        lp = -0.5 * (theta[D] / 10.0) ** 2 - 0.5 * theta[D + 1] ** 2
        for d in range(D):
            lp -= 0.5 * theta[d] ** 2
        return lp


    # reads hyper[3]: past the end of a hyper of 3 entries
    @numba.njit(cache=True)
    def t_logprior_reads_past(theta, hyper):
        return -0.5 * theta[0] ** 2 * hyper[3]


    # logistic regression, row = [x_0 .. x_{D-1}, y], theta = [coef, intercept];
    # prior coef ~ N(0, 1), intercept ~ N(0, 10^2) (GLM's defaults)
    @numba.njit(cache=True)
    def logit_loglik(theta, row):
        D = row.shape[0] - 1
        eta = theta[D]
        for d in range(D):
            eta += theta[d] * row[d]
        # y eta - log(1 + e^eta), stably
        if eta > 0:
            return (row[D] - 1.0) * eta - math.log1p(math.exp(-eta))
        return row[D] * eta - math.log1p(math.exp(eta))


    @numba.njit(cache=True)
    def logit_loglik_grad(theta, row, out):
        D = row.shape[0] - 1
        eta = theta[D]
        for d in range(D):
            eta += theta[d] * row[d]
        if eta > 0:
            p = 1.0 / (1.0 + math.exp(-eta))
        else:
            e = math.exp(eta)
            p = e / (1.0 + e)
        w = row[D] - p
        for d in range(D):
            out[d] = w * row[d]
        out[D] = w


    @numba.njit(cache=True)
    def logit_logprior(theta):
        D = theta.shape[0] - 1
        lp = -0.5 * (theta[D] / 10.0) ** 2
        for d in range(D):
            lp -= 0.5 * theta[d] ** 2
        return lp


    @numba.njit(cache=True)
    def logit_logprior_grad(theta, out):
        D = theta.shape[0] - 1
        out[D] = -theta[D] / 100.0
        for d in range(D):
            out[d] = -theta[d]


    # a wrong gradient: the sign of the intercept's term is flipped
    @numba.njit(cache=True)
    def logit_logprior_grad_wrong(theta, out):
        D = theta.shape[0] - 1
        out[D] = theta[D] / 100.0
        for d in range(D):
            out[d] = -theta[d]


    # eight schools, non-centered (posteriordb's eight_schools_noncentered);
    # theta = [theta_trans_0 .. theta_trans_{J-1}, mu, tau]; row = [j, y_j, sigma_j]
    @numba.njit(cache=True)
    def schools_loglik(theta, row):
        J = theta.shape[0] - 2
        j = int(row[0])
        r = (row[1] - theta[J] - theta[J + 1] * theta[j]) / row[2]
        return -0.5 * r * r


    @numba.njit(cache=True)
    def schools_loglik_grad(theta, row, out):
        J = theta.shape[0] - 2
        j = int(row[0])
        d = (row[1] - theta[J] - theta[J + 1] * theta[j]) / (row[2] * row[2])
        out[j] = d * theta[J + 1]
        out[J] = d
        out[J + 1] = d * theta[j]


    @numba.njit(cache=True)
    def schools_logprior(theta):
        J = theta.shape[0] - 2
        lp = -0.5 * theta[J] ** 2 / 25.0 - math.log1p((theta[J + 1] / 5.0) ** 2)
        for j in range(J):
            lp -= 0.5 * theta[j] ** 2
        return lp


    @numba.njit(cache=True)
    def schools_logprior_grad(theta, out):
        J = theta.shape[0] - 2
        tau = theta[J + 1]
        out[J] = -theta[J] / 25.0
        out[J + 1] = -2.0 * tau / (25.0 + tau * tau)
        for j in range(J):
            out[j] = -theta[j]


    # log densities of the supports' parameters, for the finite differences there:
    # theta = [s (positive), p (in (0, 1)), c (ordered, 3), w (simplex, 3)]
    @numba.njit(cache=True)
    def supports_logprior(theta, hyper):
        s, p = theta[0], theta[1]
        lp = hyper[0] * math.log(s) - s + 2.0 * math.log(p) + math.log1p(-p)
        for k in range(3):
            lp -= 0.5 * (theta[2 + k] - k) ** 2
            lp += (k + 1.0) * math.log(theta[5 + k])
        # singular where ordered entries meet, as in ordered logistic regression
        lp += math.log(theta[3] - theta[2]) + math.log(theta[4] - theta[3])
        return lp


    @numba.njit(cache=True)
    def supports_logprior_grad(theta, hyper, out):
        s, p = theta[0], theta[1]
        out[0] = hyper[0] / s - 1.0
        out[1] = 2.0 / p - 1.0 / (1.0 - p)
        for k in range(3):
            out[2 + k] = -(theta[2 + k] - k)
            out[5 + k] = (k + 1.0) / theta[5 + k]
        a = 1.0 / (theta[3] - theta[2])
        b = 1.0 / (theta[4] - theta[3])
        out[2] -= a
        out[3] += a - b
        out[4] += b


    # categorical rows (one-hot) with probabilities w on the simplex, flat prior
    @numba.njit(cache=True)
    def categorical_loglik(theta, row):
        lp = 0.0
        for k in range(row.shape[0]):
            lp += row[k] * math.log(theta[k])
        return lp


    # the eight schools' loglik through a plain jitted helper (not inlined)
    @numba.njit(cache=True)
    def _effect(theta, j):
        return theta[j]


    @numba.njit(cache=True)
    def schools_loglik_helper(theta, row):
        J = theta.shape[0] - 2
        r = (row[1] - theta[J] - theta[J + 1] * _effect(theta, int(row[0]))) / row[2]
        return -0.5 * r * r


    # the same as a parallel function
    @numba.njit(cache=True, parallel=True)
    def schools_loglik_parallel(theta, row):
        J = theta.shape[0] - 2
        total = 0.0
        for i in numba.prange(1):
            total += (row[1] - theta[J] - theta[J + 1] * theta[int(row[0])]) / row[2]
        return -0.5 * total * total


    # raises its own exception where the second column is negative
    @numba.njit(cache=True)
    def picky_loglik(theta, row):
        if row[1] < 0.0:
            raise ValueError("picky_loglik wants a nonnegative y")
        r = row[1] - theta[0]
        return -0.5 * r * r


    # a normal mean; the value is in the column that row[0] names
    @numba.njit(cache=True)
    def column_loglik(theta, row):
        r = row[int(row[0])] - theta[0]
        return -0.5 * r * r


    # forms that are wrong
    @numba.njit(cache=True)
    def returns_gradient(theta, out):
        return -theta


    @numba.njit(cache=True)
    def four_args(theta, row, a, b, c):
        return 0.0
    """
)


@pytest.fixture(scope="module")
def um(tmp_path_factory):
    """The user module, imported; kernels cached in a temporary directory."""
    root = tmp_path_factory.mktemp("user_api")
    (root / "user_api_model.py").write_text(USER_MODULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTVI_CACHE_DIR", str(root / "cache"))
        mp.syspath_prepend(str(root))
        import user_api_model

        yield user_api_model
        sys.modules.pop("user_api_model", None)


NO_STOP = WindowConvergence(tol=0)
T_PARAMS = [Param("coef", 2), Param("intercept"), Param("sigma", (), "positive")]


def _t_data(N=400, nu=4.0, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 2))
    y = X @ np.array([1.0, -0.5]) + 0.3 + 0.5 * rng.standard_t(nu, N)
    return X, y


def _t_reference(X, y, theta, hyper):
    nu, s_coef, s_b = hyper
    coef, b, sigma = theta[:2], theta[2], theta[3]
    ll = stats.t.logpdf(y, nu, X @ coef + b, sigma).sum()
    return (
        ll - 0.5 * np.sum((coef / s_coef) ** 2) - 0.5 * (b / s_b) ** 2 - 0.5 * sigma**2
    )


# ------------------------------------------------------------------ hyper
def test_hyper_reaches_the_functions_and_is_copied(um):
    X, y = _t_data()
    data = np.column_stack([X, y])
    hyper = np.array([3.0, 2.0, 5.0])
    model = NumbaModel(
        T_PARAMS,
        loglik=um.t_loglik,
        loglik_grad=um.t_loglik_grad,
        logprior=um.t_logprior,
        data=data,
        hyper=hyper,
    )
    assert model.gradients == {
        "loglik": "analytic",
        "logprior": "finite differences",
    }
    hyper[0] = 50.0  # the model holds its own copy
    z = np.random.default_rng(1).normal(0, 0.4, (3, 4))
    theta = model.constrain(z)
    lp = model.log_joint_value(theta, None, 1.0)
    for s in range(3):
        assert_allclose(
            lp[s], _t_reference(X, y, theta[s], (3.0, 2.0, 5.0)), rtol=1e-11
        )
    # another hyper, same functions: the same generated kernels, other values
    other = NumbaModel(
        T_PARAMS,
        loglik=um.t_loglik,
        loglik_grad=um.t_loglik_grad,
        logprior=um.t_logprior,
        data=data,
        hyper=[8, 1, 1],
    )
    assert other.kernels is model.kernels
    lp8 = other.log_joint_value(theta, None, 1.0)
    for s in range(3):
        assert_allclose(
            lp8[s], _t_reference(X, y, theta[s], (8.0, 1.0, 1.0)), rtol=1e-11
        )
    # a function without hyper beside one with it: the two forms mix
    mixed = NumbaModel(
        T_PARAMS,
        loglik=um.t_loglik,
        logprior=um.t_logprior_plain,
        data=data,
        hyper=[3.0],
    )
    assert_allclose(
        mixed.log_joint_value(theta, None, 1.0),
        model.log_joint_value(theta, None, 1.0)
        + [
            _t_reference(X, y, t, (3.0, 1.0, 10.0))
            - _t_reference(X, y, t, (3.0, 2.0, 5.0))
            for t in theta
        ],
        rtol=1e-11,
    )


def test_hyper_errors(um):
    X, y = _t_data(N=10)
    data = np.column_stack([X, y])
    kw = dict(loglik=um.t_loglik, data=data)
    with pytest.raises(
        ValueError, match=r"loglik takes 3 arguments.*no hyper was given"
    ):
        NumbaModel(T_PARAMS, **kw)
    with pytest.raises(ValueError, match="hyper must be 1-D"):
        NumbaModel(T_PARAMS, hyper=np.ones((2, 2)), **kw)
    with pytest.raises(ValueError, match=r"hyper must be finite; entries \[1\]"):
        NumbaModel(T_PARAMS, hyper=[4.0, np.nan, 1.0], **kw)
    with pytest.raises(TypeError, match="real numbers"):
        NumbaModel(T_PARAMS, hyper=[1 + 2j], **kw)
    with pytest.raises(TypeError, match="real numbers"):
        NumbaModel(T_PARAMS, hyper=["a"], **kw)
    with pytest.raises(ValueError, match="none of the functions takes it"):
        NumbaModel(T_PARAMS, logprior=um.logit_logprior, hyper=[1.0])
    # reading past hyper's end: the probe names its width
    with pytest.raises(ValueError, match=r"logprior reads past.*H=3"):
        NumbaModel(T_PARAMS, logprior=um.t_logprior_reads_past, hyper=[1.0, 2.0, 3.0])
    # a single number is a hyper of one entry
    m = NumbaModel(T_PARAMS, hyper=4.0, **kw)
    assert_array_equal(m.hyper, [4.0])


# ------------------------------------------------------------------ forms and errors
def test_functions_of_the_wrong_form_are_clear_errors(um):
    with pytest.raises(
        TypeError, match=r"logprior_grad must write the gradient into out"
    ):
        NumbaModel(
            [Param("x", 2)],
            logprior=um.logit_logprior,
            logprior_grad=um.returns_gradient,
        )
    with pytest.raises(
        TypeError, match=r"loglik must take 2 arguments, or 3 with hyper"
    ):
        NumbaModel([Param("x", 2)], loglik=um.four_args, data=np.ones((3, 2)))
    for params in ([], None):
        with pytest.raises(ValueError, match="NumbaModel needs params"):
            NumbaModel(params, logprior=um.logit_logprior)


def test_a_wrong_gradient_is_caught_at_construction(um):
    params = [Param("coef", 2), Param("intercept")]
    with pytest.raises(
        ValueError,
        match=r"logprior_grad disagrees with central finite differences of logprior "
        r"in intercept \(theta\[2\]\)",
    ):
        NumbaModel(
            params,
            logprior=um.logit_logprior,
            logprior_grad=um.logit_logprior_grad_wrong,
        )
    # skipped on request
    m = NumbaModel(
        params,
        logprior=um.logit_logprior,
        logprior_grad=um.logit_logprior_grad_wrong,
        check_gradient=False,
    )
    assert m.gradients["logprior"] == "analytic"


# ------------------------------------------------------------------ finite differences
def _logit_data(N=600, D=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    p = 1.0 / (1.0 + np.exp(-(X @ np.array([1.0, -2.0, 0.5][:D]) + 0.3)))
    y = (rng.random(N) < p).astype(float)
    return X, y


def _logit_model(um, X, y, analytic):
    D = X.shape[1]
    kw = dict(loglik=um.logit_loglik, logprior=um.logit_logprior)
    if analytic:
        kw.update(
            loglik_grad=um.logit_loglik_grad, logprior_grad=um.logit_logprior_grad
        )
    return NumbaModel(
        [Param("coef", D), Param("intercept")], data=np.column_stack([X, y]), **kw
    )


def test_finite_difference_gradient_matches_the_analytic_one(um):
    X, y = _logit_data()
    fd, an = _logit_model(um, X, y, False), _logit_model(um, X, y, True)
    assert fd.gradients == {
        "loglik": "finite differences",
        "logprior": "finite differences",
    }
    assert fd.has_gradient
    rng = np.random.default_rng(2)
    for spread in (0.1, 1.0, 5.0):
        z = rng.normal(0.0, spread, (6, fd.size))
        lp_fd, g_fd = fd.log_density(z)
        lp_an, g_an = an.log_density(z)
        assert_array_equal(lp_fd, lp_an)
        assert_allclose(g_fd, g_an, rtol=1e-7, atol=1e-7 * np.abs(g_an).max())
    # a minibatch, and the parallel and serial kernels: the same bits
    rows = rng.integers(0, 600, 100)
    assert_allclose(fd.log_density(z, rows)[1], an.log_density(z, rows)[1], rtol=1e-6)
    theta = fd.constrain(z)
    args = (theta, fd.data, np.arange(600), fd.hyper, fd._fd_steps(theta), 64, True)
    for a, b in zip(
        fd.kernels.loglik_pass(*args), fd.kernels.loglik_pass_serial(*args)
    ):
        assert_array_equal(a, b)


def test_finite_differences_stay_inside_the_supports(um):
    """Near a support's boundary (a positive parameter of 1e-8, an interval end,
    close entries of an ordered vector, a small simplex entry) the steps shrink
    with the distance to it: the gradient stays finite and accurate."""
    params = [
        Param("s", (), "positive"),
        Param("p", (), Interval(0.0, 1.0)),
        Param("c", 3, "ordered"),
        Param("w", 3, "simplex"),
    ]
    kw = dict(logprior=um.supports_logprior, hyper=[2.0])
    fd = NumbaModel(params, **kw)
    an = NumbaModel(params, logprior_grad=um.supports_logprior_grad, **kw)
    z = np.array(
        [
            [np.log(1e-8), 18.0, 0.0, np.log(1e-7), 0.0, -15.0, 0.0],
            [np.log(300.0), -18.0, 5.0, 2.0, -12.0, 12.0, 14.0],
            [0.3, 0.2, -1.0, 0.1, 0.3, 0.0, 0.0],
        ]
    )
    theta = fd.constrain(z)
    assert theta[0, 0] < 2e-8 and theta[0, 1] > 1 - 1e-7 and theta[1, 1] < 1e-7
    g_fd = fd.log_joint(theta, None, 1.0)[1]
    g_an = an.log_joint(theta, None, 1.0)[1]
    assert np.all(np.isfinite(g_fd))
    assert_allclose(g_fd, g_an, rtol=1e-6)
    # the steps keep every perturbed theta inside its support
    h = fd._fd_steps(theta)
    for sign in (1.0, -1.0):
        moved = theta + sign * h
        assert np.all(moved[:, 0] > 0) and np.all((moved[:, 1] > 0) & (moved[:, 1] < 1))
        for j in (2, 3, 4):
            c = theta[:, 2:5].copy()
            c[:, j - 2] = moved[:, j]
            assert np.all(np.diff(c, axis=1) > 0)
        assert np.all(moved[:, 5:] > 0)


def test_a_density_alone_fits_with_the_default_estimator(um):
    """Only the log densities (no gradient functions): the default estimator fits
    them, as it fits the same models with analytic gradients."""
    X, y = _logit_data()
    out = {}
    for analytic in (True, False):
        model = _logit_model(um, X, y, analytic)
        engine = SGVI(model, family="fullrank", n_samples=8)
        res = engine.run(seed=0, max_iter=3000)
        assert res.converged
        out[analytic] = engine.posterior(res.state, 4000, seed=1)
    a, f = out[True], out[False]
    for name in ("coef", "intercept"):
        sd = a.sd[name]
        assert np.all(np.abs(f.mean[name] - a.mean[name]) < 0.05 * sd)
        assert_allclose(f.sd[name], sd, rtol=0.05)
    # and both agree with the built-in GLM of the same model
    engine = SGVI(GLM(X, y), family="fullrank", n_samples=8)
    res = engine.run(seed=0, max_iter=3000)
    glm = engine.posterior(res.state, 4000, seed=1)
    assert np.all(np.abs(f.mean["coef"] - glm.mean["coef"]) < 0.1 * glm.sd["coef"])
    assert_allclose(f.sd["coef"], glm.sd["coef"], rtol=0.1)


def _schools_model(um, analytic):
    d = pdb._data("eight_schools.json")
    J = len(d["y"])
    data = np.column_stack([np.arange(J), d["y"], d["sigma"]])
    kw = dict(loglik=um.schools_loglik, logprior=um.schools_logprior)
    if analytic:
        kw.update(
            loglik_grad=um.schools_loglik_grad, logprior_grad=um.schools_logprior_grad
        )
    params = [Param("theta_trans", J), Param("mu"), Param("tau", (), "positive")]
    return NumbaModel(params, data=data, **kw)


def test_eight_schools_by_finite_differences_fits_like_the_analytic_model(um):
    an, fd = _schools_model(um, True), _schools_model(um, False)
    ref = pdb.POSTERIORS["eight_schools-eight_schools_noncentered"]()
    z = np.random.default_rng(0).normal(0.0, 0.7, (5, an.size))
    lp_ref, g_ref = ref.log_density(z)
    for m in (an, fd):
        lp, g = m.log_density(z)
        assert_allclose(lp, lp_ref, rtol=1e-12)  # the same model as the fixture's
        assert_allclose(g, g_ref, rtol=1e-7, atol=1e-9)
    fits = {}
    for name, m in (("an", an), ("fd", fd)):
        engine = SGVI(m, family="fullrank", n_samples=8)
        res = engine.run(seed=1, max_iter=5000, psis_draws=0)
        assert res.converged
        fits[name] = engine.posterior(res.state, 4000, seed=2)
    for name in ("theta_trans", "mu", "tau"):
        sd = fits["an"].sd[name]
        assert np.all(np.abs(fits["fd"].mean[name] - fits["an"].mean[name]) < 0.1 * sd)
        assert_allclose(fits["fd"].sd[name], sd, rtol=0.1)


def test_indices_taken_from_the_data_are_probed_on_every_row(um):
    """A group index in a data column that points past theta at row 5 only: the
    probe of row 0 cannot see it; the probe over every row, in the generated
    kernel, does (in the pass it would read the next draw's theta, or write past
    the gradient's buffer)."""
    d = pdb._data("eight_schools.json")
    J = len(d["y"])
    data = np.column_stack([np.arange(J), d["y"], d["sigma"]])
    params = [Param("theta_trans", J), Param("mu"), Param("tau", (), "positive")]
    bad = data.copy()
    bad[5, 0] = J + 2  # theta has J + 2 entries
    for kw in (
        dict(loglik_grad=um.schools_loglik_grad),
        dict(),  # finite differences: only the value is read
    ):
        with pytest.raises(
            ValueError,
            match=r"reads past .*bounds check.* at data row 5 \(not at row 0\)",
        ):
            NumbaModel(params, loglik=um.schools_loglik, data=bad, **kw)
    # the index J + 1 is inside theta (tau's place): no error, however wrong
    ok = data.copy()
    ok[5, 0] = J + 1
    NumbaModel(params, loglik=um.schools_loglik, data=ok)


@pytest.mark.parametrize("row", [0, 5])
@pytest.mark.parametrize("index", [1e8, -1e8, 1e15])
def test_an_index_far_out_of_bounds_is_an_error_not_a_crash(um, row, index):
    """Guards beyond theta catch an index just past its end; one far past it read
    or wrote unmapped memory, and the probe itself crashed the process (a
    segmentation fault, at row 0 in the first probe, at row 5 in the probe over
    the rows). The probes run the functions compiled with bounds checks."""
    d = pdb._data("eight_schools.json")
    J = len(d["y"])
    data = np.column_stack([np.arange(J), d["y"], d["sigma"]])
    data[row, 0] = index
    params = [Param("theta_trans", J), Param("mu"), Param("tau", (), "positive")]
    where = "when called at the initial point" if row == 0 else "at data row 5"
    for kw in (dict(loglik_grad=um.schools_loglik_grad), dict()):
        with pytest.raises(ValueError, match=where + r".*P=10 entries"):
            NumbaModel(params, loglik=um.schools_loglik, data=data, **kw)


def test_an_index_far_out_of_bounds_in_a_helper_or_parallel_function(um):
    """At the first probe (row 0) a plain jitted helper that the function calls
    is checked too (its copy replaces it in the checked copy's globals), and a
    parallel function's copy is serial, so the IndexError is not a SystemError."""
    d = pdb._data("eight_schools.json")
    J = len(d["y"])
    data = np.column_stack([np.arange(J), d["y"], d["sigma"]])
    data[0, 0] = 1e8
    params = [Param("theta_trans", J), Param("mu"), Param("tau", (), "positive")]
    for f in (um.schools_loglik_helper, um.schools_loglik_parallel):
        with pytest.raises(ValueError, match=r"loglik reads past .*bounds check"):
            NumbaModel(params, loglik=f, data=data)


def test_a_function_that_raises_at_a_later_row_keeps_its_own_message(um):
    data = np.column_stack([np.zeros(6), np.arange(6.0)])
    data[4, 1] = -1.0
    with pytest.raises(ValueError, match="picky_loglik wants a nonnegative y"):
        NumbaModel([Param("mu")], loglik=um.picky_loglik, data=data)


def test_a_read_past_a_data_row_at_some_row_is_an_error(um):
    """A column index taken from the data that points one past the row: in the
    kernels it reads the next row's first value, which the guard fills of theta
    and hyper cannot see; the bounds-checked probe over the rows does."""
    data = np.column_stack([np.ones(8), np.linspace(-1.0, 1.0, 8)])
    data[3, 0] = 2.0  # rows have columns 0 and 1
    with pytest.raises(ValueError, match=r"reads past .* at data row 3 .*K=2 columns"):
        NumbaModel([Param("mu")], loglik=um.column_loglik, data=data)
    data[3, 0] = 1.0
    NumbaModel([Param("mu")], loglik=um.column_loglik, data=data)


def test_a_simplex_parameter_in_a_numba_model_fits_the_dirichlet_posterior(um):
    """Categorical data, w on the 3-simplex with a flat prior, gradient by finite
    differences: the posterior is Dirichlet(1 + counts); q (Gaussian in the
    stick-breaking coordinates) gets its means and sds."""
    counts = np.array([30, 50, 120])
    rows = np.repeat(np.eye(3), counts, axis=0)
    model = NumbaModel(
        [Param("w", 3, "simplex")], loglik=um.categorical_loglik, data=rows
    )
    assert model.size == 2 and model.theta_size == 3
    engine = SGVI(model, family="fullrank", n_samples=8)
    res = engine.run(seed=0, max_iter=3000)
    assert res.converged
    post = engine.posterior(res.state, 8000, seed=1)
    alpha = 1.0 + counts
    mean = alpha / alpha.sum()
    sd = np.sqrt(mean * (1 - mean) / (alpha.sum() + 1))
    assert_allclose(post.draws["w"].sum(axis=1), 1.0)
    assert np.all(np.abs(post.mean["w"] - mean) < 0.1 * sd)
    assert_allclose(post.sd["w"], sd, rtol=0.1)
