"""Table schemas and the validation of raw tables into typed, checked frames.

Every cell arrives as text. Numbers, dates, flags and category labels are coerced column by column
first (so one bad cell cannot hide another), then ranges, whole numbers and vocabularies are
checked on whole columns (all failures in one pass; :func:`table_schema` gives the same rules as
a pandera schema), and the cross-table rules (keys, orphans, dates, session order, post without
pre) follow. Each problem becomes a :class:`~mfr_outcomes.findings.Finding`
that says whether its row was excluded or kept with a caution.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from dataclasses import replace as _dc_replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow

if TYPE_CHECKING:  # pandera is imported by table_schema only: 0.25 s off every command's start
    import pandera.pandas as pa

from mfr_outcomes import vocab
from mfr_outcomes.cells import (
    NA_TOKENS,
    date_problem,
    dates,
    few_distinct,
    flag,
    is_number,
    label_codes,
    labels,
    numbers,
    stamps_as_dates,
    text_and_markers,
    text_codes,
    text_frame,
    times,
)
from mfr_outcomes.findings import Finding, RowAccount
from mfr_outcomes.measures import MEASURES, Measure
from mfr_outcomes.table_rules import (
    KEYS,
    TableState,
    duplicates,
    foreign,
    post_checks,
    session_dates,
    shown,
    values_list,
)
from mfr_outcomes.threads import beside, load_threads

__all__ = [
    "ColumnSpec",
    "TABLE_SPECS",
    "TableInput",
    "required_columns",
    "table_schema",
    "validate_tables",
    "NA_TOKENS",
    "COVARIATE_KINDS",
    "table_specs",
    "covariate_spec",
    "WHEN_GIVEN",
]

Kind = Literal["id", "str", "int", "float", "date", "category", "bool", "time"]

#: Types a clinic profile may give a covariate column.
COVARIATE_KINDS = ("float", "int", "category", "bool", "date")


@dataclass(frozen=True)
class ColumnSpec:
    """One canonical column: its kind, whether it is required, and its rule.

    ``categories`` None on a category column means an open vocabulary (any label; used for
    ``arm`` when no profile lists the arms). ``rule`` is the cross-table rule in words, for the
    generated column tables (``mfr-outcomes schema``, the codebook); ``covariate`` marks a column
    declared by a clinic profile.
    """

    name: str
    kind: Kind
    required: bool = False
    categories: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    default: str | None = None
    rule: str = ""
    covariate: bool = False


TABLE_SPECS: dict[str, tuple[ColumnSpec, ...]] = {
    "patients": (
        ColumnSpec("patient_id", "id", required=True, rule="unique"),
        ColumnSpec("site_id", "str", default=vocab.DEFAULT_SITE),
        ColumnSpec("age_years", "int", low=16, high=110),
        ColumnSpec("sex", "category", categories=vocab.SEX),
        ColumnSpec("condition", "category", required=True, categories=vocab.CONDITION),
        ColumnSpec("affected_side", "category", categories=vocab.AFFECTED_SIDE),
        ColumnSpec("symptom_weeks", "float", low=0),
        ColumnSpec("enrolled_on", "date"),
        ColumnSpec("arm", "category", categories=None,
                   rule="the randomised or allocated group; labels from the profile's "
                        "[vocabulary] arm (any label when none is declared)"),
    ),
    "sessions": (
        ColumnSpec("session_id", "id", required=True, rule="unique"),
        ColumnSpec("patient_id", "id", required=True, rule="must exist in patients"),
        ColumnSpec("therapist_id", "str", required=True),
        ColumnSpec("session_date", "date", required=True, rule="not before enrolled_on"),
        ColumnSpec("session_time", "time",
                   rule="for studies timed in hours (readings after a procedure)"),
        ColumnSpec("session_number", "int", low=1,
                   rule="derived from date order when absent; must agree with it when given"),
        ColumnSpec("technique", "category", required=True, categories=vocab.TECHNIQUE,
                   rule="none = assessment-only visit (follow-up)"),
        ColumnSpec("target_region", "category", categories=vocab.TARGET_REGION),
        ColumnSpec("duration_min", "float", low=5, high=180),
        ColumnSpec("home_program", "bool"),
        ColumnSpec("adverse_event", "category", categories=vocab.ADVERSE_EVENT),
    ),
    "measurements": (
        ColumnSpec("session_id", "id", required=True, rule="must exist in sessions"),
        ColumnSpec("phase", "category", required=True, categories=vocab.PHASE,
                   rule="post only on treatment visits"),
        ColumnSpec("measure", "str", required=True, rule="a code of the measure registry"),
        ColumnSpec("side", "category", categories=vocab.SIDE, default="none"),
        ColumnSpec("value", "float", required=True,
                   rule="inside the measure's valid range; (session_id, phase, measure, side) "
                        "is unique"),
    ),
}

#: Optional columns (added with the clinic profile) that a validated frame has only when the
#: source gives them, so that studies without them keep their earlier shape.
WHEN_GIVEN = ("arm", "session_time")


def required_columns(table: str) -> list[str]:
    """Names of the required columns of *table*."""
    return [c.name for c in TABLE_SPECS[table] if c.required]


def covariate_spec(name: str, kind: str, *, required: bool = False,
                   categories: Iterable[str] | None = None, low: float | None = None,
                   high: float | None = None) -> ColumnSpec:
    """The :class:`ColumnSpec` of a covariate column declared by a clinic profile."""
    if kind not in COVARIATE_KINDS:
        raise ValueError(f"covariate {name}: type {kind!r} is not one of "
                         f"{', '.join(COVARIATE_KINDS)}")
    cats = tuple(categories) if categories is not None else None
    return ColumnSpec(name, kind, required=required,  # type: ignore[arg-type]
                      categories=cats if kind == "category" else None, low=low, high=high,
                      rule="covariate declared in the clinic profile", covariate=True)


def table_specs(table: str, vocabulary: vocab.Vocabulary | None = None,
                covariates: Iterable[ColumnSpec] = ()) -> tuple[ColumnSpec, ...]:
    """The column specs of *table* for one load: vocabularies from *vocabulary* (the built-ins
    when None), then the covariate columns a profile declares for this table."""
    v = vocabulary if vocabulary is not None else vocab.DEFAULT_VOCABULARY
    out = []
    for spec in TABLE_SPECS[table]:
        if spec.kind == "category" and spec.name in vocab.EXTENSIBLE:
            cats = v.categories(spec.name)
            spec = _dc_replace(spec, categories=cats if cats else None)
        out.append(spec)
    names = {s.name for s in out}
    for spec in covariates:
        if spec.name in names:
            raise ValueError(f"covariate {spec.name} is already a column of the {table} table")
        names.add(spec.name)
        out.append(spec)
    return tuple(out)


def table_schema(table: str, specs: tuple[ColumnSpec, ...] | None = None,
                 measures: Mapping[str, Measure] | None = None) -> pa.DataFrameSchema:
    """The pandera schema of one table after coercion (typed columns, missing allowed).

    Missing values are handled before pandera (a required value that is missing excludes the row),
    so every column is nullable here; the checks are ranges, whole numbers and vocabularies, and
    for measurements the per-measure valid range from the registry.
    """
    import pandera.pandas as pa

    specs = TABLE_SPECS[table] if specs is None else specs
    known = list(MEASURES if measures is None else measures)
    columns = {}
    for spec in specs:
        checks = []
        if spec.kind in ("int", "float"):
            if spec.low is not None:
                checks.append(pa.Check.ge(spec.low, name="out_of_range"))
            if spec.high is not None:
                checks.append(pa.Check.le(spec.high, name="out_of_range"))
            if spec.kind == "int":
                checks.append(pa.Check(lambda s: s.isna() | (s == np.round(s)),
                                       element_wise=False, name="not_integer"))
            dtype = "float64"
        elif spec.kind == "category":
            if spec.categories is not None:
                checks.append(pa.Check.isin(list(spec.categories), name="unknown_category"))
            dtype = None
        elif spec.kind == "time":
            dtype = "timedelta64[ns]"
        elif spec.kind == "date":
            dtype = "datetime64[ns]"
        elif spec.kind == "bool":
            dtype = "boolean"
        else:
            dtype = None
        if table == "measurements" and spec.name == "measure":
            checks.append(pa.Check(lambda s: s.isna() | s.isin(known), name="unknown_measure"))
        # columns added with the clinic profile may be absent from frames built by hand
        newer = spec.covariate or spec.name in WHEN_GIVEN
        columns[spec.name] = pa.Column(dtype, checks=checks, nullable=True, coerce=False,
                                       required=not newer)
    frame_checks = []
    if table == "measurements":
        frame_checks = [
            pa.Check(lambda df: df["value"].isna() | df["_low"].isna()
                     | df["value"].between(df["_low"], df["_high"]), name="measure_range"),
            pa.Check(lambda df: df["value"].isna() | ~df["_integer"].fillna(False).astype(bool)
                     | (df["value"] == np.round(df["value"])), name="measure_integer"),
        ]
    return pa.DataFrameSchema(columns, checks=frame_checks, strict=False, name=table)


@dataclass
class TableInput:
    """One raw table as read: text cells, where it came from, and each row's line or row number.

    Attributes
    ----------
    name : str
        Table name.
    frame : DataFrame
        Raw cells (text preferred; typed cells are turned into text).
    file : str
        Label used in messages ("sessions.csv", "clinic.xlsx sheet sessions").
    unit : {"line", "row"}
        "line" for text files, "row" for sheets, database tables and frames.
    lines : ndarray of int
        Line or row number of each row of *frame*.
    decimal : str or None
        Decimal mark of text numbers in this table (None: the caller's default).
    problems : list of (int, str)
        Problems met while reading (row index, sentence), e.g. a line with too many fields;
        reported as cautions.
    blank_lines : ndarray of int
        Lines of a text file that held no data (blank or whitespace only); counted as read.
    """

    name: str
    frame: pd.DataFrame
    file: str
    unit: str = "row"
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    decimal: str | None = None
    problems: list[tuple[int, str]] = field(default_factory=list)
    blank_lines: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def from_frame(cls, name: str, frame: pd.DataFrame, *, file: str, unit: str = "row",
                   first: int = 1, lines: Iterable[int] | None = None) -> TableInput:
        """Wrap a frame; rows are numbered from *first* unless *lines* is given."""
        frame = frame.reset_index(drop=True)
        frame.columns = unique_names(frame.columns)
        if lines is None:
            arr = np.arange(first, first + len(frame), dtype=np.int64)
        else:
            arr = np.asarray(list(lines), dtype=np.int64)
        return cls(name, frame, file, unit, arr)

    def where(self, i: int | None) -> str:
        if i is None:
            return self.file
        return f"{self.file} {self.unit} {int(self.lines[i])}"


# ----------------------------------------------------------------------------- text helpers

_CONTROL = {i: f"\\x{i:02x}" for i in [*range(32), 127]}


def printable(name: str) -> str:
    """*name* with control characters written out (a NUL byte as ``\\x00``), for sentences."""
    return name.translate(_CONTROL)


def unique_names(names: Iterable[object]) -> list[str]:
    """Column names as text, a repeated name getting ".1", ".2" (as pandas does)."""
    out: list[str] = []
    seen: Counter[str] = Counter()
    for name in names:
        base = "" if name is None else str(name)
        new = base if not seen[base] else f"{base}.{seen[base]}"
        seen[base] += 1
        out.append(new)
    return out


# ----------------------------------------------------------------------------- per table

def _canon(col: Any) -> str:
    return printable(str(col).strip()).lower().replace(" ", "_")


def _columns(t: TableState, frame: pd.DataFrame, table_specs: tuple[ColumnSpec, ...]) -> None:
    """Match column names, report missing required and unexpected columns (one caution for all
    unexpected columns, however many)."""
    specs = {s.name: s for s in table_specs}
    seen: dict[str, str] = {}
    for col in frame.columns:
        key = printable(str(col).strip())
        canon = _canon(col)
        if canon in specs and canon not in seen:
            seen[canon] = col
        elif canon in specs:
            t.add(None, key, None, "unexpected_column",
                  f"column {key} repeats column {seen[canon]}; the repeat is ignored", "kept",
                  suffix="")
        else:
            t.extra.append(col)
    if len(t.extra) == 1:
        key = printable(str(t.extra[0]).strip())
        t.add(None, key, None, "unexpected_column",
              f"unexpected column {key} (not part of the {t.name} table) is kept as is",
              "kept", suffix="")
    elif t.extra:
        names = [printable(str(c).strip()) for c in t.extra]
        listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20
                                          else "")
        t.add(None, None, ", ".join(names), "unexpected_column",
              f"{len(names)} unexpected columns {listed} (not part of the {t.name} table) are "
              f"kept as is", "kept", suffix="")
    for name, spec in specs.items():
        if name in seen:
            t.present.add(name)
            col = frame[seen[name]]
            if spec.kind in ("int", "float") and is_number(col):
                t.raw[name] = col.reset_index(drop=True)  # typed numbers stay numbers
                continue
            if spec.kind == "date" and pd.api.types.is_datetime64_dtype(col.dtype):
                t.stamps[name] = col.reset_index(drop=True)  # typed already (Parquet, SQL)
            if spec.kind == "category":
                t.raw[name], marker, t.text_factors[name] = label_codes(col)
            elif spec.kind == "id" or name in KEYS[t.name]:
                t.raw[name], marker, t.text_factors[name] = text_codes(col)
            elif spec.kind in ("int", "float") and few_distinct(col):
                # numbers as written, few distinct (scores, degrees): their text as a
                # Categorical over the distinct texts, parsed once a text (cells.numbers)
                t.raw[name], marker, _ = label_codes(col)
            else:
                t.raw[name], marker = text_and_markers(col)
            if marker is not None:
                t.markers[name] = marker
        else:
            t.raw[name] = pd.Series(np.nan, index=range(t.n), dtype="str")
            if spec.required:
                t.add(None, name, None, "missing_column",
                      f"required column {name} is missing; all {t.n} rows excluded",
                      "excluded", suffix="")
                t.exclude_all("missing_column")


def _absent_covariates(t: TableState, specs: tuple[ColumnSpec, ...]) -> None:
    """A covariate the profile declares but the table lacks: one caution (required: excluded)."""
    for spec in specs:
        if spec.covariate and not spec.required and spec.name not in t.present:
            t.add(None, spec.name, None, "missing_column",
                  f"covariate {spec.name} declared in the profile is not a column of "
                  f"{t.file}; it is left empty", "kept", suffix="")


def _reading_problems(t: TableState, inp: TableInput) -> None:
    """What the reader met: blank lines (counted, not rows) and mended records."""
    if len(inp.blank_lines):
        lines = inp.blank_lines
        many = len(lines) > 1
        t.findings.append(Finding(
            table=t.name, file=t.file, line=int(lines[0]), column=None, value=None,
            rule="blank_line",
            message=f"{t.file} {t.unit}{'s' if many else ''} {shown(lines)}: blank or "
                    f"whitespace-only {'lines' if many else 'line'}, no data (counted as read, "
                    f"not as rows)", action="kept"))
    for i, sentence in inp.problems:
        t.add(i, None, None, "malformed_row", sentence, "kept")


def _coerce(t: TableState, specs: tuple[ColumnSpec, ...], *, decimal: str,
            dayfirst: bool) -> None:
    """Turn text into typed columns; report text that is not a number, date, time, flag or
    label."""
    for spec in specs:
        raw = t.raw[spec.name]
        bad_action = "excluded" if _needed(t.name, spec) else "missing"
        factors = t.text_factors.get(spec.name)
        if spec.default is not None and raw.isna().any():
            if isinstance(raw.dtype, pd.CategoricalDtype) and \
                    spec.default not in raw.cat.categories:  # label text (cells.label_codes)
                raw = raw.cat.add_categories([spec.default])
            raw = raw.fillna(spec.default)
            t.raw[spec.name] = raw
            factors = None
        if spec.required and spec.name in t.present:
            marker = t.markers.get(spec.name)
            for i in np.flatnonzero(raw.isna().to_numpy()):
                m = None if marker is None else marker.iat[i]
                if isinstance(m, str):
                    t.add(int(i), spec.name, m, "missing_value",
                          f"{spec.name} = {m}, a missing-value marker, but it is required",
                          "excluded")
                else:
                    t.add(int(i), spec.name, None, "missing_value",
                          f"{spec.name} is empty, but it is required", "excluded")
        if spec.kind in ("int", "float"):
            if is_number(raw):
                typed = raw.astype("float64")
                typed = typed.where(np.isfinite(typed), np.nan)
            else:
                typed = numbers(raw, decimal)
            bad = raw.notna() & typed.isna()
            what = "not a number"
        elif spec.kind == "date":
            typed = stamps_as_dates(t.stamps[spec.name]) if spec.name in t.stamps else None
            typed = dates(raw, dayfirst) if typed is None else typed
            bad = raw.notna() & typed.isna()
            what = "not a valid date" + ("" if dayfirst else " (write YYYY-MM-DD, or pass "
                                         "dayfirst=True for day/month/year)")
        elif spec.kind == "time":
            typed = times(raw)
            bad = raw.notna() & typed.isna()
            what = "not a time of day (write HH:MM, 00:00–23:59)"
        elif spec.kind == "bool":
            codes, uniques = pd.factorize(raw)
            flags = np.array([flag(str(u)) for u in uniques] + [None], dtype=object)
            typed = pd.Series(pd.array(flags[codes], dtype="boolean"), index=raw.index)
            bad = raw.notna() & typed.isna()
            what = "not true/false (yes/no, 1/0)"
        elif spec.kind == "category":
            typed = labels(raw, factors)
            bad = None
        else:
            typed = raw
            bad = None
        if bad is not None:
            rule = {"int": "not_a_number", "float": "not_a_number", "date": "invalid_date",
                    "time": "invalid_time", "bool": "wrong_type"}[spec.kind]
            for i in np.flatnonzero(bad.to_numpy()):
                text = t.text(spec.name, i)
                why = (date_problem(text) or what) if spec.kind == "date" else what
                t.add(int(i), spec.name, text, rule, f"{spec.name} = {text}, {why}", bad_action)
        t.typed[spec.name] = typed.reset_index(drop=True)
        if typed is raw and factors is not None:  # the text's codes serve the key rules
            t.remember_codes(spec.name, *factors)


def _checks(t: TableState, specs: tuple[ColumnSpec, ...], measures: Mapping[str, Measure]
            ) -> None:
    """Ranges, whole numbers, vocabularies and measures on whole columns (the rules of
    :func:`table_schema`, in its order: columns in table order, then the per-measure range).
    A category column without categories (``arm`` with none declared) takes any label."""
    before = {name: col for name, col in t.typed.items()}
    for spec in specs:
        v = before[spec.name]
        action = "excluded" if _needed(t.name, spec) else "missing"
        fails: list[tuple[np.ndarray, str]] = []
        if spec.kind in ("int", "float"):
            arr = v.to_numpy(dtype="float64", na_value=np.nan)
            out = np.zeros(len(arr), bool)
            with np.errstate(invalid="ignore"):
                if spec.low is not None:
                    out |= arr < spec.low
                if spec.high is not None:
                    out |= arr > spec.high
                frac = ~np.isnan(arr) & (arr != np.round(arr)) if spec.kind == "int" else \
                    np.zeros(len(arr), bool)
            fails = [(out, "out_of_range"), (frac & ~out, "not_integer")]
        elif spec.kind == "category" and spec.categories is not None:
            fails = [(_not_in(t, spec.name, list(spec.categories)), "unknown_category")]
        if t.name == "measurements" and spec.name == "measure":
            fails = [(_not_in(t, spec.name, list(measures)), "unknown_measure")]
        hit = np.zeros(t.n, bool)
        for mask, rule in fails:
            for i in np.flatnonzero(mask):
                _check_finding(t, spec, int(i), rule, action, measures)
            hit |= mask
        if action == "missing" and hit.any():
            col = t.typed[spec.name].copy()
            col[hit] = np.nan if col.dtype == "float64" else None
            t.typed[spec.name] = col
    if t.name == "measurements":
        _measure_checks(t, before, measures)


def _not_in(t: TableState, name: str, allowed: list[str]) -> np.ndarray:
    """Present values of typed column *name* not in *allowed*, tested once a distinct value."""
    codes, uniques = t.factors(name)
    bad = np.append(~pd.Index(values_list(uniques), dtype=object).isin(allowed), False)
    return bad[codes] if len(codes) else np.zeros(0, bool)


def _check_finding(t: TableState, spec: ColumnSpec, i: int, rule: str, action: str,
                   measures: Mapping[str, Measure]) -> None:
    col = spec.name
    raw = t.text(col, i)
    if rule == "out_of_range":
        t.add(i, col, raw, rule, f"{col} = {raw}, must be {_range_text(spec.low, spec.high)}",
              action)
    elif rule == "not_integer":
        t.add(i, col, raw, rule, f"{col} = {raw}, must be a whole number", action)
    elif rule == "unknown_category":
        t.add(i, col, raw, rule, f"{col} = {raw}, not one of {', '.join(spec.categories or ())}",
              action)
    else:
        t.add(i, col, raw, "unknown_measure",
              f"measure = {raw}, not a registered measure (known: {', '.join(measures)})",
              "excluded")


def _measure_checks(t: TableState, typed: dict[str, pd.Series],
                    measures: Mapping[str, Measure]) -> None:
    """Each reading inside its measure's valid range, and whole when the measure is."""
    measure = typed["measure"]
    value = typed["value"].to_numpy(dtype="float64", na_value=np.nan)
    codes, uniques = t.factors("measure") if t.typed["measure"] is measure else \
        pd.factorize(measure)
    regs = [measures.get(u) for u in values_list(uniques)]
    # one entry a distinct measure (the last for a missing one); a measure without a low
    # bound is checked for neither bound, as before: NaN compares false
    low_t = np.array([m.low if m else np.nan for m in regs] + [np.nan], dtype="float64")
    high_t = np.array([m.high if m else np.nan for m in regs] + [np.nan], dtype="float64")
    high_t[np.isnan(low_t)] = np.nan
    whole_t = np.array([bool(m and m.integer) for m in regs] + [False]) & ~np.isnan(low_t)
    with np.errstate(invalid="ignore"):  # in place: few temporary arrays of every reading
        out = value < low_t[codes]
        out |= value > high_t[codes]
        frac = value != np.rint(value)
        frac &= whole_t[codes]
        frac &= ~out
        frac &= ~np.isnan(value)
    for i in np.flatnonzero(out | frac):
        m = measures[measure.iat[i]]
        raw = t.text("value", int(i))
        if out[i]:
            t.add(int(i), "value", raw, "out_of_range",
                  f"value = {raw}, must be {m.range_text()} for {m.code}", "excluded")
        else:
            t.add(int(i), "value", raw, "not_integer",
                  f"value = {raw}, must be a whole number for {m.code}", "excluded")


def _needed(table: str, spec: ColumnSpec) -> bool:
    """A required or key column: a bad value there makes the row unusable."""
    return spec.required or spec.name in KEYS[table]


def _range_text(low: float | None, high: float | None) -> str:
    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"
    if low is not None and high is not None:
        return f"{fmt(low)}–{fmt(high)}"
    if low is not None:
        return f"≥ {fmt(low)}"
    return f"≤ {fmt(high)}"


def _final(t: TableState, frame: pd.DataFrame, specs: tuple[ColumnSpec, ...]) -> pd.DataFrame:
    """Used rows with the column types of docs/internals.md, extra columns after (``arm`` and
    ``session_time`` only when the source gives them)."""
    used = t.ok
    everything = bool(used.all())
    cols: dict[str, Any] = {}
    for spec in specs:
        if spec.name in WHEN_GIVEN and spec.name not in t.present:
            continue
        col = t.typed[spec.name]
        col = col.reset_index(drop=True) if everything else col[used].reset_index(drop=True)
        if spec.kind in ("id", "str"):
            col = col.astype("str")
        elif spec.kind == "category":
            if not isinstance(col.dtype, pd.CategoricalDtype):
                col = col.astype(object).astype("category")
            cats = (list(spec.categories) if spec.categories is not None
                    else _open_categories(col))
            col = pd.Categorical(col.cat.set_categories(cats))
        elif spec.kind == "time":
            col = col.astype("timedelta64[ns]")
        elif spec.kind == "int":
            if t.name == "sessions" and spec.name == "session_number":
                col = col.astype("int64")
            else:
                col = col.round().astype("Int64")
        elif spec.kind == "float":
            col = col.astype("float64")
        elif spec.kind == "date":
            col = pd.to_datetime(col).astype("datetime64[ns]")
        elif spec.kind == "bool":
            col = col.astype("boolean")
        cols[spec.name] = col
    out = pd.DataFrame(cols, index=pd.RangeIndex(int(used.sum())))
    if t.extra:
        extra = extra_columns(frame, t.extra)
        extra = extra.reset_index(drop=True) if everything else \
            extra[used].reset_index(drop=True)
        out = pd.concat([out, extra], axis=1)
    return out


def extra_columns(frame: pd.DataFrame, names: list[Any]) -> pd.DataFrame:
    """The unexpected columns *names* of *frame* as stripped text (NA tokens missing), kept as
    one block of Python strings (object dtype, ``None`` where missing).

    One block, not one Arrow string array per column: the work is a fixed handful of array
    operations over all the cells, so 10,000 columns cost ten times 1,000 and no per-column
    pandas overhead (see ``tests/test_schema.py::test_unexpected_columns_cost_grows_linearly``).
    Text columns (every CSV) go through one Arrow pass; others (sheets, databases, frames) are
    read as text column by column, as any cell is.
    """
    sub = frame[names]
    labels_ = [str(c).strip() for c in names]
    if len(names) and all(_is_text_dtype(dt) for dt in sub.dtypes):
        block = sub.to_numpy(dtype=object, na_value=None)
        text, _ = text_and_markers(pd.Series(block.ravel(order="F"), dtype=object))
        cells = text.to_numpy(dtype=object, na_value=None).reshape(block.shape, order="F")
    else:
        cells = text_frame(sub).to_numpy(dtype=object, na_value=None)
    return pd.DataFrame(cells, columns=labels_, index=frame.index, dtype=object)


def _is_text_dtype(dt: Any) -> bool:
    """Text cells as read: pandas strings, or Arrow dictionaries of strings (CSV and Parquet)."""
    if isinstance(dt, pd.StringDtype):
        return True
    return isinstance(dt, pd.ArrowDtype) and pyarrow.types.is_dictionary(dt.pyarrow_dtype) \
        and pyarrow.types.is_string(dt.pyarrow_dtype.value_type)


def _open_categories(col: pd.Series) -> list[str]:
    """Labels of an open vocabulary (``arm`` with none declared): those present, sorted."""
    return sorted({str(v) for v in col.dropna().unique()})


def validate_tables(inputs: dict[str, TableInput], *, dayfirst: bool = False,
                    decimal: str = ".", vocabulary: vocab.Vocabulary | None = None,
                    covariates: Mapping[str, Iterable[ColumnSpec]] | None = None,
                    measures: Mapping[str, Measure] | None = None
                    ) -> tuple[dict[str, pd.DataFrame], list[Finding], dict[str, RowAccount]]:
    """Validate the three raw tables together.

    Parameters
    ----------
    inputs : dict
        "patients", "sessions", "measurements" -> :class:`TableInput`.
    dayfirst : bool
        Read non-ISO dates as day/month/year.
    decimal : str
        Decimal mark used in the text numbers.
    vocabulary : Vocabulary, optional
        Category labels of this load (built-ins plus a profile's); the built-ins when None.
    covariates : dict, optional
        table -> covariate :class:`ColumnSpec` declared by a profile (validated and typed like
        the built-in columns; a declared covariate absent from the table is a caution).
    measures : dict, optional
        code -> Measure known to this load (the registry when None).

    Returns
    -------
    frames : dict of DataFrame
        Used rows of each table, typed.
    findings : list of Finding
        In table order, then in the order found.
    accounting : dict of RowAccount
    """
    findings: dict[str, list[Finding]] = {name: [] for name in vocab.TABLES}
    covariates = covariates or {}
    known = MEASURES if measures is None else measures
    specs = {name: table_specs(name, vocabulary, covariates.get(name, ())) for name in vocab.TABLES}

    def one(name: str) -> TableState:
        inp = inputs[name]
        t = TableState(name, inp.file, inp.unit, inp.lines, findings[name],
                       blank=len(inp.blank_lines))
        _columns(t, inp.frame, specs[name])
        _absent_covariates(t, specs[name])
        _reading_problems(t, inp)
        _coerce(t, specs[name], decimal=inp.decimal or decimal, dayfirst=dayfirst)
        _checks(t, specs[name], known)
        duplicates(t)
        return t

    def final(t: TableState) -> pd.DataFrame:
        return _final(t, inputs[t.name].frame, specs[t.name])

    # Each table's findings go to its own list and each step below writes only the state of
    # the table it names, so the two pieces may run side by side (threads.beside): the rules
    # on the readings read sessions, which session_dates changes only in session_number.
    threads = load_threads(text_readings=inputs["measurements"].unit == "line")
    # (Moving the readings' session-id pass to the second thread to even the two pieces out
    # saved 15 ms of 0.2 s at 1.3 M readings from Parquet and raised the peak memory by 30–50 MB,
    # a quarter: not done.)
    (p, s), m = beside(lambda: (one("patients"), one("sessions")),
                       lambda: one("measurements"), threads)
    foreign(s, p, "patient_id", "patient")

    def parents() -> tuple[pd.DataFrame, pd.DataFrame]:
        session_dates(s, p)
        return final(p), final(s)

    def children() -> pd.DataFrame:
        foreign(m, s, "session_id", "session")
        post_checks(m, s)
        return final(m)

    (fp, fs), fm = beside(parents, children, threads)
    tables = {"patients": p, "sessions": s, "measurements": m}
    frames = {"patients": fp, "sessions": fs, "measurements": fm}
    accounting = {name: t.account() for name, t in tables.items()}
    # within a table, whole-column findings first, then by line (stable: order found)
    ordered = [f for name in vocab.TABLES
               for f in sorted(findings[name], key=lambda f: -1 if f.line is None else f.line)]
    return frames, ordered, accounting
