"""The intervention as delivered (TIDieR): what, who, how much, and the home programme."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.report.blocks import Section, Table, Text
from mfr_outcomes.report.context import ReportContext
from mfr_outcomes.report.fmt import label
from mfr_outcomes.vocab import TREATMENT_TECHNIQUES

__all__ = ["build", "by_category"]


def _treatment(study: Any) -> pd.DataFrame:
    s = study.sessions
    return s[s["technique"].astype(str).isin(TREATMENT_TECHNIQUES)]


def by_category(study: Any, col: str) -> pd.DataFrame:
    """Treatment sessions, their share, patients and median minutes per category of *col*."""
    tx = _treatment(study)
    vals = tx[col].astype(object).where(tx[col].notna(), "not recorded")
    g = tx.assign(_k=vals.map(label)).groupby("_k", sort=False)
    out = pd.DataFrame({col: g.size().index, "sessions": g.size().to_numpy(),
                        "patients": g["patient_id"].nunique().to_numpy(),
                        "median_minutes": g["duration_min"].median().to_numpy()})
    out["percent"] = 100.0 * out["sessions"] / max(len(tx), 1)
    cats = list(tx[col].cat.categories) if isinstance(tx[col].dtype, pd.CategoricalDtype) else []
    order = {label(c): i for i, c in enumerate(cats)}
    out = out.assign(_o=out[col].map(lambda x: order.get(x, 99))).sort_values(["_o", col])
    return out.drop(columns="_o")[[col, "sessions", "percent", "patients", "median_minutes"]]


def build(ctx: ReportContext, sec: Section) -> None:
    tx = ctx.treatment_sessions
    sec.para(
        "What was delivered, in the terms of the TIDieR checklist (Hoffmann et al. BMJ "
        "2014;348:g1687): what procedures (technique and body region), who provided them, how "
        "much (sessions, minutes, weeks), and the home programme given alongside. These are the "
        "sessions as recorded, not as planned: assessment-only visits (technique 'none') are "
        "left out.")
    if tx.empty:
        sec.para("There are no treatment sessions in scope.")
        return
    flow = ctx.tables["flow"]
    row = list(flow.frame["stage"]).index("With at least one treatment session")
    n_tx, n_pat = flow.cell("sessions", row), flow.cell("patients", row)
    sec.para(Text.of(
        "Why: myofascial release aims to reduce pain and restore movement in sciatica and hip "
        f"pain by direct pressure on trigger points, stretching and massage. Who and where: "
        f"{tx['therapist_id'].nunique()} therapist(s) delivered ", n_tx, " treatment sessions "
        "to ", n_pat, f" patients, face to face, at {ctx.scoped.patients['site_id'].nunique()} "
        "site(s)."))
    sec.heading("What: techniques and regions")
    for col, name in (("technique", "techniques"), ("target_region", "regions")):
        if col not in tx or tx[col].isna().all():
            sec.para(f"The {label(col)} was not recorded.")
            continue
        table = ctx.add_table(sec, Table(
            name, f"Treatment sessions by {label(col)}.", by_category(ctx.scoped, col),
            counts=("sessions", "patients"),
            linked={"percent": ("sessions",), "median_minutes": ("sessions",)},
            ratios=("percent",), decimals={"percent": 0, "median_minutes": 0}, keys=(col,)))
        ctx.ledger.relate(n_tx, table.column_cells("sessions"))
    if "techniques" in ctx.tables:
        sec.later(lambda: _technique_figure(ctx, sec))
    _dose(ctx, sec, tx, n_pat, n_tx)
    sec.heading("Who provided: therapists")
    th = tx.groupby("therapist_id", observed=True).agg(
        sessions=("session_id", "size"), patients=("patient_id", "nunique")).reset_index()
    th.insert(0, "therapist", [ctx.therapist_names.get(str(t), str(t)) for t in th["therapist_id"]])
    th = th.drop(columns="therapist_id").sort_values("therapist")
    therapists = ctx.add_table(sec, Table(
        "therapists", "Treatment sessions and patients per therapist.", th,
        counts=("sessions", "patients")))
    ctx.ledger.relate(n_tx, therapists.column_cells("sessions"))
    if not ctx.options.name_therapists:
        sec.para("Therapists are shown by stable pseudonyms (the same letter for the same "
                 "therapist in every report of this study); the clinic holds the key.")
    sec.para("How well (fidelity) cannot be judged from visit records alone: these tables show "
             "what was recorded, not whether each technique followed its protocol.")


def _technique_figure(ctx: ReportContext, sec: Section) -> list:
    from mfr_outcomes import plots

    table = ctx.tables["techniques"]
    keep = [r for r in range(len(table.frame))
            if not ctx.ledger.hidden(table.cell("sessions", r))]
    shown = table.frame.iloc[keep]
    before = len(sec.blocks)
    if shown.empty:
        sec.para("No technique's count of sessions can be shown, so no figure is drawn.")
    else:
        ctx.figure(sec, "sessions by technique",
                   lambda: plots.count_bars(shown, "technique", "sessions",
                                            xlabel="treatment sessions",
                                            title="Sessions by technique"),
                   "Treatment sessions by technique (techniques whose count is hidden in the "
                   "table are left out).",
                   "Horizontal bar chart of the number of treatment sessions of each technique.")
    made = sec.blocks[before:]
    del sec.blocks[before:]
    return made


def _dose(ctx: ReportContext, sec: Section, tx: pd.DataFrame, n_pat: Any, n_tx: Any) -> None:
    sec.heading("How much: dose")
    per_patient = tx.groupby("patient_id", observed=True).agg(
        sessions=("session_id", "size"), first=("session_date", "min"),
        last=("session_date", "max"), techniques=("technique", "nunique"))
    weeks = (pd.to_datetime(per_patient["last"]) - pd.to_datetime(per_patient["first"])).dt.days / 7
    rows = [_dose_row("Treatment sessions per patient", per_patient["sessions"], "patients"),
            _dose_row("Weeks from first to last treatment", weeks, "patients"),
            _dose_row("Minutes per session", tx["duration_min"], "sessions"),
            _dose_row("Distinct techniques per patient (tailoring)", per_patient["techniques"],
                      "patients")]
    if "home_program" in tx and tx["home_program"].notna().any():
        hp = tx["home_program"].astype("boolean")
        given, recorded = int(hp.fillna(False).sum()), int(hp.notna().sum())
        rows.append({"item": "Sessions with a home exercise programme", "unit": "sessions",
                     "n": given, "percent": 100.0 * given / recorded if recorded else np.nan,
                     "median": np.nan, "iqr_low": np.nan, "iqr_high": np.nan})
        ever = tx.assign(_h=hp.fillna(False)).groupby("patient_id", observed=True)["_h"].any()
        rows.append({"item": "Patients ever given a home programme", "unit": "patients",
                     "n": int(ever.sum()), "percent": 100.0 * ever.mean() if len(ever) else np.nan,
                     "median": np.nan, "iqr_low": np.nan, "iqr_high": np.nan})
    else:
        rows.append({"item": "Home exercise programme", "unit": "not recorded", "n": np.nan,
                     "percent": np.nan, "median": np.nan, "iqr_low": np.nan, "iqr_high": np.nan})
    dose = pd.DataFrame(rows, columns=["item", "unit", "n", "percent", "median", "iqr_low",
                                       "iqr_high"])
    table = ctx.add_table(sec, Table(
        "dose", "How much, and the home programme (a co-intervention).", dose, counts=("n",),
        linked={c: ("n",) for c in ("percent", "median", "iqr_low", "iqr_high")},
        ratios=("percent",), decimals={"percent": 0, "median": 1, "iqr_low": 1, "iqr_high": 1}))
    ctx.ledger.same(table.cell("n", 0), n_pat)
    for r, unit in enumerate(dose["unit"]):  # a row of every patient or every session
        if (r, "n") in table.cells and unit in ("patients", "sessions"):
            ctx.ledger.relate_if(n_pat if unit == "patients" else n_tx, [table.cell("n", r)])
    sec.para("Number counts the patients or sessions the row describes (its unit); a median "
             "of a handful of values is hidden with its count. 'Not recorded': the source has "
             "no such column, or it is empty.")


def _dose_row(item: str, values: pd.Series, unit: str) -> dict[str, Any]:
    v = pd.to_numeric(values, errors="coerce").dropna().astype("float64")
    if values.isna().all() and len(values):
        return {"item": item, "unit": "not recorded", "n": np.nan, "percent": np.nan,
                "median": np.nan, "iqr_low": np.nan, "iqr_high": np.nan}
    return {"item": item, "unit": unit, "n": len(v), "percent": np.nan,
            "median": v.median() if len(v) else np.nan,
            "iqr_low": v.quantile(0.25) if len(v) else np.nan,
            "iqr_high": v.quantile(0.75) if len(v) else np.nan}
