"""Lazy reading of driving videos, image folders and single images.

Frames are decoded one at a time (PyAV for video, Pillow for images), so a long clip never
sits in memory; conversion to RGB happens only for frames that are actually yielded.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageSequence

from .errors import VideoIOError, VideoNotFoundError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` learns about a source from its headers (and at most one decoded frame)."""

    width: int                  # display width (after rotation metadata)
    height: int
    fps: float | None           # None for image folders and still images
    frame_count: int            # an estimate when ``frame_count_exact`` is False
    duration: float | None      # seconds; None when the source has no timing
    has_audio: bool
    frame_count_exact: bool = True
    kind: str = "video"         # "video", "images" (a folder) or "image" (a file, maybe animated)


def probe(path: PathLike) -> VideoInfo:
    """Size, frame rate, frame count, duration and audio presence of a video/image source."""
    path = Path(path)
    kind = _source_kind(path)
    if kind == "images":
        files = _image_files(path)
        with _open_image(files[0]) as first:
            width, height = first.size
        return VideoInfo(width, height, None, len(files), None, False, kind="images")
    if kind == "image":
        with _open_image(path) as image:
            durations = [frame.info.get("duration", 0) or 0 for frame in ImageSequence.Iterator(image)]
            width, height = image.size
        total = sum(durations) / 1000.0
        fps = len(durations) / total if len(durations) > 1 and total > 0 else None
        return VideoInfo(width, height, fps, len(durations), total if fps else None, False, kind="image")
    with _open_container(path) as container:
        stream = _video_stream(container, path)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = None
        frame_count, exact = stream.frames, True
        if not frame_count:
            exact = False
            frame_count = round(duration * fps) if duration and fps else 0
        width, height = stream.codec_context.width, stream.codec_context.height
        if _quarter_turns(_first_frame_rotation(container, stream)) % 2:
            width, height = height, width
        return VideoInfo(width, height, fps, frame_count, duration, bool(container.streams.audio),
                         frame_count_exact=exact)


def read_frames(path: PathLike, *, size: tuple[int, int] | None = None, fps: float | None = None,
                start: int = 0, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield frames of a video, an image folder or an image as ``uint8`` ``H×W×3`` RGB arrays.

    ``size=(height, width)`` resizes (stretching; crop beforehand if the aspect differs).
    ``fps`` resamples a timed source to a constant rate by dropping or repeating frames
    (each output instant shows the frame on screen at that moment); folders and still
    images have no timing and ignore it. ``start`` skips that many output frames (counted
    after resampling, so it matches a resumed render's frame index); ``max_frames`` caps the
    number yielded. Opening errors are raised here; decoding errors when iterating.
    """
    path = Path(path)
    if start < 0 or (max_frames is not None and max_frames < 0):
        raise ValueError("start and max_frames must not be negative")
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"size must be (height, width) with positive values, got {size!r}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    kind = _source_kind(path)
    stop = None if max_frames is None else start + max_frames
    if kind == "images":
        files = _image_files(path)
        return (_pil_to_rgb(_open_image(f), size) for f in islice(files, start, stop))
    if kind == "image":
        return islice(_image_frames(path, size, fps), start, stop)
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
    except Exception:
        container.close()
        raise
    return _video_frames(container, stream, path, size, fps, start, stop)


def count_frames(path: PathLike) -> int:
    """Exact number of frames in a video, counted from its packets (no decoding).

    Useful for files whose header carries no count, such as a render interrupted while
    being written.
    """
    path = Path(path)
    kind = _source_kind(path)
    if kind != "video":
        return probe(path).frame_count
    with _open_container(path) as container:
        stream = _video_stream(container, path)
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except av.error.FFmpegError as exc:
            raise VideoIOError(f"{path}: the video stream is unreadable ({describe_error(exc)})") from exc


# ---- source kinds ------------------------------------------------------------------------------

def _source_kind(path: Path) -> str:
    if not path.exists():
        raise VideoNotFoundError(f"Video or image source not found: {path}")
    if path.is_dir():
        return "images"
    return "image" if path.suffix.lower() in IMAGE_SUFFIXES else "video"


def _natural_key(path: Path) -> list[Any]:
    # frame_2.png before frame_10.png
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _image_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise VideoIOError(f"The folder {folder} contains no images "
                           f"({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return files


def _open_image(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, ValueError) as exc:
        raise VideoIOError(f"Cannot read the image {path}: {describe_error(exc)}") from exc


# ---- images ----------------------------------------------------------------------------------------

def _pil_to_rgb(image: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    with image:
        try:
            rgb = image.convert("RGB")
        except OSError as exc:
            raise VideoIOError(f"Cannot decode the image {image.filename}: {describe_error(exc)}") from exc
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(rgb)


def _image_frames(path: Path, size, fps) -> Iterator[np.ndarray]:
    image = _open_image(path)
    with image:
        frames: list[tuple[Fraction, Fraction, np.ndarray]] = []
        elapsed = Fraction(0)
        for frame in ImageSequence.Iterator(image):
            # Converted right away: the iterator reuses one image object for every frame.
            duration = Fraction(frame.info.get("duration", 0) or 0, 1000)
            frames.append((elapsed, duration, _pil_to_rgb(frame.copy(), size)))
            elapsed += duration
    if fps is None or len(frames) < 2 or elapsed == 0:
        yield from (rgb for _, _, rgb in frames)
    else:
        yield from _resample(iter(frames), Fraction(fps).limit_denominator(1001))


# ---- video ---------------------------------------------------------------------------------------

def _open_container(path: Path) -> av.container.InputContainer:
    if path.stat().st_size == 0:
        raise VideoIOError(f"{path} is empty (0 bytes): the file was not saved or copied completely; use another "
                           f"copy of the video.")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.InvalidDataError as exc:
        raise VideoIOError(f"{path} is not a video file PyAV/FFmpeg can read ({exc.strerror or exc}); convert it "
                           f"to MP4 (H.264), or use another copy.") from exc
    except av.error.EOFError as exc:
        raise VideoIOError(f"{path} is empty or was cut off before its first frame.") from exc
    except PermissionError as exc:
        raise VideoIOError(f"No permission to read {path}.") from exc
    except av.error.FFmpegError as exc:
        raise VideoIOError(f"Cannot open {path}; it may be damaged or incomplete ({describe_error(exc)}).") from exc


def _video_stream(container: av.container.InputContainer, path: Path):
    if not container.streams.video:
        what = "only audio" if container.streams.audio else "no video stream"
        raise VideoIOError(f"{path} has {what}; a video or image source is needed.")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame threading: decoding speed matters for long clips
    return stream


def _first_frame_rotation(container, stream) -> float:
    """Rotation of the display matrix, read from the first decoded frame.

    PyAV exposes the matrix on frames only, so probe decodes one frame (cheap) to report
    the size a phone video is shown at.
    """
    try:
        for frame in container.decode(stream):
            return frame.rotation or 0.0
    except av.error.FFmpegError:
        pass
    return 0.0


def _quarter_turns(rotation_degrees: float) -> int:
    """Counter-clockwise quarter turns needed to show a frame upright (display matrix)."""
    return round(rotation_degrees / 90.0) % 4 if rotation_degrees else 0


def _frame_to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    turns = _quarter_turns(frame.rotation or 0)
    if size is not None:
        height, width = size
        if turns % 2:  # resize in storage orientation, rotate afterwards
            height, width = width, height
        frame = frame.reformat(width=width, height=height, format="rgb24", interpolation="BICUBIC")
    rgb = frame.to_ndarray(format="rgb24")
    if turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, turns))
    return rgb


def _timed_video_frames(container, stream, path: Path) -> Iterator[tuple[Fraction, Fraction, av.VideoFrame]]:
    """(start time, display duration, frame) in decoding order; times in seconds."""
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    default_duration = 1 / Fraction(rate)
    decoded = 0
    last_time: Fraction | None = None
    try:
        for frame in container.decode(stream):
            if frame.pts is not None and frame.time_base is not None:
                time = frame.pts * frame.time_base
            else:
                time = (last_time + default_duration) if last_time is not None else Fraction(0)
            if frame.duration and frame.time_base is not None:
                duration = frame.duration * frame.time_base
            else:
                duration = default_duration
            decoded += 1
            last_time = time
            yield time, duration, frame
    except av.error.FFmpegError as exc:
        raise VideoIOError(f"{path}: the video stream became unreadable after {decoded} frames "
                           f"({describe_error(exc)}).") from exc
    if decoded == 0:
        raise VideoIOError(f"{path}: the video has no frames.")


def _video_frames(container, stream, path: Path, size, fps, start: int,
                  stop: int | None) -> Iterator[np.ndarray]:
    with container:
        timed = _timed_video_frames(container, stream, path)
        if fps is None:
            frames: Iterator[av.VideoFrame] = (frame for _, _, frame in timed)
        else:
            frames = _resample(timed, Fraction(fps).limit_denominator(1001))
        for frame in islice(frames, start, stop):
            yield _frame_to_rgb(frame, size)


def _resample(timed: Iterator[tuple[Fraction, Fraction, Any]], fps: Fraction) -> Iterator[Any]:
    """Constant-rate sampling: output instant k (at first_time + k/fps) shows the last frame
    that started at or before it. Frames are only held, never copied or converted."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {float(fps)}")
    period = 1 / fps
    # Container timestamps are rounded (e.g. 33 ms steps at 30 fps in WebM); a frame starting
    # within this tolerance after an output instant still counts as on screen at it.
    tolerance = min(Fraction(1, 1000), period / 4)
    first_time: Fraction | None = None
    held, held_end = None, None
    index = 0
    for time, duration, item in timed:
        if first_time is None:
            first_time = time
        while held is not None and first_time + index * period + tolerance < time:
            yield held
            index += 1
        held, held_end = item, time + duration
    while held is not None and first_time + index * period + tolerance < held_end:
        yield held
        index += 1


def frames_total(info: VideoInfo, fps: float | None = None) -> int:
    """Frames ``read_frames(..., fps=fps)`` will yield, as far as the header tells (progress bars)."""
    if fps is None or info.fps is None or info.duration is None:
        return info.frame_count
    return max(1, math.ceil(info.duration * fps - 1e-6))


# The writer lives in its own module; importing it here keeps ``rain.io.video.VideoWriter``.
from .writer import VideoWriter  # noqa: E402  (after the definitions it does not need)
from ..messages import describe_error

__all__ = ["VideoInfo", "probe", "read_frames", "count_frames", "frames_total", "VideoWriter",
           "VideoIOError", "VideoNotFoundError", "IMAGE_SUFFIXES"]

