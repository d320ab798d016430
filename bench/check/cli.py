"""`python -m bench.check`: run the regression suite and say what got slower, hungrier or steeper.

    python -m bench.check --base                                    # A/B on this host: BASE_COMMIT vs the working tree
    python -m bench.check --base main                               # ... against main (a branch, tag or commit)
    python -m bench.check --base --baseline results/baseline        # ... and the baseline too, where comparable
    python -m bench.check --baseline results/baseline               # run the suite now, compare with the baseline
    python -m bench.check --baseline results/baseline RESULTS_DIR   # compare a suite run saved earlier
    python -m bench.check --refresh-baseline results/baseline       # run the suite and make it the baseline

The gate is the same-host A/B (bench/check/same_host.py): attention_zoo at the base commit and in the working
tree, measured in turn by this tree's suite. The committed baseline is history (bench/check/baseline.py): it is
compared only with runs on a host like its own. How two sides are compared is bench/check/compare.py.
A figure flagged in a run the check made itself is confirmed before it is reported: the flagged
entries' cells are measured again (both sides, in an A/B; `--confirm` times) and it is a regression only
when every re-run flags it too. On a shared machine one process can find an entry a few percent
slow (its memory layout, a busy neighbour for a minute); that does not repeat, a change to its code does.

Exit status: 0 no regression, 1 regressions (a table names each) or the suite failed, 2 a usage error.
Comparisons that cannot be made (a cell or entry on one side only, changed hyperparameters) are listed.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from bench.check import compare as comparing
from bench.check.ab import same_host_check
from bench.check.baseline import baseline_check, refresh_baseline, require_clean_tree
from bench.check.checkout import REPO, missing_checkout
from bench.check.compare import (
    Tolerances,
)
from bench.check.runs import (
    BASELINE_RUNS,
    CheckError,
)
from bench.check.same_host import (
    AB_ROUNDS,
    AB_RUNS,
)
from bench.command_line import OneLineParser

CONFIRM_RUNS = 1


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m bench.check", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--base", nargs="?", const="", metavar="REF",
        help="A/B on this host against REF's attention_zoo (default: the baseline folder's BASE_COMMIT)",
    )  # fmt: skip
    parser.add_argument("--baseline", type=Path, help="the baseline folder to compare with (where comparable)")
    parser.add_argument("--refresh-baseline", type=Path, metavar="DIR", help="run the suite and save it as DIR")
    parser.add_argument("results_dir", nargs="?", type=Path, help="a saved suite run; omitted: run the suite now")
    parser.add_argument("--out", type=Path, help="where a new run goes (default results/check/<time>)")
    parser.add_argument("--time-tolerance", type=float, default=comparing.TIME_TOLERANCE, help="relative, e.g. 0.10")
    parser.add_argument(
        "--memory-tolerance", type=float, default=comparing.MEMORY_TOLERANCE, help="relative, e.g. 0.10"
    )
    parser.add_argument(
        "--exponent-tolerance", type=float, default=comparing.GATE_EXPONENT_TOLERANCE, help="absolute, e.g. 0.35"
    )
    parser.add_argument("--alpha", type=float, default=comparing.ALPHA, help="Mann-Whitney significance level")
    parser.add_argument(
        "--confirm", type=int, default=CONFIRM_RUNS, help="re-runs of flagged entries that must flag them again"
    )
    parser.add_argument(
        "--zoo-import", action="append", default=[], metavar="MODULE",
        help="modules that register or replace entries (in an A/B: on the working tree's side only)",
    )  # fmt: skip
    parser.add_argument(
        "--runs", type=int,
        help=f"suite runs: of a refreshed baseline (default {BASELINE_RUNS}), per side of an A/B (default {AB_RUNS})",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, help=f"timed rounds per cell of a new run (default: the suite's; {AB_ROUNDS} in an A/B)"
    )
    parser.add_argument("-k", dest="select", help="run only the suite cells matching this pytest -k expression")
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    not_here = missing_checkout()
    if not_here:
        parser.error(not_here)
    for name in ("time_tolerance", "memory_tolerance", "exponent_tolerance", "alpha", "rounds", "runs"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} is invalid: it must be positive")
    if args.confirm < 0:
        parser.error(f"--confirm={args.confirm} is invalid: it must be 0 or more")
    try:
        if args.refresh_baseline:
            if args.results_dir or args.base is not None or args.baseline:
                parser.error("--refresh-baseline runs the suite itself: drop RESULTS_DIR, --base and --baseline")
            require_clean_tree(args.refresh_baseline)
            runs = args.runs or BASELINE_RUNS
            return refresh_baseline(args.refresh_baseline, runs, args.zoo_import, args.select, args.rounds)
        if args.base is not None:
            if args.results_dir:
                parser.error("--base measures both sides itself: drop RESULTS_DIR")
            return same_host_check(args, _new_run_dir(args), _tolerances(args))
        if args.baseline is None:
            parser.error("give --base [REF] (the same-host A/B), --baseline DIR, or --refresh-baseline DIR")
        return baseline_check(args, _new_run_dir(args), _tolerances(args))
    except CheckError as error:
        parser.error(str(error))


def _tolerances(args: argparse.Namespace) -> Tolerances:
    return Tolerances(args.time_tolerance, args.memory_tolerance, args.exponent_tolerance, args.alpha)


def _new_run_dir(args: argparse.Namespace) -> Path:
    return args.out or REPO / "results" / "check" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
