"""``python -m rain animate`` in three stages, so a bad input never costs a model load:

1. ``prepare_job``: every check that needs no model — the reference opens and is large enough, the output
   type is supported and its folder writable, the driving source opens (and how many frames it really holds,
   at which rate), the DWPose files exist for ``--task face/body``, the settings are valid;
2. ``load_pipeline``: the models, and the reference fused once;
3. ``render``: the stream, written under a partial name and moved into place when complete.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)


class RenderFailed(RuntimeError):
    """A render stopped by an error; the message says where the frames written so far are."""


class RenderInterrupted(KeyboardInterrupt):
    """Ctrl-C during a render; the message says where the frames written so far are."""


@dataclass
class AnimateJob:
    """Everything the render needs, checked before any model is loaded."""
    args: Namespace
    reference: Image.Image
    size: tuple[int, int]                 # (height, width) of the frames
    fps: float                            # output frame rate
    resample_fps: float | None            # read the driving video at this constant rate (None: as stored)
    expected_frames: int | None           # pose frames the driving source should give
    expected_exact: bool                  # False: estimated from a duration
    settings: object                      # rain.sampling.stream.StreamSettings
    dwpose: tuple[Path, Path] | None      # (detector, pose) ONNX files for --task face/body
    audio: Path | None
    notes: list[str] = field(default_factory=list)   # warnings: said before rendering, repeated in the summary


@dataclass
class RenderReport:
    frames_in: int = 0
    frames_out: int = 0
    seconds: float = 0.0
    first_frame_seconds: float | None = None    # from the first pose frame to the first finished frame
    output: Path | None = None
    warnings: list[str] = field(default_factory=list)
    pose_summary: str | None = None


# -- 1. checks ------------------------------------------------------------------------------------------------
def prepare_job(args: Namespace) -> AnimateJob:
    """Check the inputs and the output without loading a model; raise one clear error for the first problem."""
    from .io import load_reference
    from .pipeline import check_size
    from .sampling.stream import StreamSettings

    reference = load_reference(args.reference)
    check_output(args.output, inputs=(args.reference, args.driving))
    if args.start < 0:
        raise ValueError(f"--start {args.start}: the number of driving frames to skip cannot be negative")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames {args.max_frames}: give at least 1 (or leave it out for every frame)")
    if args.fps is not None and args.fps <= 0:
        raise ValueError(f"--fps {args.fps}: a frame rate must be positive")
    dwpose = None
    if args.task in ("face", "body"):
        from .pose.model_files import locate_dwpose_models
        dwpose = locate_dwpose_models(args.models_dir)
    if args.task == "depth":
        from .depth import find_depth_model
        find_depth_model(args.models_dir, getattr(args, "depth_model", None))
    notes: list[str] = []
    timing, info = _driving_timing(args)
    size = frame_size(args, info, notes)
    check_size(*size)
    settings = StreamSettings(frames_per_group=args.frames_per_group, num_groups=args.groups,
                              steps_per_group=args.steps_per_group, guidance_scale=args.guidance, seed=args.seed,
                              decoder=args.decoder, temporal_strength=args.temporal_strength)
    fps, resample = _rates(args, info, timing, notes)
    expected, exact = _expected_frames(args, info, timing, resample, notes)
    audio = None if args.no_audio or not info.has_audio else args.driving
    return AnimateJob(args, reference, size, fps, resample, expected, exact, settings, dwpose, audio, notes)


def check_output(output: Path, inputs=()) -> None:
    """The output type is one we write, it would not overwrite an input, and its folder is writable."""
    from .io import OUTPUT_SUFFIXES, VideoIOError, check_writable_folder
    from .io.atomic import is_folder_output, is_png_pattern

    output = Path(output)
    kinds = f"{' '.join(OUTPUT_SUFFIXES)}, a folder name (PNG frames) or a name_%05d.png pattern"
    if not (is_png_pattern(output) or is_folder_output(output) or output.suffix.lower() in OUTPUT_SUFFIXES):
        raise VideoIOError(f"Cannot write {output}: {output.suffix!r} is not an output type RAIN writes; use "
                           f"{kinds}.")
    if output.suffix == "" and output.exists() and not output.is_dir():
        raise VideoIOError(f"{output} is an existing file without a suffix; a PNG sequence needs a folder. "
                           f"Give a new name, or a video name such as {output}.mp4.")
    for source in inputs:
        if Path(source).exists() and output.exists() and output.resolve() == Path(source).resolve():
            raise VideoIOError(f"-o {output} is one of the inputs; inputs are never overwritten. Choose another "
                               f"output name.")
    check_writable_folder(output.parent if output.parent != Path("") else Path("."), f"-o {output}")


def _driving_timing(args):
    """(packet scan or None, header info): opens the driving source, counts a video's real frames."""
    from .io import probe, scan_timing
    info = probe(args.driving)
    return (scan_timing(args.driving) if info.kind == "video" else None), info


def frame_size(args: Namespace, info, notes: list[str]) -> tuple[int, int]:
    """(height, width): --size; else the driving video's size rounded down to multiples of 8 (pose task) or
    512×512 (detection tasks), fitted to the size the model set declares when it declares one."""
    from . import weights
    from .model_set import read_declaration

    declaration = read_declaration(weights.find_weight(args.models_dir, "motion_unet"))
    if declaration is not None and declaration.reduced_random_weights:
        log.warning("%s holds reduced random weights (make-tiny-models): the output is structured noise that "
                    "follows the pose, not the character", args.models_dir)
    if args.size is not None:
        return tuple(args.size)
    if args.task == "pose":
        requested = max(64, info.height - info.height % 8), max(64, info.width - info.width % 8)
    else:
        requested = 512, 512
    if declaration is None:
        return requested
    size = declaration.fit(*requested)
    if size != requested:
        log.warning("rendering at %d×%d: the models in %s declare %s as their size (%s); --size overrides it",
                    size[1], size[0], args.models_dir, declaration.describe_size(), declaration.path.name)
    return size


def _rates(args, info, timing, notes: list[str]) -> tuple[float, float | None]:
    """(output fps, fps to resample the driving video to or None)."""
    if args.fps is not None:
        return float(args.fps), float(args.fps)
    if timing is not None and timing.variable and timing.average_fps:
        rate = round(timing.average_fps, 3)
        notes.append(f"{args.driving} has a variable frame rate ({timing.describe_gaps()}); it is resampled by "
                     f"its timestamps to its average {rate:g} frames/s so the output plays at the right speed "
                     f"(--fps picks another rate)")
        return rate, rate
    return float(info.fps or 16), None


def _expected_frames(args, info, timing, resample, notes: list[str]) -> tuple[int | None, bool]:
    """How many pose frames the driving source gives after --start/--max-frames, and whether that is exact."""
    if timing is not None and timing.cut_short:
        notes.append(f"{args.driving} {timing.describe_shortfall()}: it was probably cut off (an interrupted "
                     f"download or recording); animating the frames there are")
    if timing is not None and resample is None:
        available, exact = timing.frames, True
    elif timing is not None and timing.duration:
        available, exact = max(1, math.ceil(timing.duration * resample - 1e-6)), False
    else:
        from .io import frames_total
        available, exact = frames_total(info, resample), resample is None or info.kind != "image"
    remaining = max(0, available - args.start)
    if remaining == 0:
        raise ValueError(f"--start {args.start} skips every frame of {args.driving} "
                         f"({'about ' if not exact else ''}{available} frames)")
    if args.max_frames is not None:
        remaining = min(remaining, args.max_frames)
    return remaining, exact


# -- 2. models ------------------------------------------------------------------------------------------------
def device_and_dtype(device: str | None, dtype: str | None):
    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = "fp32" if device == "cpu" else "fp16"
    return device, {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]


def load_pipeline(job: AnimateJob):
    """(pipeline, fused reference) for the job."""
    from .pipeline import RainPipeline
    args = job.args
    device, dtype = device_and_dtype(args.device, args.dtype)
    started = time.perf_counter()
    pipe = RainPipeline.from_models_dir(args.models_dir, device=device, dtype=dtype, vae_path=args.vae,
                                        image_encoder_path=args.image_encoder, decoders=(args.decoder,))
    reference = pipe.fuse_reference(job.reference, *job.size)
    log.info("models loaded and reference fused in %.1f s", time.perf_counter() - started)
    pipe.offload_reference(keep_vae=args.decoder == "vae")  # synthesis alone then fits in less GPU memory
    return pipe, reference


def backend_options(args: Namespace) -> dict:
    """``open_stream`` options for ``--backend``: engine builds report progress, fallbacks say why."""
    backend = getattr(args, "backend", "eager")
    if backend == "eager":
        return {}
    from .accel.backends import PrintedProgress
    return {"backend": backend, "progress": PrintedProgress(),
            "notify": lambda message: print(message, file=sys.stderr)}


# -- 3. the render --------------------------------------------------------------------------------------------
def driving_frames(job: AnimateJob, stats=None):
    """The pose images to animate ([H,W,3] uint8), lazily: straight from the file, or detected and drawn."""
    from .io import read_frames
    args = job.args
    if args.task == "pose":
        return read_frames(args.driving, size=job.size, fps=job.resample_fps, start=args.start,
                           max_frames=args.max_frames)
    if args.task == "depth":
        from .depth import depth_driving_frames
        return depth_driving_frames(args.driving, job.size, models_dir=args.models_dir,
                                    model=getattr(args, "depth_model", None), fps=job.resample_fps,
                                    start=args.start, max_frames=args.max_frames, crop=args.crop, device=args.device)
    from .pose.driving import pose_frames
    from .pose.dwpose import DWPoseDetector
    detector = DWPoseDetector.from_files(*job.dwpose)
    raw = read_frames(args.driving, fps=job.resample_fps, start=args.start, max_frames=args.max_frames)
    return pose_frames(raw, task=args.task, detector=detector, size=job.size, missing=args.missing,
                       crop=args.crop, stats=stats, batch_size=args.frames_per_group)


def render(job: AnimateJob, pipe, reference) -> RenderReport:
    """Stream the driving frames through RAIN into the output, under its partial name until complete."""
    from tqdm import tqdm

    from .io import AtomicOutput, VideoWriter
    from .pipeline import to_pose_tensor
    from .progress import stream_calls, stream_steps

    args = job.args
    report = RenderReport(output=args.output, warnings=list(job.notes))
    for note in job.notes:
        log.warning("%s", note)
    stats = None
    if args.task in ("face", "body"):
        from .pose.face_tracking import PoseStats
        stats = PoseStats()
    height, width = job.size
    stream = pipe.open_stream(reference, job.settings, height=height, width=width, **backend_options(args))
    target = AtomicOutput(args.output)
    started = time.perf_counter()
    calls = stream_calls(job.expected_frames, job.settings) if job.expected_frames else None
    written = 0
    total = f"{'~' if not job.expected_exact else ''}{job.expected_frames}" if job.expected_frames else "?"
    try:
        with target, VideoWriter(target.path, job.fps, audio_from=job.audio,
                                 audio_start=args.start / job.fps) as writer, \
                tqdm(total=calls, unit="call", desc="animating", dynamic_ncols=True) as bar:
            poses = (to_pose_tensor(frame) for frame in driving_frames(job, stats))
            for step in stream_steps(stream, poses):
                for frame in step.frames:  # written as they come: an interrupted render leaves a playable file
                    writer.write(frame)
                    written += 1
                if step.frames and report.first_frame_seconds is None:
                    report.first_frame_seconds = time.perf_counter() - started
                if step.draining and report.frames_in == 0:
                    report.frames_in = step.frames_in
                    _check_input_length(job, step.frames_in, report, bar)
                report.frames_out = step.frames_out
                bar.update(step.unet_calls - bar.n)
                bar.set_postfix_str(f"{step.frames_in}/{total} frames in, {step.frames_out} out")
            if report.frames_in == 0:  # no drain step (drain disabled)
                report.frames_in = stream.frames_in
                _check_input_length(job, stream.frames_in, report, bar)
    except KeyboardInterrupt:
        raise RenderInterrupted(_where_frames_are(target, written)) from None
    except Exception as error:
        raise RenderFailed(f"{error}\n{_where_frames_are(target, written)}") from error
    report.seconds = time.perf_counter() - started
    if stats is not None:
        report.pose_summary = stats.summary()
    return report


def _check_input_length(job: AnimateJob, frames_in: int, report: RenderReport, bar) -> None:
    expected = job.expected_frames
    if not expected or frames_in >= expected or not job.expected_exact:
        return
    warning = (f"{job.args.driving} ended after {frames_in} of the {expected} frames expected (the file is cut "
               f"short or damaged); the output has {frames_in} frames")
    report.warnings.append(warning)
    bar.write(f"warning: {warning}")


def _where_frames_are(target, frames: int) -> str:
    kept = target.kept_partial
    untouched = (f"the earlier {target.final} is untouched" if target.final.exists()
                 else f"{target.final} was not written")
    if kept is not None:
        return f"The {frames} frames rendered before that are in {kept} (it plays); {untouched}."
    return f"No frame was rendered; {untouched}."


def summary_lines(job: AnimateJob, report: RenderReport) -> list[str]:
    height, width = job.size
    speed = ""
    if report.first_frame_seconds is not None and report.frames_out > 1:
        steady = report.seconds - report.first_frame_seconds
        speed = (f": first frame after {report.first_frame_seconds:.1f} s (the window filling), then "
                 f"{(report.frames_out - 1) / max(steady, 1e-9):.2f} frames/s")
    lines = [f"wrote {report.frames_out} frames ({width}×{height}, {job.fps:g} frames/s) to {report.output} in "
             f"{report.seconds:.1f} s{speed}"]
    if report.pose_summary:
        lines.append(report.pose_summary)
    lines += [f"warning: {warning}" for warning in report.warnings]
    return lines
