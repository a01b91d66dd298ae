"""``mfr-outcomes schema``: print every table's columns (required or not, type, rule).

Generated from the schemas the loader validates against; with ``--profile`` the profile's labels
and covariates are included.
"""
from __future__ import annotations

import argparse
import sys

from mfr_outcomes.cli.sources import PROFILE_HELP

__all__ = ["HELP", "add_arguments", "run"]

HELP = "print the columns of the patients, sessions and measurements tables (type, rule)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", metavar="FILE", default=None, help=PROFILE_HELP)
    parser.add_argument("--format", choices=("table", "markdown", "csv"), default="table",
                        help="a table for people (default), Markdown, or CSV")


def run(args: argparse.Namespace) -> int:
    from mfr_outcomes.cli import UserError
    from mfr_outcomes.profile import ProfileError, load_profile
    from mfr_outcomes.schema_doc import column_table, columns_markdown

    vocabulary = covariates = None
    if args.profile is not None:
        try:
            prof = load_profile(args.profile)
        except ProfileError as exc:
            raise UserError(str(exc)) from None
        vocabulary, covariates = prof.vocabulary, prof.covariate_specs()
    if args.format == "markdown":
        sys.stdout.write(columns_markdown(vocabulary, covariates))
        return 0
    frame = column_table(vocabulary, covariates)
    if args.format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=sys.stdout, width=max(100, Console().width), soft_wrap=False)
    for table, rows in frame.groupby("table", sort=False):
        t = Table(title=table, title_justify="left")
        for col in ("column", "required", "type", "rule"):
            t.add_column(col, overflow="fold")
        for r in rows.itertuples(index=False):
            t.add_row(*(escape(str(x)) for x in (r.column, r.required, r.type, r.rule)))
        console.print(t)
    return 0
