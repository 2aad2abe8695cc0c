"""Live sessions on reduced-size weights, driven through the websocket route as a page drives them: frame order,
bounded queues when frames come faster than the model, bad frames, foreign origins, reference swap, calibration,
and a clean shutdown. Waits are bounded polls, never timing assertions."""

import asyncio
import io
import threading
import time

import aiohttp
import numpy as np
import pytest
import torch
from PIL import Image

from rain.live.pose_stage import LiveTask, translations_for
from rain.live.protocol import FrameLimits, encode_image, frame_message, parse_output
from rain.live.server import LiveRegistry, LiveRoutes, OriginPolicy
from rain.live.session import LatestFrames, LiveSession, LiveSettings
from rain.live.standalone import build_app
from rain.sampling.stream import StreamSettings

SIZE = 64
FAST = StreamSettings(frames_per_group=1, num_groups=2, seed=3)   # the first frame comes out after two


@pytest.fixture(scope="module")
def reference(tiny_pipeline):
    picture = (np.random.default_rng(1).random((80, 60, 3)) * 255).astype(np.uint8)
    return tiny_pipeline.fuse_reference(picture, SIZE, SIZE)


def camera_jpeg(seed=0, width=96, height=72):
    return encode_image((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8), "jpeg")


def wait_for(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


class Gate:
    """``prepare`` that holds the worker until opened: makes 'the model is slower than the camera' exact."""

    def __init__(self):
        self.open = threading.Event()

    def __call__(self) -> bool:
        self.open.wait(60)
        return False


class Server:
    """A live server on a free loopback port, for the duration of one coroutine."""

    def __init__(self, session: LiveSession, limits: FrameLimits | None = None):
        self.registry = LiveRegistry()
        self.session = self.registry.add(session)
        self.routes = LiveRoutes(self.registry, limits=limits or FrameLimits(), policy=OriginPolicy.loopback(),
                                 stats_interval=0.1)

    async def __aenter__(self):
        from aiohttp.test_utils import TestServer
        self.server = TestServer(build_app(self.routes), host="127.0.0.1")
        await self.server.start_server()
        self.origin = f"http://127.0.0.1:{self.server.port}"
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc):
        await self.http.close()
        await self.server.close()
        self.registry.close_all()

    def url(self, path: str) -> str:
        return f"{self.origin}/rain/live{path}"

    def connect(self, role="camera", origin=None, **headers):
        return self.http.ws_connect(self.url(f"/ws?role={role}"), headers={"Origin": origin or self.origin, **headers})


async def collect(ws, frames: list, events: list, until, timeout: float = 60.0):
    """Read messages until ``until()`` is true (or the socket closes)."""
    deadline = time.monotonic() + timeout
    while not until():
        try:
            message = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise AssertionError(f"gave up after {timeout:.0f} s: {len(frames)} frames, last events "
                                 f"{events[-2:]}") from None
        if message.type == aiohttp.WSMsgType.BINARY:
            frames.append(parse_output(message.data))
        elif message.type == aiohttp.WSMsgType.TEXT:
            events.append(message.json())
        else:
            return


async def send_taken(ws, session: LiveSession, message: bytes) -> None:
    """Send one frame and wait until the worker has taken it from the queue (so none is dropped)."""
    count = session.stats.frames_received
    await ws.send_bytes(message)
    await asyncio.to_thread(wait_for, lambda: session.stats.frames_received > count and not len(session.queue),
                            "the worker to take the frame")


def run(coroutine):
    return asyncio.run(coroutine)


def test_latest_frames_queue_keeps_the_newest():
    queue = LatestFrames(3)
    dropped = sum(queue.put(i) for i in range(10))
    assert dropped == 7 and len(queue) == 3
    assert queue.take(2, timeout=0) == [7, 8] and queue.take(5, timeout=0) == [9]
    assert queue.take(1, timeout=0.01) == []


def test_frames_come_back_in_order(tiny_pipeline, reference):
    session = LiveSession(tiny_pipeline, reference, settings=LiveSettings(FAST))
    session.start()

    async def main():
        async with Server(session) as server, server.connect() as ws:
            hello = await ws.receive_json()
            assert hello["type"] == "session" and hello["width"] == SIZE and hello["role"] == "camera"
            frames, events = [], []
            for sequence in range(12):
                await send_taken(ws, session, frame_message(sequence, 1000.0 + sequence, camera_jpeg(sequence)))
            await collect(ws, frames, events, lambda: len(frames) >= 11)
            return frames, events

    frames, events = run(main())
    # A window of 2 groups of 1 frame: every frame but the last is out, in camera order.
    assert [f[0] for f in frames] == list(range(11))
    for sequence, capture_ms, server_ms, image in frames:
        assert capture_ms == 1000.0 + sequence          # the camera's own timestamp, echoed for its latency
        assert server_ms >= 0 and image[:3] == b"\xff\xd8\xff"
    from io import BytesIO

    from PIL import Image
    assert Image.open(BytesIO(frames[0][3])).size == (SIZE, SIZE)
    stats = [e for e in events if e["type"] == "stats"]
    assert stats and {"fps_in", "fps_out", "latency_ms", "frames_dropped", "queue"} <= set(stats[-1])
    assert stats[-1]["latency_frames"] == 1


def test_queue_stays_bounded_when_frames_come_faster_than_the_model(tiny_pipeline, reference):
    gate = Gate()
    settings = LiveSettings(StreamSettings(frames_per_group=2, num_groups=2, seed=3))
    session = LiveSession(tiny_pipeline, reference, settings=settings, prepare=gate)
    session.start()
    sent = 40

    async def main():
        async with Server(session, FrameLimits(max_rate=1000, burst=1000)) as server, server.connect() as ws:
            await ws.receive_json()
            for sequence in range(sent):
                await ws.send_bytes(frame_message(sequence, float(sequence), camera_jpeg(sequence % 4)))
            await asyncio.to_thread(wait_for, lambda: session.stats.frames_received == sent, "all frames in")
            depth = len(session.queue)
            gate.open.set()
            await asyncio.to_thread(wait_for, lambda: not len(session.queue), "the worker to take the group")
            for sequence in (sent, sent + 1):   # the next group pushes the first one out of the 2-group window
                await ws.send_bytes(frame_message(sequence, float(sequence), camera_jpeg()))
            frames, events = [], []
            await collect(ws, frames, events, lambda: len(frames) >= 2)
            return depth, frames

    depth, frames = run(main())
    assert depth == session.queue.capacity == 2          # one group: the newest two frames
    stats = session.stats.snapshot()
    assert stats["frames_dropped"] == sent - 2
    assert [f[0] for f in frames[:2]] == [sent - 2, sent - 1]   # what comes out is what was newest


def test_bad_frames_are_dropped_and_counted_never_fatal(tiny_pipeline, reference):
    session = LiveSession(tiny_pipeline, reference, settings=LiveSettings(FAST))
    session.start()
    limits = FrameLimits(max_bytes=40_000, max_side=1024)
    good = camera_jpeg()
    truncated = encode_image((np.random.default_rng(5).random((200, 200, 3)) * 255).astype(np.uint8), "jpeg")

    async def main():
        async with Server(session, limits) as server:
            async with server.connect() as ws:
                await ws.receive_json()
                for data in (b"garbage", frame_message(0, 0, b"GIF89a" + b"\0" * 40), frame_message(1, 0, b"\0" * 30),
                             frame_message(3, 0, b"\xff\xd8\xff" + bytes(limits.max_bytes))):
                    await ws.send_bytes(data)
                await ws.send_str("not json")
                await asyncio.to_thread(wait_for, lambda: session.stats.snapshot()["rejected_total"] == 5, "rejects")
                # The half JPEG's header is intact: it is queued, and the worker finds it short when decoding.
                await send_taken(ws, session, frame_message(2, 0, truncated[: len(truncated) // 2]))
                await asyncio.to_thread(wait_for, lambda: session.stats.rejected["truncated"] == 1, "the decoder")
                for sequence in range(10, 13):
                    await send_taken(ws, session, frame_message(sequence, 0, good))
                frames, events = [], []
                await collect(ws, frames, events, lambda: len(frames) >= 2)
                assert [f[0] for f in frames] == [10, 11]
            async with server.connect() as ws:                   # over the hard limit: this connection ends
                await ws.receive_json()
                await ws.send_bytes(frame_message(20, 0, bytes(limits.hard_max_bytes + 1)))
                message = await ws.receive(timeout=30)
                while message.type == aiohttp.WSMsgType.TEXT:
                    message = await ws.receive(timeout=30)
                assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            async with server.connect() as ws:                   # ... and the session carries on
                await ws.receive_json()
                for sequence in range(30, 33):
                    await send_taken(ws, session, frame_message(sequence, 0, good))
                frames, events = [], []
                await collect(ws, frames, events, lambda: len(frames) >= 2)
                assert session.running and session.error is None
            return frames

    frames = run(main())
    # The session outlives connections: frame 12, still in the window, leaves first.
    assert [f[0] for f in frames] == [12, 30]
    rejected = session.stats.snapshot()["rejected"]
    assert rejected["unsupported"] == 2                     # the GIF, the zeros
    assert rejected["oversized"] == 2                       # over max_bytes (dropped), over the hard limit (closed)
    assert rejected["malformed"] == 2                       # no header, the JSON that is not
    assert rejected["truncated"] == 1


def test_foreign_origins_and_hosts_are_refused(tiny_pipeline, reference):
    session = LiveSession(tiny_pipeline, reference, settings=LiveSettings(FAST))

    async def main():
        async with Server(session) as server:
            for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                            {"Origin": "http://127.0.0.1:1"}, {"Origin": server.origin, "Host": "evil.example"}):
                with pytest.raises(aiohttp.WSServerHandshakeError) as error:
                    async with server.http.ws_connect(server.url("/ws"), headers=headers):
                        pass
                assert error.value.status == 403, headers
            response = await server.http.post(server.url("/reference"), data=camera_jpeg(),
                                              headers={"Origin": "http://evil.example"})
            assert response.status == 403
            response = await server.http.get(server.url("/sessions"), headers={"Host": "rebound.example:80"})
            assert response.status == 403
            for name in ("..%2Fsession.py", "../session.py", "index.html", "%2e%2e%2fserver.py"):
                response = await server.http.get(server.url(f"/static/{name}"))
                assert response.status == 404, name
            page = await server.http.get(server.url("/"))
            assert page.status == 200 and "static/standalone.js" in await page.text()
            assert "frame-ancestors" in page.headers["Content-Security-Policy"]
            script = await server.http.get(server.url("/static/live_panel.js"))
            assert script.status == 200 and script.content_type == "text/javascript"

    run(main())


def test_reference_swap_while_running(tiny_pipeline, reference):
    session = LiveSession(tiny_pipeline, reference, settings=LiveSettings(FAST))
    session.start()
    picture = (np.random.default_rng(9).random((70, 50, 3)) * 255).astype(np.uint8)

    async def main():
        async with Server(session) as server, server.connect() as ws:
            await ws.receive_json()
            frames, events = [], []
            for sequence in range(3):
                await send_taken(ws, session, frame_message(sequence, 0, camera_jpeg(sequence)))
            await collect(ws, frames, events, lambda: len(frames) >= 2)
            bad = await server.http.post(server.url("/reference"), data=b"not an image",
                                         headers={"Origin": server.origin})
            assert bad.status == 400 and "not an image Pillow can read" in (await bad.json())["error"]
            response = await server.http.post(server.url("/reference?session=live"), data=encode_image(picture, "png"),
                                              headers={"Origin": server.origin, "Content-Type": "image/png"})
            assert response.status == 200, await response.text()
            assert (await response.json())["reference_swaps"] == 1
            for sequence in range(3, 6):
                await send_taken(ws, session, frame_message(sequence, 0, camera_jpeg(sequence)))
            await collect(ws, frames, events, lambda: len(frames) >= 5)
            assert session.stream.reference is session.reference     # the worker attends to the new one
            return frames, events

    frames, events = run(main())
    assert any(e["type"] == "reference" and e["swaps"] == 1 for e in events)
    assert [f[0] for f in frames] == [0, 1, 2, 3, 4]            # the stream carried on across the swap
    expected = tiny_pipeline.fuse_reference(picture, SIZE, SIZE)
    swapped = session.reference
    assert swapped is not reference
    for name, value in expected.features.items():
        torch.testing.assert_close(swapped.features[name], value)


@pytest.fixture(scope="module")
def face_detector():
    from test_nodes_run import face_simcc

    from rain.pose.dwpose import DWPoseDetector
    from rain.pose.stand_in_models import dwpose_stand_in, yolox_stand_in
    return DWPoseDetector.from_files(yolox_stand_in(), dwpose_stand_in(*face_simcc()), providers=["CPUExecutionProvider"])


def test_calibration_changes_the_next_frame(tiny_pipeline, reference, face_detector):
    task = LiveTask(kind="face", detector=face_detector, preset="calibration")
    session = LiveSession(tiny_pipeline, reference, task, LiveSettings(FAST))
    session.start()

    async def main():
        async with Server(session) as server, server.connect() as ws:
            info = await ws.receive_json()
            assert info["calibration"]["params"]["eye_height_ratio"] == 3.0
            assert set(info["calibration"]["ranges"]) == set(info["calibration"]["params"])
            await send_taken(ws, session, frame_message(0, 0, camera_jpeg()))
            await asyncio.to_thread(wait_for, lambda: session.last_pose is not None, "a pose image")
            before = session.last_pose.copy()
            await ws.send_str('{"type": "calibration", "preset": "calibration", "params": {"eye_height_ratio": 1.0}}')
            await ws.send_str('{"type": "calibration", "preset": "sideways"}')       # refused, counted
            await asyncio.to_thread(wait_for, lambda: session.stats.calibration_changes == 1, "the change")
            await send_taken(ws, session, frame_message(1, 0, camera_jpeg()))
            await asyncio.to_thread(wait_for, lambda: not np.array_equal(session.last_pose, before), "a new pose")
            return before, session.last_pose.copy()

    before, after = run(main())
    assert session.pose_stage.renderer.translations == translations_for("calibration", {"eye_height_ratio": 1.0})
    assert session.task.calibration["eye_height_ratio"] == 1.0
    changed = np.argwhere(np.any(before != after, axis=2))
    assert len(changed) and changed[:, 0].max() < SIZE * 0.75     # the eyes moved, not the jaw line below
    assert session.stats.snapshot()["rejected"]["malformed"] == 1


def test_the_newest_camera_takes_over(tiny_pipeline, reference):
    """Two pages on one session never interleave their frames: the newest camera wins, the other is told."""
    session = LiveSession(tiny_pipeline, reference, settings=LiveSettings(FAST))
    session.start()

    async def main():
        async with Server(session) as server, server.connect() as first:
            await first.receive_json()
            async with server.connect() as second:
                await second.receive_json()
                await send_taken(second, session, frame_message(0, 0, camera_jpeg()))
                await first.send_bytes(frame_message(1, 0, camera_jpeg()))
                events = []
                await collect(first, [], events, lambda: any(e["type"] == "error" for e in events))
                return [e for e in events if e["type"] == "error"]

    errors = run(main())
    assert "another camera took over" in errors[0]["message"]
    assert session.stats.rejected["superseded"] == 1 and session.stats.frames_received == 1


def test_clean_shutdown(tiny_pipeline, reference):
    session = LiveSession(tiny_pipeline, reference, settings=LiveSettings(FAST))
    session.start()

    async def main():
        async with Server(session) as server:
            async with server.connect() as ws, server.connect(role="viewer") as viewer:
                await ws.receive_json()
                assert (await viewer.receive_json())["role"] == "viewer"
                await viewer.send_str('{"type": "stop"}')                         # a viewer cannot stop it
                await send_taken(ws, session, frame_message(0, 0, camera_jpeg()))
                await send_taken(ws, session, frame_message(1, 0, camera_jpeg()))
                frames, events = [], []
                await collect(viewer, frames, events, lambda: frames)             # the viewer gets frames too
                await ws.send_str('{"type": "stop"}')
                await collect(ws, [], events, lambda: any(e.get("type") == "state" and not e["running"]
                                                          for e in events))
                assert not session.running
                assert len(session._subscribers) == 2
            await asyncio.to_thread(wait_for, lambda: not session._subscribers, "the sockets to unsubscribe")
            async with server.connect() as ws:                                  # Start again: a fresh stream
                await ws.receive_json()
                await ws.send_str('{"type": "start"}')
                await asyncio.to_thread(wait_for, lambda: session.running, "a restart")

    run(main())
    wait_for(lambda: not session.running, "the registry to stop the session")
    wait_for(lambda: not any(t.name.startswith("rain-live") for t in threading.enumerate()), "the workers to end")
    assert session.error is None


def _png(width, height, mode="RGB", value=128) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), value).save(buffer, "PNG")
    return buffer.getvalue()


def test_reference_uploads_are_read_as_animate_reads_files(tiny_pipeline, reference):
    """The live upload shares animate's reader: empty and tiny images get its messages, EXIF orientation and
    16-bit depth are applied before fusing."""
    session = LiveSession(tiny_pipeline, reference, settings=LiveSettings(FAST))
    fused = []
    session.swap_reference_image = fused.append          # what the route hands over, without a fuse

    exif_rotated = io.BytesIO()
    tall = Image.new("RGB", (40, 64), (200, 30, 30))
    exif = tall.getexif()
    exif[0x0112] = 6                                     # "rotate 90° clockwise to display"
    tall.save(exif_rotated, "JPEG", exif=exif)

    async def main():
        async with Server(session) as server:
            post = lambda data: server.http.post(server.url("/reference"), data=data,   # noqa: E731
                                                 headers={"Origin": server.origin})
            empty = await post(b"")
            tiny = await post(_png(1, 1))
            rotated = await post(exif_rotated.getvalue())
            deep = await post(_png(48, 48, "I;16", 65535))
            return ([await r.json() for r in (empty, tiny)], [r.status for r in (empty, tiny, rotated, deep)])

    (empty, tiny), statuses = run(main())
    assert statuses == [400, 400, 200, 200]
    assert "is empty (0 bytes)" in empty["error"]
    assert "1×1 pixels" in tiny["error"] and "at least 32 pixels" in tiny["error"]
    assert fused[0].size == (64, 40)                      # upright, as animate reads the same file
    assert fused[1].mode == "RGB" and fused[1].getpixel((0, 0)) == (255, 255, 255)   # 16-bit white stays white


async def next_error(ws, timeout: float = 10.0) -> dict:
    """The next JSON message of type "error" (stats and frames in between are skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await ws.receive(timeout=timeout)
        if message.type == aiohttp.WSMsgType.TEXT:
            data = message.json()
            if data.get("type") == "error":
                return data
    raise AssertionError("no error message came back")


def test_a_message_of_the_wrong_kind_is_answered_with_what_was_expected(tiny_pipeline, reference):
    session = LiveSession(tiny_pipeline, reference, settings=LiveSettings(FAST))

    async def main():
        async with Server(session) as server:
            async with server.connect(role="viewer") as viewer:
                await viewer.receive_json()
                await viewer.send_bytes(frame_message(0, 0, camera_jpeg()))
                said = await next_error(viewer)
            async with server.connect() as camera:
                await camera.receive_json()
                await camera.send_bytes(b"\x00garbage")
                garbage = await next_error(camera)
                await camera.send_str('{"type": "dance"}')
                unknown = await next_error(camera)
            return said, garbage, unknown

    said, garbage, unknown = run(main())
    assert said["type"] == "error" and "role=camera" in said["message"]
    assert garbage["type"] == "error" and "header" in garbage["message"] and "JSON text" in garbage["message"]
    assert unknown["type"] == "error" and unknown["message"]
