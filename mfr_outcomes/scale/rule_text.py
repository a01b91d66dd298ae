"""The sentences of the cross-row validation rules, written once for both validators.

``table_rules`` (in memory, vectorised) and ``scale.sql_validate`` (inside DuckDB) find the same
rows by different means; the sentence of each finding is made here from the values, so that the
two reports cannot drift apart. (The per-cell sentences of coercion and ranges are the schema's.)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["duplicate", "orphan", "cascade", "before_enrolment", "number_missing",
           "distant_date", "post_on_assessment", "post_without_pre"]


def duplicate(keys: Sequence[str], values: Sequence[Any], where: str) -> tuple[Any, str]:
    """(value, sentence) of a repeated key (one column) or reading (several); *where* names the
    first row ("row 12")."""
    if len(keys) == 1:
        return values[0], f"{keys[0]} = {values[0]} repeats {where}"
    label = ", ".join(f"{k} {v}" for k, v in zip(keys, values))
    return "/".join(map(str, values)), f"reading ({label}) repeats {where}"


def orphan(key: str, value: Any, parent: str) -> str:
    return f"{key} = {value} is not in {parent}"


def cascade(file: str, unit: str, lines: str, label: str, value: Any) -> str:
    """*unit* "row" or "rows", *lines* the row numbers as shown."""
    return f"{file} {unit} {lines}: excluded because {label} {value} was excluded"


def before_enrolment(raw: Any, enrolled: Any, patient: Any) -> str:
    return f"session_date = {raw} is before enrolled_on {enrolled:%Y-%m-%d} of patient {patient}"


def number_missing(patient: Any) -> str:
    return (f"session_number is empty while other visits of patient {patient} are numbered; "
            f"numbers of this patient are taken from date order")


def distant_date(raw: Any, patient: Any, near: Any) -> str:
    return (f"session_date = {raw} is more than a year from every other visit of patient "
            f"{patient} (nearest {near:%Y-%m-%d}): a mistyped year? session numbers follow date "
            f"order")


def post_on_assessment(measure: Any, session: Any) -> str:
    return (f"post reading of {measure} in session {session}, an assessment-only visit "
            f"(technique none)")


def post_without_pre(measure: Any, side: Any, session: Any) -> str:
    return f"post reading of {measure} (side {side}) in session {session} has no pre reading"
