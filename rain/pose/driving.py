"""Driving frames -> pose images, one frame at a time (never the whole video in memory).

Per frame: optional centre-square crop (the demo's webcam/offline path) -> the detector stretches the frame to its
detection size (512x512 as official; non-square frames are distorted unless cropped, pitfall 15) -> whole-body
keypoints -> per-stream tracking (fill-in, missing-face policy, optional smoothing) -> face: human->anime
transform + RAIN dots; body: OpenPose-style skeleton -> ``size`` (H, W) uint8 RGB image.

Landmarks are normalised, so the pose image can have any size (portrait, landscape, odd) independently of the
detection size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from .dwpose import PoseDetection
from .face_tracking import BodyKeypointTracker, FaceLandmarkTracker, PoseStats, check_missing_policy
from .landmark_transform import STARTUP_TRANSLATIONS, Translation, apply_translations
from .render import render_face_pose, render_wholebody_pose
from .smoothing import OneEuroFilter

TASKS = ("face", "body")


class Detector(Protocol):
    """What the driving loop needs from a detector (``DWPoseDetector`` or a test double)."""

    def detect(self, frame: np.ndarray) -> PoseDetection: ...


def center_square_crop(frame: np.ndarray, cropping: float = 0.9) -> np.ndarray:
    """The demo's centre crop: side d = int(min(H, W) * cropping), margins (H - d) // 2 and (W - d) // 2 removed
    from both ends - so the result is d or d + 1 pixels per side, as in the official code."""
    if not 0.0 < cropping <= 1.0:
        raise ValueError(f"cropping={cropping}: must be in (0, 1] (fraction of the short side kept)")
    height, width = frame.shape[:2]
    side = int(min(height, width) * cropping)
    top, left = (height - side) // 2, (width - side) // 2
    return frame[top:height - top, left:width - left]


def check_frame(frame, index: int) -> np.ndarray:
    """Validate one driving frame (H x W x 3 uint8 RGB); ValueError says what is wrong and how to fix it."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"driving frame {index} is a {type(frame).__name__}, expected a numpy array H x W x 3 uint8 "
                         f"RGB (decode images/videos first, e.g. with rain.io or PIL)")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"driving frame {index} has shape {frame.shape}, expected H x W x 3 (RGB); "
                         f"convert grey or RGBA frames to RGB first")
    if frame.dtype != np.uint8:
        raise ValueError(f"driving frame {index} has dtype {frame.dtype}, expected uint8; convert [0, 1] floats with "
                         f"(frame * 255).round().astype(np.uint8)")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise ValueError(f"driving frame {index} is {frame.shape[1]}x{frame.shape[0]} pixels - too small to "
                         f"detect anything; check the video decoding")
    return frame


def face_pose_image(face: np.ndarray | None, size: tuple[int, int],
                    translations: Sequence[Translation] = STARTUP_TRANSLATIONS, *,
                    radius: int | None = None) -> np.ndarray:
    """Transform a normalised [68, 2] face and draw the RAIN dots at ``size`` (H, W); ``None`` = empty canvas."""
    height, width = size
    if face is None:
        return np.zeros((height, width, 3), dtype=np.uint8)
    return render_face_pose(apply_translations(face, translations), face, height, width, radius=radius)


@dataclass
class DrivingFrame:
    """Everything one frame produced (for nodes that also output keypoints or debug views)."""

    image: np.ndarray                  # the pose image, H x W x 3 uint8 RGB
    detection: PoseDetection           # raw detector output (pixels of the detection image)
    landmarks: np.ndarray | None       # what was drawn before the transform: [68, 2] (face) / [134, 2] (body)


class DrivingPoseRenderer:
    """Stateful per-stream renderer: call :meth:`process` (or :meth:`render`) frame after frame.

    ``translations``: the human->anime list (default the official start-up list; ``()`` draws the human face).
    ``missing``: "hold" (default, official) or "blank" for frames without a face/person; see ``stats``.
    ``smoothing``: a :class:`~rain.pose.smoothing.OneEuroFilter`, or None (default, = official output).
    ``crop``: None (stretch the whole frame, as ``pipeline_example``) or the demo's centre-square fraction
    (e.g. 0.9).  ``stats``: a :class:`PoseStats` to count into (else a fresh one, see :attr:`stats`).
    ``detector`` may be None when only :meth:`process_detection` is used.
    """

    def __init__(self, detector: Detector | None, *, task: str = "face", size: tuple[int, int] = (512, 512),
                 translations: Sequence[Translation] = STARTUP_TRANSLATIONS, missing: str = "hold",
                 smoothing: OneEuroFilter | None = None, crop: float | None = None,
                 stats: PoseStats | None = None):
        if task not in TASKS:
            raise ValueError(f"task={task!r}: choose 'face' (RAIN face dots) or 'body' (OpenPose-style skeleton)")
        height, width = (int(v) for v in size)
        if height < 1 or width < 1:
            raise ValueError(f"size={size}: the pose image needs a positive height and width")
        check_missing_policy(missing)
        if crop is not None:
            center_square_crop(np.zeros((2, 2, 3), np.uint8), crop)  # validates the fraction early
        self.detector, self.task, self.size = detector, task, (height, width)
        self.translations = tuple(translations)
        self.crop = crop
        tracker_cls = FaceLandmarkTracker if task == "face" else BodyKeypointTracker
        self.tracker = tracker_cls(missing=missing, smoothing=smoothing, stats=stats)
        self._frames_seen = 0

    @property
    def stats(self) -> PoseStats:
        return self.tracker.stats

    def reset(self) -> None:
        """Start a new stream (forget held landmarks, smoothing state and counts)."""
        self.tracker.reset()
        self._frames_seen = 0

    def _checked(self, frame: np.ndarray) -> np.ndarray:
        if self.detector is None:
            raise ValueError("no detector given: build one with DWPoseDetector.from_models_dir(<ComfyUI>/models) "
                             "(models: `python -m rain download --dwpose`)")
        check_frame(frame, self._frames_seen)
        self._frames_seen += 1
        return center_square_crop(frame, self.crop) if self.crop is not None else frame

    def process(self, frame: np.ndarray) -> DrivingFrame:
        """Detect, track and draw one RGB uint8 frame."""
        return self.process_detection(self.detector.detect(self._checked(frame)))

    def process_batch(self, frames: Sequence[np.ndarray]) -> list[DrivingFrame]:
        """:meth:`process` for several frames, detected as one batch when the detector supports it (the pose
        model then runs once for all of them); tracking stays frame by frame, in order."""
        checked = [self._checked(f) for f in frames]
        batch_detect = getattr(self.detector, "detect_batch", None)
        detections = batch_detect(checked) if batch_detect else [self.detector.detect(f) for f in checked]
        return [self.process_detection(d) for d in detections]

    def process_detection(self, detection: PoseDetection) -> DrivingFrame:
        """Track and draw an already detected frame (e.g. keypoints from a ``POSE_KEYPOINT`` input)."""
        landmarks = self.tracker.update(detection)
        if self.task == "face":
            image = face_pose_image(landmarks, self.size, self.translations)
        elif landmarks is None:
            image = np.zeros((*self.size, 3), dtype=np.uint8)
        else:
            image = render_wholebody_pose([landmarks], *self.size)
        return DrivingFrame(image, detection, landmarks)

    def render(self, frame: np.ndarray) -> np.ndarray:
        """:meth:`process` returning only the pose image."""
        return self.process(frame).image


def _is_frame_stack(frames) -> bool:
    return isinstance(frames, np.ndarray) and frames.ndim == 4


def pose_frames(frames: Iterable[np.ndarray], task: str = "face", detector: Detector | None = None,
                size: tuple[int, int] = (512, 512), translations: Sequence[Translation] = STARTUP_TRANSLATIONS,
                missing: str = "hold", smoothing: OneEuroFilter | None = None, crop: float | None = None,
                stats: PoseStats | None = None, batch_size: int = 1) -> Iterator[np.ndarray]:
    """Yield one ``size`` (H, W) uint8 RGB pose image per driving frame, lazily.

    ``frames``: any iterable of H x W x 3 uint8 RGB arrays (a video reader, a webcam generator, a list).
    ``stats``: pass a :class:`PoseStats` to receive the counts (frames without a face, held, blank) - it is
    updated as frames are consumed.  ``batch_size`` > 1 detects that many frames at once (faster on a GPU; at
    most that many frames are held).  Raises ValueError for an empty input or a malformed frame.
    Other arguments: see :class:`DrivingPoseRenderer`.
    """
    if frames is None or (isinstance(frames, (np.ndarray, str, bytes)) and not _is_frame_stack(frames)):
        raise ValueError("frames must be an iterable of H x W x 3 uint8 RGB arrays (a list, a video reader, a "
                         "generator, or an N x H x W x 3 array); got "
                         f"{type(frames).__name__}{getattr(frames, 'shape', '')}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    renderer = DrivingPoseRenderer(detector, task=task, size=size, translations=translations, missing=missing,
                                   smoothing=smoothing, crop=crop, stats=stats)
    produced = 0
    pending: list[np.ndarray] = []
    for frame in frames:
        pending.append(frame)
        if len(pending) == batch_size:
            for result in renderer.process_batch(pending):
                yield result.image
            produced += len(pending)
            pending = []
    if pending:
        for result in renderer.process_batch(pending):
            yield result.image
        produced += len(pending)
    if produced == 0:
        raise ValueError("no driving frames: the input yielded nothing - check the video path, its frame range "
                         "(start/limit) or that the webcam delivers frames")


def keypoint_pose_frames(pose_keypoint, task: str = "face", size: tuple[int, int] | None = None,
                         translations: Sequence[Translation] = STARTUP_TRANSLATIONS, missing: str = "hold",
                         smoothing: OneEuroFilter | None = None, stats: PoseStats | None = None
                         ) -> Iterator[np.ndarray]:
    """Pose images from a ComfyUI ``POSE_KEYPOINT`` value (any pose node's output) instead of driving frames:
    the largest person of each frame goes through the same tracking / transform / rendering.  ``size`` None =
    each frame's own canvas size."""
    from .keypoints import read_pose_keypoint, to_detection

    decoded = read_pose_keypoint(pose_keypoint)
    if not decoded:
        raise ValueError("POSE_KEYPOINT holds no frames - connect the keypoint output of a pose node")
    renderer = DrivingPoseRenderer(None, task=task, size=size or decoded[0].canvas_size,
                                   translations=translations, missing=missing, smoothing=smoothing, stats=stats)
    for frame in decoded:
        renderer.size = tuple(size or frame.canvas_size)
        yield renderer.process_detection(to_detection(frame)).image
