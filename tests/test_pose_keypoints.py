"""ComfyUI POSE_KEYPOINT (OpenPose JSON as comfyui_controlnet_aux writes it): write, read, round trip."""

import json

import numpy as np
import pytest

from rain.pose.driving import face_pose_image, keypoint_pose_frames
from rain.pose.dwpose import DWPoseDetector
from rain.pose.face_tracking import PoseStats
from rain.pose.keypoints import (PoseKeypointFrame, detections_to_pose_keypoint, face_landmarks, largest_person,
                                 load_pose_keypoint, read_pose_keypoint, to_detection, to_pose_keypoint_frame,
                                 write_pose_keypoint)
from rain.pose.skeleton import BODY, FACE, FEET, LEFT_HAND, RIGHT_HAND
from rain.pose.stand_in_models import dwpose_stand_in, yolox_stand_in


def random_person(seed, missing_fraction=0.2):
    rng = np.random.default_rng(seed)
    person = rng.uniform(0.05, 0.95, (134, 2))
    person[rng.random(134) < missing_fraction] = -1.0
    return person


def comparable(person):
    out = person.copy()
    out[FEET] = -1.0  # OpenPose JSON has no feet
    return out


def test_written_format_follows_controlnet_aux():
    person = random_person(1)
    person[LEFT_HAND] = -1.0
    frame = to_pose_keypoint_frame([person], 480, 640)
    assert frame["canvas_height"] == 480 and frame["canvas_width"] == 640
    entry = frame["people"][0]
    assert len(entry["pose_keypoints_2d"]) == 18 * 3
    assert len(entry["face_keypoints_2d"]) == 70 * 3
    assert entry["hand_left_keypoints_2d"] is None          # nothing visible -> None, as aux writes it
    assert len(entry["hand_right_keypoints_2d"]) == 21 * 3
    body = np.array(entry["pose_keypoints_2d"]).reshape(18, 3)
    visible = person[BODY, 0] >= 0
    np.testing.assert_allclose(body[visible, :2], person[BODY][visible] * [640, 480])  # pixels
    assert set(body[visible, 2]) == {1.0} and not body[~visible].any()
    json.dumps(frame)  # plain JSON types only


def test_round_trip():
    people = [random_person(s) for s in range(3)]
    frames = [PoseKeypointFrame(people[:2], (512, 768)), PoseKeypointFrame([], (64, 64)),
              PoseKeypointFrame(people[2:], (1080, 1920))]
    back = read_pose_keypoint(json.dumps(write_pose_keypoint(frames)))
    assert [f.canvas_size for f in back] == [f.canvas_size for f in frames]
    for original, decoded in zip(frames, back):
        assert len(original.people) == len(decoded.people)
        for p, q in zip(original.people, decoded.people):
            np.testing.assert_allclose(q, comparable(p), rtol=0, atol=1e-12)


def test_reads_normalised_coordinates_and_partial_entries():
    face = [v for i in range(68) for v in (0.3 + i * 0.005, 0.4, 0.9)]
    data = {"people": [{"face_keypoints_2d": face, "pose_keypoints_2d": None}], "canvas_height": 100,
            "canvas_width": 200}
    frame = read_pose_keypoint(data)[0]
    person = frame.people[0]
    np.testing.assert_allclose(person[FACE][:, 1], 0.4)
    assert np.all(person[BODY] == -1) and np.all(person[RIGHT_HAND] == -1)
    pixels = read_pose_keypoint(data, coordinates="pixels")[0].people[0]
    np.testing.assert_allclose(pixels[FACE][:, 1], 0.4 / 100)


def test_face_landmarks_for_the_rain_renderer():
    person = random_person(5, 0.0)
    frame = read_pose_keypoint(write_pose_keypoint([PoseKeypointFrame([person], (256, 256))]))[0]
    np.testing.assert_allclose(face_landmarks(frame), person[FACE], atol=1e-12)
    assert np.all(face_landmarks(frame, person=3) == -1)


def test_detections_to_pose_keypoint():
    raw = np.zeros((8400, 85), np.float32)
    raw[6400 + 20 * 40 + 20, :6] = [0.5, 0.5, np.log(12.0), np.log(16.0), 0.9, 0.9]
    simcc_x = np.zeros((133, 384), np.float32)
    simcc_y = np.zeros((133, 512), np.float32)
    simcc_x[:, 192], simcc_y[:, 256] = 0.8, 0.8  # every point at the crop centre
    detector = DWPoseDetector.from_files(yolox_stand_in(raw), dwpose_stand_in(simcc_x, simcc_y))
    nobody = DWPoseDetector.from_files(yolox_stand_in(), dwpose_stand_in())
    image = np.zeros((512, 512, 3), np.uint8)
    frames = detections_to_pose_keypoint([detector.detect(image), nobody.detect(image)])
    assert frames[0]["canvas_width"] == 512 and len(frames[0]["people"]) == 1 and frames[1]["people"] == []
    body = np.array(frames[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    assert np.all(body[:, 2] == 1.0) and np.all(body[:, :2] > 100)


def test_bad_pose_keypoint_input():
    with pytest.raises(ValueError, match="JSON"):
        load_pose_keypoint("{not json")
    with pytest.raises(ValueError, match="canvas"):
        load_pose_keypoint([{"people": []}])
    with pytest.raises(ValueError, match="list of dicts"):
        load_pose_keypoint(42)
    with pytest.raises(ValueError, match="triples"):
        read_pose_keypoint({"people": [{"pose_keypoints_2d": [1, 2]}], "canvas_height": 1, "canvas_width": 1})
    with pytest.raises(ValueError, match="134"):
        to_pose_keypoint_frame([np.zeros((18, 2))], 10, 10)


def test_largest_person_drives_the_face():
    small, big = random_person(7, 0.0), random_person(8, 0.0)
    small = 0.45 + (small - 0.5) * 0.1           # shrunk around the centre
    frame = PoseKeypointFrame([small, big], (300, 200))
    assert largest_person(frame) == 1
    np.testing.assert_allclose(face_landmarks(frame), big[FACE])
    np.testing.assert_allclose(face_landmarks(frame, person=0), small[FACE])
    assert largest_person(PoseKeypointFrame([np.full((134, 2), -1.0)], (10, 10))) is None


def test_to_detection_feeds_the_same_pipeline():
    person = random_person(9)
    detection = to_detection(PoseKeypointFrame([person], (300, 200)))
    assert detection.image_size == (300, 200) and detection.person_found
    np.testing.assert_allclose(detection.normalised(), person, atol=1e-12)
    empty = to_detection(PoseKeypointFrame([], (300, 200)))
    assert not empty.person_found and np.all(empty.face() == -1)


def test_pose_images_from_pose_keypoint():
    person = random_person(3, 0.0)
    person[FACE] = 0.3 + 0.4 * random_person(4, 0.0)[FACE]
    data = write_pose_keypoint([PoseKeypointFrame([person], (96, 128)), PoseKeypointFrame([], (96, 128))])
    stats = PoseStats()
    images = list(keypoint_pose_frames(data, stats=stats))
    assert [i.shape for i in images] == [(96, 128, 3)] * 2
    assert images[0].any() and np.array_equal(images[1], images[0])   # held
    assert stats.frames_without_face == 1 and stats.frames_held == 1
    expected = face_pose_image(person[FACE], (96, 128))
    assert np.array_equal(images[0], expected)
    bodies = list(keypoint_pose_frames(data, task="body", size=(64, 64), missing="blank"))
    assert bodies[0].shape == (64, 64, 3) and bodies[0].any() and not bodies[1].any()
    with pytest.raises(ValueError, match="no frames"):
        list(keypoint_pose_frames([]))
