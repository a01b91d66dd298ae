# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. The course of care
#
# **Question.** How does pain change over a course of MFR sessions, and is disability (the
# Oswestry Disability Index, ODI) lower at discharge and at follow-up than at the start?
#
# Notebook 2 looked *within* a session. Here we follow patients *across* sessions and weeks,
# using the pre-session readings (the patient's state when they arrive), and ask how much of
# the improvement lasts.
#
# ## The problem of dropout
#
# Patients stop coming: some because they are better, some because they are not, some because
# they moved. If we averaged only the patients still attending at week 8, we would compare a
# different, self-selected group with the group at week 0.
#
# A mixed model uses **every reading of every patient**, including those who left early. It gives
# unbiased estimates when the data are **missing at random (MAR)**: whether a reading is missing
# may depend on what was *observed* before (e.g. a patient whose recorded pain stayed high stops
# coming), but not on the unobserved value itself once those are accounted for. An analysis of
# **completers only** needs the stronger assumption that dropouts are a random subset (MCAR).
# Comparing the two is a simple **sensitivity analysis**.

# %% tags=["parameters"]
source = "../data/synthetic"
seed = 2026
measure = "pain_nrs"
n_patients = 0

# %%
import json
import re
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import mfr_outcomes as mfr
from mfr_outcomes import plots
from mfr_outcomes.measures import get_measure
from mfr_outcomes.models.domain import followup_frame

pd.set_option("display.precision", 3)
pd.set_option("display.width", 120)
warnings.simplefilter("ignore", mfr.ModelWarning)  # each fit's notes are printed with it
if n_patients:
    study, truth = mfr.synthetic.generate(n_patients=n_patients, seed=seed)
else:
    study = mfr.load_study(source)
m = get_measure(measure)

# %% [markdown]
# ## The model of the course
#
# `value ~ weeks + (weeks | patient_id) + (1 | therapist_id)` on pre-session readings: each
# patient has their own starting level and their own rate of change per week (random intercept
# and slope); the fixed `weeks` coefficient is the rate of the typical patient.

# %%
course = mfr.fit_course(study, measure, time="weeks")
print(course.summary())

# %%
slope = course.fixed_effects.set_index("term").loc["weeks"]
print(f"typical change: {slope['estimate']:.2f} {m.unit} a week "
      f"(95 % CI {slope['ci_low']:.2f} to {slope['ci_high']:.2f})")

# %% [markdown]
# ## Trajectories
#
# Thin lines are individual patients; the bold line is the model's population-average prediction
# with its 95 % confidence band. Note how the lines thin out over time: fewer patients remain.
# A straight line is a simplification: real recovery often slows after the first weeks.

# %%
ax = plots.trajectories(study, measure, fit=course, time="weeks")
plt.show()

# %% [markdown]
# **A warning sign.** Few patients are still attending after ten weeks, and there the straight
# line runs towards (even below) zero, impossible on a 0–10 scale. The linear trend is an
# average over the weeks where most data are; recovery usually slows. A quick check: the same
# model on log(1 + weeks), which falls fast at first and then levels off. Both are refitted by
# maximum likelihood (`reml=False`), because REML criteria of models with different fixed
# effects cannot be compared; a lower AIC is better.

# %%
data = course.data.copy()
data["log_weeks"] = np.log1p(data["weeks"])
log_formula = re.sub(r"\bweeks\b", "log_weeks", course.formula)
linear_ml = mfr.fit_mixed(data, course.formula, reml=False)
log_ml = mfr.fit_mixed(data, log_formula, reml=False)
pd.DataFrame({"formula": [course.formula, log_formula],
              "AIC": [linear_ml.aic, log_ml.aic]}, index=["linear", "log(1 + weeks)"])

# %% [markdown]
# ## Disability: baseline → discharge → follow-up
#
# The ODI (0–100 %) is recorded at the first visit, the last treatment visit (discharge) and an
# assessment-only follow-up visit some weeks later. `fit_followup` models `value ~ stage +
# (1 | patient_id)`: patients missing a stage (no follow-up visit) still contribute the stages
# they have.

# %%
fu_frame = followup_frame(study, "odi")
fu_frame.groupby("stage", observed=True)["patient_id"].nunique().rename("patients")

# %%
odi_fit = mfr.fit_followup(study, "odi")
odi_means = odi_fit.emmeans("stage")
odi_change = odi_fit.contrasts("stage", method="trt.vs.ctrl")
odi_means

# %%
odi_change

# %% [markdown]
# **How to read it:** the contrasts are changes from baseline in ODI points; the MCID of the ODI
# is 10 points or 30 % (Ostelo 2008). The p-values are adjusted for the two comparisons (Holm).
#
# ## Sensitivity analysis: completers against everyone
#
# *Completers* here are patients who came back for the follow-up assessment. We refit both
# models on completers only and compare. If the estimates move a lot, conclusions depend on how
# dropout happened, and the MAR-based mixed model on everyone is the better default, though
# not proof against dropout that depends on unobserved outcomes (MNAR).

# %%
sessions = study.sessions
completers = set(sessions.loc[sessions["technique"].astype(str) == "none", "patient_id"])
keep = study.patients["patient_id"].isin(completers)
sub_sessions = sessions[sessions["patient_id"].isin(completers)]
sub = mfr.study.Study(study.patients[keep], sub_sessions,
                      study.measurements[study.measurements["session_id"]
                                         .isin(sub_sessions["session_id"])],
                      study.report, study.source)
course_c = mfr.fit_course(sub, measure, time="weeks")
odi_c = mfr.fit_followup(sub, "odi").contrasts("stage", method="trt.vs.ctrl")


def row(fit_or_frame, what):
    if hasattr(fit_or_frame, "fixed_effects"):
        r = fit_or_frame.fixed_effects.set_index("term").loc["weeks"]
    else:
        r = fit_or_frame.set_index("contrast").loc[what]
    return r[["estimate", "ci_low", "ci_high"]]


sensitivity = pd.DataFrame({
    ("all patients", "pain per week"): row(course, None),
    ("completers", "pain per week"): row(course_c, None),
    ("all patients", "ODI follow-up − baseline"): row(odi_change, "follow_up - baseline"),
    ("completers", "ODI follow-up − baseline"): row(odi_c, "follow_up - baseline"),
}).T
sensitivity["patients"] = [course.data["patient_id"].nunique(),
                           course_c.data["patient_id"].nunique(),
                           odi_fit.data["patient_id"].nunique(),
                           mfr.fit_followup(sub, "odi").data["patient_id"].nunique()]
sensitivity

# %% [markdown]
# **Reading the comparison.** Completers are often the patients who did better (or worse) than
# those who left. When completers improve faster than everyone, a completers-only analysis
# overstates the benefit. The mixed model on all patients is valid under MAR; if you suspect
# dropout depends on unrecorded pain (MNAR), only a model of the dropout itself (pattern-mixture
# or selection models, or multiple imputation with a δ-adjustment) can probe that.
#
# ## Limits
#
# * There is no untreated comparison group: sciatica often improves by itself (natural history
#   and regression to the mean), so a fall in pain over weeks is not all due to treatment.
# * A linear trend in weeks is a simplification of a curved recovery (compare the AICs above).
# * The follow-up visit is attended by those who chose to come back.

# %% [markdown]
# ## Numbness and tingling over the course of care
#
# Radiating numbness or tingling (`paresthesia`, recorded 0/1 before each session) is a binary
# outcome, so it gets a logistic mixed model (glmer's method, a random intercept per patient):
# its odds ratios are **subject-specific** — how one patient's odds change from one session to
# the next, or with one technique rather than another. The GEE beside them gives
# **population-averaged** odds ratios, which lie closer to 1.

# %%
binary = mfr.fit_binary(study, "paresthesia", by="technique", time="session_number")
print(binary.explanation)
binary.odds_ratios.round(3)

# %%
results = {
    "slope_per_week": float(slope["estimate"]),
    "slope_ci": [float(slope["ci_low"]), float(slope["ci_high"])],
    "slope_completers": float(row(course_c, None)["estimate"]),
    "odi_baseline": float(odi_means.set_index("stage").loc["baseline", "estimate"]),
    "odi_followup_change": float(row(odi_change, "follow_up - baseline")["estimate"]),
    "odi_followup_change_completers": float(row(odi_c, "follow_up - baseline")["estimate"]),
    "n_completers": int(len(completers)),
    "aic_linear": float(linear_ml.aic),
    "aic_log": float(log_ml.aic),
    "n_patients": int(study.patients["patient_id"].nunique()),
    "paresthesia_session_or": float(binary.odds_ratios.set_index("term")
                                    .loc["session_number", "odds_ratio"]),
    "paresthesia_session_or_gee": float(binary.odds_ratios.set_index("term")
                                        .loc["session_number", "gee_odds_ratio"]),
}
print(json.dumps(results))
