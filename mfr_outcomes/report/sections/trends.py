"""Trends: monthly Making Data Count charts (XmR and p-charts) with their icons, and a summary
table of every chart at the top of the section."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes import mdc
from mfr_outcomes.report.blocks import Section, Table
from mfr_outcomes.report.context import ReportContext
from mfr_outcomes.vocab import TREATMENT_TECHNIQUES

__all__ = ["build", "monthly_frame", "chart_keys"]


def chart_keys(measure: str) -> dict[str, str]:
    """``--target`` names of the charts: the measure code (its monthly mean before sessions),
    ``<measure>_change`` (within-session change), ``responders`` (proportion), and
    ``adverse_events`` (proportion of sessions)."""
    return {measure: "mean before sessions", f"{measure}_change": "within-session change",
            "responders": "responders", "adverse_events": "sessions with an adverse event"}


def monthly_frame(study: Any, measure: str) -> pd.DataFrame:
    from mfr_outcomes import qi

    agg = qi.aggregate(study, measure, period="month")
    table = agg[["n_patients", "n_sessions", "n_pre", "mean_pre", "n_paired", "mean_change",
                 "n_completed", "n_responders", "responder_rate"]].copy()
    table.insert(0, "month", agg["period"].astype(str))
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
        f"whether the process will meet it. A chart with fewer than {qi.MIN_SPC_POINTS} "
        f"months with a value says 'not enough data' instead. A month is left out of a chart (a gap) when it has fewer than "
        f"{ctx.min_cell} patients or readings, or, for a proportion, fewer than "
        f"{ctx.min_cell} events in it.")
    sec.later(lambda: _summary(ctx))
    table = monthly_frame(ctx.study, ctx.measure)
    ctx.add_table(sec, Table(
        "monthly", f"{m.label} by calendar month.", table,
        counts=("patients", "sessions", "n_pre", "n_paired", "finished_care", "responders"),
        linked={"mean_pre": ("n_pre", "patients"), "mean_change": ("n_paired", "patients"),
                "responder_percent": ("finished_care", "responders")},
        ratios=("responder_percent",), decimals={"responder_percent": 0}, keys=("month",),
        by_site=lambda st: monthly_frame(st, ctx.measure), scope="history"))
    k = ctx.min_cell
    months = table["month"].tolist()
    enough = table["patients"] >= k
    pre = table["mean_pre"].where((table["n_pre"] >= k) & enough).to_numpy()
    change = table["mean_change"].where((table["n_paired"] >= k) & enough).to_numpy()
    targets = ctx.options.targets
    specs: list[tuple[str, str, Callable[[], Any], str, bool]] = [
        (ctx.measure, f"Monthly mean {m.label} before sessions",
         lambda: qi.xmr_chart(pre, months, measure=ctx.measure, **_layout(ctx, ctx.measure)),
         m.axis_label, False),
        (f"{ctx.measure}_change", f"Monthly mean within-session change of {m.label}",
         lambda: qi.xmr_chart(change, months, better=m.better,
                              **_layout(ctx, f"{ctx.measure}_change")),
         f"post − pre ({m.unit})", False)]
    if m.threshold_points is not None or m.mcid_percent is not None:
        # a p-chart shows its counts (the limits give the denominator): a month is drawn only
        # when both are shown here and are not small at another site (the cross-report rule)
        ok = (table["finished_care"] >= k) & (table["responders"] >= k)
        ok &= ~table["month"].isin(_small_elsewhere(ctx, ("finished_care", "responders")))
        succ = table["responders"].where(ok).to_numpy(dtype="float64")
        tot = table["finished_care"].where(ok).to_numpy(dtype="float64")
        specs.append(("responders", "Responders among patients finishing care in the month",
                      lambda: qi.p_chart(succ, tot, months, better="higher", what="responders",
                                         **_layout(ctx, "responders")),
                      "proportion of responders", True))
    for key, title, make, ylabel, percent in specs:
        sec.heading(title)
        ctx.attempt(sec, f"The chart '{title}'", _chart, ctx, sec, key, title, make, ylabel,
                    percent, targets)
    sec.heading("Treatment sessions with an adverse event")
    ctx.attempt(sec, "The chart of adverse events", _ae_chart, ctx, sec)


def _small_elsewhere(ctx: ReportContext, columns: tuple[str, ...],
                     frame_of: Callable[[Any], pd.DataFrame] | None = None) -> set[str]:
    """Months in which another site's count of *columns* is small (from 1 to min_cell − 1)."""
    frame_of = frame_of or (lambda st: monthly_frame(st, ctx.measure))
    out: set[str] = set()
    for _, history in ctx.other_sites():
        try:
            other = frame_of(history)
        except Exception:  # noqa: BLE001 - a site without this measure hides nothing here
            continue
        for col in columns:
            v = pd.to_numeric(other[col], errors="coerce")
            out |= set(other.loc[(v > 0) & (v < ctx.min_cell), "month"].astype(str))
    return out


def _ae_counts(study: Any) -> pd.DataFrame:
    s = study.sessions
    s = s[s["technique"].astype(str).isin(TREATMENT_TECHNIQUES) & s["adverse_event"].notna()]
    if s.empty:
        return pd.DataFrame(columns=["month", "events", "sessions"])
    month = pd.to_datetime(s["session_date"]).dt.to_period("M")
    g = s.assign(_e=s["adverse_event"].astype(str) != "none", _m=month).groupby("_m")["_e"]
    counts = pd.DataFrame({"events": g.sum(), "sessions": g.size()})
    counts = counts.reindex(pd.period_range(counts.index.min(), counts.index.max(), freq="M"),
                            fill_value=0)
    return counts.assign(month=[str(p) for p in counts.index]).reset_index(drop=True)


def _layout(ctx: ReportContext, key: str) -> dict[str, Any]:
    o = ctx.options
    return {"rebase": list(o.rebase) or None, "baseline": o.baseline,
            "target": o.targets.get(key)}


def _chart(ctx: ReportContext, sec: Section, key: str, title: str, make: Callable[[], Any],
           ylabel: str, percent: bool, targets: dict[str, float]) -> None:
    import warnings

    from mfr_outcomes import plots

    with warnings.catch_warnings():
        # a chart's cautions are its notes, shown under it when it is drawn
        warnings.simplefilter("ignore")
        res = make()
    short = res.shortfall()
    ctx.charts.append({"chart": title, "key": key, "points": res.n_points,
                       "variation": None if short else res.variation,
                       "assurance": None if short else res.assurance,
                       "target": targets.get(key, np.nan)})
    if short:
        sec.para(short)
        return
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
    months = pd.PeriodIndex(res.points["label"].astype(str), freq="M")
    inside = np.flatnonzero((months.start_time >= start) & (months.start_time < end))
    del label
    return (inside[0] - 0.5, inside[-1] + 0.5) if len(inside) else None


def _ae_chart(ctx: ReportContext, sec: Section) -> None:
    from mfr_outcomes import qi

    counts = _ae_counts(ctx.study)
    if counts.empty:
        sec.para("Adverse events were not recorded, so there is no chart.")
        return
    ok = (counts["sessions"] >= ctx.min_cell) & (counts["events"] >= ctx.min_cell)
    ok &= ~counts["month"].isin(_small_elsewhere(ctx, ("events", "sessions"), _ae_counts))
    labels = counts["month"].tolist()
    events = counts["events"].where(ok).to_numpy(dtype="float64")
    sessions = counts["sessions"].where(ok).to_numpy(dtype="float64")
    _chart(ctx, sec, "adverse_events", "Treatment sessions with an adverse event",
           lambda: qi.p_chart(events, sessions, labels, better="lower",
                              what="sessions with an event", **_layout(ctx, "adverse_events")),
           "proportion of sessions", True, ctx.options.targets)


def _summary(ctx: ReportContext) -> list[tuple[str, Any]]:
    """The summary of every chart with its icons (made once the charts are built)."""
    if not ctx.charts:
        return []
    frame = pd.DataFrame(ctx.charts)[["chart", "points", "variation", "assurance", "target"]]
    for col in ("variation", "assurance"):
        frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    table = Table("chart_summary", "Every chart of this section with its Making Data Count "
                  "icons (no icon: not enough data, or no target set).", frame,
                  decimals={"target": 2})
    ctx.tables[table.name] = table
    return [("heading", "Summary of the charts"), ("table", table)]
