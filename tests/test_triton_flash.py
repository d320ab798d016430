"""triton_flash against the float64 oracle under Triton's CPU interpreter, and its availability rules.

TRITON_INTERPRET=1 must be set before the kernels are decorated, and the test process may already
have imported triton (torch does when sdpa's helpers load), so the kernel checks run this file as a
script in a child process with the variable set; every case's errors come back as JSON at once.
bfloat16 is not checked here: the Triton 3.9 interpreter's tl.dot gives wrong results for bfloat16
operands (a 16x16 bf16 self-product is off by ~1e10), so bfloat16 is left to a GPU run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Small shapes that break naive tiling: ragged lengths, length 1, padded head dims, per-sequence padding,
# GQA/MQA, cross-attention both ways, causal with Nq < Nk (bottom-right). Tiles are the entry's
# oracle_hparams (16 x 16) unless a case sets its own: unequal tiles move the causal phase boundaries.
# Offsets Nk - Nq of 14, 17 and 30 and valid lengths of 31 and 47 put a diagonal or a padding edge one key
# inside a tile edge, where an off-by-one in the masked/unmasked phase split would show.
CASES = {
    "ragged_37": dict(batch=1, q_heads=2, q_len=37, head_dim=32),
    "len1": dict(batch=1, q_heads=2, q_len=1, head_dim=16),
    "head_dim_24_padded": dict(batch=1, q_heads=1, q_len=21, head_dim=24),
    "causal_70": dict(batch=1, q_heads=1, q_len=70, head_dim=16, causal=True),
    "causal_cross_q_shorter_tiles_32x16": dict(batch=1, q_heads=2, q_len=35, kv_len=49, head_dim=16, causal=True),
    "cross_q_longer": dict(batch=1, q_heads=2, q_len=45, kv_len=20, head_dim=16),
    "gqa_padded": dict(batch=3, q_heads=2, kv_heads=1, q_len=33, head_dim=16, kv_valid_lens=(33, 31, 5)),
    "mqa_causal_cross_padded_tiles_16x32": dict(
        batch=2, q_heads=2, kv_heads=1, q_len=19, kv_len=49, head_dim=16, causal=True, kv_valid_lens=(49, 47)
    ),
    "fp16_causal_cross_gqa": dict(
        batch=1, q_heads=2, kv_heads=1, q_len=37, kv_len=54, head_dim=16, causal=True, dtype="float16"
    ),
    "fp16_padded_cross": dict(
        batch=2, q_heads=1, q_len=20, kv_len=41, head_dim=16, kv_valid_lens=(41, 9), dtype="float16"
    ),
    "automatic_tiles_causal_gqa": dict(batch=1, q_heads=2, kv_heads=1, q_len=70, head_dim=32, causal=True),
}
TILES = {
    "automatic_tiles_causal_gqa": {"block_m": 0, "block_n": 0},
    "causal_cross_q_shorter_tiles_32x16": {"block_m": 32, "block_n": 16},
    "mqa_causal_cross_padded_tiles_16x32": {"block_m": 16, "block_n": 32},
}
STRIDED_CASE = "gqa_padded"  # also fed (B, N, H, D) tensors viewed as (B, H, N, D), to exercise the strides


def _interpreted_errors() -> dict[str, dict[str, float]]:
    """Run in the child: normalised errors of out, dq, dk, dv against the float64 dense oracle per case."""
    import torch

    import attention_zoo as z
    from attention_zoo.reference import normalised_max_error

    torch.set_num_threads(2)
    errors = {}
    for case, fields in CASES.items():
        problem = z.Problem(**fields)
        entry = z.get("triton_flash")
        impl = entry.build(problem, **{**entry.oracle_hparams, **TILES.get(case, {})})
        q, k, v = problem.make_inputs(seed=1)
        if case == STRIDED_CASE:
            q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(3)).to(q)
        out = impl(q, k, v)
        out.backward(grad_out)
        q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
        expected = impl.dense_reference(q64, k64, v64)
        expected.backward(grad_out.double())
        pairs = {"out": (out, expected), "dq": (q.grad, q64.grad), "dk": (k.grad, k64.grad), "dv": (v.grad, v64.grad)}
        errors[case] = {label: normalised_max_error(got, want) for label, (got, want) in pairs.items()}
        errors[case]["out_shape_dtype_ok"] = float(out.shape == q.shape and out.dtype == q.dtype)
        errors[case]["kernel"] = impl.kernel
    return errors


@pytest.fixture(scope="module")
def interpreted_errors() -> dict[str, dict[str, float]]:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    child = subprocess.run(
        [sys.executable, __file__],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_interpreted_kernels_match_oracle(interpreted_errors: dict, case: str) -> None:
    from attention_zoo.reference import TOLERANCES

    errors = dict(interpreted_errors[case])
    assert errors.pop("out_shape_dtype_ok") == 1.0
    kernel = errors.pop("kernel")
    if case == "automatic_tiles_causal_gqa":  # the interpreter's forward tiles, float32's backward tiles
        assert kernel == "fwd 64x64 w4 s3; dkdv 32x64 w4 s2; dq 64x32 w4 s2"
    tolerance = TOLERANCES[CASES[case].get("dtype", "float32")]
    for label, error in errors.items():
        assert error <= tolerance, f"{case}: {label} off by {error:.2e} (tolerance {tolerance:.0e})"


def test_cpu_without_interpreter_is_unsupported_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import attention_zoo as z

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = z.get("triton_flash").unsupported_reason(z.Problem(q_len=8))
    assert reason == "triton_flash runs on CUDA (or on CPU under TRITON_INTERPRET=1, for tests)"


def test_missing_triton_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import attention_zoo as z

    monkeypatch.setitem(sys.modules, "triton", None)  # find_spec now answers "not installed"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # else the registry's no-CUDA reason comes first
    for device in ("cpu", "cuda"):
        reason = z.get("triton_flash").unsupported_reason(z.Problem(q_len=8, device=device))
        assert reason and "pip install 'attention-zoo[triton]'" in reason


def test_declares_what_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import attention_zoo as z

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    entry = z.get("triton_flash")
    assert "256" in entry.unsupported_reason(z.Problem(q_len=8, head_dim=256))
    assert "float64" in entry.unsupported_reason(z.Problem(q_len=8, dtype="float64"))
    assert entry.unsupported_reason(z.Problem(q_len=8, head_dim=80)) is None  # padded to 128 inside
    assert (entry.family, entry.exact, str(entry.memory)) == ("flash", True, "O(N)")


@pytest.mark.parametrize(("field", "value"), [("block_m", 24), ("block_n", 8), ("num_warps", -1)])
def test_bad_hyperparameter_is_one_line_error(monkeypatch: pytest.MonkeyPatch, field: str, value: int) -> None:
    import attention_zoo as z

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(z.HyperparameterError, match=f"^triton_flash {field}={value} is invalid: [^\n]*$"):
        z.get("triton_flash").build(z.Problem(q_len=8), **{field: value})


@pytest.mark.parametrize(
    ("hparams", "message"),
    [
        ({"block_m": 64}, "^block_m=64 and block_n=0 are invalid: set both, or both 0$"),
        ({"num_warps": 8}, "^num_warps=8 and num_stages=0 are invalid with automatic tiles: [^\n]*$"),
    ],
)
def test_automatic_tiles_are_all_or_nothing(monkeypatch: pytest.MonkeyPatch, hparams: dict, message: str) -> None:
    import attention_zoo as z

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(z.HyperparameterError, match=message):
        z.get("triton_flash").build(z.Problem(q_len=8), **hparams)


def test_autotuned_forward_tiles_are_hopper_sane() -> None:
    """Triton's tutorial prunes 8 warps on tiles under 128 x 128 on sm90 (BLOCK_M=128 x BLOCK_N=64 x 8 warps
    at D=128 was this entry's old default); the autotuner is keyed on the sequence lengths and head dim."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    code = (
        "import attention_zoo.impls.triton_flash_kernels as k; "
        "assert all(w == 4 or m * n >= 128 * 128 for m, n, w, s in k.FORWARD_TILES), k.FORWARD_TILES; "
        "assert {'q_len', 'kv_len', 'HEAD_DIM'} <= set(k.AUTOTUNE_KEY); print(len(k.FORWARD_TILES))"
    )
    child = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert int(child.stdout) >= 4


def test_importing_attention_zoo_does_not_import_the_kernels() -> None:
    """The kernels module is the only one that imports triton; importing the package must not load it."""
    code = (
        "import sys, attention_zoo as z; "
        "assert 'triton_flash' in z.list_impls(); "
        "assert 'attention_zoo.impls.triton_flash_kernels' not in sys.modules"
    )
    child = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]


if __name__ == "__main__":
    print(json.dumps(_interpreted_errors()))
