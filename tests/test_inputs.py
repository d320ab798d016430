"""Input distributions (attention_zoo/inputs.py): each has the structure it claims, and the sweep's inputs axis
yields one row per distribution with the error metrics that go with it."""

import math

import pytest
import torch

import attention_zoo as z
from attention_zoo.inputs import INPUTS, draw_inputs, low_rank
from attention_zoo.reference import expand_kv_heads
from bench import rows as results
from bench.sweep.accuracy import needle_recall
from bench.sweep.config import compose_config
from bench.sweep.run import run


def exact_weights(problem: z.Problem, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Exact attention's float64 weights (B, Hq, Nq, Nk) under the problem's mask."""
    scores = q.double() @ expand_kv_heads(k.double(), problem.q_heads).transpose(-1, -2) / math.sqrt(problem.head_dim)
    return scores.masked_fill(~problem.allowed_mask(), -math.inf).softmax(-1)


PROBLEMS = {
    "mha": z.Problem(batch=2, q_heads=4, q_len=512, head_dim=64),
    "gqa causal padded": z.Problem(
        batch=2, q_heads=4, kv_heads=2, q_len=384, head_dim=32, causal=True, kv_valid_lens=(384, 200)
    ),
    "cross causal": z.Problem(batch=1, q_heads=2, q_len=100, kv_len=300, head_dim=64, causal=True),
}


@pytest.mark.parametrize("distribution", INPUTS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_distribution_is_seeded_and_shaped_like_the_problem(distribution: str, dtype: str) -> None:
    problem = z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=48, kv_len=64, head_dim=16, causal=True, dtype=dtype)
    drawn, again, other = (draw_inputs(problem, distribution, seed) for seed in (1, 1, 2))
    assert drawn.q.shape == (2, 4, 48, 16) and drawn.k.shape == drawn.v.shape == (2, 2, 64, 16)
    assert {x.dtype for x in (drawn.q, drawn.k, drawn.v)} == {problem.torch_dtype}
    assert all(torch.isfinite(x).all() for x in (drawn.q, drawn.k, drawn.v))
    assert torch.equal(drawn.q, again.q) and torch.equal(drawn.k, again.k) and not torch.equal(drawn.v, other.v)
    assert (drawn.needles is None) == (distribution != "retrieval")


def test_iid_is_the_problems_own_draw() -> None:
    problem = PROBLEMS["mha"]
    drawn = draw_inputs(problem, "iid", seed=5)
    for x, y in zip((drawn.q, drawn.k, drawn.v), problem.make_inputs(seed=5), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", PROBLEMS)
def test_on_retrieval_exact_attention_puts_nine_tenths_of_each_querys_weight_on_its_needle(name: str) -> None:
    problem = PROBLEMS[name]
    drawn = draw_inputs(problem, "retrieval", seed=0)
    needles = drawn.needles
    assert needles.shape == (problem.batch, problem.q_heads, problem.q_len)
    allowed = problem.allowed_mask().expand(-1, problem.q_heads, -1, -1)
    assert allowed.gather(-1, needles[..., None]).all()  # every needle is a key its query may attend
    on_needle = exact_weights(problem, drawn.q, drawn.k).gather(-1, needles[..., None])[..., 0]
    assert on_needle.min() >= 0.9
    # the needles are spread over the keys, not one favourite
    assert needles.unique().numel() > problem.q_len // 4
    # and exact attention finds every one; a uniform average finds almost none
    exact = exact_weights(problem, drawn.q, drawn.k) @ expand_kv_heads(drawn.v.double(), problem.q_heads)
    assert needle_recall(exact, drawn.v, needles, problem.allowed_mask()) == 1.0
    uniform = allowed.double() / allowed.sum(-1, keepdim=True)
    averaged = uniform @ expand_kv_heads(drawn.v.double(), problem.q_heads)
    assert needle_recall(averaged, drawn.v, needles, problem.allowed_mask()) < 0.2


@pytest.mark.parametrize("name", PROBLEMS)
def test_on_local_the_exact_weights_decay_with_distance(name: str) -> None:
    problem = PROBLEMS[name]
    drawn = draw_inputs(problem, "local", seed=0)
    weights = exact_weights(problem, drawn.q, drawn.k)
    query_at = torch.arange(problem.q_len)[:, None] + problem.causal_offset
    distance = (query_at - torch.arange(problem.kv_len)[None, :]).abs()
    allowed = problem.allowed_mask().expand_as(weights)
    # queries past their sequence's last real key have no near key to attend: they are left out
    valid = torch.tensor(problem.kv_valid_lens or (problem.kv_len,) * problem.batch)
    allowed = allowed & (query_at < valid[:, None, None, None])
    per_key = []
    for low, high in ((0, 4), (4, 16), (16, 48), (48, 10**9)):
        band = allowed & ((distance >= low) & (distance < high))
        per_key.append(weights[band].mean().item())  # mean weight of one key at that distance
    assert per_key == sorted(per_key, reverse=True) and per_key[0] > 100 * per_key[-1]
    near = (weights * (distance < 48)).sum(-1)  # the weight within 48 positions, per query
    assert near[allowed.any(-1)].mean() > 0.75


@pytest.mark.parametrize("name", PROBLEMS)
def test_low_rank_queries_and_keys_share_one_subspace_of_rank_head_dim_over_eight(name: str) -> None:
    problem = PROBLEMS[name]
    drawn = draw_inputs(problem, "low_rank", seed=0)
    r = low_rank(problem.head_dim)
    assert r == problem.head_dim // 8
    for b in range(problem.batch):
        for h in range(problem.q_heads):
            both = torch.cat([drawn.q[b, h], drawn.k[b, h // problem.group_size]]).double()
            assert torch.linalg.matrix_rank(both, rtol=1e-4) == r  # (float32 rounding aside)
    logits = drawn.q.double() @ expand_kv_heads(drawn.k.double(), problem.q_heads).transpose(-1, -2)
    spread = (logits / math.sqrt(problem.head_dim)).std().item()
    assert abs(spread - math.sqrt(problem.head_dim / r)) < 0.5  # logits wider than iid's (std 1)


def test_the_inputs_axis_gives_a_row_per_distribution_with_the_metrics_of_each(tmp_path) -> None:
    cfg = compose_config([
        "timing=smoke", "sweep.seq_lens=[256]", "sweep.heads=2", "sweep.head_dims=32", "progress=false",
        "report=false", "impls.patterns=[full,sliding_window]", "++impls.hparams.sliding_window.window=32",
        "sweep.inputs=[iid,local,retrieval,low_rank]",
    ])  # fmt: skip
    run(cfg, tmp_path, run_id="inputs")
    rows = results.load(tmp_path).set_index(["impl", "inputs"])
    assert len(rows) == 8 and (rows["status"] == "ok").all()
    assert rows.loc[("full", "retrieval"), "needle_recall"] == 1.0
    assert rows.loc[("full", "local"), "error_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert rows["needle_recall"].drop(index="retrieval", level="inputs").isna().all()
    # a window of 32 over 256 keys keeps the local structure and loses most needles
    window = rows.loc["sliding_window"]
    assert window.loc["local", "error_rel_l2"] < 0.1 < window.loc["iid", "error_rel_l2"]
    assert window.loc["retrieval", "needle_recall"] < 0.5
    assert len(set(results.load(tmp_path)["cell_id"])) == 8


def test_a_decode_step_on_retrieval_inputs_finds_its_needles_when_exact() -> None:
    from bench.core.cell import Cell
    from bench.sweep.measure import measure_cell

    problem = z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=4, kv_len=260, head_dim=32, causal=True)
    timing = {
        "warmup_calls": 0,
        "warmup_s": 0.0,
        "min_samples": 1,
        "max_samples": 2,
        "budget_s": 0.0,
        "heap": "resident",
    }
    exact = measure_cell(Cell("sdpa_flash", problem, "decode", {}, 0.0, inputs="retrieval"), timing, 0)
    assert exact["needle_recall"] == 1.0 and exact["error_cosine"] == pytest.approx(1.0, abs=1e-5)
    window = measure_cell(Cell("sliding_window", problem, "decode", {"window": 8}, 0.0, inputs="retrieval"), timing, 0)
    assert window["needle_recall"] < 0.5  # most needles lie farther back than 8 keys
    q, k, v = draw_inputs(problem, "local", seed=0)  # unpacks like Problem.make_inputs
    assert q.shape == (2, 4, 4, 32) and k.shape == v.shape == (2, 2, 260, 32)
