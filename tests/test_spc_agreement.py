"""Making Data Count rules: our numbers by hand, and where the Python peers differ.

The hand-worked series pin the rule lengths of Making Data Count as NHSRplotthedots implements
them (a shift is 7 points on one side of the mean, a trend 7 points each higher or lower than the
one before; R/ptd_calculate_point_type.R) and qicharts2's run-chart limit (a longest run above
round(log2 n) + 3; R/helper.functions.R ``runs.analysis``). The last two hand tests pin
NHSRplotthedots since its pull request #180 (a point beyond a limit is judged by its side of the
mean before any trend; the variation icon follows the latest point's type).

Peer comparisons (abspc, clinical-qikit: the ``bench`` dependency group, not installed in CI)
are skipped when the peer is missing; benchmarks/bench_spc.py and benchmarks/spc.md hold the
full comparison.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_mdc import RNORM_24

from mfr_outcomes import qi

RNORM_20 = RNORM_24[:20]   # set.seed(123); rnorm(20) in R

# 7 and 6 points a hair above the mean between points alternating 12, 10
SHIFT_7 = [12, 10] * 7 + [11.5, 11.6] * 3 + [11.5] + [10, 12] * 4
SHIFT_6 = [12, 10] * 7 + [11.5, 11.6] * 3 + [10, 12] * 4
# 7 and 6 rising points inside the limits
TREND_7 = [10, 12] * 7 + [10 + 0.3 * i for i in range(7)] + [10, 12] * 3
TREND_6 = [10, 12] * 7 + [10 + 0.3 * i for i in range(6)] + [10, 12] * 3
# a high outlier (point 17) that starts a falling trend of 7; higher is better
OUTLIER_TREND = RNORM_20[:16] + [6.0, 1.2, 0.9, 0.5, 0.2, -0.1, -0.4] + RNORM_20[16:]
# ends in a rising trend of 7 that stays below the mean; higher is better
RISING_LOW = [5.0, 6.1, 4.8, 5.6, 5.3, 6.0, 5.2, 5.9, 4.9, 5.5, 6.2, 5.1, 5.8, 5.4, 6.0, 5.0,
              1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]


def _xmr(values, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qi.xmr_chart(values, **kw)


def test_a_shift_is_seven_points_on_one_side_of_the_mean():
    r = _xmr(SHIFT_7)
    # mean (7·22 + 3·23.1 + 11.5 + 4·22) / 29: the seven points 11.5/11.6 lie above it
    assert r.stats["mean"] == pytest.approx(322.8 / 29)
    assert np.flatnonzero(r.points["shift"]).tolist() == list(range(14, 21))
    assert r.points["signal"].sum() == 7
    assert not _xmr(SHIFT_6).points["signal"].any()


def test_a_trend_is_seven_points_each_higher_than_the_one_before():
    r = _xmr(TREND_7)
    assert np.flatnonzero(r.points["trend"]).tolist() == list(range(14, 21))
    assert not r.points[["outside_limits", "shift", "two_of_three"]].any().any()
    assert not _xmr(TREND_6).points["signal"].any()


def test_limits_are_2_66_mean_moving_ranges_by_hand():
    # alternating 10, 12: every moving range 2, mean 11 -> limits 11 ± 5.32; 2/3 of the way
    # to a limit is 11 ± 3.5467
    y = [10, 12] * 8
    r = _xmr(y)
    assert (r.stats["lcl"], r.stats["ucl"]) == pytest.approx((11 - 5.32, 11 + 5.32))
    # 16, 11.5, 16 inserted: mean 307.5 / 27, mean MR (22·2 + 4 + 4.5 + 4.5 + 6) / 26, so
    # 2/3 of the way to the upper limit is 15.69 and the limit 17.83: two of three near it, all
    # three above the mean
    hit = _xmr([10, 12] * 8 + [16, 11.5, 16] + [10, 12] * 4)
    mean, mr = 307.5 / 27, 63 / 26
    assert (hit.stats["mean"], hit.stats["ucl"]) == pytest.approx((mean, mean + 2.66 * mr))
    assert mean + 2 / 3 * 2.66 * mr < 16 < mean + 2.66 * mr and 11.5 > mean
    assert np.flatnonzero(hit.points["two_of_three"]).tolist() == [16, 18]
    # the middle point 10.5 lies below the mean 306.5 / 27: no signal, the three must lie on
    # one side (16 is still beyond 2/3 of the way: 11.35 + 2/3 · 2.66 · 2.5 = 15.79)
    miss = _xmr([10, 12] * 8 + [16, 10.5, 16] + [10, 12] * 4)
    assert 10.5 < miss.stats["mean"] and 16 > miss.stats["mean"] + 2 / 3 * 2.66 * 2.5
    assert not miss.points["two_of_three"].any()


def test_run_chart_longest_run_limit_is_qicharts2s():
    # 20 useful points around the median 10.5: round(log2(20)) + 3 = 7, so a run of 7 is
    # expected by chance and a run of 8 signals
    seven = [11, 12, 13, 14, 15, 16, 17, 1, 18, 2, 19, 3, 20, 4, 5, 6, 7, 8, 9, 10]
    eight = [11, 12, 13, 14, 15, 16, 17, 18, 1, 19, 2, 20, 3, 4, 5, 6, 7, 8, 9, 10]
    r7, r8 = qi.run_chart(seven), qi.run_chart(eight)
    assert (r7.stats["longest_run"], r7.stats["longest_run_max"]) == (7, 7)
    assert not r7.signals
    assert "longest_run" in {s.rule for s in r8.signals}


def test_a_point_beyond_a_limit_is_judged_by_its_side_before_a_trend():
    r = _xmr(OUTLIER_TREND, better="higher", screen_moving_ranges=True)
    p = r.points
    assert p["outside_limits"].iloc[16] and p["trend"].iloc[16]
    assert p["value"].iloc[16] > p["ucl"].iloc[16]
    assert p["point_type"].iloc[16] == "special_cause_improvement"


def test_variation_icon_of_a_rising_trend_below_the_mean():
    r = _xmr(RISING_LOW, better="higher", screen_moving_ranges=True)
    p = r.points
    assert p["trend"].iloc[-1] and p["value"].iloc[-1] < p["centre"].iloc[-1]
    assert not p["outside_limits"].iloc[-1]
    assert p["point_type"].iloc[-1] == "special_cause_improvement"
    assert r.variation == "improvement_high"


# --------------------------------------------------------------------------------------------
# peers (bench group)

SIGMA_FACTOR = 3 / 1.128   # the peers' 3 / d2, where Making Data Count uses 2.66


def test_abspc_limits_differ_from_ours_only_by_the_constant_and_screening():
    abspc = pytest.importorskip("abspc")
    import pandas as pd
    res = abspc.calculate_control_limits(pd.DataFrame({"value": RNORM_20}), "XmR")
    ours = _xmr(RNORM_20)   # unscreened, as abspc
    half = ours.stats["ucl"] - ours.stats["mean"]
    assert res["mean"].iloc[0] == pytest.approx(ours.stats["mean"], rel=1e-12)
    assert res["ucl"].iloc[0] - res["mean"].iloc[0] == pytest.approx(
        half * SIGMA_FACTOR / 2.66, rel=1e-12)


def test_abspc_needs_eight_points_for_a_shift_and_six_for_a_trend():
    abspc = pytest.importorskip("abspc")
    import pandas as pd

    def flags(y):
        res = abspc.calculate_control_limits(pd.DataFrame({"value": y}), "XmR")
        return abspc.detect_special_causes(res)["special_cause"].to_numpy()
    assert not flags(SHIFT_7).any()            # Making Data Count: 7 points signal
    assert flags(TREND_6)[14:20].all()         # Making Data Count: 6 points do not


def test_qikit_limits_are_ours_screened_with_3_over_d2():
    qikit = pytest.importorskip("qikit")
    d = qikit.qic(y=RNORM_20, chart="i", method="ihi").data
    ours = _xmr(RNORM_20, screen_moving_ranges=True)
    half = ours.stats["ucl"] - ours.stats["mean"]
    assert d["cl"].iloc[0] == pytest.approx(ours.stats["mean"], rel=1e-12)
    assert d["ucl"].iloc[0] - d["cl"].iloc[0] == pytest.approx(half * SIGMA_FACTOR / 2.66,
                                                               rel=1e-12)


def test_qikit_run_chart_signals_a_run_qicharts2_expects():
    qikit = pytest.importorskip("qikit")
    seven = [11, 12, 13, 14, 15, 16, 17, 1, 18, 2, 19, 3, 20, 4, 5, 6, 7, 8, 9, 10]
    s = qikit.qic(y=seven, chart="run").summary
    # qikit: floor(log2(20)) + 3 = 7 and ">=": a run of 7 signals; qicharts2 and ours do not
    assert (s["n_useful"], s["longest_run"], s["run_signal"]) == (20, 7, True)
    assert not qi.run_chart(seven).signals


def test_funnel_exact_binomial_limits_agree_with_qikit():
    qikit = pytest.importorskip("qikit")
    from mfr_outcomes import funnel
    n = np.array([3, 5, 8, 12, 20, 35, 50, 80, 120, 200, 400, 1000])
    x = np.round(0.35 * n).astype(int)
    units = [f"t{i:02d}" for i in range(len(n))]
    ours = funnel.funnel_proportions(x, n, units)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qikit.qic(x=units, y=x, n=n, chart="p", funnel=True).data.set_index("x").loc[units]
    for mine, theirs in (("hi998", "ucl"), ("lo998", "lcl"), ("hi95", "ucl_95"),
                         ("lo95", "lcl_95")):
        np.testing.assert_allclose(ours[mine].to_numpy(), q[theirs].to_numpy(), atol=1e-9)
