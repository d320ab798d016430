"""One cell, as the sweep and the regression check both measure it: an implementation, a problem, a mode."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import attention_zoo
from attention_zoo import Problem

# the registry's passes each benchmark mode runs
MODE_PASSES = {"fwd": ("forward",), "bwd": ("forward", "backward"), "fwd_bwd": ("forward", "backward")}


@dataclass(frozen=True)
class Cell:
    """One measurement: an implementation with resolved hyperparameters, on one problem, in one mode."""

    impl: str
    problem: Problem
    mode: str
    hparams: Mapping[str, Any]
    padding: float  # the sweep's padding fraction that produced problem.kv_valid_lens

    @property
    def cell_id(self) -> str:
        """A stable hash of what is measured, used to resume runs and merge results."""
        spec = {"impl": self.impl, "mode": self.mode, "hparams": dict(self.hparams), **dataclasses.asdict(self.problem)}
        return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def unsupported_reason(cell: Cell) -> str | None:
    """Why the cell cannot run here (the entry's reason, the registry's device rule included), or None."""
    entry = attention_zoo.get(cell.impl)
    for registry_mode in MODE_PASSES[cell.mode]:
        reason = entry.unsupported_reason(cell.problem, registry_mode, cell.hparams)
        if reason:
            return reason
    return None
