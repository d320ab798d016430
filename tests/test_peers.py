"""The peer packages: imported lazily, a reason when missing, and the same hyperparameters meaning the same thing.

Each peer's correctness against its own dense form is in test_oracle.py; here is what is peculiar to
wrapping someone else's package.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import attention_zoo as z
from attention_zoo.reference import TOLERANCES, dense_attention, normalised_max_error

PEERS = {
    "peer_local_attention": ("local_attention", "local-attention"),
    "peer_linformer": ("linformer", "linformer"),
    "peer_performer": ("performer_pytorch", "performer-pytorch"),
}


def test_importing_attention_zoo_does_not_import_peer_packages() -> None:
    code = (
        "import sys, attention_zoo\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & {set(module for module, _ in PEERS.values())})\n"
        "print(loaded)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", PEERS)
def test_missing_package_is_a_reason_naming_it_and_the_extra(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module, package = PEERS[name]
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if not installed
    problem = z.Problem(q_len=8, head_dim=8)
    reason = z.get(name).unsupported_reason(problem)
    assert reason and package in reason and "pip install 'attention-zoo[peers]'" in reason
    assert "\n" not in reason
    with pytest.raises(z.UnsupportedError, match=package):
        z.get(name).build(problem)


def _check(out: torch.Tensor, expected: torch.Tensor) -> None:
    assert normalised_max_error(out, expected) <= TOLERANCES["float32"]


@pytest.mark.parametrize(
    "problem",
    [
        z.Problem(batch=1, q_heads=2, q_len=45, head_dim=16, causal=True),
        # the second sequence leaves queries past key 10 + window with no key: both sides output zeros
        z.Problem(batch=2, q_heads=2, q_len=45, head_dim=16, kv_valid_lens=(45, 10)),
    ],
    ids=["causal", "padded"],
)
def test_local_attention_is_our_sliding_window_at_equal_window(problem: z.Problem) -> None:
    window = 6  # 45 keys are no multiple of it, so autopad's extra keys must stay unattended
    q, k, v = problem.make_inputs(seed=4)
    ours = z.get("sliding_window").build(problem, window=window)(q, k, v)
    _check(z.get("peer_local_attention").build(problem, window=window)(q, k, v), ours)


def test_local_attention_bucketed_window_is_wider_than_the_exact_one() -> None:
    problem = z.Problem(batch=2, q_heads=2, q_len=45, head_dim=16, kv_valid_lens=(45, 30))
    q, k, v = problem.make_inputs(seed=5)
    bucketed = z.get("peer_local_attention").build(problem, window=6, exact_windowsize=False)
    out = bucketed(q, k, v)
    _check(out, bucketed.dense_reference(q.double(), k.double(), v.double()))
    # keys up to 2*window - 1 away in the neighbouring buckets count too, so the result differs
    exact = z.get("peer_local_attention").build(problem, window=6)(q, k, v)
    assert normalised_max_error(out, exact) > 1e-2


def _project_then_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Linformer by its definition: keys and values projected along the sequence (E K, E V), then attention."""

    def project(x: torch.Tensor) -> torch.Tensor:  # (B, H, N, d) -> (B, H, proj_len, d)
        return (x.double().transpose(-1, -2) @ projection).transpose(-1, -2)

    return dense_attention(q, project(k), project(v))


def test_linformer_share_kv_ties_the_projections_but_keeps_v() -> None:
    problem = z.Problem(batch=1, q_heads=2, q_len=40, head_dim=16)
    impl = z.get("peer_linformer").build(problem, proj_len=8, share_kv=True)
    assert impl.linformer.proj_k.shape == (40, 8)
    assert impl.linformer.proj_v is impl.linformer.proj_k
    q, k, v = problem.make_inputs(seed=6)
    _check(impl(q, k, v), _project_then_attend(q, k, v, impl.linformer.proj_k.detach().double()))
    # the package's own share_kv would attend over projected keys as values; ours keeps v
    assert normalised_max_error(impl(q, k, v), impl(q, k, 2 * v)) > 1e-2


def test_linformer_runs_mqa_through_one_kv_head_and_refuses_other_groups() -> None:
    mqa = z.Problem(batch=2, q_heads=4, kv_heads=1, q_len=30, kv_len=40, head_dim=16)
    impl = z.get("peer_linformer").build(mqa, proj_len=8)
    q, k, v = mqa.make_inputs(seed=7)
    _check(impl(q, k, v), impl.dense_reference(q.double(), k.double(), v.double()))
    reason = z.get("peer_linformer").unsupported_reason(z.Problem(q_heads=4, kv_heads=2, q_len=30, head_dim=16))
    assert reason and "one_kv_head" in reason


def test_performer_features_come_from_the_seed_and_redraw_per_call() -> None:
    problem = z.Problem(batch=1, q_heads=2, q_len=30, head_dim=16, causal=True)
    entry = z.get("peer_performer")
    projection = entry.build(problem, num_features=24, seed=3).fast_attention.projection_matrix
    assert projection.shape == (24, 16)
    assert torch.equal(projection, entry.build(problem, num_features=24, seed=3).fast_attention.projection_matrix)
    assert not torch.equal(projection, entry.build(problem, num_features=24, seed=4).fast_attention.projection_matrix)
    redrawing = entry.build(problem, num_features=24, redraw=True)
    q, k, v = problem.make_inputs(seed=8)
    first, second = redrawing(q, k, v), redrawing(q, k, v)
    assert normalised_max_error(first, second) > 1e-3
    _check(second, redrawing.dense_reference(q.double(), k.double(), v.double()))  # the features of that call


def test_performer_causal_cross_attention_is_a_reason() -> None:
    problem = z.Problem(q_len=20, kv_len=30, head_dim=16, causal=True)
    reason = z.get("peer_performer").unsupported_reason(problem)
    assert reason and "q_len == kv_len" in reason


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        (
            "peer_local_attention",
            {"window": 0},
            "peer_local_attention window=0 is invalid: it must be an integer >= 1",
        ),
        ("peer_local_attention", {"exact_windowsize": 1}, "peer_local_attention exact_windowsize=1 is invalid"),
        ("peer_linformer", {"proj_len": -3}, "peer_linformer proj_len=-3 is invalid: it must be an integer >= 1"),
        ("peer_performer", {"num_features": 2.5}, "peer_performer num_features=2.5 is invalid"),
        ("peer_performer", {"seed": "a"}, "peer_performer seed='a' is invalid: it must be an integer"),
    ],
)
def test_bad_hyperparameter_is_one_line(name: str, overrides: dict, message: str) -> None:
    with pytest.raises(z.HyperparameterError) as error:
        z.get(name).build(z.Problem(q_len=8, head_dim=8), **overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", z.list_impls())
def test_no_entry_trains_parameters_of_its_own(name: str) -> None:
    """A timed backward computes dq, dk, dv only: no entry, peer or ours, builds graphs for or accumulates
    gradients into its own projections (peer_linformer's proj_k / proj_v did, slowing it unfairly)."""
    problem, entry = z.Problem(q_heads=2, q_len=32, head_dim=16), z.get(name)
    reason = entry.unsupported_reason(problem, "backward")
    if reason:
        pytest.skip(f"{name}: {reason}")
    impl = entry.build(problem, **entry.oracle_hparams)
    assert [n for n, p in impl.named_parameters() if p.requires_grad] == []
    q, k, v = problem.make_inputs(requires_grad=True)
    impl(q, k, v).sum().backward()
    assert all(p.grad is None for p in impl.parameters())
