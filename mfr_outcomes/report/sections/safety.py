"""Safety: adverse events recorded at treatment sessions.

When nothing was recorded (no column, or every value empty) the section says "not recorded"
and shows no count, rather than "<5 of <5 sessions".
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.report.blocks import Pct, Section, Table, Text
from mfr_outcomes.report.context import ReportContext
from mfr_outcomes.report.fmt import label
from mfr_outcomes.vocab import TREATMENT_TECHNIQUES

__all__ = ["build", "types_frame", "EVENTS"]

EVENTS = ("soreness", "bruising", "symptom_flare", "other")


def _events(study: Any) -> tuple[pd.DataFrame, pd.Series]:
    s = study.sessions
    tx = s[s["technique"].astype(str).isin(TREATMENT_TECHNIQUES)]
    ae = tx["adverse_event"].astype(object).where(tx["adverse_event"].notna(), "not recorded")
    return tx, ae


def types_frame(study: Any) -> pd.DataFrame:
    tx, ae = _events(study)
    counts = ae.value_counts()
    order = ["none", *EVENTS, "not recorded"]
    order += sorted(set(counts.index) - set(order), key=str)
    rows = [{"event": label(e), "sessions": int(counts.get(e, 0)),
             "percent": 100.0 * counts.get(e, 0) / max(len(tx), 1)} for e in order
            if e in counts.index or e in ("none", *EVENTS)]
    return pd.DataFrame(rows, columns=["event", "sessions", "percent"])


def by_technique_frame(study: Any) -> pd.DataFrame:
    tx, ae = _events(study)
    is_event = ae.isin(EVENTS) | ~ae.isin(["none", "not recorded"])
    g = tx.assign(_e=is_event.to_numpy(), _r=(ae != "not recorded").to_numpy()).groupby(
        tx["technique"].astype(str), observed=True, sort=False)
    order = {t: i for i, t in enumerate(TREATMENT_TECHNIQUES)}
    out = pd.DataFrame({"technique": list(g.size().index),
                        "sessions": g["_r"].sum().astype(int).to_numpy(),
                        "with_event": g["_e"].sum().astype(int).to_numpy()})
    out = out.iloc[np.argsort([order.get(t, 99) for t in out["technique"]], kind="stable")]
    out["technique"] = out["technique"].map(label)
    out["per_100"] = np.where(out["sessions"] > 0,
                              100.0 * out["with_event"] / out["sessions"].clip(lower=1), np.nan)
    return out.reset_index(drop=True)


def build(ctx: ReportContext, sec: Section) -> None:
    tx, ae = _events(ctx.scoped)
    if tx.empty:
        sec.para("There are no treatment sessions in scope.")
        return
    if (ae == "not recorded").all():
        sec.para("Adverse events were not recorded: the source has no adverse_event column, "
                 "or it is empty for every treatment session. Nothing can be said about "
                 "safety from these records.")
        return
    types = ctx.add_table(sec, Table(
        "types", "Treatment sessions by adverse event.", types_frame(ctx.scoped),
        counts=("sessions",), linked={"percent": ("sessions",)}, ratios=("percent",),
        decimals={"percent": 1}, keys=("event",), by_site=types_frame))
    flow = ctx.tables["flow"]
    tx_row = list(flow.frame["stage"]).index("With at least one treatment session")
    ctx.ledger.relate(flow.cell("sessions", tx_row), types.column_cells("sessions"))
    events = [r for r, e in enumerate(types.frame["event"])
              if e not in ("none", "not recorded")]
    recorded_rows = [r for r, e in enumerate(types.frame["event"]) if e != "not recorded"]
    k = ctx.count(len(ae[~ae.isin(["none", "not recorded"])]))
    recorded = ctx.count(int((ae != "not recorded").sum()))
    ctx.ledger.relate(k, types.column_cells("sessions", events))
    ctx.ledger.relate(recorded, types.column_cells("sessions", recorded_rows))
    sec.para(Text.of(
        "Adverse events recorded at treatment sessions: ", k, " of ", recorded,
        " sessions with a record", Pct(k, recorded), ". Soreness and bruising are expected "
        "after pressure techniques; a symptom flare (worse radiating pain) deserves a review of "
        "the case."))
    by_tech = ctx.add_table(sec, Table(
        "by_technique", "Sessions with an adverse event, by technique.",
        by_technique_frame(ctx.scoped), counts=("sessions", "with_event"),
        linked={"per_100": ("sessions", "with_event")}, ratios=("per_100",),
        decimals={"per_100": 1}, keys=("technique",), by_site=by_technique_frame))
    ctx.ledger.relate(recorded, by_tech.column_cells("sessions"))
    ctx.ledger.relate(k, by_tech.column_cells("with_event"))
    flare_rows = [r for r, e in enumerate(types.frame["event"]) if e == "symptom flare"]
    if flare_rows and types.frame["sessions"].iloc[flare_rows[0]] > 0:
        sec.para(Text.of("Symptom flares: ", types.cell("sessions", flare_rows[0]),
                         ". Check these cases individually in the clinic's own records; this "
                         "report does not show who they were."))
    # safety model: after merging the "glmm" branch, fit_adverse_events(study) adds a table
    # here (see report/sections/safety.py and docs/report.md)
