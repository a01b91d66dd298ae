"""Tests of mfr_outcomes.qi against hand-worked examples.

Limits of the run rules were checked against R (``qbinom(0.05, n - 1, 0.5)``,
``round(log2(n) + 3)``), as tabulated in Anhøj's qicharts2 documentation.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes import qi
from mfr_outcomes.study import Study
from mfr_outcomes.warnings_ import DataWarning

# R 4: n <- 10:40; qbinom(0.05, n - 1, 0.5); round(log2(n) + 3)
R_CROSSINGS_MIN = [2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7, 8, 8, 8, 9, 9, 10, 10, 11, 11, 11,
                   12, 12, 13, 13, 14, 14, 14]
R_LONGEST_MAX = [6, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8,
                 8, 8, 8, 8, 8]


def test_runs_limits_match_r_table():
    for n, lr, cr in zip(range(10, 41), R_LONGEST_MAX, R_CROSSINGS_MIN):
        assert qi.runs_limits(n) == (lr, cr), n
    # R: qbinom(0.05, c(49, 59, 79, 99), 0.5) = 19 23 32 41; round(log2(c(50,60,80,100)) + 3)
    assert [qi.runs_limits(n) for n in (50, 60, 80, 100)] == [(9, 19), (9, 23), (9, 32),
                                                               (10, 41)]


# 20 points: 9 below 5, 2 on 5 (positions 5 and 13), 9 above, so the median is 5 exactly.
# Sides (B below, A above, O on):  B A B A O A A A A A A A O B B B B B B B
# Ignoring the two O's, the runs are B | A | B | A(4,6..12: 8 points) | B(14..20: 7 points):
# 5 runs, 4 crossings, 18 useful observations.
# Limits for n = 18: longest run max round(log2(18) + 3) = round(7.17) = 7 -> 8 > 7 signals;
# crossings min qbinom(0.05, 17, 0.5) = 5 -> 4 < 5 signals.
SERIES_20 = [3, 7, 2, 8, 5, 6, 9, 7, 8, 6, 9, 7, 5, 4, 3, 2, 4, 1, 3, 2]


def test_run_chart_hand_worked_twenty_points():
    dates = pd.period_range("2026-01", periods=20, freq="M")
    r = qi.run_chart(SERIES_20, dates, measure="pain_nrs")
    s = r.stats
    assert s["median"] == 5
    assert s["n_useful"] == 18
    assert s["longest_run"] == 8 and s["longest_run_max"] == 7
    assert s["n_crossings"] == 4 and s["n_crossings_min"] == 5
    rules = [sig.rule for sig in r.signals]
    assert rules == ["longest_run", "crossings"]
    long = r.signals[0]
    # positions 4..12 (1-based) -> 3..11, the on-median point 5 (index 4) is not flagged
    assert (long.start, long.end) == (3, 11)
    assert r.points["in_long_run"].to_numpy().nonzero()[0].tolist() == [3, 5, 6, 7, 8, 9, 10, 11]
    # above the median on pain (lower is better) is a concern
    assert long.direction == "up" and long.assessment == "concern"
    assert "8 points in a row above the median from 2026-04 to 2026-12" in long.message
    assert "a concern" in long.message
    assert not r.points.loc[[4, 12], "useful"].any()
    # the same series on a measure where higher is better: an improvement
    r2 = qi.run_chart(SERIES_20, dates, measure="slr_deg")
    assert r2.signals[0].assessment == "improvement"
    # with no direction: neutral
    assert qi.run_chart(SERIES_20).signals[0].assessment == "neutral"


def test_run_chart_random_looking_series_has_no_signal():
    # 12 points alternating around the median 5.5: 12 runs of 1, 11 crossings.
    # n = 12: longest max round(log2 12 + 3) = round(6.58) = 7; crossings min qbinom(.05, 11, .5) = 3
    y = [5, 6, 4, 7, 3, 8, 5, 6, 4, 7, 3, 8]
    r = qi.run_chart(y)
    assert r.stats["median"] == 5.5
    assert (r.stats["longest_run"], r.stats["n_crossings"]) == (1, 11)
    assert (r.stats["longest_run_max"], r.stats["n_crossings_min"]) == (7, 3)
    assert not r.signals and not r.points["signal"].any()
    assert "No signal" in r.summary()


def test_run_chart_too_few_useful_points_says_so():
    with pytest.warns(DataWarning, match="Run rules not applied: 8 useful"):
        r = qi.run_chart([1, 2, 3, 4, 5, 6, 7, 8, 9])  # median 5 is on a point: 8 useful
    assert r.stats["runs_applied"] is False and r.stats["longest_run_max"] is None
    assert not r.signals and any("not applied" in n for n in r.notes)


def test_run_chart_all_points_on_median():
    with pytest.warns(DataWarning, match="0 useful"):
        r = qi.run_chart([4.0] * 15)
    assert r.stats["n_useful"] == 0 and r.stats["longest_run"] == 0
    assert not r.points["useful"].any() and not r.signals


def test_run_chart_missing_values_are_not_useful_and_do_not_break_runs():
    y = [1.0, np.nan, 1.0, 9.0] * 3 + [1.0, 9.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        r = qi.run_chart(y)
    assert r.stats["n_obs"] == 11
    assert r.stats["median"] == 1.0  # 7 ones and 4 nines
    assert not r.points["useful"].iloc[1]


def test_run_chart_rejects_text():
    with pytest.raises(ValueError, match="must be numbers"):
        qi.run_chart(["a", "b"])


def test_xmr_hand_worked_limits():
    # values 10 12 11 13 12: mean 58/5 = 11.6; moving ranges 2 1 2 1, mean 6/4 = 1.5
    # limits 11.6 ± 2.66 × 1.5 = 7.61, 15.59; sigma 2.66/3 × 1.5 = 1.33; MR UCL 3.267 × 1.5
    with pytest.warns(DataWarning, match="provisional"):
        r = qi.xmr_chart([10, 12, 11, 13, 12])
    assert r.stats["mean"] == pytest.approx(11.6)
    assert r.stats["mean_mr"] == pytest.approx(1.5)
    assert r.stats["lcl"] == pytest.approx(7.61) and r.stats["ucl"] == pytest.approx(15.59)
    assert r.stats["sigma"] == pytest.approx(1.33)
    assert r.stats["mr_ucl"] == pytest.approx(4.9005)
    assert math.isnan(r.points["mr"].iloc[0])
    assert r.points["mr"].iloc[1:].tolist() == [2, 1, 2, 1]
    assert not r.signals


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return fn(*args, **kw)


def test_xmr_point_beyond_limit_and_shift_and_moving_range():
    # 10 11 10 11 10 11 10 11 10 30: mean (5×10 + 4×11 + 30)/10 = 12.4;
    # moving ranges eight 1's and 20: mean 28/9 = 3.111; UCL 12.4 + 2.66 × 3.111 = 20.68 < 30;
    # the first nine points are all below 12.4: a shift (≥ 7); MR 20 > 3.267 × 3.111 = 10.16.
    y = [10, 11, 10, 11, 10, 11, 10, 11, 10, 30]
    r = _quiet(qi.xmr_chart, y, measure="pain_nrs")
    assert r.stats["mean_mr"] == pytest.approx(28 / 9)
    assert r.stats["ucl"] == pytest.approx(12.4 + 2.66 * 28 / 9)
    by_rule = {s.rule: s for s in r.signals}
    assert set(by_rule) == {"outside_limits", "shift", "mr_outside_limit"}
    assert (by_rule["outside_limits"].start, by_rule["outside_limits"].assessment) == (9, "concern")
    assert (by_rule["shift"].start, by_rule["shift"].end) == (0, 8)
    assert by_rule["shift"].assessment == "improvement"  # below the mean on pain
    assert "9 points in a row below the mean" in by_rule["shift"].message
    assert r.points["outside_limits"].tolist() == [False] * 9 + [True]
    assert r.points["shift"].tolist() == [True] * 9 + [False]
    assert r.points["mr_outside_limit"].iloc[9]


def test_xmr_screened_moving_ranges():
    # screening drops the MR of 20 (≥ 3.267 × 3.111): mean MR becomes 8/8 = 1
    y = [10, 11, 10, 11, 10, 11, 10, 11, 10, 30]
    r = _quiet(qi.xmr_chart, y, screen_moving_ranges=True)
    assert r.stats["mean_mr"] == pytest.approx(1.0)
    assert r.stats["ucl"] == pytest.approx(12.4 + 2.66)


def test_xmr_trend_of_seven():
    # 1..7 rise six times in a row: 7 points, a trend (and no other rule: mean 3.75,
    # MRs 1,1,1,1,1,1,4,2,1,2,1 -> 16/11; limits 3.75 ± 3.87 contain every point)
    y = [1, 2, 3, 4, 5, 6, 7, 3, 5, 4, 2, 3]
    r = _quiet(qi.xmr_chart, y, measure="slr_deg")
    assert [s.rule for s in r.signals] == ["trend"]
    t = r.signals[0]
    assert (t.start, t.end, t.direction, t.assessment) == (0, 6, "up", "improvement")
    assert r.points["trend"].tolist() == [True] * 7 + [False] * 5
    # six rises are not enough
    r6 = _quiet(qi.xmr_chart, [1, 2, 3, 4, 5, 6, 3, 5, 4, 2, 3, 4])
    assert not r6.points["trend"].any()


def test_xmr_point_on_mean_breaks_a_shift():
    # mean of this series is 0; seven points above it with the 4th exactly on the mean: no shift
    y = [1, 1, 1, 0, 1, 1, 1, -1, -1, -1, -1, -1, -1, 0]
    r = _quiet(qi.xmr_chart, y)
    assert r.stats["mean"] == pytest.approx(0.0)
    assert not r.points["shift"].iloc[:7].any()
    # the six -1's are one short of a shift
    assert not r.points["shift"].any()


def test_xmr_two_of_three_beyond_two_sigma():
    # 20 values alternating 0/1, then 3.0, 1.0, 3.0 (23 values):
    # mean 17/23 = 0.7391; moving ranges nineteen 1's and 2, 2, 2: mean 25/22 = 1.1364;
    # σ = 2.66/3 × 1.1364 = 1.0076; 2σ line 0.7391 + 2.0152 = 2.7543; UCL 0.7391 + 3.0227 = 3.7619.
    # Both 3.0's lie between the 2σ line and the UCL, and 3.0, 1.0, 3.0 are all above the mean.
    y = [0, 1] * 10 + [3.0, 1.0, 3.0]
    r = qi.xmr_chart(y)
    assert r.stats["mean"] == pytest.approx(17 / 23)
    assert r.stats["mean_mr"] == pytest.approx(25 / 22)
    assert r.stats["sigma"] == pytest.approx(2.66 / 3 * 25 / 22)
    assert 17 / 23 + 2 * r.stats["sigma"] < 3.0 < r.stats["ucl"]
    assert r.points["two_of_three"].tolist() == [False] * 20 + [True, False, True]
    assert [s.rule for s in r.signals] == ["two_of_three"]
    sig = r.signals[0]
    assert (sig.start, sig.end, sig.direction) == (20, 22, "up")
    assert "2 points beyond two sigma above the mean" in sig.message


def test_xmr_two_of_three_needs_all_three_on_one_side():
    # 0/1 × 10, then 3.0, 0.0, 3.0: mean 16/23 = 0.6957; MRs nineteen 1's and 2, 3, 3: 27/22;
    # σ = 2.66/3 × 27/22 = 1.0882; 2σ line 2.8720 < 3.0 < UCL 3.9602, but 0.0 is below the mean,
    # so the window is not on one side (NHSRplotthedots issue #143): no signal.
    y = [0, 1] * 10 + [3.0, 0.0, 3.0]
    r = qi.xmr_chart(y)
    assert r.stats["mean_mr"] == pytest.approx(27 / 22)
    assert 16 / 23 + 2 * r.stats["sigma"] < 3.0 < r.stats["ucl"]
    assert not r.points["two_of_three"].any()
    assert not r.signals


def test_xmr_zero_moving_range():
    with pytest.warns(DataWarning, match="moving range is zero"):
        r = qi.xmr_chart([3.0] * 14)
    assert r.stats["mean_mr"] == 0 and r.stats["lcl"] == r.stats["ucl"] == 3.0
    # every point is on the mean: no shift, no trend, nothing outside
    assert not r.signals


def test_p_chart_hand_worked_limits_clipped():
    # p̄ = (5 + 6 + 4)/(10 + 12 + 8) = 0.5
    # n = 10: 3√(.25/10) = 0.4743 -> 0.0257, 0.9743; n = 8: 3√(.25/8) = 0.5303 -> clipped to 0, 1
    with pytest.warns(DataWarning, match="provisional"):
        r = qi.p_chart([5, 6, 4], [10, 12, 8])
    p = r.points
    assert r.stats["p_bar"] == pytest.approx(0.5)
    assert p["lcl"].iloc[0] == pytest.approx(0.5 - 3 * math.sqrt(0.025))
    assert p["ucl"].iloc[0] == pytest.approx(0.5 + 3 * math.sqrt(0.025))
    assert p["ucl"].iloc[1] == pytest.approx(0.5 + 3 * math.sqrt(0.25 / 12))
    assert (p["lcl"].iloc[2], p["ucl"].iloc[2]) == (0.0, 1.0)
    assert p["value"].tolist() == [0.5, 0.5, 0.5]


def test_p_chart_flags_low_subgroup_as_concern():
    # 12 subgroups of 20 with 10 responders, then one with 1 of 20:
    # p̄ = 121/260 = 0.4654; σ = √(p̄(1 − p̄)/20) = 0.1115; LCL = 0.4654 − 0.3346 = 0.1308 > 0.05
    succ = [10] * 12 + [1]
    tot = [20] * 13
    r = qi.p_chart(succ, tot)
    assert r.stats["p_bar"] == pytest.approx(121 / 260)
    out = [s for s in r.signals if s.rule == "outside_limits"]
    assert len(out) == 1 and out[0].start == 12 and out[0].assessment == "concern"
    # all 12 equal subgroups sit above p̄: a shift, an improvement for responders
    assert any(s.rule == "shift" and s.assessment == "improvement" for s in r.signals)


def test_p_chart_empty_subgroups_and_bad_counts():
    r = _quiet(qi.p_chart, [1, 0, 2], [4, 0, 4])
    assert math.isnan(r.points["value"].iloc[1]) and r.stats["p_bar"] == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="subgroup 2 has 5 responders out of 3"):
        qi.p_chart([1, 5], [2, 3])


# --------------------------------------------------------------------------------------------
# aggregate on a hand-built study


def _study() -> Study:
    patients = pd.DataFrame({"patient_id": ["p1", "p2", "p3"],
                             "site_id": ["a", "a", "b"]})
    sessions = pd.DataFrame({
        "session_id": ["s1", "s2", "s3", "s4", "s5", "s6"],
        "patient_id": ["p1", "p1", "p2", "p2", "p3", "p3"],
        "therapist_id": ["t1", "t1", "t1", "t2", "t2", "t2"],
        "session_date": pd.to_datetime(["2026-01-05", "2026-02-10", "2026-01-20", "2026-01-27",
                                        "2026-01-10", "2026-04-02"]),
        "session_number": [1, 2, 1, 2, 1, 2],
        "technique": ["massage"] * 6,
    })
    # pain readings: p1 8->6 then 6->4 (baseline 8, last 4: change -4, responder)
    # p2 6->5 then 5 (pre only): baseline 6, last 5: -1, 16.7 %: not a responder
    # p3 9->7 (jan), 4->3 (apr): baseline 9, last 3: responder
    meas = pd.DataFrame({
        "session_id": ["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s5", "s5", "s6", "s6"],
        "phase": ["pre", "post"] * 3 + ["pre", "pre", "post", "pre", "post"],
        "measure": "pain_nrs",
        "side": "none",
        "value": [8, 6, 6, 4, 6, 5, 5, 9, 7, 4, 3],
    })
    return Study(patients, sessions, meas)


def test_aggregate_by_month_hand_counts():
    agg = qi.aggregate(_study(), "pain_nrs", period="month")
    assert agg["period"].astype(str).tolist() == ["2026-01", "2026-02", "2026-03", "2026-04"]
    jan = agg.iloc[0]
    # January: sessions s1, s3, s4, s5 of patients p1, p2, p3
    assert (jan.n_patients, jan.n_sessions, jan.n_pre, jan.n_paired) == (3, 4, 4, 3)
    assert jan.mean_pre == pytest.approx((8 + 6 + 5 + 9) / 4)
    assert jan.mean_change == pytest.approx(((6 - 8) + (5 - 6) + (7 - 9)) / 3)
    assert jan.mean_improvement == pytest.approx(5 / 3)  # lower pain is better
    # p2's last visit is in January (not a responder); p1 in February; p3 in April
    assert (jan.n_completed, jan.n_responders) == (1, 0)
    feb = agg.iloc[1]
    assert (feb.n_completed, feb.n_responders, feb.responder_rate) == (1, 1, 1.0)
    mar = agg.iloc[2]  # a gap month, filled
    assert (mar.n_sessions, mar.n_completed) == (0, 0) and math.isnan(mar.mean_pre)
    assert math.isnan(mar.responder_rate)
    assert agg.iloc[3].n_responders == 1
    assert agg["period_start"].iloc[0] == pd.Timestamp("2026-01-01")


def test_aggregate_by_site_and_quarter():
    agg = qi.aggregate(_study(), "pain_nrs", period="quarter", by="site_id")
    assert agg[["site_id"]].drop_duplicates()["site_id"].tolist() == ["a", "b"]
    a = agg[agg.site_id == "a"]
    assert a["period"].astype(str).tolist() == ["2026Q1"]
    assert (a.n_patients.iloc[0], a.n_completed.iloc[0], a.n_responders.iloc[0]) == (2, 2, 1)
    b = agg[agg.site_id == "b"]
    assert b["period"].astype(str).tolist() == ["2026Q1", "2026Q2"]
    assert b["n_completed"].tolist() == [0, 1]


def test_aggregate_from_frame_and_errors():
    study = _study()
    frame = study.frame("pain_nrs")
    pd.testing.assert_frame_equal(qi.aggregate(frame, "pain_nrs"),
                                  qi.aggregate(study, "pain_nrs"))
    with pytest.raises(ValueError, match="pass the measure"):
        qi.aggregate(frame)
    with pytest.raises(ValueError, match="period must be"):
        qi.aggregate(study, "pain_nrs", period="day")
    with pytest.raises(ValueError, match="lacks column"):
        qi.aggregate(frame.drop(columns="session_date"), "pain_nrs")


def test_aggregate_feeds_charts():
    agg = qi.aggregate(_study(), "pain_nrs")
    r = _quiet(qi.p_chart, agg["n_responders"], agg["n_completed"], agg["period"])
    assert r.points["label"].tolist() == ["2026-01", "2026-02", "2026-03", "2026-04"]
    assert r.stats["p_bar"] == pytest.approx(2 / 3)
    x = _quiet(qi.xmr_chart, agg.set_index("period")["mean_pre"], measure="pain_nrs")
    assert x.stats["n"] == 3  # the gap month is not a value


def test_result_frames_and_text():
    r = qi.run_chart(SERIES_20, measure="pain_nrs")
    f = r.signals_frame()
    assert f.columns.tolist() == ["rule", "start", "end", "direction", "assessment", "message"]
    assert len(f) == 2
    assert "<li>" in r._repr_html_()
    assert str(r).startswith("Run chart of 20 points (pain_nrs)")


def test_aggregate_responders_agree_with_effects(small_study):
    from mfr_outcomes import effects

    for measure in ("pain_nrs", "slr_deg"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            resp = effects.responders(small_study, measure)
        agg = qi.aggregate(small_study, measure, period="quarter")
        # the same denominator: patients whose baseline leaves room for an important change
        assert agg["n_completed"].sum() == int(resp["eligible"].sum())
        assert agg["n_responders"].sum() == int(resp["responder"].sum())


def test_shift_and_trend_match_nhsrplotthedots_cases():
    # the cases of NHSRplotthedots' tests (ptd_seven_point_one_side_mean, ptd_seven_point_trend)
    side = np.array
    assert qi._shift_runs(side([1] * 6)) == []
    assert qi._shift_runs(side([1] * 6 + [-1])) == []
    assert qi._shift_runs(side([1] * 8 + [-1])) == [(1, 0, 7)]
    assert qi._shift_runs(side([-1] * 8 + [1])) == [(-1, 0, 7)]
    assert qi._shift_runs(side([-1] + [1] * 8 + [-1])) == [(1, 1, 8)]
    y = np.array
    assert qi._trend_runs(y([1, 2, 3, 4, 5, 6], float)) == []
    assert qi._trend_runs(y([1, 2, 3, 3, 4, 5, 6], float)) == []  # a tie breaks a trend
    assert qi._trend_runs(y(range(1, 8), float)) == [(1, 0, 6)]
    assert qi._trend_runs(y([2, 1, 2, 3, 4, 5, 6, 7, 3], float)) == [(1, 1, 7)]
    assert qi._trend_runs(y(range(7, 0, -1), float)) == [(-1, 0, 6)]
    assert qi._trend_runs(y([2, 7, 6, 5, 4, 3, 2, 1, 3], float)) == [(-1, 1, 7)]


def test_freeze_baseline_period():
    # run chart: median of the first 10 points 3 7 2 8 5 6 9 7 8 6 -> sorted 2 3 5 6 6 7 7 8 8 9
    # -> (6 + 7)/2 = 6.5; every one of the 20 points is tested against it
    r = qi.run_chart(SERIES_20, freeze=10)
    assert r.stats["median"] == 6.5
    assert r.stats["n_useful"] == 20  # no point equals 6.5
    # the last 8 points (positions 13..20: 5 4 3 2 4 1 3 2) are all below 6.5 -> run of 8
    assert r.stats["longest_run"] == 8
    # XmR: limits from 10 12 11 13 12 (mean 11.6, mean MR 1.5, UCL 15.59), then three 20's
    # beyond the UCL; the jump 12 -> 20 is not in the baseline's moving ranges
    x = _quiet(qi.xmr_chart, [10, 12, 11, 13, 12, 20, 20, 20], freeze=5)
    assert x.stats["mean"] == pytest.approx(11.6) and x.stats["mean_mr"] == pytest.approx(1.5)
    assert x.points["outside_limits"].tolist() == [False] * 5 + [True] * 3
    assert x.points["mr"].iloc[5] == 8
    # p-chart: p̄ from the first 3 subgroups (5 + 6 + 4)/(10 + 12 + 8) = 0.5
    p = _quiet(qi.p_chart, [5, 6, 4, 9], [10, 12, 8, 10], freeze=3)
    assert p.stats["p_bar"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="freeze must be"):
        qi.run_chart(SERIES_20, freeze=1)
    with pytest.raises(ValueError, match="either centre or freeze"):
        qi.run_chart(SERIES_20, freeze=5, centre=3)
    with pytest.raises(ValueError, match="more than the 8 points"):
        qi.xmr_chart([1, 2, 3, 4, 5, 6, 7, 8], freeze=9)
