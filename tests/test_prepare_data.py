"""``python -m rain prepare-data``: clips, crops, conditions drawn by the inference code, broken videos skipped and
listed, resuming (after a finished run and mid-video), manifest counts and sizes."""

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from safetensors import safe_open

from rain.cli import main
from rain.io import read_frames
from rain.training.data import ClipStore, Manifest
from rain.training.prepare import (Annotator, PrepareOptions, candidate_clips, crop_window, fit_frame,
                                   prepare_dataset)


def write_video(path, count, size, seed=0):
    """Frames with a moving bar on a background whose brightness follows the frame index (40 + 5·i)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for i in range(count):
            frame = np.full((height, width, 3), 40 + 5 * i, np.uint8)
            frame[:, (3 * i + seed) % width:(3 * i + seed) % width + 6] = (250, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Two usable videos (one in a subfolder, portrait), a broken file, a too-short video and a text file."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "a.mp4", 20, (60, 80))
    write_video(root / "sub" / "b.mkv", 40, (72, 48), seed=5)
    write_video(root / "short.mp4", 5, (48, 48))
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    (root / "notes.txt").write_text("not a video")
    return root


def stand_in_dwpose(folder: Path, *, face: bool = True, body: bool = True) -> Path:
    """DWPose-shaped ONNX files that report a face ring and a few body joints, or nobody."""
    from rain.pose.stand_in_models import dwpose_stand_in, yolox_stand_in

    folder.mkdir(parents=True, exist_ok=True)
    simcc_x, simcc_y = np.zeros((133, 384), np.float32), np.zeros((133, 512), np.float32)
    points = {}
    if face:
        for k, angle in enumerate(np.linspace(0, 2 * np.pi, 68, endpoint=False)):
            points[23 + k] = (0.5 + 0.2 * np.cos(angle) * (1 + k % 3) / 3, 0.4 + 0.25 * np.sin(angle))
    if body:
        points.update({0: (0.5, 0.3), 5: (0.35, 0.5), 6: (0.65, 0.5), 11: (0.4, 0.8), 12: (0.6, 0.8)})
    for index, (x, y) in points.items():
        simcc_x[index, int(2 * 192 * x)] = 1.0
        simcc_y[index, int(2 * 256 * y)] = 1.0
    (folder / "yolox_l.onnx").write_bytes(yolox_stand_in())
    (folder / "dw-ll_ucoco_384.onnx").write_bytes(dwpose_stand_in(simcc_x, simcc_y, input_size=(256, 192)))
    return folder.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return stand_in_dwpose(tmp_path_factory.mktemp("models") / "dwpose")


def shard_records(root: Path) -> list[dict]:
    records = []
    for shard in Manifest.read(root).shards:
        with safe_open(str(root / shard["file"]), "np") as handle:
            records.extend(json.loads(handle.metadata()["clips"]))
    return records


def pose_images(models, frames, task, size, translations=()):
    """What `python -m rain animate --task face|body` draws for these frames (a fresh stream)."""
    from rain.pose.driving import pose_frames
    from rain.pose.dwpose import DWPoseDetector
    return np.stack(list(pose_frames(list(frames), task=task, detector=DWPoseDetector.from_models_dir(models),
                                     size=size, translations=translations)))


def test_face_dataset_skips_and_lists_bad_videos_and_resumes(videos, models, tmp_path, capsys):
    out = tmp_path / "face"
    args = ["prepare-data", str(videos), str(out), "--task", "face", "--size", "32", "--clip-length", "8",
            "--models-dir", str(models)]
    assert main(args) == 0
    report = capsys.readouterr().out
    manifest = Manifest.read(out)
    # a.mp4: 20 frames → clips at 0 and 8; sub/b.mkv: 40 frames → 5 clips.
    assert (manifest.task, manifest.size, manifest.clip_length) == ("face", (32, 32), 8)
    assert manifest.clips == 7 and manifest.frames == 56 and manifest.fps == 16.0
    assert manifest.bytes == sum((out / s["file"]).stat().st_size for s in manifest.shards) > 0
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["clips"] == 7 and saved["frames"] == 56 and saved["bytes"] == manifest.bytes
    sources = manifest.sources
    assert sources["a.mp4"]["status"] == "done" and sources["a.mp4"]["clips"] == 2
    assert sources["sub/b.mkv"]["status"] == "done" and sources["sub/b.mkv"]["clips"] == 5
    assert sources["broken.mp4"]["status"] == "skipped" and sources["broken.mp4"]["reason"]
    assert sources["short.mp4"] == {"status": "skipped", "clips": 0,
                                    "reason": "shorter than one clip (8 frames)"}
    assert "notes.txt" not in sources
    assert "skipped broken.mp4" in report and "skipped short.mp4" in report and "7 clips, 56 frames" in report
    assert [(r["source"], r["start_frame"]) for r in shard_records(out)] == \
        [("a.mp4", 0), ("a.mp4", 8)] + [("sub/b.mkv", 8 * k) for k in range(5)]

    store = ClipStore(out)
    frames, condition = store.read(3)
    assert frames.shape == condition.shape == (8, 32, 32, 3)
    assert np.array_equal(condition, pose_images(models, frames, "face", (32, 32)))
    assert condition.any()
    # A video frame becomes a training frame by its centred square, resized (portrait b.mkv: rows 12..60).
    first = next(read_frames(videos / "sub" / "b.mkv", start=8, max_frames=1))
    assert np.array_equal(frames[0], fit_frame(first, (12, 0, 48, 48), (32, 32)))

    shards_before = {s["file"]: (out / s["file"]).stat().st_mtime_ns for s in manifest.shards}
    assert main(args) == 0
    report = capsys.readouterr().out
    assert "0 prepared now, 2 already done, 2 skipped" in report
    again = Manifest.read(out)
    assert again.clips == 7 and {s["file"]: (out / s["file"]).stat().st_mtime_ns for s in again.shards} == shards_before

    assert main(args[:-2] + ["--clip-length", "4", "--models-dir", str(models)]) == 2
    assert "other options (clip_length" in capsys.readouterr().err


def test_face_transform_option_changes_the_drawn_landmarks(videos, models, tmp_path):
    out = tmp_path / "startup"
    assert main(["prepare-data", str(videos), str(out), "--task", "face", "--size", "32", "--clip-length", "8",
                 "--max-clips-per-video", "1", "--face-transform", "startup", "--models-dir", str(models)]) == 0
    from rain.pose.landmark_transform import STARTUP_TRANSLATIONS
    frames, condition = ClipStore(out).read(0)
    assert np.array_equal(condition, pose_images(models, frames, "face", (32, 32), STARTUP_TRANSLATIONS))
    assert not np.array_equal(condition, pose_images(models, frames, "face", (32, 32)))
    assert Manifest.read(out).preparation["face_transform"] == "startup"


def test_body_dataset_uses_the_whole_body_skeleton(videos, models, tmp_path):
    out = tmp_path / "body"
    assert main(["prepare-data", str(videos), str(out), "--task", "body", "--size", "32x48", "--clip-length", "8",
                 "--models-dir", str(models)]) == 0
    store = ClipStore(out)
    assert store.size == (48, 32) and len(store) == 7
    frames, condition = store.read(0)
    assert np.array_equal(condition, pose_images(models, frames, "body", (48, 32)))
    assert condition.any()


def test_clips_without_a_face_are_dropped_and_counted(videos, tmp_path, capsys):
    empty_models = stand_in_dwpose(tmp_path / "nobody" / "dwpose", face=False, body=False)
    out = tmp_path / "none"
    assert main(["prepare-data", str(videos), str(out), "--task", "face", "--size", "32", "--clip-length", "8",
                 "--models-dir", str(empty_models)]) == 0
    manifest = Manifest.read(out)
    assert manifest.clips == 0
    assert manifest.sources["a.mp4"] == {"status": "done", "clips": 0, "dropped": 2, "fps": 16.0}
    assert "2 dropped (no face/person in over 25% of their frames)" in capsys.readouterr().out


def test_depth_dataset_random_crops_and_depth_conditions(videos, tmp_path):
    from rain.depth import DepthConditioner, DepthEstimator
    from rain.devtools import write_tiny_depth_model

    depth_model = write_tiny_depth_model(tmp_path / "models" / "depth_model")
    out = tmp_path / "depth"
    assert main(["prepare-data", str(videos), str(out), "--task", "depth", "--size", "32", "--clip-length", "8",
                 "--models-dir", str(tmp_path / "models"), "--depth-model", "depth_model", "--device", "cpu",
                 "--batch-size", "3"]) == 0
    manifest = Manifest.read(out)
    assert manifest.clips == 7 and manifest.preparation["crop"] == "random"
    windows = [tuple(r["crop"]) for r in shard_records(out)]
    assert len(set(windows)) > 1 and all(w[2] == w[3] for w in windows)   # square patches, not all the same
    estimator = DepthEstimator.from_folder(depth_model, device="cpu")
    store = ClipStore(out)
    for index in (0, 6):
        frames, condition = store.read(index)
        expected = DepthConditioner(estimator, batch_size=3).render(list(frames))   # each clip a fresh stream
        assert np.array_equal(condition, np.stack(expected))
        assert (condition[..., 0] == condition[..., 2]).all() and condition.max() == 255


class Inverted(Annotator):
    """A cheap deterministic annotator: the negative image; frames darker than 60 count as 'no detection'.
    ``stop_after`` raises KeyboardInterrupt on that call, like Ctrl-C in the middle of a video."""

    def __init__(self, stop_after=None):
        self.calls, self.stop_after = 0, stop_after

    def annotate(self, frames):
        self.calls += 1
        if self.calls == self.stop_after:
            raise KeyboardInterrupt
        return [255 - f for f in frames], sum(int(f.mean() < 60) for f in frames)


def test_interrupted_preparation_resumes_to_the_same_dataset(videos, tmp_path):
    options = dict(task="face", size=(24, 24), clip_length=4, stride=3, clips_per_shard=2, max_missing=0.5)
    whole = tmp_path / "whole"
    prepare_dataset(videos, whole, PrepareOptions(**options), annotator=Inverted())
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(videos, resumed, PrepareOptions(**options), annotator=Inverted(stop_after=12))
    partial = Manifest.read(resumed)
    assert partial.sources["sub/b.mkv"]["status"] == "partial" and partial.sources["sub/b.mkv"]["clips"] > 0
    annotator = Inverted()
    summary = prepare_dataset(videos, resumed, PrepareOptions(**options), annotator=annotator)
    assert summary.already_done == ["a.mp4", "short.mp4"] and summary.prepared == ["sub/b.mkv"]
    assert annotator.calls == 13 - partial.sources["sub/b.mkv"]["next_clip"]   # written clips are not redone

    expected, got = Manifest.read(whole), Manifest.read(resumed)
    assert got.sources == expected.sources and got.clips == expected.clips
    # a.mp4's first clip (frames 0-3, brightness 40-55) has no 'detection' in more than half its frames.
    assert expected.sources["a.mp4"]["dropped"] == 1
    assert [(r["source"], r["clip_index"]) for r in shard_records(resumed)] == \
        [(r["source"], r["clip_index"]) for r in shard_records(whole)]
    a, b = ClipStore(whole), ClipStore(resumed)
    for index in range(len(a)):
        assert all(np.array_equal(x, y) for x, y in zip(a.read(index), b.read(index)))


def test_clip_windows_and_crops():
    assert [(i, s) for i, s, _ in candidate_clips(range(10), 4, 3)] == [(0, 0), (1, 3), (2, 6)]
    assert [(i, s) for i, s, _ in candidate_clips(range(10), 4, 5)] == [(0, 0), (1, 5)]
    assert [c for _, _, c in candidate_clips(range(6), 4, 1)][-1] == [2, 3, 4, 5]
    assert crop_window((100, 200), (50, 50), "center") == (0, 50, 100, 100)
    assert crop_window((300, 200), (768, 512), "center") == (0, 0, 300, 200)
    assert crop_window((100, 200), (768, 512), "center") == (0, 66, 100, 67)
    assert crop_window((100, 200), (50, 50), "stretch") == (0, 0, 100, 200)
    rng = np.random.default_rng(0)
    for _ in range(20):
        top, left, h, w = crop_window((100, 200), (50, 50), "random", rng, min_scale=0.5)
        assert 50 <= h == w <= 100 and 0 <= top <= 100 - h and 0 <= left <= 200 - w
    with pytest.raises(ValueError, match="crop"):
        PrepareOptions(task="face", crop="zoom")
    assert PrepareOptions(task="body").size == (768, 512) and PrepareOptions(task="depth").crop == "random"


def test_not_a_folder_and_not_an_empty_output(videos, models, tmp_path, capsys):
    assert main(["prepare-data", str(tmp_path / "nope"), str(tmp_path / "o"), "--task", "face"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    assert main(["prepare-data", str(videos), str(tmp_path / "busy"), "--task", "face",
                 "--models-dir", str(models)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep me"
    shutil.rmtree(tmp_path / "busy")


def test_only_bad_videos_fail_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import rain.training.prepare as prepare
    monkeypatch.setattr(prepare, "make_annotator", lambda *a, **k: pytest.fail("a model was loaded"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    (bad / "empty.mkv").write_bytes(b"")
    assert main(["prepare-data", str(bad), str(tmp_path / "out"), "--task", "depth",
                 "--models-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "none of the 2 videos" in error and "broken.mp4" in error and "empty.mkv" in error
    assert "no model was loaded" in error


def test_nothing_usable_prepared_exits_non_zero(tmp_path, capsys):
    from rain.devtools import write_tiny_depth_model
    short = tmp_path / "short"
    write_video(short / "a.mp4", 3, (48, 48))              # readable, but shorter than one clip
    write_tiny_depth_model(tmp_path / "models" / "depth_estimator")
    assert main(["prepare-data", str(short), str(tmp_path / "out"), "--task", "depth", "--size", "32",
                 "--clip-length", "8", "--models-dir", str(tmp_path / "models"), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "nothing usable was prepared" in captured.err and "shorter than one clip" in captured.out
