"""`python -m bench.report RESULTS_DIR [...]`: tables, figures, exponents, crossovers, report.html and report.md.

One or more run (or multirun sweep) folders in, report.html's path out; `--compare B` puts one run beside
another instead. A user error is one line and exit 2; results without a single measured cell are reported,
with one line on stderr and exit 1.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.command_line import OneLineParser, exit_on_user_error
from bench.errors import UserError
from bench.report.analysis import ERROR_BUDGET
from bench.report.compare import write_compare
from bench.report.render import BASELINE, render_report
from bench.rows import load

NOTHING_MEASURED_EXIT = 1  # valid input, no measurement in it


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: run folders in, report.html path out (or a before/after table with --compare)."""
    parser = OneLineParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="results/<run_id> folders; several are merged")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the first run folder)")
    parser.add_argument("--baseline", help=f"impl the speedups and crossovers compare with (default {BASELINE})")
    parser.add_argument(
        "--error-budget", type=float, default=ERROR_BUDGET, metavar="E",
        help=f"rel. L2 error an approximate entry may have in the headlines (default {ERROR_BUDGET})",
    )  # fmt: skip
    parser.add_argument("--compare", type=Path, metavar="B", help="a second run of the same grid: A and B per cell")
    args = parser.parse_args(argv)
    missing = [str(d) for d in [*args.run_dirs, *filter(None, [args.compare])] if not d.is_dir()]
    if missing:
        parser.error(f"not a folder: {', '.join(missing)} (expected results/<run_id> folders)")
    if not args.error_budget > 0:
        parser.error(f"--error-budget {args.error_budget} is invalid: give a relative error > 0")
    with exit_on_user_error(parser.prog):
        rows = load(*args.run_dirs)
        out_dir = args.out or args.run_dirs[0]
        if args.compare is not None:
            if len(args.run_dirs) != 1:
                raise UserError(f"--compare takes one run on each side; got {len(args.run_dirs)} before it")
            out_dir.mkdir(parents=True, exist_ok=True)
            print(write_compare(rows, load(args.compare), (str(args.run_dirs[0]), str(args.compare)), out_dir))
            return 0
        measured = sorted(set(rows["impl"]))
        if args.baseline is not None and args.baseline not in measured:
            close = difflib.get_close_matches(args.baseline, measured, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(
                f"--baseline {args.baseline!r} is not in these results{hint}; they have: {', '.join(measured)}"
            )
        print(render_report(rows, args.run_dirs, out_dir, args.baseline or BASELINE, args.error_budget))
    if not (rows["status"] == "ok").any():
        print(f"{parser.prog}: no cell in these results was measured (the report says why)", file=sys.stderr)
        return NOTHING_MEASURED_EXIT
    return 0
