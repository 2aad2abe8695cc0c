"""Conversions between the frame types the engine and ComfyUI pass around.

Everything the writer accepts ends up as a C-contiguous ``uint8`` ``H×W×3`` RGB array.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def to_uint8_rgb(frame: Any) -> np.ndarray:
    """Convert one frame to ``uint8`` ``H×W×3`` RGB.

    Accepts numpy arrays or torch tensors shaped ``H×W×3`` (RGB), ``H×W×4`` (alpha dropped)
    or ``H×W`` (grey), either ``uint8`` or floating point in ``[0, 1]`` (clamped, rounded).
    A leading batch dimension of size 1 is removed (ComfyUI IMAGE slices).
    """
    if hasattr(frame, "detach"):  # torch.Tensor, without importing torch here
        frame = frame.detach()
        if frame.is_floating_point():
            frame = frame.float()
        frame = frame.cpu().numpy()
    array = np.asarray(frame)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[:, :, None].repeat(3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected a frame shaped H×W×3 (RGB), got shape {tuple(array.shape)}")
    if array.shape[2] == 1:
        array = array.repeat(3, axis=2)
    array = array[:, :, :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        return np.ascontiguousarray((np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    if array.dtype == np.bool_:
        return np.ascontiguousarray(array.astype(np.uint8) * 255)
    raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {array.dtype}")


def pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Pad the bottom/right edge by one replicated pixel where a dimension is odd.

    4:2:0 video stores colour at half resolution, so its encoders need even sizes; padding
    keeps every source pixel (cropping would lose a row/column of a 511-pixel render).
    """
    height, width = frame.shape[:2]
    pad_h, pad_w = height % 2, width % 2
    if not (pad_h or pad_w):
        return frame
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
