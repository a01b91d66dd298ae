"""``mfr-outcomes summarize SOURCE --out site.npz``: pooled sufficient statistics of one site.

The file holds no row and no identifier: global cross-products and, per class of patients with
the same visit pattern, sums and a within-class scatter factor. ``mfr-outcomes fit
--from-summaries a.npz b.npz ...`` pools several sites into the fit on their union.
"""
from __future__ import annotations

import argparse

from mfr_outcomes.cli.sources import PROFILE_HELP, load_source

__all__ = ["HELP", "add_arguments", "run"]

HELP = "write a site summary (pooled sufficient statistics, no rows) for multi-site fits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="folder of patients/sessions/measurements files, a workbook, a "
                             "database file or an SQLAlchemy URL")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="where to write the summary (.npz)")
    parser.add_argument("--measure", default="pain_nrs", help="measure code (default pain_nrs)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--formula", default=None,
                       help="lme4 formula on the analysis frame with random terms on the "
                            "patient only, e.g. \"value ~ post + session_number + "
                            "(post | patient_id)\"")
    model.add_argument("--model", choices=("prepost",), default="prepost",
                       help="the pre/post model of the measure (default; no therapist term)")
    parser.add_argument("--min-cell", type=int, default=5, metavar="N",
                        help="withhold classes of visit patterns with fewer than N patients "
                             "(default 5)")
    parser.add_argument("--site", default="", help="a label for this site (default: the file "
                                                   "name)")
    parser.add_argument("--profile", metavar="FILE", default=None, help=PROFILE_HELP)
    parser.add_argument("--column-map", metavar="FILE", default=None,
                        help="JSON (or YAML) file renaming the clinic's columns and labels")
    parser.add_argument("--dayfirst", action="store_true",
                        help="read dates written as day/month/year")


def run(args: argparse.Namespace) -> int:
    from mfr_outcomes.cli import UserError
    from mfr_outcomes.scale.summaries import SummaryError, summarize_study, write_summary

    if args.min_cell < 1:
        raise UserError(f"--min-cell must be at least 1, got {args.min_cell}")
    study = load_source(args.source, profile=args.profile, column_map=args.column_map,
                        dayfirst=args.dayfirst)
    if args.measure not in study.measures:
        raise UserError(f"measure {args.measure!r} has no readings in {args.source} (present: "
                        f"{', '.join(sorted(study.measures)) or 'none'})")
    try:
        summary = summarize_study(study, args.measure, model=args.model, formula=args.formula,
                                  min_cell=args.min_cell, site=args.site)
        out = write_summary(summary, args.out)
    except (SummaryError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"{args.out} cannot be written: {exc.strerror or exc}") from None
    print(f"{out}: {summary.n} readings of {summary.n_patients} patients in "
          f"{len(summary.count)} classes of visit patterns; formula {summary.formula}")
    for note in summary.notes:
        print(f"note: {note}")
    return 0
