"""Same-host A/B: the attention implementations at a base commit and in the working tree, measured in turn here.

Figures recorded on another machine do not survive a change of CPU (two CPUs speed GEMMs, softmax,
gathers and memory traffic up by different factors), so the gate measures both sides on this host in
one job, as asv's `continuous` and flash-linear-attention's `--base` do:

- the base side is `attention_zoo` as it is at the base commit, exported with `git archive` into a
  temporary folder that is put first on the path of the base side's processes; everything else (the
  suite, its timers and statistics) is this tree's. The base side is driven only through the zoo API
  written down in README (get, list_impls, Entry.build / hparams / unsupported_reason / time / memory,
  Problem), so a base commit whose internals differ still runs.
- the sides take turns, one suite process at a time (base, tree, base, tree, ...), so a busy minute
  of the machine lands on both sides, and each side's rounds are pooled over its processes.
- the quiet gate's threshold is this host's: the reference time the first process measured.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.check.checkout import REPO
from bench.check.runs import CheckError, load_suite, median_reference_ms, run_name, run_suite
from bench.check.suite import QUIET_WAIT_BUDGET_S

SIDES = ("base", "tree")  # folder names of the two sides in an A/B run folder, in the order they take turns
SIDE_NAMES = {"base": "the base", "tree": "the working tree"}
AB_RUNS = 3  # suite processes per side
AB_ROUNDS = 5  # timed rounds per cell in each process: AB_RUNS x AB_ROUNDS rounds per cell and side
BASE_COMMIT_FILE = "BASE_COMMIT"  # in the baseline folder: the default base of the A/B, written by a refresh
ZOO = "attention_zoo"


def git(*args: str) -> str:
    """A git command's stdout in this repository; CheckError (one line) when it fails."""
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        last = detail.strip().splitlines()[-1] if detail.strip() else "no output"
        raise CheckError(f"git {' '.join(args)} failed: {last}") from None
    return done.stdout.strip()


def resolve_commit(ref: str) -> str:
    """The full commit id REF names (a branch, tag or commit); CheckError saying what to do when it names none."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except CheckError:
        raise CheckError(
            f"--base {ref!r} names no commit of this repository: give a branch, tag or commit id "
            "(a shallow clone lacks older commits: git fetch --unshallow)"
        ) from None


def recorded_base(baseline_dir: Path) -> str:
    """The base commit recorded beside the baseline (BASE_COMMIT), as written by --refresh-baseline."""
    path = baseline_dir / BASE_COMMIT_FILE
    if not path.is_file():
        raise CheckError(f"{path} is missing: give the base commit (--base REF) or refresh the baseline")
    return path.read_text().strip()


@contextlib.contextmanager
def base_zoo(commit: str) -> Iterator[Path]:
    """A temporary folder holding `attention_zoo` exactly as it is at `commit` (and nothing else)."""
    archive = subprocess.run(["git", "archive", "--format=tar", commit, ZOO], cwd=REPO, capture_output=True)
    if archive.returncode:
        raise CheckError(f"git archive {commit[:10]} {ZOO} failed: {archive.stderr.decode().strip()}")
    with tempfile.TemporaryDirectory(prefix="zoo-base-") as folder:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(folder, filter="data")
        yield Path(folder)


def run_sides(
    out_dir: Path,
    zoo_dir: Path,
    imports: list[str],
    runs: int = AB_RUNS,
    rounds: int = AB_ROUNDS,
    select: str | None = None,
    node_ids: dict[str, list[str]] | None = None,
    quiet_ms: float | None = None,
) -> tuple[int, float | None]:
    """Both sides' suite runs into out_dir/base and out_dir/tree, taking turns; (pytest's statuses or-ed, quiet ms).

    `imports` (--zoo-import) apply to the working tree's side only. node_ids: the cells of each side to
    run (a re-measurement), else the whole suite (or `select`). Without quiet_ms the first process runs
    ungated and its median reference sets the gate for the rest. Peaks are measured in each side's
    first process only (they repeat to a few percent, bench/core/memory.py), which saves a memory pass per run.
    """
    status = 0
    wait_s = QUIET_WAIT_BUDGET_S / (runs * len(SIDES))  # one run's worth of waiting, spread over the processes
    for run in range(runs):
        for side in SIDES:
            if node_ids is not None and not node_ids[side]:
                continue
            folder = out_dir / side
            status |= run_suite(
                folder, imports if side == "tree" else [], select=select,
                node_ids=node_ids[side] if node_ids else None, rounds=rounds, quiet_reference_ms=quiet_ms,
                name=run_name(run), zoo_dir=zoo_dir if side == "base" else None, peaks=run == 0, quiet_wait_s=wait_s,
            )  # fmt: skip
            if quiet_ms is None and (folder / run_name(run)).is_file():
                quiet_ms = median_reference_ms(load_suite(folder, run_name(run))[0])
    return status, quiet_ms


def zoo_source_error(environment: dict, side: str, zoo_dir: Path) -> str | None:
    """A line when a side's processes imported attention_zoo from somewhere else than they should have."""
    expected = zoo_dir / ZOO if side == "base" else REPO / ZOO
    found = environment.get("zoo_path", "")
    if Path(found) != expected:
        return f"the {side} side imported {ZOO} from {found or 'an unrecorded place'}, not {expected}"
    return None
