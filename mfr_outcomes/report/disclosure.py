"""Disclosure control for the QI report: small-cell suppression, identifier redaction, safe CSV.

Kept apart from the builder so that each rule can be tested on a small frame.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "suppressed_label",
    "suppress_counts",
    "neutralise_csv_cell",
    "neutralise_frame",
    "Redactor",
]

#: Text cells starting with one of these are read as formulas by spreadsheet programs.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def suppressed_label(min_cell: int) -> str:
    """The text shown instead of a small count ("<5" for ``min_cell=5``)."""
    return f"<{min_cell}"


def _is_count(value: object) -> bool:
    if value is None or value is pd.NA:
        return False
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, int | np.integer):
        return True
    if isinstance(value, float | np.floating):
        return math.isfinite(value) and float(value).is_integer()
    return False


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def suppress_counts(frame: pd.DataFrame, count_columns: Sequence[str], min_cell: int, *,
                    linked: Mapping[str, Sequence[str]] | None = None,
                    partition: str | None | bool = False) -> pd.DataFrame:
    """Replace every count below *min_cell* by ``"<min_cell>"``.

    Parameters
    ----------
    frame : DataFrame
        A table whose *count_columns* hold counts (whole numbers).
    count_columns : sequence of str
        Columns holding counts of people, sessions or events. Every cell below *min_cell*
        (zero included) becomes the text ``"<min_cell>"``; whole-number floats become ints.
    min_cell : int
        Smallest count shown.
    linked : mapping, optional
        Derived column -> the count columns it was computed from (a percentage, a rate, a mean
        of few people). The derived cell is replaced by ``"<min_cell>"`` as well when any of its
        counts was suppressed, so that it cannot be used to recover them.
    partition : str, None or False
        Secondary suppression. When the rows of the table (``None``) or the rows of each group of
        this column (a name) add up to a total shown elsewhere, a single suppressed count could be
        recovered by subtraction; the next-smallest count of the group is then suppressed too
        (not when the lone suppressed count is zero: subtraction would only reveal a zero).
        ``False`` (default) skips this step.

    Returns
    -------
    DataFrame
        A copy with object dtype in the affected columns; counts at or above *min_cell* keep
        their numeric value.
    """
    out = frame.copy()
    label = suppressed_label(min_cell)
    linked = dict(linked or {})
    hidden = pd.DataFrame(False, index=out.index, columns=list(count_columns))
    for col in count_columns:
        if col not in out.columns:
            continue
        values = out[col]
        mask = values.map(lambda v: _is_count(v) and float(v) < min_cell).astype(bool)
        hidden[col] = mask
    if partition is not False:
        groups = [out.index] if partition is None else [
            idx for _, idx in out.groupby(partition, sort=False, observed=True).groups.items()]
        for col in count_columns:
            if col not in out.columns:
                continue
            for idx in groups:
                sub_hidden = hidden.loc[idx, col]
                if int(sub_hidden.sum()) != 1:
                    continue
                lone = sub_hidden[sub_hidden].index[0]
                if float(out.at[lone, col]) == 0:  # total minus the rest reveals only a zero
                    continue
                shown = [i for i in idx if not hidden.at[i, col] and _is_count(out.at[i, col])]
                if shown:
                    smallest = min(shown, key=lambda i: float(out.at[i, col]))
                    hidden.at[smallest, col] = True
    for col in count_columns:
        if col not in out.columns:
            continue
        if hidden[col].any() or not pd.api.types.is_integer_dtype(out[col]):
            # counts stay whole numbers (a column with gaps would otherwise show 86.00)
            out[col] = pd.Series(
                [int(v) if _is_count(v) else (None if _missing(v) else v) for v in out[col]],
                index=out.index, dtype=object)
            out.loc[hidden[col], col] = label
    for derived, sources in linked.items():
        if derived not in out.columns:
            continue
        sources = [s for s in sources if s in hidden.columns]
        if not sources:
            continue
        filled = out[derived].map(lambda v: not (_missing(v) or v == "")).astype(bool)
        mask = hidden[sources].any(axis=1) & filled  # an empty cell has nothing to hide
        if mask.any():
            out[derived] = pd.Series(list(out[derived]), index=out.index, dtype=object)
            out.loc[mask, derived] = label
    return out


def neutralise_csv_cell(value: object) -> object:
    """Prefix a text cell that a spreadsheet would run as a formula with ``'``.

    Only text is changed: numbers (negative ones included) stay numbers.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def neutralise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Apply :func:`neutralise_csv_cell` to every text cell and column name of *frame*."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or isinstance(out[col].dtype, pd.StringDtype | pd.CategoricalDtype):
            out[col] = out[col].astype(object).map(neutralise_csv_cell)
    out.columns = [neutralise_csv_cell(str(c)) for c in out.columns]
    return out


_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


class Redactor:
    """Remove identifiers (patient and session codes) from text.

    Identifiers made of letters, digits, ``_`` and ``-`` are replaced where they stand as a
    whole token; others (with spaces or punctuation) are replaced wherever they occur. Purely
    numeric codes shorter than four digits cannot be told apart from other numbers in a sentence,
    so they are only caught where the caller knows a value is an identifier (:meth:`value`).

    Parameters
    ----------
    identifiers : iterable of str
        The codes to hide.
    replacement : str
        What is shown instead.
    """

    def __init__(self, identifiers: Iterable[object], replacement: str = "[id]") -> None:
        self.replacement = replacement
        ids = {str(i).strip() for i in identifiers if i is not None and str(i).strip()
               and str(i).strip().lower() not in {"nan", "none", "<na>"}}
        self._ids = ids
        self._tokens = {i for i in ids if _TOKEN.fullmatch(i)
                        and not (i.isdigit() and len(i) < 4)}
        others = sorted((i for i in ids if not _TOKEN.fullmatch(i)), key=len, reverse=True)
        self._others = re.compile("|".join(re.escape(o) for o in others)) if others else None

    def __contains__(self, value: object) -> bool:
        return str(value).strip() in self._ids

    def text(self, text: str) -> str:
        """*text* with every identifier replaced."""
        if not isinstance(text, str) or not text:
            return text
        if self._others is not None:
            text = self._others.sub(self.replacement, text)
        if self._tokens:
            text = _TOKEN.sub(lambda m: self.replacement if m.group(0) in self._tokens
                              else m.group(0), text)
        return text

    def value(self, value: object) -> object:
        """*value* itself unless it is an identifier; text is passed through :meth:`text`."""
        if isinstance(value, str):
            return self.replacement if value.strip() in self._ids else self.text(value)
        return value

    def frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Every text cell of *frame* passed through :meth:`value`."""
        out = frame.copy()
        for col in out.columns:
            if out[col].dtype == object or isinstance(out[col].dtype, pd.StringDtype | pd.CategoricalDtype):
                out[col] = out[col].astype(object).map(self.value)
        return out
