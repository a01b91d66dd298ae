"""lme4 formula parsing and model specs (mfr_outcomes.models.formula)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models.formula import build_spec, parse_formula


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
