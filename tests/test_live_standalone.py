"""``python -m rain live`` end to end (a real server process on a free loopback port), the local camera reader
(OpenCV, here on a video file) and the virtual camera (with pyvirtualcam's interface stood in)."""

import asyncio
import sys
import threading
import time
import types

import aiohttp
import numpy as np
import pytest
from live_server import LiveServer

from rain.live.devices import VIRTUAL_CAMERA_HELP, LocalCamera, VirtualCamera
from rain.live.protocol import encode_image, frame_message, parse_output
from rain.live.session import CallbackSubscriber, LiveSession, LiveSettings
from rain.sampling.stream import StreamSettings

SIZE = 64
FAST = StreamSettings(frames_per_group=1, num_groups=2, seed=3)


def wait_for(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("live_cli") / "character.png"
    path.write_bytes(encode_image((np.random.default_rng(2).random((80, 64, 3)) * 255).astype(np.uint8), "png"))
    return path


def test_cli_serves_the_page_and_animates_frames(tiny_models_dir, reference_png):
    server = LiveServer("--models-dir", str(tiny_models_dir), "--reference", str(reference_png), "--task", "pose",
                        "--size", str(SIZE), "--frames-per-group", "1", "--groups", "2")
    try:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/rain/live/")
        origin = server.url.split("/rain/")[0]

        async def main():
            async with aiohttp.ClientSession() as http:
                page = await http.get(server.url)
                assert page.status == 200 and "RAIN live" in await page.text()
                viewer = await http.get(server.url + "viewer")
                assert viewer.status == 200 and "static/viewer.js" in await viewer.text()
                async with http.ws_connect(server.url + "ws", headers={"Origin": origin}) as ws:
                    info = await ws.receive_json()
                    assert (info["width"], info["height"], info["task"]) == (SIZE, SIZE, "pose")
                    frames = []
                    deadline = time.monotonic() + 120
                    sequence = 0
                    while len(frames) < 3 and time.monotonic() < deadline:
                        image = encode_image((np.random.default_rng(sequence).random((48, 64, 3)) * 255)
                                             .astype(np.uint8))
                        await ws.send_bytes(frame_message(sequence, 0.0, image))
                        sequence += 1
                        try:
                            message = await ws.receive(timeout=0.5)
                        except asyncio.TimeoutError:
                            continue
                        if message.type == aiohttp.WSMsgType.BINARY:
                            frames.append(parse_output(message.data)[0])
                    return frames

        frames = asyncio.run(main())
        assert len(frames) >= 3 and frames == sorted(frames)
    finally:
        code, output = server.stop()
    assert code == 0, output
    assert "stopped:" in output and "frames in" in output


def test_cli_says_what_is_missing(tmp_path, reference_png, capsys):
    from rain.cli import main
    assert main(["live", "--models-dir", str(tmp_path), "--reference", str(reference_png), "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert "dwpose" in error and "python -m rain download --dwpose" in error    # checked before loading models
    assert main(["live", "--models-dir", str(tmp_path), "--reference", str(tmp_path / "nobody.png"),
                 "--task", "pose"]) == 2
    assert "nobody.png" in capsys.readouterr().err


@pytest.fixture(scope="module")
def session_factory(tiny_pipeline):
    picture = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    reference = tiny_pipeline.fuse_reference(picture, SIZE, SIZE)
    sessions = []

    def make():
        session = LiveSession(tiny_pipeline, reference, settings=LiveSettings(FAST))
        sessions.append(session)
        return session
    yield make
    for session in sessions:
        session.close()


def test_local_camera_reads_a_video_file(tmp_path, session_factory):
    from rain.io import VideoWriter
    video = tmp_path / "camera.mp4"
    with VideoWriter(video, 24) as writer:
        for index in range(12):
            writer.write(np.full((48, 64, 3), index * 20, np.uint8))
    session = session_factory()
    shown = []
    session.subscribe(CallbackSubscriber(lambda frame: shown.append(frame.sequence)))
    session.start()
    camera = LocalCamera(str(video), session, fps=200).start()
    try:
        wait_for(lambda: not camera.running, "the video's end")
        wait_for(lambda: session.stats.frames_emitted >= 1, "a frame out")
    finally:
        camera.stop()
        session.stop()
    assert camera.frames == 12 and camera.error is None
    assert shown == sorted(shown) and set(shown) <= set(range(12))
    with pytest.raises(OSError, match="could not be opened"):
        LocalCamera(str(tmp_path / "missing.mp4"), session).start()


def test_virtual_camera(session_factory, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)          # not installed
    session = session_factory()
    with pytest.raises(RuntimeError) as error:
        VirtualCamera(session)
    assert str(error.value) == VIRTUAL_CAMERA_HELP and "pip install pyvirtualcam" in VIRTUAL_CAMERA_HELP

    sent, opened = [], []

    class Camera:   # pyvirtualcam.Camera's interface
        def __init__(self, width, height, fps, *, device=None, fmt=None):
            opened.append((width, height, fps, fmt))
            self.device = "/dev/video9"
            self.tick = threading.Event()

        def send(self, frame):
            sent.append(frame.shape)

        def sleep_until_next_frame(self):
            time.sleep(0.005)

        def close(self):
            opened.append("closed")

    fake = types.SimpleNamespace(Camera=Camera, PixelFormat=types.SimpleNamespace(RGB="RGB"))
    monkeypatch.setitem(sys.modules, "pyvirtualcam", fake)
    session.start()
    camera = VirtualCamera(session, fps=30).start()
    try:
        image = encode_image(np.zeros((48, 64, 3), np.uint8))
        from rain.live.protocol import FrameLimits, parse_frame
        for sequence in range(4):
            session.submit(parse_frame(frame_message(sequence, 0.0, image), FrameLimits()))
            wait_for(lambda: not len(session.queue), "the worker")
        wait_for(lambda: sent, "a frame on the virtual camera")
    finally:
        camera.stop()
        session.stop()
    assert opened[0] == (SIZE, SIZE, 30, "RGB") and opened[-1] == "closed"
    assert sent[0] == (SIZE, SIZE, 3) and camera.device == "/dev/video9"


def test_cli_reads_the_reference_as_animate_does_before_any_model(tmp_path, capsys):
    from PIL import Image

    from rain.cli import main
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    for reference, expected in ((empty, "is empty (0 bytes)"), (tmp_path / "one.png", "at least 32 pixels")):
        # An empty models folder: the reference is refused first, so no model is looked for at all.
        assert main(["live", "--models-dir", str(tmp_path / "no-models"), "--reference", str(reference),
                     "--task", "pose", "--port", "0"]) == 2
        error = capsys.readouterr().err
        assert expected in error and str(reference) in error and "Traceback" not in error


def test_cli_max_frames_stops_and_reports_a_real_rate(tiny_models_dir, reference_png, tmp_path):
    import re
    import subprocess

    import shutil

    from test_cli import write_pose_video

    from rain.devtools import write_tiny_declaration
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    write_tiny_declaration(models)   # as make-tiny-models does: the set declares 128×128
    video = tmp_path / "camera.mp4"
    write_pose_video(video, frames=40)
    done = subprocess.run([sys.executable, "-m", "rain", "live", "--models-dir", str(models),
                           "--reference", str(reference_png), "--task", "pose", "--camera", str(video), "--loop",
                           "--frames-per-group", "1", "--groups", "2", "--max-frames", "2", "--port", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("stopped:"))
    out, seconds, rate = re.search(r"(\d+) out in ([\d.]+) s \(([\d.]+) frames/s", line).groups()
    assert int(out) >= 2 and float(seconds) > 0
    assert abs(float(rate) - int(out) / float(seconds)) <= 0.01 + 0.05 * float(rate)   # the count over the time
    assert "RAIN live: 128×128 frames" in done.stdout   # the size the set declares, not 512×512
