"""``mfr-outcomes fit SOURCE --model prepost | course | followup``: fit a mixed model and print it.

``--model prepost`` (default) is the within-session change (``fit_prepost``), ``course`` the
pre-session readings over time (``fit_course``: ``--time weeks|days|hours|session_number``),
``followup`` baseline → discharge → follow-up (``fit_followup``); ``--by`` lets the effect differ
by a column (technique, arm, a covariate). With ``--formula`` any lme4 formula is fitted to
``study.frame(measure)`` instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from mfr_outcomes.cli.sources import PROFILE_HELP, load_source

__all__ = ["HELP", "add_arguments", "run", "MODELS"]

HELP = "fit a linear mixed model of one measure (pre/post, course, follow-up or a formula)"

#: --model choices
MODELS = ("prepost", "course", "followup")
TIMES = ("weeks", "days", "hours", "session_number")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", nargs="?",
                        help="folder of patients/sessions/measurements files, a workbook, a "
                             "database file or an SQLAlchemy URL")
    parser.add_argument("--from-summaries", nargs="+", metavar="NPZ", default=None,
                        help="fit from site summaries (mfr-outcomes summarize) instead of SOURCE")
    parser.add_argument("--measure", default="pain_nrs", help="measure code (default pain_nrs)")
    parser.add_argument("--model", choices=MODELS, default=None,
                        help="prepost: immediate pre -> post change (default); course: "
                             "pre-session readings over time; followup: baseline -> discharge "
                             "-> follow-up")
    parser.add_argument("--by", default=None,
                        help="column whose levels may change the effect: technique (prepost's "
                             "default), arm, condition, site_id, a covariate")
    parser.add_argument("--time", choices=TIMES, default=None,
                        help="time scale of --model course (default weeks)")
    parser.add_argument("--covariates", default=None, metavar="A,B",
                        help="comma-separated columns added as main effects (e.g. age_years,bmi)")
    parser.add_argument("--formula", default=None,
                        help="lme4 formula on the analysis frame, e.g. \"value ~ post * technique "
                             "+ session_number + (post | patient_id)\" (instead of --model)")
    parser.add_argument("--engine", default="auto",
                        help="fitting engine: auto (default), fast, pls or statsmodels")
    parser.add_argument("--ml", action="store_true",
                        help="fit by maximum likelihood instead of REML")
    parser.add_argument("--df-method", default="satterthwaite",
                        choices=("satterthwaite", "residual", "asymptotic"),
                        help="degrees of freedom of t tests (default satterthwaite)")
    parser.add_argument("--format", choices=("text", "json", "csv"), default="text",
                        help="text summary (default), JSON of every table, or CSV of the fixed "
                             "effects")
    parser.add_argument("--profile", metavar="FILE", default=None, help=PROFILE_HELP)
    parser.add_argument("--column-map", metavar="FILE", default=None,
                        help="JSON (or YAML) file renaming the clinic's columns and labels")
    parser.add_argument("--dayfirst", action="store_true",
                        help="read dates written as day/month/year")


def _check_options(args: argparse.Namespace) -> None:
    from mfr_outcomes.cli import UserError

    if args.formula is not None:
        given = [f"--{n}" for n in ("model", "by", "time", "covariates")
                 if getattr(args, n) is not None]
        if given:
            raise UserError(f"--formula fits the formula as written; drop {', '.join(given)} "
                            f"(or drop --formula to use --model)")
    model = args.model or "prepost"
    if args.time is not None and model != "course":
        raise UserError(f"--time {args.time} applies to --model course, not {model}")
    if args.by is not None and model == "followup":
        raise UserError("--by does not apply to --model followup (its effect is the visit stage)")


def _fit(study, args: argparse.Namespace):
    from mfr_outcomes.cli import UserError
    from mfr_outcomes.models.domain import fit_course, fit_followup, fit_prepost
    from mfr_outcomes.models.fit import fit_mixed

    if args.measure not in study.measures:
        raise UserError(f"measure {args.measure!r} has no readings in {study.source} (present: "
                        f"{', '.join(sorted(study.measures)) or 'none'})")
    common = {"engine": args.engine, "reml": not args.ml, "df_method": args.df_method}
    covariates = [c.strip() for c in (args.covariates or "").split(",") if c.strip()]
    try:
        if args.formula is not None:
            return fit_mixed(study.frame(args.measure), args.formula, **common)
        model = args.model or "prepost"
        if model == "prepost":
            return fit_prepost(study, args.measure, by=args.by or "technique",
                               covariates=covariates, **common)
        if model == "course":
            return fit_course(study, args.measure, time=args.time or "weeks", by=args.by,
                              covariates=covariates, **common)
        return fit_followup(study, args.measure, covariates=covariates, **common)
    except (ValueError, KeyError) as exc:
        raise UserError(str(exc).strip("\"'")) from None


def _as_json(fit) -> str:
    def records(df):
        return json.loads(df.to_json(orient="records"))

    diag = {k: v for k, v in fit.diagnostics.items()}
    out = {
        "formula": fit.formula, "engine": fit.engine, "reml": fit.reml,
        "df_method": fit.df_method, "nobs": fit.nobs, "ngroups": fit.ngroups,
        "loglik": fit.loglik, "aic": fit.aic, "bic": fit.bic,
        "reml_criterion": fit.reml_criterion if fit.reml else None,
        "fixed_effects": records(fit.fixed_effects),
        "variance_components": records(fit.variance_components),
        "notes": list(getattr(fit, "notes", [])),
        "diagnostics": json.loads(json.dumps(diag, default=str)),
    }
    return json.dumps(out, indent=2)


def run(args: argparse.Namespace) -> int:
    from mfr_outcomes.warnings_ import MfrWarning

    _check_options(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MfrWarning)
        study = None
        if args.from_summaries:
            from mfr_outcomes.cli import UserError
            given = [f"--{n}" for n in ("by", "time", "covariates", "formula", "profile")
                     if getattr(args, n) is not None]
            if args.model not in (None, "prepost"):
                given.insert(0, f"--model {args.model}")
            if given:
                raise UserError(f"--from-summaries fits the pooled pre/post model; drop "
                                f"{', '.join(given)}")
            from mfr_outcomes.scale.summaries import fit_from_summaries_cli
            fit = fit_from_summaries_cli(args)
        else:
            if not args.source:
                from mfr_outcomes.cli import UserError
                raise UserError("give SOURCE, or --from-summaries with site summaries")
            study = load_source(args.source, profile=args.profile, column_map=args.column_map,
                                dayfirst=args.dayfirst, large=args.formula is None)
            fit = _fit(study, args)
    fits = fit if isinstance(fit, dict) else {"": fit}
    for label, f in fits.items():
        if args.format == "json":
            sys.stdout.write(_as_json(f) + "\n")
        elif args.format == "csv":
            fe = f.fixed_effects
            if label:
                fe.insert(0, "side", label)
            sys.stdout.write(fe.to_csv(index=False))
        else:
            if label:
                print(f"== side: {label} ==")
            print(f.summary())
            notes = [n for n in getattr(f, "notes", []) if not n.startswith("formula: ")]
            if notes:
                print("\nNotes:")
                for n in notes:
                    print(f"  - {n}")
    if study is not None and study.report.n_excluded:
        print(f"note: validation excluded {study.report.n_excluded} row(s) of {study.source}; "
              f"run `mfr-outcomes validate` for the list", file=sys.stderr)
    if args.format != "text":  # the text summary lists the cautions itself
        seen = set()
        for w in caught:
            msg = str(w.message)
            if msg not in seen:
                seen.add(msg)
                print(f"caution: {msg}", file=sys.stderr)
    return 0
