"""docs/rows.md documents exactly the columns bench/rows.py writes, in its order."""

from __future__ import annotations

from pathlib import Path

from bench import rows

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "rows.md"
HPARAM_PLACEHOLDER = "<name>"


def _documented() -> list[str]:
    lines = [line for line in SCHEMA.read_text().splitlines() if line.startswith("| `")]
    return [line.split("`")[1] for line in lines]


def test_the_documented_columns_are_the_rows_columns_in_order() -> None:
    assert _documented() == rows.columns([HPARAM_PLACEHOLDER])  # hp_<name> stands for every hyperparameter


def test_every_status_is_documented() -> None:
    status_line = next(line for line in SCHEMA.read_text().splitlines() if line.startswith("| `status`"))
    assert all(status in status_line for status in rows.STATUSES)
