"""Writing videos: formats, odd sizes, interrupted renders, audio copy and resume state."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from rain.io import (ResumeRefused, ResumeStore, VideoIOError, VideoWriter, count_frames, probe, read_frames,
                     resume_dir)

REPO_ROOT = Path(__file__).resolve().parents[1]


def pattern(index: int, height: int = 48, width: int = 64) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = (index * 8) % 256
    frame[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    frame[..., 2] = 100
    return frame


def index_of(frame: np.ndarray) -> int:
    return int(round(float(frame[..., 0].mean()) / 8))


def make_driving_video(path: Path, seconds: float, *, audio_seconds: float | None = None,
                       audio_codec: str = "aac", rate: int = 44100, tone_hz: float = 440.0,
                       later_tone_hz: float | None = None) -> Path:
    """A small video with a sine tone (changing to ``later_tone_hz`` at 1 s), like a driving clip."""
    fps = 25
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream(audio_codec, rate=rate)
        audio.layout = "mono"
        total = int((seconds if audio_seconds is None else audio_seconds) * rate)
        times = np.arange(total) / rate
        frequency = np.where(times < 1.0, tone_hz, later_tone_hz or tone_hz)
        wave = (0.3 * np.sin(2 * np.pi * frequency * times)).astype(np.float32)
        sent = 0
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(pattern(i), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
            while sent < min(total, (i + 1) * rate // fps):
                chunk = wave[sent:sent + 960]
                samples = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                samples.sample_rate, samples.pts = rate, sent
                container.mux(audio.encode(samples))
                sent += len(chunk)
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path


def decoded_audio(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray().reshape(frame.samples, -1).mean(axis=1)
                  for frame in container.decode(stream)]
        return np.concatenate(chunks), stream.codec_context.sample_rate


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


# ---- formats ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["out.mp4", "out.mov", "out.mkv", "out.webm", "out.gif"])
@pytest.mark.parametrize("crash_safe", [True, False])
def test_formats_round_trip(tmp_path, name, crash_safe):
    path = tmp_path / name
    with VideoWriter(path, 25, crash_safe=crash_safe) as writer:
        for i in range(12):
            writer.write(pattern(i))
    assert writer.frames_written == 12
    frames = list(read_frames(path))
    assert [index_of(f) for f in frames] == list(range(12))
    assert probe(path).fps == pytest.approx(25.0)
    tolerance = 6 if name.endswith(".gif") else 3
    assert max(np.abs(f.astype(int) - pattern(i)).mean() for i, f in enumerate(frames)) < tolerance


def test_png_sequences(tmp_path):
    with VideoWriter(tmp_path / "frames", 25) as writer:
        writer.write_many(pattern(i) for i in range(3))
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["000000.png", "000001.png",
                                                                        "000002.png"]
    assert [index_of(f) for f in read_frames(tmp_path / "frames")] == [0, 1, 2]
    with VideoWriter(tmp_path / "seq" / "shot_%03d.png", 25) as writer:
        writer.write(pattern(5))
    assert (tmp_path / "seq" / "shot_000.png").is_file()
    assert not list(tmp_path.rglob("*.tmp"))


def test_odd_sizes_are_padded_by_one_pixel(tmp_path):
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, 25) as writer:
        for i in range(3):
            writer.write(pattern(i, 47, 63))
    info = probe(path)
    assert (info.width, info.height) == (64, 48)
    first = next(read_frames(path))
    assert np.abs(first[:47, :63].astype(int) - pattern(0, 47, 63)).mean() < 3
    # the padding repeats the last row/column
    assert np.abs(first[47].astype(int) - first[46]).mean() < 4
    with VideoWriter(tmp_path / "odd_frames", 25) as writer:  # PNG keeps the exact size
        writer.write(pattern(0, 47, 63))
    assert next(read_frames(tmp_path / "odd_frames")).shape == (47, 63, 3)


def test_float_tensors_and_batches(tmp_path):
    batch = torch.stack([torch.from_numpy(pattern(i)).float() / 255 for i in range(4)])
    path = tmp_path / "t.mkv"
    with VideoWriter(path, 10) as writer:
        assert writer.write_many(batch) == 4
        writer.write(batch[0].numpy())
    assert [index_of(f) for f in read_frames(path)] == [0, 1, 2, 3, 0]


def test_writer_errors(tmp_path):
    with pytest.raises(VideoIOError, match="Unsupported output type"):
        VideoWriter(tmp_path / "x.avi3", 25)
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "x.mp4", 0)
    with pytest.raises(VideoIOError, match="Audio source not found"):
        VideoWriter(tmp_path / "x.mp4", 25, audio_from=tmp_path / "missing.mp4")
    writer = VideoWriter(tmp_path / "x.mp4", 25)
    writer.write(pattern(0))
    with pytest.raises(VideoIOError, match="was started at 64×48"):
        writer.write(pattern(1, 32, 32))
    writer.close()
    with pytest.raises(VideoIOError, match="already closed"):
        writer.write(pattern(2))
    assert count_frames(tmp_path / "x.mp4") == 1


def test_unknown_codec(tmp_path):
    with pytest.raises(VideoIOError, match="No encoder"):
        with VideoWriter(tmp_path / "x.mkv", 25, codec="no-such-codec") as writer:
            writer.write(pattern(0))


# ---- interrupted renders -----------------------------------------------------------------------------

@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("name", ["render.mp4", "render.mkv"])
def test_exception_inside_with_block_keeps_every_frame(tmp_path, interruption, name):
    path = tmp_path / name
    with pytest.raises(interruption):
        with VideoWriter(path, 25) as writer:
            for i in range(20):
                writer.write(pattern(i))
                if i == 12:
                    raise interruption("stopped")
    assert [index_of(f) for f in read_frames(path)] == list(range(13))


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from rain.io import VideoWriter
    path, count = sys.argv[1], int(sys.argv[2])
    audio = sys.argv[3] if len(sys.argv) > 3 else None
    writer = VideoWriter(path, 25, audio_from=audio)
    for i in range(count):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[..., 0] = (i * 8) % 256
        frame[..., 2] = 100
        writer.write(frame)
    print("written", flush=True)
    time.sleep(120)
""")


def kill_while_writing(path: Path, count: int, audio: Path | None = None) -> None:
    args = [sys.executable, "-c", CHILD, str(path), str(count)] + ([str(audio)] if audio else [])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "written"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()


@pytest.mark.parametrize("name", ["killed.mp4", "killed.mkv", "killed.webm"])
def test_killed_process_leaves_a_playable_file(tmp_path, name):
    # FFmpeg's muxers finish a sample only when the next one arrives, so SIGKILL can cost
    # the last frame written; every earlier frame must be there and decode.
    path = tmp_path / name
    kill_while_writing(path, 20)
    indices = [index_of(f) for f in read_frames(path)]
    assert indices == list(range(len(indices)))
    assert len(indices) >= 19
    assert count_frames(path) == len(indices)


def test_killed_process_with_audio(tmp_path):
    source = make_driving_video(tmp_path / "driving.mp4", 2.0)
    path = tmp_path / "killed.mp4"
    kill_while_writing(path, 20, source)
    assert probe(path).has_audio
    assert len(list(read_frames(path))) >= 19


# ---- audio ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,codec,copied", [("out.mp4", "aac", True), ("out.mkv", "aac", True),
                                               ("out.webm", "opus", False), ("out.mov", "aac", True)])
def test_audio_copied_and_trimmed(tmp_path, name, codec, copied):
    source = make_driving_video(tmp_path / "driving.mp4", 3.0)
    path = tmp_path / name
    with VideoWriter(path, 25, audio_from=source) as writer:
        writer.write_many(pattern(i) for i in range(40))  # 1.6 s of the 3 s source
    assert writer._audio.copying is copied
    assert probe(path).has_audio and count_frames(path) == 40
    samples, rate = decoded_audio(path)
    assert abs(len(samples) / rate - 1.6) < 0.05
    assert dominant_frequency(samples, rate) == pytest.approx(440, abs=5)
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.name == codec


def test_audio_reencoded_when_container_refuses_codec(tmp_path):
    source = make_driving_video(tmp_path / "driving.mkv", 2.0, audio_codec="libopus", rate=48000)
    path = tmp_path / "out.mov"  # MOV cannot hold Opus: re-encoded to AAC
    with VideoWriter(path, 25, audio_from=source) as writer:
        writer.write_many(pattern(i) for i in range(25))
    assert not writer._audio.copying
    samples, rate = decoded_audio(path)
    assert abs(len(samples) / rate - 1.0) < 0.06
    assert dominant_frequency(samples, rate) == pytest.approx(440, abs=5)


def test_audio_start_offset(tmp_path):
    # The tone changes pitch at 1 s; sound starting at 1.2 s must have the second pitch.
    source = make_driving_video(tmp_path / "driving.mp4", 2.0, tone_hz=300, later_tone_hz=600)
    for start, expected_hz in ((0.0, 300), (1.2, 600)):
        path = tmp_path / f"out_{start}.mp4"
        with VideoWriter(path, 25, audio_from=source, audio_start=start) as writer:
            writer.write_many(pattern(i) for i in range(10))
        samples, rate = decoded_audio(path)
        assert abs(len(samples) / rate - 0.4) < 0.05
        assert dominant_frequency(samples, rate) == pytest.approx(expected_hz, abs=10)


def test_audio_shorter_than_video(tmp_path):
    source = make_driving_video(tmp_path / "driving.mp4", 2.0, audio_seconds=0.4)
    path = tmp_path / "out.mp4"
    with VideoWriter(path, 25, audio_from=source) as writer:
        writer.write_many(pattern(i) for i in range(30))
    assert [index_of(f) for f in read_frames(path)] == list(range(30))
    with av.open(str(path)) as container:
        times = [p.pts for p in container.demux(container.streams.video[0]) if p.size]
    assert times == sorted(set(times)) and len(times) == 30  # no duplicated timestamps
    samples, rate = decoded_audio(path)
    assert abs(len(samples) / rate - 0.4) < 0.05


def test_source_without_audio_and_formats_without_audio(tmp_path):
    silent = tmp_path / "silent.mp4"
    with VideoWriter(silent, 25) as writer:
        writer.write(pattern(0))
    with VideoWriter(tmp_path / "out.mp4", 25, audio_from=silent) as writer:
        writer.write(pattern(0))
    assert not probe(tmp_path / "out.mp4").has_audio
    source = make_driving_video(tmp_path / "driving.mp4", 1.0)
    with VideoWriter(tmp_path / "out.gif", 25, audio_from=source) as writer:
        writer.write(pattern(0))
    with VideoWriter(tmp_path / "pngs", 25, audio_from=source) as writer:
        writer.write(pattern(0))
    assert len(list(read_frames(tmp_path / "out.gif"))) == 1


# ---- resume state -----------------------------------------------------------------------------------

def test_resume_store_round_trip_and_refusals(tmp_path):
    import torch

    from rain.io.resume import check_same, file_fingerprint
    output = tmp_path / "render.mp4"
    video = tmp_path / "in.mp4"
    video.write_bytes(b"frames" * 1000)
    store = ResumeStore(output)
    assert store.load() is None and store.folder == resume_dir(output) == tmp_path / "render.mp4.resume"
    settings = {"seed": 42, "size": [512, 512]}
    inputs = {"driving video": {"path": str(video), "fingerprint": file_fingerprint(video)}}
    store.save({"a": torch.arange(3.0)}, {"frames_written": 64, "settings": settings, "inputs": inputs})
    store.save({"a": torch.arange(4.0)}, {"frames_written": 128, "settings": settings, "inputs": inputs})
    tensors, record = store.load()
    assert record["frames_written"] == 128 and torch.equal(tensors["a"], torch.arange(4.0))
    assert sorted(p.name for p in store.folder.iterdir()) == ["state-000000128.safetensors", "state.json"]
    check_same(record, settings, {"driving video": video}, output)
    with pytest.raises(ResumeRefused, match="the setting 'seed' changed — it was 42 when the render started, now 1"):
        check_same(record, {**settings, "seed": 1}, {"driving video": video}, output)
    video.write_bytes(b"other" * 1000)
    with pytest.raises(ResumeRefused, match="the driving video .* changed since the render started"):
        check_same(record, settings, {"driving video": video}, output)
    store.clear()
    assert not store.folder.exists() and store.load() is None
    store.clear()  # no error when already gone


def test_damaged_resume_state(tmp_path):
    store = ResumeStore(tmp_path / "render.mp4")
    store.folder.mkdir()
    (store.folder / "state.json").write_text("{not json")
    with pytest.raises(VideoIOError, match="damaged"):
        store.load()


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm"])
def test_interrupted_video_is_continued_from_its_first_frames(tmp_path, suffix):
    frames = [pattern(i) for i in range(12)]
    with VideoWriter(tmp_path / f"first{suffix}", 25) as writer:
        writer.write_many(frames)
    with VideoWriter(tmp_path / f"next{suffix}", 25, size=frames[0].shape[:2],
                     continue_from=tmp_path / f"first{suffix}", keep_frames=7) as writer:
        assert writer.frames_written == 7
        writer.write_many(frames[7:])
    with av.open(str(tmp_path / f"first{suffix}")) as a, av.open(str(tmp_path / f"next{suffix}")) as b:
        first = [f.to_ndarray(format="rgb24") for f in a.decode(video=0)]
        continued = [f.to_ndarray(format="rgb24") for f in b.decode(video=0)]
    assert len(continued) == 12
    assert all(np.array_equal(x, y) for x, y in zip(first[:7], continued[:7]))   # the very packets
    with pytest.raises(VideoIOError, match="holds only 12 of the 20 frames"):
        VideoWriter(tmp_path / f"more{suffix}", 25, size=frames[0].shape[:2],
                    continue_from=tmp_path / f"first{suffix}", keep_frames=20)
