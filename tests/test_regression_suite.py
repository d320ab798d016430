"""The regression suite's quiet gate: a cell is timed only once the machine is as quiet as for the baseline."""

import subprocess
import sys

import pytest

from bench.check import suite as regression_suite
from bench.check.checkout import REPO
from bench.check.suite import QUIET_PROBES, QuietGate


@pytest.fixture
def sleeps(monkeypatch):
    """time.sleep in the suite, recorded instead of slept."""
    slept = []
    monkeypatch.setattr(regression_suite.time, "sleep", slept.append)
    return slept


def _reference(times_ms):
    """A reference whose successive calls take times_ms, then 5 ms for ever."""
    remaining = list(times_ms)
    return lambda: remaining.pop(0) if remaining else 5.0


def test_a_quiet_machine_is_not_held_back(sleeps):
    assert QuietGate(quiet_ms=5.0).wait(_reference([])) == 0.0
    assert sleeps == []


def test_a_busy_machine_is_waited_for(sleeps):
    busy_for_two_probes = [7.0] * (2 * QUIET_PROBES)  # 40% over the baseline: busy
    gate = QuietGate(quiet_ms=5.0, budget_s=10.0)
    waited = gate.wait(_reference(busy_for_two_probes))
    assert waited == 2 * regression_suite.QUIET_POLL_S and len(sleeps) == 2
    assert gate.budget_s == 10.0 - waited  # the run's budget is shared by its cells


def test_within_the_margin_counts_as_quiet(sleeps):
    assert QuietGate(quiet_ms=5.0).wait(_reference([5.5] * QUIET_PROBES)) == 0.0


def test_once_the_budget_is_spent_cells_are_timed_as_found(sleeps):
    gate = QuietGate(quiet_ms=1.0, budget_s=3.0)  # the machine never gets down to 1 ms
    assert gate.wait(_reference([])) == 3.0
    assert gate.wait(_reference([])) == 0.0
    assert len(sleeps) == 3


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--rounds=0", "--rounds=0 is invalid: give a whole number of 1 or more"),
        ("--quiet-reference-ms=-2", "--quiet-reference-ms=-2.0 is invalid: give a time in ms > 0"),
        ("--quiet-wait-s=-1", "--quiet-wait-s=-1.0 is invalid: give a time in s >= 0"),
    ],
)
def test_bad_suite_options_are_one_line(option, message):
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", option, "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == pytest.ExitCode.USAGE_ERROR
    assert run.stderr.strip() == f"ERROR: {message}"
