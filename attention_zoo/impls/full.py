"""Textbook attention, softmax(Q K^T / sqrt(d) + mask) V, materialising the N x N scores."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from attention_zoo.interface import Attention
from attention_zoo.problem import Problem
from attention_zoo.registry import register


class FullAttention(Attention):
    """The baseline everyone compares with: every score is materialised, O(N^2) time and memory."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        self.scale = 1.0 / math.sqrt(problem.head_dim)
        allowed = problem.allowed_mask() if problem.features & {"causal", "padding"} else None
        # an additive mask built once, so the call does only the attention's own work
        self.score_mask = (
            None
            if allowed is None
            else torch.zeros(allowed.shape, dtype=problem.compute_dtype, device=problem.device).masked_fill(
                ~allowed, float("-inf")
            )
        )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, kv_heads, kv_len, head_dim = k.shape
        group = q.shape[1] // kv_heads
        compute = self.problem.compute_dtype  # float32 scores and sums for half-precision inputs
        # scaled before the product: q k^T of large inputs overflows float16 where the logit itself fits
        q_scaled = q.to(compute) * self.scale
        # fold the query heads of one group into the query axis so GQA needs no copy of K and V
        q_grouped = q_scaled.reshape(batch, kv_heads, group * q.shape[2], head_dim)
        scores = q_grouped @ k.to(compute).transpose(-1, -2)  # (B, Hkv, G*Nq, Nk)
        scores = scores.view(batch, kv_heads, group, q.shape[2], kv_len)
        if self.score_mask is not None:
            scores = scores + self.score_mask[:, :, None]  # (B, 1, 1, Nq, Nk)
        probs = torch.softmax(scores, dim=-1).view(batch, kv_heads, group * q.shape[2], kv_len)
        return (probs @ v.to(compute)).view(q.shape).to(q.dtype)


def rectangle_flops(problem: Problem, hparams: Mapping[str, Any]) -> float:
    """Executed forward FLOPs of materialising every score: all Nq x Nk pairs, masked ones included."""
    return 4.0 * problem.batch * problem.q_heads * problem.head_dim * problem.q_len * problem.kv_len


@register(family="full", exact=True, time="N^2", memory="N^2", flops_executed=rectangle_flops)
def full(problem: Problem) -> Attention:
    """Textbook softmax(QK^T/sqrt(d) + mask) V with the N x N scores materialised."""
    return FullAttention(problem)
