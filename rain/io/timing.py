"""What a video's packets say about its frames, read without decoding: how many there really are (a file
cut off during a download or a recording holds fewer than its header announces) and whether they come at a
constant rate (phone and screen recordings often do not; written at a constant rate they would play at the
wrong speed unless resampled by their timestamps, which ``read_frames(fps=...)`` does)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from .errors import VideoIOError
from .video import _open_container, _video_stream

#: Frame gaps further than this from the typical gap make a video variable-rate (a 30 fps WebM's gaps of
#: 33 and 34 ms, rounded to its millisecond clock, stay constant-rate).
VARIABLE_GAP_TOLERANCE = 0.2


@dataclass(frozen=True)
class VideoTiming:
    frames: int                    # frames in the file (packets with data)
    header_frames: int | None      # what the header announces, None when it does not say
    header_duration: float | None  # seconds the header announces
    duration: float | None         # seconds from the first frame's start to the last one's end
    average_fps: float | None      # frames per second over that duration
    variable: bool                 # frame gaps vary (variable frame rate)
    shortest_gap: float | None = None
    longest_gap: float | None = None

    @property
    def cut_short(self) -> bool:
        """The file holds less than its header announces (frames, or over two frames' worth of time)."""
        if self.header_frames:
            return self.frames < self.header_frames
        if self.header_duration and self.duration and self.average_fps:
            return self.duration < self.header_duration - 2 / self.average_fps
        return False

    def describe_shortfall(self) -> str:
        """'holds 24 frames (1.5 s) but its header announces 60 frames (3.8 s)'."""
        held = f"{self.frames} frames" + (f" ({self.duration:.1f} s)" if self.duration else "")
        announced = []
        if self.header_frames:
            announced.append(f"{self.header_frames} frames")
        if self.header_duration:
            announced.append(f"{self.header_duration:.1f} s")
        return f"holds {held} but its header announces {' / '.join(announced)}"

    def describe_gaps(self) -> str:
        return f"frames {1000 * self.shortest_gap:.0f}–{1000 * self.longest_gap:.0f} ms apart"


def scan_timing(path: str | os.PathLike) -> VideoTiming:
    """Read every packet header of the first video stream of ``path`` (fast: nothing is decoded)."""
    path = Path(path)
    with _open_container(path) as container:
        stream = _video_stream(container, path)
        header = int(stream.frames) or None
        if stream.duration is not None and stream.time_base is not None:
            header_duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            header_duration = container.duration / av.time_base
        else:
            header_duration = None
        times: list[Fraction] = []
        durations: list[Fraction] = []
        count = 0
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                count += 1
                if packet.pts is not None and packet.time_base is not None:
                    times.append(packet.pts * packet.time_base)
                    durations.append((packet.duration or 0) * packet.time_base)
        except av.error.FFmpegError as error:
            raise VideoIOError(f"{path}: the video becomes unreadable after {count} frames ({error}); "
                               f"use another copy of the video.") from error
    if count == 0:
        raise VideoIOError(f"{path}: the video has no frames.")
    if len(times) < 2:
        return VideoTiming(count, header, header_duration, None, None, False)
    order = sorted(range(len(times)), key=times.__getitem__)
    ordered = [times[i] for i in order]
    gaps = [b - a for a, b in zip(ordered, ordered[1:]) if b > a]
    if not gaps:
        return VideoTiming(count, header, header_duration, None, None, False)
    typical = sorted(gaps)[len(gaps) // 2]
    last_duration = durations[order[-1]] or typical
    duration = float(ordered[-1] - ordered[0] + last_duration)
    variable = any(abs(gap - typical) > VARIABLE_GAP_TOLERANCE * typical for gap in gaps)
    return VideoTiming(count, header, header_duration, duration, count / duration if duration > 0 else None,
                       variable, float(min(gaps)), float(max(gaps)))
