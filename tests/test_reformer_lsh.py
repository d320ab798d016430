"""reformer_lsh's grouped passes: many groups of sorted chunks (crossing heads, the last one short) against
float64, forward and gradients, causal and padded."""

import pytest
import torch

import attention_zoo as z
from attention_zoo.impls import lsh_kernel
from attention_zoo.reference import TOLERANCES, normalised_max_error


@pytest.mark.parametrize("causal", [False, True])
def test_many_groups_forward_and_gradients_match_float64(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    # 2 rounds x 100 positions = 200 places a head: 25 chunks of 8; groups of 7 chunks cross the heads' edges
    monkeypatch.setattr(lsh_kernel, "GROUP_PLACES", 7 * 8)
    problem = z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=100, head_dim=16, causal=causal,
                        kv_valid_lens=(100, 61))  # fmt: skip
    attention = z.get("reformer_lsh").build(problem, bucket_size=8, n_hashes=2)
    q, k, v = problem.make_inputs(seed=4, requires_grad=True)
    out = attention(q, k, v)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    reference = attention.dense_reference(q64, k64, v64)
    assert normalised_max_error(out, reference) < TOLERANCES["float32"]
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, v), grad)
    theirs = torch.autograd.grad(reference, (q64, v64), grad.double())
    for label, a, b in zip("qv", ours, theirs, strict=True):
        assert normalised_max_error(a, b) < TOLERANCES["float32"], f"d{label}"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_lsh_kernel_passes_gradcheck(causal: bool, padded: bool) -> None:
    # the written-out backward against finite differences in float64: 3 heads of 6 chunks of 4 places (both
    # rounds of 10 positions, each shuffled, then 4 padding places, whose rows see masked keys only), groups of 2
    # chunks (so groups start inside heads), rounds combined 3 rows at a time; padded: positions 0 and 1 are
    # the only real keys
    torch.manual_seed(4)  # a draw in which padded rows reach padded keys only (in both rounds)
    heads, per_head, c, n, d, rounds = 3, 6, 4, 10, 6, 2
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lsh_kernel, "GROUP_PLACES", 2 * c)
        patch.setattr(lsh_kernel, "COMBINE_BYTES", 3 * rounds * d * 8)
        q, v, k = (torch.randn(heads * n, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
        # (heads, 20): the slot at each place, round by round
        order = torch.stack([torch.cat([r * n + torch.randperm(n) for r in range(rounds)]) for _ in range(heads)])
        position = torch.nn.functional.pad(order % n, (0, per_head * c - rounds * n), value=-1)
        rows = (torch.arange(heads)[:, None] * n + position.clamp_min(0)).view(-1, c)
        key_ok = (position >= 0) & (position < 2) if padded else position >= 0  # padded: few real keys
        undo = torch.empty_like(order).scatter_(1, order, torch.arange(rounds * n).expand_as(order))
        place_of = (torch.arange(heads)[:, None] * (per_head * c) + undo).view(heads, rounds, n).transpose(1, 2)
        places = lsh_kernel.Places(
            rows, rows, position.view(-1, c), key_ok.view(-1, c), per_head, place_of.flatten(0, 1), n
        )
        if padded:  # some rows reached padded keys only: they output zeros
            assert (lsh_kernel.lsh_attention(q, v, k, places, causal) == 0).all(-1).any()
        assert torch.autograd.gradcheck(lambda q, v, k: lsh_kernel.lsh_attention(q, v, k, places, causal), (q, v, k))
