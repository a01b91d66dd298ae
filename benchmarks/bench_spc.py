"""Statistical process control side by side: mfr_outcomes against abspc and clinical-qikit.

1. Agreement. The same series (NHSRplotthedots' documented examples, as in tests/test_mdc.py; a
   seeded series with a shift, a trend and an outlier; a rebase; a frozen baseline; two edge
   cases of trend colouring) go through ``mfr_outcomes.qi.xmr_chart``, abspc (its public
   pipeline: ``calculate_control_limits`` -> ``detect_special_causes`` ->
   ``determine_point_colours`` / ``determine_variation_type`` / ``determine_assurance_type``,
   what ``plot_spc_chart`` runs) and qikit (``qic(chart="i")`` with its IHI and WECO rule
   sets, the nearest it has to Making Data Count). Each is compared with an independent
   implementation of the Making Data Count rules written here from their statement (the
   "MDC rulebook" below): process limits mean ± 2.66 × mean moving range (moving ranges of
   3.267 × their mean or more screened out, NHSRplotthedots' default); a point beyond a limit;
   7 points in a row on one side of the mean; 7 points in a row each higher (lower) than the
   one before; 2 of 3 points beyond 2/3 of the way to a limit, all three on one side; a point
   judged by its side of the mean, except a point of a trend (and not beyond a limit), judged
   by the trend's direction (NHSRplotthedots since its pull request #180, as the NHS England
   Excel tool); the variation icon from the latest point; the assurance icon from the target
   against the latest limits.
2. Features (a fixed table from reading the three packages' sources).
3. Speed: one chart of 60 points; 1,000 charts of 60 points (one per therapist series); one
   series of 100,000 points; compute only and with a PNG render, best of --reps, one run.

    uv run --locked --group bench python benchmarks/bench_spc.py --out benchmarks/results

Only ratios measured in the same run mean anything on a shared machine.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------------------------
# series

# NHSRplotthedots' examples, drawn in R (set.seed(123); rnorm(24), then rnorm(12, 5) or
# rnorm(12, -5) for points 13 to 24): one copy, in tests/test_mdc.py
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_mdc import HIGH_12, LOW_12, RNORM_24  # noqa: E402


@dataclass
class Case:
    name: str
    y: np.ndarray
    better: str
    target: float | None = None
    rebase: list[int] = field(default_factory=list)   # 0-based first positions of new segments
    freeze: int | None = None                          # first k points of the segment set limits
    documented: str = ""                               # what NHSRplotthedots documents


def seeded_series(seed: int) -> np.ndarray:
    """60 monthly values (mean 50, SD 2): a shift of +4 for 7 points from point 21, a rising
    trend of 6 points from point 38 and one outlier (+14) at point 55: each pattern exactly as
    long as the shortest rule in one of the rule sets compared."""
    rng = np.random.default_rng(seed)
    y = rng.normal(50.0, 2.0, 60)
    y[20:27] = 54.0 + np.abs(rng.normal(0, 1.0, 7))
    y[19] = y[27] = 47.0          # the shift is exactly 7 points long
    y[37:43] = 46.0 + 1.2 * np.arange(6) + rng.normal(0, 0.1, 6)
    y[36], y[43] = 50.0, 45.0     # the trend is exactly 6 points long
    y[54] = 64.0
    return y


def cases(seed: int = 2026) -> list[Case]:
    rng = np.random.default_rng(seed + 1)
    rebased = np.concatenate([rng.normal(50, 2, 24), rng.normal(44, 2, 24)])
    rng = np.random.default_rng(seed + 2)
    frozen = np.concatenate([rng.normal(50, 2, 15), rng.normal(50, 2, 15), rng.normal(47, 2, 18)])
    # a high outlier that starts a falling trend; higher is better
    outlier_trend = np.array(RNORM_24[:16] + [6.0, 1.2, 0.9, 0.5, 0.2, -0.1, -0.4]
                             + RNORM_24[16:20])
    # the series ends with a rising trend that stays below the mean; higher is better
    rising_low = np.array([5.0, 6.1, 4.8, 5.6, 5.3, 6.0, 5.2, 5.9, 4.9, 5.5, 6.2, 5.1, 5.8,
                           5.4, 6.0, 5.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
    return [
        Case("ptd_spc snapshot: rnorm(20)", np.array(RNORM_24[:20]), "higher", None,
             documented="mean 0.142, limits -3.01 to 3.29, 20 common cause"),
        Case("geom_ptd_icon s2: rnorm(24), target 0.5", np.array(RNORM_24), "higher", 0.5,
             documented="common_cause, hit_or_miss"),
        Case("geom_ptd_icon s5: +5 shift, higher, target -3", np.array(RNORM_24[:12] + HIGH_12),
             "higher", -3.0, documented="improvement_high, pass"),
        Case("geom_ptd_icon s6: +5 shift, lower, target -3", np.array(RNORM_24[:12] + HIGH_12),
             "lower", -3.0, documented="concern_high, fail"),
        Case("geom_ptd_icon s7: -5 shift, higher, target 3", np.array(RNORM_24[:12] + LOW_12),
             "higher", 3.0, documented="concern_low, fail"),
        Case("geom_ptd_icon s8: -5 shift, lower, target 3", np.array(RNORM_24[:12] + LOW_12),
             "lower", 3.0, documented="improvement_low, pass"),
        Case(f"seeded ({seed}): shift, trend, outlier; lower", seeded_series(seed), "lower", 48.0),
        Case("rebase at point 25 (mean 50 -> 44); lower", rebased, "lower", 45.0, rebase=[24]),
        Case("frozen baseline: first 15 points; lower", frozen, "lower", 45.0, freeze=15),
        Case("edge: outlier starts a falling trend; higher", outlier_trend, "higher"),
        Case("edge: ends in a rising trend below the mean; higher", rising_low, "higher"),
    ]


# --------------------------------------------------------------------------------------------
# the MDC rulebook (independent of mfr_outcomes.qi/mdc, written from the rules' statement)

LIMIT, MR_SCREEN = 2.66, 3.267


def _windows(mask: np.ndarray, k: int) -> np.ndarray:
    """Points inside some window of k consecutive True."""
    n = len(mask)
    out = np.zeros(n, dtype=bool)
    for i in range(n - k + 1):
        if mask[i:i + k].all():
            out[i:i + k] = True
    return out


def rulebook(case: Case) -> dict:
    y, n = case.y, len(case.y)
    seg = np.zeros(n, dtype=int)
    for r in case.rebase:
        seg[r:] += 1
    res = {k: np.full(n, np.nan) for k in ("centre", "lcl", "ucl")}
    rules = {k: np.zeros(n, dtype=bool) for k in ("outside", "shift", "trend", "two3")}
    direction = np.zeros(n)
    for s in np.unique(seg):
        idx = np.flatnonzero(seg == s)
        ys = y[idx]
        base = ys[:case.freeze] if case.freeze else ys
        mean = base.mean()
        mr = np.abs(np.diff(base))
        mr = mr[mr < MR_SCREEN * mr.mean()]
        half = LIMIT * mr.mean()
        res["centre"][idx], res["lcl"][idx], res["ucl"][idx] = mean, mean - half, mean + half
        side = np.sign(ys - mean)
        out = (ys > mean + half) | (ys < mean - half)
        close = ~out & (np.abs(ys - mean) > 2 / 3 * half)
        shift = _windows(side == 1, 7) | _windows(side == -1, 7)
        steps = np.sign(np.diff(ys))
        up = np.zeros(len(ys), dtype=bool)
        down = np.zeros(len(ys), dtype=bool)
        for i in range(len(ys) - 6):
            if (steps[i:i + 6] > 0).all():
                up[i:i + 7] = True
            if (steps[i:i + 6] < 0).all():
                down[i:i + 7] = True
        two3 = np.zeros(len(ys), dtype=bool)
        for i in range(len(ys) - 2):
            w = slice(i, i + 3)
            if close[w].sum() >= 2 and abs(side[w].sum()) == 3:
                two3[w] |= close[w]
        d = side.copy()
        # a trend point takes the trend's direction (at a peak, where it belongs to both, the
        # step to its right, as NHSRplotthedots does)
        for i in range(len(ys)):
            if up[i] or down[i]:
                right = i + 1 < len(ys) and (up[i + 1] or down[i + 1]) and (
                    (up[i] and up[i + 1]) or (down[i] and down[i + 1]))
                d[i] = steps[i] if right else (steps[i - 1] if i else steps[0])
        d = np.where(out, side, d)   # beyond a limit: its side first
        for k, v in (("outside", out), ("shift", shift), ("trend", up | down), ("two3", two3)):
            rules[k][idx] = v
        direction[idx] = d
    special = rules["outside"] | rules["shift"] | rules["trend"] | rules["two3"]
    good = 1 if case.better == "higher" else -1
    types = np.where(~special, "common_cause",
                     np.where(direction * good > 0, "special_cause_improvement",
                              "special_cause_concern")).astype(object)
    last = types[-1]
    if last == "common_cause":
        variation = "common_cause"
    elif last == "special_cause_improvement":
        variation = "improvement_" + ("high" if good > 0 else "low")
    else:
        variation = "concern_" + ("low" if good > 0 else "high")
    assurance = None
    if case.target is not None:
        t, lo, hi = case.target, res["lcl"][-1], res["ucl"][-1]
        assurance = ("fail" if good > 0 else "pass") if t > hi else (
            ("pass" if good > 0 else "fail") if t < lo else "hit_or_miss")
    return {**res, "special": special, "types": types, "variation": variation,
            "assurance": assurance, "rules": rules}


# --------------------------------------------------------------------------------------------
# the three packages


def run_ours(case: Case) -> dict:
    from mfr_outcomes import qi
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = qi.xmr_chart(case.y, better=case.better, target=case.target,
                         rebase=case.rebase or None, freeze=case.freeze,
                         screen_moving_ranges=True)
    p = r.points
    return {"centre": p["centre"].to_numpy(float), "lcl": p["lcl"].to_numpy(float),
            "ucl": p["ucl"].to_numpy(float), "special": p["signal"].to_numpy(bool),
            "types": p["point_type"].to_numpy(object), "variation": r.variation,
            "assurance": r.assurance}


_ABSPC_TYPE = {"#005EB8": "special_cause_improvement", "#ED8B00": "special_cause_concern",
               "#768692": "common_cause"}


def _abspc_segment(y: np.ndarray, freeze: int | None) -> pd.DataFrame:
    import abspc
    df = pd.DataFrame({"value": y})
    if freeze:   # abspc has no frozen baseline: limits of the first points, set by hand
        base = abspc.calculate_control_limits(df.iloc[:freeze].reset_index(drop=True), "XmR")
        for c in ("mean", "ucl", "lcl", "uwl", "lwl"):
            df[c] = float(base[c].iloc[0])
        res = df
    else:
        res = abspc.calculate_control_limits(df, "XmR")
    return abspc.detect_special_causes(res)


def run_abspc(case: Case) -> dict:
    """abspc's pipeline; a declared rebase (which abspc lacks: it only rebases automatically
    on a detected shift) is emulated by charting each segment separately."""
    import abspc
    cuts = [0, *case.rebase, len(case.y)]
    res = pd.concat([_abspc_segment(case.y[a:b], case.freeze) for a, b in zip(cuts, cuts[1:])],
                    ignore_index=True)
    direction = "high" if case.better == "higher" else "low"
    colours = []
    for a, b in zip(cuts, cuts[1:]):
        colours += abspc.determine_point_colours(res.iloc[a:b].reset_index(drop=True),
                                                 improvement_direction=direction,
                                                 target=case.target)
    variation = abspc.determine_variation_type(res, improvement_direction=direction)
    assurance = abspc.determine_assurance_type(res, case.target, improvement_direction=direction)
    return {"centre": res["mean"].to_numpy(float), "lcl": res["lcl"].to_numpy(float),
            "ucl": res["ucl"].to_numpy(float), "special": res["special_cause"].to_numpy(bool),
            "types": np.array([_ABSPC_TYPE[c] for c in colours], dtype=object),
            "variation": variation, "assurance": None if assurance == "no_target" else assurance,
            "rule3": res["rule3"].to_numpy(bool), "rule2": res["rule2"].to_numpy(bool)}


def run_qikit(case: Case, method: str) -> dict:
    from qikit import qic
    kw = {}
    if case.rebase:
        kw["part"] = [r + 1 for r in case.rebase]
    if case.freeze:
        kw["freeze"] = case.freeze
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = qic(y=case.y, chart="i", method=method, **kw)
    d = r.data
    return {"centre": d["cl"].to_numpy(float), "lcl": d["lcl"].to_numpy(float),
            "ucl": d["ucl"].to_numpy(float),
            "special": (d["sigma_signal"] | d["runs_signal"]).to_numpy(bool),
            "types": None, "variation": None, "assurance": None}


# --------------------------------------------------------------------------------------------
# agreement


def _monotone_run(y: np.ndarray, i: int, k: int) -> bool:
    """Point i lies in k points in a row each higher (or each lower) than the one before."""
    steps = np.sign(np.diff(y))
    for a in range(max(0, i - k + 1), min(i, len(y) - k) + 1):
        s = steps[a:a + k - 1]
        if (s > 0).all() or (s < 0).all():
            return True
    return False


def explain_flag(tool: str, case: Case, i: int, got: dict, ref: dict) -> tuple[str, str]:
    """Why a tool's special-cause flag of point i differs from the rulebook, and who is right."""
    rr = ref["rules"]
    y = case.y
    beyond_tool = y[i] > got["ucl"][i] or y[i] < got["lcl"][i]
    if got["special"][i] and not ref["special"][i]:
        if tool == "abspc" and got.get("rule3", np.zeros(1, bool))[i] or \
                tool.startswith("qikit (ihi") and _monotone_run(y, i, 6):
            return ("a 6-point trend (the IHI run-chart rule); Making Data Count asks for 7 points "
                    "each higher (lower) than the one before (NHSRplotthedots "
                    "ptd_seven_point_trend)", "MDC rulebook")
        if beyond_tool:
            return (f"beyond the tool's limits ({got['lcl'][i]:.4g} to {got['ucl'][i]:.4g}) but "
                    f"inside mean ± 2.66 × mean MR ({ref['lcl'][i]:.4g} to {ref['ucl'][i]:.4g})",
                    "MDC rulebook")
        if tool.startswith("qikit (weco"):
            return ("WECO zone rules (2 of 3 beyond 2σ counted on one side only, 4 of 5 beyond "
                    "1σ, 8 on one side): not the MDC rule set", "MDC rulebook")
        return ("flagged by a rule Making Data Count does not use", "MDC rulebook")
    if rr["outside"][i] and not beyond_tool:
        return (f"beyond mean ± 2.66 × mean MR ({ref['lcl'][i]:.4g} to {ref['ucl'][i]:.4g}); "
                f"inside the tool's limits ({got['lcl'][i]:.4g} to {got['ucl'][i]:.4g})",
                "MDC rulebook")
    if rr["shift"][i]:
        return ("part of 7 points in a row on one side of the mean (MDC shift; NHSRplotthedots "
                "ptd_seven_point_one_side_mean); the tool needs 8 (IHI)", "MDC rulebook")
    if rr["trend"][i]:
        return ("part of a 7-point trend (MDC)", "MDC rulebook")
    if rr["two3"][i]:
        return ("2 of 3 points beyond 2/3 of the way to a limit, all on one side (MDC "
                "ptd_two_in_three); the tool's rule set has no such rule", "MDC rulebook")
    return ("other", "?")


def explain_type(tool: str, case: Case, i: int, got: dict, ref: dict) -> tuple[str, str]:
    rr = ref["rules"]
    if tool == "abspc" and case.target is not None:
        return ("abspc colours a special-cause point as improvement when it sits on the good "
                "side of the target, whatever its side of the mean (not an MDC rule)",
                "MDC rulebook")
    beyond_tool = case.y[i] > got["ucl"][i] or case.y[i] < got["lcl"][i]
    if rr["outside"][i] and rr["trend"][i] and beyond_tool:
        return ("beyond a limit and part of a trend the other way: MDC judges a point beyond a "
                "limit by its side first (NHSRplotthedots ptd_special_cause_type, since PR "
                "#180), the tool by the trend's direction", "MDC rulebook")
    if rr["outside"][i] and rr["trend"][i]:
        return (f"beyond the MDC limits but inside the tool's ({got['lcl'][i]:.4g} to "
                f"{got['ucl'][i]:.4g}), so the tool judges it as a trend point", "MDC rulebook")
    if rr["trend"][i]:
        return ("a trend point on the other side of the mean: MDC judges it by the trend's "
                "direction (NHSRplotthedots PR #180, NHS England Excel tool); the tool by its "
                "side of the mean", "MDC rulebook")
    return ("the flag differs (see the flags)", "MDC rulebook")


def explain_icon(tool: str, kind: str, got: str | None, ref: str | None) -> str:
    if kind == "variation" and tool == "abspc":
        return ("abspc takes the latest special-cause point anywhere in the series; MDC the "
                "latest point (NHSRplotthedots geom_ptd_icon: x == max(x))")
    if kind == "variation" and tool == "ours":
        return ("ours names high/low by the latest point's side of the mean; MDC by the "
                "direction of its special cause (a rising trend is improvement_high when higher "
                "is better, wherever it lies)")
    if kind == "assurance":
        return "the latest limits differ (see the limits)"
    return ""


TOOLS = ("ours", "abspc", "qikit (ihi)", "qikit (weco)")


def agreement(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    summary, details, documented = [], [], []
    for case in cases(seed):
        ref = rulebook(case)
        runs = {"ours": run_ours(case), "abspc": run_abspc(case),
                "qikit (ihi)": run_qikit(case, "ihi"), "qikit (weco)": run_qikit(case, "weco")}
        if case.documented:
            o = runs["ours"]
            documented.append(
                f"| {case.name} | {case.documented} | mean {o['centre'][-1]:.3f}, limits "
                f"{o['lcl'][-1]:.2f} to {o['ucl'][-1]:.2f}, "
                f"{int((o['types'] == 'common_cause').sum())} common cause; {o['variation']}, "
                f"{o['assurance']} |")
        for tool, got in runs.items():
            flag_diff = np.flatnonzero(got["special"] != ref["special"])
            type_diff = (np.flatnonzero(got["types"] != ref["types"])
                         if got["types"] is not None else np.array([], dtype=int))
            type_diff = np.setdiff1d(type_diff, flag_diff)
            row = {"series": case.name, "tool": tool,
                   "max |Δ centre|": float(np.nanmax(np.abs(got["centre"] - ref["centre"]))),
                   "max |Δ UCL|": float(np.nanmax(np.abs(got["ucl"] - ref["ucl"]))),
                   "max |Δ LCL|": float(np.nanmax(np.abs(got["lcl"] - ref["lcl"]))),
                   "points flagged (rulebook)": f"{int(got['special'].sum())} "
                                                f"({int(ref['special'].sum())})",
                   "flags differ": len(flag_diff),
                   "types differ": "–" if got["types"] is None else len(type_diff),
                   "variation (rulebook)": "–" if got["variation"] is None and tool != "ours"
                   else f"{got['variation']} ({ref['variation']})",
                   "assurance (rulebook)": "–" if tool.startswith("qikit")
                   else f"{got['assurance']} ({ref['assurance']})"}
            summary.append(row)
            groups: dict[tuple[str, str, str], list[int]] = {}
            for i in flag_diff:
                why, right = explain_flag(tool, case, int(i), got, ref)
                said = "special" if got["special"][i] else "common"
                groups.setdefault(("flag", f"{said} cause", why + "|" + right), []).append(int(i))
            for i in type_diff:
                why, right = explain_type(tool, case, int(i), got, ref)
                groups.setdefault(("point type", f"{got['types'][i]} (MDC "
                                   f"{ref['types'][i]})", why + "|" + right), []).append(int(i))
            for (what, said, why), pts in groups.items():
                why, right = why.split("|")
                details.append({"series": case.name, "tool": tool, "what": what,
                                "points": _ranges(pts), "tool says": said, "why": why,
                                "right by MDC": "rulebook" if right else "?"})
            for kind in ("variation", "assurance"):
                if got[kind] is not None and got[kind] != ref[kind]:
                    details.append({"series": case.name, "tool": tool, "what": f"{kind} icon",
                                    "points": "latest", "tool says": f"{got[kind]} (MDC "
                                                                     f"{ref[kind]})",
                                    "why": explain_icon(tool, kind, got[kind], ref[kind]),
                                    "right by MDC": "rulebook"})
    return pd.DataFrame(summary), pd.DataFrame(details), documented


def _ranges(pts: list[int]) -> str:
    """1-based point numbers, runs collapsed: 3-9, 12."""
    out, start, prev = [], None, None
    for p in sorted(pts):
        if start is None:
            start = prev = p
        elif p == prev + 1:
            prev = p
        else:
            out.append(f"{start + 1}" if start == prev else f"{start + 1}-{prev + 1}")
            start = prev = p
    if start is not None:
        out.append(f"{start + 1}" if start == prev else f"{start + 1}-{prev + 1}")
    return ", ".join(out)


def run_chart_limits(max_n: int = 60) -> pd.DataFrame:
    """Where the run-chart limits of ours (= qicharts2's runs.analysis: a longest run above
    round(log2 n) + 3 signals, fewer crossings than qbinom(0.05, n - 1, 0.5)) and qikit's
    (its summary's run_threshold, crossings_threshold) differ, n the useful observations."""
    from qikit import qic

    from mfr_outcomes import qi
    rows = []
    rng = np.random.default_rng(0)
    for n in range(10, max_n + 1, 2):   # even n: the median lies between two points
        s = qic(y=rng.normal(0, 1, n), chart="run").summary
        lr_max, cr_min = qi.runs_limits(s["n_useful"])
        ours_run, ours_cross = lr_max + 1, cr_min - 1
        if (ours_run, ours_cross) != (s["run_threshold"], s["crossings_threshold"]):
            rows.append({"useful points": s["n_useful"],
                         "longest run that signals: ours = qicharts2": f"≥ {ours_run}",
                         "qikit": f"≥ {s['run_threshold']}",
                         "crossings that signal: ours = qicharts2": f"≤ {ours_cross}",
                         "qikit ": f"≤ {s['crossings_threshold']}"})
    return pd.DataFrame(rows)


def funnel_and_p_agreement(seed: int) -> pd.DataFrame:
    """Exact binomial funnel limits (ours ``funnel.funnel_proportions`` against qikit's
    ``qic(chart="p", funnel=True)``) and p-chart limits (ours ``qi.p_chart`` against abspc's
    and qikit's p charts), largest absolute differences."""
    import abspc
    from qikit import qic

    from mfr_outcomes import funnel, qi
    rng = np.random.default_rng(seed)
    n = np.array([3, 5, 8, 12, 20, 35, 50, 80, 120, 200, 400, 1000])
    x = rng.binomial(n, 0.35)
    units = [f"t{i:02d}" for i in range(len(n))]
    ours = funnel.funnel_proportions(x, n, units)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qic(x=units, y=x, n=n, chart="p", funnel=True).data.set_index("x").loc[units]
    rows = [{"comparison": f"funnel, {len(n)} therapists (n {n.min()} to {n.max()}), qikit",
             "max |Δ centre|": float(np.max(np.abs(ours["target"].to_numpy() - q["cl"]))),
             "max |Δ upper|": float(max(np.max(np.abs(ours["hi998"].to_numpy() - q["ucl"])),
                                        np.max(np.abs(ours["hi95"].to_numpy() - q["ucl_95"])))),
             "max |Δ lower|": float(max(np.max(np.abs(ours["lo998"].to_numpy() - q["lcl"])),
                                        np.max(np.abs(ours["lo95"].to_numpy() - q["lcl_95"]))))}]
    m = rng.integers(15, 60, 24)
    k = rng.binomial(m, 0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mine = qi.p_chart(k, m).points
        qq = qic(y=k, n=m, chart="p").data
    ab = abspc.calculate_control_limits(pd.DataFrame({"value": k, "subgroup_size": m}), "p")
    for name, c, lo, hi in (("abspc", ab["mean"], ab["lcl"], ab["ucl"]),
                            ("qikit", qq["cl"], qq["lcl"], qq["ucl"])):
        rows.append({"comparison": f"p-chart, 24 months (n {m.min()} to {m.max()}), {name}",
                     "max |Δ centre|": float(np.max(np.abs(mine["centre"] - c.to_numpy()))),
                     "max |Δ upper|": float(np.max(np.abs(mine["ucl"] - hi.to_numpy()))),
                     "max |Δ lower|": float(np.max(np.abs(mine["lcl"] - lo.to_numpy())))})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# speed


def _best(fn, reps: int) -> float:
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _series(n_charts: int, n_points: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(5.0, 1.5, (n_charts, n_points))


def ours_compute(y: np.ndarray, target: float | None = 4.0):
    from mfr_outcomes import qi
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qi.xmr_chart(y, better="lower", target=target)


def ours_compute_frame(y: np.ndarray, target: float | None = 4.0):
    """ours, and the points DataFrame too (``ChartResult.points`` is built on first access)."""
    r = ours_compute(y, target)
    r.points   # noqa: B018 - build the frame
    return r


def abspc_compute(y: np.ndarray, target: float | None = 4.0):
    import abspc
    res = abspc.detect_special_causes(
        abspc.calculate_control_limits(pd.DataFrame({"value": y}), "XmR"))
    colours = abspc.determine_point_colours(res, improvement_direction="low", target=target)
    return (res, colours, abspc.determine_variation_type(res, improvement_direction="low"),
            abspc.determine_assurance_type(res, target, improvement_direction="low"))


def qikit_compute(y: np.ndarray):
    from qikit import qic
    return qic(y=y, chart="i", method="ihi")


def ours_png(y: np.ndarray) -> int:
    import matplotlib.pyplot as plt

    from mfr_outcomes import plots
    ax = plots.spc_chart(ours_compute(y))
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png", dpi=100)
    plt.close(ax.figure)
    return buf.tell()


def ours_png_fixed_margins(y: np.ndarray) -> int:
    """ours, drawn on an axes the caller made with fixed margins (no constrained layout)."""
    import matplotlib.pyplot as plt

    from mfr_outcomes import plots
    fig, ax = plt.subplots(figsize=(8.0, 4.0))
    plots.spc_chart(ours_compute(y), ax=ax)
    fig.subplots_adjust(left=0.08, right=0.78, bottom=0.2, top=0.88)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.tell()


def compare_png_layouts(n_charts: int = 10, seed: int = 1) -> None:
    """Seconds per PNG of 60 points: ours as shipped (constrained layout), ours on fixed
    margins, abspc; alternated twice on the same series."""
    import matplotlib
    matplotlib.use("Agg")
    ys = _series(n_charts, 60, seed)
    fns = (("ours", ours_png), ("ours, fixed margins", ours_png_fixed_margins),
           ("abspc", abspc_png))
    for _, fn in fns:
        fn(ys[0])
    for _ in range(2):
        for name, fn in fns:
            t = time.perf_counter()
            for y in ys:
                fn(y)
            print(f"{name:<22} {(time.perf_counter() - t) / n_charts:.3f} s per chart", flush=True)


def abspc_png(y: np.ndarray) -> int:
    import abspc
    import matplotlib.pyplot as plt
    fig, _ = abspc.plot_spc_chart(pd.DataFrame({"value": y}), "XmR", improvement_direction="low",
                                  target=4.0, show_target=True, show_icons=True,
                                  figsize=(8.0, 4.0))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.tell()


def qikit_figure(y: np.ndarray):
    return qikit_compute(y).plot()


def _timed_subprocess(what: str, n: int, seed: int, timeout: float) -> float:
    """Time one long-series render in a child process (after a warm-up render of 60 points),
    stopped after *timeout* seconds."""
    code = (f"import sys, time; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            "import matplotlib; matplotlib.use('Agg'); import bench_spc as b; "
            f"y = b._series(1, {n}, {seed})[0]; b.{what}(y[:60]); "
            f"t = time.perf_counter(); b.{what}(y); "
            "print(time.perf_counter() - t)")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return float("inf")
    return float(out.stdout.strip().splitlines()[-1])


class _Rows(list):
    """Speed rows, each printed as it is measured (a partial run still reports)."""

    def append(self, row: dict) -> None:
        print(f"  {row['task']:<40} {row['tool']:<12} {row['seconds']:.4g} s", flush=True)
        super().append(row)


def speed(args) -> pd.DataFrame:
    import matplotlib
    matplotlib.use("Agg")
    rows = _Rows()
    one = _series(1, args.points, args.seed)[0]
    many = _series(args.charts, args.points, args.seed + 1)
    long = _series(1, args.long, args.seed + 2)[0]
    for tool, fn in (("ours", ours_compute), ("ours + frame", ours_compute_frame),
                     ("abspc", abspc_compute), ("qikit", qikit_compute)):
        fn(one)   # warm-up: imports, first-call caches
        rows.append({"task": f"one chart, {args.points} points, compute", "tool": tool,
                     "seconds": _best(lambda f=fn: f(one), args.reps * 10)})
        rows.append({"task": f"{args.charts:,} charts × {args.points} points, compute",
                     "tool": tool,
                     "seconds": _best(lambda f=fn: [f(y) for y in many], args.reps)})
        rows.append({"task": f"one series of {args.long:,} points, compute", "tool": tool,
                     "seconds": _best(lambda f=fn: f(long), 1)})
    png_many = many[:args.png_charts]
    for tool, fn in (("ours", ours_png), ("abspc", abspc_png), ("qikit", qikit_figure)):
        fn(one)
        rows.append({"task": f"one chart, {args.points} points, PNG", "tool": tool,
                     "seconds": _best(lambda f=fn: f(one), args.reps)})
        rows.append({"task": f"{len(png_many):,} charts × {args.points} points, PNG",
                     "tool": tool, "seconds": _best(lambda f=fn: [f(y) for y in png_many], 1)})
    for tool, what in (("ours", "ours_png"), ("abspc", "abspc_png"), ("qikit", "qikit_figure")):
        rows.append({"task": f"one series of {args.long:,} points, PNG", "tool": tool,
                     "seconds": _timed_subprocess(what, args.long, args.seed + 2,
                                                  args.png_timeout)})
    out = pd.DataFrame(rows)
    return out.pivot(index="task", columns="tool", values="seconds").reindex(
        out["task"].unique())[["ours", "ours + frame", "abspc", "qikit"]].reset_index()


# --------------------------------------------------------------------------------------------
# features

FEATURES = [
    # (feature, ours, abspc, qikit)
    ("XmR limits mean ± 2.66 × mean MR", "yes (2.66)", "3/1.128 = 2.6596", "3/1.128 = 2.6596"),
    ("moving-range screening (NHSRplotthedots screen_outliers)", "yes, optional (< 3.267 × MR̄)",
     "no", "always (≤ 3.267 × MR̄)"),
    ("MDC shift: 7 on one side of the mean", "yes", "no: 8 (IHI)", "no: 8 (ihi/weco), 9 (nelson)"),
    ("MDC trend: 7 rising/falling", "yes", "no: 6 (IHI)", "no: 6 (ihi, nelson)"),
    ("2 of 3 beyond 2/3 of a limit, all on one side", "yes", "yes",
     "weco/nelson: 2 of 3 beyond 2σ on one side, points beyond 3σ counted, third point free"),
    ("point types (improvement / concern / neither)", "yes (beyond a limit: side first)",
     "improvement/concern (colours); no neutral direction; target changes colours", "no"),
    ("variation icon", "yes (latest point)", "yes (latest special-cause point)", "no"),
    ("assurance icon vs target", "yes", "yes", "no (target line only)"),
    ("declared rebase (recalculate from a point)", "yes (label or position)",
     "no (automatic rebase on a detected 8-point shift only)", "yes (part=)"),
    ("baseline freeze", "yes (first k of each segment, or any period)", "no",
     "yes (first k points; not with part=)"),
    ("annotations on the chart", "yes", "yes", "yes (notes=)"),
    ("signals explained in sentences", "yes", "summary dict (rule counts)", "summary dict"),
    ("too-few-points caution", "yes (< 10 points: no verdict; < 12 provisional)",
     "text on the chart below 15 points", "run rules silently off below 10 useful points"),
    ("run chart, Anhøj rules as qicharts2 (round(log2 n) + 3)", "yes",
     "no (8-point shift, 6-point trend on the median)",
     "floor(log2 n) + 3 and ≥: signals runs 1-2 points shorter"),
    ("p-chart", "yes", "yes", "yes"),
    ("u / c / g / t charts", "no", "yes", "yes"),
    ("Laney p′/u′", "no", "no", "yes"),
    ("funnel plot, exact binomial limits (Spiegelhalter 2005)", "yes (95 %, 99.8 %)", "no",
     "yes (p funnel; also Poisson, O/E, over-dispersion)"),
    ("funnel of means (normal limits)", "yes", "no", "no"),
    ("static PNG without extra software", "yes (matplotlib)", "yes (matplotlib)",
     "no (plotly; PNG needs kaleido + a browser)"),
    ("ties into the study data (per-period aggregates, responders)", "yes (qi.aggregate)", "no",
     "no"),
]


# --------------------------------------------------------------------------------------------
# report


def _fmt(x) -> str:
    if isinstance(x, float):
        if not np.isfinite(x):
            return "> timeout" if x > 0 else "–"
        return f"{x:.2e}" if 0 < abs(x) < 1e-3 else f"{x:.4g}"
    return str(x)


def md_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--charts", type=int, default=1000)
    p.add_argument("--png-charts", type=int, default=1000)
    p.add_argument("--points", type=int, default=60)
    p.add_argument("--long", type=int, default=100_000)
    p.add_argument("--png-timeout", type=float, default=900.0,
                   help="seconds before a long-series render is stopped")
    p.add_argument("--no-speed", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from importlib.metadata import version
    summary, details, documented = agreement(args.seed)
    lines = [f"# SPC side by side (mfr_outcomes {version('mfr-outcomes')}, abspc "
             f"{version('abspc')}, clinical-qikit {version('clinical-qikit')})", "",
             f"Python {platform.python_version()}, load average "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the start.", "",
             "## NHSRplotthedots' documented numbers (ours)", "",
             "| series | documented | ours |", "|---|---|---|", *documented, "",
             "## Agreement with the MDC rulebook", "", md_table(summary), "",
             "## Every disagreement", "", md_table(details), "",
             "## Funnel and p-chart limits", "", md_table(funnel_and_p_agreement(args.seed)),
             "",
             "## Run chart limits that differ (ours and qicharts2 against qikit)", "",
             md_table(run_chart_limits()), "",
             "## Features (from the packages' sources)", "",
             md_table(pd.DataFrame(FEATURES, columns=["feature", "mfr_outcomes", "abspc",
                                                      "qikit"])), ""]
    print("\n".join(lines), flush=True)
    if not args.no_speed:
        sp = speed(args)
        sp["abspc / ours"] = sp["abspc"] / sp["ours"]
        sp["qikit / ours"] = sp["qikit"] / sp["ours"]
        sp["abspc / (ours + frame)"] = sp["abspc"] / sp["ours + frame"]
        sp["qikit / (ours + frame)"] = sp["qikit"] / sp["ours + frame"]
        lines += ["## Speed (seconds, best of runs; one run, same machine)", "", md_table(sp), "",
                  f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}."]
        print("\n".join(lines[-5:]), flush=True)
        os.makedirs(args.out, exist_ok=True)
        sp.to_csv(os.path.join(args.out, "bench_spc.csv"), index=False)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_spc.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
