"""Zero rows appended on the sequence axis, without the copy F.pad makes when there are none to add."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """(..., N, d) -> (..., N + rows, d) with zero rows appended; x itself when rows is 0."""
    return F.pad(x, (0, 0, 0, rows)) if rows else x
