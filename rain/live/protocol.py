"""The live websocket protocol: what travels between a page (or any client) and a live session.

Binary messages carry one image each, after a small little-endian header:

* camera → server: ``b"RLF1"``, uint32 sequence number, float64 capture time in the client's milliseconds, then a
  JPEG, PNG or WebP file (``FRAME_HEADER``, 16 bytes);
* server → client: ``b"RLO1"``, uint32 sequence number of the camera frame it was made from, the same float64
  capture time echoed back (so the client measures camera frame → shown frame on its own clock), float32
  milliseconds the frame spent on the server, then the image (``OUTPUT_HEADER``, 20 bytes).

Text messages are small JSON objects with a ``type`` (``CONTROL_TYPES``). Nothing a client sends can stop a
session: a frame that is malformed, truncated, oversized, of another format or over the message rate is dropped
and counted under a ``Rejected`` reason.
"""

from __future__ import annotations

import io
import json
import struct
import time
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

FRAME_MAGIC = b"RLF1"
OUTPUT_MAGIC = b"RLO1"
FRAME_HEADER = struct.Struct("<4sId")
OUTPUT_HEADER = struct.Struct("<4sIdf")
FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
OUTPUT_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
CONTROL_TYPES = ("start", "stop", "calibration", "shown", "ping")
MAX_CONTROL_BYTES = 16 * 1024


class Rejected(ValueError):
    """A message that is dropped and counted; ``reason`` is the counter's name."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


REJECT_REASONS = ("malformed", "truncated", "oversized", "unsupported", "rate_limited", "superseded")


@dataclass(frozen=True)
class FrameLimits:
    """What a route accepts. ``max_bytes`` bounds one image; ``max_side``/``max_pixels`` its dimensions (read from
    the file's header before anything is decoded); ``max_rate`` messages per second per connection (``burst``
    at once). A message over ``hard_max_bytes`` closes that connection (the websocket layer refuses to buffer it);
    everything else over the limits is dropped and counted."""
    max_bytes: int = 4 * 1024 * 1024
    max_side: int = 4096
    max_pixels: int = 4096 * 2304
    min_side: int = 16
    max_rate: float = 100.0
    burst: int = 100

    @property
    def hard_max_bytes(self) -> int:
        return 2 * self.max_bytes + OUTPUT_HEADER.size


def sniff_format(data: bytes | memoryview) -> str | None:
    """JPEG, PNG or WEBP from the first bytes (never from a name or a content type), else None."""
    head = bytes(data[:12])
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


@dataclass
class EncodedImage:
    """An image file checked from its header (format, size) and not decoded yet: sessions decode only the
    frames they use, so a camera faster than the model costs no decoding for the frames dropped."""
    data: bytes
    format: str
    width: int
    height: int

    def decode(self) -> np.ndarray:
        """H×W×3 uint8 RGB; ``Rejected('truncated' / 'malformed')`` when the data stops short or is corrupt."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(self.data), formats=[self.format])
                image.load()
        except OSError as error:
            reason = "truncated" if "truncated" in str(error).lower() else "malformed"
            raise Rejected(reason, f"the {self.format} frame could not be decoded: {error}") from None
        except (ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise Rejected("malformed", f"the {self.format} frame could not be decoded: {error}") from None
        if image.size != (self.width, self.height):
            raise Rejected("malformed", "the frame's size changed while decoding")
        return np.asarray(image.convert("RGB"))


def check_image(data: bytes, limits: FrameLimits) -> EncodedImage:
    """Validate an image file without decoding its pixels: bytes, format (by content), dimensions."""
    if len(data) > limits.max_bytes:
        raise Rejected("oversized", f"the frame has {len(data)} bytes; at most {limits.max_bytes} are accepted")
    kind = sniff_format(data)
    if kind is None:
        raise Rejected("unsupported", "frames must be JPEG, PNG or WebP files")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind]) as image:
                width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Rejected("oversized", "the frame's dimensions are far too large") from None
    except (OSError, ValueError, SyntaxError, struct.error) as error:
        raise Rejected("malformed", f"not a readable {kind} file: {error}") from None
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise Rejected("oversized", f"the frame is {width}×{height}; at most {limits.max_side} pixels a side and "
                                    f"{limits.max_pixels} pixels in all are accepted")
    if min(width, height) < limits.min_side:
        raise Rejected("malformed", f"the frame is {width}×{height}; at least {limits.min_side} pixels a side")
    return EncodedImage(bytes(data), kind, width, height)


@dataclass
class CameraFrame:
    """One camera frame as it arrived: its client sequence number and capture time, the server time it arrived,
    and the image (still encoded, or an RGB array from a local camera)."""
    sequence: int
    capture_ms: float
    received: float                      # time.perf_counter() on the server
    image: EncodedImage | np.ndarray

    def rgb(self) -> np.ndarray:
        return self.image.decode() if isinstance(self.image, EncodedImage) else self.image


def parse_frame(message: bytes, limits: FrameLimits, received: float | None = None) -> CameraFrame:
    """A camera message → ``CameraFrame`` (image checked, not decoded); ``Rejected`` says why not."""
    if len(message) < FRAME_HEADER.size:
        raise Rejected("malformed", f"a frame message starts with a {FRAME_HEADER.size}-byte header")
    magic, sequence, capture_ms = FRAME_HEADER.unpack_from(message)
    if magic != FRAME_MAGIC:
        raise Rejected("malformed", f"a frame message starts with {FRAME_MAGIC!r}")
    if not np.isfinite(capture_ms):
        raise Rejected("malformed", "the capture time is not a finite number")
    image = check_image(memoryview(message)[FRAME_HEADER.size:], limits)
    return CameraFrame(sequence, capture_ms, time.perf_counter() if received is None else received, image)


def frame_message(sequence: int, capture_ms: float, image: bytes) -> bytes:
    """A camera message (what the page sends; used by tests, the benchmark and Python clients)."""
    return FRAME_HEADER.pack(FRAME_MAGIC, sequence & 0xFFFFFFFF, float(capture_ms)) + image


def output_message(sequence: int, capture_ms: float, server_ms: float, image: bytes) -> bytes:
    return OUTPUT_HEADER.pack(OUTPUT_MAGIC, sequence & 0xFFFFFFFF, float(capture_ms), float(server_ms)) + image


def parse_output(message: bytes) -> tuple[int, float, float, bytes]:
    """(sequence, capture ms, server ms, image bytes) of a server → client frame."""
    magic, sequence, capture_ms, server_ms = OUTPUT_HEADER.unpack_from(message)
    if magic != OUTPUT_MAGIC:
        raise ValueError(f"an output frame starts with {OUTPUT_MAGIC!r}")
    return sequence, capture_ms, server_ms, bytes(message[OUTPUT_HEADER.size:])


def encode_image(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 85) -> bytes:
    """H×W×3 uint8 → JPEG / PNG / WebP bytes."""
    pil_format = OUTPUT_FORMATS.get(fmt.lower())
    if pil_format is None:
        raise ValueError(f"output format must be one of {sorted(OUTPUT_FORMATS)}, got {fmt!r}")
    buffer = io.BytesIO()
    options = {"quality": int(quality)} if pil_format in ("JPEG", "WEBP") else {"compress_level": 1}
    Image.fromarray(rgb).save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def parse_control(text: str) -> dict:
    """A JSON control message → dict with a known ``type``; ``Rejected('malformed')`` otherwise."""
    if len(text) > MAX_CONTROL_BYTES:
        raise Rejected("oversized", f"control messages are at most {MAX_CONTROL_BYTES} bytes")
    try:
        message = json.loads(text)
    except ValueError:
        raise Rejected("malformed", "control messages are JSON objects") from None
    if not isinstance(message, dict) or message.get("type") not in CONTROL_TYPES:
        raise Rejected("malformed", f"a control message is a JSON object whose type is one of {CONTROL_TYPES}")
    return message


class RateLimiter:
    """Token bucket: ``rate`` messages a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self.tokens, self.last = float(burst), clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
