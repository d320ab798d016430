"""`python -m bench.check`: the regression check's command line (bench/check/cli.py)."""

import sys

from bench.check.cli import main

sys.exit(main(sys.argv[1:]))
