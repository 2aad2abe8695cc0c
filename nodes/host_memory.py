"""Devices, dtypes and ComfyUI's memory manager (``comfy.model_management`` / ``ModelPatcher``)."""

from __future__ import annotations

import torch

from .host_lookup import comfy_module as _module

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_device() -> torch.device:
    mm = _module("comfy.model_management")
    if mm is not None:
        return torch.device(mm.get_torch_device())
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    mm = _module("comfy.model_management")
    if mm is not None:
        return torch.device(mm.unet_offload_device())
    return torch.device("cpu")


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    """``auto`` follows ComfyUI (and its --fp16-unet / --bf16-unet flags); fp32 on the CPU."""
    if choice != "auto":
        return DTYPES[choice]
    if torch.device(device).type == "cpu":
        return torch.float32
    mm = _module("comfy.model_management")
    if mm is not None:
        return mm.unet_dtype(device=device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    return torch.float16


class LocalPatcher:
    """What the pack needs of a ``ModelPatcher`` when there is no ComfyUI: move the module to the device."""

    def __init__(self, model: torch.nn.Module, load_device, offload_device):
        self.model = model
        self.load_device = torch.device(load_device)
        self.offload_device = torch.device(offload_device)
        self.loads = 0

    def load(self) -> None:
        self.model.to(self.load_device)
        self.loads += 1

    def offload(self) -> None:
        self.model.to(self.offload_device)

    def model_size(self) -> int:
        return sum(t.numel() * t.element_size() for t in list(self.model.parameters()) + list(self.model.buffers()))


def wrap_model(module: torch.nn.Module, load_device, offload_device):
    """Hand a module to ComfyUI's memory manager: a ``ModelPatcher`` (weights are moved to the device when
    :func:`load_models` asks, and offloaded when other models need the room), or a :class:`LocalPatcher`."""
    model_patcher = _module("comfy.model_patcher")
    if model_patcher is not None and _module("comfy.model_management") is not None:
        return model_patcher.ModelPatcher(module, load_device=torch.device(load_device),
                                          offload_device=torch.device(offload_device))
    return LocalPatcher(module, load_device, offload_device)


def load_models(patchers) -> None:
    """Make sure these models are on their device (freeing others first when ComfyUI needs the room).

    Always a full load: RAIN's modules are plain torch modules without ComfyUI's cast-on-the-fly layers, so a
    partial (lowvram) load would leave weights on the wrong device."""
    patchers = [p for p in patchers if p is not None]
    host = [p for p in patchers if not isinstance(p, LocalPatcher)]
    for patcher in patchers:
        if isinstance(patcher, LocalPatcher):
            patcher.load()
    if host:
        mm = _module("comfy.model_management")
        mm.load_models_gpu(host, force_full_load=True)


def _same_device(tensor_device: torch.device, target: torch.device) -> bool:
    return tensor_device.type == target.type and (target.index is None or tensor_device.index == target.index)


def models_on_device(patchers) -> bool:
    """True when every weight of these models sits on its load device. ComfyUI's memory manager offloads models
    when other work needs the room; a background user (a live session) checks this before each call."""
    for patcher in patchers:
        if patcher is None:
            continue
        target = torch.device(patcher.load_device)
        module = patcher.model
        for tensor in list(module.parameters()) + list(module.buffers()):
            if not _same_device(tensor.device, target):
                return False
    return True


def soft_empty_cache() -> None:
    mm = _module("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()
