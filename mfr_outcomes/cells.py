"""Cells of raw tables as text, and text as numbers, dates, flags and category labels.

Column-wise, through Arrow compute and pandas; what a cell held is kept for the sentences of
findings (a missing-value marker such as "NaN" is shown, not only "empty").
"""
from __future__ import annotations

import datetime as _dt
import re

import numpy as np
import pandas as pd
import pyarrow as pa_
import pyarrow.compute as pc

__all__ = [
    "NA_TOKENS",
    "TRUE_WORDS",
    "FALSE_WORDS",
    "cell_text",
    "text_frame",
    "text_and_markers",
    "text_codes",
    "label_codes",
    "is_number",
    "flag",
    "labels",
    "numbers",
    "dates",
    "stamps_as_dates",
    "date_problem",
    "times",
    "DATE_RANGE_TEXT",
]

#: Cell texts read as missing (compared after stripping, case-insensitive).
NA_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "#n/a", "nat", "<na>"})
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1", "1.0", "ja", "oui", "si", "x"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", "0.0", "nein", "non"})


def cell_text(series: pd.Series) -> pd.Series:
    """Cells as stripped text (pandas "str" dtype), with missing cells and NA tokens missing."""
    return text_and_markers(series)[0]


def text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`cell_text` of every column of *frame* at once (one Arrow pass for text columns,
    so that thousands of columns cost one call, not thousands)."""
    n = len(frame)
    names = [str(c).strip() for c in frame.columns]
    if not len(frame.columns):
        return pd.DataFrame(index=frame.index)
    texty = all(isinstance(dt, pd.StringDtype) for dt in frame.dtypes)
    if not texty or n == 0:
        return pd.DataFrame({name: cell_text(frame[c]).to_numpy() for name, c in
                             zip(names, frame.columns)}, index=frame.index)
    table = pa_.Table.from_pandas(frame, preserve_index=False)
    joined = pa_.concat_arrays([col.combine_chunks().cast(pa_.string()) for col in table.columns])
    text, _ = text_and_markers(pd.Series(pd.arrays.ArrowStringArray(joined)))
    arr = pa_.array(text, type=pa_.string(), from_pandas=True)
    parts = [arr.slice(k * n, n) for k in range(len(names))]
    out = pa_.Table.from_arrays(parts, names=[f"c{k}" for k in range(len(names))]).to_pandas()
    out.columns = names
    out.index = frame.index
    return out


def _arrow_text(series: pd.Series) -> pa_.Array:
    """The cells of *series* as an Arrow string array (nulls for missing), without Python loops
    for text, number, flag and date columns."""
    s = series
    if isinstance(s.dtype, pd.ArrowDtype) and pa_.types.is_dictionary(s.dtype.pyarrow_dtype):
        return pc.cast(pa_.array(s), pa_.string())  # Parquet text read as a dictionary
    if pd.api.types.is_datetime64_any_dtype(s):
        stamps = pa_.array(s, from_pandas=True)
        whole = pc.all(pc.equal(pc.cast(stamps, pa_.int64()),
                                pc.cast(pc.floor_temporal(stamps, unit="second"), pa_.int64())))
        if whole.as_py() is False or getattr(stamps.type, "tz", None) is not None:
            # sub-second times or a time zone: pandas' text (rare)
            txt = s.dt.strftime("%Y-%m-%d %H:%M:%S").str.replace(" 00:00:00", "", regex=False)
            return pa_.array(txt.astype(object).where(s.notna(), None), type=pa_.string())
        # seconds resolution, no time zone: "%S" then prints no fraction (Arrow's strftime)
        stamps = stamps.cast(pa_.timestamp("s"), safe=False)
        secs = pc.cast(stamps, pa_.int64())
        first = pc.min(secs).as_py()
        midnight = pc.equal(pc.subtract(secs, pc.multiply(pc.divide(secs, 86_400), 86_400)), 0)
        if first is not None and first >= _YEAR_1000 and pc.all(midnight).as_py() is not False:
            # whole days (dates from Parquet or a database): the date's text, as strftime
            # writes it, without strftime's cost (10 times slower)
            return pc.cast(pc.cast(stamps, pa_.date32()), pa_.string())
        txt = pc.strftime(stamps, format="%Y-%m-%d %H:%M:%S")
        return pc.replace_substring(txt, " 00:00:00", "")
    if isinstance(s.dtype, pd.StringDtype) or s.dtype == "str":
        arr = pa_.array(s, from_pandas=True)  # large_string kept: no copy of the offsets
        return arr if pa_.types.is_large_string(arr.type) else arr.cast(pa_.string())
    if (pd.api.types.is_integer_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype)) \
            and len(s):
        # str() once a distinct value (the same text as str() of each cell)
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        words = pa_.array([str(u) for u in uniques.astype(object)], type=pa_.string())
        return pc.take(words, pa_.array(codes, mask=codes < 0))
    if pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        obj = s.astype(object)
        txt = obj.where(s.isna(), obj.astype(str))
        return pa_.array(txt.where(s.notna(), None), type=pa_.string(), from_pandas=True)
    try:
        arr = pa_.array(s.astype(object), from_pandas=True)
        if pa_.types.is_string(arr.type) or pa_.types.is_large_string(arr.type) \
                or pa_.types.is_null(arr.type) or pa_.types.is_date(arr.type):
            return arr.cast(pa_.string())  # dates (Parquet date32) as YYYY-MM-DD
    except (pa_.ArrowInvalid, pa_.ArrowTypeError):
        pass
    out = []  # mixed Python objects (sheets, databases): one cell at a time
    for v in s.astype(object):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT:
            out.append(None)
        elif isinstance(v, bytes):
            out.append(v.decode("utf-8", "replace"))
        elif isinstance(v, (pd.Timestamp, _dt.datetime)):
            t = v.isoformat()
            out.append(t[:10] if t.endswith("T00:00:00") else t)
        else:
            out.append(str(v))
    return pa_.array(out, type=pa_.string())


#: Seconds from 1970 to 1000-01-01: from then on a date's text has four digits of year.
_YEAR_1000 = -30_610_224_000


def _case_variants(token: str) -> set[str]:
    out = {""}
    for ch in token:
        out = {v + c for v in out for c in {ch.lower(), ch.upper()}}
    return out


# every spelling of every NA token, so cells are matched without lowering each one
_NA_SET = pa_.array(sorted(set().union(*(_case_variants(t) for t in NA_TOKENS))),
                    type=pa_.string())


def text_and_markers(series: pd.Series) -> tuple[pd.Series, pd.Series | None]:
    """Stripped text with NA tokens missing, and the NA tokens as written where any was (so a
    finding can show "value = NaN" rather than only "value is empty").

    The work is done once a distinct text (the column is dictionary-encoded in one hash pass):
    exports repeat their labels and codes, so this is a few thousand strings, not millions.
    """
    text, marker, _ = _text_parts(series, False)
    return text, marker


def text_codes(series: pd.Series
               ) -> tuple[pd.Series, pd.Series | None, tuple[np.ndarray, pa_.Array]]:
    """:func:`text_and_markers`, and the text's factorisation from the same hash pass: codes
    (int32, -1 where missing; equal texts, equal codes) and the distinct texts in code order, so
    that key and label columns are not hashed again by the rules that compare them."""
    return _text_parts(series, True)  # type: ignore[return-value]


def label_codes(series: pd.Series
                ) -> tuple[pd.Series, pd.Series | None, tuple[np.ndarray, pa_.Array]]:
    """:func:`text_codes` with the text as a pandas Categorical over those codes (the same
    cells): a label column's text is only looked at cell by cell, for sentences, so no string
    a cell is made (for Parquet's dictionaries, a third of a label column's cost)."""
    return _text_parts(series, True, True)  # type: ignore[return-value]


def _text_parts(series: pd.Series, want_codes: bool, categorical: bool = False):
    enc = _dictionary(series)
    if enc is None:  # the text as it is (chunks are not copied into one: a CSV's are many)
        arr = _arrow_text(series)
        if isinstance(arr, pa_.ChunkedArray) and arr.num_chunks <= 1:
            arr = arr.chunk(0) if arr.num_chunks else pa_.array([], type=arr.type)
        enc = pc.dictionary_encode(arr)
        if isinstance(enc, pa_.ChunkedArray):
            enc = _one_dictionary(enc)
    else:  # read as a dictionary (Parquet): its codes are the hash pass
        arr = None
    uniq, codes = enc.dictionary, enc.indices
    if pa_.types.is_large_string(uniq.type):
        uniq = uniq.cast(pa_.string())
    none = pa_.scalar(None, pa_.string())
    ascii_only = pc.all(pc.string_is_ascii(uniq)).as_py() is not False
    trimmed = pc.ascii_trim_whitespace(uniq) if ascii_only else pc.utf8_trim_whitespace(uniq)
    na = pc.is_in(trimmed, value_set=_NA_SET)
    trims = len(uniq) > 0 and pc.all(pc.equal(trimmed, uniq)).as_py() is False
    has_na = bool(pc.any(na).as_py())
    kept = pc.if_else(na, none, trimmed) if trims or has_na else uniq
    index = series.index
    factors = _factors(kept, codes, trims or has_na) if want_codes else None
    if categorical and factors is not None:
        cats = pd.Index(factors[1].to_pandas(), dtype="str")
        out = pd.Series(pd.Categorical.from_codes(factors[0], categories=cats), index=index)
    else:
        text = pc.take(kept, codes) if trims or has_na or arr is None else arr
        out = pd.Series(text.to_pandas(), dtype="str").set_axis(index)
    written = pc.and_(na, pc.greater(pc.utf8_length(trimmed), 0))
    if not pc.any(written).as_py():
        return out, None, factors
    marker = pc.take(pc.if_else(written, trimmed, none), codes)
    return out, pd.Series(marker.to_pandas(), dtype="str").set_axis(index), factors


def _dictionary(series: pd.Series) -> pa_.DictionaryArray | None:
    """A text column held as an Arrow dictionary of distinct texts (see ``io._read_parquet``),
    as one dictionary array; None for any other column."""
    dt = series.dtype
    if not (isinstance(dt, pd.ArrowDtype) and pa_.types.is_dictionary(dt.pyarrow_dtype)
            and (pa_.types.is_string(dt.pyarrow_dtype.value_type)
                 or pa_.types.is_large_string(dt.pyarrow_dtype.value_type))):
        return None
    arr = pa_.array(series)
    # two chunks or more are unified into one dictionary of distinct texts (a hash pass over
    # the dictionaries); one chunk's dictionary is the file's, checked here
    distinct = isinstance(arr, pa_.ChunkedArray) and arr.num_chunks >= 2
    if isinstance(arr, pa_.ChunkedArray):  # a dictionary a row group: one for all
        arr = _one_dictionary(arr) if arr.num_chunks else pa_.array([], type=arr.type)
    if pa_.types.is_large_string(arr.type.value_type):
        arr = pa_.DictionaryArray.from_arrays(arr.indices, arr.dictionary.cast(pa_.string()))
    if not distinct and pc.count_distinct(arr.dictionary).as_py() != len(arr.dictionary):
        return None  # a dictionary that repeats a text: encoded again by the caller
    return arr


def _one_dictionary(chunks: pa_.ChunkedArray) -> pa_.DictionaryArray:
    """Dictionary-encoded chunks as one array over one dictionary (only the indices copied).

    Parquet's reader gives a chunk a batch and one dictionary a row group, shared (the same
    buffers) by that row group's batches: each distinct dictionary is hashed once, not once a
    batch (Arrow's ``unify_dictionaries`` hashes every chunk's). The dictionary is the one
    ``unify_dictionaries`` makes (texts in order of first appearance over the dictionaries in
    chunk order), so codes are the same.
    """
    parts = chunks.chunks
    seen: dict[tuple, int] = {}
    which = []
    for c in parts:
        d = c.dictionary
        key = (len(d), d.offset, *(b.address if b is not None else 0 for b in d.buffers()))
        which.append(seen.setdefault(key, len(seen)))
    if len(seen) == len(parts) or any(c.dictionary.null_count for c in parts):
        # nothing shared (or a missing value in a dictionary): Arrow's unifier as it is
        chunks = chunks.unify_dictionaries()
        indices = pa_.concat_arrays([c.indices for c in chunks.chunks])
        return pa_.DictionaryArray.from_arrays(indices, chunks.chunk(0).dictionary)
    firsts = {}
    for c, k in zip(parts, which):
        firsts.setdefault(k, c.dictionary)
    dicts = [firsts[k] for k in range(len(seen))]
    enc = pc.dictionary_encode(pa_.concat_arrays(dicts))
    starts = np.cumsum([0] + [len(d) for d in dicts])
    maps = [enc.indices.slice(starts[k], len(dicts[k])) for k in range(len(dicts))]
    itype = parts[0].indices.type
    same = [_identity(m) for m in maps]  # e.g. every row group's "pre", "post" in one order
    indices = pa_.concat_arrays([c.indices if same[k] else pc.take(maps[k], c.indices).cast(itype)
                                 for c, k in zip(parts, which)])
    return pa_.DictionaryArray.from_arrays(indices, enc.dictionary)


def _identity(mapping: pa_.Array) -> bool:
    """A transpose map that maps every code to itself (the first dictionary, duplicate-free)."""
    return mapping.null_count == 0 and bool(
        np.array_equal(mapping.to_numpy(zero_copy_only=False), np.arange(len(mapping))))


def _factors(kept: pa_.Array, codes: pa_.Array, merged: bool) -> tuple[np.ndarray, pa_.Array]:
    """Codes of each cell's text (int32, -1 missing) and the distinct texts, from the dictionary of
    the raw cells (*kept*: each raw distinct's text; two raw texts may trim to one)."""
    codes = codes.cast(pa_.int32())
    if merged:  # trimming or NA tokens may have made two distinct raw texts one, or none
        again = pc.dictionary_encode(kept)
        relabel = np.append(pc.fill_null(again.indices, -1).to_numpy(zero_copy_only=False), -1)
        raw = pc.fill_null(codes, len(kept)).to_numpy(zero_copy_only=False)
        return relabel[raw].astype(np.int32, copy=False), again.dictionary
    out = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return out, kept


def is_number(col: pd.Series) -> bool:
    """A numeric column (numbers from Parquet, a database or a frame), not flags."""
    return pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype)


def flag(text: str) -> bool | None:
    key = text.lower()
    return True if key in TRUE_WORDS else (False if key in FALSE_WORDS else None)


def labels(raw: pd.Series, factors: tuple[np.ndarray, pa_.Array] | None = None) -> pd.Series:
    """Category labels matched ignoring case, spaces and hyphens, as a pandas Categorical (the
    work is done once a distinct label, not once a row). *factors*: the codes and distinct
    texts of *raw* when known (:func:`text_codes`), so that it is not hashed again."""
    codes, uniques = factors if factors is not None else pd.factorize(raw)
    if isinstance(uniques, pa_.Array):
        uniques = uniques.to_pylist()
    norm = [re.sub(r"[\s\-]+", "_", str(u).strip().lower()) for u in uniques]
    new_codes, cats = pd.factorize(pd.Series(norm, dtype=object))
    mapped = np.append(new_codes, -1)[codes] if len(codes) else codes
    return pd.Series(pd.Categorical.from_codes(mapped, categories=list(cats)), index=raw.index)


def few_distinct(series: pd.Series) -> bool:
    """A text column held as an Arrow dictionary (CSV, Parquet) with at most one distinct text
    in four cells: worth reading once a distinct text (:func:`label_codes`) rather than once a
    cell."""
    dt = series.dtype
    if not (isinstance(dt, pd.ArrowDtype) and pa_.types.is_dictionary(dt.pyarrow_dtype)):
        return False
    arr = pa_.array(series)
    chunks = arr.chunks if isinstance(arr, pa_.ChunkedArray) else [arr]
    # the chunks' dictionaries together bound the distinct texts from above (no unifying here)
    return 4 * sum(len(c.dictionary) for c in chunks) <= len(series)


def numbers(text: pd.Series, decimal: str) -> pd.Series:
    """Numbers written as text (*decimal* the decimal mark), NaN where a cell is not one. A
    Categorical of texts (:func:`label_codes`) is parsed once a distinct text."""
    if isinstance(text.dtype, pd.CategoricalDtype):
        per = numbers(pd.Series(np.asarray(text.cat.categories, dtype=object), dtype="str"),
                      decimal).to_numpy()
        codes = text.cat.codes.to_numpy()
        return pd.Series(np.append(per, np.nan)[codes], index=text.index)
    t = text
    if decimal != ".":
        has = t.str.contains(decimal, regex=False).fillna(False).astype(bool)
        if has.any():
            swapped = t.str.replace(".", "", regex=False).str.replace(decimal, ".", regex=False)
            t = t.where(~has, swapped)
    try:  # Arrow's parser when every cell is a number (the usual case), else pandas' per cell
        num = pd.Series(pc.cast(pa_.array(t, type=pa_.string(), from_pandas=True),
                                pa_.float64()).to_numpy(zero_copy_only=False), index=t.index)
    except (pa_.ArrowInvalid, pa_.ArrowTypeError):
        num = pd.to_numeric(t, errors="coerce").astype("float64")
    return num.where(np.isfinite(num), np.nan)


def stamps_as_dates(stamps: pd.Series) -> pd.Series | None:
    """Timestamps (no time zone) as :func:`dates` would read their text (:func:`cell_text`),
    without the round trip through text; None when that text is not simply the same instants
    (fractions of a second, which the text drops, or instants outside the dates we can hold)."""
    if getattr(stamps.dtype, "tz", None) is not None:
        return None
    given = stamps.dropna()
    if len(given) and (not (given >= _DATE_MIN).all() or not (given <= _DATE_MAX).all()
                       or not (given == given.dt.floor("s")).all()):
        return None
    return stamps.astype("datetime64[ns]")


_DMY = ("%d/%m/%Y", "%d.%m.%Y", "%d-%m-%Y", "%d/%m/%y", "%d.%m.%y")
_ISO = r"^\d{4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?$"


def dates(text: pd.Series, dayfirst: bool) -> pd.Series:
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    present = text.notna()
    if not present.any():
        return out
    t = text[present]
    iso = t.str.match(_ISO).fillna(False).astype(bool)
    if iso.any():
        parsed = _ns_range(pd.to_datetime(t[iso], format="ISO8601", errors="coerce"))
        out.loc[parsed.index] = parsed.astype("datetime64[ns]")
    if dayfirst:
        rest = t[~iso]
        for fmt in _DMY:
            if rest.empty:
                break
            parsed = _ns_range(pd.to_datetime(rest, format=fmt, errors="coerce"))
            ok = parsed.notna()
            out.loc[parsed.index[ok]] = parsed[ok].astype("datetime64[ns]")
            rest = rest[~ok]
    return out


#: Dates this package can hold (pandas' nanosecond timestamps), and how they are written.
_DATE_MIN, _DATE_MAX = pd.Timestamp.min.ceil("D"), pd.Timestamp.max.floor("D")
DATE_RANGE_TEXT = f"{_DATE_MIN:%Y-%m-%d} to {_DATE_MAX:%Y-%m-%d}"
_YEAR = re.compile(r"^(\d{1,4})-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-](\d{4})")


def _ns_range(parsed: pd.Series) -> pd.Series:
    """Dates outside pandas' nanosecond range become NaT (reported by :func:`date_problem`)."""
    if parsed.dtype == "datetime64[ns]":
        return parsed
    inside = parsed.notna() & (parsed >= _DATE_MIN) & (parsed <= _DATE_MAX)
    out = pd.Series(pd.NaT, index=parsed.index, dtype="datetime64[ns]")
    out[inside] = parsed[inside].astype("datetime64[ns]")
    return out


def date_problem(text: object) -> str | None:
    """Why a date-like text was refused, when its year is outside the dates we can hold."""
    m = _YEAR.match(str(text).strip())
    if not m:
        return None
    year = int(m.group(1) or m.group(2))
    if _DATE_MIN.year < year < _DATE_MAX.year:
        return None
    return f"outside the dates this package can hold ({DATE_RANGE_TEXT}); check the year"


_TIME = r"^(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?$"


def times(text: pd.Series) -> pd.Series:
    """Times of day as text ("14:30", "14:30:05", "2024-03-01 14:30") -> time since midnight
    (NaT where the text is not a time of day), column-wise."""
    out = pd.Series(pd.NaT, index=text.index, dtype="timedelta64[ns]")
    present = text.notna()
    if not present.any():
        return out
    t = text[present].astype(str).str.strip().str.replace("T", " ", regex=False)
    part = t.str.split(" ").str[-1]
    parts = part.str.extract(_TIME)
    h = pd.to_numeric(parts[0], errors="coerce")
    mi = pd.to_numeric(parts[1], errors="coerce")
    sec = pd.to_numeric(parts[2], errors="coerce").fillna(0)
    ok = h.notna() & mi.notna() & (h < 24) & (mi < 60) & (sec < 60)
    if ok.any():
        td = (pd.to_timedelta(h[ok], unit="h") + pd.to_timedelta(mi[ok], unit="m")
              + pd.to_timedelta(sec[ok], unit="s"))
        out.loc[td.index] = td.astype("timedelta64[ns]")
    return out
