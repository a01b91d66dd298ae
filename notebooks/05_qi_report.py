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
# # 5. Quality improvement: SPC charts and the QI report
#
# **Question.** Is the clinic's care stable from month to month, or is something changing? And
# how do we share that with a QI team without exposing any patient?
#
# Research asks "does the treatment work?"; quality improvement asks "is our process stable, and
# did the change we made improve it?". Its tools are **run charts** and **statistical process
# control (SPC) charts**: a time series with a centre line and rules that tell *signals*
# (special-cause variation, worth investigating) from *noise* (common-cause variation).
#
# * **Run chart** (median line, Anhøj's rules): a run of points on one side of the median longer
#   than expected, or too few crossings of the median, signals a shift.
# * **XmR chart** (individuals and moving range; NHS "Making Data Count"): process limits at the
#   mean ± 2.66 × the mean moving range; a point beyond a limit, 7 points on one side of the mean
#   (shift), 7 points rising or falling (trend), or 2 of 3 points near a limit signal.
# * **p-chart** for proportions (e.g. the share of patients who respond): limits widen in months
#   with fewer patients.

# %% tags=["parameters"]
source = "../data/synthetic"
seed = 2026
measure = "pain_nrs"
n_patients = 0
out_dir = "../build/notebooks/qi_report"
min_cell = 5

# %%
import json
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import mfr_outcomes as mfr
from mfr_outcomes import plots, qi
from mfr_outcomes.report import build_report
from mfr_outcomes.warnings_ import MfrWarning

pd.set_option("display.precision", 2)
pd.set_option("display.width", 120)
if n_patients:
    study, truth = mfr.synthetic.generate(n_patients=n_patients, seed=seed)
else:
    study = mfr.load_study(source)

# %% [markdown]
# ## Monthly aggregates
#
# `qi.aggregate` turns readings into one row a month: patients seen, sessions, the mean
# pre-session pain, the mean within-session change, and among patients whose last visit fell in
# the month, how many responded (improved by the MCID).

# %%
agg = qi.aggregate(study, measure, period="month")
agg

# %% [markdown]
# ## Run chart of pre-session pain

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    run = qi.run_chart(agg["mean_pre"], agg["period"], measure=measure)
print(run.summary())
ax = plots.run_chart(run, ylabel="mean pain before session")
plt.show()

# %% [markdown]
# **How to read it:** the line is the median. With fewer than 10 useful points the rules are not
# applied (the notes say so): a short series cannot tell signal from noise.
#
# ## XmR chart of the within-session change

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore", mfr.DataWarning)
    xmr = qi.xmr_chart(agg["mean_change"], agg["period"], measure=measure)
print(xmr.summary())
ax = plots.xmr_chart(xmr, ylabel="mean post − pre")
plt.show()

# %% [markdown]
# Each signal comes with a sentence saying what rule fired, where, and whether it is an
# improvement or a concern given which direction is better for the measure.
#
# ## p-chart of the responder rate

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore", mfr.DataWarning)
    pch = qi.p_chart(agg["n_responders"].astype(float), agg["n_completed"], agg["period"],
                     better="higher")
print(pch.summary())
ax = plots.p_chart(pch, ylabel="responders")
plt.show()

# %% [markdown]
# ## A signal on purpose
#
# To see the rules work, we simulate two years of monthly mean pain: twelve stable months around
# 5 points, then a sustained drop of 0.8 points, as if a new technique had been introduced. The
# XmR chart should signal a shift (seven or more points below the mean) in the second year.

# %%
rng = np.random.default_rng(seed)
months = pd.period_range("2025-01", periods=24, freq="M")
series = pd.Series(5.0 + rng.normal(0, 0.2, 24), index=months)
series.iloc[12:] -= 0.8
with warnings.catch_warnings():
    warnings.simplefilter("ignore", mfr.DataWarning)
    demo = qi.xmr_chart(series, measure=measure)
for s in demo.signals:
    print("-", s.message)
ax = plots.xmr_chart(demo, ylabel="mean pain (simulated)")
plt.show()

# %% [markdown]
# **Reading the chart:** the first year sits above the mean (orange: a concern, since lower pain
# is better) and the second below it (blue: an improvement). The limits here are computed from
# both years together, so they are too wide for either. Once you know when the change happened,
# declare it: the limits are recalculated from that month (`rebase`), or frozen on a baseline
# period (`baseline=("2025-01", "2025-12")`).
#
# ## Making Data Count: a declared change, a target and the icons
#
# NHS England's Making Data Count draws each point by type (grey common cause, blue
# improvement, orange concern), and sums a chart up in two icons: **variation** (what the latest
# point shows) and **assurance** (given a target, whether the process will meet it: pass, fail,
# or hit and miss at random, from where the target lies against the process limits).

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore", mfr.DataWarning)
    rebased = qi.xmr_chart(series, measure=measure, rebase="2026-01", target=4.5)
print(rebased.summary())
ax = plots.spc_chart(rebased, ylabel="mean pain (simulated)", title="Declared change in 2026-01")
plt.show()

# %% [markdown]
# Each year is now judged by its own limits: no special cause within either, the latest point is
# common cause, and with a target of 4.5 the second year's limits straddle it: hit or miss.
#
# ## Building the QI report
#
# `build_report` writes one self-contained HTML file (figures embedded, nothing fetched from the
# internet) and every table as CSV. It is safe to share inside the organisation:
#
# * no patient or session identifier, and no value rejected by validation, appears anywhere;
#   therapists appear as stable pseudonyms ("Therapist C") unless `name_therapists=True`;
# * counts from 1 to `min_cell − 1` are shown as "<5" (and percentages of them too); a count
#   hidden only because it would let a small one be worked out from a total is shown as
#   "suppressed"; a zero is shown as 0;
# * text from the data is escaped in HTML and neutralised in CSV (a cell starting with `=` would
#   otherwise run as a spreadsheet formula).
#
# The report has sections on data quality, the cohort (STROBE), the intervention as delivered
# (TIDieR), outcomes, trends (Making Data Count charts with their icons), therapists and sites
# (funnel plots), adverse events and methods. A part that cannot be computed (e.g.
# a model on a tiny site) is replaced by a sentence saying why; the rest of the report stands.

# %%
site = str(study.patients["site_id"].value_counts().index[0])
with warnings.catch_warnings():
    warnings.simplefilter("ignore", MfrWarning)  # listed in the report's methods section
    result = build_report(study, out_dir, site=site, min_cell=min_cell, measure=measure,
                          seed=seed)
print(result.html_path)
print(len(result.csv_paths), "CSV tables")
for key, section in result.sections.items():
    print(f"{key:15s} {'complete' if section.ok else 'incomplete: ' + '; '.join(section.problems)}")

# %%
pd.read_csv(Path(out_dir) / "tables" / "outcomes_prepost.csv")

# %% [markdown]
# Open `report.html` in a browser to read it. From the command line the same report is
# `mfr-outcomes report data/synthetic --out build/report --site site-1 --period 2026Q3`.
#
# ## Limits
#
# * SPC charts need 15–20 points for reliable limits; a few months give provisional limits.
# * Monthly means mix patients at different stages of care: a month full of new patients has
#   higher pain without anything getting worse. Interpret with the case mix in mind.
# * A signal says "something changed", not what or why: it starts a conversation, it does not end
#   one.

# %%
results = {
    "n_months": int(len(agg)),
    "run_signals": len(run.signals),
    "xmr_signals": len(xmr.signals),
    "shift_demo_signals": [s.rule for s in demo.signals],
    "rebased_icons": [rebased.variation, rebased.assurance],
    "report": str(result.html_path),
    "n_csv": len(result.csv_paths),
    "sections_ok": {k: s.ok for k, s in result.sections.items()},
    "site": site,
}
print(json.dumps(results))
