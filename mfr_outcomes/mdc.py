"""Making Data Count (NHS England 2019): point types, the variation and assurance icons, limits
recalculated at a declared change and frozen on a baseline.

The rules themselves (a point beyond a limit, a shift, a trend, two of three near a limit) are in
:mod:`mfr_outcomes.qi`; this module turns their flags into what a Making Data Count chart shows:

- each point's type: ``common_cause`` (grey), ``special_cause_improvement`` (blue),
  ``special_cause_concern`` (orange) or ``special_cause_neither`` (purple: no direction is
  better). A flagged point is judged by its side of the mean, as NHSRplotthedots does
  (``ptd_calculate_point_type``); a point of a trend is judged by the trend's direction, so
  a rising trend is one colour even where it crosses the mean.
- the variation icon, from the type of the latest point with a value (NHSRplotthedots
  ``geom_ptd_icon``): ``common_cause``, ``improvement_high``/``improvement_low``,
  ``concern_high``/``concern_low``, ``neither_high``/``neither_low`` (high or low: the
  latest point's side of the mean);
- the assurance icon, from a target against the latest segment's process limits
  (``ptd_calculate_assurance_type``): ``pass`` when the whole range between the limits meets
  the target, ``fail`` when none of it does, ``hit_or_miss`` when the target lies between the
  limits; no icon without a target or a direction.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "POINT_TYPES",
    "VARIATION_ICONS",
    "ASSURANCE_ICONS",
    "Segments",
    "segments",
    "point_types",
    "variation_icon",
    "assurance_icon",
    "icon_text",
]

POINT_TYPES = ("common_cause", "special_cause_improvement", "special_cause_concern",
               "special_cause_neither")
VARIATION_ICONS = ("common_cause", "improvement_high", "improvement_low", "concern_high",
                   "concern_low", "neither_high", "neither_low")
ASSURANCE_ICONS = ("pass", "fail", "hit_or_miss")

_ICON_TEXT = {
    "common_cause": "common cause variation",
    "improvement_high": "special cause variation: improvement (higher)",
    "improvement_low": "special cause variation: improvement (lower)",
    "concern_high": "special cause variation: concern (higher)",
    "concern_low": "special cause variation: concern (lower)",
    "neither_high": "special cause variation: higher (neither better nor worse)",
    "neither_low": "special cause variation: lower (neither better nor worse)",
    "pass": "the process will consistently meet the target",
    "fail": "the process will consistently fail the target",
    "hit_or_miss": "the process will hit or miss the target at random",
    None: "",
}


def icon_text(icon: str | None) -> str:
    """What an icon means, in words (for alt text and tables)."""
    return _ICON_TEXT[icon]


@dataclass(frozen=True)
class Segments:
    """Where a chart's limits are calculated.

    Attributes
    ----------
    segment : ndarray of int
        Segment number of each point (0, 1, ...); a declared change starts a new segment.
    baseline : ndarray of bool
        Points that set their segment's centre line and limits.
    starts : tuple of int
        First position of every segment after the first (the rebase points).
    """

    segment: np.ndarray
    baseline: np.ndarray
    starts: tuple[int, ...]


def segments(n: int, *, rebase: Sequence[int] = (), baseline: tuple[int, int] | None = None,
             freeze: int | None = None) -> Segments:
    """Segments and baseline points of a chart of *n* points.

    Parameters
    ----------
    n : int
        Number of points.
    rebase : sequence of int
        Positions where a declared change takes effect: limits are recalculated from there
        (NHSRplotthedots ``rebase``).
    baseline : (first, last), optional
        Positions (inclusive) of a baseline period: the limits of the segment holding it are
        calculated from these points only and frozen for the rest of that segment.
    freeze : int, optional
        The first *freeze* points of each segment set its limits (``fix_after_n_points``).

    Raises
    ------
    ValueError
        With a sentence when a position is outside the chart or a baseline is too short.
    """
    rebase = sorted({int(r) for r in rebase})
    for r in rebase:
        if not 0 < r < n:
            raise ValueError(f"a rebase point must fall after the first and within the {n} "
                             f"points of the chart; got position {r + 1}")
    seg = np.zeros(n, dtype=int)
    for r in rebase:
        seg[r:] += 1
    base = np.ones(n, dtype=bool)
    if freeze is not None:
        if isinstance(freeze, bool) or not isinstance(freeze, int | np.integer) or freeze < 2:
            raise ValueError(f"freeze must be a whole number of baseline points ≥ 2, got "
                             f"{freeze!r}")
        if freeze > n:
            raise ValueError(f"freeze = {freeze} is more than the {n} points of the series")
        for s in np.unique(seg):
            pos = np.flatnonzero(seg == s)
            base[pos[freeze:]] = False
    if baseline is not None:
        a, b = int(baseline[0]), int(baseline[1])
        if not (0 <= a <= b < n):
            raise ValueError(f"the baseline period (points {a + 1} to {b + 1}) is not inside the "
                             f"{n} points of the chart")
        if b - a + 1 < 2:
            raise ValueError("a baseline period needs at least two points")
        if seg[a] != seg[b]:
            raise ValueError("a baseline period cannot span a rebase point")
        inside = seg == seg[a]
        base[inside] = False
        base[a:b + 1] = True
    return Segments(seg, base, tuple(rebase))


def point_types(value: np.ndarray, centre: np.ndarray, special: np.ndarray,
                trend_direction: np.ndarray, better: str | None,
                outside: np.ndarray | None = None) -> np.ndarray:
    """The Making Data Count type of each point.

    Parameters
    ----------
    value, centre : ndarray
        The points and their centre line.
    special : ndarray of bool
        Flagged by any rule.
    trend_direction : ndarray of int
        +1 / −1 where the point belongs to a rising / falling trend, else 0.
    better : {"lower", "higher"} or None
    """
    side = np.sign(np.where(np.isfinite(value), value - centre, 0.0))
    by_trend = trend_direction != 0
    if outside is not None:   # beyond a limit: judged by its side first (NHSRplotthedots #180)
        by_trend &= ~np.asarray(outside, dtype=bool)
    side = np.where(by_trend, trend_direction, side)
    good = 0 if better is None else (1 if better == "higher" else -1)
    out = np.full(len(value), "common_cause", dtype=object)
    if good == 0:
        out[special] = "special_cause_neither"
        return out
    out[special & (side == good)] = "special_cause_improvement"
    out[special & (side != good)] = "special_cause_concern"
    return out


def variation_icon(value: np.ndarray, centre: np.ndarray, types: np.ndarray,
                   better: str | None = None) -> str | None:
    """The variation icon from the latest point with a value (None when there is none)."""
    finite = np.flatnonzero(np.isfinite(value))
    if not len(finite):
        return None
    i = int(finite[-1])
    kind = str(types[i])
    if kind == "common_cause":
        return "common_cause"
    high = "high" if value[i] >= centre[i] else "low"
    if better is not None and kind != "special_cause_neither":   # the icon follows the type
        good = kind == "special_cause_improvement"
        high = "high" if good == (better == "higher") else "low"
    word = {"special_cause_improvement": "improvement", "special_cause_concern": "concern",
            "special_cause_neither": "neither"}[kind]
    return f"{word}_{high}"


def assurance_icon(target: float | None, lcl: float, ucl: float,
                   better: str | None) -> str | None:
    """Assurance of meeting *target*, from the latest limits (None: no target or direction).

    Examples
    --------
    >>> assurance_icon(0.5, -3.01, 3.29, "higher")
    'hit_or_miss'
    >>> assurance_icon(-3.5, -3.01, 3.29, "higher"), assurance_icon(-3.5, -3.01, 3.29, "lower")
    ('pass', 'fail')
    """
    if target is None or better is None or not (np.isfinite(lcl) and np.isfinite(ucl)):
        return None
    if target > ucl:
        return "fail" if better == "higher" else "pass"
    if target < lcl:
        return "pass" if better == "higher" else "fail"
    return "hit_or_miss"
