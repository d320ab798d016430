"""Linear attention (Katharopoulos et al. 2020): softmax's exp(q^T k) replaced by phi(q)^T phi(k), phi = elu + 1.

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j))

costs O(N*d^2) instead of O(N^2*d): the sums over keys are one d x (d+1) state, shared by every query.
No 1/sqrt(d) scale (the paper has none; any constant would cancel in the normalisation). Conventions:
- Causal (bottom-right): query i sums keys j <= i + (Nk - Nq). Chunked prefix sums over `causal_chunk`
  positions: every chunk's state phi(K_c)^T [V_c, 1] at once, an exclusive cumulative sum over chunks
  (the keys before the first query's position are every chunk's initial state), and inside a chunk the
  masked c x c quadratic form. No Python loop over chunks; per-position d x d states never exist.
- Padding: padded keys get phi = 0, so they add nothing to either sum. Key 0 is always real and every
  query sees it, so no denominator is zero.
- GQA: the query heads of a group are stacked on the query axis against their one key/value state.
- Cross-attention: non-causal, any Nq and Nk; causal, Nq <= Nk (the problem's rule).
- Half-precision inputs are computed in float32 (the sums run over N positions); the output is in the
  input dtype.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F

from attention_zoo.interface import Attention
from attention_zoo.padding import pad_rows
from attention_zoo.problem import Problem
from attention_zoo.reference import expand_kv_heads
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1: positive, so every kernel value and normaliser is positive."""
    return F.elu(x).add_(1.0)  # in place: elu's backward reads its input, not its output


def linear_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """A = phi(Q) phi(K)^T in float64, masked to `allowed` (B, 1, Nq, Nk); out = A V / A 1."""
    q, k, v = q.double(), k.double(), v.double()
    kernel = elu_feature_map(q) @ expand_kv_heads(elu_feature_map(k), q.shape[1]).transpose(-1, -2)
    kernel = kernel * allowed
    return (kernel @ expand_kv_heads(v, q.shape[1])) / kernel.sum(-1, keepdim=True)


class LinearAttention(Attention):
    """phi(Q) (phi(K)^T [V, 1]) with phi = elu + 1; causal by chunked prefix sums."""

    def __init__(self, problem: Problem, causal_chunk: int) -> None:
        super().__init__(problem)
        self.chunk = min(causal_chunk, problem.q_len)
        self.compute_dtype = torch.float32 if problem.dtype in ("float16", "bfloat16") else problem.torch_dtype
        mask = problem.key_padding_mask()  # (B, Nk) or None
        self.register_buffer("key_keep", None if mask is None else mask[:, None, :, None].to(self.compute_dtype))
        # (G*c, c): the causal mask of one chunk, repeated for the G query heads stacked on its rows
        causal = torch.ones(self.chunk, self.chunk, dtype=self.compute_dtype, device=problem.device).tril_()
        self.register_buffer("chunk_causal", causal.repeat(problem.group_size, 1))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out_dtype = q.dtype
        q, k, v = (x.to(self.compute_dtype) for x in (q, k, v))
        batch, kv_heads, kv_len, head_dim = k.shape
        group, q_len = q.shape[1] // kv_heads, q.shape[2]
        phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
        if self.key_keep is not None:
            phi_k = phi_k * self.key_keep
        v_ones = torch.cat([v, v.new_ones(batch, kv_heads, kv_len, 1)], dim=-1)  # numerator and normaliser at once
        if self.problem.causal:
            out = self._causal(phi_q, phi_k, v_ones)  # (B, Hkv, G, Nq, d+1)
        else:
            state = phi_k.transpose(-1, -2) @ v_ones  # (B, Hkv, d, d+1)
            out = (phi_q.reshape(batch, kv_heads, group * q_len, head_dim) @ state).view(
                batch, kv_heads, group, q_len, -1
            )
        out = out[..., :head_dim] / out[..., head_dim:]
        return out.reshape(batch, kv_heads * group, q_len, head_dim).to(out_dtype)

    def _causal(self, phi_q: torch.Tensor, phi_k: torch.Tensor, v_ones: torch.Tensor) -> torch.Tensor:
        """phi_q (B, Hq, Nq, d); phi_k (B, Hkv, Nk, d); v_ones (B, Hkv, Nk, d+1) -> (B, Hkv, G, Nq, d+1)."""
        batch, kv_heads, kv_len, head_dim = phi_k.shape
        q_len, c = phi_q.shape[2], self.chunk
        group, chunks = phi_q.shape[1] // kv_heads, -(-q_len // c)
        offset, pad = kv_len - q_len, chunks * c - q_len
        # keys before the first query's position are seen by every query: the initial state
        initial = phi_k[:, :, :offset].transpose(-1, -2) @ v_ones[:, :, :offset]  # (B, Hkv, d, d+1)
        # key offset + i sits at query i: chunk both alike (zero padding adds nothing)
        k_chunks = pad_rows(phi_k[:, :, offset:], pad).view(batch, kv_heads, chunks, c, head_dim)
        v_chunks = pad_rows(v_ones[:, :, offset:], pad).view(batch, kv_heads, chunks, c, head_dim + 1)
        chunk_states = k_chunks.transpose(-1, -2) @ v_chunks  # (B, Hkv, nc, d, d+1)
        before = chunk_states.cumsum(2).sub_(chunk_states).add_(initial[:, :, None])  # exclusive prefix sums
        # queries: (B, Hq, Nq, d) -> (B, Hkv, nc, G*c, d), a chunk's G heads stacked on its rows
        q_chunks = pad_rows(phi_q, pad).reshape(batch, kv_heads, group, chunks, c, head_dim)
        q_chunks = q_chunks.transpose(2, 3).reshape(batch, kv_heads, chunks, group * c, head_dim)
        within = (q_chunks @ k_chunks.transpose(-1, -2)).mul_(self.chunk_causal)  # (B, Hkv, nc, G*c, c)
        out = (q_chunks @ before).add_(within @ v_chunks)  # (B, Hkv, nc, G*c, d+1)
        out = out.view(batch, kv_heads, chunks, group, c, head_dim + 1).transpose(2, 3)
        # padded query rows are cut before the division: their 0/0 never exists
        return out.reshape(batch, kv_heads, group, chunks * c, head_dim + 1)[:, :, :, :q_len]

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return linear_dense(q, k, v, self.problem.allowed_mask())


def _flops(problem: Problem, hparams: dict) -> float:
    d = problem.head_dim
    q_rows, k_rows = problem.q_heads * problem.q_len, problem.kv_heads * problem.kv_len
    sums = 2 * k_rows * d * (d + 1) + 2 * q_rows * d * (d + 1)  # phi(K)^T [V, 1], and phi(Q) times it
    within_chunks = 0
    if problem.causal:
        within_chunks = 2 * q_rows * min(hparams["causal_chunk"], problem.q_len) * (2 * d + 1)
    return float(problem.batch * (sums + within_chunks))


@register(
    family="kernel",
    exact=False,
    time="N*d*(d+c)",
    memory="N*(d+c)",
    flops=_flops,
    check_hparams={"causal_chunk": 16},
)
def linear_attention(problem: Problem, *, causal_chunk: Annotated[int, AtLeast(1)] = 64) -> Attention:
    """Linear attention (Katharopoulos): phi = elu + 1, phi(Q)(phi(K)^T V) with its normaliser, in O(N*d^2)."""
    return LinearAttention(problem, causal_chunk)
