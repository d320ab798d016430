"""triton_flash: FlashAttention 2 written in Triton in this project, forward and backward.

The kernels live in attention_zoo.triton_flash_kernels and are imported when the entry is built, so
importing attention_zoo never imports triton. On CPU the entry runs only under Triton's interpreter
(TRITON_INTERPRET=1, set before triton is imported), which is how the CPU test suite checks it.
float32 runs its dot products in IEEE fp32 (input_precision="ieee"), not TF32: TF32's 10-bit
mantissa lands near 1e-3 relative error, above the float32 oracle tolerance of 1e-4.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from typing import Annotated

import torch

from attention_zoo.interface import Attention
from attention_zoo.problem import Problem
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast, OneOf

TILE_SIZES = (16, 32, 64, 128, 256)
MAX_HEAD_DIM = 128
INSTALL_HINT = "pip install 'attention-zoo[triton]'"


def _interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (read the way triton.knobs reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _kernels():
    return importlib.import_module("attention_zoo.triton_flash_kernels")


def _strides(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.stride())


class _TritonFlashFunction(torch.autograd.Function):
    """FA2 forward saving O and the base-2 log-sum-exp; backward = delta preprocess, dK/dV kernel, dQ kernel."""

    @staticmethod
    def forward(ctx, q, k, v, attention: TritonFlash):
        kernels, launch = _kernels(), attention.launch
        batch, q_heads, q_len, _ = q.shape
        out = torch.empty_like(q)
        lse = torch.empty((batch, q_heads, q_len), dtype=torch.float32, device=q.device)
        grid = (math.ceil(q_len / attention.block_m), batch * q_heads)
        kernels.fwd_kernel[grid](
            q, k, v, out, lse, attention.valid_lens,
            *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            q_heads, q_len, k.shape[2], attention.qk_scale,
            BLOCK_M=attention.block_m, BLOCK_N=attention.block_n, **launch,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.attention = attention
        return out

    @staticmethod
    def backward(ctx, grad_out):
        with torch.cuda.device_of(grad_out):  # Triton launches on the current CUDA device; no-op on CPU
            grad_out = grad_out.contiguous()  # autograd may hand over an expanded (zero-stride) gradient
            return (*_flash_backward(ctx.attention, *ctx.saved_tensors, grad_out), None)


def _flash_backward(attention: TritonFlash, q, k, v, out, lse, grad_out):
    """FA2 backward: delta = rowsum(dO * O), then dK/dV over query tiles and dQ over key tiles."""
    kernels, launch = _kernels(), attention.launch
    batch, q_heads, q_len, _ = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    delta = torch.empty_like(lse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    block_m, block_n = attention.block_m, attention.block_n
    head_dims = {"HEAD_DIM": launch["HEAD_DIM"], "HEAD_DIM_PAD": launch["HEAD_DIM_PAD"]}

    kernels.bwd_preprocess_kernel[(math.ceil(q_len / block_m), batch * q_heads)](
        out, grad_out, delta, *_strides(out), *_strides(grad_out), q_heads, q_len, BLOCK_M=block_m, **head_dims
    )
    # dK/dV owns a key tile of block_m rows and streams query tiles of block_n rows (FA2's shape)
    kernels.bwd_dkdv_kernel[(math.ceil(kv_len / block_m), batch * kv_heads)](
        q, k, v, grad_out, dk, dv, lse, delta, attention.valid_lens,
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), *_strides(dk), *_strides(dv),
        kv_heads, q_len, kv_len, attention.qk_scale, attention.scale,
        BLOCK_M=block_n, BLOCK_N=block_m, **launch,
    )  # fmt: skip
    kernels.bwd_dq_kernel[(math.ceil(q_len / block_m), batch * q_heads)](
        q, k, v, grad_out, dq, lse, delta, attention.valid_lens,
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), *_strides(dq),
        q_heads, q_len, kv_len, attention.qk_scale, attention.scale,
        BLOCK_M=block_m, BLOCK_N=block_n, **launch,
    )  # fmt: skip
    return dq, dk, dv


class TritonFlash(Attention):
    """The problem's fixed launch settings (scale, tiles, masks as valid lengths) prepared once."""

    def __init__(self, problem: Problem, block_m: int, block_n: int, num_warps: int, num_stages: int) -> None:
        super().__init__(problem)
        self.block_m, self.block_n = block_m, block_n
        self.scale = 1.0 / math.sqrt(problem.head_dim)
        self.qk_scale = self.scale * math.log2(math.e)  # scores in base 2: exp2 is the fast instruction
        # no padding = every key valid; one int32 load per program keeps a single kernel for both cases
        self.valid_lens = torch.tensor(
            problem.kv_valid_lens or (problem.kv_len,) * problem.batch, dtype=torch.int32, device=problem.device
        )
        self.launch = {
            "HEAD_DIM": problem.head_dim,
            "HEAD_DIM_PAD": max(16, 1 << (problem.head_dim - 1).bit_length()),  # tl.dot needs K >= 16
            "GROUP": problem.group_size,
            "CAUSAL": problem.causal,
            "DOT_PRECISION": "ieee" if problem.dtype == "float32" else "tf32",  # tf32 is ignored for 16-bit
            "num_warps": num_warps,
            "num_stages": num_stages,
        }

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device_of(q):  # Triton launches on the current CUDA device; no-op on CPU
            return _TritonFlashFunction.apply(q, k, v, self)


def _availability(problem: Problem) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return f"triton is not installed; {INSTALL_HINT}"
    if problem.device_type == "cpu" and not _interpreting():
        return "triton_flash runs on CUDA (or on CPU under TRITON_INTERPRET=1, for tests)"
    if problem.head_dim > MAX_HEAD_DIM:
        return f"triton_flash supports head_dim up to {MAX_HEAD_DIM}, not {problem.head_dim}"
    return None


Tile = Annotated[int, OneOf(*TILE_SIZES)]
LaunchSetting = Annotated[int, AtLeast(0)]  # 0: automatic


@register(
    family="flash",
    exact=True,
    time="N^2",
    memory="N",
    devices=("cpu", "cuda"),
    dtypes=("float16", "bfloat16", "float32"),
    availability=_availability,
    check_hparams={"block_m": 16, "block_n": 16},
)
def triton_flash(
    problem: Problem,
    *,
    block_m: Tile = 128,
    block_n: Tile = 64,
    num_warps: LaunchSetting = 0,
    num_stages: LaunchSetting = 0,
) -> Attention:
    """FlashAttention 2 in Triton, written here: tiled online softmax forward, LSE-recomputing backward.

    block_m: query rows per forward/dQ tile and key rows per dK/dV tile; block_n: the other side.
    num_warps, num_stages: Triton launch settings; 0 picks 4 warps / 3 stages up to head_dim 64, else 8 / 2.
    """
    small_head = problem.head_dim <= 64
    return TritonFlash(
        problem,
        block_m,
        block_n,
        num_warps=num_warps or (4 if small_head else 8),
        num_stages=num_stages or (3 if small_head else 2),
    )
