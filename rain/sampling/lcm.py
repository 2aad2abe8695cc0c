"""One LCM step with a timestep per frame (spec §5), as a small pure module.

For a scalar timestep it is diffusers' ``LCMScheduler.step`` with RAIN's settings (v-prediction,
zero-terminal-SNR betas, trailing spacing); here every frame of the window carries its own timestep.
The "previous" timestep is always ``t - 1000 // N`` (pitfall 5), and a negative one means "clean".
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LCMConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    rescale_betas_zero_snr: bool = True
    timestep_scaling: float = 10.0
    sigma_data: float = 0.5


def alphas_cumprod(config: LCMConfig = LCMConfig()) -> torch.Tensor:
    """ᾱ for every training timestep, float32; with the zero-SNR rescale ᾱ[T-1] is exactly 0."""
    betas = torch.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, config.num_train_timesteps,
                           dtype=torch.float32) ** 2
    alphas_bar = torch.cumprod(1.0 - betas, dim=0)
    if not config.rescale_betas_zero_snr:
        return alphas_bar
    # Lin et al. 2023, Alg. 1: shift √ᾱ so the last is 0, rescale so the first is unchanged.
    root = alphas_bar.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alphas_bar = root ** 2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return torch.cumprod(alphas, dim=0)


def trailing_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """``round(arange(T, 0, -T/N)) - 1``, e.g. [999, 749, 499, 249] for N = 4 (no steps_offset)."""
    step = num_train_timesteps / num_inference_steps
    return [int(round(num_train_timesteps - i * step)) - 1 for i in range(num_inference_steps)]


@dataclass(frozen=True)
class StepCoefficients:
    """The per-frame factors of one LCM step, each [1, 1, F, 1, 1] float32: a function of the timesteps only,
    so a stream computes them once per timestep pattern (and a fused graph holds them as constants)."""
    sqrt_alpha: torch.Tensor
    sqrt_one_minus_alpha: torch.Tensor
    c_out: torch.Tensor
    c_skip: torch.Tensor
    sqrt_alpha_prev: torch.Tensor
    sqrt_one_minus_alpha_prev: torch.Tensor

    def apply(self, model_output: torch.Tensor, sample: torch.Tensor,
              noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(prev_sample, denoised) in float32."""
        sample32 = sample.to(torch.float32)
        predicted_original = self.sqrt_alpha * sample32 - self.sqrt_one_minus_alpha * model_output.to(torch.float32)
        denoised = self.c_out * predicted_original + self.c_skip * sample32
        if noise is None:
            noise = torch.zeros_like(denoised)
        prev_sample = self.sqrt_alpha_prev * denoised + self.sqrt_one_minus_alpha_prev * noise.to(torch.float32)
        return prev_sample, denoised


class PerFrameLCM:
    """``step(v, timesteps [B,F], sample [B,C,F,h,w], noise)`` → (prev_sample, denoised), in float32."""

    def __init__(self, num_inference_steps: int, config: LCMConfig = LCMConfig()):
        self.config = config
        self.num_inference_steps = num_inference_steps
        self.stride = config.num_train_timesteps // num_inference_steps
        self.timesteps = trailing_timesteps(num_inference_steps, config.num_train_timesteps)
        self.alphas_cumprod = alphas_cumprod(config)
        self._tables: dict[torch.device, torch.Tensor] = {}

    def _table(self, device: torch.device) -> torch.Tensor:
        # Copied to the model's device once, not on every step of the stream.
        if device not in self._tables:
            self._tables[device] = self.alphas_cumprod.to(device)
        return self._tables[device]

    def _per_frame(self, values: torch.Tensor) -> torch.Tensor:
        return values[:, None, :, None, None]

    def coefficients(self, timesteps: torch.Tensor, device: torch.device | str | None = None) -> StepCoefficients:
        """The step's factors for per-frame ``timesteps`` [B, F] (t - stride < 0 means "clean", pitfall 5)."""
        device = torch.device(device) if device is not None else torch.as_tensor(timesteps).device
        table = self._table(device)
        timesteps = torch.as_tensor(timesteps, device=device, dtype=torch.long)
        previous = timesteps - self.stride
        alpha_t = self._per_frame(table[timesteps])
        alpha_prev = self._per_frame(torch.where(previous >= 0, table[previous.clamp(min=0)],
                                                 torch.ones((), device=device)))
        scaled = timesteps.to(torch.float32) * self.config.timestep_scaling
        sigma2 = self.config.sigma_data ** 2
        return StepCoefficients(
            sqrt_alpha=alpha_t.sqrt(), sqrt_one_minus_alpha=(1 - alpha_t).sqrt(),
            c_out=self._per_frame(scaled / (scaled ** 2 + sigma2) ** 0.5),
            c_skip=self._per_frame(sigma2 / (scaled ** 2 + sigma2)),
            sqrt_alpha_prev=alpha_prev.sqrt(), sqrt_one_minus_alpha_prev=(1 - alpha_prev).sqrt())

    def step(self, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor,
             noise: torch.Tensor | None, coefficients: StepCoefficients | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        if coefficients is None:
            coefficients = self.coefficients(timesteps, sample.device)
        return coefficients.apply(model_output, sample, noise)
