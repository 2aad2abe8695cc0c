"""The driving side of a long render: a file read lazily and turned into pose frames, one at a time, with a
state that can be saved and restored (input position, landmark tracking and smoothing, the depth range).

``DrivingSource(spec)`` yields float32 ``[3, H, W]`` pose tensors in [0, 1]. After ``n`` of them, ``state_dict``
describes everything needed to yield frame ``n`` onwards exactly as an uninterrupted source would: a new source
opened with ``position=n`` and ``load_state_dict`` of that state continues bit for bit (the video is decoded from
its start and the first frames skipped, never seeked, so the frames are the same ones).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

TASKS = ("pose", "face", "body", "depth")


@dataclass
class SourceSpec:
    """What to read and how to turn it into pose frames.

    ``task``: 'pose' (the file already holds pose images; resized), 'face' (DWPose landmarks → transform →
    RAIN's dots), 'body' (whole-body skeleton), 'depth' (a depth estimator's maps). ``fps``: read the file
    resampled to this constant rate (None: as stored). ``start``/``max_frames`` count frames after resampling.
    ``detector``: a DWPose detector for face/body; ``depth_model``: the estimator's folder for depth.
    """
    driving: Path
    task: str
    size: tuple[int, int]                  # (height, width) of the pose frames
    fps: float | None = None
    start: int = 0
    max_frames: int | None = None
    crop: float | None = None              # centre-square fraction the detector sees (face/body/depth)
    missing: str = "hold"
    smoothing: bool = False
    smoothing_rate: float = 16.0           # frames/s the One-Euro filter assumes
    translations: tuple = ()               # face: the human → anime transform
    detector: object | None = None
    detect_batch: int = 1                  # face/body: frames DWPose sees as one batch (faster on a GPU)
    depth_model: Path | None = None
    depth_batch: int = 8
    device: str | None = None
    stats: object | None = field(default=None, repr=False)   # a PoseStats to count into (face/body)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task in ("face", "body") and self.detector is None:
            raise ValueError(f"the '{self.task}' task needs a DWPose detector")

    def settings(self) -> dict:
        """What the pose frames depend on (JSON-able), for the resume check."""
        return {"task": self.task, "size": list(self.size), "fps": self.fps, "start": self.start,
                "max_frames": self.max_frames, "crop": self.crop,
                "missing": self.missing if self.task in ("face", "body") else None,
                "smoothing": self.smoothing if self.task in ("face", "body") else None,
                "transform": [t.to_dict() for t in self.translations] if self.task == "face" else None,
                "depth_model": os.fspath(self.depth_model) if self.task == "depth" and self.depth_model else None}


class DrivingSource:
    """Iterate to get pose frames; ``position`` counts the frames handed out."""

    def __init__(self, spec: SourceSpec, *, position: int = 0):
        self.spec = spec
        self.position = int(position)
        self._buffered: list[np.ndarray] = []   # depth maps estimated in a batch, not yet handed out
        self.renderer = None
        self.depth = None
        if spec.task in ("face", "body"):
            from ..pose.driving import DrivingPoseRenderer
            from ..pose.smoothing import OneEuroFilter
            smoothing = OneEuroFilter(rate=spec.smoothing_rate) if spec.smoothing else None
            self.renderer = DrivingPoseRenderer(spec.detector, task=spec.task, size=spec.size,
                                                translations=spec.translations, missing=spec.missing,
                                                smoothing=smoothing, crop=spec.crop, stats=spec.stats)
        elif spec.task == "depth":
            from ..depth import DepthConditioner, DepthEstimator
            estimator = DepthEstimator.from_folder(spec.depth_model, device=spec.device)
            self.depth = DepthConditioner(estimator, batch_size=spec.depth_batch)

    @property
    def stats(self):
        return None if self.renderer is None else self.renderer.stats

    @property
    def at_boundary(self) -> bool:
        """True when the state describes exactly the frames handed out (no frame of a batch computed ahead)."""
        return not self._buffered

    # -- frames --------------------------------------------------------------------------------------------
    def _raw(self, resized: bool) -> Iterator[np.ndarray]:
        from ..io import read_frames
        spec = self.spec
        remaining = None if spec.max_frames is None else max(0, spec.max_frames - self.position)
        if remaining == 0:
            return iter(())
        return read_frames(spec.driving, size=spec.size if resized else None, fps=spec.fps,
                           start=spec.start + self.position, max_frames=remaining)

    def __iter__(self) -> Iterator[torch.Tensor]:
        from ..pipeline import to_pose_tensor
        if self.spec.task == "pose":
            frames = self._raw(resized=True)
        elif self.renderer is not None:
            frames = self._batched(self._raw(resized=False), self.spec.detect_batch,
                                   lambda batch: [r.image for r in self.renderer.process_batch(batch)])
        else:
            frames = self._depth_maps()
        for frame in frames:
            self.position += 1
            yield to_pose_tensor(frame)

    def _depth_maps(self) -> Iterator[np.ndarray]:
        from PIL import Image

        from ..pose.driving import center_square_crop
        height, width = self.spec.size
        if self.spec.crop is None:
            raw = self._raw(resized=True)
        else:
            raw = (np.asarray(Image.fromarray(center_square_crop(f, self.spec.crop)).resize(
                (width, height), Image.Resampling.BICUBIC)) for f in self._raw(resized=False))
        return self._batched(raw, self.depth.batch_size, self.depth.render)

    def _batched(self, raw, size: int, convert) -> Iterator[np.ndarray]:
        """``convert`` (a list of frames → their pose images) over batches of ``size``; the images of a batch
        wait in ``_buffered`` until handed out, so the state is whole only between batches."""
        batch: list[np.ndarray] = []
        for frame in raw:
            batch.append(frame)
            if len(batch) == max(1, size):
                self._buffered, batch = convert(batch), []
                while self._buffered:
                    yield self._buffered.pop(0)
        if batch:
            self._buffered = convert(batch)
            while self._buffered:
                yield self._buffered.pop(0)

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able values) for ``load_state_dict``; only valid ``at_boundary``."""
        if not self.at_boundary:
            raise RuntimeError("the source is inside a batch; save at a batch boundary")
        import torch
        values: dict = {"position": self.position}
        tensors: dict[str, torch.Tensor] = {}
        if self.renderer is not None:
            arrays, values["tracker"] = self.renderer.tracker.state_dict()
            tensors = {f"source.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
            values["frames_seen"] = self.renderer._frames_seen
        if self.depth is not None:
            values["depth_range"] = [self.depth.range.low, self.depth.range.high]
        return tensors, values

    def load_state_dict(self, tensors: dict[str, torch.Tensor], values: dict) -> None:
        self.position = int(values["position"])
        if self.renderer is not None:
            arrays = {k[len("source."):]: v.numpy() for k, v in tensors.items() if k.startswith("source.")}
            self.renderer.tracker.load_state_dict(arrays, values["tracker"])
            self.renderer._frames_seen = int(values["frames_seen"])
        if self.depth is not None:
            self.depth.range.low, self.depth.range.high = values["depth_range"]
