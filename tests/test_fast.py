"""The "fast" engine against lme4 fixtures, statsmodels, a dense O(n³) deviance and itself."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models import fast
from mfr_outcomes.models.spec import ENGINES, ModelSpec, RandomBlock

REF = Path(__file__).parent / "reference"


# ----------------------------------------------------------------------------------------------
# Hand-built ModelSpecs (independent of models/formula.py)
# ----------------------------------------------------------------------------------------------
def _column(data: pd.DataFrame, name: str) -> np.ndarray:
    """One column of R's treatment-coded model matrix, from its R name."""
    if name == "(Intercept)":
        return np.ones(len(data))
    out = np.ones(len(data))
    for part in name.split(":"):
        if part in data.columns:
            out = out * data[part].to_numpy(float)
            continue
        var = next(c for c in data.columns if part.startswith(c)
                   and not pd.api.types.is_numeric_dtype(data[c]))
        out = out * (data[var].to_numpy() == part[len(var):]).astype(float)
    return out


def _block(data: pd.DataFrame, group: str, terms: list[str], correlated: bool = True):
    levels = pd.Index(sorted(data[group].unique()))
    codes = levels.get_indexer(data[group]).astype(np.int64)
    Z = np.column_stack([_column(data, t) for t in terms])
    return RandomBlock(group=group, terms=terms, Z=Z, codes=codes, levels=levels,
                       correlated=correlated)


def spec_from(data: pd.DataFrame, response: str, fixed: list[str],
              blocks: list[tuple[str, list[str]]], formula: str = "") -> ModelSpec:
    return ModelSpec(
        formula=formula, response=response, y=data[response].to_numpy(float),
        X=np.column_stack([_column(data, f) for f in fixed]), fixed_names=list(fixed),
        blocks=[_block(data, g, t, correlated=len(t) > 1) for g, t in blocks], data=data)


def _terms(ranef_terms: list[str]) -> list[str]:
    return ["(Intercept)" if t == "(Intercept)" else t for t in ranef_terms]


# name -> random structure in lme4's block order
CASES = {
    "sleepstudy_slope_reml": [("Subject", ["(Intercept)", "Days"])],
    "sleepstudy_slope_ml": [("Subject", ["(Intercept)", "Days"])],
    "sleepstudy_intercept_ml": [("Subject", ["(Intercept)"])],
    "sleepstudy_uncorrelated_reml": [("Subject", ["(Intercept)"]), ("Subject", ["Days"])],
    "nested_reml": [("patient_id", ["(Intercept)", "post"]), ("therapist_id", ["(Intercept)"])],
    "nested_ml": [("patient_id", ["(Intercept)", "post"]), ("therapist_id", ["(Intercept)"])],
    "singular_reml": [("g", ["(Intercept)"])],
}


def load_case(name: str) -> tuple[dict, ModelSpec]:
    ref = json.loads((REF / f"fast_{name}.json").read_text())
    data = pd.DataFrame(ref["data"])
    response = ref["formula"].split("~")[0].strip()
    spec = spec_from(data, response, ref["fixed_names"], CASES[name], ref["formula"])
    return ref, spec


def dense_deviance(spec: ModelSpec, theta: np.ndarray, reml: bool) -> float:
    """lme4's profiled deviance by brute force on n×n matrices (independent reference)."""
    n, p = spec.n, spec.p
    Zs, lams = [], []
    k = 0
    for b in spec.blocks:
        nt = b.n_theta
        lam = np.zeros((b.q, b.q))
        idx = [(i, j) for j in range(b.q) for i in range(j, b.q)]
        for t, (i, j) in zip(theta[k:k + nt], idx):
            lam[i, j] = t
        k += nt
        J = np.zeros((n, b.n_levels))
        J[np.arange(n), b.codes] = 1.0
        Zs.append(np.hstack([J * b.Z[:, [c]] for c in range(b.q)]))
        lams.append(np.kron(lam, np.eye(b.n_levels)))
    Z = np.hstack(Zs)
    from scipy.linalg import block_diag

    Lam = block_diag(*lams)
    V = np.eye(n) + Z @ Lam @ Lam.T @ Z.T
    Vi = np.linalg.inv(V)
    XtViX = spec.X.T @ Vi @ spec.X
    beta = np.linalg.solve(XtViX, spec.X.T @ Vi @ spec.y)
    e = spec.y - spec.X @ beta
    r2 = e @ Vi @ e
    ld = np.linalg.slogdet(V)[1]
    if reml:
        return ld + np.linalg.slogdet(XtViX)[1] + (n - p) * (1 + np.log(2 * np.pi * r2 / (n - p)))
    return ld + n * (1 + np.log(2 * np.pi * r2 / n))


ENGINE = fast.FastEngine()


def test_registered():
    assert isinstance(ENGINES["fast"], fast.FastEngine)


@pytest.mark.parametrize("name", list(CASES))
def test_deviance_matches_lme4_devfun(name):
    """The algebra alone: lme4's own devfun at fixed θ, to 1e-10 relative."""
    ref, spec = load_case(name)
    stats, lay = ENGINE.prepare(spec)
    for probe in ref["devfun"]:
        theta = np.atleast_1d(np.asarray(probe["theta"], float))
        got = fast.profiled_deviance(stats, lay, theta, reml=ref["reml"])
        assert got == pytest.approx(probe["value"], rel=1e-10)


@pytest.mark.parametrize("name", list(CASES))
def test_fit_matches_lme4(name):
    """lme4 fitted with nloptwrap at xtol_abs 1e-12: estimates to 1e-6 relative."""
    ref, spec = load_case(name)
    res = ENGINE.fit(spec, reml=ref["reml"])
    assert res.converged
    assert res.objective == pytest.approx(ref["objective"], rel=1e-9, abs=1e-6)
    np.testing.assert_allclose(res.beta, ref["beta"], rtol=1e-6)
    assert res.sigma == pytest.approx(ref["sigma"], rel=1e-6)
    theta_ref = np.atleast_1d(np.asarray(ref["theta"], float))
    if ref["singular"]:
        # lme4's nloptwrap stops at ~2e-8; L-BFGS-B lands on the bound exactly
        assert any("singular" in m for m in res.messages)
        np.testing.assert_allclose(res.theta, theta_ref, atol=1e-6)
        assert res.theta[0] == 0.0
    else:
        np.testing.assert_allclose(res.theta, theta_ref, rtol=1e-5, atol=1e-6)
    vc = np.asarray(ref["vcov"])
    np.testing.assert_allclose(res.vcov_beta, vc, rtol=1e-5, atol=1e-9 * np.max(np.abs(vc)))
    # conditional modes and variances, per block (lme4 gathers blocks by grouping factor)
    by_group: dict[str, list[int]] = {}
    for k, b in enumerate(spec.blocks):
        by_group.setdefault(b.group, []).append(k)
    for rb in ref["ranef"]:
        ks = by_group[rb["group"]]
        lv = spec.blocks[ks[0]].levels
        order = lv.get_indexer(rb["levels"])
        modes = np.hstack([res.blups[k] for k in ks])[order]
        scale = np.max(np.abs(rb["modes"])) + 1e-12
        np.testing.assert_allclose(modes, np.asarray(rb["modes"], float).reshape(modes.shape),
                                   atol=1e-5 * scale + 1e-10)
        cv = [res.blup_condvar[k] for k in ks]
        for j, lev in enumerate(order):
            mine = np.zeros((modes.shape[1],) * 2)
            off = 0
            for c in cv:
                q = c.shape[1]
                mine[off:off + q, off:off + q] = c[lev]
                off += q
            theirs = np.asarray(rb["condvar"][j], float).reshape(mine.shape)
            if len(ks) > 1:  # lme4 reports only the diagonal for separate blocks
                mine = np.diag(np.diag(mine))
            np.testing.assert_allclose(mine, theirs, rtol=1e-4,
                                       atol=1e-8 * np.max(theirs) + 1e-12)


@pytest.mark.parametrize("name", ["sleepstudy_slope_reml", "nested_reml", "nested_ml"])
def test_varpar_closures_match_lmertest(name):
    ref, spec = load_case(name)
    res = ENGINE.fit(spec, reml=ref["reml"])
    vp = np.asarray(ref["varpar"]["varpar"], float)
    assert res.devfun_varpar(vp) == pytest.approx(ref["varpar"]["value"], rel=1e-10)
    np.testing.assert_allclose(res.vcov_varpar(vp), np.asarray(ref["varpar"]["covbeta"]),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["sleepstudy_slope_reml", "nested_ml", "singular_reml"])
def test_deviance_matches_dense(name):
    _, spec = load_case(name)
    stats, lay = ENGINE.prepare(spec)
    rng = np.random.default_rng(5)
    for reml in (True, False):
        theta = np.abs(rng.normal(size=spec.n_theta)) + 0.1
        assert fast.profiled_deviance(stats, lay, theta, reml) == pytest.approx(
            dense_deviance(spec, theta, reml), rel=1e-10)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("name", ["sleepstudy_slope_reml", "sleepstudy_uncorrelated_reml"])
def test_gradient_matches_finite_differences(name, reml):
    _, spec = load_case(name)
    stats, lay = ENGINE.prepare(spec)
    for theta in (np.array([0.7, -0.2, 0.3])[:spec.n_theta], np.array([1.3, 0.05, 0.6])[
            :spec.n_theta]):
        ev = fast._evaluate(stats, lay, theta)
        g = fast._gradient_single(stats, lay, ev, reml)
        h = 1e-5
        fd = np.array([(fast.profiled_deviance(stats, lay, theta + h * e, reml)
                        - fast.profiled_deviance(stats, lay, theta - h * e, reml)) / (2 * h)
                       for e in np.eye(theta.size)])
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)


def test_chunked_statistics_equal_whole():
    _, spec = load_case("nested_reml")
    lay, _ = fast.layout_of(spec)
    arrays = {"y": spec.y, "X": spec.X, "Z": fast._z_all(spec, lay), "codes": lay.inner_codes,
              "n_groups": lay.n_inner, "outer_codes": lay.outer_codes, "n_outer": lay.n_outer}
    whole = fast.sufficient_statistics(arrays)
    # chunks holding whole patients (the data are sorted by patient), and arbitrary cuts
    cuts = np.flatnonzero(np.r_[True, np.diff(lay.inner_codes) != 0])
    bounds = [0, cuts[13], cuts[30], spec.n]
    parts = [fast.sufficient_statistics(arrays, slice(a, b)) for a, b in zip(bounds, bounds[1:])]
    parts_rand = [fast.sufficient_statistics(arrays, idx)
                  for idx in np.array_split(np.random.default_rng(1).permutation(spec.n), 5)]
    for combined in (fast.combine(parts), fast.combine(parts_rand)):
        assert combined.n == whole.n
        np.testing.assert_array_equal(combined.outer_of, whole.outer_of)
        for f in ("XtX", "Xty", "ZtZ", "ZtX", "Zty"):
            np.testing.assert_allclose(getattr(combined, f), getattr(whole, f), rtol=1e-12,
                                       atol=1e-9)
        assert combined.yty == pytest.approx(whole.yty, rel=1e-12)
    # the spec path equals the arrays path
    via_spec = fast.sufficient_statistics(spec)
    np.testing.assert_allclose(via_spec.ZtX, whole.ZtX)


def test_large_fit_chunked(monkeypatch):
    """Fits through the chunked path equal the one-pass fit."""
    _, spec = load_case("nested_reml")
    one = ENGINE.fit(spec)
    monkeypatch.setattr(fast, "_CHUNK_ROWS", 50)
    many = ENGINE.fit(spec)
    # sums in another order move the optimiser's path by rounding: estimates agree to its tolerance
    np.testing.assert_allclose(many.beta, one.beta, rtol=1e-6)
    assert many.objective == pytest.approx(one.objective, rel=1e-12)
    s1, lay = ENGINE.prepare(spec)
    assert fast.profiled_deviance(many.internals.stats, lay, one.theta) == pytest.approx(
        fast.profiled_deviance(s1, lay, one.theta), rel=1e-13)


def test_statsmodels_agrees():
    """statsmodels MixedLM (REML) on sleepstudy: same β, σ² and random-effect covariance.

    statsmodels' default "lbfgs" stops early here (cov_re 6e-5 off, REML criterion 1.8e-10 above
    the optimum that lme4 and this engine reach); its "bfgs" reaches that optimum (to ~1e-7) even
    though it flags non-convergence, so the comparison uses it.
    """
    import statsmodels.formula.api as smf

    ref, spec = load_case("sleepstudy_slope_reml")
    data = pd.DataFrame(ref["data"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm = smf.mixedlm("Reaction ~ Days", data, groups="Subject", re_formula="~Days").fit(
            reml=True, method=["bfgs"], gtol=1e-12)
    res = ENGINE.fit(spec, reml=True)
    np.testing.assert_allclose(res.beta, sm.fe_params.to_numpy(), rtol=1e-6)
    assert res.sigma ** 2 == pytest.approx(sm.scale, rel=1e-6)
    lam = np.array([[res.theta[0], 0], [res.theta[1], res.theta[2]]])
    np.testing.assert_allclose(res.sigma ** 2 * lam @ lam.T, sm.cov_re.to_numpy(), rtol=1e-6)


def test_supports_rejects_crossed_and_reports_why():
    rng = np.random.default_rng(0)
    d = pd.DataFrame({"a": rng.choice(list("abcde"), 200), "b": rng.choice(list("vwxyz"), 200),
                      "y": rng.normal(size=200)})
    spec = spec_from(d, "y", ["(Intercept)"], [("a", ["(Intercept)"]), ("b", ["(Intercept)"])])
    ok, why = ENGINE.supports(spec)
    assert not ok and "crossed" in why
    # a patient seen by two therapists
    _, nested = load_case("nested_reml")
    data = nested.data.copy()
    data.loc[0, "therapist_id"] = "t_other" if data.loc[0, "therapist_id"] != "t1" else "t2"
    spec2 = spec_from(data, "value", nested.fixed_names, CASES["nested_reml"])
    ok, why = ENGINE.supports(spec2)
    assert not ok and "nested" in why
    _, single = load_case("sleepstudy_intercept_ml")
    assert ENGINE.supports(single) == (True, "")


@pytest.mark.parametrize("reml", [True, False])
def test_pooled_classes_equal_per_group_path(reml):
    """Groups pooled by equal ZᵢᵀZᵢ give the same deviance, gradient and fit as group by group."""
    ref, spec = load_case("sleepstudy_slope_reml")
    data = spec.data.iloc[np.r_[0:175]]  # the last subject loses 5 days: two classes
    spec = spec_from(data, "Reaction", spec.fixed_names, CASES["sleepstudy_slope_reml"])
    stats, lay = ENGINE.prepare(spec)
    cl = fast._classes(stats, lay)
    assert cl is not None and sorted(cl.count) == [1, 17]
    theta = np.array([0.8, 0.1, 0.3])
    ev_c = fast._evaluate_classes(cl, stats, lay, theta)
    ev_g = fast._evaluate(stats, lay, theta)
    assert fast._objective(ev_c, stats.n, stats.p, reml) == pytest.approx(
        fast._objective(ev_g, stats.n, stats.p, reml), rel=1e-12)
    np.testing.assert_allclose(fast._gradient_classes(cl, stats, lay, ev_c, reml),
                               fast._gradient_single(stats, lay, ev_g, reml), rtol=1e-9)
    pooled = ENGINE.fit(spec, reml=reml)
    grouped = ENGINE.fit(spec, reml=reml, options={"compress": False})
    assert pooled.n_classes == 2 and grouped.n_classes is None
    np.testing.assert_allclose(pooled.beta, grouped.beta, rtol=1e-7)
    assert pooled.objective == pytest.approx(grouped.objective, rel=1e-12)


def test_sleepstudy_published_values():
    """The numbers in lme4's documentation (Bates et al. 2015, sec. 1): REML criterion 1743.628,
    fixed effects 251.405 and 10.467."""
    _, spec = load_case("sleepstudy_slope_reml")
    res = ENGINE.fit(spec, reml=True)
    assert round(res.objective, 3) == 1743.628
    np.testing.assert_array_equal(np.round(res.beta, 3), [251.405, 10.467])


@pytest.mark.parametrize("reml", [True, False])
def test_nested_gradient_matches_finite_differences(reml):
    _, spec = load_case("nested_reml")
    stats, lay = ENGINE.prepare(spec)
    for theta in (np.array([1.1, 0.05, 0.9, 0.8]), np.array([0.6, -0.3, 0.4, 1.4]),
                  np.array([1.2, 0.0, 0.0, 0.3])):
        ev = fast._evaluate(stats, lay, theta)
        g = fast._gradient_nested(stats, lay, ev, reml)
        h = 1e-5
        fd = np.array([(fast.profiled_deviance(stats, lay, theta + h * e, reml)
                        - fast.profiled_deviance(stats, lay, theta - h * e, reml)) / (2 * h)
                       for e in np.eye(theta.size)])
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)
    # the finite-difference optimiser path reaches the same optimum
    a = ENGINE.fit(spec, reml=reml)
    b = ENGINE.fit(spec, reml=reml, options={"analytic_gradient": False})
    assert a.optimizer.endswith("(analytic gradient)")
    assert a.objective == pytest.approx(b.objective, rel=1e-10)


def _unbalanced_nested(reml_name: str = "nested_reml"):
    """The nested fixture with rows dropped so that patients fall in several ZᵢᵀZᵢ classes."""
    _, spec = load_case(reml_name)
    d = spec.data
    which = pd.factorize(d["patient_id"], sort=True)[0] % 3
    drop = (((which == 1) & (d["session_number"] == 4) & (d["post"] == 1))
            | ((which == 2) & (d["session_number"] >= 3) & (d["post"] == 0)))
    data = d.loc[~drop.to_numpy()]
    return spec_from(data, spec.response, spec.fixed_names, CASES[reml_name])


@pytest.mark.parametrize("reml", [True, False])
def test_nested_pooled_classes_equal_per_group_path(reml):
    """Patients pooled by ZᵢᵀZᵢ class and (therapist, class) pair: same deviance (also against
    the dense V), gradient and fit as patient by patient."""
    spec = _unbalanced_nested()
    stats, lay = ENGINE.prepare(spec)
    cl = fast._classes(stats, lay)
    assert isinstance(cl, fast._NestedClasses)
    assert cl.count.size == 3 and cl.pair_class.size <= stats.n_groups // 2
    assert cl.count.sum() == stats.n_groups == cl.pair_count.sum()
    for theta in (np.array([1.1, 0.05, 0.9, 0.8]), np.array([0.6, -0.3, 0.4, 1.4]),
                  np.array([1.2, 0.0, 0.0, 0.3])):
        ev_c = fast._eval_any(stats, lay, theta, cl)
        ev_g = fast._evaluate(stats, lay, theta)
        f_c = fast._objective(ev_c, stats.n, stats.p, reml)
        assert f_c == pytest.approx(fast._objective(ev_g, stats.n, stats.p, reml), rel=1e-12)
        assert f_c == pytest.approx(dense_deviance(spec, theta, reml), rel=1e-10)
        np.testing.assert_allclose(ev_c.beta, ev_g.beta, rtol=1e-10)
        np.testing.assert_allclose(fast._gradient_nested_classes(cl, stats, lay, ev_c, reml),
                                   fast._gradient_nested(stats, lay, ev_g, reml),
                                   rtol=1e-8, atol=1e-8)
    pooled = ENGINE.fit(spec, reml=reml)
    grouped = ENGINE.fit(spec, reml=reml, options={"compress": False})
    assert pooled.n_classes == cl.count.size and grouped.n_classes is None
    assert pooled.converged and grouped.converged
    np.testing.assert_allclose(pooled.beta, grouped.beta, rtol=1e-6)
    np.testing.assert_allclose(pooled.theta, grouped.theta, rtol=1e-5, atol=1e-6)
    assert pooled.objective == pytest.approx(grouped.objective, rel=1e-11)
    # the conditional modes come from the per-group pass at the optimum either way
    for bp, bg in zip(pooled.blups, grouped.blups):
        np.testing.assert_allclose(bp, bg, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reml", [True, False])
def test_nested_pooled_gradient_matches_finite_differences(reml):
    spec = _unbalanced_nested()
    stats, lay = ENGINE.prepare(spec)
    cl = fast._classes(stats, lay)
    for theta in (np.array([1.1, 0.05, 0.9, 0.8]), np.array([0.6, -0.3, 0.4, 1.4]),
                  np.array([1.2, 0.0, 0.0, 0.3])):
        ev = fast._eval_any(stats, lay, theta, cl)
        g = fast._gradient_nested_classes(cl, stats, lay, ev, reml)
        h = 1e-5
        fd = np.array([(fast.profiled_deviance(stats, lay, theta + h * e, reml, cl)
                        - fast.profiled_deviance(stats, lay, theta - h * e, reml, cl)) / (2 * h)
                       for e in np.eye(theta.size)])
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)


def test_blas_threads_scope_is_one_thread_and_restored() -> None:
    """models/threads.py: one BLAS thread inside the scope (and inside a fit), the previous
    count after; large blocks keep BLAS's threads; scopes nest."""
    from threadpoolctl import threadpool_info

    from mfr_outcomes.models.threads import blas_threads, current_limit

    def counts():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = counts()
    with blas_threads() as lim:
        assert lim == 1 and current_limit() == 1 and set(counts()) == {1}
        with blas_threads():
            assert set(counts()) == {1}
        assert current_limit() == 1
    assert counts() == before and current_limit() is None
    with blas_threads(dim=5000) as lim:
        assert lim is None and counts() == before


@pytest.mark.parametrize("seed", [0, 1])
def test_pooled_omega_equals_the_sum_over_groups(seed):
    """Σ over each class of the outer products (ZᵢᵀXa_i)[a] (ZᵢᵀXa_i)[b]ᵀ, as the classes' pooling
    computes it (one-group classes in one call, the sort of the class keys reused), equals the
    sum group by group; the sort reused is np.argsort of the class numbers, stable."""
    rng = np.random.default_rng(seed)
    key = rng.permutation(np.r_[np.repeat([3.0, 1.0, 2.0], [20, 15, 2]), 7.0, 5.0, 9.0, 4.0])
    q, m, G = 2, 4, key.size  # four classes of one group, larger ones
    ZXa = rng.normal(size=(q, m, G))
    first, cls, count, order = fast._unique_first_inverse_counts(key, with_order=True)
    np.testing.assert_array_equal(order, np.argsort(cls, kind="stable"))
    assert (count == 1).sum() >= 2 and count.max() > 2
    K = count.size
    got = fast._pooled_omega(ZXa, cls, count, K, order)
    want = np.zeros((K, q, q, m, m))
    for g in range(G):
        v = ZXa[:, :, g]
        want[cls[g]] += v[:, None, :, None] * v[None, :, None, :]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fast._pooled_omega(ZXa, cls, count, K), want, rtol=1e-12,
                               atol=1e-12)


def test_line_min_is_the_minimiser_of_the_interpolating_cubic() -> None:
    # BFGS's backtracking step: exact for a cubic (its local minimiser, a closed form) and for a
    # quadratic (the cubic through a quadratic's values and slopes is that quadratic)
    rng = np.random.default_rng(41)
    for _ in range(50):
        a, b = rng.uniform(0.1, 2.0, 2)
        c = -rng.uniform(0.1, 2.0)  # descent at 0
        t = rng.uniform(0.5, 3.0)

        def phi(s, a=a, b=b, c=c):
            return a * s ** 3 + b * s ** 2 + c * s + 1.0

        def dphi(s, a=a, b=b, c=c):
            return 3 * a * s ** 2 + 2 * b * s + c

        want = (-b + np.sqrt(b * b - 3 * a * c)) / (3 * a)  # the root of φ' with φ'' > 0
        got = fast._line_min(phi(0.0), c, phi(t), dphi(t), t)
        assert got == pytest.approx(want, rel=1e-9)
        quad = fast._line_min(1.0, c, 1.0 + c * t + b * t * t, c + 2 * b * t, t)
        assert quad == pytest.approx(-c / (2 * b), rel=1e-9)
    # a slope that is not finite: the quadratic through f0, s0 and f1
    assert fast._line_min(1.0, -1.0, 1.5, np.nan, 1.0) == pytest.approx(1.0 / 3.0)


def _random_visits(seed: int, n_patients: int, slope_sd: float) -> pd.DataFrame:
    """Patients with 2-6 sessions of a pre and a post measurement (a few pre-only), an
    intercept, a post effect and a session trend varying by patient (*slope_sd* for post's)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        b0, b1, b2 = rng.normal(0.0, [1.0, slope_sd, 0.2])
        for s in range(1, int(rng.integers(2, 7)) + 1):
            for post in ((0,) if rng.random() < 0.1 else (0, 1)):
                rows.append((f"p{i:03d}", s, post, 5.0 + b0 + (b1 - 0.6) * post
                             + (b2 - 0.3) * s + rng.normal(0.0, 0.7)))
    d = pd.DataFrame(rows, columns=["patient_id", "session_number", "post", "value"])
    d["(Intercept)"] = 1.0
    return d


@pytest.mark.parametrize("terms", [["(Intercept)"], ["(Intercept)", "post"],
                                   ["(Intercept)", "post", "session_number"]])
@pytest.mark.parametrize("slope_sd", [0.5, 0.0])
def test_pooled_quasi_newton_equals_general_path_on_random_designs(terms, slope_sd):
    """The pooled path (classes, BFGS with its backtracking) against the per-group path
    (L-BFGS-B) on random unbalanced designs, q = 1, 2, 3, with a patient post effect and with
    none (a singular fit for q ≥ 2); and the statistics against sums group by group, with Z
    row-major and column-major (the products read Z's columns as contiguous rows)."""
    for seed in (3, 4):
        d = _random_visits(seed, 60, slope_sd)
        spec = spec_from(d, "value", ["(Intercept)", "post", "session_number"],
                         [("patient_id", terms)])
        pooled = ENGINE.fit(spec)
        grouped = ENGINE.fit(spec, options={"compress": False})
        assert pooled.n_classes is not None and grouped.n_classes is None
        assert pooled.objective == pytest.approx(grouped.objective, rel=1e-10, abs=1e-8)
        np.testing.assert_allclose(pooled.beta, grouped.beta, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pooled.theta, grouped.theta, atol=2e-3)
        lay, _ = fast.layout_of(spec)
        Z = fast._z_all(spec, lay)
        for Zo in (np.ascontiguousarray(Z), np.asfortranarray(Z)):
            st = fast.sufficient_statistics({"y": spec.y, "X": spec.X, "Z": Zo,
                                             "codes": lay.inner_codes, "n_groups": lay.n_inner})
            for g in (0, 17, lay.n_inner - 1):
                r = lay.inner_codes == g
                np.testing.assert_allclose(st.ZtX[:, :, g], Z[r].T @ spec.X[r], rtol=1e-13)
                np.testing.assert_allclose(st.ZtZ[:, :, g], Z[r].T @ Z[r], rtol=1e-13)
                np.testing.assert_allclose(st.Zty[:, g], Z[r].T @ spec.y[r], rtol=1e-13)
