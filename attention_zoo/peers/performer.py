"""performer-pytorch's FastAttention beside our performer (impls/performer.py)."""

from __future__ import annotations

import contextlib
import importlib
import io
from typing import Annotated

import torch

from attention_zoo.interface import Attention
from attention_zoo.peers.common import (
    PEER_DECODE,
    missing_reason,
)
from attention_zoo.problem import Problem
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast

# performer_pytorch's constants: softmax_kernel's eps and causal_linear_attention(_noncuda)'s eps
FEATURE_EPS = 1e-4
CAUSAL_DENOMINATOR_EPS = 1e-6


class PeerPerformer(Attention):
    """performer_pytorch.FastAttention: FAVOR+ positive random features of the softmax kernel.

    nb_features=num_features, ortho_scaling=0 (orthogonal rows with chi-distributed norms), softmax
    kernel, projection drawn from `seed`. Its features add eps=1e-4 and subtract a stabiliser that does
    not cancel because of that eps: the row max for queries and the max over all keys and features for
    keys (so a causal output depends slightly on later keys); its causal denominator adds 1e-6 per
    feature. Causal runs its prefix-sum fallback (128 chunks, d x m context per position kept for
    backward) unless fast_transformers' CUDA kernel is installed. redraw=True draws a new projection at
    every call, as its ProjectionUpdater does with feature_redraw_interval=1. No float16: that
    stabiliser leaves normalisers near 1e-5, whose reciprocal overflows float16 to inf and the output to NaN.
    """

    def __init__(self, problem: Problem, num_features: int, redraw: bool, seed: int) -> None:
        super().__init__(problem)
        self.redraw = redraw
        # FastAttention prints a notice when it falls back from the CUDA causal kernel; the doc says it
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):
            torch.manual_seed(seed)
            fast_attention = importlib.import_module("performer_pytorch").FastAttention(
                dim_heads=problem.head_dim,
                nb_features=num_features,
                ortho_scaling=0,
                causal=problem.causal,
                generalized_attention=False,
            )
        self.fast_attention = fast_attention.to(device=problem.device, dtype=problem.torch_dtype).requires_grad_(False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.redraw:
            self.fast_attention.redraw_projection_matrix(q.device)
        return self.fast_attention(q, k, v)

    def _features(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """softmax_kernel in float64: ratio * (exp(x'w - |x'|^2/2 - stabiliser) + eps), x' = x / d^(1/4)."""
        projection = self.fast_attention.projection_matrix.double()  # (m, d)
        scaled = x * x.shape[-1] ** -0.25
        projected = scaled @ projection.T  # (B, H, N, m)
        half_norm = (scaled**2).sum(dim=-1, keepdim=True) / 2
        stabiliser = projected.amax(dim=-1 if is_query else (-1, -2), keepdim=True).detach()
        return projection.shape[0] ** -0.5 * (torch.exp(projected - half_norm - stabiliser) + FEATURE_EPS)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q_features, k_features = self._features(q, is_query=True), self._features(k, is_query=False)
        kernel = q_features @ k_features.transpose(-1, -2)  # (B, H, Nq, Nk), all positive
        if self.problem.causal:
            kernel = kernel.masked_fill(~self.problem.allowed_mask(), 0.0)
        denominator = kernel.sum(dim=-1, keepdim=True)
        if self.problem.causal:
            denominator = denominator + CAUSAL_DENOMINATOR_EPS * q_features.sum(dim=-1, keepdim=True)
        return kernel @ v / denominator


def _performer_availability(problem: Problem) -> str | None:
    if problem.causal and problem.q_len != problem.kv_len:
        return "performer_pytorch's causal prefix sums pair query i with key i, so causal needs q_len == kv_len"
    return missing_reason("performer_pytorch", "performer-pytorch")


def _performer_flops(problem: Problem, hparams: dict) -> float:
    # features of q and k (2*N*m*d each), then K'^T V and Q'(K'^T V) or their prefix-sum form (2*N*m*d each)
    per_head = 4.0 * hparams["num_features"] * problem.head_dim * (problem.q_len + problem.kv_len)
    return problem.batch * problem.q_heads * per_head


@register(
    decode=PEER_DECODE,
    family="kernel",
    exact=False,
    time="N*m*d",
    memory="N*m*d",  # the causal fallback keeps a d x m context per position; non-causal holds N*m
    dtypes=("float32", "bfloat16", "float64"),
    features=("causal", "cross"),
    flops=_performer_flops,
    availability=_performer_availability,
    oracle_hparams={"num_features": 16},
)
def peer_performer(
    problem: Problem, *, num_features: Annotated[int, AtLeast(1)] = 256, redraw: bool = False, seed: int = 0
) -> Attention:
    """performer-pytorch's FastAttention (FAVOR+ softmax kernel); num_features and redraw as in performer."""
    return PeerPerformer(problem, num_features, redraw, seed)
