"""lme4 formula parsing and model specs (mfr_outcomes.models.formula)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models.formula import build_spec, dqrdc2_rank, lme4_kept_columns, parse_formula
from mfr_outcomes.warnings_ import ModelWarning


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = 60
    return pd.DataFrame({
        "y": rng.normal(size=n),
        "post": np.tile([0, 1], n // 2),
        "technique": pd.Categorical(rng.choice(["massage", "stretching", "direct_pressure"], n),
                                    categories=["direct_pressure", "stretching", "massage",
                                                "combined"]),
        "patient_id": [f"P{i // 6:02d}" for i in range(n)],
        "therapist_id": [f"T{i // 18}" for i in range(n)],
        "label": ["x"] * n,
    })


def test_parse_splits_fixed_and_random_terms() -> None:
    p = parse_formula("value ~ post * technique + session_number + (post | patient_id)")
    assert p.response == "value"
    assert p.fixed == "post * technique + session_number"
    assert [(t.expr, t.group, t.correlated) for t in p.random] == [("post", "patient_id", True)]


def test_parse_double_bar_nested_and_several_groups() -> None:
    p = parse_formula("y ~ x + (1 | therapist_id) + (x || patient_id) + (1 | a/b)")
    assert [(t.expr, t.group, t.correlated) for t in p.random] == [
        ("1", "therapist_id", True), ("x", "patient_id", False), ("1", "a/b", True)]
    assert parse_formula("y ~ (1 | g)").fixed == "1"
    assert parse_formula("y ~ x - 1 + (1 | g)").fixed == "x - 1"


@pytest.mark.parametrize("bad, words", [
    ("y + x", "needs a response"),
    ("~ x + (1 | g)", "no response"),
    ("y ~ x + (1 | g", "unmatched"),
    ("y ~ x + 1 | g", "outside parentheses"),
    ("y ~ x + ( | g)", "needs terms"),
])
def test_parse_errors_are_sentences(bad: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_formula(bad)


def test_term_names_follow_formulaic_and_category_order(frame: pd.DataFrame) -> None:
    spec = build_spec(frame, "y ~ post * technique + (post | patient_id)")
    # direct_pressure is the first category, so the reference; "combined" has no data: dropped
    assert spec.fixed_names == ["(Intercept)", "post", "technique[T.stretching]",
                                "technique[T.massage]", "post:technique[T.stretching]",
                                "post:technique[T.massage]"]
    assert any("combined" in note and "no data" in note for note in spec.notes)
    x = spec.X[:, spec.fixed_names.index("technique[T.massage]")]
    np.testing.assert_array_equal(x, (frame["technique"] == "massage").to_numpy(float))


def test_c_function_and_string_factor(frame: pd.DataFrame) -> None:
    spec = build_spec(frame, "y ~ C(patient_id) + (1 | therapist_id)")
    assert spec.fixed_names[1] == "C(patient_id)[T.P01]"  # sorted levels, first is reference
    assert spec.p == frame["patient_id"].nunique()


def test_random_block_matrices(frame: pd.DataFrame) -> None:
    spec = build_spec(frame, "y ~ post + (post | patient_id)")
    (b,) = spec.blocks
    assert b.terms == ["(Intercept)", "post"] and b.correlated
    np.testing.assert_array_equal(b.Z[:, 1], frame["post"].to_numpy(float))
    assert list(b.levels) == sorted(frame["patient_id"].unique())
    assert list(b.levels[b.codes]) == list(frame["patient_id"])


def test_double_bar_gives_one_block_per_term(frame: pd.DataFrame) -> None:
    spec = build_spec(frame, "y ~ post + (post || patient_id)")
    assert [(b.group, b.terms, b.correlated) for b in spec.blocks] == [
        ("patient_id", ["(Intercept)"], False), ("patient_id", ["post"], False)]
    assert spec.n_theta == 2


def test_nested_expands_and_blocks_ordered_by_levels(frame: pd.DataFrame) -> None:
    spec = build_spec(frame, "y ~ post + (1 | therapist_id/patient_id)")
    # lme4 orders terms by decreasing number of levels: the patient-in-therapist term first
    assert [b.group for b in spec.blocks] == ["therapist_id:patient_id", "therapist_id"]
    assert spec.blocks[0].n_levels == frame.groupby(["therapist_id", "patient_id"]).ngroups
    assert spec.blocks[0].levels[0] == "T0:P00"
    spec2 = build_spec(frame, "y ~ post + (1 | therapist_id) + (post | patient_id)")
    assert [b.group for b in spec2.blocks] == ["patient_id", "therapist_id"]


def test_missing_rows_are_excluded_with_reasons(frame: pd.DataFrame) -> None:
    frame = frame.copy()
    frame.loc[3, "y"] = np.nan
    frame.loc[7, "post"] = np.nan
    frame.loc[8, "label"] = None  # not a model variable: row kept
    spec = build_spec(frame, "y ~ post + (1 | patient_id)")
    assert spec.n + len(spec.excluded) == len(frame)
    assert list(spec.excluded["row"]) == [3, 7]
    assert spec.excluded["reason"].tolist() == ["missing value in y", "missing value in post"]
    assert 8 in spec.data.index


def test_rank_deficient_column_dropped_with_note(frame: pd.DataFrame) -> None:
    frame = frame.assign(post2=frame["post"] * 2.0)
    spec = build_spec(frame, "y ~ post + post2 + (1 | patient_id)")
    assert spec.p == 2
    assert any("rank deficient" in n for n in spec.notes)


REF = Path(__file__).parent / "reference"


def _rankdef_ref() -> dict:
    return json.loads((REF / "lme4_rankdef.json").read_text())


@pytest.mark.parametrize("case", ["duplicate_scaled", "sum_of_columns", "zero_column",
                                  "nearly_dependent_below_tol", "nearly_dependent_above_tol"])
def test_rank_rule_is_r_qr_dqrdc2(case: str) -> None:
    """R's qr(X, tol = 1e-7): same rank and the same pivot as R on each matrix."""
    ref = _rankdef_ref()["qr"][case]
    long = pd.read_csv(REF / "data" / "rankdef_qr.csv")
    M = long[long["case"] == case].pivot(index="row", columns="col", values="value").to_numpy()
    rank, piv = dqrdc2_rank(M, 1e-7)
    assert rank == ref["rank"]
    assert piv.tolist() == ref["pivot"]
    assert lme4_kept_columns(M).tolist() == sorted(ref["pivot"][: ref["rank"]])


def test_rank_check_skips_the_qr_when_the_gram_matrix_is_well_conditioned(monkeypatch) -> None:
    import mfr_outcomes.models.formula as formula_mod

    def no_qr(*args, **kwargs):
        raise AssertionError("QR of the full X should not be needed")

    monkeypatch.setattr(formula_mod, "dqrdc2_rank", no_qr)
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(1000), rng.normal(size=(1000, 3)) * [1.0, 1e7, 1e-5]])
    assert lme4_kept_columns(X).tolist() == [0, 1, 2, 3]
    with pytest.raises(AssertionError, match="should not be needed"):
        lme4_kept_columns(np.column_stack([X, X[:, 1]]))  # deficient: goes to the QR


def test_rank_deficient_design_drops_what_lme4_drops() -> None:
    """lme4's fixture: fb:x = 2 fb; lme4 drops fb:x (LAPACK's pivoted QR would drop fb)."""
    import scipy.linalg as sla

    from mfr_outcomes.models.fit import fit_mixed

    ref = _rankdef_ref()
    data = pd.read_csv(REF / "data" / ref["data"])
    spec = build_spec(data, ref["formula"])
    r_names = [c.replace("f[T.b]", "fb").replace("f[T.c]", "fc") for c in spec.design.all_names]
    assert r_names == ref["x_columns"]
    assert spec.design.dropped == ("f[T.b]:x",) and ref["dropped"] == "fb:x"
    assert f"{ref['message']}: f[T.b]:x" in spec.notes
    X = spec.design.fixed_matrix(spec.data, full=True)
    _, r, piv = sla.qr(X, mode="economic", pivoting=True)
    assert spec.design.all_names[piv[-1]] == "f[T.b]"  # what the old rule dropped
    with pytest.warns(ModelWarning, match="rank deficient"):
        fit = fit_mixed(data, ref["formula"])
    fixef = pd.DataFrame(ref["fixef"])
    assert [c.replace("f[T.b]", "fb").replace("f[T.c]", "fc") for c in fit.coef.index] == \
        fixef["term"].tolist()
    np.testing.assert_allclose(fit.coef.to_numpy(), fixef["estimate"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fit.reml_criterion, ref["reml_criterion"], rtol=1e-6)
    np.testing.assert_allclose(fit.fixed_effects["std_error"], fixef["std_error"], rtol=1e-4)


def test_rank_deficient_design_drops_the_later_columns_with_note(frame: pd.DataFrame) -> None:
    # 'any_technique' = 1 everywhere = intercept; 'post_and_half' = post + 0.5 * intercept: R's
    # limited pivoting keeps the earlier columns and drops these two.
    frame = frame.assign(any_technique=1.0, post_and_half=frame["post"] + 0.5,
                         technique=frame["technique"].cat.remove_unused_categories())
    spec = build_spec(frame, "y ~ post + technique + any_technique + post_and_half "
                             "+ (1 | patient_id)")
    assert spec.design.all_names == ["(Intercept)", "post", "technique[T.stretching]",
                                     "technique[T.massage]", "any_technique", "post_and_half"]
    assert spec.fixed_names == spec.design.all_names[:4]
    assert ("fixed-effect model matrix is rank deficient so dropping 2 columns / coefficients: "
            "any_technique, post_and_half") in spec.notes
    np.testing.assert_array_equal(spec.X, spec.design.fixed_matrix(spec.data))


@pytest.mark.parametrize("formula, words", [
    ("y ~ post + nothere + (1 | patient_id)", "nothere"),
    ("y ~ post + (1 | nogroup)", "nogroup"),
    ("label ~ post + (1 | patient_id)", "must be numeric"),
    ("technique ~ post + (1 | patient_id)", "must be numeric"),
    ("y ~ post", "no random-effects term"),
    ("missing ~ post + (1 | patient_id)", "not a column"),
])
def test_build_errors_name_the_problem(frame: pd.DataFrame, formula: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        build_spec(frame, formula)


def test_no_usable_rows(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="No row"):
        build_spec(frame.assign(y=np.nan), "y ~ post + (1 | patient_id)")


def test_text_codes_agree_with_factorize_for_arrow_python_and_missing_text():
    """Group codes of a text column (runs of equal values coded in pyarrow for Arrow-backed
    text) are pandas' sorted factorisation, in order and shuffled, for Arrow and Python string
    storage; a missing value takes pandas' comparisons."""
    import numpy as np
    import pandas as pd

    from mfr_outcomes.models.formula import _text_codes

    rng = np.random.default_rng(11)
    ids = [f"p{i:03d}" for i in range(40)]
    runs = np.repeat(ids, rng.integers(1, 6, size=40))
    cases = [runs, runs[rng.permutation(runs.size)], ["b", "b", "a", "c", "a"], ["z"]]
    for values in cases:
        for dtype in ("str", "string[python]"):
            arr = pd.array(list(values), dtype=dtype)
            codes, levels = _text_codes(arr)
            want_codes, want_levels = pd.factorize(np.asarray(values, dtype=object), sort=True)
            np.testing.assert_array_equal(codes, want_codes)
            assert list(levels) == list(want_levels)
    arr = pd.array(["b", None, "a", "a"], dtype="str")  # a missing value: pandas' comparisons
    codes, levels = _text_codes(arr)
    assert codes.size == 4 and len(levels) >= 2
