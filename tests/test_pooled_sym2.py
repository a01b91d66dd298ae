"""The q = 2 closed forms of the pooled criterion (models/pooled_sym2.py) against the general
q×q formulas of pooled2 (Λ ⊗ Λ products, R_X by its own Cholesky), the per-class stacked code of
the fast engine, and finite differences of the criterion, on random designs (seeded)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models import fast, pooled2, pooled_sym2
from mfr_outcomes.models.formula import build_spec


def _clinic(G: int, seed: int, unbalanced: bool = True) -> pd.DataFrame:
    """Pre/post readings at 2-7 visits a patient (some visits without a post reading when
    *unbalanced*: more classes of ZᵢᵀZᵢ), random intercept and post effect, a covariate."""
    rng = np.random.default_rng(seed)
    visits = rng.integers(2, 8, G)
    pid = np.repeat(np.arange(G), 2 * visits)
    session = np.concatenate([np.repeat(np.arange(1, v + 1), 2) for v in visits])
    post = np.tile([0.0, 1.0], int(visits.sum()))
    if unbalanced:
        post[rng.random(post.size) < 0.15] = 0.0
    b = rng.standard_normal((G, 2)) @ np.array([[1.0, 0.0], [0.4, 0.5]]).T
    x = rng.standard_normal(pid.size)
    y = (5.0 - 0.2 * session - 1.5 * post + 0.3 * x + b[pid, 0] + b[pid, 1] * post
         + rng.standard_normal(pid.size))
    return pd.DataFrame({"patient_id": [f"p{i:04d}" for i in pid], "session_number": session,
                         "post": post, "x": x, "value": y})


def _pooled(d: pd.DataFrame, formula: str):
    spec = build_spec(d, formula)
    stats, lay = fast.FastEngine().prepare(spec)
    cl = fast._classes(stats, lay)
    return fast._pooled2_of(cl, stats, lay), cl, stats, lay


def _general_fg(P, theta, reml, gradient=True):
    """fg2 by the general formulas (the q = 2 path switched off for the call)."""
    sym, P.sym2, P.last = P.sym2, None, None
    try:
        return pooled2.fg2(P, theta, reml, fast._logdet_rx, gradient)
    finally:
        P.sym2, P.last = sym, None


THETAS = [
    np.array([1.1, -0.2, 0.4]),
    np.array([0.7, 0.3, 0.0]),  # singular: the slope's diagonal at 0
    np.array([0.0, 0.0, 0.0]),  # every variance at 0
    np.array([-0.8, 0.5, -0.3]),  # negative diagonals (the optimiser's mirror images)
    np.array([30.0, -4.0, 12.0]),  # far from the data's scale
]


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_criterion_and_gradient_equal_the_general_formulas(seed, reml) -> None:
    """The q = 2 criterion and gradient equal pooled2's general q×q formulas and the fast engine's
    per-class stacked code, at fixed and random θ, singular ones included."""
    P, cl, stats, lay = _pooled(_clinic(80 + 40 * seed, seed),
                                "value ~ session_number + post * x + (post | patient_id)")
    assert P.sym2 is not None and P.K > 3
    rng = np.random.default_rng(seed)
    for th in THETAS + list(rng.normal(size=(4, 3))):
        f, g, st = pooled_sym2.evaluate(P.sym2, th, reml, True)
        f_gen, g_gen = _general_fg(P, th, reml)
        f_st, g_st = fast._fg_classes_stacked(cl, stats, lay, th, reml)
        scale = max(1.0, abs(f_gen))
        assert abs(f - f_gen) <= 1e-12 * scale and abs(f - f_st) <= 1e-12 * scale
        gs = max(1.0, float(np.abs(g_gen).max()))
        np.testing.assert_allclose(g, g_gen, rtol=1e-9, atol=1e-10 * gs)
        np.testing.assert_allclose(g, g_st, rtol=1e-9, atol=1e-10 * gs)
        # criterion only: the same value, no gradient
        f2, g2, _ = pooled_sym2.evaluate(P.sym2, th, reml, False)
        assert f2 == f and g2 is None


@pytest.mark.parametrize("reml", [True, False])
def test_gradient_equals_finite_differences(reml) -> None:
    """The q = 2 gradient against central differences of its own criterion (relative 1e-6)."""
    P, *_ = _pooled(_clinic(150, 7), "value ~ session_number + post + (post | patient_id)")
    for th in [np.array([1.1, -0.2, 0.4]), np.array([0.6, 0.25, 0.05]),
               np.array([2.0, 0.7, 1.3])]:
        _, g, _ = pooled_sym2.evaluate(P.sym2, th, reml, True)
        fd = np.empty(3)
        for k in range(3):
            h = 1e-5 * max(1.0, abs(th[k]))
            up, dn = th.copy(), th.copy()
            up[k] += h
            dn[k] -= h
            fd[k] = (pooled_sym2.evaluate(P.sym2, up, reml, False)[0]
                     - pooled_sym2.evaluate(P.sym2, dn, reml, False)[0]) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * float(np.abs(g).max()))


@pytest.mark.parametrize("seed", [4, 5])
def test_kept_pieces_equal_the_general_core(seed) -> None:
    """core2's tuple from the q = 2 pieces (log|L|², r², R_X, β̂ − b0, Λ, A⁻¹, N) and XᵀV⁻¹X equal
    the general formulas' (what the fit reports and the closed-form derivatives start from)."""
    P, *_ = _pooled(_clinic(120, seed), "value ~ session_number + post * x + (post | patient_id)")
    for th in THETAS[:4]:
        _, _, st = pooled_sym2.evaluate(P.sym2, th, True, False)
        got, XtKX = pooled_sym2.pieces(P.sym2, st)
        want, XtKX_w = pooled2._core_general(P, th)
        assert got[0] == pytest.approx(want[0], rel=1e-13, abs=1e-12)
        assert got[1] == pytest.approx(want[1], rel=1e-10)
        for a, b in zip(got[2:], want[2:]):
            np.testing.assert_allclose(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1),
                                       rtol=1e-10, atol=1e-12 * max(1.0, np.abs(b).max()))
        np.testing.assert_allclose(XtKX, XtKX_w, rtol=1e-12, atol=1e-12 * np.abs(XtKX_w).max())


def test_fg2_keeps_the_last_point_for_core2() -> None:
    """After fg2 at θ, core2 and kept_at at θ give the pieces of that evaluation (read-only),
    built once; another θ replaces them."""
    P, *_ = _pooled(_clinic(100, 8), "value ~ session_number + post + (post | patient_id)")
    a, b = np.array([1.0, -0.1, 0.3]), np.array([0.5, 0.2, 0.6])
    pooled2.fg2(P, a, True, fast._logdet_rx)
    first = pooled2.core2(P, a.copy())
    kept = pooled2.kept_at(P, a)
    assert kept.RX is first[2] and kept.N is first[6] and kept.Ainv is first[5]
    assert kept.lam is first[4] and kept.beta0 is first[3] and kept.pwrss == first[1]
    assert not first[2].flags.writeable and not kept.XtVX.flags.writeable
    want, _ = pooled2._core_general(P, a)
    np.testing.assert_allclose(first[3], want[3], rtol=1e-10)
    pooled2.fg2(P, b, True, fast._logdet_rx)
    assert pooled2.kept_at(P, a) is None and pooled2.kept_at(P, b) is not None


@pytest.mark.parametrize("formula", [
    "value ~ session_number + post + (1 | patient_id)",
    "value ~ session_number * post + (1 + post + session_number | patient_id)",
])
def test_other_q_keep_the_general_path(formula) -> None:
    """q = 1 (no pooled2 layout) and q = 3 (the general formulas): no q = 2 path, and the fit is
    unchanged by its presence elsewhere."""
    P, cl, stats, lay = _pooled(_clinic(100, 9), formula)
    if lay.q_inner == 1:
        assert P is None
        return
    assert P.sym2 is None
    th = np.random.default_rng(3).normal(size=len(lay.theta_pos))
    f, g = pooled2.fg2(P, th, True, fast._logdet_rx)
    f_st, g_st = fast._fg_classes_stacked(cl, stats, lay, th, True)
    assert abs(f - f_st) <= 1e-12 * abs(f)
    np.testing.assert_allclose(g, g_st, rtol=1e-9, atol=1e-10 * np.abs(g_st).max())


def test_fit_equals_the_general_path_fit(monkeypatch) -> None:
    """The fast engine's fit with the q = 2 path equals the fit with the general formulas: θ,
    β̂, σ and Var(β̂) (the same optimum to the optimiser's tolerance)."""
    d = _clinic(200, 11)
    formula = "value ~ session_number + post * x + (post | patient_id)"
    spec = build_spec(d, formula)
    eng = fast.FastEngine()
    res = eng.fit(spec)
    orig = pooled2.Pooled2.__init__

    def general(self, *a, **k):  # the general path: no q = 2 layout
        orig(self, *a, **k)
        self.sym2 = None

    def unused(*a, **k):
        raise AssertionError("the q = 2 path ran")

    monkeypatch.setattr(pooled2.Pooled2, "__init__", general)
    monkeypatch.setattr(pooled_sym2, "evaluate", unused)
    ref = eng.fit(spec)
    np.testing.assert_allclose(res.theta, ref.theta, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(res.beta, ref.beta, rtol=1e-8, atol=1e-10)
    assert res.sigma == pytest.approx(ref.sigma, rel=1e-9)
    np.testing.assert_allclose(res.vcov_beta, ref.vcov_beta, rtol=1e-7)


@pytest.mark.parametrize("reml", [True, False])
def test_stacked_gradients_equal_the_general_stacked_formulas(reml) -> None:
    """The start Hessian's gradients at several θ in one stacked pass, q = 2 closed forms, equal
    pooled2's general stacked formulas and the one-at-a-time q = 2 gradients."""
    P, *_ = _pooled(_clinic(160, 12), "value ~ session_number + post * x + (post | patient_id)")
    thetas = np.vstack([THETAS[0], THETAS[1], THETAS[3],
                        np.random.default_rng(2).normal(size=(3, 3))])
    got = pooled_sym2.gradients(P.sym2, thetas, reml)
    sym, P.sym2 = P.sym2, None
    try:
        want = pooled2.gradients(P, thetas, reml)
    finally:
        P.sym2 = sym
    assert got is not None and want is not None
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10 * scale)
    for th, g in zip(thetas, got):
        one = pooled_sym2.evaluate(P.sym2, th, reml, True)[1]
        np.testing.assert_allclose(g, one, rtol=1e-9, atol=1e-10 * scale)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("seed", [1, 2])
def test_stacked_criteria_equal_the_criterion_at_each_theta(seed, reml) -> None:
    """The criterion at several θ (the probe off a bound) equals the general q×q formulas θ by
    θ, singular and mirrored θ included."""
    P, *_ = _pooled(_clinic(90 + 30 * seed, seed),
                    "value ~ session_number + post * x + (post | patient_id)")
    rng = np.random.default_rng(seed)
    thetas = np.array(THETAS + list(rng.normal(size=(4, 3))))
    fs = pooled_sym2.criteria(P.sym2, thetas, reml)
    assert fs is not None and fs.shape == (len(thetas),)
    for th, f in zip(thetas, fs):
        f_gen, _ = _general_fg(P, th, reml, gradient=False)
        assert abs(f - f_gen) <= 1e-12 * max(1.0, abs(f_gen)), (th, f, f_gen)
    assert pooled2.criteria(P, thetas, reml).tolist() == fs.tolist()


def _sym2(P, *, negate_xtx: bool = False, kernel: bool = True) -> pooled_sym2.Sym2:
    """A Sym2 of the same classes (XᵀX negated: M is never positive definite), with or without
    the C kernel."""
    S2 = pooled_sym2.Sym2(P.C, P.count, P.omega, -P.XtX if negate_xtx else P.XtX, P.Xty0,
                          P.yty0, np.array(P.sym2.flat), P.n)
    if not kernel:
        S2.blob = None
    return S2


@pytest.mark.parametrize("kernel", [True, False])
def test_stacked_criteria_decline_where_some_theta_needs_the_one_by_one_path(kernel) -> None:
    """Where M is not positive definite the criterion is inf θ by θ, and the stacked pass
    declines (None) or gives inf: the caller then evaluates θ by θ."""
    if kernel and pooled_sym2.KERNEL is None:
        pytest.skip("the C kernel is not built")
    P, *_ = _pooled(_clinic(60, 4, unbalanced=False),
                    "value ~ session_number + post * x + (post | patient_id)")
    good = np.array([[0.5, 0.1, 0.2]])
    assert pooled_sym2.criteria(_sym2(P, kernel=kernel), good, True) is not None
    bad = _sym2(P, negate_xtx=True, kernel=kernel)
    assert pooled_sym2.evaluate(bad, good[0], True, True)[0] == np.inf
    fs = pooled_sym2.criteria(bad, good, True)
    assert fs is None or fs.tolist() == [np.inf]
    assert pooled_sym2.gradients(bad, good, True) is None or not kernel


def test_the_c_kernel_is_built_where_a_c_compiler_is() -> None:
    """make install compiles the kernel (hatch_build.py): on a machine with a C compiler a
    missing kernel is a broken install step, not a silent fallback."""
    import shutil
    import sysconfig

    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip("no C compiler: the package runs pure Python")
    assert pooled_sym2.KERNEL is not None


@pytest.mark.skipif(pooled_sym2.KERNEL is None, reason="the C kernel is not built")
@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_c_kernel_equals_the_numpy_formulas(seed, reml) -> None:
    """The C kernel's criterion, gradient and pieces (β̂, R_X, N, A⁻¹, XᵀV⁻¹X) equal the NumPy
    version's to rounding at fixed and random θ (singular, zero and mirrored θ included), on
    designs with one to three fixed-effect columns per random column and many classes."""
    formula = ["value ~ session_number + post * x + (post | patient_id)",
               "value ~ post + (post | patient_id)",
               "value ~ session_number * post * x + (session_number | patient_id)",
               "value ~ x + (post | patient_id)"][seed - 1]
    P, *_ = _pooled(_clinic(50 + 60 * seed, 10 + seed), formula)
    c, py = _sym2(P), _sym2(P, kernel=False)
    assert c.blob is not None and py.blob is None
    rng = np.random.default_rng(seed)
    for th in THETAS + list(rng.normal(size=(6, 3)) * [1, 1, 0.3]):
        for gradient in (True, False):
            f1, g1, st1 = pooled_sym2.evaluate(c, th, reml, gradient)
            f2, g2, st2 = pooled_sym2.evaluate(py, th, reml, gradient)
            assert (st1 is None) == (st2 is None) and (g1 is None) == (g2 is None)
            if st1 is None:
                assert f1 == f2 or (np.isnan(f1) and np.isnan(f2))
                continue
            assert abs(f1 - f2) <= 1e-12 * max(1.0, abs(f2)), (th, f1, f2)
            if gradient:
                gs = max(1.0, float(np.abs(g2).max()))
                np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-11 * gs)
            (t1, x1), (t2, x2) = pooled_sym2.pieces(c, st1), pooled_sym2.pieces(py, st2)
            assert t1[0] == pytest.approx(t2[0], rel=1e-13, abs=1e-12)
            assert t1[1] == pytest.approx(t2[1], rel=1e-11)
            for a, b in zip(t1[2:] + (x1,), t2[2:] + (x2,)):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * max(1.0, np.abs(b).max()))


def test_fit_with_and_without_the_c_kernel_agree(monkeypatch) -> None:
    """The whole fit (θ̂, β̂, df) with the kernel and with the NumPy formulas alone."""
    from mfr_outcomes.models import fit_mixed

    d = _clinic(150, 21)
    formula = "value ~ session_number + post * x + (post | patient_id)"
    calls = []
    numpy_path = pooled_sym2._evaluate_py
    monkeypatch.setattr(pooled_sym2, "_evaluate_py", lambda *a: calls.append(1) or numpy_path(*a))
    a = fit_mixed(d, formula).fixed_effects
    assert not calls or pooled_sym2.KERNEL is None
    monkeypatch.setattr(pooled_sym2, "KERNEL", None)
    b = fit_mixed(d, formula).fixed_effects
    assert calls, "without the kernel the NumPy formulas run"
    np.testing.assert_allclose(a["estimate"], b["estimate"], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(a["df"], b["df"], rtol=1e-5)
