"""Driving frames -> pose images: end to end, missing-face policies and counts, sizes, bad input."""

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from rain.pose.driving import DrivingPoseRenderer, center_square_crop, face_pose_image, pose_frames
from rain.pose.dwpose import DWPoseDetector, PoseDetection
from rain.pose.face_tracking import PoseStats
from rain.pose.landmark_transform import STARTUP_TRANSLATIONS
from rain.pose.skeleton import FACE
from rain.pose.smoothing import OneEuroFilter
from rain.pose.stand_in_models import dwpose_stand_in, yolox_stand_in


def png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def frontal_face():
    angles = np.linspace(0, np.pi, 17)
    face = np.zeros((68, 2))
    face[:17] = np.stack([0.5 - 0.2 * np.cos(angles), 0.45 + 0.2 * np.sin(angles)], axis=1)  # jaw, chin at 8
    face[17:27] = np.stack([np.linspace(0.33, 0.67, 10), np.full(10, 0.35)], axis=1)
    face[27:36] = np.stack([np.full(9, 0.5), np.linspace(0.4, 0.55, 9)], axis=1)
    for start, cx in ((36, 0.4), (42, 0.6)):
        t = np.linspace(0, 2 * np.pi, 6, endpoint=False)
        face[start:start + 6] = np.stack([cx - 0.04 * np.cos(t), 0.42 + 0.015 * np.sin(t)], axis=1)
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    face[48:68] = np.stack([0.5 - 0.07 * np.cos(t), 0.58 + 0.02 * np.sin(t)], axis=1)
    return face


class ScriptedDetector:
    """Returns a face (as a 512x512 detection) or nothing, following a script of True/False."""

    def __init__(self, script, face=None):
        self.script, self.face = list(script), frontal_face() if face is None else face
        self.calls = 0

    def detect(self, frame):
        present = self.script[self.calls % len(self.script)]
        self.calls += 1
        keypoints = np.zeros((134, 2))
        scores = np.zeros(134)
        box = None
        if present:
            keypoints[FACE] = self.face * 512
            scores[FACE] = 0.9
            scores[:18] = 0.9
            keypoints[:18] = 256
            box = np.array([100.0, 100.0, 400.0, 400.0])
        return PoseDetection(keypoints, scores, box, np.zeros((0, 4)), (512, 512))


def frames(n, shape=(48, 64, 3)):
    for i in range(n):
        yield np.full(shape, i % 255, np.uint8)


def test_end_to_end_from_the_webcam_frame(golden_dir):
    folder = golden_dir / "dwpose"
    t = load_file(str(folder / "dwpose.safetensors"))
    raw = np.zeros((8400, 85), np.float32)
    raw[t["yolox_rows_index"]] = t["yolox_rows_values"]
    meta = json.loads((folder / "dwpose.json").read_text())
    pose_input = (t["simcc_y"].shape[-1] // 2, t["simcc_x"].shape[-1] // 2)
    detection_size = png(folder / "detector_image_512.png").shape[:2]
    detector = DWPoseDetector.from_files(yolox_stand_in(raw),
                                         dwpose_stand_in(t["simcc_x"], t["simcc_y"], input_size=pose_input),
                                         detection_size=detection_size)
    webcam = png(next(folder.glob("webcam_frame_*.png")))
    expected = png(folder / "detector_call0_pose_canvas.png")
    stats = PoseStats()
    out = list(pose_frames([webcam, webcam], detector=detector, crop=meta["demo_crop"]["cropping"], stats=stats,
                           size=expected.shape[:2]))
    assert all(np.array_equal(o, expected) for o in out)
    assert stats.frames == 2 and stats.frames_without_face == 0 and stats.frames_without_person == 0


def test_hold_policy_repeats_the_last_face_and_counts():
    script = [False, True, False, False, True]
    stats = PoseStats()
    out = list(pose_frames(frames(5), detector=ScriptedDetector(script), size=(64, 64), stats=stats))
    assert not out[0].any()                      # nothing to hold yet
    assert out[1].any()
    assert np.array_equal(out[2], out[1]) and np.array_equal(out[3], out[1])
    assert stats.as_dict() == {"frames": 5, "frames_without_person": 3, "frames_without_face": 3,
                               "frames_held": 2, "frames_blank": 1}


def test_blank_policy_draws_nothing_and_counts():
    renderer = DrivingPoseRenderer(ScriptedDetector([True, False, True]), size=(64, 64), missing="blank")
    out = [renderer.render(f) for f in frames(3)]
    assert out[0].any() and not out[1].any() and np.array_equal(out[2], out[0])
    assert renderer.stats.frames_blank == 1 and renderer.stats.frames_held == 0
    assert "1 without a face" in renderer.stats.summary()
    renderer.reset()
    assert renderer.stats.frames == 0


def test_no_face_at_all_with_real_runner_counts_every_frame():
    detector = DWPoseDetector.from_files(yolox_stand_in(), dwpose_stand_in())
    stats = PoseStats()
    out = list(pose_frames(frames(3), detector=detector, size=(32, 48), stats=stats))
    assert all(o.shape == (32, 48, 3) and not o.any() for o in out)
    assert stats.frames_without_face == 3 and stats.frames_without_person == 3 and stats.frames_blank == 3


@pytest.mark.parametrize("size", [(512, 512), (97, 131), (640, 360)])
def test_output_size_follows_the_request(size):
    out = next(pose_frames(frames(1, (37, 91, 3)), detector=ScriptedDetector([True]), size=size))
    assert out.shape == (*size, 3) and out.dtype == np.uint8 and out.any()


def test_output_equals_transform_and_render():
    out = next(pose_frames(frames(1), detector=ScriptedDetector([True]), size=(128, 96)))
    assert np.array_equal(out, face_pose_image(frontal_face(), (128, 96), STARTUP_TRANSLATIONS))
    human = next(pose_frames(frames(1), detector=ScriptedDetector([True]), size=(128, 96), translations=()))
    assert not np.array_equal(human, out)


def test_body_task_draws_a_skeleton():
    out = list(pose_frames(frames(2), task="body", detector=ScriptedDetector([True, False]), size=(64, 64)))
    assert out[0].any() and np.array_equal(out[1], out[0])  # held


def test_smoothing_is_off_by_default_and_changes_motion_when_on():
    moving = [frontal_face() + [0.01 * i, 0] for i in range(4)]

    class Moving(ScriptedDetector):
        def detect(self, frame):
            self.face = moving[self.calls]
            return super().detect(frame)

    plain = list(pose_frames(frames(4), detector=Moving([True]), size=(128, 128)))
    smooth = list(pose_frames(frames(4), detector=Moving([True]), size=(128, 128),
                              smoothing=OneEuroFilter(min_cutoff=0.5, beta=0.0)))
    assert np.array_equal(plain[0], smooth[0]) and not np.array_equal(plain[3], smooth[3])


def test_lazy_one_frame_at_a_time():
    consumed = []

    def source():
        for i, f in enumerate(frames(100)):
            consumed.append(i)
            yield f

    gen = pose_frames(source(), detector=ScriptedDetector([True]), size=(16, 16))
    next(gen)
    next(gen)
    assert consumed == [0, 1]


def test_center_square_crop_sizes():
    assert center_square_crop(np.zeros((480, 640, 3), np.uint8), 0.9).shape == (432, 432, 3)
    assert center_square_crop(np.zeros((641, 480, 3), np.uint8), 0.9).shape == (433, 432, 3)  # d or d + 1
    assert center_square_crop(np.zeros((100, 100, 3), np.uint8), 1.0).shape == (100, 100, 3)
    with pytest.raises(ValueError, match="cropping"):
        center_square_crop(np.zeros((10, 10, 3), np.uint8), 1.5)


def test_bad_input_gives_clear_errors():
    detector = ScriptedDetector([True])
    with pytest.raises(ValueError, match="no driving frames"):
        list(pose_frames([], detector=detector))
    with pytest.raises(ValueError, match="uint8"):
        list(pose_frames([np.zeros((8, 8, 3), np.float32)], detector=detector))
    with pytest.raises(ValueError, match="H x W x 3"):
        list(pose_frames([np.zeros((8, 8), np.uint8)], detector=detector))
    with pytest.raises(ValueError, match="numpy array"):
        list(pose_frames(["frame.png"], detector=detector))
    with pytest.raises(ValueError, match="iterable"):
        list(pose_frames(None, detector=detector))
    with pytest.raises(ValueError, match="detector"):
        list(pose_frames(frames(1), detector=None))
    with pytest.raises(ValueError, match="missing"):
        list(pose_frames(frames(1), detector=detector, missing="skip"))
    with pytest.raises(ValueError, match="task"):
        list(pose_frames(frames(1), detector=detector, task="depth"))
    stacked = np.zeros((2, 8, 8, 3), np.uint8)
    assert len(list(pose_frames(stacked, detector=detector, size=(8, 8)))) == 2



def test_batched_detection_gives_the_same_images_and_stays_lazy():
    script = [True, False, True, True, False]
    one = list(pose_frames(frames(5), detector=ScriptedDetector(script), size=(64, 64)))
    consumed = []

    def source():
        for i, f in enumerate(frames(5)):
            consumed.append(i)
            yield f

    gen = pose_frames(source(), detector=ScriptedDetector(script), size=(64, 64), batch_size=2)
    first = next(gen)
    assert consumed == [0, 1]
    rest = list(gen)
    assert all(np.array_equal(a, b) for a, b in zip(one, [first] + rest)) and len(rest) == 4
    real = DWPoseDetector.from_files(yolox_stand_in(), dwpose_stand_in())
    assert len(list(pose_frames(frames(3), detector=real, size=(16, 16), batch_size=2))) == 3
    with pytest.raises(ValueError, match="batch_size"):
        list(pose_frames(frames(1), detector=real, batch_size=0))
