"""What the peers share: the missing-package reason, and the column pickers and reshapes that feed a package's layer.

Each peer takes the same hyperparameter names as our entry for its algorithm (window, proj_len and
share_kv, num_features and redraw, ...), mapped onto the package's own arguments as closely as the
package allows; what still differs is said on each class. The packages are imported only when an
entry is checked or built, so `import attention_zoo` works without them (pip install 'attention-zoo[peers]').
Each dense_reference is our dense form of the algorithm fed the package's own choices (its random
blocks, its rotations, its scale and initialisation), so the oracle checks that the package computes
exactly that. HF transformers' layers are built from a config with random weights (nothing is
downloaded) and only their attention core runs: their input projections are replaced by column
pickers of one concatenated (B, N, 3*H*d) or (B, N, 2*H*d) input, a copy of q, k, v per call.
"""

from __future__ import annotations

import importlib.util
from typing import Annotated

import torch

from attention_zoo.problem import Problem
from attention_zoo.rules import AtLeast

PEERS_EXTRA = "pip install 'attention-zoo[peers]'"
# every peer is wrapped as one forward call of its package
PEER_DECODE = "a package's attention call wrapped as one forward: its own cache or state API, if any, is not wrapped"


def missing_reason(module: str, package: str) -> str | None:
    """Why a peer cannot run when its package is absent, naming the package and the extra to install.

    Asks whether the top-level module is installed without importing it: importing fla takes 5 s,
    paid by every process that lists the suite's cells. A package that is installed but broken fails
    when the peer is built, and that error is the cell's row.
    """
    if importlib.util.find_spec(module) is None:
        return f"{package} is not installed (no module named {module!r}); {PEERS_EXTRA}"
    return None


class Columns(torch.nn.Module):
    """Picks a slice of the feature axis: stands in for the package's key and value input projections."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.start : self.stop]


Positive = Annotated[int, AtLeast(1)]
NonNegative = Annotated[int, AtLeast(0)]


def tokens(*tensors: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) tensors -> one (B, N, sum of H*d) token-major input for a layer's column pickers."""
    return torch.cat([x.transpose(1, 2).flatten(2) for x in tensors], dim=-1)


def split_heads(out: torch.Tensor, heads: int) -> torch.Tensor:
    """A layer's (B, N, H*d) output -> (B, H, N, d), a view."""
    return out.unflatten(-1, (heads, -1)).transpose(1, 2)


def self_attention_only(problem: Problem, package: str, module: str) -> str | None:
    if problem.q_len != problem.kv_len:
        return f"{package} attends one sequence to itself: it needs q_len == kv_len"
    return missing_reason(module, package)


def all_keys_valid(problem: Problem) -> torch.Tensor:
    return torch.ones(problem.batch, problem.kv_len, dtype=torch.bool, device=problem.device)


def positive_ints(*values: object) -> bool:
    """Whether the values can be used in a length rule (the builder gives the one-line error for the rest)."""
    return all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in values)
