"""The FlashAttention 2 algorithm in plain PyTorch: tiled online softmax forward, recomputing backward.

Extra memory is O(N): the row statistics (max and log-sum-exp) plus one q_tile x k_tile block of
scores at a time; the backward pass recomputes score tiles from Q, K and the saved log-sum-exp
instead of storing the N x N probabilities. Tiles that the causal mask, the padding or packed documents
(a block-diagonal mask) rule out entirely are skipped, so causal attention does about half the work and
packed documents about what each would alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Annotated, Any

import torch

from attention_zoo.base2 import LN_2, LOG2_E
from attention_zoo.decode import KVCache, grouped_queries, new_token_mask
from attention_zoo.impls import decode_kernel
from attention_zoo.interface import Attention
from attention_zoo.masks import additive_bias
from attention_zoo.problem import Problem
from attention_zoo.registry import FEATURES, register
from attention_zoo.rules import AtLeast


class _Tiling:
    """Which tiles exist and which (query, key) pairs inside a tile are allowed."""

    def __init__(self, problem: Problem, q_tile: int, k_tile: int, device: torch.device) -> None:
        self.q_len, self.kv_len = problem.q_len, problem.kv_len
        self.q_tile, self.k_tile = q_tile, k_tile
        self.causal = problem.causal
        self.offset = problem.causal_offset
        self.device = device
        self.valid = None if problem.kv_valid_lens is None else torch.tensor(problem.kv_valid_lens, device=device)
        self.min_valid = min(problem.kv_valid_lens) if problem.kv_valid_lens else problem.kv_len
        self.max_valid = max(problem.kv_valid_lens) if problem.kv_valid_lens else problem.kv_len
        # packed documents: each position's document, and where each document starts and ends
        lens = problem.doc_lens or (problem.kv_len,)
        self.doc_end = list(itertools.accumulate(lens))
        self.doc_start = [end - n for end, n in zip(self.doc_end, lens, strict=True)]
        self.documents = problem.document_ids().to(device) if problem.doc_lens else None
        self.position_doc = None if self.documents is None else self.documents.tolist()

    def q_starts(self) -> range:
        return range(0, self.q_len, self.q_tile)

    def k_starts(self, q_start: int) -> range:
        """Key tiles holding at least one key a query of this tile may attend."""
        q_end = min(q_start + self.q_tile, self.q_len)
        k_stop = self.max_valid if not self.causal else min(self.max_valid, q_end + self.offset)
        if self.position_doc is None:
            return range(0, k_stop, self.k_tile)
        # only the documents of this tile's queries: from the first one's start to the last one's end
        first, last = self.position_doc[q_start], self.position_doc[q_end - 1]
        k_from = self.doc_start[first] // self.k_tile * self.k_tile
        return range(k_from, min(k_stop, self.doc_end[last]), self.k_tile)

    def computed_pairs(self) -> int:
        """(query, key) score pairs in the tiles one sequence visits, masked pairs included (every sequence
        visits the same tiles)."""
        return sum(
            (min(q_start + self.q_tile, self.q_len) - q_start) * (min(k_start + self.k_tile, self.kv_len) - k_start)
            for q_start in self.q_starts()
            for k_start in self.k_starts(q_start)
        )

    def score_bias(self, q_start: int, k_start: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive mask (B or 1, 1, 1, q rows, k cols) for one tile; None when every pair is allowed."""
        q_end = min(q_start + self.q_tile, self.q_len)
        k_end = min(k_start + self.k_tile, self.kv_len)
        crosses_diagonal = self.causal and k_end - 1 > q_start + self.offset
        crosses_padding = k_end > self.min_valid
        # a tile inside one document needs no document mask
        crosses_documents = self.position_doc is not None and not (
            self.position_doc[q_start] == self.position_doc[q_end - 1]
            == self.position_doc[k_start] == self.position_doc[k_end - 1]
        )  # fmt: skip
        if not (crosses_diagonal or crosses_padding or crosses_documents):
            return None
        device = self.device
        k_pos = torch.arange(k_start, k_end, device=device)
        allowed = torch.ones(1, 1, 1, q_end - q_start, k_end - k_start, dtype=torch.bool, device=device)
        if crosses_diagonal:
            q_pos = torch.arange(q_start, q_end, device=device)
            allowed = allowed & (k_pos[None, :] <= q_pos[:, None] + self.offset)
        if crosses_padding and self.valid is not None:
            allowed = allowed & (k_pos < self.valid[:, None, None, None, None])
        if crosses_documents:
            allowed = allowed & (self.documents[q_start:q_end, None] == self.documents[None, k_start:k_end])
        return additive_bias(allowed, dtype)


class _FlashFunction(torch.autograd.Function):
    """q5 (B, Hkv, G, Nq, D) already scaled, by 1/sqrt(d) * log2(e): scores, maxima and log-sum-exps are
    base-2 exponents (attention_zoo/base2.py); k5, v5 (B, Hkv, 1, Nk, D)."""

    @staticmethod
    def forward(ctx, q5, k5, v5, tiling: _Tiling):
        out = torch.empty_like(q5)
        lse = torch.empty((*q5.shape[:-1], 1), dtype=q5.dtype, device=q5.device)
        for q_start in tiling.q_starts():
            q_tile = q5[..., q_start : q_start + tiling.q_tile, :]
            row_max = torch.full((*q_tile.shape[:-1], 1), float("-inf"), dtype=q5.dtype, device=q5.device)
            row_sum = torch.zeros_like(row_max)
            acc = torch.zeros_like(q_tile)
            for k_start in tiling.k_starts(q_start):
                k_tile = k5[..., k_start : k_start + tiling.k_tile, :]
                scores = q_tile @ k_tile.transpose(-1, -2)  # (B, Hkv, G, q rows, k cols)
                bias = tiling.score_bias(q_start, k_start, scores.dtype)
                if bias is not None:
                    scores += bias
                new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True))
                # a row with no allowed key yet keeps max -inf; shift by 0 so exp gives 0, not NaN
                shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
                probs = scores.sub_(shift).exp2_()
                rescale = (row_max - shift).exp2_()
                row_sum.mul_(rescale).add_(probs.sum(dim=-1, keepdim=True))
                acc.mul_(rescale).add_(probs @ v5[..., k_start : k_start + tiling.k_tile, :])
                row_max = new_max
            out[..., q_start : q_start + tiling.q_tile, :] = acc / row_sum
            lse[..., q_start : q_start + tiling.q_tile, :] = row_max + row_sum.log2()
        ctx.save_for_backward(q5, k5, v5, out, lse)
        ctx.tiling = tiling
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q5, k5, v5, out, lse = ctx.saved_tensors
        tiling: _Tiling = ctx.tiling
        grad_q = torch.zeros_like(q5)
        grad_k = torch.zeros_like(k5)
        grad_v = torch.zeros_like(v5)
        delta = (grad_out * out).sum(dim=-1, keepdim=True)  # rowsum(dO * O), (B, Hkv, G, Nq, 1)
        for q_start in tiling.q_starts():
            rows = slice(q_start, q_start + tiling.q_tile)
            q_tile, grad_out_tile = q5[..., rows, :], grad_out[..., rows, :]
            for k_start in tiling.k_starts(q_start):
                cols = slice(k_start, k_start + tiling.k_tile)
                k_tile, v_tile = k5[..., cols, :], v5[..., cols, :]
                scores = q_tile @ k_tile.transpose(-1, -2)
                bias = tiling.score_bias(q_start, k_start, scores.dtype)
                if bias is not None:
                    scores += bias
                probs = scores.sub_(lse[..., rows, :]).exp2_()  # recomputed, never stored whole
                grad_v[..., cols, :] += (probs.transpose(-1, -2) @ grad_out_tile).sum(dim=2, keepdim=True)
                grad_probs = grad_out_tile @ v_tile.transpose(-1, -2)
                grad_scores = probs.mul_(grad_probs.sub_(delta[..., rows, :]))
                grad_q[..., rows, :] += grad_scores @ k_tile
                grad_k[..., cols, :] += (grad_scores.transpose(-1, -2) @ q_tile).sum(dim=2, keepdim=True)
        # the scores are base-2 exponents, s * log2(e): their gradient is the natural one times ln 2
        return grad_q.mul_(LN_2), grad_k.mul_(LN_2), grad_v, None


class BlockwiseAttention(Attention):
    """Exact attention by the FlashAttention 2 tiling, in plain PyTorch ops."""

    def __init__(self, problem: Problem, q_tile: int, k_tile: int) -> None:
        super().__init__(problem)
        self.scale = 1.0 / math.sqrt(problem.head_dim)
        self.tiling = _Tiling(problem, q_tile, k_tile, torch.device(problem.device))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, kv_heads, _kv_len, head_dim = k.shape
        group = q.shape[1] // kv_heads
        compute = self.problem.compute_dtype  # float32 tiles, running max, sum and accumulator for half inputs
        # GQA by broadcasting: the G query heads of a group share one K/V head, no copy of K or V
        q5 = (q.to(compute) * (self.scale * LOG2_E)).view(batch, kv_heads, group, q.shape[2], head_dim)
        k5, v5 = k.to(compute).unsqueeze(2), v.to(compute).unsqueeze(2)
        return _FlashFunction.apply(q5, k5, v5, self.tiling).view(q.shape).to(q.dtype)

    def decode_state(self, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """The KV cache: the context's keys and values, with room for the problem's T new tokens."""
        return KVCache.from_context(k, v, self.problem.q_len)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache):
        """Flash-decoding: the CPU kernel (decode_kernel.c: the cache streamed once in chunks, online softmax,
        split-K across threads) where it builds, otherwise split-K in PyTorch (`_split_k`). `kernel` says which."""
        cache = cache.append(k, v)
        q_rows = grouped_queries(q.to(self.problem.compute_dtype) * self.scale, k.shape[1])  # (B, Hkv, G*T, D)
        if decode_kernel.unavailable(cache.keys.dtype, q.device) is None:
            self.kernel = "c_flash_decode"
            out = decode_kernel.flash_decode(q_rows, cache.keys, cache.values, q.shape[2])
        else:
            self.kernel = "torch_split_k"
            out = self._split_k(q_rows, cache, q.shape[2])
        return out.view(q.shape).to(q.dtype), cache

    def _split_k(self, q_rows: torch.Tensor, cache: KVCache, steps: int) -> torch.Tensor:
        """The cache cut into k_tile chunks, each chunk's softmax statistics and weighted values computed at once
        (one batched product over the chunks), combined by log-sum-exp.

        A T-query step has too few query rows to tile; splitting the keys is what gives the work its width.
        The keys before the step are seen by every new query; the step's own T keys form one more, masked, part.
        """
        compute, k_tile = self.problem.compute_dtype, self.tiling.k_tile
        keys, values = cache.keys.to(compute), cache.values.to(compute)  # (B, Hkv, L+T, D); no copy in float32
        context = keys.shape[2] - steps
        whole = context // k_tile * k_tile
        parts = []
        if whole:  # (B, Hkv, S, k_tile, D): a view of the cache, chunked
            chunks_k = keys[:, :, :whole].unflatten(2, (-1, k_tile))
            chunks_v = values[:, :, :whole].unflatten(2, (-1, k_tile))
            parts.append(_partial(q_rows.unsqueeze(2) @ chunks_k.transpose(-1, -2), chunks_v))
        if whole < context:
            rest = slice(whole, context)
            parts.append(_partial((q_rows @ keys[:, :, rest].transpose(-1, -2)).unsqueeze(2), values[:, :, None, rest]))
        own = q_rows @ keys[:, :, context:].transpose(-1, -2)  # (B, Hkv, G*T, T)
        allowed = new_token_mask(steps, q_rows.device).repeat(own.shape[2] // steps, 1)
        parts.append(_partial(own.masked_fill(~allowed, float("-inf")).unsqueeze(2), values[:, :, None, context:]))
        row_max, row_sum, acc = (torch.cat(x, dim=2) for x in zip(*parts, strict=True))  # (B, Hkv, S', G*T, .)
        weight = (row_max - row_max.amax(dim=2, keepdim=True)).exp_()
        return (weight * acc).sum(2) / (weight * row_sum).sum(2)


def _partial(scores: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One split's (max, sum of exp, exp-weighted values) from scores (..., S, rows, keys) and values (..., S, keys, D).

    Every split holds at least one allowed key per row (a new query always sees its own key).
    """
    row_max = scores.amax(dim=-1, keepdim=True)
    probs = (scores - row_max).exp_()
    return row_max, probs.sum(dim=-1, keepdim=True), probs @ values


def _executed_flops(problem: Problem, hparams: Mapping[str, Any]) -> float:
    """Forward FLOPs of the visited tiles: the masked pairs of tiles crossing the diagonal or padding included."""
    tiling = _Tiling(problem, hparams["q_tile"], hparams["k_tile"], torch.device("cpu"))  # counts only
    return 4.0 * problem.batch * problem.q_heads * problem.head_dim * tiling.computed_pairs()


@register(
    family="flash",
    exact=True,
    time="N^2",
    memory="N",
    features=FEATURES,
    flops_executed=_executed_flops,
    oracle_hparams={"q_tile": 16, "k_tile": 24},
    decode=True,
)
def blockwise(
    problem: Problem, *, q_tile: Annotated[int, AtLeast(1)] = 256, k_tile: Annotated[int, AtLeast(1)] = 512
) -> Attention:
    """FlashAttention 2's tiled online softmax in PyTorch; q_tile x k_tile scores live at a time."""
    return BlockwiseAttention(problem, q_tile, k_tile)
