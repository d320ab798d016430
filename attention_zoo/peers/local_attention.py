"""lucidrains' local-attention beside our sliding_window (impls/sparse.py)."""

from __future__ import annotations

import importlib
import math
from typing import Annotated

import torch

from attention_zoo.interface import Attention
from attention_zoo.peers.common import (
    PEER_DECODE,
    missing_reason,
)
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast


class PeerLocalAttention(Attention):
    """local_attention.LocalAttention: `window`-key buckets, each query scoring its bucket and neighbours.

    Mapping: window_size=window, look_backward=1, look_forward=0 if causal else 1, autopad=True, no
    rotary embedding, no shared QK, no dropout, scale 1/sqrt(d). With exact_windowsize=True (default)
    its mask is exactly our sliding window, |j - i| <= window (causal: i - window <= j <= i); with
    False a query sees whole buckets: keys from the start of the previous bucket to the end of its own
    (causal) or of the next one, i.e. between window+1 and 3*window keys. Either way it computes scores
    for 2*window (causal) or 3*window keys per query and masks the rest. Its mask value is finite, so
    a query whose window holds no valid key averages its slots; this adapter zeroes those rows, as our
    oracle does. No cross-attention (one length for q, k, v) and no GQA (heads are folded into batch).
    """

    def __init__(self, problem: Problem, window: int, exact_windowsize: bool) -> None:
        super().__init__(problem)
        self.window = window
        self.look_forward = 0 if problem.causal else 1
        self.exact_windowsize = exact_windowsize
        self.local_attention = importlib.import_module("local_attention").LocalAttention(
            window_size=window,
            causal=problem.causal,
            look_backward=1,
            look_forward=self.look_forward,
            autopad=True,
            exact_windowsize=exact_windowsize,
            use_rotary_pos_emb=False,
        )
        self.local_attention.requires_grad_(False)  # its own parameters, if any, are fixed: gradients reach q, k, v
        # autopad appends zero keys up to a multiple of the window; causal masks them by position, but
        # a non-causal query would attend them unless a key mask marks them (autopad pads it with False)
        needs_key_mask = problem.kv_valid_lens is not None or (not problem.causal and problem.kv_len % window != 0)
        self.key_mask = None
        if needs_key_mask:
            self.key_mask = problem.key_padding_mask()
            if self.key_mask is None:
                self.key_mask = torch.ones(problem.batch, problem.kv_len, dtype=torch.bool, device=problem.device)
        first_key, _ = self._key_span()
        self.row_keep = None  # (B, 1, N, 1): 0 for a query with no valid key, else 1; None if none lacks one
        if problem.kv_valid_lens is not None:
            valid = torch.tensor(problem.kv_valid_lens, device=problem.device)
            has_key = first_key[None, :] < valid[:, None]
            if not has_key.all():
                self.row_keep = has_key[:, None, :, None].to(problem.torch_dtype)

    def _key_span(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query i, the keys first[i] <= j < stop[i] its buckets (and exact window) cover."""
        q_pos = torch.arange(self.problem.q_len, device=self.problem.device)
        bucket_start = q_pos // self.window * self.window
        first = (bucket_start - self.window).clamp_min(0)
        stop = bucket_start + (1 + self.look_forward) * self.window
        if self.exact_windowsize:
            first = torch.maximum(first, q_pos - self.window)
            stop = torch.minimum(stop, q_pos + self.look_forward * self.window + 1)
        return first, stop

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = self.local_attention(q, k, v, mask=self.key_mask)
        return out if self.row_keep is None else out * self.row_keep

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        first, stop = self._key_span()
        k_pos = torch.arange(self.problem.kv_len, device=self.problem.device)
        in_span = (k_pos[None, :] >= first[:, None]) & (k_pos[None, :] < stop[:, None])
        return dense_attention(q, k, v, self.problem.allowed_mask() & in_span)


def _local_attention_flops(problem: Problem, hparams: dict) -> float:
    window = hparams["window"]
    padded_len = math.ceil(problem.q_len / window) * window
    scored_keys = (2 if problem.causal else 3) * window  # its bucket and the neighbours it looks at
    return 4.0 * problem.batch * problem.q_heads * padded_len * scored_keys * problem.head_dim


@register(
    decode=PEER_DECODE,
    family="sparse",
    exact=False,
    time="N*w",
    memory="N*w",
    features=("causal", "padding"),
    flops=_local_attention_flops,
    availability=lambda problem: missing_reason("local_attention", "local-attention"),
    oracle_hparams={"window": 8},
)
def peer_local_attention(
    problem: Problem, *, window: Annotated[int, AtLeast(1)] = 256, exact_windowsize: bool = True
) -> Attention:
    """lucidrains' local-attention LocalAttention, bucketed; window as in sliding_window."""
    return PeerLocalAttention(problem, window, exact_windowsize)
