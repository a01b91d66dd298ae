"""The clinic profile: one TOML file that says how a clinic's exports map onto the three tables.

A profile adds labels to the built-in vocabularies (techniques, conditions, regions, adverse
events, arms), registers the clinic's own measures, renames its columns and category labels,
declares typed covariate columns that flow into ``study.frame()``, and sets date parsing. It is
parsed with :mod:`tomllib` and checked key by key: a mistake is a :class:`ProfileError` whose
sentence names the file, the key and the value. Nothing global changes when a profile is read;
``load_study(source, profile=...)`` passes its :class:`~mfr_outcomes.vocab.Vocabulary` down to
validation and registers its measures (see :meth:`Profile.register_measures`).
"""
from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfr_outcomes import vocab
from mfr_outcomes.measures import MEASURES, Measure, is_builtin, register_measure
from mfr_outcomes.schema import COVARIATE_KINDS, TABLE_SPECS, ColumnSpec, covariate_spec

__all__ = [
    "Profile",
    "ProfileError",
    "load_profile",
    "parse_profile",
    "profile_template",
    "SECTIONS",
    "MAX_PROFILE_BYTES",
]

#: Top-level sections a profile may have.
SECTIONS = ("vocabulary", "measure", "columns", "labels", "covariates", "dates")
#: A profile larger than this is refused (it is a short hand-written file).
MAX_PROFILE_BYTES = 1_000_000

_LABEL = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_MEASURE_FIELDS = ("code", "label", "unit", "low", "high", "integer", "better", "mcid_points",
                   "mcid_percent", "mdc", "source", "binary", "notes")
_MEASURE_REQUIRED = ("code", "label", "unit", "low", "high")
_COVARIATE_TABLES = ("patients", "sessions")
_COVARIATE_KEYS = ("type", "required", "low", "high", "categories")
# category columns whose labels a [labels.<column>] table may rename (besides covariates)
_LABELLED = {"sex": vocab.SEX, "affected_side": vocab.AFFECTED_SIDE, "phase": vocab.PHASE,
             "side": vocab.SIDE}


class ProfileError(ValueError):
    """A clinic profile that cannot be used; the sentence names the file, key and value."""


def _show(value: Any) -> str:
    """A value as TOML would write it (strings in double quotes), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Profile:
    """A parsed clinic profile.

    Attributes
    ----------
    vocabulary : Vocabulary
        The built-in vocabularies plus the profile's ``[vocabulary]`` labels.
    measures : tuple of Measure
        The profile's ``[[measure]]`` entries.
    columns : dict
        table -> {clinic column name: canonical or covariate name} (``[columns.<table>]``).
    labels : dict
        column -> {clinic label: canonical label} (``[labels.<column>]``).
    covariates : dict
        table -> tuple of covariate :class:`~mfr_outcomes.schema.ColumnSpec`
        (``[covariates.<table>]``).
    dayfirst : bool
        Read non-ISO dates as day/month/year (``[dates] dayfirst``).
    path : str
        Where the profile came from (used in messages).
    """

    vocabulary: vocab.Vocabulary = vocab.DEFAULT_VOCABULARY
    measures: tuple[Measure, ...] = ()
    columns: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    covariates: Mapping[str, tuple[ColumnSpec, ...]] = field(default_factory=dict)
    dayfirst: bool = False
    path: str = "<profile>"

    def column_map(self) -> dict[str, dict[str, str]]:
        """Columns and labels as one column map (the form ``apply_column_map`` takes)."""
        out: dict[str, dict[str, str]] = {t: dict(m) for t, m in self.columns.items()}
        out.update({c: dict(m) for c, m in self.labels.items()})
        return out

    def covariate_specs(self) -> dict[str, tuple[ColumnSpec, ...]]:
        """table -> covariate specs, for :func:`~mfr_outcomes.schema.validate_tables`."""
        return {t: tuple(specs) for t, specs in self.covariates.items()}

    def covariate_names(self) -> tuple[str, ...]:
        """Names of every declared covariate (patients first, then sessions)."""
        return tuple(s.name for t in _COVARIATE_TABLES for s in self.covariates.get(t, ()))

    def measure_registry(self) -> dict[str, Measure]:
        """The measures known to a load with this profile: the registry plus the profile's."""
        out = dict(MEASURES)
        out.update({m.code: m for m in self.measures})
        return out

    def register_measures(self) -> None:
        """Register the profile's measures so that fits, effects and reports find them.

        Registering the same measure again does nothing; a code registered with other fields
        (by another profile or :func:`~mfr_outcomes.measures.register_measure`) is an error.
        """
        for m in self.measures:
            known = MEASURES.get(m.code)
            if known is None:
                register_measure(m)
            elif known != m:
                raise ProfileError(
                    f"{self.path}: [[measure]] code = {_show(m.code)} is already registered "
                    f"with other fields (by another profile or register_measure); call "
                    f"mfr_outcomes.measures.unregister_measure({m.code!r}) first or choose "
                    f"another code")


# ----------------------------------------------------------------------------- reading

def load_profile(profile: Profile | Mapping[str, Any] | str | os.PathLike) -> Profile:
    """Read and check a clinic profile.

    Parameters
    ----------
    profile : path, dict or Profile
        A TOML file, the dict :func:`tomllib.loads` would give, or a parsed profile (returned
        as is).

    Returns
    -------
    Profile

    Raises
    ------
    ProfileError
        With a sentence naming the file, the key and the value at fault.

    Examples
    --------
    >>> from mfr_outcomes.profile import load_profile
    >>> p = load_profile({"vocabulary": {"arm": ["active", "placebo"]},
    ...                   "covariates": {"patients": {"bmi": "float"}}})
    >>> p.vocabulary.arm, p.covariate_names()
    (('active', 'placebo'), ('bmi',))
    >>> load_profile({"vocabulary": {"arm": ["Active"]}})
    Traceback (most recent call last):
    ...
    mfr_outcomes.profile.ProfileError: <profile>: [vocabulary] arm = "Active": a label must be lowercase letters, digits and underscores (write "active")
    """
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, Mapping):
        return parse_profile(profile, "<profile>")
    if not isinstance(profile, (str, os.PathLike)):
        raise ProfileError(f"a profile must be a TOML file path, got {type(profile).__name__}")
    path = Path(profile)
    name = path.name
    if not path.is_file():
        raise ProfileError(f"profile {path} does not exist")
    size = path.stat().st_size
    if size > MAX_PROFILE_BYTES:
        raise ProfileError(f"profile {name} is {size:,} bytes; a profile is a short hand-written "
                           f"file (at most {MAX_PROFILE_BYTES:,} bytes)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"profile {name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                           f"position {exc.start}); save it as UTF-8") from None
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {name} is not valid TOML: {exc}") from None
    return parse_profile(parsed, name)


def parse_profile(data: Mapping[str, Any], where: str = "<profile>") -> Profile:
    """Check the dict of a parsed TOML profile and build a :class:`Profile` (see
    :func:`load_profile`)."""
    for key in data:
        if key not in SECTIONS:
            raise ProfileError(f"{where}: unknown section [{key}]; a profile has "
                               f"{', '.join(f'[{s}]' for s in SECTIONS)}")
    vocabulary = _vocabulary(_table(data, "vocabulary", where), where)
    measures = _measures(data.get("measure", []), where)
    covariates = _covariates(_table(data, "covariates", where), where)
    registry = dict(MEASURES) | {m.code: m for m in measures}
    columns = _columns(_table(data, "columns", where), covariates, where)
    labels = _labels(_table(data, "labels", where), vocabulary, covariates, registry, where)
    dates = _table(data, "dates", where)
    for key in dates:
        if key != "dayfirst":
            raise ProfileError(f"{where}: unknown key [dates] {key}; [dates] has dayfirst only")
    dayfirst = dates.get("dayfirst", False)
    if not isinstance(dayfirst, bool):
        raise ProfileError(f"{where}: [dates] dayfirst = {_show(dayfirst)}: write true or false")
    return Profile(vocabulary, measures, columns, labels, covariates, dayfirst, where)


def _table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ProfileError(f"{where}: {key} = {_show(value)}: [{key}] must be a table")
    return value


def _vocabulary(section: Mapping[str, Any], where: str) -> vocab.Vocabulary:
    added = {}
    for column, labels in section.items():
        if column not in vocab.EXTENSIBLE:
            raise ProfileError(f"{where}: [vocabulary] {column}: not a vocabulary a profile can "
                               f"extend ({', '.join(vocab.EXTENSIBLE)})")
        if not isinstance(labels, list) or not labels:
            raise ProfileError(f"{where}: [vocabulary] {column} = {_show(labels)}: write a list "
                               f"of labels, e.g. {column} = [\"label_one\", \"label_two\"]")
        for label in labels:
            _check_label(label, f"[vocabulary] {column}", where)
        added[column] = labels
    return vocab.DEFAULT_VOCABULARY.extend(**added)


def _check_label(label: Any, key: str, where: str) -> None:
    if not isinstance(label, str):
        raise ProfileError(f"{where}: {key} = {_show(label)}: a label must be text")
    if not _LABEL.match(label):
        suggestion = re.sub(r"[\s\-]+", "_", label.strip().lower())
        hint = f" (write {_show(suggestion)})" if _LABEL.match(suggestion) else ""
        raise ProfileError(f"{where}: {key} = {_show(label)}: a label must be lowercase letters, "
                           f"digits and underscores{hint}")


def _measures(entries: Any, where: str) -> tuple[Measure, ...]:
    if isinstance(entries, Mapping):
        raise ProfileError(f"{where}: [measure] must be written [[measure]] (one table a "
                           f"measure)")
    if not isinstance(entries, list):
        raise ProfileError(f"{where}: measure = {_show(entries)}: write one [[measure]] table "
                           f"a measure")
    out: list[Measure] = []
    for n, entry in enumerate(entries, start=1):
        code = entry.get("code") if isinstance(entry, Mapping) else None
        key = f"[[measure]] {n}" + (f" (code {_show(code)})" if code is not None else "")
        if not isinstance(entry, Mapping):
            raise ProfileError(f"{where}: {key} must be a table of measure fields")
        for name in entry:
            if name not in _MEASURE_FIELDS:
                raise ProfileError(f"{where}: {key}: unknown field {name} = "
                                   f"{_show(entry[name])}; fields are "
                                   f"{', '.join(_MEASURE_FIELDS)}")
        for name in _MEASURE_REQUIRED:
            if name not in entry:
                raise ProfileError(f"{where}: {key}: field {name} is missing (a measure needs "
                                   f"{', '.join(_MEASURE_REQUIRED)})")
        _measure_types(entry, key, where)
        if is_builtin(entry["code"]):
            raise ProfileError(f"{where}: {key}: code = {_show(entry['code'])} is a built-in "
                               f"measure; a profile adds measures under codes of its own")
        if any(m.code == entry["code"] for m in out):
            raise ProfileError(f"{where}: {key}: code = {_show(entry['code'])} is given twice")
        try:
            out.append(Measure(**entry))
        except ValueError as exc:
            raise ProfileError(f"{where}: {key}: {exc}") from None
    return tuple(out)


def _measure_types(entry: Mapping[str, Any], key: str, where: str) -> None:
    for name, value in entry.items():
        if name in ("code", "label", "unit", "source", "notes", "better"):
            ok = isinstance(value, str)
            want = "text in double quotes"
        elif name in ("integer", "binary"):
            ok = isinstance(value, bool)
            want = "true or false"
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            want = "a number"
        if not ok:
            raise ProfileError(f"{where}: {key}: {name} = {_show(value)}: write {want}")
    if not _NAME.match(entry["code"]):
        raise ProfileError(f"{where}: {key}: code = {_show(entry['code'])}: a measure code must "
                           f"be lowercase letters, digits and underscores, starting with a letter")
    if entry.get("better", "lower") not in ("lower", "higher"):
        raise ProfileError(f"{where}: {key}: better = {_show(entry['better'])}: write \"lower\" "
                           f"or \"higher\"")


def _covariates(section: Mapping[str, Any], where: str) -> dict[str, tuple[ColumnSpec, ...]]:
    out: dict[str, tuple[ColumnSpec, ...]] = {}
    seen: set[str] = set()
    builtin = {s.name for specs in TABLE_SPECS.values() for s in specs}
    for table, columns in section.items():
        if table not in _COVARIATE_TABLES:
            raise ProfileError(f"{where}: [covariates.{table}]: covariates belong to "
                               f"{' or '.join(_COVARIATE_TABLES)}")
        if not isinstance(columns, Mapping):
            raise ProfileError(f"{where}: [covariates] {table} = {_show(columns)}: write a "
                               f"table [covariates.{table}] of name = \"type\"")
        specs = []
        for name, decl in columns.items():
            key = f"[covariates.{table}] {name}"
            if not _NAME.match(name):
                raise ProfileError(f"{where}: {key}: a covariate name must be lowercase letters, "
                                   f"digits and underscores, starting with a letter (map the "
                                   f"clinic's column to it in [columns.{table}])")
            if name in builtin:
                raise ProfileError(f"{where}: {key}: {name} is a built-in column, not a "
                                   f"covariate")
            if name in seen:
                raise ProfileError(f"{where}: {key}: declared in both tables")
            seen.add(name)
            specs.append(_covariate(name, decl, key, where))
        out[table] = tuple(specs)
    return out


def _covariate(name: str, decl: Any, key: str, where: str) -> ColumnSpec:
    kinds = ", ".join(f'"{k}"' for k in COVARIATE_KINDS)
    if isinstance(decl, str):
        decl = {"type": decl}
    if not isinstance(decl, Mapping):
        raise ProfileError(f"{where}: {key} = {_show(decl)}: write a type ({kinds}) or a table "
                           f"{{ type = \"float\", required = true, low = 0, high = 100 }}")
    for k in decl:
        if k not in _COVARIATE_KEYS:
            raise ProfileError(f"{where}: {key}: unknown key {k} = {_show(decl[k])}; keys are "
                               f"{', '.join(_COVARIATE_KEYS)}")
    kind = decl.get("type")
    if kind not in COVARIATE_KINDS:
        raise ProfileError(f"{where}: {key} type = {_show(kind)}: write one of {kinds}")
    required = decl.get("required", False)
    if not isinstance(required, bool):
        raise ProfileError(f"{where}: {key} required = {_show(required)}: write true or false")
    bounds = {}
    for b in ("low", "high"):
        if b in decl:
            v = decl[b]
            if kind not in ("float", "int") or not isinstance(v, (int, float)) \
                    or isinstance(v, bool):
                raise ProfileError(f"{where}: {key} {b} = {_show(v)}: a bound is a number, and "
                                   f"only float and int covariates have bounds")
            bounds[b] = float(v)
    if "low" in bounds and "high" in bounds and bounds["low"] > bounds["high"]:
        raise ProfileError(f"{where}: {key}: low = {_show(decl['low'])} is above high = "
                           f"{_show(decl['high'])}")
    categories = decl.get("categories")
    if categories is not None:
        if kind != "category" or not isinstance(categories, list) or not categories:
            raise ProfileError(f"{where}: {key} categories = {_show(categories)}: only a "
                               f"category covariate has categories, written as a list")
        for label in categories:
            _check_label(label, f"{key} categories", where)
    return covariate_spec(name, kind, required=required, categories=categories, **bounds)


def _columns(section: Mapping[str, Any], covariates: Mapping[str, tuple[ColumnSpec, ...]],
             where: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for table, renames in section.items():
        if table not in TABLE_SPECS:
            raise ProfileError(f"{where}: [columns.{table}]: not a table ({', '.join(TABLE_SPECS)})")
        if not isinstance(renames, Mapping):
            raise ProfileError(f"{where}: [columns] {table} = {_show(renames)}: write a table "
                               f"[columns.{table}] of \"clinic name\" = \"canonical name\"")
        targets = [s.name for s in TABLE_SPECS[table]] + \
            [s.name for s in covariates.get(table, ())]
        for source, target in renames.items():
            key = f"[columns.{table}] {_show(source)}"
            if not isinstance(target, str) or not target:
                raise ProfileError(f"{where}: {key} = {_show(target)}: a column is renamed to "
                                   f"a name, never removed (write one of {', '.join(targets)})")
            if target not in targets:
                raise ProfileError(f"{where}: {key} = {_show(target)}: not a column of the "
                                   f"{table} table nor a declared covariate (columns: "
                                   f"{', '.join(targets)})")
        out[table] = dict(renames)
    return out


def _labels(section: Mapping[str, Any], vocabulary: vocab.Vocabulary,
            covariates: Mapping[str, tuple[ColumnSpec, ...]], registry: Mapping[str, Measure],
            where: str) -> dict[str, dict[str, str]]:
    allowed: dict[str, tuple[str, ...] | None] = {c: vocabulary.categories(c) or None
                                                  for c in vocab.EXTENSIBLE}
    allowed.update(_LABELLED)
    allowed["measure"] = tuple(registry)
    for specs in covariates.values():
        for s in specs:
            if s.kind == "category":
                allowed[s.name] = s.categories
    out: dict[str, dict[str, str]] = {}
    for column, mapping in section.items():
        if column not in allowed:
            raise ProfileError(f"{where}: [labels.{column}]: {column} is not a category column "
                               f"(labels can be given for {', '.join(allowed)})")
        if not isinstance(mapping, Mapping):
            raise ProfileError(f"{where}: [labels] {column} = {_show(mapping)}: write a table "
                               f"[labels.{column}] of \"clinic label\" = \"label\"")
        known = allowed[column]
        for source, target in mapping.items():
            key = f"[labels.{column}] {_show(source)}"
            if not isinstance(target, str) or not target:
                raise ProfileError(f"{where}: {key} = {_show(target)}: a label is renamed to a "
                                   f"label, never removed")
            if known is not None and target not in known:
                raise ProfileError(f"{where}: {key} = {_show(target)}: not a {column} label "
                                   f"({', '.join(known)}); add it under [vocabulary] first"
                                   if column in vocab.EXTENSIBLE else
                                   f"{where}: {key} = {_show(target)}: not a {column} label "
                                   f"({', '.join(known)})")
        out[column] = dict(mapping)
    return out


# ----------------------------------------------------------------------------- template

_TEMPLATE = '''\
# Clinic profile for mfr-outcomes: keep it beside your exports and pass it to every command
# (mfr-outcomes validate EXPORT --profile clinic.toml) or to load_study(source, profile=...).
# Every section is optional; uncomment what your clinic needs. `mfr-outcomes schema` lists the
# columns of the three tables.

# [vocabulary]            # labels added to the built-in vocabularies (lowercase, underscores)
# technique = ["dry_needling", "exercise", "sham"]
# condition = ["low_back_pain", "cervical_dystonia"]
# target_region = ["neck"]
# adverse_event = ["dizziness"]
# arm = ["active", "placebo"]          # the first arm is the reference level of models

# [[measure]]             # a measure of your own (one [[measure]] table each)
# code = "twstrs"                      # as written in the measure column
# label = "TWSTRS total"
# unit = "points"
# low = 0                              # valid range, inclusive
# high = 87
# integer = true                       # readings are whole numbers
# better = "lower"                     # "lower" or "higher"
# mcid_points = 9.0                    # minimal clinically important difference (optional)
# source = "where the MCID comes from"

# [columns.patients]      # your column name = the package's name
# "Patient no." = "patient_id"
# "Group" = "arm"
# "BMI (kg/m2)" = "bmi"
# [columns.sessions]
# "Therapist" = "therapist_id"
# "Visit date" = "session_date"

# [labels.technique]      # your label = the package's label
# "DP" = "direct_pressure"
# "Dry needling" = "dry_needling"
# [labels.measure]
# "TWSTRS" = "twstrs"

# [covariates.patients]   # extra columns carried into study.frame(), typed:
# bmi = "float"                        # "float", "int", "category", "bool" or "date"
# smoker = "bool"
# [covariates.sessions]
# dose_units = { type = "float", required = false, low = 0, high = 1000 }

# [dates]
# dayfirst = true                      # dates written day/month/year (31/12/2024)
'''


def profile_template() -> str:
    """The commented template ``mfr-outcomes profile init`` writes (every line commented out)."""
    return _TEMPLATE
