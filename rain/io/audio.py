"""Carrying the driving video's sound over to a render.

Audio is muxed progressively, in step with the video frames written, so an interrupted
render has sound up to where its picture stops, and a finished one has sound trimmed to its
length (to within one audio packet, ~20 ms, since copied packets are not cut). Packets are copied unchanged when the output container accepts the codec and
re-encoded (AAC, or Opus for WebM) otherwise.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av

logger = logging.getLogger(__name__)

class AudioCopier:
    """Feeds the first audio stream of ``source`` into ``output``, from ``start`` seconds on."""

    def __init__(self, source: Path, output: av.container.OutputContainer, *, start: float = 0.0,
                 transcode_codec: str = "aac"):
        self._input = av.open(str(source), metadata_errors="ignore")
        try:
            self._setup(source, output, start, transcode_codec)
        except Exception:
            self._input.close()
            raise

    def _setup(self, source: Path, output, start: float, transcode_codec: str) -> None:
        self._in_stream = self._input.streams.audio[0]
        self._output = output
        self._start = Fraction(start).limit_denominator(1_000_000)
        codec_name = self._in_stream.codec_context.name
        self.copying = _can_copy(codec_name, output)
        if self.copying:
            self._out_stream = output.add_stream_from_template(self._in_stream)
        else:
            self._decoder = self._in_stream.codec_context
            rate = self._in_stream.codec_context.sample_rate or 48000
            if transcode_codec in ("libopus", "opus"):
                rate = 48000  # the only rate Opus encoders accept everywhere
            self._out_stream = output.add_stream(transcode_codec, rate=rate)
            self._out_stream.layout = self._in_stream.codec_context.layout.name
        # Output time 0 is the source's first video frame (plus ``start``), which is where
        # read_frames starts counting; audio-only sources start at their own beginning.
        reference = self._input.streams.video[0] if self._input.streams.video else self._in_stream
        origin = Fraction(0)
        if reference.start_time is not None and reference.time_base is not None:
            origin = reference.start_time * reference.time_base
        self._target = origin + self._start
        if start > 0 and self._in_stream.time_base is not None:
            self._input.seek(int(self._target / self._in_stream.time_base), stream=self._in_stream)
        self._packets = self._input.demux(self._in_stream)
        self._offset: Fraction | None = None  # source time that becomes output time 0
        self._pending = None                  # a packet read but not due yet
        self._exhausted = False
        logger.info("audio from %s: %s (%s)", source, codec_name,
                    "copied" if self.copying else f"re-encoded to {transcode_codec}")

    def pump(self, until: float, *, cover: bool = False) -> None:
        """Mux the audio that starts before ``until`` seconds of output time.

        ``cover=True`` also muxes the first packet starting at or after ``until``: called with
        a video frame's time, it gives the muxer audio beyond that frame, so its interleaving
        writes the frame at once instead of holding it back waiting for sound.
        """
        limit = Fraction(until).limit_denominator(1_000_000)
        while not self._exhausted:
            packet = self._pending or self._next_packet()
            self._pending = None
            if packet is None:
                self._exhausted = True
                break
            if packet.pts * packet.time_base - self._offset >= limit:
                if cover:
                    self._mux(packet)
                else:
                    self._pending = packet
                break
            self._mux(packet)

    def _next_packet(self):
        for packet in self._packets:
            if packet.pts is None or packet.size == 0:
                continue
            time = packet.pts * packet.time_base
            end = time + (packet.duration or 0) * packet.time_base
            if end <= self._target and packet.duration:
                continue  # seeking lands before the start; skip what ends before it
            if self._offset is None:
                # Copying cannot cut inside a packet: one that straddles the start is kept and
                # moved to time 0, so sync is off by less than a packet (~20 ms).
                self._offset = min(time, self._target)
            return packet
        return None

    def _mux(self, packet) -> None:
        if self.copying:
            shift = int(self._offset / packet.time_base)
            packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = self._out_stream
            self._output.mux(packet)
            return
        for frame in self._decoder.decode(packet):
            if frame.pts is not None and frame.time_base is not None:
                frame.pts -= int(self._offset / frame.time_base)
                if frame.pts < 0:
                    continue
            self._output.mux(self._out_stream.encode(frame))

    def close(self, end: float) -> None:
        """Mux what is left up to ``end`` seconds, flush the encoder and close the source."""
        try:
            self.pump(end)
            if not self.copying:
                self._output.mux(self._out_stream.encode(None))
        finally:
            self.release()

    def release(self) -> None:
        """Close the source file without muxing anything more (safe to call twice)."""
        self._input.close()


# Codecs the MP4/MOV muxers really write (FFmpeg's codec query also says yes to some that
# then fail when the header is written, e.g. Opus in MOV).
_COPYABLE = {"mp4": {"aac", "mp3", "alac", "opus", "flac"}, "mov": {"aac", "mp3", "alac"},
             "webm": {"opus", "vorbis"}}


def _can_copy(codec_name: str, output) -> bool:
    muxer = output.format.name.split(",")[0]
    allowed = _COPYABLE.get(muxer)
    if allowed is not None:
        return codec_name in allowed
    return codec_name in output.supported_codecs


def has_audio(path: Path) -> bool:
    """Whether ``path`` is a media file with at least one audio stream."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return bool(container.streams.audio)
    except (av.error.FFmpegError, OSError):
        return False
