"""The peers of linear attention, BigBird, Nystromformer and Reformer: each computes our definition, or our dense
form fed its own choices (random blocks, rotations, scale, initialisation); HF BigBird's fallback is a reason.

Small inputs, a few seconds in all (importing flash-linear-attention takes most of it).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import attention_zoo as z
from attention_zoo.impls import bigbird, reformer
from attention_zoo.peers.bigbird import hf_bigbird_falls_back
from attention_zoo.reference import TOLERANCES, normalised_max_error
from bench.core.cell import Cell, unsupported_reason

PEERS = {
    "peer_fla_linear_attention": "fla",
    "peer_hf_bigbird": "transformers",
    "peer_hf_nystromformer": "transformers",
    "peer_nystrom_attention": "nystrom_attention",
    "peer_hf_reformer": "transformers",
    "peer_reformer_pytorch": "reformer_pytorch",
}


def _close(out: torch.Tensor, expected: torch.Tensor) -> None:
    assert normalised_max_error(out, expected) <= TOLERANCES["float32"]


def _close_but_where_only_self(out: torch.Tensor, expected: torch.Tensor, v: torch.Tensor) -> bool:
    """Close, except that rows where a query reaches only itself (causal: the first positions) may be off by
    up to 1e-2: HF and reformer-pytorch normalise by exp(score - logsumexp) at their self score (-1e5, -5e4)
    in float32, which rounds that one weight. Whether there were such rows."""
    self_only = torch.isclose(expected, v.double()).all(-1, keepdim=True)
    _close(out.masked_fill(self_only, 0), expected.masked_fill(self_only, 0))
    assert normalised_max_error(out, expected) < 1e-2
    return bool(self_only.any())


def _dense(impl: z.Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return impl.dense_reference(q.double(), k.double(), v.double())


def test_importing_attention_zoo_imports_none_of_these_packages() -> None:
    code = f"import sys, attention_zoo; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(PEERS.values())}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_fla_reference_is_our_causal_linear_attention() -> None:
    problem = z.Problem(batch=1, q_heads=2, q_len=128, head_dim=16, causal=True)
    q, k, v = problem.make_inputs(seed=1)
    peer = z.get("peer_fla_linear_attention").build(problem)
    _close(peer(q, k, v), z.get("linear_attention").build(problem, causal_chunk=32)(q, k, v))
    reason = z.get("peer_fla_linear_attention").unsupported_reason(z.Problem(q_len=128, head_dim=16))
    assert reason and "causal only" in reason


def test_hf_bigbird_is_our_block_mask_with_its_random_blocks() -> None:
    problem = z.Problem(batch=2, q_heads=2, q_len=80, head_dim=16)  # 10 blocks of 8 > (5 + 2*1) * 8
    q, k, v = problem.make_inputs(seed=2)
    peer = z.get("peer_hf_bigbird").build(problem, block_size=8, num_random_blocks=1, seed=3)
    out = peer(q, k, v)
    table = peer.random_table  # (H, nb - 2, r): one random block per middle block and head
    assert table.shape == (2, 8, 1)
    # its pattern is ours at window 3, global 2 (first and last block), with its random blocks counted
    _close(out, _dense(peer, q, k, v))
    layout = bigbird.BlockLayout(80, 8, 3, 2)
    assert (layout.counts(table)[:, 0] == 1).all() and (layout.counts(table)[:, :, 9] >= 1).all()
    # the same seed reseeds numpy at every call: the same pattern again
    peer(q, k, v)
    assert torch.equal(peer.random_table, table)


@pytest.mark.parametrize(("seq_len", "falls_back"), [(704, True), (768, False)])
def test_hf_bigbird_fallback_to_full_attention_is_the_rows_reason(seq_len: int, falls_back: bool) -> None:
    assert hf_bigbird_falls_back(seq_len, 64, 3) is falls_back
    cell = Cell("peer_hf_bigbird", z.Problem(q_len=seq_len, head_dim=16), "fwd", {"block_size": 64}, 0.0)
    reason = unsupported_reason(cell)
    assert (reason is not None and "switches to full attention" in reason and "704" in reason) is falls_back
    # at other hyperparameters the limit moves with them: (5 + 2*1) * 32 = 224 < 704
    assert unsupported_reason(Cell("peer_hf_bigbird", cell.problem, "fwd", {"block_size": 32}, 0.0)) is None


def test_hf_nystromformer_is_our_nystromformer() -> None:
    problem = z.Problem(batch=2, q_heads=2, q_len=64, head_dim=16)
    q, k, v = problem.make_inputs(seed=4)
    peer = z.get("peer_hf_nystromformer").build(problem, num_landmarks=8)
    _close(peer(q, k, v), z.get("nystromformer").build(problem, num_landmarks=8)(q, k, v))


def test_nystrom_attention_is_our_dense_form_with_its_global_initial_scale() -> None:
    problem = z.Problem(batch=2, q_heads=2, q_len=64, head_dim=16)
    q, k, v = problem.make_inputs(seed=5)
    peer = z.get("peer_nystrom_attention").build(problem, num_landmarks=8)
    _close(peer(q, k, v), _dense(peer, q, k, v))
    reason = z.get("peer_nystrom_attention").unsupported_reason(problem, hparams={"num_landmarks": 6})
    assert reason and "pads N" in reason


@pytest.mark.parametrize("causal", [False, True])
def test_hf_reformer_with_its_rotations_is_our_lsh_attention(causal: bool) -> None:
    problem = z.Problem(batch=1, q_heads=2, q_len=64, head_dim=16, causal=causal)
    q, k, v = problem.make_inputs(seed=6)
    peer = z.get("peer_hf_reformer").build(problem, bucket_size=8, n_hashes=2, seed=7)
    out, expected = peer(q, k, v), _dense(peer, q, k, v)
    # our entry, given the rotations HF draws (torch.manual_seed(hash_seed), then randn), computes the same
    ours = z.get("reformer_lsh").build(problem, bucket_size=8, n_hashes=2)
    torch.manual_seed(7)
    ours.rotations = torch.randn(ours.rotations.shape)
    _close(ours(q, k, v), expected)
    assert causal == _close_but_where_only_self(out, expected, v)
    assert normalised_max_error(out, peer(q, 2 * k, v)) == 0.0  # shared QK: k is ignored


def test_reformer_pytorch_is_our_dense_form_with_one_hash_and_its_scale() -> None:
    problem = z.Problem(batch=1, q_heads=2, q_len=64, head_dim=16, causal=True)
    q, k, v = problem.make_inputs(seed=8)
    peer = z.get("peer_reformer_pytorch").build(problem, bucket_size=8, n_hashes=2, seed=9)
    out = peer(q, k, v)
    assert _close_but_where_only_self(out, _dense(peer, q, k, v), v)
    _close(peer(q, k, v), out)  # its rotations are seeded per call: the same buckets every call
    assert reformer.bucket_factors(64, 8) == [2, 2]  # ours: two factor hashes, 4 buckets; its one hash: 8


@pytest.mark.parametrize("name", PEERS)
def test_missing_package_is_a_reason_naming_the_extra(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, PEERS[name], None)
    causal = name in ("peer_fla_linear_attention",)
    reason = z.get(name).unsupported_reason(z.Problem(q_len=1024, head_dim=16, causal=causal))
    assert reason and "pip install 'attention-zoo[peers]'" in reason and "\n" not in reason
