"""Linear attention (Katharopoulos et al. 2020): softmax's exp(q^T k) replaced by phi(q)^T phi(k), phi = elu + 1.

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j))

costs O(N*d^2) instead of O(N^2*d): the sums over keys are one d x (d+1) state, shared by every query.
No 1/sqrt(d) scale (the paper has none; any constant would cancel in the normalisation). Conventions:
- Causal (bottom-right): query i sums keys j <= i + (Nk - Nq). Chunked prefix sums over `causal_chunk`
  positions: each chunk's state phi(K_c)^T [V_c, 1], an exclusive cumulative sum over chunks (the keys
  before the first query's position are every chunk's initial state), and inside a chunk the masked
  c x c quadratic form; per-position d x d states never exist. Blocks of CAUSAL_BLOCK_BYTES of query rows
  at a time, the sums carried from block to block, so no temporary is as large as q: a tensor of 32 MiB
  or more is mapped afresh by glibc at every call and page-faulted (8 heads of 64 at N = 16k are 32
  MiB), which made the whole-sequence chunk tensors of an earlier version 1.9x slower at 16k than on
  a resident heap. The backward is written out (_CausalBlocks): the same blocks in reverse, the sums
  over later chunks carried back.
- Non-causal: the state is summed and the queries are applied ROW_CHUNK_BYTES of rows at a time, and the
  backward (_NonCausalRows) recomputes phi the same way, so the output and the three gradients are
  the only q-sized tensors (autograd's would be the features, the numerator and its gradients too).
- Padding: padded keys get phi = 0, so they add nothing to either sum. Key 0 is always real and every
  query sees it, so no denominator is zero.
- GQA: the query heads of a group are stacked on the query axis against their one key/value state.
- Cross-attention: non-causal, any Nq and Nk; causal, Nq <= Nk (the problem's rule).
- Half-precision inputs are computed in float32 (the sums run over N positions); the output is in the
  input dtype.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import torch
import torch.nn.functional as F

from attention_zoo.decode import RecurrentState, grouped_queries, new_token_mask
from attention_zoo.interface import Attention, builds_graph
from attention_zoo.padding import pad_rows
from attention_zoo.problem import Problem
from attention_zoo.reference import expand_kv_heads
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast

# the non-causal passes take this many bytes of rows (all heads) at a time. Measured at N = 1k / 4k /
# 16k (B 1, H 8, D 64, fp32, one thread, AMD EPYC): 256 KiB 4.6 / 18.3 / 86.0 ms, 1 MiB 5.4 / 16.9 / 80.5,
# 4 MiB 4.2 / 16.7 / 83.3, 16 MiB 7.6 / 31.6 / 105; 4.0 / 19.5 / 132 with whole q-sized temporaries
ROW_CHUNK_BYTES = 4 << 20
# the causal passes take a block of chunks at a time, this many bytes of their query rows (all heads).
# Measured fwd / fwd_bwd ms at N = 1k / 4k / 16k (B 1, H 8, D 64, c 64, fp32, one thread, AMD EPYC; one
# process, settings interleaved): 128 KiB 9.2 / 27.2, 31.0 / 94.4, 136 / 393; 256 KiB 7.9 / 24.5, 26.4 / 85.2,
# 138 / 360; 512 KiB 9.1 / 26.1, 25.3 / 92.7, 135 / 343; 1 MiB 9.6 / 33.8, 26.0 / 85.8, 131 / 374; 4 MiB
# 11.9 / 35.7, 48.5 / 136, 158 / 430 (within this host's noise from 256 KiB to 1 MiB)
CAUSAL_BLOCK_BYTES = 512 << 10


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1: positive, so every kernel value and normaliser is positive."""
    return F.elu(x).add_(1.0)  # in place: elu's backward reads its input, not its output


def linear_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """A = phi(Q) phi(K)^T in float64, masked to `allowed` (B, 1, Nq, Nk); out = A V / A 1."""
    q, k, v = q.double(), k.double(), v.double()
    kernel = elu_feature_map(q) @ expand_kv_heads(elu_feature_map(k), q.shape[1]).transpose(-1, -2)
    kernel = kernel * allowed
    return (kernel @ expand_kv_heads(v, q.shape[1])) / kernel.sum(-1, keepdim=True)


def _exclusive_sums_(sums: torch.Tensor, steps: torch.Tensor, carry: torch.Tensor, reverse: bool = False):
    """sums[:, j] = carry + the steps[:, j'] before j (after j when reverse), in place; returns the carry past them.

    One add per chunk: torch's cumsum over a dimension that is not the innermost runs a strided scalar
    loop on the CPU, 5x slower here at 64 chunks of 64 x 64 states (9.8 ms against 1.8 ms).
    """
    for j in reversed(range(steps.shape[1])) if reverse else range(steps.shape[1]):
        sums[:, j] = carry
        carry = sums[:, j] + steps[:, j]
    return carry


def _chunk_block(x: torch.Tensor, start: int, rows: int, blocks: int, c: int, features: bool, keep=None):
    """Rows [start, start + rows) of x (X, G, N, d) as (X, blocks, G*c, d), the G heads of a chunk stacked on
    its rows: phi(x) when `features` (times `keep` (X, 1, N, 1), 0 for padded keys), then zero rows up to
    blocks * c (the last chunk's padding; phi(0) would be 1)."""
    part = x[:, :, start : start + rows]
    if features:
        part = elu_feature_map(part)
        if keep is not None:
            part = part.mul_(keep[:, :, start : start + rows])
    part = pad_rows(part, blocks * c - rows)
    batch, group = part.shape[:2]
    # contiguous: a view's batch strides span the whole sequence, and matmul would copy it at every product
    return part.view(batch, group, blocks, c, -1).transpose(1, 2).reshape(batch, blocks, group * c, -1).contiguous()


def _write_block(into: torch.Tensor, start: int, rows: int, block: torch.Tensor) -> None:
    """_chunk_block's inverse: block (X, blocks, G*c, d)'s real rows into rows [start, start + rows) of into
    (X, G, N, d)."""
    batch, group = into.shape[:2]
    blocks, c = block.shape[1], block.shape[2] // group
    rows_of = block.view(batch, blocks, group, c, -1).transpose(1, 2).flatten(2, 3)
    into[:, :, start : start + rows] = rows_of[:, :, :rows]


class _Blocks(NamedTuple):
    """How _CausalBlocks cuts the sequence: chunks of c query positions, `per_block` chunks a block; query i
    sits at key offset + i, and the keys before `offset` are seen by every query."""

    c: int
    per_block: int
    offset: int

    def spans(self, q_len: int) -> list[tuple[int, int, int]]:
        """(first query row, rows, chunks) of each block."""
        step = self.c * self.per_block
        return [(r, min(step, q_len - r), -(-min(step, q_len - r) // self.c)) for r in range(0, q_len, step)]

    def offset_spans(self) -> list[tuple[int, int]]:
        """(first key row, rows) of the blocks of keys before the first query's position."""
        return [(start, rows) for start, rows, _ in self.spans(self.offset)]

    def inputs(self, q, k, v, keep, start: int, rows: int, chunks: int):
        """The block's query features, key features and values, each (X, chunks, rows of a chunk, d)."""
        keys_at = self.offset + start
        return (
            _chunk_block(q, start, rows, chunks, self.c, True),
            _chunk_block(k, keys_at, rows, chunks, self.c, True, keep),
            _chunk_block(v, keys_at, rows, chunks, self.c, False),
        )


def _offset_sums(k, v, keep, blocks: _Blocks):
    """S0 = phi(K)^T V and z0 = phi(K)^T 1 over the keys before the first query's position (X, d, e), (X, d)."""
    s0 = k.new_zeros(k.shape[0], k.shape[-1], v.shape[-1])
    z0 = k.new_zeros(k.shape[0], k.shape[-1])
    for start, rows in blocks.offset_spans():
        phi_k = _chunk_block(k, start, rows, 1, rows, True, keep)[:, 0]  # (X, rows, d)
        s0.baddbmm_(phi_k.transpose(-1, -2), v[:, 0, start : start + rows])
        z0.add_(phi_k.sum(-2))
    return s0, z0


def _causal_forward(q, k, v, keep, mask, blocks: _Blocks, saving: bool):
    """Causal linear attention a block of chunks at a time, the sums carried from block to block.

    q (X, G, Nq, d) (the G query heads of a key/value head), k (X, 1, Nk, d), v (X, 1, Nk, e), keep
    (X, 1, Nk, 1) or None, mask (G*c, c). Per chunk, with qc, kc, vc its features and values:
        A = (qc kc^T) * mask,   out = (qc S_before + A vc) / (qc z_before + A 1)
    S_before (z_before) being the sums of kc^T vc (kc^T 1) over earlier chunks and the offset keys.
    Returns out (X, G, Nq, e) and, when `saving`, what the backward reads of each block: S_before,
    z_before, A and the denominators.
    """
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    s_run, z_run = _offset_sums(k, v, keep, blocks)
    saved = []
    for start, rows, chunks in blocks.spans(q.shape[2]):
        qc, kc, vc = blocks.inputs(q, k, v, keep, start, rows, chunks)
        s_before = q.new_empty(*kc.shape[:2], kc.shape[-1], vc.shape[-1])
        s_run = _exclusive_sums_(s_before, kc.transpose(-1, -2) @ vc, s_run)
        z_before = q.new_empty(*kc.shape[:2], kc.shape[-1])
        z_run = _exclusive_sums_(z_before, kc.sum(-2), z_run)
        scores = (qc @ kc.transpose(-1, -2)).mul_(mask)  # A (X, chunks, G*c, c)
        num = (qc @ s_before).add_(scores @ vc)
        den = (qc @ z_before[..., None]).add_(scores.sum(-1, keepdim=True))  # (X, chunks, G*c, 1)
        # a padding row of the last chunk has den 0 and num 0: out 0 there, and no 0/0 reaches the gradients
        den.clamp_min_(torch.finfo(den.dtype).tiny)
        _write_block(out, start, rows, num.div_(den))
        if saving:
            saved += [s_before, z_before, scores, den]
    return out, saved


class _CausalBlocks(torch.autograd.Function):
    """_causal_forward with a hand-written backward: the same blocks in reverse, the sums over later chunks
    carried back. Saved: the inputs, the output and each block's S_before, z_before, A and denominators;
    no per-chunk tensor exists for the whole sequence (blocks of CAUSAL_BLOCK_BYTES of query rows).

    Per chunk, with g the output's gradient, gn = g / den and gd = -(g . out) / den,
        dA = (gn vc^T + gd) * mask,  dqc = gn S_before^T + gd z_before^T + dA kc,
        dkc = dA^T qc + vc S_after^T + z_after,  dvc = A^T gn + kc S_after,
    S_after (z_after) being the sums of qc^T gn (qc^T gd) over later chunks; the offset keys take their
    total, and the features' gradients are times phi's slope.
    """

    @staticmethod
    def forward(ctx, q, k, v, keep, mask, blocks: _Blocks):
        out, saved = _causal_forward(q, k, v, keep, mask, blocks, saving=True)
        ctx.save_for_backward(q, k, v, keep, mask, out, *saved)
        ctx.blocks = blocks
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, keep, mask, out, *saved = ctx.saved_tensors
        blocks, c = ctx.blocks, ctx.blocks.c
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        s_after = q.new_zeros(k.shape[0], k.shape[-1], v.shape[-1])
        z_after = q.new_zeros(k.shape[0], k.shape[-1])
        spans = blocks.spans(q.shape[2])
        for i in reversed(range(len(spans))):
            start, rows, chunks = spans[i]
            s_before, z_before, scores, den = saved[4 * i : 4 * i + 4]
            qc, kc, vc = blocks.inputs(q, k, v, keep, start, rows, chunks)
            gn = _chunk_block(grad, start, rows, chunks, c, False) / den
            gd = (gn * _chunk_block(out, start, rows, chunks, c, False)).sum(-1, keepdim=True).neg_()
            d_scores = (gn @ vc.transpose(-1, -2)).add_(gd).mul_(mask)
            d_qc = (gn @ s_before.transpose(-1, -2)).add_(d_scores @ kc).addcmul_(gd, z_before[..., None, :])
            later_s = torch.empty_like(s_before)
            s_after = _exclusive_sums_(later_s, qc.transpose(-1, -2) @ gn, s_after, reverse=True)
            later_z = torch.empty_like(z_before)
            z_after = _exclusive_sums_(later_z, (qc * gd).sum(-2), z_after, reverse=True)
            d_kc = (d_scores.transpose(-1, -2) @ qc).add_(vc @ later_s.transpose(-1, -2)).add_(later_z[..., None, :])
            d_vc = (scores.transpose(-1, -2) @ gn).add_(kc @ later_s)
            _write_block(dq, start, rows, d_qc.mul_(_feature_slope_(qc)))
            _write_block(dk, blocks.offset + start, rows, d_kc.mul_(_feature_slope_(kc)))
            _write_block(dv, blocks.offset + start, rows, d_vc)
        # the keys before the first query are in every chunk's S_before: they take the totals
        for start, rows in blocks.offset_spans():
            phi_k = _chunk_block(k, start, rows, 1, rows, True, keep)
            d_k = (v[:, :, start : start + rows] @ s_after.transpose(-1, -2)[:, None]).add_(z_after[:, None, None])
            dv[:, :, start : start + rows] = phi_k @ s_after[:, None]
            dk[:, :, start : start + rows] = d_k.mul_(_feature_slope_(phi_k))
        return dq, dk, dv, None, None, None


def _feature_slope_(phi: torch.Tensor) -> torch.Tensor:
    """d phi / dx of phi = elu + 1 from phi(x), in place: 1 where x > 0 (phi = x + 1 > 1), exp(x) = phi(x) <= 1
    otherwise, so min(phi, 1)."""
    return phi.clamp_max_(1.0)


class _NonCausalRows(torch.autograd.Function):
    """queries (B, Hkv, G*Nq, d) (a group's heads stacked on the rows), k, v (B, Hkv, Nk, d), key_keep
    (B, 1, Nk, 1) or None -> phi(Q) S / phi(Q) z with S = phi(K)^T V, z = phi(K)^T 1, `rows` rows at a time.

    Backward, with g the output's gradient, n = g / den and t = -(g . out) / den per row:
    dphi(Q) = n S^T + t z^T, dS = phi(Q)^T n, dz = phi(Q)^T t, dphi(K) = V dS^T + dz^T, dV = phi(K) dS.
    """

    @staticmethod
    def forward(ctx, queries, k, v, key_keep, rows: int):
        out, state, norm = _non_causal_rows(queries, k, v, key_keep, rows)
        ctx.save_for_backward(queries, k, v, key_keep, state, norm, out)
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad):
        """Row chunks again, each step written into the gradient it belongs to: besides the three gradients,
        only a chunk's phi and its n exist at once."""
        queries, k, v, key_keep, state, norm, out = ctx.saved_tensors
        rows = ctx.rows
        grad_queries = torch.empty_like(queries)
        grad_state, grad_norm = torch.zeros_like(state), torch.zeros_like(norm)
        for start in range(0, queries.shape[2], rows):
            part = slice(start, start + rows)
            phi_q = elu_feature_map(queries[:, :, part])
            den = phi_q @ norm
            n = grad[:, :, part] / den
            grad_state.add_(phi_q.transpose(-1, -2) @ n)
            grad_phi = grad_queries[:, :, part]
            torch.matmul(n, state.transpose(-1, -2), out=grad_phi)
            t = n.mul_(out[:, :, part]).sum(-1, keepdim=True).neg_()  # -(g . out) / den, in n's memory
            del n
            grad_norm.add_(phi_q.transpose(-1, -2) @ t)
            grad_phi.addcmul_(t, norm.transpose(-1, -2)).mul_(_feature_slope_(phi_q))
        del phi_q  # the last chunk's, before the key gradients exist
        grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)
        for start in range(0, k.shape[2], rows):
            part = slice(start, start + rows)
            phi_k = _key_features(k, key_keep, part)
            torch.matmul(phi_k, grad_state, out=grad_v[:, :, part])
            grad_phi = grad_k[:, :, part]
            torch.matmul(v[:, :, part], grad_state.transpose(-1, -2), out=grad_phi)
            # a padded key's phi is 0, so its slope reads 0 too: its gradient is 0, as it should be
            grad_phi.add_(grad_norm.transpose(-1, -2)).mul_(_feature_slope_(phi_k))
        return grad_queries, grad_k, grad_v, None, None


def _non_causal_rows(queries, k, v, key_keep, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """_NonCausalRows' forward without a graph: (out, S, z), the state and the queries `rows` rows at a time."""
    batch, kv_heads, kv_len, head_dim = k.shape
    state = k.new_zeros(batch, kv_heads, head_dim, v.shape[-1])
    norm = k.new_zeros(batch, kv_heads, head_dim, 1)
    for start in range(0, kv_len, rows):
        phi_k = _key_features(k, key_keep, slice(start, start + rows))
        state.add_(phi_k.transpose(-1, -2) @ v[:, :, start : start + rows])
        norm.add_(phi_k.sum(-2)[..., None])
    if queries.shape[2] <= rows:  # one chunk: its result is the output, no copy into one
        phi_q = elu_feature_map(queries)
        return (phi_q @ state).div_(phi_q @ norm), state, norm
    out = queries.new_empty(*queries.shape[:-1], v.shape[-1])
    for start in range(0, queries.shape[2], rows):
        phi_q = elu_feature_map(queries[:, :, start : start + rows])
        out[:, :, start : start + rows] = (phi_q @ state).div_(phi_q @ norm)
    return out, state, norm


def _key_features(k: torch.Tensor, key_keep: torch.Tensor | None, part: slice) -> torch.Tensor:
    """phi(k) of rows `part`, zero for padded keys."""
    phi_k = elu_feature_map(k[:, :, part])
    return phi_k if key_keep is None else phi_k.mul_(key_keep[:, :, part])


class LinearAttention(Attention):
    """phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1) with phi = elu + 1; causal by chunked prefix sums."""

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
        if not self.problem.causal:
            batch, kv_heads, _, head_dim = k.shape
            rows = max(1, ROW_CHUNK_BYTES // (batch * kv_heads * head_dim * k.element_size()))
            queries = grouped_queries(q, kv_heads)
            if builds_graph(q, k, v):
                out = _NonCausalRows.apply(queries, k, v, self.key_keep, rows)
            else:  # no graph to build: the same rows, without an autograd node and its saved tensors
                out = _non_causal_rows(queries, k, v, self.key_keep, rows)[0]
            return out.view(q.shape).to(out_dtype)
        return self._causal(q, k, v).to(out_dtype)

    def _causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Hq, Nq, d); k, v (B, Hkv, Nk, d) -> (B, Hq, Nq, d), through _CausalBlocks."""
        batch, kv_heads, kv_len, head_dim = k.shape
        heads, q_len = q.shape[1], q.shape[2]
        rows = max(1, CAUSAL_BLOCK_BYTES // (batch * heads * head_dim * q.element_size()))
        blocks = _Blocks(self.chunk, max(1, rows // self.chunk), kv_len - q_len)
        queries = q.reshape(batch * kv_heads, heads // kv_heads, q_len, head_dim)
        keys, values = (x.reshape(batch * kv_heads, 1, kv_len, -1) for x in (k, v))
        keep = None
        if self.key_keep is not None:
            keep = self.key_keep.expand(batch, kv_heads, kv_len, 1).reshape(batch * kv_heads, 1, kv_len, 1)
        if builds_graph(q, k, v):
            out = _CausalBlocks.apply(queries, keys, values, keep, self.chunk_causal, blocks)
        else:  # no graph to build: the same blocks, nothing kept for a backward
            out = _causal_forward(queries, keys, values, keep, self.chunk_causal, blocks, saving=False)[0]
        return out.view(q.shape)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return linear_dense(q, k, v, self.problem.allowed_mask())

    def decode_state(self, k: torch.Tensor, v: torch.Tensor) -> RecurrentState:
        """The recurrent state S = sum_j phi(k_j) [v_j, 1]^T (B, Hkv, d, d+1) of the context: fixed in L."""
        phi_k, v = elu_feature_map(k.to(self.compute_dtype)), v.to(self.compute_dtype)
        return RecurrentState(phi_k.transpose(-1, -2) @ torch.cat([v, v.new_ones(*v.shape[:3], 1)], -1), k.shape[2])

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: RecurrentState):
        """The paper's recurrent form: out_t = phi(q_t)^T (S + new keys s <= t) / the same with [.., 1]; S updated."""
        compute, steps, head_dim = self.compute_dtype, q.shape[2], q.shape[3]
        phi_q = grouped_queries(elu_feature_map(q.to(compute)), k.shape[1])  # (B, Hkv, G*T, d)
        phi_k, v = elu_feature_map(k.to(compute)), v.to(compute)
        v_ones = torch.cat([v, v.new_ones(*v.shape[:3], 1)], dim=-1)  # (B, Hkv, T, d+1)
        within = (phi_q @ phi_k.transpose(-1, -2)).mul_(
            new_token_mask(steps, q.device).repeat(q.shape[1] // k.shape[1], 1)
        )
        out = (phi_q @ state.sums).add_(within @ v_ones)
        out = out[..., :head_dim] / out[..., head_dim:]
        sums = state.sums + phi_k.transpose(-1, -2) @ v_ones
        return out.reshape(q.shape).to(q.dtype), RecurrentState(sums, state.position + steps)


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
    oracle_hparams={"causal_chunk": 16},
    decode=True,
)
def linear_attention(problem: Problem, *, causal_chunk: Annotated[int, AtLeast(1)] = 64) -> Attention:
    """Linear attention (Katharopoulos): phi = elu + 1, phi(Q)(phi(K)^T V) with its normaliser, in O(N*d^2)."""
    return LinearAttention(problem, causal_chunk)
