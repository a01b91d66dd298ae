"""Tests of mfr_outcomes.findings: the leaf module of report types, and that they pickle."""
from __future__ import annotations

import pickle

import pytest

import mfr_outcomes as mfr
from mfr_outcomes import findings, study
from mfr_outcomes.findings import DataValidationError, Finding, RowAccount, ValidationReport


def _report() -> ValidationReport:
    f = Finding(table="sessions", file="sessions.csv", line=4, column="duration_min", value="-5",
                rule="out_of_range", message="sessions.csv line 4: duration_min = -5, must be "
                "5–180 (set to missing; row kept)", action="kept")
    return ValidationReport(findings=[f], accounting={"sessions": RowAccount(5, 5, 0)},
                            source="clinic")


def test_error_pickles_with_its_report():
    err = DataValidationError(_report())
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, DataValidationError)
    assert str(back) == str(err)
    assert back.report.findings == err.report.findings
    assert back.report.accounting == err.report.accounting


def test_report_pickles():
    rep = _report()
    back = pickle.loads(pickle.dumps(rep))
    assert back.to_dict() == rep.to_dict()


def test_study_reexports_the_same_types():
    assert study.Finding is findings.Finding
    assert study.ValidationReport is findings.ValidationReport
    assert study.DataValidationError is findings.DataValidationError
    assert mfr.DataValidationError is findings.DataValidationError


def test_findings_is_a_leaf():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(findings))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m for m in imported if m and m.startswith("mfr_outcomes")} <= {"mfr_outcomes.vocab"}


def test_broken_accounting_is_an_internal_error():
    with pytest.raises(RuntimeError, match="row accounting broken"):
        RowAccount(3, 1, 1)
