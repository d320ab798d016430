"""Problem validation: every bad value gives one line naming the field, the value and what is allowed; packed
documents attend within themselves."""

from __future__ import annotations

import re

import pytest
import torch

import attention_zoo as z
from attention_zoo import Problem

BAD_PROBLEMS = {
    "q_heads not divisible": (dict(q_heads=6, kv_heads=4), "kv_heads=4"),
    "non-positive length": (dict(q_len=0), "q_len=0"),
    "negative kv length": (dict(kv_len=-3), "kv_len=-3"),
    "float head dim": (dict(head_dim=64.0), "head_dim=64.0"),
    "padding beyond key length": (dict(batch=2, q_len=8, kv_valid_lens=(8, 9)), "entry 9"),
    "padding count": (dict(batch=2, q_len=8, kv_valid_lens=(8,)), "batch=2"),
    "unknown dtype": (dict(dtype="float8"), "dtype='float8'"),
    "unknown device": (dict(device="tpu"), "device='tpu'"),
    "causal query longer than keys": (dict(q_len=9, kv_len=4, causal=True), "q_len=9"),
}


@pytest.mark.parametrize("case", BAD_PROBLEMS)
def test_bad_problem_is_one_clear_line(case: str) -> None:
    fields, named = BAD_PROBLEMS[case]
    with pytest.raises(z.ProblemError) as error:
        z.Problem(**fields)
    message = str(error.value)
    assert "\n" not in message
    assert named in message
    assert "allowed" in message or "must" in message or "needs" in message


@pytest.mark.parametrize(
    ("problem", "pairs"),
    [
        (z.Problem(batch=1, q_len=4), 16),
        (z.Problem(batch=1, q_len=4, causal=True), 10),
        (z.Problem(batch=1, q_len=2, kv_len=5, causal=True), 4 + 5),
        (z.Problem(batch=2, q_len=3, kv_len=6, causal=True, kv_valid_lens=(6, 4)), (4 + 5 + 6) + (4 + 4 + 4)),
    ],
)
def test_attended_pairs_counts_the_allowed_mask(problem: z.Problem, pairs: int) -> None:
    assert problem.attended_pairs() == pairs == int(problem.allowed_mask().sum())


def test_features_name_what_an_entry_must_handle() -> None:
    problem = z.Problem(batch=2, q_heads=4, kv_heads=1, q_len=3, kv_len=7, causal=True, kv_valid_lens=(7, 2))
    assert problem.features == {"causal", "padding", "gqa", "cross"}
    assert z.Problem().features == frozenset()


def test_packed_documents_attend_only_within_themselves() -> None:
    lens = (3, 1, 6)
    for causal in (False, True):
        packed = Problem(batch=2, q_heads=2, q_len=10, head_dim=8, causal=causal, doc_lens=lens)
        q, k, v = packed.make_inputs(seed=0)
        out = z.dense_attention(q, k, v, packed.allowed_mask())
        start = 0
        for n in lens:  # each document alone, as its own sequence, gives the same rows
            rows = slice(start, start + n)
            alone = Problem(batch=2, q_heads=2, q_len=n, head_dim=8, causal=causal)
            expected = z.dense_attention(q[:, :, rows], k[:, :, rows], v[:, :, rows], alone.allowed_mask())
            assert torch.allclose(out[:, :, rows], expected)
            start += n
        assert packed.attended_pairs() == 2 * sum(n * (n + 1) // 2 if causal else n * n for n in lens)
        assert int(packed.allowed_mask().sum()) == packed.attended_pairs()
        assert "packed" in packed.features
    assert "packed" not in Problem(q_len=10, doc_lens=(10,)).features


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"q_len": 10, "doc_lens": (3, 3)}, "doc_lens (3, 3) sum to 6: the documents must fill q_len=10"),
        ({"q_len": 10, "doc_lens": (10, 0)}, "doc_lens entry 0 is invalid"),
        ({"q_len": 10, "kv_len": 12, "doc_lens": (10,)}, "needs q_len == kv_len and no kv_valid_lens"),
        ({"q_len": 10, "kv_valid_lens": (5,), "doc_lens": (10,)}, "needs q_len == kv_len and no kv_valid_lens"),
    ],
)
def test_impossible_packings_are_one_line(fields: dict, expected: str) -> None:
    with pytest.raises(z.ProblemError, match=re.escape(expected)):
        Problem(**fields)
