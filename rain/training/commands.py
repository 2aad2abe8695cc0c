"""The ``prepare-data`` and ``evaluate`` commands of ``python -m rain``: arguments and what they run.

Kept out of :mod:`rain.cli` so that file only lists the commands; nothing heavy is imported until one runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parsers(commands, *, size_type, models_dir_default: str) -> None:
    """Add both commands to ``python -m rain``'s subparsers (``size_type`` parses N or WxH into (H, W))."""
    from .prepare import CROPS, FACE_TRANSFORMS, TASKS

    prepare = commands.add_parser(
        "prepare-data", help="cut videos into annotated training clips (face landmarks, whole-body pose, depth)",
        description="Cut every video under VIDEOS_DIR into clips, crop/resize them to the training size and "
                    "annotate each frame with the task's condition image, drawn as inference draws it. Resumable: "
                    "run it again to continue; unreadable videos are skipped and listed.")
    prepare.add_argument("videos_dir", type=Path, metavar="VIDEOS_DIR", help="folder searched for videos")
    prepare.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                         help="the dataset folder (shards + manifest.json); run again to continue")
    prepare.add_argument("--task", required=True, choices=TASKS,
                         help="the condition drawn for each frame: face landmarks, whole-body pose or depth")
    prepare.add_argument("--size", type=size_type, default=None,
                         help="training frame size N or WxH (default 512, and 512x768 for body as in the paper)")
    prepare.add_argument("--clip-length", type=int, default=16, help="frames per clip (default 16)")
    prepare.add_argument("--stride", type=int, default=None,
                         help="frames between clip starts (default: the clip length, i.e. no overlap)")
    prepare.add_argument("--fps", type=float, default=None, help="resample videos to this rate first (default: each video's own rate)")
    prepare.add_argument("--crop", choices=CROPS, default=None,
                         help="center: largest centred window of the training aspect (face, body); random: a "
                              "random patch of it per clip (depth, as in the paper); stretch: the whole frame (default: random for depth, center otherwise)")
    prepare.add_argument("--min-crop-scale", type=float, default=0.6,
                         help="--crop random: smallest patch as a fraction of the largest window (default 0.6)")
    prepare.add_argument("--max-clips-per-video", type=int, default=None,
                         help="at most this many clips from one video (default: all)")
    prepare.add_argument("--max-missing", type=float, default=0.25,
                         help="face/body: drop clips where more than this fraction of frames has no face/person")
    prepare.add_argument("--face-transform", choices=FACE_TRANSFORMS, default="none",
                         help="landmark transform before drawing training faces (default none: the videos' own "
                              "landmarks, because the human→anime transform belongs to inference; see README)")
    prepare.add_argument("--models-dir", default=models_dir_default,
                         help="where dwpose/ and depth_estimator/ are (default: %(default)s)")
    prepare.add_argument("--depth-model", default=None, metavar="NAME",
                         help="the depth model's folder name inside MODELS_DIR (default: depth_estimator)")
    prepare.add_argument("--device", default=None, help="depth model device (default: cuda when available)")
    prepare.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                         help="spread the videos over Ray workers (the render farm's): alone, a local cluster; with "
                              "an address, that cluster. The dataset equals the one prepared here (default: no Ray, this process)")
    prepare.add_argument("--workers", type=int, default=None,
                         help="with --ray: workers (default: one per GPU, else one per --threads CPU cores)")
    prepare.add_argument("--threads", type=int, default=None,
                         help="with --ray: torch threads per CPU worker (default: 1)")
    prepare.add_argument("--batch-size", type=int, default=8, help="depth frames per estimator call")
    prepare.add_argument("--clips-per-shard", type=int, default=64, help="clips stored per shard file")
    prepare.add_argument("--seed", type=int, default=0, help="random crops")

    evaluate = commands.add_parser(
        "evaluate", help="render held-out clips and report PSNR, SSIM, LPIPS, FVD, temporal stability and drift",
        description="Render every clip of a prepared dataset with a models folder through the stream (its "
                    "conditions drive, one of its frames is the reference) and compare with the real frames.")
    evaluate.add_argument("dataset", type=Path, metavar="DATASET", help="a prepared dataset (prepare-data)")
    evaluate.add_argument("--models-dir", default=models_dir_default)
    evaluate.add_argument("-o", "--output", type=Path, required=True,
                          help="folder for metrics.csv, drift.csv and drift.png")
    evaluate.add_argument("--clips", type=int, default=None, help="evaluate at most this many clips (default: all)")
    evaluate.add_argument("--reference-frame", type=int, default=0, help="the clip frame used as reference")
    evaluate.add_argument("--lpips", type=Path, default=None,
                          help="folder with the LPIPS weights (default: MODELS_DIR/lpips when present)")
    evaluate.add_argument("--i3d", type=Path, default=None, help="an I3D ONNX export for FVD (default: none, FVD not reported)")
    evaluate.add_argument("--drift-frames", type=int, default=5000,
                          help="length of the looped long stream for the drift curve (0: none)")
    evaluate.add_argument("--drift-window", type=int, default=1000, help="frames per drift point")
    evaluate.add_argument("--drift-clips", type=int, default=1, help="clips looped into long streams")
    evaluate.add_argument("--guidance", type=float, default=None,
                          help="default: the paper's for the dataset's task (face 2.5, body 2.0, depth 3.5)")
    evaluate.add_argument("--seed", type=int, default=42)
    evaluate.add_argument("--frames-per-group", type=int, default=4)
    evaluate.add_argument("--groups", type=int, default=4)
    evaluate.add_argument("--steps-per-group", type=int, default=1)
    evaluate.add_argument("--decoder", choices=("taesdv", "vae"), default="taesdv")
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None)
    evaluate.add_argument("--vae", type=Path, default=None, help="SD VAE single file instead of sd-vae-ft-mse/ (default: MODELS_DIR/sd-vae-ft-mse)")
    evaluate.add_argument("--image-encoder", type=Path, default=None)


def _fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def run_prepare_data(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .data import DatasetError
    from .prepare import PrepareOptions, find_videos, make_annotator, open_manifest, prepare_dataset

    options = PrepareOptions(task=args.task, size=args.size, clip_length=args.clip_length, stride=args.stride,
                             fps=args.fps, crop=args.crop, min_crop_scale=args.min_crop_scale,
                             max_clips_per_video=args.max_clips_per_video, max_missing=args.max_missing,
                             face_transform=args.face_transform, seed=args.seed,
                             clips_per_shard=args.clips_per_shard)
    try:
        videos = find_videos(args.videos_dir)  # cheap checks before any model loads
        open_manifest(args.out_dir, options)
    except DatasetError as error:
        return _fail(error)
    unreadable = _unreadable(videos)
    if videos and len(unreadable) == len(videos):
        listed = "\n".join(f"  {path}: {reason}" for path, reason in unreadable.items())
        print(f"error: none of the {len(videos)} videos in {args.videos_dir} can be read, so nothing would be "
              f"prepared (no model was loaded):\n{listed}\nConvert them to MP4 (H.264) or use other copies.",
              file=sys.stderr)
        return 2
    annotator_args = dict(models_dir=args.models_dir, depth_model=args.depth_model, device=args.device,
                          batch_size=args.batch_size)
    clip_source = annotator = None
    if getattr(args, "ray", None):
        from ..farm.prepare import RayClipSource
        clip_source = RayClipSource(args.videos_dir, args.out_dir, options, annotator_args,
                                    address=None if args.ray is True else str(args.ray), workers=args.workers,
                                    threads=args.threads)
    else:
        annotator = make_annotator(options.task, options.size, options.face_transform, **annotator_args)
    with tqdm(total=len(videos), unit="video", desc="preparing") as bar:
        def progress(source: str) -> None:
            bar.set_postfix_str(source[-40:])
            bar.update(1)
        try:
            summary = prepare_dataset(args.videos_dir, args.out_dir, options, annotator=annotator, progress=progress,
                                      clip_source=clip_source)
        except DatasetError as error:
            return _fail(error)
        bar.update(bar.total - bar.n)
    print("\n".join(summary.lines()))
    if not summary.prepared and not summary.already_done:
        print(f"error: nothing usable was prepared in {args.out_dir}: every video was skipped (see above)",
              file=sys.stderr)
        return 1
    return 0


def _unreadable(videos) -> dict:
    """{video: why} for the videos that do not open (a header probe: no frame is decoded, no model loaded)."""
    from ..io import probe
    from ..messages import describe_error
    found = {}
    for path in videos:
        try:
            probe(path)
        except Exception as error:  # noqa: BLE001 - PyAV and our reader raise different types
            found[path] = describe_error(error)
    return found


def run_evaluate(args: argparse.Namespace) -> int:
    from .data import DatasetError
    from .evaluate import EvaluateOptions, evaluate

    options = EvaluateOptions(clips=args.clips, reference_frame=args.reference_frame, lpips=args.lpips,
                              i3d=args.i3d, drift_frames=args.drift_frames, drift_window=args.drift_window,
                              drift_clips=args.drift_clips, guidance=args.guidance, seed=args.seed,
                              frames_per_group=args.frames_per_group, groups=args.groups,
                              steps_per_group=args.steps_per_group, decoder=args.decoder)
    try:
        report = evaluate(args.dataset, args.models_dir, args.output, options, device=args.device,
                          dtype=args.dtype, vae=args.vae, image_encoder=args.image_encoder, progress=True)
    except DatasetError as error:
        return _fail(error)
    print(report.table())
    for path in report.files:
        print(f"wrote {path}")
    return 0
