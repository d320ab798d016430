"""The tiny causal language model the recall task trains, with the attention under test as its mixer.

Everything but the attention is fixed: token and learned position embeddings of width W = heads x head_dim,
then `layers` pre-norm blocks of [a short causal depthwise convolution (kernel 3) and the attention, each
added to the residual] and a GELU MLP (4W), a final LayerNorm and a linear head over the vocabulary. The
convolution lets a token see its predecessor without attention (as Zoology's and H3's short convolutions do),
so one attention layer can solve MQAR by matching a query's key with the token before each value; without
it, exact attention too needs thousands of steps to form an induction head. The attention is an entry built
for the problem (batch, heads, N, head_dim, causal), called as impl(q, k, v) on (B, H, N, head_dim).
"""

from __future__ import annotations

import torch
from torch import nn

from attention_zoo import Attention

CONV_KERNEL = 3


class Mixer(nn.Module):
    """Short causal convolution, then q, k, v projections, the attention under test, and the output projection."""

    def __init__(self, attention: Attention, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.attention = heads, attention
        self.conv = nn.Conv1d(width, width, CONV_KERNEL, padding=CONV_KERNEL - 1, groups=width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        x = x + self.conv(x.transpose(1, 2))[..., :length].transpose(1, 2)  # position t sees t-2..t only
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        return self.out(self.attention(q, k, v).transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    def __init__(self, attention: Attention, width: int, heads: int) -> None:
        super().__init__()
        self.mix_norm, self.mlp_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mixer = Mixer(attention, width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.mix_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class RecallModel(nn.Module):
    """Token ids (B, N) -> next-token logits (B, N, vocab); `attentions` holds one built entry per layer."""

    def __init__(self, attentions: list[Attention], vocab_size: int, seq_len: int, heads: int, head_dim: int) -> None:
        super().__init__()
        width = heads * head_dim
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(Block(attention, width, heads) for attention in attentions)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tokens(tokens) + self.positions.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
