"""``mfr-outcomes profile init FILE``: write a commented clinic-profile template;
``mfr-outcomes profile check FILE``: read a profile and say what it adds (or its first mistake).
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["HELP", "add_arguments", "run"]

HELP = "write a commented clinic-profile template (init) or check a profile (check)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("init", "check"),
                        help="init: write the template; check: read a profile and summarise it")
    parser.add_argument("file", metavar="FILE", nargs="?", default="clinic.toml",
                        help="profile file (default clinic.toml)")
    parser.add_argument("--force", action="store_true", help="init: overwrite an existing file")


def run(args: argparse.Namespace) -> int:
    from mfr_outcomes.cli import UserError
    from mfr_outcomes.profile import ProfileError, load_profile, profile_template

    path = Path(args.file)
    if args.action == "init":
        if path.exists() and not args.force:
            raise UserError(f"{path} already exists; pass --force to overwrite it")
        try:
            with open(path, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(profile_template())
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        print(f"wrote {path}: uncomment the sections your clinic needs, then pass "
              f"--profile {path} to validate, fit and report")
        return 0
    try:
        prof = load_profile(path)
    except ProfileError as exc:
        raise UserError(str(exc)) from None
    base = load_profile({}).vocabulary
    for column in ("technique", "condition", "target_region", "adverse_event", "arm"):
        added = [x for x in prof.vocabulary.categories(column)
                 if x not in base.categories(column)]
        if added:
            print(f"{column}: adds {', '.join(added)}")
    for m in prof.measures:
        print(f"measure {m.code}: {m.axis_label}, {m.range_text()}, {m.better} is better")
    for table, specs in prof.covariates.items():
        for s in specs:
            print(f"covariate {table}.{s.name}: {s.kind}{' (required)' if s.required else ''}")
    for table, renames in prof.columns.items():
        print(f"columns of {table}: {len(renames)} renamed")
    for column, labels in prof.labels.items():
        print(f"labels of {column}: {len(labels)} mapped")
    if prof.dayfirst:
        print("dates: day/month/year")
    print(f"{path} is a valid profile")
    return 0
