"""Making Data Count: point types, variation and assurance icons, rebase and baseline.

Series and expected results are those documented by NHSRplotthedots (its ``ptd_spc`` snapshot
and its ``geom_ptd_icon`` tests, on R's ``set.seed(123); rnorm(...)``; the numbers below were
drawn with that R code), plus hand-worked series for rebase and baseline.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes import mdc, qi

# set.seed(123); rnorm(24)
RNORM_24 = [
    -0.560475646552212603, -0.230177489483279957, 1.558708314149124030, 0.070508391424576003,
    0.129287735160946243, 1.715064986883281017, 0.460916205989202299, -1.265061234606533969,
    -0.686852851893526073, -0.445661970099958060, 1.224081797439461550, 0.359813827057363811,
    0.400771450594052170, 0.110682715945119706, -0.555841134754074928, 1.786913136803078173,
    0.497850478229239390, -1.966617156629638208, 0.701355901563685546, -0.472791407727934043,
    -1.067823705986845173, -0.217974914658295132, -1.026004448307239691, -0.728891229291140252]
# then y[13:24] <- rnorm(12, 5)
HIGH_12 = [4.374960732150743326, 3.313306689257586868, 5.837787044494525013,
           5.153373117836514972, 3.861863062988052597, 6.253814921069926314,
           5.426464221476813954, 4.704928517007728850, 5.895125661045022447,
           5.878133487533042434, 5.821581081637487110, 5.688640254100090665]
# then y[13:24] <- rnorm(12, -5)
LOW_12 = [-4.4460823464624113, -5.0619117105767213, -5.3059626637399164, -5.3804710010123831,
          -5.6947069789205127, -5.2079172780195986, -6.2653963515682642, -2.8310440346614874,
          -3.7920380016950093, -6.1231085832033489, -5.4028848352990764, -5.4666553536232190]


def _xmr(values, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # NHSRplotthedots screens moving ranges by default (screen_outliers = TRUE)
        return qi.xmr_chart(values, screen_moving_ranges=True, **kw)


def test_ptd_spc_snapshot_twenty_points():
    # ptd_spc snapshot: mean 0.142, lpl -3.01, upl 3.29, n 20, 20 common cause points
    r = _xmr(RNORM_24[:20], better="higher")
    assert round(r.stats["mean"], 3) == 0.142
    assert round(r.stats["lcl"], 2) == -3.01 and round(r.stats["ucl"], 2) == 3.29
    assert (r.points["point_type"] == "common_cause").sum() == 20
    assert r.variation == "common_cause" and r.assurance is None
    # the same with a target of 0.5 between the limits: hit or miss ("inconsistent")
    assert _xmr(RNORM_24[:20], better="higher", target=0.5).assurance == "hit_or_miss"


@pytest.mark.parametrize(("tail", "better", "target", "variation", "assurance"), [
    (HIGH_12, "higher", -3, "improvement_high", "pass"),   # geom_ptd_icon s5
    (HIGH_12, "lower", -3, "concern_high", "fail"),        # s6
    (LOW_12, "higher", 3, "concern_low", "fail"),          # s7
    (LOW_12, "lower", 3, "improvement_low", "pass"),       # s8
])
def test_icons_of_nhsrplotthedots_examples(tail, better, target, variation, assurance):
    r = _xmr(RNORM_24[:12] + tail, better=better, target=target)
    assert r.variation == variation
    assert r.assurance == assurance
    # the shifted half is special cause of one colour, the first half below/above the mean too
    kinds = set(r.points["point_type"].iloc[12:])
    assert kinds == {"special_cause_improvement" if variation.startswith("improvement")
                     else "special_cause_concern"}


def test_common_cause_with_target_is_hit_or_miss():
    r = _xmr(RNORM_24, better="higher", target=0.5)   # geom_ptd_icon s2
    assert (r.variation, r.assurance) == ("common_cause", "hit_or_miss")


def test_point_types_by_hand():
    # mean 10, moving ranges 1 -> limits 10 ± 2.66; 20 is beyond the upper limit
    y = [10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 20]
    up = qi.xmr_chart(y[:-1] + [20], better="higher")
    assert up.points["point_type"].iloc[-1] == "special_cause_improvement"
    assert up.variation == "improvement_high"
    down = qi.xmr_chart(y, better="lower")
    assert down.points["point_type"].iloc[-1] == "special_cause_concern"
    assert down.variation == "concern_high"
    neither = qi.xmr_chart(y)
    assert neither.points["point_type"].iloc[-1] == "special_cause_neither"
    assert neither.variation == "neither_high" and neither.assurance is None
    # the mean (11.33) lies above the first eleven points: a shift of eleven below it, which is
    # a concern when higher is better
    assert (up.points["point_type"].iloc[:-1] == "special_cause_concern").all()
    assert up.points["shift"].iloc[:-1].all()


def test_rising_trend_is_one_colour_across_the_mean():
    y = [5, 5.2, 4.9, 5.1, 1, 2, 3, 4, 5, 6, 7, 5, 5.1, 4.9]
    r = qi.xmr_chart(y, better="higher")
    trend = r.points["trend"].to_numpy()
    assert trend[4:11].all()
    types = r.points["point_type"].to_numpy()
    # point 5 (value 1) lies below the lower limit: judged by its side before the trend
    # (NHSRplotthedots PR #180), so it is a concern; the rest of the trend is one colour
    assert r.points["outside_limits"].iloc[4] and r.points["value"].iloc[4] < r.points["lcl"].iloc[4]
    assert types[4] == "special_cause_concern"
    assert set(types[5:11]) == {"special_cause_improvement"}


def test_rebase_recalculates_limits_per_segment_by_hand():
    first = [10, 12, 11, 13, 12, 11]      # mean 11.5, MRs 2 1 2 1 1 -> 1.4
    second = [20, 21, 20, 22, 21, 20]     # mean 20.667, MRs 1 1 2 1 1 -> 1.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = qi.xmr_chart(first + second, list(range(1, 13)), better="higher", rebase=[6])
    pts = r.points
    assert pts["segment"].tolist() == [0] * 6 + [1] * 6
    assert pts["centre"].iloc[0] == pytest.approx(11.5)
    assert pts["ucl"].iloc[0] == pytest.approx(11.5 + 2.66 * 1.4)
    assert pts["centre"].iloc[6] == pytest.approx(62 / 3)
    assert pts["lcl"].iloc[6] == pytest.approx(62 / 3 - 2.66 * 1.2)
    assert np.isnan(pts["mr"].iloc[6])      # no moving range across a declared change
    assert not pts["outside_limits"].any()   # each half is judged by its own limits
    assert r.variation == "common_cause"
    assert r.annotations == [(6, "limits recalculated")]
    # without the rebase, the second half lies beyond the pooled limits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pooled = qi.xmr_chart(first + second, better="higher")
    assert pooled.variation == "improvement_high"


def test_rebase_and_baseline_by_label():
    labels = [f"2026-{m:02d}" for m in range(1, 13)]
    y = [5, 6, 5, 7, 6, 5, 9, 9, 8, 9, 9, 9]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = qi.xmr_chart(y, labels, better="higher", baseline=("2026-01", "2026-06"))
    # limits from January to June only: mean 34/6, MRs 1 1 2 1 1 -> 1.2
    assert r.points["baseline"].tolist() == [True] * 6 + [False] * 6
    assert r.stats["mean"] == pytest.approx(34 / 6)
    assert r.stats["ucl"] == pytest.approx(34 / 6 + 2.66 * 1.2)
    # July on, 9s sit above the frozen upper limit 8.86: improvement
    assert r.points["outside_limits"].iloc[6:].sum() == 5
    assert r.variation == "improvement_high"
    with pytest.raises(ValueError, match="'2025-12' is not a point of the chart"):
        qi.xmr_chart(y, labels, rebase="2025-12")
    with pytest.raises(ValueError, match="cannot span a rebase point"):
        qi.xmr_chart(y, labels, rebase="2026-04", baseline=("2026-01", "2026-06"))


def test_p_chart_rebase_and_assurance():
    x = [5, 6, 4, 5, 6, 5, 9, 8, 9, 8, 9, 9]
    n = [10] * 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = qi.p_chart(x, n, list(range(1, 13)), better="higher", rebase=[6], target=0.5)
    assert r.points["centre"].iloc[0] == pytest.approx(31 / 60)
    assert r.points["centre"].iloc[-1] == pytest.approx(52 / 60)
    # latest limits: 52/60 ± 3 sqrt(p(1 - p)/10) = 0.544 to 1: the target 0.5 is below them
    assert r.assurance == "pass"


def test_assurance_rule():
    assert mdc.assurance_icon(5, 1, 3, "higher") == "fail"
    assert mdc.assurance_icon(5, 1, 3, "lower") == "pass"
    assert mdc.assurance_icon(2, 1, 3, "lower") == "hit_or_miss"
    assert mdc.assurance_icon(None, 1, 3, "lower") is None
    assert mdc.assurance_icon(2, 1, 3, None) is None


def test_too_few_points_says_not_enough_data():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = qi.xmr_chart([1.0, 2.0, np.nan, 3.0, 2.0])
    text = r.shortfall()
    assert text.startswith("Not enough data: the chart has 4 points with a value; its rules "
                           "need at least 10")
    assert "No signal" not in r.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = qi.run_chart([1, 2, 3])
    assert "2 useful points (points not on the median)" in run.shortfall()  # 2 is the median


def test_points_frame_is_built_on_first_access_and_survives_a_pickle():
    import copy
    import pickle

    y = [5, 5.2, 4.9, 5.1, 1, 2, 3, 4, 5, 6, 7, 5, 5.1, 4.9]
    r = qi.xmr_chart(y, better="higher", target=4.0)
    assert callable(r.__dict__["_points"])            # not built yet
    back = pickle.loads(pickle.dumps(r))
    assert isinstance(r.__dict__["_points"], pd.DataFrame)   # built once, kept
    assert r.points is r.points
    for other in (back, copy.deepcopy(r)):
        pd.testing.assert_frame_equal(other.points, r.points)
        assert other.signals == r.signals and other.variation == r.variation
    assert list(r.points.columns[-6:]) == ["outside_limits", "shift", "trend", "two_of_three",
                                           "signal", "point_type"]
    assert r.points["signal"].tolist() == r.points[["outside_limits", "shift", "trend",
                                                    "two_of_three"]].any(axis=1).tolist()
