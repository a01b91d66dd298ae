"""A Study whose rows stay out of memory (inside DuckDB, or on a Dask cluster), and the domain
fits on it through the fast engine's sufficient statistics.

:class:`ScaleStudy` is made by :meth:`ScaleStudy.from_duckdb` (a folder of Parquet tables or a
DuckDB file, validated inside DuckDB by ``scale.sql_validate``: the used rows stay in DuckDB's
staged tables) or :meth:`ScaleStudy.from_dask` (three validated, typed Dask DataFrames). Its
analysis frame of a measure is a DuckDB query or a Dask DataFrame, never a pandas frame.

``fit_prepost``, ``fit_course`` and ``fit_followup`` of ``models.domain`` hand such a study to
:func:`fit_domain`, which makes the same choices as in memory (the same formula and notes) from
aggregates — counts, per-patient counts, levels present — and fits without the rows: with one
grouping factor by the fast engine's per-patient sums (``GROUP BY`` inside DuckDB, or mapped
over Dask partitions and reduced in a tree); with the therapist level (crossed or nested, as in
memory) by the sparse engine from its Gram blocks summed by patient × therapist cell
(``scale.gram``). ``fit_followup``'s visit stages are a window query (DuckDB) or the in-memory
code per partition of whole patients (Dask). The conditional modes (BLUPs) come from the
statistics (or a second pass over the partitions, Dask with one factor). The fixed-effect
variables of the readings used are kept, counted by distinct combination, for emmeans and
contrasts (up to :data:`EMMEANS_ROWS` readings). What needs the rows is said in ``fit.notes``:
fitted values, residuals and Kenward-Roger df.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.findings import ValidationReport
from mfr_outcomes.scale import chunks

__all__ = ["ScaleStudy", "fit_domain", "EMMEANS_ROWS"]

#: Readings up to which an out-of-memory domain fit keeps its fixed-effect variables (counted
#: by distinct combination, then repeated: a few bytes a reading) for emmeans and contrasts.
EMMEANS_ROWS = 5_000_000

#: Columns of the analysis frame that are categories, with the table that holds them.
_CATEGORY_TABLE = {"technique": "sessions", "target_region": "sessions", "phase": "measurements",
                   "side": "measurements", "sex": "patients", "condition": "patients",
                   "affected_side": "patients", "arm": "patients"}
_SESSION_COLS = ("therapist_id", "technique", "target_region", "home_program")
_PATIENT_COLS = ("site_id", "age_years", "sex", "condition", "affected_side", "symptom_weeks",
                 "arm")


def _q(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def _lit(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


@dataclass(frozen=True)
class _Filter:
    """Rows of the analysis frame kept: ``column op value`` (op: ==, !=, notna)."""

    column: str
    op: str
    value: Any = None

    def sql(self) -> str:
        c = _q(self.column)
        if self.op == "notna":
            return f"{c} IS NOT NULL"
        v = _lit(self.value) if isinstance(self.value, str) else repr(self.value)
        return f"{c} {'=' if self.op == '==' else '<>'} {v}"

    def mask(self, frame: Any) -> Any:
        col = frame[self.column]
        if self.op == "notna":
            return col.notnull()
        return (col == self.value) if self.op == "==" else (col != self.value)


class ScaleStudy:
    """A validated study whose rows stay in DuckDB or on a Dask cluster.

    Attributes
    ----------
    report : ValidationReport
    source : str
    kind : {"duckdb", "dask"}
    out_of_memory : bool
        Always True: ``models.domain`` fits such a study by the statistics path.
    """

    out_of_memory = True

    def __init__(self, kind: str, report: ValidationReport, source: str, *, con: Any = None,
                 frames: dict[str, Any] | None = None) -> None:
        self.kind, self.report, self.source = kind, report, source
        self._con, self._frames = con, frames or {}
        self._cache: dict[str, Any] = {}
        self.covariates: tuple[str, ...] = ()
        self.profile = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_duckdb(cls, source: Any, *, dayfirst: bool = False, decimal: str = ".") -> ScaleStudy:
        """Validate a folder of Parquet tables or a DuckDB file inside DuckDB and keep its used
        rows there (the report is ``validate(source, engine="duckdb")``'s)."""
        from mfr_outcomes.scale.sql_validate import staged_study

        report, con, tables = staged_study(source, dayfirst=dayfirst, decimal=decimal)
        study = cls("duckdb", report, getattr(source, "label", str(source)), con=con)
        study._analysis_tables(tables)
        return study

    @classmethod
    def from_dask(cls, patients: Any, sessions: Any, measurements: Any, *,
                  source: str = "<dask>", report: ValidationReport | None = None) -> ScaleStudy:
        """A study of three validated, typed Dask DataFrames (the tables of a Study, e.g. read
        with ``dask.dataframe.read_parquet`` from a validated export)."""
        study = cls("dask", report or ValidationReport(source=source), source,
                    frames={"patients": patients, "sessions": sessions,
                            "measurements": measurements})
        return study

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __repr__(self) -> str:
        return f"ScaleStudy(kind={self.kind!r}, source={self.source!r})"

    # ---------------------------------------------------------------- DuckDB tables
    def _analysis_tables(self, tables: dict[str, Any]) -> None:
        """Used rows as typed tables a_patients, a_sessions (final session numbers, days, weeks,
        hours), a_measurements."""
        con = self._con
        cols = {}
        for name, t in tables.items():
            cols[name] = {s.name: f"v_{i}" for i, s in enumerate(t.specs)}
            cols[name]["_present"] = t.present
        p, s, m = cols["patients"], cols["sessions"], cols["measurements"]
        pick = lambda c, names: ", ".join(f"{c[n]} AS {n}" for n in names)  # noqa: E731
        con.execute(f"CREATE OR REPLACE TEMP TABLE a_patients AS SELECT "
                    f"{pick(p, ['patient_id', *_PATIENT_COLS])} FROM st_patients "
                    f"WHERE _reason IS NULL")
        order = f"{s['session_date']} NULLS LAST, {s['session_number']} NULLS LAST, _line"
        stamp = s["session_date"] if "session_time" not in s["_present"] else \
            f"date_trunc('day', {s['session_date']}) + {s['session_time']}"
        con.execute(f"""CREATE OR REPLACE TEMP TABLE a_sessions AS SELECT
            {pick(s, ['session_id', 'patient_id', 'session_date', *_SESSION_COLS])},
            CASE WHEN count({s['session_number']}) OVER w = count(*) OVER w
                 THEN {s['session_number']} ELSE row_number() OVER (PARTITION BY
                 {s['patient_id']} ORDER BY {order}) END AS session_number,
            floor((epoch({s['session_date']}) - epoch(min({s['session_date']}) OVER w)) / 86400)
                AS days,
            (epoch({stamp}) - epoch(min({stamp}) OVER w)) / 3600.0 AS hours
            FROM st_sessions WHERE _reason IS NULL
            WINDOW w AS (PARTITION BY {s['patient_id']})""")
        con.execute(f"CREATE OR REPLACE TEMP TABLE a_measurements AS SELECT "
                    f"{pick(m, ['session_id', 'phase', 'measure', 'side', 'value'])} "
                    f"FROM st_measurements WHERE _reason IS NULL")
        for name in ("st_patients", "st_sessions", "st_measurements"):
            con.execute(f"DROP TABLE IF EXISTS {name}")

    # ---------------------------------------------------------------- analysis frames
    @property
    def measures(self) -> list[str]:
        from mfr_outcomes.measures import measure_codes

        if self.kind == "duckdb":
            present = {r[0] for r in self._con.execute(
                "SELECT DISTINCT measure FROM a_measurements").fetchall()}
        else:
            present = set(self._frames["measurements"]["measure"].astype(str).unique().compute())
        ordered = [c for c in measure_codes() if c in present]
        return ordered + sorted(present - set(ordered))

    def _check_measure(self, measure: str) -> None:
        from mfr_outcomes.study import MeasureNotFoundError

        present = self.measures
        if measure not in present:
            raise MeasureNotFoundError(
                f"measure {measure!r} is not in this study; measures present: "
                f"{', '.join(sorted(present)) if present else 'none'}")

    def frame_sql(self, measure: str) -> str:
        """The analysis frame of *measure* as a DuckDB query (columns of ``Study.frame``)."""
        return f"""SELECT s.patient_id, p.site_id, s.therapist_id, s.session_id,
            s.session_number, s.session_date, s.days / 7.0 AS weeks, s.days, s.hours,
            s.technique, s.target_region, CAST(s.home_program AS DOUBLE) AS home_program,
            m.phase, CASE WHEN m.phase = 'post' THEN 1 ELSE 0 END AS post, m.side, m.value,
            p.age_years, p.sex, p.condition, p.affected_side, p.symptom_weeks, p.arm
            FROM a_measurements m JOIN a_sessions s USING (session_id)
            LEFT JOIN a_patients p ON s.patient_id = p.patient_id
            WHERE m.measure = {_lit(measure)}"""

    def _frame_table(self, measure: str) -> str:
        """A temporary DuckDB table of :meth:`frame_sql` (made on first use): the fit's dozen
        aggregates then scan its columns instead of joining the three tables each time."""
        name = self._cache.get(("table", measure))
        if name is None:
            name = f"_frame_{len(self._cache)}"
            self._con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {self.frame_sql(measure)}")
            self._cache[("table", measure)] = name
        return name

    def followup_sql(self, measure: str) -> str:
        """``models.domain.followup_frame`` of *measure* as a DuckDB query: pre readings, per
        patient and side the first and last of treatment visits (baseline, discharge) and the
        last of assessment-only visits (follow_up), with a ``stage`` column."""
        fu = "(technique IS NOT DISTINCT FROM 'none')"
        win = f"PARTITION BY patient_id, side, {fu}"
        return f"""SELECT * EXCLUDE (_first, _last), CASE WHEN {fu} THEN 'follow_up'
            WHEN _first = 1 THEN 'baseline' ELSE 'discharge' END AS stage FROM (
            SELECT *, row_number() OVER ({win} ORDER BY session_number, session_id) AS _first,
            row_number() OVER ({win} ORDER BY session_number DESC, session_id DESC) AS _last
            FROM {self._frame_table(measure)} WHERE post = 0 AND side IS NOT NULL)
            WHERE _last = 1 OR (_first = 1 AND NOT {fu})"""

    def frame_dask(self, measure: str) -> Any:
        """The analysis frame of *measure* as a Dask DataFrame (categories as text), built once
        and persisted on the cluster (its rows stay on the workers)."""
        hit = self._cache.get(measure)
        if hit is None:
            hit = self._cache[measure] = self._frame_dask(measure).persist()
        return hit

    def followup_dask(self, measure: str) -> Any:
        """``models.domain.followup_frame`` of *measure* on the cluster: the frame shuffled by
        patient, each partition (whole patients) labelled by the in-memory code; persisted."""
        key = ("followup", measure)
        hit = self._cache.get(key)
        if hit is None:
            ddf = self.frame_dask(measure)
            by_patient = ddf.shuffle(on="patient_id", method="tasks")
            meta = _followup_part(ddf._meta)
            hit = self._cache[key] = by_patient.map_partitions(_followup_part,
                                                               meta=meta).persist()
        return hit

    def _frame_dask(self, measure: str) -> Any:
        f = self._frames
        m = f["measurements"]
        m = m[m["measure"].astype(str) == measure][["session_id", "phase", "side", "value"]]
        s = f["sessions"]
        keep = [c for c in ("session_id", "patient_id", "session_number", "session_date",
                            *_SESSION_COLS) if c in s.columns]
        s = s[keep]
        first = s.groupby("patient_id")["session_date"].min().rename("_first").reset_index()
        s = s.merge(first, on="patient_id", how="left")
        s["days"] = (s["session_date"] - s["_first"]).dt.days.astype("float64")
        s["weeks"] = s["days"] / 7.0
        s["hours"] = (s["session_date"] - s["_first"]).dt.total_seconds() / 3600.0
        s = s.drop(columns=["_first"])
        p = f["patients"][[c for c in ("patient_id", *_PATIENT_COLS)
                           if c in f["patients"].columns]]
        out = m.merge(s, on="session_id", how="inner").merge(p, on="patient_id", how="left")
        out["post"] = (out["phase"].astype(str) == "post").astype("int64")
        for col in out.columns:
            if col in _CATEGORY_TABLE:
                out[col] = out[col].astype(object)  # missing stays missing
        for col in ("age_years", "symptom_weeks", "home_program", "session_number"):
            if col in out.columns:
                out[col] = out[col].astype("float64")
        return out

    # ---------------------------------------------------------------- aggregates
    def _source(self, measure: str, filters: Sequence[_Filter]) -> Any:
        """The rows kept by *filters*; a filter on ``stage`` selects the follow-up frame."""
        stages = any(f.column == "stage" for f in filters)
        if self.kind == "duckdb":
            where = " AND ".join(f.sql() for f in filters) or "true"
            base = f"({self.followup_sql(measure)})" if stages else self._frame_table(measure)
            return f"SELECT * FROM {base} WHERE {where}"
        ddf = self.followup_dask(measure) if stages else self.frame_dask(measure)
        for f in filters:
            ddf = ddf[f.mask(ddf)]
        return ddf

    def count(self, measure: str, filters: Sequence[_Filter]) -> int:
        src = self._source(measure, filters)
        if self.kind == "duckdb":
            return int(self._con.execute(f"SELECT count(*) FROM ({src})").fetchone()[0])
        return int(len(src))

    def per_patient(self, measure: str, filters: Sequence[_Filter]) -> pd.DataFrame:
        """One row a patient (not a reading): n, n_post, n_sessions, n_therapists (and
        n_stages on the follow-up frame)."""
        src = self._source(measure, filters)
        stages = any(f.column == "stage" for f in filters)
        if self.kind == "duckdb":
            extra = ", count(DISTINCT stage) AS n_stages" if stages else ""
            return self._con.execute(
                f"SELECT patient_id, count(*) AS n, sum(post) AS n_post, count(DISTINCT "
                f"session_id) AS n_sessions, count(DISTINCT therapist_id) AS n_therapists"
                f"{extra} FROM ({src}) GROUP BY patient_id").df()
        import dask

        g = src.groupby("patient_id")
        cols = {"n": g["value"].size(), "n_post": g["post"].sum(),
                "n_sessions": g["session_id"].nunique(), "n_therapists": g["therapist_id"].nunique()}
        if stages:
            cols["n_stages"] = g["stage"].nunique()
        got = dask.compute(*cols.values())
        return pd.DataFrame(dict(zip(cols, got))).rename_axis("patient_id").reset_index()

    def levels(self, measure: str, filters: Sequence[_Filter], column: str) -> pd.Series:
        """Patients per level of *column* (levels present, missing left out)."""
        src = self._source(measure, filters)
        if self.kind == "duckdb":
            got = self._con.execute(f"SELECT {_q(column)}, count(DISTINCT patient_id) FROM "
                                    f"({src}) WHERE {_q(column)} IS NOT NULL GROUP BY 1"
                                    ).fetchall()
            return pd.Series({str(k): int(v) for k, v in got}, dtype="int64")
        sub = src[src[column].notnull()]
        got = sub.groupby(column)["patient_id"].nunique().compute()
        return got.astype("int64").rename(index=str)

    def fixed_frame(self, measure: str, filters: Sequence[_Filter], design: Any
                    ) -> pd.DataFrame | None:
        """The fixed-effect variables of the readings a fit used (what ``emmeans`` and
        ``contrasts`` read of ``fit.spec.data``): counted by ``GROUP BY`` of their distinct
        combinations, then repeated; None beyond :data:`EMMEANS_ROWS` readings."""
        fixed = list(design.fixed_variables)
        src = self._source(measure, [*filters, *(_Filter(c, "notna") for c in design.variables)])
        if self.kind == "duckdb":
            cols = ", ".join(_q(c) for c in fixed)
            got = self._con.execute(f"SELECT {cols + ', ' if fixed else ''}count(*) AS _n "
                                    f"FROM ({src}) {'GROUP BY ALL' if fixed else ''}").df()
        elif fixed:
            got = src.groupby(fixed).size().rename("_n").reset_index().compute()
        else:
            got = pd.DataFrame({"_n": [len(src)]})
        if int(got["_n"].sum()) > EMMEANS_ROWS:
            return None
        out = got.loc[np.repeat(np.arange(len(got)), got["_n"].to_numpy()), fixed]
        out = out.reset_index(drop=True)
        return chunks.with_categories(out, dict(design.categories))

    def columns(self) -> list[str]:
        from mfr_outcomes.study import ANALYSIS_COLUMNS

        return list(ANALYSIS_COLUMNS)

    def categories(self, measure: str, filters: Sequence[_Filter], cols: Sequence[str]
                   ) -> dict[str, list[str]]:
        """Levels present of each category column, in the vocabulary's order (as the in-memory
        Study's categoricals after unused levels are dropped)."""
        from mfr_outcomes.models.domain import FOLLOWUP_STAGES
        from mfr_outcomes.schema import table_specs

        out = {}
        for col in cols:
            if col == "stage":
                present = set(self.levels(measure, filters, col).index)
                out[col] = [c for c in FOLLOWUP_STAGES if c in present]
            if col not in _CATEGORY_TABLE:
                continue
            spec = {s.name: s for s in table_specs(_CATEGORY_TABLE[col])}[col]
            present = set(self.levels(measure, filters, col).index)
            order = list(spec.categories) if spec.categories is not None else sorted(present)
            out[col] = [c for c in order if c in present]
        return out

    def fit(self, measure: str, filters: Sequence[_Filter], formula: str, *, reml: bool,
            df_method: str) -> Any:
        import re

        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", formula))
        cats = self.categories(measure, filters, [c for c in (*_CATEGORY_TABLE, "stage")
                                                  if c in words])
        src = self._source(measure, filters)
        if self.kind == "duckdb":
            from mfr_outcomes.scale.duckdb_source import fit_mixed_duckdb

            rel = self._con.sql(src)
            return fit_mixed_duckdb(rel, formula, reml=reml, df_method=df_method,
                                    categories=cats, label=f"{self.source} ({measure})",
                                    blups=True)
        from mfr_outcomes.scale.dask_fit import fit_mixed_dask

        return fit_mixed_dask(src, formula, reml=reml, df_method=df_method, categories=cats)


# ----------------------------------------------------------------------------- domain fits

def fit_domain(model: str, study: ScaleStudy, measure: str, **options: Any) -> Any:
    """``fit_prepost`` / ``fit_course`` / ``fit_followup`` on an out-of-memory study."""
    if model == "prepost":
        return _prepost(study, measure, **options)
    if model == "course":
        return _course(study, measure, **options)
    if model == "followup":
        return _followup(study, measure, **options)
    raise ValueError(f"fit_{model} on a study kept in DuckDB or on Dask is not available; use "
                     f"fit_prepost, fit_course or fit_followup, or load the study in memory")


def _followup_part(frame: pd.DataFrame) -> pd.DataFrame:
    """The follow-up rows of a partition of whole patients (stage as text)."""
    from mfr_outcomes.models.domain import followup_rows

    out = followup_rows(frame.reset_index(drop=True))
    out["stage"] = out["stage"].astype(object)
    return out


def _therapist_term(study: ScaleStudy, measure: str, filters: list[_Filter],
                    pp: pd.DataFrame, therapist: bool, notes: list[str]) -> str:
    """The in-memory choice of a therapist level (``models.domain.therapist_term``) from
    aggregates: therapists present, and per patient the number seen (*pp*)."""
    from mfr_outcomes.models.domain import therapist_term

    if not therapist:
        return ""
    n_ther = len(study.levels(measure, filters, "therapist_id"))
    return therapist_term(n_ther, int((pp["n_therapists"] > 1).sum()), len(pp), notes)


def _check_by(study: ScaleStudy, measure: str, filters: list[_Filter], by: str | None,
              notes: list[str]) -> str | None:
    from mfr_outcomes.models.domain import thin_levels

    if by is None:
        return None
    if by not in study.columns():
        raise ValueError(f"by={by!r} is not a column of the analysis frame (columns: "
                         f"{', '.join(study.columns())}).")
    counts = study.levels(measure, filters, by)
    if len(counts) < 2:
        notes.append(f"only one level of {by!r} present, so it was left out of the model")
        return None
    thin_levels(counts, by, notes)
    return by


def _sides(study: ScaleStudy, measure: str, filters: list[_Filter], side: Any,
           notes: list[str]) -> tuple[list[_Filter], str | None]:
    from mfr_outcomes.models.domain import side_choice

    present = sorted(study.levels(measure, filters, "side").index)
    keep, mode = side_choice(present, side, measure, notes)
    if keep is not None:
        return [*filters, _Filter("side", "==", keep)], None
    return filters, mode


def _covariates(study: ScaleStudy, covariates: Sequence[str]) -> list[str]:
    if isinstance(covariates, str):
        covariates = [covariates]
    missing = [c for c in covariates if c not in study.columns()]
    if missing:
        raise ValueError(f"covariate(s) {missing} are not columns of the analysis frame "
                         f"(columns: {', '.join(study.columns())}).")
    return list(covariates)


def _finish(study: ScaleStudy, measure: str, filters: list[_Filter], formula: str, model: str,
            notes: list[str], reml: bool, df_method: str) -> Any:
    from mfr_outcomes.models.domain import _Caution

    fit = study.fit(measure, filters, formula, reml=reml, df_method=df_method)
    fit.measure, fit.model = measure, model
    fixed = study.fixed_frame(measure, filters, fit.spec.design)
    if fixed is not None:
        fit.spec.data = fixed
    else:
        notes.append(f"emmeans and contrasts are not available: they need the fixed-effect "
                     f"variables of each reading, kept in memory up to {EMMEANS_ROWS:,} "
                     f"readings")
    warn_list = fit.diagnostics.setdefault("warnings", [])
    for n in notes:
        if isinstance(n, _Caution) and n not in warn_list:
            warn_list.append(str(n))
    fit.notes = [f"formula: {formula}"] + [str(n) for n in notes] + list(fit.notes)
    return fit


def _each_side(study: ScaleStudy, measure: str, filters: list[_Filter], side_mode: str | None,
               notes: list[str], build: Any) -> Any:
    if side_mode == "separate":
        out = {}
        for s in ("left", "right"):
            sub = [*filters, _Filter("side", "==", s)]
            if study.count(measure, sub):
                out[s] = build(sub, notes + [f"readings of the {s} side only"])
        return out
    return build(filters, notes, side_factor=side_mode == "factor")


def _prepost(study: ScaleStudy, measure: str, *, by: str | None = "technique",
             covariates: Sequence[str] = (), therapist: bool = True, side: Any = "auto",
             time: str | None = "session_number", engine: str = "auto", reml: bool = True,
             df_method: str = "satterthwaite") -> Any:
    from mfr_outcomes.models.domain import (
        _check_measure,
        check_patient_count,
        patient_term,
        prepost_formula,
    )

    _check_measure(measure, "fit_prepost")
    study._check_measure(measure)
    _engine_ok(engine, df_method)
    if time not in ("session_number", "weeks", None):
        raise ValueError(f"time must be 'session_number', 'weeks' or None; got {time!r}.")
    notes: list[str] = []
    n_all = study.count(measure, [])
    filters = [_Filter("technique", "!=", "none")]
    n_treat = study.count(measure, filters)
    if not n_treat or not study.count(measure, [*filters, _Filter("post", "==", 1)]):
        raise ValueError(f"{measure!r} has no post-treatment readings, so there is no "
                         f"within-session change to model; use fit_followup(study, {measure!r}) "
                         f"for baseline → discharge → follow-up, or fit_course for the course of "
                         f"care.")
    if n_treat < n_all:
        notes.append(f"{n_all - n_treat} reading(s) from assessment-only visits (technique "
                     f"none) left out")
    pp = study.per_patient(measure, filters)
    check_patient_count(int((pp["n_post"] > 0).sum()), measure, "post-treatment readings",
                        notes)
    covs = _covariates(study, covariates)
    by = _check_by(study, measure, filters, by, notes)
    ther = _therapist_term(study, measure, filters, pp, therapist, notes)
    filters, side_mode = _sides(study, measure, filters, side, notes)
    single = bool((pp["n_sessions"] <= 1).all())
    if single and time is not None:
        notes.append(f"one treatment session per patient, so {time} is the same for every "
                     f"reading and was left out")
        time = None

    def build(sub: list[_Filter], extra: list[str], side_factor: bool = False) -> Any:
        why = ("one treatment session per patient (a single pre/post pair each: the paired "
               "t-test's design)" if single else "too few readings per patient")
        counts = study.per_patient(measure, sub) if sub != filters else pp
        patient = patient_term(int(counts["n"].sum()), len(counts), "post", extra, why)
        formula = prepost_formula(by=by, covariates=covs, therapist_term=ther,
                                  side_factor=side_factor, time=time, patient_term=patient)
        return _finish(study, measure, sub, formula, "prepost", extra, reml, df_method)

    return _each_side(study, measure, filters, side_mode, notes, build)


def _engine_ok(engine: str, df_method: str) -> None:
    if engine not in ("auto", "fast"):
        raise ValueError(f"out of memory only the fast engine is available, not {engine!r}")
    if df_method == "kenward-roger":
        raise ValueError("Kenward-Roger df need the rows in memory; use satterthwaite")


def _course(study: ScaleStudy, measure: str, *, time: str = "weeks", by: str | None = None,
            covariates: Sequence[str] = (), therapist: bool = True, side: Any = "auto",
            random_slope: bool = True, engine: str = "auto", reml: bool = True,
            df_method: str = "satterthwaite") -> Any:
    from mfr_outcomes.models.domain import (
        _caution,
        _check_measure,
        check_patient_count,
        patient_term,
        time_note,
    )
    from mfr_outcomes.study import TIME_UNITS
    from mfr_outcomes.warnings_ import DataWarning

    m = _check_measure(measure, "fit_course")
    study._check_measure(measure)
    _engine_ok(engine, df_method)
    notes = [time_note(time, m)]
    unit = TIME_UNITS[time]
    n_all = study.count(measure, [])
    filters = [_Filter("post", "==", 0)]
    n_pre = study.count(measure, filters)
    if n_all > n_pre:
        notes.append(f"{n_all - n_pre} post-treatment reading(s) left out: the course is "
                     f"modelled on pre-session readings (fit_prepost models the within-session "
                     f"change)")
    n_assess = study.count(measure, [*filters, _Filter("technique", "==", "none")])
    if n_assess:
        notes.append(f"{n_assess} reading(s) from assessment-only visits (technique none) "
                     f"included")
    if not n_pre:
        raise ValueError(f"{measure!r} has no pre-session readings.")
    timed = [*filters, _Filter(time, "notna")]
    n_timed = study.count(measure, timed)
    if n_timed < n_pre:
        why = (" (a visit without session_time while others of the study have one)"
               if time == "hours" else "")
        _caution(notes, f"{n_pre - n_timed} pre-session reading(s) have no {time}{why} and "
                        f"were left out", DataWarning)
        if not n_timed:
            raise ValueError(f"no pre-session reading of {measure!r} has a value of {time}.")
    filters = timed
    pp = study.per_patient(measure, filters)
    check_patient_count(len(pp), measure, "pre-session readings", notes)
    median = float(np.median(pp["n"]))
    if random_slope and median < 3:
        _caution(notes, f"patients have a median of {median:g} pre-session readings "
                        f"of {measure!r}; a random slope over {time} (per {unit}) is barely "
                        f"identifiable, so a random intercept only was fitted")
        random_slope = False
    covs = _covariates(study, covariates)
    by = _check_by(study, measure, filters, by, notes)
    ther = _therapist_term(study, measure, filters, pp, therapist, notes)
    filters, side_mode = _sides(study, measure, filters, side, notes)
    fixed = f"{time} * {by}" if by else time
    for c in covs:
        fixed += f" + {c}"

    def build(sub: list[_Filter], extra: list[str], side_factor: bool = False) -> Any:
        counts = study.per_patient(measure, sub) if sub != filters else pp
        rand = patient_term(int(counts["n"].sum()), len(counts),
                             time if random_slope else None, extra,
                             "too few readings per patient")
        formula = f"value ~ {fixed}{' + side' if side_factor else ''} + {rand}{ther}"
        return _finish(study, measure, sub, formula, "course", extra, reml, df_method)

    return _each_side(study, measure, filters, side_mode, notes, build)


def _followup(study: ScaleStudy, measure: str, *, covariates: Sequence[str] = (),
              therapist: bool = True, side: Any = "auto", engine: str = "auto",
              reml: bool = True, df_method: str = "satterthwaite") -> Any:
    from mfr_outcomes.models.domain import _check_measure, check_patient_count, followup_checks

    _check_measure(measure, "fit_followup")
    study._check_measure(measure)
    _engine_ok(engine, df_method)
    notes: list[str] = []
    filters = [_Filter("stage", "notna")]  # the follow-up frame
    if not study.count(measure, filters):
        raise ValueError(f"{measure!r} has no pre-treatment readings.")
    pp = study.per_patient(measure, filters)
    followup_checks(study.levels(measure, filters, "stage"), pp["n_stages"], measure, notes)
    check_patient_count(len(pp), measure, "readings", notes)
    covs = _covariates(study, covariates)
    ther = _therapist_term(study, measure, filters, pp, therapist, notes)
    filters, side_mode = _sides(study, measure, filters, side, notes)
    fixed = "stage" + "".join(f" + {c}" for c in covs)

    def build(sub: list[_Filter], extra: list[str], side_factor: bool = False) -> Any:
        formula = f"value ~ {fixed}{' + side' if side_factor else ''} + (1 | patient_id){ther}"
        return _finish(study, measure, sub, formula, "followup", extra, reml, df_method)

    return _each_side(study, measure, filters, side_mode, notes, build)
