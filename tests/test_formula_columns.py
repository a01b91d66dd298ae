"""build_spec's cheap column reads (models/formula.py, models/design.py): columns as arrays
(``ColumnCache.array``, ``column_array``), the missing-value masks from them, short fixed-width
text ids coded as integers (``_fixed_width_keys``), and the one BLAS scope round a fit
(models/threads.py). Each fast path is compared with pandas' own answer or the general path on
awkward input: missing values, mixed types, categories, booleans, numbers as ids, sliced and
chunked Arrow arrays, multi-byte and NUL characters."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mfr_outcomes.models import formula as formula_mod
from mfr_outcomes.models.design import ColumnCache, column_array
from mfr_outcomes.models.formula import _group_codes, _missing, _text_codes, build_spec


def _awkward_frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 60
    return pd.DataFrame({
        "int": rng.integers(0, 5, n),
        "float_nan": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
        "bool": rng.random(n) < 0.5,
        "obj_mixed": pd.Series([1, "a", None, 2.5, "b", 3] * 10, dtype=object),
        "str_na": pd.array([None if i % 7 == 0 else f"id{i % 9}" for i in range(n)],
                           dtype="str"),
        "string_na": pd.array([pd.NA if i % 5 == 0 else f"s{i % 4}" for i in range(n)],
                              dtype="string[pyarrow]"),
        "string_py": pd.array([None if i % 6 == 0 else f"q{i % 3}" for i in range(n)],
                              dtype="string[python]"),
        "cat": pd.Categorical(rng.choice(["b", "a", None], n), categories=["b", "a", "z"]),
        "cat_int": pd.Categorical(rng.choice([3, 1, 2], n)),
        "Int64": pd.array([None if i % 4 == 0 else i for i in range(n)], dtype="Int64"),
        "date": pd.to_datetime("2026-01-01") + pd.to_timedelta(rng.integers(0, 9, n), "D"),
        "date_tz": (pd.to_datetime("2026-01-01") + pd.to_timedelta(np.arange(n), "h")
                    ).tz_localize("Europe/Paris"),
    })


def test_column_arrays_are_the_series_values_read_only_and_give_the_same_missing_mask():
    frame = _awkward_frame()
    cols = ColumnCache(frame)
    for name in frame.columns:
        s = frame[name]
        a = cols.array(name)
        assert a is cols.array(name)  # looked up once
        assert column_array(frame, name).dtype == s.dtype
        if isinstance(s.dtype, np.dtype) and s.dtype.kind not in "mM":
            assert isinstance(a, np.ndarray) and not a.flags.writeable
            np.testing.assert_array_equal(a, s.to_numpy())
        else:  # extension arrays, and datetimes (pandas keeps them as DatetimeArray)
            assert type(a) is type(s.array)
            assert a.equals(s.array)
        np.testing.assert_array_equal(_missing(a), s.isna().to_numpy(), err_msg=name)
    assert cols.categories("cat") == ("b", "a", "z")
    assert cols.categories("cat_int") == (1, 2, 3)
    assert all(type(c) is int for c in cols.categories("cat_int"))
    with pytest.raises(KeyError):
        column_array(frame, "absent")


def test_group_codes_from_arrays_are_the_text_sort_of_every_kind_of_id():
    """Codes of a grouping column: the levels are the values as text, sorted; numbers, booleans,
    categories (unused and out-of-order ones too) and mixed objects as ids."""
    frame = _awkward_frame().dropna(subset=["obj_mixed", "cat"]).reset_index(drop=True)
    frame["num_id"] = np.arange(len(frame)) % 11 + 100
    frame["float_id"] = (np.arange(len(frame)) % 4) / 2
    for name in ["int", "bool", "obj_mixed", "cat", "cat_int", "num_id", "float_id"]:
        values = frame[name].astype(object).tolist()
        want = sorted({str(v) for v in values})
        for where in (frame, ColumnCache(frame)):
            codes, levels = _group_codes(where, (name,))
            assert [str(v) for v in levels] == want, name
            assert [str(levels[c]) for c in codes] == [str(v) for v in values], name
    # an interaction of a category and a number
    codes, levels = _group_codes(ColumnCache(frame), ("cat", "num_id"))
    want = [f"{a}:{b}" for a, b in zip(frame["cat"].astype(str), frame["num_id"])]
    assert list(levels) == sorted(set(want))
    assert [levels[c] for c in codes] == want


def _general(arr):
    """_text_codes without the fixed-width fast path."""
    keys = formula_mod._fixed_width_keys
    formula_mod._fixed_width_keys = lambda a: None
    try:
        return _text_codes(arr)
    finally:
        formula_mod._fixed_width_keys = keys


ID_SETS = {
    "width 4 runs": [f"P{i:03d}" for i in np.repeat(np.arange(200), 12)],
    "width 1": list("bacab"),
    "width 3": ["k10", "k02", "k10", "a99", "k02"],
    "width 7 runs": [f"pat{i:04d}" for i in np.repeat(np.arange(30), 3)],
    "width 5 runs": [f"P{i:04d}" for i in np.repeat(np.arange(2000, 0, -97), 5)],
    "width 6, one row": ["abcdef"],
    "width 3, two rows": ["abd", "abc"],
    "width 8": ["zz000001", "aa000002", "zz000001", "mm000003"],
    "width 9": ["p00000001", "p00000000", "p00000001"],
    "multi-byte and NUL, 2 bytes": ["é", "ab", "a\x00", "zz", "é", "a\x01"],
    "one value": ["only"],
    "digits": [str(v) for v in [10, 9, 100, 9, 10]],
}


@pytest.mark.parametrize("name", list(ID_SETS))
@pytest.mark.parametrize("dtype", ["str", "string[pyarrow]", "string[python]"])
def test_fixed_width_ids_code_as_the_general_path_and_pandas(name: str, dtype: str):
    rng = np.random.default_rng(5)
    values = ID_SETS[name]
    for order in (np.arange(len(values)), rng.permutation(len(values))):
        vals = [values[i] for i in order]
        arr = pd.array(vals, dtype=dtype)
        codes, levels = _text_codes(arr)
        ref_codes, ref_levels = _general(arr)
        want_codes, want_levels = pd.factorize(np.asarray(vals, dtype=object), sort=True)
        np.testing.assert_array_equal(codes, want_codes)
        np.testing.assert_array_equal(codes, ref_codes)
        assert list(levels) == list(want_levels) == list(ref_levels)
        assert levels.dtype == ref_levels.dtype == arr.dtype
        assert type(levels.array) is type(ref_levels.array)
    fast = formula_mod._fixed_width_keys(pd.array(values, dtype=dtype))
    widths = {len(v.encode()) for v in values}
    assert (fast is not None) == (dtype != "string[python]" and len(widths) == 1
                                  and 1 <= widths.pop() <= 8)


def test_fixed_width_keys_decline_missing_values_chunks_and_read_slices_at_their_offset():
    assert formula_mod._fixed_width_keys(pd.array(["a1", None, "b2"], dtype="str")) is None
    chunked = pd.arrays.ArrowStringArray(pa.chunked_array([["a1", "b2"], ["a1"]],
                                                          type=pa.large_string()))
    assert formula_mod._fixed_width_keys(chunked) is None
    codes, levels = _text_codes(chunked)
    assert codes.tolist() == [0, 1, 0] and list(levels) == ["a1", "b2"]
    whole = pd.array(["zz", "x1", "b2", "b2", "a1", "x1"], dtype="str")
    part = whole[2:]  # an Arrow slice: its offsets start inside the buffers
    assert formula_mod._fixed_width_keys(part) is not None
    codes, levels = _text_codes(part)
    assert codes.tolist() == [1, 1, 0, 2] and list(levels) == ["a1", "b2", "x1"]
    whole = pd.array([f"k{i % 13:04d}" for i in range(40)], dtype="str")
    for part in (whole[3:], whole[7:12], whole[38:]):  # width 5: overlapping reads and the tail
        assert formula_mod._fixed_width_keys(part) is not None
        codes, levels = _text_codes(part)
        want_codes, want_levels = pd.factorize(np.asarray(part, dtype=object), sort=True)
        np.testing.assert_array_equal(codes, want_codes)
        assert list(levels) == list(want_levels)
    small = pd.arrays.ArrowStringArray(pa.chunked_array([pa.array(["b", "a", "b"])]))
    assert formula_mod._fixed_width_keys(small) is not None  # 32-bit offsets
    assert _text_codes(small)[0].tolist() == [1, 0, 1]


def test_build_spec_on_awkward_columns_codes_what_pandas_says():
    """Missing values in the response, a covariate and the ids; text ids (Arrow with missing
    values), a category with an unused level, a boolean covariate: the rows used, X's columns,
    the codes and the notes."""
    rng = np.random.default_rng(3)
    n = 120
    ids = [f"c{i % 17:02d}" for i in range(n)]
    frame = pd.DataFrame({
        "y": rng.normal(size=n),
        "x": rng.normal(size=n),
        "flag": rng.random(n) < 0.4,
        "arm": pd.Categorical(rng.choice(["b", "a"], n), categories=["b", "a", "unused"]),
        "pid": pd.array([None if i in (4, 50) else v for i, v in enumerate(ids)], dtype="str"),
    })
    frame.loc[[7, 9], "y"] = np.nan
    frame.loc[[11], "x"] = np.nan
    spec = build_spec(frame, "y ~ x + flag + arm + (1 | pid)")
    used = frame["y"].notna() & frame["x"].notna() & frame["pid"].notna()
    assert spec.n == int(used.sum()) and sorted(spec.excluded["row"]) == [4, 7, 9, 11, 50]
    rows = frame[used]
    assert spec.fixed_names == ["(Intercept)", "x", "flag", "arm[T.a]"]
    cols = dict(zip(spec.fixed_names, spec.X.T))
    np.testing.assert_array_equal(cols["x"], rows["x"].to_numpy())
    np.testing.assert_array_equal(cols["flag"], rows["flag"].astype(float).to_numpy())
    np.testing.assert_array_equal(cols["arm[T.a]"], (rows["arm"] == "a").astype(float))
    np.testing.assert_array_equal(spec.y, rows["y"].to_numpy())
    want_codes, want_levels = pd.factorize(rows["pid"].astype(object).to_numpy(), sort=True)
    np.testing.assert_array_equal(spec.blocks[0].codes, want_codes)
    assert list(spec.blocks[0].levels) == list(want_levels)
    assert any("unused" in note for note in spec.notes)
    # the caller's frame is unchanged and its arrays were never written
    assert frame["arm"].cat.categories.tolist() == ["b", "a", "unused"]


def test_a_fit_runs_in_one_blas_scope_and_restores_the_thread_counts(monkeypatch):
    from threadpoolctl import threadpool_info

    import mfr_outcomes.models.fit as fit_mod
    from mfr_outcomes.models.threads import current_limit

    def counts():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(30), 4)
    d = pd.DataFrame({"y": rng.normal(size=g.size) + rng.normal(size=30)[g], "x": rng.normal(
        size=g.size), "g": g})
    before = counts()
    seen = []
    real = fit_mod.check_model

    def spy(spec):
        seen.append(current_limit())
        return real(spec)

    monkeypatch.setattr(fit_mod, "check_model", spy)
    fit_mod.fit_mixed(d, "y ~ x + (1 | g)")
    assert seen == [1] and current_limit() is None and counts() == before

    def boom(spec):
        raise RuntimeError("inside the scope")

    monkeypatch.setattr(fit_mod, "check_model", boom)
    with pytest.raises(RuntimeError, match="inside the scope"):
        fit_mod.fit_mixed(d, "y ~ x + (1 | g)")
    assert current_limit() is None and counts() == before


def test_a_column_used_twice_in_the_data_is_a_sentence():
    rng = np.random.default_rng(0)
    d = pd.DataFrame({"y": rng.normal(size=40), "x": rng.normal(size=40),
                      "g": np.repeat(np.arange(10), 4)})
    for names in (["y", "x", "x", "g"], ["y", "y", "x", "g"], ["y", "x", "g", "g"]):
        dd = pd.concat([d[c] for c in names], axis=1)
        dd.columns = names
        twice = [c for c in ("y", "x", "g") if names.count(c) > 1]
        with pytest.raises(ValueError, match=rf"column\(s\) \['{twice[0]}'\] that appear more"):
            build_spec(dd, "y ~ x + (1 | g)")
    dd = pd.concat([d, d["x"].rename("unused"), d["x"].rename("unused")], axis=1)
    assert build_spec(dd, "y ~ x + (1 | g)").n == 40  # a duplicated column the model does not use


def test_a_blocks_number_of_levels_follows_its_levels():
    from dataclasses import replace

    from mfr_outcomes.models.spec import RandomBlock

    b = RandomBlock("g", ["(Intercept)"], np.ones((4, 1)), np.array([0, 1, 1, 2]),
                    pd.Index(pd.array(["a", "b", "c"], dtype="str")))
    assert b.n_levels == 3 and b.n_levels == 3
    b.levels = pd.Index(["a", "b"])
    assert b.n_levels == 2
    c = replace(b, levels=pd.Index(list("abcde")))
    assert c.n_levels == 5 and b.n_levels == 2
    assert replace(c, levels=b.levels).n_levels == 2


@pytest.mark.parametrize("dtype", ["str", "string[pyarrow]", "string[python]", "object", "int64"])
def test_column_cache_categories_are_pandas_levels_as_python_scalars(dtype: str):
    """ColumnCache.categories reads Arrow-backed text levels from Arrow: the same Python values,
    in the same order, as pandas' ``tolist``."""
    values = ["b", "a", "c", "a"] if dtype != "int64" else [3, 1, 2, 1]
    levels = pd.Index(["c", "a", "b"] if dtype != "int64" else [3, 1, 2], dtype=dtype)
    frame = pd.DataFrame({"f": pd.Categorical(pd.array(values, dtype=dtype), categories=levels)})
    got = ColumnCache(frame).categories("f")
    want = tuple(frame["f"].cat.categories.tolist())
    assert got == want
    assert [type(v) for v in got] == [type(v) for v in want]


def test_is_bool_dtype_is_pandas_on_numpy_text_extension_and_categorical_dtypes():
    dtypes = [np.dtype(t) for t in ("bool", "int8", "uint64", "float32", "complex128", "object",
                                    "datetime64[ns]", "timedelta64[ns]", "U3")]
    dtypes += [pd.StringDtype("pyarrow"), pd.StringDtype("python"), pd.Series(["a"]).dtype,
               pd.BooleanDtype(), pd.Int64Dtype(), pd.CategoricalDtype([True, False]),
               pd.CategoricalDtype(["a"]), pd.ArrowDtype(pa.bool_())]
    for dt in dtypes:
        assert formula_mod._is_bool_dtype(dt) == pd.api.types.is_bool_dtype(dt), dt


def test_theta_lower_bounds_by_block_dimensions_are_lme4s_and_a_copy_each_time():
    """0 on each block's diagonal, -inf below it (column-major lower triangles, blocks in
    order), kept by the blocks' dimensions: a caller's write reaches no other caller."""
    from types import SimpleNamespace

    from mfr_outcomes.models.spec import theta_lower_bounds

    spec = SimpleNamespace(blocks=[SimpleNamespace(q=3), SimpleNamespace(q=1),
                                   SimpleNamespace(q=2)])
    want = [0.0, -np.inf, -np.inf, 0.0, -np.inf, 0.0, 0.0, 0.0, -np.inf, 0.0]
    first = theta_lower_bounds(spec)
    assert first.tolist() == want
    first[:] = 7.0
    assert theta_lower_bounds(spec).tolist() == want
