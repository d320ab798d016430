"""The sparse family: the documented window convention, banded == flex, bad hyperparameters, O(N*w) memory.

Correctness against each entry's own dense oracle is tests/test_oracle.py's job; these tests pin down
what that oracle encodes (which keys a query sees) and the properties the oracle cannot see.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import attention_zoo as z
from attention_zoo.reference import TOLERANCES, normalised_max_error


def documented_keys(problem: z.Problem, query: int, window: int, global_tokens: int) -> set[int]:
    """The keys of sequence 0 that the docstring says `query` attends, spelled out key by key."""
    position = query + problem.kv_len - problem.q_len
    valid = problem.kv_valid_lens[0] if problem.kv_valid_lens else problem.kv_len
    keys = set()
    for key in range(valid):
        if problem.causal and key > position:
            continue
        in_window = position - window <= key <= position + (0 if problem.causal else window)
        if in_window or key < global_tokens or 0 <= position < global_tokens:
            keys.add(key)
    return keys


def attention_weights(impl: z.Attention, problem: z.Problem) -> torch.Tensor:
    """(Nq, Nk) attention weights of sequence 0, head 0: with V the identity, the output row is the weight row."""
    q, k, _ = problem.make_inputs(seed=4)
    identity = torch.eye(problem.kv_len, dtype=q.dtype).expand(problem.batch, problem.kv_heads, -1, -1)
    return impl(q, k, identity)[0, 0]


CONVENTION_PROBLEMS = {
    "self": z.Problem(batch=1, q_heads=1, q_len=30, head_dim=30, dtype="float64"),
    "causal": z.Problem(batch=1, q_heads=1, q_len=30, head_dim=30, causal=True, dtype="float64"),
    "causal_cross_padded": z.Problem(
        batch=1, q_heads=1, q_len=12, kv_len=30, head_dim=30, causal=True, kv_valid_lens=(26,), dtype="float64"
    ),
    "q_longer": z.Problem(batch=1, q_heads=1, q_len=30, kv_len=20, head_dim=20, dtype="float64"),
}


@pytest.mark.parametrize("shape", CONVENTION_PROBLEMS)
@pytest.mark.parametrize(("name", "global_tokens"), [("sliding_window", 0), ("window_global", 3)])
def test_each_query_attends_exactly_the_documented_keys(name: str, global_tokens: int, shape: str) -> None:
    problem, window = CONVENTION_PROBLEMS[shape], 4
    hparams = {"window": window, **({"global_tokens": global_tokens} if global_tokens else {})}
    weights = attention_weights(z.get(name).build(problem, **hparams), problem)
    for query in range(problem.q_len):
        attended = set(torch.nonzero(weights[query]).flatten().tolist())
        assert attended == documented_keys(problem, query, window, global_tokens), f"query {query}"


def test_queries_left_without_keys_output_zeros() -> None:
    # Nq > Nk puts the first queries at p = i - 10, more than `window` left of key 0
    problem = z.Problem(batch=1, q_heads=2, q_len=30, kv_len=20, head_dim=8)
    out = z.get("sliding_window").build(problem, window=4)(*problem.make_inputs())
    assert (out[:, :, :6] == 0).all() and (out[:, :, 6:].abs().sum(-1) > 0).all()


@pytest.mark.parametrize(
    ("banded", "flex", "hparams"),
    [
        ("sliding_window", "flex_sliding_window", {"window": 20}),
        ("window_global", "flex_global", {"window": 20, "global_tokens": 4}),
    ],
)
def test_banded_and_flex_compute_the_same_attention(banded: str, flex: str, hparams: dict) -> None:
    # several 128-row flex blocks, GQA, cross lengths, causal and padding at once
    problem = z.Problem(
        batch=2, q_heads=4, kv_heads=2, q_len=300, kv_len=333, head_dim=32, causal=True, kv_valid_lens=(333, 200)
    )
    q, k, v = problem.make_inputs(seed=5)
    with torch.no_grad():
        expected = z.get(banded).build(problem, **hparams)(q, k, v)
        got = z.get(flex).build(problem, **hparams)(q, k, v)
    assert normalised_max_error(got, expected) <= TOLERANCES["float32"]


def test_a_moved_block_mask_keeps_the_blocks_and_the_attention() -> None:
    """On CUDA the BlockMask's blocks are computed on the CPU and rebuilt on the device (flex.moved_block_mask);
    rebuilt here on the CPU it must hold the same blocks, both ways round, and give the same attention."""
    from attention_zoo.impls import flex

    problem = z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=300, kv_len=333, head_dim=32, causal=True,
                        kv_valid_lens=(333, 200))  # fmt: skip
    structure = flex.window_block_mask(problem, 20, 4)
    moved = flex.moved_block_mask(structure, "cpu", flex._mask_mod(problem, 20, 4))
    for prefix in ("kv", "full_kv", "q", "full_q"):
        count, indices = (getattr(structure, f"{prefix}_{part}") for part in ("num_blocks", "indices"))
        assert torch.equal(getattr(moved, f"{prefix}_num_blocks"), count), prefix
        # the indices past each row's count are padding, in whatever order the builder left them
        used = torch.arange(indices.shape[-1]) < count[..., None]
        assert torch.equal(torch.where(used, getattr(moved, f"{prefix}_indices"), 0), torch.where(used, indices, 0))
    q, k, v = problem.make_inputs(seed=5)
    impl = z.get("flex_global").build(problem, window=20, global_tokens=4)
    with torch.no_grad():
        expected = impl(q, k, v)
        impl.block_mask = moved
        assert torch.equal(impl(q, k, v), expected)


@pytest.mark.parametrize("name", ["sliding_window", "window_global", "flex_sliding_window", "flex_global"])
@pytest.mark.parametrize(("field", "value"), [("window", 0), ("window", 2.5), ("global_tokens", -1)])
def test_bad_hyperparameter_is_a_one_line_error(name: str, field: str, value: object) -> None:
    entry = z.get(name)
    if field not in entry.hparams:
        pytest.skip(f"{name} has no {field}")
    with pytest.raises(z.HyperparameterError) as error:
        entry.build(z.Problem(q_len=16), **{field: value})
    message = str(error.value)
    assert "\n" not in message and field in message and repr(value) in message


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any torch op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.numel = max(self.numel, tensor.numel())
        return out


@pytest.mark.parametrize("name", ["sliding_window", "window_global"])
def test_no_tensor_grows_with_n_squared(name: str) -> None:
    seq_len, window, global_tokens = 4096, 8, 4
    problem = z.Problem(batch=1, q_heads=2, kv_heads=1, q_len=seq_len, head_dim=8, causal=True)
    hparams = {"window": window, **({"global_tokens": global_tokens} if name == "window_global" else {})}
    q, k, v = problem.make_inputs(requires_grad=True)
    with LargestTensor() as largest:
        impl = z.get(name).build(problem, **hparams)
        impl(q, k, v).sum().backward()
    # banded scores hold heads * N * (block + window + g) entries; N^2 would be 512 times more
    assert largest.numel <= problem.q_heads * seq_len * (3 * window + global_tokens)


TILE_PROBLEM = z.Problem(
    batch=2, q_heads=4, kv_heads=2, q_len=45, kv_len=70, head_dim=8, causal=True, kv_valid_lens=(70, 52)
)


@pytest.mark.parametrize("name", ["sliding_window", "window_global"])
@pytest.mark.parametrize(("block", "chunk"), [(1, 1), (3, 2), (4, 100), (16, 1), (64, 8)])
def test_every_tiling_computes_the_same_band_and_gradients(name: str, block: int, chunk: int) -> None:
    # interior chunks (the shared band bias) and edge chunks (their own) in every proportion, forward and backward
    problem, hparams = TILE_PROBLEM, {"window": 6, "block": block, "chunk": chunk}
    if name == "window_global":
        hparams["global_tokens"] = 3
    q, k, v = problem.make_inputs(seed=6, requires_grad=True)
    impl = z.get(name).build(problem, **hparams)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(7))
    got = torch.autograd.grad(impl(q, k, v), (q, k, v), grad_out)
    expected = torch.autograd.grad(impl.dense_reference(q, k, v).float(), (q, k, v), grad_out)
    assert normalised_max_error(impl(q, k, v), impl.dense_reference(q, k, v)) <= TOLERANCES["float32"]
    for label, a, b in zip("qkv", got, expected, strict=True):
        assert normalised_max_error(a, b) <= TOLERANCES["float32"], f"d{label}"


@pytest.mark.parametrize("name", ["sliding_window", "window_global"])
def test_scores_exist_one_chunk_at_a_time(name: str) -> None:
    # window 64 at N = 4096: the whole sequence's banded scores would be heads * N * (block + 2w) = 1.6M entries
    seq_len, heads, head_dim, window, block, chunk, g = 4096, 2, 8, 64, 32, 4, 4
    problem = z.Problem(batch=1, q_heads=heads, kv_heads=1, q_len=seq_len, head_dim=head_dim)
    hparams = {"window": window, "block": block, "chunk": chunk}
    if name == "window_global":
        hparams["global_tokens"] = g
    q, k, v = problem.make_inputs(requires_grad=True)
    impl = z.get(name).build(problem, **hparams)
    with LargestTensor() as largest:
        impl(q, k, v).sum().backward()
    # a chunk's scores (all query heads of the group stacked), or a global row against every key
    chunk_scores = chunk * heads * block * (block + 2 * window + g)
    assert largest.numel <= max(chunk_scores, heads * g * seq_len, heads * seq_len * head_dim)
