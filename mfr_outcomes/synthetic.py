"""Synthetic clinic data with known truth: the three tables of a myofascial release (MFR) service.

:func:`generate_frames` simulates the raw ``patients``, ``sessions`` and ``measurements`` tables of
a clinic network (sites ⊃ therapists ⊃ patients) treating sciatica and hip pain; :func:`generate`
also validates them into a :class:`~mfr_outcomes.study.Study`. Every parameter used is returned in
a frozen :class:`Truth`, so models, power analyses and tests can be checked against it.

The generative model
--------------------
Pain (NRS 0–10) of patient *i* at treatment visit *k* (0-based) is built on a continuous latent
scale and then rounded to an integer and clipped to 0–10 like a clinic records it::

    B_i      = baseline_pain_mean + site_i + therapist_i + a_i          (patient level)
    level_ik = B_i * (1 - r_i * (1 - exp(-k / course_tau_sessions))) + v_ik
               + therapist_ik - therapist_i                              (visit's therapist)
    pre_ik   = level_ik + e_pre
    post_ik  = level_ik + immediate_effect[technique_ik] + u_i + e_post

``site_i ~ N(0, site_sd²)``, ``therapist_i ~ N(0, therapist_sd²)`` for the patient's own
therapist; ``therapist_ik`` is the effect of the therapist of visit *k*, another therapist of the
site with probability ``p_other_therapist`` (patients and therapists partly crossed); ``(a_i, u_i)`` is bivariate
normal with SDs ``patient_sd`` and ``immediate_effect_sd`` and correlation ``patient_corr`` (the
patient's own level and own response to a release); ``r_i ~ N(course_reduction,
course_reduction_sd²)`` clipped to [-0.2, 0.95] is the patient's fractional course improvement;
``v_ik ~ N(0, session_sd²)`` is a visit-level fluctuation shared by the pre and post readings of
one visit (0 by default); ``e ~ N(0, residual_sd²)`` is reading and day-to-day error. With the defaults the SD of baseline pain
is about 1.8 and the therapist share of pain variance about 5 %.

A follow-up visit (technique ``none``, readings ``pre`` only) comes ``followup_weeks`` after the
last treatment, with level ``B_i * (1 - r_i * h_last * followup_retention)``. Leg pain, ODI, range
of motion (SLR, hip internal rotation and flexion, per side; the affected side lower), pressure
pain threshold and paresthesia are linked to the latent pain, so they improve with it. Dropout
after each visit is logistic in the last *recorded* pre-treatment pain (missing at random);
single readings are missing completely at random; adverse events depend on technique only.

Sources of the defaults
-----------------------
- Ajimsha MS, Al-Mudahka NR, Al-Madzhar JA. Effectiveness of myofascial release: systematic review
  of randomized controlled trials. J Bodyw Mov Ther 2015;19:102-112 (doi:10.1016/j.jbmt.2014.06.001)
  — MFR trials are mixed in quality, with encouraging results on pain over courses of a few weeks.
  The review gives no pooled effect size, so ``course_reduction`` (0.45 asymptotic, about 30–45 %
  below baseline by the end of a 4–12 visit course) is an illustrative choice in that spirit.
- Farrar JT et al. Pain 2001;94:149-158 — about 2 NRS points or 30 % is clinically important; the
  defaults make a typical completer reach it, while the immediate (single-visit) drop of 0.35–0.75
  points stays below it. The immediate effects per technique are illustrative.
- Fishman LM et al. Piriformis syndrome: diagnosis, treatment, and outcome — a 10-year study.
  Arch Phys Med Rehabil 2002;83:295-301 — piriformis syndrome as a cause of buttock pain with
  sciatica motivates the piriformis target region and the link of leg pain and SLR with sciatica;
  its patients reported about 35 % disability before treatment, close to the ODI of about 36 at the
  first visit here (``odi_per_pain_point`` × 6 points). Its outcomes (injection and physical therapy,
  10 months) are larger than this course's and are not used.
- Hopper D et al. Dynamic soft tissue mobilisation increases hamstring flexibility in healthy male
  subjects. Br J Sports Med 2005;39:594-598 — immediate gains in hip flexion angle of 1.3° (classic)
  and 4.7° (dynamic soft-tissue mobilisation); ``rom_immediate_gain_deg`` = 2° lies in that range.
- Baseline NRS about 6 ± 1.8, SLR and hip-rotation norms, dropout about 20–25 % over a course,
  adverse-event rates (mostly none, some post-treatment soreness, rare bruising or flare), the
  therapist share of variance (about 5 %) and every other variance component are illustrative
  choices typical of manual-therapy cohorts, not estimates from a particular study.

Design keys for power loops
---------------------------
``n_sessions=(lo, hi)`` (planned treatment visits), ``sessions_per_week``, ``n_sites``,
``therapists_per_site``, ``followup_weeks`` and ``missing_reading_prob`` are :class:`Truth` fields
like any other, passed as keywords; ``measures=[...]`` restricts the measurements table to some
measure codes (pain is still simulated internally, for dropout), which makes large runs faster.
Each measure draws from its own random stream, so restricting measures does not change the values
of the measures kept.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mfr_outcomes.vocab import (
    ADVERSE_EVENT,
    AFFECTED_SIDE,
    CONDITION,
    SEX,
    TARGET_REGION,
    TREATMENT_TECHNIQUES,
)

if TYPE_CHECKING:
    from mfr_outcomes.study import Study

__all__ = ["Truth", "generate", "generate_frames", "SIMULATED_MEASURES", "write_csvs", "codebook"]

#: Measures the simulator produces, in the order rows are written.
SIMULATED_MEASURES = (
    "pain_nrs",
    "leg_pain_nrs",
    "odi",
    "slr_deg",
    "hip_ir_deg",
    "hip_flexion_deg",
    "ppt_kgcm2",
    "paresthesia",
)

# Decimal places a clinic records each measure with (fixes the CSV bytes, too).
_DECIMALS = {
    "pain_nrs": 0,
    "leg_pain_nrs": 0,
    "odi": 0,
    "slr_deg": 0,
    "hip_ir_deg": 0,
    "hip_flexion_deg": 0,
    "ppt_kgcm2": 1,
    "paresthesia": 0,
}
_RANGE = {
    "pain_nrs": (0, 10),
    "leg_pain_nrs": (0, 10),
    "odi": (0, 100),
    "slr_deg": (0, 120),
    "hip_ir_deg": (0, 70),
    "hip_flexion_deg": (0, 150),
    "ppt_kgcm2": (0, 15),
    "paresthesia": (0, 1),
}
_SIDED = ("slr_deg", "hip_ir_deg", "hip_flexion_deg")
_PRE_ONLY = ("odi", "paresthesia")
# Random streams: one for the design, one per measure (so restricting measures keeps values).
# "therapist" last: spawning one more child leaves the earlier streams (and their data) unchanged
_STREAMS = ("design",) + SIMULATED_MEASURES + ("therapist",)


def _d(**kw: Any) -> Any:
    return field(default_factory=lambda: copy.deepcopy(kw))


@dataclass(frozen=True)
class Truth:
    """Every parameter the simulator used. Field names are the keywords of :func:`generate`.

    Dict fields are keyed by a vocabulary label (technique, condition); passing a partial dict as a
    keyword overrides only the keys given. Treat the dicts as read-only.

    Attributes
    ----------
    n_sites : int
        Number of sites ("site-1", ...).
    therapists_per_site : tuple of int
        (low, high) inclusive range of therapists per site; patients are spread evenly over all
        therapists, each patient has one own therapist (patients nested in therapists in sites).
    n_sessions : tuple of int
        (low, high) inclusive range of planned treatment visits per patient.
    p_other_therapist : float
        Probability that a treatment visit after the first is given by another therapist of the
        patient's site (cover, holidays); that visit carries the other therapist's random
        intercept, so patients and therapists are partly crossed. 0 gives a nested design.
    single_session : bool
        One treatment visit per patient (pre and post readings) and no follow-up visit: the
        single-visit design (its pre/post model is the paired t-test's); overrides
        ``n_sessions``.
    sessions_per_week : tuple of int
        (low, high) visits per week; each patient keeps one frequency (1: every 6–8 days,
        2: gaps 3/4 days, 3: gaps 2/2/3 days).
    enrol_start : str
        First possible enrolment date (ISO); enrolment is uniform over ``enrol_days`` days, the
        first visit 1–14 days after enrolment.
    enrol_days : int
    followup_weeks : tuple of int
        (low, high) weeks from the last treatment to the follow-up visit (±2 days).
    age_mean, age_sd : float
        Age in years, normal, rounded and clipped to ``age_range``.
    age_range : tuple of int
    sex_probs, condition_probs, affected_side_probs : dict
        Category probabilities of the patient table.
    symptom_weeks_median, symptom_weeks_log_sd : float
        Symptom duration at enrolment, log-normal (weeks, one decimal).
    technique_probs : dict
        Probability of each treatment technique at a visit.
    technique_switch_prob : float
        Probability that a visit after the first draws a new technique (else repeats the last).
    target_region_probs : dict
        condition -> {region: probability}: the region treated follows the condition.
    duration_mean : dict
        technique -> mean session length in minutes (normal, SD ``duration_sd``, rounded to 5,
        clipped 15–75); follow-up visits take ``followup_duration_min``.
    duration_sd, followup_duration_min : float
    home_program_prob : float
        Probability a patient is given a home exercise programme (recorded on all their visits).
    adverse_event_probs : dict
        technique -> {event: probability} for soreness, bruising, symptom_flare; the rest "none".
        Events do not change the readings.
    baseline_pain_mean : float
        Mean pre-treatment pain (NRS) at the first visit, before rounding.
    site_sd, therapist_sd, patient_sd : float
        SDs of the site, therapist and patient random intercepts of pain.
    session_sd : float
        SD of a visit-level fluctuation shared by the pre and post readings of a visit. 0 by
        default, so that lme4's ``value ~ post * technique + (post | patient)`` is the right
        model; set it > 0 to exercise models with a ``(1 | session)`` term (without that term
        the random ``post`` slope is then underestimated).
    residual_sd : float
        SD of reading error (independent for pre and post).
    immediate_effect : dict
        technique -> mean pre→post change of pain within a visit (negative = relief).
    immediate_effect_sd : float
        SD across patients of the individual pre→post change (random slope of ``post``).
    patient_corr : float
        Correlation of a patient's pain level and own pre→post change (negative: more pain,
        more relief).
    course_reduction : float
        Mean asymptotic fractional reduction of pre-treatment pain over a course: level at visit
        k (0-based) is ``B * (1 - r * (1 - exp(-k / course_tau_sessions)))``.
    course_reduction_sd : float
        SD across patients of that fraction (clipped to [-0.2, 0.95]).
    course_tau_sessions : float
        Visits to reach 63 % of the course reduction.
    followup_retention : float
        Fraction of the course improvement kept at follow-up.
    leg_pain_ratio : dict
        condition -> leg pain as a fraction of the latent back/buttock pain.
    leg_pain_sd : float
        Extra reading noise of leg pain (NRS points).
    odi_per_pain_point, odi_sd : float
        ODI = odi_per_pain_point × latent pain + N(0, odi_sd²), rounded to even points (10
        sections answered), 0–100; recorded at the first visit, the last planned treatment
        visit (completers only) and follow-up.
    slr_normal_deg, slr_patient_sd, slr_residual_sd, slr_age_per_year : float
        Straight-leg raise: unaffected side mean, patient SD, reading SD, change per year of age
        (centred at 45).
    slr_per_pain_point : dict
        condition -> degrees lost on an affected side per latent pain point.
    hip_ir_normal_deg, hip_ir_patient_sd, hip_ir_residual_sd : float
    hip_ir_per_pain_point : dict
        Hip internal rotation, as for SLR.
    hip_flexion_normal_deg, hip_flexion_patient_sd, hip_flexion_residual_sd : float
    hip_flexion_per_pain_point : dict
        Hip flexion, as for SLR; measured only in patients with hip involvement (hip_pain, both).
    rom_immediate_gain_deg : float
        Immediate range-of-motion gain of a release beyond what the pain relief gives (both
        sides).
    ppt_mean, ppt_per_pain_point, ppt_patient_sd, ppt_residual_sd, ppt_immediate_gain : float
        Pressure pain threshold (kg/cm², one decimal): ``ppt_mean`` at ``baseline_pain_mean``,
        lower by ``ppt_per_pain_point`` per latent pain point; ``ppt_immediate_gain`` added post.
    paresthesia_prob : dict
        condition -> probability of paresthesia at ``baseline_pain_mean`` pain.
    paresthesia_per_pain_point, paresthesia_patient_sd : float
        Log-odds per latent pain point and patient random-intercept SD (log-odds).
    dropout_intercept : float
        Log-odds of dropping out after a visit when the recorded pre pain equals
        ``baseline_pain_mean``.
    dropout_pain_coef : float
        Log-odds per point of the last recorded pre-treatment pain (missing at random).
    dropout_after_visit : int
        First visit after which a patient may drop out (every patient attends at least this many).
    followup_attendance, followup_attendance_dropout : float
        Probability that a completer / a dropout attends the follow-up visit.
    missing_reading_prob : float
        Probability that a single reading is missing (a missing pre also removes its post).
    """

    # design
    n_sites: int = 3
    therapists_per_site: tuple[int, int] = (2, 4)
    n_sessions: tuple[int, int] = (4, 12)
    sessions_per_week: tuple[int, int] = (1, 3)
    enrol_start: str = "2026-01-05"
    enrol_days: int = 200
    p_other_therapist: float = 0.15
    single_session: bool = False
    followup_weeks: tuple[int, int] = (4, 8)
    # patients
    age_mean: float = 47.0
    age_sd: float = 14.0
    age_range: tuple[int, int] = (18, 85)
    sex_probs: dict = _d(female=0.56, male=0.43, other=0.01, unknown=0.0)
    condition_probs: dict = _d(sciatica=0.45, hip_pain=0.35, both=0.20)
    affected_side_probs: dict = _d(left=0.45, right=0.45, bilateral=0.10)
    symptom_weeks_median: float = 12.0
    symptom_weeks_log_sd: float = 0.9
    # sessions
    technique_probs: dict = _d(direct_pressure=0.30, stretching=0.20, massage=0.25, combined=0.25)
    technique_switch_prob: float = 0.35
    target_region_probs: dict = _d(
        sciatica={"lower_back": 0.35, "piriformis": 0.50, "hip": 0.0, "multiple": 0.15},
        hip_pain={"lower_back": 0.0, "piriformis": 0.25, "hip": 0.60, "multiple": 0.15},
        both={"lower_back": 0.10, "piriformis": 0.25, "hip": 0.15, "multiple": 0.50},
    )
    duration_mean: dict = _d(direct_pressure=30.0, stretching=30.0, massage=35.0, combined=45.0)
    duration_sd: float = 5.0
    followup_duration_min: float = 20.0
    home_program_prob: float = 0.55
    adverse_event_probs: dict = _d(
        direct_pressure={"soreness": 0.12, "bruising": 0.02, "symptom_flare": 0.010},
        stretching={"soreness": 0.05, "bruising": 0.0, "symptom_flare": 0.010},
        massage={"soreness": 0.06, "bruising": 0.005, "symptom_flare": 0.005},
        combined={"soreness": 0.10, "bruising": 0.015, "symptom_flare": 0.010},
    )
    # pain
    baseline_pain_mean: float = 6.0
    site_sd: float = 0.25
    therapist_sd: float = 0.40
    patient_sd: float = 1.50
    session_sd: float = 0.0
    residual_sd: float = 0.85
    immediate_effect: dict = _d(direct_pressure=-0.60, stretching=-0.35, massage=-0.50,
                                combined=-0.75)
    immediate_effect_sd: float = 0.35
    patient_corr: float = -0.30
    course_reduction: float = 0.45
    course_reduction_sd: float = 0.15
    course_tau_sessions: float = 3.0
    followup_retention: float = 0.80
    # leg pain, disability
    leg_pain_ratio: dict = _d(sciatica=0.90, hip_pain=0.35, both=0.80)
    leg_pain_sd: float = 0.80
    odi_per_pain_point: float = 6.0
    odi_sd: float = 8.0
    # range of motion
    slr_normal_deg: float = 80.0
    slr_patient_sd: float = 8.0
    slr_residual_sd: float = 3.0
    slr_age_per_year: float = -0.2
    slr_per_pain_point: dict = _d(sciatica=4.0, hip_pain=1.0, both=3.0)
    hip_ir_normal_deg: float = 35.0
    hip_ir_patient_sd: float = 6.0
    hip_ir_residual_sd: float = 2.5
    hip_ir_per_pain_point: dict = _d(sciatica=0.7, hip_pain=2.0, both=1.5)
    hip_flexion_normal_deg: float = 115.0
    hip_flexion_patient_sd: float = 8.0
    hip_flexion_residual_sd: float = 3.0
    hip_flexion_per_pain_point: dict = _d(sciatica=1.0, hip_pain=3.0, both=2.5)
    rom_immediate_gain_deg: float = 2.0
    # pressure pain threshold
    ppt_mean: float = 3.5
    ppt_per_pain_point: float = 0.25
    ppt_patient_sd: float = 1.0
    ppt_residual_sd: float = 0.4
    ppt_immediate_gain: float = 0.3
    # paresthesia
    paresthesia_prob: dict = _d(sciatica=0.60, hip_pain=0.10, both=0.50)
    paresthesia_per_pain_point: float = 0.35
    paresthesia_patient_sd: float = 1.0
    # missingness
    dropout_intercept: float = -3.2
    dropout_pain_coef: float = 0.30
    dropout_after_visit: int = 2
    followup_attendance: float = 0.85
    followup_attendance_dropout: float = 0.30
    missing_reading_prob: float = 0.03

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python values (tuples become lists), e.g. for JSON."""
        out = {}
        for f in dataclasses.fields(self):
            value = copy.deepcopy(getattr(self, f.name))
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def __hash__(self) -> int:
        # dict fields make the generated hash fail; hash the canonical JSON instead
        import json

        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def total_pain_sd(self) -> float:
        """SD of a single pre-treatment pain reading at the first visit (before rounding)."""
        return float(np.sqrt(self.site_sd**2 + self.therapist_sd**2 + self.patient_sd**2
                             + self.session_sd**2 + self.residual_sd**2))

    @property
    def therapist_share(self) -> float:
        """Therapist share of the total pre-treatment pain variance at the first visit."""
        return self.therapist_sd**2 / self.total_pain_sd**2

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of every field, i.e. the valid keywords of :func:`generate`."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls, **effects: Any) -> Truth:
        """Defaults overridden by *effects*; partial dicts update the default dict.

        Raises TypeError for an unknown keyword and ValueError for an impossible value.
        """
        names = cls.field_names()
        unknown = sorted(set(effects) - set(names))
        if unknown:
            raise TypeError(
                f"unknown simulation parameter(s) {', '.join(map(repr, unknown))}; "
                f"valid names are: {', '.join(names)}")
        base = cls()
        values: dict[str, Any] = {}
        for name, value in effects.items():
            default = getattr(base, name)
            if isinstance(default, dict):
                if not isinstance(value, Mapping):
                    raise ValueError(f"{name} must be a dict like {default!r}, got {value!r}")
                bad = sorted(set(value) - set(default))
                if bad:
                    raise ValueError(f"{name}: unknown key(s) {', '.join(map(repr, bad))}; "
                                     f"valid keys are: {', '.join(default)}")
                merged = copy.deepcopy(default)
                for k, v in value.items():
                    if isinstance(merged[k], dict):
                        if not isinstance(v, Mapping) or set(v) - set(merged[k]):
                            raise ValueError(f"{name}[{k!r}] must be a dict with keys "
                                             f"{', '.join(merged[k])}, got {v!r}")
                        merged[k].update({kk: float(vv) for kk, vv in v.items()})
                    else:
                        merged[k] = float(v)
                value = merged
            elif isinstance(default, tuple):
                if len(value) != 2:
                    raise ValueError(f"{name} must be a (low, high) pair, got {value!r}")
                value = (int(value[0]), int(value[1]))
            elif isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, int) and not isinstance(default, float):
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            values[name] = value
        truth = dataclasses.replace(base, **values)
        truth._check()
        return truth

    def _check(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        for name in ("therapists_per_site", "n_sessions", "sessions_per_week", "followup_weeks",
                     "age_range"):
            lo, hi = getattr(self, name)
            need(lo <= hi, f"{name} = ({lo}, {hi}): low must not exceed high")
        need(self.n_sites >= 1, "n_sites must be at least 1")
        need(self.therapists_per_site[0] >= 1, "therapists_per_site must be at least 1")
        need(self.n_sessions[0] >= 1, "n_sessions must be at least 1")
        need(1 <= self.sessions_per_week[0] and self.sessions_per_week[1] <= 3,
             "sessions_per_week must lie in 1–3")
        need(self.followup_weeks[0] >= 1, "followup_weeks must be at least 1")
        need(self.enrol_days >= 1, "enrol_days must be at least 1")
        need(1 <= self.dropout_after_visit, "dropout_after_visit must be at least 1")
        try:
            pd.Timestamp(self.enrol_start)
        except (ValueError, TypeError):
            raise ValueError(f"enrol_start = {self.enrol_start!r} is not an ISO date") from None
        for f in dataclasses.fields(self):
            if f.name.endswith("_sd") and getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be ≥ 0, got {getattr(self, f.name)}")
        need(-1 <= self.patient_corr <= 1, "patient_corr must lie in [-1, 1]")
        for name in ("p_other_therapist", "technique_switch_prob", "home_program_prob",
                     "followup_attendance",
                     "followup_attendance_dropout", "missing_reading_prob", "followup_retention"):
            need(0 <= getattr(self, name) <= 1, f"{name} must lie in [0, 1]")
        for name, vocab in (("sex_probs", SEX), ("condition_probs", CONDITION),
                            ("affected_side_probs", AFFECTED_SIDE),
                            ("technique_probs", TREATMENT_TECHNIQUES)):
            p = np.array([getattr(self, name).get(k, 0.0) for k in vocab])
            need(bool(np.all(p >= 0)) and p.sum() > 0, f"{name} must be non-negative, not all 0")
        for cond, probs in self.target_region_probs.items():
            p = np.array(list(probs.values()))
            need(bool(np.all(p >= 0)) and p.sum() > 0,
                 f"target_region_probs[{cond!r}] must be non-negative, not all 0")
        for tech, probs in self.adverse_event_probs.items():
            p = np.array(list(probs.values()))
            need(bool(np.all(p >= 0)) and p.sum() <= 1,
                 f"adverse_event_probs[{tech!r}] must be non-negative and sum to ≤ 1")
        for cond, p in self.paresthesia_prob.items():
            need(0 < p < 1, f"paresthesia_prob[{cond!r}] must lie strictly in (0, 1)")


# ---------------------------------------------------------------------------------------------
# helpers


def _probs(mapping: Mapping[str, float], vocab: Iterable[str]) -> np.ndarray:
    p = np.array([float(mapping.get(k, 0.0)) for k in vocab])
    return p / p.sum()


def _choice_rows(rng: np.random.Generator, cum: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a row-wise cumulative probability matrix."""
    u = rng.random(cum.shape[0])
    return np.minimum((u[:, None] >= cum).sum(axis=1), cum.shape[1] - 1)


def _round_clip(x: np.ndarray, code: str) -> np.ndarray:
    lo, hi = _RANGE[code]
    dec = _DECIMALS[code]
    # "+ 0.0" turns -0.0 into 0.0, so a CSV never shows "-0"
    return np.clip(np.round(x, dec), lo, hi) + 0.0


def _ids(prefix: str, n: int, width: int | None = None) -> np.ndarray:
    width = width or max(3, len(str(n)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)], dtype=object)


def _text(labels: Iterable[str | None], codes: np.ndarray) -> Any:
    """A pandas string array of ``labels[codes]`` (None gives a missing value).

    Built with Arrow's ``take``: turning millions of Python strings into pandas strings is the
    slowest step of a large simulation otherwise.
    """
    import pyarrow as pa

    return pd.array(pa.array(list(labels), type=pa.string()).take(pa.array(codes)), dtype="str")


# ---------------------------------------------------------------------------------------------
# the simulator


def generate_frames(
    n_patients: int = 120,
    seed: int | np.random.Generator | None = 2026,
    *,
    measures: Iterable[str] | None = None,
    **effects: Any,
) -> tuple[dict[str, pd.DataFrame], Truth]:
    """Simulate the raw clinic tables, without validation (fast: for power loops).

    Parameters
    ----------
    n_patients : int
        Number of patients enrolled.
    seed : int or numpy.random.Generator
        Seed of ``numpy.random.default_rng``; the same seed gives the same tables on every run.
    measures : iterable of str, optional
        Measure codes to write in the measurements table (default: all of
        :data:`SIMULATED_MEASURES`). Other measures are skipped, which is faster; the values of
        the measures kept do not change.
    **effects
        Overrides of :class:`Truth` fields, e.g. ``immediate_effect={"massage": -0.8}``,
        ``n_sessions=(4, 6)``, ``therapist_sd=0``. An unknown name raises TypeError.

    Returns
    -------
    frames : dict of DataFrame
        ``patients`` (patient_id, site_id, age_years, sex, condition, affected_side,
        symptom_weeks, enrolled_on), ``sessions`` (session_id, patient_id, therapist_id,
        session_date, session_number, technique, target_region, duration_min, home_program,
        adverse_event) and ``measurements`` (session_id, phase, measure, side, value), with the
        canonical column names and labels; dates are datetime64, labels plain strings.
    truth : Truth
        Every parameter used.

    Examples
    --------
    >>> from mfr_outcomes.synthetic import generate_frames
    >>> frames, truth = generate_frames(n_patients=20, seed=1, measures=["pain_nrs"])
    >>> sorted(frames)
    ['measurements', 'patients', 'sessions']
    >>> set(frames["measurements"]["measure"])
    {'pain_nrs'}
    >>> truth.immediate_effect["combined"]
    -0.75
    """
    truth = Truth.build(**effects)
    n = int(n_patients)
    if n < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients!r}")
    if measures is None:
        wanted = list(SIMULATED_MEASURES)
    else:
        wanted = [measures] if isinstance(measures, str) else list(measures)
        bad = [m for m in wanted if m not in SIMULATED_MEASURES]
        if bad:
            raise ValueError(f"measure(s) {', '.join(map(repr, bad))} are not simulated; "
                             f"choose from {', '.join(SIMULATED_MEASURES)}")
    root = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    streams = dict(zip(_STREAMS, root.spawn(len(_STREAMS)), strict=True))
    sim = _Simulation(n, truth, streams)
    frames = sim.tables(wanted)
    return frames, truth


def generate(
    n_patients: int = 120,
    seed: int | np.random.Generator | None = 2026,
    *,
    measures: Iterable[str] | None = None,
    **effects: Any,
) -> tuple[Study, Truth]:
    """Simulate a validated :class:`~mfr_outcomes.study.Study` with known truth.

    Same arguments as :func:`generate_frames`; the tables go through
    :func:`mfr_outcomes.study.from_frames`, exactly as files do.

    Returns
    -------
    study : Study
    truth : Truth

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> study, truth = mfr.synthetic.generate(n_patients=30, seed=3)
    >>> study.patients.shape[0]
    30
    >>> truth.baseline_pain_mean
    6.0
    """
    from mfr_outcomes.study import from_frames

    frames, truth = generate_frames(n_patients, seed, measures=measures, **effects)
    label = seed if not isinstance(seed, np.random.Generator) else "generator"
    study = from_frames(frames["patients"], frames["sessions"], frames["measurements"],
                        source=f"<synthetic n_patients={int(n_patients)} seed={label}>")
    return study, truth


class _Simulation:
    """Vectorised over patients: matrices are patients × visits (treatment visits, then follow-up)."""

    def __init__(self, n: int, truth: Truth, streams: dict[str, np.random.Generator]) -> None:
        self.n = n
        self.t = truth
        self.streams = streams
        self._design()

    # -- patients, visits, pain ---------------------------------------------------------------
    def _design(self) -> None:
        t, n, rng = self.t, self.n, self.streams["design"]
        lo, hi = (1, 1) if t.single_session else t.n_sessions
        self.kmax = hi
        # sites and therapists
        n_ther = rng.integers(t.therapists_per_site[0], t.therapists_per_site[1] + 1,
                              size=t.n_sites)
        ther_site = np.repeat(np.arange(t.n_sites), n_ther)
        n_t = int(n_ther.sum())
        self.therapist_ids = _ids("T", n_t, 2)
        self.site_ids = np.array([f"site-{s + 1}" for s in range(t.n_sites)], dtype=object)
        # patients spread evenly over therapists, in random order
        ther = rng.permutation(np.resize(np.arange(n_t), n))
        self.ther = ther
        self.site = ther_site[ther]
        self.ther_visit = self._visit_therapists(ther, n_ther, hi)
        # patient covariates
        age = np.clip(np.round(rng.normal(t.age_mean, t.age_sd, n)), *t.age_range)
        self.age = age.astype(np.int64)
        self.sex = _choice_rows(rng, np.tile(np.cumsum(_probs(t.sex_probs, SEX)), (n, 1)))
        self.cond = _choice_rows(rng, np.tile(np.cumsum(_probs(t.condition_probs, CONDITION)),
                                              (n, 1)))
        self.side = _choice_rows(rng, np.tile(
            np.cumsum(_probs(t.affected_side_probs, AFFECTED_SIDE)), (n, 1)))
        self.symptom_weeks = np.round(
            t.symptom_weeks_median * np.exp(rng.normal(0, t.symptom_weeks_log_sd, n)), 1)
        enrol = rng.integers(0, t.enrol_days, n)
        first = enrol + rng.integers(1, 15, n)
        self.home = rng.random(n) < t.home_program_prob
        # planned course and visit days
        planned = rng.integers(lo, hi + 1, n)
        freq = rng.integers(t.sessions_per_week[0], t.sessions_per_week[1] + 1, n)
        k = np.arange(hi - 1)[None, :]
        phase = rng.integers(0, 6, n)[:, None]
        gaps = np.where(
            freq[:, None] == 1, rng.integers(6, 9, (n, hi - 1)),
            np.where(freq[:, None] == 2, np.where((k + phase) % 2 == 0, 3, 4),
                     np.where((k + phase) % 3 == 2, 3, 2)))
        day = first[:, None] + np.concatenate([np.zeros((n, 1), int), np.cumsum(gaps, 1)], 1)
        # techniques: persistent within a patient, switching now and then
        p_tech = np.cumsum(_probs(t.technique_probs, TREATMENT_TECHNIQUES))
        tech = np.empty((n, hi), dtype=np.int64)
        tech[:, 0] = _choice_rows(rng, np.tile(p_tech, (n, 1)))
        for j in range(1, hi):
            new = _choice_rows(rng, np.tile(p_tech, (n, 1)))
            switch = rng.random(n) < t.technique_switch_prob
            tech[:, j] = np.where(switch, new, tech[:, j - 1])
        self.tech = tech
        # target region follows condition
        reg_cum = np.array([np.cumsum(_probs(t.target_region_probs[c], TARGET_REGION))
                            for c in CONDITION])
        self.region = np.stack([_choice_rows(rng, reg_cum[self.cond]) for _ in range(hi)], 1)
        dur_mean = np.array([t.duration_mean[x] for x in TREATMENT_TECHNIQUES])[tech]
        self.duration = np.clip(np.round(rng.normal(dur_mean, t.duration_sd) / 5) * 5, 15, 75)
        ae_p = np.array([[t.adverse_event_probs[x].get(e, 0.0) for e in ADVERSE_EVENT[1:4]]
                         for x in TREATMENT_TECHNIQUES])
        ae_cum = np.cumsum(np.column_stack([1 - ae_p.sum(1), ae_p]), axis=1)
        u = rng.random((n, hi))
        self.ae = (u[..., None] >= ae_cum[tech]).sum(-1).clip(0, 3)

        # --- pain latent structure (design stream, so every measure sees the same patients)
        site_re = rng.normal(0, t.site_sd, t.n_sites)
        ther_re = rng.normal(0, t.therapist_sd, n_t)
        z1, z2 = rng.standard_normal((2, n))
        rho = t.patient_corr
        a = t.patient_sd * z1
        u_imm = t.immediate_effect_sd * (rho * z1 + np.sqrt(1 - rho**2) * z2)
        r = np.clip(rng.normal(t.course_reduction, t.course_reduction_sd, n), -0.2, 0.95)
        self.B = t.baseline_pain_mean + site_re[self.site] + ther_re[ther] + a
        self.r = r
        h = 1 - np.exp(-np.arange(hi) / t.course_tau_sessions)
        level = self.B[:, None] * (1 - r[:, None] * h[None, :]) + rng.normal(0, t.session_sd,
                                                                              (n, hi))
        # a visit given by another therapist carries that therapist's effect (crossed design)
        level = level + ther_re[self.ther_visit] - ther_re[ther][:, None]
        imm = np.array([t.immediate_effect[x] for x in TREATMENT_TECHNIQUES])[tech]
        self.pre_lat = level + rng.normal(0, t.residual_sd, (n, hi))
        self.post_lat = level + imm + u_imm[:, None] + rng.normal(0, t.residual_sd, (n, hi))
        # pain readings and their missingness come from the pain stream
        prng = self.streams["pain_nrs"]
        self.pain_pre = _round_clip(self.pre_lat, "pain_nrs")
        self.pain_post = _round_clip(self.post_lat, "pain_nrs")
        self.pain_miss_pre = prng.random((n, hi)) < t.missing_reading_prob
        self.pain_miss_post = prng.random((n, hi)) < t.missing_reading_prob

        # --- attendance: dropout after visit j depends on the last recorded pre pain (MAR)
        attended = np.zeros((n, hi), dtype=bool)
        attended[:, 0] = True
        last_pain = np.where(self.pain_miss_pre[:, 0], t.baseline_pain_mean, self.pain_pre[:, 0])
        u_drop = rng.random((n, hi))
        for j in range(1, hi):
            p = 1 / (1 + np.exp(-(t.dropout_intercept
                                  + t.dropout_pain_coef * (last_pain - t.baseline_pain_mean))))
            may_drop = j >= t.dropout_after_visit
            stay = ~(may_drop & (u_drop[:, j - 1] < p))
            attended[:, j] = attended[:, j - 1] & (j < planned) & stay
            last_pain = np.where(attended[:, j] & ~self.pain_miss_pre[:, j], self.pain_pre[:, j],
                                 last_pain)
        self.attended = attended
        self.n_visits = attended.sum(1)
        self.completer = self.n_visits == planned
        # follow-up
        p_fu = np.where(self.completer, t.followup_attendance, t.followup_attendance_dropout)
        if t.single_session:  # one visit, pre and post: no follow-up
            p_fu = np.zeros(n)
        self.has_fu = rng.random(n) < p_fu
        fu_weeks = rng.integers(t.followup_weeks[0], t.followup_weeks[1] + 1, n)
        last_day = day[np.arange(n), self.n_visits - 1]
        self.fu_day = last_day + 7 * fu_weeks + rng.integers(-2, 3, n)
        h_last = h[self.n_visits - 1]
        fu_level = self.B * (1 - r * h_last * t.followup_retention) + rng.normal(
            0, t.session_sd, n)
        self.fu_lat = fu_level + rng.normal(0, t.residual_sd, n)
        self.fu_pain = _round_clip(self.fu_lat, "pain_nrs")
        self.fu_pain_miss = prng.random(n) < t.missing_reading_prob
        self.day = day
        self.enrol = enrol
        self.start = pd.Timestamp(self.t.enrol_start).to_datetime64().astype("datetime64[D]")

        # --- session index: treatment visits (n × hi) then follow-up (n × 1), flattened by
        # patient and visit number
        self.present = np.concatenate([attended, self.has_fu[:, None]], 1)  # n × (hi + 1)

    def _visit_therapists(self, ther: np.ndarray, n_ther: np.ndarray, hi: int) -> np.ndarray:
        """Therapist of each treatment visit (patients × visits): the patient's own therapist,
        except that a visit after the first is given by another therapist of the same site with
        probability ``p_other_therapist`` (cover, holidays). Drawn from its own stream."""
        trng = self.streams["therapist"]
        n = ther.size
        start = np.concatenate([[0], np.cumsum(n_ther)[:-1]])
        site = np.repeat(np.arange(n_ther.size), n_ther)[ther]
        size = n_ther[site][:, None]
        switch = trng.random((n, hi)) < self.t.p_other_therapist
        switch[:, 0] = False
        switch &= size > 1
        offset = trng.integers(1, np.maximum(size, 2), (n, hi))
        local = (ther - start[site])[:, None]
        other = start[site][:, None] + (local + offset) % size
        return np.where(switch, other, ther[:, None])

    # -- tables -------------------------------------------------------------------------------
    def tables(self, wanted: list[str]) -> dict[str, pd.DataFrame]:
        n, hi, t = self.n, self.kmax, self.t
        width = max(3, len(str(n)))
        patient_labels = [f"P{i:0{width}d}" for i in range(1, n + 1)]
        every = np.arange(n)
        patients = pd.DataFrame({
            "patient_id": _text(patient_labels, every),
            "site_id": _text(self.site_ids, self.site),
            "age_years": self.age,
            "sex": _text(SEX, self.sex),
            "condition": _text(CONDITION, self.cond),
            "affected_side": _text(AFFECTED_SIDE, self.side),
            "symptom_weeks": self.symptom_weeks,
            "enrolled_on": self.start + self.enrol.astype("timedelta64[D]"),
        })
        present = self.present
        pi, vi = np.divmod(np.flatnonzero(present.ravel()), hi + 1)  # patient, visit column
        is_fu = vi == hi
        vcol = np.minimum(vi, hi - 1)
        number = np.cumsum(present, 1)[pi, vi]
        days = np.where(is_fu, self.fu_day[pi], self.day[pi, vcol])
        # session ids "P001-01": joined in Arrow, which is much faster than Python strings
        import pyarrow as pa
        import pyarrow.compute as pc

        sess_arrow = pc.binary_join_element_wise(
            pa.array(patient_labels).take(pa.array(pi)),
            pa.array([f"{k:02d}" for k in range(hi + 2)]).take(pa.array(number)), "-")
        sess_ids = pd.array(sess_arrow, dtype="str")
        sessions = pd.DataFrame({
            "session_id": sess_ids,
            "patient_id": _text(patient_labels, pi),
            "therapist_id": _text(self.therapist_ids,
                                  np.where(is_fu, self.ther[pi], self.ther_visit[pi, vcol])),
            "session_date": self.start + days.astype("timedelta64[D]"),
            "session_number": number.astype(np.int64),
            "technique": _text(TREATMENT_TECHNIQUES + ("none",),
                               np.where(is_fu, 4, self.tech[pi, vcol])),
            # code len(TARGET_REGION) is the missing region of a follow-up visit
            "target_region": _text(TARGET_REGION + (None,),
                                   np.where(is_fu, len(TARGET_REGION), self.region[pi, vcol])),
            "duration_min": np.where(is_fu, t.followup_duration_min,
                                     self.duration[pi, vcol]).astype(float),
            "home_program": self.home[pi],
            "adverse_event": _text(ADVERSE_EVENT, np.where(is_fu, 0, self.ae[pi, vcol])),
        })
        self._rows = (pi, vi, is_fu, vcol)
        measurements = self._measurements(wanted, sess_arrow)
        return {"patients": patients, "sessions": sessions, "measurements": measurements}

    def _latent(self) -> tuple[np.ndarray, np.ndarray]:
        """Latent pain pre and post for every session row (post NaN at follow-up)."""
        pi, vi, is_fu, vcol = self._rows
        pre = np.where(is_fu, self.fu_lat[pi], self.pre_lat[pi, vcol])
        post = np.where(is_fu, np.nan, self.post_lat[pi, vcol])
        return pre, post

    def _measurements(self, wanted: list[str], sess_ids: Any) -> pd.DataFrame:
        t = self.t
        pi, vi, is_fu, vcol = self._rows
        S = len(pi)
        pre_lat, post_lat = self._latent()
        cond = self.cond[pi]
        cond_name = np.array(CONDITION)[cond]
        # slot columns: (phase, measure, side) in output order
        slots: list[tuple[str, str, str]] = []
        values: list[np.ndarray] = []

        def add(phase: str, code: str, side: str, v: np.ndarray) -> None:
            slots.append((phase, code, side))
            values.append(v)

        pre_cols: dict[tuple[str, str], np.ndarray] = {}
        post_cols: dict[tuple[str, str], np.ndarray] = {}

        def missing(rng: np.random.Generator, pre: np.ndarray, post: np.ndarray | None):
            m_pre = rng.random(S) < t.missing_reading_prob
            m_pre |= np.isnan(pre)
            pre = np.where(m_pre, np.nan, pre)
            if post is not None:
                m_post = rng.random(S) < t.missing_reading_prob
                post = np.where(m_pre | m_post | is_fu, np.nan, post)
            return pre, post

        for code in SIMULATED_MEASURES:
            if code not in wanted:
                continue
            rng = self.streams[code]
            if code == "pain_nrs":
                pre = np.where(is_fu, self.fu_pain[pi], self.pain_pre[pi, vcol])
                m_pre = np.where(is_fu, self.fu_pain_miss[pi], self.pain_miss_pre[pi, vcol])
                post = np.where(is_fu | m_pre | self.pain_miss_post[pi, vcol], np.nan,
                                self.pain_post[pi, vcol])
                pre_cols[(code, "none")] = np.where(m_pre, np.nan, pre)
                post_cols[(code, "none")] = post
            elif code == "leg_pain_nrs":
                ratio = np.array([t.leg_pain_ratio[c] for c in CONDITION])[cond]
                noise = rng.normal(0, t.leg_pain_sd, (2, S))
                pre = _round_clip(ratio * pre_lat + noise[0], code)
                post = _round_clip(ratio * post_lat + noise[1], code)
                pre_cols[(code, "none")], post_cols[(code, "none")] = missing(rng, pre, post)
            elif code == "odi":
                v = _round_clip(2 * np.round(
                    (t.odi_per_pain_point * pre_lat + rng.normal(0, t.odi_sd, S)) / 2), code)
                first = vi == 0
                last_planned = self.completer[pi] & (vi == self.n_visits[pi] - 1)
                v = np.where(first | last_planned | is_fu, v, np.nan)
                pre_cols[(code, "none")], _ = missing(rng, v, None)
            elif code in _SIDED:
                if code == "hip_flexion_deg":
                    normal, psd, rsd = (t.hip_flexion_normal_deg, t.hip_flexion_patient_sd,
                                        t.hip_flexion_residual_sd)
                    per = t.hip_flexion_per_pain_point
                elif code == "slr_deg":
                    normal, psd, rsd = t.slr_normal_deg, t.slr_patient_sd, t.slr_residual_sd
                    per = t.slr_per_pain_point
                else:
                    normal, psd, rsd = (t.hip_ir_normal_deg, t.hip_ir_patient_sd,
                                        t.hip_ir_residual_sd)
                    per = t.hip_ir_per_pain_point
                per_pt = np.array([per[c] for c in CONDITION])[cond]
                patient_re = rng.normal(0, psd, (self.n, 2))
                age_term = (t.slr_age_per_year * (self.age - 45.0))[pi] if code == "slr_deg" \
                    else 0.0
                measured = np.ones(S, bool)
                if code == "hip_flexion_deg":
                    measured = cond_name != "sciatica"
                for s_idx, side in enumerate(("left", "right")):
                    affected = (self.side[pi] == s_idx) | (self.side[pi] == 2)
                    base = normal + patient_re[pi, s_idx] + age_term
                    noise = rng.normal(0, rsd, (2, S))
                    pre = base - affected * per_pt * np.maximum(pre_lat, 0) + noise[0]
                    post = (base - affected * per_pt * np.maximum(post_lat, 0)
                            + t.rom_immediate_gain_deg + noise[1])
                    pre, post = _round_clip(pre, code), _round_clip(post, code)
                    pre = np.where(measured, pre, np.nan)
                    pre_cols[(code, side)], post_cols[(code, side)] = missing(rng, pre, post)
            elif code == "ppt_kgcm2":
                patient_re = rng.normal(0, t.ppt_patient_sd, self.n)[pi]
                noise = rng.normal(0, t.ppt_residual_sd, (2, S))
                base = t.ppt_mean + patient_re
                pre = base - t.ppt_per_pain_point * (pre_lat - t.baseline_pain_mean) + noise[0]
                post = (base - t.ppt_per_pain_point * (post_lat - t.baseline_pain_mean)
                        + t.ppt_immediate_gain + noise[1])
                pre = _round_clip(np.maximum(pre, 0.5), code)
                post = _round_clip(np.maximum(post, 0.5), code)
                pre_cols[(code, "none")], post_cols[(code, "none")] = missing(rng, pre, post)
            elif code == "paresthesia":
                p0 = np.array([t.paresthesia_prob[c] for c in CONDITION])[cond]
                eta = (np.log(p0 / (1 - p0))
                       + t.paresthesia_per_pain_point * (pre_lat - t.baseline_pain_mean)
                       + rng.normal(0, t.paresthesia_patient_sd, self.n)[pi])
                v = (rng.random(S) < 1 / (1 + np.exp(-eta))).astype(float)
                pre_cols[(code, "none")], _ = missing(rng, v, None)

        for (code, side), v in pre_cols.items():
            add("pre", code, side, v)
        for (code, side), v in post_cols.items():
            add("post", code, side, v)
        if not slots:
            return pd.DataFrame({c: pd.array([], dtype="str")
                                 for c in ("session_id", "phase", "measure", "side")}
                                | {"value": np.array([], dtype=float)})
        V = np.column_stack(values)  # S × slots, already in output order
        keep = np.flatnonzero(~np.isnan(V).ravel())
        row, slot = np.divmod(keep, V.shape[1])
        return pd.DataFrame({
            "session_id": pd.array(sess_ids.take(row), dtype="str"),
            "phase": _text([x[0] for x in slots], slot),
            "measure": _text([x[1] for x in slots], slot),
            "side": _text([x[2] for x in slots], slot),
            "value": V.ravel()[keep],
        })


# ---------------------------------------------------------------------------------------------
# writing


def write_csvs(frames: Mapping[str, pd.DataFrame], out: Any) -> list[Any]:
    """Write the three tables as CSV with fixed formatting (byte-identical on every machine).

    Dates are ISO (YYYY-MM-DD), floats use ``%.10g`` after rounding to the measure's precision,
    line endings are ``\\n``, empty cells mean missing. Returns the paths written.
    """
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("patients", "sessions", "measurements"):
        path = out / f"{name}.csv"
        frames[name].to_csv(path, index=False, float_format="%.10g", date_format="%Y-%m-%d",
                            lineterminator="\n", encoding="utf-8")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# the codebook

_COLUMNS = {
    "patients": [
        ("patient_id", "string", "", "P001…", "sequential id, zero-padded"),
        ("site_id", "string", "", "site-1…site-{n_sites}",
         "site of the patient's therapist; site random intercept of pain (SD site_sd)"),
        ("age_years", "integer", "years", "{age_range[0]}–{age_range[1]}",
         "normal(age_mean, age_sd), rounded and clipped"),
        ("sex", "category", "", "female / male / other / unknown", "sex_probs"),
        ("condition", "category", "", "sciatica / hip_pain / both", "condition_probs"),
        ("affected_side", "category", "", "left / right / bilateral",
         "affected_side_probs; range of motion is lower on an affected side"),
        ("symptom_weeks", "float", "weeks", "> 0, one decimal",
         "log-normal, median symptom_weeks_median, log-SD symptom_weeks_log_sd; no effect on "
         "outcomes"),
        ("enrolled_on", "date", "ISO YYYY-MM-DD", "{enrol_start} + 0–{enrol_days} days",
         "uniform; the first visit follows 1–14 days later"),
    ],
    "sessions": [
        ("session_id", "string", "", "P001-01…", "patient id and visit number"),
        ("patient_id", "string", "", "in patients", ""),
        ("therapist_id", "string", "", "T01…",
         "the patient's own therapist, nested in a site ({therapists_per_site[0]}–"
         "{therapists_per_site[1]} per site); a treatment visit after the first is given by "
         "another therapist of the site with probability p_other_therapist, "
         "so patients and therapists are partly crossed; the visit's therapist carries a random "
         "intercept of pain (SD therapist_sd)"),
        ("session_date", "date", "ISO YYYY-MM-DD", "after enrolled_on",
         "sessions_per_week visits a week (1: every 6–8 days; 2: every 3/4 days; 3: every 2/2/3 "
         "days); follow-up followup_weeks after the last treatment ±2 days"),
        ("session_number", "integer", "", "1–{n_sessions[1]} + follow-up",
         "date order; the follow-up visit is the last number"),
        ("technique", "category", "",
         "direct_pressure / stretching / massage / combined / none",
         "technique_probs at the first visit, redrawn with technique_switch_prob at each later "
         "visit; none = assessment-only follow-up visit"),
        ("target_region", "category", "", "lower_back / piriformis / hip / multiple; empty at "
         "follow-up", "target_region_probs by condition, drawn at each visit"),
        ("duration_min", "number", "minutes", "15–75",
         "normal(duration_mean[technique], duration_sd) rounded to 5; follow-up "
         "followup_duration_min"),
        ("home_program", "bool", "", "True / False",
         "home exercise programme (home_program_prob), the same on all of a patient's visits; "
         "no effect on outcomes"),
        ("adverse_event", "category", "", "none / soreness / bruising / symptom_flare",
         "adverse_event_probs by technique; none at follow-up; no effect on readings"),
    ],
    "measurements": [
        ("session_id", "string", "", "in sessions", ""),
        ("phase", "category", "", "pre / post", "post only on treatment visits"),
        ("measure", "string", "", "a registry code", "see the measures below"),
        ("side", "category", "", "left / right / none", "left/right for range of motion"),
        ("value", "float", "the measure's unit", "the measure's valid range",
         "rounded to the measure's recording precision"),
    ],
}

_MEASURE_TEXT = {
    "pain_nrs": "integer 0–10; pre and post at every treatment visit, pre at follow-up. Latent "
                "pain model of the module docstring, rounded and clipped.",
    "leg_pain_nrs": "integer 0–10; as pain_nrs. leg_pain_ratio[condition] × latent pain + "
                    "N(0, leg_pain_sd²), so stronger in sciatica.",
    "odi": "0–100, even numbers (10 sections answered); pre only, at the first visit, the last "
           "planned treatment visit (completers) and follow-up. odi_per_pain_point × latent pain "
           "+ N(0, odi_sd²).",
    "slr_deg": "straight-leg raise, degrees 0–120, integer, per side, pre/post. slr_normal_deg + "
               "patient-side effect (slr_patient_sd) + slr_age_per_year × (age − 45) − "
               "slr_per_pain_point[condition] × latent pain on an affected side; post adds "
               "rom_immediate_gain_deg; reading SD slr_residual_sd.",
    "hip_ir_deg": "hip internal rotation, degrees 0–70, integer, per side, pre/post; as slr_deg "
                  "with the hip_ir_* parameters (no age term).",
    "hip_flexion_deg": "hip flexion, degrees 0–150, integer, per side, pre/post, only for "
                       "hip_pain and both; as hip_ir_deg with the hip_flexion_* parameters.",
    "ppt_kgcm2": "pressure pain threshold, kg/cm², one decimal, ≥ 0.5, pre/post. ppt_mean + "
                 "patient effect (ppt_patient_sd) − ppt_per_pain_point × (latent pain − "
                 "baseline_pain_mean); post adds ppt_immediate_gain; reading SD ppt_residual_sd.",
    "paresthesia": "0/1, pre only at every visit. Logistic: logit(paresthesia_prob[condition]) + "
                   "paresthesia_per_pain_point × (latent pain − baseline_pain_mean) + patient "
                   "effect (paresthesia_patient_sd); declines as pain improves.",
}


def _f(x: float, nd: int = 2) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def codebook(frames: Mapping[str, pd.DataFrame], truth: Truth, *, n_patients: int,
             seed: Any) -> str:
    """The README.md of a synthetic data folder: every column, the truth and a clinical check.

    Numbers are formatted by hand, so the text is identical on every machine.
    """
    import json

    t = truth
    p, s, m = frames["patients"], frames["sessions"], frames["measurements"]
    fmt = t.to_dict()
    lines = [
        "# Synthetic MFR clinic data (codebook)",
        "",
        f"Generated by `mfr-outcomes synth --patients {n_patients} --seed {seed}` "
        f"(`mfr_outcomes.synthetic.generate_frames`). Regenerate it with `make synth`; the "
        "files are byte-identical on every machine. **Simulated data: no real patient.**",
        "",
        f"{len(p)} patients, {len(s)} sessions, {len(m)} readings; {s['therapist_id'].nunique()} "
        f"therapists in {p['site_id'].nunique()} sites; "
        f"{int((s.groupby('patient_id')['therapist_id'].nunique() > 1).sum())} patients saw more "
        f"than one therapist (a visit is given by another therapist of the site with probability "
        f"p_other_therapist = {_f(t.p_other_therapist)}), so patients and therapists are partly "
        f"crossed.",
        "",
        "The generative model and the sources of the defaults are in the docstring of "
        "`mfr_outcomes/synthetic.py`. In short: pain of a patient at visit k is a patient level "
        "(baseline_pain_mean + site + therapist + patient random intercepts) reduced along the "
        "course by a patient-specific fraction, plus visit and reading noise; each treatment "
        "lowers the post reading by immediate_effect[technique] plus a patient-specific "
        "response correlated with the patient level. Other measures follow the latent pain. "
        "Dropout depends on the last recorded pain (missing at random); single readings are "
        "missing at random with probability missing_reading_prob; a missing pre reading "
        "removes its post reading too. Missing readings are absent rows.",
        "",
        "Files are UTF-8 CSV with a header row, `\\n` line ends, ISO dates, `.` decimal mark; "
        "an empty cell is missing.",
        "",
    ]
    from mfr_outcomes.schema_doc import columns_markdown  # the loader's own column rules

    lines += ["## Columns the loader checks", "",
              "Generated from the schemas (`mfr-outcomes schema` prints the same table; a clinic "
              "profile adds labels and covariates). Optional columns may be absent.", "",
              columns_markdown(heading="###")]
    for table, cols in _COLUMNS.items():
        lines += [f"## {table}.csv", "", "| column | type | unit | range | how it was generated |",
                  "| --- | --- | --- | --- | --- |"]
        for name, typ, unit, rng_text, how in cols:
            lines.append(f"| {name} | {typ} | {unit} | {rng_text.format(**fmt)} | {how} |")
        lines.append("")
    lines += ["## Measures", "", "| measure | recording and generation |", "| --- | --- |"]
    present = set(m["measure"])
    for code in SIMULATED_MEASURES:
        if code in present:
            lines.append(f"| {code} | {_MEASURE_TEXT[code]} |")
    lines.append("")

    # --- a clinician's check of the data
    ms = m.merge(s[["session_id", "patient_id", "session_number", "technique"]], on="session_id")
    pain = ms[ms["measure"] == "pain_nrs"]
    lines += ["## A clinician's check", ""]
    if len(pain):
        pre = pain[pain["phase"] == "pre"]
        wide = pain.pivot_table(index=["session_id", "technique"], columns="phase",
                                values="value", observed=True).reset_index()
        lines += ["Pre-treatment pain (NRS) by visit number (the last number of a patient is "
                  "the follow-up visit when there is one):", "",
                  "| visit | readings | mean | SD |", "| --- | --- | --- | --- |"]
        for k, g in pre.groupby("session_number"):
            lines.append(f"| {k} | {len(g)} | {_f(g['value'].mean())} | "
                         f"{_f(g['value'].std())} |")
        lines += ["", "Within-visit change of pain (post − pre) by technique, against the truth:",
                  "", "| technique | visits with both | mean change | truth |",
                  "| --- | --- | --- | --- |"]
        for tech in TREATMENT_TECHNIQUES:
            g = wide[wide["technique"] == tech]
            if "post" in g:
                d = (g["post"] - g["pre"]).dropna()
                lines.append(f"| {tech} | {len(d)} | {_f(d.mean())} | "
                             f"{_f(t.immediate_effect[tech])} |")
        fu = pre[pre["technique"] == "none"]
        last_tx = pre[pre["technique"] != "none"].sort_values("session_number") \
            .groupby("patient_id")["value"].last()
        first = pre[pre["session_number"] == 1]["value"]
        lines += ["", f"- first-visit pain: mean {_f(first.mean())}, SD {_f(first.std())} "
                  f"(truth: mean {_f(t.baseline_pain_mean)} before rounding, SD "
                  f"{_f(t.total_pain_sd)})",
                  f"- pain at the last treatment visit: mean {_f(last_tx.mean())} "
                  f"({_f(100 * (1 - last_tx.mean() / first.mean()), 0)} % below the first "
                  f"visit); at follow-up: mean {_f(fu['value'].mean())} ({len(fu)} patients)"]
    n_tx = s[s["technique"] != "none"].groupby("patient_id").size()
    planned_hi = t.n_sessions[1]
    lines += [f"- treatment visits per patient: median {int(n_tx.median())}, range "
              f"{int(n_tx.min())}–{int(n_tx.max())} (planned {t.n_sessions[0]}–{planned_hi})",
              f"- patients with a follow-up visit: {int((s['technique'] == 'none').sum())} of "
              f"{len(p)}",
              "- adverse events: " + ", ".join(
                  f"{k} {int(v)}" for k, v in s["adverse_event"].value_counts()
                  .reindex(list(ADVERSE_EVENT)).dropna().items()),
              ""]
    lines += ["Readings present per measure and phase:", "",
              "| measure | phase | readings | mean | SD |", "| --- | --- | --- | --- | --- |"]
    for (code, phase), g in ms.groupby(["measure", "phase"], sort=False):
        lines.append(f"| {code} | {phase} | {len(g)} | {_f(g['value'].mean())} | "
                     f"{_f(g['value'].std())} |")
    lines += ["", "## Where the defaults come from", "",
              "- Ajimsha MS et al. J Bodyw Mov Ther 2015;19:102-112 (systematic review of MFR "
              "trials): pain improves over courses of a few weeks; no pooled effect, so the "
              "course reduction is illustrative.",
              "- Farrar JT et al. Pain 2001;94:149-158: 2 NRS points or 30 % is clinically "
              "important; single-visit drops here stay below it, course changes reach it.",
              "- Fishman LM et al. Arch Phys Med Rehabil 2002;83:295-301 (piriformis syndrome): "
              "about 35 % disability before treatment, close to the first-visit ODI here.",
              "- Hopper D et al. Br J Sports Med 2005;39:594-598: immediate range-of-motion gains "
              "of 1.3–4.7° after soft-tissue mobilisation; rom_immediate_gain_deg is 2°.",
              "- Everything else (variance components, dropout, adverse-event rates, immediate "
              "effects per technique) is an illustrative choice, not an estimate.",
              "", "## Truth: every parameter used", "",
              "The keywords of `mfr_outcomes.synthetic.generate(...)`; the same values are in "
              "`generate(...)[1].to_dict()`.", "", "```json",
              json.dumps(fmt, indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# a two-arm trial with known course slopes (appended: the arms of a clinic profile)
# --------------------------------------------------------------------------------------------

__all__ += ["TrialTruth", "generate_trial"]


@dataclass(frozen=True)
class TrialTruth:
    """The parameters behind :func:`generate_trial`.

    The reading of patient *i* in arm *a* at week *w* is
    ``intercept + b0_i + (slope + slope_difference * [a is arms[1]] + b1_i) * w + e`` with
    ``b0_i ~ N(0, sd_intercept²)``, ``b1_i ~ N(0, sd_slope²)`` independent and
    ``e ~ N(0, sd_residual²)``. ``slope_difference`` is what ``fit_course(..., by="arm")``
    estimates as its ``weeks:arm[T.<arms[1]>]`` coefficient.
    """

    n_per_arm: int
    seed: int
    arms: tuple[str, str] = ("placebo", "active")
    measure: str = "odi"
    intercept: float = 50.0
    slope: float = -0.5
    slope_difference: float = -0.5
    sd_intercept: float = 8.0
    sd_slope: float = 0.3
    sd_residual: float = 4.0
    visit_weeks: tuple[int, ...] = (0, 2, 4, 8, 12, 16)

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a plain dict."""
        return dataclasses.asdict(self)


def generate_trial(n_per_arm: int = 30, seed: int = 0, **params: Any
                   ) -> tuple[dict[str, pd.DataFrame], TrialTruth]:
    """Simulate a randomised two-arm trial: one treatment visit, then assessment-only visits.

    Each patient is allocated to ``arms[0]`` or ``arms[1]`` (``n_per_arm`` each), treated at the
    first visit (technique ``direct_pressure``) and assessed at ``visit_weeks`` (later visits
    have technique ``none``); the measure (default ``odi``, 0–100) is read before each visit
    (``pre``), rounded to one decimal and clipped to its range. The arms differ in course slope
    by ``slope_difference`` per week.

    Parameters
    ----------
    n_per_arm : int
        Patients in each arm.
    seed : int
        Seed of the random generator.
    **params
        Fields of :class:`TrialTruth` to change (an unknown name is a TypeError).

    Returns
    -------
    frames : dict of DataFrame
        ``patients`` (with ``arm``, a categorical in the order of ``arms``), ``sessions`` and
        ``measurements``, typed as validated tables are, so ``Study(**frames)`` needs no
        validation.
    truth : TrialTruth

    Examples
    --------
    >>> from mfr_outcomes.synthetic import generate_trial
    >>> frames, truth = generate_trial(n_per_arm=4, seed=1)
    >>> frames["patients"]["arm"].value_counts().to_dict()
    {'placebo': 4, 'active': 4}
    >>> sorted(frames["sessions"]["technique"].astype(str).unique())
    ['direct_pressure', 'none']
    """
    truth = TrialTruth(n_per_arm=n_per_arm, seed=seed, **params)
    if n_per_arm < 1:
        raise ValueError(f"n_per_arm must be at least 1, got {n_per_arm}")
    from mfr_outcomes.measures import get_measure
    from mfr_outcomes.vocab import TECHNIQUE

    m = get_measure(truth.measure)
    rng = np.random.default_rng(seed)
    n = 2 * n_per_arm
    active = np.repeat([0, 1], n_per_arm)
    weeks = np.asarray(truth.visit_weeks, dtype=float)
    b0 = rng.normal(0.0, truth.sd_intercept, n)
    b1 = rng.normal(0.0, truth.sd_slope, n)
    slope = truth.slope + truth.slope_difference * active + b1
    value = truth.intercept + b0[:, None] + slope[:, None] * weeks[None, :] \
        + rng.normal(0.0, truth.sd_residual, (n, len(weeks)))
    value = np.clip(np.round(value, 0 if m.integer else 1), m.low, m.high)
    pids = [f"T{i + 1:03d}" for i in range(n)]
    patients = pd.DataFrame({
        "patient_id": pids, "site_id": "site-1",
        "condition": pd.Categorical(["sciatica"] * n, categories=list(CONDITION)),
        "arm": pd.Categorical([truth.arms[a] for a in active], categories=list(truth.arms)),
    })
    start = pd.Timestamp("2026-01-05")
    k = len(weeks)
    sessions = pd.DataFrame({
        "session_id": [f"{p}-V{j + 1}" for p in pids for j in range(k)],
        "patient_id": np.repeat(pids, k),
        "therapist_id": np.repeat([f"TH{1 + i % 4}" for i in range(n)], k),
        "session_date": [start + pd.Timedelta(weeks=float(w)) for _ in pids for w in weeks],
        "session_number": np.tile(np.arange(1, k + 1), n).astype("int64"),
        "technique": pd.Categorical(np.tile(["direct_pressure"] + ["none"] * (k - 1), n),
                                    categories=list(TECHNIQUE)),
    })
    measurements = pd.DataFrame({
        "session_id": sessions["session_id"].to_numpy(),
        "phase": pd.Categorical(["pre"] * (n * k), categories=["pre", "post"]),
        "measure": truth.measure,
        "side": pd.Categorical(["none"] * (n * k), categories=["left", "right", "none"]),
        "value": value.reshape(-1).astype("float64"),
    })
    return {"patients": patients, "sessions": sessions, "measurements": measurements}, truth
