"""The course of care: a straight line against a flexible curve, by arm when there are arms.

Both are linear mixed models of the pre-session readings against weeks since the first visit,
with a random intercept and slope per patient, fitted by maximum likelihood so that their
likelihoods compare: the line ``value ~ weeks`` and the curve ``value ~ poly(weeks, 3)`` (a
cubic in weeks, which holds the line), each ``* arm`` when the frame has two or more arms. A
likelihood-ratio test says whether the line is enough; when it is rejected, the report shows
the curve and says that one "change per week" would mislead.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from mfr_outcomes.report.blocks import Section, Table
from mfr_outcomes.report.context import ReportContext
from mfr_outcomes.report.fmt import fmt_num, fmt_p
from mfr_outcomes.rules import affected_side_rows

__all__ = ["build", "course_frame", "ALPHA"]

#: Significance level of the likelihood-ratio test of the line against the curve.
ALPHA = 0.05


def course_frame(study, measure: str) -> tuple[pd.DataFrame, bool]:
    """Pre-session readings (affected side) and whether there are two or more arms."""
    f = study.frame(measure)
    f = f[(f["post"] == 0) & affected_side_rows(f)]
    if "arm" not in f.columns and "arm" in study.patients.columns:  # a clinic profile's arms
        f = f.merge(study.patients[["patient_id", "arm"]], on="patient_id", how="left")
    keys = ["patient_id", "session_id", "weeks"]
    arms = "arm" in f.columns and f["arm"].dropna().nunique() >= 2
    if arms:
        keys.append("arm")
    out = f.groupby(keys, observed=True)["value"].mean().reset_index()
    if arms:
        out["arm"] = out["arm"].astype(str)
    return out, arms


def build(ctx: ReportContext, sec: Section) -> None:
    from mfr_outcomes import plots
    from mfr_outcomes.models.fit import fit_mixed
    from mfr_outcomes.models.inference import compare

    m = ctx.m
    frame, arms = course_frame(ctx.scoped, ctx.measure)
    degree = min(3, frame["weeks"].nunique() - 1)
    if degree < 2:
        sec.para(f"Not enough data: the readings fall on {frame['weeks'].nunique()} distinct "
                 f"week(s); comparing a line with a curve needs at least 3.")
        return
    by = " * arm" if arms else ""
    line = fit_mixed(frame, f"value ~ weeks{by} + (weeks | patient_id)", reml=False)
    curve = fit_mixed(frame, f"value ~ poly(weeks, {degree}){by} + (weeks | patient_id)",
                      reml=False)
    ctx.fit_label("Course of care: straight line (ML)", line)
    ctx.fit_label("Course of care: flexible curve (ML)", curve)
    lrt = compare(line, curve)
    test = lrt.iloc[1]
    sec.para(
        "Pre-session readings across the course of care, against weeks since each patient's "
        "first visit, with a random intercept and slope per patient; the mixed model uses every "
        "available reading and is valid when missing visits depend only on what was observed "
        "(missing at random). A straight line is compared with a flexible curve (a polynomial "
        f"of degree {degree} in weeks) by a likelihood-ratio test of the two maximum-likelihood "
        "fits" + (", with a line or curve per arm" if arms else "") + ".")
    table = lrt[["model", "npar", "aic", "bic", "loglik", "chisq", "df", "p_value"]]
    ctx.add_table(sec, Table("course_models", "The course of care: a straight line against a "
                             "flexible curve (likelihood-ratio test).", table))
    stat = (f"χ² = {fmt_num(test['chisq'])}, df = {int(test['df'])}, "
            f"p {'< 0.001' if test['p_value'] < 0.001 else '= ' + fmt_p(test['p_value'])}")
    rejected = bool(test["p_value"] < ALPHA)
    if rejected:
        sec.para(f"A straight line does not describe the course of {m.label}: the flexible "
                 f"curve fits better ({stat}). The figure shows the curve; a single change per "
                 f"week would mislead, so none is given.")
    else:
        sec.para(f"A straight line describes the course as well as the flexible curve ({stat}).")
        fe = line.fixed_effects
        slopes = fe[fe["term"].astype(str).str.startswith("weeks")]
        for _, r in slopes.iterrows():
            what = "On average" if r["term"] == "weeks" else f"Difference in slope ({r['term']}):"
            sec.para(f"{what} {m.label} changed by {fmt_num(r['estimate'])} {m.unit} a week "
                     f"(95 % CI {fmt_num(r['ci_low'])} to {fmt_num(r['ci_high'])}).")
    observed, curves = _curves(ctx, frame, arms, line, curve)
    ctx.figure(sec, "course of care",
               lambda: plots.course_curves(observed, curves, measure=ctx.measure,
                                           title=f"{m.label}: line and curve"),
               f"Mean {m.label} before sessions by week since the first visit (weeks with fewer "
               f"than {ctx.min_cell} patients left out), with the straight line (dashed) and "
               f"the flexible curve (solid)" + (", by arm." if arms else "."),
               f"Line chart of {m.label} over the course of care with a line and a curve.")


def _curves(ctx: ReportContext, frame: pd.DataFrame, arms: bool, line, curve):
    wk = frame.assign(week=frame["weeks"].round())
    keys = ["week"] + (["arm"] if arms else [])
    obs = wk.groupby(keys, observed=True).agg(mean=("value", "mean"),
                                              patients=("patient_id", "nunique")).reset_index()
    obs = obs[obs["patients"] >= ctx.min_cell].rename(columns={"week": "time"})
    # the curves where most readings are (a cubic swings where there are few)
    grid = np.linspace(0, float(frame["weeks"].quantile(0.95)), 40)
    levels = sorted(frame["arm"].unique()) if arms else [None]
    rows = []
    for fit, name in ((line, "straight line"), (curve, "flexible curve")):
        for lev in levels:
            nd = pd.DataFrame({"weeks": grid})
            if lev is not None:
                nd["arm"] = lev
            est = np.asarray(fit.predict(nd, include_random=False), dtype=float)
            rows.append(pd.DataFrame({"time": grid, "estimate": est, "model": name,
                                      **({"group": lev} if lev is not None else {})}))
    curves = pd.concat(rows, ignore_index=True)
    if arms:
        obs = obs.rename(columns={"arm": "group"})
    return obs, curves
