"""The frozen encoders of training: the SD VAE (frames → latents) and the CLIP image encoder (reference → context).

Both stay frozen in every stage (as in AnimateAnyone and RAIN); they run without gradients in the mixed-precision
dtype. Targets are encoded like latent-diffusion training does (a posterior sample × 0.18215); the reference like
inference does (the posterior mean × 0.18215, spec §3.2), so the reference UNet sees what it will see when streaming.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import loading, weights
from ..models.vae import LATENT_SCALE
from .config import TrainingConfig


class FrozenEncoders:
    def __init__(self, vae, image_encoder, device: torch.device, dtype: torch.dtype, chunk: int = 16):
        # nn.Module.to, not diffusers' ModelMixin.to, which warns about fp32-pinned modules these models lack.
        self.vae = torch.nn.Module.to(vae, device=device, dtype=dtype).eval().requires_grad_(False)
        self.image_encoder = torch.nn.Module.to(image_encoder, device=device, dtype=dtype).eval().requires_grad_(False)
        self.device = device
        self.dtype = dtype
        self.chunk = chunk

    @classmethod
    def from_config(cls, config: TrainingConfig, device, dtype) -> "FrozenEncoders":
        vae_path, encoder_path = encoder_paths(config)
        return cls(loading.load_vae(vae_path), loading.load_image_encoder(encoder_path), device, dtype)

    @torch.no_grad()
    def latents(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] → [B, 4, F, h, w]; a posterior sample (drawn from ``generator``) or, with
        None, the posterior mean."""
        batch, _, frames = pixels.shape[:3]
        flat = pixels.transpose(1, 2).flatten(0, 1)
        out = []
        for part in flat.split(self.chunk):
            posterior = self.vae.encode(part.to(self.device, self.dtype)).latent_dist
            if generator is None:
                latent = posterior.mean
            else:
                # Drawn on the CPU, like the stream's noise: one seed, the same numbers on every machine.
                noise = torch.randn(posterior.mean.shape, generator=generator)
                latent = posterior.mean + posterior.std * noise.to(self.device, posterior.mean.dtype)
            out.append(latent.float() * LATENT_SCALE)
        return torch.cat(out).unflatten(0, (batch, frames)).transpose(1, 2)

    @torch.no_grad()
    def reference_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] → [B, 4, h, w] posterior means × 0.18215."""
        return self.latents(pixels[:, :, None], None)[:, :, 0]

    @torch.no_grad()
    def context(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, 224, 224] CLIP-normalised → [B, 1, D] projected image embeddings (the UNets' only context token)."""
        embeds = self.image_encoder(pixel_values=clip_pixels.to(self.device, self.dtype)).image_embeds
        return embeds.float()[:, None, :]


def encoder_paths(config: TrainingConfig) -> tuple[Path, Path]:
    """The VAE and CLIP image encoder: the [models] overrides, else the ones in [models] shared."""
    models = config.models
    found = {}
    for name, override in (("vae", models.vae), ("image_encoder", models.image_encoder)):
        if override:
            found[name] = Path(override)
        else:
            found[name] = weights.require_weights(models.shared, [name])[name]
    return found["vae"], found["image_encoder"]
