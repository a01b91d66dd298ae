"""Trends: Making Data Count charts (XmR and p-charts) with their icons, and a summary table of
every chart at the top of the section.

Charts are monthly. When a chart has fewer monthly points with a value than its rules need
(:data:`mfr_outcomes.qi.MIN_SPC_POINTS`), it is drawn by week (Monday to Sunday) if that gives
enough points; each chart says its grain, and the summary table has it in its ``grain``
column. Months named by ``--rebase`` and ``--baseline`` become the weeks starting in them."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes import mdc
from mfr_outcomes.report.blocks import Section, Table
from mfr_outcomes.report.context import ReportContext
from mfr_outcomes.vocab import TREATMENT_TECHNIQUES

__all__ = ["build", "monthly_frame", "chart_keys", "GRAINS"]

#: The grains a chart may use, in the order they are tried.
GRAINS = ("month", "week")


def chart_keys(measure: str) -> dict[str, str]:
    """``--target`` names of the charts: the measure code (its monthly mean before sessions),
    ``<measure>_change`` (within-session change), ``responders`` (proportion), and
    ``adverse_events`` (proportion of sessions)."""
    return {measure: "mean before sessions", f"{measure}_change": "within-session change",
            "responders": "responders", "adverse_events": "sessions with an adverse event"}


def monthly_frame(study: Any, measure: str, grain: str = "month") -> pd.DataFrame:
    """Counts and means by calendar month (or week: *grain*), the first column named after it
    and holding the chart's labels ("2026-07"; a week by its Monday, "2026-07-06")."""
    from mfr_outcomes import qi

    agg = qi.aggregate(study, measure, period=grain)
    table = agg[["n_patients", "n_sessions", "n_pre", "mean_pre", "n_paired", "mean_change",
                 "n_completed", "n_responders", "responder_rate"]].copy()
    table.insert(0, grain, [qi.period_label(p) for p in agg["period"]])
    table["responder_rate"] = 100.0 * table["responder_rate"]
    table["n_responders"] = table["n_responders"].astype("float64")
    return table.rename(columns={"responder_rate": "responder_percent", "n_patients": "patients",
                                 "n_sessions": "sessions", "n_completed": "finished_care",
                                 "n_responders": "responders"})


def build(ctx: ReportContext, sec: Section) -> None:
    from mfr_outcomes import qi

    m = ctx.m
    window = "up to the end of the report period" if ctx.options.period else \
        "over the whole record"
    sec.para(
        f"Statistical process control charts show whether care is stable over time or shows a "
        f"signal of change. They use each calendar month of the scope's site(s) {window}, and "
        f"follow NHS England's Making Data Count: points are grey (common cause), blue "
        f"(special cause, improvement) or orange (special cause, concern); the variation icon "
        f"says what the latest point shows, and the assurance icon, when a target is set, "
        f"whether the process will meet it. A chart needs at least {qi.MIN_SPC_POINTS} points "
        f"with a value: with fewer months it is drawn by week (Monday to Sunday) when that "
        f"gives enough, and otherwise says 'not enough data' instead. Each chart says its "
        f"grain. A month "
        f"(or week) is left out of a chart (a gap) when it has fewer than {ctx.min_cell} "
        f"patients or readings, or, for a proportion, fewer than {ctx.min_cell} events in it.")
    sec.later(lambda: _summary(ctx))
    table = monthly_frame(ctx.study, ctx.measure)
    ctx.add_table(sec, Table(
        "monthly", f"{m.label} by calendar month.", table,
        counts=("patients", "sessions", "n_pre", "n_paired", "finished_care", "responders"),
        linked={"mean_pre": ("n_pre", "patients"), "mean_change": ("n_paired", "patients"),
                "responder_percent": ("finished_care", "responders")},
        ratios=("responder_percent",), decimals={"responder_percent": 0}, keys=("month",),
        by_site=lambda st: monthly_frame(st, ctx.measure), scope="history"))
    series = _Series(ctx, table)
    specs: list[tuple[str, str, Callable[[str], Any], str, bool]] = [
        (ctx.measure, f"Mean {m.label} before sessions",
         lambda g: qi.xmr_chart(*series.means(g, "mean_pre", "n_pre"), measure=ctx.measure,
                                **_layout(ctx, ctx.measure, series.labels(g))),
         m.axis_label, False),
        (f"{ctx.measure}_change", f"Mean within-session change of {m.label}",
         lambda g: qi.xmr_chart(*series.means(g, "mean_change", "n_paired"), better=m.better,
                                **_layout(ctx, f"{ctx.measure}_change", series.labels(g))),
         f"post − pre ({m.unit})", False)]
    if m.threshold_points is not None or m.mcid_percent is not None:
        specs.append(("responders", "Responders among patients finishing care",
                      lambda g: qi.p_chart(*series.proportion(g), better="higher",
                                           what="responders",
                                           **_layout(ctx, "responders", series.labels(g))),
                      "proportion of responders", True))
    for key, title, make, ylabel, percent in specs:
        sec.heading(title)
        ctx.attempt(sec, f"The chart '{title}'", _chart, ctx, sec, key, title, make, ylabel,
                    percent, ctx.options.targets)
    sec.heading("Treatment sessions with an adverse event")
    ctx.attempt(sec, "The chart of adverse events", _ae_chart, ctx, sec)


class _Series:
    """The values a chart plots, by grain, with the disclosure gates applied: a mean is shown
    when its period has at least min_cell patients and readings; a proportion when both its
    counts are at least min_cell here and not small at another site (the limits of a p-chart
    give its denominator)."""

    def __init__(self, ctx: ReportContext, monthly: pd.DataFrame) -> None:
        self.ctx = ctx
        self.frames = {"month": monthly}

    def frame(self, grain: str) -> pd.DataFrame:
        if grain not in self.frames:
            self.frames[grain] = monthly_frame(self.ctx.study, self.ctx.measure, grain)
        return self.frames[grain]

    def labels(self, grain: str) -> list[str]:
        return self.frame(grain)[grain].tolist()

    def means(self, grain: str, mean: str, n: str) -> tuple[np.ndarray, list[str]]:
        t, k = self.frame(grain), self.ctx.min_cell
        ok = (t[n] >= k) & (t["patients"] >= k)
        return t[mean].where(ok).to_numpy(dtype="float64"), self.labels(grain)

    def proportion(self, grain: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        t, k = self.frame(grain), self.ctx.min_cell
        ok = (t["finished_care"] >= k) & (t["responders"] >= k)
        ok &= ~t[grain].isin(_small_elsewhere(
            self.ctx, ("finished_care", "responders"),
            lambda st: monthly_frame(st, self.ctx.measure, grain), grain))
        return (t["responders"].where(ok).to_numpy(dtype="float64"),
                t["finished_care"].where(ok).to_numpy(dtype="float64"), self.labels(grain))


def _small_elsewhere(ctx: ReportContext, columns: tuple[str, ...],
                     frame_of: Callable[[Any], pd.DataFrame], key: str = "month") -> set[str]:
    """Periods (column *key*) in which another site's count of *columns* is small (from 1 to
    min_cell − 1)."""
    out: set[str] = set()
    for _, history in ctx.other_sites():
        try:
            other = frame_of(history)
        except Exception:  # noqa: BLE001 - a site without this measure hides nothing here
            continue
        for col in columns:
            v = pd.to_numeric(other[col], errors="coerce")
            out |= set(other.loc[(v > 0) & (v < ctx.min_cell), key].astype(str))
    return out


def _ae_counts(study: Any, grain: str = "month") -> pd.DataFrame:
    from mfr_outcomes import qi

    s = study.sessions
    s = s[s["technique"].astype(str).isin(TREATMENT_TECHNIQUES) & s["adverse_event"].notna()]
    if s.empty:
        return pd.DataFrame(columns=[grain, "events", "sessions"])
    freq = qi.PERIOD_FREQ[grain]
    period = pd.to_datetime(s["session_date"]).dt.to_period(freq)
    g = s.assign(_e=s["adverse_event"].astype(str) != "none", _m=period).groupby("_m")["_e"]
    counts = pd.DataFrame({"events": g.sum(), "sessions": g.size()})
    counts = counts.reindex(pd.period_range(counts.index.min(), counts.index.max(), freq=freq),
                            fill_value=0)
    return counts.assign(**{grain: [qi.period_label(p) for p in counts.index]}).reset_index(
        drop=True)


def _layout(ctx: ReportContext, key: str, labels: list[str]) -> dict[str, Any]:
    """Rebase, baseline and target of a chart whose points are *labels*: months given as
    options become the first week starting in them (rebase) and the weeks starting in them
    (baseline) on a weekly chart."""
    o = ctx.options
    rebase: list[Any] = list(o.rebase)
    baseline: Any = o.baseline
    if labels and len(labels[0]) == 10:  # weeks, by their Monday
        months = [lab[:7] for lab in labels]
        rebase = [months.index(r) if r in months else next(
            (i for i, mo in enumerate(months) if mo > r), r) for r in rebase]
        if baseline is not None:
            first = [i for i, mo in enumerate(months) if baseline[0] <= mo <= baseline[1]]
            baseline = (first[0], first[-1]) if first else baseline
    return {"rebase": rebase or None, "baseline": baseline, "target": o.targets.get(key)}


def _chart(ctx: ReportContext, sec: Section, key: str, title: str,
           make: Callable[[str], Any], ylabel: str, percent: bool,
           targets: dict[str, float]) -> None:
    """The chart *make(grain)* draws: monthly, or weekly when months are too few for its rules
    and weeks are enough."""
    import warnings

    from mfr_outcomes import plots, qi

    grain, res, points = "month", None, {}
    for g in GRAINS:
        with warnings.catch_warnings():
            # a chart's cautions are its notes, shown under it when it is drawn
            warnings.simplefilter("ignore")
            got = make(g)
        points[g] = got.n_points
        res = res or got
        if not got.shortfall():
            grain, res = g, got
            break
    monthly_points = points["month"]
    short = res.shortfall()
    ctx.charts.append({"chart": title, "key": key, "grain": grain, "points": res.n_points,
                       "variation": None if short else res.variation,
                       "assurance": None if short else res.assurance,
                       "target": targets.get(key, np.nan)})
    if short:
        weekly = points.get("week")
        sec.para(short if weekly is None else
                 f"{short} By week it would have {weekly} points with a value, too few as well.")
        return
    if grain != "month":
        sec.para(f"Drawn by week (Monday to Sunday, each labelled by its Monday): the monthly "
                 f"series has only {monthly_points} months with a value, fewer than the "
                 f"{qi.MIN_SPC_POINTS} its rules need. Weekly points rest on fewer patients, so "
                 f"they vary more from week to week.")
    else:
        sec.para("Drawn by calendar month.")
    title = f"{title}, by {grain}"
    shade = _period_shade(ctx, res)
    ctx.figure(sec, title.lower(),
               lambda: plots.spc_chart(res, ylabel=ylabel, title=title, percent=percent,
                                       shade=shade),
               title + (" (report period shaded)." if shade else "."),
               f"Making Data Count chart: {title}; {mdc.icon_text(res.variation)}.")
    sentences = [s.message for s in res.signals]
    if not sentences:
        sentences = ["No special cause: the variation is consistent with common causes."]
    sentences.append(f"Variation icon: {mdc.icon_text(res.variation)}.")
    if res.assurance:
        sentences.append(f"Assurance icon (target {res.target:g}): "
                         f"{mdc.icon_text(res.assurance)}.")
    sentences += [f"Note: {ctx.safe(n)}" for n in res.notes]
    sec.items(sentences)


def _period_shade(ctx: ReportContext, res: Any) -> tuple[float, float] | None:
    if ctx.options.period is None:
        return None
    label = ctx.options.period[2]
    start, end, _ = ctx.options.period
    starts = pd.to_datetime(res.points["label"].astype(str))  # "2026-07" or "2026-07-06"
    inside = np.flatnonzero((starts >= start) & (starts < end))
    del label
    return (inside[0] - 0.5, inside[-1] + 0.5) if len(inside) else None


def _ae_chart(ctx: ReportContext, sec: Section) -> None:
    from mfr_outcomes import qi

    if _ae_counts(ctx.study).empty:
        sec.para("Adverse events were not recorded, so there is no chart.")
        return

    def make(grain: str) -> Any:
        counts = _ae_counts(ctx.study, grain)
        ok = (counts["sessions"] >= ctx.min_cell) & (counts["events"] >= ctx.min_cell)
        ok &= ~counts[grain].isin(_small_elsewhere(
            ctx, ("events", "sessions"), lambda st: _ae_counts(st, grain), grain))
        labels = counts[grain].tolist()
        return qi.p_chart(counts["events"].where(ok).to_numpy(dtype="float64"),
                          counts["sessions"].where(ok).to_numpy(dtype="float64"), labels,
                          better="lower", what="sessions with an event",
                          **_layout(ctx, "adverse_events", labels))

    _chart(ctx, sec, "adverse_events", "Treatment sessions with an adverse event", make,
           "proportion of sessions", True, ctx.options.targets)


def _summary(ctx: ReportContext) -> list[tuple[str, Any]]:
    """The summary of every chart with its icons (made once the charts are built)."""
    if not ctx.charts:
        return []
    frame = pd.DataFrame(ctx.charts)[["chart", "grain", "points", "variation", "assurance",
                                      "target"]]
    for col in ("variation", "assurance"):
        frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    table = Table("chart_summary", "Every chart of this section with its Making Data Count "
                  "icons (no icon: not enough data, or no target set).", frame,
                  decimals={"target": 2})
    ctx.tables[table.name] = table
    return [("heading", "Summary of the charts"), ("table", table)]
