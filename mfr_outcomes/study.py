"""The validated study: its three tables, the report of what loading found, and analysis frames.

``from_frames`` validates raw tables exactly as files are validated; ``analysis_frame`` is the pure
join behind :meth:`Study.frame` that simulation loops call without validation.
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

# re-exported for compatibility: the report types live in the leaf module mfr_outcomes.findings
from mfr_outcomes.findings import DataValidationError, Finding, RowAccount, ValidationReport

__all__ = [
    "Finding",
    "RowAccount",
    "ValidationReport",
    "DataValidationError",
    "MeasureNotFoundError",
    "Study",
    "from_frames",
    "analysis_frame",
    "model_dtypes",
    "ANALYSIS_COLUMNS",
    "OPTIONAL_ANALYSIS_COLUMNS",
    "TIME_UNITS",
]

#: Columns of an analysis frame, in order.
ANALYSIS_COLUMNS = (
    "patient_id", "site_id", "therapist_id", "session_id", "session_number", "session_date",
    "weeks", "days", "hours", "technique", "target_region", "home_program", "phase", "post",
    "side", "value", "age_years", "sex", "condition", "affected_side", "symptom_weeks",
)

#: Optional columns carried after ``ANALYSIS_COLUMNS`` when the study has them.
OPTIONAL_ANALYSIS_COLUMNS = ("arm", "session_time")


class MeasureNotFoundError(KeyError, ValueError):
    """A measure asked for is not in the study (caught as KeyError or ValueError)."""

    def __str__(self) -> str:  # KeyError would quote the sentence
        return str(self.args[0]) if self.args else ""


class _Cache:
    """Values derived from a study's tables, each kept with a token of the tables it came from.

    A value is used again only while its tables hold the same memory: under pandas' copy-on-write
    an edit in place (``.loc[...] = ...``, ``fillna(inplace=True)``) of a table that a snapshot
    still references writes to fresh memory, so the token changes and the value is rebuilt.
    """

    def __init__(self) -> None:
        self._values: dict[tuple, tuple[tuple, list[pd.DataFrame], Any]] = {}

    def clear(self) -> None:
        self._values.clear()

    def get(self, key: tuple, tables: Sequence[pd.DataFrame], build: Any) -> Any:
        tokens = tuple(_token(t) for t in tables)
        hit = self._values.get(key)
        if hit is not None and hit[0] == tokens and None not in tokens:
            return hit[2]
        value = build()
        # shallow snapshots hold references, so that pandas copies before writing in place
        self._values[key] = (tokens, [t.copy(deep=False) for t in tables], value)
        return value


def _token(frame: pd.DataFrame) -> tuple | None:
    """Where a table's columns live in memory (None when it cannot be told: never cached)."""
    try:
        blocks = frame._mgr.blocks  # the block manager: no public way to see memory identity
        parts = tuple((tuple(b.mgr_locs.as_array.tolist()), _memory(b.values)) for b in blocks)
    except Exception:  # another pandas, or a column kind not known here: no cache
        return None
    return (id(frame), tuple(map(str, frame.columns)), id(frame.index), len(frame), parts)


def _memory(values: Any) -> tuple:
    if isinstance(values, np.ndarray):
        return ("np", values.__array_interface__["data"][0], values.shape, values.strides)
    if hasattr(values, "_pa_array"):  # Arrow-backed: immutable, replaced on every edit
        return ("pa", id(values._pa_array))
    if hasattr(values, "_data") and hasattr(values, "_mask"):  # nullable Int64, boolean
        return (_memory(values._data), _memory(values._mask))
    if hasattr(values, "_ndarray"):  # Categorical codes, datetimes
        return (_memory(values._ndarray), id(values.dtype))
    raise TypeError(f"no memory token for {type(values).__name__}")


class Study:
    """A validated study: three typed tables plus the report of how they were loaded.

    Parameters
    ----------
    patients, sessions, measurements : DataFrame
        Validated frames with the column types of ``docs/internals.md``.
    report : ValidationReport
    source : str
        What was read (path, URL or "<frames>").
    covariates : sequence of str
        Covariate columns of patients or sessions (declared by a clinic profile) that
        :meth:`frame` carries, typed.
    profile : Profile, optional
        The clinic profile the study was loaded with (None without one).
    """

    def __init__(self, patients: pd.DataFrame, sessions: pd.DataFrame,
                 measurements: pd.DataFrame, report: ValidationReport | None = None,
                 source: str = "<frames>", *, covariates: Sequence[str] = (),
                 profile: Any = None) -> None:
        self._cache = _Cache()
        self.patients = patients
        self.sessions = sessions
        self.measurements = measurements
        self.report = report if report is not None else ValidationReport(source=source)
        self.source = source
        self.covariates = tuple(covariates)
        self.profile = profile

    # Analysis frames are built once per study and measure (a report asks for the same frame
    # many times). Assigning a table or the covariates clears them; so does an edit of a table
    # in place, which _Cache detects.
    patients = property(lambda self: self._patients,
                        lambda self, v: self._set("_patients", v),
                        doc="Validated patients table.")
    sessions = property(lambda self: self._sessions,
                        lambda self, v: self._set("_sessions", v),
                        doc="Validated sessions table.")
    measurements = property(lambda self: self._measurements,
                            lambda self, v: self._set("_measurements", v),
                            doc="Validated measurements table.")
    covariates = property(lambda self: self._covariates,
                          lambda self, v: self._set("_covariates", tuple(v)),
                          doc="Covariate columns that :meth:`frame` carries.")

    def _set(self, name: str, value: Any) -> None:
        self.__dict__[name] = value
        self._cache.clear()

    def __getstate__(self) -> dict[str, Any]:  # a pickled study carries no cached frames
        state = dict(self.__dict__)
        state["_cache"] = _Cache()
        return state

    @property
    def measures(self) -> list[str]:
        """Codes of the measures present, in registry order (then any others)."""
        from mfr_outcomes.measures import measure_codes

        present = set(self._present())
        ordered = [c for c in measure_codes() if c in present]
        return ordered + sorted(present - set(ordered))

    def _present(self) -> list[str]:
        """Measure codes with a reading, sorted (cached)."""
        return self._cache.get(("present",), (self._measurements,),
                               lambda: _present_measures(self._measurements))

    def frame(self, measure: str, *, side: str | None = None) -> pd.DataFrame:
        """Analysis-ready long frame of one measure, one row a reading.

        Parameters
        ----------
        measure : str
            A measure code present in the study (see :attr:`measures`).
        side : {"left", "right", "none"}, optional
            Keep only readings of this side; all sides when None.

        Returns
        -------
        DataFrame
            Columns ``ANALYSIS_COLUMNS``; see :func:`analysis_frame`.

        Raises
        ------
        MeasureNotFoundError
            (a KeyError and ValueError) when the measure is not in the study.

        Notes
        -----
        Each frame is built once per study, measure and side and then kept: a report asks for
        the same frame many times. Assigning a table (``study.measurements = ...``) or the
        covariates, or editing a table in place, makes the next call build it afresh. The frame
        returned is the caller's own (editing it never changes what the study keeps).

        Examples
        --------
        >>> import mfr_outcomes as mfr
        >>> study = mfr.load_study(mfr.datasets.synthetic_path())
        >>> pain = study.frame("pain_nrs")
        >>> list(pain.columns[:6])
        ['patient_id', 'site_id', 'therapist_id', 'session_id', 'session_number', 'session_date']
        >>> sorted(pain["phase"].unique())
        ['post', 'pre']
        >>> study.frame("vas")
        Traceback (most recent call last):
        ...
        mfr_outcomes.study.MeasureNotFoundError: measure 'vas' is not in this study; measures present: hip_flexion_deg, hip_ir_deg, leg_pain_nrs, odi, pain_nrs, paresthesia, ppt_kgcm2, slr_deg
        """
        tables = (self._patients, self._sessions, self._measurements)
        present = self._present()

        def build() -> pd.DataFrame:
            visits = self._cache.get(("visits", self._covariates), tables[:2],
                                     lambda: _visit_part(*tables[:2], self._covariates))
            return _join(visits, self._measurements, measure, side, present)

        # a shallow copy: under pandas' copy-on-write a caller's edit never reaches the cache
        return self._cache.get(("frame", measure, side, self._covariates), tables,
                               build).copy(deep=False)

    def summary(self) -> pd.DataFrame:
        """Counts and per-measure pre/post means.

        Returns
        -------
        DataFrame
            One row a measure: measure, patients, sessions, readings, pre_n, pre_mean, post_n,
            post_mean.
        """
        m = self._measurements
        sessions = self._sessions.drop_duplicates("session_id")
        at = pd.Index(sessions["session_id"]).get_indexer(m["session_id"])
        patient = pd.factorize(sessions["patient_id"])[0]
        patient = np.where(at >= 0, patient[np.maximum(at, 0)] if len(patient) else -1, -1)
        session = pd.factorize(m["session_id"])[0]
        measure, codes = pd.factorize(m["measure"])
        codes = pd.Index(codes).astype(str)
        is_pre = (m["phase"] == "pre").to_numpy(dtype=bool, na_value=False)
        is_post = (m["phase"] == "post").to_numpy(dtype=bool, na_value=False)
        value = m["value"].to_numpy(dtype="float64")
        rows = []
        for code in self.measures:
            rows_of = np.flatnonzero(measure == codes.get_loc(code))
            pre = value[rows_of[is_pre[rows_of]]]
            post = value[rows_of[is_post[rows_of]]]
            rows.append({
                "measure": code, "patients": _distinct(patient[rows_of]),
                "sessions": _distinct(session[rows_of]), "readings": len(rows_of),
                # Series.mean, as for one measure alone: the same sum to the last digit
                "pre_n": len(pre), "pre_mean": pd.Series(pre).mean() if len(pre) else np.nan,
                "post_n": len(post), "post_mean": pd.Series(post).mean() if len(post) else np.nan,
            })
        return pd.DataFrame(rows, columns=["measure", "patients", "sessions", "readings", "pre_n",
                                           "pre_mean", "post_n", "post_mean"])

    def __repr__(self) -> str:
        return (f"Study(source={self.source!r}, patients={len(self.patients)}, "
                f"sessions={len(self.sessions)}, measurements={len(self.measurements)}, "
                f"findings={len(self.report.findings)})")

    def _repr_html_(self) -> str:
        head = (f"<p><b>Study</b> from {html.escape(str(self.source))}: {len(self.patients)} "
                f"patients, {len(self.sessions)} sessions, {len(self.measurements)} readings; "
                f"{len(self.report.findings)} validation finding(s)</p>")
        return head + self.summary().to_html(index=False, float_format=lambda x: f"{x:.2f}")


def from_frames(patients: pd.DataFrame, sessions: pd.DataFrame, measurements: pd.DataFrame, *,
                source: str = "<frames>", strict: bool = False, dayfirst: bool = False,
                decimal: str = ".", profile: Any = None) -> Study:
    """Validate three raw tables exactly as files are validated and return a :class:`Study`.

    Parameters
    ----------
    patients, sessions, measurements : DataFrame
        Raw tables with canonical column names (text or typed cells).
    source : str
        Name used in the report; findings name rows as "patients row 3" (1-based).
    strict : bool
        Raise :class:`DataValidationError` when anything is found.
    dayfirst : bool
        Read text dates as day/month/year.
    decimal : str
        Decimal mark of text numbers.
    profile : path, dict or Profile, optional
        A clinic profile (see :mod:`mfr_outcomes.profile`), as for ``load_study``.

    Returns
    -------
    Study

    Examples
    --------
    >>> import pandas as pd
    >>> from mfr_outcomes.study import from_frames
    >>> patients = pd.DataFrame({"patient_id": ["P1"], "condition": ["sciatica"]})
    >>> sessions = pd.DataFrame({"session_id": ["S1"], "patient_id": ["P1"],
    ...                          "therapist_id": ["T1"], "session_date": ["2024-03-01"],
    ...                          "technique": ["massage"], "duration_min": ["-5"]})
    >>> readings = pd.DataFrame({"session_id": ["S1", "S1"], "phase": ["pre", "post"],
    ...                          "measure": ["pain_nrs", "pain_nrs"], "value": [6, 4]})
    >>> import warnings; warnings.simplefilter("ignore")
    >>> study = from_frames(patients, sessions, readings)
    >>> print(study.report.findings[0])
    sessions row 1: duration_min = -5, must be 5–180 (set to missing; row kept)
    >>> study.frame("pain_nrs")[["session_id", "phase", "post", "value", "site_id"]]
      session_id phase  post  value site_id
    0         S1   pre     0    6.0  site-1
    1         S1  post     1    4.0  site-1
    """
    from mfr_outcomes.io import from_frames as _validated  # io builds Studies; lazy: io imports us

    return _validated(patients, sessions, measurements, source=source, strict=strict,
                      dayfirst=dayfirst, decimal=decimal, profile=profile)


def model_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of *frame* with the dtypes model fitters want.

    Categoricals lose the levels with no rows (the vocabulary keeps them all), and nullable
    Int64/boolean columns become float64 with NaN for missing, which formula libraries and
    statsmodels read as numbers.
    """
    frame = frame.copy()
    for col in frame.columns:
        s = frame[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            frame[col] = s.cat.remove_unused_categories()
        elif pd.api.types.is_extension_array_dtype(s.dtype) and \
                (pd.api.types.is_integer_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype)):
            frame[col] = s.astype("float64")
    return frame


def analysis_frame(patients: pd.DataFrame, sessions: pd.DataFrame, measurements: pd.DataFrame,
                   measure: str, *, side: str | None = None,
                   covariates: Sequence[str] = ()) -> pd.DataFrame:
    """Join the three tables into a long frame of one measure (no validation).

    Parameters
    ----------
    patients, sessions, measurements : DataFrame
        Validated frames (or raw frames with the same columns and types).
    measure : str
        Measure code.
    side : {"left", "right", "none"}, optional
        Keep only this side; all sides when None.
    covariates : sequence of str
        Further columns of patients or sessions to carry (a profile's covariates), typed.

    Returns
    -------
    DataFrame
        Columns patient_id, site_id, therapist_id, session_id, session_number, session_date,
        weeks (days since the patient's first session / 7), days (whole days since the first
        session), hours (hours since the first session, from session_date plus session_time
        when the study records times of day; missing for a visit without a time when others
        have one), technique, target_region, home_program, phase, post (int 0/1), side, value,
        age_years, sex, condition, affected_side, symptom_weeks; then arm and session_time when
        the study has them, then the covariates. Sorted by patient_id, session_number, side,
        phase.

    Raises
    ------
    MeasureNotFoundError
        When no reading of *measure* (on *side*) is present.
    """
    visits = _visit_part(patients, sessions, covariates)
    return _join(visits, measurements, measure, side, _present_measures(measurements))


def _present_measures(measurements: pd.DataFrame) -> list[str]:
    return sorted({str(m) for m in measurements["measure"].dropna().unique()})


def _visit_part(patients: pd.DataFrame, sessions: pd.DataFrame,
                covariates: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Sessions joined to their patients, with the time scales (one row a session), and the
    optional columns carried; the part of an analysis frame that does not depend on the
    measure."""
    s = sessions.copy()
    s["session_date"] = pd.to_datetime(s["session_date"])
    first = s.groupby("patient_id", observed=True)["session_date"].transform("min")
    s["days"] = (s["session_date"] - first).dt.days.astype("float64")
    s["weeks"] = s["days"] / 7.0
    s["hours"] = _hours(s)
    if "session_number" not in s.columns or s["session_number"].isna().any():
        s = s.sort_values(["patient_id", "session_date"], kind="stable")
        s["session_number"] = s.groupby("patient_id", observed=True).cumcount() + 1
    extra = [c for c in (*OPTIONAL_ANALYSIS_COLUMNS, *covariates)
             if c in s.columns or c in patients.columns]
    missing = [c for c in covariates if c not in extra]
    if missing:
        raise ValueError(f"covariate(s) {', '.join(missing)} are not columns of patients or "
                         f"sessions")
    s_cols = ["session_id", "patient_id", "therapist_id", "session_number", "session_date",
              "weeks", "days", "hours", "technique", "target_region", "home_program"]
    s = s[[c for c in s_cols if c in s.columns]
          + [c for c in extra if c in sessions.columns and c not in s_cols]]
    p_cols = ["patient_id", "site_id", "age_years", "sex", "condition", "affected_side",
              "symptom_weeks"]
    p = patients[[c for c in p_cols if c in patients.columns]
                 + [c for c in extra if c in patients.columns and c not in p_cols
                    and c not in s.columns]]
    return s.merge(p, on="patient_id", how="left"), extra


def _join(visits: tuple[pd.DataFrame, list[str]], measurements: pd.DataFrame, measure: str,
          side: str | None, present: list[str]) -> pd.DataFrame:
    """The readings of one measure (and side) joined to their visits: an analysis frame."""
    sp, extra = visits
    if measure not in present:
        raise MeasureNotFoundError(
            f"measure {measure!r} is not in this study; measures present: "
            f"{', '.join(present) if present else 'none'}")
    m = measurements[measurements["measure"] == measure]
    if side is not None:
        m = m[m["side"] == side]
        if m.empty:
            sides = sorted(set(measurements.loc[measurements["measure"] == measure, "side"]
                               .dropna().astype(str)))
            raise MeasureNotFoundError(
                f"measure {measure!r} has no readings on side {side!r}; sides present: "
                f"{', '.join(sides)}")
    out = m[["session_id", "phase", "side", "value"]].merge(sp, on="session_id", how="inner")
    out["post"] = (out["phase"].astype(str) == "post").astype("int64")
    for col in ANALYSIS_COLUMNS:
        if col not in out.columns:
            out[col] = np.nan
    phase_order = out["phase"].map({"pre": 0, "post": 1})
    side_key = out["side"].astype(str)
    out = (out.assign(_phase=phase_order, _side=side_key)
           .sort_values(["patient_id", "session_number", "_side", "_phase"], kind="stable")
           .drop(columns=["_phase", "_side"]))
    return out[list(ANALYSIS_COLUMNS) + list(dict.fromkeys(extra))].reset_index(drop=True)


def _distinct(codes: np.ndarray) -> int:
    """Distinct factorised values, missing (-1) left out."""
    return int(np.count_nonzero(np.bincount(codes[codes >= 0]))) if len(codes) else 0


#: Time scales of the course of care: column of the analysis frame -> unit in words.
TIME_UNITS = {"weeks": "week", "days": "day", "hours": "hour", "session_number": "visit"}


def _hours(s: pd.DataFrame) -> pd.Series:
    """Hours since the patient's first visit, with the time of day when recorded."""
    stamp = s["session_date"]
    if "session_time" in s.columns:
        tod = pd.to_timedelta(s["session_time"])
        stamp = stamp.dt.normalize() + tod  # NaT where a visit has no time
    first = stamp.groupby(s["patient_id"], observed=True).transform("min")
    return (stamp - first).dt.total_seconds().astype("float64") / 3600.0
