"""``mfr-outcomes fit SOURCE --measure pain_nrs``: fit the pre/post mixed model and print it.

Without ``--formula`` the domain model is used (``fit_prepost``: post × technique, random patient
slope for post); with ``--formula`` any lme4 formula is fitted to ``study.frame(measure)``.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

__all__ = ["HELP", "add_arguments", "run", "DEFAULT_FORMULA"]

HELP = "fit a linear mixed model of one measure (lme4 formulas, Satterthwaite df) and print it"

#: used when models.domain is not available and no --formula is given
DEFAULT_FORMULA = "value ~ post * technique + session_number + (post | patient_id)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", nargs="?",
                        help="folder of patients/sessions/measurements files, a workbook, a "
                             "database file or an SQLAlchemy URL")
    parser.add_argument("--from-summaries", nargs="+", metavar="NPZ", default=None,
                        help="fit from site summaries (mfr-outcomes summarize) instead of SOURCE")
    parser.add_argument("--measure", default="pain_nrs", help="measure code (default pain_nrs)")
    parser.add_argument("--formula", default=None,
                        help="lme4 formula on the analysis frame, e.g. \"value ~ post * technique "
                             "+ session_number + (post | patient_id)\" (default: the pre/post "
                             "model of the measure)")
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
    parser.add_argument("--column-map", metavar="FILE", default=None,
                        help="JSON (or YAML) file renaming the clinic's columns and labels")


def _fit(study, args: argparse.Namespace):
    from mfr_outcomes.cli import UserError
    from mfr_outcomes.models.fit import fit_mixed

    if args.measure not in study.measures:
        raise UserError(f"measure {args.measure!r} has no readings in {args.source} (present: "
                        f"{', '.join(sorted(study.measures)) or 'none'})")
    reml = not args.ml
    try:
        if args.formula is None:
            try:
                from mfr_outcomes.models.domain import fit_prepost
            except ImportError:
                fit_prepost = None
            if fit_prepost is not None:
                return fit_prepost(study, args.measure, engine=args.engine, reml=reml,
                                   df_method=args.df_method)
            frame = study.frame(args.measure)
            frame = frame[frame["technique"].astype(str) != "none"]
            return fit_mixed(frame, DEFAULT_FORMULA, reml=reml, engine=args.engine,
                             df_method=args.df_method)
        return fit_mixed(study.frame(args.measure), args.formula, reml=reml,
                         engine=args.engine, df_method=args.df_method)
    except ValueError as exc:
        raise UserError(str(exc)) from None


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
        "diagnostics": json.loads(json.dumps(diag, default=str)),
    }
    return json.dumps(out, indent=2)


def run(args: argparse.Namespace) -> int:
    from mfr_outcomes.cli.report import load_source
    from mfr_outcomes.warnings_ import MfrWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MfrWarning)
        if args.from_summaries:
            from mfr_outcomes.scale.summaries import fit_from_summaries_cli
            fit = fit_from_summaries_cli(args)
        else:
            if not args.source:
                from mfr_outcomes.cli import UserError
                raise UserError("give SOURCE, or --from-summaries with site summaries")
            study = load_source(args.source, column_map=args.column_map)
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
    if args.format != "text":  # the text summary lists the cautions itself
        seen = set()
        for w in caught:
            msg = str(w.message)
            if msg not in seen:
                seen.add(msg)
                print(f"caution: {msg}", file=sys.stderr)
    return 0
