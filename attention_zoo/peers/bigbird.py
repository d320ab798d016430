"""HF transformers' BigBird block-sparse core beside our bigbird (impls/bigbird.py)."""

from __future__ import annotations

import importlib

import torch

from attention_zoo.impls import bigbird
from attention_zoo.interface import Attention
from attention_zoo.peers.common import (
    PEER_DECODE,
    NonNegative,
    Positive,
    all_keys_valid,
    missing_reason,
    positive_ints,
)
from attention_zoo.problem import Problem
from attention_zoo.registry import register


def hf_bigbird_falls_back(seq_len: int, block_size: int, num_random_blocks: int) -> bool:
    """HF BigBirdModel.forward's rule: at seq_len <= (5 + 2*num_random_blocks) * block_size it switches the
    model to full attention ('original_full') and does not switch back."""
    return seq_len <= (5 + 2 * num_random_blocks) * block_size


class PeerHFBigBird(Attention):
    """transformers' BigBirdBlockSparseAttention.bigbird_block_sparse_attention, called on q, k, v directly.

    Its pattern is fixed: window of 3 blocks and 2 global blocks (the first and the last), which are
    our num_window_blocks=3, num_global_blocks=2. Its random blocks differ from ours: the layer is put
    in training mode (in eval mode HF returns an all-zero random table, so every "random" block is
    block 0, already global, and counted again), where it reseeds numpy with `seed` at every call; at
    N = 1024, 3072 and 4096 it draws them from the paper's old plans, limited to the first 1024 tokens,
    and two of those rows may repeat a window block (its code says so); elsewhere from its per-head plan.
    A repeated block weighs twice in its softmax, so its dense form counts blocks. Its masked score is
    -10000 rather than -inf. It needs N a multiple of block_size and is unsupported where BigBirdModel
    would fall back to full attention (hf_bigbird_falls_back). Non-causal self-attention, no GQA or
    padding here (the model's padding goes through its blocked masks, not wired up).
    """

    def __init__(self, problem: Problem, block_size: int, num_random_blocks: int, seed: int) -> None:
        super().__init__(problem)
        big_bird = importlib.import_module("transformers.models.big_bird.modeling_big_bird")
        config = importlib.import_module("transformers").BigBirdConfig(
            hidden_size=problem.q_heads * problem.head_dim,
            num_attention_heads=problem.q_heads,
            attention_type="block_sparse",
            block_size=block_size,
            num_random_blocks=num_random_blocks,
            max_position_embeddings=max(4096, problem.q_len),
        )
        self.layer = big_bird.BigBirdBlockSparseAttention(config, seed=seed).train()  # train: real random blocks
        self.layer.requires_grad_(False)  # its own (unused) projections: gradients reach q, k, v only
        self.block_size, self.num_random_blocks, self.seed = block_size, num_random_blocks, seed
        ones = torch.ones(problem.batch, problem.q_len, device=problem.device, dtype=problem.torch_dtype)
        blocked, band, from_mask, to_mask = big_bird.BigBirdModel.create_masks_for_block_sparse_attn(ones, block_size)
        self.masks = (band, from_mask, to_mask, blocked, blocked)
        self.random_table = None  # the (H, nb-2, r) random blocks of the latest call
        create_rand_mask = self.layer._create_rand_mask_from_inputs

        def recording(*args, **kwargs):  # its random table passes through here on every call
            self.random_table = args[2][0].cpu()
            return create_rand_mask(*args, **kwargs)

        self.layer._create_rand_mask_from_inputs = recording

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, heads, n, head_dim = q.shape
        context, _ = self.layer.bigbird_block_sparse_attention(
            q, k, v, *self.masks, heads, self.num_random_blocks, head_dim, self.block_size, self.block_size,
            batch, n, n, seed=self.seed, plan_from_length=None, plan_num_rand_blocks=None,
        )  # fmt: skip
        return context.transpose(1, 2)  # it returns (B, N, H, d), a transposed view

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Our block-count dense form at window 3, global 2, with the random blocks HF drew in the latest call."""
        if self.random_table is None:
            self(q.detach().float(), k.detach().float(), v.detach().float())
        layout = bigbird.BlockLayout(self.problem.q_len, self.block_size, 3, 2)
        counts = layout.counts(self.random_table).to(q.device)
        return bigbird.block_counts_dense(q, k, v, counts, self.block_size, all_keys_valid(self.problem))


def _hf_bigbird_availability(problem: Problem, hparams: dict) -> str | None:
    block_size, random_blocks = hparams["block_size"], hparams["num_random_blocks"]
    if problem.causal:
        return "HF's block-sparse BigBird is bidirectional: the model uses full attention as a decoder"
    if problem.q_len != problem.kv_len:
        return "HF's block-sparse BigBird pairs query block i with key block i: it needs q_len == kv_len"
    if positive_ints(block_size, random_blocks + 1):
        if problem.q_len % block_size:
            return f"HF's block-sparse attention needs N a multiple of block_size={block_size} (BigBirdModel pads)"
        if hf_bigbird_falls_back(problem.q_len, block_size, random_blocks):
            return (
                f"HF BigBirdModel switches to full attention at seq_len <= (5 + 2*num_random_blocks)*block_size "
                f"= {(5 + 2 * random_blocks) * block_size}: it would not run block-sparse here"
            )
    return missing_reason("transformers", "transformers")


@register(
    decode=PEER_DECODE,
    family="sparse",
    exact=False,
    time="N*b*(w+g+r)",
    memory="N*b*(w+g+r)",
    features=(),
    flops=lambda problem, hparams: bigbird.computed_flops(
        problem, {**hparams, "num_window_blocks": 3, "num_global_blocks": 2}
    ),
    availability=_hf_bigbird_availability,
    oracle_hparams={"block_size": 7, "num_random_blocks": 1},
)
def peer_hf_bigbird(
    problem: Problem, *, block_size: Positive = 64, num_random_blocks: NonNegative = 3, seed: int = 0
) -> Attention:
    """HF transformers' BigBird block-sparse attention core (window 3, global 2, its random blocks)."""
    return PeerHFBigBird(problem, block_size, num_random_blocks, seed)
