"""Natural order: names and paths sorted as people read them ("N2" before "N10", job 2 before job 10)."""

from __future__ import annotations

import re
from typing import Any


def natural_key(text: object) -> list[Any]:
    """A sort key splitting digit runs out as integers: sorted(names, key=natural_key)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]
