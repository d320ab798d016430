"""Linformer (Wang et al. 2020): keys and values projected along the sequence axis to k rows.

softmax(Q (E K)^T / sqrt(d)) (F V) with fixed random E, F of shape (k, max_len), so a query attends
k projected rows instead of N keys: O(N*k) time and memory. Conventions:
- E and F are drawn once from N(0, 1/k), the Johnson-Lindenstrauss projection of the paper's
  Theorem 1 (the reference linformer package draws U(-1/sqrt(k), 1/sqrt(k)), the same scale up to
  sqrt(3)); they are buffers, not trained here.
- A sequence shorter than max_len uses the first Nk columns, E[:, :Nk], as the paper does for
  inputs shorter than the projection's length.
- Padded keys and values are zeroed before the projection, so a projected row mixes real keys only.
- Not causal: each projected row mixes every key position, so no query can be kept from the future.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F

from attention_zoo.interface import Attention
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast


def _availability(problem: Problem) -> str | None:
    if problem.causal:
        return (
            "the paper's formulation is not causal: each projected key/value row is a mix of every "
            "position, future ones included"
        )
    return None


class LinformerAttention(Attention):
    """Attention over k sequence-projected key/value rows with fixed random projections E, F."""

    def __init__(
        self, problem: Problem, proj_len: int, share_kv: bool, per_head: bool, max_len: int | None, seed: int
    ) -> None:
        super().__init__(problem)
        max_len = problem.kv_len if max_len is None else max_len
        generator = torch.Generator().manual_seed(seed)
        heads = problem.kv_heads if per_head else 1
        std = 1.0 / math.sqrt(proj_len)

        def draw() -> torch.Tensor:  # (heads, k, max_len), shared across heads when heads == 1
            e = torch.randn(heads, proj_len, max_len, generator=generator, dtype=torch.float64) * std
            return e.to(device=problem.device, dtype=problem.compute_dtype)

        self.register_buffer("key_projection", draw())
        self.register_buffer("value_projection", self.key_projection if share_kv else draw())
        mask = problem.key_padding_mask()  # (B, Nk) or None
        self.register_buffer("key_keep", None if mask is None else mask[:, None, :, None].to(problem.compute_dtype))

    def _project(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Hkv, Nk, D) -> (B, Hkv, k, D): E[:, :Nk] K and F[:, :Nk] V, padded positions zeroed first."""
        kv_len = k.shape[2]
        if self.key_keep is not None:
            k, v = k * self.key_keep, v * self.key_keep
        e = self.key_projection[..., :kv_len].to(k.dtype)
        f = self.value_projection[..., :kv_len].to(v.dtype)
        return e @ k, f @ v

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        compute = self.problem.compute_dtype  # float32 projections and scores for half-precision inputs
        k_proj, v_proj = self._project(k.to(compute), v.to(compute))
        # every projected row is visible to every query: plain attention over k rows, GQA by SDPA
        out = F.scaled_dot_product_attention(q.to(compute), k_proj, v_proj, enable_gqa=q.shape[1] != k.shape[1])
        return out.to(q.dtype)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_proj, v_proj = self._project(k.double(), v.double())
        return dense_attention(q, k_proj, v_proj)


def linformer_flops(problem: Problem, hparams: dict) -> float:
    """Projecting K and V to proj_len rows, then attention over those rows (2 FLOPs per multiply-add)."""
    proj_len = hparams["proj_len"]
    projections = 2 * 2 * proj_len * problem.kv_len * problem.head_dim * problem.kv_heads
    attention = 4 * problem.q_heads * problem.q_len * proj_len * problem.head_dim
    return float(problem.batch * (projections + attention))


@register(
    family="low_rank",
    exact=False,
    time="N*k",
    memory="N*k",
    features=("padding", "gqa", "cross"),
    flops=linformer_flops,
    availability=_availability,
    oracle_hparams={"proj_len": 8, "per_head": True, "max_len": 96},
    decode="every projected key row E K mixes in every position, future ones too: no causal form, so no decode step",
)
def linformer(
    problem: Problem,
    *,
    proj_len: Annotated[int, AtLeast(1)] = 256,
    share_kv: bool = False,
    per_head: bool = False,
    max_len: Annotated[int | None, AtLeast("kv_len")] = None,  # null: kv_len
    seed: int = 0,
) -> Attention:
    """Linformer: softmax(Q (E K)^T / sqrt(d)) (F V), random E, F (k x max_len) project the key axis."""
    return LinformerAttention(problem, proj_len, share_kv, per_head, max_len, seed)
