"""Outcomes: readings, within-session change, course of care, responders, follow-up."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.measures import get_measure
from mfr_outcomes.report.blocks import Pct, Section, Table, Text
from mfr_outcomes.report.context import ReportContext
from mfr_outcomes.report.fmt import fmt_num, is_missing, label
from mfr_outcomes.report.sections import course
from mfr_outcomes.vocab import TREATMENT_TECHNIQUES

__all__ = ["build", "TIDY", "binary_model_table", "prepost_counts", "responder_table",
           "responders_by_arm", "main_of"]

TIDY = ["estimate", "std_error", "df", "statistic", "p_value", "ci_low", "ci_high"]


def _tidy(frame: pd.DataFrame, keep: Sequence[str]) -> pd.DataFrame:
    cols = [c for c in keep if c in frame.columns] + [c for c in TIDY if c in frame.columns]
    return frame[cols].reset_index(drop=True)


def build(ctx: ReportContext, sec: Section) -> None:
    m = ctx.m
    sec.heading("Readings by measure")
    ctx.attempt(sec, "The summary of readings", _readings, ctx, sec)
    if m.binary:
        sec.para(f"Main outcome: {m.label}, a yes/no reading ({m.better} is better). Results "
                 f"are odds ratios; there is no minimal important change for a yes/no reading.")
        sec.heading(f"Odds of {m.label.lower()} over the course of care")
        ctx.attempt(sec, "The model of the yes/no reading", _binary, ctx, sec)
        return
    if m.threshold_points is not None:
        which = "MCID" if m.mcid_points is not None else "MDC"
        crit = f"the {which} of {m.threshold_points:g} {m.unit}"
        if m.mcid_percent is not None:
            crit += f" or {m.mcid_percent:g} % of baseline"
        crit_text = f"An important change is {crit} ({m.source})."
    else:
        crit_text = (f"No minimal important change is published for {m.label} ({m.source}), "
                     f"so changes are reported without one.")
    sec.para(f"Main outcome: {m.label} ({m.unit}; {m.better} is better). {crit_text}")
    sec.heading(f"Within-session change of {m.label} (pre → post)")
    ctx.attempt(sec, "The pre/post mixed model", _prepost, ctx, sec)
    sec.heading("Course of care")
    ctx.attempt(sec, "The course-of-care model", course.build, ctx, sec)
    sec.heading("Responders")
    ctx.attempt(sec, "The responder analysis", _responders, ctx, sec)
    if "odi" in ctx.scoped.measures:
        sec.heading("Disability: baseline, discharge and follow-up")
        ctx.attempt(sec, "The follow-up model of the Oswestry Disability Index", _followup,
                    ctx, sec)


def _readings_frame(study: Any) -> pd.DataFrame:
    summary = study.summary().copy()
    summary.insert(1, "label", [_measure_label(c) for c in summary["measure"]])
    return summary


def _measure_label(code: str) -> str:
    try:
        return get_measure(code).label
    except KeyError:
        return code


def _readings(ctx: ReportContext, sec: Section) -> None:
    summary = _readings_frame(ctx.scoped)
    if summary.empty:
        sec.para("There are no readings in scope.")
        return
    table = ctx.add_table(sec, Table(
        "readings", "Readings in scope by measure (pre and post each session; raw means, not "
        "model estimates).", summary,
        counts=("patients", "sessions", "readings", "pre_n", "post_n"),
        linked={"pre_mean": ("pre_n",), "post_mean": ("post_n",)}, keys=("measure",)))
    for r in range(len(table.frame)):  # readings = pre + post: hidden together
        ctx.ledger.relate(table.cell("readings", r),
                          [table.cell("pre_n", r), table.cell("post_n", r)])


def _prepost(ctx: ReportContext, sec: Section) -> None:
    from mfr_outcomes import plots
    from mfr_outcomes.models.domain import fit_prepost

    m = ctx.m
    frame = ctx.frame()
    if not (frame["post"] == 1).any():
        sec.para(f"{m.label} is not measured after sessions, so there is no within-session "
                 f"change to estimate; see the course of care and follow-up below.")
        return
    fit = fit_prepost(ctx.scoped, ctx.measure, by="technique")
    if isinstance(fit, dict):  # one fit a side
        fit = next(iter(fit.values()))
    ctx.fit_label("Pre/post (within session)", fit)
    con = fit.contrasts("post", by="technique")
    counts = prepost_counts(ctx.scoped, ctx.measure).set_index("technique")
    table = _tidy(con, ["technique"]).assign(technique=lambda t: t["technique"].map(label))
    table = table.merge(counts, left_on="technique", right_index=True, how="left")
    sec.para(
        "A linear mixed model of each reading, with a random intercept and a random pre→post "
        "change per patient (repeated sessions of one patient are not independent), estimates "
        f"the mean change from before to after a session for each technique. Estimates are "
        f"post − pre in {m.unit}; 95 % confidence intervals use Satterthwaite degrees of "
        f"freedom. These are immediate, within-session changes, not lasting effects, and "
        f"techniques were not randomised: differences between techniques may reflect which "
        f"patients got them.")
    ctx.add_table(sec, Table(
        "prepost", f"Change in {m.label} from before to after a session (post − pre), by "
        f"technique.", table, counts=("patients", "sessions"),
        linked={c: ("patients",) for c in TIDY}, keys=("technique",)))
    shown = table[table["patients"] >= ctx.min_cell]
    sec.items([_change_sentence(m, row) for _, row in shown.iterrows()])
    if len(shown):
        forest = shown.rename(columns={"technique": "term"})
        ctx.figure(sec, "within-session change by technique",
                   lambda: plots.forest(forest, include_intercept=True, measure=ctx.measure),
                   "Estimated change from before to after a session, by technique, with 95 % "
                   "CIs (techniques with fewer patients than the smallest count shown are left "
                   "out).", f"Forest plot of the pre to post change in {m.label} for each "
                   "technique.")


def prepost_counts(study: Any, measure: str) -> pd.DataFrame:
    """Patients and treatment sessions with a reading of *measure*, by technique: the counts of
    the pre/post table, computed without the model (for the cross-report rule)."""
    frame = study.frame(measure)
    frame = frame[frame["technique"].astype(str).isin(TREATMENT_TECHNIQUES)]
    counts = frame.groupby(frame["technique"].astype(str), observed=True).agg(
        patients=("patient_id", "nunique"), sessions=("session_id", "nunique")).reset_index()
    counts["technique"] = counts["technique"].map(label)
    return counts


def _change_sentence(m: Any, row: pd.Series) -> str:
    est, lo, hi = row["estimate"], row.get("ci_low"), row.get("ci_high")
    text = f"{row['technique']}: {fmt_num(est)} {m.unit} (95 % CI {fmt_num(lo)} to {fmt_num(hi)})"
    if m.threshold_points is not None and not is_missing(lo):
        gains = sorted((m.improvement(lo), m.improvement(hi)))
        t = m.threshold_points
        if gains[0] >= t:
            text += f", the whole interval beyond the important change of {t:g}"
        elif gains[1] < t:
            text += f", the whole interval short of the important change of {t:g}"
        else:
            text += f", the interval includes the important change of {t:g}"
    return text + "."


def responder_table(study: Any, measure: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Responders overall and by main technique, and the patients not classed, by reason."""
    import warnings

    from mfr_outcomes import effects
    from mfr_outcomes.warnings_ import DataWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the counts are said in the report
        resp = effects.responders(study, measure)
    rows = [effects.responder_rate(resp).assign(group="all patients")]
    by = effects.responder_rate(resp, by="technique")
    by["group"] = [f"mainly {label(t)}" for t in by["technique"]]
    rows.append(by)
    table = pd.concat(rows, ignore_index=True).rename(columns={"n": "patients",
                                                               "rate": "percent"})
    for col in ("percent", "ci_low", "ci_high"):
        table[col] = 100.0 * table[col].astype("float64")
    reasons = resp.attrs["excluded"]["reason"].value_counts().to_dict()
    not_eligible = int((~resp["eligible"].astype(bool)).sum())
    if not_eligible:
        from mfr_outcomes.rules import NOT_ELIGIBLE_REASON

        reasons[NOT_ELIGIBLE_REASON] = not_eligible
    return table[["group", "patients", "responders", "percent", "ci_low", "ci_high"]], reasons


def main_of(sessions: pd.DataFrame, column: str) -> pd.Series:
    """The value of *column* (target_region, ...) on most of each patient's treatment sessions
    (ties: the earlier in the column's vocabulary, else in sorted order); patient_id index."""
    s = sessions[sessions["technique"].astype(str).isin(TREATMENT_TECHNIQUES)
                 & sessions[column].notna()]
    dtype = sessions[column].dtype
    vocab = (list(map(str, dtype.categories)) if isinstance(dtype, pd.CategoricalDtype)
             else sorted(s[column].astype(str).unique()))
    counts = (s.assign(v=s[column].astype(str)).groupby(["patient_id", "v"]).size()
              .rename("n").reset_index())
    counts["_o"] = counts["v"].map({v: i for i, v in enumerate(vocab)})
    counts = counts.sort_values(["patient_id", "n", "_o"], ascending=[True, False, True])
    return counts.groupby("patient_id").head(1).set_index("patient_id")["v"]


#: The splits of :func:`responders_by_arm`: (column, split name, what the rows say).
ARM_SPLITS = (("arm", "arm", "arm"), ("target_region", "region", "mainly treated at"))


def responders_by_arm(study: Any, measure: str) -> pd.DataFrame:
    """Responders by arm (when the study records two or more arms) and by each patient's main
    target region: split, group, patients, responders, percent, ci_low, ci_high (Wilson).

    Each split covers every classed patient (a patient with no arm, or no region recorded, is
    a row "not recorded"), so its rows add up to "all patients" of :func:`responder_table`.
    """
    import warnings

    from mfr_outcomes import effects
    from mfr_outcomes.warnings_ import DataWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        resp = effects.responders(study, measure)
    values = {"target_region": resp["patient_id"].map(main_of(study.sessions, "target_region"))}
    if "arm" in study.patients.columns:
        arm = resp["patient_id"].map(study.patients.set_index("patient_id")["arm"])
        if arm[resp["responder"].notna()].dropna().nunique() >= 2:
            values["arm"] = arm
    rows = []
    for col, split, what in ARM_SPLITS:
        if col not in values:
            continue
        v = values[col].astype(object).where(values[col].notna(), None)
        by = effects.responder_rate(resp.assign(_g=[label(x) if x is not None else
                                                    "not recorded" for x in v]), by="_g")
        dtype = (study.patients if col == "arm" else study.sessions)[col].dtype
        order = [label(c) for c in (dtype.categories if isinstance(dtype, pd.CategoricalDtype)
                                    else sorted(by["_g"]))] + ["not recorded"]
        by = by.assign(_o=by["_g"].map({g: i for i, g in enumerate(order)})).sort_values(
            "_o", kind="stable").drop(columns="_o")
        by.insert(0, "split", split)
        by["group"] = [f"{what}: {g}" for g in by["_g"]]
        rows.append(by.drop(columns="_g"))
    if not rows:
        return pd.DataFrame(columns=["split", "group", "patients", "responders", "percent",
                                     "ci_low", "ci_high"])
    table = pd.concat(rows, ignore_index=True).rename(columns={"n": "patients",
                                                               "rate": "percent"})
    for col in ("percent", "ci_low", "ci_high"):
        table[col] = 100.0 * table[col].astype("float64")
    return table[["split", "group", "patients", "responders", "percent", "ci_low", "ci_high"]]


def _responders(ctx: ReportContext, sec: Section) -> None:
    m = ctx.m
    if m.threshold_points is None and m.mcid_percent is None:
        sec.para(f"{m.label} has no published important change, so patients are not classed "
                 f"as responders.")
        return
    table, reasons = responder_table(ctx.scoped, ctx.measure)
    what = [f"at least {m.threshold_points:g} {m.unit}"] if m.threshold_points is not None else []
    if m.mcid_percent is not None:
        what.append(f"{m.mcid_percent:g} % of baseline")
    sec.para(
        f"A responder is a patient whose {m.label} improved from the first pre-session reading "
        f"to the latest by {' or '.join(what)} ({m.source}). Percentages carry Wilson 95 % "
        f"intervals. Patients are grouped by the technique they received most often.")
    resp = ctx.add_table(sec, Table(
        "responders", "Responders against the important change.", table,
        counts=("patients", "responders"),
        linked={c: ("patients", "responders") for c in ("percent", "ci_low", "ci_high")},
        ratios=("percent", "ci_low", "ci_high"),
        decimals={"percent": 0, "ci_low": 0, "ci_high": 0}, keys=("group",)))
    groups = list(range(1, len(resp.frame)))
    for col in ("patients", "responders"):  # "all patients" = the sum of the groups
        ctx.ledger.relate(resp.cell(col, 0), resp.column_cells(col, groups))
    out = [Text.of(ctx.count(n), f" patient(s) not classed: {reason}.")
           for reason, n in sorted(reasons.items())]
    if out:
        sec.para("Left out of the denominators, with the reason:")
        sec.items(out)
    overall = resp.frame.iloc[0]
    if overall["patients"] >= ctx.min_cell and overall["responders"] >= ctx.min_cell:
        sec.para(Text.of("Overall ", resp.cell("responders", 0), " of ",
                         resp.cell("patients", 0), " classed patients responded",
                         Pct(resp.cell("responders", 0), resp.cell("patients", 0)),
                         f"; 95 % CI {overall['ci_low']:.0f} to {overall['ci_high']:.0f} %."))
    ctx.attempt(sec, "The responders by arm", _responders_by_arm, ctx, sec, resp)


def _responders_by_arm(ctx: ReportContext, sec: Section, resp: Table) -> None:
    frame = responders_by_arm(ctx.scoped, ctx.measure)
    if frame.empty:
        return
    arms = "arm" in set(frame["split"])
    sec.para("The same responders by " + ("the arm recorded for each patient, and " if arms
                                          else "") +
             "by the target region each patient was treated at most often (these are not "
             "randomised comparisons" + ("" if arms else "; the study records no arms") + ").")
    table = ctx.add_table(sec, Table(
        "responders_by_arm", "Responders by " + ("arm and " if arms else "") +
        "main target region.", frame, counts=("patients", "responders"),
        linked={c: ("patients", "responders") for c in ("percent", "ci_low", "ci_high")},
        ratios=("percent", "ci_low", "ci_high"),
        decimals={"percent": 0, "ci_low": 0, "ci_high": 0}, keys=("group",)))
    for split in frame["split"].unique():  # each split adds up to "all patients"
        rows = [i for i, v in enumerate(frame["split"]) if v == split]
        for col in ("patients", "responders"):
            ctx.ledger.relate(resp.cell(col, 0), table.column_cells(col, rows))


def _followup(ctx: ReportContext, sec: Section) -> None:
    from mfr_outcomes.models.domain import fit_followup

    m = get_measure("odi")
    fit = fit_followup(ctx.scoped, "odi")
    if isinstance(fit, dict):
        fit = next(iter(fit.values()))
    ctx.fit_label("Follow-up (ODI)", fit)
    em = fit.emmeans("stage")
    sec.para(
        f"{m.label} is recorded at the first treatment visit, at the last treatment visit "
        f"(discharge) and at an assessment-only follow-up visit. A mixed model with a random "
        f"intercept per patient gives the mean at each stage; patients missing a stage still "
        f"count (missing at random). The important change is {m.threshold_points:g} points "
        f"or {m.mcid_percent:g} % ({m.source}).")
    keep = [c for c in ("stage", "emmean", "estimate", "std_error", "df", "ci_low", "ci_high")
            if c in em.columns]
    table = em[keep].copy()
    table["stage"] = table["stage"].map(label)
    ctx.add_table(sec, Table("followup", f"Estimated mean {m.label} at each stage.", table))


def binary_model_table(study: Any, measure: str) -> tuple[pd.DataFrame, str, dict[str, Any]]:
    """The model of a yes/no reading: (tidy table with odds ratios, description, model row).

    A logistic mixed model with a random intercept per patient (``mfr.fit_binary``: glmer's
    Laplace approximation) gives subject-specific odds ratios; the logistic GEE's
    population-averaged odds ratios stand beside them. ``table.attrs``: ``fit`` (the
    :class:`~mfr_outcomes.models.binary.BinaryOutcomeFit`), ``cautions`` (every caution of the
    mixed model, and the GEE's notes) and ``gee_row`` (the GEE's row of the methods table).
    """
    import warnings

    from mfr_outcomes.models.binary import attenuation_factor, fit_binary

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every caution is kept below, in table.attrs
        fit = fit_binary(study, measure)
    glmm = fit.glmm
    table = fit.odds_ratios[["term", "odds_ratio", "ci_low", "ci_high", "p_value",
                             "gee_odds_ratio", "gee_ci_low", "gee_ci_high"]].copy()
    design = glmm.spec.design
    levels = design.categories if design is not None else {}

    def vs(mt: Any) -> str:  # "technique[T.massage]" -> "massage vs direct pressure"
        ref = levels.get(mt.group(1), [])
        return f"{label(mt.group(2))}" + (f" vs {label(ref[0])}" if len(ref) else "")

    table["term"] = table["term"].astype(str).str.replace(
        r"^(\w+)\[T\.(.+)\]$", vs, regex=True).map(
        lambda t: "per session (session number)" if t == "session_number" else t)
    sigma2 = fit.patient_variance
    text = (f"The pre-session readings are modelled by a logistic mixed model with a random "
            f"intercept per patient (glmer's method, Laplace approximation), with technique and "
            f"session number as terms; beside its odds ratios are those of a logistic GEE on "
            f"the same terms (patients as clusters, exchangeable working correlation, robust "
            f"standard errors). {fit.explanation} Here the patient variance is "
            f"{fmt_num(sigma2)} on the logit scale, so the GEE's log odds ratios are expected "
            f"to be about {attenuation_factor(sigma2):.2f} times the mixed model's. Odds ratios "
            f"below 1 mean lower odds; the 95 % intervals are Wald intervals. Techniques were "
            f"not randomised.")
    cautions = list(glmm.diagnostics["warnings"]) + list(fit.notes)
    row = {"model": "Yes/no reading (logistic GLMM, subject-specific)", "formula": fit.formula,
           "engine": glmm.engine, "df_method": "Wald z",
           "observations": glmm.nobs, "patients": glmm.ngroups.get("patient_id", np.nan),
           "converged": glmm.diagnostics["converged"],
           "singular": glmm.diagnostics["singular"]}
    gee = fit.gee
    table.attrs.update(fit=fit, cautions=cautions, gee_row={
        "model": "Yes/no reading (GEE logistic, population-averaged)",
        "formula": gee.attrs.get("formula", ""), "engine": "statsmodels GEE",
        "df_method": "robust z", "observations": gee.attrs.get("n_obs", np.nan),
        "patients": gee.attrs.get("n_clusters", np.nan), "converged": np.nan,
        "singular": np.nan})
    return table, text, row


def _binary(ctx: ReportContext, sec: Section) -> None:
    table, text, row = binary_model_table(ctx.scoped, ctx.measure)
    sec.para(f"{ctx.m.label} is a yes/no reading. {text}")
    ctx.add_table(sec, Table(
        "binary_model", f"Odds ratios of {ctx.m.label.lower()}: subject-specific (mixed model, "
        f"{row['formula']}) and population-averaged (GEE).", table,
        decimals={"p_value": 3}, keys=("term",)))
    ctx.models += [row, table.attrs["gee_row"]]
    cautions = table.attrs["cautions"]
    name = "Yes/no reading (logistic GLMM)"
    for c in cautions:
        ctx.caution(c, where=name)
    if cautions:  # shown here too, beside the numbers they qualify
        sec.para("Cautions of this model:")
        sec.items([ctx.safe(f"{c[0].upper()}{c[1:]}".replace(" trials)", " readings)"))
                   for c in cautions])
    else:
        sec.para("The mixed model converged, its patient variance is not at zero, and no "
                 "technique perfectly predicts the reading (no separation).")
