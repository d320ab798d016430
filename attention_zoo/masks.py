"""Masks as the score computation takes them: a bool mask of allowed (query, key) pairs as an additive bias."""

from __future__ import annotations

import torch


def additive_bias(allowed: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """0 where `allowed` is true, -inf where not, shaped like it; written into `out` (e.g. aligned storage) if given."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device) if out is None else out.zero_()
    return bias.masked_fill_(~allowed, float("-inf"))
