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

from mfr_outcomes.report.builder import (
    SECTION_TITLES,
    Figure,
    ReportResult,
    Section,
    Table,
    build_report,
    parse_period,
)
from mfr_outcomes.report.disclosure import (
    Redactor,
    neutralise_csv_cell,
    suppress_counts,
)

__all__ = [
    "build_report",
    "ReportResult",
    "Section",
    "Table",
    "Figure",
    "SECTION_TITLES",
    "parse_period",
    "suppress_counts",
    "neutralise_csv_cell",
    "Redactor",
]
