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
    # Charts are drawn once the ledger has decided (later blocks), from the counts it
    # publishes; the grain is chosen now, so that the counts of that grain are in the ledger.
    charts: list[_Deferred] = []
    sec.later(lambda: _summary(ctx, series, charts))  # first: it draws them
    table = ctx.site_frame(("monthly", ctx.measure, "month"),
                           lambda st: monthly_frame(st, ctx.measure))
    monthly = ctx.add_table(sec, Table(
        "monthly", f"{m.label} by calendar month.", table,
        counts=("patients", "sessions", "n_pre", "n_paired", "finished_care", "responders"),
        linked={"mean_pre": ("n_pre", "patients"), "mean_change": ("n_paired", "patients"),
                "responder_percent": ("finished_care", "responders")},
        ratios=("responder_percent",), decimals={"responder_percent": 0}, keys=("month",)))
    series = _Series(ctx, monthly)
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
        what = f"The chart '{title}'"
        grain = ctx.attempt(sec, what, _prepare, ctx, series, key, make)
        if grain is not None:
            charts.append(_Deferred(ctx, sec, what, _chart, ctx, series, key, title, make,
                                    ylabel, percent, ctx.options.targets, grain))
    sec.heading("Treatment sessions with an adverse event")
    what = "The chart of adverse events"
    make = ctx.attempt(sec, what, _ae_prepare, ctx, sec, series)
    if make is not None:
        grain = ctx.attempt(sec, what, _prepare, ctx, series, "adverse_events", make)
        if grain is not None:
            charts.append(_Deferred(ctx, sec, what, _chart, ctx, series, "adverse_events",
                                    "Treatment sessions with an adverse event", make,
                                    "proportion of sessions", True, ctx.options.targets,
                                    grain))


class _Deferred:
    """A chart drawn after the ledger's decision: a later block of *sec*, made once (the
    summary of the charts, which comes first, draws every chart before it is made)."""

    def __init__(self, ctx: ReportContext, sec: Section, what: str,
                 fn: Callable[..., None], *args: Any) -> None:
        self.ctx, self.sec, self.what, self.fn, self.args = ctx, sec, what, fn, args
        self.blocks: list[tuple[str, Any]] | None = None
        sec.later(self)

    def __call__(self) -> list[tuple[str, Any]]:
        if self.blocks is None:
            part = Section(self.sec.key, self.sec.title)
            self.ctx.attempt(part, self.what, self.fn, part, *self.args)
            self.sec.problems.extend(part.problems)
            self.blocks = part.blocks
        return self.blocks


def _cell_name(kind: str, col: str) -> str:
    return f"ae_{col}" if kind == "ae" else col


#: Counts each proportion chart plots (numerator, denominator) in its frame.
_PROPORTION = {"responders": ("responders", "finished_care"),
               "adverse_events": ("events", "sessions")}


def _prepare(ctx: ReportContext, series: _Series, key: str,
             make: Callable[[str], Any]) -> str:
    """The grain of a chart (monthly, or weekly when months are too few for its rules), chosen
    with the small-count gates alone, and the counts a proportion chart plots at that grain
    registered in the ledger with their margins: the periods add up to the monthly total."""
    import warnings

    grain, series.points[key] = GRAINS[0], {}
    for g in GRAINS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its cautions are shown when it is drawn
            got = make(g)
        series.points[key][g] = got.n_points
        if not got.shortfall():
            grain = g
            break
    if key in _PROPORTION:
        series.register(key, grain, _PROPORTION[key])
    return grain


class _Series:
    """The values a chart plots, by grain, with the disclosure gates applied: a mean is shown
    when its period has at least min_cell patients and readings; a proportion when both its
    counts are at least min_cell here and not small at another site (the limits of a p-chart
    give its denominator). Once the ledger has decided (:attr:`decided`), a period is shown
    only when the ledger publishes its counts too: the counts of a proportion chart are ledger
    cells (:meth:`register`). A mean is drawn as the monthly table shows it (a mean of enough
    readings, whether or not its count is hidden to protect another)."""

    def __init__(self, ctx: ReportContext, monthly: Table) -> None:
        self.ctx = ctx
        self.frames = {("monthly", "month"): monthly.frame}
        self.tables: dict[tuple[str, str], Table] = {("monthly", "month"): monthly}
        self.points: dict[str, dict[str, int]] = {}
        self.decided = False

    def frame(self, grain: str, kind: str = "monthly") -> pd.DataFrame:
        if (kind, grain) not in self.frames:
            measure = self.ctx.measure
            self.frames[(kind, grain)] = self.ctx.site_frame(
                ("monthly", measure, grain), lambda st: monthly_frame(st, measure, grain)) \
                if kind == "monthly" else \
                self.ctx.site_frame(("ae", grain), lambda st: _ae_counts(st, grain))
        return self.frames[(kind, grain)]

    def labels(self, grain: str) -> list[str]:
        return self.frame(grain)[grain].tolist()

    def register(self, key: str, grain: str, cols: tuple[str, ...]) -> Table:
        """Put the counts *cols* of chart *key* at *grain* in the ledger (a table registered but
        not shown: the chart publishes it), with the margin a reader finds: each column adds
        up to the monthly column's total."""
        kind = "ae" if key == "adverse_events" else "monthly"
        if (kind, grain) in self.tables:
            return self.tables[(kind, grain)]
        ctx = self.ctx
        # the adverse-event counts are named apart from the monthly table's "sessions" (all
        # sessions), so that no month is taken for the same count by its name
        names = {c: _cell_name(kind, c) for c in cols}

        table = Table(f"chart_{key}_{grain}", f"Counts of the chart '{key}' by {grain}.",
                      self.frame(grain, kind).rename(columns=names),
                      counts=tuple(names.values()), keys=(grain,))
        ctx.add_table(Section("chart", ""), table)  # in the ledger, not in the report
        self.tables[(kind, grain)] = table
        if grain != "month":
            months = self.register(key, "month", cols)
            for col in names.values():
                total = ctx.count(int(sum(ctx.ledger.values[c.id]
                                          for c in table.column_cells(col))))
                ctx.ledger.relate_if(total, table.column_cells(col))
                ctx.ledger.relate_if(total, months.column_cells(col))
        return table

    def published(self, grain: str, cols: tuple[str, ...], kind: str = "monthly") -> np.ndarray:
        """True for each period whose counts *cols* the ledger publishes (all True before the
        decision, or for counts it does not hold)."""
        n = len(self.frame(grain, kind))
        ok = np.ones(n, dtype=bool)
        table = self.tables.get((kind, grain))
        if not self.decided or table is None:
            return ok
        for r in range(n):
            cells = [table.cells.get((r, _cell_name(kind, c))) for c in cols]
            ok[r] = not any(c is not None and self.ctx.ledger.hidden(c) for c in cells)
        return ok

    def means(self, grain: str, mean: str, n: str) -> tuple[np.ndarray, list[str]]:
        t, k = self.frame(grain), self.ctx.min_cell
        ok = (t[n] >= k) & (t["patients"] >= k)  # a mean reveals no count: as in the table
        return t[mean].where(ok).to_numpy(dtype="float64"), self.labels(grain)

    def proportion(self, grain: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        t, k = self.frame(grain), self.ctx.min_cell
        ok = (t["finished_care"] >= k) & (t["responders"] >= k)
        ok &= ~t[grain].isin(_small_elsewhere(
            self.ctx, ("finished_care", "responders"), ("monthly", self.ctx.measure, grain),
            lambda st: monthly_frame(st, self.ctx.measure, grain), grain))
        ok &= self.published(grain, _PROPORTION["responders"])
        return (t["responders"].where(ok).to_numpy(dtype="float64"),
                t["finished_care"].where(ok).to_numpy(dtype="float64"), self.labels(grain))

    def adverse(self, grain: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        counts, k = self.frame(grain, "ae"), self.ctx.min_cell
        ok = (counts["sessions"] >= k) & (counts["events"] >= k)
        ok &= ~counts[grain].isin(_small_elsewhere(
            self.ctx, ("events", "sessions"), ("ae", grain), lambda st: _ae_counts(st, grain),
            grain))
        ok &= self.published(grain, _PROPORTION["adverse_events"], "ae")
        return (counts["events"].where(ok).to_numpy(dtype="float64"),
                counts["sessions"].where(ok).to_numpy(dtype="float64"),
                counts[grain].tolist())


def _small_elsewhere(ctx: ReportContext, columns: tuple[str, ...], what: tuple,
                     frame_of: Callable[[Any], pd.DataFrame], key: str = "month") -> set[str]:
    """Periods (column *key*) in which another site's count of *columns* is small (from 1 to
    min_cell − 1). *frame_of* computes the counts from a site's record, once per site and
    *what* for the whole report (see :class:`~mfr_outcomes.report.scope.SiteRecords`)."""
    out: set[str] = set()
    for site in ctx.other_sites():
        try:
            other = ctx.site_frame(what, frame_of, site)
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


def _chart(sec: Section, ctx: ReportContext, series: _Series, key: str, title: str,
           make: Callable[[str], Any], ylabel: str, percent: bool,
           targets: dict[str, float], grain: str) -> None:
    """The chart *make(grain)* draws, from the counts the ledger publishes (drawn after its
    decision): monthly, or weekly when months were too few for its rules and weeks enough."""
    import warnings

    from mfr_outcomes import plots, qi

    points = series.points.get(key, {})
    with warnings.catch_warnings():
        # a chart's cautions are its notes, shown under it when it is drawn
        warnings.simplefilter("ignore")
        res = make(grain)
    short = res.shortfall()
    ctx.charts.append({"chart": title, "key": key, "grain": grain, "points": res.n_points,
                       "variation": None if short else res.variation,
                       "assurance": None if short else res.assurance,
                       "target": targets.get(key, np.nan)})
    if short:
        weekly = points.get("week") if grain == "month" else None
        sec.para(short if weekly is None else
                 f"{short} By week it would have {weekly} points with a value, too few as well.")
        return
    if grain != "month":
        sec.para(f"Drawn by week (Monday to Sunday, each labelled by its Monday): the monthly "
                 f"series has only {points.get('month', 0)} months with a value, fewer than "
                 f"the {qi.MIN_SPC_POINTS} its rules need. Weekly points rest on fewer "
                 f"patients, so they vary more from week to week.")
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
    gaps = int(res.points["value"].isna().sum())
    if gaps and ctx.min_cell > 1:
        what = (f"fewer than {ctx.min_cell} events or cases in it" if key in _PROPORTION
                else f"fewer than {ctx.min_cell} patients or readings in it")
        across = (", or so that the all-sites report and the other sites' reports cannot "
                  "give it away" if ctx.options.site is not None else "")
        sentences.append(
            f"Note: {gaps} {grain}(s) are not shown (gaps): a {grain} with {what}, or whose "
            f"count this report hides (in its tables, or to protect another count{across}), "
            f"is left out, and the centre line and limits are computed from the {grain}s "
            f"shown only.")
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


def _ae_prepare(ctx: ReportContext, sec: Section, series: _Series) -> Callable[[str], Any] | None:
    """The adverse-event chart's maker, its monthly counts registered in the ledger (the
    safety section ties the months of the report period to its totals); None (with a
    sentence) when adverse events were not recorded."""
    from mfr_outcomes import qi

    if series.frame("month", "ae").empty:
        sec.para("Adverse events were not recorded, so there is no chart.")
        return None
    series.register("adverse_events", "month", _PROPORTION["adverse_events"])

    def make(grain: str) -> Any:
        events, sessions, labels = series.adverse(grain)
        return qi.p_chart(events, sessions, labels, better="lower",
                          what="sessions with an event",
                          **_layout(ctx, "adverse_events", labels))

    return make


def _summary(ctx: ReportContext, series: _Series,
             charts: list[_Deferred]) -> list[tuple[str, Any]]:
    """The summary of every chart with its icons: the first later block of the section, so it
    draws every chart (now that the ledger has decided) before it is made."""
    series.decided = True
    for chart in charts:
        chart()
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
