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

from .render.engine import RenderFailed, RenderInterrupted  # noqa: F401  (raised by render)

log = logging.getLogger(__name__)


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
    resumed_from: int = 0       # frames kept from an interrupted render (--resume)


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
    fps, resample = driving_rates(args, info, timing, notes)
    expected, exact = expected_frame_count(args, info, timing, resample, notes)
    audio = None if args.no_audio or not info.has_audio else args.driving
    if getattr(args, "save_every", 0) < 0:
        raise ValueError(f"--save-every {args.save_every}: give a number of frames (0 saves no resume state)")
    job = AnimateJob(args, reference, size, fps, resample, expected, exact, settings, dwpose, audio, notes)
    check_resume(job)
    return job


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
    mismatch = declaration.check_task(args.task, "--task") if declaration is not None else None
    if mismatch:
        notes.append(mismatch)
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


def driving_rates(args, info, timing, notes: list[str]) -> tuple[float, float | None]:
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


def expected_frame_count(args, info, timing, resample, notes: list[str]) -> tuple[int | None, bool]:
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
def source_spec(job: AnimateJob):
    """What the render reads (``rain.render.SourceSpec``): the driving file, lazily, as pose frames of the job's
    size; DWPose (face/body) or the depth estimator (depth) are loaded here."""
    from .render import SourceSpec
    args = job.args
    detector = depth_model = None
    if args.task in ("face", "body"):
        from .pose.dwpose import DWPoseDetector
        detector = DWPoseDetector.from_files(*job.dwpose)
    if args.task == "depth":
        from .depth import find_depth_model
        depth_model = find_depth_model(args.models_dir, getattr(args, "depth_model", None))
    from .pose.landmark_transform import STARTUP_TRANSLATIONS
    return SourceSpec(Path(args.driving), args.task, job.size, fps=job.resample_fps, start=args.start,
                      max_frames=args.max_frames, crop=args.crop, missing=args.missing,
                      translations=tuple(STARTUP_TRANSLATIONS) if args.task == "face" else (),
                      detector=detector, detect_batch=args.frames_per_group, depth_model=depth_model,
                      device=args.device)


def resume_spec(job: AnimateJob):
    """The settings and input files a saved state must match (``rain.render.ResumeSpec``)."""
    from dataclasses import asdict

    from . import weights
    from .render import ResumeSpec
    args = job.args
    device, dtype = device_and_dtype(args.device, args.dtype)
    denoiser = weights.find_weight(args.models_dir, "motion_unet")
    models = {"models_dir": str(Path(args.models_dir).resolve()),
              "denoiser_bytes": denoiser.stat().st_size if denoiser is not None and denoiser.is_file() else None,
              "vae": None if args.vae is None else str(args.vae), "image_encoder": None if args.image_encoder is None
              else str(args.image_encoder)}
    pose = {"task": args.task, "size": list(job.size), "fps": job.resample_fps, "start": args.start,
            "max_frames": args.max_frames, "crop": args.crop, "missing": args.missing,
            "depth_model": None if getattr(args, "depth_model", None) is None else str(args.depth_model),
            "dwpose": None if job.dwpose is None else [str(path) for path in job.dwpose]}
    settings = {**asdict(job.settings), **pose, "output_fps": job.fps, "sound": job.audio is not None,
                "backend": getattr(args, "backend", "eager"),
                "dtype": str(dtype).replace("torch.", ""), "device": str(device).split(":")[0], **models}
    inputs = {"driving video": Path(args.driving), "reference image": Path(args.reference)}
    return ResumeSpec(settings=settings, inputs=inputs, save_every=_save_every(args),
                      resume=bool(getattr(args, "resume", False)), missing_ok=False)


def _save_every(args) -> int:
    """Frames between saved states; GIFs are never continued (their frames are re-quantised per file)."""
    if Path(args.output).suffix.lower() == ".gif":
        return 0
    return int(getattr(args, "save_every", 64))


def check_resume(job: AnimateJob) -> None:
    """``--resume``: refuse now (before loading models) if there is nothing to resume or anything changed."""
    from .io import ResumeStore
    from .io.resume import check_same
    if not getattr(job.args, "resume", False):
        return
    if _save_every(job.args) == 0:
        raise ValueError(f"--resume: {job.args.output} cannot be continued (GIF output, or --save-every 0 saves no "
                         f"state); render to .mp4, .mkv, .mov, .webm or PNG frames to resume.")
    store = ResumeStore(job.args.output)
    record = store.record()
    if record is None:
        raise FileNotFoundError(f"Nothing to resume for {job.args.output}: there is no saved state "
                                f"({store.folder}) — the render finished, or stopped before its first save "
                                f"(every --save-every {_save_every(job.args)} frames). Run without --resume to "
                                f"render from the beginning.")
    spec = resume_spec(job)
    check_same(record, spec.settings, spec.inputs, Path(job.args.output))


def render(job: AnimateJob, pipe, reference) -> RenderReport:
    """Stream the driving frames through RAIN into the output (``rain.render.render_video``), under its partial
    name until complete, with a progress bar."""
    from tqdm import tqdm

    from .progress import stream_calls

    calls = stream_calls(job.expected_frames, job.settings) if job.expected_frames else None
    group = job.settings.frames_per_group
    with tqdm(total=calls, unit="call", desc="animating", dynamic_ncols=True) as bar:
        def progress(step):
            bar.update(step.work_done // group - bar.n)
            total = f"{'~' if not job.expected_exact else ''}{job.expected_frames}" if job.expected_frames else "?"
            speed = f", {step.frames_per_second:.2f} frames/s" if step.frames_per_second else ""
            bar.set_postfix_str(f"{step.frames_in}/{total} frames in, {step.frames_out} out{speed}")
        return render_job(job, pipe, reference, progress=progress)


def render_job(job: AnimateJob, pipe, reference, *, progress=None, check_cancel=None,
               stream_options: dict | None = None) -> RenderReport:
    """The render of one checked job with the host's callbacks (the CLI's bar, a farm worker's reports and stop
    flag): one path for ``animate`` and ``batch``."""
    from .render import Callbacks, OutputSpec, render_video

    args = job.args
    for note in job.notes:
        log.warning("%s", note)
    result = render_video(pipe, reference, job.settings, source_spec(job),
                          OutputSpec(Path(args.output), job.fps, job.audio, args.start / job.fps),
                          expected_frames=job.expected_frames, expected_exact=job.expected_exact,
                          resume=resume_spec(job), callbacks=Callbacks(progress=progress, check_cancel=check_cancel),
                          stream_options=backend_options(args) if stream_options is None else stream_options)
    report = RenderReport(result.frames_in, result.frames_out, result.seconds, result.first_frame_seconds,
                          result.output, list(job.notes) + result.warnings, result.pose_summary)
    report.resumed_from = result.resumed_from
    return report


def summary_lines(job: AnimateJob, report: RenderReport) -> list[str]:
    height, width = job.size
    speed = ""
    if report.first_frame_seconds is not None and report.frames_out > 1:
        steady = report.seconds - report.first_frame_seconds
        speed = (f": first frame after {report.first_frame_seconds:.1f} s (the window filling), then "
                 f"{(report.frames_out - 1) / max(steady, 1e-9):.2f} frames/s")
    if report.resumed_from:
        speed += f" (continued after the {report.resumed_from} frames of the interrupted render)"
    lines = [f"wrote {report.frames_out} frames ({width}×{height}, {job.fps:g} frames/s) to {report.output} in "
             f"{report.seconds:.1f} s{speed}"]
    if report.pose_summary:
        lines.append(report.pose_summary)
    lines += [f"warning: {warning}" for warning in report.warnings]
    return lines
