"""Table schemas and the validation of raw tables into typed, checked frames.

Every cell arrives as text. Numbers, dates, flags and category labels are coerced column by column
first (so one bad cell cannot hide another), pandera then checks ranges, whole numbers and
vocabularies lazily (all failures in one pass), and the cross-table rules (keys, orphans, dates,
session order, post without pre) follow. Each problem becomes a :class:`~mfr_outcomes.study.Finding`
that says whether its row was excluded or kept with a caution.
"""
from __future__ import annotations

import datetime as _dt
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from dataclasses import replace as _dc_replace
from typing import Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from mfr_outcomes import vocab
from mfr_outcomes.measures import MEASURES, Measure
from mfr_outcomes.study import Finding, RowAccount

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

#: Cell texts read as missing (compared after stripping, case-insensitive).
NA_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "#n/a", "nat", "<na>"})
_TRUE = frozenset({"true", "t", "yes", "y", "1", "1.0", "ja", "oui", "si", "x"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "0.0", "nein", "non"})

EXCLUDED = " (row excluded)"
SET_MISSING = " (set to missing; row kept)"
CAUTION = " (row kept with a caution)"


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

_KEYS = {"patients": ("patient_id",), "sessions": ("session_id",),
         "measurements": ("session_id", "phase", "measure", "side")}


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
    """

    name: str
    frame: pd.DataFrame
    file: str
    unit: str = "row"
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    decimal: str | None = None
    problems: list[tuple[int, str]] = field(default_factory=list)

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


def cell_text(series: pd.Series) -> pd.Series:
    """Cells as stripped text (object dtype), with missing cells and NA tokens as None."""
    s = series
    if pd.api.types.is_datetime64_any_dtype(s):
        txt = s.dt.strftime("%Y-%m-%d %H:%M:%S").str.replace(" 00:00:00", "", regex=False)
        values = txt.astype(object).where(s.notna(), None)
    else:
        values = s.astype(object)
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in ("string", "empty", "integer", "boolean") and len(values):
        # fast path: str() of these is the text a person would write
        missing = values.isna().to_numpy()
        txt = values.astype(str).str.strip().astype(object)
        txt[missing | txt.str.lower().isin(NA_TOKENS).to_numpy()] = None
        return pd.Series(txt.to_numpy(), index=series.index, dtype=object)
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT:
            out.append(None)
            continue
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, (pd.Timestamp, _dt.datetime)):
            t = v.isoformat()
            out.append(t[:10] if t.endswith("T00:00:00") else t)
            continue
        t = str(v).strip()
        out.append(None if t.lower() in NA_TOKENS else t)
    return pd.Series(out, index=series.index, dtype=object)


def _number(text: pd.Series, decimal: str) -> pd.Series:
    t = text.astype(object)
    if decimal != ".":
        t = t.map(lambda v: v.replace(".", "").replace(decimal, ".") if isinstance(v, str)
                  and decimal in v else v)
    num = pd.to_numeric(t, errors="coerce")
    return num.astype("float64").where(np.isfinite(num.astype("float64")), np.nan)


_DMY = ("%d/%m/%Y", "%d.%m.%Y", "%d-%m-%Y", "%d/%m/%y", "%d.%m.%y")


def _dates(text: pd.Series, dayfirst: bool) -> pd.Series:
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    present = text.notna()
    if not present.any():
        return out
    t = text[present].astype(str)
    iso = t.str.match(r"^\d{4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?$")
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
_DATE_RANGE_TEXT = f"{_DATE_MIN:%Y-%m-%d} to {_DATE_MAX:%Y-%m-%d}"
_YEAR = re.compile(r"^(\d{1,4})-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-](\d{4})")


def _ns_range(parsed: pd.Series) -> pd.Series:
    """Dates outside pandas' nanosecond range become NaT (reported by :func:`_date_problem`)."""
    if parsed.dtype == "datetime64[ns]":
        return parsed
    inside = parsed.notna() & (parsed >= _DATE_MIN) & (parsed <= _DATE_MAX)
    out = pd.Series(pd.NaT, index=parsed.index, dtype="datetime64[ns]")
    out[inside] = parsed[inside].astype("datetime64[ns]")
    return out


def _date_problem(text: object) -> str | None:
    """Why a date-like text was refused, when its year is outside the dates we can hold."""
    m = _YEAR.match(str(text).strip())
    if not m:
        return None
    year = int(m.group(1) or m.group(2))
    if _DATE_MIN.year < year < _DATE_MAX.year:
        return None
    return f"outside the dates this package can hold ({_DATE_RANGE_TEXT}); check the year"


_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?$")


def _times(text: pd.Series) -> pd.Series:
    """Times of day as text ("14:30", "14:30:05", "2024-03-01 14:30") -> time since midnight."""
    out = pd.Series(pd.NaT, index=text.index, dtype="timedelta64[ns]")
    for i, v in text.items():
        if not isinstance(v, str):
            continue
        part = v.strip().replace("T", " ").split(" ")[-1]
        m = _TIME.match(part)
        if not m:
            continue
        h, mi, sec = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        if h < 24 and mi < 60 and sec < 60:
            out[i] = pd.Timedelta(hours=h, minutes=mi, seconds=sec)
    return out


def _open_categories(col: pd.Series) -> list[str]:
    """Labels of an open vocabulary (``arm`` with none declared): those present, sorted."""
    return sorted({str(v) for v in col.dropna()})


# ----------------------------------------------------------------------------- per table

class _Table:
    """Working state of one table during validation."""

    def __init__(self, inp: TableInput, findings: list[Finding],
                 specs: tuple[ColumnSpec, ...] | None = None,
                 measures: Mapping[str, Measure] | None = None) -> None:
        self.inp = inp
        self.name = inp.name
        self.specs = TABLE_SPECS[inp.name] if specs is None else specs
        self.measures = MEASURES if measures is None else measures
        self.findings = findings
        self.n = len(inp.frame)
        self.reason: list[str | None] = [None] * self.n  # first exclusion rule of each row
        self.raw: pd.DataFrame = pd.DataFrame(index=range(self.n))
        self.typed: pd.DataFrame = pd.DataFrame(index=range(self.n))
        self.present: set[str] = set()
        self.extra: list[str] = []

    def add(self, i: int | None, column: str | None, value: str | None, rule: str,
            text: str, action: str, suffix: str | None = None) -> None:
        if suffix is None:
            suffix = EXCLUDED if action == "excluded" else (SET_MISSING if action == "missing"
                                                             else CAUTION)
        self.findings.append(Finding(
            table=self.name, file=self.inp.file,
            line=None if i is None else int(self.inp.lines[i]), column=column,
            value=value, rule=rule, message=f"{self.inp.where(i)}: {text}{suffix}",
            action="excluded" if action == "excluded" else "kept"))
        if action == "excluded" and i is not None and self.reason[i] is None:
            self.reason[i] = rule

    def exclude_all(self, rule: str) -> None:
        self.reason = [r if r is not None else rule for r in self.reason]

    @property
    def used(self) -> np.ndarray:
        return np.array([r is None for r in self.reason], dtype=bool)

    def account(self) -> RowAccount:
        reasons = Counter(r for r in self.reason if r is not None)
        excluded = sum(reasons.values())
        return RowAccount(self.n, self.n - excluded, excluded, dict(reasons))


def _columns(t: _Table) -> None:
    """Match column names, report missing required and unexpected columns."""
    specs = {s.name: s for s in t.specs}
    frame = t.inp.frame
    seen: dict[str, str] = {}
    for col in frame.columns:
        key = str(col).strip()
        canon = key.lower().replace(" ", "_")
        if canon in specs and canon not in seen:
            seen[canon] = col
        elif canon in specs:
            t.add(None, key, None, "unexpected_column",
                  f"column {key} repeats column {seen[canon]}; the repeat is ignored", "kept",
                  suffix="")
        else:
            t.extra.append(col)
            t.add(None, key, None, "unexpected_column",
                  f"unexpected column {key} (not part of the {t.name} table) is kept as is",
                  "kept", suffix="")
    for name, spec in specs.items():
        if name in seen:
            t.present.add(name)
            t.raw[name] = cell_text(frame[seen[name]]).to_numpy()
        else:
            t.raw[name] = pd.Series([None] * t.n, dtype=object)
            if spec.required:
                t.add(None, name, None, "missing_column",
                      f"required column {name} is missing; all {t.n} rows excluded",
                      "excluded", suffix="")
                t.exclude_all("missing_column")


def _absent_covariates(t: _Table) -> None:
    """A covariate the profile declares but the table lacks: one caution (required: excluded)."""
    for spec in t.specs:
        if spec.covariate and not spec.required and spec.name not in t.present:
            t.add(None, spec.name, None, "missing_column",
                  f"covariate {spec.name} declared in the profile is not a column of "
                  f"{t.inp.file}; it is left empty", "kept", suffix="")


def _coerce(t: _Table, *, decimal: str, dayfirst: bool) -> None:
    """Turn text into typed columns; report text that is not a number, date, flag or label."""
    decimal = t.inp.decimal or decimal
    for i, sentence in t.inp.problems:
        t.add(i, None, None, "malformed_row", sentence, "kept")
    for spec in t.specs:
        raw = t.raw[spec.name]
        bad_action = "excluded" if _needed(t.name, spec) else "missing"
        if spec.default is not None:
            raw = raw.where(raw.notna(), spec.default)
            t.raw[spec.name] = raw
        if spec.required and spec.name in t.present:
            for i in np.flatnonzero(raw.isna().to_numpy()):
                t.add(int(i), spec.name, None, "missing_value",
                      f"{spec.name} is empty, but it is required", "excluded")
        if spec.kind in ("int", "float"):
            num = _number(raw, decimal)
            for i in np.flatnonzero((raw.notna() & num.isna()).to_numpy()):
                t.add(int(i), spec.name, raw.iat[i], "not_a_number",
                      f"{spec.name} = {raw.iat[i]}, not a number", bad_action)
            t.typed[spec.name] = num
        elif spec.kind == "date":
            d = _dates(raw, dayfirst)
            hint = "" if dayfirst else " (write YYYY-MM-DD, or pass dayfirst=True for day/month/year)"
            for i in np.flatnonzero((raw.notna() & d.isna()).to_numpy()):
                why = _date_problem(raw.iat[i]) or f"not a valid date{hint}"
                t.add(int(i), spec.name, raw.iat[i], "invalid_date",
                      f"{spec.name} = {raw.iat[i]}, {why}", bad_action)
            t.typed[spec.name] = d
        elif spec.kind == "time":
            tod = _times(raw)
            for i in np.flatnonzero((raw.notna() & tod.isna()).to_numpy()):
                t.add(int(i), spec.name, raw.iat[i], "invalid_time",
                      f"{spec.name} = {raw.iat[i]}, not a time of day (write HH:MM, 00:00–23:59)",
                      bad_action)
            t.typed[spec.name] = tod
        elif spec.kind == "bool":
            key = raw.map(lambda v: v.lower() if isinstance(v, str) else v)
            val = pd.Series(pd.NA, index=raw.index, dtype="boolean")
            val[key.isin(_TRUE)] = True
            val[key.isin(_FALSE)] = False
            for i in np.flatnonzero((raw.notna() & val.isna()).to_numpy()):
                t.add(int(i), spec.name, raw.iat[i], "wrong_type",
                      f"{spec.name} = {raw.iat[i]}, not true/false (yes/no, 1/0)", bad_action)
            t.typed[spec.name] = val
        elif spec.kind == "category":
            key = raw.astype(object)
            present = key.notna().to_numpy()
            if present.any():
                key[present] = (key[present].astype(str).str.strip().str.lower()
                                .str.replace(r"[\s\-]+", "_", regex=True).to_numpy())
            t.typed[spec.name] = key
        else:
            t.typed[spec.name] = raw


def _pandera(t: _Table) -> None:
    """Ranges, whole numbers and vocabularies through pandera, all failures in one pass."""
    frame = t.typed.copy()
    if t.name == "measurements":
        meas = [t.measures.get(m) if isinstance(m, str) else None for m in frame["measure"]]
        frame["_low"] = [m.low if m else np.nan for m in meas]
        frame["_high"] = [m.high if m else np.nan for m in meas]
        frame["_integer"] = [bool(m.integer) if m else False for m in meas]
    try:
        table_schema(t.name, t.specs, t.measures).validate(frame, lazy=True)
        return
    except SchemaErrors as err:
        cases = err.failure_cases
    specs = {s.name: s for s in t.specs}
    cases = cases[cases["index"].notna()]
    seen: set[tuple[int, str]] = set()
    for _, case in cases.iterrows():
        col, check, i = case["column"], _check_rule(str(case["check"])), int(case["index"])
        if t.name == "measurements" and check in ("measure_range", "measure_integer"):
            if col != "value":
                continue
        if col not in specs or (i, col) in seen:
            continue
        seen.add((i, col))
        spec = specs[col]
        raw = t.raw[col].iat[i]
        action = "excluded" if _needed(t.name, spec) else "missing"
        if check == "out_of_range":
            rng = _range_text(spec.low, spec.high)
            t.add(i, col, raw, "out_of_range", f"{col} = {raw}, must be {rng}", action)
        elif check == "not_integer":
            t.add(i, col, raw, "not_integer", f"{col} = {raw}, must be a whole number", action)
        elif check == "unknown_category":
            t.add(i, col, raw, "unknown_category",
                  f"{col} = {raw}, not one of {', '.join(spec.categories or ())}", action)
        elif check == "unknown_measure":
            t.add(i, col, raw, "unknown_measure",
                  f"measure = {raw}, not a registered measure (known: {', '.join(t.measures)})",
                  "excluded")
        elif check == "measure_range":
            m = t.measures[t.typed["measure"].iat[i]]
            t.add(i, col, raw, "out_of_range",
                  f"value = {raw}, must be {m.range_text()} for {m.code}", "excluded")
        elif check == "measure_integer":
            m = t.measures[t.typed["measure"].iat[i]]
            t.add(i, col, raw, "not_integer",
                  f"value = {raw}, must be a whole number for {m.code}", "excluded")
        if action == "missing" and col in t.typed:
            t.typed.loc[i, col] = np.nan if t.typed[col].dtype == "float64" else None


def _check_rule(check: str) -> str:
    """pandera names built-in checks after themselves ("greater_than_or_equal_to(16)")."""
    if check.startswith(("greater_than", "less_than", "in_range")):
        return "out_of_range"
    if check.startswith("isin"):
        return "unknown_category"
    return check


def _needed(table: str, spec: ColumnSpec) -> bool:
    """A required or key column: a bad value there makes the row unusable."""
    return spec.required or spec.name in _KEYS[table]


def _range_text(low: float | None, high: float | None) -> str:
    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"
    if low is not None and high is not None:
        return f"{fmt(low)}–{fmt(high)}"
    if low is not None:
        return f"≥ {fmt(low)}"
    return f"≤ {fmt(high)}"


def _duplicates(t: _Table) -> None:
    keys = list(_KEYS[t.name])
    frame = t.typed[keys].astype(object)
    has_key = frame.notna().all(axis=1).to_numpy()
    if not has_key.any():
        return
    sub = frame[has_key]
    dup = sub.duplicated(keep="first").to_numpy()
    first_line: dict[tuple, int] = {}
    for i, row in zip(np.flatnonzero(has_key), sub.itertuples(index=False, name=None)):
        first_line.setdefault(row, int(t.inp.lines[i]))
    for i, is_dup in zip(np.flatnonzero(has_key), dup):
        if not is_dup:
            continue
        row = tuple(frame.iloc[i])
        where = f"{t.inp.unit} {first_line[row]}"
        if len(keys) == 1:
            t.add(int(i), keys[0], row[0], "duplicate_key",
                  f"{keys[0]} = {row[0]} repeats {where}", "excluded")
        else:
            label = ", ".join(f"{k} {v}" for k, v in zip(keys, row))
            t.add(int(i), None, "/".join(map(str, row)), "duplicate_reading",
                  f"reading ({label}) repeats {where}", "excluded")


def _foreign(child: _Table, parent: _Table, key: str, parent_label: str) -> None:
    """Orphans (key not in parent at all) and cascades (parent row excluded)."""
    pkeys = parent.typed[key]
    all_keys = set(pkeys.dropna())
    used_keys = set(pkeys[parent.used].dropna())
    ckeys = child.typed[key].tolist()
    cascade: dict[str, list[int]] = {}
    for i in range(child.n):
        k = ckeys[i]
        if k is None or (isinstance(k, float) and np.isnan(k)):
            continue
        if k not in all_keys:
            child.add(i, key, k, "orphan", f"{key} = {k} is not in {parent.name}", "excluded")
        elif k not in used_keys and child.reason[i] is None:
            cascade.setdefault(k, []).append(i)
    for k, rows in cascade.items():
        lines = [int(child.inp.lines[i]) for i in rows]
        shown = ", ".join(map(str, lines[:10])) + (f" and {len(lines) - 10} more"
                                                   if len(lines) > 10 else "")
        unit = child.inp.unit + ("s" if len(lines) > 1 else "")
        child.findings.append(Finding(
            table=child.name, file=child.inp.file, line=lines[0], column=key, value=k,
            rule="cascade",
            message=f"{child.inp.file} {unit} {shown}: excluded because {parent_label} {k} "
                    f"was excluded",
            action="excluded"))
        for i in rows:
            child.reason[i] = "cascade"


def _session_dates(s: _Table, p: _Table) -> None:
    """Visits before enrolment; session_number against date order (derived when absent)."""
    enrolled = dict(zip(p.typed["patient_id"][p.used], p.typed["enrolled_on"][p.used]))
    used = s.used
    for i in np.flatnonzero(used):
        pid = s.typed["patient_id"].iat[i]
        e, d = enrolled.get(pid), s.typed["session_date"].iat[i]
        if e is not None and pd.notna(e) and pd.notna(d) and d < e:
            s.add(int(i), "session_date", s.raw["session_date"].iat[i], "before_enrolment",
                  f"session_date = {s.raw['session_date'].iat[i]} is before enrolled_on "
                  f"{e:%Y-%m-%d} of patient {pid}", "kept")
    given = s.typed["session_number"]
    derived = pd.Series(np.nan, index=s.typed.index)
    idx = np.flatnonzero(used)
    if len(idx):
        sub = pd.DataFrame({"pid": s.typed["patient_id"].iloc[idx],
                            "date": s.typed["session_date"].iloc[idx],
                            "given": given.iloc[idx], "line": s.inp.lines[idx]},
                           index=idx)
        sub = sub.sort_values(["pid", "date", "given", "line"], na_position="last",
                              kind="stable")
        sub["derived"] = sub.groupby("pid", sort=False).cumcount() + 1
        final = sub["derived"].astype(float).copy()
        if "session_number" in s.present:
            for pid, grp in sub.groupby("pid", sort=False):
                g = grp["given"]
                known = g.dropna()
                bad = []
                prev = -np.inf
                for j, v in known.items():
                    if v <= prev:
                        bad.append(j)
                    prev = max(prev, v)
                if bad:
                    for j in bad:
                        s.add(int(j), "session_number", s.raw["session_number"].iat[j],
                              "session_order",
                              f"session_number = {s.raw['session_number'].iat[j]} is out of "
                              f"date order for patient {pid} (session_date "
                              f"{grp.at[j, 'date']:%Y-%m-%d}); numbers of this patient are "
                              f"taken from date order", "kept")
                elif g.notna().all():
                    final.loc[grp.index] = g.to_numpy()
                elif g.notna().any():
                    for j in g.index[g.isna()]:
                        if pd.isna(s.raw["session_number"].iat[j]):  # else already reported
                            s.add(int(j), "session_number", None, "session_order",
                                  f"session_number is empty while other visits of patient "
                                  f"{pid} are numbered; numbers of this patient are taken "
                                  f"from date order", "kept")
        derived.loc[final.index] = final.to_numpy()
    s.typed["session_number"] = derived


def _post_checks(m: _Table, s: _Table) -> None:
    tech = dict(zip(s.typed["session_id"][s.used], s.typed["technique"][s.used]))
    sid = m.typed["session_id"].tolist()
    measure = m.typed["measure"].tolist()
    side = m.typed["side"].tolist()
    phase = m.typed["phase"].to_numpy()
    for i in np.flatnonzero(m.used & (phase == "post")):
        if tech.get(sid[i]) == "none":
            m.add(int(i), "phase", "post", "post_on_assessment",
                  f"post reading of {measure[i]} in session {sid[i]}, an assessment-only visit "
                  f"(technique none)", "excluded")
    used = m.used
    pre = {(sid[i], measure[i], side[i]) for i in np.flatnonzero(used & (phase == "pre"))}
    for i in np.flatnonzero(used & (phase == "post")):
        if (sid[i], measure[i], side[i]) not in pre:
            m.add(int(i), "phase", "post", "post_without_pre",
                  f"post reading of {measure[i]} (side {side[i]}) in session {sid[i]} has no "
                  f"pre reading", "kept")


def _final(t: _Table) -> pd.DataFrame:
    """Used rows with the column types of docs/internals.md, extra columns after."""
    used = t.used
    out = pd.DataFrame(index=range(int(used.sum())))
    for spec in t.specs:
        if spec.name in WHEN_GIVEN and spec.name not in t.present:
            continue
        col = t.typed[spec.name][used].reset_index(drop=True)
        if spec.kind in ("id", "str"):
            col = col.astype("str")
        elif spec.kind == "category":
            cats = spec.categories if spec.categories is not None else _open_categories(col)
            col = pd.Categorical(col.where(col.isin(cats), None), categories=list(cats))
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
        out[spec.name] = col
    for extra in t.extra:
        out[str(extra).strip()] = cell_text(t.inp.frame[extra])[used].reset_index(drop=True)
    return out


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
    tables = {name: _Table(inputs[name], findings[name],
                           table_specs(name, vocabulary, covariates.get(name, ())), measures)
              for name in vocab.TABLES}
    for t in tables.values():
        _columns(t)
        _absent_covariates(t)
        _coerce(t, decimal=decimal, dayfirst=dayfirst)
        _pandera(t)
        _duplicates(t)
    p, s, m = tables["patients"], tables["sessions"], tables["measurements"]
    _foreign(s, p, "patient_id", "patient")
    _session_dates(s, p)
    _foreign(m, s, "session_id", "session")
    _post_checks(m, s)
    frames = {name: _final(t) for name, t in tables.items()}
    accounting = {name: t.account() for name, t in tables.items()}
    # within a table, whole-column findings first, then by line (stable: order found)
    ordered = [f for name in vocab.TABLES
               for f in sorted(findings[name], key=lambda f: -1 if f.line is None else f.line)]
    return frames, ordered, accounting
