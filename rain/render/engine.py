"""One render loop for every long file-to-file render: ``python -m rain animate`` and the RAIN Render Video node.

Driving frames are read lazily, streamed through RAIN and written as they come out, under the output's partial
name until complete, so memory does not depend on the video's length and an interruption leaves a playable file.
Every ``save_every`` frames the complete state — the stream (``StreamState``), the driving source (position,
landmark tracking) and the frames written — is saved next to the output; ``resume`` continues from it so the
frames equal those of an uninterrupted render. Hosts plug in through callbacks: progress, previews, and a
cancellation check that may raise (it is only called between stream steps, where the state is whole).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .sources import DrivingSource, SourceSpec

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class RenderFailed(RuntimeError):
    """A render stopped by an error; the message says where the frames written so far are."""


class RenderInterrupted(KeyboardInterrupt):
    """Ctrl-C during a render; the message says where the frames written so far are."""


class RenderCancelled(RuntimeError):
    """The host's cancellation check raised (its exception is the ``__cause__``); the message says where the
    frames are and from which frame resume continues."""


@dataclass
class OutputSpec:
    path: Path                        # the final name (written as its partial name until complete)
    fps: float
    audio: Path | None = None         # copy this file's sound (the driving video)
    audio_start: float = 0.0          # from this second of it


@dataclass
class ResumeSpec:
    """``settings``: everything the frames depend on besides the input files (JSON-able); ``inputs``: the files
    by label ("driving video", "reference image"), fingerprinted. ``save_every`` 0 saves nothing."""
    settings: dict = field(default_factory=dict)
    inputs: dict[str, Path] = field(default_factory=dict)
    save_every: int = 64
    resume: bool = False
    missing_ok: bool = True           # resume with no saved state starts from the beginning (else an error)


@dataclass
class RenderProgress:
    frames_in: int
    frames_out: int
    total: int | None                 # input frames expected (None: unknown)
    exact: bool
    work_done: int                    # pose-frame slots (see rain.progress), moves from the first frame on
    work_total: int | None
    frames_per_second: float | None   # finished frames per second in this run, after the first
    seconds_left: float | None
    draining: bool

    def describe(self) -> str:
        total = "" if not self.total else f"/{'' if self.exact else '~'}{self.total}"
        text = f"{self.frames_out}{total} frames"
        if self.frames_per_second:
            text += f", {self.frames_per_second:.2f} frames/s"
        if self.seconds_left is not None:
            minutes, seconds = divmod(int(self.seconds_left + 0.5), 60)
            hours, minutes = divmod(minutes, 60)
            text += f", {hours}:{minutes:02d}:{seconds:02d} left" if hours else f", {minutes}:{seconds:02d} left"
        return text


@dataclass
class Callbacks:
    progress: Callable[[RenderProgress], None] | None = None
    frame: Callable[[torch.Tensor, int], None] | None = None        # every finished frame [H,W,3] and its index
    preview: Callable[[torch.Tensor, int], None] | None = None      # one frame every preview_every frames
    preview_every: int = 0
    check_cancel: Callable[[], None] | None = None                 # raises to stop (between stream steps)


@dataclass
class RenderResult:
    output: Path
    frames_in: int = 0
    frames_out: int = 0
    resumed_from: int = 0             # frames kept from the interrupted render
    seconds: float = 0.0
    first_frame_seconds: float | None = None
    warnings: list[str] = field(default_factory=list)
    pose_summary: str | None = None


@dataclass
class _Snapshot:
    frames: int
    tensors: dict
    record: dict


class _Checkpoints:
    """Takes snapshots at clean points and saves each once its frames are surely in the output file."""

    def __init__(self, store, spec: ResumeSpec, fingerprints: dict, output: Path, total: int | None):
        self.store, self.spec = store, spec
        self.base = {"settings": spec.settings, "inputs": fingerprints, "output": str(output), "total_frames": total}
        self.pending: _Snapshot | None = None
        self.saved_frames: int | None = None
        self.next_at = spec.save_every

    def take(self, stream, source, frames_written: int) -> _Snapshot:
        tensors, meta = stream.state.to_tensors()
        tensors = {f"stream.{name}": tensor.clone() for name, tensor in tensors.items()}
        source_tensors, source_values = source.state_dict()
        tensors.update({name: tensor.clone() for name, tensor in source_tensors.items()})
        record = {**self.base, "frames_written": frames_written, "stream": meta, "source": source_values}
        return _Snapshot(frames_written, tensors, record)

    def step(self, stream, source, writer) -> None:
        # Save the waiting snapshot first: a new one must not replace it before its frames reach the disk.
        self.flush(writer.durable_frames)
        if self.spec.save_every and writer.frames_written >= self.next_at and source.at_boundary:
            self.pending = self.take(stream, source, writer.frames_written)
            self.next_at = (writer.frames_written // self.spec.save_every + 1) * self.spec.save_every
            self.flush(writer.durable_frames)

    def flush(self, durable_frames: int) -> None:
        if self.pending is not None and durable_frames >= self.pending.frames:
            self.store.save(self.pending.tensors, self.pending.record)
            self.saved_frames, self.pending = self.pending.frames, None


def render_video(pipe, reference, settings, source: SourceSpec, output: OutputSpec, *,
                 expected_frames: int | None = None, expected_exact: bool = True,
                 resume: ResumeSpec | None = None, callbacks: Callbacks | None = None,
                 stream_options: dict | None = None) -> RenderResult:
    """Render ``source`` through ``pipe`` (a ``RainPipeline``) with the fused ``reference`` and ``settings`` (a
    ``StreamSettings``) into ``output``; see the module doc. Raises ``RenderFailed`` / ``RenderInterrupted`` /
    ``RenderCancelled`` with a message saying where the frames are, and ``ResumeRefused`` before any work.
    ``stream_options`` go to ``pipe.open_stream`` (e.g. ``backend``)."""
    from ..io import AtomicOutput, ResumeStore, VideoWriter, file_fingerprint
    from ..io.atomic import OutputInUse
    from ..io.resume import check_same
    from ..progress import stream_steps, stream_work
    from ..sampling.state import StreamState

    resume = resume or ResumeSpec(save_every=0)
    callbacks = callbacks or Callbacks()
    final = Path(output.path)
    store = ResumeStore(final)
    height, width = source.size
    state, drive, kept, continue_from = None, DrivingSource(source), 0, None
    loaded = store.load() if resume.resume else None
    if resume.resume and loaded is None and not resume.missing_ok:
        raise FileNotFoundError(f"Nothing to resume for {final}: there is no saved state ({store.folder}) — the "
                                f"render finished, or stopped before its first save. Run without resume to "
                                f"render from the beginning.")
    target = AtomicOutput(final, keep_partial=loaded is not None)
    if loaded is not None:
        tensors, record = loaded
        check_same(record, resume.settings, resume.inputs, final)
        kept = int(record["frames_written"])
        continue_from = _continuable(target.path, kept)
        state = StreamState.from_tensors({k[len("stream."):]: v for k, v in tensors.items() if k.startswith("stream.")},
                                         record["stream"], device=pipe.device, dtype=pipe.dtype)
        drive.load_state_dict({k: v for k, v in tensors.items() if k.startswith("source.")}, record["source"])
        log.info("resuming %s after %d frames (input frame %d)", final, kept, drive.position)
    else:
        store.clear()
    fingerprints = {label: {"path": str(path), "fingerprint": file_fingerprint(path)}
                    for label, path in resume.inputs.items()}
    checkpoints = _Checkpoints(store, resume, fingerprints, final, expected_frames)
    checkpoints.next_at = (kept // resume.save_every + 1) * resume.save_every if resume.save_every else 0
    stream = pipe.open_stream(reference, settings, height=height, width=width, state=state, **(stream_options or {}))

    result = RenderResult(output=final, resumed_from=kept)
    work_total = stream_work(expected_frames, settings) if expected_frames else None
    started = time.perf_counter()
    first_out = None          # (time, frames out) when this run's first frame came out
    writer = None
    cancelled = False
    try:
        with target:
            options = dict(audio_from=output.audio, audio_start=output.audio_start)
            if loaded is not None:
                options.update(size=(height, width), keep_frames=kept,
                               continue_from=continue_from if continue_from != target.path else None)
            with VideoWriter(target.path, output.fps, **options) as writer:
                if continue_from is not None and continue_from != target.path:
                    continue_from.unlink(missing_ok=True)   # its frames are in the new partial file now
                for step in stream_steps(stream, drive):
                    for frame in step.frames:   # written as they come: an interruption leaves a playable file
                        index = writer.frames_written
                        writer.write(frame)
                        if callbacks.frame is not None:
                            callbacks.frame(frame, index)
                        if callbacks.preview is not None and callbacks.preview_every and \
                                index % callbacks.preview_every == 0:
                            callbacks.preview(frame, index)
                    if step.frames and first_out is None:
                        first_out = (time.perf_counter(), step.frames_out)
                        result.first_frame_seconds = first_out[0] - started
                    if step.draining and result.frames_in == 0:
                        result.frames_in = step.frames_in
                        _check_length(expected_frames, expected_exact, step.frames_in, source, result)
                    result.frames_out = step.frames_out
                    checkpoints.step(stream, drive, writer)
                    try:
                        # A host's progress bar may stop the render too (ComfyUI's checks for Cancel on update).
                        if callbacks.progress is not None:
                            callbacks.progress(_progress(step, expected_frames, expected_exact, work_total,
                                                         first_out))
                        if callbacks.check_cancel is not None:
                            callbacks.check_cancel()
                    except BaseException:
                        cancelled = True
                        if resume.save_every and drive.at_boundary:   # a clean point: save exactly here
                            checkpoints.pending = checkpoints.take(stream, drive, writer.frames_written)
                        raise
                if result.frames_in == 0:
                    result.frames_in = stream.frames_in
    except BaseException as error:
        if writer is not None and resume.save_every:
            checkpoints.flush(writer.durable_frames)   # the writer is closed: every frame written is on disk
        if isinstance(error, OutputInUse):
            raise RenderFailed(str(error)) from error   # the message already says where the frames are
        where = _where_frames_are(target, writer, store)
        if isinstance(error, KeyboardInterrupt):
            raise RenderInterrupted(where) from None
        if cancelled:
            raise RenderCancelled(where) from error
        if isinstance(error, Exception):
            raise RenderFailed(f"{error}\n{where}") from error
        raise
    store.clear()
    result.seconds = time.perf_counter() - started
    if drive.stats is not None:
        result.pose_summary = drive.stats.summary()
    return result


def _progress(step, total, exact, work_total, first_out) -> RenderProgress:
    speed = left = None
    if first_out is not None and step.frames_out > first_out[1]:
        speed = (step.frames_out - first_out[1]) / max(time.perf_counter() - first_out[0], 1e-9)
        if total:
            left = max(0, total - step.frames_out) / speed
    work_done = step.work_done if work_total is None else min(step.work_done, work_total)
    return RenderProgress(step.frames_in, step.frames_out, total, exact, work_done, work_total, speed, left,
                          step.draining)


def _continuable(partial: Path, frames: int) -> Path:
    """The file to continue a video from (a PNG folder continues in place): the partial output, or the copy an
    earlier resume set aside and did not get to remove."""
    from ..io import VideoIOError
    from ..io.prefix import video_frame_count

    if partial.is_dir() or partial.parent.is_dir() and "%" in partial.name:
        return partial
    aside = partial.with_name(partial.stem + ".before-resume" + partial.suffix)
    if aside.exists():
        if partial.exists() and video_frame_count(partial) >= frames:
            aside.unlink()
        else:
            partial.unlink(missing_ok=True)
            return aside
    if not partial.exists():
        raise VideoIOError(f"Cannot resume: the interrupted output {partial} is gone. Render again without resume.")
    partial.rename(aside)
    return aside


def _check_length(expected: int | None, exact: bool, frames_in: int, source: SourceSpec, result: RenderResult):
    if not expected or frames_in >= expected or not exact:
        return
    warning = (f"{source.driving} ended after {frames_in} of the {expected} frames expected (the file is cut short "
               f"or damaged); the output has {frames_in} frames")
    result.warnings.append(warning)
    log.warning("%s", warning)


def _where_frames_are(target, writer, store) -> str:
    kept = target.kept_partial
    untouched = (f"the earlier {target.final} is untouched" if target.final.exists()
                 else f"{target.final} was not written")
    frames = 0 if writer is None else writer.frames_written
    if kept is None:
        return f"No frame was rendered; {untouched}."
    text = f"The {frames} frames rendered before that are in {kept} (it plays); {untouched}."
    record = store.record()
    if record is not None:
        text += f" Resume continues after frame {record['frames_written']} (state in {store.folder})."
    return text
