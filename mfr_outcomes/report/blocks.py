"""The pieces a report section is made of: text with counts, tables, figures, problems."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mfr_outcomes.report.disclosure import Cell

__all__ = ["Pct", "Text", "Table", "Figure", "Section", "ReportResult"]


@dataclass(frozen=True)
class Pct:
    """" (42 %)" of two ledger cells, shown only when both counts are shown."""

    part: Cell
    whole: Cell


@dataclass(frozen=True)
class Text:
    """A sentence whose counts are ledger cells, shown (or hidden) when the report is written.

    Build it with :meth:`of`: ``Text.of("Symptom flares: ", cell, ".")``.
    """

    parts: tuple[str | Cell | Pct, ...]

    @classmethod
    def of(cls, *parts: str | Cell | Pct) -> Text:
        return cls(tuple(parts))

    @property
    def cells(self) -> list[Cell]:
        return [p for p in self.parts if isinstance(p, Cell)]


@dataclass
class Table:
    """One table of the report, kept as numbers until it is shown.

    Attributes
    ----------
    name : str
        File stem of its CSV (``<section>_<name>.csv``).
    caption : str
        One line shown above it.
    frame : DataFrame
        The numbers, before suppression; never holds identifiers.
    counts : tuple of str
        Columns holding counts (each cell a ledger cell, suppressed by the ledger's rules).
    linked : dict
        Derived column -> count columns it was computed from: hidden when one of them is
        below ``min_cell`` (a mean of few people).
    ratios : tuple of str
        Linked columns that reveal their counts (a percentage of a shown total): hidden
        whenever one of their counts is hidden, for whatever reason.
    decimals : dict
        Column -> decimals shown in HTML (2 by default).
    keys : tuple of str
        Columns naming a row, to match it with the same row of another site's table.
    cells : dict
        (row position, column) -> :class:`~mfr_outcomes.report.disclosure.Cell`, filled when
        the table is added to a section.
    shown : DataFrame or None
        The table as published (suppressed, redacted), filled in when the report is written.
    csv_path : Path or None
    """

    name: str
    caption: str
    frame: pd.DataFrame
    counts: tuple[str, ...] = ()
    linked: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ratios: tuple[str, ...] = ()
    decimals: dict[str, int] = field(default_factory=dict)
    note: str = ""
    keys: tuple[str, ...] = ()
    cells: dict[tuple[int, str], Cell] = field(default_factory=dict)
    shown: pd.DataFrame | None = None
    csv_path: Path | None = None

    def cell(self, column: str, row: int | None = None, **match: Any) -> Cell:
        """The cell of *column* in row *row* (position) or in the one row matching *match*."""
        if row is None:
            mask = pd.Series(True, index=self.frame.index)
            for k, v in match.items():
                mask &= self.frame[k] == v
            pos = [i for i, ok in enumerate(mask.to_numpy()) if ok]
            if len(pos) != 1:
                raise KeyError(f"table {self.name}: {len(pos)} rows match {match}")
            row = pos[0]
        return self.cells[(row, column)]

    def column_cells(self, column: str, rows: Sequence[int] | None = None) -> list[Cell]:
        rows = range(len(self.frame)) if rows is None else rows
        return [self.cells[(r, column)] for r in rows if (r, column) in self.cells]


@dataclass
class Figure:
    """A figure embedded as a PNG ``data:`` URI, with its caption and alternative text."""

    caption: str
    alt: str
    data_uri: str


@dataclass
class Section:
    """One section: an ordered list of blocks (paragraphs, tables, figures, problems)."""

    key: str
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def para(self, text: str | Text) -> None:
        self.blocks.append(("para", text))

    def items(self, texts: Sequence[str | Text]) -> None:
        if texts:
            self.blocks.append(("list", list(texts)))

    def table(self, table: Table) -> Table:
        self.blocks.append(("table", table))
        return table

    def figure(self, figure: Figure) -> Figure:
        self.blocks.append(("figure", figure))
        return figure

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.blocks.append(("problem", text))

    def later(self, make: Callable[[], list[tuple[str, Any]]]) -> None:
        """Blocks that depend on which counts are hidden (a figure of published counts),
        made once the ledger has decided."""
        self.blocks.append(("later", make))

    @property
    def tables(self) -> list[Table]:
        return [b for kind, b in self.blocks if kind == "table"]

    @property
    def figures(self) -> list[Figure]:
        return [b for kind, b in self.blocks if kind == "figure"]

    @property
    def ok(self) -> bool:
        """True when every part of the section was built."""
        return not self.problems


@dataclass
class ReportResult:
    """What :func:`~mfr_outcomes.report.build_report` wrote.

    Attributes
    ----------
    html_path : Path
    csv_paths : list of Path
        One CSV a table, in report order.
    sections : dict
        Section key -> :class:`Section`.
    failures : list of str
        Parts that could not be built, one sentence each (also in the methods section).
    cautions : list of str
        Statistical and data cautions raised while building (also in the methods section).
    ledger : Ledger
        Every published count and whether it is hidden (for audits and tests).
    family : dict
        Scope name (``"all sites"`` or a site) -> the decided ledger of that report of the
        study, for every scope this report built to decide its suppression across reports
        (the all-sites one and every site's in a study with sites and ``min_cell`` above 1;
        this report's alone otherwise, or for an all-sites report with ``all_sites_alone``).
    """

    html_path: Path
    csv_paths: list[Path]
    sections: dict[str, Section]
    failures: list[str] = field(default_factory=list)
    cautions: list[str] = field(default_factory=list)
    ledger: Any = None
    family: dict[str, Any] = field(default_factory=dict)
