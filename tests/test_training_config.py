"""Training configuration and maths that need no model: the paper's defaults, config errors, the timesteps of each
stage, the distillation pieces against the inference step."""

from pathlib import Path

import pytest
import torch

from rain.models.embeddings import guidance_scale_embedding
from rain.sampling.lcm import PerFrameLCM, alphas_cumprod
from rain.training.config import STAGES, ConfigError, accumulation_steps, config_from_dict, load_config
from rain.training.datasets import PositionSampler
from rain.training.objectives import (DDIMSolver, NoiseSchedule, consistency_scalings, grouped_timesteps,
                                      guidance_embeddings, pseudo_huber)

CONFIGS = Path(__file__).resolve().parents[1] / "rain" / "training" / "configs"


def _minimal(stage, **extra):
    models = {"shared": "models"}
    models.update({"sd_unet": "unet"} if stage == "stage1" else {"init": "set"})
    if stage.startswith("distill"):
        models["teacher"] = "teacher"
    return {"stage": stage, "dataset": "data", "output_dir": "out", "models": models, **extra}


def test_the_paper_settings_are_the_defaults():
    for stage in STAGES:
        config = config_from_dict(_minimal(stage))
        assert config.train.learning_rate == 1e-5
        assert config.data.frames_per_group == 4 and config.data.num_groups == 4
    assert config_from_dict(_minimal("stage1")).train.batch_size == 32
    assert config_from_dict(_minimal("stage2")).train.batch_size == 8
    distill = config_from_dict(_minimal("distill3d"))
    assert distill.train.batch_size == 8 and distill.train.steps == 1200
    assert (distill.distill.huber_c, distill.distill.ddim_timesteps) == (0.001, 100)
    assert (distill.distill.guidance_min, distill.distill.guidance_max) == (2.0, 3.5)


def test_example_configs_load():
    names = sorted(p.name for p in CONFIGS.glob("*.toml"))
    assert names == ["depth_distill2d.toml", "depth_distill3d.toml", "depth_stage1.toml", "depth_stage2.toml"]
    stages = {load_config(CONFIGS / name).stage for name in names}
    assert stages == set(STAGES)


@pytest.mark.parametrize("change, words", [
    ({"learning_rat": 1e-4}, "unknown key"),
    ({"train": {"batch_size": "8"}}, "[train] batch_size must be int"),
    ({"train": {"batch_size": 6, "micro_batch_size": 4}}, "not a multiple"),
    ({"models": {"shared": "models", "sd_unet": "unet", "init": "set"}}, "exactly one"),
    ({"stage": "stage3"}, "stage must be one of"),
    ({"data": {"frames_per_group": 9}}, "32 positions"),
    ({"train": {"sharding": "zero3"}}, "[train] sharding must be none or fsdp"),
])
def test_config_mistakes_are_named(change, words, tmp_path):
    data = _minimal("stage1")
    data.update(change)
    path = tmp_path / "bad.toml"
    with pytest.raises(ConfigError) as error:
        config_from_dict(data, source=str(path))
    assert words in str(error.value) and str(path) in str(error.value)


def test_distillation_needs_a_teacher_and_a_fitting_grid():
    data = _minimal("distill3d")
    del data["models"]["teacher"]
    with pytest.raises(ConfigError, match="teacher"):
        config_from_dict(data)
    with pytest.raises(ConfigError, match="multiple of"):
        config_from_dict(_minimal("distill3d", distill={"ddim_timesteps": 50}, data={"num_groups": 3}))


def test_accumulation_makes_the_batch_from_micro_batches_and_processes():
    config = config_from_dict(_minimal("stage1", train={"batch_size": 32, "micro_batch_size": 4}))
    assert accumulation_steps(config, 1) == 8
    assert accumulation_steps(config, 8) == 1
    with pytest.raises(ConfigError, match="processes"):
        accumulation_steps(config, 3)


def test_stage2_timesteps_follow_equation_7():
    timesteps = grouped_timesteps(64, 4, 4, torch.Generator().manual_seed(0))
    assert timesteps.shape == (64, 16)
    first = timesteps[:, 0]
    assert first.min() >= 0 and first.max() <= 249
    expected = first[:, None] + torch.tensor([0, 250, 500, 750]).repeat_interleave(4)
    assert torch.equal(timesteps, expected)
    # The stream's levels are this pattern at t0 = 249.
    assert timesteps.max() <= 999


def test_ddim_solver_grid_and_grouped_draws():
    solver = DDIMSolver(NoiseSchedule(), 100)
    assert solver.timesteps[:3].tolist() == [9, 19, 29] and solver.timesteps[-1] == 999 and solver.skip == 10
    grouped = solver.sample_grouped(32, 4, 2, torch.Generator().manual_seed(0))
    assert torch.equal(grouped[:, 2:4] - grouped[:, 0:2], torch.full((32, 2), 250))
    assert set(grouped[:, 0].tolist()) <= set(range(9, 250, 10))
    assert torch.equal(solver.previous(torch.tensor([[9, 19, 999]])), torch.tensor([[0, 9, 989]]))


def test_schedule_and_boundary_match_the_inference_step():
    schedule = NoiseSchedule()
    assert torch.equal(schedule.alphas_cumprod, alphas_cumprod()) and schedule.alphas_cumprod[999] == 0
    generator = torch.Generator().manual_seed(0)
    x0, noise, v_hat = (torch.randn(1, 4, 4, 2, 2, generator=generator) for _ in range(3))
    timesteps = torch.tensor([[249, 499, 749, 999]])
    sample = schedule.add_noise(x0, noise, timesteps)
    velocity = schedule.velocity(x0, noise, timesteps)
    assert torch.allclose(schedule.original_from_velocity(velocity, sample, timesteps), x0, atol=1e-5)
    assert torch.allclose(schedule.noise_from_velocity(velocity, sample, timesteps), noise, atol=1e-5)
    c_skip, c_out = consistency_scalings(timesteps)
    consistent = c_skip * sample + c_out * schedule.original_from_velocity(v_hat, sample, timesteps)
    _, denoised = PerFrameLCM(4).step(v_hat, timesteps, sample, None)
    assert torch.allclose(consistent, denoised, atol=1e-6)
    c_skip, c_out = consistency_scalings(torch.zeros(1, 1))
    assert c_skip.item() == 1.0 and c_out.item() == 0.0


def test_guidance_embeddings_are_the_inference_ones():
    embeddings = guidance_embeddings(torch.tensor([2.0, 3.25]))
    assert torch.equal(embeddings[1:], guidance_scale_embedding(3.25))
    assert pseudo_huber(torch.ones(3), torch.ones(3), 0.001).item() == 0.0


def test_position_sampler_shards_and_resumes():
    def take(sampler, n):
        iterator = iter(sampler)
        return [next(iterator) for _ in range(n)]
    rank0, rank1 = take(PositionSampler(2, rank=0, world=2), 4), take(PositionSampler(2, rank=1, world=2), 4)
    assert rank0 == [0, 1, 4, 5] and rank1 == [2, 3, 6, 7]
    assert take(PositionSampler(2, start=1, rank=0, world=2), 2) == [4, 5]
