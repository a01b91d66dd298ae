"""Quality-improvement statistics: per-period aggregates, run charts, XmR charts and p-charts.

Run charts use the median and Anhøj's two rules (Anhøj J, Olesen AV. Run charts revisited: a
simulation study of run chart rules for detection of non-random variation in health care processes.
PLoS One 2014;9:e113825; Anhøj J, Wentzel-Larsen T. Sense and sensibility: on the diagnostic value
of control chart rules for detection of shifts in time series data. BMC Med Res Methodol
2018;18:100), computed exactly as the qicharts2 R package does (``runs.analysis``): observations on
the median are not useful; the longest run signals when longer than ``round(log2(n) + 3)``
(Schilling 2012) and the crossings when fewer than ``qbinom(0.05, n - 1, 0.5)`` (Chen 2010), n the
number of useful observations.

XmR and p-charts follow NHS England and NHS Improvement, "Making Data Count" (2019), as the
NHSRplotthedots R package implements it: a point beyond the process limits (mean ± 2.66 × mean
moving range); seven points in a row on one side of the mean (a shift); seven points in a row each
higher (or each lower) than the one before (a trend); two of three points beyond two sigma
(2/3 of the way to a limit) with all three on the same side. The moving-range chart has upper limit
3.267 × mean moving range (Wheeler, Understanding Variation, 1993). The p-chart has limits
p̄ ± 3 √(p̄(1 − p̄)/nᵢ) clipped to [0, 1] (Montgomery, Introduction to Statistical Quality
Control).

Every chart returns a :class:`ChartResult`: a tidy per-point frame plus a list of signals, each
explained in a sentence, judged as improvement or concern from the measure registry's ``better``.
"""
from __future__ import annotations

import html
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from mfr_outcomes import mdc
from mfr_outcomes.measures import get_measure
from mfr_outcomes.rules import (
    affected_side_rows,
    can_show_important_change,
    important_change_mask,
)
from mfr_outcomes.warnings_ import DataWarning

__all__ = [
    "Signal",
    "ChartResult",
    "aggregate",
    "run_chart",
    "xmr_chart",
    "p_chart",
    "runs_limits",
    "XMR_LIMIT",
    "MR_LIMIT",
    "MIN_USEFUL_RUNS",
    "MIN_SPC_POINTS",
    "PERIOD_FREQ",
    "period_label",
    "SHIFT_LENGTH",
    "TREND_LENGTH",
]

#: Natural-process-limit factor of the individuals chart: 3 / d2 with d2 = 1.128.
XMR_LIMIT = 2.66
#: Upper limit factor of the moving-range chart: D4 for subgroups of two.
MR_LIMIT = 3.267
#: Fewer useful observations than this and the run rules are not applied (Anhøj's tables start
#: at 10).
MIN_USEFUL_RUNS = 10
#: Fewer points with a value than this and an XmR or p-chart says "not enough data" instead of
#: judging signals: a shift or a trend takes 7 points in a row, and limits from fewer than 10
#: points move too much to judge them (Making Data Count asks for 15-20 and calls limits from
#: fewer provisional; NHSRplotthedots warns below 12, and so does this module's notes).
MIN_SPC_POINTS = 10

#: pandas frequency of each period :func:`aggregate` knows (weeks run Monday to Sunday).
PERIOD_FREQ = {"week": "W-SUN", "month": "M", "quarter": "Q"}


def period_label(period: pd.Period) -> str:
    """A period as a chart labels it: "2026-07" (month), "2026Q3", a week by its Monday
    ("2026-07-06").

    >>> period_label(pd.Period("2026-07-08", freq="W-SUN"))
    '2026-07-06'
    """
    if period.freqstr.startswith("W"):
        return f"{period.start_time:%Y-%m-%d}"
    return str(period)
#: Making Data Count: a shift is this many points in a row on one side of the mean.
SHIFT_LENGTH = 7
#: Making Data Count: a trend is this many points in a row each above (or below) the one before.
TREND_LENGTH = 7

Better = Literal["lower", "higher"]


# --------------------------------------------------------------------------------------------
# result objects


@dataclass(frozen=True)
class Signal:
    """One signal of non-random variation.

    Attributes
    ----------
    rule : str
        "longest_run", "crossings" (run chart); "outside_limits", "shift", "trend",
        "two_of_three" (XmR, p-chart); "mr_outside_limit" (moving-range chart).
    start, end : int
        Positions (0-based, in the chart's point order) of the first and last point involved;
        for "crossings" the whole series.
    direction : str
        "up" or "down" (which way the points departed), "none" for crossings.
    assessment : str
        "improvement", "concern" or "neutral" (no measure direction given, or a pattern with no
        direction such as too few crossings).
    message : str
        The signal in one sentence.
    """

    rule: str
    start: int
    end: int
    direction: str
    assessment: str
    message: str


class _Points:
    """The ``points`` field of :class:`ChartResult`: a DataFrame, or a function that builds it,
    called on first access (most of the cost of a small chart is building the frame, which a
    caller after the signals and icons alone never needs)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: Any, owner: type | None = None) -> pd.DataFrame:
        if obj is None:   # class access: tells dataclass the field has no default
            raise AttributeError(self.slot[1:])
        value = obj.__dict__[self.slot]
        if callable(value):
            value = obj.__dict__[self.slot] = value()
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = value


@dataclass
class ChartResult:
    """A run chart, XmR chart or p-chart: the points, the limits and the signals.

    Attributes
    ----------
    kind : {"run", "xmr", "p"}
    points : DataFrame
        One row a point. Always: label, value, centre, lcl, ucl, signal (any rule), plus a boolean
        column per rule (see the chart functions).
    signals : list of Signal
    notes : list of str
        Cautions, e.g. run rules not applied for lack of useful observations.
    stats : dict
        Chart-level numbers (run chart: n_obs, n_useful, longest_run, longest_run_max,
        n_crossings, n_crossings_min; XmR: mean, mean_mr, sigma; p-chart: p_bar).
    measure : str or None
        Measure code when given.
    better : {"lower", "higher"} or None
        Which direction is improvement.
    variation : str or None
        The Making Data Count variation icon (:data:`mfr_outcomes.mdc.VARIATION_ICONS`).
    assurance : str or None
        The assurance icon against :attr:`target` ("pass", "fail", "hit_or_miss"), or None.
    target : float or None
    annotations : list of (int, str)
        Positions and texts to write on the chart (declared changes included).
    """

    kind: str
    points: pd.DataFrame = _Points()   # type: ignore[assignment]
    signals: list[Signal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    measure: str | None = None
    better: str | None = None
    variation: str | None = None
    assurance: str | None = None
    target: float | None = None
    annotations: list[tuple[int, str]] = field(default_factory=list)

    def __getstate__(self) -> dict[str, Any]:
        self.points   # noqa: B018 - a pickle holds the built frame, not the function building it
        return self.__dict__

    @property
    def n_points(self) -> int:
        """Points with a value."""
        return int(np.isfinite(self.points["value"].to_numpy(dtype="float64")).sum())

    def shortfall(self) -> str | None:
        """A sentence when the chart has too few points for its rules, else None.

        A run chart needs :data:`MIN_USEFUL_RUNS` useful observations (points not on the
        median); an XmR or p-chart :data:`MIN_SPC_POINTS` points with a value.
        """
        if self.kind == "run":
            have, need = int(self.stats.get("n_useful", 0)), MIN_USEFUL_RUNS
            what = "useful points (points not on the median)"
        else:
            have, need = self.n_points, MIN_SPC_POINTS
            what = "points with a value"
        if have >= need:
            return None
        return (f"Not enough data: the chart has {have} {what}; its rules need at least "
                f"{need}, so nothing is said about signals and no chart is drawn.")

    @property
    def has_signal(self) -> bool:
        """True when any rule signals."""
        return bool(self.signals)

    def signals_frame(self) -> pd.DataFrame:
        """The signals as a frame: rule, start, end, direction, assessment, message."""
        cols = ["rule", "start", "end", "direction", "assessment", "message"]
        return pd.DataFrame([s.__dict__ for s in self.signals], columns=cols)

    def summary(self) -> str:
        """A short text for people: what the chart is, its centre and every signal."""
        title = {"run": "Run chart", "xmr": "XmR chart", "p": "p-chart"}[self.kind]
        lines = [f"{title} of {len(self.points)} points"
                 + (f" ({self.measure})" if self.measure else "")]
        if self.kind == "run":
            s = self.stats
            lines.append(f"median {_num(s.get('median'))}; useful observations {s['n_useful']}; "
                         f"longest run {s['longest_run']} (limit {s['longest_run_max']}); "
                         f"crossings {s['n_crossings']} (minimum {s['n_crossings_min']})")
        elif self.kind == "xmr":
            lines.append(f"mean {_num(self.stats['mean'])}; process limits "
                         f"{_num(self.stats['lcl'])} to {_num(self.stats['ucl'])}; mean moving "
                         f"range {_num(self.stats['mean_mr'])}")
        else:
            lines.append(f"overall proportion {_num(self.stats['p_bar'])}")
        short = self.shortfall()
        if short:
            lines.append(short)
            return "\n".join(lines)
        lines.extend(f"- {s.message}" for s in self.signals)
        if not self.signals:
            lines.append("No signal: the variation is consistent with common causes.")
        if self.variation:
            lines.append(f"Variation: {mdc.icon_text(self.variation)}.")
        if self.assurance:
            lines.append(f"Assurance against the target {_num(self.target)}: "
                         f"{mdc.icon_text(self.assurance)}.")
        lines.extend(f"Note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{html.escape(s.message)}</li>" for s in self.signals)
        notes = "".join(f"<p><i>{html.escape(n)}</i></p>" for n in self.notes)
        head = html.escape(self.summary().splitlines()[0])
        return (f"<p><b>{head}</b></p><ul>{items or '<li>No signal.</li>'}</ul>{notes}"
                + self.points.to_html(index=False, float_format=lambda x: f"{x:.3g}"))


def _caution(notes: list[str], message: str) -> None:
    """Record a statistical caution in the result and raise it as a DataWarning."""
    notes.append(message)
    warnings.warn(message, DataWarning, stacklevel=3)


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "NA"
    return f"{x:.3g}"


# --------------------------------------------------------------------------------------------
# inputs


def _resolve_better(measure: str | None, better: str | None) -> str | None:
    if better is not None:
        if better not in ("lower", "higher"):
            raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
        return better
    if measure is not None:
        return get_measure(measure).better
    return None


def _as_values(values: Any, dates: Any) -> tuple[np.ndarray, list[str], pd.Index]:
    """Numbers and their labels (from *dates*, else the Series index, else 1..n)."""
    if isinstance(values, pd.Series) and dates is None:
        dates = values.index
    if dates is None and isinstance(values, np.ndarray) and values.dtype.kind in "iuf" \
            and values.ndim == 1:   # fast path: plain numbers, labelled 1..n
        y = values.astype("float64")
        return y, [f"point {i}" for i in range(1, len(y) + 1)], pd.RangeIndex(1, len(y) + 1)
    try:
        y = np.asarray(pd.to_numeric(pd.Series(values), errors="raise"), dtype="float64")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"chart values must be numbers: {exc}") from None
    if y.ndim != 1:
        raise ValueError(f"chart values must be one-dimensional, got shape {y.shape}")
    if dates is None:
        index = pd.RangeIndex(1, len(y) + 1)
    else:
        index = pd.Index(dates)
        if len(index) != len(y):
            raise ValueError(f"dates has {len(index)} entries but values has {len(y)}")
    return y, [_label(d) for d in index], index


def _label(d: Any) -> str:
    if isinstance(d, pd.Period):
        return str(d)
    if isinstance(d, pd.Timestamp | np.datetime64):
        ts = pd.Timestamp(d)
        return ts.strftime("%Y-%m-%d") if (ts.hour, ts.minute, ts.second) == (0, 0, 0) else str(ts)
    if isinstance(d, int | np.integer):
        return f"point {int(d)}"
    return str(d)


def _span(labels: Sequence[str], start: int, end: int) -> str:
    return f"at {labels[start]}" if start == end else f"from {labels[start]} to {labels[end]}"


def _assess(direction: str, better: str | None) -> str:
    if better is None or direction not in ("up", "down"):
        return "neutral"
    good = "up" if better == "higher" else "down"
    return "improvement" if direction == good else "concern"


def _verdict(assessment: str) -> str:
    return {"improvement": "an improvement", "concern": "a concern",
            "neutral": "a change"}[assessment]


# --------------------------------------------------------------------------------------------
# aggregates


def aggregate(study_or_frame: Any, measure: str | None = None, *,
              period: Literal["week", "month", "quarter"] = "month", by: str | None = None,
              side: str | None = None, fill_gaps: bool = True) -> pd.DataFrame:
    """Per-period counts, means and responders of one measure, for QI charts.

    Parameters
    ----------
    study_or_frame : Study or DataFrame
        A :class:`~mfr_outcomes.study.Study`, or an analysis frame from ``Study.frame(measure)``
        (then *measure* names the measure the frame holds, for its thresholds and direction).
    measure : str
        Measure code.
    period : {"week", "month", "quarter"}
        Calendar period of the session date (weeks run Monday to Sunday).
    by : {"site_id", "therapist_id"}, optional
        Aggregate each site (or therapist) separately.
    side : {"left", "right", "none"}, optional
        Keep one side; otherwise the affected side is used (see Notes).
    fill_gaps : bool
        Add periods with no visit (counts 0, means missing) between the first and last period,
        so a chart's time axis has no silent holes.

    Returns
    -------
    DataFrame
        One row a period (per *by* group, *by* first): period (pandas Period), period_start
        (Timestamp), n_patients (patients seen), n_sessions (sessions with a reading),
        n_pre (sessions with a pre reading), mean_pre, n_paired (sessions with pre and post),
        mean_change (post − pre within a session, measure units), mean_improvement (the same
        change signed so that positive is better), n_completed (patients whose latest
        pre-treatment reading, at a visit after their first, falls in the period, and whose
        baseline leaves room for an important change: :func:`mfr_outcomes.rules.
        can_show_important_change`),
        n_responders (of those, patients whose change from the first to that latest pre reading
        is clinically important, per :func:`mfr_outcomes.rules.important_change_mask`: the
        definition of ``effects.responders(study, measure)`` with its default
        ``last="last_pre"``; missing when the measure has no threshold), responder_rate
        (n_responders / n_completed).

    Notes
    -----
    A measure read on both sides uses the affected side (the mean of both sides when the patient
    is bilateral or the side is unknown), as ``effects.responders`` does; pass *side* to chart
    one side instead.

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> study, _ = mfr.synthetic.generate(n_patients=30, seed=1)  # doctest: +SKIP
    >>> mfr.qi.aggregate(study, "pain_nrs", period="quarter").columns[:3].tolist()  # doctest: +SKIP
    ['period', 'period_start', 'n_patients']
    """
    if period not in PERIOD_FREQ:
        raise ValueError(f"period must be 'week', 'month' or 'quarter', got {period!r}")
    if isinstance(study_or_frame, pd.DataFrame):
        if measure is None:
            raise ValueError("pass the measure code of the frame, e.g. aggregate(frame, 'pain_nrs')")
        frame = study_or_frame if side is None else study_or_frame[study_or_frame["side"] == side]
    elif hasattr(study_or_frame, "frame"):
        if measure is None:
            raise ValueError("pass a measure code, e.g. aggregate(study, 'pain_nrs')")
        frame = study_or_frame.frame(measure, side=side)
    else:
        raise TypeError("aggregate() takes a Study or an analysis frame, got "
                        f"{type(study_or_frame).__name__}")
    m = get_measure(measure)
    need = {"patient_id", "session_id", "session_number", "session_date", "phase", "value"}
    if by is not None:
        need.add(by)
    missing = sorted(need - set(frame.columns))
    if missing:
        raise ValueError(f"the frame lacks column(s) {', '.join(missing)}; pass Study.frame(...)")

    df = frame.copy()
    df["phase"] = df["phase"].astype(str)
    df["session_date"] = pd.to_datetime(df["session_date"])
    freq = PERIOD_FREQ[period]
    df["period"] = df["session_date"].dt.to_period(freq)
    keys = ([by] if by else [])
    # per-side measures: the affected side (both sides averaged when bilateral or unknown), the
    # rule effects.responders uses, so the two agree
    df = df[affected_side_rows(df)]
    # one value per session and phase
    sess = (df.groupby(keys + ["period", "patient_id", "session_id", "session_number",
                               "session_date", "phase"], observed=True, dropna=False)["value"]
            .mean().unstack("phase").reset_index())
    for ph in ("pre", "post"):
        if ph not in sess.columns:
            sess[ph] = np.nan
    sess["change"] = sess["post"] - sess["pre"]

    # per patient, as effects.responders(last="last_pre"): baseline the first pre reading, last
    # the latest pre reading at a later visit; the patient counts in the period of that visit
    sess = sess.sort_values(keys + ["patient_id", "session_number", "session_date"],
                            kind="stable")
    has_threshold = m.threshold_points is not None or m.mcid_percent is not None
    pats = _completed_patients(sess, measure, by, has_threshold)

    groups = sess.groupby(keys + ["period"], observed=True, sort=True)
    out = groups.agg(n_patients=("patient_id", "nunique"), n_sessions=("session_id", "nunique"),
                     n_pre=("pre", "count"), mean_pre=("pre", "mean"),
                     n_paired=("change", "count"), mean_change=("change", "mean"))
    out["mean_improvement"] = [m.improvement(c) if pd.notna(c) else np.nan
                               for c in out["mean_change"]]
    pg = pats.groupby(keys + ["period"], observed=True)
    out["n_completed"] = pg.size().reindex(out.index).fillna(0).astype("int64")
    if has_threshold:
        resp = pg["responder"].sum()
        out["n_responders"] = resp.reindex(out.index).fillna(0).astype("Int64")
    else:
        out["n_responders"] = pd.array([pd.NA] * len(out), dtype="Int64")
    out = out.reset_index()

    if fill_gaps and len(out):
        filled = []
        for key, g in (out.groupby(by, observed=True, sort=True) if by else [(None, out)]):
            full = pd.period_range(g["period"].min(), g["period"].max(), freq=freq)
            g = g.set_index("period").reindex(full)
            g.index.name = "period"
            if by:
                g[by] = key
            for c in ("n_patients", "n_sessions", "n_pre", "n_paired", "n_completed"):
                g[c] = g[c].fillna(0).astype("int64")
            filled.append(g.reset_index())
        out = pd.concat(filled, ignore_index=True)
        if not has_threshold:
            out["n_responders"] = pd.array([pd.NA] * len(out), dtype="Int64")
        else:
            out["n_responders"] = out["n_responders"].fillna(0).astype("Int64")

    rate = out["n_responders"].astype("Float64") / out["n_completed"].replace(0, np.nan)
    out["responder_rate"] = rate.astype("float64")
    out["period_start"] = out["period"].dt.start_time
    cols = ([by] if by else []) + ["period", "period_start", "n_patients", "n_sessions", "n_pre",
                                   "mean_pre", "n_paired", "mean_change", "mean_improvement",
                                   "n_completed", "n_responders", "responder_rate"]
    return out[cols].reset_index(drop=True)


def _completed_patients(sess: pd.DataFrame, measure: str, by: str | None,
                        has_threshold: bool) -> pd.DataFrame:
    """Patients who finished care, as ``effects.responders(last="last_pre")`` counts them.

    *sess* has one row a session (sorted by the *by* column, patient and visit) with its
    ``pre`` reading. A patient finished care when two visits have a pre reading; baseline is
    the first, last the latest, and the patient counts in the period (and *by* group) of that
    latest visit. With a threshold, a baseline that leaves no room for an important change does
    not count, and ``responder`` says whether the change was important.

    Returns
    -------
    DataFrame
        One row a patient who finished care: patient_id, period, responder (bool; False when
        the measure has no threshold), then the *by* column.
    """
    pre = sess[sess["pre"].notna()]
    cols = ["period", "session_number", "pre"] + ([by] if by else [])
    g = pre.groupby("patient_id", sort=False, observed=True)[cols]
    first, last = g.first(skipna=False), g.last(skipna=False)
    done = (g.size() >= 2) & (last["session_number"] != first["session_number"])
    responder = np.zeros(len(first), dtype=bool)
    if has_threshold:  # the responder denominator: baselines that can change
        done &= can_show_important_change(measure, first["pre"].to_numpy())
        responder = important_change_mask(measure, first["pre"].to_numpy(),
                                          last["pre"].to_numpy())
    out = pd.DataFrame({"patient_id": last.index, "period": last["period"].array,
                        "responder": responder})
    if by:
        out[by] = last[by].array
    return out[done.to_numpy()].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# run chart


def _baseline_mask(n: int, freeze: int | None, centre: Any = None) -> np.ndarray:
    """Which points set the centre line and limits: all, or the first *freeze*."""
    if freeze is None:
        return np.ones(n, dtype=bool)
    if centre is not None:
        raise ValueError("pass either centre or freeze, not both")
    if isinstance(freeze, bool) or not isinstance(freeze, int | np.integer) or freeze < 2:
        raise ValueError(f"freeze must be a whole number of baseline points ≥ 2, got {freeze!r}")
    if freeze > n:
        raise ValueError(f"freeze = {freeze} is more than the {n} points of the series")
    mask = np.zeros(n, dtype=bool)
    mask[:freeze] = True
    return mask


def runs_limits(n_useful: int) -> tuple[int, int]:
    """Anhøj's limits for *n_useful* useful observations.

    Returns
    -------
    (longest_run_max, n_crossings_min) : tuple of int
        A longest run above ``round(log2(n) + 3)`` signals; fewer crossings than
        ``qbinom(0.05, n - 1, 0.5)`` signal (qicharts2's ``runs.analysis``).

    Examples
    --------
    >>> runs_limits(20)
    (7, 6)
    """
    n = int(n_useful)
    if n < 1:
        raise ValueError("runs_limits needs at least one useful observation")
    longest_max = int(round(math.log2(n))) + 3
    # R's qbinom: the smallest x with P(X <= x) >= p; scipy's ppf is the same quantile, with a
    # tiny tolerance so floating error in the CDF cannot push it one step up.
    crossings_min = int(stats.binom.ppf(0.05 - 1e-12, max(n - 1, 0), 0.5))
    return longest_max, crossings_min


def _runs(sides: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of equal non-zero signs as (sign, first position, last position), positions into the
    full series (points on the centre line neither break nor extend a run)."""
    runs: list[tuple[int, int, int]] = []
    for i, s in enumerate(sides):
        if s == 0 or np.isnan(s):
            continue
        if runs and runs[-1][0] == s:
            runs[-1] = (runs[-1][0], runs[-1][1], i)
        else:
            runs.append((int(s), i, i))
    return runs


def run_chart(values: Any, dates: Any = None, *, measure: str | None = None,
              better: Better | None = None, centre: float | None = None,
              freeze: int | None = None, min_useful: int = MIN_USEFUL_RUNS) -> ChartResult:
    """Run chart on the median with Anhøj's rules.

    Parameters
    ----------
    values : array-like or Series
        The series, in time order; missing values are shown but not analysed.
    dates : array-like, optional
        A label per point (Periods, dates, ...); defaults to the Series index or 1..n.
    measure : str, optional
        Measure code; its ``better`` judges a long run as improvement or concern.
    better : {"lower", "higher"}, optional
        Overrides the measure's direction (e.g. "higher" for a responder rate).
    centre : float, optional
        A fixed centre line instead of the median (e.g. a target or an earlier median).
    freeze : int, optional
        Take the median of the first *freeze* points only (a baseline period) and test every
        point against it (qicharts2's ``freeze``).
    min_useful : int
        Fewer useful observations and the rules are not applied (said in ``notes``).

    Returns
    -------
    ChartResult
        ``points`` columns: label, value, centre, lcl, ucl (missing), side (+1 above, −1 below,
        0 on the centre line), useful, run_id (run number among useful points), in_long_run,
        crossings_signal (True on every useful point when crossings are too few), signal.
        ``stats``: median, n_obs, n_useful, longest_run, longest_run_max, n_crossings,
        n_crossings_min, runs_applied.

    Examples
    --------
    >>> r = run_chart([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    >>> r.stats["n_crossings"], r.stats["n_crossings_min"]
    (1, 3)
    """
    y, labels, _ = _as_values(values, dates)
    better = _resolve_better(measure, better)
    finite = np.isfinite(y)
    base = _baseline_mask(len(y), freeze, centre) & finite
    cl = float(np.median(y[base])) if centre is None and base.any() else (
        float(centre) if centre is not None else np.nan)
    sides = np.where(finite, np.sign(y - cl), np.nan)
    useful = finite & (sides != 0)
    runs = _runs(sides)
    n_useful = int(useful.sum())
    run_id = np.full(len(y), -1)
    for k, (_, a, b) in enumerate(runs):
        for i in range(a, b + 1):
            if useful[i]:
                run_id[i] = k
    lengths = [int(useful[a:b + 1].sum()) for _, a, b in runs]
    longest = max(lengths) if lengths else 0
    crossings = max(len(runs) - 1, 0)
    notes: list[str] = []
    in_long = np.zeros(len(y), dtype=bool)
    cross_flag = np.zeros(len(y), dtype=bool)
    signals: list[Signal] = []
    st: dict[str, Any] = {"median": cl, "n_obs": int(finite.sum()), "n_useful": n_useful,
                          "longest_run": longest, "n_crossings": crossings,
                          "longest_run_max": None, "n_crossings_min": None,
                          "runs_applied": False}
    if not finite.any():
        notes.append("No values to chart.")
    elif n_useful < min_useful:
        _caution(notes, f"Run rules not applied: {n_useful} useful observation(s) (points not on the "
                     f"median), fewer than the {min_useful} the rules need.")
    else:
        lr_max, cr_min = runs_limits(n_useful)
        st.update(longest_run_max=lr_max, n_crossings_min=cr_min, runs_applied=True)
        word = "median" if centre is None else "centre line"
        for (s, a, b), length in zip(runs, lengths):
            if length > lr_max:
                in_long[a:b + 1] = useful[a:b + 1]
                direction = "up" if s > 0 else "down"
                assessment = _assess(direction, better)
                where = "above" if s > 0 else "below"
                signals.append(Signal(
                    "longest_run", a, b, direction, assessment,
                    f"{length} points in a row {where} the {word} {_span(labels, a, b)} (more "
                    f"than the {lr_max} expected by chance with {n_useful} useful observations): "
                    f"a shift, {_verdict(assessment)}."))
        if crossings < cr_min:
            cross_flag[:] = useful
            first, last = int(np.flatnonzero(useful)[0]), int(np.flatnonzero(useful)[-1])
            signals.append(Signal(
                "crossings", first, last, "none", "neutral",
                f"The series crosses the {word} {crossings} time(s) {_span(labels, first, last)}, "
                f"fewer than the {cr_min} expected with {n_useful} useful observations: the "
                f"process has shifted or clusters."))
    points = pd.DataFrame({
        "label": labels, "value": y, "centre": cl, "lcl": np.nan, "ucl": np.nan,
        "side": sides, "useful": useful, "run_id": run_id, "in_long_run": in_long,
        "crossings_signal": cross_flag,
    })
    points["signal"] = points["in_long_run"] | points["crossings_signal"]
    # a long run is special cause; too few crossings says the process moved but not which way
    no_trend = np.zeros(len(y), dtype=int)
    centre_arr = np.full(len(y), cl)
    types = mdc.point_types(y, centre_arr, in_long, no_trend, better)
    points["point_type"] = types
    variation = mdc.variation_icon(y, centre_arr, types) if st["runs_applied"] else None
    return ChartResult("run", points, signals, notes, st, measure, better, variation=variation)


# --------------------------------------------------------------------------------------------
# XmR chart and the Making Data Count rules


def _sequences(flags: np.ndarray, length: int) -> list[tuple[int, int]]:
    """Maximal stretches of True at least *length* long, as (first, last)."""
    edges = np.diff(np.concatenate(([0], np.asarray(flags, dtype=np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = stops - starts >= length
    return [(int(a), int(b) - 1) for a, b in zip(starts[keep], stops[keep])]


def _shift_runs(side: np.ndarray) -> list[tuple[int, int, int]]:
    """Stretches of SHIFT_LENGTH or more consecutive points on one side (a point on the mean or a
    missing value breaks the stretch, as in NHSRplotthedots)."""
    out = []
    for s in (1, -1):
        out.extend((s, a, b) for a, b in _sequences(side == s, SHIFT_LENGTH))
    return sorted(out, key=lambda t: t[1])


def _trend_runs(y: np.ndarray) -> list[tuple[int, int, int]]:
    """Stretches of TREND_LENGTH or more points each strictly above (or below) the previous."""
    d = np.sign(np.diff(y))
    out = []
    for s in (1, -1):
        # k consecutive steps of sign s make k + 1 points
        for a, b in _sequences(d == s, TREND_LENGTH - 1):
            out.append((s, a, b + 1))
    return sorted(out, key=lambda t: t[1])


def _two_of_three(near: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Points beyond 2σ that are 2 of a window of 3 consecutive points all on one side."""
    n = len(near)
    flag = np.zeros(n, dtype=bool)
    if n < 3:
        return flag
    near = np.asarray(near, dtype=bool)
    a, b, c = near[:-2], near[1:-1], near[2:]
    s0, s1, s2 = side[:-2], side[1:-1], side[2:]
    # windows (i, i+1, i+2) with two or more points beyond 2σ, all three on one side
    hit = ((a.astype(np.int8) + b + c) >= 2) & (s0 == s1) & (s1 == s2) & (np.abs(s0) == 1)
    flag[:-2] |= hit & a
    flag[1:-1] |= hit & b
    flag[2:] |= hit & c
    return flag


def _spc_rules(y: np.ndarray, cl: np.ndarray, lcl: np.ndarray, ucl: np.ndarray,
               sigma: np.ndarray, labels: list[str], better: str | None,
               what: str) -> tuple[dict[str, np.ndarray], list[Signal]]:
    finite = np.isfinite(y)
    side = np.where(finite, np.sign(y - cl), 0.0)
    above = finite & np.isfinite(ucl) & (y > ucl)
    below = finite & np.isfinite(lcl) & (y < lcl)
    outside = above | below
    near = finite & ~outside & ((y > cl + 2 * sigma) | (y < cl - 2 * sigma))
    shift = np.zeros(len(y), dtype=bool)
    trend = np.zeros(len(y), dtype=bool)
    signals: list[Signal] = []
    for i in np.flatnonzero(outside):
        direction = "up" if above[i] else "down"
        a = _assess(direction, better)
        where = "above the upper" if above[i] else "below the lower"
        signals.append(Signal("outside_limits", int(i), int(i), direction, a,
                              f"A point {where} process limit {_span(labels, i, i)} "
                              f"({_num(y[i])}): {_verdict(a)}."))
    for s, a, b in _shift_runs(side):
        shift[a:b + 1] = True
        direction = "up" if s > 0 else "down"
        asm = _assess(direction, better)
        signals.append(Signal("shift", a, b, direction, asm,
                              f"{b - a + 1} points in a row {'above' if s > 0 else 'below'} the "
                              f"{what} {_span(labels, a, b)}: a shift, {_verdict(asm)}."))
    yy = np.where(finite, y, np.nan)
    for s, a, b in _trend_runs(yy):
        trend[a:b + 1] = True
        direction = "up" if s > 0 else "down"
        asm = _assess(direction, better)
        signals.append(Signal("trend", a, b, direction, asm,
                              f"{b - a + 1} points in a row each {'higher' if s > 0 else 'lower'} "
                              f"than the one before {_span(labels, a, b)}: a trend, "
                              f"{_verdict(asm)}."))
    two3 = _two_of_three(near, side)
    idx = np.flatnonzero(two3)
    # group flagged points that share windows into one signal
    groups: list[list[int]] = []
    for i in idx:
        if groups and i - groups[-1][-1] <= 2 and side[i] == side[groups[-1][-1]]:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    for g in groups:
        a, b = g[0], g[-1]
        direction = "up" if side[a] > 0 else "down"
        asm = _assess(direction, better)
        signals.append(Signal("two_of_three", a, b, direction, asm,
                              f"{len(g)} points beyond two sigma {'above' if side[a] > 0 else 'below'}"
                              f" the {what} within three points {_span(labels, a, b)}: "
                              f"{_verdict(asm)}."))
    signals.sort(key=lambda s: (s.start, s.rule))
    flags = {"outside_limits": outside, "shift": shift, "trend": trend, "two_of_three": two3}
    return flags, signals


_RULES = ("outside_limits", "shift", "trend", "two_of_three")


def _all_rules(segment: np.ndarray, y: np.ndarray, cl: np.ndarray, lcl: np.ndarray,
               ucl: np.ndarray, sigma: np.ndarray, labels: list[str], better: str | None,
               what: str) -> tuple[dict[str, np.ndarray], list[Signal]]:
    """The Making Data Count rules run within each segment: flags (NumPy arrays over the whole
    chart) and signals."""
    signals: list[Signal] = []
    flags = {k: np.zeros(len(y), dtype=bool) for k in _RULES}
    for s in np.unique(segment):
        idx = np.flatnonzero(segment == s)
        part, sig = _spc_rules(y[idx], cl[idx], lcl[idx], ucl[idx], sigma[idx],
                               [labels[i] for i in idx], better, what)
        for k in _RULES:
            flags[k][idx] = part[k]
        off = int(idx[0])
        signals += [Signal(g.rule, g.start + off, g.end + off, g.direction, g.assessment,
                           g.message) if off else g for g in sig]
    return flags, signals


def _positions(points: Any, labels: Sequence[str], what: str) -> list[int]:
    """Positions of chart points named by label (``"2026-07"``, a Period or date) or position."""
    if points is None:
        return []
    if isinstance(points, str | int | np.integer | pd.Period | pd.Timestamp):
        points = [points]
    out = []
    for p in points:
        if isinstance(p, int | np.integer) and not isinstance(p, bool):
            out.append(int(p))
            continue
        text = _label(p)
        if text not in labels:
            raise ValueError(f"{what} {text!r} is not a point of the chart; points run from "
                             f"{labels[0] if labels else '–'} to {labels[-1] if labels else '–'}")
        out.append(list(labels).index(text))
    return out


def _layout(n: int, labels: Sequence[str], rebase: Any, baseline: Any,
            freeze: int | None) -> mdc.Segments:
    span = None
    if baseline is not None:
        if not (isinstance(baseline, tuple | list) and len(baseline) == 2):
            raise ValueError(f"baseline must be a (first, last) pair, got {baseline!r}")
        span = tuple(_positions(list(baseline), labels, "baseline point"))
    return mdc.segments(n, rebase=_positions(rebase, labels, "rebase point"), baseline=span,
                        freeze=freeze)


def _finish(kind: str, y: np.ndarray, centre: np.ndarray, lcl: np.ndarray, ucl: np.ndarray,
            flags: dict[str, np.ndarray], signals: list[Signal], better: str | None,
            target: float | None) -> tuple[np.ndarray, str | None, str | None]:
    trend_dir = np.zeros(len(y), dtype=int)
    for s in signals:
        if s.rule == "trend":
            trend_dir[s.start:s.end + 1] = 1 if s.direction == "up" else -1
    special = np.logical_or.reduce([flags[c] for c in _RULES])
    types = mdc.point_types(y, centre, special, trend_dir, better, flags["outside_limits"])
    variation = mdc.variation_icon(y, centre, types, better)
    last = np.flatnonzero(np.isfinite(lcl) | np.isfinite(ucl))
    assurance = None
    if target is not None and len(last):
        i = int(last[-1])
        assurance = mdc.assurance_icon(float(target), float(lcl[i]), float(ucl[i]), better)
    return types, variation, assurance


def _frame(columns: dict[str, Any], flags: dict[str, np.ndarray],
           types: np.ndarray) -> pd.DataFrame:
    """The points frame, built once: *columns*, the rule flags, signal (any rule), point_type."""
    signal = np.logical_or.reduce([flags[k] for k in _RULES])
    return pd.DataFrame({**columns, **{k: flags[k] for k in _RULES}, "signal": signal,
                         "point_type": types}, copy=False)


def _lazy_frame(columns: dict[str, Any], flags: dict[str, np.ndarray],
                types: np.ndarray) -> Any:
    """A function building the points frame on first access (see :class:`_Points`)."""
    return lambda: _frame(columns, flags, types)


def xmr_chart(values: Any, dates: Any = None, *, measure: str | None = None,
              better: Better | None = None, screen_moving_ranges: bool = False,
              freeze: int | None = None, rebase: Any = None, baseline: Any = None,
              target: float | None = None,
              annotations: dict[Any, str] | None = None) -> ChartResult:
    """XmR (individuals and moving range) chart with the Making Data Count rules.

    Parameters
    ----------
    values : array-like or Series
        The series in time order (e.g. ``aggregate(...)["mean_change"]``). Missing values are
        dropped before the moving ranges are taken and shown as gaps.
    dates : array-like, optional
        Labels per point; defaults to the Series index or 1..n.
    measure : str, optional
        Measure code whose ``better`` judges signals.
    better : {"lower", "higher"}, optional
        Overrides the measure's direction.
    screen_moving_ranges : bool
        Drop moving ranges above 3.267 × their mean and recompute the mean before setting the
        limits (Nelson 1982; NHSRplotthedots' ``screen_outliers``). Off by default: the plain
        Wheeler limits.
    freeze : int, optional
        Compute the mean and the mean moving range from the first *freeze* points of each
        segment only (NHSRplotthedots' ``fix_after_n_points``) and judge every point by them.
    rebase : label, position or list of them, optional
        Declared changes: from each, the limits are recalculated from the points after it, and
        the rules run within each segment (NHSRplotthedots' ``rebase``).
    baseline : (first, last), optional
        Labels or positions of a baseline period whose points alone set the limits of their
        segment (frozen for the rest of it).
    target : float, optional
        A target, for the assurance icon (see :mod:`mfr_outcomes.mdc`).
    annotations : dict, optional
        Label or position -> a short text, drawn on the chart.

    Returns
    -------
    ChartResult
        ``points`` columns: label, value, segment, baseline, centre (the mean), lcl, ucl
        (mean ∓ 2.66 × mean MR of the segment's baseline), sigma, mr (moving range; missing at
        a segment's first point), mr_centre, mr_ucl (3.267 × mean MR), mr_outside_limit,
        outside_limits, shift, trend, two_of_three, signal, point_type. ``stats`` (of the
        latest segment): mean, mean_mr, sigma, lcl, ucl, mr_ucl, n, n_baseline, and
        ``segments`` (one dict a segment). ``variation`` and ``assurance`` are the icons.

    Examples
    --------
    >>> r = xmr_chart([10, 12, 11, 13, 12])
    >>> round(r.stats["mean_mr"], 3), round(r.stats["ucl"], 3)
    (1.5, 15.59)
    """
    y, labels, _ = _as_values(values, dates)
    better = _resolve_better(measure, better)
    if not len(y):
        raise ValueError("xmr_chart: no values to chart (the series is empty)")
    lay = _layout(len(y), labels, rebase, baseline, freeze)
    n = len(y)
    finite = np.isfinite(y)
    notes: list[str] = []
    cols = {k: np.full(n, np.nan) for k in ("centre", "lcl", "ucl", "sigma", "mr", "mr_centre",
                                            "mr_ucl")}
    seg_stats = []
    for s in np.unique(lay.segment):
        idx = np.flatnonzero(lay.segment == s)
        pos = idx[finite[idx]]
        cols["mr"][pos[1:]] = np.abs(np.diff(y[pos]))
        pos_b = idx[finite[idx] & lay.baseline[idx]]
        yb, mr_b = y[pos_b], np.abs(np.diff(y[pos_b]))
        mean = float(yb.mean()) if len(yb) else np.nan
        mean_mr = float(mr_b.mean()) if len(mr_b) else np.nan
        if screen_moving_ranges and len(mr_b):
            kept = mr_b[mr_b < MR_LIMIT * mean_mr]
            if len(kept):
                mean_mr = float(kept.mean())
        where = f" (from {labels[idx[0]]})" if len(lay.starts) else ""
        if len(yb) < 2:
            _caution(notes, f"Fewer than two values{where}: no moving range, so no process "
                            "limits.")
        elif len(yb) < 12:
            _caution(notes, f"Only {len(yb)} values{where}: limits from fewer than 12 points "
                            "are provisional (Making Data Count suggests 15–20).")
        if len(mr_b) and mean_mr == 0:
            _caution(notes, f"Every moving range is zero{where} (the values never change): the "
                            "process limits collapse onto the mean, so any different future "
                            "value would signal.")
        sigma = XMR_LIMIT / 3 * mean_mr
        vals = {"centre": mean, "lcl": mean - XMR_LIMIT * mean_mr,
                "ucl": mean + XMR_LIMIT * mean_mr, "sigma": sigma, "mr_centre": mean_mr,
                "mr_ucl": MR_LIMIT * mean_mr}
        for k, v in vals.items():
            cols[k][idx] = v
        seg_stats.append({"first": labels[idx[0]], "mean": mean, "mean_mr": mean_mr,
                          "sigma": sigma, "lcl": vals["lcl"], "ucl": vals["ucl"],
                          "mr_ucl": vals["mr_ucl"], "n": int(finite[idx].sum()),
                          "n_baseline": int(len(yb))})
    flags, signals = _all_rules(lay.segment, y, cols["centre"], cols["lcl"], cols["ucl"],
                                cols["sigma"], labels, better, "mean")
    with np.errstate(invalid="ignore"):
        mr_out = np.isfinite(cols["mr"]) & (cols["mr"] > cols["mr_ucl"])
    for i in np.flatnonzero(mr_out):
        signals.append(Signal("mr_outside_limit", int(i), int(i), "none", "neutral",
                              f"The moving range at {labels[i]} ({_num(cols['mr'][i])}) is "
                              f"above its upper limit {_num(cols['mr_ucl'][i])}: an unusually "
                              f"large jump."))
    signals.sort(key=lambda s: (s.start, s.rule))
    types, variation, assurance = _finish("xmr", y, cols["centre"], cols["lcl"], cols["ucl"],
                                          flags, signals, better, target)
    points = _lazy_frame({"label": labels, "value": y, "segment": lay.segment,
                          "baseline": lay.baseline, **cols, "mr_outside_limit": mr_out},
                         flags, types)
    st = dict(seg_stats[-1])
    st.pop("first")
    st.update(n=int(finite.sum()), segments=seg_stats)
    return ChartResult("xmr", points, signals, notes, st, measure, better, variation=variation,
                       assurance=assurance, target=target,
                       annotations=_annotations(annotations, labels, lay))


def _annotations(annotations: dict[Any, str] | None, labels: Sequence[str],
                 lay: mdc.Segments | None) -> list[tuple[int, str]]:
    out = []
    for key, text in (annotations or {}).items():
        out.append((_positions(key, labels, "annotation point")[0], str(text)))
    if lay is not None:
        out += [(r, "limits recalculated") for r in lay.starts
                if r not in {p for p, _ in out}]
    return sorted(out)


# --------------------------------------------------------------------------------------------
# p-chart


def p_chart(successes: Any, totals: Any, dates: Any = None, *,
            better: Better | None = "higher", what: str = "responders",
            freeze: int | None = None, rebase: Any = None, baseline: Any = None,
            target: float | None = None,
            annotations: dict[Any, str] | None = None) -> ChartResult:
    """p-chart of a proportion (e.g. the responder rate per period), limits varying by subgroup.

    Parameters
    ----------
    successes, totals : array-like
        Counts per subgroup (e.g. ``n_responders`` and ``n_completed`` of :func:`aggregate`).
        Subgroups with total 0 are shown as gaps and left out of p̄.
    dates : array-like, optional
        Labels per subgroup; defaults to the index of *successes* when a Series, else 1..n.
    better : {"lower", "higher"} or None
        Which direction of the proportion is improvement ("higher" for responders).
    what : str
        What is counted, for the sentences.
    freeze, rebase, baseline, target, annotations
        As for :func:`xmr_chart` (p̄ per segment, from its baseline subgroups).

    Returns
    -------
    ChartResult
        ``points`` columns: label, successes, totals, value (proportion), segment, baseline,
        centre (p̄), sigma (√(p̄(1 − p̄)/nᵢ)), lcl, ucl (p̄ ∓ 3σ clipped to [0, 1]),
        outside_limits, shift, trend, two_of_three, signal, point_type. ``stats``: p_bar (of
        the latest segment), n_subgroups, total, segments.

    Examples
    --------
    >>> r = p_chart([5, 6, 4], [10, 12, 8])
    >>> round(r.stats["p_bar"], 3)
    0.5
    """
    if dates is None and isinstance(successes, pd.Series):
        dates = successes.index
    x = np.asarray(pd.to_numeric(pd.Series(successes), errors="coerce"), dtype="float64")
    n = np.asarray(pd.to_numeric(pd.Series(totals), errors="coerce"), dtype="float64")
    if x.shape != n.shape:
        raise ValueError(f"successes has {len(x)} entries but totals has {len(n)}")
    bad = np.isfinite(x) & np.isfinite(n) & ((x < 0) | (n < 0) | (x > n))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"p_chart: subgroup {i + 1} has {x[i]:g} {what} out of {n[i]:g}; counts "
                         "must satisfy 0 <= successes <= totals")
    _, labels, _ = _as_values(np.zeros(len(x)), dates)
    lay = _layout(len(x), labels, rebase, baseline, freeze)
    ok = np.isfinite(x) & np.isfinite(n) & (n > 0)
    notes: list[str] = []
    if better is not None:
        better = _resolve_better(None, better)
    p_bar = np.full(len(x), np.nan)
    seg_stats = []
    for s in np.unique(lay.segment):
        idx = np.flatnonzero(lay.segment == s)
        okb = idx[ok[idx] & lay.baseline[idx]]
        pb = float(x[okb].sum() / n[okb].sum()) if len(okb) else np.nan
        p_bar[idx] = pb
        seg_stats.append({"first": labels[idx[0]], "p_bar": pb, "n_subgroups": int(ok[idx].sum())})
        if len(okb) and pb in (0.0, 1.0):
            _caution(notes, f"Every subgroup has {'no' if pb == 0 else 'only'} {what}: the "
                            "limits collapse onto the centre line.")
    if not ok.any():
        notes.append(f"No subgroup has both a count of {what} and a denominator above 0: "
                     "nothing to chart.")
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(ok, x / n, np.nan)
        sigma = np.where(ok, np.sqrt(p_bar * (1 - p_bar) / n), np.nan)
    lcl = np.clip(p_bar - 3 * sigma, 0, 1)
    ucl = np.clip(p_bar + 3 * sigma, 0, 1)
    flags, signals = _all_rules(lay.segment, p, p_bar, lcl, ucl, sigma, labels, better,
                                "overall proportion")
    signals.sort(key=lambda s: (s.start, s.rule))
    types, variation, assurance = _finish("p", p, p_bar, lcl, ucl, flags, signals, better,
                                          target)
    points = _lazy_frame({"label": labels, "successes": x, "totals": n, "value": p,
                          "segment": lay.segment, "baseline": lay.baseline, "centre": p_bar,
                          "sigma": sigma, "lcl": lcl, "ucl": ucl}, flags, types)
    st = {"p_bar": seg_stats[-1]["p_bar"] if seg_stats else np.nan,
          "n_subgroups": int(ok.sum()), "total": float(n[ok].sum()), "segments": seg_stats}
    if ok.any() and ok.sum() < 12:
        _caution(notes, f"Only {int(ok.sum())} subgroups: p-chart limits from fewer than 12 "
                 "points are provisional.")
    return ChartResult("p", points, signals, notes, st, None, better, variation=variation,
                       assurance=assurance, target=target,
                       annotations=_annotations(annotations, labels, lay))
