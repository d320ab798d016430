"""Textbook attention, softmax(Q K^T / sqrt(d) + mask) V, materialising the N x N scores."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from attention_zoo.decode import KVCache, grouped_queries, step_bias
from attention_zoo.interface import Attention
from attention_zoo.masks import additive_bias
from attention_zoo.problem import Problem
from attention_zoo.registry import FEATURES, register


class FullAttention(Attention):
    """The baseline everyone compares with: every score is materialised, O(N^2) time and memory."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        self.scale = 1.0 / math.sqrt(problem.head_dim)
        allowed = problem.allowed_mask() if problem.features & {"causal", "padding", "packed"} else None
        # an additive mask built once, so the call does only the attention's own work
        self.score_mask = None if allowed is None else additive_bias(allowed, problem.compute_dtype)

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

    def decode_state(self, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """The KV cache: the context's keys and values, with room for the problem's T new tokens."""
        return KVCache.from_context(k, v, self.problem.q_len)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache):
        """The T new queries against every cached key and their own (causal among themselves), scores materialised."""
        cache = cache.append(k, v)
        keys, values = cache.keys, cache.values  # (B, Hkv, L+T, D)
        compute, steps = self.problem.compute_dtype, q.shape[2]
        # keys on the rows: the product streams the cache row by row (q @ K^T reads it transposed, ~2x slower)
        scores = keys.to(compute) @ grouped_queries(q.to(compute) * self.scale, keys.shape[1]).transpose(-1, -2)
        bias = step_bias(steps, keys.shape[2], compute, q.device)
        if bias is not None:  # (B, Hkv, L+T, G, T) + (L+T, T)
            scores = (scores.view(*keys.shape[:3], -1, steps) + bias.T[:, None]).flatten(3, 4)
        probs = torch.softmax(scores, dim=2)  # (B, Hkv, L+T, G*T)
        out = probs.transpose(-1, -2) @ values.to(compute)  # (B, Hkv, G*T, D)
        return out.view(q.shape).to(q.dtype), cache


def rectangle_flops(problem: Problem, hparams: Mapping[str, Any]) -> float:
    """Executed forward FLOPs of materialising every score: all Nq x Nk pairs, masked ones included."""
    return 4.0 * problem.batch * problem.q_heads * problem.head_dim * problem.q_len * problem.kv_len


@register(
    family="full",
    exact=True,
    time="N^2",
    memory="N^2",
    features=FEATURES,
    flops_executed=rectangle_flops,
    decode=True,
)
def full(problem: Problem) -> Attention:
    """Textbook softmax(QK^T/sqrt(d) + mask) V with the N x N scores materialised."""
    return FullAttention(problem)
