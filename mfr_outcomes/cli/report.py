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

__all__ = ["HELP", "add_arguments", "run", "load_source", "parse_targets"]

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
    parser.add_argument("--target", action="append", default=[], metavar="CHART=VALUE",
                        help="a target for a chart's assurance icon, repeatable: the measure "
                             "code (its monthly mean, e.g. pain_nrs=4), <measure>_change, "
                             "responders (a proportion, e.g. responders=0.5) or adverse_events")
    parser.add_argument("--rebase", action="append", default=[], metavar="YYYY-MM",
                        help="a declared change: control limits are recalculated from this "
                             "month (repeatable)")
    parser.add_argument("--baseline", default=None, metavar="YYYY-MM:YYYY-MM",
                        help="calculate control limits on these months only and freeze them")
    parser.add_argument("--name-therapists", action="store_true",
                        help="show therapist codes instead of stable pseudonyms (Therapist C)")
    parser.add_argument("--all-sites-alone", action="store_true",
                        help="the all-sites report decides what it hides by itself (faster, "
                             "its charts keep every point) instead of together with the sites' "
                             "reports; give it to every report of the study, and only when the "
                             "sites' reports are not published beside it")


def parse_targets(items: list[str]) -> dict[str, float]:
    """``["pain_nrs=4", "responders=0.5"]`` -> ``{"pain_nrs": 4.0, "responders": 0.5}``.

    Raises
    ------
    UserError
        Naming the item that is not ``name=number``.
    """
    from mfr_outcomes.cli import UserError

    out: dict[str, float] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or not name or number != number or number in (float("inf"), float("-inf")):
            raise UserError(f"--target {item!r} is not CHART=NUMBER, e.g. pain_nrs=4 or "
                            f"responders=0.5")
        out[name] = number
    return out




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
    targets = parse_targets(args.target)
    from mfr_outcomes.report.scope import month_label

    try:
        for month in args.rebase:
            month_label(month, "--rebase")
        if args.baseline is not None:
            first, sep, last = args.baseline.partition(":")
            if not sep:
                raise ValueError(f"--baseline {args.baseline!r} is not a range of months like "
                                 f"2026-01:2026-06")
            month_label(first, "--baseline")
            month_label(last, "--baseline")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    study = load_source(args.source, column_map=args.column_map, dayfirst=args.dayfirst,
                        sep=args.sep, decimal=args.decimal, encoding=args.encoding,
                        profile=args.profile)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MfrWarning)  # printed below, once each
            result = build_report(study, args.out, site=args.site, period=args.period,
                                  min_cell=args.min_cell, measure=args.measure, seed=args.seed,
                                  targets=targets, rebase=args.rebase or None,
                                  baseline=args.baseline,
                                  name_therapists=args.name_therapists,
                                  all_sites_alone=args.all_sites_alone)
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
