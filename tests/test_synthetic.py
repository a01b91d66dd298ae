"""Tests of mfr_outcomes.synthetic and the ``synth`` command: determinism, structure, truth."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.cli import main
from mfr_outcomes.measures import get_measure
from mfr_outcomes.synthetic import SIMULATED_MEASURES, Truth, generate, generate_frames
from mfr_outcomes.vocab import TREATMENT_TECHNIQUES

SHIPPED = ("patients.csv", "sessions.csv", "measurements.csv", "README.md")


@pytest.fixture(scope="module")
def big():
    """2000 patients: enough for simple estimators to land near the truth."""
    return generate_frames(n_patients=2000, seed=99)


@pytest.fixture(scope="module")
def medium():
    return generate_frames(n_patients=300, seed=11)


def _joined(frames):
    m, s, p = frames["measurements"], frames["sessions"], frames["patients"]
    return m.merge(s, on="session_id", validate="many_to_one").merge(
        p, on="patient_id", validate="many_to_one")


def _prepost(frames, measure="pain_nrs"):
    j = _joined(frames)
    j = j[(j["measure"] == measure) & (j["technique"] != "none")]
    return j.pivot_table(index=["session_id", "patient_id", "technique", "session_number"],
                         columns="phase", values="value").reset_index()


# --- the shipped files ------------------------------------------------------------------------

def test_synth_cli_regenerates_committed_files_byte_for_byte(tmp_path, synthetic_dir):
    status = main(["synth", "--patients", "120", "--seed", "2026", "--out", str(tmp_path)])
    assert status == 0
    for name in SHIPPED:
        new = (tmp_path / name).read_bytes()
        old = (synthetic_dir / name).read_bytes()
        assert new == old, f"{name} differs from the committed data/synthetic/{name}"
    text = (tmp_path / "measurements.csv").read_bytes()
    assert b"\r\n" not in text and b"-0," not in text and not text.endswith(b",-0\n")


def test_shipped_study_loads_clean(synthetic_study):
    assert len(synthetic_study.patients) == 120
    assert synthetic_study.report.ok
    assert len(synthetic_study.report.findings) == 0
    assert set(synthetic_study.measures) == set(SIMULATED_MEASURES)


def test_codebook_lists_every_column_and_the_truth(synthetic_dir):
    text = (synthetic_dir / "README.md").read_text(encoding="utf-8")
    for name in ("patients", "sessions", "measurements"):
        header = (synthetic_dir / f"{name}.csv").read_text(encoding="utf-8").splitlines()[0]
        for col in header.split(","):
            assert f"| {col} |" in text, f"{name}.{col} missing from the codebook"
    block = text.split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(block) == Truth().to_dict()


def test_synth_cli_rejects_unknown_parameter(tmp_path, capsys):
    status = main(["synth", "--patients", "5", "--out", str(tmp_path), "--set", "bogus=1"])
    assert status == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "course_reduction" in err and "Traceback" not in err


def test_synth_cli_set_overrides_truth(tmp_path):
    status = main(["synth", "--patients", "30", "--seed", "1", "--out", str(tmp_path),
                   "--measures", "pain_nrs", "--set", "n_sessions=[4, 5]"])
    assert status == 0
    s = pd.read_csv(tmp_path / "sessions.csv")
    assert s[s["technique"] != "none"].groupby("patient_id").size().max() <= 5
    assert set(pd.read_csv(tmp_path / "measurements.csv")["measure"]) == {"pain_nrs"}


# --- determinism and the Truth ----------------------------------------------------------------

def test_same_seed_same_tables_different_seed_different():
    a, ta = generate_frames(50, seed=5)
    b, tb = generate_frames(50, seed=5)
    c, _ = generate_frames(50, seed=6)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert ta == tb
    assert not a["measurements"]["value"].equals(c["measurements"]["value"]) or \
        not a["sessions"]["session_date"].equals(c["sessions"]["session_date"])
    assert not a["patients"].equals(c["patients"])


def test_generate_is_deterministic(small_study, small_truth):
    study, truth = generate(n_patients=40, seed=7)
    assert truth == small_truth
    pd.testing.assert_frame_equal(study.measurements, small_study.measurements)
    pd.testing.assert_frame_equal(study.sessions, small_study.sessions)
    assert len(small_study.patients) == 40 and small_study.report.ok


def test_unknown_effect_raises_type_error_naming_valid_fields():
    with pytest.raises(TypeError) as err:
        generate_frames(10, seed=1, imediate_effect={"massage": -1})
    msg = str(err.value)
    assert "imediate_effect" in msg and "immediate_effect" in msg and "therapist_sd" in msg
    with pytest.raises(TypeError):
        generate(10, seed=1, nonsense=3)


def test_bad_effect_values_raise_value_error():
    with pytest.raises(ValueError, match="cupping"):
        generate_frames(10, seed=1, immediate_effect={"cupping": -1})
    with pytest.raises(ValueError, match="patient_sd"):
        generate_frames(10, seed=1, patient_sd=-1)
    with pytest.raises(ValueError, match="n_sessions"):
        generate_frames(10, seed=1, n_sessions=(8, 4))
    with pytest.raises(ValueError, match="ultrasound"):
        generate_frames(10, seed=1, measures=["ultrasound"])


def test_partial_dict_override_keeps_other_defaults():
    t = Truth.build(immediate_effect={"massage": -1.0}, therapist_sd=0)
    assert t.immediate_effect["massage"] == -1.0
    assert t.immediate_effect["combined"] == Truth().immediate_effect["combined"]
    assert t.therapist_sd == 0.0
    assert Truth().immediate_effect["massage"] == -0.5  # the default is untouched


def test_truth_to_dict_round_trips_and_is_json():
    t = Truth.build(course_reduction=0.3, n_sessions=(4, 6))
    d = t.to_dict()
    json.dumps(d)
    assert Truth.build(**d) == t
    assert set(d) == set(Truth.field_names())
    assert 0.03 <= Truth().therapist_share <= 0.07


def test_restricting_measures_keeps_their_values():
    full, _ = generate_frames(60, seed=3)
    part, _ = generate_frames(60, seed=3, measures=["pain_nrs", "odi"])
    keep = full["measurements"][full["measurements"]["measure"].isin(["pain_nrs", "odi"])]
    pd.testing.assert_frame_equal(part["measurements"], keep.reset_index(drop=True))
    pd.testing.assert_frame_equal(part["sessions"], full["sessions"])


# --- structure ----------------------------------------------------------------------------------

def test_visits_follow_the_design(medium):
    frames, truth = medium
    s, p = frames["sessions"], frames["patients"]
    assert s["session_id"].is_unique
    tx = s[s["technique"] != "none"]
    n_tx = tx.groupby("patient_id").size()
    assert n_tx.between(truth.dropout_after_visit, truth.n_sessions[1]).all()
    assert (n_tx >= truth.n_sessions[0]).mean() > 0.6  # most complete at least the minimum
    fu = s[s["technique"] == "none"]
    assert fu["patient_id"].is_unique
    for pid, g in s.groupby("patient_id"):
        g = g.sort_values("session_number")
        assert list(g["session_number"]) == list(range(1, len(g) + 1))
        assert g["session_date"].is_monotonic_increasing and g["session_date"].is_unique
        if (g["technique"] == "none").any():
            assert g["technique"].iloc[-1] == "none"
            gap = (g["session_date"].iloc[-1] - g["session_date"].iloc[-2]).days
            assert 7 * truth.followup_weeks[0] - 2 <= gap <= 7 * truth.followup_weeks[1] + 2
        days = g.loc[g["technique"] != "none", "session_date"].to_numpy()
        # 1-3 a week: never more than 3 visits in 7 days, never more than 8 days apart
        gaps = np.diff(days).astype("timedelta64[D]").astype(int)
        assert (gaps <= 8).all(), pid
        if len(days) > 3:
            assert ((days[3:] - days[:-3]).astype("timedelta64[D]").astype(int) >= 7).all(), pid
    first = s.groupby("patient_id")["session_date"].min()
    enrolled = p.set_index("patient_id")["enrolled_on"]
    assert (enrolled.reindex(first.index) < first).all()
    assert (enrolled.dt.year == 2026).all()
    # sites contain therapists contain patients
    assert (s.groupby("therapist_id")["patient_id"].nunique() > 0).all()
    ther_site = s.merge(p, on="patient_id").groupby("therapist_id")["site_id"].nunique()
    assert (ther_site == 1).all()
    # another therapist of the same site now and then (p_other_therapist), never at the first
    # visit nor at follow-up: patients and therapists partly crossed
    tx = s[s["technique"] != "none"].sort_values(["patient_id", "session_number"])
    own = tx.groupby("patient_id")["therapist_id"].transform("first")
    later = tx["session_number"] > 1
    share = float((tx.loc[later, "therapist_id"] != own[later]).mean())
    assert 0.5 * truth.p_other_therapist < share < 1.5 * truth.p_other_therapist
    fu = s[s["technique"] == "none"].set_index("patient_id")["therapist_id"]
    assert (fu == own.groupby(tx["patient_id"]).first().reindex(fu.index)).all()
    per_site = s.merge(p, on="patient_id").groupby("site_id")["therapist_id"].nunique()
    assert len(per_site) == truth.n_sites
    assert per_site.between(*truth.therapists_per_site).all()


def test_readings_are_valid_and_follow_the_rules(medium):
    frames, _ = medium
    m, s = frames["measurements"], frames["sessions"]
    j = m.merge(s, on="session_id")
    assert not m.duplicated(["session_id", "phase", "measure", "side"]).any()
    for code, g in m.groupby("measure"):
        meas = get_measure(code)
        assert g["value"].between(meas.low, meas.high).all(), code
        if meas.integer:
            assert (g["value"] == g["value"].round()).all(), code
    assert not ((j["technique"] == "none") & (j["phase"] == "post")).any()
    assert set(m.loc[m["measure"].isin(["odi", "paresthesia"]), "phase"]) == {"pre"}
    assert set(m.loc[m["measure"] == "paresthesia", "value"]) <= {0.0, 1.0}
    # every post has its pre
    pre = set(map(tuple, m.loc[m["phase"] == "pre", ["session_id", "measure", "side"]].values))
    post = set(map(tuple, m.loc[m["phase"] == "post", ["session_id", "measure", "side"]].values))
    assert post <= pre
    # sides: ROM per side, the rest "none"
    sided = m["measure"].isin(["slr_deg", "hip_ir_deg", "hip_flexion_deg"])
    assert set(m.loc[sided, "side"]) == {"left", "right"}
    assert set(m.loc[~sided, "side"]) == {"none"}
    # ODI at the first visit of everyone, and at follow-up
    odi = j[j["measure"] == "odi"]
    assert set(odi.loc[odi["session_number"] == 1, "patient_id"]) <= set(s["patient_id"])
    assert odi["session_number"].eq(1).sum() >= 0.9 * s["patient_id"].nunique()
    # a few per cent of single readings are missing
    tx_sessions = (s["technique"] != "none").sum()
    pain_post = ((m["measure"] == "pain_nrs") & (m["phase"] == "post")).sum()
    assert 0.90 < pain_post / tx_sessions < 0.99


def test_sessions_columns_and_labels(medium):
    frames, _ = medium
    s = frames["sessions"]
    assert list(s.columns) == ["session_id", "patient_id", "therapist_id", "session_date",
                               "session_number", "technique", "target_region", "duration_min",
                               "home_program", "adverse_event"]
    assert s["duration_min"].between(5, 180).all()
    ae = s.loc[s["technique"] != "none", "adverse_event"].value_counts(normalize=True)
    assert ae["none"] > 0.8 and ae["soreness"] > ae.get("bruising", 0)
    assert s.loc[s["technique"] == "none", "target_region"].isna().all()
    j = s.merge(frames["patients"], on="patient_id")
    hip_only = j[(j["condition"] == "hip_pain") & (j["technique"] != "none")]
    assert "lower_back" not in set(hip_only["target_region"])


# --- the truth is recovered -------------------------------------------------------------------

def test_immediate_effect_recovered_per_technique(big):
    frames, truth = big
    w = _prepost(frames)
    drop = (w["post"] - w["pre"]).groupby(w["technique"]).mean()
    for tech in TREATMENT_TECHNIQUES:
        assert abs(drop[tech] - truth.immediate_effect[tech]) < 0.1, (tech, drop[tech])


def test_baseline_course_and_followup(big):
    frames, truth = big
    j = _joined(frames)
    pain = j[(j["measure"] == "pain_nrs") & (j["phase"] == "pre")]
    first = pain[pain["session_number"] == 1]
    assert abs(first["value"].mean() - truth.baseline_pain_mean) < 0.2
    assert abs(first["value"].std() - truth.total_pain_sd) < 0.25
    tx = pain[pain["technique"] != "none"].sort_values("session_number")
    last = tx.groupby("patient_id")["value"].last()
    base = tx.groupby("patient_id")["value"].first()
    reduction = 1 - last.mean() / base.mean()
    assert 0.25 < reduction < 0.5
    fu = pain[pain["technique"] == "none"].set_index("patient_id")["value"]
    assert last.reindex(fu.index).mean() < fu.mean() < base.reindex(fu.index).mean()


def test_dropout_depends_on_pain(big):
    frames, _ = big
    j = _joined(frames)
    first = j[(j["measure"] == "pain_nrs") & (j["phase"] == "pre") & (j["session_number"] == 1)]
    first = first.set_index("patient_id")["value"]
    n_tx = frames["sessions"].query("technique != 'none'").groupby("patient_id").size()
    high = n_tx.reindex(first.index)[first >= 8].mean()
    low = n_tx.reindex(first.index)[first <= 4].mean()
    assert high < low


def test_rom_lower_on_affected_side_and_leg_pain_in_sciatica(big):
    frames, truth = big
    j = _joined(frames)
    slr = j[(j["measure"] == "slr_deg") & (j["phase"] == "pre") & (j["condition"] == "sciatica")
            & (j["affected_side"] != "bilateral")]
    affected = slr["side"] == slr["affected_side"]
    gap = slr.loc[~affected, "value"].mean() - slr.loc[affected, "value"].mean()
    assert gap > 10
    leg = j[(j["measure"] == "leg_pain_nrs") & (j["phase"] == "pre")]
    by = leg.groupby("condition")["value"].mean()
    assert by["sciatica"] > by["hip_pain"] + 1
    par = j[j["measure"] == "paresthesia"]
    early = par[par["session_number"] == 1].groupby("condition")["value"].mean()
    assert early["sciatica"] > early["hip_pain"]


def test_effect_overrides_change_the_data():
    frames, truth = generate_frames(2000, seed=5, measures=["pain_nrs"],
                                    immediate_effect={"massage": -1.5}, patient_sd=0.5)
    w = _prepost(frames)
    drop = (w["post"] - w["pre"]).groupby(w["technique"]).mean()
    assert abs(drop["massage"] + 1.5) < 0.12
    assert truth.immediate_effect["massage"] == -1.5


def test_generate_frames_is_fast_for_power_loops():
    t0 = time.perf_counter()
    frames, _ = generate_frames(20_000, seed=1, measures=["pain_nrs"])
    elapsed = time.perf_counter() - t0
    assert frames["patients"].shape[0] == 20_000
    assert elapsed < 15, f"20 000 patients took {elapsed:.1f} s"


@pytest.mark.parametrize("effects", [
    {"n_sessions": (1, 1)},
    {"n_sessions": (12, 16), "sessions_per_week": (3, 3)},
    {"n_sites": 1, "therapists_per_site": (1, 1)},
    {"missing_reading_prob": 0.0, "followup_attendance": 0.0, "followup_attendance_dropout": 0.0},
    {"session_sd": 0.7, "residual_sd": 0.5, "dropout_after_visit": 30},
])
def test_design_keys_give_valid_tables(effects):
    study, truth = generate(n_patients=25, seed=4, **effects)
    assert study.report.ok and not study.report.findings
    tx = study.sessions[study.sessions["technique"] != "none"]
    n_tx = tx.groupby("patient_id", observed=True).size()
    assert n_tx.max() <= truth.n_sessions[1]
    assert study.patients["site_id"].nunique() <= truth.n_sites
    if truth.missing_reading_prob == 0:
        pain = study.measurements[study.measurements["measure"] == "pain_nrs"]
        assert len(pain) == 2 * len(tx)  # pre and post at every treatment visit, no follow-up


def test_generator_seed_and_no_measures():
    rng = np.random.default_rng(12)
    a, _ = generate_frames(10, rng)
    b, _ = generate_frames(10, rng)  # the generator moves on: a new clinic
    assert not a["patients"]["age_years"].equals(b["patients"]["age_years"])
    empty, _ = generate_frames(10, seed=1, measures=[])
    assert list(empty["measurements"].columns) == ["session_id", "phase", "measure", "side",
                                                   "value"]
    assert empty["measurements"].empty


def test_odi_at_first_last_and_followup_only(medium):
    frames, _ = medium
    j = _joined(frames)
    s = frames["sessions"]
    odi = j[j["measure"] == "odi"]
    last_tx = s[s["technique"] != "none"].groupby("patient_id")["session_number"].max()
    allowed = (odi["session_number"] == 1) | (odi["technique"] == "none") | \
        (odi["session_number"].to_numpy() == last_tx.reindex(odi["patient_id"]).to_numpy())
    assert allowed.all()
    assert (odi["value"] % 2 == 0).all()
    assert 28 < odi.loc[odi["session_number"] == 1, "value"].mean() < 44


def test_no_switching_gives_nested_therapists_and_the_same_other_data():
    """p_other_therapist=0: each patient one therapist; every other value is unchanged, since the
    switching draws come from their own stream."""
    nested, _ = generate_frames(n_patients=40, seed=5, p_other_therapist=0.0)
    s = nested["sessions"]
    assert (s.groupby("patient_id")["therapist_id"].nunique() == 1).all()
    crossed, _ = generate_frames(n_patients=40, seed=5, p_other_therapist=0.3)
    assert (crossed["sessions"].groupby("patient_id")["therapist_id"].nunique() > 1).any()
    cols = ["session_id", "session_date", "technique"]
    pd.testing.assert_frame_equal(nested["sessions"][cols], crossed["sessions"][cols])


def test_single_session_design():
    """One treatment visit per patient with pre and post readings, no follow-up visit."""
    frames, truth = generate_frames(n_patients=30, seed=9, single_session=True,
                                    measures=["pain_nrs"])
    assert truth.single_session is True
    s, m = frames["sessions"], frames["measurements"]
    assert (s.groupby("patient_id").size() == 1).all()
    assert (s["technique"] != "none").all() and (s["session_number"] == 1).all()
    phases = m.merge(s, on="session_id").groupby("patient_id")["phase"].nunique()
    assert (phases == 2).mean() > 0.85  # pre and post (a few readings missing at random)
    with pytest.raises(ValueError, match="p_other_therapist must lie in"):
        Truth.build(p_other_therapist=1.5)
