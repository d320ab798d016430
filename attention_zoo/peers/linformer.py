"""The linformer package's attention core beside our linformer (impls/linformer.py)."""

from __future__ import annotations

import importlib
from typing import Annotated

import torch

from attention_zoo.impls.linformer import linformer_flops
from attention_zoo.interface import Attention
from attention_zoo.peers.common import (
    PEER_DECODE,
    Columns,
    missing_reason,
)
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast


class PeerLinformer(Attention):
    """linformer.LinformerSelfAttention with its input and output projections replaced by identities.

    What runs is the package's own forward: keys and values projected along the sequence by its
    proj_k / proj_v (kv_len x proj_len, uniform(-1/sqrt(proj_len), 1/sqrt(proj_len)) init), then softmax
    attention with scale 1/sqrt(d). It takes token-major (B, N, H*d) tensors and one context for keys
    and values, so each call transposes q and concatenates k and v into one context (one copy each),
    and returns its output as a transposed view. share_kv=True ties proj_v to proj_k (the paper's
    E = F); the package's own share_kv would also use the keys as values, ignoring v. MQA runs through
    its one_kv_head; other GQA, causal and padding are not in the package.
    """

    def __init__(self, problem: Problem, proj_len: int, share_kv: bool, seed: int) -> None:
        super().__init__(problem)
        heads, head_dim = problem.q_heads, problem.head_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = importlib.import_module("linformer").LinformerSelfAttention(
                dim=heads * head_dim,
                seq_len=problem.kv_len,
                k=proj_len,
                heads=heads,
                dim_head=head_dim,
                one_kv_head=problem.kv_heads == 1,
                share_kv=False,
            )
        kv_width = problem.kv_heads * head_dim
        module.to_q, module.to_out = torch.nn.Identity(), torch.nn.Identity()
        module.to_k, module.to_v = Columns(0, kv_width), Columns(kv_width, 2 * kv_width)
        if share_kv:
            module.proj_v = module.proj_k
        # its sequence projections are fixed, as ours are: no graph for them in the forward, no gradient in backward
        self.linformer = module.to(device=problem.device, dtype=problem.torch_dtype).requires_grad_(False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, q_heads, q_len, head_dim = q.shape
        tokens = q.transpose(1, 2).reshape(batch, q_len, q_heads * head_dim)  # (B, Nq, Hq*d)
        context = torch.cat((k.transpose(1, 2), v.transpose(1, 2)), dim=2).flatten(2)  # (B, Nk, 2*Hkv*d)
        out = self.linformer(tokens, context=context)  # (B, Nq, Hq*d)
        return out.view(batch, q_len, q_heads, head_dim).transpose(1, 2)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        proj_k, proj_v = self.linformer.proj_k.double(), self.linformer.proj_v.double()
        k_projected = torch.einsum("bhnd,nk->bhkd", k, proj_k)  # (B, Hkv, proj_len, d)
        v_projected = torch.einsum("bhnd,nk->bhkd", v, proj_v)
        return dense_attention(q, k_projected, v_projected)


def _linformer_availability(problem: Problem) -> str | None:
    if problem.kv_heads not in (1, problem.q_heads):
        return "linformer shares key/value heads only as one head for all (one_kv_head), not in groups"
    return missing_reason("linformer", "linformer")


@register(
    decode=PEER_DECODE,
    family="low_rank",
    exact=False,
    time="N*k",
    memory="N*k",
    features=("cross", "gqa"),
    flops=linformer_flops,
    availability=_linformer_availability,
    oracle_hparams={"proj_len": 8},
)
def peer_linformer(
    problem: Problem, *, proj_len: Annotated[int, AtLeast(1)] = 256, share_kv: bool = False, seed: int = 0
) -> Attention:
    """The linformer package's LinformerSelfAttention core; proj_len and share_kv as in linformer."""
    return PeerLinformer(problem, proj_len, share_kv, seed)
