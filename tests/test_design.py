"""The typed Design (mfr_outcomes.models.design): the lean path against formulaic, R's poly and
scale, cbind and offset, SQL rendering, and a Design that holds no rows."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models import domain
from mfr_outcomes.models import grammar as g
from mfr_outcomes.models.design import Design, poly_coefs, poly_matrix
from mfr_outcomes.models.fit import fit_mixed
from mfr_outcomes.models.formula import build_spec, fixed_matrix, parse_formula
from mfr_outcomes.models.spec import AUTO_ORDER, ENGINES

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "tests" / "reference" / "data"

# Every formula written in the package, its tests, notebooks and benchmarks (the lean path must
# reproduce formulaic on each one it accepts); the scan below adds any written since.
FORMULAS = [
    "value ~ post * technique + session_number + (post | patient_id)",
    "value ~ post * technique + session_number + (post | patient_id) + (1 | therapist_id)",
    "value ~ post * technique + session_number + (1 | therapist_id) + (post | patient_id)",
    "value ~ post + session_number + (post | patient_id)",
    "value ~ post + (1 | therapist_id/patient_id)",
    "value ~ post * technique + (post | patient_id)",
    "value ~ post * technique + (1 | patient_id)",
    "value ~ post * technique + session_number + (1 | patient_id)",
    "value ~ post + technique + session_number + (1 | patient_id)",
    "value ~ post + session_number + side + (post | patient_id)",
    "value ~ post + weeks + (post | patient_id)",
    "value ~ post + (post | patient_id)",
    "value ~ weeks + (weeks | patient_id) + (1 | therapist_id)",
    "value ~ weeks + technique + (1 | patient_id)",
    "value ~ weeks + (1 | patient_id)",
    "value ~ technique + (post | patient_id)",
    "value ~ session_number + (1 | patient_id)",
    "value ~ session_number * condition + (session_number | patient_id)",
    "value ~ stage + (1 | patient_id) + (1 | therapist_id)",
    "value ~ arm + (1 | patient_id)",
    "value ~ post * affected + technique + session_number + (post | patient_id)",
    "Reaction ~ Days + (Days | Subject)",
    "Reaction ~ Days + (1 | Subject)",
    "Reaction ~ Days + (Days || Subject)",
    "Reaction ~ Days + ((1 | Subject) + (0 + Days | Subject))",
    "Reaction ~ 1 + (1 | Subject) + (1 | day_f)",
    "diameter ~ 1 + (1 | plate) + (1 | sample)",
    "y ~ x + (x | g)",
    "y ~ x + (1 | g)",
    "y ~ x - 1 + (1 | g)",
    "y ~ x + arm + home + (arm | g)",
    "y ~ x + arm + (1 | g)",
    "y ~ post * arm + age + (post | id)",
    "y ~ post + (1 | patient_id)",
    "y ~ post + (post || patient_id)",
    "y ~ post + (post | patient_id)",
    "y ~ post + (1 | therapist_id/patient_id)",
    "y ~ post + (1 | therapist_id) + (post | patient_id)",
    "y ~ post * technique + (post | patient_id)",
    "y ~ C(patient_id) + (1 | therapist_id)",
    "y ~ post + post2 + (1 | patient_id)",
    "y ~ post + technique + any_technique + post_and_half + (1 | patient_id)",
    "y ~ (1 | g)",
    # the domain models' own formulas
    domain.prepost_formula(by="technique", therapist_term=" + (1 | therapist_id)"),
    domain.prepost_formula(by=None, covariates=["age_years"], side_factor=True),
    domain.prepost_formula(by="arm", time="weeks"),
    "value ~ weeks * technique + age_years + (weeks | patient_id) + (1 | therapist_id)",
    "value ~ stage + age_years + side + (1 | patient_id)",
    # the grammar's functions
    "value ~ C(session_number) + log(weeks + 1) + (1 | patient_id)",
    "value ~ factor(session_number) * post + (1 | patient_id)",
    "value ~ poly(weeks, 2) + scale(age_years) + center(symptom_weeks) + (1 | patient_id)",
    "value ~ I(weeks ** 2) + I(-weeks / 2) + exp(post) + (post | patient_id)",
    "value ~ C(technique, Treatment('massage')) * post + (1 | patient_id)",
    "value ~ 0 + technique + post:technique + (1 | patient_id)",
    "value ~ (post + weeks + technique)^2 + (1 | patient_id)",
    "value ~ technique / weeks + (0 + post | patient_id)",
    "value ~ post + (technique | patient_id)",
    "value ~ post + (0 + technique || patient_id)",
]


def _scan_formulas() -> list[str]:
    """Formula literals written anywhere in the repository's Python (no f-strings)."""
    pat = re.compile(r"""(?<![{f])["']([A-Za-z_][A-Za-z0-9_]* ~ [^"'{}\n]*)["']""")
    found = []
    for path in [*ROOT.glob("tests/*.py"), *ROOT.glob("notebooks/*.py"),
                 *ROOT.glob("mfr_outcomes/**/*.py"), *ROOT.glob("benchmarks/*.py")]:
        for m in pat.finditer(path.read_text()):
            found.append(" ".join(m.group(1).split()))
    return sorted(set(found))


@pytest.fixture(scope="module")
def frames(small_study) -> list[pd.DataFrame]:
    f = small_study.frame("pain_nrs").copy()
    rng = np.random.default_rng(3)
    patients = f["patient_id"].unique()
    arm = dict(zip(patients, rng.choice(["active", "placebo"], len(patients))))
    f["arm"] = f["patient_id"].map(arm)
    f["affected"] = (f["side"] != "none").astype(int)
    f["stage"] = pd.Categorical(np.where(f["session_number"] <= 2, "baseline",
                                         np.where(f["session_number"] <= 4, "discharge",
                                                  "follow-up")),
                                categories=["baseline", "discharge", "follow-up"])
    sleep = pd.read_csv(REF / "sleepstudy.csv")
    sleep["day_f"] = sleep["Days"].astype(str)
    pen = pd.read_csv(REF / "penicillin.csv")
    n = 120
    gen = pd.DataFrame({
        "y": rng.normal(size=n), "x": rng.normal(size=n), "g": np.repeat(np.arange(12), 10),
        "arm": rng.choice(["a", "b", "c"], n), "home": rng.integers(0, 2, n).astype(bool),
        "age": rng.uniform(20, 80, n), "id": [f"p{i // 4}" for i in range(n)],
        "post": np.tile([0, 1], n // 2),
        "technique": pd.Categorical(rng.choice(["massage", "stretching", "direct_pressure"], n),
                                    categories=["direct_pressure", "stretching", "massage",
                                                "combined"]),
        "patient_id": [f"P{i // 6:02d}" for i in range(n)],
        "therapist_id": [f"T{i // 30}" for i in range(n)]})
    gen = gen.assign(post2=gen["post"] * 2.0, any_technique=1.0, post_and_half=gen["post"] + 0.5)
    return [f, sleep, pen, gen]


def _frame_for(formula: str, frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    try:
        tree = g.parse(formula)
    except ValueError:
        return None
    need = set(g.variables(tree.response)) | set(g.variables(tree.rhs))
    for f in frames:
        if need <= set(f.columns):
            return f
    return None


def _formulaic_reference(spec, formula: str):
    """X, names and each block's Z as formulaic builds them on the same rows."""
    from formulaic import model_matrix

    df = spec.data
    p = parse_formula(formula.replace("factor(", "C("))  # formulaic has C() only
    mm = model_matrix(p.fixed, df, na_action="raise")
    names = [("(Intercept)" if c == "Intercept" else c).replace("C(", "factor(")
             if "factor(" in formula else ("(Intercept)" if c == "Intercept" else c)
             for c in mm.columns]
    zs = []
    for layout in spec.design.random:
        zm = model_matrix(layout.expr, df, na_action="raise")
        zn = ["(Intercept)" if c == "Intercept" else c for c in zm.columns]
        zs.append(pd.DataFrame(np.asarray(zm, float), columns=zn)[list(layout.terms)].to_numpy())
    return np.asarray(mm, dtype=float), names, zs


def _beta(spec) -> np.ndarray:
    for name in AUTO_ORDER:
        if name in ENGINES and ENGINES[name].supports(spec)[0]:
            return ENGINES[name].fit(spec, reml=True).beta
    raise AssertionError("no engine")


def test_lean_path_equals_formulaic_on_every_formula_of_the_suite(frames) -> None:
    formulas = list(dict.fromkeys(FORMULAS + _scan_formulas()))
    compared, refitted = [], []
    for formula in formulas:
        frame = _frame_for(formula, frames)
        if frame is None:
            continue
        try:
            spec = build_spec(frame, formula)
        except ValueError:  # formulas of error tests (no random term, a missing column...)
            continue
        X, names, zs = _formulaic_reference(spec, formula)
        assert spec.design.all_names == names, formula
        np.testing.assert_allclose(spec.design.fixed_matrix(spec.data, full=True), X,
                                   rtol=1e-12, atol=1e-12, err_msg=formula)
        for b, z in zip(spec.blocks, zs):
            np.testing.assert_allclose(b.Z, z, rtol=1e-12, atol=1e-12, err_msg=formula)
        keep = [names.index(c) for c in spec.fixed_names]
        X_ref = np.ascontiguousarray(X[:, keep])
        if not np.array_equal(spec.X, X_ref):
            # bit-identical inputs give identical estimates (the engines are deterministic);
            # where X differs in the last bits (poly, scale, I()), refit with formulaic's X.
            beta_lean = _beta(spec)
            beta_ref = _beta(dataclasses.replace(spec, X=X_ref))
            # X agrees to 1e-12; the optimiser then stops within its own tolerance
            np.testing.assert_allclose(beta_lean, beta_ref, rtol=1e-6, atol=1e-6,
                                       err_msg=formula)
            refitted.append(formula)
        compared.append(formula)
    assert len(compared) >= len(FORMULAS) - 3, sorted(set(FORMULAS) - set(compared))
    assert refitted  # the transformations' columns do differ in the last bits


def test_factor_is_c(frames) -> None:
    f = frames[0]
    a = build_spec(f, "value ~ C(session_number) * post + (1 | patient_id)")
    b = build_spec(f, "value ~ factor(session_number) * post + (1 | patient_id)")
    np.testing.assert_array_equal(a.X, b.X)
    assert [n.replace("C(", "factor(") for n in a.fixed_names] == b.fixed_names
    assert "factor(session_number)[T.2]" in b.fixed_names
    assert a.design.categories["session_number"] == b.design.categories["session_number"]


def test_cbind_gives_proportion_and_weights_and_offset_is_summed() -> None:
    rng = np.random.default_rng(2)
    n = 40
    d = pd.DataFrame({"s": rng.integers(0, 10, n), "f": rng.integers(1, 10, n),
                      "x": rng.normal(size=n), "days": rng.uniform(1, 30, n),
                      "g": np.repeat(np.arange(8), 5)})
    spec = build_spec(d, "cbind(s, f) ~ x + offset(log(days)) + (1 | g)")
    np.testing.assert_allclose(spec.y, d["s"] / (d["s"] + d["f"]))
    np.testing.assert_allclose(spec.weights, d["s"] + d["f"])
    np.testing.assert_allclose(spec.offset, np.log(d["days"]))
    assert spec.fixed_names == ["(Intercept)", "x"] and spec.response == "cbind(s, f)"
    assert spec.design.response_kind == "cbind"
    plain = build_spec(d, "x ~ s + offset(days) + offset(2 * days) + (1 | g)")
    assert plain.weights is None
    np.testing.assert_allclose(plain.offset, 3 * d["days"])
    assert build_spec(d, "x ~ s + (1 | g)").offset is None
    with pytest.raises(ValueError, match="generalised model"):
        fit_mixed(d, "cbind(s, f) ~ x + (1 | g)")
    with pytest.raises(ValueError, match="cannot be part of an interaction"):
        build_spec(d, "x ~ s:offset(days) + (1 | g)")


def test_poly_matches_r() -> None:
    # R: unclass(poly(1:5, 2))
    r = np.array([[-0.63245553203367588, 0.53452248382484879],
                  [-0.31622776601683777, -0.26726124191242440],
                  [0.0, -0.53452248382484868],
                  [0.31622776601683783, -0.26726124191242440],
                  [0.63245553203367588, 0.53452248382484879]])
    x = np.arange(1.0, 6.0)
    np.testing.assert_allclose(poly_matrix(x, *poly_coefs(x, 2)), r, atol=1e-14)
    # R: q <- poly(c(0.5, 1.7, 2.2, 4.9, 3.3, 3.1), 3); predict(q, c(0, 2, 6))
    x = np.array([0.5, 1.7, 2.2, 4.9, 3.3, 3.1])
    coefs = poly_coefs(x, 3)
    Z = poly_matrix(x, *coefs)
    np.testing.assert_allclose(Z.T @ Z, np.eye(3), atol=1e-13)  # orthonormal
    np.testing.assert_allclose(Z.sum(axis=0), 0.0, atol=1e-13)  # orthogonal to the intercept
    np.testing.assert_allclose(Z[0], [-0.62667355678519010, 0.57651367873802384,
                                      -0.32022925794952933], rtol=1e-12)
    np.testing.assert_allclose(poly_matrix(np.array([0.0, 2.0, 6.0]), *coefs), [
        [-0.77470668043523494, 1.05593599320236375, -1.68975203842575694],
        [-0.18257418583505539, -0.27584972198254398, 0.47358140572356244],
        [1.00169080336530381, 1.74780718902726306, 4.28951328936541199]], rtol=1e-11)
    with pytest.raises(ValueError, match="distinct values"):
        poly_coefs(np.array([1.0, 1.0, 2.0]), 2)


def test_scale_matches_r_and_new_data_uses_the_fitted_centre() -> None:
    d = pd.DataFrame({"y": [1.0, 3.0, 2.0, 5.0, 4.0, 6.0, 2.0, 8.0],
                      "x": [1.0, 2.0, 4.0, 8.0, 1.0, 2.0, 4.0, 8.0], "g": [1, 1, 2, 2, 3, 3, 4, 4]})
    spec = build_spec(d, "y ~ scale(x) + (1 | g)")
    # R: as.vector(scale(c(1, 2, 4, 8, 1, 2, 4, 8)))
    r = np.array([-0.959506213587511758, -0.610594863192052917, 0.087227837598864696,
                  1.482873239180700020])
    np.testing.assert_allclose(spec.X[:4, 1], r, rtol=1e-14)
    np.testing.assert_allclose(build_spec(d, "y ~ center(x) + (1 | g)").X[:, 1], d["x"] - 3.75)
    new = fixed_matrix(spec, pd.DataFrame({"x": [3.75, 8.0]}))
    np.testing.assert_allclose(new[:, 1], [0.0, r[3]], atol=1e-15)


def test_new_data_with_one_level_gets_every_column_and_unknown_levels_are_named(frames) -> None:
    f = frames[0]
    spec = build_spec(f, "value ~ post * technique + session_number + (post | patient_id)")
    one = f.head(3).assign(technique="massage")
    X = fixed_matrix(spec, one)
    assert X.shape == (3, spec.p)
    assert (X[:, spec.fixed_names.index("technique[T.massage]")] == 1).all()
    with pytest.raises(ValueError, match="not fitted on"):
        fixed_matrix(spec, one.assign(technique="cupping"))


def test_sql_columns_compute_the_same_matrix_in_duckdb(frames) -> None:
    duckdb = pytest.importorskip("duckdb")
    f = frames[0]
    formula = ("value ~ post * technique + C(session_number) + log(weeks + 1) + I(weeks ** 2) "
               "+ scale(age_years) + (post | patient_id)")
    spec = build_spec(f, formula)
    cols = spec.design.sql_columns()
    assert [c for c, _ in cols] == spec.fixed_names
    data = spec.data[["value", "post", "technique", "session_number", "weeks", "age_years"]]
    data = data.assign(technique=data["technique"].astype(str),
                       age_years=data["age_years"].astype(float))
    con = duckdb.connect()
    con.register("d", data)
    sql = "SELECT " + ", ".join(f'{e} AS "{i}"' for i, (_, e) in enumerate(cols)) + " FROM d"
    X = con.execute(sql).fetchnumpy()
    got = np.column_stack([np.asarray(X[str(i)], dtype=float) for i in range(len(cols))])
    np.testing.assert_allclose(got, spec.X, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="cannot be written in SQL"):
        build_spec(f, "value ~ poly(weeks, 2) + (1 | patient_id)").design.sql_columns()


def test_design_holds_no_rows_and_says_how_it_was_built(frames) -> None:
    spec = build_spec(frames[0], "value ~ post * technique + poly(weeks, 2) + (post | patient_id) "
                                 "+ (1 | therapist_id)")
    d = spec.design
    assert isinstance(d, Design) and d.builder == "lean"
    for fld in dataclasses.fields(d):
        v = getattr(d, fld.name)
        assert not isinstance(v, (pd.DataFrame, pd.Series, np.ndarray)), fld.name
    sizes = [np.size(p) for f in d.factors.values() for p in f.params]
    assert max(sizes) <= 4  # poly's alpha and norm2, not rows
    assert [r.group for r in d.random] == [b.group for b in spec.blocks]
    assert d.fixed_variables == ("post", "technique", "weeks")
    assert [t.label for t in d.fixed_terms] == ["post", "technique", "poly(weeks, 2)",
                                                "post:technique"]
    again = d.fixed_matrix(spec.data.iloc[::-1])
    np.testing.assert_array_equal(again, spec.X[::-1])


def test_transformations_that_are_not_finite_are_named() -> None:
    d = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0], "x": [1.0, 0.0, 2.0, 3.0], "g": [1, 1, 2, 2]})
    with pytest.raises(ValueError, match=r"'log\(x\)' is not finite .* 1 row"):
        build_spec(d, "y ~ log(x) + (1 | g)")
    with pytest.raises(ValueError, match="categorical"):
        build_spec(d.assign(x=list("abab")), "y ~ log(x) + (1 | g)")


def _clinic(seed: int, categories: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 240
    return pd.DataFrame({
        "y": rng.normal(size=n), "x": rng.normal(size=n),
        "t": pd.Categorical(rng.choice(["a", "b", "c"], n), categories=categories),
        "g": [f"p{i % 30:02d}" for i in range(n)]})


def test_a_design_is_reused_only_for_columns_of_the_same_types(monkeypatch) -> None:
    """Designs are kept per formula and column types: a second frame of the same types reuses
    the Design, other category orders or types, or a term that learns from the values, get
    their own (text is coded as its sorted categories, so it shares the categorical's); every
    spec equals the one built with no Design kept."""
    from mfr_outcomes.models import formula as fm

    built = []
    real = Design.build.__func__

    def counting(cls, *a, **k):
        built.append(1)
        return real(cls, *a, **k)

    monkeypatch.setattr(Design, "build", classmethod(counting))
    fm._DESIGNS.clear()
    f = "y ~ x * t + (1 | g)"
    a, b = _clinic(1, ["a", "b", "c"]), _clinic(2, ["a", "b", "c"])
    reordered = _clinic(2, ["c", "a", "b"])  # another reference level
    as_text = b.assign(t=b["t"].astype(str))  # coded as categories a, b, c: the same types
    as_int = b.assign(t=b["t"].cat.codes.map({0: 10, 1: 20, 2: 30}).astype("category"))
    scaled = "y ~ scale(x) + t + (1 | g)"
    bool_group = b.assign(g=np.arange(len(b)) % 2 == 0)  # bool_columns differ
    cases = [(a, f, 1), (b, f, 0), (bool_group, f, 1), (reordered, f, 1), (reordered, f, 0), (as_text, f, 0),
             (as_int, f, 1), (a, scaled, 1), (b, scaled, 1)]
    specs = []
    for frame, formula, n_built in cases:
        before = len(built)
        specs.append(build_spec(frame, formula))
        assert len(built) - before == n_built, (formula, n_built)
    assert specs[2].design.bool_columns == ("g",) and specs[1].design.bool_columns == ()
    assert specs[3].fixed_names == ["(Intercept)", "x", "t[T.a]", "t[T.b]", "x:t[T.a]",
                                    "x:t[T.b]"]
    assert specs[7].design.factors["scale(x)"].params != specs[8].design.factors[
        "scale(x)"].params
    for (frame, formula, _), spec in zip(cases, specs, strict=True):
        fm._DESIGNS.clear()
        fresh = build_spec(frame, formula)
        assert fresh.fixed_names == spec.fixed_names and fresh.design == spec.design
        assert np.array_equal(fresh.X, spec.X) and np.array_equal(fresh.y, spec.y)
