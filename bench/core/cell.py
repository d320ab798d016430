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
from bench.core.modes import MODES


@dataclass(frozen=True)
class Cell:
    """One measurement: an implementation with resolved hyperparameters, on one problem, in one mode."""

    impl: str
    problem: Problem
    mode: str
    hparams: Mapping[str, Any]
    padding: float  # the sweep's padding fraction that produced problem.kv_valid_lens
    lengths: str = ""  # the sweep's length distribution that drew problem.kv_valid_lens ("": none)
    inputs: str = "iid"  # the distribution q, k, v are drawn from (attention_zoo/inputs.py)
    task: Mapping[str, Any] | None = None  # recall mode: kv_pairs and the recall config (bench/tasks)

    @property
    def seq_len(self) -> int:
        """The length the sweep's seq_lens named: N, or in decode mode the context length L (kv_len - T)."""
        return self.problem.kv_len - self.problem.q_len if self.mode == "decode" else self.problem.q_len

    @property
    def cell_id(self) -> str:
        """A stable hash of what is measured, used to resume runs and merge results."""
        spec = {"impl": self.impl, "mode": self.mode, "hparams": dict(self.hparams), **dataclasses.asdict(self.problem)}
        if spec.get("doc_lens") is None:  # (kept out: the ids of runs, and zoos, from before packing stay valid)
            spec.pop("doc_lens", None)
        if self.lengths:  # (kept out otherwise: the ids of runs from before the field existed stay valid)
            spec["lengths"] = self.lengths
        if self.inputs != "iid":  # (likewise)
            spec["inputs"] = self.inputs
        if self.task is not None:
            spec["task"] = dict(self.task)
        return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def unsupported_reason(cell: Cell) -> str | None:
    """Why the cell cannot run here (the entry's reason, the registry's device rule included), or None."""
    entry = attention_zoo.get(cell.impl)
    if cell.mode == "decode":
        return entry.decode_reason(cell.problem, cell.hparams)
    for registry_mode in MODES[cell.mode].passes:
        reason = entry.unsupported_reason(cell.problem, registry_mode, cell.hparams)
        if reason:
            return reason
    return None
