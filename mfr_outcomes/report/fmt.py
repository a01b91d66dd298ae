"""How values are written in the report's HTML (CSV files keep full precision)."""
from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["HEADERS", "TABLE_HEADERS", "is_missing", "fmt_num", "fmt_p", "fmt_cell", "header",
           "has_header", "label", "sentence"]

#: The HTML header of every column a report table publishes. CSV files keep the column names
#: themselves (machine-friendly and stable; listed in docs/report.md).
HEADERS = {
    # counts of people, sessions, rows
    "patients": "Patients", "sessions": "Sessions", "readings": "Readings", "n": "Number",
    "pre_n": "Readings before", "post_n": "Readings after", "n_pre": "Readings before",
    "n_paired": "Paired readings", "finished_care": "Finished care",
    "responders": "Responders", "present": "With the condition", "observations": "Observations",
    "with_event": "Sessions with an event", "read": "Rows read", "used": "Rows used",
    "excluded": "Rows excluded", "findings": "Findings", "cautions": "Cautions",
    "blank": "Blank rows", "points": "Points",
    # summaries
    "percent": "%", "responder_percent": "Responders, %", "network_percent": "Network, %",
    "percent_typical": "Typical patient, %", "per_100": "Per 100 sessions",
    "rate_per_100": "Events per 100 sessions", "mean_pre": "Mean before",
    "pre_mean": "Mean before", "post_mean": "Mean after", "mean_change": "Mean change",
    "network_mean": "Network mean", "median": "Median", "median_minutes": "Median minutes",
    "iqr_low": "IQR, lower", "iqr_high": "IQR, upper", "summary": "Summary",
    # model results
    "estimate": "Estimate", "emmean": "Estimated mean", "std_error": "SE", "df": "df",
    "statistic": "Test statistic", "p_value": "p", "ci_low": "95% CI, lower",
    "ci_high": "95% CI, upper", "odds_ratio": "Odds ratio", "rate_ratio": "Rate ratio",
    "gee_odds_ratio": "GEE odds ratio", "gee_ci_low": "GEE 95% CI, lower",
    "gee_ci_high": "GEE 95% CI, upper", "npar": "Parameters", "aic": "AIC", "bic": "BIC",
    "loglik": "Log-likelihood", "chisq": "χ²", "model": "Model", "formula": "Formula",
    "engine": "Engine", "df_method": "df method", "converged": "Converged",
    "singular": "Singular fit",
    # funnel limits
    "lo95": "95% limit, lower", "hi95": "95% limit, upper", "lo998": "99.8% limit, lower",
    "hi998": "99.8% limit, upper", "position": "Position",
    # row labels
    "stage": "Stage", "characteristic": "Characteristic", "category": "Category",
    "measure": "Measure", "label": "Name", "technique": "Technique",
    "target_region": "Target region", "therapist": "Therapist", "unit": "Unit",
    "group": "Group", "split": "Grouped by", "arm": "Arm", "term": "Term", "event": "Event",
    "item": "Item", "month": "Month", "week": "Week", "chart": "Chart",
    "variation": "Variation", "assurance": "Assurance", "target": "Target", "grain": "Grain",
    "table": "Table", "file": "File", "line": "Line", "column": "Column", "rule": "Rule",
    "action": "Action", "finding": "Finding", "package": "Package", "version": "Version",
}

#: Headers that depend on the table: (table name, column) -> header.
TABLE_HEADERS = {
    ("prepost", "estimate"): "Change (post − pre)", ("prepost", "statistic"): "t",
    ("followup", "estimate"): "Estimated mean", ("readings", "measure"): "Code",
    ("baseline", "n"): "Number", ("findings_by_rule", "n"): "Findings",
}


def is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    try:
        return bool(isinstance(v, float | np.floating) and math.isnan(v))
    except TypeError:
        return False


def fmt_num(x: float, decimals: int = 2) -> str:
    if is_missing(x):
        return "–"
    if isinstance(x, int | np.integer):
        return str(int(x))
    return f"{float(x):.{decimals}f}".replace("-", "−")


def fmt_p(p: float) -> str:
    """A p-value for people ("<0.001" below it); CSV files keep the number itself."""
    if is_missing(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_cell(value: Any, column: str, decimals: dict[str, int]) -> str:
    if is_missing(value):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, pd.Timestamp | _dt.date):
        return f"{value:%Y-%m-%d}"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if column in ("p_value", "p"):
            return fmt_p(float(value))
        return fmt_num(float(value), decimals.get(column, 2))
    return str(value)


def header(column: str, table: str = "") -> str:
    """The HTML header of *column* of the report table named *table*.

    A funnel's or a model's "unit" is named after what it counts ("Therapist", "Site").

    >>> header("ci_low"), header("estimate", "prepost"), header("unit", "funnel_present_site")
    ('95% CI, lower', 'Change (post − pre)', 'Site')
    """
    if (table, column) in TABLE_HEADERS:
        return TABLE_HEADERS[(table, column)]
    if column == "unit":
        for noun in ("therapist", "site"):
            if table.endswith(f"_{noun}"):
                return noun.capitalize()
    return HEADERS.get(column, column.replace("_", " "))


def has_header(column: str, table: str = "") -> bool:
    """True when *column* has a header written for people (not the generic fallback)."""
    return (table, column) in TABLE_HEADERS or column in HEADERS


def label(value: Any) -> str:
    """A category code as people read it ("direct_pressure" -> "direct pressure")."""
    return str(value).replace("_", " ")


def sentence(exc: BaseException) -> str:
    """An exception as one sentence (at most 300 characters)."""
    if isinstance(exc, KeyError) and exc.args:  # KeyError quotes its message
        text = str(exc.args[0]).strip()
    else:
        text = str(exc).strip() or type(exc).__name__
    text = " ".join(text.split())
    if len(text) > 300:
        text = text[:297] + "…"
    return text if text.endswith((".", "!", "?")) else text + "."
