"""The three tables' columns described for people, generated from the schemas.

One generator feeds ``mfr-outcomes schema`` and the codebook of the synthetic data, so the
documented columns are always the validated ones (with a profile's labels and covariates when
one is given).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from mfr_outcomes import vocab
from mfr_outcomes.schema import ColumnSpec, table_specs

__all__ = ["column_table", "columns_markdown"]

_TYPES = {"id": "text (identifier)", "str": "text", "int": "integer", "float": "number",
          "date": "date (YYYY-MM-DD)", "bool": "true / false", "time": "time of day (HH:MM)"}


def _type(spec: ColumnSpec) -> str:
    if spec.kind == "category":
        if spec.categories is None:
            return "category (labels from the profile)"
        return " / ".join(spec.categories)
    return _TYPES[spec.kind]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _rule(spec: ColumnSpec) -> str:
    parts = []
    if spec.low is not None and spec.high is not None:
        parts.append(f"{_fmt(spec.low)}–{_fmt(spec.high)}")
    elif spec.low is not None:
        parts.append(f"≥ {_fmt(spec.low)}")
    elif spec.high is not None:
        parts.append(f"≤ {_fmt(spec.high)}")
    if spec.default is not None:
        parts.append(f"default {spec.default}")
    if spec.rule:
        parts.append(spec.rule)
    return "; ".join(parts)


def column_table(vocabulary: vocab.Vocabulary | None = None,
                 covariates: Mapping[str, Iterable[ColumnSpec]] | None = None) -> pd.DataFrame:
    """Every column of the three tables.

    Parameters
    ----------
    vocabulary : Vocabulary, optional
        Labels of category columns (a profile's); the built-ins when None.
    covariates : dict, optional
        table -> covariate specs (a profile's).

    Returns
    -------
    DataFrame
        Columns table, column, required ("yes"/"no"), type, rule; one row a column, in table
        order.

    Examples
    --------
    >>> from mfr_outcomes.schema_doc import column_table
    >>> t = column_table()
    >>> t[t["required"] == "yes"].groupby("table", sort=False)["column"].apply(list).to_dict()
    ... # doctest: +NORMALIZE_WHITESPACE
    {'patients': ['patient_id', 'condition'],
     'sessions': ['session_id', 'patient_id', 'therapist_id', 'session_date', 'technique'],
     'measurements': ['session_id', 'phase', 'measure', 'value']}
    """
    covariates = covariates or {}
    rows = []
    for table in vocab.TABLES:
        for spec in table_specs(table, vocabulary, covariates.get(table, ())):
            rows.append({"table": table, "column": spec.name,
                         "required": "yes" if spec.required else "no",
                         "type": _type(spec), "rule": _rule(spec)})
    return pd.DataFrame(rows, columns=["table", "column", "required", "type", "rule"])


def columns_markdown(vocabulary: vocab.Vocabulary | None = None,
                     covariates: Mapping[str, Iterable[ColumnSpec]] | None = None,
                     *, heading: str = "###") -> str:
    """:func:`column_table` as Markdown: one heading and table per table."""
    frame = column_table(vocabulary, covariates)
    lines: list[str] = []
    for table, rows in frame.groupby("table", sort=False):
        lines += [f"{heading} {table}", "", "| column | required | type | rule |",
                  "| --- | --- | --- | --- |"]
        for r in rows.itertuples(index=False):
            lines.append(f"| {r.column} | {r.required} | {r.type} | {r.rule} |")
        lines.append("")
    return "\n".join(lines)
