"""One-Euro filter for landmark streams (Casiez et al., CHI 2012).

Off by default everywhere: the official pipeline does no smoothing, so enabling it changes the output.
It low-passes each coordinate with a cutoff that rises with the coordinate's speed: still faces stop jittering,
fast motion keeps little lag.  Coordinates here are normalised ([0, 1]), so ``beta`` is "Hz per (image width per
second)".
"""

from __future__ import annotations

import math

import numpy as np


def _smoothing_factor(period: float, cutoff: np.ndarray | float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / period)


class OneEuroFilter:
    """Element-wise One-Euro filter over arrays of a fixed shape (e.g. a ``[68, 2]`` face).

    ``min_cutoff`` (Hz): smoothing when still - lower = smoother.  ``beta``: how fast the cutoff grows with speed -
    higher = less lag.  ``d_cutoff`` (Hz): smoothing of the speed estimate.  ``rate`` (frames per second) sets the
    time step when no timestamps are given.
    """

    def __init__(self, min_cutoff: float = 1.5, beta: float = 5.0, d_cutoff: float = 1.0, rate: float = 16.0):
        if min_cutoff <= 0 or d_cutoff <= 0 or rate <= 0 or beta < 0:
            raise ValueError("OneEuroFilter needs min_cutoff > 0, d_cutoff > 0, rate > 0 and beta >= 0")
        self.min_cutoff, self.beta, self.d_cutoff, self.rate = min_cutoff, beta, d_cutoff, rate
        self.reset()

    def reset(self) -> None:
        """Forget the history (a new stream)."""
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._fresh: np.ndarray | None = None  # elements with no history (start, or after being invalid)
        self._time: float | None = None

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able values): the filter's whole memory, for resuming a render exactly."""
        arrays = {} if self._value is None else {"value": self._value, "speed": self._speed, "fresh": self._fresh}
        return arrays, {"time": self._time}

    def load_state_dict(self, arrays: dict[str, np.ndarray], values: dict) -> None:
        self.reset()
        if arrays:
            self._value, self._speed = np.array(arrays["value"]), np.array(arrays["speed"])
            self._fresh = np.array(arrays["fresh"], dtype=bool)
        self._time = values.get("time")

    def __call__(self, values: np.ndarray, valid: np.ndarray | None = None, timestamp: float | None = None
                 ) -> np.ndarray:
        """Filter one sample.  ``valid`` (broadcastable bool mask): invalid elements pass through unchanged and
        restart from scratch when they become valid again.  ``timestamp`` in seconds (else 1 / rate steps)."""
        x = np.asarray(values, dtype=np.float64)
        ok = np.ones(x.shape, dtype=bool) if valid is None else np.broadcast_to(np.asarray(valid, bool), x.shape)
        if self._value is None or self._value.shape != x.shape:
            self._value, self._speed = x.copy(), np.zeros_like(x)
            self._fresh = np.ones(x.shape, dtype=bool)
        period = 1.0 / self.rate
        if timestamp is not None:
            if self._time is not None and timestamp > self._time:
                period = timestamp - self._time
            self._time = timestamp

        start = ok & self._fresh
        speed = (x - self._value) / period
        speed_hat = self._speed + _smoothing_factor(period, self.d_cutoff) * (speed - self._speed)
        cutoff = self.min_cutoff + self.beta * np.abs(speed_hat)
        smoothed = self._value + _smoothing_factor(period, cutoff) * (x - self._value)

        out = np.where(ok, smoothed, x)
        out[start] = x[start]
        self._value = np.where(ok, out, self._value)
        self._speed = np.where(ok & ~start, speed_hat, 0.0)
        self._fresh = ~ok
        return out
