"""Resumable training state: ``<output_dir>/checkpoints/step-000500/``.

Accelerate's ``save_state`` writes the optimizer, the LR scheduler, the gradient scaler and the RNG states
(python, numpy, torch, CUDA) of every process; the hooks below make it store only the *trainable* weights (the
frozen ones are re-read from the files the run started from, so a checkpoint of stage 2 holds the motion modules,
not 5 GB of frozen UNets). Next to them this module writes what Accelerate does not know: the stage's extra
tensors (the EMA target of distillation) as safetensors and ``progress.json`` (step, data position, config).

A sharded run writes no Accelerate state but whole tensors in ordinary files (``sharding.save_portable``), which
any run resumes from, sharded or not. Nothing is unpickled beyond what Accelerate loads with ``weights_only=True``.
A checkpoint is written under a temporary name and renamed when complete, so an interrupted save never hides the
previous checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..weights.safe_load import read_safetensors_unmapped as load_file   # rotation deletes old checkpoints
from .sharding import (MODEL, full_tensor, is_portable_checkpoint, load_accelerate_into_sharded, load_portable,
                       save_portable)

PROGRESS = "progress.json"
TRAINABLE = "trainable.safetensors"
EXTRA = "extra.safetensors"
PREFIX = "step-"


class CheckpointError(RuntimeError):
    pass


@dataclass
class Progress:
    step: int = 0               # optimizer steps done
    micro_batches: int = 0      # micro-batches consumed by all processes together (the global data position)
    world: int = 1              # processes that wrote it (a run may resume with another number)

    def to_json(self) -> dict:
        return {"step": self.step, "micro_batches": self.micro_batches, "world": self.world}

    def local_start(self, world: int) -> int:
        """The micro-batch each of ``world`` processes continues from (checkpoints sit at optimizer steps, where
        the global position is a multiple of every process count that divides the batch)."""
        if self.micro_batches % world:
            raise CheckpointError(f"the checkpoint's data position ({self.micro_batches} micro-batches) is not "
                                  f"a multiple of {world} processes; resume with a process count that divides "
                                  f"[train] batch_size / micro_batch_size")
        return self.micro_batches // world


def checkpoints_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()
             and (p / PROGRESS).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_resume(output_dir: str | os.PathLike, resume: str) -> Path | None:
    """The checkpoint to resume from: ``auto`` = the latest one (None if there is none), ``none``, or a folder."""
    if resume == "none":
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / PROGRESS).is_file():
        raise CheckpointError(f"{path} is not a training checkpoint (no {PROGRESS}); checkpoints are the "
                              f"{PREFIX}NNNNNN folders under {checkpoints_dir(output_dir)}")
    return path


def _trainable_names(model: torch.nn.Module) -> list[str]:
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def _read_trained(path: Path, expected: list[str]) -> dict[str, torch.Tensor]:
    state = load_file(str(path))
    if set(state) != set(expected):
        raise CheckpointError(f"{path} holds other trainable parameters than this run trains "
                              f"({len(set(state) - set(expected))} unexpected, {len(set(expected) - set(state))} "
                              f"missing); was the stage or [distill] trainable changed since it was written?")
    return state


def register_hooks(accelerator) -> None:
    """Make ``save_state``/``load_state`` store and restore only the trainable parameters of the prepared model."""

    def save_hook(models, weights, output_dir):
        for index, model in enumerate(models):
            keep = set(_trainable_names(model))
            weights[index] = {k: v for k, v in weights[index].items() if k in keep}

    def load_hook(models, input_dir):
        while models:
            model = models.pop()
            index = len(models)
            name = "model.safetensors" if index == 0 else f"model_{index}.safetensors"
            path = Path(input_dir) / name
            if not path.is_file():
                raise CheckpointError(f"{input_dir} lacks {name}; the checkpoint is incomplete")
            state = _read_trained(path, _trainable_names(model))
            parameters = dict(model.named_parameters())
            with torch.no_grad():
                for key, value in state.items():
                    parameters[key].copy_(value)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


@dataclass
class Trained:
    """The prepared objects a checkpoint restores, and the names of the parameters that train."""
    model: torch.nn.Module
    optimizer: object
    scheduler: object
    names: list[str]
    sharded: bool = False


def save_checkpoint(accelerator, output_dir: str | os.PathLike, progress: Progress, config: dict,
                    extra: dict[str, torch.Tensor], keep: int, trained: Trained) -> Path:
    """Every process calls it. A sharded run's state is gathered and written as ordinary files (``sharding``)."""
    folder = checkpoints_dir(output_dir)
    final = folder / f"{PREFIX}{progress.step:06d}"
    partial = folder / f"{final.name}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if trained.sharded:
        save_portable(partial, accelerator, trained.model, trained.optimizer, trained.scheduler, trained.names)
    else:
        accelerator.save_state(str(partial))
    extra = {k: full_tensor(v) for k, v in extra.items()}
    if accelerator.is_main_process:
        if extra:
            save_file({k: v.detach().cpu().contiguous() for k, v in extra.items()}, str(partial / EXTRA))
        (partial / PROGRESS).write_text(json.dumps({**progress.to_json(), "config": config}, indent=1),
                                        encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: Path, trained: Trained) -> tuple[Progress, dict, dict[str, torch.Tensor]]:
    """Restore the prepared objects from ``folder`` (written sharded or not, by any number of processes); returns
    (progress, the config it was written with, extra)."""
    data = json.loads((folder / PROGRESS).read_text(encoding="utf-8"))
    if is_portable_checkpoint(folder) or trained.sharded:
        weights = _read_trained(folder / MODEL, trained.names)
        if is_portable_checkpoint(folder):
            load_portable(folder, accelerator, trained.model, trained.optimizer, trained.scheduler, weights)
        else:
            load_accelerate_into_sharded(folder, trained.model, trained.optimizer, trained.scheduler, weights,
                                         trained.names)
    else:
        accelerator.load_state(str(folder))
    extra = load_file(str(folder / EXTRA)) if (folder / EXTRA).is_file() else {}
    # Checkpoints from before "world" was recorded were written by one process: its count is the global one.
    progress = Progress(step=int(data["step"]), micro_batches=int(data["micro_batches"]),
                        world=int(data.get("world", 1)))
    return progress, data.get("config", {}), extra


def config_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between the config a checkpoint was written with and the current one."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes.extend(config_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} → {b!r}")
    return changes
