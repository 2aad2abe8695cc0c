"""The nodes follow what a model set declares about itself (``rain.model_set``): the reduced random sets
written by ``python -m rain make-tiny-models`` declare their native frame size, so a shipped workflow with
512×512 widgets runs on them unedited. Fuse RAIN Reference and RAIN Stream Sampler render at that size
(resizing the pose frames, keeping a portrait workflow portrait) and say so once in the log."""

from __future__ import annotations

import logging

import torch
from torch.nn import functional as F

log = logging.getLogger("ComfyUI-RAIN")

_said: set[tuple] = set()


def declaration_of(rain_model):
    """The declaration next to the model's denoiser, or None (released checkpoints have none)."""
    from ..rain.model_set import read_declaration
    return read_declaration(rain_model.paths.get("motion_unet"))


def frame_size(rain_model, height: int, width: int, node: str) -> tuple[int, int]:
    """The (height, width) to render for a request of ``height``×``width``: the set's native size when it
    declares one, else the request."""
    declaration = declaration_of(rain_model)
    if declaration is None:
        return int(height), int(width)
    fitted = declaration.fit(int(height), int(width))
    if fitted == (int(height), int(width)):
        return fitted
    key = (str(declaration.path), node, int(height), int(width))
    if key not in _said:
        _said.add(key)
        kind = "reduced random weights, " if declaration.reduced_random_weights else ""
        log.warning("%s: %s runs at %s (%sdeclared in %s): rendering %d×%d instead of the %d×%d asked for; "
                    "the frames are resized", node, rain_model.name, declaration.describe_size(), kind,
                    declaration.path, fitted[1], fitted[0], width, height)
    return fitted


def fit_pose(frame: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One pose frame [H,W,C] resized to ``size`` (height, width), antialiased so thin lines and dots survive
    a downscale; unchanged when it already has that size."""
    if tuple(frame.shape[:2]) == tuple(size):
        return frame
    chw = frame.permute(2, 0, 1)[None].float()
    resized = F.interpolate(chw, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].permute(1, 2, 0).clamp(0, 1)


def warn_task(rain_model, task: str, node: str) -> None:
    """Log once when the set was trained for other conditions than the node draws (its declaration says)."""
    declaration = declaration_of(rain_model)
    message = declaration.check_task(task, node) if declaration is not None else None
    key = ("task", str(getattr(declaration, "path", "")), node, task)
    if message and key not in _said:
        _said.add(key)
        log.warning("%s", message)
