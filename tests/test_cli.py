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
    Image.new("RGB", (8, 8)).save(tmp_path / "r.png")
    code = main(["animate", "--models-dir", str(tmp_path / "empty"), "--reference", str(tmp_path / "r.png"),
                 "--driving", str(driving), "-o", str(tmp_path / "o.mp4")])
    assert code == 2
    err = capsys.readouterr().err
    assert "motion_unet" in err and "python -m rain download" in err


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "rain", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "animate" in result.stdout and "download" in result.stdout
