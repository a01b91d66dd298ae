"""``mfr-outcomes validate SOURCE``: check a clinic export and list every finding.

Exit status 0 when clean, 1 when anything was found, 2 when the source cannot be read.
"""
from __future__ import annotations

import argparse
import sys
import warnings

__all__ = ["HELP", "add_arguments", "run"]

HELP = "check a clinic export (folder, workbook, database, URL) and list every problem found"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="folder of patients/sessions/measurements files (CSV, Parquet, "
                             "XLSX), an XLSX workbook, a SQLite or DuckDB file, or an SQLAlchemy "
                             "URL")
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
    parser.add_argument("--strict", action="store_true",
                        help="treat any finding as an error (exit status 1 and a one-line "
                             "message on stderr)")


def run(args: argparse.Namespace) -> int:
    from mfr_outcomes.cli import UserError
    from mfr_outcomes.io import ColumnMapError, SourceError, load_study
    from mfr_outcomes.study import DataValidationError

    options = {k: getattr(args, k) for k in ("encoding", "sep", "decimal")
               if getattr(args, k, None) is not None}
    from mfr_outcomes.warnings_ import DataWarning

    try:
        with warnings.catch_warnings():  # the findings are printed in full below
            warnings.simplefilter("ignore", DataWarning)
            study = load_study(args.source, column_map=args.column_map, strict=False,
                               dayfirst=args.dayfirst, **options)
    except (SourceError, ColumnMapError) as exc:
        raise UserError(str(exc)) from None
    except (OSError, UnicodeError) as exc:
        raise UserError(f"{args.source} cannot be read: {exc}") from None
    report = study.report
    if args.format == "json":
        sys.stdout.write(report.to_json() + "\n")
    elif args.format == "csv":
        sys.stdout.write(report.to_csv())
    else:
        _print_table(report)
    if args.strict and not report.ok:
        print(f"mfr-outcomes validate: {DataValidationError(report)}", file=sys.stderr)
    return 0 if report.ok else 1


def _print_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=max(100, Console().width), soft_wrap=False)
    accounting = Table(title=f"Rows of {report.source}", title_justify="left")
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
        findings.add_row(str(n), f.rule, f.message)
    console.print(findings)
