"""Responders, responder rates, effect sizes, NNT and the paresthesia GEE, against closed forms
and statsmodels' own output."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mfr_outcomes import effects as E
from mfr_outcomes.study import from_frames
from mfr_outcomes.warnings_ import DataWarning, ModelWarning

# patient -> (technique, pre readings by visit, post readings by visit); the last visit of P1 is a
# follow-up (technique none, pre only).
_PAIN = {
    "P1": ("direct_pressure", [8, 7, 6, 5], [6, 5, 5, None]),   # 8 -> 5: 3 points, 37.5 %
    "P2": ("direct_pressure", [5, 5, 4], [4, 4, 3]),            # 5 -> 4: 1 point, 20 %
    "P3": ("stretching", [3, 3, 2], [2, 2, 2]),                 # 3 -> 2: 1 point, 33 %
    "P4": ("stretching", [6, 7, 7], [5, 6, 6]),                 # 6 -> 7: worse
    "P5": ("stretching", [4], [3]),                             # one visit only: excluded
    "P6": ("massage", [0, 1, 0], [0, 0, 0]),                    # baseline 0: cannot respond
}


def _hand_study():
    patients, sessions, meas = [], [], []
    for i, (pid, (tech, pre, post)) in enumerate(_PAIN.items()):
        patients.append({"patient_id": pid, "site_id": "site-1" if i < 3 else "site-2",
                         "condition": "sciatica", "affected_side": "left"})
        for k, (a, b) in enumerate(zip(pre, post), start=1):
            sid = f"{pid}-{k}"
            followup = pid == "P1" and k == 4
            sessions.append({"session_id": sid, "patient_id": pid, "therapist_id": "T1",
                             "session_date": f"2026-03-{k * 3:02d}",
                             "technique": "none" if followup else tech})
            meas.append({"session_id": sid, "phase": "pre", "measure": "pain_nrs", "value": a})
            if b is not None:
                meas.append({"session_id": sid, "phase": "post", "measure": "pain_nrs",
                             "value": b})
            meas.append({"session_id": sid, "phase": "pre", "measure": "hip_ir_deg",
                         "side": "left", "value": 20 + k})
            meas.append({"session_id": sid, "phase": "pre", "measure": "hip_ir_deg",
                         "side": "right", "value": 30})
    return from_frames(pd.DataFrame(patients), pd.DataFrame(sessions), pd.DataFrame(meas))


@pytest.fixture(scope="module")
def hand_study():
    return _hand_study()


def test_responders_by_hand(hand_study):
    with pytest.warns(DataWarning, match="left out of the responder analysis"):
        r = E.responders(hand_study, "pain_nrs")
    r = r.set_index("patient_id")
    assert list(r.index) == ["P1", "P2", "P3", "P4", "P6"]
    # P6 starts at 0: no reading could be an important change, so P6 is not in the denominator
    assert not r.loc["P6", "eligible"] and pd.isna(r.loc["P6", "responder"])
    assert r.loc[["P1", "P2", "P3", "P4"], "eligible"].all()
    rate = E.responder_rate(r.reset_index())
    assert rate["n"].item() == 4 and rate["responders"].item() == 2
    assert rate.attrs["n_not_eligible"] == 1
    assert rate.attrs["notes"] == [
        "1 patient(s) not counted: baseline leaves no room for an important change"]
    assert r.loc["P1", ["baseline", "last", "change"]].tolist() == [8, 5, -3]
    assert r.loc["P1", "percent_change"] == pytest.approx(-37.5)
    assert r.loc["P1", "improvement"] == 3
    assert bool(r.loc["P1", "mcid_met_points"]) and bool(r.loc["P1", "mcid_met_percent"])
    assert not r.loc["P2", "mcid_met_points"] and not r.loc["P2", "mcid_met_percent"]
    assert not r.loc["P2", "responder"]
    # 1 point but 33 %: a responder by the percent criterion (Ostelo 2008: either)
    assert not r.loc["P3", "mcid_met_points"] and r.loc["P3", "mcid_met_percent"]
    assert r.loc["P3", "responder"]
    assert r.loc["P4", "improvement"] == -1 and not r.loc["P4", "responder"]
    assert r.loc["P1", "technique"] == "direct_pressure" and r.loc["P1", "n_visits"] == 4
    excl = r.attrs["excluded"]
    assert excl["patient_id"].tolist() == ["P5"]
    assert r.attrs["threshold_points"] == 2 and r.attrs["threshold_percent"] == 30


def test_responders_last_choices(hand_study):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        dis = E.responders(hand_study, "pain_nrs", last="discharge").set_index("patient_id")
        fu = E.responders(hand_study, "pain_nrs", last="follow_up").set_index("patient_id")
        post = E.responders(hand_study, "pain_nrs", last="last_post").set_index("patient_id")
    assert dis.loc["P1", "last"] == 6          # last treatment visit's pre reading
    assert list(fu.index) == ["P1"] and fu.loc["P1", "last"] == 5
    assert post.loc["P1", "last"] == 5 and post.loc["P5", "last"] == 3   # a post on the same visit
    assert "P5" in post.index


def test_responders_without_threshold_and_per_side(hand_study):
    with pytest.warns(DataWarning) as rec:
        r = E.responders(hand_study, "hip_ir_deg")
    assert any("no published MCID" in str(w.message) for w in rec)
    assert r["responder"].isna().all()
    # affected side is left: readings 20 + k, so baseline 21
    assert r.set_index("patient_id").loc["P1", "baseline"] == 21
    assert any("affected side" in n for n in r.attrs["notes"])


def test_responders_bad_input(hand_study):
    with pytest.raises(ValueError, match="last must be one of"):
        E.responders(hand_study, "pain_nrs", last="end")
    with pytest.raises(ValueError, match="unknown measure"):
        E.responders(hand_study, "vas")


def _wilson_by_hand(x, n, level=0.95):
    z = stats.norm.ppf(1 - (1 - level) / 2)
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_one_wilson_implementation_agrees_with_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    from mfr_outcomes.rules import wilson_interval

    for x, n, level in [(0, 10, 0.95), (3, 10, 0.9), (17, 28, 0.95), (40, 40, 0.99)]:
        ref = proportion_confint(x, n, alpha=1 - level, method="wilson")
        assert wilson_interval(x, n, level) == pytest.approx(ref, abs=1e-12)
        assert E.wilson_ci(x, n, level) == wilson_interval(x, n, level)


def test_responder_eligibility_rule_by_hand():
    from mfr_outcomes.rules import can_show_important_change, important_change_mask

    # pain (0-10, lower better, 2 points or 30 %): from 1 the best reading 0 is a 100 % drop
    assert can_show_important_change("pain_nrs", [0, 1, 10]).tolist() == [False, True, True]
    # straight-leg raise (higher better, MDC 5.7 degrees, 0-120): 115 can still gain 5
    assert can_show_important_change("slr_deg", [114.3, 114.4]).tolist() == [True, False]
    assert important_change_mask("slr_deg", [40, 40], [45.7, 45.6]).tolist() == [True, False]


def test_wilson_ci_by_hand():
    for x, n in [(0, 10), (3, 10), (17, 28), (40, 40)]:
        lo, hi = E.wilson_ci(x, n)
        blo, bhi = _wilson_by_hand(x, n)
        assert lo == pytest.approx(max(0, blo), abs=1e-12)
        assert hi == pytest.approx(min(1, bhi), abs=1e-12)


def test_responder_rate_by_group():
    resp = pd.DataFrame({"technique": ["a"] * 10 + ["b"] * 5 + ["c"],
                         "site_id": ["s1"] * 8 + ["s2"] * 8,
                         "responder": pd.array([True] * 7 + [False] * 3 + [True] * 2
                                               + [False] * 3 + [pd.NA], dtype="boolean")})
    out = E.responder_rate(resp, by="technique")
    a = out.set_index("technique").loc["a"]
    assert a["n"] == 10 and a["responders"] == 7 and a["rate"] == pytest.approx(0.7)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx(_wilson_by_hand(7, 10))
    assert "c" not in set(out["technique"])   # only an unknown status
    assert out.attrs["notes"]
    overall = E.responder_rate(resp)
    assert overall["n"].item() == 15 and overall["responders"].item() == 9
    both = E.responder_rate(resp, by=["site_id", "technique"])
    assert len(both) == 3
    with pytest.raises(ValueError, match="not in the responder table"):
        E.responder_rate(resp, by="clinic")


def _resp(xa, na, xb, nb):
    return pd.DataFrame({"technique": ["a"] * na + ["b"] * nb,
                         "responder": [True] * xa + [False] * (na - xa)
                         + [True] * xb + [False] * (nb - xb)})


def test_nnt_by_hand_benefit():
    res = E.nnt(_resp(30, 40, 15, 40), "a", "b")
    pa, pb = 0.75, 0.375
    rd = pa - pb
    se = math.sqrt(pa * (1 - pa) / 40 + pb * (1 - pb) / 40)
    lo, hi = rd - 1.959963984540054 * se, rd + 1.959963984540054 * se
    assert res["risk_difference"] == pytest.approx(rd)
    assert (res["rd_ci_low"], res["rd_ci_high"]) == pytest.approx((lo, hi))
    assert res["nnt"] == pytest.approx(1 / rd) and res["kind"] == "NNTB"
    assert (res["nnt_ci_low"], res["nnt_ci_high"]) == pytest.approx((1 / hi, 1 / lo))
    assert not res["ci_includes_infinity"]
    assert res["text"].startswith("NNTB 2.7")


def test_nnt_through_infinity_and_harm():
    res = E.nnt(_resp(20, 40, 18, 40), "a", "b")
    assert res["ci_includes_infinity"] and res["kind"] == "NNTB"
    assert res["nntb_limit"] == pytest.approx(1 / res["rd_ci_high"])
    assert res["nnth_limit"] == pytest.approx(1 / abs(res["rd_ci_low"]))
    assert "to ∞ to" in res["text"]
    harm = E.nnt(_resp(18, 40, 20, 40), "a", "b")
    assert harm["kind"] == "NNTH" and harm["nnt"] == pytest.approx(20.0)
    newc = E.nnt(_resp(30, 40, 15, 40), "a", "b", method="newcombe")
    from statsmodels.stats.proportion import confint_proportions_2indep
    lo, hi = confint_proportions_2indep(30, 40, 15, 40, method="newcomb", compare="diff")
    assert (newc["rd_ci_low"], newc["rd_ci_high"]) == pytest.approx((lo, hi))
    with pytest.raises(ValueError, match="levels present"):
        E.nnt(_resp(1, 2, 1, 2), "a", "zz")


def test_dz_by_hand_and_ci():
    rng = np.random.default_rng(11)
    pre = rng.normal(6, 1.5, 25)
    post = pre - 0.8 + rng.normal(0, 1.0, 25)
    row = E._paired_effect(pre, post, 0.95)
    diff = post - pre
    assert row["d_z"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    sd_av = (pre.std(ddof=1) + post.std(ddof=1)) / 2
    assert row["d_av"] == pytest.approx(diff.mean() / sd_av)
    assert row["g_av"] == pytest.approx(row["d_av"] * (1 - 3 / (4 * 24 - 1)))
    # the CI limits are the ncp whose noncentral t puts the observed t at 2.5 % / 97.5 %
    t = row["d_z"] * 5
    assert stats.nct.cdf(t, 24, row["d_z_ci_low"] * 5) == pytest.approx(0.975, abs=1e-8)
    assert stats.nct.cdf(t, 24, row["d_z_ci_high"] * 5) == pytest.approx(0.025, abs=1e-8)
    # and the interval excludes 0 exactly when the paired t test rejects at 5 %
    p = stats.ttest_rel(post, pre).pvalue
    assert (row["d_z_ci_high"] < 0) == (p < 0.05)


def test_dz_ci_large_sample_normal_approximation():
    d, n = -0.5, 4000
    lo, hi = E.dz_confint(d, n)
    se = math.sqrt(1 / n + d * d / (2 * n))
    assert lo == pytest.approx(d - 1.96 * se, abs=2e-3)
    assert hi == pytest.approx(d + 1.96 * se, abs=2e-3)
    # far in the tails the noncentral t still gives finite limits
    lo, hi = E.dz_confint(-3.0, 200)
    assert np.isfinite(lo) and np.isfinite(hi) and lo < -3.0 < hi


def test_effect_sizes_on_hand_study(hand_study):
    with pytest.warns(DataWarning, match="fewer than 2"):
        out = E.effect_sizes(hand_study, "pain_nrs", by="technique")
    dp = out.set_index("technique").loc["direct_pressure"]
    # P1 visits 1-3 (pre 8,7,6; post 6,5,5), P2 (5,5,4; 4,4,3): per-patient means
    pre = np.array([7.0, 14 / 3])
    post = np.array([16 / 3, 11 / 3])
    diff = post - pre
    assert dp["n"] == 2
    assert dp["mean_change"] == pytest.approx(diff.mean())
    assert dp["d_z"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert out.attrs["better"] == "lower" and "Lakens" in out.attrs["reference"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        course = E.effect_sizes(hand_study, "pain_nrs", by=None, comparison="course")
    assert course["n"].item() == 5


def test_effect_sizes_warns_on_single_patient_group(hand_study):
    with pytest.warns(DataWarning, match="fewer than 2"):
        out = E.effect_sizes(hand_study, "pain_nrs", by="technique")
    assert np.isnan(out.set_index("technique").loc["massage", "d_z"])


def test_paresthesia_gee_matches_statsmodels(synthetic_study):
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    out = E.paresthesia_gee(synthetic_study, by="technique")
    d = synthetic_study.frame("paresthesia")
    d = d[(d["post"] == 0) & (d["technique"].astype(str) != "none")].copy()
    d["technique"] = d["technique"].cat.remove_unused_categories()
    d = d.sort_values(["patient_id", "session_number"]).reset_index(drop=True)
    ref = smf.gee("value ~ technique + weeks", groups="patient_id", data=d,
                  family=sm.families.Binomial(), cov_struct=sm.cov_struct.Exchangeable()).fit()
    assert list(out["term"]) == list(ref.params.index)
    np.testing.assert_allclose(out["estimate"], ref.params, rtol=1e-8)
    np.testing.assert_allclose(out["odds_ratio"], np.exp(ref.params), rtol=1e-8)
    ci = np.exp(ref.conf_int())
    np.testing.assert_allclose(out["ci_low"], ci[0], rtol=1e-6)
    np.testing.assert_allclose(out["ci_high"], ci[1], rtol=1e-6)
    np.testing.assert_allclose(out["p_value"], ref.pvalues, rtol=1e-6)
    assert out.attrs["n_clusters"] == d["patient_id"].nunique()
    assert list(out.columns[:1]) == ["term"]
    assert {"odds_ratio", "ci_low", "ci_high", "p_value"} <= set(out.columns)


def _subset(study, n):
    from mfr_outcomes.study import Study

    keep = set(study.patients["patient_id"].iloc[:n])
    ses = study.sessions[study.sessions["patient_id"].isin(keep)]
    meas = study.measurements[study.measurements["session_id"].isin(set(ses["session_id"]))]
    return Study(study.patients[study.patients["patient_id"].isin(keep)], ses, meas)


def test_paresthesia_gee_cautions_and_errors(small_study, hand_study):
    few = _subset(small_study, 25)
    assert few.frame("paresthesia")["patient_id"].nunique() < E.MIN_GEE_CLUSTERS
    with pytest.warns(ModelWarning, match="GEE robust standard errors"):
        out = E.paresthesia_gee(few, by=None)
    assert list(out["term"]) == ["Intercept", "weeks"]
    assert out.attrs["notes"]
    with pytest.raises(ValueError, match="not a binary measure"):
        E.paresthesia_gee(hand_study, measure="pain_nrs")
    with pytest.raises(ValueError, match="is binary"):
        E.responders(small_study, "paresthesia")


def test_paresthesia_gee_missing_covariate_rows_are_reported(synthetic_study):
    from mfr_outcomes.study import Study

    pts = synthetic_study.patients.copy()
    pts["age_years"] = pts["age_years"].astype("Float64")
    pts.loc[pts.index[:3], "age_years"] = pd.NA
    study = Study(pts, synthetic_study.sessions, synthetic_study.measurements)
    with pytest.warns(DataWarning, match="missing age_years left out"):
        out = E.paresthesia_gee(study, by=None, covariates=["age_years"])
    assert "age_years" in set(out["term"])
    full = synthetic_study.frame("paresthesia")
    full = full[(full["post"] == 0) & (full["technique"].astype(str) != "none")]
    dropped = full["patient_id"].isin(set(pts["patient_id"].iloc[:3])).sum()
    assert out.attrs["n_obs"] == len(full) - dropped


def test_paresthesia_gee_non_convergence_is_a_caution(synthetic_study, monkeypatch):
    """A GEE stopped before convergence (here: one iteration at an unreachable tolerance) is reported, never swallowed."""
    from statsmodels.genmod.generalized_estimating_equations import GEE

    real_fit = GEE.fit
    monkeypatch.setattr(GEE, "fit", lambda self, *a, **k: real_fit(self, maxiter=1, ctol=1e-300))
    with pytest.warns(ModelWarning, match="GEE: .*converge"):
        out = E.paresthesia_gee(synthetic_study, by="technique")
    assert any("converge" in n for n in out.attrs["notes"])
