"""Sliding-window attention (Longformer's band), optionally with global tokens, in O(N*w) time and memory.

The window convention, shared with flex.py through `window_predicate` so it lives in one place:
- Query i sits on the key axis at p = i + (Nk - Nq), the bottom-right alignment used for causal.
- Non-causal: query i attends keys j with |j - p| <= window (its own key plus `window` keys on each
  side, at most 2*window + 1 keys). Causal: p - window <= j <= p (its own key plus `window` back).
- Global tokens are the first `global_tokens` key positions 0..g-1 (Longformer): every query attends
  them, and a query whose position p lies in 0..g-1 attends every key. Causal problems stay causal:
  a query sees global key j only when j <= p, and a global query's row is a causal row.
- Padding keys (j >= kv_valid_lens[b]) are never attended. A query left with no key (cross-attention
  with Nq > Nk puts some queries at p < -window) outputs zeros.

The computation is Longformer's chunked band: queries are cut into blocks of `block` rows; block c
attends one contiguous key slab of block + window + right keys (right = window, or 0 when causal),
read as a strided view of K and V (zero keys past the ends). band_kernel.py runs the blocks `chunk` at a time,
so the scores that exist at once are (chunk, G*block, slab + g) and extra memory is O(N*D): no N x N
score matrix, and no (blocks, block, slab) one either, in the forward pass or the backward. Global
keys are g extra score columns softmaxed together with the slab (and masked inside the slab so no
key counts twice); the at most g global query rows are computed as full rows and written over their
banded rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import torch
import torch.nn.functional as F

from attention_zoo.decode import RingCache, grouped_queries
from attention_zoo.impls.band_kernel import DEFAULT_BLOCK, DEFAULT_CHUNK, BandChunks, BandFunction
from attention_zoo.interface import Attention
from attention_zoo.masks import additive_bias
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast

Predicate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


Window = Annotated[int, AtLeast(1)]  # keys on each side of a query's own position
GlobalTokens = Annotated[int, AtLeast(0)]  # leading key positions every query attends


def window_predicate(problem: Problem, window: int, global_tokens: int) -> Predicate:
    """allowed(batch_idx, q_idx, kv_idx) -> bool, broadcasting like a flex_attention mask_mod: the one
    definition of the window + global + causal + padding convention described in the module docstring
    (with packed documents, also: the key is in the query's document).

    Branch-free, with every setting a captured tensor, so a compiled flex_attention treats two problems of
    the same shape as the same graph instead of recompiling for each window, offset or causal flag.
    """

    def constant(value: int) -> torch.Tensor:
        return torch.tensor(value, device=problem.device)

    offset, back, g = constant(problem.causal_offset), constant(window), constant(global_tokens)
    ahead = constant(0 if problem.causal else window)
    # how far right of its position a query may look at all: the whole key axis unless causal
    reach = constant(0 if problem.causal else problem.q_len + problem.kv_len)
    valid = torch.tensor(problem.kv_valid_lens or (problem.kv_len,) * problem.batch, device=problem.device)

    def allowed(batch_idx: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        position = q_idx + offset
        in_band = (kv_idx >= position - back) & (kv_idx <= position + ahead)
        is_global = (kv_idx < g) | ((position >= 0) & (position < g))
        return (in_band | is_global) & (kv_idx <= position + reach) & (kv_idx < valid[batch_idx])

    if problem.doc_lens is None:
        return allowed
    documents = problem.document_ids()

    def within_documents(batch_idx: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return allowed(batch_idx, q_idx, kv_idx) & (documents[q_idx] == documents[kv_idx])

    return within_documents


def window_allowed(problem: Problem, window: int, global_tokens: int) -> torch.Tensor:
    """bool (B, 1, Nq, Nk), True = attend: the dense form of the window convention (for oracles only)."""
    allowed = window_predicate(problem, window, global_tokens)
    batch_idx = torch.arange(problem.batch, device=problem.device)[:, None, None, None]
    q_idx = torch.arange(problem.q_len, device=problem.device)[:, None]
    return allowed(batch_idx, q_idx, torch.arange(problem.kv_len, device=problem.device))


class BandLayout:
    """The block geometry of the banded computation and its masks, all O(N*(w+g)) in size."""

    def __init__(self, problem: Problem, window: int, global_tokens: int, block: int) -> None:
        self.problem = problem
        self.window = window
        self.global_tokens = min(global_tokens, problem.kv_len)
        self.block = block
        self.ahead = 0 if problem.causal else window  # keys a query sees right of its own position
        self.blocks = math.ceil(problem.q_len / self.block)
        self.slab = self.block + window + self.ahead
        # padded key index t holds key position t + first_key; block c's slab starts at t = c * block
        self.first_key = problem.causal_offset - window
        offset = problem.causal_offset
        # global query rows are the queries whose position lies in 0..g-1
        self.global_rows = range(max(0, -offset), max(0, min(problem.q_len, self.global_tokens - offset)))

    def masks(
        self, device: str | None = None, blocks: range | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """bool masks, True = attend: slab (B', nb, b, slab), global keys (B', nb, b, g), global rows (B', 1, r, Nk).

        B' is 1 without padding (every sequence shares the masks); `blocks` picks some blocks (default all).
        Slab keys below g are masked out: the global-key columns carry them. Built on the problem's
        device unless another is given.
        """
        problem = self.problem
        if device is not None:
            problem = dataclasses.replace(problem, device=device)
        device = problem.device
        blocks = range(self.blocks) if blocks is None else blocks
        allowed = window_predicate(problem, self.window, self.global_tokens)
        batches = problem.batch if problem.kv_valid_lens is not None else 1
        batch_idx = torch.arange(batches, device=device)[:, None, None, None]
        block_start = torch.arange(blocks.start, blocks.stop, device=device)[:, None, None] * self.block
        q_idx = block_start + torch.arange(self.block, device=device)[:, None]  # (nb, b, 1)
        kv_idx = block_start + self.first_key + torch.arange(self.slab, device=device)  # (nb, 1, slab)
        slab = allowed(batch_idx, q_idx, kv_idx) & (kv_idx >= self.global_tokens)
        global_keys = allowed(batch_idx, q_idx, torch.arange(self.global_tokens, device=device))
        rows = torch.arange(self.global_rows.start, self.global_rows.stop, device=device)[:, None]
        global_rows = allowed(batch_idx, rows, torch.arange(problem.kv_len, device=device))
        return slab, global_keys, global_rows

    def band(self) -> torch.Tensor:
        """bool (b, slab): the mask every interior block shares, row r attending slab keys r .. r + window + ahead."""
        row = torch.arange(self.block, device=self.problem.device)[:, None]
        key = torch.arange(self.slab, device=self.problem.device)
        return (key >= row) & (key <= row + self.window + self.ahead)

    def is_edge(self) -> torch.Tensor:
        """bool (nb,): blocks whose slab reaches past the band's interior (key padding, keys below g, the ends)."""
        problem = self.problem
        min_valid = min(problem.kv_valid_lens) if problem.kv_valid_lens else problem.kv_len
        first = torch.arange(self.blocks) * self.block + self.first_key
        return (first < self.global_tokens) | (first + self.slab > min_valid)

    def computed_pairs(self) -> int:
        """(query, key) score pairs computed per head, summed over the batch (padding rows and slab waste included)."""
        per_sequence = self.blocks * self.block * (self.slab + self.global_tokens)
        return self.problem.batch * (per_sequence + len(self.global_rows) * self.problem.kv_len)

    def attended_pairs(self) -> int:
        """(query, key) pairs inside the window convention per head, summed over the batch."""
        slab, global_keys, global_rows = self.masks(device="cpu")  # a count: no device needed
        banded = slab.sum(-1) + global_keys.sum(-1)  # (B', nb, b)
        banded = banded.flatten(1)[:, : self.problem.q_len]
        banded[:, self.global_rows.start : self.global_rows.stop] = global_rows.sum(-1).flatten(1)
        total = int(banded.sum())
        return total if banded.shape[0] == self.problem.batch else total * self.problem.batch


def _stacked(bias: torch.Tensor, group: int) -> torch.Tensor:
    """(B', n, b, X) -> (B', n, G*b, X): one block's rows repeated for each query head of a K/V group."""
    batches, blocks, block, width = bias.shape
    return bias[:, :, None].expand(batches, blocks, group, block, width).reshape(batches, blocks, group * block, width)


class SlidingWindowAttention(Attention):
    """Banded attention by query blocks against contiguous key slabs (band_kernel.py); GQA without copying K or V."""

    def __init__(self, problem: Problem, window: int, global_tokens: int, block: int, chunk: int) -> None:
        super().__init__(problem)
        self.window, self.global_tokens = window, global_tokens
        self.scale = 1.0 / math.sqrt(problem.head_dim)
        self.layout = layout = BandLayout(problem, window, global_tokens, block)
        dtype = problem.compute_dtype  # float32 scores and sums for half-precision inputs
        group = problem.q_heads // problem.kv_heads
        batches = problem.batch if problem.kv_valid_lens is not None else 1
        live = torch.ones(batches, layout.blocks, block, dtype=torch.bool, device=problem.device)
        edge_bias = {}
        is_edge = layout.is_edge()
        for start in range(0, layout.blocks, chunk):
            blocks = range(start, min(start + chunk, layout.blocks))
            if not is_edge[blocks.start : blocks.stop].any():
                continue
            slab, global_keys, _ = layout.masks(blocks=blocks)
            live[:, blocks.start : blocks.stop] = slab.any(-1) | global_keys.any(-1)
            # a row with no key would softmax to NaN (and poison gradients): give it finite scores, zero its output
            dead = ~live[:, blocks.start : blocks.stop, :, None]
            edge_bias[start] = (
                _stacked(additive_bias(slab | dead, dtype), group),
                _stacked(additive_bias(global_keys | dead, dtype), group) if layout.global_tokens else None,
            )
        self.chunks = BandChunks(layout.blocks, chunk, additive_bias(layout.band(), dtype).repeat(group, 1), edge_bias)
        dead_queries = ~live.flatten(1)[:, : problem.q_len]
        dead_queries[:, layout.global_rows.start : layout.global_rows.stop] = False
        self.row_keep = live[:, None, :, None, :, None].to(dtype) if dead_queries.any() else None
        _, _, global_rows = layout.masks(blocks=range(0))
        self.global_row_bias = additive_bias(global_rows, dtype)[:, :, None]  # (B', 1, 1, r, Nk)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        layout = self.layout
        out_dtype = q.dtype
        q, k, v = (x.to(self.problem.compute_dtype) for x in (q, k, v))
        batch, kv_heads, kv_len, head_dim = k.shape
        q_len, group, block, blocks = q.shape[2], q.shape[1] // kv_heads, layout.block, layout.blocks
        g = layout.global_tokens
        # queries: (B, Hq, Nq, D) -> (B*Hkv, nb, G*b, D), the G heads sharing a K/V head stacked per block
        # (a view for MHA when N is a multiple of the block; the kernel scales the scores)
        q_blocks = q if blocks * block == q_len else F.pad(q, (0, 0, 0, blocks * block - q_len))
        q_blocks = q_blocks.view(batch, kv_heads, group, blocks, block, head_dim).transpose(2, 3)
        q_blocks = q_blocks.reshape(batch * kv_heads, blocks, group * block, head_dim)
        k_flat, v_flat = (x.reshape(batch * kv_heads, kv_len, head_dim) for x in (k, v))
        k_global, v_global = (x[:, :g] if g else None for x in (k_flat, v_flat))
        out = BandFunction.apply(
            q_blocks, k_flat, v_flat, k_global, v_global, self.chunks, kv_heads, block, layout.first_key
        )
        out = out.view(batch, kv_heads, blocks, group, block, head_dim)
        if self.row_keep is not None:
            out = out * self.row_keep
        out = out.transpose(2, 3).reshape(batch, kv_heads * group, blocks * block, head_dim)
        # no slice that keeps everything, and global rows written over by slice_scatter rather than a cat of
        # slices: each slice's backward zero-fills a tensor the size of the whole output (an empty one's too)
        if blocks * block != q_len:
            out = out[:, :, :q_len]
        rows = layout.global_rows
        if rows:
            out = out.slice_scatter(self._global_rows(q, k, v), dim=2, start=rows.start, end=rows.stop)
        return out.to(out_dtype)

    def _global_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The global queries' full rows against every key: (B, Hq, r, D), O(g*N)."""
        batch, kv_heads, kv_len, head_dim = k.shape
        rows = self.layout.global_rows
        group = q.shape[1] // kv_heads
        # reshape, not view: q may be strided (transposed from (B, N, H, D))
        q_rows = (q[:, :, rows.start : rows.stop] * self.scale).reshape(batch, kv_heads, group * len(rows), head_dim)
        scores = (q_rows @ k.transpose(-1, -2)).view(batch, kv_heads, group, len(rows), kv_len)
        scores += self.global_row_bias
        probs = torch.softmax(scores, dim=-1).view(batch, kv_heads, group * len(rows), kv_len)
        return (probs @ v).view(batch, kv_heads * group, len(rows), head_dim)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return dense_attention(q, k, v, window_allowed(self.problem, self.window, self.global_tokens))

    def decode_state(self, k: torch.Tensor, v: torch.Tensor) -> RingCache:
        """The window's ring: the last window + T positions (T new tokens overwrite the oldest), and the globals."""
        return RingCache.from_context(k, v, self.window + self.problem.q_len, self.global_tokens)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ring: RingCache):
        """New query at position p against the ring's keys p - window .. p and the global keys j <= p."""
        ring = ring.append(k, v)
        compute, steps, g = self.problem.compute_dtype, q.shape[2], ring.k_global.shape[2]
        position = torch.arange(ring.position - steps, ring.position, device=q.device)[:, None]  # (T, 1)
        held = ring.slot_positions()
        in_band = (held >= position - self.window) & (held <= position) & (held >= g)  # ring keys below g: globals
        allowed = torch.cat([in_band, torch.arange(g, device=q.device) <= position], dim=-1)  # (T, capacity + g)
        q_rows = grouped_queries(q.to(compute) * self.scale, k.shape[1])  # (B, Hkv, G*T, D)
        scores = torch.cat([q_rows @ x.to(compute).transpose(-1, -2) for x in (ring.k_ring, ring.k_global)], -1)
        scores = scores.view(*k.shape[:2], -1, steps, scores.shape[-1]).masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1).flatten(2, 3)
        capacity = ring.k_ring.shape[2]
        out = probs[..., :capacity] @ ring.v_ring.to(compute) + probs[..., capacity:] @ ring.v_global.to(compute)
        return out.view(q.shape).to(q.dtype), ring


def _layout(problem: Problem, hparams: Mapping[str, Any]) -> BandLayout:
    """The layout an entry's hyperparameters give (flex's have no block: its pair count does not depend on one)."""
    window = hparams["window"]
    return BandLayout(problem, window, hparams.get("global_tokens", 0), hparams.get("block") or default_block(window))


def band_flops(problem: Problem, hparams: Mapping[str, Any]) -> float:
    """Useful forward FLOPs: the (query, key) pairs inside the window pattern."""
    return 4.0 * problem.q_heads * problem.head_dim * _layout(problem, hparams).attended_pairs()


def computed_flops(problem: Problem, hparams: Mapping[str, Any]) -> float:
    """Executed forward FLOPs of the banded computation: every computed score pair, slab waste included."""
    return 4.0 * problem.q_heads * problem.head_dim * _layout(problem, hparams).computed_pairs()


def default_block(window: int) -> int:
    """Queries per block when none is given: the tile sweep's best, but no more than the window (the slab
    is block + 2*window keys, so a block past the window would mostly compute masked scores)."""
    return max(1, min(DEFAULT_BLOCK, window))


BANDED = {"family": "sparse", "exact": False, "flops": band_flops, "flops_executed": computed_flops, "decode": True}
Block = Annotated[int | None, AtLeast(1)]  # query rows per block; None: default_block(window)
Chunk = Annotated[int, AtLeast(1)]  # blocks whose scores exist at once


@register(time="N*w", memory="N", oracle_hparams={"window": 5, "block": 4, "chunk": 3}, **BANDED)
def sliding_window(
    problem: Problem, *, window: Window = 256, block: Block = None, chunk: Chunk = DEFAULT_CHUNK
) -> Attention:
    """Sliding-window attention: query at key position p attends keys within `window` of p, in O(N*w)."""
    return SlidingWindowAttention(problem, window, 0, block or default_block(window), chunk)


@register(
    time="N*(w+g)", memory="N", oracle_hparams={"window": 5, "global_tokens": 3, "block": 4, "chunk": 3}, **BANDED
)
def window_global(
    problem: Problem,
    *,
    window: Window = 256,
    global_tokens: GlobalTokens = 16,
    block: Block = None,
    chunk: Chunk = DEFAULT_CHUNK,
) -> Attention:
    """Longformer attention: a sliding window plus the first `global_tokens` positions attending and attended by all."""
    return SlidingWindowAttention(problem, window, global_tokens, block or default_block(window), chunk)
