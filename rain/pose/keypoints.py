"""ComfyUI ``POSE_KEYPOINT`` interop: the OpenPose-style JSON that comfyui_controlnet_aux produces and consumes.

A ``POSE_KEYPOINT`` value is a list with one dict per image::

    {"people": [{"pose_keypoints_2d": [x, y, c] * 18,        # OpenPose-18 body order
                 "face_keypoints_2d": [x, y, c] * 70,        # 68 iBUG points + the two body eyes
                 "hand_left_keypoints_2d": [x, y, c] * 21,
                 "hand_right_keypoints_2d": [x, y, c] * 21}, ...],
     "canvas_height": H, "canvas_width": W}

Conventions, as comfyui_controlnet_aux writes them: x, y in **pixels** of the canvas; a visible point has
c = 1.0 and a missing one is ``[0, 0, 0]`` (its reader drops points with c < 1, so real scores are not written);
a part with no visible point may be ``None``.  Other producers write normalised coordinates; the reader
recognises them (every visible coordinate within [0, 1]), as the aux renderers do.  Feet (DWPose points 18-23)
have no slot in this format and are lost on the way out.

Inside :mod:`rain.pose` a person is a ``[134, 2]`` normalised array in the :mod:`skeleton` layout, (-1, -1) = missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .skeleton import BODY, BODY_LEFT_EYE, BODY_RIGHT_EYE, FACE, LEFT_HAND, RIGHT_HAND, WHOLEBODY_POINTS

_PARTS = (("pose_keypoints_2d", BODY), ("face_keypoints_2d", FACE),
          ("hand_left_keypoints_2d", LEFT_HAND), ("hand_right_keypoints_2d", RIGHT_HAND))
COORDINATE_MODES = ("auto", "pixels", "normalized")


@dataclass
class PoseKeypointFrame:
    """One decoded ``POSE_KEYPOINT`` entry."""

    people: list[np.ndarray]          # each [134, 2] normalised, -1 = missing
    canvas_size: tuple[int, int]      # (H, W)


def _visible(points: np.ndarray) -> np.ndarray:
    return np.all(points >= 0, axis=-1)


def _flatten(points: np.ndarray, height: int, width: int) -> list[float]:
    out: list[float] = []
    for (x, y), seen in zip(points, _visible(points)):
        out += [float(x * width), float(y * height), 1.0] if seen else [0.0, 0.0, 0.0]
    return out


def person_to_openpose(points: np.ndarray, height: int, width: int) -> dict:
    """One ``[134, 2]`` normalised person -> an OpenPose ``people`` entry in pixels (aux conventions)."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (WHOLEBODY_POINTS, 2):
        raise ValueError(f"a person must be a (134, 2) array in the rain.pose.skeleton layout, got {points.shape}")
    body = points[BODY]
    face = np.concatenate([points[FACE], body[[BODY_RIGHT_EYE, BODY_LEFT_EYE]]])
    entry: dict = {"pose_keypoints_2d": _flatten(body, height, width)}
    for key, part in (("face_keypoints_2d", face), ("hand_left_keypoints_2d", points[LEFT_HAND]),
                      ("hand_right_keypoints_2d", points[RIGHT_HAND])):
        entry[key] = _flatten(part, height, width) if _visible(part).any() else None
    return entry


def to_pose_keypoint_frame(people: Sequence[np.ndarray], height: int, width: int) -> dict:
    """People (normalised ``[134, 2]`` arrays) on an ``height x width`` canvas -> one ``POSE_KEYPOINT`` dict."""
    return {"people": [person_to_openpose(p, height, width) for p in people],
            "canvas_height": int(height), "canvas_width": int(width)}


def detections_to_pose_keypoint(detections: Iterable, threshold: float = 0.3) -> list[dict]:
    """:class:`~rain.pose.dwpose.PoseDetection` objects -> a ``POSE_KEYPOINT`` list (one person per frame, or
    none when the detector found nobody); canvas = the detection image."""
    frames = []
    for det in detections:
        height, width = det.image_size
        people = [det.normalised(threshold)] if det.person_found else []
        frames.append(to_pose_keypoint_frame(people, height, width))
    return frames


def load_pose_keypoint(data) -> list[dict]:
    """Accept what arrives on a ``POSE_KEYPOINT`` link or from a file: a list of frame dicts, one dict, or JSON
    text of either.  Raises ValueError naming what is wrong."""
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValueError(f"POSE_KEYPOINT text is not valid JSON ({exc}); expected the OpenPose-style list that "
                             f"DWPose/OpenPose preprocessors output") from exc
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(f, dict) for f in data):
        raise ValueError(f"POSE_KEYPOINT must be a list of dicts with 'people', 'canvas_height' and "
                         f"'canvas_width'; got {type(data).__name__}")
    for i, frame in enumerate(data):
        missing = [k for k in ("canvas_height", "canvas_width") if k not in frame]
        if missing:
            raise ValueError(f"POSE_KEYPOINT frame {i} lacks {missing}; it cannot be placed on a canvas")
    return data


def _triples(values, count: int, key: str) -> np.ndarray:
    if not values:
        return np.zeros((count, 3))
    arr = np.asarray(values, dtype=np.float64)
    if arr.size % 3:
        raise ValueError(f"{key} has {arr.size} numbers; expected (x, y, confidence) triples")
    arr = arr.reshape(-1, 3)
    if len(arr) < count:  # tolerate shorter lists (e.g. a 68-point face without the eye padding)
        arr = np.concatenate([arr, np.zeros((count - len(arr), 3))])
    return arr[:count]


def _is_normalised(parts: list[np.ndarray]) -> bool:
    seen = np.concatenate([p[p[:, 2] > 0, :2] for p in parts]) if parts else np.zeros((0, 2))
    return len(seen) > 0 and bool(np.all(np.abs(seen) <= 1.0))


def person_from_openpose(entry: dict, height: int, width: int, coordinates: str = "auto") -> np.ndarray:
    """An OpenPose ``people`` entry -> ``[134, 2]`` normalised (-1 = missing, i.e. confidence <= 0)."""
    if coordinates not in COORDINATE_MODES:
        raise ValueError(f"coordinates={coordinates!r}: choose one of {COORDINATE_MODES}")
    parts = [(_triples(entry.get(key), part.stop - part.start, key), part) for key, part in _PARTS]
    normalised = coordinates == "normalized" or (coordinates == "auto" and _is_normalised([p for p, _ in parts]))
    person = np.full((WHOLEBODY_POINTS, 2), -1.0)
    for triples, part in parts:
        seen = triples[:, 2] > 0
        xy = triples[:, :2] if normalised else triples[:, :2] / np.array([float(width), float(height)])
        block = person[part]
        block[seen] = xy[seen]
        person[part] = block
    return person


def read_pose_keypoint(data, coordinates: str = "auto") -> list[PoseKeypointFrame]:
    """Decode a whole ``POSE_KEYPOINT`` value (see :func:`load_pose_keypoint` for accepted forms)."""
    frames = []
    for frame in load_pose_keypoint(data):
        height, width = int(frame["canvas_height"]), int(frame["canvas_width"])
        people = [person_from_openpose(p, height, width, coordinates) for p in frame.get("people") or []]
        frames.append(PoseKeypointFrame(people, (height, width)))
    return frames


def write_pose_keypoint(frames: Iterable[PoseKeypointFrame]) -> list[dict]:
    """Inverse of :func:`read_pose_keypoint` (pixels, aux conventions)."""
    return [to_pose_keypoint_frame(f.people, *f.canvas_size) for f in frames]


def largest_person(frame: PoseKeypointFrame) -> int | None:
    """Index of the person whose visible points span the largest box (RAIN drives with one face: as with the
    detector, the largest person wins); ``None`` when nobody has a visible point."""
    best, best_area = None, -1.0
    for index, person in enumerate(frame.people):
        seen = person[_visible(person)]
        if len(seen) == 0:
            continue
        extent = seen.max(axis=0) - seen.min(axis=0)
        area = float(extent[0] * extent[1])
        if area > best_area:
            best, best_area = index, area
    return best


def face_landmarks(frame: PoseKeypointFrame, person: int | None = None) -> np.ndarray:
    """The 68-point normalised face of one person (default: :func:`largest_person`); all -1 when there is nobody
    - ready for :func:`rain.pose.landmark_transform.apply_translations` and the face renderer."""
    if person is None:
        person = largest_person(frame)
    if person is None or person >= len(frame.people):
        return np.full((68, 2), -1.0)
    return frame.people[person][FACE].copy()


def to_detection(frame: PoseKeypointFrame, person: int | None = None):
    """One person of a decoded frame as a :class:`~rain.pose.dwpose.PoseDetection` (pixels of the canvas, score
    1 for visible points and 0 for missing ones, box = extent of the visible points), so keypoints from any
    ComfyUI pose node can go through the same tracking and rendering as RAIN's own detections."""
    from .dwpose import PoseDetection

    height, width = frame.canvas_size
    if person is None:
        person = largest_person(frame)
    if person is None or person >= len(frame.people):
        return PoseDetection(np.zeros((WHOLEBODY_POINTS, 2)), np.zeros(WHOLEBODY_POINTS), None,
                             np.zeros((0, 4)), (height, width))
    points = frame.people[person]
    seen = _visible(points)
    pixels = np.where(seen[:, None], points * np.array([float(width), float(height)]), 0.0)
    box = np.concatenate([pixels[seen].min(axis=0), pixels[seen].max(axis=0)]) if seen.any() else None
    boxes = box[None] if box is not None else np.zeros((0, 4))
    return PoseDetection(pixels, seen.astype(np.float64), box, boxes, (height, width))
