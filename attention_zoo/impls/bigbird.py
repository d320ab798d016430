"""BigBird (Zaheer et al. 2020) block-sparse attention: window, global and random blocks, O(N) per query row.

The sequence is cut into nb = ceil(N / block_size) blocks (the last one may be short). Block pattern:
- Global blocks: the first ceil(g/2) and the last floor(g/2) of the `num_global_blocks` = g blocks
  (g = 2: the first and the last block, as HF transformers' block-sparse attention, BigBird's ITC).
  A global query block attends every key; every query attends the global key blocks.
- Window: query block i attends key blocks i - (w-1)/2 .. i + (w-1)/2 (`num_window_blocks` = w, odd;
  3 in the paper), cut at the sequence ends (no wrap-around).
- Random: each non-global query block attends `num_random_blocks` = r further key blocks per query
  head, drawn once at build time from `seed` without replacement among the blocks outside its window
  and the global blocks (fewer when fewer are left). The pattern is fixed: calls do not redraw it.
A key block reached two ways (a window block that is global) counts once. Padded keys are never
attended; block 0 is global and holds key 0, which is always real, so no query is left without a key.

Computed blockwise, the N x N score matrix never exists: each middle query block gathers its keys and
values (its slab of w blocks, the global keys, its r random blocks: rows of K fixed at build time, one
index_select per chunk of blocks) and scores them in one GEMM, softmaxed together; the global query blocks
are full rows, a few queries over every key (`landmark_softmax.landmarks_over_keys`: SDPA without a graph,
the online softmax over key chunks with one, keeping only their (rows x N) probabilities). Both passes take the middle
blocks a cache-sized chunk at a time; the backward gathers the keys and values again instead of keeping
them, and without a backward the probabilities are not kept.
GQA: each query head gathers from its kv head (the random blocks are per query head). Scale 1/sqrt(d); half
precision computes scores and softmax in float32 and returns the input dtype. Not causal (random and
global blocks look ahead) and self-attention only (the pattern pairs query block i with key block i).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import torch

from attention_zoo.impls.landmark_softmax import landmarks_over_keys
from attention_zoo.interface import Attention
from attention_zoo.masks import additive_bias
from attention_zoo.padding import pad_rows
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention
from attention_zoo.registry import HyperparameterError, register
from attention_zoo.rules import AtLeast


def _check_window_blocks(window: int) -> None:
    if window % 2 == 0:
        raise HyperparameterError(
            f"bigbird num_window_blocks={window!r} is invalid: it must be odd (the block and as many on each side)"
        )


class BlockLayout:
    """Which key blocks each query block attends: global, window and (per head) random, all at block level."""

    def __init__(self, seq_len: int, block_size: int, window_blocks: int, global_blocks: int) -> None:
        self.seq_len, self.block_size = seq_len, block_size
        self.blocks = nb = math.ceil(seq_len / block_size)
        self.front = min(nb, math.ceil(global_blocks / 2))
        self.back = min(nb - self.front, global_blocks // 2)
        self.half = window_blocks // 2
        self.middle = range(self.front, nb - self.back)  # the non-global query blocks

    def is_global(self, block: int) -> bool:
        return block < self.front or block >= self.blocks - self.back

    def window(self, block: int) -> range:
        return range(max(0, block - self.half), min(self.blocks, block + self.half + 1))

    def random_candidates(self, block: int) -> list[int]:
        taken = set(self.window(block))
        return [j for j in range(self.blocks) if j not in taken and not self.is_global(j)]

    def counts(self, random_table: torch.Tensor) -> torch.Tensor:
        """(H, nb, nb) int: how many times query block i reaches key block j (0 = never).

        random_table (H, len(middle), r) lists each middle block's random key blocks (-1 = an empty slot);
        a random block that is also in the window or global counts twice, as a softmax over a repeated
        key would weigh it (ours never draw one; a peer's may, so its mask is checked in this form).
        """
        heads, nb = random_table.shape[0], self.blocks
        counts = torch.zeros(heads, nb, nb, dtype=torch.long)
        for i in range(nb):
            if self.is_global(i):
                counts[:, i] = 1
                continue
            counts[:, i, : self.front] = 1
            counts[:, i, nb - self.back :] = 1
            counts[:, i, self.window(i).start : self.window(i).stop] = 1
            for slot in random_table[:, i - self.front].T:  # one slot (H,) at a time
                drawn = slot >= 0
                counts[drawn, i, slot[drawn]] += 1
        return counts

    def draw_random(self, heads: int, random_blocks: int, generator: torch.Generator) -> torch.Tensor:
        """(H, len(middle), r) long: per head and middle block, r random blocks (-1 where too few are left)."""
        table = torch.full((heads, len(self.middle), random_blocks), -1, dtype=torch.long)
        for m, block in enumerate(self.middle):
            candidates = torch.tensor(self.random_candidates(block), dtype=torch.long)
            for h in range(heads):
                drawn = candidates[torch.randperm(len(candidates), generator=generator)[:random_blocks]]
                table[h, m, : len(drawn)] = drawn
        return table


def block_counts_dense(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor, block_size: int, key_valid: torch.Tensor
) -> torch.Tensor:
    """Softmax attention in float64 over the keys a (H, nb, nb) block-count pattern reaches, each weighed by its count.

    key_valid: bool (B, Nk), True = a real key. The dense oracle form of block-sparse attention.
    """
    n = q.shape[2]
    tokens = counts.repeat_interleave(block_size, 1).repeat_interleave(block_size, 2)[:, :n, :n]  # (H, N, N)
    allowed = (tokens > 0)[None] & key_valid[:, None, None, :]
    return dense_attention(q, k, v, allowed, score_bias=tokens.double().clamp_min(1).log()[None])


def _gather(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows (B, Hq, c, L) of the flattened (B*Hkv*N, D) x, as (B, Hq, c, L, D)."""
    return x.reshape(-1, x.shape[-1]).index_select(0, rows.flatten()).view(*rows.shape, x.shape[-1])


# gathered key (or value) rows per chunk of query blocks, in bytes, so that a chunk's gathered rows, scores
# and probabilities stay in the cache whatever N. Measured fwd_bwd at N = 4k / 16k (B = 1, H = 8, D = 64,
# fp32, one thread, AMD EPYC): 256 KiB 368 / 1834 ms, 1 MiB 349 / 1786, 4 MiB 411 / 2029; 473 / 2254 when
# the forward gathered everything at once and the backward's chunks grew with N.
CHUNK_BYTES = 1 << 20


def _chunks(rows: torch.Tensor, head_dim: int, itemsize: int) -> range:
    """Starts of the chunks of query blocks (dim 2 of rows (B, Hq, nm, L)) that one pass takes at a time."""
    per_block = rows.shape[0] * rows.shape[1] * rows.shape[3] * head_dim * itemsize
    return range(0, rows.shape[2], max(1, CHUNK_BYTES // per_block))


class GatheredBlockAttention(torch.autograd.Function):
    """Each query block (B, Hq, nm, bs, D) softmaxed over its gathered key rows (B, Hq, nm, L), plus a bias.

    Both passes go a chunk of query blocks at a time (CHUNK_BYTES of gathered rows), so the gathered keys
    and values (L rows per block and head, several times K's size) never exist for the whole sequence:
    between the passes only the probabilities are kept beside the inputs, and the backward gathers the
    rows again, scattering their gradients into dK and dV.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor):
        backward = any(ctx.needs_input_grad[:3])  # without a backward the probabilities are not kept
        probs = q.new_empty(*rows.shape[:3], q.shape[3], rows.shape[3]) if backward else None  # (B, Hq, nm, bs, L)
        out = torch.empty_like(q)
        chunks = _chunks(rows, q.shape[-1], q.element_size())
        for s in chunks:
            chunk = slice(s, s + chunks.step)
            part = rows[:, :, chunk]
            p = torch.softmax((q[:, :, chunk] @ _gather(k, part).transpose(-1, -2)).add_(bias[:, :, chunk]), dim=-1)
            if backward:  # (a strided out= of softmax is a trap on the CPU: written here, not computed into)
                probs[:, :, chunk] = p
            out[:, :, chunk] = p @ _gather(v, part)
        ctx.save_for_backward(q, k, v, rows, probs, out)
        return out

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor):
        q, k, v, rows, probs, out = ctx.saved_tensors
        k, v = k.contiguous(), v.contiguous()
        d_q = torch.empty_like(q)
        d_k, d_v = k.new_zeros(k.shape).view(-1, k.shape[-1]), v.new_zeros(v.shape).view(-1, v.shape[-1])
        delta = (d_out * out).sum(-1, keepdim=True)  # (B, Hq, nm, bs, 1): the softmax backward's row term
        chunks = _chunks(rows, q.shape[-1], q.element_size())
        for s in chunks:
            chunk = slice(s, s + chunks.step)
            part, p, g = rows[:, :, chunk], probs[:, :, chunk], d_out[:, :, chunk]
            d_v.index_add_(0, part.flatten(), (p.transpose(-1, -2) @ g).view(-1, v.shape[-1]))
            d_scores = (g @ _gather(v, part).transpose(-1, -2)).sub_(delta[:, :, chunk]).mul_(p)
            d_q[:, :, chunk] = d_scores @ _gather(k, part)
            d_k.index_add_(0, part.flatten(), (d_scores.transpose(-1, -2) @ q[:, :, chunk]).view(-1, k.shape[-1]))
        return d_q, d_k.view_as(k), d_v.view_as(v), None, None


class BigBirdAttention(Attention):
    """Block-sparse attention: middle query blocks against window slab + global keys + gathered random blocks."""

    def __init__(
        self, problem: Problem, block_size: int, window_blocks: int, global_blocks: int, random_blocks: int, seed: int
    ) -> None:
        super().__init__(problem)
        _check_window_blocks(window_blocks)
        self.layout = layout = BlockLayout(problem.q_len, block_size, window_blocks, global_blocks)
        self.scale = 1.0 / math.sqrt(problem.head_dim)
        self.compute_dtype = torch.float32 if problem.dtype in ("float16", "bfloat16") else problem.torch_dtype
        self.register_buffer(
            "random_table", layout.draw_random(problem.q_heads, random_blocks, torch.Generator().manual_seed(seed))
        )
        device, bs, nb, n = problem.device, block_size, layout.blocks, problem.q_len
        self.front_end = min(n, layout.front * bs)  # global query/key rows: [0, front_end) and [back_start, N)
        self.back_start = min(n, (nb - layout.back) * bs)
        valid = problem.key_padding_mask()
        valid = torch.ones(1, n, dtype=torch.bool, device=device) if valid is None else valid  # (B', N)
        self.register_buffer("key_mask", None if problem.kv_valid_lens is None else valid[:, None, None, :])
        self.global_keys = [*range(self.front_end), *range(self.back_start, n)]
        middle = torch.tensor(list(layout.middle), dtype=torch.long, device=device)
        if len(middle):
            # key position of slot s of middle block i's window slab, random blocks and global keys
            slab = (middle[:, None] - layout.half) * bs + torch.arange(window_blocks * bs, device=device)
            slab_ok = (slab >= self.front_end) & (slab < self.back_start)  # global keys have their own columns
            random_table = self.random_table.to(device)
            rand = (random_table[..., None] * bs + torch.arange(bs, device=device)).flatten(-2)  # (H, nm, r*bs)
            rand_ok = (random_table[..., None] >= 0).expand(-1, -1, -1, bs).flatten(-2) & (rand < n)
            gk = torch.tensor(self.global_keys, dtype=torch.long, device=device)

            def gather_valid(positions: torch.Tensor) -> torch.Tensor:  # (B', *positions.shape)
                return valid[:, positions.clamp(0, n - 1).flatten()].view(-1, *positions.shape)

            slab_allowed = slab_ok & (slab >= 0) & (slab < n) & gather_valid(slab)  # (B', nm, w*bs)
            rand_allowed = rand_ok & gather_valid(rand)  # (B', H, nm, r*bs)
            global_allowed = gather_valid(gk)  # (B', g*bs)
            heads, nm = problem.q_heads, len(middle)
            # every middle score column, per query head: window slab, global keys, random blocks (H, nm, L)
            columns = torch.cat([slab.expand(heads, -1, -1), gk.expand(heads, nm, -1), rand], dim=-1)
            slab_allowed = slab_allowed[:, None].expand(-1, heads, -1, -1)
            global_allowed = global_allowed[:, None, None].expand(-1, heads, nm, -1)
            allowed = torch.cat([slab_allowed, global_allowed, rand_allowed], dim=-1)
            self.register_buffer(
                "middle_bias", additive_bias(allowed, self.compute_dtype)[:, :, :, None]
            )  # (B', H, nm, 1, L)
            # rows of the flattened (B*Hkv*N, D) keys and values that each middle block gathers: (B, H, nm, L)
            kv_head = torch.arange(problem.batch, device=device)[:, None] * problem.kv_heads + (
                torch.arange(heads, device=device) // problem.group_size
            )  # (B, H)
            rows = kv_head[:, :, None, None] * n + columns.clamp(0, n - 1)[None]
            self.register_buffer("middle_rows", rows)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out_dtype = q.dtype
        q, k, v = (x.to(self.compute_dtype) for x in (q, k, v))
        q = q * self.scale
        # one split (its backward is one concatenation; a slice's would zero-fill a q-sized tensor per piece)
        sizes = [self.front_end, self.back_start - self.front_end, q.shape[2] - self.back_start]
        q_front, q_middle, q_back = q.split(sizes, dim=2)
        pieces = [self._global_rows(q_front, k, v)]
        if len(self.layout.middle):
            pieces.append(self._middle_rows(q_middle, k, v))
        pieces.append(self._global_rows(q_back, k, v))
        return torch.cat(pieces, dim=2).to(out_dtype)

    def _global_rows(self, q_rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Global query rows (B, Hq, r, D) against every key: full rows, O(g*b*N), the keys a chunk at a time
        (`landmark_softmax`: a few queries over every key; its (r x N) probabilities, not its scores, kept)."""
        batch, kv_heads, _, head_dim = k.shape
        heads, rows = q_rows.shape[1], q_rows.shape[2]
        stacked = q_rows.reshape(batch, kv_heads, heads // kv_heads * rows, head_dim)  # a group's heads on the rows
        return landmarks_over_keys(stacked, k, v, self.key_mask, 1.0).view(batch, heads, rows, head_dim)

    def _middle_rows(self, q_middle: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The middle query blocks' rows (B, Hq, back_start - front_end, D): each block against its gathered keys."""
        layout = self.layout
        batch, heads, rows, head_dim = q_middle.shape
        bs, nm = layout.block_size, len(layout.middle)
        pad = nm * bs - rows  # the last block, when it is a middle one, may be short
        q_mid = pad_rows(q_middle, pad).reshape(batch, heads, nm, bs, head_dim)
        out = GatheredBlockAttention.apply(q_mid, k, v, self.middle_rows, self.middle_bias)  # (B, Hq, nm, bs, D)
        out = out.view(batch, heads, nm * bs, head_dim)
        return out[:, :, :rows] if pad else out  # no slice when none is padded (its backward zero-fills)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax over exactly the keys of the block mask (global, window, this build's random blocks), float64."""
        counts = self.layout.counts(self.random_table.cpu()).to(q.device)
        valid = self.problem.key_padding_mask()
        valid = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device) if valid is None else valid
        return block_counts_dense(q, k, v, counts, self.layout.block_size, valid)


def _availability(problem: Problem) -> str | None:
    if problem.causal:
        return "BigBird's global and random blocks look ahead: its block-sparse pattern is not causal"
    if problem.q_len != problem.kv_len:
        return "BigBird's block pattern pairs query block i with key block i: it needs q_len == kv_len"
    return None


def computed_flops(problem: Problem, hparams: Mapping[str, Any]) -> float:
    """Forward FLOPs of the blockwise computation: every computed score pair (padding and slab ends included)."""
    layout = BlockLayout(
        problem.q_len, hparams["block_size"], hparams["num_window_blocks"], hparams["num_global_blocks"]
    )
    bs, n, r = layout.block_size, problem.q_len, hparams["num_random_blocks"]
    global_keys = min(n, layout.front * bs) + n - min(n, (layout.blocks - layout.back) * bs)
    slab = (2 * layout.half + 1) * bs
    middle_pairs = sum(bs * (slab + global_keys + min(r, len(layout.random_candidates(i))) * bs) for i in layout.middle)
    return 4.0 * problem.batch * problem.q_heads * problem.head_dim * (middle_pairs + global_keys * n)


@register(
    family="sparse",
    exact=False,
    time="N*b*(w+g+r)",
    memory="N*b*(w+g+r)",
    features=("padding", "gqa"),
    flops=computed_flops,
    availability=_availability,
    oracle_hparams={"block_size": 8, "num_random_blocks": 2},
    suite_hparams={"block_size": 32},
    decode="not causal: global and random blocks attend later positions, so there is no decode step",
)
def bigbird(
    problem: Problem,
    *,
    block_size: Annotated[int, AtLeast(1)] = 64,
    num_window_blocks: Annotated[int, AtLeast(1)] = 3,
    num_global_blocks: Annotated[int, AtLeast(1)] = 2,
    num_random_blocks: Annotated[int, AtLeast(0)] = 3,
    seed: int = 0,
) -> Attention:
    """BigBird block-sparse attention: window, global and fixed random blocks per head, O(N*b*(w+g+r))."""
    return BigBirdAttention(problem, block_size, num_window_blocks, num_global_blocks, num_random_blocks, seed)
