"""``mfr-outcomes report SOURCE --out DIR``: write the QI report of a clinic and period.

One self-contained HTML file (figures embedded, no network fetch) plus its tables as CSV, with
small counts suppressed and no patient identifier. Exit status 0 when written, 2 for a problem the
user can fix (unreadable source, unknown site, bad period).
"""
from __future__ import annotations

import argparse
import sys
import warnings

from mfr_outcomes.cli.sources import PROFILE_HELP, load_source

__all__ = ["HELP", "add_arguments", "run", "load_source"]

HELP = "write the QI report (self-contained HTML + CSV tables) of a clinic and period"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="folder of patients/sessions/measurements files, an XLSX workbook, a "
                             "SQLite or DuckDB file, or an SQLAlchemy URL")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder to write report.html and tables/*.csv into (created)")
    parser.add_argument("--site", default=None, help="report on this site only")
    parser.add_argument("--period", default=None,
                        help="sessions in this quarter (2026Q3) or month (2026-07) only")
    parser.add_argument("--min-cell", type=int, default=5, metavar="N",
                        help="smallest count shown; smaller counts appear as '<N' (default 5)")
    parser.add_argument("--column-map", metavar="FILE", default=None,
                        help="JSON (or YAML) file renaming the clinic's columns and labels")
    parser.add_argument("--profile", metavar="FILE", default=None, help=PROFILE_HELP)
    parser.add_argument("--measure", default="pain_nrs",
                        help="main outcome measure code (default pain_nrs)")
    parser.add_argument("--seed", type=int, default=2026, help="random seed (default 2026)")
    parser.add_argument("--dayfirst", action="store_true",
                        help="read dates written as day/month/year")
    parser.add_argument("--sep", default=None, help="CSV field separator (default: sniffed)")
    parser.add_argument("--decimal", default=None,
                        help="decimal mark of CSV numbers (default: ',' with ';' separators)")
    parser.add_argument("--encoding", default=None, help="text encoding of CSV files")




def run(args: argparse.Namespace) -> int:
    from mfr_outcomes.cli import UserError
    from mfr_outcomes.report import build_report, parse_period
    from mfr_outcomes.warnings_ import MfrWarning

    # check the cheap options before reading anything
    if args.min_cell < 1:
        raise UserError(f"--min-cell must be at least 1, got {args.min_cell}")
    if args.period is not None:
        try:
            parse_period(args.period)
        except ValueError as exc:
            raise UserError(f"--period: {exc}") from None
    study = load_source(args.source, column_map=args.column_map, dayfirst=args.dayfirst,
                        sep=args.sep, decimal=args.decimal, encoding=args.encoding,
                        profile=args.profile)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MfrWarning)  # printed below, once each
            result = build_report(study, args.out, site=args.site, period=args.period,
                                  min_cell=args.min_cell, measure=args.measure, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write to {args.out}: {exc.strerror or exc}") from None
    if study.report.findings:
        print(f"note: validation found {len(study.report.findings)} problem(s) in {args.source};"
              f" see the report's data-quality section", file=sys.stderr)
    print(f"report: {result.html_path}")
    print(f"tables: {len(result.csv_paths)} CSV file(s) in {result.html_path.parent / 'tables'}")
    for failure in result.failures:
        print(f"incomplete: {failure}", file=sys.stderr)
    for caution in result.cautions:
        print(f"caution: {caution}", file=sys.stderr)
    return 0
