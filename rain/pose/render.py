"""Pose images: the RAIN face-dot renderer (spec section 10) and an OpenPose-style whole-body renderer.

Canvases are ``H x W x 3`` uint8 **RGB** and colours are (R, G, B) written as-is (pitfall 17: OpenCV only *calls*
its order BGR; it writes whatever tuple it is given).  Coordinates are normalised ([0, 1], x right, y down);
a point is mapped to the pixel ``(int(x * W), int(y * H))`` (truncation, as the official renderer does).
"""

from __future__ import annotations

import colorsys
import math
from typing import Sequence

import cv2
import numpy as np

from .landmark_transform import missing_points

# A dot is drawn only when both truncated pixel coordinates exceed this (so column/row 0 and negatives are skipped).
_DRAW_THRESHOLD = 0.01

#: The 26 RAIN dots: (indices whose mean is the dot centre, RGB colour).
FACE_DOT_PATTERNS: tuple[tuple[tuple[int, ...], tuple[int, int, int]], ...] = (
    *(((pts, (0, 255, 255)) for pts in ((1, 2), (4,), (8,), (12,), (15, 14)))),          # jaw
    *(((pts, (128, 0, 255)) for pts in ((17,), (18, 19), (20,)))),                       # brow 17-21
    *(((pts, (255, 0, 128)) for pts in ((23,), (24, 25), (26,)))),                       # brow 22-26
    *(((pts, (0, 0, 255)) for pts in ((60,), (62,), (64,), (66,)))),                     # inner mouth
    ((33, 30), (255, 0, 255)),                                                           # nose
    *(((pts, (255, 128, 128)) for pts in ((36, 37), (37, 38), (38, 39), (40, 39), (41,)))),  # eye 36-41
    *(((pts, (128, 128, 255)) for pts in ((42, 43), (43, 44), (44, 45), (46,), (47, 42)))),  # eye 42-47
)


def face_dot_radius(untransformed_landmarks: np.ndarray) -> int:
    """Dot radius in pixels from the *untransformed* face: ``max(int(3 * |p27 - p8| / 0.3), 1)``.

    Independent of the canvas size, as in the official renderer.  A missing chin (8) or nose bridge (27) makes it
    huge (golden README 7.10); in a stream the fill-in keeps both once seen, so only faces rendered before these
    points were ever detected are affected - pass ``radius=`` to the renderer to override.
    """
    face = np.asarray(untransformed_landmarks, dtype=np.float64)
    scale = np.linalg.norm(face[27] - face[8]) / 0.3
    return max(int(3 * scale), 1)


def render_face_pose(landmarks: np.ndarray, untransformed_landmarks: np.ndarray | None, height: int, width: int,
                     *, radius: int | None = None,
                     patterns: Sequence[tuple[Sequence[int], tuple[int, int, int]]] = FACE_DOT_PATTERNS,
                     skip_missing: bool = True, canvas: np.ndarray | None = None) -> np.ndarray:
    """Draw the RAIN face dots and return an ``height x width x 3`` uint8 RGB image.

    ``landmarks``: the transformed ``[68, 2]`` face (normalised).  ``untransformed_landmarks``: the same face before
    the translations, which sets the dot radius (pitfall 16); ``radius`` overrides it.
    ``skip_missing``: a dot whose pattern uses a point that is exactly (-1, -1) is not drawn - the guard for
    pitfall 19 (with :func:`apply_translations` ``keep_missing=True`` the missing points stay -1).  When no point is
    missing this is exactly the official renderer.
    """
    face = np.asarray(landmarks, dtype=np.float64)
    if face.shape != (68, 2):
        raise ValueError(f"landmarks must have shape (68, 2), got {face.shape}")
    if radius is None:
        if untransformed_landmarks is None:
            raise ValueError("render_face_pose needs untransformed_landmarks (for the dot radius) or radius=")
        radius = face_dot_radius(untransformed_landmarks)
    if canvas is None:
        canvas = np.zeros((int(height), int(width), 3), dtype=np.uint8)
    gone = missing_points(face) if skip_missing else None
    for indices, colour in patterns:
        idx = list(indices)
        if gone is not None and gone[idx].any():
            continue
        x, y = face[idx].mean(axis=0)
        px, py = int(x * width), int(y * height)
        if px > _DRAW_THRESHOLD and py > _DRAW_THRESHOLD:
            cv2.circle(canvas, (px, py), int(radius), tuple(int(c) for c in colour), thickness=-1)
    return canvas


# --- OpenPose-style whole body -------------------------------------------------------------------------------
# The well-known ControlNet/OpenPose colour scheme: 18 body joints in OpenPose order, 17 limbs, limb sticks at 60 %
# of the joint colour, hand bones coloured around the HSV hue circle, face points as small white dots.

#: Limbs as (joint a, joint b), 0-based OpenPose-18 indices (neck=1, r-shoulder=2, ..., l-ear=17).
BODY_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)

#: One RGB colour per body joint; limb k uses colour k.
BODY_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

#: 20 hand bones over the 21 hand points (wrist 0, then 4 points per finger).
HAND_BONES: tuple[tuple[int, int], ...] = tuple(
    (0 if k == 0 else base + k - 1, base + k) for base in (1, 5, 9, 13, 17) for k in range(4))

HAND_BONE_COLOURS: tuple[tuple[int, int, int], ...] = tuple(
    tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(i / len(HAND_BONES), 1.0, 1.0)) for i in range(len(HAND_BONES)))

_STICK_HALF_WIDTH = 4
_JOINT_RADIUS = 4
_HAND_POINT_COLOUR = (0, 0, 255)
_FACE_POINT_COLOUR = (255, 255, 255)
_FACE_POINT_RADIUS = 3


def _visible(points: np.ndarray) -> np.ndarray:
    # Missing points are (-1, -1); anything negative cannot be drawn anyway.
    return np.all(points >= 0, axis=-1)


def _to_pixels(points: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.stack([points[:, 0] * width, points[:, 1] * height], axis=-1)


def draw_body(canvas: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Draw 18 OpenPose body joints (normalised, -1 = missing) as coloured sticks and dots, in place."""
    height, width = canvas.shape[:2]
    visible = _visible(body)
    px = _to_pixels(body, height, width)
    for (a, b), colour in zip(BODY_LIMBS, BODY_COLOURS):
        if not (visible[a] and visible[b]):
            continue
        (xa, ya), (xb, yb) = px[a], px[b]
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        centre = (int((xa + xb) / 2), int((ya + yb) / 2))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), _STICK_HALF_WIDTH), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, tuple(int(c * 0.6) for c in colour))
    for joint, colour in enumerate(BODY_COLOURS):
        if visible[joint]:
            cv2.circle(canvas, (int(px[joint, 0]), int(px[joint, 1])), _JOINT_RADIUS, colour, thickness=-1)
    return canvas


def draw_hand(canvas: np.ndarray, hand: np.ndarray) -> np.ndarray:
    """Draw one 21-point hand (normalised, -1 = missing), in place."""
    height, width = canvas.shape[:2]
    visible = _visible(hand)
    px = _to_pixels(hand, height, width).astype(np.int64)  # truncation toward zero for the visible (>= 0) points
    drawable = visible & np.all(px > _DRAW_THRESHOLD, axis=-1)
    for (a, b), colour in zip(HAND_BONES, HAND_BONE_COLOURS):
        if drawable[a] and drawable[b]:
            cv2.line(canvas, (int(px[a, 0]), int(px[a, 1])), (int(px[b, 0]), int(px[b, 1])), colour, thickness=2)
    for i in np.flatnonzero(drawable):
        cv2.circle(canvas, (int(px[i, 0]), int(px[i, 1])), _JOINT_RADIUS, _HAND_POINT_COLOUR, thickness=-1)
    return canvas


def draw_face_points(canvas: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Draw face points (any count, normalised, -1 = missing) as small white dots, in place."""
    height, width = canvas.shape[:2]
    visible = _visible(face)
    px = _to_pixels(face, height, width).astype(np.int64)
    for i in np.flatnonzero(visible & np.all(px > _DRAW_THRESHOLD, axis=-1)):
        cv2.circle(canvas, (int(px[i, 0]), int(px[i, 1])), _FACE_POINT_RADIUS, _FACE_POINT_COLOUR, thickness=-1)
    return canvas


def render_wholebody_pose(people: Sequence[np.ndarray], height: int, width: int, *, draw_body_parts: bool = True,
                          draw_hands: bool = True, draw_face: bool = True) -> np.ndarray:
    """OpenPose-style image of whole-body keypoints.

    ``people``: one ``[134, 2]`` normalised array per person in the :mod:`rain.pose.skeleton` layout
    (-1 = missing).  Body sticks/joints first, then hands, then face points, person by person.
    """
    from .skeleton import BODY, FACE, LEFT_HAND, RIGHT_HAND

    canvas = np.zeros((int(height), int(width), 3), dtype=np.uint8)
    for points in people:
        points = np.asarray(points, dtype=np.float64)
        if draw_body_parts:
            draw_body(canvas, points[BODY])
        if draw_hands:
            draw_hand(canvas, points[LEFT_HAND])
            draw_hand(canvas, points[RIGHT_HAND])
        if draw_face:
            draw_face_points(canvas, points[FACE])
    return canvas
