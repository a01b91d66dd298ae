"""Patient-level results: responders against the MCID, responder rates, standardised effect sizes,
numbers needed to treat, and the GEE model of the binary paresthesia flag.

Thresholds come from the measure registry (:mod:`mfr_outcomes.measures`), so every figure carries
its source.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from mfr_outcomes.measures import get_measure
from mfr_outcomes.rules import (
    NOT_ELIGIBLE_REASON,
    affected_side_rows,
    can_show_important_change,
    important_change_mask,
    wilson_interval,
)
from mfr_outcomes.study import model_dtypes
from mfr_outcomes.vocab import TECHNIQUE, TREATMENT_TECHNIQUES
from mfr_outcomes.warnings_ import DataWarning, ModelWarning

__all__ = [
    "responders",
    "responder_rate",
    "wilson_ci",
    "effect_sizes",
    "dz_confint",
    "nnt",
    "paresthesia_gee",
    "BASELINE_CHOICES",
    "LAST_CHOICES",
    "MIN_GEE_CLUSTERS",
]

BASELINE_CHOICES = ("first_pre",)
LAST_CHOICES = ("last_pre", "discharge", "follow_up", "last_post")
#: Fewer patients than this: the GEE sandwich SEs are too small (Mancl & DeRouen 2001).
MIN_GEE_CLUSTERS = 40


def _caution(notes: list[str], text: str, category: type[Warning] = DataWarning) -> None:
    notes.append(text)
    warnings.warn(text, category, stacklevel=3)


def _check_level(level: float) -> None:
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95); got {level!r}")


def _measure(code: str) -> Any:
    try:
        return get_measure(code)
    except KeyError as exc:
        raise ValueError(str(exc).strip("\"'")) from None


def _main_technique(sessions: pd.DataFrame) -> pd.Series:
    """The technique each patient received most often (ties: the earlier in the vocabulary)."""
    s = sessions[sessions["technique"].astype(str).isin(TREATMENT_TECHNIQUES)]
    counts = (s.assign(technique=s["technique"].astype(str))
              .groupby(["patient_id", "technique"]).size().rename("n").reset_index())
    order = {t: i for i, t in enumerate(TECHNIQUE)}
    counts["_o"] = counts["technique"].map(order)
    counts = counts.sort_values(["patient_id", "n", "_o"], ascending=[True, False, True])
    return counts.groupby("patient_id").head(1).set_index("patient_id")["technique"]


def _patient_readings(frame: pd.DataFrame, measure: str, notes: list[str]) -> pd.DataFrame:
    """One reading per session and phase: the affected side of per-side measures."""
    sides = {str(v) for v in frame["side"].unique()}
    if not (sides & {"left", "right"}):
        return frame
    sub = frame[affected_side_rows(frame)]
    keys = ["patient_id", "session_id", "session_number", "technique", "phase", "post",
            "site_id"]
    out = (sub.groupby(keys, observed=True, dropna=False)["value"].mean().reset_index()
           .sort_values(["patient_id", "session_number", "post"]))
    notes.append(f"{measure!r} is recorded per side: the affected side is used (the mean of both "
                 f"sides when bilateral or unknown)")
    return out


def responders(study: Any, measure: str, *, baseline: str = "first_pre",
               last: str = "last_pre") -> pd.DataFrame:
    """Per-patient change from baseline and whether it is clinically important.

    Parameters
    ----------
    study : Study
    measure : str
        A measure code (not binary).
    baseline : {"first_pre"}
        The pre-treatment reading at the patient's first visit with a reading.
    last : {"last_pre", "discharge", "follow_up", "last_post"}
        ``last_pre``: the latest pre-session reading of any visit (a follow-up visit included);
        ``discharge``: the latest pre-session reading on a treatment visit; ``follow_up``: the
        reading at the (last) assessment-only visit; ``last_post``: the latest post-treatment
        reading.

    Returns
    -------
    DataFrame
        One row a patient: patient_id, site_id, technique (most used), arm (only when the
        study records arms), n_visits, baseline, last,
        change (last − baseline), percent_change (100 × change / baseline), improvement (change
        turned so that positive is better), mcid_met_points (improvement ≥ MCID, or MDC when no
        MCID is published), mcid_met_percent (percent improvement ≥ the registry's percent
        threshold), eligible (the baseline leaves room for an important change), responder
        (either met; Ostelo 2008; NA when not eligible). The thresholds are nullable booleans:
        NA when the registry has no such threshold. ``.attrs``: ``measure``, ``threshold_points``,
        ``threshold_percent``, ``source``, ``excluded`` (patient_id, reason) and ``notes``.

    Notes
    -----
    A patient whose baseline leaves no room for an important change (a pain score of 0: even the
    best reading would not count, :func:`mfr_outcomes.rules.can_show_important_change`) has
    ``eligible`` False and ``responder`` NA: counting them as non-responders would make the
    rate meaningless, so :func:`responder_rate` leaves them out of the denominator (and says
    how many, with :data:`mfr_outcomes.rules.NOT_ELIGIBLE_REASON`). Their change stays in the
    frame for effect sizes.

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> resp = mfr.responders(mfr.load_study(mfr.datasets.synthetic_path()), "pain_nrs")
    >>> rate = mfr.effects.responder_rate(resp, by="technique")
    >>> list(rate.columns)
    ['technique', 'n', 'responders', 'rate', 'ci_low', 'ci_high']
    >>> bool(((rate["ci_low"] <= rate["rate"]) & (rate["rate"] <= rate["ci_high"])).all())
    True
    """
    m = _measure(measure)
    if m.binary:
        raise ValueError(f"{measure!r} is binary (0/1); responders need a continuous change. Use "
                         f"paresthesia_gee for it.")
    if baseline not in BASELINE_CHOICES:
        raise ValueError(f"baseline must be one of {BASELINE_CHOICES}; got {baseline!r}")
    if last not in LAST_CHOICES:
        raise ValueError(f"last must be one of {LAST_CHOICES}; got {last!r}")
    notes: list[str] = []
    frame = _patient_readings(study.frame(measure), measure, notes)
    tech = frame["technique"].astype(str)
    pre = frame[frame["post"] == 0].sort_values(["patient_id", "session_number"])
    base = pre.groupby("patient_id", observed=True).head(1).set_index("patient_id")
    if last == "last_pre":
        pool = pre
    elif last == "discharge":
        pool = pre[tech.loc[pre.index] != "none"]
    elif last == "follow_up":
        pool = pre[tech.loc[pre.index] == "none"]
    else:
        pool = frame[frame["post"] == 1].sort_values(["patient_id", "session_number"])
    end = pool.groupby("patient_id", observed=True).tail(1).set_index("patient_id")

    patients = study.patients.set_index("patient_id")
    main_tech = _main_technique(study.sessions)
    visits = frame.groupby("patient_id", observed=True)["session_id"].nunique()
    ids = pd.Index(sorted(frame["patient_id"].unique()))
    has_base, has_end = base.index.get_indexer(ids) >= 0, end.index.get_indexer(ids) >= 0
    same = (end["session_number"].reindex(ids).to_numpy()
            == base["session_number"].reindex(ids).to_numpy()) & (last != "last_post")
    reason = np.select([~has_base, ~has_end, same],
                       ["no pre-treatment reading", f"no {last.replace('_', ' ')} reading",
                        "only one visit with a reading, so no change"], "")
    excluded = list(zip(ids[reason != ""], reason[reason != ""].tolist(), strict=True))
    kept = ids[reason == ""]
    b, e = base.reindex(kept), end.reindex(kept)
    known = patients.index.get_indexer(kept) >= 0
    site = np.where(known, patients["site_id"].reindex(kept).to_numpy(dtype=object),
                    b["site_id"].to_numpy(dtype=object)) if len(kept) else []
    rows = zip(kept.tolist(), list(site), main_tech.reindex(kept).fillna("none").tolist(),
               visits.reindex(kept).fillna(0).astype("int64").tolist(),
               b["value"].astype("float64").tolist(), e["value"].astype("float64").tolist(),
               strict=True)
    out = pd.DataFrame(list(rows), columns=["patient_id", "site_id", "technique", "n_visits",
                                            "baseline", "last"])
    # the study's own vocabulary (a clinic profile may add techniques); arms when recorded
    tech_dtype = study.sessions["technique"].dtype
    out["technique"] = pd.Categorical(out["technique"], categories=list(
        tech_dtype.categories if isinstance(tech_dtype, pd.CategoricalDtype) else TECHNIQUE))
    if "arm" in patients.columns:
        out.insert(3, "arm", patients["arm"].reindex(out["patient_id"]).array)
    out["change"] = out["last"] - out["baseline"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["percent_change"] = np.where(out["baseline"] != 0,
                                         100.0 * out["change"] / out["baseline"].abs(), np.nan)
    sign = -1.0 if m.better == "lower" else 1.0
    out["improvement"] = sign * out["change"]
    pts = m.threshold_points
    if pts is not None:
        met_pts = pd.array(out["improvement"] >= pts - 1e-9, dtype="boolean")
    else:
        met_pts = pd.array([pd.NA] * len(out), dtype="boolean")
    if m.mcid_percent is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            pct = 100.0 * out["improvement"] / out["baseline"].abs()
        met_pct = pd.array(pct >= m.mcid_percent - 1e-9, dtype="boolean")
        met_pct[(out["baseline"] == 0).to_numpy()] = pd.NA
    else:
        met_pct = pd.array([pd.NA] * len(out), dtype="boolean")
    out["mcid_met_points"] = met_pts
    out["mcid_met_percent"] = met_pct
    out["eligible"] = True
    if pts is None and m.mcid_percent is None:
        out["responder"] = pd.array([pd.NA] * len(out), dtype="boolean")
        _caution(notes, f"{measure!r} has no published MCID or MDC ({m.source}), so responders "
                        f"cannot be classified; change and improvement are still reported")
    else:
        out["responder"] = pd.array(
            important_change_mask(measure, out["baseline"], out["last"]), dtype="boolean")
        out["eligible"] = can_show_important_change(measure, out["baseline"])
        out.loc[~out["eligible"], "responder"] = pd.NA
        n_out = int((~out["eligible"]).sum())
        if n_out:
            _caution(notes, f"{n_out} patient(s) not classed as responders: "
                            f"{NOT_ELIGIBLE_REASON} (e.g. a baseline of {_fmt_best(m)})")
    if excluded:
        _caution(notes, f"{len(excluded)} patient(s) left out of the responder analysis "
                        f"(see .attrs['excluded']): " +
                        "; ".join(sorted({r for _, r in excluded})))
    out.attrs.update({
        "measure": measure, "baseline": baseline, "last": last,
        "threshold_points": pts, "threshold_percent": m.mcid_percent,
        "threshold_kind": "MCID" if m.mcid_points is not None else ("MDC" if m.mdc else None),
        "source": m.source,
        "excluded": pd.DataFrame(excluded, columns=["patient_id", "reason"]),
        "notes": notes,
    })
    return out


def _fmt_best(m: Any) -> str:
    best = m.low if m.better == "lower" else m.high
    return f"{best:g} {m.unit}".strip()


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion: :func:`mfr_outcomes.rules.wilson_interval`."""
    _check_level(level)
    return wilson_interval(successes, n, level)


def responder_rate(resp: pd.DataFrame, by: str | Sequence[str] | None = None, *,
                   level: float = 0.95) -> pd.DataFrame:
    """Share of responders with a Wilson score interval, overall or per group.

    Parameters
    ----------
    resp : DataFrame
        The output of :func:`responders`.
    by : str or list of str, optional
        Grouping columns (``"technique"``, ``"site_id"``, ``["site_id", "technique"]``).
    level : float
        Confidence level.

    Returns
    -------
    DataFrame
        Columns: the by columns, n (patients classified), responders, rate, ci_low, ci_high
        (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over the Wald interval).
        Patients with an unknown responder status (NA) are not counted.
    """
    _check_level(level)
    if "responder" not in resp.columns:
        raise ValueError("resp must be the output of responders() (it needs a 'responder' "
                         "column)")
    by_cols = [] if by is None else ([by] if isinstance(by, str) else list(by))
    missing = [c for c in by_cols if c not in resp.columns]
    if missing:
        raise ValueError(f"by column(s) {missing} not in the responder table (columns: "
                         f"{', '.join(resp.columns)})")
    known = resp[resp["responder"].notna()]
    groups = [((), known)] if not by_cols else \
        [(k if isinstance(k, tuple) else (k,), g)
         for k, g in known.groupby(by_cols, observed=True, sort=True)]
    rows = []
    for key, g in groups:
        n = len(g)
        x = int(g["responder"].astype(bool).sum())
        lo, hi = wilson_ci(x, n, level)
        row = dict(zip(by_cols, key))
        row.update({"n": n, "responders": x, "rate": x / n if n else float("nan"),
                    "ci_low": lo, "ci_high": hi})
        rows.append(row)
    out = pd.DataFrame(rows, columns=by_cols + ["n", "responders", "rate", "ci_low", "ci_high"])
    n_unknown = int(resp["responder"].isna().sum())
    n_not_eligible = int((~resp["eligible"].astype(bool)).sum()) if "eligible" in resp else 0
    notes = []
    if n_not_eligible:
        notes.append(f"{n_not_eligible} patient(s) not counted: {NOT_ELIGIBLE_REASON}")
    if n_unknown - n_not_eligible > 0:
        notes.append(f"{n_unknown - n_not_eligible} patient(s) with unknown responder status "
                     f"not counted")
    out.attrs["notes"] = notes
    out.attrs["n_not_eligible"] = n_not_eligible
    out.attrs["level"] = level
    return out


# --------------------------------------------------------------------------------------------
# effect sizes
# --------------------------------------------------------------------------------------------

def _nct_ci(t: float, df: float, level: float) -> tuple[float, float]:
    """CI for the noncentrality parameter of a t statistic (inverting the noncentral t)."""
    alpha = 1.0 - level
    width = math.sqrt(1.0 + t * t / (2.0 * df))  # large-sample SD of the ncp estimate

    def cdf(ncp: float) -> float:
        v = float(stats.nct.cdf(t, df, ncp))
        if not np.isfinite(v):  # far tails: the limits the cdf tends to
            v = 1.0 if ncp < t else 0.0
        return v

    def bound(p: float) -> float:
        lo, hi = t - 8.0 * width - 1.0, t + 8.0 * width + 1.0
        while cdf(lo) < p:
            lo -= 8.0 * width
        while cdf(hi) > p:
            hi += 8.0 * width
        return float(optimize.brentq(lambda ncp: cdf(ncp) - p, lo, hi, xtol=1e-12))

    return bound(1.0 - alpha / 2.0), bound(alpha / 2.0)


def dz_confint(d_z: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact CI of Cohen's d_z from the noncentral t (t = d_z √n, df = n − 1)."""
    if n < 2 or not np.isfinite(d_z):
        return (float("nan"), float("nan"))
    lo, hi = _nct_ci(d_z * math.sqrt(n), n - 1, level)
    return lo / math.sqrt(n), hi / math.sqrt(n)


def _paired_effect(pre: np.ndarray, post: np.ndarray, level: float) -> dict[str, float]:
    diff = post - pre
    n = len(diff)
    out = {"n": n, "mean_pre": float(np.mean(pre)) if n else np.nan,
           "mean_post": float(np.mean(post)) if n else np.nan,
           "mean_change": float(np.mean(diff)) if n else np.nan}
    if n < 2:
        out.update(sd_change=np.nan, d_z=np.nan, d_z_ci_low=np.nan, d_z_ci_high=np.nan,
                   d_av=np.nan, d_av_ci_low=np.nan, d_av_ci_high=np.nan, g_av=np.nan,
                   r_pre_post=np.nan)
        return out
    sd_d = float(np.std(diff, ddof=1))
    sd_av = (float(np.std(pre, ddof=1)) + float(np.std(post, ddof=1))) / 2.0
    d_z = out["mean_change"] / sd_d if sd_d > 0 else np.nan
    d_av = out["mean_change"] / sd_av if sd_av > 0 else np.nan
    lo, hi = dz_confint(d_z, n, level)
    # Algina & Keselman (2003): the noncentral-t limits of the t statistic, rescaled to d_av
    # with the observed sd_change / sd_av ratio held fixed.
    scale = sd_d / sd_av if sd_av > 0 else np.nan
    r = float(np.corrcoef(pre, post)[0, 1]) if np.std(pre) > 0 and np.std(post) > 0 else np.nan
    # Hedges' small-sample correction with df = n - 1 (Lakens 2013, eq. 4 and the g_av he
    # recommends reporting for within-subject designs)
    j = 1.0 - 3.0 / (4.0 * (n - 1) - 1.0)
    out.update(sd_change=sd_d, d_z=d_z, d_z_ci_low=lo, d_z_ci_high=hi, d_av=d_av,
               d_av_ci_low=lo * scale, d_av_ci_high=hi * scale, g_av=d_av * j, r_pre_post=r)
    return out


def effect_sizes(study: Any, measure: str, by: str | None = "technique", *,
                 comparison: str = "within_session", level: float = 0.95) -> pd.DataFrame:
    """Standardised within-patient effect sizes of the change, with confidence intervals.

    Each patient contributes one pair: for ``comparison="within_session"`` the mean pre and mean
    post reading over their treatment visits (per technique when ``by="technique"``, since the
    technique is chosen per visit); for ``"course"`` the baseline and last pre-session reading of
    :func:`responders` (grouped by the patient's most used technique).

    Two standardisers, as Lakens (2013, Front Psychol 4:863) sets out:

    - Cohen's d_z = mean change / SD of the changes: the within-subject effect that the paired
      t test sees; its CI inverts the noncentral t (exact);
    - d_av = mean change / mean of the pre and post SDs: comparable with between-group d's; its
      CI is Algina & Keselman's (2003) approximation (noncentral-t limits rescaled); g_av is d_av
      with Hedges' small-sample correction 1 − 3/(4(n − 1) − 1), the figure Lakens recommends
      reporting.

    Returns
    -------
    DataFrame
        Columns: by (when given), n (patients), mean_pre, mean_post, mean_change (post − pre, or
        last − baseline), sd_change, d_z, d_z_ci_low, d_z_ci_high, d_av, d_av_ci_low,
        d_av_ci_high, g_av, r_pre_post. The sign is that of the raw change (negative = pain fell);
        ``.attrs["better"]`` says which direction is improvement.
    """
    _check_level(level)
    m = _measure(measure)
    if m.binary:
        raise ValueError(f"{measure!r} is binary; effect sizes for it come from paresthesia_gee "
                         f"(odds ratios).")
    notes: list[str] = []
    if comparison == "within_session":
        frame = _patient_readings(study.frame(measure), measure, notes)
        frame = frame[frame["technique"].astype(str) != "none"]
        wide = frame.pivot_table(index=["patient_id", "session_id", "technique"],
                                 columns="post", values="value", observed=True).dropna()
        if wide.empty or 1 not in wide.columns:
            raise ValueError(f"{measure!r} has no sessions with both a pre and a post reading; "
                             f"use comparison='course'.")
        wide = wide.rename(columns={0: "pre", 1: "post"}).reset_index()
        keys = ["patient_id"] + ([by] if by else [])
        if by and by not in wide.columns:
            patients = study.patients[["patient_id", by]] if by in study.patients.columns \
                else None
            if patients is None:
                raise ValueError(f"by={by!r} is neither technique nor a patient column")
            wide = wide.merge(patients, on="patient_id", how="left")
        pairs = wide.groupby(keys, observed=True)[["pre", "post"]].mean().reset_index()
    elif comparison == "course":
        resp = responders(study, measure)
        pairs = resp.rename(columns={"baseline": "pre", "last": "post"})
        if by and by not in pairs.columns:
            pairs = pairs.merge(study.patients[["patient_id", by]], on="patient_id", how="left")
    else:
        raise ValueError(f"comparison must be 'within_session' or 'course'; got {comparison!r}")
    groups = [(None, pairs)] if not by else \
        list(pairs.groupby(by, observed=True, sort=True))
    rows = []
    for key, g in groups:
        row = {} if not by else {by: key}
        row.update(_paired_effect(g["pre"].to_numpy(float), g["post"].to_numpy(float), level))
        if row["n"] < 2:
            _caution(notes, f"{'all patients' if key is None else repr(key)}: fewer than 2 "
                            f"patients, so no effect size")
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update({"measure": measure, "comparison": comparison, "better": m.better,
                      "level": level, "notes": notes,
                      "reference": "Lakens D. Front Psychol 2013;4:863; Algina J, Keselman HJ. "
                                   "Educ Psychol Meas 2003;63:537-553"})
    return out


# --------------------------------------------------------------------------------------------
# number needed to treat
# --------------------------------------------------------------------------------------------

def nnt(resp: pd.DataFrame, a: str, b: str, *, by: str = "technique", level: float = 0.95,
        method: str = "wald") -> dict[str, Any]:
    """Number needed to treat with *a* instead of *b* for one more responder (Altman 1998).

    The risk difference RD = rate(a) − rate(b) has a CI (Wald, as in Altman's paper, or
    Newcombe's hybrid score interval with ``method="newcombe"``); NNT = 1/|RD| and its limits are
    the reciprocals of the RD limits. RD > 0 gives an NNTB (benefit of *a*), RD < 0 an NNTH
    (harm). When the RD interval contains 0 the NNT interval runs through infinity: "NNTB x to
    ∞ to NNTH y" (Altman DG. BMJ 1998;317:1309-1312).

    Returns
    -------
    dict
        a, b, n_a, n_b, responders_a, responders_b, rate_a, rate_b, risk_difference, rd_ci_low,
        rd_ci_high, nnt (1/|RD|), kind ("NNTB", "NNTH", or "none" when RD = 0), nnt_ci_low and
        nnt_ci_high (the reciprocals of the RD limits, when the RD interval excludes 0),
        nntb_limit and nnth_limit (1/rd_ci_high and 1/|rd_ci_low|, when it includes 0; NaN
        otherwise), ci_includes_infinity, text, method, level.

    Examples
    --------
    >>> import pandas as pd
    >>> resp = pd.DataFrame({"technique": ["a"] * 40 + ["b"] * 40,
    ...                      "responder": [True] * 30 + [False] * 10 + [True] * 15 + [False] * 25})
    >>> nnt(resp, "a", "b")["text"]
    'NNTB 2.7 (95% CI 1.7 to 5.8)'
    """
    _check_level(level)
    if by not in resp.columns:
        raise ValueError(f"by={by!r} is not a column of the responder table")
    known = resp[resp["responder"].notna()]
    ga = known[known[by].astype(str) == str(a)]
    gb = known[known[by].astype(str) == str(b)]
    for name, g in ((a, ga), (b, gb)):
        if len(g) == 0:
            levels = sorted(known[by].astype(str).unique())
            raise ValueError(f"no classified patients with {by} = {name!r}; levels present: "
                             f"{', '.join(levels)}")
    xa, na = int(ga["responder"].astype(bool).sum()), len(ga)
    xb, nb = int(gb["responder"].astype(bool).sum()), len(gb)
    pa, pb = xa / na, xb / nb
    rd = pa - pb
    z = stats.norm.ppf(1.0 - (1.0 - level) / 2.0)
    if method == "wald":
        se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
        lo, hi = rd - z * se, rd + z * se
    elif method == "newcombe":
        from statsmodels.stats.proportion import confint_proportions_2indep

        lo, hi = confint_proportions_2indep(xa, na, xb, nb, method="newcomb", compare="diff",
                                            alpha=1.0 - level)
    else:
        raise ValueError(f"method must be 'wald' or 'newcombe'; got {method!r}")
    lo, hi = float(lo), float(hi)
    inv = lambda x: math.inf if x == 0 else 1.0 / abs(x)  # noqa: E731
    n_val = inv(rd)
    kind = "NNTB" if rd > 0 else ("NNTH" if rd < 0 else "none")
    through_inf = lo <= 0 <= hi
    pct = f"{100 * level:g}%"
    nan = float("nan")
    if through_inf:
        # Altman: the interval for NNT is NNTB 1/hi to ∞ to NNTH 1/|lo|
        nntb_limit, nnth_limit = inv(hi), inv(lo)
        ci_low, ci_high = nan, nan
        head = f"{kind} {n_val:.1f}" if rd != 0 else "no difference (NNT ∞)"
        text = f"{head} ({pct} CI: NNTB {nntb_limit:.1f} to ∞ to NNTH {nnth_limit:.1f})"
    else:
        nntb_limit, nnth_limit = nan, nan
        ci_low, ci_high = sorted((inv(lo), inv(hi)))
        text = f"{kind} {n_val:.1f} ({pct} CI {ci_low:.1f} to {ci_high:.1f})"
    return {"a": a, "b": b, "n_a": na, "n_b": nb, "responders_a": xa, "responders_b": xb,
            "rate_a": pa, "rate_b": pb, "risk_difference": rd, "rd_ci_low": lo,
            "rd_ci_high": hi, "nnt": n_val, "kind": kind, "nnt_ci_low": ci_low,
            "nnt_ci_high": ci_high, "nntb_limit": nntb_limit, "nnth_limit": nnth_limit,
            "ci_includes_infinity": bool(through_inf), "text": text,
            "method": method, "level": level}


# --------------------------------------------------------------------------------------------
# binary paresthesia: GEE logistic
# --------------------------------------------------------------------------------------------

def paresthesia_gee(study: Any, by: str | None = "technique", *, measure: str = "paresthesia",
                    time: str | None = "weeks", covariates: Sequence[str] = (),
                    level: float = 0.95) -> pd.DataFrame:
    """Odds of paresthesia (0/1, pre-session) over the course of care: GEE logistic regression.

    ``value ~ by + time + covariates`` with patients as clusters, a binomial family (logit
    link), an exchangeable working correlation and robust (sandwich) standard errors
    (statsmodels ``GEE``). Readings on treatment visits only.

    Parameters
    ----------
    study : Study
    by : str, optional
        A column of the analysis frame (``technique``, ``condition``...); None: time only.
    measure : str
        A binary measure code (default ``paresthesia``).
    time : {"weeks", "session_number"} or None
    covariates : sequence of str
    level : float

    Returns
    -------
    DataFrame
        One row a term: term, estimate (log odds), std_error (robust), odds_ratio, ci_low,
        ci_high (of the odds ratio), statistic (z), p_value. ``.attrs``: ``formula``, ``n_obs``,
        ``n_clusters``, ``working_correlation`` (the estimated exchangeable correlation),
        ``notes``, ``result`` (the statsmodels GEEResults).
    """
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    _check_level(level)
    m = _measure(measure)
    if not m.binary:
        raise ValueError(f"{measure!r} is not a binary measure; use fit_prepost / fit_course for "
                         f"it.")
    notes: list[str] = []
    frame = study.frame(measure)
    frame = frame[(frame["post"] == 0) & (frame["technique"].astype(str) != "none")].copy()
    terms = []
    if by:
        if by not in frame.columns:
            raise ValueError(f"by={by!r} is not a column of the analysis frame")
        terms.append(by)
    if time:
        if time not in ("weeks", "session_number"):
            raise ValueError(f"time must be 'weeks', 'session_number' or None; got {time!r}")
        terms.append(time)
    for c in covariates:
        if c not in frame.columns:
            raise ValueError(f"covariate {c!r} is not a column of the analysis frame")
        terms.append(c)
    used = ["value", "patient_id"] + terms
    n0 = len(frame)
    with_na = [c for c in used if frame[c].isna().any()]
    frame = frame.dropna(subset=used)
    if len(frame) < n0:
        _caution(notes, f"{n0 - len(frame)} reading(s) with missing {', '.join(with_na)} left out")
    frame = model_dtypes(frame).sort_values(["patient_id", "session_number"]).reset_index(drop=True)
    n_clusters = frame["patient_id"].nunique()
    if n_clusters < 2:
        raise ValueError(f"only {n_clusters} patient(s) with {measure!r} readings; GEE needs many "
                         f"patients")
    if frame["value"].nunique() < 2:
        raise ValueError(f"every {measure!r} reading is {frame['value'].iloc[0]:g}; there is no "
                         f"variation to model")
    if n_clusters < MIN_GEE_CLUSTERS:
        _caution(notes, f"only {n_clusters} patients: GEE robust standard errors are too small "
                        f"with fewer than about {MIN_GEE_CLUSTERS} clusters (Mancl & DeRouen "
                        f"2001); read p-values with care", ModelWarning)
    formula = "value ~ " + (" + ".join(terms) if terms else "1")
    model = smf.gee(formula, groups="patient_id", data=frame, family=sm.families.Binomial(),
                    cov_struct=sm.cov_struct.Exchangeable())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = model.fit()
    # every caution statsmodels raised reaches the caller (non-convergence, separation, ...)
    for message in dict.fromkeys(str(w.message) for w in caught):
        _caution(notes, f"GEE: {message}", ModelWarning)
    z = stats.norm.ppf(1.0 - (1.0 - level) / 2.0)
    est = res.params
    se = res.bse
    out = pd.DataFrame({
        "term": list(est.index),
        "estimate": est.to_numpy(),
        "std_error": se.to_numpy(),
        "odds_ratio": np.exp(est.to_numpy()),
        "ci_low": np.exp(est.to_numpy() - z * se.to_numpy()),
        "ci_high": np.exp(est.to_numpy() + z * se.to_numpy()),
        "statistic": (est / se).to_numpy(),
        "p_value": res.pvalues.to_numpy(),
    })
    try:
        rho = float(res.cov_struct.dep_params)
    except (TypeError, ValueError):
        rho = float("nan")
    out.attrs.update({"formula": formula, "n_obs": int(res.nobs), "n_clusters": n_clusters,
                      "working_correlation": rho, "notes": notes, "result": res,
                      "level": level})
    return out
