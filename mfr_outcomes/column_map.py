"""Column maps: rename a clinic's column names and category labels to the canonical ones.

A map is a dict, or a JSON or YAML file (safe loader, anchors and aliases refused, size limited):
a key that is a table name maps column names of that table, a key that is a column maps its
labels. A map renames; it never deletes data (an entry mapping to null or "" is an error).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mfr_outcomes.schema import TABLE_SPECS, TableInput, unique_names
from mfr_outcomes.vocab import TABLES

__all__ = [
    "ColumnMapError",
    "MAX_MAP_BYTES",
    "read_column_map",
    "apply_column_map",
    "apply_profile",
]

_CANONICAL_COLUMNS = {s.name for specs in TABLE_SPECS.values() for s in specs}


class ColumnMapError(ValueError):
    """A column map that cannot be used (bad file, unknown key, wrong shape)."""


#: A column map larger than this is refused (it is a short hand-written file).
MAX_MAP_BYTES = 1_000_000


def read_column_map(path: str | os.PathLike, *, columns: Iterable[str] = ()
                    ) -> dict[str, dict[str, str]]:
    """Read a column map from a JSON file, or a YAML file (safe loader, aliases refused).

    Raises
    ------
    ColumnMapError
        A missing, oversized, non-UTF-8 or malformed file, or a mapping of the wrong shape.
    """
    p = Path(path)
    if not p.is_file():
        raise ColumnMapError(f"column map {p} does not exist")
    size = p.stat().st_size
    if size > MAX_MAP_BYTES:
        raise ColumnMapError(f"column map {p.name} is {size:,} bytes; a column map is a short "
                             f"hand-written file (at most {MAX_MAP_BYTES:,} bytes)")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ColumnMapError(f"column map {p.name} is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                             f"at position {exc.start}); save it as UTF-8") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        data = _read_yaml(text, p.name)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ColumnMapError(f"column map {p.name} is not valid JSON: line {exc.lineno}: "
                                 f"{exc.msg}") from None
    return _check_map(data, p.name, columns)


def _read_yaml(text: str, name: str) -> Any:
    """YAML through the safe loader, with anchors and aliases refused (no alias bombs)."""
    try:
        import yaml
    except ImportError:
        raise ColumnMapError(f"column map {name} is YAML but PyYAML is not installed; "
                             f"write it as JSON") from None

    class _NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
                mark = self.peek_event().start_mark
                raise ColumnMapError(f"column map {name} line {mark.line + 1}: YAML anchors and "
                                     f"aliases (& and *) are not allowed in a column map; write "
                                     f"each entry out")
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ColumnMapError(f"column map {name} is not valid YAML: "
                             f"{' '.join(str(exc).split())}") from None


def _check_map(data: Any, where: str, columns: Iterable[str] = ()) -> dict[str, dict[str, str]]:
    label = f"column map {where}" if where else "column map"
    if not isinstance(data, Mapping):
        raise ColumnMapError(f"{label} must be a mapping of tables and columns")
    extra = set(columns)
    out: dict[str, dict[str, str]] = {}
    for key, sub in data.items():
        if key not in TABLES and key not in _CANONICAL_COLUMNS and key not in extra:
            raise ColumnMapError(
                f"{label}: key {key!r} is neither a table ({', '.join(TABLES)}) nor a "
                f"canonical column")
        if not isinstance(sub, Mapping):
            raise ColumnMapError(f"{label}: {key!r} must map names to names")
        for a, b in sub.items():
            if b is None or (isinstance(b, str) and not b.strip()) or isinstance(b, (dict, list)):
                what = "null" if b is None else repr(b)
                raise ColumnMapError(
                    f"{label}: {key}: {str(a)!r} maps to {what}; a column map renames, it never "
                    f"deletes data: map it to a {'column name' if key in TABLES else 'label'}")
        out[str(key)] = {str(a): str(b) for a, b in sub.items()}
    return out


def apply_column_map(inputs: dict[str, TableInput],
                     column_map: Mapping[str, Mapping[str, str]] | str | os.PathLike, *,
                     columns: Iterable[str] = ()) -> dict[str, TableInput]:
    """Rename columns (table keys) and category labels (column keys) of raw tables.

    Labels are matched as written, then ignoring case and surrounding spaces. *columns* names
    further columns (a profile's covariates) whose labels may be mapped.
    """
    columns = tuple(columns)
    if isinstance(column_map, (str, os.PathLike)):
        cmap = read_column_map(column_map, columns=columns)
    else:
        cmap = _check_map(column_map, "", columns)
    out = {}
    for table, inp in inputs.items():
        frame = inp.frame.copy()
        renames = cmap.get(table, {})
        if renames:
            stripped = {str(k).strip(): v for k, v in renames.items()}
            names = [stripped.get(str(c).strip(), c) for c in frame.columns]
            _no_merge(frame.columns, names, stripped, inp.file)
            frame.columns = unique_names(names)
        for col in frame.columns:
            labels = cmap.get(str(col))
            if not labels or str(col) in TABLES:
                continue
            exact = {str(k): v for k, v in labels.items()}
            folded = {str(k).strip().lower(): v for k, v in labels.items()}

            def relabel(v: Any, exact=exact, folded=folded) -> Any:
                if v is None or (isinstance(v, float) and v != v):
                    return v
                s = str(v)
                if s in exact:
                    return exact[s]
                return folded.get(s.strip().lower(), v)

            frame[col] = frame[col].astype(object).map(relabel)
        new = TableInput(inp.name, frame, inp.file, inp.unit, inp.lines, inp.decimal,
                         list(inp.problems), inp.blank_lines)
        out[table] = new
    return out


def _no_merge(before: Iterable[Any], after: list[Any], renames: Mapping[str, Any],
              file: str) -> None:
    """A map renames; two columns renamed to one name (or one renamed onto a column the table
    already has) would leave one of them unused: an error naming both."""
    seen: dict[str, str] = {}
    for old, new in zip(before, after):
        key = str(new).strip()
        if key in seen and (str(old).strip() in renames or seen[key] in renames):
            raise ColumnMapError(
                f"column map: columns {seen[key]} and {str(old).strip()} of {file} would both "
                f"become {key}; a map renames columns, it never merges them (map one of them "
                f"to another name, or leave it out)")
        seen.setdefault(key, str(old).strip())


def apply_profile(inputs: dict[str, TableInput], profile: Any) -> dict[str, TableInput]:
    """Rename the columns and labels of raw tables as a parsed profile says (None: unchanged)."""
    if profile is None or not (profile.columns or profile.labels):
        return inputs
    return apply_column_map(inputs, profile.column_map(), columns=profile.covariate_names())
