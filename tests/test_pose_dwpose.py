"""DWPose detection (spec section 8) against golden/dwpose, end to end on tiny ONNX stand-in models."""

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from rain.pose import wholebody, yolox
from rain.pose.dwpose import DWPoseDetector, OnnxModel, StageTimes, default_providers
from rain.pose.face_tracking import FaceLandmarkTracker
from rain.pose.landmark_transform import STARTUP_TRANSLATIONS, apply_translations
from rain.pose.model_files import (DWPOSE_ALTERNATIVES, DWPOSE_FILES, DWPoseModelsNotFound, hub_url,
                                   locate_dwpose_models)
from rain.pose.render import render_face_pose
from rain.pose.stand_in_models import dwpose_stand_in, yolox_stand_in

CROPS = ("main_box", "fixed_box", "no_box_whole_image")


def png(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def gold(golden_dir):
    folder = golden_dir / "dwpose"
    return folder, load_file(str(folder / "dwpose.safetensors")), json.loads((folder / "dwpose.json").read_text())


@pytest.fixture(scope="module")
def image512(gold):
    return png(gold[0] / "detector_image_512.png")


def golden_yolox_raw(t):
    raw = np.zeros((8400, 85), np.float32)
    raw[t["yolox_rows_index"]] = t["yolox_rows_values"]  # two rows share an index: the later one wins, as stored
    return raw


def pose_size(t):
    """(w, h) of the pose model input, from the stored crop [3, h, w]."""
    _, height, width = t["crop_main_box"].shape
    return width, height


def detector_ratio(image):
    return min(640 / image.shape[0], 640 / image.shape[1])


def call1_simcc(t):
    rows = t["simcc_frame2_scaled_rows"]
    x, y = t["simcc_x"].copy(), t["simcc_y"].copy()
    x[0, rows] *= np.float32(0.2)
    y[0, rows] *= np.float32(0.2)
    return x, y


# --- detector ----------------------------------------------------------------------------------------------------

def test_letterbox_matches_official_inputs(gold, image512):
    folder, _, meta = gold
    canvas, ratio = yolox.letterbox(image512)
    assert ratio == meta["ratios"]["512"] and np.array_equal(canvas, png(folder / "detector_input_from_512.png"))
    canvas, ratio = yolox.letterbox(png(next(folder.glob("webcam_frame_*.png"))))
    assert ratio == meta["ratios"]["raw_frame"]
    assert np.array_equal(canvas, png(folder / "detector_input_from_raw_frame.png"))
    net = yolox.to_network_input(canvas)
    assert net.shape == (1, 3, 640, 640) and net.dtype == np.float32 and net[0, 0, -1, -1] == 114.0


def test_decode_and_nms_match_official_boxes(gold, image512):
    _, t, _ = gold
    boxes = yolox.person_boxes(golden_yolox_raw(t), (640, 640), detector_ratio(image512))
    np.testing.assert_array_equal(boxes, t["detector_boxes"])
    np.testing.assert_array_equal(yolox.largest_box(boxes), t["crop_main_box_box"])


def test_nms_plus_one_convention_and_class_awareness():
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 9], [5, 0, 14, 9]], np.float32)
    # +1 areas: 100 each; overlap of boxes 0 and 2 is 5x10 = 50 -> IoU 50/150 = 0.333 (kept at threshold 0.45)
    assert yolox.nms(boxes, np.array([0.9, 0.8, 0.7], np.float32)) == [0, 2]
    scores = np.array([[0.9, 0.0], [0.0, 0.8], [0.05, 0.0]], np.float32)
    dets = yolox.class_aware_nms(boxes, scores)
    assert dets[:, 5].tolist() == [0.0, 1.0]  # same box survives once per class; 0.05 fails the pre-filter
    assert yolox.class_aware_nms(boxes, np.zeros((3, 2), np.float32)).shape == (0, 6)


# --- pose model pre/post -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CROPS)
def test_crops_match_official(gold, image512, name):
    _, t, _ = gold
    box = None if name == "no_box_whole_image" else t[f"crop_{name}_box"]
    crop, centre, scale = wholebody.crop_for_pose(image512, box, pose_size(t))
    assert crop.dtype == np.float32 and crop.shape == t[f"crop_{name}"].shape
    np.testing.assert_allclose(crop, t[f"crop_{name}"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(centre, t[f"crop_{name}_center"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(scale, t[f"crop_{name}_scale"], rtol=0, atol=1e-9)


def test_simcc_decode_matches_official(gold):
    _, t, _ = gold
    locations, scores = wholebody.decode_simcc(t["simcc_x"], t["simcc_y"])
    np.testing.assert_array_equal(scores, t["decoded_scores"])
    points = wholebody.back_project(locations[0], t["crop_main_box_center"], t["crop_main_box_scale"], pose_size(t))
    np.testing.assert_allclose(points, t["decoded_keypoints"][0], rtol=0, atol=1e-9)
    # keypoints 100/101: non-positive maxima -> -1 before the /2, back-projected like any other point
    non_positive = np.flatnonzero(t["decoded_scores"][0] <= 0)
    assert len(non_positive) and np.all(locations[0, non_positive] == -0.5)


def test_openpose_layout_matches_official(gold):
    _, t, _ = gold
    points, scores = t["decoded_keypoints"], t["decoded_scores"]
    keypoints, new_scores = wholebody.to_openpose_layout(points, scores)
    np.testing.assert_allclose(keypoints, t["wholebody_keypoints_call0"], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(new_scores, t["wholebody_scores_call0"])


# --- the runner on stand-in ONNX models --------------------------------------------------------------------------

def make_detector(raw, simcc_x=None, simcc_y=None, detection_size=(512, 512), **kwargs):
    if simcc_x is not None:  # the stand-in's input size follows the SimCC widths (2 bins per pixel)
        kwargs.setdefault("input_size", (simcc_y.shape[-1] // 2, simcc_x.shape[-1] // 2))
    return DWPoseDetector.from_files(yolox_stand_in(raw), dwpose_stand_in(simcc_x, simcc_y, **kwargs),
                                     providers=["CPUExecutionProvider"], detection_size=detection_size)


def test_two_official_detector_calls_end_to_end(gold, image512):
    folder, t, _ = gold
    raw = golden_yolox_raw(t)
    tracker = FaceLandmarkTracker()
    for call, simcc in enumerate([(t["simcc_x"], t["simcc_y"]), call1_simcc(t)]):
        detection = make_detector(raw, *simcc, detection_size=image512.shape[:2]).detect(image512)
        np.testing.assert_allclose(detection.keypoints, t[f"wholebody_keypoints_call{call}"][0], rtol=0, atol=1e-9)
        np.testing.assert_array_equal(detection.scores, t[f"wholebody_scores_call{call}"][0])
        np.testing.assert_array_equal(detection.box, t["crop_main_box_box"])
        face = tracker.update(detection)
        np.testing.assert_allclose(face, t[f"faces_call{call}"][0], rtol=0, atol=1e-9)
        expected = png(folder / f"detector_call{call}_pose_canvas.png")
        canvas = render_face_pose(apply_translations(face, STARTUP_TRANSLATIONS), face, *expected.shape[:2])
        assert np.array_equal(canvas, expected), call
    assert tracker.stats.frames == 2 and tracker.stats.frames_without_face == 0


def test_pose_input_fed_to_the_model(gold, image512):
    _, t, _ = gold
    np.testing.assert_array_equal(t["pose_model_input_fed_call0"], t["crop_main_box"])
    crop, _, _ = wholebody.crop_for_pose(image512, t["crop_main_box_box"], pose_size(t))
    np.testing.assert_allclose(crop, t["pose_model_input_fed_call0"], rtol=0, atol=1e-5)


def test_stretch_from_webcam_crop_is_the_detector_image(gold, image512):
    from rain.pose.driving import center_square_crop

    folder, _, meta = gold
    crop = center_square_crop(png(next(folder.glob("webcam_frame_*.png"))), meta["demo_crop"]["cropping"])
    assert list(crop.shape) == meta["demo_crop"]["cropped_shape"]
    detector = make_detector(None, detection_size=image512.shape[:2])
    assert np.array_equal(detector.prepare(crop), image512)


def test_batched_pose_model_dynamic_and_fixed(gold, image512):
    _, t, _ = gold
    raw = golden_yolox_raw(t)
    expected = t["wholebody_keypoints_call0"][0]
    for dynamic in (True, False):
        detector = make_detector(raw, t["simcc_x"], t["simcc_y"], detection_size=image512.shape[:2],
                                 dynamic_batch=dynamic)
        assert (detector.pose.fixed_batch is None) == dynamic
        results = detector.detect_batch([image512, image512[::-1].copy(), image512])
        assert len(results) == 3
        for r in (results[0], results[2]):
            np.testing.assert_allclose(r.keypoints, expected, rtol=0, atol=1e-9)


def test_several_people_largest_wins():
    raw = np.zeros((8400, 85), np.float32)
    # Stride-16 grid rows: (row - 6400) = y * 40 + x.  A small, very confident person and a big, less sure one.
    small, big = 6400 + 10 * 40 + 5, 6400 + 20 * 40 + 25
    raw[small, :6] = [0.5, 0.5, np.log(4.0), np.log(6.0), 0.99, 0.99]
    raw[big, :6] = [0.5, 0.5, np.log(15.0), np.log(20.0), 0.8, 0.8]
    detector = make_detector(raw)
    image = np.zeros((512, 512, 3), np.uint8)
    box, boxes = detector.find_person(image)
    assert len(boxes) == 2
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert np.array_equal(box, boxes[np.argmax(areas)]) and not np.array_equal(box, boxes[0])


def test_nobody_uses_the_whole_image_and_nothing_is_visible():
    detector = make_detector(None)  # zero outputs: no box, SimCC maxima 0 -> every score 0
    detection = detector.detect(np.full((300, 200, 3), 90, np.uint8))
    assert detection.box is None and not detection.person_found and detection.image_size == (512, 512)
    assert np.all(detection.scores[np.arange(134) != 17] == 0)
    assert np.all(detection.face() == -1.0)


def test_stage_times_and_providers():
    assert default_providers()[-1] == "CPUExecutionProvider"
    times = StageTimes()
    detector = DWPoseDetector.from_files(yolox_stand_in(), dwpose_stand_in(), stage_times=times)
    detector.detect(np.zeros((64, 48, 3), np.uint8))
    assert {"detector_pre", "detector_run", "detector_post", "pose_pre", "pose_run", "pose_post"} <= set(
        times.milliseconds_per_call())


def test_input_size_is_read_from_the_model():
    model = OnnxModel(dwpose_stand_in(input_size=(384, 288)), ["CPUExecutionProvider"])
    assert model.input_hw == (384, 288) and model.input_name == "input"
    assert model.output_names == ["simcc_x", "simcc_y"]
    detector = DWPoseDetector(OnnxModel(yolox_stand_in()), model)
    assert detector.pose_input == (384, 288)
    assert detector.detect(np.zeros((512, 512, 3), np.uint8)).keypoints.shape == (134, 2)


# --- model files -------------------------------------------------------------------------------------------------

def test_catalogue_entries_are_complete():
    for entry in DWPOSE_FILES + DWPOSE_ALTERNATIVES:
        assert {"name", "repo_id", "filename", "subdir", "size_mb", "role"} <= set(entry)
    assert [e["name"] for e in DWPOSE_FILES] == ["yolox_l.onnx", "dw-ll_ucoco_384.onnx"]
    assert hub_url("yolox_l.onnx") == "https://huggingface.co/yzd-v/DWPose/resolve/main/yolox_l.onnx"


def test_locate_models_in_models_dir_and_controlnet_aux(tmp_path, monkeypatch):
    monkeypatch.delenv("AUX_ANNOTATOR_CKPTS_PATH", raising=False)
    models = tmp_path / "ComfyUI" / "models"
    models.mkdir(parents=True)
    with pytest.raises(DWPoseModelsNotFound) as err:
        locate_dwpose_models(models)
    message = str(err.value)
    assert "yolox_l.onnx" in message and "dw-ll_ucoco_384.onnx" in message
    assert str(models / "dwpose") in message and "python -m rain download --dwpose" in message
    assert "huggingface.co/yzd-v/DWPose" in message

    aux = tmp_path / "ComfyUI" / "custom_nodes" / "comfyui_controlnet_aux" / "ckpts"
    (aux / "yzd-v" / "DWPose").mkdir(parents=True)
    (aux / "yzd-v" / "DWPose" / "yolox_l.onnx").write_bytes(b"x")
    (aux / "hr16" / "UnJIT-DWPose").mkdir(parents=True)
    (aux / "hr16" / "UnJIT-DWPose" / "dw-mm_ucoco.onnx").write_bytes(b"x")
    det, pose = locate_dwpose_models(models)
    assert det == aux / "yzd-v" / "DWPose" / "yolox_l.onnx"
    assert pose == aux / "hr16" / "UnJIT-DWPose" / "dw-mm_ucoco.onnx"

    (models / "dwpose").mkdir()
    (models / "dwpose" / "dw-ll_ucoco_384.onnx").write_bytes(b"x")
    assert locate_dwpose_models(models)[1] == models / "dwpose" / "dw-ll_ucoco_384.onnx"
    with pytest.raises(DWPoseModelsNotFound, match="dw-ss_ucoco.onnx"):
        locate_dwpose_models(models, pose="dw-ss_ucoco.onnx")
