"""Build the QI report of one clinic and period: a self-contained HTML file and its tables as CSV.

Each section is a module of :mod:`mfr_outcomes.report.sections` over one
:class:`~mfr_outcomes.report.context.ReportContext`; figures come only from
:mod:`mfr_outcomes.plots` (a plotting error is a reported failure naming the figure). Every
count goes through one ledger (:class:`~mfr_outcomes.report.disclosure.Ledger`) that decides
which are hidden, identifiers are removed from every text, the HTML template escapes every
value, and CSV text cells cannot start a spreadsheet formula.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from mfr_outcomes.report.scope import month_label, restrict_period, site_history
from mfr_outcomes.report.sections import SECTIONS

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
             scope_text: str, bounds: tuple | None) -> Options:
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
                   name_therapists=bool(name_therapists))


def _other_sites(study: Any, site: str | None, period: str | None) -> list[tuple[Any, Any]]:
    """(period study, history study) of every other site, for the cross-report rule."""
    if site is None:
        return []
    out = []
    for other in sorted(set(study.patients["site_id"].dropna().astype(str)) - {str(site)}):
        try:
            history, _, bounds = site_history(study, other, period)
        except ValueError:  # no session of that site in the period: nothing to subtract
            continue
        out.append((restrict_period(history, bounds), history))
    return out


def build_report(study: Any, out_dir: str | Path, *, site: str | None = None,
                 period: str | None = None, min_cell: int = 5, measure: str = "pain_nrs",
                 seed: int = 2026, targets: Mapping[str, float] | None = None,
                 rebase: Sequence[str] | str | None = None,
                 baseline: tuple[str, str] | str | None = None,
                 name_therapists: bool = False) -> ReportResult:
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
    history, scope_text, bounds = site_history(study, site, period)
    options = _options(study, site=site, period=period, min_cell=int(min_cell), measure=measure,
                       seed=seed, targets=targets, rebase=rebase, baseline=baseline,
                       name_therapists=name_therapists, scope_text=scope_text, bounds=bounds)
    out = Path(out_dir)
    _check_out(out)
    redactor, names = Redactor(_identifiers(study)), therapist_pseudonyms(study)
    ctx, sections = _build_scope(history, options, redactor, names,
                                 _other_sites(study, site, period), figures=True)
    within, across, family = _decide(study, ctx, redactor, names)
    if within:
        ctx.caution(f"{within} hidden count(s) are tied to other hidden counts only and "
                    f"could not be protected further.")
    if across:
        ctx.caution(f"{across} hidden count(s) of this report or of the all-sites report could "
                    f"be worked out from the all-sites report together with the sites' reports "
                    f"(the all-sites report decides what it hides on its own) and could not be "
                    f"protected further in this report.")
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
                 others: list[tuple[Any, Any]], *, figures: bool
                 ) -> tuple[ReportContext, list[Section]]:
    """Every section of one scope's report, its counts in the ledger (not yet decided)."""
    ctx = ReportContext(history, options, redactor, other_sites=lambda: others, names=names,
                        figures=figures)
    sections = []
    for key, (title, build) in SECTIONS.items():
        sec = Section(key, title)
        ctx.attempt(sec, f"The {title.lower()} section", build, ctx, sec)
        sections.append(sec)
    link_margins(ctx)
    rank_cells(ctx)
    return ctx, sections


def _decide(study: Any, ctx: ReportContext, redactor: Redactor, names: dict[str, str]
            ) -> tuple[int, int, dict[str, Any]]:
    """Decide which counts *ctx*'s report hides. The all-sites report decides alone. A site's
    report (``min_cell`` above 1) takes its share of the decision of every site of the study
    against the all-sites report (see :mod:`mfr_outcomes.report.family`), the all-sites scope
    and the other sites' scopes built without figures. Returns the number of hidden counts that
    could not be protected within this report, the number that could not be protected across
    reports (this report's, and the all-sites report's that the sites' counts would give away),
    and the decided ledger of every scope by name (only this one's for the all-sites
    report)."""
    o = ctx.options
    period = o.period[2] if o.period else None
    sites = sorted(set(study.patients["site_id"].dropna().astype(str)))
    if o.site is None or o.min_cell <= 1 or not sites:
        ctx.ledger.decide()
        return len(ctx.ledger.unprotected), 0, {ALL_SITES if o.site is None else str(o.site):
                                                ctx.ledger}
    scopes, own = [], None
    for name in [ALL_SITES, *sites]:
        site = None if name == ALL_SITES else name
        if site == str(o.site):
            scopes.append(Scope(name, ctx.ledger, ctx.tables))
            own = scopes[-1]
            continue
        try:
            history, text, bounds = site_history(study, site, period)
        except ValueError:  # no session of that site in the period: no such report
            continue
        options = replace(o, site=site, scope_text=text, period=bounds)
        other, _ = _build_scope(history, options, redactor, names,
                                _other_sites(study, site, period), figures=False)
        other.release()
        scopes.append(Scope(name, other.ledger, other.tables))
    decide_family(scopes)
    across = set(own.unprotected)
    within = set(own.ledger.unprotected) - across
    if scopes[0].name == ALL_SITES:
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
