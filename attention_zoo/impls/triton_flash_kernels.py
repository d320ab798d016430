"""FlashAttention 2 in Triton: the forward kernel (saves log-sum-exp) and the three backward kernels.

Imported only when a triton_flash entry is built: importing triton is slow and optional, and under
TRITON_INTERPRET=1 the decorators below must run after the variable is set.

Conventions shared by every kernel (see attention_zoo.problem):
- q, dO, OUT (B, Hq, Nq, D); k, v, dK, dV (B, Hkv, Nk, D), any strides; query head h reads kv head h // GROUP.
- Causal is bottom-right aligned: query i sees key j iff j <= i + (Nk - Nq).
- valid_lens[b] keys of sequence b are real; keys at or past it are never attended.
- Scores are kept in base 2: qk_scale = softmax scale * log2(e), and LSE holds log2 of each row's sum.
- The head dim is padded to HEAD_DIM_PAD (a power of two >= 16, as tl.dot needs) by masked loads that
  read zeros, which change no dot product.
- Every query row sees key 0 (problems guarantee Nq <= Nk when causal and valid lengths >= 1), and key
  blocks are visited from key 0 upwards, so a row's running max is finite after the first block and
  the online softmax never computes -inf - -inf.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl


@triton.jit
def _load(base, row_start, rows, stride_row, stride_d, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
          BLOCK_ROWS: tl.constexpr, CHECK_ROWS: tl.constexpr):  # fmt: skip
    """A (BLOCK_ROWS, HEAD_DIM_PAD) tile of one head's (rows, HEAD_DIM) matrix, zeros outside it.

    Bounds are checked only where the tile can leave the matrix: rows when CHECK_ROWS, columns when the
    head dim is padded.
    """
    offs_r = row_start + tl.arange(0, BLOCK_ROWS)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    ptrs = base + offs_r[:, None] * stride_row + offs_d[None, :] * stride_d
    if CHECK_ROWS:
        tile = tl.load(ptrs, mask=(offs_r[:, None] < rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    elif HEAD_DIM != HEAD_DIM_PAD:
        tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def _store(base, row_start, rows, stride_row, stride_d, tile, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
           BLOCK_ROWS: tl.constexpr):  # fmt: skip
    """Store the part of a (BLOCK_ROWS, HEAD_DIM_PAD) tile that lies inside the (rows, HEAD_DIM) matrix."""
    offs_r = row_start + tl.arange(0, BLOCK_ROWS)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    ptrs = base + offs_r[:, None] * stride_row + offs_d[None, :] * stride_d
    tl.store(ptrs, tile.to(base.dtype.element_ty), mask=(offs_r[:, None] < rows) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _key_phases(start_m, kv_end, offset, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For the query tile at start_m: keys [0, full_end) need no mask, [full_end, hi) need one.

    full_end is a multiple of BLOCK_N; a key block before it lies inside the valid keys and, when
    causal, left of the diagonal for the tile's first row (so for every row of the tile).
    """
    full_end = (kv_end // BLOCK_N) * BLOCK_N
    hi = kv_end
    if CAUSAL:
        full_end = tl.minimum(full_end, ((start_m + offset + 1) // BLOCK_N) * BLOCK_N)
        hi = tl.minimum(hi, start_m + BLOCK_M + offset)  # the tile's last row sees keys < this
    return full_end, hi


@triton.jit
def _allowed(offs_m, offs_n, kv_end, offset, CAUSAL: tl.constexpr):
    """(len(offs_m), len(offs_n)) mask: key inside the valid length and, when causal, not after the diagonal."""
    allowed = offs_n[None, :] < kv_end
    if CAUSAL:
        allowed = allowed & (offs_n[None, :] <= offs_m[:, None] + offset)
    return allowed


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K_HEAD, V_HEAD, stride_kn, stride_kd, stride_vn, stride_vd, offs_m, start, end,
               kv_len, kv_end, offset, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
               BLOCK_N: tl.constexpr):  # fmt: skip
    """Online softmax over the key blocks in [start, end): FA2's inner loop, unnormalised accumulator."""
    for start_n in tl.range(start, end, BLOCK_N):
        k = _load(K_HEAD, start_n, kv_len, stride_kn, stride_kd, HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, MASKED)
        v = _load(V_HEAD, start_n, kv_len, stride_vn, stride_vd, HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, MASKED)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASKED:
            allowed = _allowed(offs_m, start_n + tl.arange(0, BLOCK_N), kv_end, offset, CAUSAL)
            qk = tl.where(allowed, qk * qk_scale, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            qk = qk - m_ij[:, None]
        else:
            m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_ij[:, None]
        p = tl.math.exp2(qk)
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit
def fwd_kernel(Q, K, V, OUT, LSE, VALID_LENS,
               stride_qb, stride_qh, stride_qm, stride_qd,
               stride_kb, stride_kh, stride_kn, stride_kd,
               stride_vb, stride_vh, stride_vn, stride_vd,
               stride_ob, stride_oh, stride_om, stride_od,
               q_heads, q_len, kv_len, qk_scale,
               HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, GROUP: tl.constexpr, CAUSAL: tl.constexpr,
               DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """OUT and LSE for one (query tile, batch * query head); grid (cdiv(Nq, BLOCK_M), B * Hq)."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // q_heads).to(tl.int64)  # int64: b * stride_b can pass 2^31 on large batches
    h = (bh % q_heads).to(tl.int64)
    kv_h = h // GROUP
    offset = kv_len - q_len
    kv_end = tl.load(VALID_LENS + b)
    K_HEAD = K + b * stride_kb + kv_h * stride_kh
    V_HEAD = V + b * stride_vb + kv_h * stride_vh

    q = _load(Q + b * stride_qb + h * stride_qh, start_m, q_len, stride_qm, stride_qd, HEAD_DIM, HEAD_DIM_PAD, BLOCK_M,
              True)  # fmt: skip
    offs_m = start_m + tl.arange(0, BLOCK_M)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    full_end, hi = _key_phases(start_m, kv_end, offset, CAUSAL, BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_HEAD, V_HEAD, stride_kn, stride_kd, stride_vn, stride_vd, offs_m,
                               0, full_end, kv_len, kv_end, offset, qk_scale, False, CAUSAL, HEAD_DIM, HEAD_DIM_PAD,
                               DOT_PRECISION, BLOCK_N)  # fmt: skip
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_HEAD, V_HEAD, stride_kn, stride_kd, stride_vn, stride_vd, offs_m,
                               full_end, hi, kv_len, kv_end, offset, qk_scale, True, CAUSAL, HEAD_DIM, HEAD_DIM_PAD,
                               DOT_PRECISION, BLOCK_N)  # fmt: skip

    _store(OUT + b * stride_ob + h * stride_oh, start_m, q_len, stride_om, stride_od, acc / l_i[:, None], HEAD_DIM,
           HEAD_DIM_PAD, BLOCK_M)  # fmt: skip
    tl.store(LSE + bh * q_len + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < q_len)


@triton.jit
def bwd_preprocess_kernel(OUT, DO, DELTA,
                          stride_ob, stride_oh, stride_om, stride_od,
                          stride_dob, stride_doh, stride_dom, stride_dod,
                          q_heads, q_len,
                          HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_M: tl.constexpr):  # fmt: skip
    """delta = rowsum(dO * OUT), the softmax-backward term FA2 computes once per row before the main kernels."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // q_heads).to(tl.int64)
    h = (bh % q_heads).to(tl.int64)
    o = _load(OUT + b * stride_ob + h * stride_oh, start_m, q_len, stride_om, stride_od, HEAD_DIM, HEAD_DIM_PAD,
              BLOCK_M, True)  # fmt: skip
    do = _load(DO + b * stride_dob + h * stride_doh, start_m, q_len, stride_dom, stride_dod, HEAD_DIM, HEAD_DIM_PAD,
               BLOCK_M, True)  # fmt: skip
    offs_m = start_m + tl.arange(0, BLOCK_M)
    tl.store(DELTA + bh * q_len + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=offs_m < q_len)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, Q_HEAD, DO_HEAD, stride_qm, stride_qd, stride_dom, stride_dod, LSE_ROW, DELTA_ROW,
                    offs_n, start, end, q_len, kv_end, offset, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr):  # fmt: skip
    """Accumulate dK and dV of one key block over the query tiles in [start, end), in the transposed form."""
    for start_m in tl.range(start, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load(Q_HEAD, start_m, q_len, stride_qm, stride_qd, HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, MASKED)
        do = _load(DO_HEAD, start_m, q_len, stride_dom, stride_dod, HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, MASKED)
        if MASKED:  # rows past Nq get lse = +inf, so their probabilities are exactly 0
            lse = tl.load(LSE_ROW + offs_m, mask=offs_m < q_len, other=float("inf"))
            delta = tl.load(DELTA_ROW + offs_m, mask=offs_m < q_len, other=0.0)
        else:
            lse = tl.load(LSE_ROW + offs_m)
            delta = tl.load(DELTA_ROW + offs_m)
        qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        p_t = tl.math.exp2(qk_t * qk_scale - lse[None, :])
        if MASKED:
            p_t = tl.where(tl.trans(_allowed(offs_m, offs_n, kv_end, offset, CAUSAL)), p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, VALID_LENS,
                    stride_qb, stride_qh, stride_qm, stride_qd,
                    stride_kb, stride_kh, stride_kn, stride_kd,
                    stride_vb, stride_vh, stride_vn, stride_vd,
                    stride_dob, stride_doh, stride_dom, stride_dod,
                    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
                    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                    kv_heads, q_len, kv_len, qk_scale, sm_scale,
                    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, GROUP: tl.constexpr, CAUSAL: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """dK, dV of one (key block, batch * kv head), summed over the GROUP query heads that read it.

    Grid (cdiv(Nk, BLOCK_N), B * Hkv). Owning a key block and looping over every query tile of every
    head in its group writes each dK/dV element once: no atomics, and no expanded copy of K or V.
    """
    start_n = tl.program_id(0) * BLOCK_N
    bh_kv = tl.program_id(1)
    b = (bh_kv // kv_heads).to(tl.int64)
    kv_h = (bh_kv % kv_heads).to(tl.int64)
    offset = kv_len - q_len
    kv_end = tl.load(VALID_LENS + b)

    k = _load(K + b * stride_kb + kv_h * stride_kh, start_n, kv_len, stride_kn, stride_kd, HEAD_DIM, HEAD_DIM_PAD,
              BLOCK_N, True)  # fmt: skip
    v = _load(V + b * stride_vb + kv_h * stride_vh, start_n, kv_len, stride_vn, stride_vd, HEAD_DIM, HEAD_DIM_PAD,
              BLOCK_N, True)  # fmt: skip
    offs_n = start_n + tl.arange(0, BLOCK_N)
    dk = tl.zeros([BLOCK_N, HEAD_DIM_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_PAD], dtype=tl.float32)

    # Query tiles: [m_lo, m_full) cross the diagonal (masked), [m_full, m_tail) see the whole key block
    # (unmasked), [m_tail, Nq) is the ragged last tile (masked for its rows past Nq).
    q_end = tl.cdiv(q_len, BLOCK_M) * BLOCK_M
    m_lo = 0
    m_full = 0
    if CAUSAL:
        m_lo = (tl.maximum(start_n - offset, 0) // BLOCK_M) * BLOCK_M  # first tile whose last row sees start_n
        # first tile whose first row sees the block's last key
        m_full = tl.minimum(tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - offset, 0), BLOCK_M) * BLOCK_M, q_end)
    m_full = tl.where(start_n + BLOCK_N > kv_end, q_end, m_full)  # a block crossing the valid length: all masked
    m_lo = tl.where(start_n >= kv_end, q_end, m_lo)  # a block of padding only: gradients are 0
    m_tail = tl.maximum(m_full, (q_len // BLOCK_M) * BLOCK_M)

    for g in tl.range(0, GROUP):
        h = kv_h * GROUP + g
        Q_HEAD = Q + b * stride_qb + h * stride_qh
        DO_HEAD = DO + b * stride_dob + h * stride_doh
        row = (b * kv_heads * GROUP + h) * q_len
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_HEAD, DO_HEAD, stride_qm, stride_qd, stride_dom, stride_dod,
                                 LSE + row, DELTA + row, offs_n, m_lo, m_full, q_len, kv_end, offset, qk_scale,
                                 True, CAUSAL, HEAD_DIM, HEAD_DIM_PAD, DOT_PRECISION, BLOCK_M)  # fmt: skip
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_HEAD, DO_HEAD, stride_qm, stride_qd, stride_dom, stride_dod,
                                 LSE + row, DELTA + row, offs_n, m_full, m_tail, q_len, kv_end, offset, qk_scale,
                                 False, CAUSAL, HEAD_DIM, HEAD_DIM_PAD, DOT_PRECISION, BLOCK_M)  # fmt: skip
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_HEAD, DO_HEAD, stride_qm, stride_qd, stride_dom, stride_dod,
                                 LSE + row, DELTA + row, offs_n, m_tail, q_len, q_len, kv_end, offset, qk_scale,
                                 True, CAUSAL, HEAD_DIM, HEAD_DIM_PAD, DOT_PRECISION, BLOCK_M)  # fmt: skip

    _store(DK + b * stride_dkb + kv_h * stride_dkh, start_n, kv_len, stride_dkn, stride_dkd, dk * sm_scale, HEAD_DIM,
           HEAD_DIM_PAD, BLOCK_N)  # fmt: skip
    _store(DV + b * stride_dvb + kv_h * stride_dvh, start_n, kv_len, stride_dvn, stride_dvd, dv, HEAD_DIM,
           HEAD_DIM_PAD, BLOCK_N)  # fmt: skip


@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, K_HEAD, V_HEAD, stride_kn, stride_kd, stride_vn, stride_vd, offs_m, start,
                  end, kv_len, kv_end, offset, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                  HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  BLOCK_N: tl.constexpr):  # fmt: skip
    """Accumulate dQ of one query tile over the key blocks in [start, end)."""
    for start_n in tl.range(start, end, BLOCK_N):
        k = _load(K_HEAD, start_n, kv_len, stride_kn, stride_kd, HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, MASKED)
        v = _load(V_HEAD, start_n, kv_len, stride_vn, stride_vd, HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, MASKED)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASKED:
            p = tl.where(_allowed(offs_m, start_n + tl.arange(0, BLOCK_N), kv_end, offset, CAUSAL), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, VALID_LENS,
                  stride_qb, stride_qh, stride_qm, stride_qd,
                  stride_kb, stride_kh, stride_kn, stride_kd,
                  stride_vb, stride_vh, stride_vn, stride_vd,
                  stride_dob, stride_doh, stride_dom, stride_dod,
                  stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                  q_heads, q_len, kv_len, qk_scale, sm_scale,
                  HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, GROUP: tl.constexpr, CAUSAL: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """dQ of one (query tile, batch * query head), looping over key blocks as the forward does."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // q_heads).to(tl.int64)
    h = (bh % q_heads).to(tl.int64)
    kv_h = h // GROUP
    offset = kv_len - q_len
    kv_end = tl.load(VALID_LENS + b)
    K_HEAD = K + b * stride_kb + kv_h * stride_kh
    V_HEAD = V + b * stride_vb + kv_h * stride_vh

    q = _load(Q + b * stride_qb + h * stride_qh, start_m, q_len, stride_qm, stride_qd, HEAD_DIM, HEAD_DIM_PAD, BLOCK_M,
              True)  # fmt: skip
    do = _load(DO + b * stride_dob + h * stride_doh, start_m, q_len, stride_dom, stride_dod, HEAD_DIM, HEAD_DIM_PAD,
               BLOCK_M, True)  # fmt: skip
    offs_m = start_m + tl.arange(0, BLOCK_M)
    # rows past Nq get lse = +inf, so their probabilities (and dQ rows, never stored) are 0
    lse = tl.load(LSE + bh * q_len + offs_m, mask=offs_m < q_len, other=float("inf"))
    delta = tl.load(DELTA + bh * q_len + offs_m, mask=offs_m < q_len, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    full_end, hi = _key_phases(start_m, kv_end, offset, CAUSAL, BLOCK_M, BLOCK_N)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K_HEAD, V_HEAD, stride_kn, stride_kd, stride_vn, stride_vd, offs_m,
                       0, full_end, kv_len, kv_end, offset, qk_scale, False, CAUSAL, HEAD_DIM, HEAD_DIM_PAD,
                       DOT_PRECISION, BLOCK_N)  # fmt: skip
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K_HEAD, V_HEAD, stride_kn, stride_kd, stride_vn, stride_vd, offs_m,
                       full_end, hi, kv_len, kv_end, offset, qk_scale, True, CAUSAL, HEAD_DIM, HEAD_DIM_PAD,
                       DOT_PRECISION, BLOCK_N)  # fmt: skip

    _store(DQ + b * stride_dqb + h * stride_dqh, start_m, q_len, stride_dqm, stride_dqd, dq * sm_scale, HEAD_DIM,
           HEAD_DIM_PAD, BLOCK_M)  # fmt: skip


# Forward tiles the autotuner tries, (BLOCK_M, BLOCK_N, num_warps, num_stages): Triton's tutorial set
# (06-fused-attention) trimmed to what compiles in seconds, and Hopper-sane: like the tutorial on sm90,
# no 8 warps where BLOCK_M * BLOCK_N < 128 * 128.
FORWARD_TILES = ((64, 64, 4, 3), (64, 32, 4, 4), (128, 32, 4, 3), (128, 64, 4, 3), (128, 64, 4, 4), (128, 128, 8, 3))
AUTOTUNE_KEY = ["q_len", "kv_len", "HEAD_DIM", "CAUSAL", "GROUP"]


def _tiles_within(configs, named_args, **kwargs):
    """The configs whose query tile is no longer than the sequence (the smallest one where none is)."""
    fitting = [config for config in configs if config.kwargs["BLOCK_M"] <= named_args["q_len"]]
    return fitting or [min(configs, key=lambda config: config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"])]


@functools.cache
def autotuned_fwd_kernel():
    """fwd_kernel autotuned per AUTOTUNE_KEY over FORWARD_TILES; made on first use (never under the interpreter)."""
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in FORWARD_TILES]
    prune = {"early_config_prune": _tiles_within}
    return triton.autotune(configs, key=AUTOTUNE_KEY, prune_configs_by=prune)(fwd_kernel)
