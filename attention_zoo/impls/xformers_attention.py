"""xformers.ops.memory_efficient_attention, imported only when the entry is checked or built.

Layout: BMHK (B, N, H, D), the one layout every xformers operator has a forward and a backward for.
GQA runs forward-only calls in BMGHK (B, N, Hkv, G, D), which broadcasts K and V over the group without
a copy; xformers 0.0.35 has no backward for BMGHK ("operator does not support BMGHK format" from fa3B,
fa2B and cutlassB-pt), so when gradients are needed K and V are expanded to one head per query head
(a copy, which the measured memory includes).
The operators are chosen by xformers' own dispatcher, once per layout, and passed to the call, so
`kernel` names what ran (op.NAME: "fa3F@3.0.0 / fa3B@3.0.0", "cutlassF-pt", ...).
The PyPI wheel is built for one torch (0.0.35: 2.10.0+cu128); with another its C++/CUDA extension may
not load, leaving only the operators that call torch's own kernels (the "-pt" ones). Then an unsupported
reason says so beside xformers' own.
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path

import torch

from attention_zoo.interface import Attention, builds_graph
from attention_zoo.masks import additive_bias
from attention_zoo.problem import Problem
from attention_zoo.registry import register

BIAS_ALIGNMENT = 8  # xformers needs a tensor bias's rows to start at multiples of 8 elements


def _ops():
    return importlib.import_module("xformers.ops")


def _one_line(error: Exception) -> str:
    """xformers explains a missing kernel over many lines; keep the reasons, drop the input dump."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(("query", "key", "value", "attn_bias", "p ", "p:"))]
    return " ".join(reasons[1:] or reasons)


def extension_note() -> str:
    """ "" when xformers' C++/CUDA extension loaded, else why not (the torch it was built for)."""
    xformers = importlib.import_module("xformers")
    if xformers._has_cpp_library:
        return ""
    try:  # what the wheel was built for, as xformers' own load check reads it
        built_for = json.loads((Path(xformers.__file__).parent / "cpp_lib.json").read_text())["version"]["torch"]
    except (OSError, KeyError, ValueError):
        built_for = "an unknown torch"
    return f"; xformers' C++/CUDA extension did not load (built for torch {built_for}, this is {torch.__version__})"


def _padding_bias(problem: Problem) -> torch.Tensor:
    """(B, Hq, Nq, Nk) additive bias, -inf on keys a query may not attend, in rows aligned for xformers."""
    allowed = problem.allowed_mask().expand(problem.batch, problem.q_heads, problem.q_len, problem.kv_len)
    aligned_len = -(-problem.kv_len // BIAS_ALIGNMENT) * BIAS_ALIGNMENT
    storage = torch.zeros((*allowed.shape[:-1], aligned_len), dtype=problem.torch_dtype, device=problem.device)
    return additive_bias(allowed, problem.torch_dtype, out=storage[..., : problem.kv_len])


class XformersAttention(Attention):
    """memory_efficient_attention in BMHK (BMGHK for forward-only GQA), the problem's masks as biases."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        self.fmha = importlib.import_module("xformers.ops.fmha")
        self.memory_efficient_attention = _ops().memory_efficient_attention
        if problem.kv_valid_lens is not None:
            self.attn_bias = _padding_bias(problem)
        elif problem.causal:
            self.attn_bias = self.fmha.attn_bias.LowerTriangularFromBottomRightMask()
        else:
            self.attn_bias = None
        self.operators: dict[bool, tuple] = {}  # gradients needed -> (forward op, backward op or None)

    def _layout(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, needs_gradient: bool):
        """(q, k, v, bias) in BMHK, or in BMGHK for GQA without gradients."""
        batch, kv_heads, kv_len, head_dim = k.shape
        group = q.shape[1] // kv_heads
        bias = self.attn_bias
        if group == 1 or needs_gradient:
            if group > 1:  # no BMGHK backward: one K/V head per query head
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), bias
        # (B, Hkv*G, N, D) -> (B, N, Hkv, G, D); K and V broadcast over G without a copy
        q = q.view(batch, kv_heads, group, q.shape[2], head_dim).permute(0, 3, 1, 2, 4)
        k = k.transpose(1, 2).unsqueeze(3).expand(batch, kv_len, kv_heads, group, head_dim)
        v = v.transpose(1, 2).unsqueeze(3).expand(batch, kv_len, kv_heads, group, head_dim)
        if isinstance(bias, torch.Tensor):  # (B, Hq, Nq, Nk) -> BMGHK's (B, Hkv, G, Nq, Nk)
            bias = bias.unflatten(1, (kv_heads, group))
        return q, k, v, bias

    def _operators(self, q, k, v, bias, needs_gradient: bool) -> tuple:
        """The (forward, backward) operators xformers' dispatcher picks for these inputs, picked once."""
        if needs_gradient not in self.operators:
            dispatch = importlib.import_module("xformers.ops.fmha.dispatch")
            inputs = importlib.import_module("xformers.ops.fmha.common").Inputs(q, k, v, attn_bias=bias)
            forward = dispatch._dispatch_fw(inputs, needs_gradient)
            backward = dispatch._dispatch_bw(inputs, varlen_lse_packed=None) if needs_gradient else None
            self.operators[needs_gradient] = (forward, backward)
        return self.operators[needs_gradient]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        needs_gradient = builds_graph(q, k, v)
        q_x, k_x, v_x, bias = self._layout(q, k, v, needs_gradient)
        forward, backward = self._operators(q_x, k_x, v_x, bias, needs_gradient)
        self.kernel = forward.NAME if backward is None else f"{forward.NAME} / {backward.NAME}"
        out = self.memory_efficient_attention(q_x, k_x, v_x, attn_bias=bias, op=(forward, backward))
        return out.flatten(2, 3).transpose(1, 2) if out.dim() == 5 else out.transpose(1, 2)


@functools.cache
def _kernel_reason(device: str, dtype: str, head_dim: int, group: int, causal: bool, backward: bool) -> str | None:
    """Why xformers cannot run (or differentiate) a tiny problem of this kind here, by trying it."""
    probe = Problem(q_heads=group, kv_heads=1, q_len=8, head_dim=head_dim, causal=causal, dtype=dtype, device=device)
    try:
        q, k, v = probe.make_inputs(requires_grad=backward)
        out = XformersAttention(probe)(q, k, v)
        if backward:
            out.backward(torch.ones_like(out))
    except NotImplementedError as error:
        return f"xformers has no {'backward' if backward else 'forward'} kernel for this problem: {_one_line(error)}"
    return None


def _reason(problem: Problem, backward: bool) -> str | None:
    try:
        _ops()
    except ImportError as error:
        return f"xformers is not installed ({error}); pip install 'attention-zoo[xformers]'"
    args = (problem.device, problem.dtype, problem.head_dim, problem.group_size, problem.causal)
    reason = _kernel_reason(*args, backward=False) or (backward and _kernel_reason(*args, backward=True))
    return reason + extension_note() if reason else None


def _availability(problem: Problem) -> str | None:
    return _reason(problem, backward=False)


def _backward_availability(problem: Problem) -> str | None:
    return _reason(problem, backward=True)


@register(
    family="flash",
    exact=True,
    time="N^2",
    memory="N",
    availability=_availability,
    backward_availability=_backward_availability,
    decode="xformers' split-K decoding operators are not wrapped here; its prefill operators would run a decode step",
)
def xformers(problem: Problem) -> Attention:
    """xformers.ops.memory_efficient_attention (CUDA kernels; none on CPU)."""
    return XformersAttention(problem)
