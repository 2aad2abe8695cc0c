"""A live session: camera frames in, animated frames out, never falling behind.

::

    camera frames ──► LatestFrames (bounded; the newest frame wins) ──► worker thread:
                         decode → pose stage (batched when several frames wait) → stream.push
                      ──► finished frames ──► every subscriber (page, OBS viewer, virtual camera)

A frame leaves the stream once its group has passed every noise level: ``latency_frames`` camera frames after the
last frame of its group arrived, plus the wait for its group to fill (``window`` in the stats). Everything else
(pose stage, UNet call, decoding, encoding) is what the machine adds (``machine`` in the stats).

The session never imports a host. A host that may move the models away between calls (ComfyUI's memory manager)
passes ``prepare``: called before every push, it puts the models back and returns True when it had to.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from ..sampling.stream import StreamSettings
from .pose_stage import SLIDER_RANGES, LiveTask, PoseStage
from .protocol import OUTPUT_FORMATS, CameraFrame, Rejected, encode_image, output_message
from .stats import LiveStats

log = logging.getLogger("rain.live")


@dataclass
class LiveSettings:
    """Stream settings plus what only a live session has. ``queue_size`` 0 = one group of frames.
    ``backend``: 'eager' (plain PyTorch) or an accelerated backend when the pipeline offers one."""
    stream: StreamSettings = field(default_factory=StreamSettings)
    queue_size: int = 0
    backend: str = "eager"
    output_format: str = "jpeg"
    output_quality: int = 85

    def __post_init__(self):
        if self.stream.decoder not in ("taesdv", "vae"):
            raise ValueError("a live session shows frames: use the 'taesdv' (fast) or 'vae' decoder")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {sorted(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if self.queue_size < 0:
            raise ValueError("queue_size must be 0 (one group) or more")
        if not 1 <= self.output_quality <= 100:
            raise ValueError(f"output_quality must be 1 to 100, got {self.output_quality}")

    @property
    def capacity(self) -> int:
        return self.queue_size or self.stream.frames_per_group


def available_backends(pipeline) -> tuple[str, ...] | None:
    """('eager',) when the pipeline has only the eager stream, None when ``open_stream`` takes a ``backend``
    (it then checks the name itself)."""
    return None if "backend" in inspect.signature(pipeline.open_stream).parameters else ("eager",)


class LatestFrames:
    """A bounded queue where the newest frame wins: putting into a full queue pushes the oldest out."""

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self.items: deque = deque()
        self.condition = threading.Condition()

    def put(self, item) -> int:
        """Add ``item``; returns how many older items were dropped to make room (0 or 1)."""
        with self.condition:
            dropped = 0
            while len(self.items) >= self.capacity:
                self.items.popleft()
                dropped += 1
            self.items.append(item)
            self.condition.notify()
            return dropped

    def take(self, most: int, timeout: float) -> list:
        """Up to ``most`` items, oldest first, waiting up to ``timeout`` seconds for the first."""
        with self.condition:
            if not self.items:
                self.condition.wait(timeout)
            return [self.items.popleft() for _ in range(min(most, len(self.items)))]

    def clear(self) -> None:
        with self.condition:
            self.items.clear()

    def wake(self) -> None:
        with self.condition:
            self.condition.notify_all()

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class LiveFrame:
    """One animated frame, with the camera frame it came from and when things happened (perf_counter seconds)."""
    index: int
    sequence: int
    capture_ms: float
    received: float
    trigger_received: float          # arrival of the camera frame whose group call finished this frame
    emitted: float
    rgb: np.ndarray                  # H×W×3 uint8
    _encoded: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def encoded(self, fmt: str = "jpeg", quality: int = 85) -> bytes:
        """The image file, encoded once per format however many subscribers ask."""
        with self._lock:
            key = (fmt, quality)
            if key not in self._encoded:
                self._encoded[key] = encode_image(self.rgb, fmt, quality)
            return self._encoded[key]

    def message(self, fmt: str = "jpeg", quality: int = 85) -> bytes:
        image = self.encoded(fmt, quality)
        return output_message(self.sequence, self.capture_ms, (time.perf_counter() - self.received) * 1000.0, image)


class Subscriber(Protocol):
    """Receives every finished frame and session events. Both are called from the worker thread and must return
    at once (hand the frame to your own thread or event loop)."""

    def deliver(self, frame: LiveFrame) -> None: ...

    def notify(self, event: dict) -> None: ...


class CallbackSubscriber:
    """Calls ``on_frame(frame)`` (and ``on_event(event)``) in the worker thread: only for quick work."""

    def __init__(self, on_frame: Callable[[LiveFrame], None], on_event: Callable[[dict], None] | None = None):
        self.on_frame, self.on_event = on_frame, on_event

    def deliver(self, frame: LiveFrame) -> None:
        self.on_frame(frame)

    def notify(self, event: dict) -> None:
        if self.on_event is not None:
            self.on_event(event)


class LiveSession:
    """See the module doc. ``reference``: a fused reference; its size is the session's frame size.
    ``fuse(image) -> Reference`` makes a reference from an uploaded picture (default: the pipeline's, at the
    session's size). ``prepare() -> bool``: see the module doc."""

    def __init__(self, pipeline, reference, task: LiveTask | None = None, settings: LiveSettings | None = None, *,
                 session_id: str = "live", prepare: Callable[[], bool] | None = None,
                 fuse: Callable[[object], object] | None = None):
        self.pipeline, self.reference = pipeline, reference
        self.task = task or LiveTask(kind="pose")
        self.settings = settings or LiveSettings()
        backends = available_backends(pipeline)
        if backends is not None and self.settings.backend not in backends:
            raise ValueError(f"backend {self.settings.backend!r} is not available in this version (choose from "
                             f"{list(backends)})")
        self.id = session_id
        self.height, self.width = reference.height, reference.width
        self.prepare = prepare
        self._fuse = fuse or (lambda image: pipeline.fuse_reference(image, self.height, self.width))
        self.stats = LiveStats()
        self.queue = LatestFrames(self.settings.capacity)
        self.pose_stage = PoseStage(self.task, (self.height, self.width))
        self.stream = None
        self.error: str | None = None
        self.last_pose: np.ndarray | None = None
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._pending_reference = None
        self._source = 0
        self._outputs = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> None:
        """Open a fresh stream and start the worker (no-op while running)."""
        with self._lock:
            if self.running:
                return
            if self._thread is not None:
                self._thread.join()
            self._stop.clear()
            self.error = None
            self.queue.clear()
            self._thread = threading.Thread(target=self._run, name=f"rain-live-{self.id}", daemon=True)
            self._thread.start()
        self._broadcast(self.state_event())

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker after its current call; the stream (and the frames in flight) is dropped."""
        with self._lock:
            thread = self._thread
            self._stop.set()
            self.queue.wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("RAIN live %s: the worker did not stop within %.0f s", self.id, timeout)
        self.queue.clear()
        self._broadcast(self.state_event())

    def close(self) -> None:
        self.stop()
        with self._lock:
            self._subscribers.clear()

    # -- input --------------------------------------------------------------------------------------------------
    def claim_source(self) -> int:
        """Make the caller the camera of this session (the newest claim wins; earlier cameras are refused, so two
        tabs never interleave their frames in one stream). Returns the token to submit with."""
        with self._lock:
            self._source += 1
            return self._source

    @property
    def camera(self) -> int:
        """The token of the camera whose frames are taken (see ``claim_source``)."""
        return self._source

    def submit(self, frame: CameraFrame, source: int | None = None) -> bool:
        """Queue a camera frame; False when it was not taken (session stopped, or another camera took over)."""
        if source is not None and source != self._source:
            self.stats.reject("superseded")
            return False
        if not self.running:
            return False
        self.stats.received(self.queue.put(frame))
        return True

    def reject(self, reason: str) -> None:
        self.stats.reject(reason)

    # -- changes while running ----------------------------------------------------------------------------------
    def set_reference(self, reference) -> None:
        """Swap the character from the next call on; the stream (and its motion) carries on."""
        with self._lock:
            self._pending_reference = reference
            self.reference = reference
        self.stats.count("reference_swaps")
        self._broadcast({"type": "reference", "swaps": self.stats.reference_swaps})

    def swap_reference_image(self, image) -> None:
        """Fuse ``image`` (in the caller's thread; the stream keeps running meanwhile) and swap to it."""
        self.set_reference(self._fuse(image))

    def set_calibration(self, preset: str, params: dict | None = None) -> None:
        """A new landmark transform, used from the next frame on."""
        self.pose_stage.set_calibration(preset, params)
        self.stats.count("calibration_changes")

    # -- output -------------------------------------------------------------------------------------------------
    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    def _broadcast(self, event: dict) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.notify(event)
            except Exception:  # a broken subscriber must not stop the session
                log.exception("RAIN live %s: a subscriber failed", self.id)

    def _publish(self, frame: LiveFrame) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.deliver(frame)
            except Exception:
                log.exception("RAIN live %s: a subscriber failed", self.id)

    # -- reports --------------------------------------------------------------------------------------------------
    @property
    def latency_frames(self) -> int:
        return (self.settings.stream.num_groups - 1) * self.settings.stream.frames_per_group

    def state_event(self) -> dict:
        return {"type": "state", "running": self.running, "error": self.error}

    def stats_event(self) -> dict:
        return {"type": "stats", "running": self.running, "error": self.error, "queue": len(self.queue),
                "queue_capacity": self.queue.capacity, "latency_frames": self.latency_frames,
                **self.stats.snapshot()}

    def info(self) -> dict:
        stream = self.settings.stream
        return {"type": "session", "session": self.id, "running": self.running, "error": self.error,
                "width": self.width, "height": self.height, "task": self.task.kind,
                "frames_per_group": stream.frames_per_group, "num_groups": stream.num_groups,
                "latency_frames": self.latency_frames, "backend": self.settings.backend,
                "output_format": self.settings.output_format,
                "calibration": {"preset": self.task.preset, "params": dict(self.task.calibration),
                                "ranges": {k: list(v) for k, v in SLIDER_RANGES.items()}}
                if self.task.kind == "face" else None}

    # -- the worker -----------------------------------------------------------------------------------------------
    def _open_stream(self):
        options = {} if self.settings.backend == "eager" else {"backend": self.settings.backend}
        with self._lock:
            self._pending_reference = None
            reference = self.reference
        self.stream = self.pipeline.open_stream(reference, self.settings.stream, height=self.height,
                                                width=self.width, **options)
        return self.stream

    def _run(self) -> None:
        in_flight: deque[CameraFrame] = deque()
        try:
            if self.prepare is not None:
                self.prepare()
            self._open_stream()
            self.pose_stage.reset()
            group = self.settings.stream.frames_per_group
            while not self._stop.is_set():
                with self._lock:
                    reference, self._pending_reference = self._pending_reference, None
                if reference is not None:
                    self.stream.set_reference(reference)
                frames = self.queue.take(group - len(self.stream.state.pending), timeout=0.1)
                if frames and not self._stop.is_set():
                    self._process(frames, in_flight)
        except Exception as error:  # reported to every page; the server and other sessions carry on
            log.exception("RAIN live %s stopped", self.id)
            self.error = f"{type(error).__name__}: {error}"
            self._stop.set()
        finally:
            self.stream = None
            self._broadcast(self.state_event())

    def _process(self, frames: list[CameraFrame], in_flight: deque) -> None:
        images, kept = [], []
        for frame in frames:
            try:
                images.append(frame.rgb())
                kept.append(frame)
            except Rejected as rejected:
                self.stats.reject(rejected.reason)
        if not kept:
            return
        started = time.perf_counter()
        poses = self.pose_stage(images)
        self.stats.stage("pose", (time.perf_counter() - started) * 1000.0)
        self.last_pose = poses[-1]
        for frame, pose in zip(kept, poses):
            tensor = torch.from_numpy(np.ascontiguousarray(pose)).permute(2, 0, 1).float().div_(255.0)
            in_flight.append(frame)
            started, calls = time.perf_counter(), self.stream.unet_calls
            finished = self._push(tensor, in_flight)
            if self.stream.unet_calls != calls:
                self.stats.stage("call", (time.perf_counter() - started) * 1000.0)
            for output in finished:
                source = in_flight.popleft()
                rgb = (output.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
                emitted = time.perf_counter()
                live = LiveFrame(self._outputs, source.sequence, source.capture_ms, source.received,
                                 frame.received, emitted, rgb)
                self._outputs += 1
                self.stats.emitted(source.received, frame.received, emitted)
                self._publish(live)

    def _push(self, tensor: torch.Tensor, in_flight: deque) -> list[torch.Tensor]:
        if self.prepare is not None:
            self.prepare()
        try:
            return self.stream.push(tensor)
        except Exception:
            # The host moved the models away during the call: the window is lost, not the session.
            if self.prepare is not None and self.prepare():
                log.warning("RAIN live %s: the models were moved during a call; restarting the stream", self.id)
                in_flight.clear()
                self._open_stream()
                self.stats.count("restarts")
                return []
            raise
