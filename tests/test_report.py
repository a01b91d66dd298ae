"""Tests of the QI report (mfr_outcomes.report) and the ``report`` CLI.

The report is checked as a reader and an attacker would: every section present, nothing fetched
from the network, no patient or session identifier anywhere, small counts suppressed, text from
the data escaped in HTML and neutralised in CSV.
"""
from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

bs4 = pytest.importorskip("bs4")
from bs4 import BeautifulSoup  # noqa: E402

from mfr_outcomes.report import (  # noqa: E402
    SECTION_TITLES,
    Redactor,
    build_report,
    neutralise_csv_cell,
    parse_period,
)

XSS = "<script>alert(1)</script>"
FORMULAS = ['=HYPERLINK("http://evil.example","x")', "@SUM(A1:A2)", "+1-2", "-3+4"]
_DATA_URI = re.compile(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"')


# ---------------------------------------------------------------------------- helpers


def _text_without_images(html: str) -> str:
    """The HTML with embedded PNGs cut out (base64 can contain any short code by chance)."""
    return _DATA_URI.sub('src=""', html)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _assert_no_external_resources(soup: BeautifulSoup) -> None:
    for tag in soup.find_all(src=True):
        assert tag["src"].startswith("data:"), f"external src in <{tag.name}>: {tag['src'][:60]}"
    for tag in soup.find_all(href=True):
        assert tag["href"].startswith("#"), f"external href in <{tag.name}>: {tag['href']}"
    assert not soup.find_all("script"), "the report must not contain scripts"
    assert not soup.find_all("link"), "the report must not link stylesheets"
    for style in soup.find_all("style"):
        assert "@import" not in style.text and "url(" not in style.text


def _assert_counts_suppressed(result, min_cell: int) -> int:
    """Every count cell of every table (CSV and the published frame) is 0, '<min_cell',
    'suppressed' or at least min_cell; returns how many are '<min_cell'."""
    label = f"<{min_cell}"
    n_suppressed = 0
    for sec in result.sections.values():
        for table in sec.tables:
            rows = _csv_rows(table.csv_path)
            for col in table.counts:
                if col not in table.shown.columns:
                    continue
                for value in table.shown[col]:
                    if value is None or (isinstance(value, float) and np.isnan(value)):
                        continue
                    if value == label:
                        n_suppressed += 1
                        continue
                    if value == "suppressed":
                        continue
                    assert value == 0 or float(value) >= min_cell, (sec.key, table.name, col,
                                                                   value)
                for row in rows:
                    cell = row[col]
                    if cell in ("", label, "suppressed"):
                        continue
                    assert float(cell) == 0 or float(cell) >= min_cell, (
                        table.csv_path.name, col, cell)
    return n_suppressed


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """Report of every site and period of a simulated study enrolling over 16 months (the
    shipped one spans 11 months, too few for a control chart), with a target, a declared
    change and a baseline."""
    from mfr_outcomes.synthetic import generate

    study, _ = generate(n_patients=90, seed=12, enrol_days=480, measures=["pain_nrs", "odi"])
    out = tmp_path_factory.mktemp("full_report")
    return build_report(study, out, min_cell=5, seed=11, targets={"pain_nrs": 4.0},
                        rebase=["2026-10"], baseline=("2026-01", "2026-06"))


@pytest.fixture(scope="module")
def site_report(synthetic_study, tmp_path_factory):
    """Report of one site and quarter of the shipped synthetic study."""
    out = tmp_path_factory.mktemp("site_report")
    return build_report(synthetic_study, out, site="site-3", period="2026Q2", min_cell=5,
                        seed=11)


def _clinic_export(folder: Path, *, n_patients: int = 36, seed: int = 5) -> dict:
    """Write a clinic-style export: other column names and labels, ';' separators, decimal
    commas, day/month/year dates, hostile therapist names. Returns the column map and the ids."""
    from mfr_outcomes.synthetic import generate_frames

    frames, _ = generate_frames(n_patients, seed, measures=["pain_nrs", "slr_deg", "odi"])
    p, s, m = (frames[k].copy() for k in ("patients", "sessions", "measurements"))
    # identifiers that cannot occur inside base64 text by chance (they contain '-')
    pid = {old: f"KL-{i:05d}" for i, old in enumerate(p["patient_id"], start=1)}
    sid = {old: f"KL-V{i:06d}" for i, old in enumerate(s["session_id"], start=1)}
    p["patient_id"] = p["patient_id"].map(pid)
    s["patient_id"] = s["patient_id"].map(pid)
    s["session_id"] = s["session_id"].map(sid)
    m["session_id"] = m["session_id"].map(sid)
    hostile = [XSS, *FORMULAS]
    therapists = sorted(s["therapist_id"].unique())
    rename_t = {t: hostile[i % len(hostile)] for i, t in enumerate(therapists)}
    s["therapist_id"] = s["therapist_id"].map(rename_t)
    tech = {"direct_pressure": "Druck", "stretching": "Dehnung", "massage": "Massage",
            "combined": "Kombi", "none": "Kontrolle"}
    s["technique"] = s["technique"].map(tech)
    for frame in (p, s):
        for col in frame.columns:
            if pd.api.types.is_datetime64_any_dtype(frame[col]):
                frame[col] = frame[col].dt.strftime("%d/%m/%Y")
    p = p.rename(columns={"patient_id": "PatNr", "site_id": "Standort", "age_years": "Alter"})
    s = s.rename(columns={"session_id": "Besuch", "patient_id": "PatNr",
                          "therapist_id": "Therapeut", "session_date": "Datum",
                          "technique": "Technik", "duration_min": "Minuten"})
    m = m.rename(columns={"session_id": "Besuch", "phase": "Zeitpunkt", "value": "Wert"})
    m["Zeitpunkt"] = m["Zeitpunkt"].map({"pre": "vor", "post": "nach"})
    # mistakes whose findings would name identifiers: a visit of an unknown patient, a duplicate
    # patient row, and a pain score out of range
    orphan = s.iloc[[0]].copy()
    orphan["Besuch"], orphan["PatNr"] = "KL-V999999", "KL-77777"
    s = pd.concat([s, orphan], ignore_index=True)
    p = pd.concat([p, p.iloc[[1]]], ignore_index=True)
    m.loc[m.index[(m["measure"] == "pain_nrs")][2], "Wert"] = 12.0
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in (("patients", p), ("sessions", s), ("measurements", m)):
        frame.to_csv(folder / f"{name}.csv", sep=";", decimal=",", index=False)
    column_map = {
        "patients": {"PatNr": "patient_id", "Standort": "site_id", "Alter": "age_years"},
        "sessions": {"Besuch": "session_id", "PatNr": "patient_id", "Therapeut": "therapist_id",
                     "Datum": "session_date", "Technik": "technique", "Minuten": "duration_min"},
        "measurements": {"Besuch": "session_id", "Zeitpunkt": "phase", "Wert": "value"},
        "technique": {v: k for k, v in tech.items()},
        "phase": {"vor": "pre", "nach": "post"},
    }
    map_path = folder.parent / f"{folder.name}_map.json"
    map_path.write_text(json.dumps(column_map, ensure_ascii=False), encoding="utf-8")
    return {"map": column_map, "map_path": map_path,
            "patient_ids": [*pid.values(), "KL-77777"],
            "session_ids": [*sid.values(), "KL-V999999"], "therapists": hostile}


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    """A column-mapped clinic export, loaded, and its report."""
    import mfr_outcomes as mfr

    root = tmp_path_factory.mktemp("clinic")
    info = _clinic_export(root / "export")
    study = mfr.load_study(root / "export", column_map=info["map_path"], dayfirst=True)
    # therapist codes shown (not pseudonyms), so that their hostile text reaches the report
    result = build_report(study, root / "report", min_cell=5, seed=3, name_therapists=True)
    info.update(study=study, result=result, root=root)
    return info


# ---------------------------------------------------------------------------- synthetic study


def test_every_section_present_and_in_order(site_report):
    html = site_report.html_path.read_text(encoding="utf-8")
    soup = BeautifulSoup(html, "html.parser")
    ids = [s["id"] for s in soup.find_all("section")]
    assert ids == list(SECTION_TITLES)
    for key, title in SECTION_TITLES.items():
        sec = soup.find("section", id=key)
        assert sec.find("h2").get_text(strip=True) == title
        assert sec.get_text(strip=True) != title, f"section {key} is empty"
    assert list(site_report.sections) == list(SECTION_TITLES)


def test_report_is_self_contained(site_report):
    soup = BeautifulSoup(site_report.html_path.read_text(encoding="utf-8"), "html.parser")
    _assert_no_external_resources(soup)
    imgs = soup.find_all("img")
    assert len(imgs) >= 4, "figures of intervention, outcomes and trends expected"
    for img in imgs:
        assert img["src"].startswith("data:image/png;base64,")
        assert img.get("alt"), "every figure needs alternative text"


def test_scope_is_applied(site_report, synthetic_study):
    """The cohort flow counts exactly the site-3 patients with a visit in 2026Q2."""
    s = synthetic_study.sessions.merge(synthetic_study.patients[["patient_id", "site_id"]])
    inside = s[(s["site_id"] == "site-3") & (s["session_date"] >= "2026-04-01")
               & (s["session_date"] < "2026-07-01")]
    flow = site_report.sections["cohort"].tables[0].frame
    row = flow[flow["stage"].str.startswith("With a visit in scope")].iloc[0]
    assert row["patients"] == inside["patient_id"].nunique()
    assert row["sessions"] == len(inside)
    text = " ".join(b for k, b in site_report.sections["cohort"].blocks if k == "para")
    assert "site site-3" in text and "2026Q2" in text


def test_no_patient_identifier_anywhere(site_report, synthetic_dir):
    ids = set(pd.read_csv(synthetic_dir / "patients.csv", dtype=str)["patient_id"])
    ids |= set(pd.read_csv(synthetic_dir / "sessions.csv", dtype=str)["session_id"])
    html = _text_without_images(site_report.html_path.read_text(encoding="utf-8"))
    tokens = set(re.findall(r"[A-Za-z0-9_\-]+", html))
    assert not tokens & ids, sorted(tokens & ids)[:5]
    for path in site_report.csv_paths:
        tokens = set(re.findall(r"[A-Za-z0-9_\-]+", path.read_text(encoding="utf-8")))
        assert not tokens & ids, (path.name, sorted(tokens & ids)[:5])


def test_small_counts_suppressed_everywhere(site_report):
    n = _assert_counts_suppressed(site_report, 5)
    assert n > 0, "a single site and quarter should have some small cells"
    soup = BeautifulSoup(site_report.html_path.read_text(encoding="utf-8"), "html.parser")
    cells = [td.get_text(strip=True) for td in soup.find_all("td")]
    assert cells.count("<5") >= n  # shown as text "<5" (escaped in the source)
    assert "&lt;5" in site_report.html_path.read_text(encoding="utf-8")


def test_csv_files_match_tables(site_report):
    names = {p.name for p in site_report.csv_paths}
    assert "cohort_flow.csv" in names and "outcomes_prepost.csv" in names
    for sec in site_report.sections.values():
        for table in sec.tables:
            rows = _csv_rows(table.csv_path)
            assert len(rows) == len(table.shown)
            assert list(rows[0]) if rows else True
            assert not {"patient_id", "session_id"} & set(table.shown.columns)


def test_prepost_estimates_match_the_model(site_report, synthetic_study):
    """The published within-session changes are the model's contrasts (post − pre)."""
    from mfr_outcomes.models.domain import fit_prepost
    from mfr_outcomes.report.scope import restrict_period, site_history

    history, _, bounds = site_history(synthetic_study, "site-3", "2026Q2")
    scoped = restrict_period(history, bounds)
    con = fit_prepost(scoped, "pain_nrs", by="technique").contrasts("post", by="technique")
    rows = _csv_rows(Path(site_report.html_path.parent / "tables" / "outcomes_prepost.csv"))
    shown = {r["technique"]: r for r in rows}
    for _, c in con.iterrows():
        r = shown[str(c["technique"]).replace("_", " ")]
        if r["patients"] == "<5":
            assert r["estimate"] == "<5"
        else:
            assert float(r["estimate"]) == pytest.approx(c["estimate"], abs=1e-5)
            assert float(r["estimate"]) < 0  # negative numbers stay numbers in CSV


def test_methods_record_seed_formulas_and_versions(site_report):
    sec = site_report.sections["methods"]
    text = " ".join(b for k, b in sec.blocks if k == "para")
    assert "Random seed: 11" in text
    models = {t.name: t for t in sec.tables}["models"].frame
    assert any("(post | patient_id)" in f for f in models["formula"])
    software = {t.name: t for t in sec.tables}["software"].frame
    assert {"python", "numpy", "pandas", "statsmodels"} <= set(software["package"])


def test_each_caution_is_said_once_with_the_fits_it_arose_in(full_report):
    """A warning of one fit reaches the report by its fit's label, by the part that fitted it
    and by the sections around that part: it is one line naming the fit and the part, not one
    line each."""
    bodies = [c.split(": ", 1)[-1] for c in full_report.cautions]
    assert len(bodies) == len(set(bodies)), full_report.cautions
    singular = [c for c in full_report.cautions if "boundary (singular) fit" in c]
    assert singular, full_report.cautions  # this study's therapist variance is zero
    models = {t.name: t for t in full_report.sections["methods"].tables}["models"].frame
    for c in singular:
        places = c.split(": ", 1)[0].split("; ")
        assert places[0] in set(models["model"]), c      # the fit, by its methods row
        assert not any(p.endswith(" section") for p in places), c  # enclosing parts: nothing


def test_trend_signals_are_sentences(full_report):
    sec = full_report.sections["trends"]
    lists = [b for k, b in sec.blocks if k == "list"]
    assert len(lists) >= 2  # the two XmR charts (the proportions have too few months)
    table = {t.name: t for t in sec.tables}["chart_summary"].shown
    first = table.iloc[0]
    assert first["variation"] in ("common_cause", "improvement_high", "improvement_low",
                                  "concern_high", "concern_low")
    assert first["assurance"] in ("pass", "fail", "hit_or_miss") and first["target"] == 4.0
    html = full_report.html_path.read_text(encoding="utf-8")
    assert '<svg class="icon"' in html  # the icons drawn in the summary
    for items in lists:
        for sentence in items:
            assert sentence.endswith(".") and len(sentence.split()) >= 4


# ---------------------------------------------------------------------------- clinic export


def test_clinic_export_loads_through_the_column_map(clinic):
    study = clinic["study"]
    rules = {f.rule for f in study.report.findings}
    assert {"orphan", "duplicate_key", "out_of_range"} <= rules, str(study.report)
    assert set(study.sessions["technique"].astype(str)) == {
        "direct_pressure", "stretching", "massage", "combined", "none"}


def test_findings_are_reported_without_identifiers(clinic):
    """Issue 12 item 4: table, line and rule, with a count per rule; never an identifier nor
    the rejected value (those stay in validate's output and study.report)."""
    sec = clinic["result"].sections["data_quality"]
    tables = {t.name: t for t in sec.tables}
    findings = tables["findings"].shown
    report = clinic["study"].report
    assert len(findings) == len(report.findings)
    assert set(findings["file"]) <= {"patients.csv", "sessions.csv", "measurements.csv"}
    assert findings["line"].notna().all()
    assert "value" not in findings.columns and "message" not in findings.columns
    published = " ".join(p.read_text(encoding="utf-8") for p in clinic["result"].csv_paths)
    published += clinic["result"].html_path.read_text(encoding="utf-8")
    withheld = [str(f.value) for f in report.findings  # identifiers such as KL-00012
                if f.value and any(ch.isalpha() for ch in str(f.value))
                and any(ch.isdigit() for ch in str(f.value))]
    assert withheld  # the export has rejected values with text (identifiers, labels)
    for value in withheld:  # (a bare number like 12,0 is also a part of any CSV row)
        assert value not in published, value
    # the sentence names the file, the line and the rule only
    out_of_range = findings[findings["rule"] == "out of range"].iloc[0]
    assert re.fullmatch(r"measurements\.csv line \d+: value — out of range; row excluded\.",
                        out_of_range["finding"])
    by_rule = tables["findings_by_rule"].frame
    assert by_rule["n"].sum() == len(report.findings)
    assert "out of range" in " ".join(tables["findings_by_rule"].shown["rule"])


def test_therapist_name_is_escaped_text_not_a_tag(clinic):
    html = clinic["result"].html_path.read_text(encoding="utf-8")
    soup = BeautifulSoup(html, "html.parser")
    assert not soup.find_all("script")
    assert XSS in soup.get_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    _assert_no_external_resources(soup)


def test_no_identifier_of_the_export_anywhere(clinic):
    ids = clinic["patient_ids"] + clinic["session_ids"]
    html = _text_without_images(clinic["result"].html_path.read_text(encoding="utf-8"))
    for path in [clinic["result"].html_path, *clinic["result"].csv_paths]:
        text = html if path.suffix == ".html" else path.read_text(encoding="utf-8")
        found = [i for i in ids if i in text]
        assert not found, (path.name, found[:3])


def test_csv_formula_cells_neutralised(clinic):
    path = clinic["result"].html_path.parent / "tables" / "intervention_therapists.csv"
    rows = _csv_rows(path)
    names = [r["therapist"] for r in rows]
    for formula in FORMULAS:
        assert "'" + formula in names
    assert XSS in names
    for path in clinic["result"].csv_paths:
        for row in _csv_rows(path):
            for cell in row.values():
                if cell and cell[0] in "=+@\t\r":
                    pytest.fail(f"{path.name}: unneutralised cell {cell!r}")
                if cell.startswith("-"):
                    float(cell)  # only negative numbers may start with '-'


def test_clinic_counts_suppressed(clinic):
    assert _assert_counts_suppressed(clinic["result"], 5) > 0


# ---------------------------------------------------------------------------- degrading


def test_a_failing_part_shows_a_sentence_and_is_recorded(small_study, tmp_path, monkeypatch,
                                                         caplog):
    import mfr_outcomes.models.domain as domain

    def broken(*args, **kwargs):
        raise ValueError("too few patients with post readings at this site")

    monkeypatch.setattr(domain, "fit_prepost", broken)
    _light(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="mfr_outcomes.report"):
        result = build_report(small_study, tmp_path, min_cell=3)
    assert result.html_path.exists()
    outcomes = result.sections["outcomes"]
    assert not outcomes.ok
    assert any("pre/post mixed model could not be produced: too few patients" in p
               for p in outcomes.problems)
    methods_text = json.dumps(result.sections["methods"].blocks, default=str)
    assert "too few patients with post readings" in methods_text
    assert any("too few patients" in r.getMessage() for r in caplog.records)
    html = result.html_path.read_text(encoding="utf-8")
    assert "Traceback" not in html and "too few patients with post readings" in html
    assert result.sections["cohort"].ok  # the rest of the report is still there


def test_tiny_site_still_gives_a_report(tmp_path):
    """Four patients: models may fail, every section still appears with sentences."""
    from mfr_outcomes.synthetic import generate

    study, _ = generate(n_patients=4, seed=3, measures=["pain_nrs"])
    result = build_report(study, tmp_path, min_cell=5)
    soup = BeautifulSoup(result.html_path.read_text(encoding="utf-8"), "html.parser")
    assert [s["id"] for s in soup.find_all("section")] == list(SECTION_TITLES)
    flow = result.sections["cohort"].tables[0].shown
    scope = flow.iloc[3:]  # the rows of the scope: 4 patients or fewer
    assert scope["patients"].isin(["<5", 0, "suppressed"]).all(), scope
    for failure in result.failures:
        assert "Traceback" not in failure and failure.endswith(".")


# ---------------------------------------------------------------------------- bad input


def test_bad_site_period_measure_are_sentences(small_study, tmp_path):
    with pytest.raises(ValueError, match=r"site 'nowhere' is not in this study; sites present"):
        build_report(small_study, tmp_path, site="nowhere")
    with pytest.raises(ValueError, match=r"period '2026Q5' is not a quarter"):
        build_report(small_study, tmp_path, period="2026Q5")
    with pytest.raises(ValueError, match=r"no sessions in period 1999-01"):
        build_report(small_study, tmp_path, period="1999-01")
    with pytest.raises(ValueError, match=r"unknown measure 'pain'"):
        build_report(small_study, tmp_path, measure="pain")
    with pytest.raises(ValueError, match=r"min_cell must be"):
        build_report(small_study, tmp_path, min_cell=0)


def test_parse_period():
    start, end, label = parse_period("2026q3")
    assert (start, end, label) == (pd.Timestamp("2026-07-01"), pd.Timestamp("2026-10-01"),
                                   "2026Q3")
    start, end, label = parse_period("2026-7")
    assert (start, end, label) == (pd.Timestamp("2026-07-01"), pd.Timestamp("2026-08-01"),
                                   "2026-07")
    for bad in ("2026-13", "Q3", "2026/07", ""):
        with pytest.raises(ValueError):
            parse_period(bad)


def _light(mp) -> None:
    """Skip trends and comparisons (slow, and not what the test is about)."""
    import mfr_outcomes.report.sections as sections

    for key in ("trends", "comparisons"):
        mp.setitem(sections.SECTIONS, key, (sections.SECTIONS[key][0], lambda ctx, sec: None))


def test_cli_report_writes_and_bad_values_exit_2(clinic, tmp_path, capsys, monkeypatch):
    _light(monkeypatch)
    from mfr_outcomes.cli import main

    export = clinic["root"] / "export"
    out = tmp_path / "cli"
    code = main(["report", str(export), "--out", str(out), "--column-map",
                 str(clinic["map_path"]), "--dayfirst", "--min-cell", "10", "--seed", "4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "report.html").exists()
    assert str(out / "report.html") in captured.out
    assert "<10" in (out / "tables" / "cohort_baseline.csv").read_text(encoding="utf-8")
    assert "take their share of one decision" in (out / "report.html").read_text(encoding="utf-8")
    # the all-sites report deciding alone says so in its methods
    code = main(["report", str(export), "--out", str(tmp_path / "alone"), "--column-map",
                 str(clinic["map_path"]), "--dayfirst", "--min-cell", "10", "--seed", "4",
                 "--all-sites-alone"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    html = (tmp_path / "alone" / "report.html").read_text(encoding="utf-8")
    assert "The all-sites report decided what it hides on its own" in html
    assert "take their share of one decision" not in html

    for args, fragment in (
        (["--period", "2026Q9"], "is not a quarter like 2026Q3"),
        (["--site", "elsewhere"], "site 'elsewhere' is not in this study"),
        (["--min-cell", "0"], "--min-cell must be at least 1"),
        (["--measure", "foo"], "unknown measure 'foo'"),
    ):
        code = main(["report", str(export), "--out", str(tmp_path / "bad"), "--column-map",
                     str(clinic["map_path"]), "--dayfirst", *args])
        err = capsys.readouterr().err
        assert code == 2, args
        assert fragment in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
    code = main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err


# ---------------------------------------------------------------------------- disclosure rules


def test_neutralise_csv_cell():
    for bad in ["=1+1", "+1", "-x", "@A1", "\tx", "\rx"]:
        assert neutralise_csv_cell(bad) == "'" + bad
    for ok in ["plain", "", "a=b", -2.5, -3, 0]:
        assert neutralise_csv_cell(ok) == ok


def test_redactor():
    r = Redactor(["P001", "KL-00007", "x y", "12"])
    assert r.text("patient P001 on line 12") == "patient [id] on line 12"
    assert r.text("P0011 and KL-00007.") == "P0011 and [id]."
    assert r.text("code x y here") == "code [id] here"
    assert r.value("12") == "[id]" and r.value(12) == 12


def test_cli_report_of_a_month(synthetic_dir, synthetic_study, tmp_path, capsys, monkeypatch):
    _light(monkeypatch)
    from mfr_outcomes.cli import main

    out = tmp_path / "month"
    code = main(["report", str(synthetic_dir), "--out", str(out), "--site", "site-2",
                 "--period", "2026-07", "--target", "pain_nrs=4", "--target",
                 "responders=0.5", "--rebase", "2026-05", "--baseline", "2026-01:2026-04",
                 "--name-therapists"])
    assert code == 0, capsys.readouterr().err
    therapists = _csv_rows(out / "tables" / "intervention_therapists.csv")
    assert all(r["therapist"].startswith("T") and "Therapist" not in r["therapist"]
               for r in therapists)
    rows = _csv_rows(out / "tables" / "cohort_flow.csv")
    scope = next(r for r in rows if r["stage"].startswith("With a visit in scope"))
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "site site-2" in html and "(2026-07)" in html
    s = synthetic_study.sessions.merge(synthetic_study.patients[["patient_id", "site_id"]])
    inside = s[(s["site_id"] == "site-2") & (s["session_date"].dt.strftime("%Y-%m") == "2026-07")]
    expected = len(inside)
    assert scope["sessions"] in ((str(expected),) if expected >= 5 else ("<5",)) + (
        "suppressed",)


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "pain_nrs"], "--target 'pain_nrs' is not CHART=NUMBER"),
    (["--target", "pain_nrs=four"], "--target 'pain_nrs=four' is not CHART=NUMBER"),
    (["--rebase", "July"], "--rebase 'July' is not a month like 2026-07"),
    (["--baseline", "2026-01"], "--baseline '2026-01' is not a range of months"),
    (["--baseline", "2026-01:2026-13"], "--baseline '2026-13' is not a month"),
])
def test_cli_report_bad_chart_options_exit_2(tmp_path, capsys, args, message):
    from mfr_outcomes.cli import main

    code = main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_finding_sentence_says_line_for_text_files_and_row_for_sheets():
    from mfr_outcomes.report.sections.data_quality import finding_sentence

    base = {"column": "patient_id", "rule": "orphan", "action": "excluded", "line": 14,
            "value": "P-42"}
    csv = finding_sentence(pd.Series({**base, "file": "sessions.csv"}))
    xlsx = finding_sentence(pd.Series({**base, "file": "study.xlsx"}))
    assert csv == "sessions.csv line 14: patient_id — orphan; row excluded."
    assert xlsx == "study.xlsx row 14: patient_id — orphan; row excluded."
    assert "P-42" not in csv
