"""TAESDV: the tiny temporal VAE decoder (madebyollin/taesdv), with memory carried across chunks.

Each MemBlock sees, next to frame t, its own input for frame t-1. Decoding a chunk of frames at once
with the last frame's inputs carried to the next chunk is exactly sequential decoding (spec §3.6), so a
stream decodes group by group with a ``TAESDVMemory`` that lives as long as the stream.
Latents are in UNet space (already × 0.18215, not divided); output is RGB in about [0, 1].
"""

import torch
from torch import nn


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x) + self.skip(x))


class MemBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in * 2, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(),
                                  _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x, past):
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TAESDVMemory:
    """The previous frame's input of every MemBlock; None before the first frame of a stream."""

    def __init__(self):
        self.inputs: list[torch.Tensor] | None = None

    def reset(self) -> None:
        self.inputs = None


class TAESDV(nn.Module):
    def __init__(self, latent_channels: int = 4, channels: int = 64):
        super().__init__()
        c = channels
        self.encoder = nn.Sequential(
            _conv(3, c), Block(c, c),
            _conv(c, c, stride=2, bias=False), Block(c, c), Block(c, c), Block(c, c),
            _conv(c, c, stride=2, bias=False), Block(c, c), Block(c, c), Block(c, c),
            _conv(c, c, stride=2, bias=False), Block(c, c), Block(c, c), Block(c, c),
            _conv(c, latent_channels))
        self.decoder = nn.Sequential(
            Clamp(), _conv(latent_channels, c), nn.ReLU(),
            MemBlock(c, c), MemBlock(c, c), MemBlock(c, c), nn.Upsample(scale_factor=2), _conv(c, c, bias=False),
            MemBlock(c, c), MemBlock(c, c), MemBlock(c, c), nn.Upsample(scale_factor=2), _conv(c, c, bias=False),
            MemBlock(c, c), MemBlock(c, c), MemBlock(c, c), nn.Upsample(scale_factor=2), _conv(c, c, bias=False),
            MemBlock(c, c), _conv(c, 3))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, memory: TAESDVMemory | None = None) -> torch.Tensor:
        """latents [T, 4, h, w] (consecutive frames) → frames [T, 3, 8h, 8w], unclamped.

        With ``memory`` the chunk continues the frames decoded before (and the memory is updated);
        without it the chunk starts a new sequence.
        """
        memory = memory if memory is not None else TAESDVMemory()
        carried = memory.inputs
        new_inputs = []
        x = latents
        mem_index = 0
        for layer in self.decoder:
            if isinstance(layer, MemBlock):
                previous = torch.zeros_like(x[:1]) if carried is None else carried[mem_index].to(x)
                past = torch.cat([previous, x[:-1]], 0)
                new_inputs.append(x[-1:].clone())
                x = layer(x, past)
                mem_index += 1
            else:
                x = layer(x)
        memory.inputs = new_inputs
        return x
