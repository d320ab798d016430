"""Softmax attention with one short side (m landmarks) in chunks of the long side, forward and backward written out.

Nystromformer's kernels 1 and 3 are softmax attentions in which one side has m << N positions:
- `queries_over_landmarks`: N queries over m keys, softmax(Q K~^T s) W, CHUNK_BYTES of query rows (all
  heads) at a time, each chunk's probabilities normalised in place and kept for the backward.
- `landmarks_over_keys`: m queries over N keys, softmax(Q~ K^T s) V, CHUNK_BYTES of keys at a time with
  the online softmax (a running maximum and sum per query, the (m x d) accumulator rescaled); each key
  chunk's probabilities are kept as taken, under the running maximum of their chunk, and the backward
  puts each chunk's correction exp2(top_j - lse) on the (m x e) side: grad * factor, not on its probabilities.
BigBird's global query rows (a few blocks of queries over every key) are the second kind too.
Saved: the inputs, a small output and the (N x m) probabilities, one tensor the size of q at m = d, so
the backward does four GEMMs per chunk, not five, and no exp2 pass (nystromformer fwd_bwd at N = 4k, B 1,
H 8, D 64, m 64, fp32, one thread, AMD EPYC Zen 5: 76-78 ms recomputing, 66-67 ms keeping them; the
sweep's peak +2-5%). Autograd through the formed scores keeps the scores, the probabilities and their
gradients, four such tensors (SDPA's CPU backward held more still). Exponents are base 2
(`attention_zoo.base2`). Where no graph is built, SDPA's fused forward, 5-20% faster here at N = 1k.
The Functions take and return tensors in the caller's shape, each long gradient allocated in its input's
shape and returned as itself: autograd adds the landmarks' (broadcast) gradient into such a tensor in
place, but into a reshaped view of one by allocating a third (+25% backward peak at N = 512-2048).

Backward of out = P W, P = softmax(S): dW = P^T g, dP = g W^T, dS = P (dP - rowsum(P dP)), and
rowsum(P dP) = rowsum(g out), so dq = dS K s, dK = dS^T q s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attention_zoo.base2 import LOG2_E
from attention_zoo.interface import builds_graph

# bytes of a chunk's scores (all heads). nystromformer fwd_bwd at N = 1k / 4k / 16k (B 1, H 8, D 64, m 64,
# fp32, one thread, AMD EPYC), ms: 256 KiB 28.3 / 75.5 / 375, 512 KiB 27.0 / 80.0 / 363, 1 MiB 25.2 / 88.8 /
# 363, 2 MiB 25.5 / 73.9 / 367, 4 MiB 25.5 / 78.9 / 411 (1k and 4k move by 10% between runs)
CHUNK_BYTES = 2 << 20


def _chunk(x: torch.Tensor, short: int) -> int:
    """Positions of the long side of x (X, N, d) per chunk: CHUNK_BYTES of (X, position, short) scores."""
    return max(1, CHUNK_BYTES // (max(1, x.shape[0] * short) * x.element_size()))


class _QueriesOverLandmarks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, keys, values, scale: float):  # q (..., N, d); keys (..., m, d); values (..., m, e)
        ctx.shapes, shape = (q.shape, keys.shape, values.shape), (*q.shape[:-1], values.shape[-1])
        q, keys, values = (x.flatten(0, -3) for x in (q, keys, values))
        rows = _chunk(q, keys.shape[1])
        keys_t = keys.transpose(1, 2) * (scale * LOG2_E)  # base-2 scores
        out = q.new_empty(*q.shape[:2], values.shape[2])
        probs_all = q.new_empty(*q.shape[:2], keys.shape[1])  # (X, N, m), kept for the backward
        for start in range(0, q.shape[1], rows):
            part = slice(start, start + rows)
            probs = torch.bmm(q[:, part], keys_t, out=probs_all[:, part])
            probs.sub_(probs.amax(2, keepdim=True)).exp2_()
            probs.div_(probs.sum(2, keepdim=True))
            torch.bmm(probs, values, out=out[:, part])
        ctx.save_for_backward(q, keys, values, probs_all)
        ctx.scale = scale
        return out.view(shape)

    @staticmethod
    def backward(ctx, grad):
        q, keys, values, probs_all = ctx.saved_tensors
        scale = ctx.scale
        grad = grad.reshape(*q.shape[:2], -1)
        rows = _chunk(q, keys.shape[1])
        keys_s = keys * scale
        grad_q_full = q.new_empty(ctx.shapes[0])  # returned as itself (see the module's note)
        grad_q = grad_q_full.view(q.shape)
        grad_keys, grad_values = torch.zeros_like(keys), torch.zeros_like(values)
        for start in range(0, q.shape[1], rows):
            part = slice(start, start + rows)
            q_part, g, probs = q[:, part], grad[:, part], probs_all[:, part]
            grad_values.baddbmm_(probs.transpose(1, 2), g)
            grad_probs = torch.bmm(g, values.transpose(1, 2))
            grad_scores = grad_probs.sub_((probs * grad_probs).sum(2, keepdim=True)).mul_(probs)
            torch.bmm(grad_scores, keys_s, out=grad_q[:, part])
            grad_keys.baddbmm_(grad_scores.transpose(1, 2), q_part)
        shapes = ctx.shapes
        return grad_q_full, grad_keys.mul_(scale).view(shapes[1]), grad_values.view(shapes[2]), None


class _LandmarksOverKeys(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, k, v, hidden, scale: float):  # queries (..., M, d); k, v (..., N, d); hidden (X, 1, N)
        ctx.shapes, shape = (queries.shape, k.shape, v.shape), (*queries.shape[:-1], v.shape[-1])
        queries, k, v = (x.flatten(0, -3) for x in (queries, k, v))
        cols = _chunk(k, queries.shape[1])
        queries_2 = queries * (scale * LOG2_E)  # base-2 scores
        lowest = torch.finfo(queries.dtype).min  # the running maximum while every key so far is hidden
        acc = queries.new_zeros(*queries.shape[:2], v.shape[2])
        total = queries.new_zeros(*queries.shape[:2], 1)
        top = queries.new_full(total.shape, lowest)
        probs_all = queries.new_empty(*queries.shape[:2], k.shape[1])  # (X, M, N), each chunk under its own top
        tops = []  # the running maximum each chunk's probabilities were taken under
        for start in range(0, k.shape[1], cols):
            part = slice(start, start + cols)
            scores = torch.bmm(queries_2, k[:, part].transpose(1, 2), out=probs_all[:, :, part])
            if hidden is not None:
                scores.masked_fill_(hidden[:, :, part], float("-inf"))
            new_top = torch.maximum(top, scores.amax(2, keepdim=True))
            rescale = (top - new_top).exp2_()
            probs = scores.sub_(new_top).exp2_()
            acc.mul_(rescale).baddbmm_(probs, v[:, part])
            total.mul_(rescale).add_(probs.sum(2, keepdim=True))
            top = new_top
            tops.append(top)
        out = acc.div_(total)
        lse = top + total.log2_()
        ctx.save_for_backward(queries, k, v, out, probs_all, torch.stack(tops).sub_(lse).exp2_())
        ctx.scale, ctx.cols = scale, cols  # the backward takes the forward's chunks, whose factors it has
        return out.view(shape)

    @staticmethod
    def backward(ctx, grad):
        queries, k, v, out, probs_all, factors = ctx.saved_tensors  # chunk j's P = its probabilities * factors[j]
        scale, cols = ctx.scale, ctx.cols
        grad = grad.reshape(out.shape)
        queries_s = queries * scale
        row_dot = (grad * out).sum(2, keepdim=True)  # rowsum(P dP)
        grad_queries = torch.zeros_like(queries)
        grad_k_full, grad_v_full = k.new_empty(ctx.shapes[1]), v.new_empty(ctx.shapes[2])
        grad_k, grad_v = grad_k_full.view(k.shape), grad_v_full.view(v.shape)
        for chunk, start in enumerate(range(0, k.shape[1], cols)):
            part = slice(start, start + cols)
            k_part, v_part, probs = k[:, part], v[:, part], probs_all[:, :, part]
            g = grad * factors[chunk]  # the chunk's factor on the (M x e) side, not on its (M x cols) probabilities
            torch.bmm(probs.transpose(1, 2), g, out=grad_v[:, part])
            grad_scores = torch.bmm(g, v_part.transpose(1, 2)).sub_(row_dot * factors[chunk]).mul_(probs)
            torch.bmm(grad_scores.transpose(1, 2), queries_s, out=grad_k[:, part])
            grad_queries.baddbmm_(grad_scores, k_part)
        return grad_queries.mul_(scale).view(ctx.shapes[0]), grad_k_full, grad_v_full, None, None


def queries_over_landmarks(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q keys^T scale) values: q (..., N, d) against keys (..., m, d), values (..., m, e)."""
    if not builds_graph(q, keys, values):
        return F.scaled_dot_product_attention(q, keys, values, scale=scale)
    return _QueriesOverLandmarks.apply(q, keys, values, scale)


def landmarks_over_keys(
    queries: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """softmax(queries k^T scale, keys where key_mask is False left out) v: queries (B, H, M, d) against
    k, v (B, H, N, d); key_mask bool (B, 1, 1, N) or None."""
    if not builds_graph(queries, k, v):
        return F.scaled_dot_product_attention(queries, k, v, attn_mask=key_mask, scale=scale)
    hidden = None if key_mask is None else (~key_mask).expand(*k.shape[:2], 1, -1).flatten(0, 1)
    return _LandmarksOverKeys.apply(queries, k, v, hidden, scale)
