"""``mfr-outcomes power``: power of a mixed-model test by simulating clinic studies."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["HELP", "add_arguments", "run"]

HELP = "power by simulation: studies drawn from the simulator, fitted by the fast engine"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--effect", type=float, nargs="+", default=[-0.5],
                        help="true effect(s) of the tested term (default -0.5: pain points, "
                             "pre→post, negative = relief)")
    parser.add_argument("--patients", type=int, nargs="+", default=[20, 40, 80],
                        help="patients per study (default 20 40 80)")
    parser.add_argument("--sessions", type=int, nargs="+", default=[6],
                        help="treatment visits per patient (default 6)")
    parser.add_argument("--sims", type=int, default=1000, help="studies per design (1000)")
    parser.add_argument("--seed", type=int, default=2026, help="random seed (2026)")
    parser.add_argument("--alpha", type=float, default=0.05, help="two-sided level (0.05)")
    parser.add_argument("--parameter", default="post",
                        help="term tested: post (default) or post:technique[T.<technique>]")
    parser.add_argument("--jobs", type=int, default=-1, help="worker processes (-1: all cores)")
    parser.add_argument("--mde", type=float, default=None, metavar="POWER",
                        help="also search the minimum detectable effect at this power, e.g. 0.8")
    parser.add_argument("--out", default=None,
                        help="folder for power.csv and power_curve.png (created when missing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from mfr_outcomes.cli import UserError
    from mfr_outcomes.power import minimum_detectable_effect, plot_power_curve, simulate

    if args.sims < 1:
        raise UserError(f"--sims {args.sims}: give at least 1 simulated study")
    try:
        result = simulate(effect=args.effect, n_patients=args.patients, sessions=args.sessions,
                          n_sims=args.sims, seed=args.seed, n_jobs=args.jobs, alpha=args.alpha,
                          parameter=args.parameter, progress=not args.no_progress)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    shown = result[["effect", "n_patients", "sessions", "power", "ci_low", "ci_high", "n_sims",
                    "n_failed", "median_df"]]
    print(f"Power to detect {args.parameter} (two-sided t test, Satterthwaite df, "
          f"alpha = {args.alpha:g}; 95 % Monte Carlo intervals)")
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    mde = None
    if args.mde is not None:
        sign = -1.0 if min(args.effect) < 0 else 1.0
        try:
            mde = minimum_detectable_effect(
                n_patients=args.patients, sessions=args.sessions[0], target=args.mde,
                max_effect=sign * max(abs(e) for e in args.effect) * 2 or sign, seed=args.seed,
                n_sims=args.sims, n_jobs=args.jobs, alpha=args.alpha, parameter=args.parameter)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        print(f"\nMinimum detectable effect at power {args.mde:g}:")
        print(mde[["n_patients", "sessions", "mde", "power", "ci_low", "ci_high"]]
              .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out {args.out}: cannot create the folder ({exc.strerror})") from None
        result.to_csv(out / "power.csv", index=False)
        if mde is not None:
            mde.to_csv(out / "mde.csv", index=False)
        ax = plot_power_curve(result)
        ax.figure.tight_layout()
        ax.figure.savefig(out / "power_curve.png", dpi=120)
        plt.close(ax.figure)
        print(f"\nwrote {out / 'power.csv'} and {out / 'power_curve.png'}")
    return 0
