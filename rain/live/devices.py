"""Local devices around a live session: a camera read with OpenCV (for users without a browser) and a virtual
camera (pyvirtualcam) that other programs — OBS, video calls — can pick as a webcam."""

from __future__ import annotations

import logging
import sys
import threading
import time

from .protocol import CameraFrame

log = logging.getLogger("rain.live")

VIRTUAL_CAMERA_HELP = ("the virtual camera needs the pyvirtualcam package (`python -m pip install pyvirtualcam`) "
                       "and a virtual camera device: OBS Studio's virtual camera on Windows and macOS, "
                       "v4l2loopback on Linux (`sudo modprobe v4l2loopback exclusive_caps=1`)")


def capture_backend(source, platform: str | None = None) -> tuple:
    """Extra VideoCapture arguments: DirectShow for a camera number on Windows (OpenCV's default there, Media
    Foundation, opens many webcams slowly or not at all); the default elsewhere and for video files."""
    import cv2
    if isinstance(source, int) and (platform or sys.platform) == "win32":
        return (cv2.CAP_DSHOW,)
    return ()


class LocalCamera:
    """Reads a camera (its index) or a video file with OpenCV in a thread and submits every frame to the session.
    A video file is read at its own frame rate (or ``fps``), from the start again when ``loop``."""

    def __init__(self, source: int | str, session, *, fps: float | None = None, loop: bool = False):
        self.source, self.session, self.fps, self.loop = source, session, fps, loop
        self.frames = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _open(self):
        import cv2
        capture = cv2.VideoCapture(self.source, *capture_backend(self.source))
        if not capture.isOpened():
            what = f"camera {self.source}" if isinstance(self.source, int) else f"video file {self.source}"
            raise OSError(f"{what} could not be opened: check that it exists and that no other program uses it "
                          f"(Linux: `v4l2-ctl --list-devices` lists the cameras)")
        return capture

    def start(self) -> "LocalCamera":
        capture = self._open()  # fail here, in the caller, rather than silently in the thread
        self._thread = threading.Thread(target=self._run, args=(capture,), name="rain-live-camera", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, capture) -> None:
        import cv2
        is_file = not isinstance(self.source, int)
        rate = self.fps or (capture.get(cv2.CAP_PROP_FPS) if is_file else 0) or 0
        token = self.session.claim_source()
        next_time = time.perf_counter()
        failures = 0
        try:
            while not self._stop.is_set():
                ok, bgr = capture.read()
                if not ok:
                    if is_file and self.loop:
                        capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                        continue
                    failures += 1
                    if is_file or failures > 50:
                        if not is_file:
                            self.error = f"camera {self.source} stopped delivering frames"
                            log.warning("RAIN live: %s", self.error)
                        return
                    time.sleep(0.02)
                    continue
                failures = 0
                now = time.perf_counter()
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                self.session.submit(CameraFrame(self.frames, now * 1000.0, now, rgb), token)
                self.frames += 1
                if rate > 0:
                    next_time += 1.0 / rate
                    time.sleep(max(0.0, next_time - time.perf_counter()))
        finally:
            capture.release()


class VirtualCamera:
    """Sends the session's frames to a virtual camera at a steady ``fps`` (repeating the last frame when the model
    is slower). Raises ``RuntimeError`` with what to install when pyvirtualcam or a device is missing."""

    def __init__(self, session, fps: float = 30.0, device: str | None = None):
        try:
            import pyvirtualcam
        except ImportError:
            raise RuntimeError(VIRTUAL_CAMERA_HELP) from None
        try:
            self.camera = pyvirtualcam.Camera(session.width, session.height, fps, device=device,
                                              fmt=pyvirtualcam.PixelFormat.RGB)
        except Exception as error:  # pyvirtualcam raises RuntimeError/ValueError when no device is there
            raise RuntimeError(f"no virtual camera could be opened ({error}); {VIRTUAL_CAMERA_HELP}") from None
        self.session = session
        self.device = getattr(self.camera, "device", device)
        self.sent = 0
        self._latest = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rain-live-virtual-camera", daemon=True)

    def deliver(self, frame) -> None:
        self._latest = frame.rgb

    def notify(self, event: dict) -> None:
        pass

    def start(self) -> "VirtualCamera":
        self.session.subscribe(self)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.session.unsubscribe(self)
        self._stop.set()
        self._thread.join(timeout)
        self.camera.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            frame = self._latest
            if frame is not None:
                self.camera.send(frame)
                self.sent += 1
            self.camera.sleep_until_next_frame()
