"""Build the QI report of one clinic and period: a self-contained HTML file and its tables as CSV.

Each section is built from the study by its own function; every part that can fail (a model on a
tiny site, a chart with too few points) is run through :meth:`_Context.attempt`, which turns a
failure into a visible sentence in that section, a line in the methods section and a logged
warning. Counts below ``min_cell`` are suppressed, identifiers are removed from every text, the
HTML template escapes every value, and CSV text cells cannot start a spreadsheet formula.
"""
from __future__ import annotations

import base64
import datetime as _dt
import io
import logging
import math
import platform
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.measures import get_measure
from mfr_outcomes.report.disclosure import (
    Redactor,
    neutralise_frame,
    suppress_counts,
    suppressed_label,
)
from mfr_outcomes.vocab import TREATMENT_TECHNIQUES
from mfr_outcomes.warnings_ import MfrWarning

__all__ = [
    "build_report",
    "ReportResult",
    "Section",
    "Table",
    "Figure",
    "SECTION_TITLES",
    "parse_period",
]

log = logging.getLogger(__name__)

#: Section key -> title, in report order.
SECTION_TITLES: dict[str, str] = {
    "data_quality": "Data quality",
    "cohort": "Cohort",
    "intervention": "The intervention as delivered",
    "outcomes": "Outcomes",
    "trends": "Trends",
    "adverse_events": "Adverse events",
    "methods": "Methods",
}

_ID_COLUMNS = frozenset({"patient_id", "session_id"})
# "3 patients", "only 2 of ... patients", "1 reading(s)": counts of people or records in a sentence
_SMALL_COUNT = re.compile(
    r"\b(\d+)(\s+(?:of\s+\d+\s+)?(?:patient|session|visit|reading|subject|row|record)s?\b"
    r"(?:\(s\))?)", re.IGNORECASE)

_HEADERS = {
    "ci_low": "95% CI low", "ci_high": "95% CI high", "std_error": "SE", "df": "df",
    "p_value": "p", "statistic": "t", "n": "n", "percent": "%", "per_100": "per 100 sessions",
    "iqr_low": "IQR low", "iqr_high": "IQR high", "pre_n": "pre n", "post_n": "post n",
    "pre_mean": "pre mean", "post_mean": "post mean", "median_minutes": "median minutes",
    "with_event": "sessions with an event", "n_paired": "paired n", "finished_care":
    "finished care", "responder_percent": "responders %", "mean_change": "mean change",
}


# ---------------------------------------------------------------------------------------------
# Result objects


@dataclass
class Table:
    """One table of the report, kept as numbers until it is shown.

    Attributes
    ----------
    name : str
        File stem of its CSV (``<section>_<name>.csv``).
    caption : str
        One line shown above it.
    frame : DataFrame
        The numbers, before suppression; never holds identifiers.
    counts : tuple of str
        Columns holding counts (suppressed below ``min_cell``).
    linked : dict
        Derived column -> count columns it was computed from (suppressed with them).
    partition : str, None or False
        Secondary suppression groups (see :func:`~mfr_outcomes.report.disclosure.suppress_counts`).
    decimals : dict
        Column -> decimals shown in HTML (2 by default).
    shown : DataFrame or None
        The table as published (suppressed, redacted), filled in when the report is written.
    csv_path : Path or None
        Where its CSV was written.
    """

    name: str
    caption: str
    frame: pd.DataFrame
    counts: tuple[str, ...] = ()
    linked: dict[str, tuple[str, ...]] = field(default_factory=dict)
    partition: str | None | bool = False
    decimals: dict[str, int] = field(default_factory=dict)
    note: str = ""
    shown: pd.DataFrame | None = None
    csv_path: Path | None = None


@dataclass
class Figure:
    """A figure embedded as a PNG ``data:`` URI, with its caption and alternative text."""

    caption: str
    alt: str
    data_uri: str


@dataclass
class Section:
    """One section: an ordered list of blocks (paragraphs, tables, figures, problems)."""

    key: str
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def items(self, texts: Sequence[str]) -> None:
        if texts:
            self.blocks.append(("list", list(texts)))

    def table(self, table: Table) -> Table:
        self.blocks.append(("table", table))
        return table

    def figure(self, figure: Figure) -> Figure:
        self.blocks.append(("figure", figure))
        return figure

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.blocks.append(("problem", text))

    @property
    def tables(self) -> list[Table]:
        return [b for kind, b in self.blocks if kind == "table"]

    @property
    def figures(self) -> list[Figure]:
        return [b for kind, b in self.blocks if kind == "figure"]

    @property
    def ok(self) -> bool:
        """True when every part of the section was built."""
        return not self.problems


@dataclass
class ReportResult:
    """What :func:`build_report` wrote.

    Attributes
    ----------
    html_path : Path
        The self-contained HTML report.
    csv_paths : list of Path
        One CSV a table, in report order.
    sections : dict
        Section key -> :class:`Section` (see :data:`SECTION_TITLES`).
    failures : list of str
        Parts that could not be built, one sentence each (also in the methods section).
    cautions : list of str
        Statistical and data cautions raised while building (also in the methods section).
    """

    html_path: Path
    csv_paths: list[Path]
    sections: dict[str, Section]
    failures: list[str] = field(default_factory=list)
    cautions: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Scope: site and period


_QUARTER = re.compile(r"^\s*(\d{4})\s*-?\s*[Qq]([1-4])\s*$")
_MONTH = re.compile(r"^\s*(\d{4})-(\d{1,2})\s*$")


def parse_period(text: str) -> tuple[pd.Timestamp, pd.Timestamp, str]:
    """Read a quarter (``2026Q3``) or a month (``2026-07``).

    Returns
    -------
    (start, end, label)
        ``start`` inclusive and ``end`` exclusive midnights, and the normalised label.

    Raises
    ------
    ValueError
        With a sentence naming the value and the accepted forms.
    """
    s = str(text)
    m = _QUARTER.match(s)
    if m:
        year, q = int(m.group(1)), int(m.group(2))
        start = pd.Timestamp(year, 3 * q - 2, 1)
        return start, start + pd.DateOffset(months=3), f"{year}Q{q}"
    m = _MONTH.match(s)
    if m and 1 <= int(m.group(2)) <= 12:
        year, month = int(m.group(1)), int(m.group(2))
        start = pd.Timestamp(year, month, 1)
        return start, start + pd.DateOffset(months=1), f"{year}-{month:02d}"
    raise ValueError(f"period {text!r} is not a quarter like 2026Q3 or a month like 2026-07")


def _scope(study: Any, site: str | None, period: str | None) -> tuple[Any, str, tuple | None]:
    """The study restricted to one site and one period (sessions dated inside it)."""
    from mfr_outcomes.study import Study

    patients, sessions, measurements = study.patients, study.sessions, study.measurements
    words = []
    if site is not None:
        sites = sorted(set(patients["site_id"].dropna().astype(str)))
        if str(site) not in sites:
            raise ValueError(f"site {site!r} is not in this study; sites present: "
                             f"{', '.join(sites) if sites else 'none'}")
        patients = patients[patients["site_id"].astype(str) == str(site)]
        sessions = sessions[sessions["patient_id"].isin(patients["patient_id"])]
        words.append(f"site {site}")
    else:
        words.append("all sites")
    bounds = None
    if period is not None:
        start, end, label = parse_period(period)
        dates = pd.to_datetime(sessions["session_date"])
        inside = (dates >= start) & (dates < end)
        if not inside.any():
            all_dates = pd.to_datetime(study.sessions["session_date"])
            span = (f"sessions run from {all_dates.min():%Y-%m-%d} to {all_dates.max():%Y-%m-%d}"
                    if len(all_dates) else "there are no sessions")
            where = f" of site {site}" if site is not None else ""
            raise ValueError(f"no sessions{where} in period {label}; {span}")
        sessions = sessions[inside]
        patients = patients[patients["patient_id"].isin(sessions["patient_id"])]
        bounds = (start, end, label)
        words.append(f"sessions from {start:%Y-%m-%d} to {(end - pd.Timedelta(days=1)):%Y-%m-%d}"
                     f" ({label})")
    else:
        words.append("all periods")
    if sessions.empty:
        raise ValueError(f"no sessions in {' and '.join(words)}")
    measurements = measurements[measurements["session_id"].isin(sessions["session_id"])]
    scoped = Study(patients.reset_index(drop=True), sessions.reset_index(drop=True),
                   measurements.reset_index(drop=True), study.report, study.source)
    return scoped, ", ".join(words), bounds


def _trend_scope(study: Any, site: str | None, bounds: tuple | None) -> Any:
    """The site's record up to the end of the report period: the history a QI chart needs."""
    from mfr_outcomes.study import Study

    scoped, _, _ = _scope(study, site, None)
    if bounds is None:
        return scoped
    end = bounds[1]
    s = scoped.sessions[pd.to_datetime(scoped.sessions["session_date"]) < end]
    p = scoped.patients[scoped.patients["patient_id"].isin(s["patient_id"])]
    m = scoped.measurements[scoped.measurements["session_id"].isin(s["session_id"])]
    return Study(p.reset_index(drop=True), s.reset_index(drop=True), m.reset_index(drop=True),
                 study.report, study.source)


# ---------------------------------------------------------------------------------------------
# Formatting


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    try:
        return bool(isinstance(v, float | np.floating) and math.isnan(v))
    except TypeError:
        return False


def _fmt_num(x: float, decimals: int = 2) -> str:
    if _is_missing(x):
        return "–"
    if isinstance(x, int | np.integer):
        return str(int(x))
    return f"{float(x):.{decimals}f}".replace("-", "−")


def _fmt_p(p: float) -> str:
    if _is_missing(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _fmt_cell(value: Any, column: str, decimals: dict[str, int]) -> str:
    if _is_missing(value):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, pd.Timestamp | _dt.date):
        return f"{value:%Y-%m-%d}"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if column in ("p_value", "p"):
            return _fmt_p(float(value))
        return _fmt_num(float(value), decimals.get(column, 2))
    return str(value)


def _header(column: str) -> str:
    return _HEADERS.get(column, column.replace("_", " "))


def _label(value: Any) -> str:
    """A category code as people read it ("direct_pressure" -> "direct pressure")."""
    return str(value).replace("_", " ")


def _sentence(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:  # KeyError quotes its message
        text = str(exc.args[0]).strip()
    else:
        text = str(exc).strip() or type(exc).__name__
    text = " ".join(text.split())
    if len(text) > 300:
        text = text[:297] + "…"
    return text if text.endswith((".", "!", "?")) else text + "."


# ---------------------------------------------------------------------------------------------
# Figures


def _png_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _draw(draw: Callable[[Any], Any], size: tuple[float, float] = (7.5, 3.6)) -> str:
    """Draw on a fresh Axes of a pyplot-free Figure (no global state) and return its data URI."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=size, layout="constrained")
    ax = fig.subplots()
    draw(ax)
    return _png_uri(fig)


def _axes_uri(ax: Any) -> str:
    """Data URI of the figure holding *ax* (as returned by :mod:`mfr_outcomes.plots`); closes it."""
    fig = ax.figure if hasattr(ax, "figure") else ax
    try:
        return _png_uri(fig)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The context shared by section builders


class _Context:
    def __init__(self, full: Any, study: Any, *, measure: str, min_cell: int, seed: int,
                 site: str | None, period: tuple | None, scope_text: str) -> None:
        self.full = full
        self.study = study
        self.measure = measure
        self.m = get_measure(measure)
        self.min_cell = min_cell
        self.seed = seed
        self.site = site
        self.period = period
        self.scope_text = scope_text
        self.failures: list[str] = []
        self.cautions: list[str] = []
        self.fits: dict[str, Any] = {}
        self._seen: set[str] = set()
        self.gee: tuple | None = None
        ids: list[Any] = []
        for frame, cols in ((full.patients, ["patient_id"]),
                            (full.sessions, ["patient_id", "session_id"]),
                            (full.measurements, ["session_id"])):
            for c in cols:
                if c in frame.columns:
                    ids.extend(frame[c].dropna().astype(str).unique())
        for f in getattr(full.report, "findings", []):
            if f.column in _ID_COLUMNS and f.value is not None:
                ids.append(f.value)
        self.redactor = Redactor(ids)
        self._treatment_mask = study.sessions["technique"].astype(str).isin(TREATMENT_TECHNIQUES)
        self.trend_study = study

    # counts in prose follow the same rule as counts in tables
    def n(self, count: int | float) -> str:
        if _is_missing(count):
            return "–"
        count = int(count)
        return suppressed_label(self.min_cell) if count < self.min_cell else str(count)

    def safe(self, text: str) -> str:
        """*text* (a caution or an error from a library) without identifiers or small counts of
        people, sessions or readings."""
        text = self.redactor.text(text)
        return _SMALL_COUNT.sub(
            lambda mt: (suppressed_label(self.min_cell) + mt.group(2))
            if int(mt.group(1)) < self.min_cell else mt.group(0), text)

    def pct(self, part: int, whole: int) -> str:
        if whole <= 0 or part < self.min_cell or whole < self.min_cell:
            return ""
        return f" ({100.0 * part / whole:.0f} %)"

    @property
    def treatment_sessions(self) -> pd.DataFrame:
        return self.study.sessions[self._treatment_mask]

    def attempt(self, section: Section, what: str, fn: Callable[..., Any], *args: Any,
                **kwargs: Any) -> Any:
        """Run one part; on failure show a sentence, record it and log a warning."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                value = fn(*args, **kwargs)
            except Exception as exc:  # a part must never take the whole report down
                reason = self.safe(_sentence(exc))
                sentence = f"{what} could not be produced: {reason}"
                section.problem(sentence)
                self.failures.append(f"{section.title} — {sentence}")
                log.warning("QI report: %s", sentence)
                value = None
        for w in caught:
            if issubclass(w.category, MfrWarning) or "Convergence" in w.category.__name__:
                raw = " ".join(str(w.message).split())
                if raw not in self._seen:  # nested attempts see the same warning again
                    self._seen.add(raw)
                    self.cautions.append(self.safe(f"{what}: {raw}"))
            # pass every warning on to the caller, from where it was raised
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return value

    def fit_label(self, name: str, fit: Any) -> None:
        self.fits[name] = fit
        diag = getattr(fit, "diagnostics", None) or {}
        for text in diag.get("warnings", []) if isinstance(diag, dict) else []:
            raw = " ".join(str(text).split())
            if raw not in self._seen:
                self._seen.add(raw)
                self.cautions.append(self.safe(f"{name}: {raw}"))


# ---------------------------------------------------------------------------------------------
# Sections


def _data_quality(ctx: _Context, sec: Section) -> None:
    rep = ctx.full.report
    n_find = len(rep.findings)
    sec.para(
        f"Every row of the source was checked against the data model (required columns, types, "
        f"valid ranges, vocabularies, keys, dates and the pairing of pre and post readings) before "
        f"any analysis. The checks cover the whole source, not only the site and period of this "
        f"report. They found {n_find} problem(s); rows that could not be used were excluded and "
        f"counted, none was dropped silently.")
    summary = rep.summary()
    sec.table(Table(
        "row_accounting", "Rows read, used and excluded per table (read = used + excluded).",
        summary, counts=("read", "used", "excluded", "findings", "cautions")))
    if n_find:
        frame = rep.to_frame()
        by_rule = (frame.groupby(["table", "rule", "action"], sort=False, observed=True)
                   .size().rename("n").reset_index())
        by_rule["rule"] = by_rule["rule"].map(_label)
        sec.table(Table("findings_by_rule", "Findings by table and rule.", by_rule,
                        counts=("n",)))
        shown = frame.head(200).copy()
        shown["value"] = [ctx.redactor.replacement if (c in _ID_COLUMNS or v in ctx.redactor)
                          else v for c, v in zip(shown["column"], shown["value"])]
        shown["message"] = [
            _finding_sentence(row) if row["column"] in _ID_COLUMNS else row["message"]
            for _, row in shown.iterrows()]
        shown = shown[["table", "file", "line", "column", "value", "action", "message"]]
        caption = "Findings, one sentence each"
        if len(frame) > 200:
            caption += f" (first 200 of {len(frame)}; all are in the validation report)"
        sec.table(Table("findings", caption + ".", shown))
    else:
        sec.para("No problems were found: every row was used.")


def _finding_sentence(row: pd.Series) -> str:
    # text files number lines; sheets, database tables and frames number rows (as the loader says)
    unit = "line" if str(row["file"]).lower().endswith((".csv", ".txt", ".tsv")) else "row"
    where = (f"{row['file']} {unit} {row['line']}" if not _is_missing(row["line"])
             else str(row["file"]))
    return (f"{where}: {row['column']} ({_label(row['rule'])}); identifier withheld; "
            f"row {row['action']}.")


def _first_sessions(ctx: _Context) -> pd.DataFrame:
    s = ctx.study.sessions.sort_values(["patient_id", "session_date", "session_number"],
                                       kind="stable")
    return s.groupby("patient_id", observed=True).head(1)


def _cohort(ctx: _Context, sec: Section) -> None:
    st = ctx.study
    acc = getattr(ctx.full.report, "accounting", {}).get("patients")
    tx = ctx.treatment_sessions
    sessions = st.sessions
    frame = None
    try:
        frame = st.frame(ctx.measure)
    except (KeyError, ValueError):
        frame = None
    paired = 0
    two_plus = tx.groupby("patient_id", observed=True).size()
    if frame is not None and not frame.empty:
        ph = frame.groupby(["patient_id", "session_id"], observed=True)["post"].agg(["min", "max"])
        paired = ph[(ph["min"] == 0) & (ph["max"] == 1)].reset_index()["patient_id"].nunique()
    follow = sessions[sessions["technique"].astype(str) == "none"]
    last_tx = tx.groupby("patient_id", observed=True)["session_date"].min()
    after = follow.merge(last_tx.rename("first_tx"), left_on="patient_id", right_index=True)
    with_follow = after.loc[after["session_date"] > after["first_tx"], "patient_id"].nunique()
    rows = []
    if acc is not None:
        rows.append(("Patient rows in the source", acc.read, np.nan))
        rows.append(("Excluded at validation", acc.excluded, np.nan))
        rows.append(("Valid patients in the source", acc.used, len(ctx.full.sessions)))
    rows += [
        (f"With a visit in scope ({ctx.scope_text})", st.patients["patient_id"].nunique(),
         len(sessions)),
        ("With at least one treatment session", tx["patient_id"].nunique(), len(tx)),
        (f"With paired pre and post {ctx.m.label} readings", paired, np.nan),
        ("With two or more treatment sessions", int((two_plus >= 2).sum()), np.nan),
        ("With a follow-up assessment after treatment began", with_follow, len(follow)),
    ]
    flow = pd.DataFrame(rows, columns=["stage", "patients", "sessions"])
    sec.para(
        "Numbers of patients at each stage, as STROBE asks (von Elm et al. 2007, item 13): from "
        "the rows in the source, through validation and the scope of this report, to the "
        "patients who contribute to each analysis.")
    sec.table(Table("flow", "Patients (and visits) at each stage.", flow,
                    counts=("patients", "sessions")))
    sec.para(
        "Baseline characteristics at each patient's first visit in scope (STROBE item 14): "
        "numbers with percentages for categories, mean (SD) or median (IQR) for measurements, "
        "and the number missing for each.")
    sec.table(Table("baseline", "Baseline characteristics.", _baseline(ctx),
                    counts=("n",), linked={"percent": ("n",), "summary": ("n",)},
                    partition="characteristic", decimals={"percent": 0}))


def _baseline(ctx: _Context) -> pd.DataFrame:
    p = ctx.study.patients
    total = len(p)
    rows: list[dict[str, Any]] = [{"characteristic": "Patients", "category": "", "n": total,
                                   "percent": np.nan, "summary": ""}]

    def continuous(name: str, values: pd.Series, kind: str, decimals: int = 1) -> None:
        v = pd.to_numeric(values, errors="coerce").astype("float64")
        ok = v.dropna()
        if kind == "mean":
            text = (f"mean {ok.mean():.{decimals}f} (SD {ok.std(ddof=1):.{decimals}f})"
                    if len(ok) > 1 else "")
        else:
            text = (f"median {ok.median():.{decimals}f} (IQR {ok.quantile(.25):.{decimals}f}–"
                    f"{ok.quantile(.75):.{decimals}f})" if len(ok) else "")
        rows.append({"characteristic": name, "category": "recorded", "n": len(ok),
                     "percent": 100.0 * len(ok) / len(v) if len(v) else np.nan, "summary": text})
        rows.append({"characteristic": name, "category": "missing", "n": int(v.isna().sum()),
                     "percent": 100.0 * v.isna().sum() / len(v) if len(v) else np.nan,
                     "summary": ""})

    def categorical(name: str, values: pd.Series) -> None:
        text = values.astype(object).where(values.notna(), None)
        counts = text.value_counts(dropna=True)
        if isinstance(values.dtype, pd.CategoricalDtype):
            order = [c for c in values.cat.categories if c in counts.index]
        else:
            order = list(counts.index)
        for cat in order:
            rows.append({"characteristic": name, "category": _label(cat), "n": int(counts[cat]),
                         "percent": 100.0 * counts[cat] / len(values), "summary": ""})
        rows.append({"characteristic": name, "category": "missing",
                     "n": int(text.isna().sum()),
                     "percent": 100.0 * text.isna().sum() / len(values) if len(values) else np.nan,
                     "summary": ""})

    if "age_years" in p:
        continuous("Age (years)", p["age_years"], "mean")
    for col, name in (("sex", "Sex"), ("condition", "Condition"),
                      ("affected_side", "Affected side")):
        if col in p:
            categorical(name, p[col])
    if "symptom_weeks" in p:
        continuous("Symptom duration (weeks)", p["symptom_weeks"], "median")
    if "site_id" in p and p["site_id"].nunique() > 1:
        categorical("Site", p["site_id"])
    for code in dict.fromkeys([ctx.measure, "odi"]):
        if code not in ctx.study.measures:
            continue
        base = _baseline_values(ctx, code)
        values = p[["patient_id"]].merge(base, on="patient_id", how="left")["value"]
        m = get_measure(code)
        if m.binary:
            categorical(f"{m.label} at first visit", values.map({0.0: "absent", 1.0: "present"}))
        else:
            continuous(f"{m.label} at first visit ({m.unit})", values, "mean")
    return pd.DataFrame(rows, columns=["characteristic", "category", "n", "percent", "summary"])


def _baseline_values(ctx: _Context, code: str) -> pd.DataFrame:
    """Each patient's first pre reading of *code* (mean over sides)."""
    f = ctx.study.frame(code)
    f = f[f["post"] == 0]
    first = f.groupby("patient_id", observed=True)["session_number"].transform("min")
    f = f[f["session_number"] == first]
    return f.groupby("patient_id", observed=True)["value"].mean().rename("value").reset_index()


def _intervention(ctx: _Context, sec: Section) -> None:
    tx = ctx.treatment_sessions.copy()
    n_tx = len(tx)
    n_therapists = tx["therapist_id"].nunique()
    sec.para(
        "What was delivered, in the terms of the TIDieR checklist (Hoffmann et al. BMJ "
        "2014;348:g1687): what procedures (technique and body region), who provided them, how "
        "much (sessions, minutes, weeks), and the home programme given alongside. These are the "
        "sessions as recorded, not as planned: assessment-only visits (technique 'none') are "
        "left out.")
    if n_tx == 0:
        sec.para("There are no treatment sessions in scope.")
        return
    sec.para(
        f"Why: myofascial release aims to reduce pain and restore movement in sciatica and hip "
        f"pain by direct pressure on trigger points, stretching and massage. Who and where: "
        f"{n_therapists} therapist(s) delivered {ctx.n(n_tx)} treatment sessions to "
        f"{ctx.n(tx['patient_id'].nunique())} patients, face to face, at "
        f"{ctx.study.patients['site_id'].nunique()} site(s).")

    def by(col: str, name: str) -> pd.DataFrame:
        vals = tx[col].astype(object).where(tx[col].notna(), "not recorded")
        g = tx.assign(_k=vals.map(_label)).groupby("_k", sort=False)
        out = pd.DataFrame({
            name: g.size().index,
            "sessions": g.size().to_numpy(),
            "patients": g["patient_id"].nunique().to_numpy(),
            "median_minutes": g["duration_min"].median().to_numpy(),
        })
        out["percent"] = 100.0 * out["sessions"] / n_tx
        order = {(_label(c)): i for i, c in enumerate(
            list(tx[col].cat.categories) if isinstance(tx[col].dtype, pd.CategoricalDtype) else [])}
        out = out.assign(_o=out[name].map(lambda x: order.get(x, 99))).sort_values("_o")
        return out.drop(columns="_o")[[name, "sessions", "percent", "patients", "median_minutes"]]

    sec.heading("What: techniques and regions")
    techniques = by("technique", "technique")
    sec.table(Table("techniques", "Treatment sessions by technique.", techniques,
                    counts=("sessions", "patients"),
                    linked={"percent": ("sessions",), "median_minutes": ("sessions",)},
                    partition=None, decimals={"percent": 0, "median_minutes": 0}))
    if "target_region" in tx:
        sec.table(Table("regions", "Treatment sessions by target region.",
                        by("target_region", "target_region"), counts=("sessions", "patients"),
                        linked={"percent": ("sessions",), "median_minutes": ("sessions",)},
                        partition=None, decimals={"percent": 0, "median_minutes": 0}))
    ctx.attempt(sec, "The figure of sessions by technique", _technique_figure, ctx, sec, techniques)

    sec.heading("How much: dose")
    per_patient = tx.groupby("patient_id", observed=True).agg(
        sessions=("session_id", "size"), first=("session_date", "min"),
        last=("session_date", "max"), techniques=("technique", "nunique"))
    weeks = (pd.to_datetime(per_patient["last"]) - pd.to_datetime(per_patient["first"])).dt.days / 7
    rows = [
        _dose_row("Treatment sessions per patient", per_patient["sessions"], "patients"),
        _dose_row("Weeks from first to last treatment", weeks, "patients"),
        _dose_row("Minutes per session", tx["duration_min"], "sessions"),
        _dose_row("Distinct techniques per patient (tailoring)", per_patient["techniques"],
                  "patients"),
    ]
    if "home_program" in tx:
        hp = tx["home_program"].astype("boolean")
        given = int(hp.fillna(False).sum())
        recorded = int(hp.notna().sum())
        rows.append({"item": "Sessions with a home exercise programme", "unit": "sessions",
                     "n": given, "percent": 100.0 * given / recorded if recorded else np.nan,
                     "median": np.nan, "iqr_low": np.nan, "iqr_high": np.nan})
        ever = tx.assign(_h=hp.fillna(False)).groupby("patient_id", observed=True)["_h"].any()
        rows.append({"item": "Patients ever given a home programme", "unit": "patients",
                     "n": int(ever.sum()), "percent": 100.0 * ever.mean() if len(ever) else np.nan,
                     "median": np.nan, "iqr_low": np.nan, "iqr_high": np.nan})
    dose = pd.DataFrame(rows, columns=["item", "unit", "n", "percent", "median", "iqr_low",
                                       "iqr_high"])
    sec.table(Table("dose", "How much, and the home programme (a co-intervention).", dose,
                    counts=("n",), linked={c: ("n",) for c in ("percent", "median", "iqr_low",
                                                               "iqr_high")},
                    decimals={"percent": 0, "median": 1, "iqr_low": 1, "iqr_high": 1}))
    sec.para("n is the number of patients or sessions the row describes (its unit); a median of "
             "a handful of values is suppressed with its count.")

    sec.heading("Who provided: therapists")
    th = tx.groupby("therapist_id", observed=True).agg(
        sessions=("session_id", "size"), patients=("patient_id", "nunique")).reset_index()
    th = th.rename(columns={"therapist_id": "therapist"}).sort_values("therapist")
    sec.table(Table("therapists", "Treatment sessions and patients per therapist.", th,
                    counts=("sessions", "patients"), partition=None))
    sec.para("How well (fidelity) cannot be judged from visit records alone: these tables show "
             "what was recorded, not whether each technique followed its protocol.")


def _dose_row(item: str, values: pd.Series, unit: str) -> dict[str, Any]:
    v = pd.to_numeric(values, errors="coerce").dropna().astype("float64")
    return {"item": item, "unit": unit, "n": len(v), "percent": np.nan,
            "median": v.median() if len(v) else np.nan,
            "iqr_low": v.quantile(0.25) if len(v) else np.nan,
            "iqr_high": v.quantile(0.75) if len(v) else np.nan}


def _technique_figure(ctx: _Context, sec: Section, techniques: pd.DataFrame) -> None:
    # draw only what the published table shows (after secondary suppression too)
    published = suppress_counts(techniques, ["sessions"], ctx.min_cell, partition=None)
    visible = published["sessions"].map(lambda v: not isinstance(v, str)).astype(bool)
    shown = techniques[visible.to_numpy()]
    if shown.empty:
        sec.para(f"No technique reached {ctx.min_cell} sessions, so no figure is drawn.")
        return

    def draw(ax: Any) -> None:
        ax.barh(shown["technique"], shown["sessions"], color="#4C72B0")
        ax.invert_yaxis()
        ax.set_xlabel("treatment sessions")
        ax.set_title("Sessions by technique")
        for y, v in enumerate(shown["sessions"]):
            ax.annotate(str(int(v)), (v, y), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=8)

    sec.figure(Figure(
        "Treatment sessions by technique (techniques whose count is suppressed in the table "
        "are left out).",
        "Horizontal bar chart of the number of treatment sessions of each technique.",
        _draw(draw, (7.5, 0.5 + 0.45 * len(shown)))))


def _outcomes(ctx: _Context, sec: Section) -> None:
    m = ctx.m
    threshold = m.threshold_points
    which = "MCID" if m.mcid_points is not None else "MDC"
    if m.binary:
        sec.para(f"Main outcome: {m.label}, a yes/no reading ({m.better} is better). Results "
                 f"are odds ratios; there is no minimal important change for a yes/no reading.")
        sec.heading("Readings by measure")
        ctx.attempt(sec, "The summary of readings", _readings_table, ctx, sec)
        sec.heading(f"Odds of {m.label.lower()} over the course of care")
        ctx.attempt(sec, "The GEE model", _paresthesia, ctx, sec)
        return
    if threshold is not None:
        crit = f"the {which} of {threshold:g} {m.unit}"
        if m.mcid_percent is not None:
            crit += f" or {m.mcid_percent:g} % of baseline"
        crit_text = f"An important change is {crit} ({m.source})."
    else:
        crit_text = (f"No minimal important change is published for {m.label} ({m.source}), "
                     f"so changes are reported without one.")
    sec.para(f"Main outcome: {m.label} ({m.unit}; {m.better} is better). {crit_text}")
    sec.heading("Readings by measure")
    ctx.attempt(sec, "The summary of readings", _readings_table, ctx, sec)
    sec.heading(f"Within-session change of {m.label} (pre → post)")
    ctx.attempt(sec, "The pre/post mixed model", _prepost, ctx, sec)
    sec.heading("Course of care")
    ctx.attempt(sec, "The course-of-care model", _course, ctx, sec)
    sec.heading("Responders")
    ctx.attempt(sec, "The responder analysis", _responders, ctx, sec)
    if "odi" in ctx.study.measures:
        sec.heading("Disability: baseline, discharge and follow-up")
        ctx.attempt(sec, "The follow-up model of the Oswestry Disability Index", _followup,
                    ctx, sec)


def _readings_table(ctx: _Context, sec: Section) -> None:
    summary = ctx.study.summary() if hasattr(ctx.study, "summary") else None
    if summary is None or summary.empty:
        sec.para("There are no readings in scope.")
        return
    summary = summary.copy()
    summary.insert(1, "label", [get_measure(c).label if _registered(c) else c
                                for c in summary["measure"]])
    sec.table(Table("readings", "Readings in scope by measure (pre and post each session; raw "
                    "means, not model estimates).", summary,
                    counts=("patients", "sessions", "readings", "pre_n", "post_n"),
                    linked={"pre_mean": ("pre_n",), "post_mean": ("post_n",)}))


def _registered(code: str) -> bool:
    try:
        get_measure(code)
    except KeyError:
        return False
    return True


_TIDY = ["estimate", "std_error", "df", "statistic", "p_value", "ci_low", "ci_high"]


def _tidy(frame: pd.DataFrame, keep: Sequence[str]) -> pd.DataFrame:
    cols = [c for c in keep if c in frame.columns] + [c for c in _TIDY if c in frame.columns]
    return frame[cols].reset_index(drop=True)


def _prepost(ctx: _Context, sec: Section) -> None:
    from mfr_outcomes.models.domain import fit_prepost

    m = ctx.m
    if not (ctx.study.frame(ctx.measure)["post"] == 1).any():
        sec.para(f"{m.label} is not measured after sessions, so there is no within-session "
                 f"change to estimate; see the course of care and follow-up below.")
        return
    fit = fit_prepost(ctx.study, ctx.measure, by="technique")
    if isinstance(fit, dict):  # one fit a side
        fit = next(iter(fit.values()))
    ctx.fit_label("Pre/post (within session)", fit)
    con = fit.contrasts("post", by="technique")
    label_col = "technique" if "technique" in con.columns else None
    frame = ctx.study.frame(ctx.measure)
    frame = frame[frame["technique"].astype(str).isin(TREATMENT_TECHNIQUES)]
    counts = frame.groupby(frame["technique"].astype(str), observed=True).agg(
        patients=("patient_id", "nunique"), sessions=("session_id", "nunique"))
    table = _tidy(con, [label_col] if label_col else ["contrast"])
    if label_col:
        table = table.merge(counts, left_on=label_col, right_index=True, how="left")
        table[label_col] = table[label_col].map(_label)
    sec.para(
        f"A linear mixed model of each reading, with a random intercept and a random pre→post "
        f"change per patient (repeated sessions of one patient are not independent), estimates "
        f"the mean change from before to after a session for each technique. Estimates are "
        f"post − pre in {m.unit}; 95 % confidence intervals use Satterthwaite degrees of freedom. "
        f"These are immediate, within-session changes, not lasting effects, and techniques were "
        f"not randomised: differences between techniques may reflect which patients got them.")
    sec.table(Table("prepost", f"Change in {m.label} from before to after a session (post − "
                    f"pre), by technique.", table, counts=("patients", "sessions"),
                    linked={c: ("patients",) for c in _TIDY}))
    sentences = []
    for _, row in table.iterrows():
        if _is_missing(row.get("patients")) or row.get("patients", 0) < ctx.min_cell:
            continue
        name = row[label_col] if label_col else row.get("contrast", "")
        est, lo, hi = row["estimate"], row.get("ci_low"), row.get("ci_high")
        text = (f"{name}: {_fmt_num(est)} {m.unit} (95 % CI {_fmt_num(lo)} to {_fmt_num(hi)})")
        if m.threshold_points is not None and not _is_missing(lo):
            gain_lo = min(m.improvement(lo), m.improvement(hi))
            gain_hi = max(m.improvement(lo), m.improvement(hi))
            t = m.threshold_points
            if gain_lo >= t:
                text += f", the whole interval beyond the important change of {t:g}"
            elif gain_hi < t:
                text += f", the whole interval short of the important change of {t:g}"
            else:
                text += f", the interval includes the important change of {t:g}"
        sentences.append(text + ".")
    sec.items(sentences)
    _forest(ctx, sec, table, label_col)


def _forest(ctx: _Context, sec: Section, table: pd.DataFrame, label_col: str | None) -> None:
    rows = table[[not (_is_missing(p) or p < ctx.min_cell) for p in table.get(
        "patients", pd.Series([ctx.min_cell] * len(table)))]]
    if rows.empty or "ci_low" not in rows:
        return
    m = ctx.m
    names = rows[label_col] if label_col else rows.get("contrast", rows.index.astype(str))

    def draw(ax: Any) -> None:
        y = np.arange(len(rows))
        ax.errorbar(rows["estimate"], y, xerr=[rows["estimate"] - rows["ci_low"],
                                               rows["ci_high"] - rows["estimate"]],
                    fmt="o", color="#4C72B0", capsize=3)
        ax.set_yticks(y, list(names))
        ax.invert_yaxis()
        ax.axvline(0, color="grey", lw=1)
        if m.threshold_points is not None:
            sign = -1 if m.better == "lower" else 1
            ax.axvline(sign * m.threshold_points, color="#C44E52", ls="--", lw=1,
                       label=f"important change ({sign * m.threshold_points:g})")
            ax.legend(loc="best", fontsize=8, frameon=False)
        ax.set_xlabel(f"post − pre, {m.axis_label}")
        ax.set_title(f"Within-session change of {m.label}")

    sec.figure(Figure(
        "Estimated change from before to after a session, by technique, with 95 % CIs; the "
        "dashed line marks the important change, the grey line no change.",
        f"Forest plot of the pre to post change in {m.label} for each technique.",
        _draw(draw, (7.5, 1.0 + 0.5 * len(rows)))))


def _paresthesia(ctx: _Context, sec: Section) -> None:
    from mfr_outcomes import effects

    table = effects.paresthesia_gee(ctx.study, measure=ctx.measure)
    sec.para(f"{ctx.m.label} is a yes/no reading, so the pre-session readings are modelled by a "
             f"logistic GEE with patients as clusters (exchangeable working correlation, robust "
             f"standard errors) rather than a linear mixed model: technique and weeks since the "
             f"first visit as terms. Odds ratios below 1 mean lower odds; the 95 % interval is "
             f"that of the odds ratio. Techniques were not randomised.")
    cols = [c for c in ("term", "odds_ratio", "ci_low", "ci_high", "statistic", "p_value")
            if c in table.columns]
    formula = table.attrs.get("formula", "")
    sec.table(Table("paresthesia_gee", f"Logistic GEE of numbness or tingling ({formula}).",
                    table[cols].reset_index(drop=True)))
    n_clusters = table.attrs.get("n_clusters")
    if n_clusters is not None:
        ctx.gee = (formula, table.attrs.get("n_obs"), n_clusters)


def _course(ctx: _Context, sec: Section) -> None:
    from mfr_outcomes.models.domain import fit_course

    m = ctx.m
    fit = fit_course(ctx.study, ctx.measure, time="weeks")
    if isinstance(fit, dict):
        fit = next(iter(fit.values()))
    ctx.fit_label("Course of care", fit)
    fe = _tidy(fit.fixed_effects, ["term"])
    sec.para(
        "Pre-session readings across the course of care, modelled against weeks since each "
        "patient's first visit with a random intercept and slope per patient. The mixed model "
        "uses every available reading and is valid when missing visits depend only on what "
        "was observed (missing at random); patients who stop early because they improved or "
        "worsened for unrecorded reasons would bias it.")
    sec.table(Table("course", f"Fixed effects of the course-of-care model ({fit.formula}).", fe))
    slope = fe[fe["term"].astype(str).str.contains("weeks") & ~fe["term"].astype(str).str.contains(":")]
    if len(slope):
        r = slope.iloc[0]
        sec.para(f"On average {m.label} changed by {_fmt_num(r['estimate'])} {m.unit} a week "
                 f"(95 % CI {_fmt_num(r.get('ci_low'))} to {_fmt_num(r.get('ci_high'))}).")
    ctx.attempt(sec, "The course-of-care figure", _course_figure, ctx, sec)


def _course_figure(ctx: _Context, sec: Section) -> None:
    f = ctx.study.frame(ctx.measure)
    g = f.groupby(["session_number", "post"], observed=True).agg(
        mean=("value", "mean"), patients=("patient_id", "nunique")).reset_index()
    g = g[g["patients"] >= ctx.min_cell]
    if g.empty:
        return
    m = ctx.m

    def draw(ax: Any) -> None:
        for post, style, name in ((0, "o-", "before session"), (1, "s--", "after session")):
            sub = g[g["post"] == post]
            if len(sub):
                ax.plot(sub["session_number"], sub["mean"], style, label=name)
        ax.set_xlabel("session number")
        ax.set_ylabel(m.axis_label)
        ax.set_title(f"Mean {m.label} by session")
        ax.legend(frameon=False, fontsize=8)

    sec.figure(Figure(
        f"Raw mean {m.label} before and after each session, by session number (points with "
        f"fewer than {ctx.min_cell} patients are left out). Later sessions hold only the "
        f"patients still attending.",
        f"Line chart of mean {m.label} by session number, before and after the session.",
        _draw(draw)))


def _responders(ctx: _Context, sec: Section) -> None:
    from mfr_outcomes import effects

    m = ctx.m
    if m.binary or (m.threshold_points is None and m.mcid_percent is None):
        sec.para(f"{m.label} has no published important change, so patients are not classed "
                 f"as responders.")
        return
    resp = effects.responders(ctx.study, ctx.measure)
    rows = [effects.responder_rate(resp).assign(group="all patients")]
    if "technique" in resp.columns:
        by = effects.responder_rate(resp, by="technique")
        by["group"] = [f"mainly {_label(t)}" for t in by["technique"]]
        rows.append(by)
    table = pd.concat(rows, ignore_index=True)
    table = table.rename(columns={"n": "patients", "rate": "percent"})
    for col in ("percent", "ci_low", "ci_high"):
        table[col] = 100.0 * table[col].astype("float64")
    table = table[["group", "patients", "responders", "percent", "ci_low", "ci_high"]]
    what = [f"at least {m.threshold_points:g} {m.unit}"] if m.threshold_points is not None else []
    if m.mcid_percent is not None:
        what.append(f"{m.mcid_percent:g} % of baseline")
    sec.para(
        f"A responder is a patient whose {m.label} improved from the first pre-session reading "
        f"to the latest by {' or '.join(what)} ({m.source}). Percentages carry Wilson 95 % "
        f"intervals; patients with a single reading cannot be classed and are left out. "
        f"Patients are grouped by the technique they received most often.")
    sec.table(Table("responders", "Responders against the important change.", table,
                    counts=("patients", "responders"),
                    linked={"percent": ("patients", "responders"),
                            "ci_low": ("patients", "responders"),
                            "ci_high": ("patients", "responders")},
                    decimals={"percent": 0, "ci_low": 0, "ci_high": 0}))
    overall = table.iloc[0]
    if overall["patients"] >= ctx.min_cell and overall["responders"] >= ctx.min_cell:
        sec.para(f"Overall {overall['percent']:.0f} % of patients responded (95 % CI "
                 f"{overall['ci_low']:.0f} to {overall['ci_high']:.0f} %).")


def _followup(ctx: _Context, sec: Section) -> None:
    from mfr_outcomes.models.domain import fit_followup

    code = "odi"
    m = get_measure(code)
    fit = fit_followup(ctx.study, code)
    if isinstance(fit, dict):
        fit = next(iter(fit.values()))
    ctx.fit_label("Follow-up (ODI)", fit)
    em = fit.emmeans("stage")
    frame = ctx.study.frame(code)
    sec.para(
        f"{m.label} is recorded at the first treatment visit, at the last treatment visit "
        f"(discharge) and at an assessment-only follow-up visit. A mixed model with a random "
        f"intercept per patient gives the mean at each stage; patients missing a stage still "
        f"count (missing at random). The important change is {m.threshold_points:g} points "
        f"or {m.mcid_percent:g} % ({m.source}).")
    del frame
    keep = [c for c in ("stage", "emmean", "estimate", "std_error", "df", "ci_low", "ci_high")
            if c in em.columns]
    table = em[keep].copy()
    table["stage"] = table["stage"].map(_label)
    sec.table(Table("followup", f"Estimated mean {m.label} at each stage.", table))


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _trends(ctx: _Context, sec: Section) -> None:
    m = ctx.m
    window = "up to the end of the report period" if ctx.period else "over the whole record"
    sec.para(
        f"Run charts and statistical process control (SPC) charts show whether care is stable "
        f"over time or shows a signal of change. They need many time points, so they use each "
        f"calendar month of the scope's site(s) {window}. Run charts use the median and Anhøj's "
        f"rules; XmR and p-charts use the Making Data Count rules (NHS England 2019). Each "
        f"signal is explained in a sentence below its chart; a chart without a signal shows "
        f"only common-cause variation, which is not the same as good performance. To protect "
        f"privacy, a month is left out of a chart (a gap) when it has fewer than "
        f"{ctx.min_cell} patients or readings, or, for a proportion, fewer than {ctx.min_cell} "
        f"events counted in it.")
    from mfr_outcomes import qi

    agg = qi.aggregate(ctx.trend_study, ctx.measure, period="month")
    agg = agg.copy()
    agg["month"] = agg["period"].astype(str)
    hide = ctx.min_cell
    enough = agg["n_patients"] >= hide
    mean_pre = agg["mean_pre"].where((agg["n_pre"] >= hide) & enough)
    mean_change = agg["mean_change"].where((agg["n_paired"] >= hide) & enough)
    table = agg[["month", "n_patients", "n_sessions", "n_pre", "mean_pre", "n_paired",
                 "mean_change", "n_completed", "n_responders", "responder_rate"]].copy()
    table["responder_rate"] = 100.0 * table["responder_rate"]
    table = table.rename(columns={"responder_rate": "responder_percent", "n_patients": "patients",
                                  "n_sessions": "sessions", "n_completed": "finished_care",
                                  "n_responders": "responders"})
    table["responders"] = table["responders"].astype("float64")
    sec.table(Table("monthly", f"{m.label} by calendar month.", table,
                    counts=("patients", "sessions", "n_pre", "n_paired", "finished_care",
                            "responders"),
                    linked={"mean_pre": ("n_pre", "patients"),
                            "mean_change": ("n_paired", "patients"),
                            "responder_percent": ("finished_care", "responders")},
                    decimals={"responder_percent": 0}))
    labels = agg["month"].tolist()

    sec.heading(f"Run chart: {m.label} before sessions")
    ctx.attempt(sec, "The run chart", _chart_block, ctx, sec,
                lambda: qi.run_chart(mean_pre.to_numpy(), labels, measure=ctx.measure),
                agg, f"Monthly mean {m.label} before the session", m.axis_label,
                f"Run chart of the monthly mean {m.label} before sessions, with its median.")
    sec.heading(f"XmR chart: within-session change of {m.label}")
    ctx.attempt(sec, "The XmR chart", _chart_block, ctx, sec,
                lambda: qi.xmr_chart(mean_change.to_numpy(), labels, measure=ctx.measure),
                agg, f"Monthly mean change of {m.label} within sessions (post − pre)",
                f"post − pre ({m.unit})",
                f"XmR chart of the monthly mean within-session change in {m.label}, with its "
                f"mean and natural process limits.")
    if m.threshold_points is not None or m.mcid_percent is not None:
        sec.heading("p-chart: responders among patients finishing care")
        # a proportion with a known denominator reveals its count: hide it like the table does
        ok = (agg["n_completed"] >= hide) & (agg["n_responders"].astype("float64") >= hide)
        succ = agg["n_responders"].astype("float64").where(ok)
        tot = agg["n_completed"].astype("float64").where(ok)
        ctx.attempt(sec, "The responder p-chart", _chart_block, ctx, sec,
                    lambda: qi.p_chart(succ.to_numpy(), tot.to_numpy(), labels, better="higher",
                                       what="responders"),
                    agg, "Responders among patients whose last visit fell in the month",
                    "proportion of responders",
                    "p-chart of the monthly proportion of responders, with limits that widen "
                    "in months with fewer patients.")
    sec.heading("p-chart: sessions with an adverse event")
    ctx.attempt(sec, "The adverse-event p-chart", _ae_chart, ctx, sec)


def _ae_chart(ctx: _Context, sec: Section) -> None:
    from mfr_outcomes import qi

    s = ctx.trend_study.sessions
    s = s[s["technique"].astype(str).isin(TREATMENT_TECHNIQUES) & s["adverse_event"].notna()]
    if s.empty:
        sec.para("Adverse events were not recorded, so there is no chart.")
        return
    month = pd.to_datetime(s["session_date"]).dt.to_period("M")
    g = s.assign(_e=s["adverse_event"].astype(str) != "none", _m=month).groupby("_m")["_e"]
    counts = pd.DataFrame({"events": g.sum(), "sessions": g.size()})
    counts = counts.reindex(pd.period_range(counts.index.min(), counts.index.max(), freq="M"),
                            fill_value=0)
    ok = (counts["sessions"] >= ctx.min_cell) & (counts["events"] >= ctx.min_cell)
    labels = [str(p) for p in counts.index]
    agg = pd.DataFrame({"period": counts.index, "period_start": counts.index.start_time})
    _chart_block(ctx, sec,
                 lambda: qi.p_chart(counts["events"].where(ok).to_numpy(dtype="float64"),
                                    counts["sessions"].where(ok).to_numpy(dtype="float64"),
                                    labels, better="lower", what="sessions with an event"),
                 agg, "Treatment sessions with an adverse event", "proportion of sessions",
                 "p-chart of the monthly proportion of treatment sessions with an adverse event.")


def _chart_block(ctx: _Context, sec: Section, make: Callable[[], Any], agg: pd.DataFrame,
                 title: str, ylabel: str, alt: str) -> None:
    res = make()
    pts = res.points
    shade = None
    if ctx.period is not None:
        start, end, _ = ctx.period
        inside = ((agg["period_start"] >= start) & (agg["period_start"] < end)).to_numpy()
        if inside.any():
            idx = np.flatnonzero(inside)
            shade = (idx[0] - 0.5, idx[-1] + 0.5)

    def draw(ax: Any) -> None:
        try:
            from mfr_outcomes import plots

            drawer = {"run": plots.run_chart, "xmr": plots.xmr_chart, "p": plots.p_chart}[res.kind]
            drawer(res, ax=ax, ylabel=ylabel, title=title)
            if shade is not None:
                ax.axvspan(*shade, color="#FFF3C4", zorder=0, label="report period")
            return
        except Exception as exc:  # the house style failed: draw the plain chart below
            log.warning("QI report: plots.%s_chart failed (%s); plain chart drawn", res.kind, exc)
            ax.clear()
        x = np.arange(len(pts))
        y = pts["value"].to_numpy(dtype="float64")
        if shade is not None:
            ax.axvspan(*shade, color="#FFF3C4", zorder=0, label="report period")
        ax.plot(x, y, "o-", color="#4C72B0", ms=4, lw=1.2, zorder=3, label="value")
        centre = pts["centre"].to_numpy(dtype="float64")
        ax.plot(x, centre, color="#555555", lw=1, label="median" if res.kind == "run" else "mean")
        for col in ("lcl", "ucl"):
            lim = pts[col].to_numpy(dtype="float64")
            if np.isfinite(lim).any():
                ax.step(x, lim, where="mid", color="#C44E52", ls="--", lw=1,
                        label="process limits" if col == "ucl" else None)
        sig = pts["signal"].to_numpy(dtype=bool) & np.isfinite(y)
        if sig.any():
            ax.plot(x[sig], y[sig], "o", color="#DD8452", ms=8, zorder=4, label="signal")
        step = max(1, len(x) // 14)
        ax.set_xticks(x[::step], [str(v) for v in pts["label"]][::step], rotation=45, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7, frameon=False, loc="best", ncol=2)
        ax.grid(axis="y", color="#EEEEEE")

    sec.figure(Figure(title + (" (report period shaded)." if shade else "."), alt,
                      _draw(draw, (8.0, 3.4))))
    sentences = [s.message for s in res.signals]
    if not sentences:
        sentences = ["No signal: the variation is consistent with common causes."]
    sentences += [f"Note: {n}" for n in res.notes]
    sec.items(sentences)


def _adverse_events(ctx: _Context, sec: Section) -> None:
    tx = ctx.treatment_sessions
    n_tx = len(tx)
    if "adverse_event" not in tx or n_tx == 0:
        sec.para("Adverse events were not recorded.")
        return
    ae = tx["adverse_event"].astype(object).where(tx["adverse_event"].notna(), "not recorded")
    counts = ae.value_counts()
    order = ["none", "soreness", "bruising", "symptom_flare", "other", "not recorded"]
    rows = [{"event": _label(e), "sessions": int(counts.get(e, 0)),
             "percent": 100.0 * counts.get(e, 0) / n_tx} for e in order if e in counts.index]
    types = pd.DataFrame(rows, columns=["event", "sessions", "percent"])
    any_event = ae.isin(["soreness", "bruising", "symptom_flare", "other"])
    recorded = int((ae != "not recorded").sum())
    k = int(any_event.sum())
    sec.para(
        f"Adverse events recorded at treatment sessions: {ctx.n(k)} of {ctx.n(recorded)} "
        f"sessions with a record{ctx.pct(k, recorded)}. Soreness and bruising are expected "
        f"after pressure techniques; a symptom flare (worse radiating pain) deserves a review of "
        f"the case.")
    sec.table(Table("types", "Treatment sessions by adverse event.", types, counts=("sessions",),
                    linked={"percent": ("sessions",)}, partition=None, decimals={"percent": 1}))
    g = tx.assign(_e=any_event.to_numpy(), _r=(ae != "not recorded").to_numpy()).groupby(
        tx["technique"].astype(str), observed=True, sort=False)
    order = {t: i for i, t in enumerate(TREATMENT_TECHNIQUES)}
    by_tech = pd.DataFrame({
        "technique": [_label(t) for t in g.size().index],
        "sessions": g["_r"].sum().astype(int).to_numpy(),
        "with_event": g["_e"].sum().astype(int).to_numpy(),
    })
    by_tech = by_tech.iloc[np.argsort([order.get(t.replace(" ", "_"), 99)
                                       for t in by_tech["technique"]], kind="stable")]
    by_tech = by_tech.reset_index(drop=True)
    by_tech["per_100"] = np.where(by_tech["sessions"] > 0,
                                  100.0 * by_tech["with_event"] / by_tech["sessions"].clip(lower=1),
                                  np.nan)
    sec.table(Table("by_technique", "Sessions with an adverse event, by technique.", by_tech,
                    counts=("sessions", "with_event"),
                    linked={"per_100": ("sessions", "with_event")}, decimals={"per_100": 1}))
    flares = int((ae == "symptom_flare").sum())
    if flares:
        sec.para(f"Symptom flares: {ctx.n(flares)}. Check these cases individually in the "
                 f"clinic's own records; this report does not show who they were.")


def _methods(ctx: _Context, sec: Section) -> None:
    sec.para(
        f"Scope: {ctx.scope_text}. Source: {ctx.redactor.text(str(ctx.full.source))}. Main "
        f"measure: {ctx.m.label} ({ctx.measure}). Random seed: {ctx.seed} (recorded for "
        f"reproducibility; every analysis in this report is deterministic, so the same inputs "
        f"give the same report).")
    sec.para(
        f"Disclosure control: counts below {ctx.min_cell} (zero included) are shown as "
        f"'{suppressed_label(ctx.min_cell)}' in every table, figure label, sentence and CSV, with "
        f"the percentages, means and estimates computed from them; when a single count of a group "
        f"adding up to a total is suppressed, the next smallest is suppressed too. No patient or "
        f"session identifier appears in the report or its CSV files.")
    rows = []
    for name, fit in ctx.fits.items():
        diag = getattr(fit, "diagnostics", {}) or {}
        ngroups = getattr(fit, "ngroups", None)
        if isinstance(ngroups, dict):
            ngroups = next(iter(ngroups.values()), np.nan)
        rows.append({"model": name, "formula": getattr(fit, "formula", ""),
                     "engine": getattr(fit, "engine", ""),
                     "df_method": getattr(fit, "df_method", ""),
                     "observations": getattr(fit, "nobs", np.nan),
                     "patients": ngroups if ngroups is not None else np.nan,
                     "converged": diag.get("converged", np.nan),
                     "singular": diag.get("singular", np.nan)})
    if ctx.gee is not None:
        rows.append({"model": "Numbness or tingling (GEE logistic)", "formula": ctx.gee[0],
                     "engine": "statsmodels GEE", "df_method": "robust z",
                     "observations": ctx.gee[1], "patients": ctx.gee[2],
                     "converged": np.nan, "singular": np.nan})
    if rows:
        sec.para("Linear mixed models were fitted by REML in lme4's parametrisation; p-values and "
                 "intervals use Satterthwaite degrees of freedom as lmerTest does.")
        sec.table(Table("models", "Models fitted (formulas in lme4 syntax).", pd.DataFrame(rows),
                        counts=("observations", "patients")))
    else:
        sec.para("No model was fitted for this report.")
    sec.table(Table("software", "Software versions.", _software()))
    if ctx.failures:
        sec.heading("Parts that could not be built")
        sec.items(ctx.failures)
    else:
        sec.para("Every part of the report was built.")
    if ctx.cautions:
        sec.heading("Statistical and data cautions")
        sec.items(ctx.cautions)


def _software() -> pd.DataFrame:
    rows = [("python", platform.python_version())]
    for pkg in ("mfr-outcomes", "numpy", "pandas", "scipy", "statsmodels", "formulaic",
                "matplotlib", "seaborn", "pandera", "jinja2"):
        try:
            rows.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    return pd.DataFrame(rows, columns=["package", "version"])


_BUILDERS: dict[str, Callable[[_Context, Section], None]] = {
    "data_quality": _data_quality,
    "cohort": _cohort,
    "intervention": _intervention,
    "outcomes": _outcomes,
    "trends": _trends,
    "adverse_events": _adverse_events,
    "methods": _methods,
}


# ---------------------------------------------------------------------------------------------
# Publishing


def _publish(ctx: _Context, table: Table) -> pd.DataFrame:
    frame = table.frame.copy()
    for col in frame.columns:
        if col in _ID_COLUMNS:  # never published, whatever a builder put in
            frame = frame.drop(columns=col)
    frame = ctx.redactor.frame(frame)
    counts = [c for c in table.counts if c in frame.columns]
    return suppress_counts(frame, counts, ctx.min_cell, linked=table.linked,
                           partition=table.partition)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    out = frame.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].round(6)
        elif out[col].dtype == object:
            out[col] = out[col].map(lambda v: round(v, 6) if isinstance(v, float) else v)
    neutralise_frame(out).to_csv(path, index=False, encoding="utf-8", lineterminator="\n")


def _render(ctx: _Context, sections: list[Section], title: str) -> str:
    from jinja2 import Environment, PackageLoader

    env = Environment(loader=PackageLoader("mfr_outcomes.report", "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["cell"] = lambda v, col, dec: _fmt_cell(v, col, dec)
    env.filters["header"] = _header
    template = env.get_template("report.html.j2")
    dates = pd.to_datetime(ctx.study.sessions["session_date"])
    facts = [
        ("Scope", ctx.scope_text),
        ("Visits from", f"{dates.min():%Y-%m-%d} to {dates.max():%Y-%m-%d}" if len(dates) else "–"),
        ("Patients", ctx.n(ctx.study.patients["patient_id"].nunique())),
        ("Treatment sessions", ctx.n(len(ctx.treatment_sessions))),
        ("Main measure", f"{ctx.m.label} ({ctx.m.unit})"),
        ("Smallest count shown", str(ctx.min_cell)),
    ]
    return template.render(title=title, sections=sections, facts=facts,
                           suppressed=suppressed_label(ctx.min_cell),
                           n_failures=len(ctx.failures))


def build_report(study: Any, out_dir: str | Path, *, site: str | None = None,
                 period: str | None = None, min_cell: int = 5, measure: str = "pain_nrs",
                 seed: int = 2026) -> ReportResult:
    """Write the QI report of one clinic and period.

    Parameters
    ----------
    study : Study
        A loaded study (:func:`mfr_outcomes.load_study`).
    out_dir : str or Path
        Folder to write into (created): ``report.html`` and ``tables/<section>_<table>.csv``.
    site : str, optional
        Keep only this site's patients.
    period : str, optional
        Keep only sessions in this quarter (``2026Q3``) or month (``2026-07``).
    min_cell : int
        Smallest count shown; smaller counts (zero included) appear as ``"<min_cell>"``.
    measure : str
        Main outcome measure (a registered code present in the study).
    seed : int
        Seed for random steps, recorded in the methods section (the current analyses are all
        deterministic).

    Returns
    -------
    ReportResult
        Paths written and the sections built (with any parts that failed).

    Raises
    ------
    ValueError
        With one sentence when *site*, *period*, *measure* or *min_cell* is not usable.
    """
    if isinstance(min_cell, bool) or not isinstance(min_cell, int | np.integer) or min_cell < 1:
        raise ValueError(f"min_cell must be a whole number of at least 1, got {min_cell!r}")
    min_cell = int(min_cell)
    try:
        m = get_measure(measure)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None
    if measure not in study.measures:
        raise ValueError(f"measure {measure!r} ({m.label}) is not in this study; measures "
                         f"present: {', '.join(study.measures) or 'none'}")
    scoped, scope_text, bounds = _scope(study, site, period)
    ctx = _Context(study, scoped, measure=measure, min_cell=min_cell, seed=int(seed), site=site,
                   period=bounds, scope_text=scope_text)
    ctx.trend_study = _trend_scope(study, site, bounds)
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    for key, title in SECTION_TITLES.items():
        sec = Section(key, title)
        ctx.attempt(sec, f"The {title.lower()} section", _BUILDERS[key], ctx, sec)
        sections.append(sec)
    csv_paths: list[Path] = []
    for sec in sections:
        for table in sec.tables:
            table.shown = _publish(ctx, table)
            path = out / "tables" / f"{sec.key}_{table.name}.csv"
            _write_csv(table.shown, path)
            table.csv_path = path
            csv_paths.append(path)
    for sec in sections:
        sec.blocks = [(k, ctx.redactor.text(b) if isinstance(b, str) else
                       [ctx.redactor.text(x) for x in b] if isinstance(b, list) else b)
                      for k, b in sec.blocks]
    where = f" — {site}" if site else ""
    when = f", {bounds[2]}" if bounds else ""
    title = f"Myofascial release outcomes: QI report{where}{when}"
    html = _render(ctx, sections, title)
    html_path = out / "report.html"
    html_path.write_text(html, encoding="utf-8")
    return ReportResult(html_path=html_path, csv_paths=csv_paths,
                        sections={s.key: s for s in sections}, failures=list(ctx.failures),
                        cautions=list(ctx.cautions))
