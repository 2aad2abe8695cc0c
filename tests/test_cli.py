"""``python -m rain`` end to end on the reduced models."""

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
from PIL import Image

from rain.cli import main
from rain.io import probe

ROOT = Path(__file__).resolve().parents[1]


def write_pose_video(path, frames=7, height=64, width=72):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = np.zeros((height, width, 3), np.uint8)
            frame[20:30, 4 + 3 * i:14 + 3 * i] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_animate_writes_every_frame(tiny_models_dir, tmp_path):
    driving = tmp_path / "poses.mp4"
    write_pose_video(driving)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 70, 4), np.uint8), "RGBA").save(tmp_path / "r.png")
    out = tmp_path / "out.mp4"
    code = main(["animate", "--models-dir", str(tiny_models_dir), "--reference", str(tmp_path / "r.png"),
                 "--driving", str(driving), "-o", str(out), "--decoder", "vae"])
    assert code == 0
    info = probe(out)
    assert (info.width, info.height) == (72, 64)
    assert sum(1 for _ in av.open(str(out)).decode(video=0)) == 7


def test_missing_weights_message_names_the_command(tmp_path, capsys):
    driving = tmp_path / "poses.mp4"
    write_pose_video(driving, frames=1)
    Image.new("RGB", (64, 64)).save(tmp_path / "r.png")
    code = main(["animate", "--models-dir", str(tmp_path / "empty"), "--reference", str(tmp_path / "r.png"),
                 "--driving", str(driving), "-o", str(tmp_path / "o.mp4")])
    assert code == 2
    err = capsys.readouterr().err
    assert "motion_unet" in err and "python -m rain download" in err


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "rain", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "animate" in result.stdout and "download" in result.stdout


def write_raw_video(path, frames=6, height=60, width=80):
    """A 'webcam' take with odd proportions; the stand-in detector ignores its pixels."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = np.full((height, width, 3), 40 + 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def stand_in_dwpose(folder, with_face=True):
    """DWPose-shaped ONNX files (named like the real ones) that report a frontal face, or nobody."""
    from rain.pose.stand_in_models import dwpose_stand_in, yolox_stand_in
    folder.mkdir(parents=True, exist_ok=True)
    simcc_x, simcc_y = np.zeros((133, 384), np.float32), np.zeros((133, 512), np.float32)
    if with_face:
        angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
        for k, angle in enumerate(angles):  # COCO-WholeBody face points are 23..90
            x, y = 0.5 + 0.2 * np.cos(angle) * (1 + k % 3) / 3, 0.5 + 0.25 * np.sin(angle) * (1 + k % 2) / 2
            simcc_x[23 + k, int(2 * 192 * x)] = 1.0
            simcc_y[23 + k, int(2 * 256 * y)] = 1.0
    (folder / "yolox_l.onnx").write_bytes(yolox_stand_in())
    (folder / "dw-ll_ucoco_384.onnx").write_bytes(dwpose_stand_in(simcc_x, simcc_y, input_size=(256, 192)))


def test_animate_from_a_raw_video_through_face_detection(tiny_models_dir, tmp_path, capsys):
    import shutil
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    stand_in_dwpose(models / "dwpose")
    driving = tmp_path / "take.mp4"
    write_raw_video(driving)
    Image.new("RGB", (40, 60), (200, 120, 90)).save(tmp_path / "r.png")
    out = tmp_path / "out.mkv"
    code = main(["animate", "--models-dir", str(models), "--reference", str(tmp_path / "r.png"),
                 "--driving", str(driving), "--task", "face", "--size", "64", "-o", str(out)])
    assert code == 0
    assert sum(1 for _ in av.open(str(out)).decode(video=0)) == 6
    report = capsys.readouterr().out
    assert "6 frames: 0 without a face" in report


def test_animate_reports_frames_without_a_face(tiny_models_dir, tmp_path, capsys):
    import shutil
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    stand_in_dwpose(models / "dwpose", with_face=False)
    driving = tmp_path / "take.mp4"
    write_raw_video(driving, frames=4)
    Image.new("RGB", (40, 60)).save(tmp_path / "r.png")
    code = main(["animate", "--models-dir", str(models), "--reference", str(tmp_path / "r.png"),
                 "--driving", str(driving), "--task", "face", "--size", "64", "--missing", "blank",
                 "-o", str(tmp_path / "out.mp4")])
    assert code == 0
    assert "4 frames: 4 without a face" in capsys.readouterr().out


def test_animate_backend_tensorrt_without_tensorrt_says_how_and_falls_back(tiny_models_dir, tmp_path, capsys,
                                                                          monkeypatch):
    from rain.accel import backends
    monkeypatch.setattr(backends, "tensorrt_module", lambda: None)  # as on a machine without TensorRT
    driving = tmp_path / "poses.mp4"
    write_pose_video(driving, frames=18)
    Image.new("RGB", (40, 50), (200, 120, 40)).save(tmp_path / "r.png")
    out = tmp_path / "out.mp4"
    code = main(["animate", "--models-dir", str(tiny_models_dir), "--reference", str(tmp_path / "r.png"),
                 "--driving", str(driving), "-o", str(out), "--backend", "tensorrt"])
    assert code == 0
    err = capsys.readouterr().err
    assert "NVIDIA GPU" in err and "'eager' backend" in err and "Traceback" not in err
    assert sum(1 for _ in av.open(str(out)).decode(video=0)) == 18
