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
# # 3. Range of motion: straight-leg raise and hip rotation
#
# **Question.** Does range of motion improve from before to after a session, and is the gain the
# same on the painful (affected) side and the other side?
#
# Two clinical tests:
#
# * **Straight-leg raise (SLR)**, in degrees: the patient lies on their back and the therapist
#   lifts the straight leg until pain or tightness stops it. In sciatica the nerve root is
#   irritated, so the affected leg rises less.
# * **Hip internal rotation**, in degrees: limited in hip pain and piriformis syndrome.
#
# Both are measured on the **left and right** side at each visit. That adds a level to the data:
# readings within a side, sides within a visit, visits within a patient.
#
# ## How the model handles sides
#
# The pre/post model gets a `side` term: `value ~ post * technique + session_number + side +
# (post | patient_id) + (1 | therapist_id)`. The random effects still belong to the patient, so
# the two sides of one patient share their patient level. To ask whether the *affected* side
# responds differently we add the interaction of `post` with an `affected` indicator.

# %% tags=["parameters"]
source = "../data/synthetic"
seed = 2026
measure = "slr_deg"
n_patients = 0

# %%
import json
import warnings

import matplotlib.pyplot as plt
import pandas as pd

import mfr_outcomes as mfr
from mfr_outcomes import plots
from mfr_outcomes.measures import get_measure

pd.set_option("display.precision", 3)
pd.set_option("display.width", 120)
if n_patients:
    study, truth = mfr.synthetic.generate(n_patients=n_patients, seed=seed)
else:
    study = mfr.load_study(source)
m = get_measure(measure)
print(f"{m.label} ({m.unit}): {m.better} is better; important change: "
      f"{m.threshold_points} ({m.source})")

# %% [markdown]
# ## Look first: readings by side
#
# Each patient has an `affected_side` (left, right or bilateral). We label every reading as on the
# affected or the unaffected side (both sides count as affected when bilateral).

# %%
frame = study.frame(measure)
frame = frame[frame["technique"].astype(str) != "none"].copy()
aff = frame["affected_side"].astype(str)
frame["affected"] = ((aff == "bilateral") | (aff == frame["side"].astype(str))).astype(int)
frame.groupby(["affected", "phase"], observed=True)["value"].agg(["count", "mean", "std"])

# %%
ax = plots.rom_by_side(study, measure, by="affected")
plt.show()

# %% [markdown]
# **What the figure shows:** mean SLR before and after a session on the affected and the
# unaffected side, with 95 % CIs (computed from patient means, so each patient counts once).
# The affected side starts lower; both rise after treatment.
#
# ## The pre/post model with side

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore", mfr.ModelWarning)  # printed with the fit's notes below
    fit = mfr.fit_prepost(study, measure, by="technique")
print(fit.summary())

# %%
change = fit.contrasts("post", by="technique")
change[["technique", "estimate", "ci_low", "ci_high", "p_value"]]

# %% [markdown]
# **How to read it:** `post` rows are the mean gain in degrees after a session. Compare them with
# the MDC of 5.7° (Ekedahl 2012): a gain smaller than the MDC is within measurement error of a
# single test, even when the model says the *average* gain is not zero.
#
# ## Does the affected side respond differently?
#
# We fit the model ourselves with `fit_mixed`, adding `post * affected`. The `post:affected`
# coefficient is the extra gain on the affected side.

# %%
formula = ("value ~ post * affected + technique + session_number "
           "+ (post | patient_id)")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", mfr.ModelWarning)
    side_fit = mfr.fit_mixed(frame, formula)
fe = side_fit.fixed_effects.set_index("term")
fe.loc[["post", "affected", "post:affected"], ["estimate", "ci_low", "ci_high", "p_value"]]

# %% [markdown]
# `affected` is how much lower the affected side is before treatment; `post:affected` is the
# difference in gain. A positive value means the tighter side gains more, which is what we would
# expect if treatment releases the tension that limits it.
#
# ## Hip internal rotation
#
# The same model for hip internal rotation. No MCID or MDC is published for it, so we report
# the change in degrees and its CI, without calling it important or not.

# %%
hip = "hip_ir_deg"
with warnings.catch_warnings():
    warnings.simplefilter("ignore", mfr.ModelWarning)
    hip_fit = mfr.fit_prepost(study, hip, by=None)
hip_change = hip_fit.contrasts("post")
hip_change

# %%
ax = plots.rom_by_side(study, hip, by="side")
plt.show()

# %% [markdown]
# ## Limits
#
# * Goniometer and inclinometer readings have error of several degrees between testers; the
#   MDC, not zero, is the threshold for one patient's change.
# * The post reading is taken by a therapist who knows a session just happened (no blinding).
# * Straight-leg raise mixes nerve tension and hamstring length; it is not specific to sciatica.

# %%
con = change.set_index(change["technique"].astype(str))
results = {
    "measure": measure,
    "gain_by_technique": {k: float(v) for k, v in con["estimate"].items()},
    "affected_pre_difference": float(fe.loc["affected", "estimate"]),
    "post_by_affected": float(fe.loc["post:affected", "estimate"]),
    "hip_ir_gain": float(hip_change["estimate"].iloc[0]),
    "mdc": m.mdc,
}
if n_patients:
    results["truth_rom_immediate_gain_deg"] = truth.rom_immediate_gain_deg
print(json.dumps(results))
