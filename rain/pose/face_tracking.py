"""Per-stream landmark state: the official per-coordinate fill-in, the missing-face policy and its counts.

Official behaviour (spec section 8): face points scoring < 0.3 are (-1, -1), then every missing coordinate takes
the previous frame's (already filled) value.  A frame with no face at all therefore repeats the last face - the
``"hold"`` policy.  ``"blank"`` instead renders an empty canvas for such frames (the fill-in memory is kept, so the
next partial face is still completed from the last full one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .dwpose import PoseDetection
from .landmark_transform import MISSING
from .smoothing import OneEuroFilter

MISSING_POLICIES = ("hold", "blank")


@dataclass
class PoseStats:
    """Counts over a stream, reported to the user (e.g. "12 of 300 frames had no face")."""

    frames: int = 0
    frames_without_person: int = 0   # the detector found no person box (the whole image was used)
    frames_without_face: int = 0     # no face point scored >= 0.3 (body task: no body point)
    frames_held: int = 0             # of those, drawn from the previous landmarks
    frames_blank: int = 0            # of those, drawn as an empty canvas (policy "blank", or nothing to hold yet)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.frames} frames: {self.frames_without_face} without a face/person "
                f"({self.frames_held} held, {self.frames_blank} blank), {self.frames_without_person} without a "
                f"person box")


def check_missing_policy(missing: str) -> str:
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing={missing!r}: choose 'hold' (repeat the last landmarks) or 'blank' "
                         f"(empty pose image) for frames without a face")
    return missing


def fill_from_previous(points: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """Replace every -1 coordinate by the previous frame's value (coordinate-wise, as the official code)."""
    if previous is None:
        return points.copy()
    return np.where(points == MISSING, previous, points)


class _Tracker:
    def __init__(self, missing: str = "hold", smoothing: OneEuroFilter | None = None,
                 score_threshold: float = 0.3, stats: PoseStats | None = None):
        self.missing = check_missing_policy(missing)
        self.smoothing = smoothing
        self.score_threshold = score_threshold
        self.stats = PoseStats() if stats is None else stats
        self._previous: np.ndarray | None = None

    def reset(self) -> None:
        """Start a new stream: forget the held landmarks, the filter state and the counts."""
        self._previous = None
        self.stats = PoseStats()
        if self.smoothing is not None:
            self.smoothing.reset()

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able values): held landmarks, smoothing memory and counts, for resuming exactly."""
        arrays = {} if self._previous is None else {"previous": self._previous}
        values = {"stats": self.stats.as_dict()}
        if self.smoothing is not None:
            smooth_arrays, values["smoothing"] = self.smoothing.state_dict()
            arrays.update({f"smoothing.{k}": v for k, v in smooth_arrays.items()})
        return arrays, values

    def load_state_dict(self, arrays: dict[str, np.ndarray], values: dict) -> None:
        previous = arrays.get("previous")
        self._previous = None if previous is None else np.array(previous)
        for name, count in values["stats"].items():
            setattr(self.stats, name, int(count))
        if self.smoothing is not None:
            self.smoothing.load_state_dict({k[len("smoothing."):]: v for k, v in arrays.items()
                                            if k.startswith("smoothing.")}, values.get("smoothing", {}))

    def _finish(self, points: np.ndarray, nothing_seen: bool, holdable: bool) -> np.ndarray | None:
        self.stats.frames += 1
        if nothing_seen:
            self.stats.frames_without_face += 1
            if self.missing == "blank" or not holdable:
                self.stats.frames_blank += 1
                return None
            self.stats.frames_held += 1
        if self.smoothing is not None:
            return self.smoothing(points, valid=points != MISSING)
        return points


class FaceLandmarkTracker(_Tracker):
    """Turns detections into the 68-point faces the renderer draws, frame after frame."""

    def update(self, detection: PoseDetection) -> np.ndarray | None:
        """The normalised [68, 2] face to draw for this frame (missing coordinates filled from the previous
        frame; points never seen stay -1), or ``None`` for an empty canvas (policy "blank")."""
        face = detection.face(self.score_threshold)
        if not detection.person_found:
            self.stats.frames_without_person += 1
        nothing_seen = bool(np.all(face == MISSING))
        filled = fill_from_previous(face, self._previous)
        self._previous = filled
        return self._finish(filled, nothing_seen, holdable=not np.all(filled == MISSING))


class BodyKeypointTracker(_Tracker):
    """Whole-body counterpart: no per-point fill-in (the official code has none for bodies); a frame without any
    visible body point is held or blanked as a whole."""

    def update(self, detection: PoseDetection) -> np.ndarray | None:
        """The normalised [134, 2] keypoints to draw (-1 = not visible), or ``None`` for an empty canvas."""
        points = detection.normalised(self.score_threshold)
        if not detection.person_found:
            self.stats.frames_without_person += 1
        nothing_seen = bool(np.all(points[:18] == MISSING))
        holdable = self._previous is not None
        if nothing_seen:
            points = self._previous if holdable else points
        else:
            self._previous = points
        return self._finish(points, nothing_seen, holdable)
