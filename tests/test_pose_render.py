"""Pose renderers: RAIN face dots pixel-exact against the official renders; whole-body skeleton sanity."""

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from rain.pose.landmark_transform import STARTUP_TRANSLATIONS, apply_translations
from rain.pose.render import (BODY_COLOURS, FACE_DOT_PATTERNS, face_dot_radius, render_face_pose,
                              render_wholebody_pose)
from rain.pose.skeleton import FACE, LEFT_HAND


def png(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def golden(golden_dir):
    folder = golden_dir / "landmarks"
    return golden_dir, load_file(str(folder / "landmarks.safetensors")), json.loads(
        (folder / "landmarks.json").read_text())


def test_patterns_are_the_official_26(golden):
    _, _, meta = golden
    assert [[list(p), list(c)] for p, c in FACE_DOT_PATTERNS] == meta["patterns"]


def test_every_golden_render_is_pixel_exact(golden):
    root, tensors, meta = golden
    assert len(meta["renders"]) >= 1
    for key, info in meta["renders"].items():
        variant = key.split("__")[0]
        expected = png(root / info["png"])
        ours = render_face_pose(tensors[key], tensors[f"{variant}__input"], *expected.shape[:2])
        assert ours.dtype == np.uint8 and ours.shape == expected.shape
        assert np.array_equal(ours, expected), key
        radii = {c["radius"] for c in info["circles"]}
        assert radii == {face_dot_radius(tensors[f"{variant}__input"])}


def test_non_square_render(golden):
    root, tensors, _ = golden
    expected = png(root / "landmarks" / "render__frontal__startup__384x640.png")
    assert expected.shape == (384, 640, 3)
    assert np.array_equal(render_face_pose(tensors["frontal__startup"], tensors["frontal__input"], 384, 640),
                          expected)


def test_stream_frames_render_at_their_own_size(golden_dir):
    # The stream pose frames (128x128) were drawn from these landmarks with the start-up list.
    landmarks = load_file(str(golden_dir / "stream" / "stream.safetensors"))["landmarks_per_frame"]
    for index in range(len(landmarks)):
        expected = png(golden_dir / "stream" / "pose" / f"frame_{index:03d}.png")
        face = landmarks[index]
        ours = render_face_pose(apply_translations(face, STARTUP_TRANSLATIONS), face, *expected.shape[:2])
        assert np.array_equal(ours, expected), index


def test_radius_override_and_missing_source():
    face = np.full((68, 2), 0.5)
    face[27], face[8] = (0.5, 0.3), (0.5, 0.6)
    assert face_dot_radius(face) == 3
    big = render_face_pose(face, None, 64, 64, radius=6)
    small = render_face_pose(face, face, 64, 64)
    assert (big > 0).sum() > (small > 0).sum() > 0
    with pytest.raises(ValueError, match="radius"):
        render_face_pose(face, None, 64, 64)


def test_wholebody_renderer_draws_parts_in_their_colours():
    person = np.full((134, 2), -1.0)
    person[0] = (0.5, 0.2)     # nose
    person[1] = (0.5, 0.35)    # neck
    person[FACE] = np.stack([np.linspace(0.4, 0.6, 68), np.full(68, 0.15)], axis=1)
    hand = np.stack([np.linspace(0.2, 0.3, 21), np.linspace(0.6, 0.7, 21)], axis=1)
    person[LEFT_HAND] = hand
    image = render_wholebody_pose([person], 200, 100)
    assert image.shape == (200, 100, 3) and image.dtype == np.uint8
    assert tuple(image[int(0.35 * 200), 50]) == BODY_COLOURS[1]           # neck joint dot
    assert tuple(image[int(0.15 * 200), 50]) == (255, 255, 255)           # a face point
    assert tuple(image[int(0.6 * 200), int(0.2 * 100)]) == (0, 0, 255)    # hand wrist dot
    # neck-nose stick at 60 % of its colour, between the two joints
    assert tuple(image[int(0.275 * 200), 50]) == tuple(int(c * 0.6) for c in BODY_COLOURS[12])
    body_only = render_wholebody_pose([person], 200, 100, draw_hands=False, draw_face=False)
    assert tuple(body_only[int(0.15 * 200), 50]) == (0, 0, 0)
    assert not render_wholebody_pose([np.full((134, 2), -1.0)], 50, 50).any()
