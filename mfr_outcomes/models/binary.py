"""Binary outcomes of a Study as generalised mixed models: numbness/tingling and adverse events.

``fit_binary`` gives subject-specific odds ratios (a logistic GLMM with a patient random
intercept, glmer's method) over the course of care, with the population-averaged GEE of
:func:`mfr_outcomes.effects.paresthesia_gee` beside them. ``fit_adverse_events`` models the
chance of an adverse event at a treatment session by technique, for the report's safety section.
"""
from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.measures import get_measure
from mfr_outcomes.models.glmm_api import fit_generalized
from mfr_outcomes.models.glmm_fit import GeneralizedMixedFit
from mfr_outcomes.study import model_dtypes
from mfr_outcomes.warnings_ import DataWarning

__all__ = ["fit_binary", "fit_adverse_events", "binary_frame", "BinaryOutcomeFit",
           "AdverseEventsFit", "attenuation_factor", "WHY_ODDS_RATIOS_DIFFER"]

#: (16√3 / 15π)², the logistic–probit constant of Zeger, Liang & Albert (1988).
_C2 = (16.0 * np.sqrt(3.0) / (15.0 * np.pi)) ** 2

WHY_ODDS_RATIOS_DIFFER = (
    "The mixed model's odds ratios are subject-specific (the change in one patient's odds), the "
    "GEE's are population-averaged (the change in the odds of all patients together); with a "
    "patient variance σ² on the logit scale the averaged log odds ratio is smaller by about "
    "1/√(1 + 0.346 σ²), so the GEE's odds ratios lie closer to 1 without either being wrong.")


def attenuation_factor(patient_variance: float) -> float:
    """1/√(1 + c² σ²), c² = (16√3/15π)² ≈ 0.346: population-averaged / subject-specific log OR."""
    return float(1.0 / np.sqrt(1.0 + _C2 * patient_variance))


def binary_frame(study: Any, measure: str = "paresthesia", *, by: str | None = "technique",
                 time: str | None = "session_number", covariates: Sequence[str] = ()
                 ) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Pre-session readings of a binary measure on treatment visits, ready to model.

    Returns
    -------
    (frame, terms, notes)
        The rows with every used column present (sorted by patient and session), the fixed
        terms (by, time, covariates) and sentences about rows left out.
    """
    m = get_measure(measure)
    if not m.binary:
        raise ValueError(f"{measure!r} is not a binary measure; use fit_prepost or fit_course "
                         f"for it.")
    frame = study.frame(measure)
    frame = frame[(frame["post"] == 0) & (frame["technique"].astype(str) != "none")].copy()
    terms: list[str] = []
    for col, what in ((by, "by"), (time, "time")):
        if col:
            if col not in frame.columns:
                raise ValueError(f"{what}={col!r} is not a column of the analysis frame "
                                 f"(columns: {', '.join(frame.columns)}).")
            terms.append(col)
    for c in covariates:
        if c not in frame.columns:
            raise ValueError(f"covariate {c!r} is not a column of the analysis frame.")
        terms.append(c)
    used = ["value", "patient_id"] + terms
    notes = []
    n0 = len(frame)
    frame = frame.dropna(subset=used)
    if len(frame) < n0:
        notes.append(f"{n0 - len(frame)} reading(s) with a missing "
                     f"{', '.join(c for c in used if c in frame)} value left out")
    frame = model_dtypes(frame).sort_values(["patient_id", "session_number"])
    return frame.reset_index(drop=True), terms, notes


@dataclass
class BinaryOutcomeFit:
    """Subject-specific (GLMM) and population-averaged (GEE) odds ratios of a binary outcome.

    Attributes
    ----------
    glmm : GeneralizedMixedFit
        ``value ~ by + time + covariates + (1 | patient_id)``, binomial, logit.
    gee : DataFrame
        :func:`mfr_outcomes.effects.paresthesia_gee` on the same terms.
    odds_ratios : DataFrame
        term, odds_ratio, ci_low, ci_high, p_value (GLMM, subject-specific), gee_odds_ratio,
        gee_ci_low, gee_ci_high, gee_p_value (population-averaged), expected_gee_odds_ratio
        (the GLMM's log OR times :func:`attenuation_factor`).
    explanation : str
        Why the two odds ratios differ.
    """

    measure: str
    formula: str
    glmm: GeneralizedMixedFit
    gee: pd.DataFrame
    odds_ratios: pd.DataFrame
    explanation: str
    patient_variance: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        tab = self.odds_ratios.set_index("term")
        lines = [f"Binary outcome {self.measure!r}: {self.formula}",
                 f"patient variance (logit scale) {self.patient_variance:.3g}; attenuation "
                 f"factor {attenuation_factor(self.patient_variance):.3f}", "",
                 tab.to_string(float_format=lambda v: f"{v:.3f}"), "", self.explanation]
        if self.notes:
            lines += ["", "Notes:"] + [f" - {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        tab = self.odds_ratios.to_html(index=False, float_format=lambda v: f"{v:.3f}")
        return (f"<div><p><b>Odds ratios of {html.escape(self.measure)}</b> "
                f"<code>{html.escape(self.formula)}</code></p>{tab}"
                f"<p>{html.escape(self.explanation)}</p></div>")


def fit_binary(study: Any, measure: str = "paresthesia", *, by: str | None = "technique",
               time: str | None = "session_number", covariates: Sequence[str] = (),
               nagq: int = 1, level: float = 0.95) -> BinaryOutcomeFit:
    """Subject-specific odds ratios of a binary measure over the course of care (logistic GLMM).

    Parameters
    ----------
    study : Study
    measure : str
        A binary measure code (default ``paresthesia``: numbness or tingling before a session).
    by : str, optional
        A factor of the analysis frame (default ``technique``).
    time : str, optional
        ``session_number`` (default) or ``weeks``.
    covariates : sequence of str
    nagq : int
        1 (Laplace, default) or more (adaptive quadrature).
    level : float
        Confidence level of the intervals.

    Returns
    -------
    BinaryOutcomeFit

    Examples
    --------
    ::

        import mfr_outcomes as mfr
        res = mfr.fit_binary(mfr.load_study("data/synthetic"), "paresthesia")
        res.odds_ratios  # term, odds_ratio, ci_low, ci_high, p_value, gee_odds_ratio, ...
        print(res.explanation)
    """
    from mfr_outcomes.effects import paresthesia_gee

    frame, terms, notes = binary_frame(study, measure, by=by, time=time, covariates=covariates)
    for n in notes:
        warnings.warn(f"{n[0].upper()}{n[1:]}.", DataWarning, stacklevel=2)
    if frame["patient_id"].nunique() < 2 or frame["value"].nunique() < 2:
        raise ValueError(f"{measure!r} needs readings from at least two patients and both "
                         f"outcomes (0 and 1) to be modelled; found "
                         f"{frame['patient_id'].nunique()} patient(s), values "
                         f"{sorted(frame['value'].unique().tolist())}.")
    formula = "value ~ " + (" + ".join(terms) if terms else "1") + " + (1 | patient_id)"
    glmm = fit_generalized(frame, formula, family="binomial", nagq=nagq)
    gee = paresthesia_gee(study, by=by, measure=measure, time=time, covariates=covariates,
                          level=level)
    ss = glmm.linear_contrast(np.eye(glmm.spec.p), names=glmm.spec.fixed_names, level=level)
    sigma2 = float(glmm.variance_components["variance"].iloc[0])
    factor = attenuation_factor(sigma2)
    out = pd.DataFrame({"term": ss["term"], "odds_ratio": np.exp(ss["estimate"]),
                        "ci_low": np.exp(ss["ci_low"]), "ci_high": np.exp(ss["ci_high"]),
                        "p_value": ss["p_value"]})
    g = gee.set_index("term").reindex(out["term"])
    out["gee_odds_ratio"] = g["odds_ratio"].to_numpy()
    out["gee_ci_low"] = g["ci_low"].to_numpy()
    out["gee_ci_high"] = g["ci_high"].to_numpy()
    out["gee_p_value"] = g["p_value"].to_numpy()
    out["expected_gee_odds_ratio"] = np.exp(ss["estimate"] * factor)
    out = out[out["term"] != "(Intercept)"].reset_index(drop=True)
    return BinaryOutcomeFit(measure=measure, formula=formula, glmm=glmm, gee=gee,
                            odds_ratios=out, explanation=WHY_ODDS_RATIOS_DIFFER,
                            patient_variance=sigma2,
                            notes=notes + list(gee.attrs.get("notes", [])))


@dataclass
class AdverseEventsFit:
    """Adverse events per treatment session by technique (a GLMM with a patient intercept).

    Attributes
    ----------
    table : DataFrame
        One row a technique: sessions, events, rate (raw share of sessions), then the model's
        estimate for a typical patient (random effect 0): ``probability`` (binomial) or
        ``rate_model`` (Poisson: events per session), with ci_low, ci_high.
    odds_ratios : DataFrame
        Binomial: each technique against the reference: term, odds_ratio, ci_low, ci_high,
        p_value (empty when no model could be fitted, or for the Poisson model).
    glmm : GeneralizedMixedFit or None
        None when there are too few events to fit (then ``notes`` says why).
    formula : str
    notes : list of str
        Rows left out, and every caution of the model (singular fit, non-convergence,
        separation, overdispersion), never dropped.
    family : {"binomial", "poisson"}
    rate_ratios : DataFrame
        Poisson: term, rate_ratio, ci_low, ci_high, p_value (each technique against the
        reference; empty otherwise).
    """

    table: pd.DataFrame
    odds_ratios: pd.DataFrame
    glmm: GeneralizedMixedFit | None
    formula: str
    notes: list[str] = field(default_factory=list)
    family: str = "binomial"
    rate_ratios: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["term", "rate_ratio", "ci_low", "ci_high", "p_value"]))

    @property
    def ratios(self) -> pd.DataFrame:
        """The model's ratios against the reference technique: odds (binomial) or rate
        (Poisson) ratios."""
        return self.rate_ratios if self.family == "poisson" else self.odds_ratios


def fit_adverse_events(study: Any, *, by: str = "technique", level: float = 0.95,
                       family: str = "binomial") -> AdverseEventsFit:
    """Adverse events at treatment sessions, by technique, as a GLMM with a patient intercept.

    Treatment sessions (technique not ``none``) with a recorded ``adverse_event``; an event is
    anything but ``none``.

    - ``family="binomial"`` (default): the chance of an event at a session,
      ``event ~ by + (1 | patient_id)``, one row a session; odds ratios.
    - ``family="poisson"``: events per session as a rate, ``events ~ by +
      offset(log(sessions)) + (1 | patient_id)``, one row a patient and technique (events and
      sessions counted); rate ratios. A patient's sessions of one technique enter as one count
      with its exposure, which gives the same estimates as one row a session.

    Examples
    --------
    ::

        import mfr_outcomes as mfr
        ae = mfr.fit_adverse_events(mfr.load_study("data/synthetic"), family="poisson")
        ae.table        # technique, sessions, events, rate, rate_model, ci_low, ci_high
        ae.rate_ratios  # term, rate_ratio, ci_low, ci_high, p_value
    """
    if family not in ("binomial", "poisson"):
        raise ValueError(f"family must be 'binomial' or 'poisson'; got {family!r}.")
    s = study.sessions
    if by not in s.columns:
        raise ValueError(f"by={by!r} is not a column of the sessions table.")
    s = s[s["technique"].astype(str) != "none"]
    notes: list[str] = []
    missing = s["adverse_event"].isna()
    if missing.any():
        notes.append(f"{int(missing.sum())} treatment session(s) without a recorded adverse_event "
                     f"left out")
    s = model_dtypes(s[~missing])
    frame = pd.DataFrame({"patient_id": s["patient_id"].astype(str), by: s[by],
                          "event": (s["adverse_event"].astype(str) != "none").astype(float)})
    counts = frame.groupby(by, observed=True)["event"].agg(["size", "sum"])
    table = pd.DataFrame({by: counts.index.astype(str), "sessions": counts["size"].to_numpy(),
                          "events": counts["sum"].to_numpy().astype(int)})
    table["rate"] = table["events"] / table["sessions"]
    estimate = "rate_model" if family == "poisson" else "probability"
    if family == "poisson":
        formula = f"events ~ {by} + offset(log(sessions)) + (1 | patient_id)"
        model_frame = frame.groupby(["patient_id", by], observed=True)["event"].agg(
            events="sum", sessions="size").reset_index()
    else:
        formula = f"event ~ {by} + (1 | patient_id)"
        model_frame = frame
    empty = pd.DataFrame(columns=["term", "odds_ratio", "ci_low", "ci_high", "p_value"])
    out = AdverseEventsFit(table, empty, None, formula, notes, family)
    if frame["event"].sum() == 0 or frame["event"].min() == 1 or len(frame) < 2:
        notes.append("no variation in adverse events (none or all sessions), so no model")
        table[[estimate, "ci_low", "ci_high"]] = np.nan
        return out
    glmm = fit_generalized(model_frame, formula, family=family)
    emm = glmm.emmeans(by, type="response", level=level)
    emm[by] = emm[by].astype(str)
    out.table = table.merge(emm[[by, "estimate", "ci_low", "ci_high"]].rename(
        columns={"estimate": estimate}), on=by, how="left")
    ex = glmm.fixed_effects_exp
    ratio = "rate_ratio" if family == "poisson" else "odds_ratio"
    ratios = ex[ex["term"] != "(Intercept)"][["term", "estimate", "ci_low", "ci_high", "p_value"]]
    ratios = ratios.rename(columns={"estimate": ratio}).reset_index(drop=True)
    if family == "poisson":
        out.rate_ratios = ratios
    else:
        out.odds_ratios = ratios
    out.glmm = glmm
    notes += glmm.diagnostics["warnings"]
    return out
