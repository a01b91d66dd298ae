"""Tests of the clinic profile: a column-mapped export with a custom measure, added techniques,
an arm and two covariates loads clean and runs through validate, fit and report from the command
line; each kind of mistake in a profile is one exact sentence."""
from __future__ import annotations

import io
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.cli import main
from mfr_outcomes.io import load_study
from mfr_outcomes.measures import MEASURES, unregister_measure
from mfr_outcomes.profile import (
    Profile,
    ProfileError,
    load_profile,
    profile_template,
)
from mfr_outcomes.synthetic import generate_frames
from mfr_outcomes.vocab import TECHNIQUE

PROFILE = """\
[vocabulary]
technique = ["dry_needling", "exercise"]
arm = ["placebo", "active"]

[[measure]]
code = "vas_pain"
label = "Pain (VAS)"
unit = "points"
low = 0
high = 10
integer = true
better = "lower"
mcid_points = 2.0
source = "clinic's own scale"

[columns.patients]
"Patient no." = "patient_id"
"Group" = "arm"
"BMI (kg/m2)" = "bmi"
[columns.sessions]
"Patient no." = "patient_id"
"Therapist" = "therapist_id"
"Visit date" = "session_date"
"Dose" = "dose_units"

[labels.technique]
"Dry needling" = "dry_needling"
"Exercise" = "exercise"
[labels.arm]
"A" = "active"
"B" = "placebo"
[labels.measure]
"VAS" = "vas_pain"

[covariates.patients]
bmi = "float"
[covariates.sessions]
dose_units = { type = "float", low = 0 }

[dates]
dayfirst = true
"""


@pytest.fixture(autouse=True)
def _forget_profile_measures():
    """A profile registers its measures; leave the registry as the other tests expect it."""
    yield
    if "vas_pain" in MEASURES:
        unregister_measure("vas_pain")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A clinic export in the clinic's own words: renamed columns, labels, day/month dates."""
    frames, _ = generate_frames(24, seed=3, measures=["pain_nrs", "odi"])
    rng = np.random.default_rng(3)
    p, s, m = (frames[t].copy() for t in ("patients", "sessions", "measurements"))
    p["Group"] = np.where(np.arange(len(p)) % 2 == 0, "A", "B")
    p["BMI (kg/m2)"] = np.round(rng.normal(27, 4, len(p)), 1)
    p = p.rename(columns={"patient_id": "Patient no."})
    tech = s["technique"].astype(str).to_numpy().copy()
    tech[tech == "stretching"] = "Dry needling"
    tech[tech == "massage"] = "Exercise"
    s["technique"] = tech
    s["Dose"] = np.where(tech == "none", "", "2.5")
    s["session_date"] = pd.to_datetime(s["session_date"]).dt.strftime("%d/%m/%Y")
    s = s.rename(columns={"patient_id": "Patient no.", "therapist_id": "Therapist",
                          "session_date": "Visit date"})
    m["measure"] = m["measure"].astype(str).replace("pain_nrs", "VAS")
    folder = tmp_path_factory.mktemp("clinic") / "export"
    folder.mkdir()
    p.to_csv(folder / "patients.csv", index=False)
    s.to_csv(folder / "sessions.csv", index=False)
    m.to_csv(folder / "measurements.csv", index=False)
    (folder / "clinic.toml").write_text(PROFILE, encoding="utf-8")
    return folder


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


# --- the round trip ----------------------------------------------------------------------------

def test_mapped_export_loads_with_no_findings(export):
    study = load_study(export, profile=export / "clinic.toml")
    assert study.report.ok, str(study.report)
    assert study.report.n_excluded == 0
    assert set(study.measures) == {"vas_pain", "odi"}
    techniques = list(study.sessions["technique"].cat.categories)
    assert techniques == [*TECHNIQUE, "dry_needling", "exercise"]
    assert {"dry_needling", "exercise"} <= set(study.sessions["technique"].astype(str))
    frame = study.frame("vas_pain")
    assert list(frame.columns[-3:]) == ["arm", "bmi", "dose_units"]
    assert list(frame["arm"].cat.categories) == ["placebo", "active"]
    assert frame["bmi"].dtype == "float64" and frame["dose_units"].dtype == "float64"
    assert frame["bmi"].notna().all()
    # dose is given on treatment visits only, missing on assessment-only ones
    assert frame.loc[frame["technique"].astype(str) == "none", "dose_units"].isna().all()
    assert (frame.loc[frame["technique"].astype(str) != "none", "dose_units"] == 2.5).all()
    assert study.covariates == ("bmi", "dose_units")


def test_covariates_reach_formulas_by_and_covariates(export):
    import warnings

    import mfr_outcomes as mfr

    study = load_study(export, profile=export / "clinic.toml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = mfr.fit_course(study, "vas_pain", by="arm", covariates=["bmi"], therapist=False)
        assert fit.formula == "value ~ weeks * arm + bmi + (weeks | patient_id)"
        assert {"bmi", "weeks:arm[T.active]"} <= set(fit.coef.index)
        direct = mfr.fit_mixed(study.frame("vas_pain"),
                               "value ~ post + bmi + dose_units + (1 | patient_id)")
    assert "bmi" in direct.coef.index
    # dose_units is 2.5 on every visit that has a dose (the rows used), so it is aliased with the
    # intercept: the model layer's lme4 rank check drops it and names it in the notes
    notes = " ".join(direct.spec.notes)
    assert "dose_units" in direct.coef.index or "dose_units" in notes


def test_cli_validate_fit_and_report_with_the_profile(export, tmp_path):
    prof = str(export / "clinic.toml")
    code, out, err = run_cli("validate", str(export), "--profile", prof)
    assert code == 0, out + err
    assert "No findings: every row is used." in out
    code, out, err = run_cli("fit", str(export), "--profile", prof, "--measure", "vas_pain",
                             "--model", "course", "--by", "arm", "--covariates", "bmi")
    assert code == 0, err
    assert "weeks:arm[T.active]" in out and "bmi" in out
    assert "per week" in out  # the unit, in the notes
    code, out, err = run_cli("report", str(export), "--profile", prof, "--measure", "vas_pain",
                             "--out", str(tmp_path / "report"))
    assert code == 0, err
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "Pain (VAS)" in html


def test_without_the_profile_the_export_is_refused_row_by_row(export):
    code, out, _ = run_cli("validate", str(export), "--format", "csv")
    assert code == 1  # required columns missing: everything excluded


def test_schema_command_shows_the_profile(export):
    code, out, _ = run_cli("schema", "--profile", str(export / "clinic.toml"), "--format",
                           "csv")
    assert code == 0
    rows = pd.read_csv(io.StringIO(out))
    assert list(rows.columns) == ["table", "column", "required", "type", "rule"]
    bmi = rows[rows["column"] == "bmi"].iloc[0]
    assert (bmi["table"], bmi["required"], bmi["type"]) == ("patients", "no", "number")
    arm = rows[rows["column"] == "arm"].iloc[0]
    assert arm["type"] == "placebo / active"
    technique = rows[rows["column"] == "technique"].iloc[0]
    assert technique["type"].endswith("none / dry_needling / exercise")
    assert rows[rows["required"] == "yes"]["column"].tolist() == [
        "patient_id", "condition", "session_id", "patient_id", "therapist_id", "session_date",
        "technique", "session_id", "phase", "measure", "value"]


def test_codebook_carries_the_schema_table(synthetic_dir):
    from mfr_outcomes.schema_doc import columns_markdown

    text = (synthetic_dir / "README.md").read_text(encoding="utf-8")
    assert columns_markdown(heading="###") in text


# --- the template ------------------------------------------------------------------------------

def test_profile_init_writes_a_template_that_parses(tmp_path):
    path = tmp_path / "clinic.toml"
    code, out, _ = run_cli("profile", "init", str(path))
    assert code == 0 and out.startswith(f"wrote {path}")
    assert load_profile(path) == Profile(path="clinic.toml")  # every line commented out
    # uncommented, the examples form a valid profile
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        body = line[2:] if line.startswith("# ") else line
        if body.startswith(("[", '"')) or (body[:1].isalpha() and " = " in body):
            lines.append(body.split("  #")[0])
    uncommented = tmp_path / "full.toml"
    uncommented.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prof = load_profile(uncommented)
    assert prof.vocabulary.arm == ("active", "placebo")
    assert [m.code for m in prof.measures] == ["twstrs"]
    assert prof.covariate_names() == ("bmi", "smoker", "dose_units")
    code, _, err = run_cli("profile", "init", str(path))
    assert code == 2 and "already exists; pass --force" in err
    code, out, _ = run_cli("profile", "check", str(uncommented))
    assert code == 0 and "measure twstrs: TWSTRS total (points), 0–87, lower is better" in out


def test_template_is_the_documented_one():
    assert profile_template().startswith("# Clinic profile for mfr-outcomes")


# --- one sentence per kind of mistake ---------------------------------------------------------

BAD = [
    ("[vocabulary\ntechnique = []\n",
     "profile clinic.toml is not valid TOML: Expected ']' at the end of a table declaration "
     "(at line 1, column 12)"),
    ("[vocab]\ntechnique = [\"x\"]\n",
     "clinic.toml: unknown section [vocab]; a profile has [vocabulary], [measure], [columns], "
     "[labels], [covariates], [dates]"),
    ("[vocabulary]\nsex = [\"intersex\"]\n",
     "clinic.toml: [vocabulary] sex: not a vocabulary a profile can extend (technique, "
     "condition, target_region, adverse_event, arm)"),
    ("[vocabulary]\ntechnique = \"dry_needling\"\n",
     "clinic.toml: [vocabulary] technique = \"dry_needling\": write a list of labels, e.g. "
     "technique = [\"label_one\", \"label_two\"]"),
    ("[vocabulary]\ntechnique = [\"Dry needling\"]\n",
     "clinic.toml: [vocabulary] technique = \"Dry needling\": a label must be lowercase "
     "letters, digits and underscores (write \"dry_needling\")"),
    ("[[measure]]\ncode = \"twstrs\"\nlabel = \"T\"\nunit = \"points\"\nlow = 0\n",
     "clinic.toml: [[measure]] 1 (code \"twstrs\"): field high is missing (a measure needs "
     "code, label, unit, low, high)"),
    ("[[measure]]\ncode = \"twstrs\"\nlabel = \"T\"\nunit = \"p\"\nlow = 0\nhigh = 87\n"
     "mcid = 9\n",
     "clinic.toml: [[measure]] 1 (code \"twstrs\"): unknown field mcid = 9; fields are code, "
     "label, unit, low, high, integer, better, mcid_points, mcid_percent, mdc, source, "
     "binary, notes"),
    ("[[measure]]\ncode = \"twstrs\"\nlabel = \"T\"\nunit = \"p\"\nlow = 87\nhigh = 0\n",
     "clinic.toml: [[measure]] 1 (code \"twstrs\"): measure 'twstrs': valid range 87–0 is "
     "empty"),
    ("[[measure]]\ncode = \"twstrs\"\nlabel = \"T\"\nunit = \"p\"\nlow = 0\nhigh = \"87\"\n",
     "clinic.toml: [[measure]] 1 (code \"twstrs\"): high = \"87\": write a number"),
    ("[[measure]]\ncode = \"twstrs\"\nlabel = \"T\"\nunit = \"p\"\nlow = 0\nhigh = 87\n"
     "better = \"less\"\n",
     "clinic.toml: [[measure]] 1 (code \"twstrs\"): better = \"less\": write \"lower\" or "
     "\"higher\""),
    ("[[measure]]\ncode = \"pain_nrs\"\nlabel = \"P\"\nunit = \"p\"\nlow = 0\nhigh = 10\n",
     "clinic.toml: [[measure]] 1 (code \"pain_nrs\"): code = \"pain_nrs\" is a built-in "
     "measure; a profile adds measures under codes of its own"),
    ("[measure]\ncode = \"x\"\n",
     "clinic.toml: [measure] must be written [[measure]] (one table a measure)"),
    ("[columns.visits]\n\"Date\" = \"session_date\"\n",
     "clinic.toml: [columns.visits]: not a table (patients, sessions, measurements)"),
    ("[columns.sessions]\n\"Date\" = \"visit_date\"\n",
     "clinic.toml: [columns.sessions] \"Date\" = \"visit_date\": not a column of the sessions "
     "table nor a declared covariate (columns: session_id, patient_id, therapist_id, "
     "session_date, session_time, session_number, technique, target_region, duration_min, "
     "home_program, adverse_event)"),
    ("[columns.sessions]\n\"Date\" = \"\"\n",
     "clinic.toml: [columns.sessions] \"Date\" = \"\": a column is renamed to a name, never "
     "removed (write one of session_id, patient_id, therapist_id, session_date, session_time, "
     "session_number, technique, target_region, duration_min, home_program, adverse_event)"),
    ("[labels.technique]\n\"DN\" = \"dry_needling\"\n",
     "clinic.toml: [labels.technique] \"DN\" = \"dry_needling\": not a technique label "
     "(direct_pressure, stretching, massage, combined, none); add it under [vocabulary] first"),
    ("[labels.therapist_id]\n\"A\" = \"B\"\n",
     "clinic.toml: [labels.therapist_id]: therapist_id is not a category column (labels can be "
     "given for technique, condition, target_region, adverse_event, arm, sex, affected_side, "
     "phase, side, measure)"),
    ("[covariates.patients]\nbmi = \"number\"\n",
     "clinic.toml: [covariates.patients] bmi type = \"number\": write one of \"float\", "
     "\"int\", \"category\", \"bool\", \"date\""),
    ("[covariates.patients]\nage_years = \"int\"\n",
     "clinic.toml: [covariates.patients] age_years: age_years is a built-in column, not a "
     "covariate"),
    ("[covariates.measurements]\ndevice = \"category\"\n",
     "clinic.toml: [covariates.measurements]: covariates belong to patients or sessions"),
    ("[covariates.patients]\n\"BMI\" = \"float\"\n",
     "clinic.toml: [covariates.patients] BMI: a covariate name must be lowercase letters, "
     "digits and underscores, starting with a letter (map the clinic's column to it in "
     "[columns.patients])"),
    ("[covariates.sessions]\ndose = { type = \"float\", low = 10, high = 1 }\n",
     "clinic.toml: [covariates.sessions] dose: low = 10 is above high = 1"),
    ("[dates]\ndayfirst = \"yes\"\n",
     "clinic.toml: [dates] dayfirst = \"yes\": write true or false"),
    ("[dates]\nformat = \"%d.%m.%Y\"\n",
     "clinic.toml: unknown key [dates] format; [dates] has dayfirst only"),
]


@pytest.mark.parametrize("text, sentence", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_profile_is_one_sentence(tmp_path, text, sentence):
    path = tmp_path / "clinic.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(info.value) == sentence
    code, out, err = run_cli("validate", str(tmp_path), "--profile", str(path))
    assert code == 2 and out == ""
    assert err == f"mfr-outcomes validate: {sentence}\n"


def test_profile_file_problems(tmp_path):
    with pytest.raises(ProfileError, match=r"^profile .*nowhere\.toml does not exist$"):
        load_profile(tmp_path / "nowhere.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[vocabulary]\ncondition = ["n\xe4cken"]\n'.encode("latin-1"))
    with pytest.raises(ProfileError) as info:
        load_profile(latin)
    assert str(info.value) == ("profile latin.toml is not UTF-8 text (byte 0xe4 at position "
                               "28); save it as UTF-8")
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * 1_000_001, encoding="utf-8")
    with pytest.raises(ProfileError, match=r"is 1,000,003 bytes; a profile is a short"):
        load_profile(big)


def test_a_measure_registered_differently_is_refused(tmp_path):
    text = textwrap.dedent("""\
        [[measure]]
        code = "vas_pain"
        label = "Pain (VAS)"
        unit = "points"
        low = 0
        high = 10
        """)
    first = load_profile({"measure": [{"code": "vas_pain", "label": "Pain (VAS)",
                                       "unit": "points", "low": 0, "high": 100}]})
    first.register_measures()
    path = tmp_path / "clinic.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError) as info:
        load_profile(path).register_measures()
    assert str(info.value) == (
        "clinic.toml: [[measure]] code = \"vas_pain\" is already registered with other fields "
        "(by another profile or register_measure); call "
        "mfr_outcomes.measures.unregister_measure('vas_pain') first or choose another code")
    first.register_measures()  # the same measure again: nothing to do
