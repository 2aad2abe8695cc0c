"""The loop every stage shares, on Hugging Face Accelerate.

One process trains on one GPU (or the CPU); ``accelerate launch`` runs the same code on several GPUs or machines:
each process reads its own share of the sample stream and Accelerate averages the gradients. A step is
``batch_size`` samples: ``micro_batch_size`` per process per forward pass, accumulated as often as needed.

Every random draw is reproducible from the seed: the data from (seed, position) (``datasets``), the noise,
timesteps, dropout and guidance scales of micro-batch b from a generator seeded with (seed, b, process). With the
optimizer, scheduler, RNG and EMA state in the checkpoint, a resumed run continues the loss curve of an
uninterrupted one (exactly, in float32 on the CPU).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoints import (Progress, config_changes, load_checkpoint, register_hooks, resolve_resume,
                          save_checkpoint)
from .config import TrainingConfig, accumulation_steps
from .datasets import make_loader

log = logging.getLogger("rain.training")

#: Config entries that may change between an interrupted run and its resumption without a warning.
RESUMABLE_CHANGES = ("train.steps", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
                     "train.num_workers", "samples.", "resume", "output_dir", "models.export_dir", "dataset")


@dataclass
class TrainingResult:
    first_step: int                  # the step this run started from (0, or the resumed checkpoint's)
    step: int                        # the step it stopped at
    losses: list[float] = field(default_factory=list)   # one per optimizer step of this run
    export_dir: Path | None = None
    checkpoint: Path | None = None
    samples: list[Path] = field(default_factory=list)


def make_stage(config: TrainingConfig, device: torch.device, weight_dtype: torch.dtype):
    from .distill import Distill
    from .stage1 import Stage1
    from .stage2 import Stage2
    return {"stage1": Stage1, "stage2": Stage2, "distill2d": Distill, "distill3d": Distill}[config.stage](
        config, device, weight_dtype)


def resolve_mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def make_optimizer(parameters: list[torch.nn.Parameter], config: TrainingConfig) -> torch.optim.Optimizer:
    train = config.train
    options = dict(lr=train.learning_rate, betas=(train.adam_beta1, train.adam_beta2),
                   weight_decay=train.adam_weight_decay, eps=train.adam_epsilon)
    if train.use_8bit_adam:
        try:
            import bitsandbytes
            return bitsandbytes.optim.AdamW8bit(parameters, **options)
        except Exception as error:   # not installed, or no build for this machine (e.g. CPU-only)
            log.warning("8-bit Adam is not available (%s); using torch AdamW, which keeps 8 bytes of optimizer state "
                        "per trained parameter instead of 2 (pip install bitsandbytes on a CUDA machine for it)", error)
    return torch.optim.AdamW(parameters, **options)


def micro_batch_generator(seed: int, micro_batch: int, rank: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, 2, micro_batch, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class _LossLog:
    """``<output_dir>/log.csv`` (step, loss, lr, seconds): the loss curve, whatever trackers are installed."""

    def __init__(self, path: Path, resume_step: int, enabled: bool):
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        rows = []
        if path.is_file() and resume_step > 0:
            with path.open(newline="", encoding="utf-8") as handle:
                rows = [r for r in csv.reader(handle) if r and r[0].isdigit() and int(r[0]) <= resume_step]
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "loss", "lr", "seconds"])
            writer.writerows(rows)

    def add(self, step: int, loss: float, lr: float, seconds: float) -> None:
        if self.enabled:
            with self.path.open("a", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow([step, f"{loss:.6g}", f"{lr:.3g}", f"{seconds:.3f}"])


def train(config: TrainingConfig, *, stop_after: int | None = None, show_progress: bool = True) -> TrainingResult:
    """Run (or resume) the configured stage; ``stop_after`` ends this run after that many optimizer steps (the
    checkpoint written there continues it)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from accelerate.utils import is_tensorboard_available
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    world = PartialState().num_processes
    accumulation = accumulation_steps(config, world)
    mixed_precision = resolve_mixed_precision(config.train.mixed_precision)
    output_dir = Path(config.output_dir)
    trackers = "tensorboard" if is_tensorboard_available() else None
    # Stage 1 steps without a reference leave the reference UNet without gradients; DDP must then look for them.
    find_unused = config.stage == "stage1" and config.data.uncond_ratio > 0
    accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=accumulation,
                              log_with=trackers, project_dir=str(output_dir),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)])
    main = accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = config.train.allow_tf32
        torch.backends.cudnn.allow_tf32 = config.train.allow_tf32
    set_seed(config.seed)

    stage = make_stage(config, accelerator.device, _weight_dtype(mixed_precision))
    model = stage.build()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(parameters, config)
    # Accelerate steps a prepared scheduler once per process per optimizer step: count in those units.
    scheduler = get_scheduler(config.train.lr_scheduler, optimizer,
                              num_warmup_steps=config.train.lr_warmup_steps * world,
                              num_training_steps=config.train.steps * world)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    register_hooks(accelerator)

    progress = Progress()
    config_dict = config.to_dict()
    resume_from = resolve_resume(output_dir, config.resume)
    if resume_from is not None:
        progress, saved_config, extra = load_checkpoint(accelerator, resume_from)
        stage.load_extra_state(extra)
        changes = [c for c in config_changes(saved_config, config_dict) if not c.startswith(RESUMABLE_CHANGES)]
        if changes and main:
            log.warning("resuming %s with a changed configuration: %s", resume_from, "; ".join(changes))
        if main:
            log.info("resuming from %s (step %d)", resume_from, progress.step)
    result = TrainingResult(first_step=progress.step, step=progress.step, export_dir=config.export_dir)
    if trackers:
        accelerator.init_trackers(f"rain-{config.stage}", config={k: v if isinstance(v, (int, float, str, bool))
                                                                  else str(v) for k, v in _flat(config_dict).items()})
    loss_log = _LossLog(output_dir / "log.csv", progress.step, main)

    if progress.step >= config.train.steps:
        if main:
            log.info("%s is already trained to step %d (of %d)", output_dir, progress.step, config.train.steps)
        accelerator.end_training()
        return result

    loader = make_loader(stage.dataset(), config.train.micro_batch_size, start=progress.micro_batches,
                         rank=accelerator.process_index, world=world, num_workers=config.train.num_workers)
    preview = _Preview(config, stage, accelerator) if config.samples.every and main else None
    bar = tqdm(total=config.train.steps, initial=progress.step, desc=config.stage, unit="step",
               disable=not (main and show_progress), dynamic_ncols=True)
    window_loss, window_count, started = 0.0, 0, time.perf_counter()
    last_step = progress.step + stop_after if stop_after else config.train.steps
    last_step = min(last_step, config.train.steps)

    def checkpoint() -> None:
        result.checkpoint = save_checkpoint(accelerator, output_dir, progress, config_dict, stage.extra_state(),
                                            config.train.keep_checkpoints)
        if main:
            _export(config, stage, progress.step)

    try:
        for batch in loader:
            generator = micro_batch_generator(config.seed, progress.micro_batches, accelerator.process_index)
            with accelerator.accumulate(model):
                loss = stage.loss(model, batch, generator, accelerator.autocast)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.train.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(parameters, config.train.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            progress.micro_batches += 1
            window_loss += loss.detach().float().item()
            window_count += 1
            if not accelerator.sync_gradients:
                continue

            progress.step += 1
            stage.after_optimizer_step()
            step_loss = accelerator.reduce(torch.tensor(window_loss / window_count, device=accelerator.device),
                                           "mean").item()
            window_loss, window_count = 0.0, 0
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"the loss became {step_loss} at step {progress.step}; lower [train] "
                                         f"learning_rate or use bf16 instead of fp16, and resume from the last "
                                         f"checkpoint in {output_dir / 'checkpoints'}")
            result.losses.append(step_loss)
            result.step = progress.step
            learning_rate = scheduler.get_last_lr()[0]
            loss_log.add(progress.step, step_loss, learning_rate, time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{learning_rate:.2g}")
            if trackers and progress.step % config.train.log_every == 0:
                accelerator.log({"loss": step_loss, "lr": learning_rate}, step=progress.step)
            if progress.step % config.train.checkpoint_every == 0 or progress.step >= last_step:
                checkpoint()
            if preview is not None and progress.step % config.samples.every == 0:
                result.samples.append(preview.render(progress.step))
            if progress.step >= last_step:
                break
    except KeyboardInterrupt:
        # Between two optimizer steps the state is whole: keep it, so the same command continues from here.
        if world == 1 and progress.micro_batches % accumulation == 0 and progress.step > result.first_step:
            checkpoint()
            print(f"\ninterrupted at step {progress.step}; saved {result.checkpoint}; run the same command to "
                  f"continue")
        raise
    finally:
        bar.close()
        accelerator.end_training()
    return result


def _export(config: TrainingConfig, stage, step: int) -> Path:
    dtype = torch.float16 if config.models.export_dtype == "fp16" else torch.float32
    metadata = {"stage": config.stage, "step": step, "of_steps": config.train.steps, "dataset": config.dataset,
                "init": config.models.init or config.models.sd_unet, "teacher": config.models.teacher}
    return stage.export(config.export_dir, metadata, dtype)


class _Preview:
    def __init__(self, config: TrainingConfig, stage, accelerator):
        from .preview import sample_clip
        self.config = config
        self.stage = stage
        self.accelerator = accelerator
        self.frames, self.conditions = sample_clip(config)

    def render(self, step: int) -> Path:
        from .preview import render_sample, write_sample_video
        rendered = render_sample(self.config, self.stage.preview_models(), self.accelerator.device, self.frames,
                                 self.conditions, autocast=self.accelerator.autocast)
        path = Path(self.config.output_dir) / "samples" / f"step-{step:06d}.mp4"
        write_sample_video(path, self.conditions, rendered, self.frames, self.config.samples.fps)
        tracker = self._tensorboard()
        if tracker is not None:
            strip = np.concatenate([self.conditions[0], rendered[0], self.frames[0]], axis=1)
            tracker.add_image("sample/first_frame", strip, step, dataformats="HWC")
        return path

    def _tensorboard(self):
        # Without TensorBoard installed, Accelerate hands back a blank tracker that has no add_image.
        if not any(getattr(t, "name", None) == "tensorboard" for t in self.accelerator.trackers):
            return None
        with contextlib.suppress(Exception):
            writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
            return writer if hasattr(writer, "add_image") else None
        return None
