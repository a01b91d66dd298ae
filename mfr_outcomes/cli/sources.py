"""The command line's one boundary with user input: load a source (with its profile and column
map) and turn every way it can fail into one sentence, with secrets masked.

Every command that reads clinic data calls :func:`load_source`; :func:`mask_secrets` is applied
to each sentence the command line prints about a source.
"""
from __future__ import annotations

import re
import warnings
from typing import Any

__all__ = ["load_source", "validate_source", "mask_secrets", "PROFILE_HELP"]

PROFILE_HELP = ("clinic profile (TOML): added vocabulary labels, measures, column and label maps, "
                "typed covariates, date parsing (see `mfr-outcomes profile init`)")

_PASSWORD = re.compile(r"://[^:/@\s]*:(?P<pw>[^@\s]+)@")


def mask_secrets(text: str, *sources: Any) -> str:
    """*text* with the password of every URL in it masked, and the passwords of the given
    sources wherever they appear (a driver may quote one on its own)."""
    from mfr_outcomes.io import mask_passwords

    out = mask_passwords(str(text))
    for source in sources:
        m = _PASSWORD.search(source) if isinstance(source, str) else None
        if m and len(m.group("pw")) >= 3:
            out = out.replace(m.group("pw"), "***")
    return out


def load_source(source: str, *, profile: str | None = None, column_map: str | None = None,
                dayfirst: bool = False, verb: Any = None, large: bool = False, **options: Any):
    """Load a study for a CLI command; anything unreadable becomes a :class:`UserError`.

    Findings are not errors: they are in ``study.report``. The data warnings of loading are
    silenced here because every command shows the report (or its summary) itself. *verb*
    replaces ``load_study`` (``validate_source`` passes ``mfr_outcomes.io.validate``). With
    *large*, a Parquet folder or DuckDB file of at least ``scale.sql_validate.SCALE_ROWS``
    readings (and no profile or column map) becomes a ``ScaleStudy`` kept in DuckDB (for
    ``mfr-outcomes fit``: validated and fitted without its rows in memory).
    """
    if large and profile is None and column_map is None and not options:
        study = _large_study(source, dayfirst)
        if study is not None:
            return study
    from mfr_outcomes.cli import UserError
    from mfr_outcomes.io import ColumnMapError, SourceError, load_study
    from mfr_outcomes.profile import ProfileError
    from mfr_outcomes.warnings_ import MfrWarning

    opts = {k: v for k, v in options.items() if v is not None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MfrWarning)
            if verb is not None:
                return verb(source, column_map=column_map, dayfirst=dayfirst, profile=profile,
                            **opts)
            return load_study(source, column_map=column_map, strict=False, dayfirst=dayfirst,
                              profile=profile, **opts)
    except (SourceError, ColumnMapError, ProfileError) as exc:
        raise UserError(mask_secrets(str(exc), source)) from None
    except (OSError, UnicodeError) as exc:
        raise UserError(mask_secrets(f"{source} cannot be read: {exc}", source)) from None


def validate_source(source: str, *, engine: str = "auto", **options: Any):
    """The validation report of a source for ``mfr-outcomes validate`` (inside DuckDB for a large
    Parquet folder or DuckDB file, see ``io.validate``); failures as for :func:`load_source`."""
    from functools import partial

    from mfr_outcomes.io import validate

    return load_source(source, verb=partial(validate, engine=engine), **options)


def _large_study(source: str, dayfirst: bool):
    """A ScaleStudy of a large Parquet folder or DuckDB file, or None for any other source."""
    from mfr_outcomes.cli import UserError
    from mfr_outcomes.scale.sql_validate import SCALE_ROWS, source_rows, sql_source

    try:
        src = sql_source(source)
        if src is None or source_rows(src) < SCALE_ROWS:
            return None
    except Exception:  # unreadable: load_study says why in its own sentence
        return None
    try:
        from mfr_outcomes.scale.study_scale import ScaleStudy

        return ScaleStudy.from_duckdb(src, dayfirst=dayfirst)
    except (OSError, ValueError, LookupError) as exc:
        raise UserError(mask_secrets(f"{source} cannot be read: {exc}", source)) from None
