"""Converting pickle checkpoints (``.pth``) to safetensors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .loading import check_checkpoint
from .weights.errors import WeightsError
from .weights.safe_load import load_state_dict


# transformers names the safetensors file of ``pytorch_model.bin`` differently; the loader looks for that name.
_SAFETENSORS_NAMES = {"pytorch_model.bin": "model.safetensors"}


def default_destination(src: str | os.PathLike[str]) -> Path:
    """Where ``convert`` writes by default: beside ``src``, under the name the loader looks for."""
    src = Path(src)
    return src.with_name(_SAFETENSORS_NAMES.get(src.name, src.with_suffix(".safetensors").name))


def convert_to_safetensors(src: str | os.PathLike[str], dst: str | os.PathLike[str] | None = None,
                           *, dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Write the state dict of ``src`` as safetensors (default: ``default_destination(src)``).

    The source is first checked the way loading checks it (kind, keys, shapes; see
    ``rain.loading.check_checkpoint``): the loader prefers a ``.safetensors`` file over the
    ``.pth`` beside it, so a converted file that does not load would hide a good one.
    Tensors keep their dtype unless ``dtype`` is given, in which case only floating tensors
    are cast (integer buffers such as ``position_ids`` stay integer); a value the cast turns
    infinite is refused. The file is written under a temporary name, its header checked, and
    renamed, so an interrupted or failed conversion leaves nothing under the final name.
    """
    import safetensors.torch

    src = Path(src)
    dst = Path(dst) if dst is not None else default_destination(src)
    if dst.resolve() == src.resolve():
        raise WeightsError(f"Source and destination are the same file: {src}")
    if dst.exists() and not overwrite:
        raise WeightsError(f"{dst} already exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    state_dict = load_state_dict(src)
    try:
        check_checkpoint(state_dict, source=src)
    except WeightsError as error:
        raise WeightsError(f"{error}\nNothing was written: converting {src} would give a file that does not "
                           f"load either.") from None
    tensors = _tensors_to_save(state_dict, dtype, src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part",
                                     delete=False) as handle:
        tmp = Path(handle.name)
    try:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"})
        _check_written(tmp, tensors, dst)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _tensors_to_save(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None,
                     src: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[tuple[int, int]] = set()
    for key, tensor in state_dict.items():
        if dtype is not None and tensor.is_floating_point():
            cast = tensor.to(dtype)
            if not torch.isfinite(cast).all() and torch.isfinite(tensor).all():
                raise WeightsError(
                    f"Cannot convert {src} to {str(dtype).removeprefix('torch.')}: {key} holds values up to "
                    f"{tensor.abs().max().item():.4g}, beyond that type's range. Nothing was written; "
                    f"convert without --fp16 to keep the stored precision.")
            tensor = cast
        tensor = tensor.contiguous()
        # safetensors refuses tensors that share memory (tied weights); give each its own copy.
        storage_id = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and storage_id in seen_storage:
            tensor = tensor.clone()
        seen_storage.add(storage_id)
        tensors[key] = tensor
    return tensors


def _check_written(path: Path, tensors: dict[str, torch.Tensor], dst: Path) -> None:
    """The written header lists exactly the tensors given, with their shapes (read without the data)."""
    import safetensors

    with safetensors.safe_open(str(path), framework="pt") as written:
        found = {key: tuple(written.get_slice(key).get_shape()) for key in written.keys()}
    if found != {key: tuple(t.shape) for key, t in tensors.items()}:
        raise WeightsError(f"Writing {dst} produced a file that does not hold what was written (disk full or "
                           f"failing?); nothing was written under that name.")
