"""`python -m bench.report RESULTS_DIR [...]`: complexity plots, exponents, crossovers, report.html and report.md.

One or more run (or multirun sweep) folders in, report.html's path out; a user error is one line and exit 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from bench.errors import OneLineParser, UserError, exit_on_user_error
from bench.report.render import BASELINE, render_report
from bench.rows import load


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: run folders in, report.html path out; a user error is one line and exit 2."""
    parser = OneLineParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="results/<run_id> folders; several are merged")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the first run folder)")
    parser.add_argument("--baseline", help=f"impl the speedups and crossovers compare with (default {BASELINE})")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.run_dirs if not d.is_dir()]
    if missing:
        parser.error(f"not a folder: {', '.join(missing)} (expected results/<run_id> folders)")
    with exit_on_user_error(parser.prog):
        rows = load(*args.run_dirs)
        measured = sorted(set(rows["impl"]))
        if args.baseline is not None and args.baseline not in measured:
            close = difflib.get_close_matches(args.baseline, measured, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(
                f"--baseline {args.baseline!r} is not in these results{hint}; they have: {', '.join(measured)}"
            )
        out_dir = args.out or args.run_dirs[0]
        print(render_report(rows, args.run_dirs, out_dir, args.baseline or BASELINE))
    return 0
