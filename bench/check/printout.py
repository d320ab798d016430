"""What the check prints: the machine and commit of each side, the reference times, and the verdict with its table."""

from __future__ import annotations

import pandas as pd

from bench.check.compare import CHECK_COLUMNS, flagged_rows, format_table, largest_changes

BUSY_WARNING = 1.05  # a run whose reference took this much longer than the baseline's was timed on a busier machine


def commit_label(env: dict) -> str:
    return (env.get("commit", "")[:10] or "?") + ("+dirty" if env.get("dirty") else "")


def machine_label(env: dict) -> str:
    cpu = env.get("cpu", {}).get("brand_raw", "unknown CPU")
    return f"{cpu}, torch {env.get('torch_version', '?')}, commit {env.get('commit', '')[:10] or '?'}"


def reference_lines(base_env: dict, fresh_env: dict) -> list[str]:
    """The reference times of a baseline and a run, and a warning when the run's machine was busier."""
    lines = [
        f"reference attention (median): {base_env['reference_ms']:.2f} ms in the baseline, "
        f"{fresh_env['reference_ms']:.2f} ms in this run"
        + (f"; waited {fresh_env['waited_s']:.0f} s for a quiet machine" if "waited_s" in fresh_env else "")
    ]
    if fresh_env["reference_ms"] > BUSY_WARNING * base_env["reference_ms"]:
        busier = fresh_env["reference_ms"] / base_env["reference_ms"] - 1
        lines.append(
            f"warning: the machine was busier than for the baseline (reference {100 * busier:+.0f}%): entries "
            "slow differently under load, so time figures move more than usual"
        )
    return lines


def verdict(
    table: pd.DataFrame,
    flagged: pd.DataFrame,
    n_cells: int,
    missing: list[str],
    suite_status: int,
    confirmed: bool,
    against: str = "",
    first: str = "baseline",
) -> list[str]:
    """What a comparison prints: how much was compared, what could not be, dismissed flags, and a verdict."""
    table = table if not table.empty else pd.DataFrame(columns=CHECK_COLUMNS)
    lines = [
        f"compared {len(table)} figures of {table['impl'].nunique()} entries ({n_cells} cells): time / ref, "
        "peak bytes, time and memory exponents in N, per entry and mode"
    ]
    if not table.empty:
        lines.append(f"largest changes: {largest_changes(table)}")
    if missing:
        lines += [f"could not compare {len(missing)}:"] + [f"  {line}" for line in missing]
    if suite_status:
        lines.append(f"REGRESSION: the suite itself failed (pytest exit {suite_status}); see its output above")
    keys = ["impl", "mode", "check"]
    dismissed = table[~table["regressed"].astype(bool)].merge(flagged[keys], on=keys)
    if not dismissed.empty:
        lines += [
            f"flagged in the first run but not again when re-measured ({len(dismissed)}), not regressions:",
            format_table(dismissed, first),
        ]
    if not flagged.empty and not confirmed:
        lines.append("(a saved run is compared as it is: flagged figures are not re-measured)")
    regressed = flagged_rows(table)
    if regressed.empty:
        lines.append("no regression among the cells that ran" if suite_status else f"no regression {against}".strip())
    else:
        names = ", ".join(sorted(regressed["impl"].unique()))
        heading = f"REGRESSION in {names}" + (f" ({against})" if against else "") + ":"
        lines += [heading, format_table(regressed.sort_values(["impl", "mode"], kind="stable"), first)]
    return lines
