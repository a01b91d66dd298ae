"""Safety: adverse events recorded at treatment sessions.

When nothing was recorded (no column, or every value empty) the section says "not recorded"
and shows no count, rather than "<5 of <5 sessions". The counts are followed by two mixed models
with a random intercept per patient, each with its cautions shown in the section: the chance of
an adverse event at a session by technique, as odds ratios from a logistic mixed model
(``mfr.fit_adverse_events(study)``), and adverse events per session as rate ratios from a Poisson
mixed model with the sessions as exposure (``mfr.fit_adverse_events(study, family="poisson")``).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.report.blocks import Pct, Section, Table, Text
from mfr_outcomes.report.context import ReportContext
from mfr_outcomes.report.fmt import label
from mfr_outcomes.vocab import TREATMENT_TECHNIQUES

__all__ = ["build", "types_frame", "EVENTS", "model_frame"]

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
        decimals={"percent": 1}, keys=("event",)))
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
    chart = ctx.tables.get("chart_adverse_events_month")  # the trends chart's counts
    if chart is not None:  # its months of the report period add up to these totals
        period = ctx.options.period
        rows = [r for r, month in enumerate(chart.frame["month"]) if period is None
                or period[0] <= pd.Timestamp(str(month)) < period[1]]
        ctx.ledger.relate_if(k, chart.column_cells("ae_events", rows))
        ctx.ledger.relate_if(recorded, chart.column_cells("ae_sessions", rows))
    sec.para(Text.of(
        "Adverse events recorded at treatment sessions: ", k, " of ", recorded,
        " sessions with a record", Pct(k, recorded), ". Soreness and bruising are expected "
        "after pressure techniques; a symptom flare (worse radiating pain) deserves a review of "
        "the case."))
    by_tech = ctx.add_table(sec, Table(
        "by_technique", "Sessions with an adverse event, by technique.",
        by_technique_frame(ctx.scoped), counts=("sessions", "with_event"),
        linked={"per_100": ("sessions", "with_event")}, ratios=("per_100",),
        decimals={"per_100": 1}, keys=("technique",)))
    ctx.ledger.relate(recorded, by_tech.column_cells("sessions"))
    ctx.ledger.relate(k, by_tech.column_cells("with_event"))
    flare_rows = [r for r, e in enumerate(types.frame["event"]) if e == "symptom flare"]
    if flare_rows and types.frame["sessions"].iloc[flare_rows[0]] > 0:
        sec.para(Text.of("Symptom flares: ", types.cell("sessions", flare_rows[0]),
                         ". Check these cases individually in the clinic's own records; this "
                         "report does not show who they were."))
    for family in ("binomial", "poisson"):
        ctx.attempt(sec, f"The {family} model of adverse events", _model, ctx, sec, by_tech,
                    family)


#: The two models of adverse events: the chance of an event at a session (logistic GLMM, one row a
#: session) and events per session as a rate (Poisson GLMM, sessions as exposure).
_KINDS = {
    "binomial": {"level": "percent_typical", "model_col": "probability", "ratio": "odds_ratio",
                 "ratios": "odds_ratios", "name": "Adverse event at a session (logistic GLMM)",
                 "heading": "The chance of an adverse event at a session: a logistic mixed model",
                 "text": "Whether a treatment session had an adverse event, by technique, from a "
                         "logistic mixed model (one row a session, a random intercept per "
                         "patient; glmer's method, Laplace approximation). The percentage is the "
                         "model's chance of an event for a typical patient (random effect 0); an "
                         "odds ratio below 1 means lower odds of an event at a session than with "
                         "{ref}, the reference (95 % Wald interval of the ratio).",
                 "title": "Adverse event at a session by technique: logistic mixed model"},
    "poisson": {"level": "rate_per_100", "model_col": "rate_model", "ratio": "rate_ratio",
                "ratios": "rate_ratios", "name": "Adverse events per session (Poisson GLMM)",
                "heading": "Adverse events per session: a Poisson mixed model",
                "text": "Sessions with an adverse event per treatment session, by technique, from "
                        "a Poisson mixed model: each patient's count of sessions with an event "
                        "under a technique, with the number of those sessions as exposure (an "
                        "offset) and a random intercept per patient (glmer's method, Laplace "
                        "approximation). The rate per 100 sessions is the model's for a typical "
                        "patient (random effect 0); a rate ratio below 1 means fewer events per "
                        "session than with {ref}, the reference (95 % Wald interval of the "
                        "ratio).",
                "title": "Adverse events per session by technique: Poisson mixed model"},
}


def _model_columns(family: str) -> tuple[str, ...]:
    """Columns of the model table computed from its counts (hidden with them)."""
    return (_KINDS[family]["level"], _KINDS[family]["ratio"], "ci_low", "ci_high", "p_value")


def model_frame(study: Any, family: str = "poisson") -> tuple[pd.DataFrame, Any]:
    """Adverse events at treatment sessions by technique from a mixed model with a random
    intercept per patient: ``family="poisson"`` events per session (events per patient and
    technique, log sessions as offset), ``"binomial"`` the chance of an event at a session (one
    row a session). Returns (one row a technique, the :class:`AdverseEventsFit`)."""
    from mfr_outcomes.models.binary import fit_adverse_events

    kind = _KINDS[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every caution is in ae.notes, shown by the caller
        ae = fit_adverse_events(study, family=family)
    t = ae.table
    out = pd.DataFrame({"technique": t["technique"].map(label),
                        "sessions": t["sessions"].astype(int),
                        "with_event": t["events"].astype(int)})
    if ae.glmm is None:
        return out, ae
    out[kind["level"]] = 100.0 * t[kind["model_col"]].to_numpy(float)
    ratios = getattr(ae, kind["ratios"])
    rr = ratios.assign(level=ratios["term"].str.extract(r"\[T\.(.+)\]$")[0])
    rr = rr.set_index(rr["level"].map(label))
    ref = label(t["technique"].iloc[0])
    out[kind["ratio"]] = [1.0 if tech == ref else rr[kind["ratio"]].get(tech, np.nan)
                          for tech in out["technique"]]
    out["ci_low"] = out["technique"].map(rr["ci_low"]).astype(float)
    out["ci_high"] = out["technique"].map(rr["ci_high"]).astype(float)
    out["p_value"] = out["technique"].map(rr["p_value"]).astype(float)
    return out, ae


def _model(ctx: ReportContext, sec: Section, by_tech: Table, family: str) -> None:
    kind = _KINDS[family]
    sec.heading(kind["heading"])
    frame, ae = model_frame(ctx.scoped, family)
    notes = list(ae.notes)
    if ae.glmm is None:
        sec.para("No model of adverse events: " + "; ".join(ctx.safe(n) for n in notes) + ".")
        return
    ref = frame["technique"].iloc[0]
    ratio_cols = [kind["ratio"], "ci_low", "ci_high", "p_value"]
    if frame["with_event"].iloc[0] < ctx.min_cell:  # ratios to a small count would reveal it
        frame[ratio_cols] = np.nan
        notes.append(f"fewer than {ctx.min_cell} sessions with an event for {ref}, the "
                     f"reference technique, so no {kind['ratio'].replace('_', ' ')}s are shown")
    sec.para(kind["text"].format(ref=ref) + " Techniques were not randomised, so patients who "
             "had one technique may differ from those who had another.")
    columns = _model_columns(family)
    model = ctx.add_table(sec, Table(
        "model" if family == "poisson" else "model_binomial",
        f"{kind['title']} ({ae.formula}).", frame,
        counts=("sessions", "with_event"),
        linked={c: ("sessions", "with_event") for c in columns},
        ratios=columns,
        decimals={kind["level"]: 1, "p_value": 3},
        keys=("technique",)))
    shown = list(by_tech.frame["technique"])
    for r, tech in enumerate(frame["technique"]):  # the same counts as the table above
        if tech not in shown:
            continue
        k = shown.index(tech)
        for col in ("sessions", "with_event"):
            if by_tech.frame[col].iloc[k] == frame[col].iloc[r]:
                ctx.ledger.same(by_tech.cell(col, k), model.cell(col, r))
    name = kind["name"]
    ctx.fit_label(name, ae.glmm)  # its row of the methods table, and its cautions
    if ae.glmm.diagnostics["singular"]:
        notes.append("here the patient variance is estimated as zero: patients differ no more "
                     "than chance alone would make them, and the ratios are those of a plain "
                     + ("logistic" if family == "binomial" else "Poisson") + " regression")
    for n in notes:
        if n not in ae.glmm.diagnostics["warnings"]:
            ctx.caution(n, where=name)
    if notes:  # shown here, beside the numbers they qualify
        sec.para("Cautions of this model:")
        sec.items([ctx.safe(f"{n[0].upper()}{n[1:]}.".replace("..", ".")) for n in notes])
    else:
        sec.para("The model converged and its patient variance is not at zero"
                 + (", and the counts show no overdispersion." if family == "poisson" else "."))
