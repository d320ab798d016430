"""The banded kernel under sliding_window and window_global: query blocks against their key slabs, a chunk at a time.

Query block c (`block` rows, every query head of a K/V group stacked) attends the contiguous key slab
padded[c*block : c*block + slab] of the zero-padded keys, read as an overlapping strided view (no copy).
Blocks are processed `chunk` at a time per K/V head, so the scores that exist at once are
(chunk, G*block, slab + g): sized to stay in cache, they never cover the sequence. The softmax over
the slab (and the g global key columns) is complete within a chunk, so one pass needs no running
max: the FlashAttention recurrence over key tiles reduces to one step per block. The backward pass
recomputes each chunk's scores and probabilities from Q, K and the forward's output (dS = P * (dP -
rowsum(dO * O))), as blockwise.py does; slab gradients overlap, so they are added into dK and dV
a row segment at a time. Extra memory is O(N*D) (the padded K and V, and their gradients) plus one chunk.

Masks are additive biases. Inside the sequence every block sees the same relative band (row r of a
block attends slab keys r .. r + window + ahead), so interior chunks share one (G*block, slab) bias
and their global key columns need none; only chunks holding an edge block (the first and last slabs,
keys below g, padding) carry a full bias of their own, built once from the window predicate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# queries per block and blocks per chunk where a caller names none: the best of the tile sweep
# (python -m bench sweep=band_tiles, window 256, N = 4096 and 16384; see README, "Sliding window")
DEFAULT_BLOCK = 64
DEFAULT_CHUNK = 16


class BandChunks:
    """The chunks of one banded problem and the score biases each applies to its slab and global columns."""

    def __init__(
        self,
        blocks: int,
        chunk: int,
        band_bias: torch.Tensor,
        edge_bias: dict[int, tuple[torch.Tensor, torch.Tensor | None]],
    ) -> None:
        """band_bias (G*block, slab); edge_bias: chunk start -> (slab bias (B', n, G*block, slab),
        global-key bias (B', n, G*block, g) or None), for the chunks that hold an edge block."""
        self.starts = range(0, blocks, chunk)
        self.blocks, self.chunk = blocks, chunk
        self.band_bias, self.edge_bias = band_bias, edge_bias

    def bias(self, start: int, sequence: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(slab bias, global bias or None) of the chunk at `start` for batch index `sequence`."""
        edge = self.edge_bias.get(start)
        if edge is None:
            return self.band_bias, None
        slab_bias, global_bias = edge
        pick = min(sequence, slab_bias.shape[0] - 1)  # B' is 1 when every sequence shares the masks
        return slab_bias[pick], None if global_bias is None else global_bias[pick]


def _scores(q_chunk, k_slab_t, k_global_t, slab_bias, global_bias, scale) -> torch.Tensor:
    """(n, R, slab [+ g]) biased scores of one chunk: slab columns first, then the global keys'."""
    scores = torch.baddbmm(slab_bias, q_chunk, k_slab_t, alpha=scale)
    if k_global_t is None:
        return scores
    k_global_t = k_global_t.expand(q_chunk.shape[0], -1, -1)
    if global_bias is None:
        global_scores = torch.bmm(q_chunk, k_global_t).mul_(scale)
    else:
        global_scores = torch.baddbmm(global_bias, q_chunk, k_global_t, alpha=scale)
    return torch.cat([scores, global_scores], dim=-1)


def _rows(length: int, lo: int, hi: int) -> tuple[int, int, int]:
    """Rows lo..hi of a length-row tensor, zero outside it: (first row inside, rows inside, zero rows in front)."""
    first, inside = max(lo, 0), max(0, min(hi, length) - max(lo, 0))
    return first, inside, min(max(0, -lo), hi - lo)


def _window(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows lo..hi of x (N, D), zero outside 0..N: a view inside the sequence, a small padded copy at its ends."""
    if lo >= 0 and hi <= x.shape[0]:
        return x[lo:hi]
    first, inside, front = _rows(x.shape[0], lo, hi)
    return F.pad(x[first : first + inside], (0, 0, front, hi - lo - front - inside))


def _add_slab_products(grad: torch.Tensor, lo: int, a: torch.Tensor, b: torch.Tensor, block: int, alpha: float) -> None:
    """grad[lo + c*block + j] += alpha * (a[c]^T b[c])[j] for the chunk's slabs c (a (n, R, slab), b (n, R, D)): the
    overlapping slabs' products summed, rows outside 0..N dropped.

    The key window is read as rows of `block` keys: slab c's rows j*block .. (j+1)*block land on window
    row c + j, so each of the slab's ceil(slab / block) row segments is one baddbmm_ into those rows for
    every slab of the chunk (no (n, slab, D) product, then added: about a fifth faster at block 64, slab 576).
    """
    n, _, slab = a.shape
    head_dim = b.shape[-1]
    segments = -(-slab // block)
    length = (n + segments - 1) * block
    inside = lo >= 0 and lo + length <= grad.shape[0]
    window = grad[lo : lo + length] if inside else grad.new_zeros(length, head_dim)
    rows = window.view(n + segments - 1, block, head_dim)
    for j in range(segments):
        width = min(block, slab - j * block)
        rows[j : j + n, :width].baddbmm_(a[..., j * block : j * block + width].transpose(1, 2), b, alpha=alpha)
    if not inside:
        first, kept, front = _rows(grad.shape[0], lo, lo + length)
        grad[first : first + kept] += window[front : front + kept]


class BandFunction(torch.autograd.Function):
    """q (BH, nb, R, D) unscaled; k, v (BH, Nk, D); k_global, v_global (BH, g, D) or None.

    Block c's slab is keys c*block + first_key .. + slab (zero keys outside the sequence, masked).
    """

    @staticmethod
    def forward(ctx, q, k, v, k_global, v_global, chunks: BandChunks, kv_heads: int, block: int, first_key: int):
        slab, scale = chunks.band_bias.shape[-1], q.shape[-1] ** -0.5
        out = torch.empty_like(q)
        for bh in range(q.shape[0]):
            k_global_t = None if k_global is None else k_global[bh].T[None]
            for start in chunks.starts:
                stop = min(start + chunks.chunk, chunks.blocks)
                lo, hi = start * block + first_key, (stop - 1) * block + first_key + slab
                k_slabs_t = _window(k[bh], lo, hi).unfold(0, slab, block)  # (n, D, slab): overlapping views
                v_slabs = _window(v[bh], lo, hi).unfold(0, slab, block).transpose(1, 2)  # (n, slab, D)
                slab_bias, global_bias = chunks.bias(start, bh // kv_heads)
                scores = _scores(q[bh, start:stop], k_slabs_t, k_global_t, slab_bias, global_bias, scale)
                probs = torch.softmax(scores, dim=-1)
                if v_global is None:
                    torch.bmm(probs, v_slabs, out=out[bh, start:stop])
                else:
                    global_out = probs[..., slab:] @ v_global[bh]
                    torch.baddbmm(global_out, probs[..., :slab], v_slabs, out=out[bh, start:stop])
        ctx.save_for_backward(q, k, v, k_global, v_global, out)
        ctx.chunks, ctx.kv_heads, ctx.block, ctx.first_key = chunks, kv_heads, block, first_key
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, k_global, v_global, out = ctx.saved_tensors
        chunks, block, first_key = ctx.chunks, ctx.block, ctx.first_key
        slab, head_dim = chunks.band_bias.shape[-1], q.shape[-1]
        scale = head_dim**-0.5
        grad_out = grad_out.contiguous()
        delta = (grad_out * out).sum(-1, keepdim=True)  # rowsum(dO * O) = rowsum(dP * P), (BH, nb, R, 1)
        grad_q = torch.empty_like(q)
        grad_k, grad_v = torch.zeros_like(k), torch.zeros_like(v)
        has_global = k_global is not None
        grad_k_global = torch.zeros_like(k_global) if has_global else None
        grad_v_global = torch.zeros_like(v_global) if has_global else None
        for bh in range(q.shape[0]):
            k_global_t = k_global[bh].T[None] if has_global else None
            for start in chunks.starts:
                stop = min(start + chunks.chunk, chunks.blocks)
                rows = slice(start, stop)
                lo, hi = start * block + first_key, (stop - 1) * block + first_key + slab
                k_window, v_window = _window(k[bh], lo, hi), _window(v[bh], lo, hi)
                k_slabs_t, v_slabs_t = k_window.unfold(0, slab, block), v_window.unfold(0, slab, block)
                q_chunk, grad_out_chunk = q[bh, rows], grad_out[bh, rows]
                slab_bias, global_bias = chunks.bias(start, bh // ctx.kv_heads)
                scores = _scores(q_chunk, k_slabs_t, k_global_t, slab_bias, global_bias, scale)
                probs = torch.softmax(scores, dim=-1)
                grad_probs = grad_out_chunk @ v_slabs_t  # (n, R, slab)
                if has_global:
                    grad_probs = torch.cat([grad_probs, grad_out_chunk @ v_global[bh].T], dim=-1)
                grad_scores = grad_probs.sub_(delta[bh, rows]).mul_(probs)  # dS / scale
                grad_slab, probs_slab = grad_scores[..., :slab], probs[..., :slab]
                torch.bmm(grad_slab, k_slabs_t.transpose(1, 2), out=grad_q[bh, rows])
                _add_slab_products(grad_k[bh], lo, grad_slab, q_chunk, block, scale)
                _add_slab_products(grad_v[bh], lo, probs_slab, grad_out_chunk, block, 1.0)
                if has_global:
                    grad_global = grad_scores[..., slab:]
                    grad_q[bh, rows] += grad_global @ k_global[bh]
                    grad_k_global[bh].add_((grad_global.transpose(1, 2) @ q_chunk).sum(0), alpha=scale)
                    grad_v_global[bh] += (probs[..., slab:].transpose(1, 2) @ grad_out_chunk).sum(0)
        return grad_q.mul_(scale), grad_k, grad_v, grad_k_global, grad_v_global, None, None, None, None
