"""Figures of a study, a mixed model and the QI charts (seaborn/matplotlib).

Every function takes a Study (or an analysis frame), a fitted model, or a result frame, plus
keyword-only options, draws on a new or given Axes and returns it (a FacetGrid for faceted
figures). Axes are labelled from the measure registry; colours come from one colour-blind-safe
palette (:data:`PALETTE`); no figure shows patient identifiers. Nothing here calls ``plt.show``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import Bbox
from scipy import stats

from mfr_outcomes.measures import get_measure
from mfr_outcomes.rules import affected_side_rows
from mfr_outcomes.vocab import TECHNIQUE

__all__ = [
    "PALETTE",
    "COLORS",
    "TECHNIQUE_COLORS",
    "ASSESSMENT_COLORS",
    "SIGNAL_MARKERS",
    "prepost_slopes",
    "label_points",
    "trajectories",
    "marginal_means",
    "forest",
    "caterpillar",
    "residual_diagnostics",
    "responder_waterfall",
    "rom_by_side",
    "run_chart",
    "xmr_chart",
    "p_chart",
    "MDC_COLORS",
    "mdc_icon",
    "spc_chart",
    "funnel",
    "named_caterpillar",
    "count_bars",
    "course_curves",
]

#: The one palette of every figure: seaborn's colour-blind-safe "colorblind" (Okabe–Ito-like).
PALETTE = "colorblind"
#: The palette's colours, in order.
COLORS: list[tuple[float, float, float]] = list(sns.color_palette(PALETTE, 10))
#: A fixed colour per technique, so a technique looks the same in every figure.
TECHNIQUE_COLORS: dict[str, tuple[float, float, float]] = {
    t: COLORS[i] for i, t in enumerate(TECHNIQUE)}
#: QI signal colours as Making Data Count draws them: blue improvement, orange concern.
ASSESSMENT_COLORS: dict[str, tuple[float, float, float]] = {
    "improvement": COLORS[0], "concern": COLORS[1], "neutral": COLORS[4]}
#: Marker per QI rule.
SIGNAL_MARKERS: dict[str, str] = {
    "outside_limits": "X", "shift": "s", "trend": "D", "two_of_three": "^",
    "longest_run": "s", "crossings": "o",
}
_RULE_LABELS = {
    "outside_limits": "beyond a process limit", "shift": "shift (7 on one side)",
    "trend": "trend (7 rising or falling)", "two_of_three": "2 of 3 beyond 2 sigma",
    "longest_run": "unusually long run",
}
_GREY = (0.55, 0.55, 0.55)
_STAT_COLUMNS = {"estimate", "std_error", "df", "statistic", "p_value", "ci_low", "ci_high",
                 "se", "lower", "upper", "t_ratio", "z_ratio"}


# --------------------------------------------------------------------------------------------
# helpers


def _new_ax(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    with sns.axes_style("ticks"):
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _tag(container: Any, gid: str) -> Any:
    """Give an errorbar's data line the gid *gid* and its bars ``<gid>-ci`` (tests find them)."""
    container.lines[0].set_gid(gid)
    for col in container.lines[2]:
        col.set_gid(f"{gid}-ci")
    return container


def _frame(study: Any, measure: str, side: str | None = None, *,
           affected: bool = False) -> pd.DataFrame:
    """An analysis frame from a Study or a frame (which is then used as given).

    With *affected* and no *side*, a measure read on both sides keeps the affected side (both
    sides when bilateral or unknown), the rule ``effects.responders`` and ``qi.aggregate`` use.
    """
    if isinstance(study, pd.DataFrame):
        frame = study if side is None else study[study["side"] == side]
    elif hasattr(study, "frame"):
        frame = study.frame(measure, side=side)
    else:
        raise TypeError(f"expected a Study or an analysis frame, got {type(study).__name__}")
    missing = sorted({"patient_id", "session_id", "phase", "value"} - set(frame.columns))
    if missing:
        raise ValueError(f"the frame lacks column(s) {', '.join(missing)}; pass Study.frame(...)")
    out = frame.copy()
    out["phase"] = out["phase"].astype(str)
    if affected and side is None:
        out = out[affected_side_rows(out)]
    return out


def _measure_label(measure: str | None, default: str) -> str:
    if measure is None:
        return default
    try:
        return get_measure(measure).axis_label
    except KeyError:
        return measure


def _fit_measure(fit: Any, measure: str | None) -> str | None:
    return measure if measure is not None else getattr(fit, "measure", None)


def _pretty(level: Any) -> str:
    return str(level).replace("_", " ")


def _mean_ci(values: pd.Series, level: float = 0.95) -> tuple[float, float, float, int]:
    v = values.dropna().to_numpy(dtype=float)
    n = len(v)
    if n == 0:
        return np.nan, np.nan, np.nan, 0
    m = float(v.mean())
    if n == 1:
        return m, np.nan, np.nan, 1
    half = stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n)
    return m, m - half, m + half, n


def _technique_order(values: Sequence[Any]) -> list[str]:
    present = {str(v) for v in values}
    return [t for t in TECHNIQUE if t in present] + sorted(present - set(TECHNIQUE))


# --------------------------------------------------------------------------------------------
# study figures


def prepost_slopes(study: Any, measure: str, *, per: str = "patient", side: str | None = None,
                   col_wrap: int | None = None, height: float = 3.2,
                   aspect: float = 0.8) -> sns.FacetGrid:
    """Paired pre/post slopes per technique: a thin line per patient (or visit), the mean in bold.

    Parameters
    ----------
    study : Study or DataFrame
        A Study, or its analysis frame ``study.frame(measure)``.
    measure : str
        Measure code.
    per : {"patient", "visit"}
        One line per patient (mean of their pre and post readings on visits with that technique)
        or one per visit (session).
    side : {"left", "right", "none"}, optional
        Keep one side; otherwise a measure read on both sides keeps the affected side (the mean
        of both sides when bilateral or unknown), as ``effects.responders`` does.
    col_wrap : int, optional
        Facets per row.
    height, aspect : float
        Facet size (inches) and width/height ratio.

    Returns
    -------
    FacetGrid
        One facet per technique with post readings. Each facet holds a LineCollection of the
        individual lines (``gid="individual"``) and a Line2D of the technique mean
        (``gid="mean"``, y = [mean pre, mean post] of the individual lines).
    """
    if per not in ("patient", "visit"):
        raise ValueError(f"per must be 'patient' or 'visit', got {per!r}")
    df = _frame(study, measure, side, affected=True)
    visits = (df.groupby(["patient_id", "session_id", "technique", "phase"], observed=True)
              ["value"].mean().unstack("phase"))
    if not {"pre", "post"} <= set(visits.columns):
        raise ValueError(f"measure {measure!r} has no visit with both pre and post readings")
    visits = visits.dropna(subset=["pre", "post"]).reset_index()
    if per == "patient":
        lines = (visits.groupby(["patient_id", "technique"], observed=True)[["pre", "post"]]
                 .mean().reset_index())
    else:
        lines = visits
    lines["technique"] = lines["technique"].astype(str)
    order = _technique_order(lines["technique"].unique())
    with sns.axes_style("ticks"):
        g = sns.FacetGrid(lines, col="technique", col_order=order, col_wrap=col_wrap,
                          height=height, aspect=aspect, sharey=True, despine=True)
    for tech, ax in g.axes_dict.items():
        sub = lines[lines["technique"] == tech]
        segs = [[(0.0, a), (1.0, b)] for a, b in zip(sub["pre"], sub["post"])]
        lc = LineCollection(segs, colors=[_GREY], linewidths=0.7,
                            alpha=0.35 if len(segs) > 30 else 0.6)
        lc.set_gid("individual")
        ax.add_collection(lc)
        colour = TECHNIQUE_COLORS.get(tech, COLORS[7])
        (mean_line,) = ax.plot([0, 1], [sub["pre"].mean(), sub["post"].mean()], color=colour,
                               lw=3, marker="o", ms=7, zorder=3, label="mean")
        mean_line.set_gid("mean")
        ax.set_xlim(-0.25, 1.25)
        ax.set_xticks([0, 1], ["pre", "post"])
        unit = "patients" if per == "patient" else "visits"
        ax.set_title(f"{_pretty(tech)} (n = {len(sub)} {unit})", fontsize=10)
    g.set_axis_labels("", _measure_label(measure, "value"))
    values = np.concatenate([lines["pre"].to_numpy(), lines["post"].to_numpy()])
    if len(values):
        pad = 0.05 * (np.nanmax(values) - np.nanmin(values) or 1.0)
        g.set(ylim=(np.nanmin(values) - pad, np.nanmax(values) + pad))
    g.figure.suptitle(f"{get_measure(measure).label if measure else ''}: before and after "
                      "each release", y=1.02)
    return g


def _time_grid(values: pd.Series, n_grid: int) -> np.ndarray:
    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    uniq = np.unique(v)
    if len(uniq) <= 25 and np.allclose(uniq, np.round(uniq)):
        return uniq
    return np.linspace(uniq.min(), uniq.max(), n_grid)


def _model_curve(fit: Any, time: str, grid: np.ndarray, level: float) -> pd.DataFrame:
    """Population-average prediction at each time: the mean over the rows the fit used of the
    fixed-effects prediction with the time variable set to t (``predict(...,
    include_random=False)``). That mean is L β̂ with L the average model-matrix row, so its CI comes
    from ``fit.linear_contrast(L)`` with the fit's df (else a normal interval from ``fit.vcov``)."""
    spec = getattr(fit, "spec", None)
    data = getattr(spec, "data", None)  # the rows used (no missing values)
    if data is None or time not in getattr(data, "columns", []):
        data = getattr(fit, "data", None)
    if data is None or time not in data.columns:
        raise ValueError(f"the fit's data has no column {time!r}; pass time= the model's time "
                         "variable")
    rows, est = [], []
    for t in grid:
        nd = data.copy()
        nd[time] = t
        if hasattr(fit, "model_matrix"):
            X = np.asarray(fit.model_matrix(nd), dtype=float)
            L = X[np.isfinite(X).all(axis=1)].mean(axis=0)
            rows.append(L)
            est.append(float(L @ np.asarray(fit.coef, dtype=float)))
        else:
            est.append(float(np.nanmean(fit.predict(nd, include_random=False))))
    if len(grid) > 1 and np.allclose(est[0], est[-1]) and (
            not rows or np.allclose(rows[0], rows[-1])):
        raise ValueError(f"the model's fixed part does not depend on {time!r} (formula "
                         f"{getattr(fit, 'formula', '?')!r}); pass time= its time variable")
    out = pd.DataFrame({"time": grid, "estimate": est, "ci_low": np.nan, "ci_high": np.nan})
    if rows:
        L = np.vstack(rows)
        if hasattr(fit, "linear_contrast"):
            lc = fit.linear_contrast(L, level=level)
            out["ci_low"], out["ci_high"] = lc["ci_low"].to_numpy(), lc["ci_high"].to_numpy()
        elif hasattr(fit, "vcov"):
            V = np.asarray(fit.vcov, dtype=float)
            se = np.sqrt(np.einsum("ij,jk,ik->i", L, V, L))
            z = stats.norm.ppf(0.5 + level / 2)
            out["ci_low"], out["ci_high"] = out["estimate"] - z * se, out["estimate"] + z * se
    return out


def trajectories(study: Any, measure: str, *, fit: Any = None, time: str = "session_number",
                 phase: str | None = "pre", side: str | None = None, level: float = 0.95,
                 n_grid: int = 40, ax: Axes | None = None,
                 figsize: tuple[float, float] = (7.0, 4.2)) -> Axes:
    """Patient trajectories across the course of care, with the mean and its band.

    Parameters
    ----------
    study : Study or DataFrame
        A Study or its analysis frame.
    measure : str
        Measure code.
    fit : MixedFit, optional
        When given, the bold line is the model's population-average prediction over the fit's
        rows with the time variable set to each grid value (``fit.predict(...,
        include_random=False)``) and the band its confidence interval (``fit.linear_contrast`` of
        the averaged model-matrix rows, with the fit's df). Without a fit: the observed mean per
        time point ± a t-interval.
    time : {"session_number", "weeks"} or str
        The time axis (a column of the analysis frame, and of ``fit.data`` when a fit is given).
    phase : {"pre", "post"} or None
        Which readings to draw; None keeps both.
    side : str, optional
        Keep one side; otherwise the affected side (both sides averaged when bilateral or
        unknown).
    level : float
        Confidence level of the band.
    n_grid : int
        Grid points for a continuous time axis.
    ax : Axes, optional
    figsize : tuple

    Returns
    -------
    Axes
        Holds a LineCollection of patient lines (``gid="patients"``), a Line2D of the mean
        (``gid="mean"``) and the band (``gid="band"``). ``ax.mfr_curve`` is the DataFrame behind
        the mean (time, estimate, ci_low, ci_high).
    """
    df = _frame(study, measure, side, affected=True)
    if time not in df.columns:
        raise ValueError(f"time must be a column of the analysis frame, got {time!r}")
    if phase is not None:
        if phase not in ("pre", "post"):
            raise ValueError(f"phase must be 'pre', 'post' or None, got {phase!r}")
        df = df[df["phase"] == phase]
    pts = (df.groupby(["patient_id", "session_id", time], observed=True)["value"].mean()
           .reset_index().sort_values(["patient_id", time]))
    ax = _new_ax(ax, figsize)
    segs = [g[[time, "value"]].to_numpy(dtype=float) for _, g in pts.groupby("patient_id")]
    lc = LineCollection(segs, colors=[_GREY], linewidths=0.6,
                        alpha=0.3 if len(segs) > 40 else 0.5)
    lc.set_gid("patients")
    ax.add_collection(lc)
    ax.autoscale_view()
    if fit is not None:
        curve = _model_curve(fit, time, _time_grid(pts[time], n_grid), level)
        label = "model mean (population average)"
    else:
        t = pts[time].round() if time == "weeks" else pts[time]
        rows = [(tv, *_mean_ci(g["value"], level)[:3]) for tv, g in pts.groupby(t)]
        curve = pd.DataFrame(rows, columns=["time", "estimate", "ci_low", "ci_high"])
        label = "observed mean"
    (line,) = ax.plot(curve["time"], curve["estimate"], color=COLORS[0], lw=2.5, label=label,
                      zorder=3)
    line.set_gid("mean")
    band = ax.fill_between(curve["time"], curve["ci_low"], curve["ci_high"], color=COLORS[0],
                           alpha=0.25, lw=0, label=f"{round(level * 100)} % CI", zorder=2)
    band.set_gid("band")
    ax.set_xlabel({"session_number": "session", "weeks": "weeks since first visit"}
                  .get(time, time.replace("_", " ")))
    what = {"pre": "before treatment", "post": "after treatment"}.get(phase or "", "")
    ax.set_ylabel(_measure_label(measure, "value") + (f"\n{what}" if what else ""))
    handles = [Line2D([], [], color=_GREY, lw=1, label=f"patients (n = {len(segs)})"), line,
               band]
    ax.legend(handles=handles, frameon=False, loc="best", fontsize=9)
    sns.despine(ax=ax)
    ax.mfr_curve = curve
    return ax


def rom_by_side(study: Any, measure: str = "slr_deg", *, by: str = "affected",
                level: float = 0.95, ax: Axes | None = None,
                figsize: tuple[float, float] = (5.5, 4.0)) -> Axes:
    """Range of motion by side, before and after treatment.

    Parameters
    ----------
    study : Study or DataFrame
        A Study or its analysis frame (needs ``side``; ``affected_side`` for by="affected").
    measure : str
        A sided measure (slr_deg, hip_ir_deg, ...).
    by : {"affected", "side"}
        Group sides as affected/unaffected (bilateral: both affected) or as left/right.
    level : float
        Confidence level of the error bars (t-interval of the mean of patient means).
    ax : Axes, optional
    figsize : tuple

    Returns
    -------
    Axes
        One point with error bar per side group and phase; ``ax.mfr_summary`` is the frame behind
        it (side_group, phase, mean, ci_low, ci_high, n_patients).
    """
    if by not in ("affected", "side"):
        raise ValueError(f"by must be 'affected' or 'side', got {by!r}")
    df = _frame(study, measure)
    df = df[df["side"].astype(str).isin(["left", "right"])].copy()
    if df.empty:
        raise ValueError(f"measure {measure!r} has no left/right readings to compare")
    if by == "affected":
        if "affected_side" not in df.columns or df["affected_side"].isna().all():
            raise ValueError("by='affected' needs the patients' affected_side; use by='side'")
        aff = df["affected_side"].astype(str)
        side = df["side"].astype(str)
        known = df["affected_side"].notna()
        df = df[known]
        df["side_group"] = np.where((aff[known] == side[known]) | (aff[known] == "bilateral"),
                                    "affected", "unaffected")
        groups = ["affected", "unaffected"]
    else:
        df["side_group"] = df["side"].astype(str)
        groups = ["left", "right"]
    # patient means first, so patients with many visits do not dominate
    pm = df.groupby(["patient_id", "side_group", "phase"])["value"].mean().reset_index()
    rows = []
    for gname in groups:
        for ph in ("pre", "post"):
            m, lo, hi, n = _mean_ci(pm.loc[(pm["side_group"] == gname) & (pm["phase"] == ph),
                                           "value"], level)
            rows.append({"side_group": gname, "phase": ph, "mean": m, "ci_low": lo,
                         "ci_high": hi, "n_patients": n})
    summ = pd.DataFrame(rows)
    ax = _new_ax(ax, figsize)
    for k, ph in enumerate(("pre", "post")):
        s = summ[summ["phase"] == ph]
        x = np.arange(len(groups)) + (k - 0.5) * 0.25
        err = np.vstack([s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]])
        cont = ax.errorbar(x, s["mean"], yerr=err, fmt="o" if ph == "pre" else "s", ms=8,
                           capsize=4, color=COLORS[k * 2], label=ph, lw=1.5)
        _tag(cont, f"phase-{ph}")
    ax.set_xticks(np.arange(len(groups)), [g for g in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_xlabel("side")
    ax.set_ylabel(_measure_label(measure, "value"))
    ax.legend(title="phase", frameon=False)
    ax.set_title(f"Mean of patient means, {round(level * 100)} % CI", fontsize=10)
    sns.despine(ax=ax)
    ax.mfr_summary = summ
    return ax


def responder_waterfall(responders: pd.DataFrame, measure: str, *, ax: Axes | None = None,
                        figsize: tuple[float, float] = (7.5, 4.0)) -> Axes:
    """Waterfall of each patient's change from baseline, coloured by responder status.

    Parameters
    ----------
    responders : DataFrame
        One row a patient, with ``change`` (last − baseline, measure units) and ``responder``
        (bool), as :func:`mfr_outcomes.effects.responders` returns.
    measure : str
        Measure code: its direction sorts the bars (best on the right) and its MCID (else MDC)
        draws the threshold line at the improving side.
    ax : Axes, optional
    figsize : tuple

    Returns
    -------
    Axes
        One bar per patient (in ``ax.patches``, ``gid="waterfall"``), a horizontal line
        ``gid="mcid"`` at −MCID (lower better) or +MCID (higher better); no patient labels.
    """
    missing = sorted({"change", "responder"} - set(responders.columns))
    if missing:
        raise ValueError(f"the responders frame lacks column(s) {', '.join(missing)}; pass "
                         "mfr_outcomes.effects.responders(study, measure)")
    m = get_measure(measure)
    df = responders.dropna(subset=["change"]).copy()
    df["_improvement"] = [m.improvement(c) for c in df["change"]]
    df["_resp"] = df["responder"].fillna(False).astype(bool)
    # ties: non-responders first, so the colours do not interleave within a bar height
    df = df.sort_values(["_improvement", "_resp"], kind="stable").reset_index(drop=True)
    resp = df["_resp"].to_numpy()
    colours = [COLORS[0] if r else COLORS[7] for r in resp]
    ax = _new_ax(ax, figsize)
    bars = ax.bar(np.arange(len(df)), df["change"], width=0.85, color=colours, lw=0)
    for b in bars:
        b.set_gid("waterfall")
    ax.axhline(0, color="black", lw=0.8)
    thr = m.threshold_points
    handles = [Patch(color=COLORS[0], label=f"responder (n = {int(resp.sum())})"),
               Patch(color=COLORS[7], label=f"not a responder (n = {int((~resp).sum())})")]
    if thr is not None:
        y = -thr if m.better == "lower" else thr
        kind = "MCID" if m.mcid_points is not None else "MDC"
        ax.axhline(y, color=COLORS[3], ls="--", lw=1.5, gid="mcid")
        handles.append(Line2D([], [], color=COLORS[3], ls="--",
                              label=f"{kind} {'−' if y < 0 else '+'}{thr:g} {m.unit}"))
    ax.set_xticks([])
    ax.set_xlim(-0.8, len(df) - 0.2)
    ax.set_xlabel(f"patients, sorted by change (n = {len(df)}; better to the right)")
    ax.set_ylabel(f"Change, last − baseline\n{m.axis_label}")
    ax.legend(handles=handles, frameon=False, fontsize=9,
              loc="upper right" if m.better == "lower" else "upper left")
    sns.despine(ax=ax, bottom=True)
    return ax


# --------------------------------------------------------------------------------------------
# model figures


def marginal_means(fit_or_frame: Any, specs: str = "post", *, by: str | None = "technique",
                   measure: str | None = None, ax: Axes | None = None,
                   figsize: tuple[float, float] = (7.0, 4.0)) -> Axes:
    """Estimated marginal means with confidence intervals, e.g. pre and post by technique.

    Parameters
    ----------
    fit_or_frame : MixedFit or DataFrame
        A fit (``fit.emmeans(specs, by=by)`` is called) or an emmeans frame with estimate,
        ci_low, ci_high and the spec/by columns.
    specs : str
        The variable whose levels are drawn side by side (hue), e.g. "post".
    by : str, optional
        The variable on the x axis (e.g. "technique").
    measure : str, optional
        Measure code for the axis label.
    ax : Axes, optional
    figsize : tuple

    Returns
    -------
    Axes
        One ``errorbar`` per level of *specs* (gid ``emm-<level>``); rows with a missing estimate
        (not estimable) are left out. ``ax.mfr_frame`` is the frame drawn.
    """
    if isinstance(fit_or_frame, pd.DataFrame):
        em = fit_or_frame.copy()
    elif hasattr(fit_or_frame, "emmeans"):
        em = fit_or_frame.emmeans(specs, by=by) if by else fit_or_frame.emmeans(specs)
        measure = _fit_measure(fit_or_frame, measure)
    else:
        raise TypeError(f"expected a MixedFit or an emmeans frame, got "
                        f"{type(fit_or_frame).__name__}")
    missing = sorted({"estimate", "ci_low", "ci_high"} - set(em.columns))
    if missing:
        raise ValueError(f"the marginal-means frame lacks column(s) {', '.join(missing)}")
    keys = [c for c in em.columns if c not in _STAT_COLUMNS]
    xcol = by if by in em.columns else (keys[0] if keys else None)
    hcol = specs if specs in em.columns and specs != xcol else next(
        (k for k in keys if k != xcol), None)
    em = em.dropna(subset=["estimate"]).reset_index(drop=True)
    xs = list(dict.fromkeys(em[xcol].astype(str))) if xcol else ["all"]
    if xcol == "technique":
        xs = _technique_order(xs)
    hs = list(dict.fromkeys(em[hcol])) if hcol else [None]
    ax = _new_ax(ax, figsize)
    width = 0.5
    for k, h in enumerate(hs):
        sub = em if h is None else em[em[hcol] == h]
        xpos = np.array([xs.index(str(v)) for v in sub[xcol].astype(str)]) if xcol else \
            np.zeros(len(sub))
        off = (k - (len(hs) - 1) / 2) * (width / max(len(hs), 1))
        err = np.vstack([sub["estimate"] - sub["ci_low"], sub["ci_high"] - sub["estimate"]])
        name = _level_name(hcol, h)
        cont = ax.errorbar(xpos + off, sub["estimate"], yerr=err, fmt="os^Dv"[k % 5], ms=7,
                           capsize=4, lw=1.5, color=COLORS[(2 * k) % 10], label=name)
        _tag(cont, f"emm-{h}")
    ax.set_xticks(np.arange(len(xs)), [_pretty(x) for x in xs])
    ax.set_xlim(-0.6, len(xs) - 0.4)
    ax.set_xlabel(_pretty(xcol) if xcol else "")
    ax.set_ylabel(_measure_label(measure, "Estimated marginal mean"))
    if hcol:
        ax.legend(frameon=False, title=_pretty(hcol) if hcol != "post" else None)
    level = em.attrs.get("level", 0.95)
    ax.set_title(f"Estimated marginal means, {round(100 * level)} % CI", fontsize=10)
    sns.despine(ax=ax)
    ax.mfr_frame = em
    return ax


def _level_name(col: str | None, value: Any) -> str:
    if col == "post":
        try:
            return {0: "pre", 1: "post"}[int(value)]
        except (TypeError, ValueError, KeyError):
            return str(value)
    if col == "phase":
        return str(value)
    return f"{_pretty(col)} = {_pretty(value)}" if col else ""


def forest(fit: Any, *, include_intercept: bool = False, terms: Sequence[str] | None = None,
           measure: str | None = None, ax: Axes | None = None,
           figsize: tuple[float, float] | None = None) -> Axes:
    """Forest plot of the fixed effects: estimate and confidence interval per term.

    Parameters
    ----------
    fit : MixedFit or DataFrame
        A fit, or a frame with term, estimate, ci_low, ci_high (``fit.fixed_effects``).
    include_intercept : bool
        Draw the intercept too (it is on another scale, so off by default).
    terms : sequence of str, optional
        Only these terms, in this order.
    measure : str, optional
        Measure code for the axis label.
    ax : Axes, optional
    figsize : tuple, optional

    Returns
    -------
    Axes
        Terms from top to bottom in the table's order; one ``errorbar`` (gid "forest") with
        x = estimate; a vertical line at 0.
    """
    fe = fit.copy() if isinstance(fit, pd.DataFrame) else fit.fixed_effects
    measure = _fit_measure(fit, measure)
    if not include_intercept:
        fe = fe[fe["term"] != "(Intercept)"]
    if terms is not None:
        unknown = [t for t in terms if t not in set(fe["term"])]
        if unknown:
            raise ValueError(f"unknown term(s) {unknown}; terms are {list(fe['term'])}")
        fe = fe.set_index("term").loc[list(terms)].reset_index()
    fe = fe.reset_index(drop=True)
    ax = _new_ax(ax, figsize or (6.5, 0.45 * len(fe) + 1.4))
    y = np.arange(len(fe))[::-1]
    err = np.vstack([fe["estimate"] - fe["ci_low"], fe["ci_high"] - fe["estimate"]])
    cont = ax.errorbar(fe["estimate"], y, xerr=err, fmt="o", color=COLORS[0], ms=6, capsize=3,
                       lw=1.5)
    _tag(cont, "forest")
    ax.axvline(0, color="black", lw=0.8, ls=":")
    ax.set_yticks(y, [_term_label(t) for t in fe["term"]])
    ax.set_ylim(-0.7, len(fe) - 0.3)
    unit = f" ({get_measure(measure).unit})" if measure else ""
    ax.set_xlabel(f"Estimate{unit} with 95 % CI")
    sns.despine(ax=ax)
    return ax


def _term_label(term: str) -> str:
    """`technique[T.massage]` -> `technique: massage`; interactions joined with ×."""
    parts = []
    for p in str(term).split(":"):
        if "[T." in p and p.endswith("]"):
            var, lev = p[:-1].split("[T.", 1)
            parts.append(f"{var.replace('_', ' ')}: {lev.replace('_', ' ')}")
        else:
            parts.append(p.replace("_", " "))
    return " × ".join(parts)


def caterpillar(fit: Any, *, term: str = "(Intercept)", group: str | None = None,
                level: float = 0.95, ax: Axes | None = None,
                figsize: tuple[float, float] = (7.0, 4.0)) -> Axes:
    """Caterpillar plot of one random effect: conditional modes ± z × conditional SD, ranked.

    Parameters
    ----------
    fit : MixedFit or DataFrame
        A fit, or ``fit.random_effects()`` (group, level, term, estimate, cond_sd).
    term : str
        The random-effect term, e.g. "(Intercept)" or "post".
    group : str, optional
        The grouping factor (default: the first one with *term*).
    level : float
        Interval level (0.95 -> ±1.96 cond_sd).
    ax : Axes, optional
    figsize : tuple

    Returns
    -------
    Axes
        One ``errorbar`` (gid "caterpillar") with a point per level, sorted by estimate; the levels
        are not labelled (they are patient identifiers).
    """
    re = fit.copy() if isinstance(fit, pd.DataFrame) else fit.random_effects()
    sub = re[re["term"] == term]
    if sub.empty:
        raise ValueError(f"no random effect {term!r}; terms are {sorted(set(re['term']))}")
    groups = list(dict.fromkeys(sub["group"]))
    group = group or groups[0]
    if group not in groups:
        raise ValueError(f"no random effect {term!r} for group {group!r}; groups are {groups}")
    sub = sub[sub["group"] == group].sort_values("estimate", kind="stable").reset_index(drop=True)
    z = stats.norm.ppf(0.5 + level / 2)
    ax = _new_ax(ax, figsize)
    x = np.arange(len(sub))
    cont = ax.errorbar(x, sub["estimate"], yerr=z * sub["cond_sd"].to_numpy(), fmt="o", ms=3,
                       color=COLORS[0], ecolor=(*COLORS[0], 0.5), lw=1)
    _tag(cont, "caterpillar")
    ax.axhline(0, color="black", lw=0.8, ls=":")
    ax.set_xticks([])
    noun = "patients" if group == "patient_id" else _pretty(group) + " levels"
    ax.set_xlabel(f"{noun}, ranked (n = {len(sub)})")
    what = "intercept" if term == "(Intercept)" else _term_label(term)
    ax.set_ylabel(f"Random {what}\n(conditional mode ± {z:.2f} SD)")
    sns.despine(ax=ax, bottom=True)
    return ax


def residual_diagnostics(fit: Any, *, term: str = "(Intercept)",
                         figsize: tuple[float, float] = (11.0, 3.6)) -> np.ndarray:
    """Three panels: residuals against fitted values, QQ of residuals, QQ of random effects.

    Parameters
    ----------
    fit : MixedFit
        Needs ``fitted()``, ``residuals()`` and ``random_effects()``.
    term : str
        The random-effect term whose conditional modes go in the third panel (first group).
    figsize : tuple

    Returns
    -------
    ndarray of Axes, shape (3,)
        [fitted vs residual (scatter gid "resid"), QQ residuals (gid "qq"), QQ random effects
        (gid "qq")].
    """
    fitted = np.asarray(fit.fitted(), dtype=float)
    resid = np.asarray(fit.residuals(), dtype=float)
    re = fit.random_effects()
    re = re[re["term"] == term]
    if len(re):
        re = re[re["group"] == re["group"].iloc[0]]
    with sns.axes_style("ticks"):
        fig, axes = plt.subplots(1, 3, figsize=figsize, layout="constrained")
    a0, a1, a2 = axes
    a0.scatter(fitted, resid, s=8, alpha=0.4, color=COLORS[0], lw=0, gid="resid")
    a0.axhline(0, color="black", lw=0.8)
    a0.set_xlabel("fitted value")
    a0.set_ylabel("residual")
    a0.set_title("Residuals vs fitted", fontsize=10)
    _qq(a1, resid, "Normal QQ: residuals")
    if len(re):
        _qq(a2, re["estimate"].to_numpy(dtype=float),
            f"Normal QQ: random {'intercepts' if term == '(Intercept)' else term}")
    else:
        a2.text(0.5, 0.5, f"no random effect {term!r}", ha="center", va="center",
                transform=a2.transAxes)
        a2.set_axis_off()
    for a in axes:
        sns.despine(ax=a)
    return axes


def _qq(ax: Axes, values: np.ndarray, title: str) -> None:
    v = np.sort(values[np.isfinite(values)])
    n = len(v)
    # Blom plotting positions, as R's qqnorm uses ppoints
    a = 3 / 8 if n <= 10 else 0.5
    theo = stats.norm.ppf((np.arange(1, n + 1) - a) / (n + 1 - 2 * a))
    ax.scatter(theo, v, s=8, alpha=0.6, color=COLORS[0], lw=0, gid="qq")
    if n >= 2:
        q1, q3 = np.percentile(v, [25, 75])
        t1, t3 = stats.norm.ppf([0.25, 0.75])
        slope = (q3 - q1) / (t3 - t1)
        xs = np.array([theo[0], theo[-1]])
        ax.plot(xs, q1 + slope * (xs - t1), color=COLORS[1], lw=1.2)  # R's qqline
    ax.set_xlabel("theoretical normal quantile")
    ax.set_ylabel("sample quantile")
    ax.set_title(title, fontsize=10)


# --------------------------------------------------------------------------------------------
# QI charts


def _qi_axis(ax: Axes, labels: Sequence[str], max_ticks: int = 14) -> None:
    n = len(labels)
    step = max(1, int(np.ceil(n / max_ticks)))
    ticks = np.arange(0, n, step)
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=45 if n > 6 else 0,
                  ha="right" if n > 6 else "center")
    ax.set_xlim(-0.5, n - 0.5)


def _mark_signals(ax: Axes, result: Any, rules: Sequence[str]) -> list[Any]:
    """Draw each rule's flagged points with its marker, coloured by assessment; return handles."""
    pts = result.points
    x = np.arange(len(pts))
    colour_of = np.array(["neutral"] * len(pts), dtype=object)
    # the assessment of the signal a point belongs to (first one wins)
    for s in reversed(result.signals):
        if s.rule in rules:
            colour_of[s.start:s.end + 1] = s.assessment
    handles = []
    for rule in rules:
        if rule not in pts.columns:
            continue
        flag = pts[rule].to_numpy(dtype=bool)
        if not flag.any():
            continue
        cols = [ASSESSMENT_COLORS[c] for c in colour_of[flag]]
        ax.scatter(x[flag], pts["value"].to_numpy()[flag], marker=SIGNAL_MARKERS[rule],
                   s=70 if rule != "outside_limits" else 90, c=cols, edgecolors="black",
                   linewidths=0.6, zorder=5 if rule == "outside_limits" else 4,
                   gid=f"signal-{rule}")
        handles.append(Line2D([], [], ls="", marker=SIGNAL_MARKERS[rule], color="white",
                              markeredgecolor="black", ms=8, label=_RULE_LABELS[rule]))
    present = sorted({s.assessment for s in result.signals if s.rule in rules})
    handles += [Patch(color=ASSESSMENT_COLORS[a], label=a) for a in present]
    return handles


def _base_series(ax: Axes, result: Any) -> np.ndarray:
    pts = result.points
    x = np.arange(len(pts))
    ax.plot(x, pts["value"], color=_GREY, lw=1.2, marker="o", ms=4, mfc=_GREY, zorder=2,
            gid="values")
    return x


def run_chart(result: Any, *, ax: Axes | None = None, ylabel: str | None = None,
              title: str | None = None, figsize: tuple[float, float] = (8.0, 4.0)) -> Axes:
    """Draw a run chart from :func:`mfr_outcomes.qi.run_chart` with its signals marked.

    Parameters
    ----------
    result : ChartResult
        ``qi.run_chart(...)``.
    ax : Axes, optional
    ylabel, title : str, optional
        Default: the measure's axis label; a title naming any signal.
    figsize : tuple

    Returns
    -------
    Axes
        Values (gid "values"), the median (gid "centre"), points of an unusually long run
        (scatter gid "signal-longest_run"); too few crossings are written in the title.
    """
    ax = _new_ax(ax, figsize)
    pts = result.points
    x = _base_series(ax, result)
    ax.plot(x, pts["centre"], color="black", lw=1.2, ls="--", gid="centre",
            label=f"median {pts['centre'].iloc[0]:.3g}" if len(pts) else "median")
    handles = [Line2D([], [], color="black", ls="--", label="median")]
    long_flag = pts["in_long_run"].to_numpy(dtype=bool)
    if long_flag.any():
        sig = [s for s in result.signals if s.rule == "longest_run"]
        colour_of = np.array(["neutral"] * len(pts), dtype=object)
        for s in sig:
            colour_of[s.start:s.end + 1] = s.assessment
        ax.scatter(x[long_flag], pts["value"].to_numpy()[long_flag], marker="s", s=70,
                   c=[ASSESSMENT_COLORS[c] for c in colour_of[long_flag]], edgecolors="black",
                   linewidths=0.6, zorder=4, gid="signal-longest_run")
        handles.append(Line2D([], [], ls="", marker="s", color="white", markeredgecolor="black",
                              ms=8, label=_RULE_LABELS["longest_run"]))
        handles += [Patch(color=ASSESSMENT_COLORS[a], label=a)
                    for a in sorted({s.assessment for s in sig})]
    _qi_axis(ax, list(pts["label"]))
    ax.set_ylabel(ylabel or _measure_label(result.measure, "value"))
    st = result.stats
    if title is None:
        if not st.get("runs_applied"):
            title = f"Run chart: rules not applied ({st['n_useful']} useful points)"
        else:
            parts = [f"longest run {st['longest_run']} (limit {st['longest_run_max']})",
                     f"crossings {st['n_crossings']} (minimum {st['n_crossings_min']})"]
            flag = any(s.rule == "crossings" for s in result.signals)
            title = "Run chart: " + ", ".join(parts) + (" — too few crossings" if flag else "")
    ax.set_title(title, fontsize=10)
    ax.legend(handles=handles, frameon=False, fontsize=8, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    sns.despine(ax=ax)
    return ax


# drawn in this order: a point beyond a limit is drawn last, on top of any run it belongs to
_SPC_RULES = ["shift", "trend", "two_of_three", "outside_limits"]


def xmr_chart(result: Any, *, ax: Axes | None = None, moving_range: bool = False,
              ylabel: str | None = None, title: str | None = None,
              figsize: tuple[float, float] = (8.0, 4.0)) -> Axes | np.ndarray:
    """Draw an XmR chart from :func:`mfr_outcomes.qi.xmr_chart` with its signals marked.

    Parameters
    ----------
    result : ChartResult
        ``qi.xmr_chart(...)``.
    ax : Axes, optional
        Axes of the individuals chart (not with ``moving_range=True``).
    moving_range : bool
        Also draw the moving-range chart below; then an array of two Axes is returned.
    ylabel, title : str, optional
    figsize : tuple

    Returns
    -------
    Axes or ndarray of Axes
        Values (gid "values"), mean ("centre"), limits ("ucl", "lcl"), signal markers per rule
        (scatter gid ``signal-<rule>``).
    """
    if moving_range:
        if ax is not None:
            raise ValueError("pass ax only without moving_range=True")
        with sns.axes_style("ticks"):
            fig, axes = plt.subplots(2, 1, figsize=(figsize[0], figsize[1] * 1.6), sharex=True,
                                     height_ratios=[2, 1], layout="constrained")
        ax, mr_ax = axes
    else:
        ax = _new_ax(ax, figsize)
    pts = result.points
    x = _base_series(ax, result)
    ax.plot(x, pts["centre"], color="black", lw=1.2, gid="centre")
    ax.plot(x, pts["ucl"], color=COLORS[3], lw=1, ls="--", gid="ucl")
    ax.plot(x, pts["lcl"], color=COLORS[3], lw=1, ls="--", gid="lcl")
    handles = [Line2D([], [], color="black", label="mean"),
               Line2D([], [], color=COLORS[3], ls="--", label="process limits")]
    handles += _mark_signals(ax, result, _SPC_RULES)
    _qi_axis(ax, list(pts["label"]))
    ax.set_ylabel(ylabel or _measure_label(result.measure, "value"))
    ax.set_title(title or _spc_title("XmR chart", result), fontsize=10)
    ax.legend(handles=handles, frameon=False, fontsize=8, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    sns.despine(ax=ax)
    if not moving_range:
        return ax
    mr_ax.plot(x, pts["mr"], color=_GREY, marker="o", ms=3, lw=1, gid="mr")
    mr_ax.plot(x, pts["mr_centre"], color="black", lw=1)
    mr_ax.plot(x, pts["mr_ucl"], color=COLORS[3], ls="--", lw=1, gid="mr_ucl")
    out = pts["mr_outside_limit"].to_numpy(dtype=bool)
    if out.any():
        mr_ax.scatter(x[out], pts["mr"].to_numpy()[out], marker="X", s=80,
                      color=ASSESSMENT_COLORS["neutral"], edgecolors="black", zorder=4,
                      gid="signal-mr_outside_limit")
    mr_ax.set_ylabel("moving range")
    _qi_axis(mr_ax, list(pts["label"]))
    sns.despine(ax=mr_ax)
    return np.array([ax, mr_ax])


def _spc_title(kind: str, result: Any) -> str:
    n = len(result.signals)
    if not n:
        return f"{kind}: common-cause variation only"
    kinds = sorted({s.assessment for s in result.signals if s.assessment != "neutral"})
    return f"{kind}: {n} signal{'s' if n > 1 else ''}" + (f" ({', '.join(kinds)})" if kinds
                                                          else "")


def p_chart(result: Any, *, ax: Axes | None = None, ylabel: str | None = None,
            title: str | None = None, percent: bool = True,
            figsize: tuple[float, float] = (8.0, 4.0)) -> Axes:
    """Draw a p-chart from :func:`mfr_outcomes.qi.p_chart`: proportions, stepped limits, signals.

    Parameters
    ----------
    result : ChartResult
        ``qi.p_chart(...)``.
    ax : Axes, optional
    ylabel, title : str, optional
    percent : bool
        Label the axis in percent (the data stay proportions).
    figsize : tuple

    Returns
    -------
    Axes
        Values (gid "values"), p̄ ("centre"), stepped limits ("ucl", "lcl"), signal markers.
    """
    ax = _new_ax(ax, figsize)
    pts = result.points
    x = _base_series(ax, result)
    ax.plot(x, pts["centre"], color="black", lw=1.2, gid="centre")
    # limits as a step per subgroup, spanning ±0.5 around its point
    xs = np.column_stack([x - 0.5, x + 0.5]).ravel()
    for name in ("ucl", "lcl"):
        ax.plot(xs, np.repeat(pts[name].to_numpy(dtype=float), 2), color=COLORS[3], lw=1,
                ls="--", gid=name)
    handles = [Line2D([], [], color="black", label="overall proportion"),
               Line2D([], [], color=COLORS[3], ls="--", label="3-sigma limits")]
    handles += _mark_signals(ax, result, _SPC_RULES)
    _qi_axis(ax, list(pts["label"]))
    ax.set_ylim(-0.02, 1.02)
    if percent:
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f} %"))
    ax.set_ylabel(ylabel or "responder rate")
    ax.set_title(title or _spc_title("p-chart", result), fontsize=10)
    ax.legend(handles=handles, frameon=False, fontsize=8, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    sns.despine(ax=ax)
    return ax


# --------------------------------------------------------------------------------------------
# Making Data Count: point colours and icons

#: Point-type colours of Making Data Count (as NHSRplotthedots draws them): grey common cause,
#: blue improvement, orange concern, purple neither.
MDC_COLORS: dict[str, str] = {
    "common_cause": "#7B7D7D", "special_cause_improvement": "#289DE0",
    "special_cause_concern": "#FAB428", "special_cause_neither": "#361475",
}
_ICON_COLOUR = {"common": "#7B7D7D", "improvement": "#289DE0", "concern": "#FAB428",
                "neither": "#361475", "pass": "#289DE0", "fail": "#FAB428",
                "hit": "#7B7D7D"}
_TARGET_COLOUR = "#DE1B1B"
#: spc_chart's margins in inches (left, right, bottom, top): tick labels and the axis label on
#: the left, the legend and the icons on the right, rotated dates below, the title above.
_SPC_MARGINS = (0.9, 2.0, 0.9, 0.4)


def mdc_icon(ax: Axes, icon: str, *, center: tuple[float, float] = (0.5, 0.5),
             radius: float = 0.45, transform: Any = None) -> None:
    """Draw one Making Data Count icon on *ax* (axes-fraction coordinates, or the coordinates
    of *transform*, which should keep circles round).

    Variation icons (``common_cause``, ``improvement_high`` ...) are a circle in the icon's
    colour holding a run of dots (flat for common cause, rising for high, falling for low) and
    the letter H or L; assurance icons (``pass``, ``fail``, ``hit_or_miss``) a circle with P, F
    or ? above a target line. Every artist gets the gid ``icon-<icon>``.
    """
    from matplotlib.patches import Circle

    word = icon.split("_")[0]
    colour = _ICON_COLOUR["hit" if icon == "hit_or_miss" else word]
    cx, cy = center
    kw = {"transform": ax.transAxes if transform is None else transform,
          "gid": f"icon-{icon}", "clip_on": False}
    ax.add_patch(Circle(center, radius, facecolor="white", edgecolor=colour, lw=2.5, **kw))
    xs = cx + radius * np.linspace(-0.55, 0.55, 5)
    if icon in ("pass", "fail", "hit_or_miss"):
        letter = {"pass": "P", "fail": "F", "hit_or_miss": "?"}[icon]
        ax.plot([cx - 0.6 * radius, cx + 0.6 * radius], [cy - 0.35 * radius] * 2, color=colour,
                lw=2, **kw)
        ax.text(cx, cy + 0.15 * radius, letter, ha="center", va="center", color=colour,
                fontsize=11, fontweight="bold", **kw)
        return
    if icon == "common_cause":
        ys = cy + radius * np.array([-0.1, 0.12, -0.08, 0.1, -0.05])
        letter = ""
    else:
        high = icon.endswith("high")
        ys = cy - 0.25 * radius + radius * (np.linspace(-0.2, 0.3, 5) if high
                                            else np.linspace(0.3, -0.2, 5))
        letter = "H" if high else "L"
    ax.plot(xs, ys, color=_ICON_COLOUR["common"], lw=1, **kw)
    ax.scatter(xs, ys, s=9, color=[_ICON_COLOUR["common"]] * 3 + [colour] * 2, zorder=3, **kw)
    if letter:
        ax.text(cx, cy + 0.45 * radius, letter, ha="center", va="center", color=colour,
                fontsize=9, fontweight="bold", **kw)


def _icons(ax: Axes, result: Any) -> None:
    """The chart's variation and assurance icons, top right above the plot."""
    from matplotlib.transforms import Affine2D, ScaledTranslation

    icons = [i for i in (result.variation, result.assurance) if i]
    if not icons:
        return
    # each icon in a square box of 0.08 × 0.2 of the axes (inches, so circles stay round),
    # drawn on the axes itself: no inset axes to lay out and draw
    fig = ax.figure
    pos = ax.get_position()
    w, h = pos.width * fig.get_figwidth(), pos.height * fig.get_figheight()
    side = min(0.08 * w, 0.2 * h)
    for k, icon in enumerate(icons):
        box = (Affine2D().scale(side).translate((0.08 * w - side) / 2, (0.2 * h - side) / 2)
               + fig.dpi_scale_trans + ScaledTranslation(1.02 + 0.09 * k, 0.80, ax.transAxes))
        mdc_icon(ax, icon, transform=box)


def _segment_line(x: np.ndarray, y: np.ndarray,
                  seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y with a gap where a segment starts, so limits are not joined across a declared change."""
    out = np.asarray(y, dtype="float64").copy()
    breaks = np.flatnonzero(np.diff(seg) != 0) + 1
    return np.insert(out, breaks, np.nan), np.insert(x.astype("float64"), breaks, np.nan)


def spc_chart(result: Any, *, ax: Axes | None = None, ylabel: str | None = None,
              title: str | None = None, percent: bool = False,
              shade: tuple[float, float] | None = None,
              figsize: tuple[float, float] = (8.0, 4.0)) -> Axes:
    """A Making Data Count chart of an XmR or p-chart result.

    Points coloured by type (:data:`MDC_COLORS`), the mean and process limits per segment (a
    gap at each declared change), the target (red dashed), shading for the baseline period
    and *shade* (e.g. the report period), annotations, and the variation and assurance icons.

    Returns
    -------
    Axes
        Scatter per point type (gid ``point-<type>``), lines "centre", "ucl", "lcl",
        "target", and the icons (gid ``icon-<name>``).
    """
    if result.kind not in ("xmr", "p"):
        raise ValueError(f"spc_chart draws XmR and p-charts, not {result.kind!r}")
    if ax is None:   # fixed margins (inches) for the legend and icons on the right: constrained
        with sns.axes_style("ticks"):   # layout measured every text twice, a third of a PNG
            fig, ax = plt.subplots(figsize=figsize)
        w, h = figsize
        fig.subplots_adjust(left=_SPC_MARGINS[0] / w, right=1 - _SPC_MARGINS[1] / w,
                            bottom=_SPC_MARGINS[2] / h, top=1 - _SPC_MARGINS[3] / h)
    pts = result.points
    x = np.arange(len(pts), dtype="float64")
    seg = pts["segment"].to_numpy() if "segment" in pts else np.zeros(len(pts), dtype=int)
    y = pts["value"].to_numpy(dtype="float64")
    ax.plot(x, y, color=MDC_COLORS["common_cause"], lw=1.2, zorder=2, gid="values")
    types = pts["point_type"].to_numpy() if "point_type" in pts else \
        np.array(["common_cause"] * len(pts))
    for kind, colour in MDC_COLORS.items():
        m = (types == kind) & np.isfinite(y)
        if m.any():
            ax.scatter(x[m], y[m], s=34, color=colour, edgecolors="white", linewidths=0.5,
                       zorder=4, gid=f"point-{kind}",
                       label=kind.replace("special_cause_", "special cause: ").replace("_", " "))
    yy, xx = _segment_line(x, pts["centre"].to_numpy(), seg)
    ax.plot(xx, yy, color="black", lw=1.1, gid="centre", label="mean")
    for name in ("ucl", "lcl"):
        if result.kind == "p":
            xs = np.column_stack([x - 0.5, x + 0.5]).ravel()
            ax.plot(xs, np.repeat(pts[name].to_numpy(dtype=float), 2), color="#5B5B5B",
                    lw=0.9, ls="--", gid=name, label="process limits" if name == "ucl" else None)
        else:
            yy, xx = _segment_line(x, pts[name].to_numpy(), seg)
            ax.plot(xx, yy, color="#5B5B5B", lw=0.9, ls="--", gid=name,
                    label="process limits" if name == "ucl" else None)
    if result.target is not None:
        ax.axhline(result.target, color=_TARGET_COLOUR, lw=1.1, ls=(0, (4, 2)), gid="target",
                   label=f"target {result.target:g}")
    if "baseline" in pts:  # shade a declared baseline: the points that alone set their limits
        base = pts["baseline"].to_numpy(dtype=bool)
        labelled = False
        for s in np.unique(seg):
            inside = seg == s
            if base[inside].all():
                continue
            b = np.flatnonzero(base & inside)
            ax.axvspan(b[0] - 0.5, b[-1] + 0.5, color="#E8EEF4", zorder=0,
                       label=None if labelled else "baseline")
            labelled = True
    if shade is not None:
        ax.axvspan(*shade, color="#FFF3C4", zorder=0, label="report period")
    for pos, text in result.annotations:
        ax.axvline(pos - 0.5, color="#444444", lw=0.8, ls=":", gid="annotation")
        ax.annotate(text, (pos - 0.5, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -2), textcoords="offset points", va="top", fontsize=7,
                    color="#444444")
    _qi_axis(ax, list(pts["label"]))
    if percent:
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f} %"))
    ax.set_ylabel(ylabel or _measure_label(result.measure, "value"))
    # an explicit y (where matplotlib puts it: no ticks on top) spares the title's automatic
    # placement, which measures every tick label of every axes at each draw
    ax.set_title(title or _spc_title("XmR chart" if result.kind == "xmr" else "p-chart", result),
                 fontsize=10, y=1.0)
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.78))
    _icons(ax, result)
    sns.despine(ax=ax)
    return ax


# --------------------------------------------------------------------------------------------
# funnel plots and named comparisons


def funnel(frame: pd.DataFrame, *, ax: Axes | None = None, xlabel: str = "number of patients",
           ylabel: str | None = None, title: str | None = None, percent: bool | None = None,
           figsize: tuple[float, float] = (7.0, 4.2)) -> Axes:
    """Funnel plot of :func:`mfr_outcomes.funnel.funnel_proportions` or ``funnel_means``.

    Units are points labelled with their name (pass pseudonyms, never identifiers of people);
    the network value is a line and the 95 % and 99.8 % limits are curves over the range of
    sizes.

    Returns
    -------
    Axes
        Scatter gid "units", line "target", curves "limit-95" and "limit-99.8".
    """
    from mfr_outcomes import funnel as fn

    kind = frame.attrs.get("kind", "proportion")
    percent = (kind == "proportion") if percent is None else percent
    ax = _new_ax(ax, figsize)
    target = float(frame["target"].iloc[0])
    n_max = max(float(frame["n"].max()) * 1.1, 5.0)
    # binomial limits exist at whole denominators only
    grid = (np.arange(1, int(np.ceil(n_max)) + 1, dtype=float) if kind == "proportion"
            else np.linspace(1, n_max, 200))
    for level, style in zip(fn.LEVELS, ("--", ":")):
        lo_p, hi_p = (1 - level) / 2, 1 - (1 - level) / 2
        if kind == "proportion":
            lo, hi = (fn.binomial_limits(grid, target, p) for p in (lo_p, hi_p))
        else:
            sd = float(frame["sd"].iloc[0])
            lo, hi = (fn.normal_limits(grid, target, sd, p) for p in (lo_p, hi_p))
        tag = f"limit-{level * 100:g}"
        ax.plot(grid, hi, color="#5B5B5B", ls=style, lw=1, gid=tag,
                label=f"{level * 100:g} % limits")
        ax.plot(grid, lo, color="#5B5B5B", ls=style, lw=1, gid=tag)
    ax.axhline(target, color="black", lw=1, gid="target", label="network")
    colours = [MDC_COLORS["common_cause"] if p.startswith("within") else
               (MDC_COLORS["special_cause_neither"] if "99.8" in p else COLORS[1])
               for p in frame["position"]]
    ax.scatter(frame["n"], frame["value"], s=40, color=colours, edgecolors="black",
               linewidths=0.5, zorder=4, gid="units")
    if percent:
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f} %"))
    ax.set_xlim(0, n_max)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or ("proportion" if kind == "proportion" else "mean"))
    if title:
        ax.set_title(title, fontsize=10)
    sns.despine(ax=ax)
    label_points(ax, frame["n"], frame["value"], frame["unit"])
    ax.legend(frameon=False, fontsize=7, loc="best")
    return ax


# label positions around a point, in points: (dx, dy, ha, va); the last ones further out, with a
# leader line back to the point
_LABEL_SPOTS = [(5, 2, "left", "bottom"), (5, -2, "left", "top"), (-5, 2, "right", "bottom"),
                (-5, -2, "right", "top")] + [
    (dx, sign * (2 + 9 * k), ha, va) for k in range(1, 6) for sign, va in ((1, "bottom"), (-1, "top"))
    for dx, ha in ((8, "left"), (-8, "right"))]


def label_points(ax: Axes, xs: Sequence[float], ys: Sequence[float], names: Sequence[Any], *,
                 fontsize: float = 7, marker_radius: float = 4.0) -> list:
    """Name each point of a scatter without two names on top of each other.

    Points at the same place share one label ("Therapist D, Therapist E"). Labels are placed from
    the highest point down; each takes the first spot around its point (right, left, then further
    up or down with a leader line) whose box meets no label placed before, no other point and stays
    inside the axes; when no spot is free, the one that covers least (inside the axes first).
    Returns the annotations.
    """
    groups: dict[tuple[float, float], list[str]] = {}
    for x, y, nm in zip(xs, ys, names):
        groups.setdefault((float(x), float(y)), []).append(str(nm))
    if not groups:
        return []
    fig = ax.figure
    fig.draw_without_rendering()  # settle the layout: positions are measured on screen
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    keys = list(groups)
    px = ax.transData.transform(np.asarray(keys, dtype=float))
    r = marker_radius * fig.dpi / 72
    dots = [Bbox.from_extents(a - r, b - r, a + r, b + r) for a, b in px]
    placed: list[Bbox] = []
    out = []

    def put(text: str, at: tuple[float, float], spot: tuple, leader: bool) -> Any:
        dx, dy, ha, va = spot
        line = dict(arrowstyle="-", lw=0.5, color="#5B5B5B", shrinkA=0, shrinkB=marker_radius)
        ann = ax.annotate(text, at, xytext=(dx, dy), textcoords="offset points",
                          fontsize=fontsize, ha=ha, va=va, annotation_clip=False,
                          arrowprops=line if leader and abs(dy) > 2 else None)
        ann.set_in_layout(False)
        return ann

    def clash(box: Bbox, i: int) -> float:
        """Area this box covers of other labels and points; anything outside the axes is worse."""
        area = sum(_overlap(box, b) for b in placed)
        area += sum(_overlap(box, d) for j, d in enumerate(dots) if j != i)
        outside = box.width * box.height - _overlap(box, inside)
        return area + 100 * outside

    for i in np.argsort(-px[:, 1], kind="stable"):
        text = ", ".join(groups[keys[i]])
        best = None
        for spot in _LABEL_SPOTS:
            ann = put(text, keys[i], spot, leader=False)  # measure the words, not the line
            box = ann.get_window_extent(renderer)
            cost = clash(box, i)
            ann.remove()
            if best is None or cost < best[0]:
                best = (cost, spot)
            if cost == 0:
                break
        ann = put(text, keys[i], best[1], leader=False)
        placed.append(ann.get_window_extent(renderer))
        ann.remove()
        ann = put(text, keys[i], best[1], leader=True)
        out.append(ann)
    return out


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def named_caterpillar(effects: pd.DataFrame, *, ax: Axes | None = None, level: float = 0.95,
                      xlabel: str = "random effect", title: str | None = None,
                      figsize: tuple[float, float] | None = None) -> Axes:
    """Caterpillar of a few named random effects (therapists, sites), one row each.

    Parameters
    ----------
    effects : DataFrame
        Columns name (shown: pass pseudonyms), estimate, cond_sd — rows of
        ``fit.random_effects()`` for one group and term, renamed by the caller.

    Returns
    -------
    Axes
        One errorbar (gid "caterpillar") with a row per name, sorted by estimate.
    """
    sub = effects.sort_values("estimate", kind="stable").reset_index(drop=True)
    z = stats.norm.ppf(0.5 + level / 2)
    ax = _new_ax(ax, figsize or (6.5, 0.35 * len(sub) + 1.3))
    y = np.arange(len(sub))
    cont = ax.errorbar(sub["estimate"], y, xerr=z * sub["cond_sd"].to_numpy(), fmt="o",
                       color=COLORS[0], capsize=3, lw=1.2)
    _tag(cont, "caterpillar")
    ax.set_yticks(y, [str(n) for n in sub["name"]])
    ax.axvline(0, color="black", lw=0.8, ls=":")
    ax.set_xlabel(f"{xlabel} (conditional mode ± {z:.2f} SD)")
    if title:
        ax.set_title(title, fontsize=10)
    sns.despine(ax=ax)
    return ax


def count_bars(table: pd.DataFrame, label: str, count: str, *, ax: Axes | None = None,
               xlabel: str = "count", title: str | None = None) -> Axes:
    """Horizontal bars of published counts (rows already suppressed are left out by the
    caller), each bar labelled with its count. Bars have gid "bars"."""
    ax = _new_ax(ax, (7.5, 0.5 + 0.45 * max(len(table), 1)))
    bars = ax.barh([str(v) for v in table[label]], table[count].astype(float), color=COLORS[0])
    for b in bars:
        b.set_gid("bars")
    ax.invert_yaxis()
    for yv, v in enumerate(table[count]):
        ax.annotate(str(int(v)), (float(v), yv), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=10)
    sns.despine(ax=ax)
    return ax


def course_curves(observed: pd.DataFrame, curves: pd.DataFrame, *, measure: str | None = None,
                  ax: Axes | None = None, title: str | None = None,
                  figsize: tuple[float, float] = (7.5, 4.0)) -> Axes:
    """The course of care: observed means and the model curves (straight line, flexible).

    Parameters
    ----------
    observed : DataFrame
        time, mean[, group] — raw means of published points.
    curves : DataFrame
        time, estimate, model ("straight line" or "flexible curve")[, group].

    Returns
    -------
    Axes
        Points gid "observed", lines gid "curve-<model>".
    """
    ax = _new_ax(ax, figsize)
    groups = list(dict.fromkeys(observed["group"])) if "group" in observed else [None]
    for k, g in enumerate(groups):
        colour = COLORS[k % len(COLORS)]
        obs = observed if g is None else observed[observed["group"] == g]
        ax.scatter(obs["time"], obs["mean"], color=colour, s=22, zorder=3, gid="observed",
                   label=f"observed mean{'' if g is None else f' ({g})'}")
        cur = curves if g is None else curves[curves["group"] == g]
        for model, style in (("straight line", "--"), ("flexible curve", "-")):
            c = cur[cur["model"] == model]
            if len(c):
                ax.plot(c["time"], c["estimate"], color=colour, ls=style, lw=1.6,
                        gid=f"curve-{model.replace(' ', '_')}",
                        label=f"{model}{'' if g is None else f' ({g})'}")
    ax.set_xlabel("weeks since first visit")
    ax.set_ylabel(_measure_label(measure, "value") + "\nbefore sessions")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    sns.despine(ax=ax)
    return ax
