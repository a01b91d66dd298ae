"""Clinical and statistical rules used by several modules, each written once.

- :func:`affected_side_rows`: which readings of a measure read on both sides count for a patient;
- :func:`important_change_mask`, :func:`can_show_important_change`: the responder rule and who
  can be judged by it;
- :func:`wilson_interval`: the Wilson score interval of a proportion.

``effects``, ``qi``, ``plots`` and the report all call these; nothing here imports above the
measure registry, so every layer can use them.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mfr_outcomes.measures import get_measure

__all__ = [
    "affected_side_rows",
    "important_change_mask",
    "can_show_important_change",
    "wilson_interval",
    "NOT_ELIGIBLE_REASON",
]

#: The reason given for a patient whose baseline leaves no room for an important change.
NOT_ELIGIBLE_REASON = "baseline leaves no room for an important change"


def affected_side_rows(frame: pd.DataFrame) -> pd.Series:
    """Rows of an analysis frame kept by the affected-side rule.

    A measure read on both sides (``side`` left/right) keeps the reading of the patient's
    affected side; both sides are kept (and later averaged) when the patient is bilateral or the
    side is unknown. A measure without sides keeps every row.

    Parameters
    ----------
    frame : DataFrame
        An analysis frame (``Study.frame``), with ``side`` and ``affected_side`` when present.

    Returns
    -------
    Series of bool
        Aligned with *frame*.

    Examples
    --------
    >>> f = pd.DataFrame({"side": ["left", "right", "left", "right"],
    ...                   "affected_side": ["left", "left", "bilateral", "bilateral"]})
    >>> affected_side_rows(f).tolist()
    [True, False, True, True]
    """
    if "side" not in frame.columns or "affected_side" not in frame.columns:
        return pd.Series(True, index=frame.index)
    side = frame["side"].astype(str)
    if not set(side.unique()) & {"left", "right"}:
        return pd.Series(True, index=frame.index)
    aff = frame["affected_side"].astype(str)
    return (aff == side) | ~aff.isin(["left", "right"])


def important_change_mask(measure: str, baseline: Any, last: Any) -> np.ndarray:
    """The responder rule, element-wise: is the change from *baseline* to *last* important?

    Met when the improvement reaches the absolute threshold (MCID, else MDC) or the percent
    threshold of baseline, whichever the registry gives (Ostelo 2008: either). A percent
    threshold is not judged at a zero baseline. A measure with neither threshold: all False.

    Examples
    --------
    >>> important_change_mask("pain_nrs", [6, 6, 3, 0], [4, 5, 2, 0]).tolist()
    [True, False, True, False]
    """
    m = get_measure(measure)
    b = np.asarray(baseline, dtype="float64")
    e = np.asarray(last, dtype="float64")
    gain = -(e - b) if m.better == "lower" else (e - b)
    met = np.zeros(np.broadcast(b, e).shape, dtype=bool)
    if m.threshold_points is not None:
        met |= gain >= m.threshold_points - 1e-9
    if m.mcid_percent is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            pct = np.where(b != 0, 100.0 * gain / np.abs(b), -np.inf)
        met |= pct >= m.mcid_percent - 1e-9
    return met & np.isfinite(b) & np.isfinite(e)


def can_show_important_change(measure: str, baseline: Any) -> np.ndarray:
    """Whether a patient starting at *baseline* could be a responder at all.

    True when the best reading the scale allows (its floor when lower is better, its ceiling
    otherwise) would count as an important change by :func:`important_change_mask`. A pain score
    of 0 cannot improve, so a patient starting there is left out of responder denominators
    (with :data:`NOT_ELIGIBLE_REASON`) instead of counting as a non-responder.

    Examples
    --------
    >>> can_show_important_change("pain_nrs", [0, 1, 2, 8]).tolist()
    [False, True, True, True]
    """
    m = get_measure(measure)
    b = np.asarray(baseline, dtype="float64")
    best = np.full(b.shape, m.low if m.better == "lower" else m.high)
    return important_change_mask(measure, b, best)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927), the closed form.

    Agrees with statsmodels' ``proportion_confint(method="wilson")`` and R's
    ``prop.test(correct = FALSE)``. Returns (nan, nan) when *n* is 0.

    Examples
    --------
    >>> [round(v, 4) for v in wilson_interval(7, 20)]
    [0.1812, 0.5671]
    """
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95); got {level!r}")
    n = int(n)
    if n <= 0:
        return (math.nan, math.nan)
    k = int(successes)
    if not 0 <= k <= n:
        raise ValueError(f"successes must be between 0 and n = {n}; got {k}")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
