"""Incremental video writing that survives interrupted renders.

``VideoWriter`` encodes each frame as it arrives. MP4/MOV output is fragmented
(``frag_keyframe+empty_moov+default_base_moof``): the file is playable at every moment,
not only after the final ``moov`` box is written, so a render stopped by an exception,
Ctrl+C or a killed process still leaves a video of the frames written so far.

With ``crash_safe=True`` (default) the encoder holds no frames back (x264
``tune=zerolatency``, VP9 ``lag-in-frames=0``), each frame becomes its own fragment / cluster
(``frag_duration=1`` / ``cluster_time_limit=0``) and packets are flushed to disk at once. What a killed process (SIGKILL, power loss) can
still lose is the last frame written: FFmpeg's muxers only finish a sample when the next
one arrives. Exceptions and Ctrl+C lose nothing, because ``close()`` runs in ``finally`` /
``__exit__``. ``crash_safe=False`` lets x264 use B-frames and lookahead (smaller files),
at the cost of losing up to a keyframe interval when the process is killed.

Odd sizes: 4:2:0 pixel formats need even width and height, so odd frames are padded by
one replicated pixel at the bottom/right edge (the file is then one pixel larger).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from .audio import AudioCopier, has_audio
from .errors import VideoIOError
from .frames import pad_to_even, to_uint8_rgb
from ..messages import describe_error

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# Encoders tried in order for each codec name a caller may give.
CODEC_CANDIDATES = {
    "h264": ("libx264", "h264", "libopenh264", "mpeg4"),
    "hevc": ("libx265", "hevc", "mpeg4"),
    "h265": ("libx265", "hevc", "mpeg4"),
    "vp9": ("libvpx-vp9",),
    "av1": ("libsvtav1", "libaom-av1"),
}
DEFAULT_CRF = {"libx264": 19, "libx265": 22, "libvpx-vp9": 31, "libsvtav1": 32, "libaom-av1": 32}

_CONTAINERS = {  # suffix -> (FFmpeg muxer, default codec, audio codec for re-encoding)
    ".mp4": ("mp4", "h264", "aac"),
    ".m4v": ("mp4", "h264", "aac"),
    ".mov": ("mov", "h264", "aac"),
    ".mkv": ("matroska", "h264", "aac"),
    ".webm": ("webm", "vp9", "libopus"),
    ".gif": ("gif", "gif", None),
}
#: Video file types ``VideoWriter`` writes (besides PNG sequences: a folder, or a ``name_%05d.png`` pattern).
OUTPUT_SUFFIXES = tuple(_CONTAINERS)
_FRAGMENTED_MP4 = "frag_keyframe+empty_moov+default_base_moof"
_SUBSAMPLED_PREFIXES = ("yuv420", "yuvj420", "yuv422", "yuvj422", "nv12", "nv21", "nv16")


def _fps_fraction(fps: float | Fraction) -> Fraction:
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    # limit_denominator(1001) turns 29.97002997 back into 30000/1001.
    return fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)


def _pick_encoder(codec: str) -> str:
    for name in CODEC_CANDIDATES.get(codec, (codec,)):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # UnknownCodecError and friends: try the next one
            continue
    raise VideoIOError(f"No encoder available for codec {codec!r} in this PyAV build.")


class VideoWriter:
    """Write frames to a video file (``.mp4``, ``.mov``, ``.mkv``, ``.webm``, ``.gif``) or a
    PNG sequence (a folder path without suffix, or a ``name_%05d.png`` pattern).

    Use as a context manager; ``write`` takes ``uint8`` or float ``[0, 1]`` ``H×W×3``
    numpy arrays or torch tensors. The size is fixed by the first frame. ``codec`` defaults
    to H.264 (libx264, or MPEG-4 Part 2 where no H.264 encoder exists) and VP9 for WebM;
    ``crf`` to the encoder's usual quality (x264: 19). ``audio_from`` copies the sound of
    that file (e.g. the driving video), from ``audio_start`` seconds on, trimmed to the
    length of the written video. ``options`` are passed to the encoder.

    Resume: ``keep_frames=N`` continues an interrupted output — a PNG sequence keeps its first N frames in place;
    a video copies the first N frames (packets) of ``continue_from`` and appends after them (``rain.io.prefix``).
    ``size`` (H, W) opens the file at once instead of at the first frame.
    """

    def __init__(self, path: PathLike, fps: float | Fraction, *, codec: str | None = None,
                 crf: int | None = None, pix_fmt: str = "yuv420p", audio_from: PathLike | None = None,
                 audio_start: float = 0.0, crash_safe: bool = True,
                 options: dict[str, str] | None = None, size: tuple[int, int] | None = None,
                 continue_from: PathLike | None = None, keep_frames: int = 0):
        self.path = Path(path)
        self.fps = _fps_fraction(fps)
        self.crash_safe = crash_safe
        self.frames_written = 0
        self._codec, self._crf, self._pix_fmt = codec, crf, pix_fmt
        self._options = dict(options or {})
        self._audio_from = Path(audio_from) if audio_from is not None else None
        self._audio_start = audio_start
        self._size: tuple[int, int] | None = None  # (height, width) of the frames as given
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        self._audio: AudioCopier | None = None
        self._closed = False
        self._png_pattern = self._png_sequence_pattern(self.path)
        if self._png_pattern is None and self.path.suffix.lower() not in _CONTAINERS:
            raise VideoIOError(f"Unsupported output type {self.path.suffix!r} for {self.path}; use "
                               f"{', '.join(_CONTAINERS)} or a folder for a PNG sequence.")
        if self._audio_from is not None and not self._audio_from.exists():
            raise VideoIOError(f"Audio source not found: {self._audio_from}")
        # Continuing an interrupted output (resume): its first keep_frames frames stay as they are.
        self._continue_from = Path(continue_from) if continue_from is not None else None
        self._keep_frames = int(keep_frames)
        if self._keep_frames and (not crash_safe or (self._png_pattern is None and self._continue_from is None)):
            raise ValueError("keep_frames continues a crash-safe output: give continue_from (the interrupted video)")
        if size is not None:
            self._size = (int(size[0]), int(size[1]))
            self._open(*self._size)

    # ---- public API ---------------------------------------------------------------------------

    def write(self, frame: Any) -> None:
        """Append one frame (``H×W×3``, ``uint8`` or float in ``[0, 1]``)."""
        if self._closed:
            raise VideoIOError(f"{self.path} is already closed.")
        rgb = to_uint8_rgb(frame)
        if self._size is None:
            self._size = rgb.shape[:2]
            self._open(*self._size)
        elif rgb.shape[:2] != self._size:
            raise VideoIOError(f"Frame {self.frames_written} is {rgb.shape[1]}×{rgb.shape[0]} but "
                               f"{self.path} was started at {self._size[1]}×{self._size[0]}.")
        if self._png_pattern is not None:
            self._write_png(rgb)
        else:
            self._encode(rgb)
        self.frames_written += 1

    def write_many(self, frames: Iterable[Any]) -> int:
        """Append frames from an iterable or an ``N×H×W×3`` batch; returns how many."""
        count = 0
        for frame in frames:
            self.write(frame)
            count += 1
        return count

    @property
    def durable_frames(self) -> int:
        """Frames that are in the file even if the process is killed now: a muxer finishes a sample only when
        the next one arrives, so the last frame of an open video is not yet counted."""
        if self._png_pattern is not None or self._closed:
            return self.frames_written
        return max(self._keep_frames, self.frames_written - 1)

    @property
    def duration(self) -> float:
        """Seconds of video written so far."""
        return float(self.frames_written / self.fps)

    def close(self) -> None:
        """Flush the encoder, finish audio at the video's length and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            return
        try:
            if self._stream is not None:
                for packet in self._stream.encode(None):
                    packet.duration = packet.duration or 1
                    self._container.mux(packet)
            if self._audio is not None:
                self._audio.close(self.duration)
        finally:
            if self._audio is not None:
                self._audio.release()  # the source file, even when flushing failed
            self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- PNG sequences ------------------------------------------------------------------------

    @staticmethod
    def _png_sequence_pattern(path: Path) -> str | None:
        if path.suffix.lower() == ".png" and "%" in path.name:
            return str(path)
        if path.suffix == "" or path.is_dir():
            return str(path / "%06d.png")
        return None

    def _write_png(self, rgb: np.ndarray) -> None:
        target = Path(self._png_pattern % self.frames_written)
        # Written under a temporary name and renamed: an interruption never leaves half a PNG.
        partial = target.with_name(target.name + ".tmp")
        Image.fromarray(rgb).save(partial, format="PNG", compress_level=4)
        os.replace(partial, target)

    # ---- video containers ---------------------------------------------------------------------

    def _open(self, height: int, width: int) -> None:
        if self._png_pattern is not None:
            Path(self._png_pattern).parent.mkdir(parents=True, exist_ok=True)
            if self._audio_from is not None:
                logger.warning("PNG sequences have no sound; ignoring audio_from=%s", self._audio_from)
            if self._keep_frames:
                from .prefix import truncate_png_sequence
                truncate_png_sequence(self._png_pattern, self._keep_frames)
                self.frames_written = self._keep_frames
            return
        muxer, default_codec, audio_codec = _CONTAINERS[self.path.suffix.lower()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container_options = {}
        if muxer in ("mp4", "mov"):
            container_options["movflags"] = _FRAGMENTED_MP4
            if self.crash_safe:
                # A new fragment for every frame. (Not movflags frag_every_frame: with an audio
                # track that ends before the video it corrupts video timestamps.)
                container_options["frag_duration"] = "1"
        if muxer in ("matroska", "webm") and self.crash_safe:
            container_options["cluster_time_limit"] = "0"  # one cluster per frame
        if self.crash_safe:
            container_options["flush_packets"] = "1"
            # Once the sound runs out, FFmpeg's interleaving would hold video back for up to
            # 10 s waiting for audio that never comes; release it after one frame instead.
            container_options["max_interleave_delta"] = "1"
        try:
            self._container = av.open(str(self.path), "w", format=muxer, options=container_options)
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoIOError(f"Cannot create {self.path}: {describe_error(exc)}") from exc
        try:
            self._add_video_stream(height, width, default_codec)
            if self._audio_from is not None and audio_codec is not None:
                if has_audio(self._audio_from):
                    self._audio = AudioCopier(self._audio_from, self._container,
                                              start=self._audio_start, transcode_codec=audio_codec)
                else:
                    logger.info("%s has no audio stream; writing video only.", self._audio_from)
            if self._keep_frames:
                from .prefix import copy_video_prefix
                copy_video_prefix(self._continue_from, self._container, self._stream, self._keep_frames)
                self.frames_written = self._keep_frames
        except Exception:
            self._container.close()
            self._closed = True
            raise

    def _add_video_stream(self, height: int, width: int, default_codec: str) -> None:
        encoder = _pick_encoder(self._codec or default_codec)
        stream = self._container.add_stream(encoder, rate=self.fps)
        pix_fmt = "pal8" if encoder == "gif" else self._pix_fmt
        if pix_fmt.startswith(_SUBSAMPLED_PREFIXES):
            height, width = height + height % 2, width + width % 2
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = 1 / self.fps
        options = self._encoder_options(encoder, width, height)
        options.update(self._options)
        stream.options = options
        if encoder == "mpeg4":  # no CRF: a generous bitrate instead
            stream.bit_rate = int(width * height * float(self.fps) * 0.4)
            logger.warning("No H.264 encoder in this PyAV build; writing MPEG-4 Part 2 instead.")
        self._stream = stream
        self._pad = pix_fmt.startswith(_SUBSAMPLED_PREFIXES)

    def _encoder_options(self, encoder: str, width: int, height: int) -> dict[str, str]:
        options: dict[str, str] = {}
        crf = self._crf if self._crf is not None else DEFAULT_CRF.get(encoder)
        if crf is not None and encoder in DEFAULT_CRF:
            options["crf"] = str(crf)
        if encoder == "libx264" and self.crash_safe:
            options["tune"] = "zerolatency"  # no lookahead/B-frames: every frame leaves at once
        if encoder == "libvpx-vp9":
            options.update({"b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"})
            if self.crash_safe:
                options["lag-in-frames"] = "0"
        return options

    def _encode(self, rgb: np.ndarray) -> None:
        if self._pad:
            rgb = pad_to_even(rgb)
        if self._stream.pix_fmt == "pal8":
            frame = av.VideoFrame.from_ndarray(_palettize(rgb), format="pal8")
        else:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.frames_written
        frame.time_base = 1 / self.fps
        if self._audio is not None:
            self._audio.pump(float(self.frames_written / self.fps), cover=True)
        try:
            for packet in self._stream.encode(frame):
                # MP4 fragments flushed on behalf of the audio track take the video sample's
                # length from the packet; encoders leave it 0, which shifts timestamps.
                packet.duration = packet.duration or 1
                self._container.mux(packet)
        except av.error.FFmpegError as exc:
            raise VideoIOError(f"Writing frame {self.frames_written} to {self.path} failed: {describe_error(exc)}") from exc


def _palettize(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices and an ARGB palette of 256 colours chosen for this frame (GIF output).

    A palette per frame looks far better than FFmpeg's fixed 3-3-2 colour cube, and it can
    be computed without seeing the whole video (no two-pass palettegen).
    """
    image = Image.fromarray(rgb).quantize(256, method=Image.Quantize.MEDIANCUT)
    palette = np.zeros((256, 4), np.uint8)
    palette[:, 0] = 255
    colours = np.asarray(image.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
    palette[: len(colours), 1:] = colours
    return np.asarray(image), palette
