"""flash-linear-attention's PyTorch reference beside our linear_attention (impls/linear_attention.py)."""

from __future__ import annotations

import importlib
import warnings

import torch

from attention_zoo.impls.linear_attention import elu_feature_map, linear_dense
from attention_zoo.interface import Attention
from attention_zoo.peers.common import (
    PEER_DECODE,
    missing_reason,
)
from attention_zoo.problem import Problem
from attention_zoo.registry import register

FLA_CHUNK = 64  # naive_chunk_linear_attn's fixed chunk size


def _import_fla_naive():
    with warnings.catch_warnings():  # fla warns at import that Triton is unavailable on CPU
        warnings.simplefilter("ignore")
        return importlib.import_module("fla.ops.linear_attn.naive")


class PeerFlaLinearAttention(Attention):
    """flash-linear-attention's PyTorch reference, fla.ops.linear_attn.naive.naive_chunk_linear_attn.

    Its only CPU path: fla's kernels (and its elu+1 feature map, fla.modules.activations.elu_p1) are
    Triton. So phi = elu + 1 is applied here in torch, then naive_chunk_linear_attn(normalize=True)
    computes causal linear attention by chunks of 64: chunk states, their cumulative sum, the masked
    intra-chunk product, and the normaliser q . cumsum(k) + 1e-10 (its 1/sqrt(d) scale cancels). It is
    causal only, needs N a multiple of 64, takes (B, N, H, d) (a transposed copy per call each way),
    and has no padding, GQA or cross-attention.
    """

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        self.chunk_linear_attention = _import_fla_naive().naive_chunk_linear_attn

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        phi_q, phi_k = (elu_feature_map(x).transpose(1, 2) for x in (q, k))
        out = self.chunk_linear_attention(phi_q, phi_k, v.transpose(1, 2), normalize=True)
        return out.transpose(1, 2).to(q.dtype)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return linear_dense(q, k, v, self.problem.allowed_mask())


def _fla_availability(problem: Problem) -> str | None:
    if not problem.causal:
        return "fla's PyTorch reference of linear attention (naive_chunk_linear_attn) is causal only"
    if problem.q_len % FLA_CHUNK:
        return f"fla's naive_chunk_linear_attn cuts N into chunks of {FLA_CHUNK}: it needs N a multiple of it"
    return missing_reason("fla", "flash-linear-attention")


def _fla_flops(problem: Problem, hparams: dict) -> float:
    n, d, c = problem.q_len, problem.head_dim, FLA_CHUNK
    return float(problem.batch * problem.q_heads * (4 * n * d * d + 4 * n * c * d))


@register(
    decode=PEER_DECODE,
    family="kernel",
    exact=False,
    time="N*d*(d+c)",
    memory="N*(d+c)",
    features=("causal",),
    flops=_fla_flops,
    availability=_fla_availability,
)
def peer_fla_linear_attention(problem: Problem) -> Attention:
    """flash-linear-attention's PyTorch reference of causal linear attention (elu+1 applied in torch)."""
    return PeerFlaLinearAttention(problem)
