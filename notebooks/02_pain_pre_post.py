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
# # 2. Pain before and after a session
#
# **Question.** By how much does pain change from just before to just after an MFR session, and
# does the change differ between techniques (direct pressure, stretching, massage, combined)?
#
# Each patient comes several times, and each visit gives a `pre` and a `post` pain reading
# (0–10 numeric rating scale, NRS). The readings of one patient are not independent: someone
# with severe sciatica scores high before *and* after every session. Treating the 1,000-odd
# readings as independent would make the standard errors far too small.
#
# ## Why a mixed model
#
# A linear mixed model keeps every reading and adds **random effects** for each patient:
#
# * a random intercept: each patient's own pain level;
# * a random `post` slope: each patient's own immediate response to treatment;
# * a random intercept per therapist, since patients are nested in therapists.
#
# The **fixed effects** are the averages we want: the pre→post change for each technique, and a
# trend over visits (`session_number`). In lme4's notation:
#
# `value ~ post * technique + session_number + (post | patient_id) + (1 | therapist_id)`
#
# We fit it by REML and compute p-values and confidence intervals with Satterthwaite's degrees of
# freedom, exactly as R's lmerTest does (the package's tests check it against lme4).

# %% tags=["parameters"]
source = "../data/synthetic"
seed = 2026
measure = "pain_nrs"
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
print(study)
print(f"{m.label}: {m.unit}, {m.better} is better, MCID {m.mcid_points} points "
      f"or {m.mcid_percent} % ({m.source})")

# %% [markdown]
# ## Look first
#
# Each line joins a patient's mean pain before and after their sessions. Most lines slope down:
# pain is lower right after treatment. The spread of the lines at `pre` is the between-patient
# variation the random intercept will absorb.

# %%
grid = plots.prepost_slopes(study, measure)
plt.show()

# %% [markdown]
# ## Fit the within-session model

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fit = mfr.fit_prepost(study, measure, by="technique")
for w in caught:
    print("caution:", w.message)
print(fit.summary())

# %% [markdown]
# **How to read the summary.**
#
# * *Random effects*: the SD of the patient intercepts is how much patients differ in their
#   usual pain; the SD of the `post` slopes is how much their immediate response differs; `Corr`
#   is the correlation between the two (do patients with more pain respond more?); the residual
#   SD is the visit-to-visit noise.
# * *Fixed effects*: `post` is the pre→post change for the **reference technique**
#   (direct pressure); `post:technique[T.massage]` is how much *more or less* massage changes
#   pain than direct pressure; `session_number` is the drift per visit. Each row has its
#   Satterthwaite df, t statistic and p-value.
#
# Interaction terms are awkward to read, so we turn the model into **estimated marginal means**.

# %%
fit.fixed_effects

# %% [markdown]
# ## Marginal means by technique
#
# Estimated marginal means (EMMs, as R's emmeans computes them) are the model's predicted mean
# pain before (`post = 0`) and after (`post = 1`) a session of each technique, at the average
# session number. Their contrasts, `post - pre`, are the within-session changes.

# %%
emm = fit.emmeans("post", by="technique")
emm

# %%
change = fit.contrasts("post", by="technique")
change[["technique", "estimate", "std_error", "df", "ci_low", "ci_high", "p_value"]]

# %%
ax = plots.marginal_means(fit, "post", by="technique", measure=measure)
plt.show()

# %% [markdown]
# **What the figure shows:** for each technique, the mean pain before and after a session with
# 95 % confidence intervals. Parallel segments would mean the techniques work alike; a steeper
# segment is a larger immediate change.
#
# **Is it important?** Compare each change with the MCID of 2 points. A change of a fraction of
# a point can be statistically clear (its CI excludes 0) and still be far smaller than the change
# patients call important; a CI that includes 0 (look at each technique's row above) means the
# data cannot tell that technique's immediate change from none. The average also hides
# variation between patients: some gain much more (see responders below).
#
# ## How much of the variation is between patients?
#
# The ICC is the share of the (random-effect plus residual) variance that lies between patients
# and therapists; Nakagawa's R² says how much the fixed effects explain (marginal) and fixed plus
# random effects together (conditional).

# %%
icc = fit.icc()
r2 = fit.r2()
print(f"adjusted ICC {icc.adjusted:.2f}; marginal R² {r2.marginal:.2f}, "
      f"conditional R² {r2.conditional:.2f}")

# %% [markdown]
# ## Responders
#
# Averages answer "how much on average"; patients ask "will *I* improve?". A **responder** is a
# patient whose pain fell from the first to the latest pre-session reading by at least the MCID
# (2 points or 30 %). The Wilson interval is the recommended CI for a proportion.

# %%
resp = mfr.responders(study, measure)
rate = mfr.effects.responder_rate(resp)
by_tech = mfr.effects.responder_rate(resp, by="technique")
rate

# %%
by_tech

# %%
ax = plots.responder_waterfall(resp, measure)
plt.show()

# %% [markdown]
# **The waterfall** shows each patient's change from baseline as one bar, sorted; bars past the
# dashed MCID line are responders.
#
# ## Limits
#
# * These are *immediate* changes, minutes after a session; they say nothing about next week.
# * Techniques were chosen by therapists, not randomised: a difference between techniques may
#   reflect which patients received them (confounding by indication).
# * Pain is reported by patients who know they were treated: expectation inflates post scores.
# * Responder rates dichotomise a continuous change and lose information; use them to
#   communicate, and the mixed model to estimate.

# %%
con = change.set_index(change["technique"].astype(str))
results = {
    "n_obs": int(fit.nobs),
    "formula": fit.formula,
    "change_by_technique": {k: float(v) for k, v in con["estimate"].items()},
    "ci_by_technique": {k: [float(con.loc[k, "ci_low"]), float(con.loc[k, "ci_high"])]
                        for k in con.index},
    "icc_adjusted": float(icc.adjusted),
    "r2_marginal": float(r2.marginal),
    "responder_rate": float(rate["rate"].iloc[0]),
    "n_responders": int(rate["responders"].iloc[0]),
}
if n_patients:
    results["truth_immediate_effect"] = dict(truth.immediate_effect)
print(json.dumps(results))
