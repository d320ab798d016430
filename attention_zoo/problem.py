"""The attention problem: shapes, GQA, cross lengths, causal, padding, dtype and device.

Conventions used everywhere in attention_zoo:
- Layout: q is (B, Hq, Nq, D); k and v are (B, Hkv, Nk, D); the output is shaped like q.
  Query head h reads key/value head h // (Hq // Hkv) (grouped-query attention).
- Causal alignment is bottom-right, as in FlashAttention 2: query i may attend key j when
  j <= i + (Nk - Nq), so the last query sees every key. Causal problems need Nq <= Nk, which
  guarantees every query sees at least key 0.
- Padding is on keys: kv_valid_lens[b] keys of sequence b are real, the rest are ignored.
  Every query row is still computed.
- Packing: doc_lens splits every row of the batch into documents of those lengths, back to back
  (self-attention, summing to N); a query attends only keys of its own document (block-diagonal,
  and causal within the document when causal).
- Half-precision inputs (float16, bfloat16) are computed with float32 scores, softmax statistics and
  accumulation (compute_dtype); outputs and gradients come back in the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attention_zoo.errors import ProblemError

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
HALF_DTYPES = ("float16", "bfloat16")
DEVICES = ("cpu", "cuda")


def compute_dtype(dtype: str) -> torch.dtype:
    """The dtype scores, softmax statistics and accumulators are kept in: float32 for half-precision inputs.

    As SDPA and FlashAttention do: a logit of a few hundred rounded to bfloat16 is off by a whole unit.
    """
    return torch.float32 if dtype in HALF_DTYPES else DTYPES[dtype]


def _positive(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProblemError(f"{field}={value!r} is invalid: it must be a positive integer")


@dataclass(frozen=True)
class Problem:
    """One attention task, validated on construction."""

    batch: int = 1
    q_heads: int = 8
    kv_heads: int | None = None  # None: same as q_heads
    q_len: int = 1024
    kv_len: int | None = None  # None: same as q_len (self-attention)
    head_dim: int = 64
    causal: bool = False
    kv_valid_lens: tuple[int, ...] | None = None  # None: no padding
    dtype: str = "float32"
    device: str = "cpu"
    doc_lens: tuple[int, ...] | None = None  # None: one document per row; else packed documents (see above)

    def __post_init__(self) -> None:
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.q_heads)
        if self.kv_len is None:
            object.__setattr__(self, "kv_len", self.q_len)
        for field in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim"):
            _positive(field, getattr(self, field))
        if self.q_heads % self.kv_heads:
            raise ProblemError(f"kv_heads={self.kv_heads} is invalid: q_heads={self.q_heads} must be a multiple of it")
        if not isinstance(self.causal, bool):
            raise ProblemError(f"causal={self.causal!r} is invalid: it must be true or false")
        if self.causal and self.q_len > self.kv_len:
            raise ProblemError(
                f"q_len={self.q_len} is invalid for a causal problem with kv_len={self.kv_len}: "
                "bottom-right causal alignment needs q_len <= kv_len"
            )
        if self.kv_valid_lens is not None:
            lens = tuple(self.kv_valid_lens)
            object.__setattr__(self, "kv_valid_lens", lens)
            if len(lens) != self.batch:
                raise ProblemError(
                    f"kv_valid_lens has {len(lens)} entries: it needs one per sequence (batch={self.batch})"
                )
            for n in lens:
                if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.kv_len:
                    raise ProblemError(
                        f"kv_valid_lens entry {n!r} is invalid: each must be an integer in 1..kv_len={self.kv_len}"
                    )
        if self.doc_lens is not None:
            self._check_documents()
        if self.dtype not in DTYPES:
            raise ProblemError(f"dtype={self.dtype!r} is unknown: allowed are {', '.join(DTYPES)}")
        if self.device.split(":")[0] not in DEVICES:
            raise ProblemError(
                f"device={self.device!r} is unknown: allowed are {', '.join(DEVICES)} (cuda may carry an index)"
            )

    def _check_documents(self) -> None:
        lens = tuple(self.doc_lens)
        object.__setattr__(self, "doc_lens", lens)
        if self.q_len != self.kv_len or self.kv_valid_lens is not None:
            raise ProblemError(
                "doc_lens packs documents into whole self-attention rows: it needs q_len == kv_len and no kv_valid_lens"
            )
        for n in lens:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ProblemError(f"doc_lens entry {n!r} is invalid: each document length must be a positive integer")
        if sum(lens) != self.q_len:
            raise ProblemError(f"doc_lens {lens} sum to {sum(lens)}: the documents must fill q_len={self.q_len}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype scores, softmax statistics and accumulators are kept in (see compute_dtype)."""
        return compute_dtype(self.dtype)

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def group_size(self) -> int:
        """Query heads per key/value head: 1 is MHA, q_heads is MQA."""
        return self.q_heads // self.kv_heads

    @property
    def features(self) -> frozenset[str]:
        """The problem features an implementation must handle to run this problem."""
        present = {
            "causal": self.causal,
            "padding": self.kv_valid_lens is not None,
            "gqa": self.kv_heads != self.q_heads,
            "cross": self.kv_len != self.q_len,
            "packed": self.doc_lens is not None and len(self.doc_lens) > 1,
        }
        return frozenset(name for name, on in present.items() if on)

    @property
    def causal_offset(self) -> int:
        """Bottom-right alignment: query i sees keys j <= i + causal_offset."""
        return self.kv_len - self.q_len

    def attended_pairs(self) -> int:
        """Number of (query, key) pairs one head attends, summed over the batch."""
        if self.doc_lens is not None:  # each document attends itself alone
            per_row = sum(n * (n + 1) // 2 if self.causal else n * n for n in self.doc_lens)
            return self.batch * per_row
        total = 0
        for valid in self.kv_valid_lens or (self.kv_len,) * self.batch:
            if not self.causal:
                total += self.q_len * valid
                continue
            # query i sees min(valid, i + offset + 1) keys
            offset = self.causal_offset
            full_rows_from = max(0, valid - offset - 1)  # rows that reach the padding limit
            ramp_rows = min(self.q_len, full_rows_from)
            total += ramp_rows * (offset + 1) + ramp_rows * (ramp_rows - 1) // 2
            total += (self.q_len - ramp_rows) * valid
        return total

    def dense_flops(self) -> float:
        """Forward FLOPs of exact attention on the attended pairs: QK^T and PV, 2 FLOPs per MAC."""
        return 4.0 * self.q_heads * self.head_dim * self.attended_pairs()

    def make_inputs(
        self, seed: int = 0, requires_grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fresh standard-normal q, k, v for this problem, reproducible from the seed."""
        generator = torch.Generator(device="cpu").manual_seed(seed)

        def draw(heads: int, length: int) -> torch.Tensor:
            x = torch.randn(self.batch, heads, length, self.head_dim, generator=generator, dtype=torch.float64)
            x = x.to(device=self.device, dtype=self.torch_dtype)
            return x.requires_grad_(requires_grad)

        return draw(self.q_heads, self.q_len), draw(self.kv_heads, self.kv_len), draw(self.kv_heads, self.kv_len)

    def allowed_mask(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Which keys each query may attend: bool (B, 1, Nq, Nk), True = attend (dense; for oracles).

        rows: only these query positions (B, 1, len(rows), Nk), as the bench's error reference samples them.
        """
        q_pos = (torch.arange(self.q_len, device=self.device) if rows is None else rows.to(self.device))[:, None]
        k_pos = torch.arange(self.kv_len, device=self.device)[None, :]
        allowed = torch.ones(len(q_pos), self.kv_len, dtype=torch.bool, device=self.device)
        if self.causal:
            allowed &= k_pos <= q_pos + self.causal_offset
        if self.doc_lens is not None:
            documents = self.document_ids()
            allowed &= documents[q_pos] == documents[k_pos]
        allowed = allowed.expand(self.batch, 1, len(q_pos), self.kv_len)
        if self.kv_valid_lens is not None:
            valid = torch.tensor(self.kv_valid_lens, device=self.device)
            allowed = allowed & (k_pos < valid[:, None, None, None])
        return allowed

    def document_ids(self) -> torch.Tensor:
        """long (N,): the document each position of a row belongs to (all 0 without packing)."""
        lens = torch.tensor(self.doc_lens or (self.kv_len,), device=self.device)
        return torch.repeat_interleave(torch.arange(len(lens), device=self.device), lens)

    def key_padding_mask(self) -> torch.Tensor | None:
        """bool (B, Nk), True = a real key; None when the problem has no padding."""
        if self.kv_valid_lens is None:
            return None
        valid = torch.tensor(self.kv_valid_lens, device=self.device)
        return torch.arange(self.kv_len, device=self.device)[None, :] < valid[:, None]
