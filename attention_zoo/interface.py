"""The one interface every implementation is built to: impl(q, k, v) -> out, plus its own oracle."""

from __future__ import annotations

import torch

from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention


def builds_graph(*tensors: torch.Tensor) -> bool:
    """Whether a call on these inputs records an autograd graph (grad mode on and an input needing a gradient)."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in tensors)


class Attention(torch.nn.Module):
    """A built implementation for one problem: call it as impl(q, k, v) -> out.

    q (B, Hq, Nq, D); k, v (B, Hkv, Nk, D); out (B, Hq, Nq, D). Everything that can be prepared
    ahead (projections, random features, masks, compiled code) is prepared in __init__, so that
    building is measured apart from calling.
    """

    def __init__(self, problem: Problem) -> None:
        super().__init__()
        self.problem = problem
        # the kernel that ran, for entries that pick one at run time (xformers' operators, Triton's tiles)
        self.kernel = ""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_state(self, k: torch.Tensor, v: torch.Tensor):
        """The cache or state a decode step reads, from the context k, v (B, Hkv, L, D); see attention_zoo/decode.py."""
        raise NotImplementedError(f"{type(self).__name__} takes no decode steps")

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state):
        """(out (B, Hq, T, D), the updated state) for T new queries and their own new k, v (B, Hkv, T, D)."""
        raise NotImplementedError(f"{type(self).__name__} takes no decode steps")

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The float64 dense form of exactly what this implementation claims to compute.

        Exact entries compute attention under the problem's causal and padding masks; entries that
        compute something else (a window, projections, random features) override this.
        """
        return dense_attention(q, k, v, self.problem.allowed_mask())
