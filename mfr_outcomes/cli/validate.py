"""``mfr-outcomes validate SOURCE``: check a clinic export and list every finding.

Exit status 0 when no row was excluded (cautions are printed), 1 when rows were excluded (or, with
``--fail-on caution``, when anything was found), 2 when the source cannot be read.
"""
from __future__ import annotations

import argparse
import sys

from mfr_outcomes.cli.sources import PROFILE_HELP, validate_source

__all__ = ["HELP", "add_arguments", "run", "exit_status"]

HELP = "check a clinic export (folder, workbook, database, URL) and list every problem found"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="folder of patients/sessions/measurements files (CSV, Parquet, "
                             "XLSX), an XLSX workbook, a SQLite or DuckDB file, or an SQLAlchemy "
                             "URL")
    parser.add_argument("--profile", metavar="FILE", default=None, help=PROFILE_HELP)
    parser.add_argument("--column-map", metavar="FILE", default=None,
                        help="JSON (or YAML) file renaming the clinic's columns and labels")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="output: a table for people (default), JSON or CSV of the findings")
    parser.add_argument("--dayfirst", action="store_true",
                        help="read dates written as day/month/year")
    parser.add_argument("--encoding", default=None,
                        help="text encoding of CSV files (default: UTF-8, else Latin-1)")
    parser.add_argument("--sep", default=None, help="CSV field separator (default: sniffed)")
    parser.add_argument("--decimal", default=None,
                        help="decimal mark of CSV numbers (default: ',' with ';' separators)")
    parser.add_argument("--engine", choices=("auto", "memory", "duckdb"), default="auto",
                        help="where the rules run: duckdb validates a Parquet folder or DuckDB "
                             "file inside DuckDB (larger than memory; at most 1000 findings a "
                             "rule listed); auto (default) does so from 5 million readings on")
    parser.add_argument("--fail-on", choices=("exclusion", "caution"), default="exclusion",
                        help="exit status 1 when a row was excluded (default), or also when a "
                             "caution was found (caution)")
    parser.add_argument("--strict", action="store_true",
                        help="same as --fail-on caution, with a one-line message on stderr")


def exit_status(report, fail_on: str = "exclusion") -> int:
    """0 when no row was excluded (and, with ``fail_on="caution"``, nothing found), else 1."""
    if report.n_excluded:
        return 1
    if fail_on == "caution" and not report.ok:
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    from mfr_outcomes.study import DataValidationError

    options = {k: getattr(args, k) for k in ("encoding", "sep", "decimal")
               if getattr(args, k, None) is not None}
    report = validate_source(args.source, profile=args.profile, column_map=args.column_map,
                             dayfirst=args.dayfirst, engine=args.engine, **options)
    if args.format == "json":
        sys.stdout.write(report.to_json() + "\n")
    elif args.format == "csv":
        sys.stdout.write(report.to_csv())
    else:
        _print_table(report)
    fail_on = "caution" if args.strict else args.fail_on
    if args.strict and not report.ok:
        print(f"mfr-outcomes validate: {DataValidationError(report)}", file=sys.stderr)
    return exit_status(report, fail_on)


def _print_table(report) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=sys.stdout, width=max(100, Console().width), soft_wrap=False)
    accounting = Table(title=escape(f"Rows of {report.source}"), title_justify="left")
    for col in ("table", "read", "used", "excluded", "reasons"):
        accounting.add_column(col, justify="right" if col in ("read", "used", "excluded")
                              else "left")
    for table, acc in report.accounting.items():
        reasons = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in acc.reasons.items())
        accounting.add_row(table, str(acc.read), str(acc.used), str(acc.excluded), reasons)
    console.print(accounting)
    if report.ok:
        console.print("No findings: every row is used.")
        return
    findings = Table(title=f"{len(report.findings)} finding(s)", title_justify="left",
                     show_lines=False)
    findings.add_column("#", justify="right")
    findings.add_column("rule", no_wrap=True)
    findings.add_column("finding", overflow="fold")
    for n, f in enumerate(report.findings, start=1):
        findings.add_row(str(n), f.rule, escape(f.message))  # cell values are not markup
    console.print(findings)
    kept = sum(f.action == "kept" for f in report.findings)
    console.print(f"{report.n_excluded} row(s) excluded, {kept} caution(s) (rows kept).")
