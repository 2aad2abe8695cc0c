"""The loop every stage shares, on Hugging Face Accelerate.

One process trains on one GPU (or the CPU); ``accelerate launch`` or ``torchrun`` run the same code on several GPUs,
machines or CPU processes (without a GPU the processes form a CPU/gloo group): each process reads its own share of
the sample stream and the gradients are averaged. A step is ``batch_size`` samples: ``micro_batch_size`` per process
per forward pass, accumulated as often as needed.

Every random draw is keyed by the *global* micro-batch index g (micro-batch b of process r of N is g = b·N + r):
the data from (seed, position) (``datasets``), the noise, timesteps, dropout and guidance scales of micro-batch g
from a generator seeded with (seed, g). So one process accumulating k micro-batches and k processes with one each
see the same samples and noise and reach the same weights (up to float32 reduction order). With the optimizer,
scheduler, RNG and EMA state in the checkpoint, a resumed run — with the same or another number of processes —
continues the loss curve of an uninterrupted one (exactly, in float32 on the CPU). Ctrl+C (SIGINT or SIGTERM, to
the launcher or to any process) finishes the optimizer step under way on every process, saves there and exits.
``[train] sharding = "fsdp"`` shards the model over the processes instead of copying it (``sharding``).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import sharding
from .checkpoints import (Progress, Trained, config_changes, load_checkpoint, register_hooks, resolve_resume,
                          save_checkpoint)
from .config import ConfigError, TrainingConfig, accumulation_steps
from .datasets import make_loader

log = logging.getLogger("rain.training")

#: Config entries that may change between an interrupted run and its resumption without a warning.
RESUMABLE_CHANGES = ("train.steps", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
                     "train.num_workers", "train.sharding", "samples.", "resume", "output_dir", "models.export_dir",
                     "dataset")


@dataclass
class TrainingResult:
    first_step: int                  # the step this run started from (0, or the resumed checkpoint's)
    step: int                        # the step it stopped at
    losses: list[float] = field(default_factory=list)   # one per optimizer step of this run
    export_dir: Path | None = None
    checkpoint: Path | None = None
    samples: list[Path] = field(default_factory=list)
    main_process: bool = True        # False on the other processes of a multi-process run (they print nothing)


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


def make_optimizer(parameters: list[torch.nn.Parameter], config: TrainingConfig,
                   sharded: bool = False) -> torch.optim.Optimizer:
    train = config.train
    options = dict(lr=train.learning_rate, betas=(train.adam_beta1, train.adam_beta2),
                   weight_decay=train.adam_weight_decay, eps=train.adam_epsilon)
    if train.use_8bit_adam and sharded:
        log.warning("8-bit Adam does not run on FSDP's sharded parameters; using torch AdamW, whose state is "
                    "sharded with them")
    elif train.use_8bit_adam:
        try:
            import bitsandbytes
            return bitsandbytes.optim.AdamW8bit(parameters, **options)
        except Exception as error:   # not installed, or no build for this machine (e.g. CPU-only)
            log.warning("8-bit Adam is not available (%s); using torch AdamW, which keeps 8 bytes of optimizer state "
                        "per trained parameter instead of 2 (pip install bitsandbytes on a CUDA machine for it)", error)
    return torch.optim.AdamW(parameters, **options)


def micro_batch_generator(seed: int, micro_batch: int) -> torch.Generator:
    """The generator of global micro-batch ``micro_batch`` (whichever process computes it)."""
    state = np.random.SeedSequence([seed, 2, micro_batch, 0]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def launched_processes() -> int:
    """Processes a launcher (torchrun, accelerate launch, mpirun) started, from its environment."""
    for name in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def use_cpu_group() -> bool:
    """Several processes and no GPU: they must form one CPU (gloo) group. Accelerate does so only when told
    (cpu=True); otherwise each process would train alone (``--multi_gpu``) or the launch would fail (torchrun)."""
    return launched_processes() > 1 and not torch.cuda.is_available()


class StopRequest:
    """SIGINT/SIGTERM set a flag instead of raising where they land: the loop finishes the optimizer step under
    way, every process agrees to stop at the same step (one of them may have been signalled alone), saves there
    and exits — a consistent point, even in the middle of an accumulation."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:   # a second Ctrl+C: stop now, without saving
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


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

    cpu = use_cpu_group()
    world = PartialState(cpu=cpu).num_processes
    accumulation = accumulation_steps(config, world)
    mixed_precision = resolve_mixed_precision(config.train.mixed_precision)
    output_dir = Path(config.output_dir)
    trackers = "tensorboard" if is_tensorboard_available() else None
    # Stage 1 steps without a reference leave the reference UNet without gradients; DDP must then look for them.
    find_unused = config.stage == "stage1" and config.data.uncond_ratio > 0
    sharded = config.train.sharding != "none" and world > 1
    if sharded and mixed_precision == "fp16":
        raise ConfigError(f"{config.source}: [train] sharding = \"{config.train.sharding}\" trains in bf16 or float32, "
                          f"not fp16 (chosen by mixed_precision = \"{config.train.mixed_precision}\" on a GPU "
                          f"without bf16): set [train] mixed_precision = \"no\", or \"bf16\" on GPUs that have it")
    plugin = sharding.fsdp_plugin(mixed_precision) if sharded else None
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision, gradient_accumulation_steps=accumulation,
                              log_with=trackers, project_dir=str(output_dir), fsdp_plugin=plugin,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)])
    if sharded and cpu:
        sharding.shard_cpu_processes(accelerator, plugin)
    main = accelerator.is_main_process
    if config.train.sharding != "none" and not sharded and main:
        log.info("[train] sharding = %s: one process has nothing to shard; training unsharded", config.train.sharding)
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = config.train.allow_tf32
        torch.backends.cudnn.allow_tf32 = config.train.allow_tf32
    set_seed(config.seed)

    stage = make_stage(config, accelerator.device, _weight_dtype(mixed_precision))
    stage.sharded = sharded
    model = stage.build()
    if sharded:
        sharding.shard_units(model, mixed_precision, stage.kept_whole())
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(parameters, config, sharded)
    # Accelerate steps a prepared scheduler once per process per optimizer step: count in those units.
    scheduler = get_scheduler(config.train.lr_scheduler, optimizer,
                              num_warmup_steps=config.train.lr_warmup_steps * world,
                              num_training_steps=config.train.steps * world)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    register_hooks(accelerator)
    # FSDP replaces the parameters with their shards (the optimizer is switched over by Accelerate).
    parameters = [p for p in model.parameters() if p.requires_grad]
    if sharded:
        stage.after_sharding(lambda module: sharding.shard_frozen(module, mixed_precision))
        if main:
            held, whole = sharding.parameter_counts(model)
            print(f"sharded over {world} processes (FSDP): this one holds {held / 1e6:.2f} M of the model's "
                  f"{whole / 1e6:.2f} M parameters", flush=True)
    unwrapped = accelerator.unwrap_model(model)
    trained = Trained(model, optimizer, scheduler, [n for n, p in unwrapped.named_parameters() if p.requires_grad],
                      sharded=sharded)

    progress = Progress(world=world)
    config_dict = config.to_dict()
    resume_from = resolve_resume(output_dir, config.resume)
    if resume_from is not None:
        progress, saved_config, extra = load_checkpoint(accelerator, resume_from, trained)
        stage.load_extra_state(extra)
        if progress.world != world:
            # The prepared scheduler steps once per process per optimizer step: recount for this many processes.
            _rescale_scheduler(scheduler, optimizer, progress.step * world)
            if main:
                log.info("resuming a run of %d process(es) with %d", progress.world, world)
            progress.world = world
        changes = [c for c in config_changes(saved_config, config_dict) if not c.startswith(RESUMABLE_CHANGES)]
        if changes and main:
            log.warning("resuming %s with a changed configuration: %s", resume_from, "; ".join(changes))
        if main:
            log.info("resuming from %s (step %d)", resume_from, progress.step)
    result = TrainingResult(first_step=progress.step, step=progress.step, export_dir=config.export_dir,
                            main_process=main)
    if trackers:
        accelerator.init_trackers(f"rain-{config.stage}", config={k: v if isinstance(v, (int, float, str, bool))
                                                                  else str(v) for k, v in _flat(config_dict).items()})
    loss_log = _LossLog(output_dir / "log.csv", progress.step, main)

    if progress.step >= config.train.steps:
        if main:
            log.info("%s is already trained to step %d (of %d)", output_dir, progress.step, config.train.steps)
        accelerator.end_training()
        return result

    local = progress.local_start(world)    # this process's next micro-batch
    rank = accelerator.process_index
    loader = make_loader(stage.dataset(), config.train.micro_batch_size, start=local,
                         rank=rank, world=world, num_workers=config.train.num_workers)
    # A sharded model renders only with every process taking part in gathering it.
    preview = _Preview(config, stage, accelerator) if config.samples.every and (main or sharded) else None
    bar = tqdm(total=config.train.steps, initial=progress.step, desc=config.stage, unit="step",
               disable=not (main and show_progress), dynamic_ncols=True)
    window_loss, window_count, started = 0.0, 0, time.perf_counter()
    last_step = progress.step + stop_after if stop_after else config.train.steps
    last_step = min(last_step, config.train.steps)

    def checkpoint() -> None:
        result.checkpoint = save_checkpoint(accelerator, output_dir, progress, config_dict, stage.extra_state(),
                                            config.train.keep_checkpoints, trained)
        live = stage.live_states(keep=main)     # gathered by every process when sharded
        if main:
            _export(config, stage, live, progress.step)

    stop = StopRequest()
    stopped = False
    with stop:
        try:
            for batch in loader:
                generator = micro_batch_generator(config.seed, local * world + rank)
                with accelerator.accumulate(model):
                    loss = stage.loss(model, batch, generator, accelerator.autocast)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        stage.before_optimizer_step(accelerator)
                    if accelerator.sync_gradients and config.train.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(parameters, config.train.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                local += 1
                progress.micro_batches = local * world
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
                stopping = _agree(accelerator, stop.requested, world)
                if progress.step % config.train.checkpoint_every == 0 or progress.step >= last_step or stopping:
                    checkpoint()
                if stopping:
                    stopped = True
                    if main:
                        print(f"\ninterrupted at step {progress.step}; saved {result.checkpoint}; run the same command "
                              f"to continue", flush=True)
                    break
                if preview is not None and progress.step % config.samples.every == 0:
                    sample = preview.render(progress.step)
                    if sample is not None:
                        result.samples.append(sample)
                if progress.step >= last_step:
                    break
        finally:
            bar.close()
            accelerator.end_training()
    if stopped:
        raise KeyboardInterrupt(f"stopped at step {progress.step}; saved {result.checkpoint}")
    return result


def _agree(accelerator, requested: bool, world: int) -> bool:
    """Whether any process was asked to stop (all of them then stop at this same step)."""
    if world == 1:
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, "max").item() > 0)


def _rescale_scheduler(scheduler, optimizer, steps: int) -> None:
    inner = getattr(scheduler, "scheduler", scheduler)
    inner.last_epoch = steps
    for group, rate in zip(optimizer.param_groups, inner.get_lr() if hasattr(inner, "get_lr") else []):
        group["lr"] = rate
    inner._last_lr = [group["lr"] for group in optimizer.param_groups]


def _export(config: TrainingConfig, stage, live: dict, step: int) -> Path:
    """The set in the released layout, and ``rain_model_set.json`` saying what it is: the size and task of the
    data it was trained on, the stage, the training config (every loader reads it)."""
    from ..model_set import write_declaration
    from .data import Manifest
    dtype = torch.float16 if config.models.export_dtype == "fp16" else torch.float32
    metadata = {"stage": config.stage, "step": step, "of_steps": config.train.steps, "dataset": config.dataset,
                "init": config.models.init or config.models.sd_unet, "teacher": config.models.teacher}
    folder = stage.export(config.export_dir, live, metadata, dtype)
    manifest = Manifest.read(config.dataset)
    task = manifest.task if manifest.task in ("face", "body", "depth") else None
    write_declaration(Path(folder) / "motion_unet.safetensors", native_size=tuple(manifest.size),
                      reduced_random_weights=False, task=task, stage=config.stage,
                      training={**config.to_dict(), "step": step})
    return folder


class _Preview:
    def __init__(self, config: TrainingConfig, stage, accelerator):
        from .preview import sample_clip
        self.config = config
        self.stage = stage
        self.accelerator = accelerator
        self.frames, self.conditions = sample_clip(config)

    def render(self, step: int) -> Path | None:
        """The sample video of this step (None on the processes that only helped gather a sharded model)."""
        from .preview import render_sample, write_sample_video
        main = self.accelerator.is_main_process
        live = self.stage.live_states(keep=main) if self.stage.sharded else None
        if not main:
            return None
        models = self.stage.preview_models(live)
        rendered = render_sample(self.config, models, self.accelerator.device, self.frames,
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
