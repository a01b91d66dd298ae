"""Readers of clinic exports, and column maps that rename a clinic's columns and labels.

Sources: a folder of CSV, Parquet or XLSX files named after the tables; one XLSX workbook with a
sheet per table; a SQLite or DuckDB file; an SQLAlchemy URL (tables, or one query a table); a dict
of DataFrames. Every cell is read as text first, with the line (CSV) or row (sheet, database) it
came from, so that validation can name it.
"""
from __future__ import annotations

import csv
import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mfr_outcomes.column_map import (
    MAX_MAP_BYTES,
    ColumnMapError,
    apply_column_map,
    apply_profile,
    read_column_map,
)
from mfr_outcomes.csvread import CsvReadError, decode_csv, parse_csv, sniff_sep
from mfr_outcomes.findings import DataValidationError, ValidationReport
from mfr_outcomes.schema import TableInput, unique_names, validate_tables
from mfr_outcomes.study import Study
from mfr_outcomes.threads import beside, load_threads
from mfr_outcomes.vocab import TABLES
from mfr_outcomes.warnings_ import DataWarning

__all__ = [
    "load_study",
    "validate",
    "read_tables",
    "build_study",
    "from_frames",
    "read_column_map",
    "apply_column_map",
    "apply_profile",
    "SourceError",
    "ColumnMapError",
    "MAX_MAP_BYTES",
    "mask_passwords",
]

log = logging.getLogger(__name__)

_TEXT_EXT = (".csv", ".tsv", ".txt")
_PARQUET_EXT = (".parquet", ".pq")
_XLSX_EXT = (".xlsx", ".xlsm")


class SourceError(ValueError):
    """The source cannot be read at all (missing path, unknown kind, a table absent)."""


# ----------------------------------------------------------------------------- public verbs

def load_study(source: Any, column_map: Mapping[str, Mapping[str, str]] | str | os.PathLike | None
               = None, strict: bool = False, *, profile: Any = None,
               **read_options: Any) -> Study:
    """Read, validate and type a study from any supported source.

    Parameters
    ----------
    source : path, str, dict of DataFrame
        A folder of ``patients``/``sessions``/``measurements`` files (``.csv``, ``.parquet`` or
        ``.xlsx``); an XLSX workbook with a sheet per table; a SQLite or DuckDB file; an
        SQLAlchemy URL; or a dict ``{"patients": df, "sessions": df, "measurements": df}``.
    column_map : dict or path, optional
        Renames a clinic's names to the canonical ones. A key that is a table name maps column
        names of that table (``{"sessions": {"Therapist": "therapist_id"}}``); a key that is a
        canonical column maps its category labels (``{"technique": {"DP": "direct_pressure"}}``).
        A path to a JSON (or, when PyYAML is installed, YAML) file holding such a mapping.
    strict : bool
        Raise :class:`~mfr_outcomes.study.DataValidationError` when anything is found.
    profile : path or Profile, optional
        A clinic profile (TOML; see :mod:`mfr_outcomes.profile`): vocabulary labels, measures,
        column and label maps, typed covariates and date parsing for this load. Its column map
        is applied before *column_map*; its measures are registered (see
        :meth:`~mfr_outcomes.profile.Profile.register_measures`).
    **read_options
        ``encoding`` (CSV; default: UTF-8 with or without BOM, falling back to Latin-1),
        ``sep`` (CSV; default: sniffed), ``decimal`` (CSV; default "," when the separator is ";",
        else "."), ``dayfirst`` (read dates as day/month/year), ``queries`` (with a URL: table ->
        SQL text).

    Returns
    -------
    Study
        Typed, validated tables and the :class:`~mfr_outcomes.study.ValidationReport`.

    Raises
    ------
    SourceError
        When the source cannot be read at all.
    ProfileError
        When the profile cannot be used (the sentence names the key and value).
    DataValidationError
        With ``strict=True``, when validation found anything.

    Notes
    -----
    Validation runs in two threads where there are two cores (patients and sessions beside the
    readings; see :mod:`mfr_outcomes.threads`), except for readings from a CSV file, which load
    in one thread (lower peak memory; Arrow's CSV reader uses the cores). The environment
    variable ``MFR_OUTCOMES_THREADS`` sets the number either way (1: the calling thread only);
    the Study is the same either way.

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> study = mfr.load_study(mfr.datasets.synthetic_path())
    >>> study.report.summary()[["table", "read", "used", "excluded"]]
              table   read   used  excluded
    0      patients    120    120         0
    1      sessions    ...    ...         0
    2  measurements  ...  ...         0
    """
    from mfr_outcomes.profile import load_profile

    prof = load_profile(profile) if profile is not None else None
    dayfirst = bool(read_options.pop("dayfirst", False)) or bool(prof and prof.dayfirst)
    decimal_default = read_options.get("decimal") or "."
    inputs, label = read_tables(source, **read_options)
    inputs = apply_profile(inputs, prof)
    if column_map is not None:
        extra = prof.covariate_names() if prof is not None else ()
        inputs = apply_column_map(inputs, column_map, columns=extra)
    study = build_study(inputs, source=label, strict=strict, dayfirst=dayfirst,
                        decimal=decimal_default, profile=prof)
    if prof is not None:
        prof.register_measures()
    return study


def validate(source: Any, column_map: Mapping[str, Mapping[str, str]] | str | os.PathLike | None
             = None, *, profile: Any = None, engine: str = "auto",
             **read_options: Any) -> ValidationReport:
    """Check a source and return the report; never raises on data problems.

    Parameters are those of :func:`load_study` (without ``strict``), and:

    engine : {"auto", "memory", "duckdb"}
        Where the rules run. "duckdb" validates a folder of Parquet tables or a DuckDB file
        inside DuckDB with the rules as SQL (rows never enter pandas; at most
        ``scale.sql_validate.CAP`` findings a rule, the rest counted in one finding); "auto"
        does so from ``scale.sql_validate.SCALE_ROWS`` readings on when no profile or column
        map is given, and reads into memory otherwise.

    Returns
    -------
    ValidationReport

    Raises
    ------
    SourceError
        Only when the source cannot be read at all.
    """
    if engine not in ("auto", "memory", "duckdb"):
        raise SourceError(f"engine {engine!r} must be 'auto', 'memory' or 'duckdb'")
    if engine != "memory":
        report = _validate_in_duckdb(source, column_map, profile, engine, read_options)
        if report is not None:
            return report
    return load_study(source, column_map, strict=False, profile=profile, **read_options).report


def _validate_in_duckdb(source: Any, column_map: Any, profile: Any, engine: str,
                        read_options: Mapping[str, Any]) -> ValidationReport | None:
    """The report of the SQL rules (``scale.sql_validate``) when *source* is for them, else None
    (engine "auto"); a sentence when engine "duckdb" cannot be honoured."""
    from mfr_outcomes.scale.sql_validate import SCALE_ROWS, source_rows, sql_source, validate_sql

    src = sql_source(source)
    others = sorted(set(read_options) - {"dayfirst", "decimal"})
    why = ("it is not a folder of Parquet tables or a DuckDB file" if src is None else
           "a profile or column map is given" if profile is not None or column_map is not None
           else f"{', '.join(others)} apply to CSV files" if others else None)
    if why is not None:
        if engine == "duckdb":
            raise SourceError(f"{_source_name(source)} cannot be validated inside DuckDB: {why}")
        return None
    if engine == "auto":
        try:
            if source_rows(src) < SCALE_ROWS:
                return None
        except Exception:  # unreadable: the in-memory reader says why in its own sentence
            return None
    try:
        return validate_sql(src, dayfirst=bool(read_options.get("dayfirst", False)),
                            decimal=read_options.get("decimal") or ".")
    except MemoryError:
        raise SourceError(f"{_source_name(source)} is too large for DuckDB's memory limit") \
            from None
    except Exception as exc:  # duckdb.Error and friends: one sentence
        text = " ".join(str(exc).split())[:200]
        raise SourceError(f"{_source_name(source)} cannot be validated inside DuckDB: "
                          f"{type(exc).__name__}: {text}") from None


def build_study(inputs: Mapping[str, TableInput], *, source: str, strict: bool = False,
                dayfirst: bool = False, decimal: str = ".", profile: Any = None) -> Study:
    """Validate raw tables and build a :class:`~mfr_outcomes.study.Study` (the one place that does).

    Parameters
    ----------
    inputs : dict
        "patients", "sessions", "measurements" -> :class:`~mfr_outcomes.schema.TableInput`.
    source : str
        How the source is named in the report.
    strict : bool
        Raise :class:`~mfr_outcomes.findings.DataValidationError` when anything is found.
    dayfirst : bool
        Read non-ISO text dates as day/month/year.
    decimal : str
        Decimal mark of text numbers (a table's own mark wins).
    profile : Profile, optional
        A loaded clinic profile (:func:`mfr_outcomes.profile.load_profile`): its vocabulary,
        typed covariates and measures are used by validation, and the Study carries its
        covariates. Its column map must already be applied to *inputs*.

    Returns
    -------
    Study
    """
    extras: dict[str, Any] = {}
    if profile is not None:  # a clinic profile's vocabulary, covariates and measures
        extras = {"vocabulary": profile.vocabulary, "covariates": profile.covariate_specs(),
                  "measures": profile.measure_registry()}
    frames, findings, accounting = validate_tables(dict(inputs), dayfirst=dayfirst,
                                                   decimal=decimal, **extras)
    report = ValidationReport(findings=findings, accounting=accounting, source=source)
    if strict and not report.ok:
        raise DataValidationError(report)
    if not report.ok:
        # rows are never dropped silently: say so once, the details are in the report
        kept = sum(f.action == "kept" for f in findings)
        warnings.warn(f"{source}: {report.n_excluded} row(s) excluded and {kept} caution(s) "
                      f"while loading; see study.report", DataWarning, stacklevel=3)
    covariates = profile.covariate_names() if profile is not None else ()
    return Study(frames["patients"], frames["sessions"], frames["measurements"], report, source,
                 covariates=covariates, profile=profile)


def from_frames(patients: pd.DataFrame, sessions: pd.DataFrame, measurements: pd.DataFrame, *,
                source: str = "<frames>", strict: bool = False, dayfirst: bool = False,
                decimal: str = ".", profile: Any = None) -> Study:
    """Validate three raw tables exactly as files are validated (see
    :func:`mfr_outcomes.study.from_frames`, which calls this)."""
    inputs = {}
    for name, frame in zip(TABLES, (patients, sessions, measurements)):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
        inputs[name] = TableInput.from_frame(name, frame, file=name, unit="row")
    prof = None
    if profile is not None:
        from mfr_outcomes.profile import load_profile

        prof = load_profile(profile)
        inputs = apply_profile(inputs, prof)
        dayfirst = dayfirst or prof.dayfirst
    study = build_study(inputs, source=source, strict=strict, dayfirst=dayfirst, decimal=decimal,
                        profile=prof)
    if prof is not None:
        prof.register_measures()
    return study


# ----------------------------------------------------------------------------- dispatch

def read_tables(source: Any, *, encoding: str | None = None, sep: str | None = None,
                decimal: str | None = None,
                queries: Mapping[str, str] | None = None) -> tuple[dict[str, TableInput], str]:
    """Read the three raw tables of *source* as text with line/row numbers.

    This is the loaders' one boundary: whatever goes wrong while reading becomes a
    :class:`SourceError` whose sentence names the source (a URL with its password masked).

    Returns
    -------
    inputs : dict
        table -> :class:`~mfr_outcomes.schema.TableInput`.
    label : str
        How the source is named in the report.
    """
    _check_read_options(encoding=encoding, sep=sep, decimal=decimal)
    try:
        return _dispatch(source, encoding=encoding, sep=sep, decimal=decimal, queries=queries)
    except (SourceError, ColumnMapError):
        raise
    except MemoryError:
        raise SourceError(f"{_source_name(source)} is too large to read into memory") from None
    except Exception as exc:  # a reader library's own exception: one sentence, no traceback
        text = " ".join(str(exc).split())
        text = text if len(text) <= 200 else text[:197] + "..."
        raise SourceError(mask_passwords(f"{_source_name(source)} cannot be read: "
                                         f"{type(exc).__name__}: {text}")) from None


def mask_passwords(text: str) -> str:
    """*text* with the password of every URL in it masked (``user:***@host``)."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***@", str(text))


_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)@")


def _source_name(source: Any) -> str:
    if isinstance(source, Mapping):
        return "the dict of tables"
    return mask_passwords(str(source))


def _check_read_options(*, encoding: str | None, sep: str | None, decimal: str | None) -> None:
    import codecs

    for name, value in (("sep", sep), ("decimal", decimal)):
        if value is None:
            continue
        if not isinstance(value, str) or len(value) != 1 or value in "\r\n\"":
            raise SourceError(f"{name} {value!r} must be exactly one character (not a quote or "
                              f"a line break), such as " + ("',' ';' '|' or a tab"
                                                             if name == "sep" else "'.' or ','"))
    if sep is not None and sep == decimal:
        raise SourceError(f"sep and decimal are both {sep!r}; they must differ")
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except (LookupError, TypeError):
            raise SourceError(f"encoding {encoding!r} is not a known text encoding (e.g. "
                              f"utf-8, latin-1, cp1252)") from None


def _dispatch(source: Any, *, encoding: str | None, sep: str | None, decimal: str | None,
              queries: Mapping[str, str] | None) -> tuple[dict[str, TableInput], str]:
    if isinstance(source, Mapping):
        return _read_frames(source), "<frames>"
    if isinstance(source, str) and "://" in source:
        return _read_url(source, queries)
    if not isinstance(source, (str, os.PathLike)):
        raise SourceError(f"cannot read a source of type {type(source).__name__}; give a folder, "
                          f"a file, an SQLAlchemy URL or a dict of DataFrames")
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    if path.is_dir():
        return _read_folder(path, encoding=encoding, sep=sep, decimal=decimal), str(path)
    kind = _file_kind(path)
    if kind == "xlsx":
        return _read_workbook(path), str(path)
    if kind == "sqlite":
        return _read_sqlite(path), str(path)
    if kind == "duckdb":
        return _read_duckdb(path), str(path)
    if path.stem.lower() in TABLES or path.suffix.lower() in (".csv", ".tsv", *_PARQUET_EXT):
        raise SourceError(f"{path} is a single file; give the folder that holds the patients, "
                          f"sessions and measurements files")
    raise SourceError(f"{path} is not a recognised source: give a folder of patients/sessions/"
                      f"measurements files, an .xlsx workbook, a SQLite or DuckDB file, or an "
                      f"SQLAlchemy URL")


def _file_kind(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise SourceError(f"{path} cannot be opened: {exc.strerror or exc}") from None
    if head.startswith(b"SQLite format 3\x00"):
        return "sqlite"
    if head[8:12] == b"DUCK":
        return "duckdb"
    if head.startswith(b"PK\x03\x04") and path.suffix.lower() in _XLSX_EXT:
        return "xlsx"
    return None


def _missing_table(where: str, table: str, looked: str) -> SourceError:
    return SourceError(f"{where} has no {table} table ({looked})")


# ----------------------------------------------------------------------------- frames

def _read_frames(source: Mapping[str, Any]) -> dict[str, TableInput]:
    lower = {str(k).lower(): k for k in source}
    out = {}
    for table in TABLES:
        if table not in lower:
            raise SourceError(f"the dict of tables has no {table!r} entry (keys: "
                              f"{', '.join(map(str, source))})")
        frame = source[lower[table]]
        if not isinstance(frame, pd.DataFrame):
            raise SourceError(f"{table} must be a pandas DataFrame, got {type(frame).__name__}")
        out[table] = TableInput.from_frame(table, frame, file=table, unit="row")
    return out


# ----------------------------------------------------------------------------- text files

def read_csv_text(text: str, table: str, file: str, *, sep: str | None = None,
                  decimal: str | None = None) -> TableInput:
    """Parse CSV text into a :class:`TableInput` whose rows carry their editor line numbers.

    A record's line is the line its first field starts on (header is line 1); quoted cells that
    span lines are counted; blank and whitespace-only lines are counted in ``blank_lines``.
    """
    return _csv_input(text.lstrip("\ufeff").encode("utf-8"), table, file, sep=sep,
                      decimal=decimal)


def _csv_input(data: bytes, table: str, file: str, *, sep: str | None,
               decimal: str | None) -> TableInput:
    if sep is None:
        sep = sniff_sep(data[:65536].decode("utf-8", "ignore"))
    if len(sep) != 1:
        raise SourceError(f"{file}: the separator must be one character, got {sep!r}")
    if decimal is None:
        decimal = "," if sep == ";" else "."
    try:
        parsed = parse_csv(data, file, sep=sep)
    except CsvReadError as exc:
        raise SourceError(str(exc)) from None
    except csv.Error as exc:
        raise SourceError(f"{file} is not readable CSV: {exc}") from None
    inp = TableInput(table, parsed.frame, file, "line", parsed.lines, decimal,
                     parsed.problems, parsed.blank_lines)
    return inp


def _read_csv(path: Path, table: str, *, encoding: str | None, sep: str | None,
              decimal: str | None) -> TableInput:
    try:
        text = decode_csv(path.read_bytes(), encoding, path.name)
    except (UnicodeError, LookupError) as exc:
        raise SourceError(f"{path.name} cannot be read as {encoding}: {exc}") from None
    if sep is None and path.suffix.lower() == ".tsv":
        sep = "\t"
    return _csv_input(text.data, table, path.name, sep=sep, decimal=decimal)


def _read_folder(path: Path, *, encoding: str | None, sep: str | None,
                 decimal: str | None) -> dict[str, TableInput]:
    found_files = _table_files(path)

    def one(table: str) -> TableInput:
        found = found_files[table]
        ext = found.suffix.lower()
        if ext in _TEXT_EXT:
            return _read_csv(found, table, encoding=encoding, sep=sep, decimal=decimal)
        if ext in _PARQUET_EXT:
            try:
                frame = _read_parquet(found)
            except Exception as exc:  # pyarrow raises many kinds on a bad file
                raise SourceError(f"{found.name} is not a readable Parquet file: {exc}") from None
            return TableInput.from_frame(table, frame, file=found.name, unit="row")
        name = _pick_sheet(found, table, first_if_none=True)
        return _sheet_input(found, name, table, file=found.name)

    # the readings are read here while patients and sessions are read in a second thread
    # (errors are raised in table order, as when read one after the other)
    (p, s), m = beside(lambda: (one("patients"), one("sessions")),
                       lambda: one("measurements"),
                       load_threads(found_files["measurements"].suffix.lower() in _TEXT_EXT))
    return {"patients": p, "sessions": s, "measurements": m}


def _read_parquet(path: Path) -> pd.DataFrame:
    """A Parquet file as a frame whose text columns stay Arrow (no Python string per cell: the
    validator works on Arrow arrays), numbers numbers and timestamps timestamps.

    Text columns are read as Arrow dictionaries, as Parquet stores them: the distinct texts
    once and an integer a cell, which is what the validator would otherwise hash each column
    into (``cells.text_codes``), at a quarter of the reading time of plain strings.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    names = [f.name for f in schema]
    texts = [f.name for f in schema if pa.types.is_string(f.type)
             or pa.types.is_large_string(f.type)]
    unique = len(set(names)) == len(names)
    table = pq.read_table(path, read_dictionary=texts if unique else None)
    text = pd.StringDtype("pyarrow")
    mapping = {pa.string(): text, pa.large_string(): text}

    def dtype(t: pa.DataType) -> Any:
        return pd.ArrowDtype(t) if pa.types.is_dictionary(t) else mapping.get(t)

    return table.to_pandas(types_mapper=dtype, self_destruct=True, split_blocks=True)


def _table_files(path: Path) -> dict[str, Path]:
    """The file of each table in a folder; two candidates for one table are an error naming
    both (``patients.csv`` beside ``Patients.csv``, or beside ``patients.parquet``)."""
    exts = (*_TEXT_EXT, *_PARQUET_EXT, *_XLSX_EXT)
    candidates: dict[str, list[Path]] = {t: [] for t in TABLES}
    for f in sorted(path.iterdir()):
        stem, ext = f.stem.lower(), f.suffix.lower()
        if f.is_file() and stem in candidates and ext in exts:
            candidates[stem].append(f)
    out = {}
    for table, files in candidates.items():
        if not files:
            raise _missing_table(str(path), table,
                                 f"looked for {table}.csv, {table}.parquet or {table}.xlsx")
        if len(files) > 1:
            names = " and ".join(f.name for f in files)
            same = len({f.suffix.lower() for f in files}) == 1
            why = "names that differ only in case" if same else "two files for one table"
            raise SourceError(f"{path} has {names} ({why}); keep one {table} file so that "
                              f"nothing is read by accident")
        out[table] = files[0]
    return out


# ----------------------------------------------------------------------------- workbooks

def _sheet_input(path: Path, sheet: str, table: str, *, file: str) -> TableInput:
    """One sheet as text cells; rows numbered as the spreadsheet shows them (header row 1)."""
    import openpyxl

    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        ws = wb[sheet]
        header: list[str] | None = None
        rows: list[list[Any]] = []
        numbers: list[int] = []
        problems: list[tuple[int, str]] = []
        for number, values in enumerate(ws.iter_rows(values_only=True), start=1):
            if all(v is None or (isinstance(v, str) and not v.strip()) for v in values):
                continue
            if header is None:
                header = ["" if v is None else str(v) for v in values]
                while header and not header[-1].strip():
                    header.pop()
                continue
            cells = list(values[:len(header)]) + [None] * (len(header) - len(values))
            stray = [(j, v) for j, v in enumerate(values[len(header):], start=len(header))
                     if not (v is None or (isinstance(v, str) and not v.strip()))]
            if stray:
                problems.append((len(rows), _no_header_text(stray)))
            rows.append(cells)
            numbers.append(number)
    finally:
        wb.close()
    if header is None:
        raise SourceError(f"{file} is empty: no header row")
    names = unique_names(header)
    frame = pd.DataFrame(rows, columns=names, dtype=object) if rows else pd.DataFrame(
        {c: pd.Series(dtype=object) for c in names})
    inp = TableInput.from_frame(table, frame, file=file, unit="row", lines=numbers)
    inp.problems = problems
    return inp


def _no_header_text(stray: list[tuple[int, Any]]) -> str:
    from openpyxl.utils import get_column_letter

    shown = ", ".join(f"{get_column_letter(j + 1)} = {_short(v)}" for j, v in stray[:5])
    more = f" and {len(stray) - 5} more" if len(stray) > 5 else ""
    return f"cell(s) {shown}{more} under no header are ignored"


def _short(value: Any, width: int = 40) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _read_workbook(path: Path) -> dict[str, TableInput]:
    out = {}
    for table in TABLES:
        name = _pick_sheet(path, table, first_if_none=False)
        out[table] = _sheet_input(path, name, table, file=f"{path.name} sheet {name}")
    return out


def _sheet_states(path: Path) -> list[tuple[str, str]]:
    """(name, state) of every sheet; state is visible, hidden or veryHidden."""
    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile/KeyError/InvalidFileException
        raise SourceError(f"{path.name} is not a readable XLSX workbook: {exc}") from None
    try:
        return [(ws.title, getattr(ws, "sheet_state", "visible") or "visible")
                for ws in wb.worksheets]
    finally:
        wb.close()


def _pick_sheet(path: Path, table: str, *, first_if_none: bool) -> str:
    """The sheet holding *table*: named after it (case and surrounding spaces ignored).

    Two such sheets, or a hidden one, are an error naming them: the wrong one could win
    silently. A folder's ``patients.xlsx`` without a ``patients`` sheet uses its first sheet.
    """
    states = _sheet_states(path)
    matches = [(n, st) for n, st in states if n.strip().lower() == table]
    if len(matches) > 1:
        names = ", ".join(repr(n) + ("" if st == "visible" else f" ({st})") for n, st in matches)
        raise SourceError(f"{path.name} has {len(matches)} sheets named like {table}: {names}; "
                          f"keep one so that the right one is read")
    if not matches:
        if first_if_none and states:
            matches = [states[0]]
        else:
            raise _missing_table(path.name, table,
                                 f"sheets are {', '.join(n for n, _ in states) or 'none'}")
    name, state = matches[0]
    if state != "visible":
        raise SourceError(f"{path.name} sheet {name!r} is {state}; unhide it (or delete it) so "
                          f"that what is read is what you see")
    return name


# ----------------------------------------------------------------------------- databases

def _rows_input(table: str, columns: list[str], rows: list[tuple], file: str) -> TableInput:
    frame = pd.DataFrame([list(r) for r in rows], columns=unique_names(columns), dtype=object)
    if not rows:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in unique_names(columns)})
    return TableInput.from_frame(table, frame, file=file, unit="row")


def _read_sqlite(path: Path) -> dict[str, TableInput]:
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SourceError(f"{path.name} cannot be opened as SQLite: {exc}") from None
    con.text_factory = _sqlite_text  # one bad cell is a finding, not an unreadable file
    try:
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
        lower = {n.lower(): n for n in names}
        out = {}
        for table in TABLES:
            if table not in lower:
                raise _missing_table(path.name, table, f"tables are {', '.join(names) or 'none'}")
            cur = con.execute(f'SELECT * FROM "{lower[table]}" ORDER BY rowid') \
                if _has_rowid(con, lower[table]) else con.execute(f'SELECT * FROM "{lower[table]}"')
            cols = [d[0] for d in cur.description]
            out[table] = _rows_input(table, cols, cur.fetchall(), f"{path.name} table {table}")
            out[table].problems.extend(_bad_text_problems(out[table]))
        return out
    except sqlite3.Error as exc:
        raise SourceError(f"{path.name} cannot be read as SQLite: {exc}") from None
    finally:
        con.close()


class _BadText(str):
    """Text of a SQLite cell that is not valid UTF-8, decoded with replacement characters."""


def _sqlite_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _BadText(raw.decode("utf-8", "replace"))


def _bad_text_problems(inp: TableInput) -> list[tuple[int, str]]:
    """A caution for each row holding a cell that was not valid UTF-8 (read with U+FFFD)."""
    out = []
    for col in inp.frame.columns:
        values = inp.frame[col]
        for i in [i for i, v in enumerate(values) if isinstance(v, _BadText)]:
            out.append((i, f"{col} is not valid UTF-8 text; read as {_short(values.iat[i])}"))
    return out


def _has_rowid(con: Any, name: str) -> bool:
    try:
        con.execute(f'SELECT rowid FROM "{name}" LIMIT 1')
        return True
    except Exception:  # views and WITHOUT ROWID tables
        return False


def _read_duckdb(path: Path) -> dict[str, TableInput]:
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
    except Exception as exc:  # duckdb.IOException, duckdb.Error
        raise SourceError(f"{path.name} cannot be opened as DuckDB: {exc}") from None
    try:
        found = con.execute("SELECT table_schema, table_name FROM information_schema.tables "
                            "ORDER BY table_schema = 'main' DESC, table_schema, table_name"
                            ).fetchall()
        out = {}
        for table in TABLES:
            schema, name = _duckdb_table(path, found, table)
            qualified = f'"{schema.replace(chr(34), chr(34) * 2)}".' \
                        f'"{name.replace(chr(34), chr(34) * 2)}"'
            try:
                cur = con.execute(f"SELECT * FROM {qualified}")
                cols = [d[0] for d in cur.description]
                rows = cur.fetchall()
            except duckdb.Error as exc:
                first = " ".join(str(exc).split())[:200]
                raise SourceError(f"{path.name} table {schema}.{name} cannot be read: "
                                  f"{first}") from None
            out[table] = _rows_input(table, cols, rows, f"{path.name} table {name}")
        return out
    finally:
        con.close()


def _duckdb_table(path: Path, found: list[tuple[str, str]], table: str) -> tuple[str, str]:
    """(schema, name) of *table*: in schema main, else the one schema that has it."""
    hits = [(sc, n) for sc, n in found if n.lower() == table]
    main = [h for h in hits if h[0] == "main"]
    if len(main) == 1:
        return main[0]
    if len(hits) == 1:
        return hits[0]
    shown = ", ".join(f"{sc}.{n}" for sc, n in (hits or found)) or "none"
    if not hits:
        raise _missing_table(path.name, table, f"tables are {shown}")
    raise SourceError(f"{path.name} has {len(hits)} tables named like {table} ({shown}); keep "
                      f"one, or move the one to read into schema main")


def _refuse_new_database(url: Any, label: str) -> None:
    """A file database (SQLite, DuckDB) that does not exist would be created by connecting."""
    backend = url.get_backend_name()
    database = url.database
    if backend in ("sqlite", "duckdb") and database not in (None, "", ":memory:") \
            and not database.startswith("file:") and not Path(database).is_file():
        raise SourceError(f"{label}: database file {database} does not exist (it is not "
                          f"created)")


def _read_url(url: str, queries: Mapping[str, str] | None) -> tuple[dict[str, TableInput], str]:
    import sqlalchemy as sa

    label = mask_passwords(url)
    try:
        parsed = sa.engine.make_url(url)
        label = parsed.render_as_string(hide_password=True)
        _refuse_new_database(parsed, label)
        engine = sa.create_engine(parsed)
    except SourceError:
        raise
    except Exception as exc:  # ArgumentError, NoSuchModuleError, ImportError of a driver
        why = mask_passwords(" ".join(str(exc).split()))
        raise SourceError(f"{label} is not a usable SQLAlchemy URL: {why}") from None
    try:
        with engine.connect() as con:
            out = {}
            if queries is not None:
                for table in TABLES:
                    if table not in queries:
                        raise SourceError(f"queries has no entry for {table}")
                    res = con.execute(sa.text(queries[table]))
                    out[table] = _rows_input(table, list(res.keys()), res.fetchall(),
                                             f"query {table}")
            else:
                names = sa.inspect(con).get_table_names()
                lower = {n.lower(): n for n in names}
                for table in TABLES:
                    if table not in lower:
                        raise _missing_table(label, table,
                                             f"tables are {', '.join(names) or 'none'}")
                    quoted = engine.dialect.identifier_preparer.quote(lower[table])
                    res = con.execute(sa.text(f"SELECT * FROM {quoted}"))
                    out[table] = _rows_input(table, list(res.keys()), res.fetchall(),
                                             f"table {table}")
            return out, label
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(f"{label} cannot be read: {exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
