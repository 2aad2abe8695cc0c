"""The live protocol: frame headers, what a route accepts (format by content, bytes, dimensions), decoding that
reports truncated or corrupt data, control messages and the message-rate bucket."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from rain.live.protocol import (FRAME_HEADER, FrameLimits, Rejected, RateLimiter, check_image, encode_image,
                                frame_message, output_message, parse_control, parse_frame, parse_output)


def picture(width=40, height=30, seed=0):
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_frames_round_trip(fmt):
    rgb = picture()
    message = frame_message(7, 1234.5, encode_image(rgb, fmt, 95))
    frame = parse_frame(message, FrameLimits(), received=1.0)
    assert (frame.sequence, frame.capture_ms, frame.received) == (7, 1234.5, 1.0)
    assert (frame.image.width, frame.image.height) == (40, 30)
    decoded = frame.rgb()
    assert decoded.shape == (30, 40, 3) and decoded.dtype == np.uint8
    if fmt == "png":
        assert np.array_equal(decoded, rgb)


def test_output_header_round_trip():
    sequence, capture, server, image = parse_output(output_message(2 ** 32 + 5, 99.25, 12.5, b"\xff\xd8\xffdata"))
    assert (sequence, capture, server, image) == (5, 99.25, 12.5, b"\xff\xd8\xffdata")


def png_claiming(width, height):
    """A PNG whose header claims a size its (tiny) data does not hold."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("message, reason", [
    (b"RLF1", "malformed"),                                                   # shorter than the header
    (b"XXXX" + b"\0" * 12 + b"\xff\xd8\xff", "malformed"),                    # wrong magic
    (FRAME_HEADER.pack(b"RLF1", 0, float("nan")) + b"\xff\xd8\xff", "malformed"),
    (frame_message(0, 0, b"GIF89a" + b"\0" * 64), "unsupported"),
    (frame_message(0, 0, b"\xff\xd8\xff" + b"\0" * 64), "malformed"),        # JPEG magic, then nonsense
    (frame_message(0, 0, png_claiming(100_000, 100_000)), "oversized"),      # a decompression bomb's header
    (frame_message(0, 0, png_claiming(5000, 10)), "oversized"),
    (frame_message(0, 0, png_claiming(4, 4)), "malformed"),                   # below the minimum side
])
def test_bad_frames_are_rejected_with_a_reason(message, reason):
    with pytest.raises(Rejected) as error:
        parse_frame(message, FrameLimits())
    assert error.value.reason == reason


def test_byte_limit():
    data = encode_image(picture(200, 200), "png")
    with pytest.raises(Rejected) as error:
        check_image(data, FrameLimits(max_bytes=len(data) - 1))
    assert error.value.reason == "oversized"
    assert check_image(data, FrameLimits(max_bytes=len(data))).format == "PNG"


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_truncated_data_is_found_when_decoding(fmt):
    """JPEG and PNG headers survive the cut and the decoder notices; WebP's decoder refuses at once."""
    data = encode_image(picture(64, 64), fmt, 90)
    with pytest.raises(Rejected) as error:
        parse_frame(frame_message(0, 0, data[: len(data) * 2 // 3]), FrameLimits()).rgb()
    assert error.value.reason in ("truncated", "malformed")


def test_format_comes_from_the_content_not_a_name():
    buffer = io.BytesIO()
    Image.fromarray(picture()).save(buffer, format="BMP")
    with pytest.raises(Rejected) as error:
        check_image(buffer.getvalue(), FrameLimits())
    assert error.value.reason == "unsupported"


def test_control_messages():
    assert parse_control('{"type": "calibration", "preset": "none"}')["preset"] == "none"
    for text in ("nope", "[1, 2]", '{"type": "format_disk"}', '{"kind": "start"}', '{"type": "start"' + " " * 20000):
        with pytest.raises(Rejected):
            parse_control(text)


def test_rate_limiter_allows_the_burst_then_the_rate():
    now = [0.0]
    limiter = RateLimiter(rate=10, burst=5, clock=lambda: now[0])
    assert sum(limiter.allow() for _ in range(20)) == 5
    now[0] += 0.5                                   # half a second refills 5 tokens
    assert sum(limiter.allow() for _ in range(20)) == 5
    now[0] += 100.0                                 # never more than the burst
    assert sum(limiter.allow() for _ in range(20)) == 5
