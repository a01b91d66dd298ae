"""What loading found: findings, row accounting, the validation report and its error.

A leaf module (it imports no other module of the package but the vocabulary), so that the schema
rules, the readers and :class:`~mfr_outcomes.study.Study` can all use these types without importing
each other. Everything here pickles (reports and errors cross Dask workers).
"""
from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from mfr_outcomes.vocab import TABLES

__all__ = [
    "Action",
    "Finding",
    "RowAccount",
    "ValidationReport",
    "DataValidationError",
]

Action = Literal["excluded", "kept"]

_FINDING_COLUMNS = ["table", "file", "line", "column", "value", "rule", "action", "message"]


@dataclass(frozen=True)
class Finding:
    """One problem found while loading a table.

    Attributes
    ----------
    table : str
        "patients", "sessions" or "measurements".
    file : str
        The file (or sheet, table, frame) the row came from, as named in messages.
    line : int or None
        Line in a text editor for CSV (header is line 1), sheet row for XLSX, 1-based row for
        database tables and frames; None for a finding about a whole column or table.
    column : str or None
        The column at fault, None for a whole row.
    value : str or None
        The offending value as written in the source.
    rule : str
        Reason code: missing_column, unexpected_column, missing_value, not_a_number, wrong_type,
        not_integer, out_of_range, unknown_category, unknown_measure, duplicate_key,
        duplicate_reading, orphan, cascade, invalid_date, before_enrolment, session_order,
        post_without_pre, post_on_assessment, malformed_row, blank_line, distant_date.
    message : str
        A plain sentence naming file, line and value, ending with what was done.
    action : {"excluded", "kept"}
        Whether the row was excluded, or kept with a caution (a bad optional value set missing).
    """

    table: str
    file: str
    line: int | None
    column: str | None
    value: str | None
    rule: str
    message: str
    action: Action = "kept"

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class RowAccount:
    """Row accounting of one table: ``read == used + excluded + blank``.

    ``reasons`` counts exclusions by rule; ``blank`` counts the blank or whitespace-only lines of a
    text file (read, but holding no data).
    """

    read: int
    used: int
    excluded: int
    reasons: Mapping[str, int] = field(default_factory=dict)
    blank: int = 0

    def __post_init__(self) -> None:
        if self.read != self.used + self.excluded + self.blank:  # an internal bug, not user input
            raise RuntimeError(f"row accounting broken: {self.read} != {self.used} + "
                               f"{self.excluded} + {self.blank}")


@dataclass
class ValidationReport:
    """Everything loading found, one plain sentence a finding, plus row accounting per table.

    Attributes
    ----------
    findings : list of Finding
    accounting : dict
        table -> :class:`RowAccount`.
    source : str
        What was read.
    """

    findings: list[Finding] = field(default_factory=list)
    accounting: dict[str, RowAccount] = field(default_factory=dict)
    source: str = ""

    @property
    def ok(self) -> bool:
        """True when nothing at all was found."""
        return not self.findings

    @property
    def n_excluded(self) -> int:
        """Rows excluded over all tables."""
        return sum(a.excluded for a in self.accounting.values())

    def to_frame(self) -> pd.DataFrame:
        """Findings as a DataFrame.

        Returns
        -------
        DataFrame
            Columns table, file, line (nullable Int64), column, value, rule, action, message; one
            row a finding, in the order found.
        """
        rows = [{c: getattr(f, c) for c in _FINDING_COLUMNS} for f in self.findings]
        frame = pd.DataFrame(rows, columns=_FINDING_COLUMNS)
        frame["line"] = frame["line"].astype("Int64")
        return frame

    def summary(self) -> pd.DataFrame:
        """Row accounting per table.

        Returns
        -------
        DataFrame
            Columns table, read, used, excluded, findings, cautions (findings whose row was kept),
            blank (blank lines of a text file, counted in read).
        """
        rows = []
        for table in _ordered_tables(self.accounting):
            acc = self.accounting[table]
            mine = [f for f in self.findings if f.table == table]
            rows.append({
                "table": table, "read": acc.read, "used": acc.used, "excluded": acc.excluded,
                "findings": len(mine), "cautions": sum(f.action == "kept" for f in mine),
                "blank": acc.blank,
            })
        return pd.DataFrame(rows, columns=["table", "read", "used", "excluded", "findings",
                                           "cautions", "blank"])

    def accounting_lines(self) -> list[str]:
        """One sentence a table: rows read, used and excluded with their reasons."""
        out = []
        for table in _ordered_tables(self.accounting):
            acc = self.accounting[table]
            text = f"{table}: {acc.read} rows read, {acc.used} used, {acc.excluded} excluded"
            if acc.blank:
                text += f", {acc.blank} blank"
            if acc.reasons:
                why = ", ".join(f"{n} {rule.replace('_', ' ')}" for rule, n in acc.reasons.items())
                text += f" ({why})"
            out.append(text)
        return out

    def __str__(self) -> str:
        head = f"Validation of {self.source}: " if self.source else "Validation: "
        head += "no findings." if self.ok else f"{len(self.findings)} finding(s)."
        return "\n".join([head, *self.accounting_lines(), *(f.message for f in self.findings)])

    def __repr__(self) -> str:
        return (f"ValidationReport(source={self.source!r}, findings={len(self.findings)}, "
                f"excluded={self.n_excluded})")

    def _repr_html_(self) -> str:
        parts = [f"<p><b>Validation of {html.escape(self.source or 'data')}</b>: "
                 f"{len(self.findings)} finding(s)</p>",
                 self.summary().to_html(index=False)]
        if self.findings:
            parts.append(self.to_frame()[["message", "action"]].to_html(index=False))
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (for JSON): source, ok, accounting, findings."""
        return {
            "source": self.source,
            "ok": self.ok,
            "accounting": {t: {"read": a.read, "used": a.used, "excluded": a.excluded,
                               "blank": a.blank, "reasons": dict(a.reasons)}
                           for t, a in self.accounting.items()},
            "findings": [{c: getattr(f, c) for c in _FINDING_COLUMNS} for f in self.findings],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_csv(self) -> str:
        """The findings as CSV text, one row a finding (columns of :meth:`to_frame`)."""
        return self.to_frame().to_csv(index=False)


def _ordered_tables(accounting: Mapping[str, RowAccount]) -> list[str]:
    return [t for t in TABLES if t in accounting] + [t for t in accounting if t not in TABLES]


class DataValidationError(ValueError):
    """Raised by ``strict=True`` loading when anything was found; carries the report."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        n = len(report.findings)
        first = report.findings[0].message if report.findings else ""
        more = f" (and {n - 1} more)" if n > 1 else ""
        super().__init__(f"{n} validation finding(s) in {report.source or 'the data'}: {first}{more}")

    def __reduce__(self) -> tuple[type[DataValidationError], tuple[ValidationReport]]:
        # the default pickles args (the sentence) and would call __init__ with it
        return (type(self), (self.report,))
