"""``mfr-outcomes demo``: the whole pipeline on the shipped synthetic study, in one command.

Validates and summarises the study, fits the pre/post mixed model, writes the QI report, and ends
by printing the paths of everything it wrote.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from mfr_outcomes.cli.sources import PROFILE_HELP, load_source

__all__ = ["HELP", "add_arguments", "run"]

HELP = "run the pipeline on the synthetic study: validate, summarise, fit, write the QI report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None,
                        help="study to use (default: the synthetic study shipped with the "
                             "package)")
    parser.add_argument("--profile", metavar="FILE", default=None, help=PROFILE_HELP)
    parser.add_argument("--out", default="build/demo", help="output folder (default build/demo)")
    parser.add_argument("--measure", default="pain_nrs", help="main measure (default pain_nrs)")
    parser.add_argument("--seed", type=int, default=2026, help="random seed (default 2026)")
    parser.add_argument("--min-cell", type=int, default=5, metavar="N",
                        help="smallest count shown in the report (default 5)")


def _rule(title: str) -> None:
    print()
    print(title)
    print("-" * len(title))


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from mfr_outcomes.cli import UserError
    from mfr_outcomes.datasets import synthetic_path
    from mfr_outcomes.report import build_report
    from mfr_outcomes.warnings_ import MfrWarning

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror or exc}") from None
    source = args.source if args.source is not None else str(synthetic_path())
    study = load_source(source, profile=args.profile)
    written: list[Path] = []

    _rule(f"Validation of {study.source}")
    print(str(study.report).splitlines()[0])
    for line in study.report.accounting_lines():
        print(f"  {line}")
    report_json = out / "validation.json"
    report_json.write_text(study.report.to_json(), encoding="utf-8")
    written.append(report_json)

    _rule("Study")
    n_tx = int(study.sessions["technique"].astype(str).ne("none").sum())
    print(f"{study.patients['patient_id'].nunique()} patients at "
          f"{study.patients['site_id'].nunique()} site(s), {len(study.sessions)} visits "
          f"({n_tx} treatment sessions), {len(study.measurements)} readings of "
          f"{len(study.measures)} measure(s)")
    summary = study.summary()
    with pd.option_context("display.width", 120, "display.max_columns", 20,
                           "display.float_format", "{:.2f}".format):
        print(summary.to_string(index=False))
    summary_csv = out / "summary.csv"
    summary.to_csv(summary_csv, index=False)
    written.append(summary_csv)

    if args.measure not in study.measures:
        raise UserError(f"measure {args.measure!r} is not in {study.source}; measures present: "
                        f"{', '.join(study.measures)}")
    _rule(f"Pre/post mixed model of {args.measure}")
    fit_txt = out / f"fit_prepost_{args.measure}.txt"
    try:
        from mfr_outcomes.models.domain import fit_prepost

        with warnings.catch_warnings():
            # cautions are part of the fit's summary below; no need to repeat them on stderr
            warnings.simplefilter("ignore", MfrWarning)
            fit = fit_prepost(study, args.measure, by="technique")
        if isinstance(fit, dict):  # one fit a side
            fit = next(iter(fit.values()))
        text = fit.summary()
        print(text)
        contrasts = fit.contrasts("post", by="technique")
        with pd.option_context("display.width", 120, "display.max_columns", 20,
                               "display.float_format", "{:.3f}".format):
            ctext = contrasts.to_string(index=False)
        print()
        print("post - pre by technique:")
        print(ctext)
        fit_txt.write_text(f"{text}\n\npost - pre by technique:\n{ctext}\n", encoding="utf-8")
        written.append(fit_txt)
    except Exception as exc:  # the report below says the same; the demo goes on
        print(f"The pre/post model could not be fitted: {exc}")

    _rule("QI report")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MfrWarning)  # listed in the report's methods
            result = build_report(study, out / "report", measure=args.measure,
                                  min_cell=args.min_cell, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if result.failures:
        print(f"{len(result.failures)} part(s) of the report could not be built:")
        for f in result.failures:
            print(f"  {f}")
    else:
        print("every section built")
    if result.cautions:
        print(f"{len(result.cautions)} statistical or data caution(s), listed under Methods in "
              f"the report")
    written.append(result.html_path)
    written.extend(result.csv_paths)

    _rule("Outputs")
    manifest = out / "outputs.json"
    manifest.write_text(json.dumps([str(p) for p in written], indent=2), encoding="utf-8")
    print(f"report:     {result.html_path}")
    print(f"tables:     {len(result.csv_paths)} CSV file(s) in {result.html_path.parent / 'tables'}")
    print(f"summary:    {summary_csv}")
    print(f"validation: {report_json}")
    if fit_txt in written:
        print(f"model:      {fit_txt}")
    print(f"manifest:   {manifest}")
    return 0
