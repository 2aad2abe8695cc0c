"""AnimateDiff-style ("Vanilla", v2) motion module: the only part of the denoiser that mixes frames.

Attention runs along time for every spatial position, bidirectionally over the whole window (the
released code never masks it, spec §3.4 / pitfall 23). A sinusoidal position table is added to the
normalised tokens before q, k and v are projected.
"""

import math

import torch
from diffusers.models.attention import FeedForward
from torch import nn
from torch.nn import functional as F


def sinusoidal_positions(max_len: int, channels: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/C)), PE[pos, 2i+1] = cos(...), shaped [1, max_len, C]."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    table = torch.zeros(1, max_len, channels)
    table[0, :, 0::2] = torch.sin(position * div_term)
    table[0, :, 1::2] = torch.cos(position * div_term)
    return table


class PositionalEncoding(nn.Module):
    def __init__(self, channels: int, max_len: int):
        super().__init__()
        # Persistent: the released checkpoint stores the table, and a strict load expects it.
        self.register_buffer("pe", sinusoidal_positions(max_len, channels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        frames = tokens.shape[1]
        if frames > self.pe.shape[1]:
            raise ValueError(f"the motion module sees {frames} frames but its position table holds "
                             f"{self.pe.shape[1]}; use fewer frames per window")
        return tokens + self.pe[:, :frames].to(tokens.dtype)


class TemporalSelfAttention(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])
        self.pos_encoder = PositionalEncoding(channels, max_len)

    def forward(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        """tokens [(B·F), D, C] with D spatial positions → same shape, attended along F."""
        batch_frames, positions, channels = tokens.shape
        batch = batch_frames // frames
        sequences = tokens.reshape(batch, frames, positions, channels).transpose(1, 2)
        sequences = self.pos_encoder(sequences.reshape(batch * positions, frames, channels))

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.heads, channels // self.heads)).transpose(1, 2)

        q, k, v = (split_heads(proj(sequences)) for proj in (self.to_q, self.to_k, self.to_v))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        out = self.to_out[1](self.to_out[0](attended))
        return out.reshape(batch, positions, frames, channels).transpose(1, 2).reshape(batch_frames, positions,
                                                                                      channels)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int, attention_blocks: int = 2):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalSelfAttention(channels, heads, max_len) for _ in range(attention_blocks)])
        self.norms = nn.ModuleList([nn.LayerNorm(channels) for _ in range(attention_blocks)])
        self.ff = FeedForward(channels, dropout=0.0, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(channels)

    def forward(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            tokens = attention(norm(tokens), frames) + tokens
        return self.ff(self.ff_norm(tokens)) + tokens


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int, num_blocks: int = 1, norm_groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, max_len) for _ in range(num_blocks)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, hidden: torch.Tensor, frames: int) -> torch.Tensor:
        """The temporal branch only (without the residual): [(B·F), C, h, w] → same shape."""
        batch_frames, channels, height, width = hidden.shape
        tokens = self.norm(hidden).permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, frames)
        tokens = self.proj_out(tokens)
        return tokens.reshape(batch_frames, height, width, channels).permute(0, 3, 1, 2)


class MotionModule(nn.Module):
    """Residual temporal transformer. ``strength`` scales the temporal branch: 1 is the released model;
    lower values weaken frame-to-frame coupling (the paper's remedy for accumulated error, §6.1).
    ``enabled = False`` makes it the identity without computing the branch: image training (stage 1)
    treats every frame as its own image, as the 2-D UNet the paper starts from does."""

    def __init__(self, channels: int, heads: int = 8, max_len: int = 32, num_blocks: int = 1):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, max_len, num_blocks)
        self.strength = 1.0
        self.enabled = True

    def forward(self, hidden: torch.Tensor, frames: int) -> torch.Tensor:
        if not self.enabled:
            return hidden
        branch = self.temporal_transformer(hidden, frames)
        if self.strength != 1.0:
            branch = branch * self.strength
        return branch + hidden
