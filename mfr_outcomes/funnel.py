"""Funnel plots for comparing therapists and sites without league tables (Spiegelhalter 2005).

Each unit (a therapist, a site) is a point at its size against the network's value; the control
limits around the network value narrow as the size grows. A unit outside the 99.8 % limits is
unlikely to differ from the network by chance alone; inside the 95 % limits it is
indistinguishable from it.

- Proportions (responders among patients): exact binomial limits, interpolated as in
  Spiegelhalter DJ, "Funnel plots for comparing institutional performance", Stat Med
  2005;24:1185-1202 (appendix A.1.1): with r_p the p-quantile of Binomial(n, θ₀),
  α = (F(r_p) − p) / (F(r_p) − F(r_p − 1)) and the limit (r_p − α) / n.
- Means (within-session change): normal limits θ₀ ± z_p σ / √n (appendix A.2), σ the SD of
  the unit-of-analysis values across the network.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "LEVELS",
    "binomial_limits",
    "normal_limits",
    "funnel_proportions",
    "funnel_means",
]

#: The two funnels drawn: 95 % (about 2 SD) and 99.8 % (about 3 SD).
LEVELS = (0.95, 0.998)


def binomial_limits(n: float | Sequence[float], theta: float, p: float) -> np.ndarray:
    """The exact binomial *p*-quantile limit of a proportion out of *n* around *theta*.

    Parameters
    ----------
    n : float or array
        Denominators (≥ 1).
    theta : float
        The network proportion, 0 < theta < 1.
    p : float
        The quantile: 0.025 and 0.975 for the 95 % funnel, 0.001 and 0.999 for 99.8 %.

    Returns
    -------
    ndarray
        The limit as a proportion, clipped to [0, 1].

    Examples
    --------
    >>> round(float(binomial_limits(20, 0.5, 0.975)[0]), 4)
    0.6942
    """
    if not 0.0 < float(theta) < 1.0:
        raise ValueError(f"the network proportion must be strictly between 0 and 1, got {theta}")
    n = np.atleast_1d(np.asarray(n, dtype="float64"))
    r = stats.binom.ppf(p, n, theta)
    f_r = stats.binom.cdf(r, n, theta)
    f_r1 = stats.binom.cdf(r - 1, n, theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(f_r > f_r1, (f_r - p) / (f_r - f_r1), 0.0)
    return np.clip((r - alpha) / n, 0.0, 1.0)


def normal_limits(n: float | Sequence[float], mean: float, sd: float, p: float) -> np.ndarray:
    """The normal *p*-quantile limit of a mean of *n* values around *mean* (SD *sd*)."""
    n = np.atleast_1d(np.asarray(n, dtype="float64"))
    return mean + stats.norm.ppf(p) * sd / np.sqrt(n)


def _position(value: np.ndarray, lo95: np.ndarray, hi95: np.ndarray, lo998: np.ndarray,
              hi998: np.ndarray) -> list[str]:
    out = []
    for v, a, b, c, d in zip(value, lo95, hi95, lo998, hi998):
        if v > d:
            out.append("above 99.8 % limit")
        elif v < c:
            out.append("below 99.8 % limit")
        elif v > b:
            out.append("above 95 % limit")
        elif v < a:
            out.append("below 95 % limit")
        else:
            out.append("within 95 % limits")
    return out


def _limits_frame(units: pd.DataFrame, fn, target: float) -> pd.DataFrame:
    out = units.copy()
    out["target"] = target
    for level in LEVELS:
        tag = f"{round(level * 1000) / 10:g}".replace(".", "")
        lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
        out[f"lo{tag}"] = fn(out["n"].to_numpy(), lo)
        out[f"hi{tag}"] = fn(out["n"].to_numpy(), hi)
    out["position"] = _position(out["value"].to_numpy(), out["lo95"].to_numpy(),
                                out["hi95"].to_numpy(), out["lo998"].to_numpy(),
                                out["hi998"].to_numpy())
    return out


def funnel_proportions(events: Sequence[float], totals: Sequence[float],
                       units: Sequence[str], *, target: float | None = None) -> pd.DataFrame:
    """Funnel of a proportion per unit (e.g. responders among each therapist's patients).

    Parameters
    ----------
    events, totals : array-like
        Counts per unit.
    units : array-like of str
        Unit names.
    target : float, optional
        The network value; default the pooled proportion Σ events / Σ totals.

    Returns
    -------
    DataFrame
        unit, events, n, value (proportion), target, lo95, hi95, lo998, hi998, position.
        ``.attrs["kind"] = "proportion"``.

    Raises
    ------
    ValueError
        When the pooled proportion is 0 or 1 (no funnel can be drawn around it).
    """
    x = np.asarray(events, dtype="float64")
    n = np.asarray(totals, dtype="float64")
    keep = n > 0
    frame = pd.DataFrame({"unit": np.asarray(units, dtype=object)[keep], "events": x[keep],
                          "n": n[keep]})
    frame["value"] = frame["events"] / frame["n"]
    theta = float(frame["events"].sum() / frame["n"].sum()) if target is None else float(target)
    out = _limits_frame(frame, lambda nn, p: binomial_limits(nn, theta, p), theta)
    out.attrs["kind"] = "proportion"
    return out


def funnel_means(values: pd.Series, units: pd.Series, *,
                 target: float | None = None) -> pd.DataFrame:
    """Funnel of a mean per unit, from one value per unit of analysis (e.g. per patient).

    Parameters
    ----------
    values : Series
        One value per unit of analysis (a patient's mean within-session change).
    units : Series
        The unit (therapist, site) of each value.
    target : float, optional
        The network value; default the mean of all *values*.

    Returns
    -------
    DataFrame
        unit, n, value (the unit's mean), sd (the network SD used), target, lo95, hi95,
        lo998, hi998, position. ``.attrs["kind"] = "mean"``.
    """
    v = pd.to_numeric(pd.Series(values), errors="coerce").astype("float64").reset_index(drop=True)
    u = pd.Series(units).astype(str).reset_index(drop=True)
    ok = v.notna()
    v, u = v[ok], u[ok]
    if len(v) < 2:
        raise ValueError("a funnel of means needs at least two values")
    sd = float(v.std(ddof=1))
    mean = float(v.mean()) if target is None else float(target)
    g = v.groupby(u, sort=True)
    frame = pd.DataFrame({"unit": g.size().index.to_numpy(), "n": g.size().to_numpy(),
                          "value": g.mean().to_numpy()})
    frame["sd"] = sd
    out = _limits_frame(frame, lambda nn, p: normal_limits(nn, mean, sd, p), mean)
    out.attrs["kind"] = "mean"
    return out
