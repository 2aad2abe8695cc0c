"""Converting pickle checkpoints (``.pth``) to safetensors."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import WeightsError
from .safe_load import load_state_dict


def convert_to_safetensors(src: str | os.PathLike[str], dst: str | os.PathLike[str] | None = None,
                           *, dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Write the state dict of ``src`` as safetensors (default: same name, ``.safetensors``).

    Tensors keep their dtype unless ``dtype`` is given, in which case only floating tensors
    are cast (integer buffers such as ``position_ids`` stay integer). The file is written
    under a temporary name and renamed, so an interrupted conversion leaves no half file.
    """
    import safetensors.torch

    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_suffix(".safetensors")
    if dst.resolve() == src.resolve():
        raise WeightsError(f"Source and destination are the same file: {src}")
    if dst.exists() and not overwrite:
        raise WeightsError(f"{dst} already exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    state_dict = load_state_dict(src)
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[tuple[int, int]] = set()
    for key, tensor in state_dict.items():
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.contiguous()
        # safetensors refuses tensors that share memory (tied weights); give each its own copy.
        storage_id = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and storage_id in seen_storage:
            tensor = tensor.clone()
        seen_storage.add(storage_id)
        tensors[key] = tensor
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
