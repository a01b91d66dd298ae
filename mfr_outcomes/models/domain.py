"""The three standard models of an MFR outcomes study, fitted from a Study in one call.

- :func:`fit_prepost`: the immediate within-session change (pre → post on treatment visits);
- :func:`fit_course`: pre-session readings across the course of care (change over weeks/visits);
- :func:`fit_followup`: baseline → discharge → follow-up (e.g. ODI, recorded a few times only).

Each builds its formula from ``study.frame(measure)``, fits it with
:func:`~mfr_outcomes.models.fit.fit_mixed` and returns the MixedFit with ``fit.measure`` (the
code), ``fit.model`` ("prepost", "course", "followup") and ``fit.notes`` (sentences on what was
chosen and why: the formula, rows left out, the therapist level) attached.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import pandas as pd

from mfr_outcomes.measures import get_measure
from mfr_outcomes.study import TIME_UNITS, model_dtypes
from mfr_outcomes.warnings_ import DataWarning, ModelWarning

__all__ = [
    "fit_prepost",
    "fit_course",
    "fit_followup",
    "prepost_formula",
    "MIN_PATIENTS",
    "WARN_PATIENTS",
    "MIN_THERAPISTS",
    "FOLLOWUP_STAGES",
]

#: Fewer patients than this: no model (a random patient slope needs several patients).
MIN_PATIENTS = 5
#: Fewer patients than this: a caution that variance components are poorly estimated.
WARN_PATIENTS = 20
#: A therapist level is added only with at least this many therapists.
MIN_THERAPISTS = 5
#: Levels of the visit-stage factor of :func:`fit_followup`, in order.
FOLLOWUP_STAGES = ("baseline", "discharge", "follow_up")

Side = Literal["auto", "factor", "separate", "left", "right"] | None


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

class _Caution(str):
    """A note that was also issued as a warning (it goes to ``fit.diagnostics["warnings"]``)."""


def _caution(notes: list[str], text: str, category: type[Warning] = ModelWarning) -> None:
    notes.append(_Caution(text))
    warnings.warn(text, category, stacklevel=4)


def _out_of_memory(model: str, study: Any, measure: str, args: dict[str, Any]) -> Any:
    """The domain fit of a study whose rows stay in DuckDB or on Dask (``scale.study_scale``)."""
    from mfr_outcomes.scale.study_scale import fit_domain

    options = {k: v for k, v in args.items() if k not in ("study", "measure")}
    return fit_domain(model, study, measure, **options)


def _check_measure(measure: str, model: str) -> Any:
    try:
        m = get_measure(measure)
    except KeyError as exc:
        raise ValueError(str(exc).strip("\"'")) from None
    if m.binary:
        raise ValueError(f"{measure!r} is a binary (0/1) measure, so a linear mixed model does not "
                         f"fit it; use mfr_outcomes.effects.paresthesia_gee (GEE logistic) for it "
                         f"instead of {model}.")
    return m


def _frame(study: Any, measure: str) -> pd.DataFrame:
    return model_dtypes(study.frame(measure))


def _is_sided(frame: pd.DataFrame) -> bool:
    sides = set(frame["side"].astype(str).unique())
    return bool(sides & {"left", "right"})


def _resolve_side(frame: pd.DataFrame, side: Side, measure: str, notes: list[str]
                  ) -> tuple[pd.DataFrame, str | None]:
    """Return the frame to use and the side handling ("factor", "separate" or None)."""
    keep, mode = side_choice(sorted(frame["side"].astype(str).unique()), side, measure, notes)
    if keep is not None:
        return frame[frame["side"].astype(str) == keep].copy(), None
    return frame, mode


def side_choice(present: Sequence[str], side: Side, measure: str, notes: list[str]
                ) -> tuple[str | None, str | None]:
    """How sides are modelled given the sides *present*: (side to keep or None, handling
    "factor", "separate" or None). Shared with the out-of-memory fits (``scale.study_scale``)."""
    sided = bool(set(present) & {"left", "right"})
    if side == "auto":
        side = "factor" if sided else None
    if side in ("left", "right"):
        if side not in present:
            raise ValueError(f"{measure!r} has no readings on side {side!r}; sides present: "
                             f"{', '.join(present)}.")
        notes.append(f"readings of the {side} side only")
        return side, None
    if side is None:
        if sided:
            _caution(notes, f"{measure!r} is recorded per side but side=None pools left and right "
                            f"readings as repeated measures of the patient; use side='factor' or "
                            f"'separate' to model sides")
        return None, None
    if side not in ("factor", "separate"):
        raise ValueError(f"side must be 'auto', 'factor', 'separate', 'left', 'right' or None; "
                         f"got {side!r}.")
    if not sided:
        notes.append(f"{measure!r} has no per-side readings, so side={side!r} was ignored")
        return None, None
    if len(present) < 2:
        notes.append("only one side present; side not modelled")
        return None, None
    return None, side


def _check_patients(frame: pd.DataFrame, measure: str, what: str, notes: list[str]) -> None:
    check_patient_count(frame["patient_id"].nunique(), measure, what, notes)


def check_patient_count(n: int, measure: str, what: str, notes: list[str]) -> None:
    """Too few patients: an error below ``MIN_PATIENTS``, a caution below ``WARN_PATIENTS``."""
    if n < MIN_PATIENTS:
        raise ValueError(f"only {n} patient(s) have {what} of {measure!r}; a mixed model needs at "
                         f"least {MIN_PATIENTS} (at least {WARN_PATIENTS} for stable variance "
                         f"estimates).")
    if n < WARN_PATIENTS:
        _caution(notes, f"only {n} patients have {what} of {measure!r}; variance components and "
                        f"Satterthwaite df will be imprecise (at least {WARN_PATIENTS} advised)")


def _therapist_term(frame: pd.DataFrame, therapist: bool, notes: list[str]) -> str:
    """`` + (1 | therapist_id)`` (nested or crossed with patients), or "" with a note saying why."""
    if not therapist:
        return ""
    if "therapist_id" not in frame.columns or frame["therapist_id"].isna().all():
        return therapist_term(0, 0, 0, notes)
    per_patient = frame.groupby("patient_id", observed=True)["therapist_id"].nunique()
    return therapist_term(int(frame["therapist_id"].nunique()), int((per_patient > 1).sum()),
                          len(per_patient), notes)


def therapist_term(n_ther: int, n_multi: int, n_pat: int, notes: list[str]) -> str:
    """:func:`_therapist_term` from the counts of therapists, of patients who saw more than one
    and of patients (shared with the out-of-memory fits of ``scale.study_scale``)."""
    if n_ther == 0:
        notes.append("no therapist_id recorded, so no therapist level")
        return ""
    if n_ther < MIN_THERAPISTS:
        notes.append(f"only {n_ther} therapist(s), fewer than {MIN_THERAPISTS}: too few to estimate "
                     f"a therapist variance, so the therapist level was left out")
        return ""
    if n_multi:
        notes.append(f"patients and {n_ther} therapists are crossed: {n_multi} of "
                     f"{n_pat} patient(s) saw more than one therapist, so a crossed "
                     f"therapist random intercept (1 | therapist_id) is included")
    else:
        notes.append(f"patients nested in {n_ther} therapists: a therapist random intercept is "
                     f"included")
    return " + (1 | therapist_id)"


def _patient_term(frame: pd.DataFrame, slope: str | None, notes: list[str], why: str) -> str:
    """``(slope | patient_id)``, or ``(1 | patient_id)`` when the slope would give lme4's
    check.nobs.vs.nRE (no more readings than random effects): never a model lme4 refuses."""
    return patient_term(len(frame), frame["patient_id"].nunique(), slope, notes, why)


def patient_term(n_rows: int, n_pat: int, slope: str | None, notes: list[str], why: str) -> str:
    """:func:`_patient_term` from the counts of readings and patients."""
    if slope is None:
        return "(1 | patient_id)"
    if n_rows <= 2 * n_pat:
        notes.append(f"{why}: a random {slope} slope per patient would give {2 * n_pat} random "
                     f"effects for {n_rows} readings, which lme4 refuses (number of "
                     f"observations <= number of random effects), so a random intercept "
                     f"(1 | patient_id) was fitted instead")
        return "(1 | patient_id)"
    return f"({slope} | patient_id)"


def _covariate_terms(frame: pd.DataFrame, covariates: Sequence[str]) -> list[str]:
    if isinstance(covariates, str):
        covariates = [covariates]
    missing = [c for c in covariates if c not in frame.columns]
    if missing:
        raise ValueError(f"covariate(s) {missing} are not columns of the analysis frame "
                         f"(columns: {', '.join(frame.columns)}).")
    return list(covariates)


def _check_by(frame: pd.DataFrame, by: str | None, notes: list[str]) -> str | None:
    if by is None:
        return None
    if by not in frame.columns:
        raise ValueError(f"by={by!r} is not a column of the analysis frame (columns: "
                         f"{', '.join(frame.columns)}).")
    levels = frame[by].dropna()
    if levels.nunique() < 2:
        notes.append(f"only one level of {by!r} present, so it was left out of the model")
        return None
    counts = frame.dropna(subset=[by]).groupby(by, observed=True)["patient_id"].nunique()
    thin_levels(counts, by, notes)
    return by


def thin_levels(counts: pd.Series, by: str, notes: list[str]) -> None:
    """A caution naming the levels of *by* with fewer than 3 patients (*counts*: per level)."""
    thin = counts[counts < 3]
    if len(thin):
        _caution(notes, f"level(s) {list(map(str, thin.index))} of {by!r} have fewer than 3 "
                        f"patients; their estimates rest on very few people")


def _fit(frame: pd.DataFrame, formula: str, *, reml: bool, engine: str, measure: str,
         model: str, notes: list[str], df_method: str) -> Any:
    from mfr_outcomes.models.fit import fit_mixed

    fit = fit_mixed(frame, formula, reml=reml, engine=engine, df_method=df_method)
    fit.measure = measure
    fit.model = model
    fit.notes = [f"formula: {formula}"] + notes
    warn_list = fit.diagnostics.setdefault("warnings", [])
    for n in notes:
        if isinstance(n, _Caution) and n not in warn_list:
            warn_list.append(str(n))
    fit.notes = [str(n) for n in fit.notes]
    return fit


def _sided_fits(frame: pd.DataFrame, build, notes: list[str]) -> dict[str, Any]:
    out = {}
    for s in ("left", "right"):
        sub = frame[frame["side"].astype(str) == s]
        if sub.empty:
            continue
        out[s] = build(sub.copy(), notes + [f"readings of the {s} side only"])
    return out


# --------------------------------------------------------------------------------------------
# within-session change
# --------------------------------------------------------------------------------------------

def prepost_formula(*, by: str | None = "technique", covariates: Sequence[str] = (),
                    therapist_term: str = "", side_factor: bool = False,
                    time: str | None = "session_number",
                    patient_term: str = "(post | patient_id)") -> str:
    """The formula :func:`fit_prepost` fits (without looking at data)."""
    fixed = f"post * {by}" if by else "post"
    if time:
        fixed += f" + {time}"
    for c in covariates:
        fixed += f" + {c}"
    if side_factor:
        fixed += " + side"
    return f"value ~ {fixed} + {patient_term}{therapist_term}"


def fit_prepost(study: Any, measure: str, *, by: str | None = "technique",
                covariates: Sequence[str] = (), therapist: bool = True, side: Side = "auto",
                time: str | None = "session_number", engine: str = "auto", reml: bool = True,
                df_method: str = "satterthwaite") -> Any:
    """Mixed model of the immediate within-session change, pre → post, on treatment visits.

    The formula is ``value ~ post * technique + session_number [+ covariates] [+ side] +
    (post | patient_id) [+ (1 | therapist_id)]``: a patient-specific level and a
    patient-specific immediate response, the immediate effect allowed to differ by ``by``. Then
    ``fit.contrasts("post", by="technique")`` gives the post − pre change per technique. With one
    treatment session per patient (a single pre/post pair each) the model is
    ``value ~ post [* by] + (1 | patient_id)``, the paired t-test's model (lme4 refuses
    ``(post | patient_id)`` there: as many random effects as readings), and a note says so.

    Parameters
    ----------
    study : Study
    measure : str
        A measure code with post readings (pain_nrs, leg_pain_nrs, slr_deg, ...).
    by : str or None
        Column whose levels may change the immediate effect (default ``technique``; None: one
        effect).
    covariates : sequence of str
        Further columns of the analysis frame added as main effects (age_years, home_program...).
    therapist : bool
        Add a therapist random intercept ``(1 | therapist_id)`` when there are at least
        ``MIN_THERAPISTS`` therapists: nested when each patient saw one therapist, crossed when
        some saw several (the note counts them); otherwise a note says why not.
    side : {"auto", "factor", "separate", "left", "right"} or None
        Per-side measures (range of motion): "factor" adds side as a fixed factor, "separate"
        returns ``{"left": fit, "right": fit}``, "left"/"right" keeps one side, None pools the
        sides (with a caution); "auto" is "factor" for per-side measures and nothing otherwise.
    time : {"session_number", "weeks"} or None
        The course-of-care trend adjusted for (pre-session readings fall over the course, so
        sessions are not exchangeable); None leaves it out.
    engine, reml, df_method
        Passed to :func:`~mfr_outcomes.models.fit.fit_mixed`.

    Returns
    -------
    MixedFit or dict of MixedFit
        With ``measure``, ``model`` ("prepost") and ``notes`` attached.

    Raises
    ------
    ValueError
        The measure has no post readings (ODI: use :func:`fit_followup`), is binary (use
        ``effects.paresthesia_gee``), or too few patients have readings.

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> fit = mfr.fit_prepost(mfr.load_study(mfr.datasets.synthetic_path()), "pain_nrs")
    >>> fit.formula
    'value ~ post * technique + session_number + (post | patient_id) + (1 | therapist_id)'
    >>> fit.contrasts("post", by="technique")["technique"].tolist()
    ['direct_pressure', 'stretching', 'massage', 'combined']
    """
    if getattr(study, "out_of_memory", False):  # rows in DuckDB or on Dask: scale.study_scale
        return _out_of_memory("prepost", study, measure, locals())
    _check_measure(measure, "fit_prepost")
    if time not in ("session_number", "weeks", None):
        raise ValueError(f"time must be 'session_number', 'weeks' or None; got {time!r}.")
    notes: list[str] = []
    frame = _frame(study, measure)
    n_all = len(frame)
    frame = frame[frame["technique"].astype(str) != "none"]
    if frame.empty or not (frame["post"] == 1).any():
        raise ValueError(f"{measure!r} has no post-treatment readings, so there is no "
                         f"within-session change to model; use fit_followup(study, {measure!r}) "
                         f"for baseline → discharge → follow-up, or fit_course for the course of "
                         f"care.")
    if len(frame) < n_all:
        notes.append(f"{n_all - len(frame)} reading(s) from assessment-only visits (technique "
                     f"none) left out")
    frame = _frame_clean(frame)
    with_post = frame.groupby("patient_id", observed=True)["post"].max()
    _check_patients(frame[frame["patient_id"].isin(with_post[with_post == 1].index)], measure,
                    "post-treatment readings", notes)
    covs = _covariate_terms(frame, covariates)
    by = _check_by(frame, by, notes)
    ther = _therapist_term(frame, therapist, notes)
    frame, side_mode = _resolve_side(frame, side, measure, notes)
    visits = frame.groupby("patient_id", observed=True)["session_id"].nunique()
    single = bool((visits <= 1).all())
    if single and time is not None:
        notes.append(f"one treatment session per patient, so {time} is the same for every "
                     f"reading and was left out")
        time = None

    def build(sub: pd.DataFrame, extra_notes: list[str], side_factor: bool = False) -> Any:
        why = ("one treatment session per patient (a single pre/post pair each: the paired "
               "t-test's design)" if single else "too few readings per patient")
        patient = _patient_term(sub, "post", extra_notes, why)
        formula = prepost_formula(by=by, covariates=covs, therapist_term=ther,
                                  side_factor=side_factor, time=time, patient_term=patient)
        return _fit(sub, formula, reml=reml, engine=engine, measure=measure, model="prepost",
                    notes=extra_notes, df_method=df_method)

    if side_mode == "separate":
        return _sided_fits(frame, build, notes)
    return build(frame, notes, side_factor=side_mode == "factor")


def _frame_clean(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for col in frame.columns:
        if isinstance(frame[col].dtype, pd.CategoricalDtype):
            frame[col] = frame[col].cat.remove_unused_categories()
    return frame.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# course of care
# --------------------------------------------------------------------------------------------

def fit_course(study: Any, measure: str, *, time: str = "weeks", by: str | None = None,
               covariates: Sequence[str] = (), therapist: bool = True, side: Side = "auto",
               random_slope: bool = True, engine: str = "auto", reml: bool = True,
               df_method: str = "satterthwaite") -> Any:
    """Mixed model of the pre-session readings across the course of care.

    The formula is ``value ~ time [* by] [+ covariates] [+ side] + (time | patient_id)
    [+ (1 | therapist_id)]`` on every pre-session reading: treatment visits and
    assessment-only visits (technique ``none``, e.g. a trial's follow-up assessments) alike, since
    a course is its assessments. Post readings are left out (they measure the within-session
    change: see :func:`fit_prepost`), and the notes say how many. The ``time`` coefficient is the
    change per week (day, hour, visit) of a typical patient; with ``by`` the ``time:by``
    coefficients are the differences in slope between groups (e.g. arms of a trial).

    Parameters
    ----------
    study : Study
    measure : str
    time : {"weeks", "days", "hours", "session_number"}
        Weeks, whole days or hours since the patient's first visit (hours use ``session_time``
        when the study records it), or the visit number.
    by : str, optional
        A column whose levels may change the slope (``arm``, ``technique``, ``condition``,
        ``site_id``, a categorical covariate).
    covariates, therapist, side, engine, reml, df_method
        As in :func:`fit_prepost`.
    random_slope : bool
        Patient-specific slopes over time (default); False keeps a random intercept only.

    Returns
    -------
    MixedFit or dict of MixedFit
        With ``measure``, ``model`` ("course") and ``notes`` attached.

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> fit = mfr.fit_course(mfr.load_study(mfr.datasets.synthetic_path()), "pain_nrs")
    >>> bool(fit.coef["weeks"] < 0)  # pain falls over the weeks of care
    True
    >>> fit.notes[1]
    "time: weeks since the patient's first visit; the weeks coefficient is the change in Pain intensity (NRS) (points) per week"
    """
    if getattr(study, "out_of_memory", False):
        return _out_of_memory("course", study, measure, locals())
    m = _check_measure(measure, "fit_course")
    frame, notes = _course_frame(study, measure, time, m)
    counts = frame.groupby("patient_id", observed=True).size()
    _check_patients(frame, measure, "pre-session readings", notes)
    unit = TIME_UNITS[time]
    if random_slope and counts.median() < 3:
        _caution(notes, f"patients have a median of {counts.median():g} pre-session readings "
                        f"of {measure!r}; a random slope over {time} (per {unit}) is barely "
                        f"identifiable, so a random intercept only was fitted")
        random_slope = False
    covs = _covariate_terms(frame, covariates)
    by = _check_by(frame, by, notes)
    ther = _therapist_term(frame, therapist, notes)
    frame, side_mode = _resolve_side(frame, side, measure, notes)
    fixed = f"{time} * {by}" if by else time
    for c in covs:
        fixed += f" + {c}"
    def build(sub: pd.DataFrame, extra_notes: list[str], side_factor: bool = False) -> Any:
        rand = _patient_term(sub, time if random_slope else None, extra_notes,
                             "too few readings per patient")
        formula = f"value ~ {fixed}{' + side' if side_factor else ''} + {rand}{ther}"
        return _fit(sub, formula, reml=reml, engine=engine, measure=measure, model="course",
                    notes=extra_notes, df_method=df_method)

    if side_mode == "separate":
        return _sided_fits(frame, build, notes)
    return build(frame, notes, side_factor=side_mode == "factor")


def time_note(time: str, m: Any) -> str:
    """The note naming the course of care's time axis (ValueError for an unknown *time*);
    shared by the in-memory and the out-of-core course fits."""
    if time not in TIME_UNITS:
        raise ValueError(f"time must be one of {', '.join(map(repr, TIME_UNITS))}; got {time!r}.")
    since = "the visit number" if time == "session_number" else \
        f"{time} since the patient's first visit"
    return f"time: {since}; the {time} coefficient is the change in {m.axis_label} per " \
           f"{TIME_UNITS[time]}"


def _course_frame(study: Any, measure: str, time: str, m: Any) -> tuple[pd.DataFrame, list[str]]:
    """Every pre-session reading with a value of *time*, and notes on what was left out."""
    notes = [time_note(time, m)]
    frame = _frame(study, measure)
    n_all = len(frame)
    frame = frame[frame["post"] == 0]
    if n_all > len(frame):
        notes.append(f"{n_all - len(frame)} post-treatment reading(s) left out: the course is "
                     f"modelled on pre-session readings (fit_prepost models the within-session "
                     f"change)")
    n_assess = int((frame["technique"].astype(str) == "none").sum())
    if n_assess:
        notes.append(f"{n_assess} reading(s) from assessment-only visits (technique none) "
                     f"included")
    if frame.empty:
        raise ValueError(f"{measure!r} has no pre-session readings.")
    no_time = frame[time].isna()
    if no_time.any():
        why = (" (a visit without session_time while others of the study have one)"
               if time == "hours" else "")
        _caution(notes, f"{int(no_time.sum())} pre-session reading(s) have no {time}{why} and "
                        f"were left out", DataWarning)
        frame = frame[~no_time]
        if frame.empty:
            raise ValueError(f"no pre-session reading of {measure!r} has a value of {time}.")
    return _frame_clean(frame), notes


# --------------------------------------------------------------------------------------------
# baseline -> discharge -> follow-up
# --------------------------------------------------------------------------------------------

def followup_frame(study: Any, measure: str = "odi") -> pd.DataFrame:
    """Pre-treatment readings labelled by visit stage: baseline, discharge, follow_up.

    baseline is the patient's first pre reading on a treatment visit, discharge the last pre
    reading on a later treatment visit, follow_up the last reading on an assessment-only visit
    (technique ``none``). Readings in between are not used. One row per patient, stage and side.
    """
    return followup_rows(_frame(study, measure))


def followup_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`followup_frame` of an analysis frame (of whole patients: each Dask partition of
    an out-of-memory study is one)."""
    frame = frame[frame["post"] == 0].copy()
    treat = frame[frame["technique"].astype(str) != "none"]
    fu = frame[frame["technique"].astype(str) == "none"]
    keys = ["patient_id", "side"]
    first = treat.sort_values("session_number").groupby(keys, observed=True).head(1)
    last = treat.sort_values("session_number").groupby(keys, observed=True).tail(1)
    last = last[~last.index.isin(first.index)]
    follow = fu.sort_values("session_number").groupby(keys, observed=True).tail(1)
    out = pd.concat([first.assign(stage="baseline"), last.assign(stage="discharge"),
                     follow.assign(stage="follow_up")])
    out["stage"] = pd.Categorical(out["stage"], categories=list(FOLLOWUP_STAGES))
    return _frame_clean(out.sort_values(["patient_id", "side", "session_number"]))


def followup_checks(present: pd.Series, per_patient: pd.Series, measure: str,
                    notes: list[str]) -> None:
    """Refusals and notes of :func:`fit_followup` from patients per stage (*present*) and
    stages per patient (*per_patient*) (shared with the out-of-memory fit)."""
    stages = pd.Series({s: int(present.get(s, 0)) for s in FOLLOWUP_STAGES})
    absent = [str(s) for s, n in stages.items() if n == 0]
    if "baseline" in absent:
        raise ValueError(f"no baseline readings of {measure!r}.")
    if len(absent) == 2:
        raise ValueError(f"{measure!r} has only baseline readings (no discharge or follow-up "
                         f"visit), so there is no change to model.")
    if absent:
        _caution(notes, f"no {', '.join(absent)} readings of {measure!r}; the stage factor has "
                        f"only {', '.join(str(s) for s, n in stages.items() if n > 0)}",
                 DataWarning)
    n_complete = int((per_patient == len(stages) - len(absent)).sum())
    notes.append(f"{n_complete} of {len(per_patient)} patients have every stage; the others "
                 f"contribute the stages they have (missing at random assumed)")


def fit_followup(study: Any, measure: str = "odi", *, covariates: Sequence[str] = (),
                 therapist: bool = True, side: Side = "auto", engine: str = "auto",
                 reml: bool = True, df_method: str = "satterthwaite") -> Any:
    """Mixed model of baseline → discharge → follow-up (``value ~ stage + (1 | patient_id)``).

    ``stage`` is a factor with levels baseline, discharge, follow_up (see
    :func:`followup_frame`); ``fit.emmeans("stage")`` gives the mean at each stage and
    ``fit.contrasts("stage", method="trt.vs.ctrl")`` the change from baseline. Patients missing
    a stage still contribute (the model uses every reading, missing at random given the others).

    Parameters
    ----------
    study : Study
    measure : str
        Default ``odi``, which is recorded at these visits only; any non-binary measure works.
    covariates, therapist, side, engine, reml, df_method
        As in :func:`fit_prepost`.

    Returns
    -------
    MixedFit or dict of MixedFit
        With ``measure``, ``model`` ("followup") and ``notes`` attached.

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> fit = mfr.fit_followup(mfr.load_study(mfr.datasets.synthetic_path()), "odi")
    >>> fit.contrasts("stage", method="trt.vs.ctrl")["contrast"].tolist()
    ['discharge - baseline', 'follow_up - baseline']
    """
    if getattr(study, "out_of_memory", False):
        return _out_of_memory("followup", study, measure, locals())
    _check_measure(measure, "fit_followup")
    notes: list[str] = []
    frame = followup_frame(study, measure)
    if frame.empty:
        raise ValueError(f"{measure!r} has no pre-treatment readings.")
    followup_checks(frame.groupby("stage", observed=True)["patient_id"].nunique(),
                    frame.groupby("patient_id", observed=True)["stage"].nunique(), measure,
                    notes)
    _check_patients(frame, measure, "readings", notes)
    covs = _covariate_terms(frame, covariates)
    ther = _therapist_term(frame, therapist, notes)
    frame, side_mode = _resolve_side(frame, side, measure, notes)
    fixed = "stage" + "".join(f" + {c}" for c in covs)

    def build(sub: pd.DataFrame, extra_notes: list[str], side_factor: bool = False) -> Any:
        formula = f"value ~ {fixed}{' + side' if side_factor else ''} + (1 | patient_id){ther}"
        return _fit(sub, formula, reml=reml, engine=engine, measure=measure, model="followup",
                    notes=extra_notes, df_method=df_method)

    if side_mode == "separate":
        return _sided_fits(frame, build, notes)
    return build(frame, notes, side_factor=side_mode == "factor")
