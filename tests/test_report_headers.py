"""The shipped study's report as a reader sees it: every published table has headers written
for people (CSV files keep stable machine names, listed in docs/report.md), and the trend charts
choose a weekly grain when the 11 months of the shipped study are too few for the rules."""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from bs4 import BeautifulSoup

from mfr_outcomes import qi
from mfr_outcomes.report import build_report
from mfr_outcomes.report.context import Options
from mfr_outcomes.report.fmt import HEADERS, TABLE_HEADERS, has_header, header
from mfr_outcomes.report.sections import trends

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped(synthetic_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_report(synthetic_study, out, seed=1)


def _tables(result):
    return [t for sec in result.sections.values() for t in sec.tables]


def test_every_published_column_has_a_written_header(shipped):
    soup = BeautifulSoup(shipped.html_path.read_text(encoding="utf-8"), "html.parser")
    tables = _tables(shipped)
    assert len(tables) >= 20
    for t in tables:
        for col in t.shown.columns:
            assert has_header(col, t.name), f"{t.name}: {col} has no header"
        html = soup.find("table", id=re.compile(rf"-{re.escape(t.name)}$"))
        ths = [th.get_text() for th in html.find_all("th")]
        assert ths == [header(c, t.name) for c in t.shown.columns]
        # the CSV keeps the machine names
        assert t.csv_path.read_text(encoding="utf-8").splitlines()[0].split(",") == list(
            t.shown.columns)
    every = " | ".join(th.get_text() for th in soup.find_all("th"))
    assert "ci low" not in every and "_" not in every
    assert "95% CI, lower" in every and "Change (post − pre)" in every


def test_headers_are_documented_with_their_csv_names():
    doc = (ROOT / "docs" / "report.md").read_text(encoding="utf-8")
    for col, text in HEADERS.items():
        assert f"| `{col}` | {text} |" in doc, col
    for (table, col), text in TABLE_HEADERS.items():
        assert f"`{col}` in `{table}`: {text}" in doc, (table, col)


def test_weekly_aggregate_adds_up_to_the_monthly_one(synthetic_study):
    study = synthetic_study
    week = qi.aggregate(study, "pain_nrs", period="week")
    month = qi.aggregate(study, "pain_nrs", period="month")
    for c in ("n_sessions", "n_pre", "n_paired", "n_completed"):
        assert week[c].sum() == month[c].sum()
    assert (week["period_start"].dt.day_of_week == 0).all()  # weeks start on Monday
    # one week by hand: the mean pre-session reading of the sessions dated in it
    f = study.frame("pain_nrs").query("post == 0")
    dates = pd.to_datetime(f["session_date"])
    row = week.iloc[int(np.argmax(week["n_pre"]))]
    start = row["period_start"]
    inside = f[(dates >= start) & (dates < start + pd.Timedelta(days=7))]
    per_session = inside.groupby("session_id")["value"].mean()
    assert row["n_pre"] == len(per_session)
    assert row["mean_pre"] == pytest.approx(per_session.mean(), rel=1e-12)
    assert qi.period_label(row["period"]) == f"{start:%Y-%m-%d}"


def test_trend_charts_go_weekly_when_months_are_too_few_and_say_so(shipped):
    sec = shipped.sections["trends"]
    summary = {t.name: t for t in sec.tables}["chart_summary"].frame
    summary = summary.set_index(summary["chart"].map(
        lambda c: "responders" if c.startswith("Responders") else
        "pain_nrs" if c.startswith("Mean Pain") else c))
    monthly = {t.name: t for t in sec.tables}["monthly"].frame
    months = monthly[(monthly["n_pre"] >= 5) & (monthly["patients"] >= 5)]
    assert len(months) < qi.MIN_SPC_POINTS  # the shipped study's 11 months are too few
    row = summary.loc["pain_nrs"]
    assert row["grain"] == "week" and row["points"] >= qi.MIN_SPC_POINTS
    assert row["variation"] is not None
    text = " ".join(b for k, b in sec.blocks if k == "para" and isinstance(b, str))
    assert (f"Drawn by week (Monday to Sunday, each labelled by its Monday): the monthly series "
            f"has only {len(months)} months with a value") in text
    assert len(sec.figures) >= 2
    assert any("by week" in f.caption for f in sec.figures)
    # the responders have too few months and too few weeks: said, nothing drawn
    resp = summary.loc["responders"]
    assert resp["grain"] == "month" and resp["points"] < qi.MIN_SPC_POINTS
    assert "too few as well" in text


def test_options_in_months_become_weeks():
    labels = [f"{d:%Y-%m-%d}" for d in pd.date_range("2026-06-01", periods=12, freq="W-MON")]
    ctx = SimpleNamespace(options=Options("pain_nrs", rebase=("2026-07",),
                                          baseline=("2026-06", "2026-06"),
                                          targets={"pain_nrs": 4.0}))
    lay = trends._layout(ctx, "pain_nrs", labels)
    assert labels[lay["rebase"][0]] == "2026-07-06"  # the first Monday of July
    first, last = lay["baseline"]
    assert (labels[first], labels[last]) == ("2026-06-01", "2026-06-29")
    assert lay["target"] == 4.0
    # monthly labels pass through
    months = ["2026-06", "2026-07"]
    assert trends._layout(ctx, "pain_nrs", months)["rebase"] == ["2026-07"]
