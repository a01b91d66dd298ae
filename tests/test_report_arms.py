"""Responders split by arm (the study's recorded arm) and by each patient's main target region,
every count through the disclosure ledger: each split adds up to "all patients" of the responder
table, and an attacker writing those sums recovers no hidden count."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import test_report_glmm
from test_disclosure import _Attack
from test_report_glmm import _report, _rows

from mfr_outcomes.report.sections.outcomes import main_of, responders_by_arm
from mfr_outcomes.study import from_frames
from mfr_outcomes.synthetic import generate_frames

NEEDED = ("data_quality", "cohort", "outcomes", "methods")


@pytest.fixture(scope="module")
def armed():
    frames, _ = generate_frames(60, 7, measures=["pain_nrs"])
    p = frames["patients"].copy()
    p["arm"] = np.where(np.arange(len(p)) % 3 == 0, "placebo", "active")
    p.loc[p.index[:2], "arm"] = None  # two patients without an arm: a small row
    return from_frames(p, frames["sessions"], frames["measurements"])


@pytest.fixture(scope="module")
def report(armed, tmp_path_factory):
    out = tmp_path_factory.mktemp("arms")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(test_report_glmm, "NEEDED", NEEDED)
        return _report(armed, out, min_cell=5), out


def test_main_region_is_the_most_frequent_with_vocabulary_ties():
    s = pd.DataFrame({"patient_id": ["A"] * 4 + ["B"] * 2,
                      "technique": ["massage", "massage", "none", "massage", "massage",
                                    "massage"],
                      "target_region": pd.Categorical(
                          ["hip", "hip", "lower_back", "lower_back", "piriformis", "lower_back"],
                          categories=["lower_back", "piriformis", "hip", "multiple"])})
    got = main_of(s, "target_region")
    assert got["A"] == "hip"  # 2 hip against 1 lower back (the assessment visit not counted)
    assert got["B"] == "lower_back"  # a tie: the earlier in the vocabulary


def test_responders_by_arm_counted_by_hand(armed):
    import mfr_outcomes as mfr

    table = responders_by_arm(armed, "pain_nrs")
    assert list(table["split"].unique()) == ["arm", "region"]
    resp = mfr.responders(armed, "pain_nrs")
    classed = resp[resp["responder"].notna()]
    arm = classed["patient_id"].map(armed.patients.set_index("patient_id")["arm"])
    for name, want in (("active", "active"), ("placebo", "placebo")):
        row = table[table["group"] == f"arm: {name}"].iloc[0]
        mine = classed[(arm == want).to_numpy()]
        assert row["patients"] == len(mine)
        assert row["responders"] == int(mine["responder"].astype(bool).sum())
    none = table[table["group"] == "arm: not recorded"].iloc[0]
    assert none["patients"] == int(arm.isna().sum()) and 0 < none["patients"] < 5
    for split in ("arm", "region"):  # each split covers every classed patient
        assert table.loc[table["split"] == split, "patients"].sum() == len(classed)
    # Wilson interval around the proportion
    assert ((table["ci_low"] <= table["percent"]) & (table["percent"] <= table["ci_high"])).all()


def test_arm_table_is_published_under_the_ledger(report):
    result, out = report
    by_arm = _rows(out / "tables" / "outcomes_responders_by_arm.csv")
    resp = _rows(out / "tables" / "outcomes_responders.csv")
    assert {r["split"] for r in by_arm} == {"arm", "region"}
    small = next(r for r in by_arm if r["group"] == "arm: not recorded")
    assert small["patients"] == "<5"  # two patients: never printed
    # an attacker writes "all patients = the sum of each split" (and of the technique rows)
    att = _Attack()
    t = att.term
    for col in ("patients", "responders"):
        total = t(resp[0][col], f"all {col}")
        att.equal(total, [t(r[col], f"tech {r['group']} {col}") for r in resp[1:]])
        for split in ("arm", "region"):
            att.equal(total, [t(r[col], f"{r['group']} {col}") for r in by_arm
                              if r["split"] == split])
    widths = att.widths()
    assert "arm: not recorded patients" in widths
    recovered = {name: w for name, w in widths.items() if w < 1}
    assert not recovered, recovered
    html = result.html_path.read_text(encoding="utf-8")
    assert "Responders by arm and main target region." in html
    assert "<th scope=\"col\">Grouped by</th>" in html
