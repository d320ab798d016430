"""`python -m bench.report RESULTS_DIR [...]`: the report's command line (bench/report/cli.py)."""

import sys

from bench.report.cli import main

sys.exit(main())
