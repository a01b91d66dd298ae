"""Validation inside DuckDB: a folder of Parquet files or a DuckDB file larger than memory is
checked with the rules written as SQL, and only findings, counts and offending line numbers
(capped) come back to Python.

The rules and sentences are those of the in-memory validator (``schema.validate_tables`` and
``table_rules``), stage by stage in the same order, so that on the same data the two give the same
report (``tests/test_scale_validate.py`` compares them on the shipped synthetic data and on the
bad-file corpus). Each table is staged once as a DuckDB table (spilled to disk when it does not
fit in memory) holding, per row: its row number, the cell text (trimmed, missing-value markers
missing, defaults filled), the marker as written, the typed value, and the first rule that
excluded the row. The rules on single rows of a table are counted together in one scan
(``count(*) FILTER``), only rules with rows fetch their first :data:`CAP` (turned into findings
with the in-memory sentences; the rest counted in one finding), and one UPDATE marks the
exclusions (first rule wins, by CASE); the rules across rows are one query each, with the
sentences of ``scale.rule_text`` shared with ``table_rules``. Row accounting is counted exactly
in SQL.

Not covered here (the in-memory path is used instead): clinic profiles and column maps, and CSV,
workbook or URL sources (they are read into memory anyway).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mfr_outcomes import vocab
from mfr_outcomes.cells import FALSE_WORDS, NA_TOKENS, TRUE_WORDS, date_problem
from mfr_outcomes.findings import Finding, RowAccount, ValidationReport
from mfr_outcomes.measures import MEASURES, Measure
from mfr_outcomes.scale import rule_text
from mfr_outcomes.schema import _range_text
from mfr_outcomes.table_rules import (
    CAUTION,
    DISTANT_DAYS,
    EXCLUDED,
    KEYS,
    SET_MISSING,
    order_sentence,
    shown,
)

__all__ = ["CAP", "SCALE_ROWS", "sql_source", "source_rows", "validate_sql", "SqlSource",
           "staged_study"]

#: At most this many offending rows of one rule become findings; the rest are counted.
CAP = 1000
#: ``validate(engine="auto")`` validates inside DuckDB from this many readings on.
SCALE_ROWS = 5_000_000
#: DuckDB's memory for the staged tables; beyond it they spill to the temporary directory
#: (DuckDB's own default, 80 % of RAM, lets one validation take most of a shared machine).
MEMORY_LIMIT = "4GB"

_PARQUET_EXT = (".parquet", ".pq")
_WS = r"^[ \t\n\r\f\v]+|[ \t\n\r\f\v]+$"
_ISO = r"^\d{4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?$"
_TIME = r"^(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?$"
_DMY = ("%d/%m/%Y", "%d.%m.%Y", "%d-%m-%Y", "%d/%m/%y", "%d.%m.%y")


def _q(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def _lit(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _in(values: Any) -> str:
    vals = list(values)
    return "(" + ", ".join(_lit(v) for v in vals) + ")" if vals else "(NULL)"


# ----------------------------------------------------------------------------- sources

@dataclass
class SqlSource:
    """Where each table is: a FROM clause with a row-number column ``_line``, and its label."""

    label: str
    kind: str  # "parquet" or "duckdb"
    tables: dict[str, tuple[str, str]]  # name -> (FROM sql, file label)
    path: Path
    rows: int = 0  # readings (measurements rows), from metadata


def _parquet_table(con: Any, path: Path) -> tuple[str, int]:
    """FROM clause (rows numbered 1.. in file order, files in name order) and row count."""
    files = sorted(str(f) for f in path.iterdir() if f.suffix.lower() in _PARQUET_EXT) \
        if path.is_dir() else [str(path)]
    if not files:
        raise FileNotFoundError(f"{path} holds no Parquet file")
    counts = [int(con.execute(f"SELECT count(*) FROM read_parquet({_lit(f)})").fetchone()[0])
              for f in files]
    offset = 0
    parts = []
    for f, n in zip(files, counts):
        parts.append(f"SELECT *, file_row_number + {offset + 1} AS _line FROM read_parquet("
                     f"{_lit(f)}, file_row_number = true)")
        offset += n
    sql = " UNION ALL ".join(parts)
    return f"({sql})", offset


def sql_source(source: Any, con: Any | None = None) -> SqlSource | None:
    """The SQL view of *source* when it is a folder of Parquet tables (``measurements.parquet``
    or a ``measurements/`` folder of Parquet files) or a DuckDB file; None otherwise."""
    if not isinstance(source, (str, os.PathLike)) or "://" in str(source):
        return None
    path = Path(source)
    if path.is_file():
        with open(path, "rb") as fh:
            head = fh.read(16)
        if head[8:12] != b"DUCK":
            return None
        return SqlSource(str(path), "duckdb", {}, path)
    if not path.is_dir():
        return None
    found: dict[str, Path] = {}
    for f in sorted(path.iterdir()):
        stem, ext = f.stem.lower(), f.suffix.lower()
        if stem in vocab.TABLES and (ext in _PARQUET_EXT or (f.is_dir() and not ext and any(
                g.suffix.lower() in _PARQUET_EXT for g in f.iterdir()))):
            if stem in found:
                return None  # two candidates: the in-memory reader says so in a sentence
            found[stem] = f
        elif stem in vocab.TABLES:
            return None  # a CSV or workbook table: read in memory
    if set(found) != set(vocab.TABLES):
        return None
    return SqlSource(str(path), "parquet", {t: ("", f.name) for t, f in found.items()}, path)


def _open(src: SqlSource) -> Any:
    """A DuckDB connection with the three tables available; fills ``src.tables``."""
    import tempfile

    import duckdb

    con = duckdb.connect()
    con.execute(f"SET temp_directory = {_lit(tempfile.gettempdir())}")
    con.execute(f"SET memory_limit = {_lit(MEMORY_LIMIT)}")
    con.execute("SET preserve_insertion_order = false")
    if src.kind == "parquet":
        for t in vocab.TABLES:
            f = src.path / src.tables[t][1]
            sql, n = _parquet_table(con, f)
            src.tables[t] = (sql, src.tables[t][1])
            if t == "measurements":
                src.rows = n
        return con
    con.execute(f"ATTACH {_lit(str(src.path))} AS src (READ_ONLY)")
    found = con.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE "
                        "table_catalog = 'src' ORDER BY table_schema = 'main' DESC, "
                        "table_schema, table_name").fetchall()  # tables and views
    for t in vocab.TABLES:
        hits = [(sc, n) for sc, n in found if n.lower() == t]
        main = [h for h in hits if h[0] == "main"]
        if len(main) != 1 and len(hits) != 1:
            raise LookupError(f"{src.path.name} has no single {t} table")
        sc, n = (main or hits)[0]
        src.tables[t] = (f"(SELECT *, rowid + 1 AS _line FROM src.{_q(sc)}.{_q(n)})",
                         f"{src.path.name} table {n}")
    src.rows = int(con.execute(f"SELECT count(*) FROM {src.tables['measurements'][0]}")
                   .fetchone()[0])
    return con


def source_rows(src: SqlSource) -> int:
    """Readings (measurements rows) of *src*: Parquet footers, or a count in the DuckDB file."""
    if src.kind == "parquet":
        import pyarrow.parquet as pq

        f = src.path / src.tables["measurements"][1]
        files = sorted(g for g in f.iterdir() if g.suffix.lower() in _PARQUET_EXT) \
            if f.is_dir() else [f]
        return sum(pq.ParquetFile(g).metadata.num_rows for g in files)
    con = _open(src)
    try:
        return src.rows
    finally:
        con.close()


# ----------------------------------------------------------------------------- staging

@dataclass
class _Table:
    name: str
    stage: str  # staged table name
    file: str
    specs: tuple
    cols: list[str]  # source columns
    types: dict[str, str]
    present: set[str] = field(default_factory=set)
    numeric_raw: set[str] = field(default_factory=set)
    n: int = 0
    findings: list[tuple[int, Finding]] = field(default_factory=list)  # (order, finding)
    order: int = 0

    def where(self, line: int | None) -> str:
        return self.file if line is None else f"{self.file} row {int(line)}"


_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "UTINYINT",
            "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT")


def _is_numeric(sqltype: str) -> bool:
    return sqltype.upper() in _NUMERIC or sqltype.upper().startswith("DECIMAL")


def _text_sql(col: str, sqltype: str) -> str:
    """The cell as the in-memory reader writes it as text."""
    c = _q(col)
    t = sqltype.upper()
    if t.startswith("TIMESTAMP"):
        return f"replace(strftime(CAST({c} AS TIMESTAMP), '%Y-%m-%d %H:%M:%S'), ' 00:00:00', '')"
    if t == "BOOLEAN":
        return f"CASE WHEN {c} THEN 'True' WHEN NOT {c} THEN 'False' END"
    if t in ("FLOAT", "DOUBLE"):
        return f"CASE WHEN isnan({c}) THEN NULL ELSE CAST({c} AS VARCHAR) END"
    return f"CAST({c} AS VARCHAR)"


def _number_sql(raw: str, decimal: str) -> str:
    t = raw
    if decimal != ".":
        t = (f"CASE WHEN contains({raw}, {_lit(decimal)}) THEN replace(replace({raw}, '.', ''), "
             f"{_lit(decimal)}, '.') ELSE {raw} END")
    v = f"TRY_CAST({t} AS DOUBLE)"
    return f"CASE WHEN isfinite({v}) THEN {v} END"


def _date_sql(raw: str, dayfirst: bool) -> str:
    """Dates the in-memory reader accepts, NULL outside pandas' nanosecond range."""
    iso = f"TRY_CAST(replace({raw}, 'T', ' ') AS TIMESTAMP)"
    parts = [f"WHEN regexp_full_match({raw}, {_lit(_ISO)}) THEN {iso}"]
    if dayfirst:
        parts.append("ELSE coalesce(" + ", ".join(f"try_strptime({raw}, {_lit(f)})"
                                                   for f in _DMY) + ")")
    v = "CASE " + " ".join(parts) + " END"
    return f"CAST(TRY_CAST({v} AS TIMESTAMP_NS) AS TIMESTAMP)"


def _time_sql(raw: str) -> str:
    part = f"list_last(string_split(replace({raw}, 'T', ' '), ' '))"
    h = f"TRY_CAST(regexp_extract({part}, {_lit(_TIME)}, 1) AS INTEGER)"
    mi = f"TRY_CAST(regexp_extract({part}, {_lit(_TIME)}, 2) AS INTEGER)"
    sec = f"coalesce(TRY_CAST(regexp_extract({part}, {_lit(_TIME)}, 3) AS INTEGER), 0)"
    ok = f"regexp_full_match({part}, {_lit(_TIME)}) AND {h} < 24 AND {mi} < 60 AND {sec} < 60"
    return f"CASE WHEN {ok} THEN to_seconds({h} * 3600 + {mi} * 60 + {sec}) END"


def _typed_sql(spec: Any, raw: str, numeric: bool, decimal: str, dayfirst: bool) -> str:
    if spec.kind in ("int", "float"):
        if numeric:
            return f"CASE WHEN isfinite(CAST({raw} AS DOUBLE)) THEN CAST({raw} AS DOUBLE) END"
        return _number_sql(raw, decimal)
    if spec.kind == "date":
        return _date_sql(raw, dayfirst)
    if spec.kind == "time":
        return _time_sql(raw)
    if spec.kind == "bool":
        return (f"CASE WHEN lower({raw}) IN {_in(sorted(TRUE_WORDS))} THEN true "
                f"WHEN lower({raw}) IN {_in(sorted(FALSE_WORDS))} THEN false END")
    if spec.kind == "category":
        return f"regexp_replace(lower({raw}), '[[:space:]\\-]+', '_', 'g')"
    return raw


def _stage(con: Any, t: _Table, frm: str, decimal: str, dayfirst: bool) -> None:
    """Stage *t*: per spec column r_<i> (text), k_<i> (marker), v_<i> (typed); _reason."""
    tokens = sorted(NA_TOKENS)
    seen: dict[str, str] = {}
    specs = {s.name: s for s in t.specs}
    extra = []
    for col in t.cols:
        key = str(col).strip()
        canon = key.lower().replace(" ", "_")
        if canon in specs and canon not in seen:
            seen[canon] = col
        elif canon in specs:
            _add(t, None, key, None, "unexpected_column",
                 f"column {key} repeats column {seen[canon]}; the repeat is ignored", "kept", "")
        else:
            extra.append(col)
    if len(extra) == 1:
        key = str(extra[0]).strip()
        _add(t, None, key, None, "unexpected_column",
             f"unexpected column {key} (not part of the {t.name} table) is kept as is", "kept", "")
    elif extra:
        names = [str(c).strip() for c in extra]
        listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20
                                          else "")
        _add(t, None, None, ", ".join(names), "unexpected_column",
             f"{len(names)} unexpected columns {listed} (not part of the {t.name} table) are "
             f"kept as is", "kept", "")
    sel = ["_line"]
    for i, spec in enumerate(t.specs):
        if spec.name in seen:
            col = seen[spec.name]
            t.present.add(spec.name)
            numeric = spec.kind in ("int", "float") and _is_numeric(t.types[col])
            if numeric:
                raw = f"(CASE WHEN isfinite(CAST({_q(col)} AS DOUBLE)) OR isinf(CAST({_q(col)} " \
                      f"AS DOUBLE)) THEN {_q(col)} END)"
                text = f"CAST({raw} AS VARCHAR)"
                marker = "NULL"
                t.numeric_raw.add(spec.name)
            else:
                trimmed = f"regexp_replace({_text_sql(col, t.types[col])}, {_lit(_WS)}, '', 'g')"
                sel.append(f"{trimmed} AS _t{i}")
                na = f"(_t{i} IS NULL OR lower(_t{i}) IN {_in(tokens)})"
                text = f"CASE WHEN {na} THEN NULL ELSE _t{i} END"
                marker = f"CASE WHEN {na} AND length(_t{i}) > 0 THEN _t{i} END"
                raw = None
        else:
            text, marker, numeric, raw = "NULL", "NULL", False, None
        if spec.default is not None:
            text = f"coalesce({text}, {_lit(spec.default)})"
        sel.append(f"{text} AS r_{i}")
        sel.append(f"{marker} AS k_{i}")
        if raw is not None:
            sel.append(f"{raw} AS _n{i}")
    inner = f"SELECT {', '.join(sel)} FROM {frm}"
    typed = []
    for i, spec in enumerate(t.specs):
        src = f"_n{i}" if spec.name in t.numeric_raw else f"r_{i}"
        typed.append(f"{_typed_sql(spec, src, spec.name in t.numeric_raw, decimal, dayfirst)} "
                     f"AS v_{i}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {t.stage} AS SELECT _line, "
                + ", ".join([f"r_{i}, k_{i}" for i in range(len(t.specs))] + typed)
                + f", CAST(NULL AS VARCHAR) AS _reason FROM ({inner})")
    t.n = int(con.execute(f"SELECT count(*) FROM {t.stage}").fetchone()[0])
    for spec in t.specs:
        if spec.name not in seen and spec.required:
            _add(t, None, spec.name, None, "missing_column",
                 f"required column {spec.name} is missing; all {t.n} rows excluded", "excluded",
                 "")
            con.execute(f"UPDATE {t.stage} SET _reason = 'missing_column'")


# ----------------------------------------------------------------------------- findings

def _add(t: _Table, line: int | None, column: str | None, value: Any, rule: str, text: str,
         action: str, suffix: str | None = None) -> None:
    if suffix is None:
        suffix = EXCLUDED if action == "excluded" else (SET_MISSING if action == "missing"
                                                         else CAUTION)
    t.findings.append((t.order, Finding(
        table=t.name, file=t.file, line=None if line is None else int(line), column=column,
        value=value, rule=rule, message=f"{t.where(line)}: {text}{suffix}",
        action="excluded" if action == "excluded" else "kept")))
    t.order += 1


@dataclass
class _RowRule:
    """A rule on the rows of one staged table: its offending rows meet *cond*; *cols* (SQL) are
    handed to *make* after the row number, which gives (value, sentence) or (value, sentence,
    rule); *reason* is the SQL of ``_reason`` when it excludes (the rule's name by default);
    *more* the sentence of the rows past the cap."""

    cond: str
    cols: str
    rule: str
    column: str | None
    action: str
    make: Callable[[tuple], tuple]
    reason: str | None = None
    more: Callable[[int, int], str] | None = None


def _emit(t: _Table, r: _RowRule, rows: list[tuple], count: Callable[[], int], cap: int) -> None:
    """Findings of the first *cap* offending *rows* (in row order; cap + 1 fetched) and one for
    the rest (*count*: all offending rows, asked only when there are more)."""
    for row in rows[:cap]:
        out = r.make(row)
        _add(t, row[0], r.column, out[0], out[2] if len(out) > 2 else r.rule, out[1], r.action)
    if len(rows) > cap:
        more = count() - cap
        text = r.more(more, cap) if r.more else (
            f"and {more} more row(s) with the same problem ({r.rule.replace('_', ' ')}); only "
            f"the first {cap} are listed")
        _add(t, rows[cap][0], r.column, None, r.rule, text, r.action)


def _rule(con: Any, t: _Table, cond: str, cols: str, rule: str, column: str | None,
          action: str, make: Callable[[tuple], tuple[Any, str]], cap: int,
          exclude: bool | None = None, table: str | None = None) -> None:
    """Findings of the rows of *t* (or of *table*, a view of them) meeting *cond* (the first
    *cap*, the rest counted), then the exclusion of those rows (first rule wins)."""
    frm = table or t.stage
    rows = con.execute(f"SELECT _line, {cols} FROM {frm} WHERE {cond} ORDER BY _line "
                       f"LIMIT {cap + 1}").fetchall()
    _emit(t, _RowRule(cond, cols, rule, column, action, make), rows,
          lambda: int(con.execute(f"SELECT count(*) FROM {frm} WHERE {cond}").fetchone()[0]),
          cap)
    if exclude if exclude is not None else action == "excluded":
        if table is None:
            con.execute(f"UPDATE {t.stage} SET _reason = {_lit(rule)} WHERE _reason IS NULL AND "
                        f"{cond}")
        else:
            con.execute(f"UPDATE {t.stage} SET _reason = {_lit(rule)} WHERE _reason IS NULL AND "
                        f"_line IN (SELECT _line FROM {frm} WHERE {cond})")


def _row_rules(con: Any, t: _Table, rules: list[_RowRule], nulls: list[tuple[int, str]],
               cap: int) -> None:
    """All row rules of a table: one scan counts the rows of every rule, then only the rules
    that have rows fetch their first cap + 1 (and, on data without faults, nothing more runs).

    The counts are one SELECT of ``count(*) FILTER (WHERE ...)``; the findings are made rule by
    rule in the rules' order (as one query a rule made them). One UPDATE sets ``_reason`` to the
    first excluding rule a row meets (``CASE`` in the rules' order: the first rule wins, as one
    UPDATE a rule did) and *nulls* (column index, condition) set optional values missing; every
    condition reads the values as staged, which is what the sequential statements read (each
    rule reads only its own column, and a column is set missing after its own rules).
    """
    conds = [r.cond for r in rules] + [c for _, c in nulls]
    if not conds:
        return
    got = con.execute("SELECT " + ", ".join(f"count(*) FILTER (WHERE {c})" for c in conds)
                      + f" FROM {t.stage}").fetchone()
    counts = [int(n) for n in got]
    for r, n in zip(rules, counts):
        if n:
            rows = con.execute(f"SELECT _line, {r.cols} FROM {t.stage} WHERE {r.cond} ORDER BY "
                               f"_line LIMIT {cap + 1}").fetchall()
            _emit(t, r, rows, lambda n=n: n, cap)
    sets, where = [], []
    excl = [r for r, n in zip(rules, counts) if n and r.action == "excluded"]
    if excl:
        case = " ".join(f"WHEN {r.cond} THEN {r.reason or _lit(r.rule)}" for r in excl)
        sets.append(f"_reason = coalesce(_reason, CASE {case} END)")
        where.append("(_reason IS NULL AND (" + " OR ".join(f"({r.cond})" for r in excl) + "))")
    for (i, cond), n in zip(nulls, counts[len(rules):]):
        if n:
            sets.append(f"v_{i} = CASE WHEN {cond} THEN NULL ELSE v_{i} END")
            where.append(f"({cond})")
    if sets:
        con.execute(f"UPDATE {t.stage} SET {', '.join(sets)} WHERE {' OR '.join(where)}")


def _needed(table: str, spec: Any) -> bool:
    return spec.required or spec.name in KEYS[table]


def _shown_value(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float):
        return repr(v) if not math.isinf(v) else ("inf" if v > 0 else "-inf")
    return str(v)


def _coerce(t: _Table, dayfirst: bool) -> list[_RowRule]:
    """Required cells present, and cells of the column's type, per column in order."""
    rules = []
    for i, spec in enumerate(t.specs):
        bad_action = "excluded" if _needed(t.name, spec) else "missing"
        if spec.required and spec.name in t.present:
            def mv(r: tuple, name: str = spec.name) -> tuple[Any, str]:
                if r[1] is not None:
                    return r[1], f"{name} = {r[1]}, a missing-value marker, but it is required"
                return None, f"{name} is empty, but it is required"
            rules.append(_RowRule(f"r_{i} IS NULL", f"k_{i}", "missing_value", spec.name,
                                  "excluded", mv))
        if spec.kind in ("int", "float", "date", "time", "bool"):
            rule = {"int": "not_a_number", "float": "not_a_number", "date": "invalid_date",
                    "time": "invalid_time", "bool": "wrong_type"}[spec.kind]
            what = {"int": "not a number", "float": "not a number",
                    "date": "not a valid date" + ("" if dayfirst else " (write YYYY-MM-DD, or "
                                                   "pass dayfirst=True for day/month/year)"),
                    "time": "not a time of day (write HH:MM, 00:00–23:59)",
                    "bool": "not true/false (yes/no, 1/0)"}[spec.kind]

            def conv(r: tuple, name: str = spec.name, kind: str = spec.kind,
                     what: str = what) -> tuple[Any, str]:
                text = _shown_value(r[1])
                why = (date_problem(text) or what) if kind == "date" else what
                return text, f"{name} = {text}, {why}"
            rules.append(_RowRule(f"r_{i} IS NOT NULL AND v_{i} IS NULL", f"r_{i}", rule,
                                  spec.name, bad_action, conv))
    return rules


def _checks(t: _Table, measures: Mapping[str, Measure]
            ) -> tuple[list[_RowRule], list[tuple[int, str]]]:
    """Ranges, whole numbers, categories and measures per column in order; and the optional
    columns whose failing values are set missing."""
    rules, nulls = [], []
    for i, spec in enumerate(t.specs):
        action = "excluded" if _needed(t.name, spec) else "missing"
        fails: list[tuple[str, str]] = []
        if spec.kind in ("int", "float"):
            out = []
            if spec.low is not None:
                out.append(f"v_{i} < {float(spec.low)!r}")
            if spec.high is not None:
                out.append(f"v_{i} > {float(spec.high)!r}")
            out_sql = "(" + " OR ".join(out) + ")" if out else "false"
            if out:
                fails.append((out_sql, "out_of_range"))
            if spec.kind == "int":
                fails.append((f"v_{i} <> round(v_{i}) AND NOT coalesce({out_sql}, false)",
                              "not_integer"))
        elif spec.kind == "category" and spec.categories is not None:
            fails.append((f"v_{i} NOT IN {_in(spec.categories)}", "unknown_category"))
        if t.name == "measurements" and spec.name == "measure":
            fails = [(f"v_{i} NOT IN {_in(measures)}", "unknown_measure")]
        for cond, rule in fails:
            def make(r: tuple, spec: Any = spec, rule: str = rule) -> tuple[Any, str]:
                raw = _shown_value(r[1])
                col = spec.name
                if rule == "out_of_range":
                    return raw, f"{col} = {raw}, must be {_range_text(spec.low, spec.high)}"
                if rule == "not_integer":
                    return raw, f"{col} = {raw}, must be a whole number"
                if rule == "unknown_category":
                    return raw, f"{col} = {raw}, not one of {', '.join(spec.categories or ())}"
                return raw, (f"measure = {raw}, not a registered measure (known: "
                             f"{', '.join(measures)})")
            act = "excluded" if rule == "unknown_measure" else action
            rules.append(_RowRule(f"v_{i} IS NOT NULL AND ({cond})", f"r_{i}", rule, spec.name,
                                  act, make))
        if action == "missing" and fails:
            cond = " OR ".join(f"({c})" for c, _ in fails)
            nulls.append((i, f"v_{i} IS NOT NULL AND ({cond})"))
    if t.name == "measurements":
        rules.append(_measure_rule(t, measures))
    return rules, nulls


def _col(t: _Table, name: str) -> int:
    return [s.name for s in t.specs].index(name)


def _measure_rule(t: _Table, measures: Mapping[str, Measure]) -> _RowRule:
    """A value outside its measure's range, or not whole for a whole-number measure (one rule
    in row order, as the in-memory loop): the measures' bounds as CASE expressions."""
    m, v = _col(t, "measure"), _col(t, "value")
    rows = [(c, float(x.low), float(x.high), bool(x.integer)) for c, x in measures.items()
            if x.low is not None and x.high is not None
            and not (math.isnan(float(x.low)) or math.isnan(float(x.high)))]

    def per(k: int) -> str:
        if not rows:
            return "NULL"
        return f"(CASE v_{m} " + " ".join(f"WHEN {_lit(r[0])} THEN {r[k]!r}" for r in rows) + \
            " END)"
    low, high, whole = per(1), per(2), per(3).replace("True", "true").replace("False", "false")
    out = f"(v_{v} < {low} OR v_{v} > {high})"
    frac = f"{whole} AND v_{v} <> round(v_{v}) AND NOT {out}"
    cond = f"v_{v} IS NOT NULL AND {low} IS NOT NULL AND (({out}) OR ({frac}))"

    def make(r: tuple) -> tuple[Any, str, str]:
        raw, code = _shown_value(r[1]), r[2]
        if r[3]:
            return raw, f"value = {raw}, must be {measures[code].range_text()} for {code}", \
                "out_of_range"
        return raw, f"value = {raw}, must be a whole number for {code}", "not_integer"
    return _RowRule(cond, f"r_{v}, v_{m}, {out}", "out_of_range", "value", "excluded", make,
                    reason=f"CASE WHEN {out} THEN 'out_of_range' ELSE 'not_integer' END",
                    more=lambda more, cap: (f"and {more} more reading(s) outside their measure's "
                                            f"range or not whole; only the first {cap} are "
                                            f"listed"))


def _duplicates(con: Any, t: _Table, cap: int) -> None:
    keys = [_col(t, k) for k in KEYS[t.name]]
    part = ", ".join(f"v_{k}" for k in keys)
    notnull = " AND ".join(f"v_{k} IS NOT NULL" for k in keys)
    view = f"_dup_{t.name}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE {view} AS SELECT * FROM (SELECT _line, {part}, "
                f"row_number() OVER (PARTITION BY {part} ORDER BY _line) AS _k, "
                f"min(_line) OVER (PARTITION BY {part}) AS _first FROM {t.stage} "
                f"WHERE {notnull}) WHERE _k > 1")
    names = list(KEYS[t.name])

    def make(r: tuple) -> tuple[Any, str]:
        return rule_text.duplicate(names, [str(x) for x in r[1:-1]], f"row {int(r[-1])}")
    rule = "duplicate_key" if len(names) == 1 else "duplicate_reading"
    _rule(con, t, "true", f"{part}, _first", rule, names[0] if len(names) == 1 else None,
          "excluded", make, cap, table=view)


def _foreign(con: Any, child: _Table, parent: _Table, key: str, label: str, cap: int) -> None:
    ck, pk = _col(child, key), _col(parent, key)
    everyone = f"(SELECT DISTINCT v_{pk} AS k FROM {parent.stage} WHERE v_{pk} IS NOT NULL)"
    used = f"(SELECT DISTINCT v_{pk} AS k FROM {parent.stage} WHERE v_{pk} IS NOT NULL AND " \
           f"_reason IS NULL)"
    _rule(con, child, f"v_{ck} IS NOT NULL AND v_{ck} NOT IN {everyone}", f"v_{ck}", "orphan",
          key, "excluded", lambda r: (str(r[1]), rule_text.orphan(key, r[1], parent.name)), cap)
    cond = f"_reason IS NULL AND v_{ck} IN {everyone} AND v_{ck} NOT IN {used}"
    groups = con.execute(f"SELECT v_{ck}, min(_line) AS first, count(*), list(_line ORDER BY "
                         f"_line)[1:10] FROM {child.stage} WHERE {cond} GROUP BY v_{ck} "
                         f"ORDER BY first LIMIT {cap + 1}").fetchall()
    for k, first, n, lines in groups[:cap]:
        lines_text = shown(lines) + (f" and {n - 10} more" if n > 10 else "")
        unit = "row" + ("s" if n > 1 else "")
        child.findings.append((child.order, Finding(
            table=child.name, file=child.file, line=int(first), column=key, value=k,
            rule="cascade",
            message=rule_text.cascade(child.file, unit, lines_text, label, k),
            action="excluded")))
        child.order += 1
    if len(groups) > cap:
        more = int(con.execute(f"SELECT count(DISTINCT v_{ck}) FROM {child.stage} WHERE {cond}"
                               ).fetchone()[0]) - cap
        _add(child, int(groups[cap][1]), key, None, "cascade",
             f"and rows of {more} more excluded {label}(s) excluded in cascade; only the first "
             f"{cap} are listed", "excluded", "")
    con.execute(f"UPDATE {child.stage} SET _reason = 'cascade' WHERE {cond}")


def _first_used(parent: _Table, key: int, value: int) -> str:
    """(k, v) of the first used row of each key of *parent* (a repeated key: its first row)."""
    return (f"(SELECT v_{key} AS k, arg_min_null(v_{value}, _line) AS v FROM {parent.stage} "
            f"WHERE _reason IS NULL AND v_{key} IS NOT NULL GROUP BY v_{key})")


def _session_dates(con: Any, s: _Table, p: _Table, cap: int) -> None:
    pid, date, num = _col(s, "patient_id"), _col(s, "session_date"), _col(s, "session_number")
    enrol = _first_used(p, _col(p, "patient_id"), _col(p, "enrolled_on"))
    view = "_early"
    con.execute(f"CREATE OR REPLACE TEMP TABLE {view} AS SELECT s._line, s.r_{date}, e.v, "
                f"s.v_{pid} FROM {s.stage} s JOIN {enrol} e ON s.v_{pid} = e.k WHERE "
                f"s._reason IS NULL AND e.v IS NOT NULL AND s.v_{date} IS NOT NULL AND "
                f"s.v_{date} < e.v")
    _rule(con, s, "true", f"r_{date}, v, v_{pid}", "before_enrolment", "session_date", "kept",
          lambda r: (r[1], rule_text.before_enrolment(r[1], r[2], r[3])), cap, table=view)
    order = f"v_{date} ASC NULLS LAST, v_{num} ASC NULLS LAST, _line"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _order AS SELECT _line, v_{pid} AS pid, "
                f"v_{date} AS d, v_{num} AS given, r_{num} AS raw_num, r_{date} AS raw_date, "
                f"max(v_{num}) OVER (PARTITION BY v_{pid} ORDER BY {order} ROWS BETWEEN "
                f"UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_max, "
                f"count(v_{num}) OVER (PARTITION BY v_{pid}) AS n_known, "
                f"count(*) OVER (PARTITION BY v_{pid}) AS n_all, "
                f"lag(v_{date}) OVER (PARTITION BY v_{pid} ORDER BY {order}) AS d_prev, "
                f"lead(v_{date}) OVER (PARTITION BY v_{pid} ORDER BY {order}) AS d_next "
                f"FROM {s.stage} WHERE _reason IS NULL")
    if "session_number" in s.present:
        _given_numbers(con, s, cap)
        _distant(con, s, "n_known = 0", cap)
    else:
        _distant(con, s, "true", cap)


def _given_numbers(con: Any, s: _Table, cap: int) -> None:
    bad = "given IS NOT NULL AND given <= prev_max"
    pids = [r[0] for r in con.execute(f"SELECT DISTINCT pid FROM _order WHERE {bad} LIMIT {cap}"
                                      ).fetchall()]
    found: list[tuple[int, str, str | None, str]] = []
    if pids:
        sub = con.execute(f"SELECT pid, d, given, _line, raw_num, n_known = n_all FROM _order "
                          f"WHERE pid IN {_in(pids)}").df()
        sub.columns = ["pid", "date", "given", "line", "raw", "full"]
        sub = sub.sort_values(["pid", "date", "given", "line"], na_position="last",
                              kind="stable").reset_index(drop=True)
        known = sub[sub["given"].notna()]
        prev = known.groupby("pid", sort=False)["given"].cummax()
        prev = prev.groupby(known["pid"], sort=False).shift(1)
        for j in known.index[(known["given"] <= prev).to_numpy()]:
            found.append(_order_text(sub, known, j))
    for line, text, raw, _ in found[:cap]:
        _add(s, line, "session_number", raw, "session_order", text, "kept")
    n_bad = int(con.execute(f"SELECT count(*) FROM _order WHERE {bad}").fetchone()[0])
    if n_bad > len(found[:cap]):
        _add(s, None, "session_number", None, "session_order",
             f"and {n_bad - len(found[:cap])} more session number(s) out of date order; only "
             f"the first {cap} are listed", "kept")
    bad_pids = f"(SELECT DISTINCT pid FROM _order WHERE {bad})"
    cond = (f"n_known < n_all AND n_known > 0 AND given IS NULL AND raw_num IS NULL AND pid NOT "
            f"IN {bad_pids}")
    _rule(con, s, cond, "pid", "session_order", "session_number", "kept",
          lambda r: (None, rule_text.number_missing(r[1])), cap, table="_order")


def _order_text(sub: pd.DataFrame, known: pd.DataFrame, j: Any) -> tuple[int, str, Any, str]:
    """(line, sentence, raw, patient) of a number out of date order, as in memory."""
    raw = sub.at[j, "raw"]
    text = order_sentence(sub, known, j, raw, bool(sub.at[j, "full"]), "row")
    return int(sub.at[j, "line"]), text, raw, sub.at[j, "pid"]


def _distant(con: Any, s: _Table, which: str, cap: int) -> None:
    gp = "floor((epoch(d) - epoch(d_prev)) / 86400)"
    gn = "floor((epoch(d_next) - epoch(d)) / 86400)"
    cond = (f"d IS NOT NULL AND {which} AND least(coalesce({gp}, {gn}), coalesce({gn}, {gp})) > "
            f"{DISTANT_DAYS}")

    def make(r: tuple) -> tuple[Any, str]:
        raw, pid, d, g_prev, g_next = r[1:]
        use_prev = g_prev is not None and (g_next is None or g_prev <= g_next)
        near = pd.Timestamp(d) - pd.Timedelta(days=int(g_prev)) if use_prev else \
            pd.Timestamp(d) + pd.Timedelta(days=int(g_next))
        return raw, rule_text.distant_date(raw, pid, near)
    _rule(con, s, cond, f"raw_date, pid, d, {gp}, {gn}", "distant_date", "session_date", "kept",
          make, cap, table="_order")


def _post_checks(con: Any, m: _Table, s: _Table, cap: int) -> None:
    sid, ph, ms, sd = (_col(m, c) for c in ("session_id", "phase", "measure", "side"))
    tech = _first_used(s, _col(s, "session_id"), _col(s, "technique"))
    con.execute(f"CREATE OR REPLACE TEMP TABLE _assess AS SELECT m._line, m.v_{ms}, m.v_{sid} "
                f"FROM {m.stage} m JOIN {tech} t ON m.v_{sid} = t.k WHERE m._reason IS NULL AND "
                f"m.v_{ph} = 'post' AND t.v = 'none'")
    _rule(con, m, "true", f"v_{ms}, v_{sid}", "post_on_assessment", "phase", "excluded",
          lambda r: ("post", rule_text.post_on_assessment(r[1], r[2])), cap, table="_assess")
    pre = f"(SELECT v_{sid} AS a, v_{ms} AS b, v_{sd} AS c FROM {m.stage} WHERE _reason IS NULL " \
          f"AND v_{ph} = 'pre' AND v_{sid} IS NOT NULL AND v_{ms} IS NOT NULL AND v_{sd} IS NOT " \
          f"NULL)"
    cond = (f"_reason IS NULL AND v_{ph} = 'post' AND NOT EXISTS (SELECT 1 FROM {pre} p WHERE "
            f"p.a = v_{sid} AND p.b = v_{ms} AND p.c = v_{sd})")
    _rule(con, m, cond, f"v_{ms}, v_{sd}, v_{sid}", "post_without_pre", "phase", "kept",
          lambda r: ("post", rule_text.post_without_pre(r[1], r[2], r[3])), cap)


def _account(con: Any, t: _Table) -> RowAccount:
    rows = con.execute(f"SELECT _reason, count(*), min(_line) AS first FROM {t.stage} "
                       f"WHERE _reason IS NOT NULL GROUP BY _reason ORDER BY first").fetchall()
    reasons = {str(r): int(n) for r, n, _ in rows}
    excluded = sum(reasons.values())
    return RowAccount(t.n, t.n - excluded, excluded, reasons, 0)


# ----------------------------------------------------------------------------- public

def validate_sql(source: Any, *, dayfirst: bool = False, decimal: str = ".", cap: int = CAP,
                 measures: Mapping[str, Measure] | None = None,
                 keep: bool = False) -> ValidationReport | tuple[ValidationReport, Any, dict]:
    """Validate a Parquet folder or DuckDB file inside DuckDB.

    Parameters
    ----------
    source : path
        A folder holding ``patients``, ``sessions`` and ``measurements`` as Parquet files (or
        folders of Parquet files), or a DuckDB file with those tables.
    dayfirst, decimal
        As :func:`mfr_outcomes.io.validate`.
    cap : int
        Offending rows of one rule listed as findings; the rest are counted in one finding.
    measures : dict, optional
        code -> Measure (the registry when None).
    keep : bool
        Also return the open connection and the staged tables (for a DuckDB-backed study).

    Returns
    -------
    ValidationReport
        The findings and row accounting the in-memory validator gives on the same data (up to
        *cap* findings per rule).
    """
    from mfr_outcomes.schema import table_specs

    src = source if isinstance(source, SqlSource) else sql_source(source)
    if src is None:
        raise ValueError(f"{source} is not a folder of Parquet tables or a DuckDB file")
    known = MEASURES if measures is None else measures
    con = _open(src)
    try:
        tables: dict[str, _Table] = {}
        for name in vocab.TABLES:
            frm, file = src.tables[name]
            desc = con.execute(f"DESCRIBE SELECT * FROM {frm}").fetchall()
            cols = [r[0] for r in desc if r[0] != "_line" and r[0] not in (
                "file_row_number",)]
            types = {r[0]: str(r[1]) for r in desc}
            t = _Table(name, f"st_{name}", file, table_specs(name), cols, types)
            tables[name] = t
            _stage(con, t, frm, decimal, dayfirst)
            rules, nulls = _checks(t, known)
            _row_rules(con, t, _coerce(t, dayfirst) + rules, nulls, cap)
            _duplicates(con, t, cap)
        p, s, m = tables["patients"], tables["sessions"], tables["measurements"]
        _foreign(con, s, p, "patient_id", "patient", cap)
        _session_dates(con, s, p, cap)
        _foreign(con, m, s, "session_id", "session", cap)
        _post_checks(con, m, s, cap)
        findings = [f for name in vocab.TABLES
                    for _, f in sorted(tables[name].findings,
                                       key=lambda x: (-1 if x[1].line is None else x[1].line,
                                                      x[0]))]
        accounting = {name: _account(con, t) for name, t in tables.items()}
        report = ValidationReport(findings=findings, accounting=accounting, source=src.label)
    except BaseException:
        con.close()
        raise
    if keep:
        return report, con, tables
    con.close()
    return report


def staged_study(source: Any, **options: Any) -> tuple[ValidationReport, Any, dict]:
    """Validate inside DuckDB and keep the staged tables open (used rows: ``_reason IS NULL``)."""
    return validate_sql(source, keep=True, **options)  # type: ignore[return-value]
