"""performer's non-causal chunks with written-out backwards (_KeySummary, _QueryReadout): torch's gradcheck
on the whole entry in float64 (several key and query chunks, GQA, padded keys), and the graph-less forward
equal to the graph one."""

import pytest
import torch

import attention_zoo as z


@pytest.mark.parametrize("padded", [False, True])
def test_non_causal_chunks_pass_gradcheck(padded: bool) -> None:
    problem = z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=11, head_dim=4, dtype="float64",
                        kv_valid_lens=(11, 6) if padded else None)  # fmt: skip
    attention = z.get("performer").build(problem, num_features=8, chunk=3)  # 4 chunks, the last of 2
    q, k, v = problem.make_inputs(seed=5, requires_grad=True)
    assert torch.autograd.gradcheck(attention, (q, k, v))
    with torch.no_grad():
        without_graph = attention(q, k, v)
    assert torch.equal(attention(q, k, v), without_graph)
