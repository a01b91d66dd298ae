"""Therapists and sites compared without league tables: funnel plots of the responder
proportion and of the mean within-session change against the network (95 % and 99.8 % limits,
Spiegelhalter 2005), and a caterpillar of their random effects from one mixed model.

A yes/no main measure (paresthesia) has no responders and no within-session change: its funnel
is of the patients with the condition at their latest reading, and its therapist and site
effects come from a binomial GLMM (:data:`BINARY_COMPARISON_FORMULA`, glmer's Laplace
approximation), shown as odds ratios against the network and as the percentage of a typical
patient with the condition.

Therapists appear as stable pseudonyms unless the report is built with ``name_therapists``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.report.blocks import Section, Table
from mfr_outcomes.report.context import ReportContext
from mfr_outcomes.rules import affected_side_rows

__all__ = ["build", "main_therapist", "COMPARISON_FORMULA", "BINARY_COMPARISON_FORMULA",
           "latest_reading"]

#: The model whose random effects are drawn, when the pre/post model has no therapist term.
COMPARISON_FORMULA = "value ~ post + (1 | patient_id) + (0 + post | therapist_id)"
#: The binomial GLMM of a yes/no measure's pre-session readings on treatment visits
#: (``+ (1 | site_id)`` with several sites).
BINARY_COMPARISON_FORMULA = "value ~ 1 + (1 | patient_id) + (1 | therapist_id)"


def main_therapist(sessions: pd.DataFrame) -> pd.Series:
    """The therapist each patient saw most often (ties: the first in sorted order)."""
    counts = (sessions.assign(t=sessions["therapist_id"].astype(str))
              .groupby(["patient_id", "t"]).size().rename("n").reset_index())
    counts = counts.sort_values(["patient_id", "n", "t"], ascending=[True, False, True])
    return counts.groupby("patient_id").head(1).set_index("patient_id")["t"]


def build(ctx: ReportContext, sec: Section) -> None:
    sec.para(
        "Each therapist (and site) is a point at its number of patients, against the network "
        "value; the funnel's limits narrow as the number grows (Spiegelhalter, Stat Med "
        "2005;24:1185-1202). A point inside the 95 % limits is indistinguishable from the "
        "network; outside the 99.8 % limits it is unlikely to differ by chance alone. These are "
        "not rankings: patients were not allocated to therapists at random, so a difference "
        "may reflect case mix.")
    units = [("therapist", "therapist_id")]
    if ctx.scoped.patients["site_id"].nunique() >= 2:
        units.append(("site", "site_id"))
    if ctx.m.binary:
        _build_binary(ctx, sec, units)
        return
    for noun, col in units:
        ctx.attempt(sec, f"The funnel of responders by {noun}", _responder_funnel, ctx, sec,
                    noun, col)
        ctx.attempt(sec, f"The funnel of within-session change by {noun}", _change_funnel, ctx,
                    sec, noun, col)
    sec.heading("Random effects of therapists and sites")
    ctx.attempt(sec, "The caterpillar of random effects", _caterpillar, ctx, sec)


def _build_binary(ctx: ReportContext, sec: Section, units: list[tuple[str, str]]) -> None:
    m = ctx.m
    sec.para(f"{m.label} is a yes/no reading, so there are no responders and no "
             f"within-session change to compare. The funnels below are of the patients with "
             f"{m.label.lower()} at their latest reading (a proportion, with exact binomial "
             f"limits), and the random effects come from a logistic (binomial) mixed model of "
             f"every pre-session reading.")
    for noun, col in units:
        ctx.attempt(sec, f"The funnel of {m.label.lower()} by {noun}", _binary_funnel, ctx, sec,
                    noun, col)
    sec.heading("Random effects of therapists and sites")
    ctx.attempt(sec, "The binomial mixed model of therapists and sites", _binary_effects, ctx,
                sec)


def _names(ctx: ReportContext, col: str) -> dict[str, str]:
    if col == "therapist_id":
        return ctx.therapist_names
    return {s: s for s in ctx.scoped.patients["site_id"].astype(str).unique()}


def _unit_of(ctx: ReportContext, col: str) -> pd.Series:
    if col == "therapist_id":
        return main_therapist(ctx.scoped.sessions)
    return ctx.scoped.patients.set_index("patient_id")["site_id"].astype(str)


def _responder_funnel(ctx: ReportContext, sec: Section, noun: str, col: str) -> None:

    m = ctx.m
    if m.binary or (m.threshold_points is None and m.mcid_percent is None):
        return
    resp = ctx.responders()
    resp = resp[resp["responder"].notna()]
    made = _proportion_funnel(ctx, sec, noun, col, resp["patient_id"],
                              resp["responder"].astype(bool), "responders",
                              f"Responders by {noun}", "classed patients", "responder proportion")
    if made is None:
        return
    table, fr = made
    if "responders" in ctx.tables:
        resp_t = ctx.tables["responders"]
        for c in ("patients", "responders"):
            try:
                ctx.ledger.relate(resp_t.cell(c, 0), table.column_cells(c))
            except ValueError:  # a different denominator: no shared margin
                pass


def _proportion_funnel(ctx: ReportContext, sec: Section, noun: str, col: str,
                       patients: pd.Series, event: pd.Series, what: str, title: str,
                       classed: str, ylabel: str) -> tuple[Table, pd.DataFrame] | None:
    """The funnel table (and, once the ledger has decided, the figure) of a proportion of
    patients per unit: *event* (bool, one a patient in *patients*) counted as *what*."""
    from mfr_outcomes import funnel

    unit = patients.map(_unit_of(ctx, col)).map(_names(ctx, col))
    g = pd.DataFrame({"unit": unit.to_numpy(), "event": event.to_numpy(dtype=bool)}).groupby(
        "unit")["event"]
    events = g.sum().astype("int64")
    if len(events) < 2:
        sec.para(f"Only one {noun} has {classed}: there is nothing to compare.")
        return None
    fr = funnel.funnel_proportions(events.to_numpy(), g.size().to_numpy(), events.index)
    frame = fr.rename(columns={"n": "patients", "events": what})
    for c in ("value", "target", "lo95", "hi95", "lo998", "hi998"):
        frame[c] = 100.0 * frame[c]
    frame = frame.rename(columns={"value": "percent", "target": "network_percent"})
    sec.heading(title)
    table = ctx.add_table(sec, Table(
        f"funnel_{what}_{noun}", f"{title} (main {noun} of each patient), with the funnel "
        f"limits in %.", frame,
        counts=("patients", what), linked={"percent": ("patients", what)},
        ratios=("percent",), decimals={c: 0 for c in ("percent", "network_percent", "lo95",
                                                      "hi95", "lo998", "hi998")}))
    name = title[0].lower() + title[1:]
    sec.later(lambda: _funnel_figure(ctx, sec, table, fr, name, ylabel))
    return table, fr


def latest_reading(frame: pd.DataFrame) -> pd.DataFrame:
    """Each patient's latest pre-session reading (affected side), one row a patient."""
    f = frame[affected_side_rows(frame) & (frame["post"] == 0)]
    f = f.sort_values(["patient_id", "session_number"], kind="stable")
    return f.groupby("patient_id", observed=True).tail(1).reset_index(drop=True)


def _binary_funnel(ctx: ReportContext, sec: Section, noun: str, col: str) -> None:
    m = ctx.m
    last = latest_reading(ctx.frame())
    last = last[last["value"].notna()]
    _proportion_funnel(ctx, sec, noun, col, last["patient_id"], last["value"] == 1, "present",
                       f"Patients with {m.label.lower()} at their latest reading, by {noun}",
                       "patients with a reading", f"proportion with {m.label.lower()}")


def binary_effects(frame: pd.DataFrame, sites: bool) -> tuple[Any, pd.DataFrame]:
    """The binomial GLMM of a yes/no measure's pre-session readings on treatment visits, and
    its therapist (and site) effects: one row a unit with group, level, patients, log_odds
    (the conditional mode), cond_sd, odds_ratio and its 95 % interval (exp of mode ± 1.96 SD)
    and percent_typical (100 × expit(intercept + mode): a patient with a zero patient effect
    seen by that unit)."""
    from scipy.special import expit

    from mfr_outcomes.models.fit import fit_mixed

    f = frame[affected_side_rows(frame) & (frame["post"] == 0)
              & (frame["technique"].astype(str) != "none")]
    formula = BINARY_COMPARISON_FORMULA + (" + (1 | site_id)" if sites else "")
    fit = fit_mixed(f, formula, family="binomial")
    re = fit.random_effects()
    re = re[re["group"] != "patient_id"].reset_index(drop=True)
    n = {g: f.groupby(g, observed=True)["patient_id"].nunique() for g in set(re["group"])}
    re["patients"] = [int(n[g].get(lv, 0)) for g, lv in zip(re["group"], re["level"])]
    z = 1.959963984540054
    re["log_odds"] = re["estimate"]
    re["odds_ratio"] = np.exp(re["estimate"])
    re["ci_low"] = np.exp(re["estimate"] - z * re["cond_sd"])
    re["ci_high"] = np.exp(re["estimate"] + z * re["cond_sd"])
    re["percent_typical"] = 100.0 * expit(float(fit.coef.iloc[0]) + re["estimate"])
    cols = ["group", "level", "patients", "log_odds", "cond_sd", "odds_ratio", "ci_low",
            "ci_high", "percent_typical"]
    return fit, re[cols]


def _binary_effects(ctx: ReportContext, sec: Section) -> None:

    m = ctx.m
    sites = ctx.scoped.patients["site_id"].nunique() >= 2
    fit, re = binary_effects(ctx.frame(), sites)
    ctx.fit_label("Therapists and sites (binomial GLMM)", fit)
    sec.para(f"From the logistic mixed model {fit.formula} (glmer's Laplace approximation) of "
             f"every pre-session reading on a treatment visit: each therapist's (and site's) "
             f"deviation from the network on the log-odds scale, shrunken towards zero when it "
             f"rests on few readings. An odds ratio above 1 means higher odds of "
             f"{m.label.lower()} than the network's; the last column is the percentage of a "
             f"typical patient (patient effect zero) with {m.label.lower()} when seen by that "
             f"therapist or at that site. Wald 95 % intervals from the conditional SDs.")
    for group, noun in (("therapist_id", "therapist"), ("site_id", "site")):
        sub = re[re["group"] == group]
        if sub.empty:
            continue
        names = _names(ctx, group)
        frame = sub.assign(unit=sub["level"].astype(str).map(names))[
            ["unit", "patients", "odds_ratio", "ci_low", "ci_high", "percent_typical"]]
        derived = ("odds_ratio", "ci_low", "ci_high", "percent_typical")
        table = ctx.add_table(sec, Table(
            f"glmm_{noun}", f"{noun.capitalize()} effects on the odds of {m.label.lower()} "
            f"(binomial mixed model).", frame, counts=("patients",),
            linked={c: ("patients",) for c in derived}, decimals={"percent_typical": 0}))
        if _no_variation(sec, sub, noun):
            continue
        data = sub.assign(name=sub["level"].astype(str).map(names)).rename(
            columns={"log_odds": "estimate"})[["name", "estimate", "cond_sd"]]
        sec.later(lambda t=table, d=data, w=noun: _caterpillar_figure(
            ctx, sec, t, d, w, f"{w} effect on the log odds of {m.label.lower()}"))


def _no_variation(sec: Section, effects: pd.DataFrame, noun: str) -> bool:
    """Say so, and return True, when the model puts every unit at the network value."""
    if not (effects["cond_sd"] == 0).all():
        return False
    sec.para(f"The model estimates no variation between {noun}s (a variance of zero), "
             f"so every {noun} is at the network value.")
    return True


def _caterpillar_figure(ctx: ReportContext, sec: Section, table: Table, data: pd.DataFrame,
                        noun: str, xlabel: str) -> list:
    """The caterpillar of the units of *table* whose counts are all shown."""
    from mfr_outcomes import plots

    keep = _shown_rows(ctx, table)
    if not keep:
        return []
    shown = data.iloc[keep]
    before = len(sec.blocks)
    ctx.figure(sec, f"caterpillar of {noun}s",
               lambda: plots.named_caterpillar(shown, xlabel=xlabel,
                                               title=f"Random effects: {noun}s"),
               f"Random effects of {noun}s ({xlabel}), with 95 % intervals; {noun}s with a "
               f"hidden count are left out.", f"Caterpillar plot of {noun} random effects.")
    made = sec.blocks[before:]
    del sec.blocks[before:]
    return made


def _change_funnel(ctx: ReportContext, sec: Section, noun: str, col: str) -> None:
    from mfr_outcomes import funnel

    m = ctx.m
    f = ctx.frame()
    f = f[affected_side_rows(f)]
    wide = f.pivot_table(index=["patient_id", "session_id", col], columns="post",
                         values="value", observed=True)
    if 1 not in wide.columns or 0 not in wide.columns:
        return
    change = (wide[1] - wide[0]).dropna().rename("change").reset_index()
    per = change.groupby(["patient_id", col], observed=True)["change"].mean().reset_index()
    per["unit"] = per[col].astype(str).map(_names(ctx, col))
    if per["unit"].nunique() < 2:
        return
    fr = funnel.funnel_means(per["change"], per["unit"])
    frame = fr.rename(columns={"n": "patients", "value": "mean_change",
                               "target": "network_mean"}).drop(columns="sd")
    sec.heading(f"Within-session change by {noun}")
    table = ctx.add_table(sec, Table(
        f"funnel_change_{noun}", f"Mean within-session change of {m.label} (post − pre, "
        f"{m.unit}) by {noun}: each patient's mean change counts once per {noun}.", frame,
        counts=("patients",), linked={"mean_change": ("patients",)}))
    sec.later(lambda: _funnel_figure(ctx, sec, table, fr, f"within-session change by {noun}",
                                     f"mean change ({m.unit})"))


def _funnel_figure(ctx: ReportContext, sec: Section, table: Table, fr: pd.DataFrame,
                   name: str, ylabel: str) -> list:
    from mfr_outcomes import plots

    # a point at (patients, proportion) shows its responders too: every count of the row must
    # be shown for the unit to be drawn
    keep = _shown_rows(ctx, table)
    before = len(sec.blocks)
    shown = fr.iloc[keep]
    shown.attrs.update(fr.attrs)
    if len(shown):
        ctx.figure(sec, f"funnel of {name}",
                   lambda: plots.funnel(shown, ylabel=ylabel, title=f"Funnel: {name}"),
                   f"Funnel plot of {name} against the network, with 95 % (dashed) and 99.8 % "
                   f"(dotted) limits; units with a hidden count are left out.",
                   f"Funnel plot of {name}.")
    made = sec.blocks[before:]
    del sec.blocks[before:]
    return made


def _shown_rows(ctx: ReportContext, table: Table) -> list[int]:
    """Rows of *table* whose counts are all shown (the units a figure may draw)."""
    return [r for r in range(len(table.frame))
            if not any(ctx.ledger.hidden(c) for (row, _), c in table.cells.items() if row == r)]


def _random_effects(ctx: ReportContext) -> tuple[pd.DataFrame, str]:
    fit = ctx.fits.get("Pre/post (within session)")
    if fit is not None:
        re = fit.random_effects()
        if "therapist_id" in set(re["group"]):
            return re, fit.formula
    from mfr_outcomes.models.fit import fit_mixed

    f = ctx.frame()
    f = f[affected_side_rows(f) & (f["technique"].astype(str) != "none")]
    formula = COMPARISON_FORMULA
    if f["site_id"].nunique() >= 2:
        formula += " + (0 + post | site_id)"
    fit = fit_mixed(f, formula)
    ctx.fit_label("Therapists and sites (random effects)", fit)
    return fit.random_effects(), formula


def _caterpillar(ctx: ReportContext, sec: Section) -> None:
    from mfr_outcomes import plots

    re, formula = _random_effects(ctx)
    f = ctx.frame()
    sec.para(f"From the mixed model {formula}: each therapist's (and site's) deviation from "
             f"the network's within-session change, shrunken towards zero when it rests on few "
             f"readings, with a 95 % interval. Units with fewer than {ctx.min_cell} patients "
             f"are left out.")
    for group, noun in (("therapist_id", "therapist"), ("site_id", "site")):
        sub = re[re["group"] == group]
        if sub.empty:
            continue
        term = "post" if "post" in set(sub["term"]) else sub["term"].iloc[0]
        sub = sub[sub["term"] == term]
        n = f.groupby(group, observed=True)["patient_id"].nunique()
        sub = sub[[n.get(lv, 0) >= ctx.min_cell for lv in sub["level"].astype(str)]]
        if sub.empty:
            continue
        names = _names(ctx, group)
        data = sub.assign(name=sub["level"].astype(str).map(names))[["name", "estimate",
                                                                      "cond_sd"]]
        if _no_variation(sec, data, noun):
            continue
        ctx.figure(sec, f"caterpillar of {noun}s",
                   lambda d=data, w=noun: plots.named_caterpillar(
                       d, xlabel=f"{w} effect on the within-session change",
                       title=f"Random effects: {w}s"),
                   f"Random effects of {noun}s on the within-session change, with 95 % "
                   f"intervals.", f"Caterpillar plot of {noun} random effects.")


