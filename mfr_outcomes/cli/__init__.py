"""The ``mfr-outcomes`` command line: one module a sub-command, each with ``add_arguments`` and ``run``.

A sub-command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``
(the exit status). Errors a user can fix are printed as one sentence on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "COMMANDS"]

#: sub-command name -> module under mfr_outcomes.cli
COMMANDS = {
    "demo": "demo",
    "synth": "synth",
    "validate": "validate",
    "fit": "fit",
    "report": "report",
    "power": "power",
    "summarize": "summarize",
    "schema": "schema",
    "profile": "profile",
}


class UserError(Exception):
    """A problem the user can fix (bad path, bad option): printed as a sentence, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    from mfr_outcomes import __version__

    parser = argparse.ArgumentParser(
        prog="mfr-outcomes",
        description="Outcomes of myofascial release therapy: check clinic data, fit mixed models, "
        "write QI reports.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"mfr_outcomes.cli.{module_name}")
        except ModuleNotFoundError as exc:  # a sub-command not built yet
            if exc.name != f"mfr_outcomes.cli.{module_name}":
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"mfr-outcomes {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last boundary: a sentence, never a traceback
        from mfr_outcomes.cli.sources import mask_secrets

        logging.getLogger("mfr_outcomes.cli").debug("internal error", exc_info=True)
        text = " ".join(str(exc).split())
        text = mask_secrets(text[:300] + ("..." if len(text) > 300 else ""),
                            getattr(args, "source", None))
        print(f"mfr-outcomes {args.command}: could not finish: {type(exc).__name__}: {text} "
              f"(an internal error; rerun with -v to log its traceback, and please report it)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
