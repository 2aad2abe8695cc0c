"""A synthetic, frontal 68-point face (iBUG order, normalised, x right / y down) for calibration previews
before any driving frame has been seen. Built from simple curves, not from anyone's face."""

from __future__ import annotations

import math

import numpy as np


def _arc(cx, cy, rx, ry, start, stop, count):
    angles = np.linspace(start, stop, count)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)


def _eye(cx, cy, half_width, half_height):
    """6 points clockwise on screen from the left corner: left, two upper, right, two lower (iBUG: 36-41 start at
    the outer corner of the image-left eye, 42-47 at the inner corner of the image-right eye - both the left)."""
    offset = half_width * 0.45
    return np.array([(cx - half_width, cy), (cx - offset, cy - half_height), (cx + offset, cy - half_height),
                     (cx + half_width, cy), (cx + offset, cy + half_height), (cx - offset, cy + half_height)])


def sample_face() -> np.ndarray:
    """[68, 2] float64 in [0, 1]."""
    cx = 0.5
    t = np.linspace(0.0, math.pi, 17)                           # 0-16: ear level down round the chin (8)
    jaw = np.stack([cx - 0.22 * np.cos(t), 0.44 + 0.285 * np.sin(t)], axis=1)
    brow_left = _arc(0.39, 0.38, 0.075, 0.025, math.pi, 2 * math.pi, 5)    # 17-21, arching up
    brow_right = _arc(0.61, 0.38, 0.075, 0.025, math.pi, 2 * math.pi, 5)   # 22-26
    bridge = np.stack([np.full(4, cx), np.linspace(0.43, 0.55, 4)], axis=1)  # 27-30 down to the tip
    nostrils = np.stack([np.linspace(cx - 0.04, cx + 0.04, 5),
                         0.585 + np.array([0.0, 0.008, 0.012, 0.008, 0.0])], axis=1)  # 31-35
    eye_left = _eye(0.40, 0.445, 0.045, 0.013)            # 36-41
    eye_right = _eye(0.60, 0.445, 0.045, 0.013)          # 42-47
    mouth_cy = 0.665
    outer_top = np.stack([np.linspace(cx - 0.075, cx + 0.075, 7),
                          mouth_cy - np.array([0.0, 0.018, 0.028, 0.024, 0.028, 0.018, 0.0])], axis=1)  # 48-54
    outer_bottom = np.stack([np.linspace(cx + 0.055, cx - 0.055, 5),
                             mouth_cy + np.array([0.022, 0.032, 0.035, 0.032, 0.022])], axis=1)        # 55-59
    inner_top = np.stack([np.linspace(cx - 0.06, cx + 0.06, 5),
                          mouth_cy - np.array([0.0, 0.008, 0.010, 0.008, 0.0])], axis=1)               # 60-64
    inner_bottom = np.stack([np.linspace(cx + 0.035, cx - 0.035, 3), np.full(3, mouth_cy + 0.012)], axis=1)  # 65-67
    face = np.concatenate([jaw, brow_left, brow_right, bridge, nostrils, eye_left, eye_right, outer_top,
                           outer_bottom, inner_top, inner_bottom])
    assert face.shape == (68, 2)
    return face


SAMPLE_FACE = sample_face()
