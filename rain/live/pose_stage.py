"""The live pose stage: camera frames → pose images for the stream, per task.

* ``face``: DWPose face landmarks → per-stream tracking → the human→anime landmark transform (a preset, or the
  13 calibration sliders) → RAIN's face dots;
* ``body``: DWPose whole-body keypoints → an OpenPose-style skeleton;
* ``pose``: the frames already are pose images (e.g. another program draws them); they are only resized.

The transform can change between any two frames (:meth:`PoseStage.set_calibration`), which is what makes a slider
move the live output at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..pose.driving import Detector, DrivingPoseRenderer
from ..pose.landmark_transform import (DEMO_DEFAULTS, SLIDER_RANGES, STARTUP_TRANSLATIONS, FaceCalibration,
                                       Translation, calibration_translations)
from ..pose.smoothing import OneEuroFilter

TASKS = ("face", "body", "pose")
PRESETS = ("calibration", "startup", "none")


def translations_for(preset: str, params: Mapping[str, float] | None = None) -> tuple[Translation, ...]:
    """The translation list of a preset: 'calibration' builds it from the slider values ``params`` (missing ones
    keep the demo defaults; unknown names are ignored, so a UI may send all its widgets), 'startup' is the official
    stream's fixed list, 'none' keeps the human face."""
    if preset == "calibration":
        known = {k: float(v) for k, v in (params or {}).items() if k in SLIDER_RANGES}
        return tuple(calibration_translations(FaceCalibration.from_dict(known)))
    if preset == "startup":
        return tuple(STARTUP_TRANSLATIONS)
    if preset == "none":
        return ()
    raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")


def calibration_values(params: Mapping[str, float] | None = None) -> dict[str, float]:
    """All 13 slider values: the demo defaults overridden by ``params`` (clamped to the sliders' ranges)."""
    values = DEMO_DEFAULTS.to_dict()
    for name, value in (params or {}).items():
        if name in SLIDER_RANGES:
            low, high, _ = SLIDER_RANGES[name]
            values[name] = min(max(float(value), low), high)
    return values


@dataclass
class LiveTask:
    """What a live session does with camera frames (see module doc). ``detector``: a DWPose detector for 'face'
    and 'body'. ``crop``: the centre-square fraction the detector sees (the official live demo's 0.9), None =
    the whole frame stretched. ``missing``: 'hold' or 'blank' for frames without a face."""
    kind: str = "face"
    detector: Detector | None = None
    preset: str = "calibration"
    calibration: dict[str, float] = field(default_factory=dict)
    crop: float | None = 0.9
    missing: str = "hold"
    smoothing: bool = False

    def __post_init__(self):
        if self.kind not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.kind!r}")
        if self.kind != "pose" and self.detector is None:
            raise ValueError(f"the '{self.kind}' task needs a DWPose detector (models/rain/dwpose/yolox_l.onnx and "
                             f"dw-ll_ucoco_384.onnx; `python -m rain download --dwpose` fetches them)")
        translations_for(self.preset, self.calibration)  # validates the preset early
        self.calibration = calibration_values(self.calibration)

    def same_pipeline(self, other: "LiveTask") -> bool:
        """True when only the transform differs (a change that needs no restart)."""
        return (self.kind, self.detector, self.crop, self.missing, self.smoothing) == \
               (other.kind, other.detector, other.crop, other.missing, other.smoothing)


class PoseStage:
    """Per-session state of the pose stage (tracking, smoothing); call it with a list of RGB frames."""

    def __init__(self, task: LiveTask, size: tuple[int, int]):
        self.task, self.size = task, (int(size[0]), int(size[1]))
        self.renderer = None
        if task.kind != "pose":
            self.renderer = DrivingPoseRenderer(task.detector, task=task.kind, size=self.size,
                                                translations=translations_for(task.preset, task.calibration),
                                                missing=task.missing, crop=task.crop,
                                                smoothing=OneEuroFilter() if task.smoothing else None)

    def set_calibration(self, preset: str, params: Mapping[str, float] | None = None) -> None:
        """Use another transform from the next frame on (thread-safe: one attribute assignment)."""
        translations = translations_for(preset, params)
        self.task.preset, self.task.calibration = preset, calibration_values(params)
        if self.renderer is not None:
            self.renderer.translations = translations

    def reset(self) -> None:
        if self.renderer is not None:
            self.renderer.reset()

    def __call__(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """RGB uint8 frames of any size → pose images (H×W×3 uint8) of the session's size; the detector sees the
        frames as one batch."""
        if self.renderer is None:
            import cv2
            height, width = self.size
            return [frame if frame.shape[:2] == (height, width)
                    else cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in frames]
        return [result.image for result in self.renderer.process_batch(list(frames))]
