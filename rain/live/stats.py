"""What a live session reports: rates over the last seconds, latency percentiles over the last frames, counts."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from .protocol import REJECT_REASONS

RATE_WINDOW_S = 3.0
LATENCY_FRAMES = 300


class RollingRate:
    """Events per second over the last ``window`` seconds."""

    def __init__(self, window: float = RATE_WINDOW_S, clock=time.perf_counter):
        self.window, self.clock = window, clock
        self.times: deque[float] = deque()

    def add(self, when: float | None = None) -> None:
        self.times.append(self.clock() if when is None else when)
        self._trim(self.times[-1])

    def _trim(self, now: float) -> None:
        while self.times and self.times[0] < now - self.window:
            self.times.popleft()

    def rate(self) -> float:
        now = self.clock()
        self._trim(now)
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / max(now - self.times[0], 1e-9)


class Percentiles:
    """p50/p95 of the last ``size`` values (milliseconds)."""

    def __init__(self, size: int = LATENCY_FRAMES):
        self.values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self.values.append(float(value))

    def summary(self) -> dict[str, float | None]:
        if not self.values:
            return {"p50": None, "p95": None}
        p50, p95 = np.percentile(np.fromiter(self.values, float), [50, 95])
        return {"p50": round(float(p50), 1), "p95": round(float(p95), 1)}


class LiveStats:
    """Thread-safe counters of one session: the worker, the routes and the subscribers all write here."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.frames_received = 0       # accepted into the input queue
            self.frames_dropped = 0        # pushed out of the full queue by newer frames
            self.frames_emitted = 0
            self.rejected = {reason: 0 for reason in REJECT_REASONS}
            self.reference_swaps = 0
            self.calibration_changes = 0
            self.restarts = 0              # streams reopened after the host moved the models mid-call
            self.rate_in = RollingRate()
            self.rate_out = RollingRate()
            self.server_latency = Percentiles()   # arrival on the server → frame handed to the subscribers
            self.window_wait = Percentiles()      # arrival → arrival of the frame that completed its last group
            self.machine_time = Percentiles()     # that frame's arrival → frame handed out (pose, UNet, decode)
            self.client_latency = Percentiles()   # camera frame → shown frame, as clients report it
            self.pose_ms = Percentiles(100)
            self.call_ms = Percentiles(100)

    def received(self, dropped: int) -> None:
        with self.lock:
            self.frames_received += 1
            self.frames_dropped += dropped
            self.rate_in.add()

    def reject(self, reason: str) -> None:
        with self.lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def emitted(self, received: float, trigger_received: float, emitted: float) -> None:
        with self.lock:
            self.frames_emitted += 1
            self.rate_out.add(emitted)
            self.server_latency.add((emitted - received) * 1000.0)
            self.window_wait.add((trigger_received - received) * 1000.0)
            self.machine_time.add((emitted - trigger_received) * 1000.0)

    def shown(self, latencies_ms) -> None:
        with self.lock:
            for value in latencies_ms:
                self.client_latency.add(value)

    def count(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def stage(self, name: str, milliseconds: float) -> None:
        with self.lock:
            getattr(self, f"{name}_ms").add(milliseconds)

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "fps_in": round(self.rate_in.rate(), 2), "fps_out": round(self.rate_out.rate(), 2),
                "frames_received": self.frames_received, "frames_dropped": self.frames_dropped,
                "frames_emitted": self.frames_emitted, "rejected": dict(self.rejected),
                "rejected_total": sum(self.rejected.values()),
                "latency_ms": self.server_latency.summary(), "window_wait_ms": self.window_wait.summary(),
                "machine_ms": self.machine_time.summary(), "client_latency_ms": self.client_latency.summary(),
                "pose_ms": self.pose_ms.summary(), "call_ms": self.call_ms.summary(),
                "reference_swaps": self.reference_swaps, "calibration_changes": self.calibration_changes,
                "restarts": self.restarts,
            }
