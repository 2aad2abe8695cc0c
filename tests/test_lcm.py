"""The per-frame LCM step against diffusers' LCMScheduler for scalar timesteps."""

import pytest
import torch
from diffusers import LCMScheduler

from parity import assert_close_to_golden
from rain.sampling.lcm import PerFrameLCM, alphas_cumprod, trailing_timesteps

RAIN_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      steps_offset=1, clip_sample=False, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                      prediction_type="v_prediction")


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_matches_diffusers_for_scalar_timesteps(steps):
    reference = LCMScheduler(**RAIN_SCHEDULER)
    reference.set_timesteps(steps)
    ours = PerFrameLCM(steps)
    # Recent diffusers derive LCM timesteps from a 50-step grid ([999, 759, 499, 259] for 4 steps); the
    # released RAIN code (diffusers 0.24) used plain trailing spacing, which the golden data confirms.
    # Compare the step itself on RAIN's timesteps.
    reference.timesteps = torch.tensor(ours.timesteps)
    assert_close_to_golden(alphas_cumprod(), reference.alphas_cumprod, "alphas_cumprod")
    generator = torch.Generator().manual_seed(steps)
    shape = (1, 4, 3, 8, 8)
    for index, t in enumerate(reference.timesteps.tolist()):
        sample, v, noise = (torch.randn(shape, generator=generator) for _ in range(3))
        reference._step_index = index
        expected = reference.step(v, t, sample, generator=torch.Generator().manual_seed(0))
        # diffusers draws its own noise; feed ours the same draw.
        drawn = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        timesteps = torch.full((1, 3), t)
        prev, denoised = ours.step(v, timesteps, sample, drawn if index < steps - 1 else noise)
        assert_close_to_golden(denoised, expected.denoised, f"t={t} denoised")
        assert_close_to_golden(prev, expected.prev_sample, f"t={t} prev_sample")


def test_per_frame_timesteps_are_independent():
    scheduler = PerFrameLCM(4)
    generator = torch.Generator().manual_seed(1)
    sample, v, noise = (torch.randn(1, 4, 8, 4, 4, generator=generator) for _ in range(3))
    timesteps = torch.tensor([[249] * 4 + [999] * 4])
    prev, denoised = scheduler.step(v, timesteps, sample, noise)
    low, _ = scheduler.step(v[:, :, :4], timesteps[:, :4], sample[:, :, :4], noise[:, :, :4])
    high, _ = scheduler.step(v[:, :, 4:], timesteps[:, 4:], sample[:, :, 4:], noise[:, :, 4:])
    assert torch.equal(prev, torch.cat([low, high], dim=2))
    assert torch.equal(prev[:, :, :4], denoised[:, :, :4])        # 249 → clean, noise has no weight
    assert_close_to_golden(denoised[:, :, 4:], -v[:, :, 4:], "t=999")  # zero SNR: x̂₀ = −v̂ at t = 999


def test_trailing_timesteps_and_zero_terminal_snr():
    assert trailing_timesteps(4) == [999, 749, 499, 249]
    assert trailing_timesteps(8) == [999, 874, 749, 624, 499, 374, 249, 124]
    table = alphas_cumprod()
    assert table[999].item() == 0.0
    # A cumulative product of 1000 float32 factors: the golden set's float32 bound, not the printed digits.
    for t, value in {249: 0.6541887, 499: 0.2423590, 749: 0.0331715}.items():
        assert abs(table[t].item() - value) <= 1e-4
