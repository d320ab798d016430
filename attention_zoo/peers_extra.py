"""Public implementations of linear attention, BigBird, Nystromformer and Reformer LSH, behind our interface.

As in peers.py: the same hyperparameter names as our entry for the algorithm, the package imported
only when an entry is checked or built, and what the package computes differently said on each
class. Each dense_reference is our dense form of the algorithm fed the package's own choices (its
random blocks, its rotations, its scale and initialisation), so the oracle checks that the package
computes exactly that. HF transformers' layers are built from a config with random weights (nothing
is downloaded) and only their attention core runs: their input projections are replaced by column
pickers of one concatenated (B, N, 3*H*d) or (B, N, 2*H*d) input, a copy of q, k, v per call.
"""

from __future__ import annotations

import importlib
import math
import warnings
from typing import Annotated

import torch

from attention_zoo import bigbird, nystromformer, reformer
from attention_zoo.interface import Attention
from attention_zoo.linear_attention import elu_feature_map, linear_dense
from attention_zoo.peers import _Columns, _missing_reason
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast

Positive = Annotated[int, AtLeast(1)]
NonNegative = Annotated[int, AtLeast(0)]


def _tokens(*tensors: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) tensors -> one (B, N, sum of H*d) token-major input for a layer's column pickers."""
    return torch.cat([x.transpose(1, 2).flatten(2) for x in tensors], dim=-1)


def _heads(out: torch.Tensor, heads: int) -> torch.Tensor:
    """A layer's (B, N, H*d) output -> (B, H, N, d), a view."""
    return out.unflatten(-1, (heads, -1)).transpose(1, 2)


def _self_attention_only(problem: Problem, package: str, module: str) -> str | None:
    if problem.q_len != problem.kv_len:
        return f"{package} attends one sequence to itself: it needs q_len == kv_len"
    return _missing_reason(module, package)


def _all_keys_valid(problem: Problem) -> torch.Tensor:
    return torch.ones(problem.batch, problem.kv_len, dtype=torch.bool, device=problem.device)


# --- flash-linear-attention -----------------------------------------------------------------------

FLA_CHUNK = 64  # naive_chunk_linear_attn's fixed chunk size


def _import_fla_naive():
    with warnings.catch_warnings():  # fla warns at import that Triton is unavailable on CPU
        warnings.simplefilter("ignore")
        return importlib.import_module("fla.ops.linear_attn.naive")


class PeerFlaLinearAttention(Attention):
    """flash-linear-attention's PyTorch reference, fla.ops.linear_attn.naive.naive_chunk_linear_attn.

    Its only CPU path: fla's kernels (and its elu+1 feature map, fla.modules.activations.elu_p1) are
    Triton. So phi = elu + 1 is applied here in torch, then naive_chunk_linear_attn(normalize=True)
    computes causal linear attention by chunks of 64: chunk states, their cumulative sum, the masked
    intra-chunk product, and the normaliser q . cumsum(k) + 1e-10 (its 1/sqrt(d) scale cancels). It is
    causal only, needs N a multiple of 64, takes (B, N, H, d) (a transposed copy per call each way),
    and has no padding, GQA or cross-attention.
    """

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        self.chunk_linear_attention = _import_fla_naive().naive_chunk_linear_attn

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        phi_q, phi_k = (elu_feature_map(x).transpose(1, 2) for x in (q, k))
        out = self.chunk_linear_attention(phi_q, phi_k, v.transpose(1, 2), normalize=True)
        return out.transpose(1, 2).to(q.dtype)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return linear_dense(q, k, v, self.problem.allowed_mask())


def _fla_availability(problem: Problem) -> str | None:
    if not problem.causal:
        return "fla's PyTorch reference of linear attention (naive_chunk_linear_attn) is causal only"
    if problem.q_len % FLA_CHUNK:
        return f"fla's naive_chunk_linear_attn cuts N into chunks of {FLA_CHUNK}: it needs N a multiple of it"
    return _missing_reason("fla", "flash-linear-attention")


def _fla_flops(problem: Problem, hparams: dict) -> float:
    n, d, c = problem.q_len, problem.head_dim, FLA_CHUNK
    return float(problem.batch * problem.q_heads * (4 * n * d * d + 4 * n * c * d))


@register(
    family="kernel",
    exact=False,
    time="N*d*(d+c)",
    memory="N*(d+c)",
    features=("causal",),
    flops=_fla_flops,
    availability=_fla_availability,
)
def peer_fla_linear_attention(problem: Problem) -> Attention:
    """flash-linear-attention's PyTorch reference of causal linear attention (elu+1 applied in torch)."""
    return PeerFlaLinearAttention(problem)


# --- HF transformers BigBird ----------------------------------------------------------------------


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
        return bigbird.block_counts_dense(q, k, v, counts, self.block_size, _all_keys_valid(self.problem))


def _positive_ints(*values: object) -> bool:
    """Whether the values can be used in a length rule (the builder gives the one-line error for the rest)."""
    return all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in values)


def _hf_bigbird_availability(problem: Problem, hparams: dict) -> str | None:
    block_size, random_blocks = hparams["block_size"], hparams["num_random_blocks"]
    if problem.causal:
        return "HF's block-sparse BigBird is bidirectional: the model uses full attention as a decoder"
    if problem.q_len != problem.kv_len:
        return "HF's block-sparse BigBird pairs query block i with key block i: it needs q_len == kv_len"
    if _positive_ints(block_size, random_blocks + 1):
        if problem.q_len % block_size:
            return f"HF's block-sparse attention needs N a multiple of block_size={block_size} (BigBirdModel pads)"
        if hf_bigbird_falls_back(problem.q_len, block_size, random_blocks):
            return (
                f"HF BigBirdModel switches to full attention at seq_len <= (5 + 2*num_random_blocks)*block_size "
                f"= {(5 + 2 * random_blocks) * block_size}: it would not run block-sparse here"
            )
    return _missing_reason("transformers", "transformers")


@register(
    family="sparse",
    exact=False,
    time="N*b*(w+g+r)",
    memory="N*b*(w+g+r)",
    features=(),
    flops=lambda problem, hparams: bigbird.computed_flops(
        problem, {**hparams, "num_window_blocks": 3, "num_global_blocks": 2}
    ),
    availability=_hf_bigbird_availability,
    check_hparams={"block_size": 7, "num_random_blocks": 1},
)
def peer_hf_bigbird(
    problem: Problem, *, block_size: Positive = 64, num_random_blocks: NonNegative = 3, seed: int = 0
) -> Attention:
    """HF transformers' BigBird block-sparse attention core (window 3, global 2, its random blocks)."""
    return PeerHFBigBird(problem, block_size, num_random_blocks, seed)


# --- HF transformers Nystromformer and lucidrains' nystrom-attention ------------------------------


class PeerHFNystromformer(Attention):
    """transformers' NystromformerSelfAttention forward, its q/k/v projections replaced by column pickers.

    num_landmarks as ours, segment means by reshape (so N must be a multiple of num_landmarks),
    no depthwise convolution of V added (conv_kernel_size None) and the pseudo-inverse's initial scale
    per sequence and head, as ours (init_option other than its default "original", which takes one max
    over the batch and all heads); both set on the layer, as its config's validation refuses them.
    Its pinv runs 6 iterations, fixed. At num_landmarks == N it is exact softmax.
    Non-causal self-attention; no GQA, and no padding here (its mask only masks the third kernel: keys
    are not zeroed before their landmarks as the paper's code does).
    """

    def __init__(self, problem: Problem, num_landmarks: int) -> None:
        super().__init__(problem)
        self.landmarks = num_landmarks
        width = problem.q_heads * problem.head_dim
        config = importlib.import_module("transformers").NystromformerConfig(
            hidden_size=width,
            num_attention_heads=problem.q_heads,
            num_landmarks=num_landmarks,
            segment_means_seq_len=problem.q_len,
            attention_probs_dropout_prob=0.0,
        )
        module = importlib.import_module("transformers.models.nystromformer.modeling_nystromformer")
        layer = module.NystromformerSelfAttention(config).eval()
        # what conv_kernel_size=None and inv_coeff_init_option=True would set (its config validates both away)
        layer.conv_kernel_size, layer.init_option = None, "exact"
        del layer.conv
        layer.query, layer.key, layer.value = (
            _Columns(0, width),
            _Columns(width, 2 * width),
            _Columns(2 * width, 3 * width),
        )
        self.layer = layer

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _heads(self.layer(_tokens(q, k, v))[0], q.shape[1])

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.landmarks == self.problem.q_len:
            return dense_attention(q, k, v)
        return nystromformer.nystrom_dense(q, k, v, self.landmarks, HF_PINV_ITERATIONS, None)


HF_PINV_ITERATIONS = 6  # NystromformerSelfAttention.iterative_inv's n_iter, not configurable


def _landmark_availability(package: str, module: str):
    def availability(problem: Problem, hparams: dict) -> str | None:
        m = hparams["num_landmarks"]
        if problem.causal:
            return f"{package}'s Nystromformer landmarks mix whole segments: not causal"
        if _positive_ints(m) and problem.q_len % m and package == "transformers":
            return f"HF's Nystromformer takes segment means by reshape: it needs N a multiple of num_landmarks={m}"
        if _positive_ints(m) and problem.q_len % m:
            return (
                f"nystrom-attention pads N up to a multiple of num_landmarks={m} with zero tokens in front, which "
                "enter the first landmark's mean: not our segments"
            )
        return _self_attention_only(problem, package, module)

    return availability


def _nystrom_flops(problem: Problem, hparams: dict) -> float:
    return nystromformer.computed_flops(problem, {"pinv_iterations": HF_PINV_ITERATIONS, **hparams})


@register(
    family="low_rank",
    exact=False,
    time="N*m*d",
    memory="N*m",
    features=(),
    flops=_nystrom_flops,
    availability=_landmark_availability("transformers", "transformers"),
    check_hparams={"num_landmarks": 7},
)
def peer_hf_nystromformer(problem: Problem, *, num_landmarks: Positive = 64) -> Attention:
    """HF transformers' Nystromformer self-attention core (no conv; per-head pinv initialisation as ours)."""
    return PeerHFNystromformer(problem, num_landmarks)


class PeerNystromAttention(Attention):
    """lucidrains' nystrom_attention.NystromAttention, its to_qkv and to_out replaced by identities.

    num_landmarks and pinv_iterations as ours, residual=False (no depthwise convolution of V), no
    dropout. It scales q by d^-1/2 (the same scores as our d^-1/4 on each side) and takes landmarks as
    segment sums over ceil(N/m) positions divided by that count (our means when N is a multiple of m;
    otherwise it pads zero tokens in front, unsupported here). Its pseudo-inverse starts from
    Z0 = A^T / (max column sum * max row sum) over the whole batch and every head: `global_init`.
    Self-attention on one input (B, N, 3*H*d), so no GQA or cross; padding through its masked means is
    not wired up; not causal.
    """

    def __init__(self, problem: Problem, num_landmarks: int, pinv_iterations: int) -> None:
        super().__init__(problem)
        self.landmarks, self.iterations = num_landmarks, pinv_iterations
        width = problem.q_heads * problem.head_dim
        layer = importlib.import_module("nystrom_attention").NystromAttention(
            dim=width,
            dim_head=problem.head_dim,
            heads=problem.q_heads,
            num_landmarks=num_landmarks,
            pinv_iterations=pinv_iterations,
            residual=False,
            dropout=0.0,
        )
        layer.to_qkv, layer.to_out = torch.nn.Identity(), torch.nn.Identity()
        self.layer = layer.eval()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _heads(self.layer(_tokens(q, k, v)), q.shape[1])

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return nystromformer.nystrom_dense(q, k, v, self.landmarks, self.iterations, None, global_init=True)


@register(
    family="low_rank",
    exact=False,
    time="N*m*d",
    memory="N*m",
    features=(),
    flops=nystromformer.computed_flops,
    availability=_landmark_availability("nystrom-attention", "nystrom_attention"),
    check_hparams={"num_landmarks": 7},
)
def peer_nystrom_attention(
    problem: Problem, *, num_landmarks: Positive = 64, pinv_iterations: NonNegative = 6
) -> Attention:
    """lucidrains' nystrom-attention NystromAttention core (no residual conv); num_landmarks, pinv_iterations."""
    return PeerNystromAttention(problem, num_landmarks, pinv_iterations)


# --- HF transformers Reformer and lucidrains' reformer-pytorch ------------------------------------


def _seeded_randn(seed: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """torch.randn(shape) right after torch.manual_seed(seed), without touching the global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.randn(shape, dtype=dtype, device=device)


class PeerHFReformer(Attention):
    """transformers' LSHSelfAttention forward, its query_key and value projections replaced by column pickers.

    Shared QK as ours (the given k is ignored), n_hashes, chunk length = bucket_size, one chunk before
    and none after, and num_buckets set to our two factors [f, f] (its factorised hashing, the same
    buckets as ours for the same rotations). Its rotations are drawn at every call by torch.randn after
    torch.manual_seed(seed) (its hash_seed, which reseeds the global generator), so the pattern is the
    same at every call but not the one our entry draws. Keys: x / sqrt(mean(x^2) + 1e-6) / sqrt(d),
    our unit keys up to that epsilon. Same self (-1e5) and mask (-1e9) values, same look-back wrap.
    Causal through is_decoder. A query that reaches only itself (causal: the first positions) is
    normalised by exp(-1e5 - logsumexp) in float32, off by up to 1e-2 (ours normalises from the row
    max). Needs N a multiple of bucket_size; no GQA, and no padding here (it
    hashes padded positions into an extra last bucket, unlike ours).
    """

    def __init__(self, problem: Problem, n_hashes: int, bucket_size: int, seed: int) -> None:
        super().__init__(problem)
        self.n_hashes, self.chunk, self.seed = n_hashes, bucket_size, seed
        self.factors = reformer.bucket_factors(problem.q_len, bucket_size)
        width = problem.q_heads * problem.head_dim
        config = importlib.import_module("transformers").ReformerConfig(
            attention_head_size=problem.head_dim,
            num_attention_heads=problem.q_heads,
            hidden_size=width,
            num_hashes=n_hashes,
            num_buckets=self.factors,
            lsh_attn_chunk_length=bucket_size,
            lsh_num_chunks_before=1,
            lsh_num_chunks_after=0,
            hash_seed=seed,
            is_decoder=problem.causal,
            lsh_attention_probs_dropout_prob=0.0,
            max_position_embeddings=max(4096, problem.q_len),
            attn_layers=["lsh"],
        )
        module = importlib.import_module("transformers.models.reformer.modeling_reformer")
        layer = module.LSHSelfAttention(config, layer_idx=0).eval()
        layer.query_key, layer.value = _Columns(0, width), _Columns(width, 2 * width)
        self.layer = layer

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = self.layer(_tokens(q, v)).hidden_states
        return _heads(out, q.shape[1]) + reformer.ignored(k)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.problem
        rotations = _seeded_randn(
            self.seed, (p.q_heads, p.head_dim, self.n_hashes, sum(self.factors) // 2), torch.float32, q.device
        )
        buckets = reformer.hash_buckets(q.detach().float(), rotations, self.factors)
        order = reformer.sorted_slots(buckets, math.prod(self.factors))
        out = reformer.lsh_dense(q, v, order, self.chunk, 1.0, p.causal, _all_keys_valid(p))
        return out + reformer.ignored(k)


def _lsh_availability(package: str, module: str, multiple: int):
    def availability(problem: Problem, hparams: dict) -> str | None:
        c = hparams["bucket_size"]
        if _positive_ints(c) and problem.q_len % (multiple * c):
            factor = f"{multiple}*" if multiple > 1 else ""
            return f"{package} needs N a multiple of {factor}bucket_size={factor}{c}"
        return _self_attention_only(problem, package, module)

    return availability


@register(
    family="sparse",
    exact=False,
    time="n_h*N*(c*d+log(N))",
    memory="n_h*N*c",
    features=("causal",),
    flops=reformer.computed_flops,
    availability=_lsh_availability("transformers", "transformers", 1),
    check_hparams={"bucket_size": 7, "n_hashes": 2},
)
def peer_hf_reformer(
    problem: Problem, *, n_hashes: Positive = 2, bucket_size: Positive = 64, seed: int = 0
) -> Attention:
    """HF transformers' Reformer LSHSelfAttention core (shared QK, factorised buckets as ours, its rotations)."""
    return PeerHFReformer(problem, n_hashes, bucket_size, seed)


class PeerReformerPytorch(Attention):
    """lucidrains' reformer_pytorch.LSHAttention on (B*H, N, d), the attention core of its LSHSelfAttention.

    bucket_size and n_hashes as ours; its defaults otherwise: duplicates kept and attention across
    buckets allowed (as ours), one rotation shared by every head. It differs: one hash of N/bucket_size
    buckets (not our two factors; the factor list [N/bucket_size] in our dense form), fresh rotations
    from the global generator at every call (seeded here from `seed` in a forked generator, so the
    same rotations at every call), and scores scaled by d^-1/2 on top of the unit keys. Its self value
    is -5e4, normalised through its float32 logsumexp (a self-only row is off by up to 1e-2, as HF's).
    Causal as ours. Needs N a multiple of 2*bucket_size; no GQA, cross, or padding here.
    """

    def __init__(self, problem: Problem, n_hashes: int, bucket_size: int, seed: int) -> None:
        super().__init__(problem)
        self.n_hashes, self.chunk, self.seed = n_hashes, bucket_size, seed
        layer = importlib.import_module("reformer_pytorch.reformer_pytorch").LSHAttention(
            bucket_size=bucket_size, n_hashes=n_hashes, causal=problem.causal, dropout=0.0
        )
        self.layer = layer.eval()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, heads, n, head_dim = q.shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            out, _, _ = self.layer(q.reshape(batch * heads, n, head_dim), v.reshape(batch * heads, n, head_dim))
        return out.view(batch, heads, n, head_dim) + reformer.ignored(k)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.problem
        num_buckets = p.q_len // self.chunk
        shared = _seeded_randn(self.seed, (1, p.head_dim, self.n_hashes, num_buckets // 2), torch.float32, q.device)
        buckets = reformer.hash_buckets(q.detach().float(), shared.expand(p.q_heads, -1, -1, -1), [num_buckets])
        order = reformer.sorted_slots(buckets, num_buckets)
        out = reformer.lsh_dense(q, v, order, self.chunk, p.head_dim**-0.5, p.causal, _all_keys_valid(p))
        return out + reformer.ignored(k)


def _reformer_pytorch_flops(problem: Problem, hparams: dict) -> float:
    n, d, c, n_hashes = problem.q_len, problem.head_dim, hparams["bucket_size"], hparams["n_hashes"]
    hashing = 2 * n * d * (n // c) // 2 * n_hashes
    return float(problem.batch * problem.q_heads * (hashing + 4 * n_hashes * n * 2 * c * d))


@register(
    family="sparse",
    exact=False,
    time="N^2*d/c",  # one hash of N/c buckets: the rotation costs N*(N/c)*d, beside N*c*d of attention
    memory="n_h*N*c",
    features=("causal",),
    flops=_reformer_pytorch_flops,
    availability=_lsh_availability("reformer-pytorch", "reformer_pytorch", 2),
    check_hparams={"bucket_size": 5, "n_hashes": 2},
)
def peer_reformer_pytorch(
    problem: Problem, *, n_hashes: Positive = 2, bucket_size: Positive = 64, seed: int = 0
) -> Attention:
    """lucidrains' reformer-pytorch LSHAttention (shared QK, one hash of N/bucket_size buckets, its defaults)."""
    return PeerReformerPytorch(problem, n_hashes, bucket_size, seed)
