"""``python -m rain prepare-data``: a folder of videos → a prepared-clip dataset (:mod:`rain.training.data`).

Per video: decode lazily → candidate clips of ``clip_length`` frames every ``stride`` frames → crop to the
training aspect (centre, random patch, or stretch) and resize → annotate each clip with the task's condition
images through the inference code (face: DWPose → landmark tracking → RAIN's dots; body: DWPose → whole-body
skeleton; depth: :mod:`rain.depth`) → shards. Each clip is annotated as a fresh stream (held landmarks and the
depth range start anew), so a clip does not depend on the frames before it and preparation can resume at any
clip.

Resuming: the manifest records, per source, how far its clips reached the shards; a rerun skips finished
sources and continues an interrupted one after its last written clip. Unreadable or too-short videos are listed
as skipped (with the reason) and never stop the run; a video that breaks part-way keeps the clips read before.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # the dataset module loads torch; the command line only needs the choices below to start
    from .data import Manifest

log = logging.getLogger(__name__)

TASKS = ("face", "body", "depth")
CROPS = ("center", "random", "stretch")
FACE_TRANSFORMS = ("none", "startup", "calibration")
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".ts", ".gif"})
#: Training sizes (H, W) of the paper: 512x512 for face and depth, 512 wide x 768 high for whole body (§5.1).
DEFAULT_SIZES = {"face": (512, 512), "body": (768, 512), "depth": (512, 512)}
DEFAULT_CROPS = {"face": "center", "body": "center", "depth": "random"}   # §5.3: "randomly crop a patch"


@dataclass
class PrepareOptions:
    task: str
    size: tuple[int, int] | None = None        # (H, W); None = the task's default
    clip_length: int = 16
    stride: int | None = None                  # frames between clip starts; None = clip_length (no overlap)
    fps: float | None = None                   # resample videos to this rate first; None = their own
    crop: str | None = None                    # None = the task's default
    min_crop_scale: float = 0.6                # random crop: smallest patch, as a fraction of the largest one
    max_clips_per_video: int | None = None
    max_missing: float = 0.25                  # face/body: drop clips with more frames than this without detection
    face_transform: str = "none"               # see README "Preparing training data"
    seed: int = 0
    clips_per_shard: int = 64

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: choose one of {', '.join(TASKS)}")
        self.size = tuple(self.size or DEFAULT_SIZES[self.task])
        self.crop = self.crop or DEFAULT_CROPS[self.task]
        self.stride = self.stride or self.clip_length
        checks = [(self.crop in CROPS, f"crop={self.crop!r}: choose one of {', '.join(CROPS)}"),
                  (self.face_transform in FACE_TRANSFORMS,
                   f"face_transform={self.face_transform!r}: choose one of {', '.join(FACE_TRANSFORMS)}"),
                  (self.clip_length >= 1 and self.stride >= 1, "clip length and stride must be at least 1"),
                  (min(self.size) >= 8, f"size={self.size}: too small for training frames"),
                  (0.0 < self.min_crop_scale <= 1.0, "min_crop_scale must be in (0, 1]"),
                  (0.0 <= self.max_missing <= 1.0, "max_missing must be a fraction in [0, 1]"),
                  (self.clips_per_shard >= 1, "clips_per_shard must be at least 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def recorded(self) -> dict:
        """What must match for a rerun to continue the same dataset (the rest only changes speed or limits)."""
        keep = ("task", "size", "clip_length", "stride", "fps", "crop", "min_crop_scale", "max_missing",
                "face_transform", "seed")
        values = asdict(self)
        return {k: list(values[k]) if k == "size" else values[k] for k in keep}


# -- frame geometry --------------------------------------------------------------------------------------------
def crop_window(frame_hw: tuple[int, int], target_hw: tuple[int, int], mode: str,
                rng: np.random.Generator | None = None, min_scale: float = 1.0) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the part of a frame that becomes the training frame: the largest window
    of the target's aspect (centre), a random patch of it (random), or the whole frame (stretch)."""
    height, width = frame_hw
    if mode == "stretch":
        return 0, 0, height, width
    aspect = target_hw[1] / target_hw[0]
    win_h, win_w = (height, round(height * aspect)) if height * aspect <= width else (round(width / aspect), width)
    win_h, win_w = max(1, min(win_h, height)), max(1, min(win_w, width))
    if mode == "center":
        return (height - win_h) // 2, (width - win_w) // 2, win_h, win_w
    scale = rng.uniform(min_scale, 1.0)
    patch_h, patch_w = max(1, round(win_h * scale)), max(1, round(win_w * scale))
    return int(rng.integers(0, height - patch_h + 1)), int(rng.integers(0, width - patch_w + 1)), patch_h, patch_w


def fit_frame(frame: np.ndarray, window: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Cut ``window`` out of an RGB frame and resize it to ``size`` (H, W), bicubic like the video reader."""
    top, left, height, width = window
    part = frame[top:top + height, left:left + width]
    if part.shape[:2] == tuple(size):
        return np.ascontiguousarray(part)
    return np.asarray(Image.fromarray(part).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def candidate_clips(frames: Iterable[np.ndarray], clip_length: int, stride: int
                    ) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """(clip index, first frame, frames) for every window of ``clip_length`` frames starting each ``stride``."""
    window: deque[np.ndarray] = deque(maxlen=clip_length)
    for index, frame in enumerate(frames):
        window.append(frame)
        first = index - clip_length + 1
        if first >= 0 and first % stride == 0:
            yield first // stride, first, list(window)


# -- annotation ------------------------------------------------------------------------------------------------
class Annotator:
    """Condition images for one clip, annotated as a fresh stream; returns (images, frames without detection)."""

    def annotate(self, frames: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
        raise TypeError(f"{type(self).__name__} does not annotate")


class PoseAnnotator(Annotator):
    """DWPose → tracking → RAIN face dots or whole-body skeleton: :class:`rain.pose.driving.DrivingPoseRenderer`,
    the renderer ``python -m rain animate --task face|body`` draws with, on the already cropped training frame."""

    def __init__(self, detector, task: str, size: tuple[int, int], face_transform: str = "none"):
        from ..pose.driving import DrivingPoseRenderer

        self.renderer = DrivingPoseRenderer(detector, task=task, size=size,
                                            translations=face_translations(face_transform), missing="hold")

    def annotate(self, frames):
        self.renderer.reset()
        results = self.renderer.process_batch(frames)
        return [r.image for r in results], self.renderer.stats.frames_without_face


class DepthAnnotator(Annotator):
    def __init__(self, conditioner):
        self.conditioner = conditioner

    def annotate(self, frames):
        self.conditioner.reset()
        return self.conditioner.render(frames), 0


def make_annotator(task: str, size: tuple[int, int], face_transform: str, *, models_dir, depth_model=None,
                   device=None, batch_size: int = 8) -> Annotator:
    """The annotator of a task: DWPose landmarks/skeleton, or depth maps (the models load here)."""
    if task == "depth":
        from ..depth import DepthConditioner, DepthEstimator, find_depth_model
        estimator = DepthEstimator.from_folder(find_depth_model(models_dir, depth_model), device=device)
        return DepthAnnotator(DepthConditioner(estimator, batch_size=batch_size))
    from ..pose.dwpose import DWPoseDetector
    return PoseAnnotator(DWPoseDetector.from_models_dir(models_dir), task, size, face_transform)


def face_translations(name: str):
    """The landmark transform applied before drawing training faces (default none: the training videos' own
    landmarks; see the README for why)."""
    from ..pose.landmark_transform import DEMO_DEFAULTS, STARTUP_TRANSLATIONS, calibration_translations

    return {"none": (), "startup": STARTUP_TRANSLATIONS,
            "calibration": tuple(calibration_translations(DEMO_DEFAULTS))}[name]


# -- the run ---------------------------------------------------------------------------------------------------
@dataclass
class PrepareSummary:
    root: Path
    manifest: Manifest
    prepared: list[str] = field(default_factory=list)      # finished in this run
    already_done: list[str] = field(default_factory=list)  # finished in an earlier run
    skipped: dict[str, str] = field(default_factory=dict)  # source -> reason

    def lines(self) -> list[str]:
        m = self.manifest
        height, width = m.size
        out = [f"{self.root}: {m.clips} clips, {m.frames} frames of {width}x{height} ({m.task}), "
               f"{len(m.shards)} shards, {m.bytes / 2 ** 20:.1f} MiB",
               f"sources: {len(self.prepared)} prepared now, {len(self.already_done)} already done, "
               f"{len(self.skipped)} skipped"]
        for source in self.prepared:
            record = m.sources[source]
            note = f"  {source}: {record['clips']} clips"
            if record.get("dropped"):
                note += f", {record['dropped']} dropped (no face/person in over {m.preparation['max_missing']:.0%} " \
                        f"of their frames)"
            if record.get("warning"):
                note += f" - {record['warning']}"
            out.append(note)
        out.extend(f"  skipped {source}: {reason}" for source, reason in self.skipped.items())
        return out


def find_videos(videos_dir: str | os.PathLike) -> list[Path]:
    root = Path(videos_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; give the folder that holds the training videos")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def open_manifest(out_dir: Path, options: PrepareOptions) -> Manifest:
    """A fresh manifest, or the existing one when resuming the same preparation (else a clear error)."""
    from .data import MANIFEST, SHARDS, DatasetError, Manifest

    recorded = options.recorded()
    if not (out_dir / MANIFEST).is_file():
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise DatasetError(f"{out_dir} is not empty and holds no {MANIFEST}; prepare into a new or empty folder")
        return Manifest(task=options.task, size=options.size, clip_length=options.clip_length, fps=options.fps,
                        preparation=recorded)
    manifest = Manifest.read(out_dir)
    if manifest.preparation != recorded:
        changed = sorted(k for k in recorded if manifest.preparation.get(k) != recorded[k])
        raise DatasetError(f"{out_dir} was prepared with other options ({', '.join(changed)}: "
                           f"{', '.join(f'{k}={manifest.preparation.get(k)!r}' for k in changed)}); to continue it "
                           f"use the same options, or prepare into another folder")
    for stale in (out_dir / SHARDS).glob("*.tmp"):
        stale.unlink()  # a shard that was being written when the last run stopped
    return manifest


def clip_rng(seed: int, source: str, clip_index: int) -> np.random.Generator:
    """The random crop of one clip depends only on (seed, source, clip), so a resumed run draws the same."""
    return np.random.default_rng([seed, zlib.crc32(source.encode()), clip_index])


class _SourceProgress:
    """One source's clips on their way to the shards: what is safe to record after each flush."""

    def __init__(self, record: dict):
        self.resume_at = int(record.get("next_clip", 0)) if record.get("status") == "partial" else 0
        self.written = int(record.get("clips", 0)) if self.resume_at else 0
        self.dropped_before = int(record.get("dropped", 0)) if self.resume_at else 0
        self.dropped: list[int] = []
        self.next_clip = self.resume_at

    def record(self) -> dict:
        dropped = self.dropped_before + sum(1 for i in self.dropped if i < self.next_clip)
        return {"status": "partial", "clips": self.written, "next_clip": self.next_clip, "dropped": dropped}


def _until_error(frames: Iterable[np.ndarray], failures: list[Exception]) -> Iterator[np.ndarray]:
    """The frames of a video up to a decoding error, which is recorded instead of raised (the clips before it are
    good; a damaged tail must not cost the whole video)."""
    iterator = iter(frames)
    while True:
        try:
            frame = next(iterator)
        except StopIteration:
            return
        except Exception as failure:  # noqa: BLE001 - PyAV, Pillow and our own reader raise different types
            failures.append(failure)
            return
        yield frame


@dataclass
class SourceClips:
    """What one video gives: its clips in order (``clips`` yields ("clip", index, start, frames, conditions,
    window) or ("dropped", index)), then ``seen`` / ``failures`` / ``fps`` once the iterator is exhausted."""
    clips: Iterator[tuple]
    seen: int = 0
    failures: list = field(default_factory=list)
    fps: float | None = None


def source_clips(path: Path, source: str, options: PrepareOptions, annotator: Annotator,
                 resume_at: int = 0) -> SourceClips:
    """The clips of one video, annotated, from clip ``resume_at`` on: the same work whether it runs here or on a
    farm worker (``rain.farm.prepare``), so both give the same dataset."""
    from ..io import probe, read_frames

    result = SourceClips(iter(()))
    try:
        result.fps = options.fps or probe(path).fps
        frames = _until_error(read_frames(path, fps=options.fps), result.failures)
    except Exception as failure:  # noqa: BLE001 - an unreadable video is skipped, whatever the decoder says
        result.failures.append(failure)
        frames = iter(())

    def clips():
        for clip_index, start, raw in candidate_clips(frames, options.clip_length, options.stride):
            if options.max_clips_per_video is not None and clip_index >= options.max_clips_per_video:
                break
            result.seen = clip_index + 1
            if clip_index < resume_at:
                continue
            window = crop_window(raw[0].shape[:2], options.size, options.crop,
                                 clip_rng(options.seed, source, clip_index), options.min_crop_scale)
            clip = [fit_frame(f, window, options.size) for f in raw]
            conditions, missing = annotator.annotate(clip)
            if missing > options.max_missing * options.clip_length:
                yield ("dropped", clip_index)
                continue
            yield ("clip", clip_index, start, np.stack(clip), np.stack(conditions), list(window))

    result.clips = clips()
    return result


#: ``clip_source(path, source, resume_at) -> SourceClips``: where a video's clips come from (here, or a worker).
ClipSource = Callable[[Path, str, int], SourceClips]


def prepare_dataset(videos_dir: str | os.PathLike, out_dir: str | os.PathLike, options: PrepareOptions, *,
                    annotator: Annotator | None = None, progress: Callable[[str], None] | None = None,
                    clip_source: ClipSource | None = None) -> PrepareSummary:
    """Prepare (or continue preparing) ``out_dir`` from the videos under ``videos_dir``. The clips are computed
    here with ``annotator``, or come from ``clip_source`` (farm workers); the shards are written here, in the
    videos' order, so the dataset is the same either way."""
    from .data import ShardWriter

    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    videos = find_videos(videos_dir)
    if not videos:
        raise FileNotFoundError(f"no videos in {videos_dir} (looked for {', '.join(sorted(VIDEO_SUFFIXES))})")
    if clip_source is None:
        def clip_source(path, source, resume_at):
            return source_clips(path, source, options, annotator, resume_at)
    manifest = open_manifest(out_dir, options)
    summary = PrepareSummary(out_dir, manifest)
    active: dict[str, _SourceProgress] = {}

    def on_flush(records: list[dict]) -> None:
        for record in records:
            state = active[record["source"]]
            state.written += 1
            state.next_clip = max(state.next_clip, record["clip_index"] + 1)
        for source in {r["source"] for r in records}:
            manifest.sources[source] = active[source].record()

    writer = ShardWriter(out_dir, manifest, clips_per_shard=options.clips_per_shard, on_flush=on_flush)
    manifest.write(out_dir)
    for path in videos:
        source = path.relative_to(videos_dir).as_posix()
        record = manifest.sources.get(source, {})
        if record.get("status") == "done":
            summary.already_done.append(source)
            continue
        if progress is not None:
            progress(source)
        state = active[source] = _SourceProgress(record)
        found = clip_source(path, source, state.resume_at)
        for event in found.clips:
            if event[0] == "dropped":
                state.dropped.append(event[1])
                state.next_clip = event[1] + 1
                continue
            _, clip_index, start, frames, conditions, window = event
            writer.add(frames, conditions, source=source, start_frame=start, clip_index=clip_index, crop=window)
        clips_seen, failures, fps = found.seen, found.failures, found.fps
        error = f"{type(failures[0]).__name__}: {failures[0]}" if failures and isinstance(failures[0], BaseException) \
            else (failures[0] if failures else None)
        if error:
            log.warning("%s: %s", source, error)
        writer.flush()
        if clips_seen == 0:
            reason = error or f"shorter than one clip ({options.clip_length} frames)"
            manifest.sources[source] = {"status": "skipped", "clips": 0, "reason": reason}
            summary.skipped[source] = reason
        else:
            state.next_clip = max(state.next_clip, clips_seen)
            done = {**state.record(), "status": "done", "fps": fps}
            done.pop("next_clip")
            if error:
                done["warning"] = f"read stopped after {clips_seen} clip(s): {error}"
            manifest.sources[source] = done
            summary.prepared.append(source)
        if manifest.fps is None and fps:
            manifest.fps = float(fps)
        manifest.write(out_dir)
        del active[source]
    return summary
