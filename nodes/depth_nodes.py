"""RAIN Depth Maps: IMAGE batch → depth condition images, with the engine's estimator and running-range
normalisation (:mod:`rain.depth`) - the same images ``prepare-data --task depth`` trains on. transformers is
imported only when the node runs."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from . import host

log = logging.getLogger("ComfyUI-RAIN")

CATEGORY = "RAIN/pose"
AUTO = "auto"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def depth_model_choices() -> list[str]:
    """``auto`` plus every folder under models/rain whose weights sit next to a depth model's config.json."""
    from ..rain.depth import is_depth_model_folder

    folders = set()
    for relative in host.list_model_files():   # '/'-separated on every OS (host.list_model_files)
        parent, _, name = relative.rpartition("/")
        if name in _WEIGHT_FILES and parent:
            path = host.model_file_path(relative)
            if path is not None and is_depth_model_folder(path.parent):
                folders.add(parent)
    return [AUTO] + sorted(folders)


def depth_model_folder(choice: str) -> Path:
    """The folder of a dropdown entry; ``auto`` = ``depth_estimator/`` in any models/rain folder."""
    from ..rain.depth import DEPTH_FOLDER, find_depth_model

    # Workflows are shared: a name from one must stay inside the models folders ('..', absolute, C:, UNC refused).
    name = DEPTH_FOLDER if choice == AUTO else choice.replace("\\", "/")
    roots = host.model_roots()
    for root in roots:
        if (root / name / "config.json").is_file():
            return find_depth_model(root, name)
    return find_depth_model(roots[0] if roots else Path("models/rain"), name)  # raises with the fix


_estimators: "OrderedDict[str, tuple]" = OrderedDict()
MAX_ESTIMATORS = 1


def get_estimator(folder: Path):
    """(estimator, patcher), kept for the next run; the weights live on the offload device until the memory
    manager loads them."""
    from ..rain.depth import DepthEstimator

    key = str(folder.resolve())
    if key in _estimators:
        _estimators.move_to_end(key)
        return _estimators[key]
    load_device, offload = host.torch_device(), host.offload_device()
    estimator = DepthEstimator.from_folder(folder, device=offload, dtype=host.pick_dtype("auto", load_device))
    patcher = host.wrap_model(estimator.model, load_device, offload)
    log.info("RAIN: depth estimator %s on %s", folder.name, load_device)
    _estimators[key] = (estimator, patcher)
    while len(_estimators) > MAX_ESTIMATORS:
        _estimators.popitem(last=False)
    return estimator, patcher


class RainDepthMaps:
    DESCRIPTION = ("Depth maps of a video's frames as RAIN condition images (near = white): a transformers depth "
                   "model (DPT/MiDaS, Depth Anything) from models/rain/depth_estimator/, normalised with a running "
                   "range so the video does not flicker - exactly what depth-trained RAIN checkpoints were "
                   "trained on by `python -m rain prepare-data --task depth`.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("depth_maps",)
    FUNCTION = "estimate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video's frames (resize them to the RAIN frame size first)."}),
                "model": (depth_model_choices(), {"default": AUTO, "tooltip": "Depth model folder in models/rain "
                          "(config.json + weights + preprocessor_config.json). auto: depth_estimator/."}),
                "range_momentum": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 0.99, "step": 0.01,
                                   "tooltip": "How slowly the near/far range follows the video (0: every frame "
                                   "by its own range, flickers; 0.9: as in training)."}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 128,
                               "tooltip": "Frames per estimator call (memory vs speed)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def estimate(self, images, model, range_momentum, batch_size, unique_id=None):
        from ..rain.depth import DepthConditioner

        if images.ndim != 4:
            raise ValueError(f"images must be an IMAGE batch [frames, H, W, C], got shape {list(images.shape)}")
        estimator, patcher = get_estimator(depth_model_folder(model))
        host.load_models([patcher])
        conditioner = DepthConditioner(estimator, momentum=float(range_momentum), batch_size=int(batch_size))
        total = int(images.shape[0])
        progress = host.progress_bar(total, node_id=unique_id)
        maps: list[np.ndarray] = []
        for start in range(0, total, int(batch_size)):
            host.check_interrupted()
            chunk = (images[start:start + int(batch_size), ..., :3].clamp(0, 1) * 255).round().to(torch.uint8)
            maps.extend(conditioner.render(list(chunk.cpu().numpy())))
            progress.update_absolute(len(maps), total)
        return (torch.from_numpy(np.stack(maps)).float().div_(255.0),)


NODE_CLASS_MAPPINGS = {"RAIN_DepthMaps": RainDepthMaps}
NODE_DISPLAY_NAME_MAPPINGS = {"RAIN_DepthMaps": "RAIN Depth Maps"}
