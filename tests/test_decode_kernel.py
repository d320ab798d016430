"""The CPU flash-decoding kernel against the float64 answer, on the shapes its blocking and splitting have edges at,
and blockwise's decode step with and without it (the kernel that ran is named in `kernel`)."""

from __future__ import annotations

import pytest
import torch

import attention_zoo as z
from attention_zoo.impls import decode_kernel
from attention_zoo.reference import normalised_max_error

pytestmark = pytest.mark.skipif(
    decode_kernel.unavailable(torch.float32, "cpu") is not None,
    reason=str(decode_kernel.unavailable(torch.float32, "cpu")),
)


def _expected(q_rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, steps: int) -> torch.Tensor:
    """float64 softmax(q k^T) v with row g*T + t seeing keys 0 .. n - T + t."""
    scores = q_rows.double() @ keys.double().transpose(-1, -2)
    n = keys.shape[2]
    t = torch.arange(q_rows.shape[2]) % steps
    allowed = torch.arange(n)[None, :] <= (n - steps + t)[:, None]
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ values.double()


# (batch, kv heads, rows = G*T, keys, head dim, T, threads): rows past a block of 4, a head dim with a lane tail,
# keys past a chunk and split across threads (fewer units than threads), one key, bf16/f16 below
SHAPES = [
    (1, 1, 1, 1, 8, 1, 1),
    (2, 3, 3, 70, 20, 1, 1),
    (1, 2, 16, 200, 128, 4, 1),
    (1, 1, 6, 5000, 64, 2, 4),
    (3, 2, 8, 3000, 80, 4, 3),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kernel_matches_float64(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    batch, heads, rows, keys, dim, steps, threads = shape
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(batch, heads, rows, dim, generator=generator) * 2 / dim**0.5
    k, v = (torch.randn(batch, heads, keys, dim, generator=generator).to(dtype) for _ in range(2))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = decode_kernel.flash_decode(q, k, v, steps)
    finally:
        torch.set_num_threads(previous)
    assert out.dtype == torch.float32 and out.shape == q.shape
    assert normalised_max_error(out, _expected(q, k, v, steps)) < 1e-5


def test_kernel_reads_a_cache_view_with_room_and_an_offset() -> None:
    """A KV cache is a view into a larger buffer: units one buffer stride apart, rows from an offset."""
    buffer_k, buffer_v = torch.randn(2, 3, 900, 32), torch.randn(2, 3, 900, 32)
    k, v = buffer_k[:, :, 100:700], buffer_v[:, :, 100:700]
    q = torch.randn(2, 3, 4, 32) / 32**0.5
    assert normalised_max_error(decode_kernel.flash_decode(q, k, v, 1), _expected(q, k, v, 1)) < 1e-5


def _blockwise_step(dtype: str) -> tuple[torch.Tensor, str]:
    problem = z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=2, kv_len=302, head_dim=32, causal=True, dtype=dtype)
    impl = z.get("blockwise").build_decoder(problem)
    q, k, v = problem.make_inputs(seed=3)
    state = impl.decode_state(k[:, :, :300], v[:, :, :300])
    out, _ = impl.decode_step(q, k[:, :, 300:], v[:, :, 300:], state)
    return out, impl.kernel


def test_blockwise_decodes_with_the_kernel_and_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with_kernel, kernel = _blockwise_step("float32")
    assert kernel == "c_flash_decode"
    monkeypatch.setattr(decode_kernel, "unavailable", lambda dtype, device: "no C compiler")
    in_torch, fallback = _blockwise_step("float32")
    assert fallback == "torch_split_k"
    assert normalised_max_error(with_kernel, in_torch) < 1e-5


def test_loading_the_kernel_keeps_subnormal_floats() -> None:
    """-ffast-math is given to the compile step only: a library linked with it would flush subnormals process-wide."""
    assert decode_kernel.unavailable(torch.float32, "cpu") is None
    assert (torch.tensor([1e-40]) * 1.0).item() != 0.0


def test_float64_steps_run_in_torch() -> None:
    assert decode_kernel.unavailable(torch.float64, "cpu") is not None
    assert _blockwise_step("float64")[1] == "torch_split_k"


def test_without_a_compiler_the_reason_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_kernel, "_compiler", lambda: None)
    decode_kernel._library.cache_clear()
    try:
        assert "no C compiler" in decode_kernel.unavailable(torch.float32, "cpu")
    finally:
        decode_kernel._library.cache_clear()


def test_a_failed_build_is_said_and_nothing_is_installed(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("ATTENTION_ZOO_CACHE", str(tmp_path))
    monkeypatch.setattr(decode_kernel, "COMPILE_FLAGS", ("-no-such-flag",))
    decode_kernel._library.cache_clear()
    try:
        assert "did not build" in decode_kernel.unavailable(torch.float32, "cpu")
        assert list(tmp_path.iterdir()) == []
    finally:
        decode_kernel._library.cache_clear()
