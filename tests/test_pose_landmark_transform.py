"""Human -> anime landmark transform (spec section 9) against the official outputs in golden/landmarks."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from rain.pose.landmark_transform import (
    DEMO_DEFAULTS, FUNCTION_DEFAULTS, SLIDER_RANGES, STARTUP_TRANSLATIONS, TRANSLATION_PRESETS, FaceCalibration,
    Translation, apply_translations, calibration_translations, missing_points, translations_from_dicts)
from rain.pose.render import render_face_pose

LISTS = ("startup", "param_function_defaults", "param_demo_defaults", "param_custom")


@pytest.fixture(scope="module")
def golden(golden_dir):
    folder = golden_dir / "landmarks"
    return load_file(str(folder / "landmarks.safetensors")), json.loads((folder / "landmarks.json").read_text())


def our_list(name, meta):
    if name == "startup":
        return list(STARTUP_TRANSLATIONS)
    if name == "param_function_defaults":
        return calibration_translations(FUNCTION_DEFAULTS)
    if name == "param_demo_defaults":
        return calibration_translations(DEMO_DEFAULTS)
    return calibration_translations(FaceCalibration.from_dict(meta["param_sets"]["param_custom"]))


@pytest.mark.parametrize("name", LISTS)
def test_translation_lists_equal_official_rows(golden, name):
    _, meta = golden
    assert [t.to_dict() for t in our_list(name, meta)] == meta["translation_lists"][name]


def test_demo_param_set_is_demo_defaults(golden):
    _, meta = golden
    assert FaceCalibration.from_dict(meta["param_sets"]["param_demo_defaults"]) == DEMO_DEFAULTS


def test_every_variant_and_list_matches_official(golden):
    tensors, meta = golden
    variants = sorted({k.split("__")[0] for k in tensors})
    assert len(variants) >= 8
    for variant in variants:
        face = tensors[f"{variant}__input"]
        for name in LISTS:
            expected = tensors[f"{variant}__{name}"]
            raw = apply_translations(face, our_list(name, meta), keep_missing=False)
            np.testing.assert_allclose(raw, expected, rtol=0, atol=1e-9, err_msg=f"{variant} / {name}")
            guarded = apply_translations(face, our_list(name, meta))
            gone = missing_points(face)
            np.testing.assert_allclose(guarded[~gone], expected[~gone], rtol=0, atol=1e-9)
            assert np.all(guarded[gone] == -1.0)


def test_input_is_not_modified():
    face = np.random.default_rng(0).uniform(0.2, 0.8, (68, 2))
    before = face.copy()
    apply_translations(face, STARTUP_TRANSLATIONS)
    assert np.array_equal(face, before)


def test_missing_point_moved_positive_is_not_drawn():
    # Pitfall 19: a shift of +2 would carry (-1, -1) to (1, 1) -> int(1 * 128) > 0 would be drawn officially.
    face = np.full((68, 2), 0.5)
    face[8] = -1.0
    shove = [Translation(8, 9, horizontal_transition=1.2, vertical_transition=1.2)]
    assert np.all(apply_translations(face, shove, keep_missing=False)[8] > 0)
    moved = apply_translations(face, shove)
    assert np.all(moved[8] == -1.0)
    plain = render_face_pose(face, face, 256, 256, radius=3)  # pattern [8] skipped: its point is missing
    assert np.array_equal(render_face_pose(moved, face, 256, 256, radius=3), plain)


def test_presets_and_ranges():
    assert TRANSLATION_PRESETS["startup"] == STARTUP_TRANSLATIONS
    assert len(TRANSLATION_PRESETS["calibration"]) == 17
    assert TRANSLATION_PRESETS["none"] == ()
    assert set(SLIDER_RANGES) == set(DEMO_DEFAULTS.to_dict())
    for name, (low, high, step) in SLIDER_RANGES.items():
        assert low < high and step == 0.01
        assert low <= getattr(DEMO_DEFAULTS, name) <= high
        assert low <= getattr(FUNCTION_DEFAULTS, name) <= high
    assert (FUNCTION_DEFAULTS.mouth_vertical_correction, FUNCTION_DEFAULTS.nose_horizontal_correction,
            FUNCTION_DEFAULTS.nose_vertical_correction) == (0.0, 0.0, 0.0)


def test_translation_data_round_trip_and_validation():
    rows = [t.to_dict() for t in STARTUP_TRANSLATIONS]
    assert tuple(translations_from_dicts(json.loads(json.dumps(rows)))) == STARTUP_TRANSLATIONS
    with pytest.raises(ValueError, match="unknown"):
        Translation.from_dict({"lindex": 0, "rindex": 5, "scale": 2})
    with pytest.raises(ValueError, match="slice"):
        Translation(10, 70)
    with pytest.raises(ValueError, match="pair"):
        Translation(0, 5, xaxis=(1, 2, 3))
    with pytest.raises(ValueError, match="unknown calibration"):
        FaceCalibration.from_dict({"eye_size": 2})
    with pytest.raises(ValueError, match="68, 2"):
        apply_translations(np.zeros((70, 2)), STARTUP_TRANSLATIONS)
