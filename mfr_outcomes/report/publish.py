"""Publishing: counts hidden by the ledger's decision, identifiers removed, CSV written at full
precision and without spreadsheet formulas, HTML rendered with every value escaped."""
from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.report.blocks import Pct, Section, Table, Text
from mfr_outcomes.report.context import ReportContext
from mfr_outcomes.report.disclosure import (
    SECONDARY_LABEL,
    SECONDARY_NOTE,
    Cell,
    neutralise_frame,
    safe_write,
    suppressed_label,
)
from mfr_outcomes.report.fmt import fmt_cell, header

__all__ = ["link_margins", "rank_cells", "resolve_later", "publish_table",
           "render_text", "write_csv", "render_html"]

_ID_COLUMNS = frozenset({"patient_id", "session_id"})


def link_margins(ctx: ReportContext) -> None:
    """Declare the margins a reader could find between tables, whenever they hold.

    Besides the sums the sections declare (a table's total, "all patients", read = used +
    excluded), a reader may notice that a count column of one table adds up to a count published
    elsewhere (sessions by technique = sessions by therapist = treatment sessions = sessions
    with minutes recorded), or that a row repeats the count of the row of the same name in
    another table (the patients of a technique in the pre/post table and in the techniques table). Whatever
    the reason it holds, it is declared: a margin that holds only by chance costs at most a
    count hidden too many.
    """
    led = ctx.ledger
    totals: dict[float, list[int]] = {}  # every published count, sentences included
    for i, v in enumerate(led.values):
        if v > 0:
            totals.setdefault(v, []).append(i)
    named: dict[tuple[str, str, float], list[Cell]] = {}
    tables = [t for t in ctx.tables.values() if t.cells]
    for table in tables:
        first = table.keys[:1] or tuple(table.frame.columns[:1])
        names = [" ".join(str(table.frame[c].iloc[r]) for c in first).strip().lower()
                 for r in range(len(table.frame))]
        for (r, col), cell in table.cells.items():
            v = led.values[cell.id]
            if v > 0:
                named.setdefault((names[r], col, v), []).append(cell)
    for table in tables:
        for col in table.counts:
            cells = table.column_cells(col)
            own = {c.id for c in cells}
            total = sum(led.values[c.id] for c in cells)
            if len(cells) < 2 or total <= 0:
                continue
            for j in totals.get(total, []):
                if j not in own:
                    led.relate(Cell(j), cells)
    for cells in named.values():
        for other in cells[1:]:
            led.same(cells[0], other)


def rank_cells(ctx: ReportContext) -> None:
    """Order complements by table, column and row name (then by size), the same in every
    report of a study, so that the site reports and the all-sites report hide the same rows."""
    for table in ctx.tables.values():
        for (r, col), cell in table.cells.items():
            key = tuple(str(table.frame[c].iloc[r]) for c in table.keys) or (f"{r:06d}",)
            ctx.ledger.rank[cell.id] = (table.name, col, key)


def resolve_later(sections: list[Section]) -> None:
    """Replace each ``("later", make)`` block by the blocks *make* returns, in report order."""
    for sec in sections:
        out = []
        for kind, block in list(sec.blocks):
            if kind == "later":
                out.extend(block())
            else:
                out.append((kind, block))
        sec.blocks = out


def render_text(text: Any, ctx: ReportContext) -> Any:
    """A Text (or a list of them) with its counts as published; strings pass through."""
    if isinstance(text, list):
        return [render_text(t, ctx) for t in text]
    if not isinstance(text, Text):
        return ctx.redactor.text(text) if isinstance(text, str) else text
    led = ctx.ledger
    parts = []
    for p in text.parts:
        if isinstance(p, Pct):
            if not (led.hidden(p.part) or led.hidden(p.whole)) and led.values[p.whole.id]:
                parts.append(f" ({100.0 * led.values[p.part.id] / led.values[p.whole.id]:.0f} %)")
        elif isinstance(p, str):
            parts.append(p)
        else:
            parts.append(str(led.label(p)))
    return ctx.redactor.text("".join(parts))


def publish_table(ctx: ReportContext, table: Table) -> pd.DataFrame:
    """The table as shown: identifiers dropped and redacted, hidden counts labelled."""
    frame = table.frame.drop(columns=[c for c in table.frame.columns if c in _ID_COLUMNS])
    frame = ctx.redactor.frame(frame)
    led = ctx.ledger
    primary = suppressed_label(ctx.min_cell)
    hidden: dict[str, list[str | None]] = {}
    for col in table.counts:
        if col not in frame.columns:
            continue
        shown, status = [], []
        for r in range(len(frame)):
            cell = table.cells.get((r, col))
            if cell is None:
                shown.append(None)
                status.append(None)
                continue
            lab = led.label(cell)
            shown.append(lab)
            status.append(None if isinstance(lab, int) else lab)
        frame[col] = pd.Series(shown, index=frame.index, dtype=object)
        hidden[col] = status
    secondary = any(s == SECONDARY_LABEL for st in hidden.values() for s in st)
    for derived, sources in table.linked.items():
        if derived not in frame.columns:
            continue
        values = list(frame[derived])
        for r in range(len(frame)):
            causes = [hidden[s][r] for s in sources if s in hidden and hidden[s][r]]
            empty = values[r] is None or values[r] == "" or (isinstance(values[r], float)
                                                             and np.isnan(values[r]))
            if empty or not causes:
                continue
            if primary in causes:
                values[r] = primary
            elif derived in table.ratios:
                values[r] = SECONDARY_LABEL
        frame[derived] = pd.Series(values, index=frame.index, dtype=object)
    if secondary and SECONDARY_NOTE not in table.note:
        table.note = (table.note + " " + SECONDARY_NOTE).strip()
    return frame


def write_csv(frame: pd.DataFrame, path: Path, root: Path) -> None:
    """CSV at full precision (a p-value of 1.5e-8 stays 1.5e-08, never 0.0)."""
    buf = io.StringIO()
    neutralise_frame(frame).to_csv(buf, index=False, lineterminator="\n")
    safe_write(path, buf.getvalue(), root)


def render_html(ctx: ReportContext, sections: list[Section], title: str,
                icon_svg: Callable[[str], str]) -> str:
    from jinja2 import Environment, PackageLoader
    from markupsafe import Markup

    env = Environment(loader=PackageLoader("mfr_outcomes.report", "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["cell"] = lambda v, col, dec: fmt_cell(v, col, dec)
    env.filters["header"] = header
    env.filters["icon"] = lambda name: Markup(icon_svg(str(name)))
    template = env.get_template("report.html.j2")
    st = ctx.scoped
    dates = pd.to_datetime(st.sessions["session_date"])
    flow = ctx.tables.get("flow")
    facts = [("Scope", ctx.options.scope_text),
             ("Visits from", f"{dates.min():%Y-%m-%d} to {dates.max():%Y-%m-%d}"
              if len(dates) else "–")]
    if flow is not None:
        stages = list(flow.frame["stage"])
        for stage, name, col in (("With a visit in scope", "Patients", "patients"),
                                 ("With at least one treatment session", "Treatment sessions",
                                  "sessions")):
            if stage in stages:
                facts.append((name, str(ctx.ledger.label(flow.cell(col, stages.index(stage))))))
    facts += [("Main measure", f"{ctx.m.label} ({ctx.m.unit})"),
              ("Smallest count shown", str(ctx.min_cell))]
    return template.render(title=title, sections=sections, facts=facts,
                           suppressed=suppressed_label(ctx.min_cell),
                           secondary=SECONDARY_LABEL, secondary_note=SECONDARY_NOTE,
                           n_failures=len(ctx.failures))
