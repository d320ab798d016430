"""xformers.ops.memory_efficient_attention, imported only when the entry is checked or built."""

from __future__ import annotations

import functools
import importlib

import torch

from attention_zoo.interface import Attention
from attention_zoo.problem import Problem
from attention_zoo.registry import register


def _ops():
    return importlib.import_module("xformers.ops")


def _one_line(error: Exception) -> str:
    """xformers explains a missing kernel over many lines; keep the reasons, drop the input dump."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(("query", "key", "value", "attn_bias", "p ", "p:"))]
    return " ".join(reasons[1:] or reasons)


class XformersAttention(Attention):
    """memory_efficient_attention with its BMGHK layout (GQA as groups) and the problem's masks as biases."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        fmha = importlib.import_module("xformers.ops.fmha")
        self.memory_efficient_attention = _ops().memory_efficient_attention
        if problem.kv_valid_lens is not None:
            allowed = problem.allowed_mask().expand(problem.batch, problem.q_heads, problem.q_len, problem.kv_len)
            bias = torch.zeros(allowed.shape, dtype=problem.torch_dtype, device=problem.device)
            bias = bias.masked_fill(~allowed, float("-inf"))
            # (B, Hkv, G, Nq, Nk) -> BMGHK's bias layout (B, G, H, Nq, Nk)
            self.attn_bias = bias.view(
                problem.batch, problem.kv_heads, problem.group_size, problem.q_len, problem.kv_len
            ).transpose(1, 2)
        elif problem.causal:
            self.attn_bias = fmha.attn_bias.LowerTriangularFromBottomRightMask()
        else:
            self.attn_bias = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, kv_heads, kv_len, head_dim = k.shape
        group = q.shape[1] // kv_heads
        # (B, Hkv*G, N, D) -> BMGHK (B, N, Hkv, G, D); K and V broadcast over G without a copy
        q_bmghk = q.view(batch, kv_heads, group, q.shape[2], head_dim).permute(0, 3, 1, 2, 4)
        k_bmghk = k.permute(0, 2, 1, 3).unsqueeze(3).expand(batch, kv_len, kv_heads, group, head_dim)
        v_bmghk = v.permute(0, 2, 1, 3).unsqueeze(3).expand(batch, kv_len, kv_heads, group, head_dim)
        out = self.memory_efficient_attention(q_bmghk, k_bmghk, v_bmghk, attn_bias=self.attn_bias)
        return out.permute(0, 2, 3, 1, 4).reshape(q.shape)


@functools.cache
def _kernel_reason(device: str, dtype: str, head_dim: int) -> str | None:
    probe = Problem(batch=1, q_heads=1, q_len=4, head_dim=head_dim, dtype=dtype, device=device)
    try:
        XformersAttention(probe)(*probe.make_inputs())
    except NotImplementedError as error:
        return f"xformers has no kernel for this problem: {_one_line(error)}"
    return None


def _availability(problem: Problem) -> str | None:
    try:
        _ops()
    except ImportError as error:
        return f"xformers is not installed ({error}); pip install 'attention-zoo[xformers]'"
    return _kernel_reason(problem.device, problem.dtype, problem.head_dim)


@register(family="flash", exact=True, time="N^2", memory="N", availability=_availability)
def xformers(problem: Problem) -> Attention:
    """xformers.ops.memory_efficient_attention (CUDA kernels; none on CPU)."""
    return XformersAttention(problem)
