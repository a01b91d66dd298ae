"""Cohort: patients at each stage (STROBE item 13) and baseline characteristics (item 14)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.measures import get_measure
from mfr_outcomes.report.blocks import Section, Table
from mfr_outcomes.report.context import ReportContext
from mfr_outcomes.report.fmt import label
from mfr_outcomes.rules import affected_side_rows
from mfr_outcomes.vocab import TREATMENT_TECHNIQUES

__all__ = ["build", "flow_frame", "baseline_frame", "baseline_values"]


def flow_frame(study: Any, measure: str) -> pd.DataFrame:
    """Patients (and visits) at each stage of the scope, from the study alone."""
    sessions = study.sessions
    tx = sessions[sessions["technique"].astype(str).isin(TREATMENT_TECHNIQUES)]
    frame = study.frame(measure) if measure in study.measures else None
    paired = 0
    if frame is not None and not frame.empty:
        ph = frame.groupby(["patient_id", "session_id"], observed=True)["post"].agg(["min", "max"])
        paired = ph[(ph["min"] == 0) & (ph["max"] == 1)].reset_index()["patient_id"].nunique()
    two_plus = tx.groupby("patient_id", observed=True).size()
    follow = sessions[sessions["technique"].astype(str) == "none"]
    first_tx = tx.groupby("patient_id", observed=True)["session_date"].min()
    after = follow.merge(first_tx.rename("first_tx"), left_on="patient_id", right_index=True)
    with_follow = after.loc[after["session_date"] > after["first_tx"], "patient_id"].nunique()
    rows = [
        ("With a visit in scope", study.patients["patient_id"].nunique(), len(sessions)),
        ("With at least one treatment session", tx["patient_id"].nunique(), len(tx)),
        ("With paired pre and post readings of the main measure", paired, np.nan),
        ("With two or more treatment sessions", int((two_plus >= 2).sum()), np.nan),
        ("With a follow-up assessment after treatment began", with_follow, len(follow)),
    ]
    return pd.DataFrame(rows, columns=["stage", "patients", "sessions"])


def build(ctx: ReportContext, sec: Section) -> None:
    acc = ctx.study.report.accounting
    source = []
    if "patients" in acc:
        a = acc["patients"]
        s_used = acc["sessions"].used if "sessions" in acc else np.nan
        source = [("Patient rows in the source", a.read, np.nan),
                  ("Excluded at validation", a.excluded, np.nan),
                  ("Valid patients in the source", a.used, s_used)]
    scope = flow_frame(ctx.scoped, ctx.measure)
    flow = pd.concat([pd.DataFrame(source, columns=scope.columns), scope], ignore_index=True)
    sec.para(
        "Numbers of patients at each stage, as STROBE asks (von Elm et al. 2007, item 13): from "
        "the rows in the source, through validation and the scope of this report "
        f"({ctx.options.scope_text}), to the patients who contribute to each analysis.")
    table = ctx.add_table(sec, Table(
        "flow", "Patients (and visits) at each stage.", flow, counts=("patients", "sessions"),
        keys=("stage",)))
    if source:
        # the same counts as the data-quality table: they must be hidden together
        dq = ctx.tables["row_accounting"]
        r = list(dq.frame["table"]).index("patients")
        ctx.ledger.same(table.cell("patients", 0), dq.cell("read", r))
        ctx.ledger.same(table.cell("patients", 1), dq.cell("excluded", r))
        ctx.ledger.same(table.cell("patients", 2), dq.cell("used", r))
        ctx.ledger.relate(table.cell("patients", 0),
                          [table.cell("patients", 1), table.cell("patients", 2)])
        if "sessions" in list(dq.frame["table"]):
            ctx.ledger.same(table.cell("sessions", 2),
                            dq.cell("used", list(dq.frame["table"]).index("sessions")))
    sec.para(
        "Baseline characteristics at each patient's first visit in scope (STROBE item 14): "
        "numbers with percentages for categories, mean (SD) or median (IQR) for measurements, "
        "and the number missing for each.")
    base = ctx.add_table(sec, Table(
        "baseline", "Baseline characteristics.", baseline_frame(ctx.scoped, ctx.measure),
        counts=("n",), linked={"percent": ("n",), "summary": ("n",)}, ratios=("percent",),
        decimals={"percent": 0}, keys=("characteristic", "category")))
    total = base.cell("n", 0)
    ctx.ledger.same(total, table.cell("patients", len(source)))
    chars = base.frame["characteristic"].tolist()
    for name in dict.fromkeys(chars[1:]):
        rows = [k for k, c in enumerate(chars) if c == name]
        cells = base.column_cells("n", rows)
        if cells:
            ctx.ledger.relate(total, cells)


def baseline_frame(study: Any, measure: str) -> pd.DataFrame:
    """Characteristics of the study's patients, one row a category (or recorded/missing)."""
    p = study.patients
    rows: list[dict[str, Any]] = [{"characteristic": "Patients", "category": "", "n": len(p),
                                   "percent": np.nan, "summary": ""}]
    for col, name, kind in (("age_years", "Age (years)", "mean"), ("sex", "Sex", None),
                            ("condition", "Condition", None),
                            ("affected_side", "Affected side", None),
                            ("symptom_weeks", "Symptom duration (weeks)", "median"),
                            ("arm", "Arm", None)):
        if col == "arm" and (col not in p or p[col].isna().all()):
            continue
        if col not in p or p[col].isna().all():  # never recorded: say so, count nothing
            rows.append({"characteristic": name, "category": "not recorded", "n": np.nan,
                         "percent": np.nan, "summary": ""})
            continue
        if kind:
            rows += _continuous(name, p[col], kind)
        else:
            rows += _categorical(name, p[col])
    if "site_id" in p and p["site_id"].nunique() > 1:
        rows += _categorical("Site", p["site_id"])
    for code in dict.fromkeys([measure, "odi"]):
        if code not in study.measures:
            continue
        values = p[["patient_id"]].merge(baseline_values(study, code), on="patient_id",
                                         how="left")["value"]
        m = get_measure(code)
        if m.binary:
            rows += _categorical(f"{m.label} at first visit",
                                 values.map({0.0: "absent", 1.0: "present"}))
        else:
            rows += _continuous(f"{m.label} at first visit ({m.unit})", values, "mean")
    return pd.DataFrame(rows, columns=["characteristic", "category", "n", "percent", "summary"])


def _continuous(name: str, values: pd.Series, kind: str) -> list[dict[str, Any]]:
    v = pd.to_numeric(values, errors="coerce").astype("float64")
    ok = v.dropna()
    if kind == "mean":
        text = f"mean {ok.mean():.1f} (SD {ok.std(ddof=1):.1f})" if len(ok) > 1 else ""
    else:
        text = (f"median {ok.median():.1f} (IQR {ok.quantile(.25):.1f}–{ok.quantile(.75):.1f})"
                if len(ok) else "")
    n = len(v)
    return [{"characteristic": name, "category": "recorded", "n": len(ok),
             "percent": 100.0 * len(ok) / n if n else np.nan, "summary": text},
            {"characteristic": name, "category": "missing", "n": int(v.isna().sum()),
             "percent": 100.0 * v.isna().sum() / n if n else np.nan, "summary": ""}]


def _categorical(name: str, values: pd.Series) -> list[dict[str, Any]]:
    text = values.astype(object).where(values.notna(), None)
    counts = text.value_counts(dropna=True)
    if isinstance(values.dtype, pd.CategoricalDtype):
        order = [c for c in values.cat.categories if c in counts.index]
    else:
        order = sorted(counts.index, key=str)
    n = len(values)
    rows = [{"characteristic": name, "category": label(c), "n": int(counts[c]),
             "percent": 100.0 * counts[c] / n, "summary": ""} for c in order]
    rows.append({"characteristic": name, "category": "missing", "n": int(text.isna().sum()),
                 "percent": 100.0 * text.isna().sum() / n if n else np.nan, "summary": ""})
    return rows


def baseline_values(study: Any, code: str) -> pd.DataFrame:
    """Each patient's first pre reading of *code* (the affected side; both sides averaged
    when bilateral or unknown)."""
    f = study.frame(code)
    f = f[(f["post"] == 0) & affected_side_rows(f)]
    first = f.groupby("patient_id", observed=True)["session_number"].transform("min")
    f = f[f["session_number"] == first]
    return f.groupby("patient_id", observed=True)["value"].mean().rename("value").reset_index()
