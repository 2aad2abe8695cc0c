"""The training maths: RAIN's noise schedule (zero-SNR, v-prediction), the timesteps each stage samples, and the
consistency-distillation pieces (DDIM solver, boundary scalings, pseudo-Huber loss, batched guidance embedding).

Every timestep tensor is per frame, ``[B, F]`` (F = 1 for images), matching the denoiser's input and the stream.
Random numbers come from the ``torch.Generator`` the caller passes, so a step's draws depend only on its seed.
"""

from __future__ import annotations

import torch

from ..models.embeddings import guidance_scale_embedding
from ..sampling.lcm import LCMConfig, alphas_cumprod


class NoiseSchedule:
    """The scaled-linear, zero-terminal-SNR schedule of spec §5 (ᾱ[999] = 0), with v-prediction."""

    def __init__(self, config: LCMConfig = LCMConfig()):
        self.config = config
        self.num_train_timesteps = config.num_train_timesteps
        self.alphas_cumprod = alphas_cumprod(config)
        self._tables: dict[torch.device, torch.Tensor] = {}

    def alpha_bar(self, timesteps: torch.Tensor, device: torch.device) -> torch.Tensor:
        """ᾱ of [B, F] timesteps, shaped [B, 1, F, 1, 1] to broadcast over [B, C, F, h, w] latents."""
        if device not in self._tables:
            self._tables[device] = self.alphas_cumprod.to(device)
        return self._tables[device][timesteps.to(device)][:, None, :, None, None]

    def add_noise(self, latents, noise, timesteps):
        a = self.alpha_bar(timesteps, latents.device)
        return a.sqrt() * latents + (1 - a).sqrt() * noise

    def velocity(self, latents, noise, timesteps):
        """The v-prediction target √ᾱ·ε − √(1−ᾱ)·x₀."""
        a = self.alpha_bar(timesteps, latents.device)
        return a.sqrt() * noise - (1 - a).sqrt() * latents

    def original_from_velocity(self, velocity, sample, timesteps):
        a = self.alpha_bar(timesteps, sample.device)
        return a.sqrt() * sample - (1 - a).sqrt() * velocity

    def noise_from_velocity(self, velocity, sample, timesteps):
        a = self.alpha_bar(timesteps, sample.device)
        return a.sqrt() * velocity + (1 - a).sqrt() * sample


# -- timesteps ---------------------------------------------------------------------------------------------------
def uniform_timesteps(batch: int, frames: int, generator: torch.Generator, num_train_timesteps: int = 1000):
    """One timestep per sample in [0, T), shared by its frames (stage 1: every frame is its own image)."""
    return torch.randint(0, num_train_timesteps, (batch, 1), generator=generator).expand(batch, frames).clone()


def grouped_timesteps(batch: int, num_groups: int, frames_per_group: int, generator: torch.Generator,
                      num_train_timesteps: int = 1000) -> torch.Tensor:
    """Paper eq. (7): t₀ uniform over the first T/p levels, group g at t₀ + g·T/p, cleanest group first.

    With 0-based timesteps t₀ ∈ [0, T/p − 1]: the paper's t₀ ∈ [1, T/p] counts from 1, and the stream's levels
    (249, 499, 749, 999) are this pattern at t₀ = 249."""
    spacing = num_train_timesteps // num_groups
    t0 = torch.randint(0, spacing, (batch, 1), generator=generator)
    offsets = (torch.arange(num_groups) * spacing).repeat_interleave(frames_per_group)
    return t0 + offsets[None, :]


class DDIMSolver:
    """The teacher's ODE solver over ``num_steps`` evenly spaced timesteps (9, 19, …, 999 for 100)."""

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 100):
        self.schedule = schedule
        self.num_steps = num_steps
        self.skip = schedule.num_train_timesteps // num_steps
        self.timesteps = torch.arange(1, num_steps + 1) * self.skip - 1

    def sample_2d(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """[B, 1] solver timesteps, uniform over the grid."""
        return self.timesteps[torch.randint(0, self.num_steps, (batch, 1), generator=generator)]

    def sample_grouped(self, batch: int, num_groups: int, frames_per_group: int,
                       generator: torch.Generator) -> torch.Tensor:
        """[B, G·F] grid timesteps in the stream's pattern: group g sits g·T/p above the cleanest group."""
        per_group = self.num_steps // num_groups
        first = torch.randint(0, per_group, (batch, 1), generator=generator)
        indices = first + (torch.arange(num_groups) * per_group).repeat_interleave(frames_per_group)[None, :]
        return self.timesteps[indices]

    def previous(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The grid point one solver step cleaner; 0 below the first (where the consistency boundary holds)."""
        return (timesteps - self.skip).clamp(min=0)

    def step(self, original, noise, timesteps):
        """x_{t−k} = √ᾱ_{t−k}·x̂₀ + √(1−ᾱ_{t−k})·ε̂ (deterministic DDIM)."""
        a_prev = self.schedule.alpha_bar(self.previous(timesteps), original.device)
        return a_prev.sqrt() * original + (1 - a_prev).sqrt() * noise


# -- consistency distillation -------------------------------------------------------------------------------------
def consistency_scalings(timesteps: torch.Tensor, config: LCMConfig = LCMConfig()):
    """(c_skip, c_out) of the LCM boundary condition for [B, F] timesteps, shaped [B, 1, F, 1, 1]
    (the same scalings the inference step applies, ``sampling.lcm``)."""
    scaled = timesteps.to(torch.float32) * config.timestep_scaling
    sigma2 = config.sigma_data ** 2
    c_skip = sigma2 / (scaled ** 2 + sigma2)
    c_out = scaled / (scaled ** 2 + sigma2) ** 0.5
    return c_skip[:, None, :, None, None], c_out[:, None, :, None, None]


def pseudo_huber(prediction: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    """mean(√((a − b)² + c²) − c), the distance of LCM distillation (paper: c = 0.001)."""
    return (torch.sqrt((prediction.float() - target.float()) ** 2 + c * c) - c).mean()


def sample_guidance(batch: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch, generator=generator)


def guidance_embeddings(scales: torch.Tensor, dim: int = 512, dtype=torch.float32, device=None) -> torch.Tensor:
    """[B, dim]: the inference embedding of each scale (``models.embeddings``), so training and streaming agree."""
    return torch.cat([guidance_scale_embedding(float(w), dim, dtype, device) for w in scales.tolist()])
