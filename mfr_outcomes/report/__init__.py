"""The QI report: one self-contained HTML file per clinic and period, with its tables as CSV.

>>> import tempfile, warnings
>>> import mfr_outcomes as mfr
>>> from mfr_outcomes.report import build_report
>>> study = mfr.load_study(mfr.datasets.synthetic_path())
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore")
...     result = build_report(study, tempfile.mkdtemp(), site="site-1", period="2026Q3")
>>> result.html_path.name
'report.html'
"""
from __future__ import annotations

from mfr_outcomes.report.blocks import Figure, ReportResult, Section, Table, Text
from mfr_outcomes.report.builder import build_report
from mfr_outcomes.report.disclosure import (
    Ledger,
    Redactor,
    neutralise_csv_cell,
)
from mfr_outcomes.report.scope import parse_period
from mfr_outcomes.report.sections import SECTION_TITLES

__all__ = [
    "build_report",
    "ReportResult",
    "Section",
    "Table",
    "Text",
    "Figure",
    "Ledger",
    "SECTION_TITLES",
    "parse_period",
    "neutralise_csv_cell",
    "Redactor",
]
