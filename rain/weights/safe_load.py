"""Reading checkpoint files without unpickling arbitrary objects.

``.safetensors`` files are read with safetensors, pickle checkpoints only with
``torch.load(weights_only=True)``. Corrupt, truncated and impostor files (Git LFS pointers,
HTML error pages, empty files) are explained in plain words. Training wrappers' key
prefixes (DataParallel's ``module.``) are removed with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import MissingWeightsError, WeightsError, convert_command, download_command, preview_keys
from ..messages import describe_error

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
# Lookup order for single-file checkpoints: safetensors first (safe and memory-mapped).
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

# Prefixes a training wrapper puts before every key of the model it wraps, and who puts them there.
WRAPPER_PREFIXES = (("module.", "DataParallel / DistributedDataParallel"), ("_orig_mod.", "torch.compile"))


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a checkpoint file as a flat ``{key: tensor}`` dict on the CPU.

    ``.safetensors`` files are read with safetensors; ``.pth/.pt/.bin/.ckpt`` files only
    with ``torch.load(weights_only=True)``, so no arbitrary object is ever unpickled.
    A top-level ``{"state_dict": {...}}`` container is unwrapped, and a prefix that a training
    wrapper put before every key (``module.``) is removed with a warning. Tensors keep the dtype
    they were stored in (``nn.Module.load_state_dict`` casts floats on copy).

    Raises ``MissingWeightsError`` if the file does not exist and ``WeightsError`` if it is
    unreadable, truncated, not a checkpoint, holds no tensors, or is a pickle that
    ``weights_only`` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"Weights file not found: {path}\n"
            f"Fetch the model files with: {download_command(path.parent)}")
    _reject_non_checkpoint(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        state_dict = _load_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        state_dict = _load_pickle(path)
    else:
        raise WeightsError(
            f"Unsupported weights file type '{path.suffix}' for {path}; expected one of "
            f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}.")
    return _as_flat_state_dict(state_dict, path)


def _corrupt_file_error(path: Path, detail: str) -> WeightsError:
    return WeightsError(
        f"Cannot read weights file {path}: it is corrupt or incomplete ({detail}).\n"
        f"Delete it and download it again with: {download_command(path.parent)}")


def _reject_non_checkpoint(path: Path) -> None:
    """Recognise the usual impostors (LFS pointers, HTML error pages, empty files) early."""
    with path.open("rb") as f:
        head = f.read(64)
    if not head:
        raise _corrupt_file_error(path, "the file is empty")
    if head.startswith(b"version https://git-lfs"):
        raise WeightsError(
            f"{path} is a Git LFS pointer, not the weights themselves (the repository was cloned "
            f"without git-lfs).\nDelete it and download the real file with: "
            f"{download_command(path.parent)}")
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        raise WeightsError(
            f"{path} is a web page, not a checkpoint (a browser download of the wrong link?).\n"
            f"Delete it and download the real file with: {download_command(path.parent)}")


def read_safetensors_unmapped(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, copied into memory, with the file closed on return.

    ``safetensors.torch.load_file`` may hand back tensors that view a memory map of the file, which then stays
    open as long as any tensor lives; on Windows an open mapping makes the file impossible to delete or
    replace ("file in use", WinError 32), so a resumed render could not save its next state, nor a download or
    a conversion replace a loaded file. The copy costs one tensor of extra memory at a time."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {name: handle.get_tensor(name).clone() for name in handle.keys()}


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_safetensors_unmapped(path)
    except Exception as exc:  # SafetensorError is not importable under a stable name
        raise _corrupt_file_error(path, f"safetensors: {describe_error(exc)}") from exc


def _load_pickle(path: Path) -> Any:
    with path.open("rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    try:
        # mmap keeps multi-GB checkpoints out of anonymous memory; only the zip format supports it.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:
        message = str(exc)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", message)
        if refused:
            raise WeightsError(
                f"Refusing to load {path}: it is a pickle that contains the object "
                f"'{refused.group(1)}', which safe loading (torch.load weights_only=True) does not "
                f"allow, because unpickling it could run arbitrary code.\n"
                f"If you trust where the file came from, convert it to safetensors on a trusted "
                f"machine (e.g. load it there with weights_only=False and save the state dict with "
                f"safetensors), or download the official file with: "
                f"{download_command(path.parent)}") from exc
        first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        raise _corrupt_file_error(path, first_line) from exc


def _as_flat_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} does not contain a state dict (found a {type(obj).__name__}).")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(
            f"{path} is not a plain state dict: {len(not_tensors)} entries are not tensors "
            f"({preview_keys(not_tensors)}).")
    if not obj:
        raise WeightsError(
            f"{path} holds no tensors: it is a readable checkpoint file with an empty state dict, "
            f"so it cannot be a model's weights (an export or conversion that saved nothing?).\n"
            f"Delete it and download the real file with: {download_command(path.parent)}")
    return _without_wrapper_prefixes({str(k): v for k, v in obj.items()}, path)


def _without_wrapper_prefixes(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Remove a prefix that every key carries because the model was saved inside a training wrapper."""
    stripped = True
    while stripped:
        stripped = False
        for prefix, wrapper in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) and len(key) > len(prefix) for key in state_dict):
                state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
                fix = (f"; to store a copy without it: {convert_command(path)}"
                       if path.suffix.lower() in PICKLE_SUFFIXES else "")
                logger.warning("%s: every key starts with '%s' (the model was saved inside %s); loaded "
                               "with the prefix removed, nothing to do%s", path, prefix, wrapper, fix)
                stripped = True
    return state_dict
