"""Funnel limits (Spiegelhalter 2005) against their closed forms, worked by hand."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes import funnel


def _binom_cdf(r: int, n: int, p: float) -> float:
    return sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(r + 1))


def test_binomial_limit_hand_worked_n20_half():
    # Binomial(20, 0.5): F(13) = 0.942341, F(14) = 0.979305, so r_0.975 = 14 and
    # alpha = (0.979305 - 0.975) / (0.979305 - 0.942341) = 0.116466; limit (14 - alpha) / 20
    f13, f14 = _binom_cdf(13, 20, 0.5), _binom_cdf(14, 20, 0.5)
    assert f13 == pytest.approx(0.942341, abs=1e-6) and f14 == pytest.approx(0.979305, abs=1e-6)
    alpha = (f14 - 0.975) / (f14 - f13)
    assert funnel.binomial_limits(20, 0.5, 0.975)[0] == pytest.approx((14 - alpha) / 20,
                                                                      abs=1e-12)
    # the lower 95 % limit mirrors it: r_0.025 = 6, F(5) = 0.020695, F(6) = 0.057659
    f5, f6 = _binom_cdf(5, 20, 0.5), _binom_cdf(6, 20, 0.5)
    lo = (6 - (f6 - 0.025) / (f6 - f5)) / 20
    assert funnel.binomial_limits(20, 0.5, 0.025)[0] == pytest.approx(lo, abs=1e-12)
    assert lo == pytest.approx(0.255824, abs=1e-6)


def test_binomial_limits_by_closed_form_over_a_grid():
    for n in (5, 12, 40, 150):
        for theta in (0.1, 0.35):
            for p in (0.001, 0.025, 0.975, 0.999):
                r = 0
                while _binom_cdf(r, n, theta) < p:
                    r += 1
                fr, fr1 = _binom_cdf(r, n, theta), (_binom_cdf(r - 1, n, theta) if r else 0.0)
                expect = (r - (fr - p) / (fr - fr1)) / n
                got = funnel.binomial_limits(n, theta, p)[0]
                assert got == pytest.approx(min(max(expect, 0), 1), abs=1e-9), (n, theta, p)
    # the funnel narrows with n and approaches the normal limits
    big = funnel.binomial_limits(10_000, 0.3, 0.975)[0]
    assert big == pytest.approx(0.3 + 1.959964 * math.sqrt(0.21 / 10_000), abs=2e-4)


def test_funnel_proportions_positions():
    out = funnel.funnel_proportions([2, 9, 20, 6], [20, 20, 40, 20], ["A", "B", "C", "D"])
    theta = 37 / 100
    assert out["target"].iloc[0] == pytest.approx(theta)
    assert out.set_index("unit")["value"].to_dict() == {"A": 0.1, "B": 0.45, "C": 0.5, "D": 0.3}
    pos = out.set_index("unit")["position"]
    assert pos["A"].startswith("below")           # 2 of 20 against 37 %
    assert pos["B"] == "within 95 % limits"
    assert (out["lo998"] <= out["lo95"]).all() and (out["hi95"] <= out["hi998"]).all()


def test_normal_limits_closed_form():
    values = pd.Series([1.0, 2.0, 3.0, 4.0, 10.0, 2.0])
    units = pd.Series(["A", "A", "A", "B", "B", "B"])
    out = funnel.funnel_means(values, units).set_index("unit")
    sd = float(np.std(values, ddof=1))
    mean = float(values.mean())
    assert out.loc["A", "value"] == 2.0 and out.loc["B", "n"] == 3
    assert out.loc["A", "hi95"] == pytest.approx(mean + 1.959963985 * sd / math.sqrt(3))
    assert out.loc["A", "lo998"] == pytest.approx(mean - 3.090232306 * sd / math.sqrt(3))
