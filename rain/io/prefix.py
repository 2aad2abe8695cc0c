"""Continuing an interrupted output: keep its first N frames exactly as they were encoded, then append.

A video is continued by copying the first N video packets of the interrupted file into a new file whose encoder
(same settings, so the same H.264/HEVC parameter sets) then writes the frames after them; nothing is decoded or
re-encoded. This needs packets in display order (no B-frames), which the crash-safe writer guarantees. A PNG
sequence is continued by deleting the frames from N on.
"""

from __future__ import annotations

import re
from pathlib import Path

import av

from .errors import VideoIOError

# MP4/MKV store H.264/HEVC as length-prefixed units; a muxer fed by an encoder expects start codes (Annex B)
# and converts them itself, so copied packets are turned back into Annex B first.
_ANNEX_B_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}


def video_frame_count(path: Path) -> int:
    """Video packets holding data (= frames for the writer's streams), counted without decoding."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0
            return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
    except av.error.FFmpegError:
        return 0   # a file cut before its header: nothing usable in it


def copy_video_prefix(source: Path, container, stream, frames: int) -> None:
    """Mux the first ``frames`` video packets of ``source`` into ``stream`` of the open output ``container``."""
    if frames <= 0:
        return
    with av.open(str(source)) as reader:
        video = reader.streams.video[0]
        name = _ANNEX_B_FILTERS.get(video.codec_context.name)
        to_annex_b = av.BitStreamFilterContext(name, video) if name else None
        copied, last_pts = 0, None
        for packet in reader.demux(video):
            if not packet.size:
                continue
            if last_pts is not None and packet.pts is not None and packet.pts <= last_pts:
                raise VideoIOError(f"{source} stores its frames out of display order (B-frames), so it cannot be "
                                   f"continued; render again without resume.")
            last_pts = packet.pts
            for out in (to_annex_b.filter(packet) if to_annex_b else [packet]):
                out.stream = stream
                container.mux(out)
            copied += 1
            if copied == frames:
                return
    raise VideoIOError(f"{source} holds only {copied} of the {frames} frames the resume state describes (the process "
                       f"was killed before they reached the disk); render again without resume.")


def _png_index(pattern: str) -> re.Pattern:
    name = Path(pattern).name
    parts = re.split(r"(%0?\d*d)", name)
    return re.compile("".join(r"(\d+)" if part.startswith("%") else re.escape(part) for part in parts))


def truncate_png_sequence(pattern: str, frames: int) -> None:
    """Keep frames 0 … frames-1 of a PNG sequence written by ``VideoWriter`` and delete the others."""
    folder = Path(pattern).parent
    index = _png_index(pattern)
    present = set()
    for file in folder.iterdir() if folder.is_dir() else ():
        match = index.fullmatch(file.name)
        if match is None:
            if file.name.endswith(".tmp"):
                file.unlink()
            continue
        number = int(match.group(1))
        if number >= frames:
            file.unlink()
        else:
            present.add(number)
    if len(present) < frames:
        raise VideoIOError(f"{folder} holds only {len(present)} of the {frames} frames the resume state describes; "
                           f"render again without resume.")
