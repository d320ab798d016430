"""Reformer's LSH attention core: sorted chunks, then the hash rounds combined, forward and backward written out.

The chunks: each chunk of `c` sorted places attends itself and the chunk before it, over shared-QK keys (the
places' queries at unit length). The places are rows of the flattened q and v, gathered a group of chunks
of one head at a time (GROUP_PLACES places, with the chunk before the group's first), so each chunk's
look-back and own keys are one overlapping (2c)-row view: one score GEMM and one value GEMM per group,
whose rows, scores and weights stay in the cache, and no gathered copy of the sorted sequence. Per place
the result is left unnormalised: the output o = sum_j w_j v_j, the row's maximum score and its total
t = sum_j w_j, with w_j = exp(s_j - max) in base 2 (`attention_zoo.base2`).

The rounds: each position's places (one per round) are read a block of positions at a time and weighed by
a_r = exp2(round max - best max) / den, den = sum_r exp2(round max - best max) t_r: out = sum_r a_r o_r.

Masking: a place's own key scores SELF_SCORE (it wins only over masked keys); a padding place, a padded key
and (causal) a later key score MASKED_SCORE. Both are constants, so their gradients are zero. A round's places
are contiguous and hold each position once, so a place's own key is the place itself (one diagonal of the
chunk's scores) except in the few windows that span two rounds or look back at themselves, which alone
compare positions (comparing them everywhere was an eighth of the fwd_bwd).

Saved: q, v, the index tensors, the row maxima, each place's a_r and the output; no (places x 2c) tensor.
The backward recomputes each group's weights and, with g the output's gradient at the place's position,
takes the place's gradients as do = a_r g and dt = -a_r (g . out), never as a whole-sequence tensor; then
with s = q . k (k = x / |x| of the key's row x): dw = do v^T + dt, ds = w dw (d w / d s = w for base-2
weights of base-2 scores), dq = ds k, dk = ds^T q, dx = (dk - k (k . dk)) / |x|, dv = w^T do, each added
into the rows the group gathered from (a row reached in several places, rounds and chunks gets each).
Through autograd the same steps kept the weights and six to eight whole-sequence temporaries.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from attention_zoo.base2 import LOG2_E

SELF_SCORE = -1e5  # a position's score for itself: wins only over masked keys
MASKED_SCORE = -1e9
# sorted places per group of chunks (its rows, scores and weights stay in the cache). fwd_bwd ms at N = 1k / 4k /
# 16k (B 1, H 8, D 64, n_hashes 2, c 64, fp32, one thread, AMD EPYC, interleaved): 1024 places 58.2 / 248 / 945,
# 2048 60.3 / 240 / 946, 4096 63.5 / 237 / 910, 8192 56.8 / 262 / 881: within this host's noise; the
# backward's peak at the regression suite's N = 2048 (H 4, c 32) is 7.6 MiB at 1024, 9.0 at 2048, 13.8 at 4096;
# at 1024 the forward at N = 1k splits each head's 2048 places in two groups, 5-12% slower (A/B)
GROUP_PLACES = 2048
COMBINE_BYTES = 1 << 20  # bytes of gathered round outputs per block of output rows
DEAD_BELOW = -1e8  # a best max below this came from masked keys only: the position outputs zeros
NORM_EPS = 1e-12  # F.normalize's: a key row shorter than this is divided by it


class Places(NamedTuple):
    """Where each sorted place reads from. q_rows, v_rows, position (C, c) long: each place's row of the
    flattened q (also the output's row) and of v, and its sequence position (-1: a padding place); key_ok
    (C, c) bool, whether each place is a real key (None: every one is); the C chunks are heads' runs of
    per_head, each looking back at the one before it in its head, a head's first at the head's last;
    place_of (P, n_hashes) long: each output row's place in every round. A head's places are its rounds'
    in turn, seq_len each (each position once in a round), then padding places up to per_head * c."""

    q_rows: torch.Tensor
    v_rows: torch.Tensor
    position: torch.Tensor
    key_ok: torch.Tensor | None
    per_head: int
    place_of: torch.Tensor
    seq_len: int


def lsh_attention(q: torch.Tensor, v: torch.Tensor, k: torch.Tensor, places: Places, causal: bool) -> torch.Tensor:
    """Shared-QK attention over sorted chunks, combined over rounds: q (P, d), v (Rv, e) flattened rows ->
    (P, e). A row whose best max is below DEAD_BELOW (it reached masked keys only) outputs zeros. k is
    ignored; its gradient is zeros."""
    return _LSHAttention.apply(q, v, k, places, causal)


class _Group:
    """Chunks [start, stop) of one head and the chunk before the first: their rows gathered once, G + 1 chunks
    in a row, so chunk j's keys (the one before it, then its own) are rows j*c ... (j+2)*c of them, a view."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor, places: Places, causal: bool, start: int, stop: int):
        q_rows, v_rows, position, key_ok, per_head = places[:5]
        first = start - 1 if start % per_head else start + per_head - 1  # the chunk before chunk `start`
        chunks = torch.cat([torch.tensor([first], device=q.device), torch.arange(start, stop, device=q.device)])
        self.rows, self.value_rows = q_rows.index_select(0, chunks).flatten(), v_rows.index_select(0, chunks).flatten()
        self.x = q.index_select(0, self.rows)  # ((G+1)*c, d): the key rows; queries are all but the first chunk
        self.norms = self.x.norm(dim=-1, keepdim=True).clamp_min_(NORM_EPS)
        self.keys = self.x / self.norms
        self.values = v.index_select(0, self.value_rows)
        g, c = stop - start, q_rows.shape[1]
        self.query = self.x[c:].view(g, c, -1)
        pos = position.index_select(0, chunks)
        q_pos, k_pos = pos[1:, :, None], _windows(pos.flatten(), g, c)[:, None, :]
        # windows that may hold the query's position at another place than its own: their chunks in the group
        # and where their keys are the query's position
        mixed_chunks = _mixed_chunks(c, per_head, places.place_of.shape[1], places.seq_len)
        mixed = [j - start for j in range(start, stop) if j % per_head in mixed_chunks]
        self.mixed = torch.tensor(mixed, dtype=torch.long, device=q.device) if mixed else None
        self.mixed_own = None if self.mixed is None else q_pos[self.mixed] == k_pos[self.mixed]
        masked = None if key_ok is None else ~_windows(key_ok.index_select(0, chunks).flatten(), g, c)[:, None, :]
        if causal:
            later = k_pos > q_pos
            masked = later if masked is None else masked | later
        self.masked = masked

    def windows(self, rows: torch.Tensor) -> torch.Tensor:
        """((G+1)*c, d) rows -> (G, 2c, d): each chunk's look-back and own rows (overlapping views)."""
        return _windows(rows, self.query.shape[0], self.query.shape[1])

    def fill_own(self, scores: torch.Tensor, value: float) -> torch.Tensor:
        """(G, c, 2c) scores with `value` where the key is the query's own position, in place."""
        scores.diagonal(self.query.shape[1], 1, 2).fill_(value)  # the query's own place: [:, i, c + i]
        if self.mixed is not None:
            scores[self.mixed] = scores[self.mixed].masked_fill_(self.mixed_own, value)
        return scores

    def weights(self, row_max: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, c, 2c) exp2(score - row max), and the row max (G, c) (computed when not given)."""
        scores = torch.bmm(self.query * LOG2_E, self.windows(self.keys).transpose(1, 2))  # base 2
        self.fill_own(scores, SELF_SCORE)
        if self.masked is not None:
            scores.masked_fill_(self.masked, MASKED_SCORE)
        if row_max is None:
            row_max = scores.amax(-1)
        return scores.sub_(row_max[..., None]).exp2_(), row_max


def _windows(rows: torch.Tensor, g: int, c: int) -> torch.Tensor:
    """((g+1)*c, ...) -> (g, 2c, ...): rows j*c ... (j+2)*c for each j, overlapping views of one tensor."""
    inner = rows.shape[1:]
    step = rows.stride(0)
    return rows.as_strided((g, 2 * c, *inner), (c * step, step, *rows.stride()[1:]))


class _LSHAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, v, k, places: Places, causal: bool):
        chunks, c = places.q_rows.shape
        out = q.new_empty(chunks, c, v.shape[1])
        row_max, total = q.new_empty(chunks, c), q.new_empty(chunks, c)
        for start, stop in _groups(chunks, places.per_head, c):
            group = _Group(q, v, places, causal, start, stop)
            weights, row_max[start:stop] = group.weights()
            torch.sum(weights, -1, out=total[start:stop])
            torch.bmm(weights, group.windows(group.values), out=out[start:stop])
        result, share = _combine(out.view(chunks * c, -1), row_max.flatten(), total.flatten(), places.place_of)
        ctx.save_for_backward(q, v, row_max, share.view(chunks, c), result)
        ctx.places, ctx.causal, ctx.k_meta = places, causal, (k.shape, k.dtype)
        return result

    @staticmethod
    def backward(ctx, grad):
        q, v, row_max, share, result = ctx.saved_tensors
        places, causal = ctx.places, ctx.causal
        need_q, need_v, need_k = ctx.needs_input_grad[:3]
        grad_q = torch.zeros_like(q) if need_q else None
        grad_v = torch.zeros_like(v) if need_v else None
        along = grad.new_empty(grad.shape[0])  # g . out per output row, a block at a time (no (P, e) product)
        for rows in _blocks(grad.shape[0], grad.shape[1] * grad.element_size()):
            torch.linalg.vecdot(grad[rows], result[rows], out=along[rows])
        chunks, c = places.q_rows.shape
        for start, stop in _groups(chunks, places.per_head, c):
            group = _Group(q, v, places, causal, start, stop)
            weights, _ = group.weights(row_max[start:stop])
            own_rows, a = group.rows[c:], share[start:stop]
            g = grad.index_select(0, own_rows).view(*a.shape, -1).mul_(a[..., None])  # do
            if need_v:
                grad_v.index_add_(0, group.value_rows, _window_rows(weights, g))
            if not need_q:
                continue
            grad_total = along[own_rows].view_as(a).mul_(a).neg_()  # dt
            grad_scores = torch.baddbmm(grad_total[..., None], g, group.windows(group.values).transpose(1, 2))
            del g
            # self scores are constants: zero gradient. So are masked ones, whose weights are exactly 0 in every
            # row with a non-zero share (exp2(MASKED_SCORE - max) underflows unless the row saw masked keys only)
            group.fill_own(grad_scores.mul_(weights), 0)
            del weights
            keys, norms = group.keys, group.norms
            grad_x = _window_rows(grad_scores, group.query)  # as keys: dk
            along_keys = torch.linalg.vecdot(keys, grad_x).mul_(norms[:, 0] > NORM_EPS)  # 0 where clamped
            grad_x.addcmul_(keys, along_keys[:, None], value=-1).div_(norms)
            grad_x[c:].view_as(group.query).baddbmm_(grad_scores, group.windows(keys))  # the rows as queries
            grad_q.index_add_(0, group.rows, grad_x)
        grad_k = grad.new_zeros(ctx.k_meta[0], dtype=ctx.k_meta[1]) if need_k else None
        return grad_q, grad_v, grad_k, None, None


def _combine(out, row_max, total, place_of):
    """Places' o (S, e), maxima and totals (S,) -> the output (P, e) and each place's share a_r (S; 0 for a
    padding place and for every place of a row that reached masked keys only), a block of rows at a time."""
    rows_total, rounds = place_of.shape
    result = out.new_empty(rows_total, out.shape[1])
    share = row_max.new_zeros(row_max.shape)
    for rows in _blocks(rows_total, rounds * out.shape[1] * out.element_size()):
        at = place_of[rows]
        maxima = row_max[at]
        best = maxima.amax(1, keepdim=True)
        weight = (maxima - best).exp2_()
        weight.div_((total[at] * weight).sum(1, keepdim=True)).mul_(best > DEAD_BELOW)
        share[at] = weight
        # a sum over the rounds, one row-scaled add each (bmm of (1 x rounds) by (rounds x e) per row ran 10x slower)
        block = torch.mul(out.index_select(0, at[:, 0]), weight[:, :1], out=result[rows])
        for r in range(1, rounds):
            block.addcmul_(out.index_select(0, at[:, r]), weight[:, r : r + 1])
    return result, share


@functools.cache
def _mixed_chunks(c: int, per_head: int, rounds: int, n: int) -> frozenset[int]:
    """A head's chunks (index in the head) whose window may hold a position at two places: it spans two rounds
    (a position is once in each, n places) or looks back at itself (a head of one chunk)."""

    def rounds_of(j: int) -> tuple[int, int]:  # the first and last round of chunk j's real places
        return j * c // n, (min((j + 1) * c, rounds * n) - 1) // n

    mixed = set()
    for j in range(per_head):
        spans = rounds_of(j) + rounds_of(j - 1 if j else per_head - 1)
        if per_head == 1 or min(spans) != max(spans):
            mixed.add(j)
    return frozenset(mixed)


def _window_rows(grad_scores: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """sum over windows of grad_scores^T rhs, (G, c, 2c) and (G, c, e) -> ((G+1)*c, e): each key row's share
    from the (one or two) windows holding it, written in place (no (G, 2c, e) product)."""
    g, c, e = rhs.shape
    rows = rhs.new_empty((g + 1) * c, e)
    rows[g * c :].zero_()
    torch.bmm(grad_scores[:, :, :c].transpose(1, 2), rhs, out=rows[: g * c].view(g, c, e))  # as look-back keys
    rows[c:].view(g, c, e).baddbmm_(grad_scores[:, :, c:].transpose(1, 2), rhs)  # as own keys
    return rows


def _groups(chunks: int, per_head: int, c: int):
    """(start, stop) of each group of chunks: GROUP_PLACES sorted places at a time, within one head."""
    size = max(1, GROUP_PLACES // c)
    for head_start in range(0, chunks, per_head):
        for start in range(head_start, head_start + per_head, size):
            yield start, min(head_start + per_head, start + size)


def _blocks(positions: int, row_bytes: int):
    """Slices of output rows, COMBINE_BYTES of gathered rows each."""
    size = max(1, COMBINE_BYTES // row_bytes)
    return (slice(start, start + size) for start in range(0, positions, size))
