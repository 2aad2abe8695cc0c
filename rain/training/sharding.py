"""Sharded training: ``[train] sharding = "fsdp"`` spreads weights, gradients and optimizer state over the processes
(PyTorch FSDP2 through Accelerate, the ZeRO-3 layout), so a stage that does not fit one GPU trains on several.

The units FSDP gathers one at a time are the UNets' resnet blocks, spatial transformers and motion modules; what
lies outside them (convs in and out, time embeddings, the pose guider) belongs to the root unit. Frozen weights are
sharded too and kept in float32 (a unit must hold one dtype); under mixed precision every unit is gathered in the
compute dtype. Distillation's teacher and EMA target, which never train, are sharded the same way.

Checkpoints and exports never keep FSDP's shards: the trainable weights, the optimizer state (keyed by parameter
name) and the extra state are gathered and written as ordinary safetensors files, so a sharded run resumes on any
number of processes, sharded or not, and exports the same set an unsharded run exports.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..weights.safe_load import read_safetensors_unmapped

log = logging.getLogger("rain.training")

#: The classes FSDP shards as separate units (each is always entered through its ``__call__``).
WRAPPED_CLASSES = ("ResnetBlock2D", "Transformer2DModel", "MotionModule")

MODEL = "model.safetensors"            # the trainable weights (the name Accelerate's own checkpoints use)
OPTIMIZER = "optimizer.safetensors"    # "<parameter name>/<state key>" tensors
OPTIMIZER_GROUPS = "optimizer.json"    # the optimizer's hyperparameters per group, with parameter names
SCHEDULER = "scheduler.json"
RANDOM_STATES = "random_states.safetensors"


def is_portable_checkpoint(folder: Path) -> bool:
    return (Path(folder) / OPTIMIZER).is_file()


def _policy(mixed_precision: str):
    from torch.distributed.fsdp import MixedPrecisionPolicy
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    # Gradients are averaged in float32 whatever the compute dtype.
    return MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32 if compute else None)


def fsdp_plugin(mixed_precision: str):
    """Accelerate's FSDP2 plugin for the root unit (the units inside are sharded by :func:`shard_units`)."""
    from accelerate import FullyShardedDataParallelPlugin
    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="no_wrap", reshard_after_forward=True,
                                          mixed_precision_policy=_policy(mixed_precision),
                                          cpu_ram_efficient_loading=False, activation_checkpointing=False)


def shard_units(module: torch.nn.Module, mixed_precision: str, keep_whole=()) -> None:
    """Shard every unit of ``module`` (before Accelerate shards what is left, the root). ``keep_whole``: units whose
    output does not reach the loss (FSDP gathers a unit for the backward pass when its output's gradient arrives;
    these stay in the root unit, gathered with it)."""
    from torch.distributed.fsdp import fully_shard
    kept = {id(m) for m in keep_whole}
    for unit in [m for m in module.modules() if type(m).__name__ in WRAPPED_CLASSES and id(m) not in kept]:
        fully_shard(unit, mp_policy=_policy(mixed_precision))


def shard_cpu_processes(accelerator, plugin) -> None:
    """Accelerate (1.16) uses FSDP only on GPUs and similar devices and would silently replicate instead; PyTorch's
    FSDP2 shards CPU processes over gloo just the same, so a CPU group runs the code path GPUs run."""
    from accelerate.utils import DistributedType
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def shard_frozen(module: torch.nn.Module, mixed_precision: str) -> torch.nn.Module:
    """Shard a module that never trains (a teacher, an EMA target) in the units the trained model uses."""
    from torch.distributed.fsdp import fully_shard
    if len({p.dtype for p in module.parameters() if p.is_floating_point()}) > 1:
        module.float()     # one dtype per unit; the policy gathers in the compute dtype
    shard_units(module, mixed_precision)
    fully_shard(module, mp_policy=_policy(mixed_precision))
    return module


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a shard: every process must call it, in the same order)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def parameter_counts(module: torch.nn.Module) -> tuple[int, int]:
    """(parameters this process holds, parameters of the whole module)."""
    held = whole = 0
    for parameter in module.parameters():
        whole += parameter.numel()
        held += parameter.to_local().numel() if is_sharded(parameter) else parameter.numel()
    return held, whole


def gathered_state(module: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with whole tensors on the CPU; every process calls it, those with ``keep`` False get
    an empty dict (and never hold more than one whole tensor at a time)."""
    state = {}
    for key, value in module.state_dict().items():
        value = full_tensor(value.detach())
        if keep:
            state[key] = value.cpu()
    return state


@torch.no_grad()
def assign_full(parameter: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a whole tensor into a parameter, sharded or not."""
    if is_sharded(parameter):
        from torch.distributed.tensor import distribute_tensor
        value = distribute_tensor(value.to(parameter.device, parameter.dtype), parameter.device_mesh,
                                  parameter.placements, src_data_rank=None)
        parameter.to_local().copy_(value.to_local())
    else:
        parameter.copy_(value)


# -- checkpoints as ordinary files ---------------------------------------------------------------------------------
def _options(**kwargs):
    """Whole tensors. Restoring an optimizer uses ``strict=False``: a trained weight AdamW has not stepped yet
    (stage 1's reference UNet after steps without any reference) has no state, there as in the checkpoint."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kwargs)


def save_portable(folder: Path, accelerator, model, optimizer, scheduler, trainable: list[str]) -> None:
    """Every process calls it (the gathering is collective); the main process writes into ``folder``."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    main = accelerator.is_main_process
    weights = get_model_state_dict(model, options=_options(cpu_offload=True))
    optimizer_state = get_optimizer_state_dict(model, _inner(optimizer), options=_options(cpu_offload=True))
    random_states = _gathered_random_states(accelerator)
    if not main:
        return
    keep = set(trainable)
    save_file({k: v.contiguous() for k, v in weights.items() if k in keep}, str(folder / MODEL))
    tensors = {f"{name}/{key}": (value if torch.is_tensor(value) else torch.tensor(value)).contiguous()
               for name, entries in optimizer_state["state"].items() for key, value in entries.items()}
    save_file(tensors, str(folder / OPTIMIZER))
    (folder / OPTIMIZER_GROUPS).write_text(json.dumps(optimizer_state["param_groups"], indent=1), encoding="utf-8")
    (folder / SCHEDULER).write_text(json.dumps(scheduler.state_dict(), indent=1), encoding="utf-8")
    save_file(random_states, str(folder / RANDOM_STATES))


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)


def _restore(model, module: torch.nn.Module, optimizer, weights: dict, state: dict, groups: list) -> None:
    """Whole trained weights and name-keyed optimizer state into the prepared ``model`` (``module``: unwrapped)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    set_model_state_dict(model, weights, options=_options(strict=False))
    set_optimizer_state_dict(model, _inner(optimizer), {"state": state, "param_groups": groups},
                             options=_options(strict=False))
    # Restoring into a fresh optimizer, PyTorch first gives every weight a state (a step with zero gradients); a
    # weight the checkpoint has no state for must have none, or its first real step would count as its second.
    for name, parameter in module.named_parameters():
        if name not in state:
            _inner(optimizer).state.pop(parameter, None)


def _gathered_random_states(accelerator) -> dict[str, torch.Tensor]:
    """Every process's torch generator states (CPU and, where there is one, CUDA), for a resume on as many."""
    own = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        own["cuda"] = torch.cuda.get_rng_state()
    gathered = [None] * accelerator.num_processes
    if accelerator.num_processes > 1:
        torch.distributed.all_gather_object(gathered, own)
    else:
        gathered = [own]
    return {f"{kind}.{rank}": state for rank, states in enumerate(gathered) for kind, state in states.items()}


def load_portable(folder: Path, accelerator, model, optimizer, scheduler, weights: dict[str, torch.Tensor]) -> None:
    """Restore a checkpoint written by :func:`save_portable` (its trainable ``weights`` already read and checked)
    into the prepared objects, sharded or not, on any number of processes (every process reads the files)."""
    flat = read_safetensors_unmapped(str(folder / OPTIMIZER))
    state: dict[str, dict] = {}
    for key, value in flat.items():
        name, entry = key.rsplit("/", 1)
        state.setdefault(name, {})[entry] = value
    groups = json.loads((folder / OPTIMIZER_GROUPS).read_text(encoding="utf-8"))
    _restore(model, accelerator.unwrap_model(model), optimizer, weights, state, groups)
    scheduler.load_state_dict(json.loads((folder / SCHEDULER).read_text(encoding="utf-8")))
    random_states = read_safetensors_unmapped(str(folder / RANDOM_STATES))
    rank = accelerator.process_index
    written_by = sum(key.startswith("cpu.") for key in random_states)
    if written_by == accelerator.num_processes:     # otherwise the streams no longer map to processes
        torch.set_rng_state(random_states[f"cpu.{rank}"])
        if torch.cuda.is_available() and f"cuda.{rank}" in random_states:
            torch.cuda.set_rng_state(random_states[f"cuda.{rank}"])


def load_accelerate_into_sharded(folder: Path, model, optimizer, scheduler, weights: dict[str, torch.Tensor],
                                 names: list[str]) -> None:
    """An unsharded run's checkpoint (Accelerate's layout: the optimizer state numbered in the order of ``names``,
    the trained parameters) into a sharded run."""
    saved = torch.load(folder / "optimizer.bin", map_location="cpu", weights_only=True)
    state = {names[index]: entries for index, entries in saved["state"].items()}
    groups = [{**group, "params": [names[index] for index in group["params"]]} for group in saved["param_groups"]]
    _restore(model, model, optimizer, weights, state, groups)
    scheduler.load_state_dict(torch.load(folder / "scheduler.bin", map_location="cpu", weights_only=True))
    log.info("resumed the unsharded checkpoint %s into a sharded run", folder)
