"""How values are written in the report's HTML (CSV files keep full precision)."""
from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["is_missing", "fmt_num", "fmt_p", "fmt_cell", "header", "label", "sentence"]

_HEADERS = {
    "ci_low": "95% CI low", "ci_high": "95% CI high", "std_error": "SE", "df": "df",
    "p_value": "p", "statistic": "t", "n": "n", "percent": "%", "per_100": "per 100 sessions",
    "iqr_low": "IQR low", "iqr_high": "IQR high", "pre_n": "pre n", "post_n": "post n",
    "pre_mean": "pre mean", "post_mean": "post mean", "median_minutes": "median minutes",
    "with_event": "sessions with an event", "n_paired": "paired n", "finished_care":
    "finished care", "responder_percent": "responders %", "mean_change": "mean change",
    "not_eligible": "not classed", "lo95": "95% low", "hi95": "95% high",
    "lo998": "99.8% low", "hi998": "99.8% high",
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


def header(column: str) -> str:
    return _HEADERS.get(column, column.replace("_", " "))


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
