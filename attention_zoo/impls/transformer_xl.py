"""Transformer-XL (Dai et al. 2019): segment-level recurrence with a detached memory, relative positions.

The sequence is cut into segments of L positions; the queries of a segment attend, causally, to the
last M cached key/value positions before the segment (the memory) and to their own segment. So a
query at absolute position i in the segment starting at s sees keys j with max(s - M, 0) <= j <= i.
Conventions:
- In the paper the memory is the previous segment's hidden states; in this attention-only setting
  it is the previous M key/value vectors, already projected. The memory is detached, as in the
  paper: gradients reach a key or value only through the queries of its own segment.
- relative=True (the paper's scoring), with r_p = W_r R_p for sinusoidal R_p at distance p = i - j:
      score(i, j) = [(q_i + u)^T k_j + (q_i + v)^T r_{i-j}] / sqrt(d)
  i.e. the terms (a) content, (b) content-position, (c) global content bias u, (d) global position
  bias v. W_r (d x d), u and v are per query head, drawn once from N(0, 1/d) with the seed.
  The position term is computed for the L+M distances only and aligned by the relative-shift trick.
- relative=False: exact attention under the segment-plus-memory mask.
- Self-attention only (Nq == Nk) and causal by construction; padded keys are never attended.
Time O(N*(L+M)*d); one segment's L x (L+M) scores live at a time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated

import torch
import torch.nn.functional as F

from attention_zoo.decode import KVCache
from attention_zoo.interface import Attention
from attention_zoo.masks import additive_bias
from attention_zoo.problem import Problem
from attention_zoo.reference import expand_kv_heads
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast


def segment_memory_allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, segment_len: int, mem_len: int) -> torch.Tensor:
    """bool (len(q_pos), len(k_pos)) from absolute positions: j <= i and j >= (start of i's segment) - M."""
    segment_start = torch.div(q_pos, segment_len, rounding_mode="floor") * segment_len
    return (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] >= segment_start[:, None] - mem_len)


def sinusoid_positions(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """(P, dim) float64: [sin(p * f), cos(p * f)] with f = 10000^(-2i/dim), as in Transformer-XL."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = distances.double()[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[:, :dim]


def relative_shift(scores: torch.Tensor) -> torch.Tensor:
    """(..., Lq, K) contiguous scores by descending distance (column c is distance K-1-c) -> by key.

    The paper's trick (pad a zero column on the left, view as (K+1, Lq), drop the first row) as a
    strided view, without the two copies: entry (i, j) reads flat index (Lq-1) + i*(K-1) + j of each
    (Lq, K) block, which holds distance (K - Lq) + i - j for j <= i + K - Lq; the rest is garbage to
    be masked. The last index read is Lq*K - 1, so the view never leaves its block.
    """
    *_, q_len, k_len = scores.shape
    return scores.as_strided(scores.shape, (*scores.stride()[:-2], k_len - 1, 1), scores.storage_offset() + q_len - 1)


def _availability(problem: Problem) -> str | None:
    if problem.q_len != problem.kv_len:
        return "segment recurrence is self-attention: queries and keys must be the same positions (q_len == kv_len)"
    if not problem.causal:
        return "segment recurrence is causal by construction: a query never sees later positions, so run causal=True"
    return None


def _decode_availability(problem: Problem) -> str | None:
    """A decode step is the recurrence itself: any context length, any T."""
    return None


class TransformerXLAttention(Attention):
    """Segment-by-segment causal attention over [detached memory of M positions; current segment]."""

    def __init__(self, problem: Problem, segment_len: int, mem_len: int, relative: bool, seed: int) -> None:
        super().__init__(problem)
        self.segment_len, self.mem_len, self.relative = segment_len, mem_len, relative
        self.scale = 1.0 / math.sqrt(problem.head_dim)
        device, dtype = problem.device, problem.compute_dtype  # float32 scores and sums for half inputs
        mask = problem.key_padding_mask()  # (B, N) or None
        self.register_buffer(
            "key_padding_bias",
            None if mask is None else additive_bias(mask, dtype)[:, None, None],
        )
        if relative:
            generator = torch.Generator().manual_seed(seed)
            heads, dim = problem.q_heads, problem.head_dim

            def draw(*shape: int) -> torch.Tensor:
                return torch.randn(*shape, generator=generator, dtype=torch.float64) / math.sqrt(dim)

            w_r, u, v = draw(heads, dim, dim), draw(heads, 1, dim), draw(heads, 1, dim)
            span = segment_len + mem_len
            # r_p = W_r R_p, ordered by descending distance span-1 .. 0 as the shift trick expects
            r = sinusoid_positions(torch.arange(span - 1, -1, -1), dim) @ w_r.transpose(-1, -2)  # (H, span, d)
            for name, value in (("position_keys", r), ("content_bias", u), ("position_bias", v)):
                self.register_buffer(name, value.to(device=device, dtype=dtype))
        # (rows, memory length) -> additive causal bias: every full segment past the first M positions shares one
        self.causal_bias: dict[tuple[int, int], torch.Tensor] = {}
        # segment start -> (B, 1, 1, 1) True for sequences whose padding leaves that segment no key at all
        self.keyless: dict[int, torch.Tensor] = {}
        for start in range(0, problem.q_len, segment_len):
            stop, mem_start = min(start + segment_len, problem.q_len), max(start - mem_len, 0)
            shape = (stop - start, start - mem_start)
            if shape not in self.causal_bias:
                q_pos = torch.arange(start, stop, device=device)
                allowed = segment_memory_allowed(
                    q_pos, torch.arange(mem_start, stop, device=device), segment_len, mem_len
                )
                self.causal_bias[shape] = additive_bias(allowed, dtype)
            if problem.kv_valid_lens is not None and mem_start >= min(problem.kv_valid_lens):
                keyless = torch.tensor([n <= mem_start for n in problem.kv_valid_lens], device=device)
                self.keyless[start] = keyless[:, None, None, None]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out_dtype = q.dtype
        q, k, v = (x.to(self.problem.compute_dtype) for x in (q, k, v))
        kv_heads, seq_len = k.shape[1], k.shape[2]
        # segments by torch.split, not slices: a slice's backward zero-fills a tensor as large as the whole
        # input, once per segment (quadratic in N); split's joins the segments' gradients once
        segments = zip(*(x.split(self.segment_len, 2) for x in (q, k, v)), strict=True)
        # without gradients for K or V the memory needs no detaching: each span is one view, no copy
        keep_graph = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)
        k_memory, v_memory = k.detach(), v.detach()
        outputs = []
        for start, (q_seg, k_seg, v_seg) in zip(range(0, seq_len, self.segment_len), segments, strict=True):
            stop, mem_start = min(start + self.segment_len, seq_len), max(start - self.mem_len, 0)
            if keep_graph:  # the memory is detached: no gradient flows into positions of earlier segments
                k_span = torch.cat([k_memory[:, :, mem_start:start], k_seg], dim=2)
                v_span = torch.cat([v_memory[:, :, mem_start:start], v_seg], dim=2)
            else:
                k_span, v_span = k_memory[:, :, mem_start:stop], v_memory[:, :, mem_start:stop]
            bias = self.causal_bias[(stop - start, start - mem_start)]
            if self.key_padding_bias is not None:
                bias = bias + self.key_padding_bias[..., mem_start:stop]  # (B, 1, 1, K)
            keyless = self.keyless.get(start)
            if keyless is not None:  # finite scores for keyless rows, whose output is then zero
                bias = bias.masked_fill(keyless, 0.0)
            if self.relative:
                span = stop - mem_start
                position_q = (q_seg + self.position_bias) * self.scale
                position = position_q @ self.position_keys[:, -span:].transpose(-1, -2)  # (B, Hq, Ls, K)
                bias = relative_shift(position) + bias
                q_seg = q_seg + self.content_bias
            # SDPA fuses the content scores, softmax and the sum over values; the position term rides in the mask
            out = F.scaled_dot_product_attention(
                q_seg, k_span, v_span, attn_mask=bias, scale=self.scale, enable_gqa=kv_heads != q.shape[1]
            )
            outputs.append(out if keyless is None else out.masked_fill(keyless, 0.0))
        return torch.cat(outputs, dim=2).to(out_dtype)

    def _memory_start(self, position: int) -> int:
        """The first position a query at `position` sees: M before the start of its segment."""
        return max(0, position // self.segment_len * self.segment_len - self.mem_len)

    def decode_state(self, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """The memory and the current segment so far: positions from M before the next position's segment on."""
        begin, context = self._memory_start(k.shape[2]), k.shape[2]
        cache = KVCache.from_context(k[:, :, begin:], v[:, :, begin:], self.segment_len + self.problem.q_len)
        return dataclasses.replace(cache, position=context, begin=begin)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache):
        """New queries against [memory; segment so far; their own keys] under the segment-plus-memory mask, the
        relative terms gathered by distance; at a segment boundary the memory becomes the last M positions."""
        cache = cache.append(k, v)
        compute, steps, out_dtype = self.problem.compute_dtype, q.shape[2], q.dtype
        q, keys, values = q.to(compute), cache.keys.to(compute), cache.values.to(compute)
        q_pos = torch.arange(cache.position - steps, cache.position, device=q.device)
        k_pos = torch.arange(cache.begin, cache.position, device=q.device)
        allowed = segment_memory_allowed(q_pos, k_pos, self.segment_len, self.mem_len)  # (T, K)
        bias = torch.zeros(allowed.shape, dtype=compute, device=q.device).masked_fill_(~allowed, float("-inf"))
        if self.relative:
            span = self.position_keys.shape[1]  # column c holds distance span - 1 - c
            by_distance = ((q + self.position_bias) * self.scale) @ self.position_keys.transpose(-1, -2)
            distance = (q_pos[:, None] - k_pos[None, :]).clamp(0, span - 1)  # clamped pairs are masked
            bias = torch.gather(by_distance, -1, (span - 1 - distance).expand(*q.shape[:2], -1, -1)) + bias
            q = q + self.content_bias
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=bias, scale=self.scale, enable_gqa=keys.shape[1] != q.shape[1]
        )
        return out.to(out_dtype), cache.keep_from(self._memory_start(cache.position))

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Float64 dense scores with R_{i-j} gathered per pair and memory keys/values detached."""
        q, k, v = q.double(), expand_kv_heads(k.double(), q.shape[1]), expand_kv_heads(v.double(), q.shape[1])
        seq_len = q.shape[2]
        pos = torch.arange(seq_len, device=q.device)
        allowed = self.problem.allowed_mask() & segment_memory_allowed(pos, pos, self.segment_len, self.mem_len)
        segment = torch.div(pos, self.segment_len, rounding_mode="floor")
        own_segment = segment[:, None] == segment[None, :]  # pairs through which gradients flow
        content_q = q + self.content_bias.double() if self.relative else q
        scores = torch.where(own_segment, content_q @ k.transpose(-1, -2), content_q @ k.detach().transpose(-1, -2))
        if self.relative:
            span = self.position_keys.shape[1]
            by_distance = (q + self.position_bias.double()) @ self.position_keys.double().flip(1).transpose(-1, -2)
            distance = (pos[:, None] - pos[None, :]).clamp(0, span - 1)  # clamped pairs are masked anyway
            scores = scores + torch.gather(by_distance, -1, distance.expand(*by_distance.shape[:2], -1, -1))
        # a query whose keys are all padding outputs zero (and passes no gradient), as in dense_attention
        has_key = allowed.any(-1, keepdim=True)
        logits = (scores * (1.0 / math.sqrt(q.shape[-1]))).masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(logits.masked_fill(~has_key, 0.0), dim=-1) * has_key
        return (probs * own_segment) @ v + (probs * ~own_segment) @ v.detach()


def _pair_flops(problem: Problem, hparams: dict, pairs: int) -> float:
    """Forward FLOPs of scoring `pairs` (query, key) pairs per head, summed over the batch."""
    products = 3 if hparams["relative"] else 2  # q.k and p.v, plus (q + v).r when relative
    return float(2 * products * problem.q_heads * problem.head_dim * pairs)


def _flops(problem: Problem, hparams: dict) -> float:
    """Useful forward FLOPs: the pairs inside the segment-plus-memory mask, padded keys excluded."""
    pos = torch.arange(problem.q_len)
    segment_len = hparams["segment_len"]
    mem_start = (torch.div(pos, segment_len, rounding_mode="floor") * segment_len - hparams["mem_len"]).clamp_min(0)
    valid = torch.tensor(problem.kv_valid_lens or (problem.kv_len,) * problem.batch)[:, None]  # (B, 1)
    pairs = (torch.minimum(pos + 1, valid) - mem_start).clamp_min(0).sum()  # query i sees mem_start .. i
    return _pair_flops(problem, hparams, int(pairs))


def _executed_flops(problem: Problem, hparams: dict) -> float:
    """Executed forward FLOPs: each segment's queries times its memory plus the whole segment."""
    segment_len, mem_len = hparams["segment_len"], hparams["mem_len"]
    pairs = 0
    for start in range(0, problem.q_len, segment_len):
        stop = min(start + segment_len, problem.q_len)
        pairs += (stop - start) * (stop - max(start - mem_len, 0))
    return _pair_flops(problem, hparams, problem.batch * pairs)


@register(
    family="memory",
    exact=False,
    time="N*(L+M)",
    memory="N+L*(L+M)",
    features=("causal", "gqa", "padding"),
    flops=_flops,
    flops_executed=_executed_flops,
    availability=_availability,
    oracle_hparams={"segment_len": 16, "mem_len": 12},
    decode=True,
    decode_availability=_decode_availability,
)
def transformer_xl(
    problem: Problem,
    *,
    segment_len: Annotated[int, AtLeast(1)] = 512,
    mem_len: Annotated[int, AtLeast(0)] = 512,
    relative: bool = True,
    seed: int = 0,
) -> Attention:
    """Transformer-XL attention: causal segments of L attend a detached memory of M positions, relative scores."""
    return TransformerXLAttention(problem, segment_len, mem_len, relative, seed)
