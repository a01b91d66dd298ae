"""``mfr-outcomes synth``: write the synthetic clinic tables and their codebook to a folder."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

__all__ = ["HELP", "add_arguments", "run"]

HELP = "simulate a clinic's tables with known truth (patients, sessions, measurements CSV + README)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patients", type=int, default=120, help="patients to enrol (120)")
    parser.add_argument("--seed", type=int, default=2026, help="random seed (2026)")
    parser.add_argument("--out", default="data/synthetic",
                        help="folder to write (created when missing; default data/synthetic)")
    parser.add_argument("--measures", default=None,
                        help="comma-separated measure codes to keep (default: all)")
    parser.add_argument("--set", dest="effects", action="append", default=[],
                        metavar="NAME=JSON",
                        help="override a truth parameter, e.g. --set course_reduction=0.3 or "
                             "--set 'immediate_effect={\"massage\": -0.8}' (repeatable)")


def _parse_effects(items: list[str]) -> dict:
    from mfr_outcomes.cli import UserError

    effects = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--set {item!r}: write NAME=VALUE, e.g. course_reduction=0.3")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise UserError(f"--set {item!r}: the value {text!r} is not valid JSON") from None
        effects[name.strip()] = value
    return effects


def run(args: argparse.Namespace) -> int:
    from mfr_outcomes.cli import UserError
    from mfr_outcomes.synthetic import codebook, generate_frames, write_csvs

    if args.patients < 1:
        raise UserError(f"--patients must be at least 1, got {args.patients}")
    measures = None
    if args.measures:
        measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    effects = _parse_effects(args.effects)
    try:
        frames, truth = generate_frames(args.patients, args.seed, measures=measures, **effects)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out)
    try:
        paths = write_csvs(frames, out)
        text = codebook(frames, truth, n_patients=args.patients, seed=args.seed)
        (out / "README.md").write_text(text, encoding="utf-8", newline="\n")
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {exc.strerror or exc}") from None
    for path in [*paths, out / "README.md"]:
        log.info("wrote %s", path)
    return 0
