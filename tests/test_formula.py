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


def _qr_reference_keep(X: np.ndarray) -> list[int]:
    """The rank check as first written: LAPACK pivoted QR of the full X, lme4-like tolerance."""
    import scipy.linalg as sla

    _, r, piv = sla.qr(X, mode="economic", pivoting=True)
    d = np.abs(np.diag(r))
    rank = int((d > d.max() * max(X.shape) * np.finfo(float).eps * 10).sum())
    return sorted(piv[:rank].tolist())


def test_rank_check_matches_pivoted_qr_of_x() -> None:
    from mfr_outcomes.models.formula import _full_rank_columns

    rng = np.random.default_rng(7)
    n = 500
    one, x1, x2 = np.ones(n), rng.normal(size=n), rng.integers(1, 7, n).astype(float)
    dummies = np.eye(4)[rng.integers(0, 4, n)]
    cases = {
        "full rank": np.column_stack([one, x1, x2, dummies[:, 1:]]),
        "badly scaled, full rank": np.column_stack([one, x1 * 1e7, x2]),
        "all dummies with intercept": np.column_stack([one, x1, dummies]),
        "duplicate scaled": np.column_stack([one, x1, 2.0 * x1, x2]),
        "sum of columns": np.column_stack([one, x1, x2, x1 + x2, x2 - 3.0]),
        "zero column": np.column_stack([one, np.zeros(n), x1]),
    }
    for name, X in cases.items():
        keep = _full_rank_columns(X).tolist()
        assert keep == _qr_reference_keep(X), name
        assert len(keep) == np.linalg.matrix_rank(X), name


def test_rank_check_skips_the_qr_when_the_gram_matrix_is_well_conditioned(monkeypatch) -> None:
    import scipy.linalg as sla

    from mfr_outcomes.models.formula import _full_rank_columns

    def no_qr(*args, **kwargs):
        raise AssertionError("QR of the full X should not be needed")

    monkeypatch.setattr(sla, "qr", no_qr)
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(1000), rng.normal(size=(1000, 3))])
    assert _full_rank_columns(X).tolist() == [0, 1, 2, 3]
    with pytest.raises(AssertionError, match="should not be needed"):
        _full_rank_columns(np.column_stack([X, X[:, 1]]))  # deficient: goes to the QR


def test_rank_deficient_design_drops_the_same_columns_with_note(frame: pd.DataFrame) -> None:
    # 'any_technique' = 1 everywhere = intercept; 'post_and_half' = post + 0.5 * intercept.
    frame = frame.assign(any_technique=1.0, post_and_half=frame["post"] + 0.5,
                         technique=frame["technique"].cat.remove_unused_categories())
    spec = build_spec(frame, "y ~ post + technique + any_technique + post_and_half "
                             "+ (1 | patient_id)")
    full = ["(Intercept)", "technique[T.stretching]", "technique[T.massage]", "post",
            "any_technique", "post_and_half"]
    from formulaic import model_matrix

    mm = model_matrix("post + technique + any_technique + post_and_half", frame)
    X = np.asarray(mm, dtype=float)
    keep = _qr_reference_keep(X)
    names = ["(Intercept)" if c == "Intercept" else c for c in mm.columns]
    assert sorted(names) == sorted(full)
    assert spec.fixed_names == [names[i] for i in keep]
    assert spec.p == 4
    dropped = [names[i] for i in range(len(names)) if i not in keep]
    assert (f"fixed-effect model matrix is rank deficient, so dropping 2 column(s): "
            f"{', '.join(dropped)}") in spec.notes
    np.testing.assert_array_equal(spec.X, X[:, keep])


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
