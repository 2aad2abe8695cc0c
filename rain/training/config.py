"""Training configuration: one TOML file per stage, read with ``tomllib``, with the paper's settings as defaults.

A file names its ``stage`` and overrides only what differs from the defaults below (RAIN §4.2, §4.3, §5 and the
supplementary material: AdamW at 1e-5 everywhere; batch 32 for images, 8 for clips and for both distillations;
K = 16 frames in p = 4 groups; Huber c = 0.001; DDIM solver over 100 timesteps; guidance 2.0–3.5). Every key is
checked: a misspelt key or a wrong type is one error naming the file, the key and what is accepted.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("stage1", "stage2", "distill2d", "distill3d")
DIFFUSION_STAGES = ("stage1", "stage2")
DISTILL_STAGES = ("distill2d", "distill3d")


class ConfigError(ValueError):
    """A training configuration that cannot be used; the message names the file and the fix."""


@dataclass
class ModelsConfig:
    init: str = ""              # a RAIN model set to start from (folder with reference_unet / motion_unet / pose_guider)
    sd_unet: str = ""           # stage 1 alternative: the sd-image-variations diffusers ``unet/`` folder
    motion_modules: str = ""    # optional AnimateDiff motion-module file (e.g. mm_sd_v15_v2) replacing init's
    teacher: str = ""           # distillation: the set before distillation (the stage-2 output)
    shared: str = ""            # folder holding sd-vae-ft-mse/ and image_encoder/ (e.g. ComfyUI/models/rain)
    vae: str = ""               # overrides shared: a VAE folder or single file
    image_encoder: str = ""     # overrides shared: a CLIP vision folder or single file
    export_dir: str = ""        # where the trained set is written (default <output_dir>/model)
    export_dtype: str = "fp32"  # fp32 (like the released files) or fp16 (half the size)


@dataclass
class TrainConfig:
    steps: int = 0                  # optimizer steps; 0 = the stage's default
    batch_size: int = 0             # samples per optimizer step over all GPUs; 0 = the stage's default
    micro_batch_size: int = 0       # samples per GPU per forward pass; 0 = the stage's default
    learning_rate: float = 1e-5
    lr_scheduler: str = "constant"  # any name diffusers.optimization.get_scheduler knows
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    use_8bit_adam: bool = False     # bitsandbytes AdamW8bit (falls back to AdamW with a message)
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"   # auto (bf16 on GPUs that have it, else fp16; none on CPU), no, fp16, bf16
    gradient_checkpointing: bool = False
    sharding: str = "none"          # "fsdp": weights, gradients and optimizer state spread over the processes
    allow_tf32: bool = True
    checkpoint_every: int = 500     # optimizer steps between resumable checkpoints (and exports)
    keep_checkpoints: int = 2
    log_every: int = 10
    num_workers: int = 4


@dataclass
class DataConfig:
    frames_per_group: int = 4       # K/p
    num_groups: int = 4             # p; a clip holds K = frames_per_group × num_groups frames
    frame_stride: int = 1           # take every n-th frame of a prepared clip
    uncond_ratio: float = 0.1       # chance that a step sees neither reference nor CLIP context (teaches the
                                    # unconditional branch that guidance and distillation need)


@dataclass
class DistillConfig:
    ddim_timesteps: int = 100       # DDIM solver grid (paper: 100); the skip is 1000 / ddim_timesteps
    huber_c: float = 0.001
    ema_decay: float = 0.95         # the target network's EMA rate (LCM's default)
    guidance_min: float = 2.0
    guidance_max: float = 3.5
    trainable: str = "all"          # distill3d: "all" of the student, or "motion" (motion modules + cond_proj)


@dataclass
class SamplesConfig:
    every: int = 1000               # optimizer steps between sample videos; 0 = none
    frames: int = 32
    clip: int = 0                   # which clip of the dataset drives the sample video
    dataset: str = ""               # another prepared dataset to take it from (held-out clips); default: training set
    steps_per_group: int = 0        # 0 = 8 for the diffusion stages (32 steps), 1 for the distilled ones (4 LCM steps)
    guidance: float = 2.5           # distilled stages: the guidance scale fed to the guidance embedding
    fps: float = 16.0


@dataclass
class TrainingConfig:
    stage: str
    dataset: str
    output_dir: str
    seed: int = 42
    resume: str = "auto"            # auto (latest checkpoint in output_dir, if any), none, or a checkpoint folder
    models: ModelsConfig = field(default_factory=ModelsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    source: str = "<config>"        # the file it was read from, for messages

    @property
    def frames_per_clip(self) -> int:
        return self.data.frames_per_group * self.data.num_groups

    @property
    def is_video_stage(self) -> bool:
        return self.stage in ("stage2", "distill3d")

    @property
    def export_dir(self) -> Path:
        return Path(self.models.export_dir) if self.models.export_dir else Path(self.output_dir) / "model"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


# The paper's step counts and batch sizes (§5). Steps: style transfer (depth) uses 60k / 40k, whole body 30k / 20k,
# face 60k / 30k; distillation 1,200 steps in 2-D and in 3-D. Micro-batches are what one 80 GB GPU holds at 512².
STAGE_DEFAULTS = {
    "stage1": {"steps": 60_000, "batch_size": 32, "micro_batch_size": 4},
    "stage2": {"steps": 40_000, "batch_size": 8, "micro_batch_size": 1},
    "distill2d": {"steps": 1_200, "batch_size": 8, "micro_batch_size": 8},
    "distill3d": {"steps": 1_200, "batch_size": 8, "micro_batch_size": 1},
}

_SECTIONS = {"models": ModelsConfig, "train": TrainConfig, "data": DataConfig, "distill": DistillConfig,
             "samples": SamplesConfig}


def _coerce(value, annotation: str, where: str, key: str):
    """Check one TOML value against the dataclass field's annotation (ints are accepted for floats)."""
    kinds = {"int": int, "float": (int, float), "str": str, "bool": bool}
    expected = kinds[annotation]
    if isinstance(value, bool) and annotation != "bool":
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(f"{where}: {key} must be {annotation}, got {value!r}")
    return float(value) if annotation == "float" else value


def _fill(cls, values: dict, where: str, section: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {section}{key!r}; the keys of this section are "
                              f"{', '.join(sorted(known))}")
        kwargs[key] = _coerce(value, known[key].type, where, section + key)
    return cls(**kwargs)


def config_from_dict(data: dict, source: str = "<config>") -> TrainingConfig:
    """Build and validate a configuration (relative paths are relative to the working directory, as on the
    command line)."""
    data = dict(data)
    sections = {name: _fill(cls, data.pop(name, {}) or {}, source, f"[{name}] ") for name, cls in _SECTIONS.items()}
    for required in ("stage", "dataset", "output_dir"):
        if required not in data:
            raise ConfigError(f"{source}: {required} is missing (e.g. stage = \"stage1\", dataset = \"data/clips\", "
                              f"output_dir = \"runs/stage1\")")
    top = {f.name: f for f in dataclasses.fields(TrainingConfig) if f.name not in _SECTIONS and f.name != "source"}
    kwargs = {}
    for key, value in data.items():
        if key not in top:
            raise ConfigError(f"{source}: unknown key {key!r}; top-level keys are {', '.join(sorted(top))} and the "
                              f"sections are {', '.join('[' + s + ']' for s in _SECTIONS)}")
        kwargs[key] = _coerce(value, top[key].type, source, key)
    config = TrainingConfig(**kwargs, **sections, source=source)
    _apply_stage_defaults(config)
    validate(config)
    return config


def load_config(path: str | os.PathLike) -> TrainingConfig:
    """Read a stage's TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config not found: {path} (examples: rain/training/configs/*.toml)")
    try:
        with path.open("rb") as handle:   # TOML is UTF-8 by definition, whatever the locale's encoding
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    return config_from_dict(data, source=str(path))


def _apply_stage_defaults(config: TrainingConfig) -> None:
    if config.stage not in STAGES:
        raise ConfigError(f"{config.source}: stage must be one of {', '.join(STAGES)}, got {config.stage!r}")
    for key, value in STAGE_DEFAULTS[config.stage].items():
        if getattr(config.train, key) == 0:
            setattr(config.train, key, value)
    if config.samples.steps_per_group == 0:
        config.samples.steps_per_group = 8 if config.stage in DIFFUSION_STAGES else 1


def validate(config: TrainingConfig) -> None:
    where = config.source
    models, train, data, distill = config.models, config.train, config.data, config.distill

    def fail(message: str):
        raise ConfigError(f"{where}: {message}")

    if config.stage == "stage1":
        if bool(models.init) == bool(models.sd_unet):
            fail("stage1 starts from exactly one of [models] init (a RAIN set, to fine-tune) or [models] sd_unet "
                 "(the sd-image-variations unet/ folder)")
    elif models.sd_unet:
        fail(f"[models] sd_unet is for stage1 only; {config.stage} starts from [models] init (the previous stage's "
             f"output)")
    elif not models.init:
        fail(f"{config.stage} needs [models] init: the model set the previous stage wrote")
    if config.stage in DISTILL_STAGES:
        if not models.teacher:
            fail(f"{config.stage} needs [models] teacher: the set before distillation (the stage2 output)")
        if models.motion_modules:
            fail("[models] motion_modules is for stage1/stage2; distillation keeps the student's motion modules")
    if not (models.shared or (models.vae and models.image_encoder)):
        fail("[models] shared must name the folder with sd-vae-ft-mse/ and image_encoder/ (e.g. ComfyUI/models/rain), "
             "or give both [models] vae and [models] image_encoder")
    if models.export_dtype not in ("fp32", "fp16"):
        fail(f"[models] export_dtype must be fp32 or fp16, got {models.export_dtype!r}")
    for key in ("steps", "batch_size", "micro_batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
        if getattr(train, key) < 1:
            fail(f"[train] {key} must be at least 1")
    if train.num_workers < 0 or train.lr_warmup_steps < 0:
        fail("[train] num_workers and lr_warmup_steps cannot be negative")
    if train.batch_size % train.micro_batch_size:
        fail(f"[train] batch_size {train.batch_size} is not a multiple of micro_batch_size {train.micro_batch_size}")
    if train.mixed_precision not in ("auto", "no", "fp16", "bf16"):
        fail(f"[train] mixed_precision must be auto, no, fp16 or bf16, got {train.mixed_precision!r}")
    if train.sharding not in ("none", "fsdp"):
        fail(f"[train] sharding must be none or fsdp, got {train.sharding!r}")
    if train.learning_rate <= 0:
        fail("[train] learning_rate must be positive")
    if data.frames_per_group < 1 or data.num_groups < 1 or data.frame_stride < 1:
        fail("[data] frames_per_group, num_groups and frame_stride must be at least 1")
    if config.frames_per_clip > 32:
        fail(f"[data] {config.frames_per_clip} frames per clip exceed the motion modules' 32 positions")
    if not 0 <= data.uncond_ratio < 1:
        fail("[data] uncond_ratio must be in [0, 1)")
    if config.stage in DISTILL_STAGES:
        if distill.ddim_timesteps < 2 or 1000 % distill.ddim_timesteps:
            fail(f"[distill] ddim_timesteps must divide 1000 (e.g. 50, 100, 200), got {distill.ddim_timesteps}")
        if config.stage == "distill3d" and distill.ddim_timesteps % data.num_groups:
            fail(f"[distill] ddim_timesteps {distill.ddim_timesteps} must be a multiple of [data] num_groups "
                 f"{data.num_groups} (each group sits a whole number of solver steps above the previous)")
        if not 0 < distill.huber_c:
            fail("[distill] huber_c must be positive")
        if not 0 <= distill.ema_decay < 1:
            fail("[distill] ema_decay must be in [0, 1)")
        if not 1 <= distill.guidance_min <= distill.guidance_max:
            fail("[distill] need 1 <= guidance_min <= guidance_max")
        if distill.trainable not in ("all", "motion"):
            fail(f"[distill] trainable must be all or motion, got {distill.trainable!r}")
    if config.samples.every < 0 or config.samples.frames < 1 or config.samples.steps_per_group < 1:
        fail("[samples] every cannot be negative; frames and steps_per_group must be at least 1")
    if config.samples.steps_per_group * data.num_groups > 1000:
        fail("[samples] steps_per_group × num_groups cannot exceed 1000")


def accumulation_steps(config: TrainingConfig, num_processes: int) -> int:
    """Gradient accumulation that makes ``batch_size`` from ``micro_batch_size`` on ``num_processes`` GPUs."""
    train = config.train
    per_pass = train.micro_batch_size * num_processes
    if train.batch_size % per_pass:
        raise ConfigError(f"{config.source}: [train] batch_size {train.batch_size} is not a multiple of "
                          f"micro_batch_size {train.micro_batch_size} × {num_processes} processes; change one of them")
    return train.batch_size // per_pass
