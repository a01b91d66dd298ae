"""Build the QI report of one clinic and period: a self-contained HTML file and its tables as CSV.

Each section is a module of :mod:`mfr_outcomes.report.sections` over one
:class:`~mfr_outcomes.report.context.ReportContext`; figures come only from
:mod:`mfr_outcomes.plots` (a plotting error is a reported failure naming the figure). Every
count goes through one ledger (:class:`~mfr_outcomes.report.disclosure.Ledger`) that decides
which are hidden, identifiers are removed from every text, the HTML template escapes every
value, and CSV text cells cannot start a spreadsheet formula.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.measures import get_measure
from mfr_outcomes.report.blocks import ReportResult, Section
from mfr_outcomes.report.context import Options, ReportContext, therapist_pseudonyms
from mfr_outcomes.report.disclosure import Redactor, safe_write
from mfr_outcomes.report.family import ALL_SITES, Scope, decide_family
from mfr_outcomes.report.icons import icon_svg
from mfr_outcomes.report.publish import (
    link_margins,
    publish_table,
    rank_cells,
    render_html,
    render_text,
    resolve_later,
    write_csv,
)
from mfr_outcomes.report.scope import SiteRecords, month_label
from mfr_outcomes.report.sections import SECTIONS
from mfr_outcomes.threads import forked, load_threads

__all__ = ["build_report"]

_ID_COLUMNS = ("patient_id", "session_id")


def _identifiers(study: Any) -> list[str]:
    ids: list[Any] = []
    for frame, cols in ((study.patients, ["patient_id"]),
                        (study.sessions, ["patient_id", "session_id"]),
                        (study.measurements, ["session_id"])):
        for c in cols:
            if c in frame.columns:  # distinct values first: millions of readings
                ids.extend(pd.Index(frame[c].dropna().unique()).astype(str).tolist())
    for f in getattr(study.report, "findings", []):
        if f.column in _ID_COLUMNS and f.value is not None:
            ids.append(f.value)
    return list(dict.fromkeys(ids))


def _options(study: Any, *, site: str | None, period: str | None, min_cell: int, measure: str,
             seed: int, targets: Mapping[str, float] | None, rebase: Sequence[str] | str | None,
             baseline: tuple[str, str] | str | None, name_therapists: bool,
             all_sites_alone: bool, scope_text: str, bounds: tuple | None) -> Options:
    if isinstance(rebase, str):
        rebase = [rebase]
    rebase = tuple(month_label(r, "rebase month") for r in (rebase or ()))
    if isinstance(baseline, str):
        if ":" not in baseline:
            raise ValueError(f"baseline {baseline!r} is not a range of months like "
                             f"2026-01:2026-06")
        baseline = tuple(baseline.split(":", 1))
    if baseline is not None:
        baseline = (month_label(baseline[0], "baseline month"),
                    month_label(baseline[1], "baseline month"))
        if baseline[0] > baseline[1]:
            raise ValueError(f"the baseline {baseline[0]}:{baseline[1]} ends before it starts")
    clean: dict[str, float] = {}
    for key, value in (targets or {}).items():
        try:
            clean[str(key)] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"target {key}={value!r} is not a number") from None
        if not np.isfinite(clean[str(key)]):
            raise ValueError(f"target {key}={value!r} is not a finite number")
    return Options(measure=measure, min_cell=min_cell, seed=int(seed), site=site, period=bounds,
                   scope_text=scope_text, targets=clean, rebase=rebase, baseline=baseline,
                   name_therapists=bool(name_therapists), all_sites_alone=bool(all_sites_alone))


def build_report(study: Any, out_dir: str | Path, *, site: str | None = None,
                 period: str | None = None, min_cell: int = 5, measure: str = "pain_nrs",
                 seed: int = 2026, targets: Mapping[str, float] | None = None,
                 rebase: Sequence[str] | str | None = None,
                 baseline: tuple[str, str] | str | None = None,
                 name_therapists: bool = False, all_sites_alone: bool = False) -> ReportResult:
    """Write the QI report of one clinic and period.

    Parameters
    ----------
    study : Study
        A loaded study (:func:`mfr_outcomes.load_study`).
    out_dir : str or Path
        Folder to write into (created): ``report.html`` and ``tables/<section>_<table>.csv``.
        A symbolic link inside it is refused, never written through.
    site : str, optional
        Keep only this site's patients.
    period : str, optional
        Keep only sessions in this quarter (``2026Q3``) or month (``2026-07``).
    min_cell : int
        Smallest count shown; counts from 1 to ``min_cell - 1`` appear as ``"<min_cell>"``
        (see :mod:`mfr_outcomes.report.disclosure` for the whole rule).
    measure : str
        Main outcome measure (a registered code present in the study).
    seed : int
        Seed for random steps, recorded in the methods section.
    targets : mapping, optional
        Chart name -> target, for the assurance icons: the measure code (its monthly mean),
        ``<measure>_change``, ``responders`` or ``adverse_events`` (proportions).
    rebase : month or list of months, optional
        Declared changes ("2026-07"): control limits are recalculated from each.
    baseline : (first, last) months or "2026-01:2026-06", optional
        Limits calculated on this period only and frozen after it.
    name_therapists : bool
        Show therapist codes instead of stable pseudonyms ("Therapist C").
    all_sites_alone : bool
        The study's all-sites report decides what it hides by itself, as a report of a study
        without sites (faster; its charts keep every point), and each site's report is
        protected against what that all-sites report publishes. By default (False) every
        report of a study with sites takes its share of one decision over the all-sites report
        and every site's, so that no count one of them hides can be worked out from all of
        them together. Give every report of a study and period the same value: use True only
        when the all-sites report is published without the sites' reports, or when the
        counts an attacker holding them all could pin (said in a caution) are acceptable.

    Returns
    -------
    ReportResult

    Raises
    ------
    ValueError
        With one sentence when an option is not usable, or when the output folder holds a
        symbolic link where the report would write.
    """
    if isinstance(min_cell, bool) or not isinstance(min_cell, int | np.integer) or min_cell < 1:
        raise ValueError(f"min_cell must be a whole number of at least 1, got {min_cell!r}")
    try:
        m = get_measure(measure)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None
    if measure not in study.measures:
        raise ValueError(f"measure {measure!r} ({m.label}) is not in this study; measures "
                         f"present: {', '.join(study.measures) or 'none'}")
    records = SiteRecords(study, period)
    history, scope_text, bounds = records.history(site)
    options = _options(study, site=site, period=period, min_cell=int(min_cell), measure=measure,
                       seed=seed, targets=targets, rebase=rebase, baseline=baseline,
                       name_therapists=name_therapists, all_sites_alone=all_sites_alone,
                       scope_text=scope_text, bounds=bounds)
    out = Path(out_dir)
    _check_out(out)
    redactor, names = Redactor(_identifiers(study)), therapist_pseudonyms(study)
    # the other scopes' counts are built beside this scope's report (in a child process on
    # a machine with two or more cores) and collected for the decision across reports
    others = _other_scopes(records, options, redactor, names)
    try:
        ctx, sections = _build_scope(history, options, redactor, names, records, figures=True)
    except BaseException:
        getattr(others, "cancel", lambda: None)()  # no child left behind
        raise
    within, across, family = _decide(records, ctx, others)
    if within:
        ctx.caution(f"{within} hidden count(s) are tied to other hidden counts only and "
                    f"could not be protected further.")
    if across:
        ctx.caution(f"{across} hidden count(s) of this report or of the all-sites report could "
                    f"be worked out from the all-sites report together with the sites' reports "
                    f"and could not be protected further.")
    resolve_later(sections)
    csv_paths = _write_tables(ctx, sections, out)
    for sec in sections:
        sec.blocks = [(k, render_text(b, ctx) if k in ("para", "list", "heading") else b)
                      for k, b in sec.blocks]
    where = f" — {site}" if site else ""
    when = f", {bounds[2]}" if bounds else ""
    html = render_html(ctx, sections, f"Myofascial release outcomes: QI report{where}{when}",
                       icon_svg)
    html_path = out / "report.html"
    safe_write(html_path, html, out)
    return ReportResult(html_path=html_path, csv_paths=csv_paths,
                        sections={s.key: s for s in sections}, failures=list(ctx.failures),
                        cautions=list(ctx.cautions), ledger=ctx.ledger, family=family)


def _build_scope(history: Any, options: Options, redactor: Redactor, names: dict[str, str],
                 records: SiteRecords, *, figures: bool
                 ) -> tuple[ReportContext, list[Section]]:
    """Every section of one scope's report, its counts in the ledger (not yet decided)."""
    ctx = ReportContext(history, options, redactor, records=records, names=names,
                        figures=figures)
    sections = []
    for key, (title, build) in SECTIONS.items():
        sec = Section(key, title)
        ctx.attempt(sec, f"The {title.lower()} section", build, ctx, sec)
        sections.append(sec)
    link_margins(ctx)
    rank_cells(ctx)
    return ctx, sections


def _other_scopes(records: SiteRecords, o: Options, redactor: Redactor, names: dict[str, str]
                  ) -> Callable[[], list[Scope]] | None:
    """The scopes other than *o*'s that its decision across reports needs (see
    :func:`_decide`), built without figures, as a function giving them; None when the report
    decides alone. The build starts at once in a child process when ``MFR_OUTCOMES_THREADS``
    (or the machine's cores) allows two (:func:`~mfr_outcomes.threads.forked`); the scopes are
    the same either way. Warnings of their fits are not this report's (each scope's own report
    gives them) and are not shown."""
    sites = records.sites()
    if o.min_cell <= 1 or not sites or (o.site is None and o.all_sites_alone):
        return None
    own = None if o.site is None else str(o.site)

    def build() -> list[Scope]:
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in [ALL_SITES, *sites]:
                site = None if name == ALL_SITES else name
                if site == own:
                    continue
                try:
                    history, text, bounds = records.history(site)
                except ValueError:  # no session of that site in the period: no such report
                    continue
                options = replace(o, site=site, scope_text=text, period=bounds)
                other, _ = _build_scope(history, options, redactor, names, records,
                                        figures=False)
                other.release()
                out.append(Scope(name, other.ledger, other.tables))
        return out

    return forked(build, load_threads() > 1)


def _decide(records: SiteRecords, ctx: ReportContext,
            others: Callable[[], list[Scope]] | None) -> tuple[int, int, dict[str, Any]]:
    """Decide which counts *ctx*'s report hides. With ``min_cell`` above 1 and sites in the
    study, every report of the study (the all-sites report and each site's) takes its share of
    one decision over them all (see :mod:`mfr_outcomes.report.family`), with the other scopes
    *others* gives; with ``all_sites_alone`` the all-sites report decides by itself (*others*
    is None). Returns the number of hidden counts that could not be protected within this
    report, the number that could not be protected across reports (this report's, and the
    all-sites report's), and the decided ledger of every scope by name."""
    o = ctx.options
    if others is None:
        ctx.ledger.decide()
        return len(ctx.ledger.unprotected), 0, {ALL_SITES if o.site is None else str(o.site):
                                                ctx.ledger}
    own = Scope(ALL_SITES if o.site is None else str(o.site), ctx.ledger, ctx.tables)
    by_name = {s.name: s for s in others()}
    by_name[own.name] = own
    scopes = [by_name[n] for n in [ALL_SITES, *records.sites()] if n in by_name]
    decide_family(scopes, all_sites_alone=o.all_sites_alone)
    across = set(own.unprotected)
    within = set(own.ledger.unprotected) - across
    if own is not scopes[0] and scopes[0].name == ALL_SITES:
        across |= {(ALL_SITES, i) for i in scopes[0].unprotected}
    return len(within), len(across), {s.name: s.ledger for s in scopes}


def _check_out(out: Path) -> None:
    for probe in (out, out / "tables", out / "report.html"):
        if probe.is_symlink():
            raise ValueError(f"{probe} is a symbolic link; the report does not write through "
                             f"links (remove it or choose another --out folder)")
    (out / "tables").mkdir(parents=True, exist_ok=True)


def _write_tables(ctx: ReportContext, sections: list[Section], out: Path) -> list[Path]:
    paths = []
    for sec in sections:
        for table in sec.tables:
            table.shown = publish_table(ctx, table)
            path = out / "tables" / f"{sec.key}_{table.name}.csv"
            write_csv(table.shown, path, out)
            table.csv_path = path
            paths.append(path)
    return paths
