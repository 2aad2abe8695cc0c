"""Reading videos, image folders and images: sizes, resampling, skipping, rotation, errors."""

from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from rain.io import (VideoIOError, VideoNotFoundError, VideoWriter, count_frames, frames_total,
                     probe, read_frames, to_uint8_rgb)


def pattern(index: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A frame whose red level encodes its index (survives lossy coding) plus a gradient."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = (index * 8) % 256
    frame[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    frame[..., 2] = 100
    return frame


def index_of(frame: np.ndarray) -> int:
    return int(round(float(frame[..., 0].mean()) / 8))


def write_video(path, count: int, fps=25, **kwargs):
    with VideoWriter(path, fps, **kwargs) as writer:
        for i in range(count):
            writer.write(pattern(i))
    return path


def test_write_then_read_back(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 30)
    info = probe(path)
    assert (info.width, info.height, info.fps, info.has_audio) == (64, 48, 25.0, False)
    assert info.frame_count == 30 and abs(info.duration - 1.2) < 1e-6
    frames = list(read_frames(path))
    assert len(frames) == 30 and count_frames(path) == 30
    assert all(f.dtype == np.uint8 and f.shape == (48, 64, 3) for f in frames)
    assert [index_of(f) for f in frames] == list(range(30))
    assert max(np.abs(f.astype(int) - pattern(i)).mean() for i, f in enumerate(frames)) < 3


def test_resize(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 5)
    frames = list(read_frames(path, size=(32, 40)))
    assert len(frames) == 5 and frames[0].shape == (32, 40, 3)
    assert [index_of(f) for f in frames] == list(range(5))


@pytest.mark.parametrize("source_fps,target_fps,expected", [
    (30, 15, list(range(0, 30, 2))),                      # drop every other frame
    (15, 30, [i // 2 for i in range(30)]),                # show each frame twice
    (25, 25, list(range(25))),                            # unchanged
    (30, 12, [round(k * 30 / 12 - 0.49) for k in range(12)]),  # frame on screen at k/12 s
])
def test_fps_resampling(tmp_path, source_fps, target_fps, expected):
    count = len(expected) * source_fps // target_fps
    path = write_video(tmp_path / "clip.mkv", count, fps=source_fps)
    assert [index_of(f) for f in read_frames(path, fps=target_fps)] == expected
    assert frames_total(probe(path), target_fps) == len(expected)


def test_ntsc_rate_round_trips(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 10, fps=30000 / 1001)
    assert abs(probe(path).fps - 30000 / 1001) < 1e-6
    assert [index_of(f) for f in read_frames(path, fps=30000 / 1001)] == list(range(10))


def test_start_and_max_frames(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 20)
    assert [index_of(f) for f in read_frames(path, start=5, max_frames=4)] == [5, 6, 7, 8]
    # ``start`` counts output frames after resampling (what a resumed render needs).
    assert [index_of(f) for f in read_frames(path, fps=12.5, start=3, max_frames=2)] == [6, 8]
    assert list(read_frames(path, start=50)) == []
    assert list(read_frames(path, max_frames=0)) == []


def test_reading_is_lazy(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 40)
    frames = read_frames(path)
    first = next(frames)
    assert index_of(first) == 0
    frames.close()  # stops decoding and closes the file


def test_directory_of_pngs(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10):  # natural order: 1, 2, 10 (not 1, 10, 2)
        Image.fromarray(pattern(i)).save(folder / f"frame_{i}.png")
    (folder / "notes.txt").write_text("ignored")
    info = probe(folder)
    assert (info.kind, info.frame_count, info.width, info.height, info.fps) == ("images", 3, 64, 48, None)
    assert [index_of(f) for f in read_frames(folder)] == [1, 2, 10]
    assert [f.shape for f in read_frames(folder, size=(24, 32), start=1)] == [(24, 32, 3)] * 2


def test_single_image_and_rgba(tmp_path):
    rgba = np.dstack([pattern(3), np.full((48, 64), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "ref.png")
    frames = list(read_frames(tmp_path / "ref.png"))
    assert len(frames) == 1 and frames[0].shape == (48, 64, 3) and index_of(frames[0]) == 3
    assert probe(tmp_path / "ref.png").kind == "image"


def test_animated_gif(tmp_path):
    images = [Image.fromarray(pattern(i)) for i in range(6)]
    images[0].save(tmp_path / "anim.gif", save_all=True, append_images=images[1:], duration=100, loop=0)
    info = probe(tmp_path / "anim.gif")
    assert info.frame_count == 6 and info.fps == pytest.approx(10.0)
    assert [index_of(f) for f in read_frames(tmp_path / "anim.gif")] == list(range(6))
    assert [index_of(f) for f in read_frames(tmp_path / "anim.gif", fps=5)] == [0, 2, 4]


@pytest.mark.parametrize("angle,quarter_turns", [(90, 1), (-90, 3), (180, 2)])
def test_rotation_metadata_is_applied(tmp_path, angle, quarter_turns):
    # Phone videos store landscape pixels plus a display rotation; read_frames shows them the
    # way players do (checked against ffmpeg's autorotate when this test was written).
    image = np.zeros((32, 64, 3), np.uint8)
    image[:8, :8] = (255, 0, 0)
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv444p"
        stream.set_display_rotation(angle)
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    expected = np.rot90(image, quarter_turns)
    frame = next(read_frames(path))
    assert frame.shape == expected.shape
    assert np.abs(frame.astype(int) - expected).mean() < 3
    info = probe(path)
    assert (info.height, info.width) == expected.shape[:2]
    resized = next(read_frames(path, size=(20, 30)))
    assert resized.shape == (20, 30, 3)


# ---- errors --------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(VideoNotFoundError, match="not found"):
        read_frames(tmp_path / "nope.mp4")  # raised at the call, not at the first next()
    with pytest.raises(FileNotFoundError):
        probe(tmp_path / "nope.mp4")


def test_not_a_video(tmp_path):
    (tmp_path / "notes.mp4").write_text("this is not a video " * 100)
    with pytest.raises(VideoIOError, match="not a video"):
        read_frames(tmp_path / "notes.mp4")
    (tmp_path / "empty.mkv").write_bytes(b"")
    with pytest.raises(VideoIOError, match="empty"):
        probe(tmp_path / "empty.mkv")
    whole = write_video(tmp_path / "whole.mkv", 5).read_bytes()
    (tmp_path / "cut.mkv").write_bytes(whole[:60])
    with pytest.raises(VideoIOError, match="damaged or incomplete|cut off|not a video"):
        list(read_frames(tmp_path / "cut.mkv"))


def test_audio_only_file(tmp_path):
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "mono"
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoIOError, match="only audio"):
        read_frames(path)


def test_video_with_no_frames(tmp_path):
    path = tmp_path / "empty.mp4"
    with VideoWriter(path, 25):
        pass
    assert not path.exists()  # nothing written, nothing created
    # A fragmented MP4 header and no fragment: what a render killed before its first frame leaves.
    with av.open(str(path), "w", options={"movflags": "frag_keyframe+empty_moov"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    with pytest.raises(VideoIOError, match="has no frames"):
        list(read_frames(path))


def test_unreadable_image_in_folder(tmp_path):
    Image.fromarray(pattern(0)).save(tmp_path / "0.png")
    (tmp_path / "1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(VideoIOError, match="1.png"):
        list(read_frames(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoIOError, match="contains no images"):
        read_frames(empty)


def test_bad_arguments(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 3)
    with pytest.raises(ValueError):
        read_frames(path, size=(0, 10))
    with pytest.raises(ValueError):
        read_frames(path, start=-1)
    with pytest.raises(ValueError, match="fps"):
        read_frames(path, fps=0)


# ---- frame conversion -----------------------------------------------------------------------------

def test_to_uint8_rgb_accepts_comfy_and_numpy_frames():
    float_tensor = torch.full((1, 4, 6, 3), 0.5)
    assert to_uint8_rgb(float_tensor).shape == (4, 6, 3) and to_uint8_rgb(float_tensor)[0, 0, 0] == 128
    assert to_uint8_rgb(np.full((4, 6), 2.0))[0, 0].tolist() == [255, 255, 255]
    assert to_uint8_rgb(np.zeros((4, 6, 4), np.uint8)).shape == (4, 6, 3)
    assert to_uint8_rgb(torch.zeros(4, 6, 3, dtype=torch.bfloat16)).dtype == np.uint8
    with pytest.raises(ValueError, match="H×W×3"):
        to_uint8_rgb(np.zeros((3, 4, 6)))
    with pytest.raises(ValueError, match="dtype"):
        to_uint8_rgb(np.zeros((4, 6, 3), np.int32))


def test_fraction_fps_writer(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 4, fps=Fraction(24000, 1001))
    assert abs(probe(path).fps - 24000 / 1001) < 1e-6
