"""Depth maps as RAIN condition images: one path for training data, the CLI and the ComfyUI node.

The estimator is any depth model the ``transformers`` library runs (DPT / MiDaS, Depth Anything) from a local
folder holding ``config.json``, its weights and ``preprocessor_config.json`` - by default
``<models>/depth_estimator/``. It predicts relative inverse depth (larger = nearer).

Normalisation (what makes a video not flicker): a frame's raw prediction has an arbitrary scale and offset, so
mapping each frame by its own min/max makes the whole picture pump in brightness whenever something enters or
leaves the scene. Instead a stream keeps a *running range*: ``low``/``high`` start at the first frame's min/max
and then follow each new frame's min/max as an exponential moving average, ``low = m·low + (1 - m)·frame_min``
(momentum ``m`` = 0.9 per frame: the range settles within ~10 frames and one odd frame moves it by a tenth).
The condition is ``clamp((depth - low) / (high - low), 0, 1)`` as 8-bit grey in all three channels, near =
white, as depth ControlNets expect. A stream is a video for the CLI and the node (an IMAGE batch) and a clip for
prepared training data - each starts fresh, as a live stream does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

DEPTH_FOLDER = "depth_estimator"
DEFAULT_MOMENTUM = 0.9
#: transformers model types that predict depth (others are accepted when their architecture says so).
DEPTH_MODEL_TYPES = frozenset({"dpt", "depth_anything", "glpn", "zoedepth", "depth_pro", "prompt_depth_anything"})
HUB_SUGGESTION = ("e.g. `{download}` (Depth Anything V2 Small, 99 MB, into {folder.parent}/depth_estimator) or "
                  "`hf download Intel/dpt-hybrid-midas --local-dir {quoted}` (MiDaS, the paper's estimator)")


def _suggestion(folder: Path) -> str:
    from .shell import quote, rain_command
    return HUB_SUGGESTION.format(download=rain_command("download", "--only", "depth", "--models-dir",
                                                       str(folder.parent)),
                                 folder=folder, quoted=quote(str(folder)))


class DepthModelNotFound(FileNotFoundError):
    """No usable depth model folder where one was looked for; the message says what to put where."""


def is_depth_model_folder(folder: str | os.PathLike) -> bool:
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    architectures = data.get("architectures") or []
    return data.get("model_type") in DEPTH_MODEL_TYPES or any(a.endswith("ForDepthEstimation") for a in architectures)


def depth_model_name_problem(name: str) -> str | None:
    """Why ``name`` is not a folder name inside a models folder (absolute, a drive or UNC path, '..'), or None."""
    from pathlib import PurePosixPath, PureWindowsPath
    text = str(name)
    if "\0" in text or not text.strip():
        return "is empty or contains a NUL character"
    if PureWindowsPath(text).drive or text.startswith(("\\\\", "//")) or PurePosixPath(text).is_absolute():
        return "is an absolute path"
    if ".." in PurePosixPath(text.replace("\\", "/")).parts:
        return "contains a '..' component"
    return None


def find_depth_model(models_dir: str | os.PathLike | None, model: str | os.PathLike | None = None) -> Path:
    """The depth model folder: ``<models_dir>/<model>`` (a folder name inside the models folder; a model is code
    and weights the estimator runs, so it is never loaded from elsewhere), else ``<models_dir>/depth_estimator``."""
    root = Path(models_dir or ".")
    if model is None:
        folder = root / DEPTH_FOLDER
    else:
        problem = depth_model_name_problem(str(model))
        if problem:
            raise DepthModelNotFound(
                f"depth model {str(model)!r} {problem}: give the name of a folder inside the models folder {root} "
                f"(e.g. {DEPTH_FOLDER}); move or copy the model there first.")
        folder = root / str(model).replace("\\", "/")
        if folder.exists() and not folder.resolve().is_relative_to(root.resolve()):
            raise DepthModelNotFound(f"{folder} leads to {folder.resolve()}, outside the models folder {root}; "
                                     f"move or copy the depth model into {root}.")
    return check_depth_model_folder(folder)


def check_depth_model_folder(folder: str | os.PathLike) -> Path:
    """``folder`` if it holds a depth model transformers runs, else one message saying what to put there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DepthModelNotFound(
            f"no depth estimator at {folder}: put a transformers depth model folder there (config.json, the "
            f"weights, preprocessor_config.json), {_suggestion(folder)}")
    if not is_depth_model_folder(folder):
        raise DepthModelNotFound(
            f"{folder / 'config.json'} is missing or does not describe a depth estimation model (DPT, Depth "
            f"Anything, ...); point to the folder of one, {_suggestion(folder)}")
    return folder


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DepthEstimator:
    """A transformers depth model with its image processor: RGB frames in, raw relative inverse depth out."""

    def __init__(self, model: torch.nn.Module, processor, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        self.processor = processor

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, *, device=None, dtype=None) -> "DepthEstimator":
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        folder = check_depth_model_folder(folder)
        if not (folder / "preprocessor_config.json").is_file():
            raise DepthModelNotFound(f"{folder} has no preprocessor_config.json (the depth model's input size and "
                                     f"normalisation); download the whole model folder, "
                                     f"{_suggestion(folder)}")
        model = AutoModelForDepthEstimation.from_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder)
        return cls(model, processor, device=device, dtype=dtype)

    @torch.inference_mode()
    def predict(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """float32 [N, H, W] relative inverse depth for N uint8 RGB frames of one size H x W (on the model's
        device), resized back to the frames' size with bicubic interpolation."""
        if len(frames) == 0:
            return torch.zeros(0, 0, 0)
        height, width = frames[0].shape[:2]
        if any(f.shape[:2] != (height, width) for f in frames):
            raise ValueError("depth frames of one batch must share one size; resize them first")
        inputs = self.processor(images=[np.asarray(f) for f in frames], return_tensors="pt")
        # Where the weights are now: a memory manager (ComfyUI's) may move them between calls.
        device = next(self.model.parameters()).device
        pixels = inputs["pixel_values"].to(device, self.dtype)
        predicted = self.model(pixel_values=pixels).predicted_depth
        if predicted.ndim == 4:  # some heads keep a channel axis
            predicted = predicted[:, 0]
        return torch.nn.functional.interpolate(predicted[:, None].float(), size=(height, width), mode="bicubic",
                                               align_corners=False)[:, 0]


class RunningDepthRange:
    """Per-stream depth → uint8 grey mapping with the running min/max described in the module docstring."""

    def __init__(self, momentum: float = DEFAULT_MOMENTUM):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum}: must be in [0, 1) (0 = every frame by its own min/max)")
        self.momentum = momentum
        self.low: float | None = None
        self.high: float | None = None

    def reset(self) -> None:
        self.low = self.high = None

    def __call__(self, depth: torch.Tensor) -> np.ndarray:
        """One [H, W] depth map → H x W x 3 uint8 condition image; updates the range."""
        frame_low, frame_high = (float(v) for v in torch.aminmax(depth))
        if self.low is None:
            self.low, self.high = frame_low, frame_high
        else:
            keep = self.momentum
            self.low = keep * self.low + (1.0 - keep) * frame_low
            self.high = keep * self.high + (1.0 - keep) * frame_high
        span = self.high - self.low
        if span <= 1e-6 * max(abs(self.high), abs(self.low), 1e-12):
            grey = torch.zeros_like(depth, dtype=torch.uint8)  # a flat prediction carries no shape
        else:
            grey = ((depth - self.low) / span).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
        return grey.cpu().numpy()[..., None].repeat(3, axis=2)


class DepthConditioner:
    """Frames → depth condition images, batched through the estimator, one running range per stream."""

    def __init__(self, estimator: DepthEstimator, *, momentum: float = DEFAULT_MOMENTUM, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        self.estimator = estimator
        self.range = RunningDepthRange(momentum)
        self.batch_size = batch_size

    def reset(self) -> None:
        """Start a new stream (forget the running range)."""
        self.range.reset()

    def render(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Condition images for consecutive frames of the current stream, in order."""
        images: list[np.ndarray] = []
        for start in range(0, len(frames), self.batch_size):
            depth = self.estimator.predict(frames[start:start + self.batch_size])
            images.extend(self.range(d) for d in depth)
        return images

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Lazily: at most ``batch_size`` frames are held."""
        pending: list[np.ndarray] = []
        for frame in frames:
            pending.append(frame)
            if len(pending) == self.batch_size:
                yield from self.render(pending)
                pending = []
        if pending:
            yield from self.render(pending)


def depth_driving_frames(driving: str | os.PathLike, size: tuple[int, int], *, models_dir=None, model=None,
                         fps: float | None = None, start: int = 0, max_frames: int | None = None,
                         crop: float | None = None, device=None, batch_size: int = 8) -> Iterator[np.ndarray]:
    """``python -m rain animate --task depth``: a raw video → depth condition images of ``size`` (H, W), lazily.

    Frames are resized to ``size`` the way pose videos are (stretched, after the optional centre-square crop)
    and the estimator sees the frame RAIN will be conditioned on, as in prepared training clips."""
    from PIL import Image

    from .io import read_frames
    from .pose.driving import center_square_crop

    estimator = DepthEstimator.from_folder(find_depth_model(models_dir, model), device=device)
    height, width = size
    if crop is None:
        frames = read_frames(driving, size=size, fps=fps, start=start, max_frames=max_frames)
    else:
        raw = read_frames(driving, fps=fps, start=start, max_frames=max_frames)
        frames = (np.asarray(Image.fromarray(center_square_crop(f, crop)).resize((width, height),
                                                                                   Image.Resampling.BICUBIC))
                  for f in raw)
    return DepthConditioner(estimator, batch_size=batch_size).stream(frames)
