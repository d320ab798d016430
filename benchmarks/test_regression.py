"""The regression suite: every registered entry at small sizes, forward and backward (see bench/check/suite.py).

Run through `python -m bench.check`, which saves pytest-benchmark's JSON and compares it with the baseline.
"""

import pytest

from bench.check.suite import cell_name, measure, suite_cells
from bench.core.cell import unsupported_reason


@pytest.mark.parametrize("cell", suite_cells(), ids=cell_name)
def test_attention(benchmark, cell, quiet_gate, request):
    reason = unsupported_reason(cell)
    if reason:
        pytest.skip(reason)
    peak_bytes = request.getfixturevalue("peak_bytes")  # after the skip: unsupported cells have no peak
    measure(benchmark, cell, peak_bytes, quiet_gate, rounds=request.config.getoption("--rounds"))
