"""The per-call shortcuts of a small fit give the values of the long way round.

Each shortcut (issue #14: fixed overhead of a 200-patient fit) is checked against the
computation it replaces: conditional modes computed on first read against the eager per-group
pass, the column cache against plain frame look-ups, the vectorised Satterthwaite df against the
row-by-row formula, the 2×2 inverses against the general ones, the direct BLAS thread setting
against threadpoolctl's view, and a singular fit landing on 0 exactly. No timings are asserted.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models import batched, fast
from mfr_outcomes.models.design import ColumnCache
from mfr_outcomes.models.dfmethods import SatterthwaiteData, satterthwaite_df
from mfr_outcomes.models.fit import fit_mixed
from mfr_outcomes.models.formula import _missing, build_spec
from mfr_outcomes.models.threads import blas_threads, current_limit
from mfr_outcomes.study import analysis_frame
from mfr_outcomes.synthetic import generate_frames

FORMULA = "value ~ post * technique + session_number + (post | patient_id)"
LEVELS = ["direct_pressure", "stretching", "massage", "combined"]


def _clinic(n_patients: int, seed: int) -> pd.DataFrame:
    """The package's simulated clinic, treatment visits only (as the speed benchmark)."""
    frames, _ = generate_frames(n_patients=n_patients, seed=seed, measures=["pain_nrs"])
    d = analysis_frame(frames["patients"], frames["sessions"], frames["measurements"], "pain_nrs")
    d = d.loc[d["technique"].astype(str) != "none"].reset_index(drop=True)
    d["technique"] = pd.Categorical(d["technique"].astype(str), categories=LEVELS)
    return d


@pytest.fixture(scope="module")
def clinic() -> pd.DataFrame:
    return _clinic(80, 14)


def test_modes_on_demand_equal_the_eager_pass(clinic):
    """The pooled fit defers the per-group pass: its modes equal _blups on a full evaluation."""
    spec = build_spec(clinic, FORMULA)
    res = fast.FastEngine().fit(spec)
    assert res.n_classes is not None and "_pending" in res.__dict__
    stats, lay = fast.FastEngine().prepare(spec)
    ev = fast._evaluate(stats, lay, res.theta)
    blups, condvar = fast._blups(ev, lay, res.sigma)
    for got, want in zip(res.blups, blups):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(res.blup_condvar, condvar):
        np.testing.assert_array_equal(got, want)
    assert "_pending" not in res.__dict__
    # β̂ and σ from the classes' evaluation agree with the per-group pass to rounding
    np.testing.assert_allclose(res.beta, ev.beta, rtol=1e-10)
    assert res.sigma == pytest.approx(float(np.sqrt(ev.pwrss / (spec.n - spec.p))), rel=1e-10)
    # light fits have no modes, as before
    light = fast.FastEngine().fit_stats(stats, lay, light=True)
    assert light.blups == [] and light.blup_condvar is None


def test_assigning_modes_resolves_the_pending_pass(clinic):
    res = fast.FastEngine().fit(build_spec(clinic, FORMULA))
    res.blups = ["replaced"]
    assert res.blups == ["replaced"]
    assert res.blup_condvar is not None and len(res.blup_condvar) == 1


def test_fit_random_effects_unchanged_by_deferral(clinic):
    """What a user reads (ranef, fitted values) is built from the deferred modes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_mixed(clinic, FORMULA)
    spec = fit.spec
    stats, lay = fast.FastEngine().prepare(spec)
    blups, _ = fast._blups(fast._evaluate(stats, lay, fit.theta), lay, fit.sigma)
    Z = spec.blocks[0].Z
    b = blups[0][spec.blocks[0].codes]
    np.testing.assert_allclose(fit.fitted(True), spec.X @ fit.result.beta + np.sum(Z * b, axis=1),
                               rtol=1e-12)


def test_column_cache_reads_as_the_frame(clinic):
    cols = ColumnCache(clinic)
    assert len(cols) == len(clinic)
    assert cols.columns.equals(clinic.columns) and cols.index.equals(clinic.index)
    s1 = cols["value"]
    assert cols["value"] is s1  # looked up once
    pd.testing.assert_series_equal(s1, clinic["value"])
    with pytest.raises(KeyError):
        cols["nope"]


@pytest.mark.parametrize("values", [
    [1.0, np.nan, 3.0],
    [1, 2, 3],
    [True, False, True],
    pd.array([1, None, 3], dtype="Int64"),
    pd.Categorical(["a", None, "b"]),
    pd.array(["a", None, "c"], dtype="str"),
    ["x", None, "z"],
])
def test_missing_mask_equals_isna(values):
    s = pd.Series(values)
    np.testing.assert_array_equal(_missing(s), s.isna().to_numpy())


def test_build_spec_with_missing_rows_and_unused_levels():
    """The cached columns follow the frame the rows were cut to (a second cache after .loc)."""
    d = _clinic(30, 3)
    d.loc[[0, 5, 17], "value"] = np.nan
    d["technique"] = d["technique"].cat.add_categories(["none"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = build_spec(d, FORMULA)
    keep = d["value"].notna().to_numpy()
    assert spec.n == int(keep.sum()) and len(spec.excluded) == 3
    np.testing.assert_array_equal(spec.y, d["value"].to_numpy()[keep])
    assert any("none" in note for note in spec.notes)


def test_vectorised_satterthwaite_equals_row_by_row():
    rng = np.random.default_rng(5)
    p, k = 6, 4
    a = rng.normal(size=(p, p))
    V = a @ a.T
    jac = [(lambda m: m + m.T)(rng.normal(size=(p, p))) for _ in range(k)]
    h = rng.normal(size=(k, k))
    sd = SatterthwaiteData(V, h @ h.T, jac, [])
    L = np.vstack([np.eye(p), rng.normal(size=(3, p))])
    want = np.array([sd.df_1d(row) for row in L])
    np.testing.assert_allclose(satterthwaite_df(sd, L), want, rtol=1e-12)
    # a non-positive denominator gives ∞, as df_1d
    sd0 = SatterthwaiteData(V, -np.eye(k), jac, [])
    assert np.all(np.isinf(satterthwaite_df(sd0, L)))


@pytest.mark.parametrize("q", [1, 2, 3])
def test_inverse_and_logdet_of_small_stacks(q):
    rng = np.random.default_rng(q)
    a = rng.normal(size=(7, q, q))
    A = a @ a.transpose(0, 2, 1) + np.eye(q)
    inv, logdet = fast._inv_logdet(A.copy())
    np.testing.assert_allclose(inv, np.linalg.inv(A), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(A)[1], rtol=1e-12)
    ref_inv, ref_logdet = batched._inv_logdet(A.copy())
    np.testing.assert_array_equal(inv, ref_inv)
    np.testing.assert_array_equal(logdet, ref_logdet)


def test_blas_scope_sets_and_restores_thread_counts():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    np.ones((4, 4)) @ np.ones((4, 4))  # BLAS loaded
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info()
              if i["user_api"] == "blas"]
    with blas_threads() as lim:
        assert lim == 1 and current_limit() == 1
        inside = [i["num_threads"] for i in threadpoolctl.threadpool_info()
                  if i["user_api"] == "blas"]
        assert all(t == 1 for t in inside)
        with blas_threads() as inner:  # nested: nothing to do
            assert inner == 1
    after = [i["num_threads"] for i in threadpoolctl.threadpool_info()
             if i["user_api"] == "blas"]
    assert after == before and current_limit() is None


def test_singular_diagonal_lands_on_zero():
    """A random slope with no variance: the pooled fit reports θ = 0 exactly (as L-BFGS-B's
    bound), not a rounding-level positive number."""
    rng = np.random.default_rng(11)
    n_pat = 60
    pid = np.repeat(np.arange(n_pat), 8)
    post = np.tile([0, 1], n_pat * 4)
    y = 5 + rng.normal(0, 1.0, n_pat)[pid] - 0.8 * post + rng.normal(0, 1.0, pid.size)
    d = pd.DataFrame({"patient_id": pid.astype(str), "post": post, "value": y})
    spec = build_spec(d, "value ~ post + (post | patient_id)")
    res = fast.FastEngine().fit(spec)
    assert res.converged and res.n_classes == 1  # the pooled path
    assert res.theta[2] == 0.0  # this seed puts the slope's variance on the boundary
    assert any("singular" in m for m in res.messages)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("theta", [[0.8, 0.1, 0.3], [1.0, 0.0, 1.0], [0.05, -0.4, 0.0],
                                   [2.5, 1.2, 0.7]])
def test_fused_criterion_and_gradient_equal_the_two_step_ones(clinic, reml, theta):
    """The optimiser's one-pass criterion and gradient (merged data terms) give the values of the
    classes' evaluation + ``_objective`` + ``_gradient_classes``, and a central difference."""
    spec = build_spec(clinic, FORMULA)
    stats, lay = fast.FastEngine().prepare(spec)
    cl = fast._classes(stats, lay)
    assert isinstance(cl, fast._Classes)
    th = np.asarray(theta, dtype=float)
    ev = fast._evaluate_classes(cl, stats, lay, th)
    f, g = fast._fg_classes(cl, stats, lay, th, reml)
    assert f == pytest.approx(fast._objective(ev, stats.n, stats.p, reml), rel=1e-13)
    want = fast._gradient_classes(cl, stats, lay, ev, reml)
    np.testing.assert_allclose(g, want, rtol=1e-9, atol=1e-9 * float(np.abs(want).max()))
    assert fast._fg_classes(cl, stats, lay, th, reml, gradient=False) == (f, None)
    h = 1e-6
    fd = [(fast._fg_classes(cl, stats, lay, th + h * e, reml, gradient=False)[0]
           - fast._fg_classes(cl, stats, lay, th - h * e, reml, gradient=False)[0]) / (2 * h)
          for e in np.eye(th.size)]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("formula", [
    FORMULA,
    "value ~ post * technique + (1 + post + session_number | patient_id)",
    "value ~ post + technique + session_number + (1 | patient_id) + (0 + post | patient_id)",
])
def test_pooled2_equals_the_stacked_classes(clinic, reml, formula):
    """pooled2's criterion and gradient (products by Λ as Kronecker products over all classes)
    give the stacked (K, q, q) evaluation's values, q = 2 and 3, correlated and diagonal Λ, at
    random θ of either sign (seeded); and the deviance in (θ, σ) those pieces give."""
    spec = build_spec(clinic, formula)
    stats, lay = fast.FastEngine().prepare(spec)
    cl = fast._classes(stats, lay)
    assert isinstance(cl, fast._Classes)
    p2 = fast._pooled2_of(cl, stats, lay)
    assert p2 is not None
    rng = np.random.default_rng(2026)
    for _ in range(4):
        th = rng.normal(size=len(lay.theta_pos))
        f, g = fast._fg_classes_stacked(cl, stats, lay, th, reml)
        f2, g2 = fast._fg_classes(cl, stats, lay, th, reml)
        assert f2 == pytest.approx(f, rel=1e-13)
        np.testing.assert_allclose(g2, g, rtol=1e-9, atol=1e-9 * float(np.abs(g).max()))
        vp = np.append(th, 1.7)
        core = fast._pooled_core(cl, stats, lay, th)
        logdet, pwrss, RX = core[:3]
        want = (logdet + pwrss / 1.7 ** 2 + stats.n * np.log(2 * np.pi * 1.7 ** 2)
                + ((fast._logdet_rx(RX) - stats.p * np.log(2 * np.pi * 1.7 ** 2)) if reml else 0))
        assert fast.deviance_varpar(stats, lay, vp, reml, cl) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("formula", [FORMULA, "value ~ post + session_number + (1 | patient_id)"])
def test_core_one_equals_the_batched_core(clinic, formula):
    """batched._core_one (one study, products by Λ ⊗ Λ, Cholesky) gives every piece of the
    batched ``_core`` (LU solve and slogdet), REML and ML, at random θ (seeded)."""
    spec = build_spec(clinic, formula)
    stats, lay = fast.FastEngine().prepare(spec)
    cl = fast._classes(stats, lay)
    P = fast.pooled_of_classes(cl, stats, lay)
    rng = np.random.default_rng(7)
    for reml in (True, False):
        for _ in range(3):
            th = rng.normal(size=(1, len(lay.theta_pos)))
            want, got = batched._core(P, np.arange(1), th, reml), batched._core_one(P, th, reml)
            assert want.keys() == got.keys()
            for key in want:
                np.testing.assert_allclose(np.asarray(got[key], float),
                                           np.asarray(want[key], float), rtol=1e-11,
                                           atol=1e-11, err_msg=key)


@pytest.mark.parametrize("reml", [True, False])
def test_one_study_hessian_equals_the_batched_one(clinic, reml):
    """varpar_derivatives of one study (the Kronecker-product sandwiches, ``_core_one``) equals
    the batched code's (S = 2: the stacked products, ``_core``) on the same study twice."""
    spec = build_spec(clinic, FORMULA)
    stats, lay = fast.FastEngine().prepare(spec)
    cl = fast._classes(stats, lay)
    P = fast.pooled_of_classes(cl, stats, lay)
    P2 = dataclasses.replace(P, Om=np.concatenate([P.Om, P.Om]),
                             Xty0=np.concatenate([P.Xty0, P.Xty0]),
                             yty0=np.concatenate([P.yty0, P.yty0]), b0=np.concatenate([P.b0, P.b0]))
    vp = np.array([0.9, -0.2, 0.4, 1.3])
    g, H, J = batched.varpar_derivatives(P, vp, reml)
    core = batched._core(P2, np.arange(2), np.tile(vp[:-1], (2, 1)), reml)
    bl = batched._blocks(P2, core, np.full(2, vp[-1]))
    H2, g2, Pm2 = batched._hessian(bl, P2, reml)
    J2 = bl["Phi"][1] @ Pm2[1] @ bl["Phi"][1]
    np.testing.assert_allclose(H, H2[1], rtol=1e-10, atol=1e-10 * np.abs(H2[1]).max())
    np.testing.assert_allclose(g, g2[1], rtol=1e-10, atol=1e-10 * np.abs(g2[1]).max())
    np.testing.assert_allclose(J, J2, rtol=1e-10, atol=1e-10 * np.abs(J2).max())


def _caution_by_sorting(y, response):
    """The response caution as it was written before (np.unique of the finite values)."""
    y = np.asarray(y, float)
    y = y[np.isfinite(y)]
    if y.size == 0:
        return None
    values = np.unique(y)
    if values.size <= 2 and set(values.tolist()) <= {0.0, 1.0}:
        return "binary"
    whole = np.all(y >= 0) and np.all(np.abs(y - np.round(y)) < 1e-12)
    if whole and y.max() > 10 and y.std() > 0:
        skew = float(np.mean((y - y.mean()) ** 3) / y.std() ** 3)
        if skew > 1.0:
            return "count"
    return None


def test_response_caution_without_sorting_agrees_with_np_unique():
    from mfr_outcomes.models.checks import gaussian_response_caution

    rng = np.random.default_rng(7)
    cases = [np.zeros(5), np.ones(5), np.array([0.0, 1.0, 1.0]), np.array([0.0, 1.0, 2.0]),
             np.array([0.0, 0.5, 1.0]), np.array([np.nan, 0.0, 1.0]), np.array([np.nan, np.inf]),
             np.array([1e308, 1e308, 0.0, 1.0]), np.array([-1.0, 0.0, 1.0]),
             rng.integers(0, 11, 300).astype(float), rng.poisson(0.7, 300) * 7.0,
             np.append(rng.poisson(0.7, 300) * 7.0, [np.nan, -np.inf]),
             rng.normal(5, 2, 300), np.array([])]
    for y in cases:
        got = gaussian_response_caution(y, "pain")
        want = _caution_by_sorting(y, "pain")
        assert (got is None) == (want is None), y
        if want is not None:
            assert ("0/1" in got) == (want == "binary") and ("count" in got) == (want == "count")


def test_non_finite_values_still_refused_by_the_fast_engine(clinic):
    spec = build_spec(clinic, FORMULA)
    assert fast.FastEngine().supports(spec)[0]
    for bad in (np.nan, np.inf):
        y = spec.y.copy()
        y[3] = bad
        ok, why = fast.FastEngine().supports(dataclasses.replace(spec, y=y))
        assert not ok and "non-finite" in why
    big = spec.X.copy()
    big[:, -1] = 1e308  # sums overflow, values finite: checked value by value
    assert fast.FastEngine().supports(dataclasses.replace(spec, X=big))[0]


@pytest.mark.parametrize("reml", [True, False])
def test_pooled_deviance_in_varpar_equals_the_per_group_one(clinic, reml):
    """The convergence check's deviance from the pooled pieces alone (no _Eval) equals the
    per-group evaluation's, and the 2×2 adjugate inverse equals numpy.linalg's."""
    spec = build_spec(clinic, FORMULA)
    stats, lay = fast.FastEngine().prepare(spec)
    cl = fast._classes(stats, lay)
    for vp in ([0.8, 0.1, 0.3, 1.1], [1.3, -0.02, 0.0, 0.9], [0.0, 0.0, 0.0, 2.0]):
        vp = np.asarray(vp)
        assert fast.deviance_varpar(stats, lay, vp, reml, cl) == pytest.approx(
            fast.deviance_varpar(stats, lay, vp, reml, None), rel=1e-11)
    A = np.random.default_rng(3).normal(size=(7, 2, 2))
    A = A @ A.transpose(0, 2, 1) + np.eye(2)
    inv, logdet = fast._inv_logdet_sym2(A.copy())
    np.testing.assert_allclose(inv, np.linalg.inv(A), rtol=1e-12)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(A)[1], rtol=1e-12)
    RX = np.diag([1e-200, 1e-200, 3.0])  # the product leaves the range: the sum of logs
    assert fast._logdet_rx(RX) == pytest.approx(2 * (2 * np.log(1e-200) + np.log(3.0)))


def test_pooled_quasi_newton_on_floats_reaches_the_per_group_optimum(clinic):
    """The pooled BFGS (Python floats, a rounding tie at the optimum taken) lands where the
    per-group L-BFGS-B path does, with a gradient at the rounding level."""
    spec = build_spec(clinic, FORMULA)
    pooled = fast.FastEngine().fit(spec)
    assert pooled.optimizer.startswith("BFGS")
    plain = fast.FastEngine().fit(spec, options={"compress": False, "gtol": 1e-10,
                                                 "ftol": 1e-15})
    assert pooled.objective <= plain.objective + 1e-8 * abs(plain.objective)
    np.testing.assert_allclose(pooled.theta, plain.theta, atol=2e-5)
    np.testing.assert_allclose(pooled.beta, plain.beta, rtol=1e-6, atol=1e-8)
    g = pooled.gradient_varpar(np.append(pooled.theta, pooled.sigma))
    assert float(np.abs(g).max()) < 1e-4


def test_pooled_study_without_second_centring_gives_the_same_derivatives(clinic):
    """The fast engine's classes already hold y − X b0: building its pooled study without a
    second centring gives the gradient, Hessian and Jacobian in (θ, σ) of the re-centred one."""
    spec = build_spec(clinic, FORMULA)
    stats, lay = fast.FastEngine().prepare(spec)
    cl = fast._classes(stats, lay)
    pos = [(r, c) for (_, r, c) in lay.theta_pos]
    args = (cl.count, cl.Ck, cl.omega_flat, stats.XtX, cl.Xty0, cl.yty0, stats.n, pos)
    again = batched.pooled_from_classes(*args)
    once = batched.pooled_from_classes(*args, oxx=cl.omega_x_flat, centred=True)
    for reml in (True, False):
        for vp in ([0.8, 0.1, 0.3, 1.1], [1.3, -0.02, 0.05, 0.9]):
            for got, want in zip(batched.varpar_derivatives(once, np.asarray(vp), reml),
                                 batched.varpar_derivatives(again, np.asarray(vp), reml)):
                np.testing.assert_allclose(got, want, rtol=1e-9,
                                           atol=1e-9 * float(np.abs(want).max()))


def test_group_sums_sorted_runs_equal_the_bincounts():
    """Group sums of columns sorted by group (one reduceat over the runs) equal the bincounts of
    the same columns shuffled (the general path), and a group split into two runs takes the
    general path (seeded)."""
    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(50), rng.integers(1, 9, size=50))
    vals = rng.normal(size=(7, codes.size))
    perm = rng.permutation(codes.size)
    sorted_sums = fast._group_sums(vals, codes, 50)
    np.testing.assert_allclose(sorted_sums, fast._group_sums(vals[:, perm], codes[perm], 50),
                               rtol=1e-12, atol=1e-12)
    split = codes.copy()
    split[-1] = 0  # group 0 now also at the end
    want = np.stack([np.bincount(split, weights=v, minlength=50) for v in vals])
    np.testing.assert_allclose(fast._group_sums(vals, split, 50), want, rtol=1e-12, atol=1e-12)
    assert fast._group_sums(vals[:, :1], codes[:1], 1).shape == (7, 1)


def test_fixed_effects_table_from_blocks_equals_the_dict_constructor():
    """The t-test table built from its two blocks is the frame pandas' dict constructor builds
    (values, column order, dtypes, index), with an infinite df (normal tails) among the rows;
    names that are not all text take the constructor itself."""
    from mfr_outcomes.models import inference

    L = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, -1.0, 0.5]])
    beta, vcov = np.array([1.0, -2.0, 0.3]), np.diag([0.1, 0.2, 0.3])
    df = np.array([4.5, np.inf, 30.0])
    got = inference._table(L, beta, vcov, df, ["a", "b", "a - b"], 0.95)
    want = pd.DataFrame({"term": ["a", "b", "a - b"],
                         **{c: got[c].to_numpy().copy() for c in got.columns[1:]}})
    pd.testing.assert_frame_equal(got, want)
    t = 2.0 / np.sqrt(0.2)  # the infinite-df row: a normal test, 2 Φ(−|t|) = erfc(|t| / √2)
    assert got["p_value"].iloc[1] == pytest.approx(math.erfc(t / math.sqrt(2.0)), rel=1e-12)
    other = inference._table(L, beta, vcov, df, [1, 2, 3], 0.95)
    assert list(other["term"]) == [1, 2, 3]


def test_a_written_term_column_leaves_the_next_table_alone():
    """The term column's array is kept per tuple of names and copied into each table: a write to
    one table's terms reaches neither the kept array nor the next table."""
    from mfr_outcomes.models import inference

    L, beta, vcov, df = np.eye(2), np.array([1.0, 2.0]), np.eye(2), np.array([5.0, 6.0])
    first = inference._table(L, beta, vcov, df, ["a", "b"], 0.95)
    first.loc[0, "term"] = "changed"
    first["term"].array[1] = "also"
    second = inference._table(L, beta, vcov, df, ["a", "b"], 0.95)
    assert list(second["term"]) == ["a", "b"]
    assert list(first["term"]) == ["changed", "also"]


def test_pooled2_keeps_only_the_last_thetas_pieces(clinic):
    """core2 returns its kept pieces only for the θ it last computed (equal bytes), read-only;
    another θ in between is computed afresh, and going back gives the first values again."""
    from mfr_outcomes.models import pooled2

    spec = build_spec(clinic, FORMULA)
    stats, lay = fast.FastEngine().prepare(spec)
    cl = fast._classes(stats, lay)
    p2 = fast._pooled2_of(cl, stats, lay)
    a, b = np.array([1.1, -0.2, 0.4]), np.array([0.7, 0.1, 0.9])
    first = pooled2.core2(p2, a)
    assert pooled2.core2(p2, a.copy()) is first  # the kept pieces
    other = pooled2.core2(p2, b)
    assert other[1] != first[1]
    again = pooled2.core2(p2, a)
    assert again is not first and again[:2] == first[:2]
    np.testing.assert_array_equal(again[2], first[2])
    assert not again[2].flags.writeable


@pytest.mark.parametrize("reml", [True, False])
def test_derivatives_from_the_kept_pieces_equal_the_fresh_ones(clinic, reml):
    """At θ̂ the fit's closed-form gradient, Hessian and Jacobian in (θ, σ) start from the
    optimiser's kept pieces (pooled2.kept_at); they equal batched.varpar_derivatives computing
    its own (``_core_one``)."""
    spec = build_spec(clinic, FORMULA)
    eng = fast.FastEngine()
    res = eng.fit(spec, reml=reml)
    stats, lay = eng.prepare(spec)
    cl = fast._classes(stats, lay)
    P = fast.pooled_of_classes(cl, stats, lay)
    vp = np.append(res.theta, res.sigma)
    g, H, J = batched.varpar_derivatives(P, vp, reml)
    np.testing.assert_allclose(res.gradient_varpar(vp), g, rtol=1e-9,
                               atol=1e-9 * float(np.abs(H).max()))
    np.testing.assert_allclose(res.hessian_varpar(vp), H, rtol=1e-10,
                               atol=1e-10 * float(np.abs(H).max()))
    np.testing.assert_allclose(res.jacobian_vcov_varpar(vp), J, rtol=1e-10,
                               atol=1e-10 * float(np.abs(J).max()))


@pytest.mark.parametrize("key", [
    np.array([3.0, 1.0, 3.0, 2.0, 1.0, 3.0]),
    np.array([5.0]),
    np.random.default_rng(4).integers(0, 7, 500).astype(float) * 1.37,
    np.array([np.nan, 1.0, np.nan]),
])
def test_unique_of_the_class_keys_equals_np_unique(key):
    """The classes' key factorised as np.unique does: first indices, inverse and counts."""
    first, inv, count = fast._unique_first_inverse_counts(key)
    _, f2, i2, c2 = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    if np.isnan(key).any():  # NaN != NaN: each its own class (np.unique merges them)
        assert count.sum() == key.size
        return
    np.testing.assert_array_equal(first, f2)
    np.testing.assert_array_equal(inv, i2.ravel())
    np.testing.assert_array_equal(count, c2)
