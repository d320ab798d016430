"""Reformer's sorted-chunk attention and its combination over hash rounds, forward and backward written out.

`lsh_chunks`: each chunk of `c` sorted places attends itself and the chunk before it, over shared-QK keys (the
places' queries at unit length). The places are rows of the flattened q and v, gathered a group of chunks
at a time (GROUP_PLACES places: the group's rows, scores and weights stay in the cache), so no gathered
copy of the whole sorted sequence exists. Per place the result is left unnormalised: the output
sum_j w_j v_j, the row's maximum score and its total sum_j w_j, with w_j = exp(s_j - max) in base 2
(`attention_zoo.base2`), so the rounds combine by their log-sum-exp.

Masking: a place's own key scores SELF_SCORE (it wins only over masked keys); a padding place, a padded key
and (causal) a later key score MASKED_SCORE. Both are constants, so their gradients are zero.

Only q, v, the index tensors and the row maxima are saved. The backward recomputes each group's weights,
then, with s = q . k (k = x / |x| of the key's row x) and g, t the gradients of the output and the total:
dw = g v^T + t, ds = w dw (d w / d s = w for base-2 weights of base-2 scores), dq = ds k,
dk = ds^T q, dx = (dk - k (k . dk)) / |x|, dv = w^T g; each added into the rows the group gathered from
(index_add_: a row reached in several places, rounds and chunks gets each contribution).

`combine_rounds`: each position's rounds, read from their sorted places a block of positions at a time,
weighed by exp2(round max - best max): out = sum_r w_r o_r / sum_r w_r t_r. Its backward writes each place's
gradient straight into sorted order: do_r = g w_r / den, dt_r = -(g . out) w_r / den. So between the chunks
and the output no whole-sequence temporary exists (a gather, products and sums through autograd made six
to eight, forward and backward, each a fresh 32-64 MiB at N = 16k).
"""

from __future__ import annotations

import torch

from attention_zoo.base2 import LOG2_E

SELF_SCORE = -1e5  # a position's score for itself: wins only over masked keys
MASKED_SCORE = -1e9
GROUP_PLACES = 4096  # sorted places per group of chunks (a group's gathered rows and scores stay in the cache)
COMBINE_BYTES = 1 << 20  # bytes of gathered round outputs per block of positions
DEAD_BELOW = -1e8  # a best max below this came from masked keys only: the position outputs zeros
NORM_EPS = 1e-12  # F.normalize's: a key row shorter than this is divided by it


def lsh_chunks(
    q: torch.Tensor,
    v: torch.Tensor,
    q_rows: torch.Tensor,
    v_rows: torch.Tensor,
    position: torch.Tensor,
    key_ok: torch.Tensor | None,
    per_head: int,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chunked shared-QK attention over sorted places.

    q (Rq, d), v (Rv, e): flattened rows. q_rows, v_rows, position (C, c) long: each place's row of q and of v
    and its sequence position (-1: a padding place); key_ok (C, c) bool, whether each place is a real key
    (None: every one is). The C chunks are heads' runs of `per_head`: each looks back at the one before it
    in its head, a head's first at the head's last. Returns the unnormalised output (C, c, e), each place's
    max score (C, c; base 2, no gradient) and its total weight (C, c).
    """
    return _LSHChunks.apply(q, v, q_rows, v_rows, position, key_ok, per_head, causal)


class _Group:
    """Chunks [start, stop) of one head and the chunk before the first: their rows gathered once, G + 1 chunks
    in a row, so chunk j's keys (the one before it, then its own) are rows j*c ... (j+2)*c of them, a view."""

    def __init__(self, q, v, q_rows, v_rows, position, key_ok, per_head, causal, start, stop):
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
        self.own = q_pos == k_pos  # (G, c, 2c)
        masked = None if key_ok is None else ~_windows(key_ok.index_select(0, chunks).flatten(), g, c)[:, None, :]
        if causal:
            later = k_pos > q_pos
            masked = later if masked is None else masked | later
        self.masked = masked

    def fixed(self) -> torch.Tensor:
        """(G, c, 2c) bool: the scores that are constants (self and masked), whose gradients are zero."""
        return self.own if self.masked is None else self.own | self.masked

    def windows(self, rows: torch.Tensor) -> torch.Tensor:
        """((G+1)*c, d) rows -> (G, 2c, d): each chunk's look-back and own rows (overlapping views)."""
        return _windows(rows, self.query.shape[0], self.query.shape[1])

    def weights(self, row_max: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, c, 2c) exp2(score - row max), and the row max (G, c) (computed when not given)."""
        scores = torch.bmm(self.query * LOG2_E, self.windows(self.keys).transpose(1, 2))  # base 2
        scores.masked_fill_(self.own, SELF_SCORE)
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


class _LSHChunks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, v, q_rows, v_rows, position, key_ok, per_head: int, causal: bool):
        chunks, c = q_rows.shape
        out = q.new_empty(chunks, c, v.shape[1])
        row_max, total = q.new_empty(chunks, c), q.new_empty(chunks, c)
        for start, stop in _groups(chunks, per_head, c):
            group = _Group(q, v, q_rows, v_rows, position, key_ok, per_head, causal, start, stop)
            weights, row_max[start:stop] = group.weights()
            torch.sum(weights, -1, out=total[start:stop])
            torch.bmm(weights, group.windows(group.values), out=out[start:stop])
        ctx.mark_non_differentiable(row_max)
        ctx.save_for_backward(q, v, q_rows, v_rows, position, key_ok, row_max)
        ctx.per_head, ctx.causal = per_head, causal
        return out, row_max, total

    @staticmethod
    def backward(ctx, grad_out, _grad_row_max, grad_total):
        q, v, q_rows, v_rows, position, key_ok, row_max = ctx.saved_tensors
        need_q, need_v = ctx.needs_input_grad[:2]
        grad_q = torch.zeros_like(q) if need_q else None
        grad_v = torch.zeros_like(v) if need_v else None
        chunks, c = q_rows.shape
        for start, stop in _groups(chunks, ctx.per_head, c):
            group = _Group(q, v, q_rows, v_rows, position, key_ok, ctx.per_head, ctx.causal, start, stop)
            weights, _ = group.weights(row_max[start:stop])
            g = grad_out[start:stop]
            if need_v:
                grad_v.index_add_(0, group.value_rows, _overlap_sum(torch.bmm(weights.transpose(1, 2), g), c))
            if not need_q:
                continue
            grad_scores = torch.baddbmm(grad_total[start:stop, :, None], g, group.windows(group.values).transpose(1, 2))
            grad_scores.mul_(weights).masked_fill_(group.fixed(), 0)
            keys = group.keys
            grad_keys = _overlap_sum(torch.bmm(grad_scores.transpose(1, 2), group.query), c)
            along = (keys * grad_keys).sum(-1, keepdim=True).mul_(group.norms > NORM_EPS)  # 0 where clamped
            grad_x = grad_keys.sub_(keys * along).div_(group.norms)
            grad_x[c:].view_as(group.query).baddbmm_(grad_scores, group.windows(keys))  # the rows as queries
            grad_q.index_add_(0, group.rows, grad_x)
        return grad_q, grad_v, None, None, None, None, None, None


def _overlap_sum(windows: torch.Tensor, c: int) -> torch.Tensor:
    """(G, 2c, e) per-window rows -> ((G+1)*c, e): each row's sum over the (one or two) windows holding it."""
    g, _, e = windows.shape
    rows = windows.new_empty((g + 1) * c, e)
    rows[:c] = windows[0, :c]
    torch.add(windows[1:, :c], windows[:-1, c:], out=rows[c : g * c].view(g - 1, c, e))
    rows[g * c :] = windows[-1, c:]
    return rows


def _groups(chunks: int, per_head: int, c: int):
    """(start, stop) of each group of chunks: GROUP_PLACES sorted places at a time, within one head."""
    size = max(1, GROUP_PLACES // c)
    for head_start in range(0, chunks, per_head):
        for start in range(head_start, head_start + per_head, size):
            yield start, min(head_start + per_head, start + size)


def combine_rounds(
    out: torch.Tensor, row_max: torch.Tensor, total: torch.Tensor, place_of: torch.Tensor, k: torch.Tensor
) -> torch.Tensor:
    """Sorted places' unnormalised outputs (S, e), max scores and totals (S,) -> (P, e), one row per position.

    place_of (P, n_hashes) long: each position's place in every round. A position whose best max is below
    DEAD_BELOW (it reached masked keys only) outputs zeros. k is ignored; its gradient is zeros.
    """
    return _CombineRounds.apply(out, row_max, total, place_of, k)


class _CombineRounds(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out, row_max, total, place_of, k):
        positions, rounds = place_of.shape
        result = out.new_empty(positions, out.shape[1])
        scale = row_max.new_empty(positions, rounds)  # w_r / den (0 for a dead position)
        for rows in _blocks(positions, rounds * out.shape[1] * out.element_size()):
            places = place_of[rows]
            maxima = row_max[places]
            best = maxima.amax(1, keepdim=True)
            weight = (maxima - best).exp2_()
            weight.div_((total[places] * weight).sum(1, keepdim=True)).mul_(best > DEAD_BELOW)
            scale[rows] = weight
            gathered = out.index_select(0, places.flatten()).view(*places.shape, -1)
            torch.bmm(weight[:, None, :], gathered, out=result[rows, None, :])
        ctx.save_for_backward(result, scale, place_of)
        ctx.sizes, ctx.k_shape = (out.shape[0], k.dtype), k.shape
        return result

    @staticmethod
    def backward(ctx, grad):
        result, scale, place_of = ctx.saved_tensors
        need_out, need_total = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        places_total, k_dtype = ctx.sizes
        grad_out = grad.new_zeros(places_total, grad.shape[1]) if need_out else None
        grad_total = grad.new_zeros(places_total) if need_total else None
        for rows in _blocks(*place_of.shape[:1], place_of.shape[1] * grad.shape[1] * grad.element_size()):
            places, weight, g = place_of[rows].flatten(), scale[rows], grad[rows]
            if need_out:
                grad_out.index_copy_(0, places, (g[:, None, :] * weight[..., None]).flatten(0, 1))
            if need_total:
                along = (g * result[rows]).sum(-1, keepdim=True)
                grad_total.index_copy_(0, places, (weight * along).neg_().flatten())
        grad_k = grad.new_zeros(ctx.k_shape, dtype=k_dtype) if ctx.needs_input_grad[4] else None
        return grad_out, None, grad_total, None, grad_k


def _blocks(positions: int, row_bytes: int):
    """Slices of positions, COMBINE_BYTES of gathered rows each."""
    size = max(1, COMBINE_BYTES // row_bytes)
    return (slice(start, start + size) for start in range(0, positions, size))
