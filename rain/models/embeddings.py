"""Conditioning embeddings that are RAIN's own: the LCM guidance-scale ("w") embedding.

The per-frame timestep sinusoid is diffusers' ``Timesteps``; only the guidance embedding differs from
anything diffusers ships (divisor ``half - 1`` and ``[sin, cos]`` order, spec §7 / pitfall 7).
"""

import math

import torch


def guidance_scale_embedding(guidance_scale: float, dim: int = 512, dtype: torch.dtype = torch.float32,
                             device: torch.device | str | None = None) -> torch.Tensor:
    """The [1, dim] embedding of an LCM guidance scale, computed in float32 then cast to ``dtype``."""
    w = torch.tensor([float(guidance_scale)], dtype=torch.float32, device=device) * 1000.0
    half = dim // 2
    step = math.log(10000.0) / (half - 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32, device=device) * -step)
    angles = w[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding.to(dtype)
