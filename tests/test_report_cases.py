"""Each misleading case of issue 13 as a test on a small frame built to trigger it, and the
report's figures failing loudly (a plotting error names the figure; no second renderer)."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.report import build_report
from mfr_outcomes.study import from_frames
from mfr_outcomes.synthetic import generate, generate_frames


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _text(result, key: str) -> str:
    return " ".join(b if isinstance(b, str) else " ".join(b)
                    for k, b in result.sections[key].blocks if k in ("para", "list"))


def _skip(mp: pytest.MonkeyPatch, *keys: str) -> None:
    import mfr_outcomes.report.sections as sections

    for key in keys:
        mp.setitem(sections.SECTIONS, key, (sections.SECTIONS[key][0], lambda ctx, sec: None))


@pytest.fixture(scope="module")
def misleading(tmp_path_factory):
    """40 patients over about two months: 12 start at pain 0, 2 have no pain reading,
    adverse events and minutes were never recorded, and no row was rejected."""
    frames, _ = generate_frames(40, 31, measures=["pain_nrs"], enrol_days=10,
                                followup_weeks=(1, 2), sessions_per_week=(2, 3))
    p, s, m = (frames[k].copy() for k in ("patients", "sessions", "measurements"))
    s["adverse_event"] = None
    s["duration_min"] = np.nan
    m = m.merge(s[["session_id", "patient_id", "session_number"]], on="session_id")
    ids = sorted(p["patient_id"])
    zero = ids[:12]
    first = (m["patient_id"].isin(zero)) & (m["session_number"] == 1) & (m["phase"] == "pre")
    m.loc[first, "value"] = 0.0
    m = m[~m["patient_id"].isin(ids[-2:])].drop(columns=["patient_id", "session_number"])
    study = from_frames(p, s, m)
    out = tmp_path_factory.mktemp("misleading")
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        _skip(mp, "comparisons")
        warnings.simplefilter("ignore")
        result = build_report(study, out, min_cell=5, seed=1)
    return study, result, zero


def test_count_hidden_only_to_protect_another_is_marked_suppressed(misleading):
    _, result, _ = misleading
    base = result.sections["cohort"].tables[1]
    rows = base.shown[base.shown["characteristic"].str.startswith("Pain intensity")]
    shown = dict(zip(rows["category"], rows["n"]))
    assert shown["missing"] == "<5"          # 2 patients without a reading
    assert shown["recorded"] == "suppressed"  # 36 of 38: hidden only to protect the 2
    assert rows.set_index("category").loc["recorded", "summary"].startswith("mean")
    assert "'suppressed': hidden although not small" in base.note


def test_zero_is_shown_as_zero(misleading):
    study, result, _ = misleading
    assert not study.report.findings
    acc = result.sections["data_quality"].tables[0].shown
    assert (acc["excluded"] == 0).all() and (acc["findings"] == 0).all()
    assert "No problems were found" in _text(result, "data_quality")
    assert "They found 0 problem(s)" in _text(result, "data_quality")


def test_responder_denominator_leaves_out_baselines_that_cannot_improve(misleading):
    study, result, zero = misleading
    table = {t.name: t for t in result.sections["outcomes"].tables}["responders"]
    classed = int(table.frame["patients"].iloc[0])
    # by hand: patients with pre readings at two or more visits, and those starting at 0
    pre = study.frame("pain_nrs").query("post == 0").sort_values("session_number")
    visits = pre.groupby("patient_id")["session_number"].nunique()
    start = pre.groupby("patient_id")["value"].first()
    judged = visits[visits >= 2].index
    at_zero = int((start[judged] == 0).sum())
    assert at_zero >= 12 - 1  # the patients set to 0 (one may have a single visit)
    assert classed == len(judged) - at_zero
    assert (f"{at_zero} patient(s) not classed: baseline leaves no room for an important "
            f"change.") in _text(result, "outcomes")


def test_too_few_points_say_not_enough_data_and_draw_nothing(misleading):
    _, result, _ = misleading
    text = _text(result, "trends")
    assert "Not enough data: the chart has " in text
    assert "points with a value; its rules need at least 10" in text
    assert "No special cause" not in text and "common cause" not in text.split("instead.")[1]
    assert not result.sections["trends"].figures


def test_columns_never_recorded_say_not_recorded(misleading):
    _, result, _ = misleading
    safety = _text(result, "safety")
    assert safety.startswith("Adverse events were not recorded")
    assert not result.sections["safety"].tables and "of <5" not in safety
    dose = {t.name: t for t in result.sections["intervention"].tables}["dose"].shown
    assert dose.set_index("item").loc["Minutes per session", "unit"] == "not recorded"
    assert pd.isna(dose.set_index("item").loc["Minutes per session", "n"])


@pytest.fixture(scope="module")
def v_shaped(tmp_path_factory):
    """Pain falls for four weeks and comes back (45 -> 37 -> 45 in the issue's TWSTRS case),
    in one arm; flat in the other."""
    study, _ = generate(n_patients=60, seed=5, measures=["pain_nrs"])
    f = study.frame("pain_nrs")
    weeks = f.set_index("session_id")["weeks"].groupby(level=0).first()
    m = study.measurements.copy()
    w = m["session_id"].map(weeks)
    pid = m["session_id"].map(study.sessions.set_index("session_id")["patient_id"])
    arm_a = pid.isin(sorted(study.patients["patient_id"])[:30])
    rng = np.random.default_rng(1)
    v = np.clip(np.round(3 + 1.2 * np.abs(w - 4) + rng.normal(0, 0.5, len(m))), 0, 10)
    flat = np.clip(np.round(5 + rng.normal(0, 0.5, len(m))), 0, 10)
    m["value"] = np.where(arm_a, v, flat)
    study.measurements = m
    study.patients = study.patients.assign(
        arm=np.where(study.patients["patient_id"].isin(pid[arm_a]), "A", "B"))
    out = tmp_path_factory.mktemp("course")
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        _skip(mp, "trends", "comparisons", "safety", "intervention")
        warnings.simplefilter("ignore")
        result = build_report(study, out, min_cell=5, seed=1)
    return result


def test_a_v_shaped_course_is_not_summarised_by_a_line(v_shaped):
    text = _text(v_shaped, "outcomes")
    assert "A straight line does not describe the course" in text
    assert "a week (95 % CI" not in text
    assert "with a line or curve per arm" in text
    models = _rows(v_shaped.html_path.parent / "tables" / "outcomes_course_models.csv")
    assert "arm" in models[0]["model"] and "poly(weeks, 3) * arm" in models[1]["model"]
    p = models[1]["p_value"]
    assert p not in ("0", "0.0") and 0 < float(p) < 1e-6   # full precision, never 0.0
    assert any("course of care" in f.caption.lower() or "line" in f.caption
               for f in v_shaped.sections["outcomes"].figures)


PLOTTERS = ("count_bars", "forest", "course_curves", "spc_chart", "funnel",
            "named_caterpillar")


def test_each_failing_plot_is_reported_by_name(tmp_path, monkeypatch):
    from mfr_outcomes import plots

    def broken(name):
        def fail(*args, **kwargs):
            raise RuntimeError(f"{name} is broken")
        return fail

    for name in PLOTTERS:
        monkeypatch.setattr(plots, name, broken(name))
    study, _ = generate(n_patients=60, seed=8, enrol_days=400, measures=["pain_nrs"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = build_report(study, tmp_path, min_cell=5, seed=1)
    text = " ".join(result.failures)
    for figure, plotter in (("sessions by technique", "count_bars"),
                            ("within-session change by technique", "forest"),
                            ("course of care", "course_curves"),
                            ("funnel of responders by therapist", "funnel"),
                            ("caterpillar of therapists", "named_caterpillar")):
        assert f"The figure '{figure}' could not be drawn: {plotter} is broken." in text, figure
    assert "spc_chart is broken" in text
    assert not any(sec.figures for sec in result.sections.values())
    html = result.html_path.read_text(encoding="utf-8")
    assert "could not be drawn" in html and "<img" not in html


def test_therapists_are_pseudonyms_unless_named(misleading):
    study, result, _ = misleading
    th = {t.name: t for t in result.sections["intervention"].tables}["therapists"].shown
    assert all(t.startswith("Therapist ") for t in th["therapist"])
    codes = set(study.sessions["therapist_id"])
    html = result.html_path.read_text(encoding="utf-8")
    assert not any(f">{c}<" in html for c in codes)
