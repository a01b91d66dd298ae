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
# # 1. A tour of the data
#
# **Question.** What does a myofascial release (MFR) clinic record about its patients, visits and
# measurements, and can we trust those records enough to analyse them?
#
# Before any model, an analyst looks at the data: which tables exist, what each column means,
# whether the values are plausible, and how many patients reach each stage of care. This notebook
# does that for the shipped synthetic study (simulated patients with sciatica or hip pain; no real
# person is in it).
#
# You will learn to
# 1. load a study and read its **validation report** (every problem found, one sentence each);
# 2. read the **codebook**: the measures, their units and the change that matters to patients;
# 3. build a **cohort table** in the spirit of STROBE (numbers at each stage, baseline
#    characteristics).

# %% tags=["parameters"]
# Parameters (papermill can change these). `n_patients > 0` simulates a fresh study of that size
# with `seed` instead of reading `source`: handy for quick runs.
source = "../data/synthetic"
seed = 2026
measure = "pain_nrs"
n_patients = 0

# %%
import json

import numpy as np
import pandas as pd

import mfr_outcomes as mfr
from mfr_outcomes.measures import get_measure

pd.set_option("display.precision", 2)
pd.set_option("display.width", 120)

if n_patients:
    study, truth = mfr.synthetic.generate(n_patients=n_patients, seed=seed)
else:
    study = mfr.load_study(source)
study

# %% [markdown]
# ## Three tables
#
# A study is three tidy tables, linked by identifiers:
#
# * `patients`: one row a patient (age, sex, condition, affected side, symptom duration, site);
# * `sessions`: one row a visit (date, therapist, technique, body region, minutes, home exercise
#   programme, adverse event). A visit with technique `none` is an assessment-only follow-up;
# * `measurements`: one row a reading, in *long* format: which session, before (`pre`) or after
#   (`post`) the treatment, which measure, which side of the body, and the value.
#
# Long format (one reading a row) is what mixed models want: a patient with six visits simply has
# more rows, and a missing reading is a missing row, not a hole in a wide table.

# %%
study.patients.head()

# %%
study.sessions.head()

# %%
study.measurements.head()

# %% [markdown]
# ## The validation report
#
# Loading checks every row: required columns, types, valid ranges, vocabularies, duplicate keys,
# sessions of unknown patients, dates before enrolment, a `post` reading without its `pre`...
# Nothing is dropped silently: each problem is one sentence naming the file, the line and the
# value, and the rows are accounted for (rows read = rows used + rows excluded).
#
# **How to read it:** `excluded` rows are not analysed; `cautions` are rows kept with a bad
# optional value set to missing. The shipped synthetic data is clean, so expect zero findings.
# Notebook 6 shows a messy clinic export.

# %%
report = study.report
print(report)
report.summary()

# %% [markdown]
# ## The codebook: measures and what counts as an important change
#
# Each measure carries its valid range, which direction is better, and the smallest change that
# matters. The **MCID** (minimal clinically important difference) is the smallest change patients
# notice as important; where none is published we fall back on the **MDC** (minimal detectable
# change: the smallest change larger than measurement error). A change smaller than the MDC could
# be noise, so it is a weaker yardstick than an MCID. The `source` column says where each figure
# comes from, so you can check it.

# %%
rows = []
for code in study.measures:
    m = get_measure(code)
    rows.append({"code": code, "label": m.label, "unit": m.unit, "range": m.range_text(),
                 "better": m.better, "mcid_points": m.mcid_points,
                 "mcid_percent": m.mcid_percent, "mdc": m.mdc, "source": m.source})
codebook = pd.DataFrame(rows)
codebook

# %% [markdown]
# How many readings does each measure have, and what are the raw means before and after a
# session? These are **raw** means: they mix patients, visits and techniques, so they are a
# description, not an estimate of an effect (that is notebook 2's job).

# %%
summary = study.summary()
summary

# %% [markdown]
# ## The cohort: numbers at each stage
#
# STROBE (von Elm et al. 2007), the reporting guideline for observational studies, asks for the
# number of people at each stage (item 13) and their characteristics at baseline (item 14),
# with the number missing for each variable. Patients drop out of care for many reasons, and
# the readers of an analysis need to know who is left at each step.

# %%
sessions = study.sessions
treat = sessions[sessions["technique"].astype(str) != "none"]
follow = sessions[sessions["technique"].astype(str) == "none"]
visits_per_patient = treat.groupby("patient_id", observed=True).size()
paired = (study.frame(measure)
          .groupby(["patient_id", "session_id"], observed=True)["post"].nunique())
paired_patients = paired[paired == 2].reset_index()["patient_id"].nunique()
flow = pd.DataFrame({
    "stage": ["enrolled (valid rows)", "at least one treatment session",
              f"paired pre/post {measure} readings", "two or more treatment sessions",
              "five or more treatment sessions", "a follow-up assessment"],
    "patients": [study.patients["patient_id"].nunique(), treat["patient_id"].nunique(),
                 paired_patients, int((visits_per_patient >= 2).sum()),
                 int((visits_per_patient >= 5).sum()), follow["patient_id"].nunique()],
})
flow["percent"] = 100 * flow["patients"] / flow["patients"].iloc[0]
flow

# %% [markdown]
# ## Baseline characteristics
#
# Categories as n (%), measurements as mean (SD) or, for skewed ones such as symptom duration,
# median (IQR). Always report how many values are missing.

# %%
p = study.patients
first_pain = (study.frame(measure).query("post == 0")
              .sort_values("session_number").groupby("patient_id", observed=True)["value"]
              .first())


def describe(values, kind):
    v = pd.to_numeric(values, errors="coerce").astype("float64")
    if kind == "mean":
        text = f"{v.mean():.1f} ({v.std():.1f})"
    else:
        text = f"{v.median():.1f} ({v.quantile(.25):.1f}–{v.quantile(.75):.1f})"
    return {"summary": text, "missing": int(v.isna().sum())}


table1 = [{"characteristic": "patients", "summary": str(len(p)), "missing": 0},
          {"characteristic": "age, years: mean (SD)", **describe(p["age_years"], "mean")},
          {"characteristic": "symptom duration, weeks: median (IQR)",
           **describe(p["symptom_weeks"], "median")},
          {"characteristic": f"baseline {get_measure(measure).label}: mean (SD)",
           **describe(p["patient_id"].map(first_pain), "mean")}]
for col in ["sex", "condition", "affected_side", "site_id"]:
    counts = p[col].value_counts(dropna=False)
    for level, n in counts.items():
        table1.append({"characteristic": f"{col}: {level}",
                       "summary": f"{n} ({100 * n / len(p):.0f} %)", "missing": np.nan})
pd.DataFrame(table1)

# %% [markdown]
# ## What was delivered
#
# The TIDieR checklist (Hoffmann et al. 2014) asks what was done, by whom, how often and for how
# long. A quick look: sessions by technique and body region, and minutes per session.

# %%
pd.crosstab(treat["technique"].astype(str), treat["target_region"].astype(str), margins=True)

# %%
treat.groupby(treat["technique"].astype(str), observed=True)["duration_min"].describe()

# %% [markdown]
# ## Limits
#
# * Records show what was *recorded*, not what was planned or how well it was done (fidelity).
# * Techniques are chosen by therapists, not randomised: patients who got one technique may
#   differ from those who got another (confounding by indication).
# * Data are simulated here; with a real export, read the validation report first.
#
# ## Key results

# %%
results = {
    "n_patients": int(len(study.patients)),
    "n_sessions": int(len(study.sessions)),
    "n_treatment_sessions": int(len(treat)),
    "n_measurements": int(len(study.measurements)),
    "n_findings": int(len(study.report.findings)),
    "measures": study.measures,
    "paired_patients": int(paired_patients),
    "pre_mean": float(summary.set_index("measure").loc[measure, "pre_mean"]),
}
print(json.dumps(results))
