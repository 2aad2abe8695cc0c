"""``python -m rain``: download and convert weights, animate a reference from a driving video.

    python -m rain download --models-dir models
    python -m rain convert models/motion_unet.pth
    python -m rain animate --models-dir models --reference character.png --driving poses.mp4 -o out.mp4
    python -m rain animate ... --driving webcam_take.mp4 --task face      # raw video → landmarks → RAIN
    python -m rain make-tiny-models /tmp/tiny                              # random reduced weights for trying
"""

import argparse
import logging
import sys
import time
from pathlib import Path

DEFAULT_MODELS_DIR = "models"


def _size(text: str) -> tuple[int, int]:
    """'512' or 'WxH' → (height, width)."""
    try:
        if "x" in text.lower():
            width, height = (int(v) for v in text.lower().split("x"))
        else:
            width = height = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or WxH (e.g. 512 or 512x768), got {text!r}") from None
    return height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rain", description="RAIN: real-time character animation.")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    download = commands.add_parser("download", help="fetch the released weights into a models folder (resumable)")
    download.add_argument("--models-dir", default=DEFAULT_MODELS_DIR)
    download.add_argument("--only", nargs="+", metavar="GROUP",
                          help="groups or model names: rain taesdv vae image_encoder dwpose (default: all)")
    download.add_argument("--dwpose", action="store_true", help="only the DWPose ONNX files")
    download.add_argument("--force", action="store_true", help="download again even if present")

    convert = commands.add_parser("convert", help="write .safetensors copies of .pth checkpoints")
    convert.add_argument("paths", nargs="+", type=Path)
    convert.add_argument("--fp16", action="store_true", help="store floating tensors as float16")
    convert.add_argument("--overwrite", action="store_true")

    animate = commands.add_parser("animate", help="reference image + driving video → output video")
    animate.add_argument("--models-dir", default=DEFAULT_MODELS_DIR)
    animate.add_argument("--reference", required=True, type=Path, help="the character image (any size/mode)")
    animate.add_argument("--driving", required=True, type=Path,
                         help="a video (or image folder) of pose images, or a raw video with --task face/body")
    animate.add_argument("-o", "--output", required=True, type=Path, help=".mp4 .mkv .webm .gif or a folder (PNGs)")
    animate.add_argument("--task", choices=("pose", "face", "body"), default="pose",
                         help="pose: the driving video already shows pose images; face/body: detect with DWPose")
    animate.add_argument("--size", type=_size, default=None,
                         help="output size N or WxH, multiples of 8 (default: the driving video's size rounded "
                              "down to multiples of 8, or 512 with --task face/body)")
    animate.add_argument("--fps", type=float, default=None, help="resample the driving video to this rate")
    animate.add_argument("--start", type=int, default=0, help="skip this many driving frames")
    animate.add_argument("--max-frames", type=int, default=None)
    animate.add_argument("--crop", type=float, default=None,
                         help="--task face/body: centre-square crop keeping this fraction of the short side "
                              "(the demo's 0.9); default: stretch the frame like the official batch example")
    animate.add_argument("--missing", choices=("hold", "blank"), default="hold",
                         help="frames without a face: repeat the last landmarks or draw nothing")
    animate.add_argument("--guidance", type=float, default=2.5)
    animate.add_argument("--seed", type=int, default=42)
    animate.add_argument("--frames-per-group", type=int, default=4)
    animate.add_argument("--groups", type=int, default=4)
    animate.add_argument("--steps-per-group", type=int, default=1)
    animate.add_argument("--temporal-strength", type=float, default=1.0,
                         help="scale of the motion modules' contribution (1 = as trained)")
    animate.add_argument("--decoder", choices=("taesdv", "vae"), default="taesdv")
    animate.add_argument("--backend", choices=("eager", "compiled", "onnx", "tensorrt"), default="eager",
                         help="how steady-state calls run: eager PyTorch, torch.compile (+ CUDA graphs), onnxruntime, "
                              "or a TensorRT engine cached in <models-dir>/tensorrt (falls back to compiled, saying "
                              "how to install it, when TensorRT is missing)")
    animate.add_argument("--device", default=None, help="cuda, cpu, cuda:1 … (default: cuda when available)")
    animate.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None,
                         help="default: fp16 on CUDA, fp32 on CPU")
    animate.add_argument("--vae", type=Path, default=None, help="a VAE folder or single file to use instead")
    animate.add_argument("--image-encoder", type=Path, default=None, help="a CLIP vision folder or file to use")
    animate.add_argument("--no-audio", action="store_true", help="do not copy the driving video's sound")

    tiny = commands.add_parser("make-tiny-models", help="write reduced random weights (for trying the plumbing)")
    tiny.add_argument("models_dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def _device_and_dtype(device: str | None, dtype: str | None):
    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = "fp32" if device == "cpu" else "fp16"
    return device, {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]


def run_download(args) -> int:
    from . import weights
    which = ["dwpose"] if args.dwpose else (args.only or list(weights.DOWNLOAD_GROUPS))
    done = weights.download(args.models_dir, which, progress=True, force=args.force)
    for name, path in done.items():
        print(f"{name}: {path}")
    return 0


def run_convert(args) -> int:
    import torch

    from . import weights
    for path in args.paths:
        out = weights.convert_to_safetensors(path, dtype=torch.float16 if args.fp16 else None, overwrite=args.overwrite)
        print(f"{path} → {out}")
    return 0


def _driving_frames(args, size):
    """The pose images to animate, lazily: straight from the file, or through detection + rendering."""
    from .io import read_frames
    if args.task == "pose":
        return read_frames(args.driving, size=size, fps=args.fps, start=args.start, max_frames=args.max_frames), None
    from .pose.driving import pose_frames
    from .pose.dwpose import DWPoseDetector
    from .pose.face_tracking import PoseStats
    detector = DWPoseDetector.from_models_dir(args.models_dir)
    stats = PoseStats()
    raw = read_frames(args.driving, fps=args.fps, start=args.start, max_frames=args.max_frames)
    return pose_frames(raw, task=args.task, detector=detector, size=size, missing=args.missing, crop=args.crop,
                       stats=stats, batch_size=args.frames_per_group), stats


def run_animate(args) -> int:
    from PIL import Image
    from tqdm import tqdm

    from .io import VideoWriter, frames_total, probe
    from .pipeline import RainPipeline, check_size
    from .sampling.stream import StreamSettings

    if not args.reference.is_file():
        raise SystemExit(f"reference image not found: {args.reference}")
    info = probe(args.driving)
    if args.size is not None:
        size = args.size
    elif args.task == "pose":
        size = (max(64, info.height - info.height % 8), max(64, info.width - info.width % 8))
    else:
        size = (512, 512)
    check_size(*size)
    settings = StreamSettings(frames_per_group=args.frames_per_group, num_groups=args.groups,
                              steps_per_group=args.steps_per_group, guidance_scale=args.guidance, seed=args.seed,
                              decoder=args.decoder, temporal_strength=args.temporal_strength)
    device, dtype = _device_and_dtype(args.device, args.dtype)
    started = time.perf_counter()
    pipe = RainPipeline.from_models_dir(args.models_dir, device=device, dtype=dtype, vae_path=args.vae,
                                        image_encoder_path=args.image_encoder,
                                        decoders=(args.decoder,))
    reference = pipe.fuse_reference(Image.open(args.reference), *size)
    logging.info("models loaded and reference fused in %.1f s", time.perf_counter() - started)
    pipe.offload_reference(keep_vae=args.decoder == "vae")  # synthesis alone fits in less GPU memory

    poses, stats = _driving_frames(args, size)
    total = frames_total(info, args.fps)
    if total:
        total = max(0, total - args.start)
        total = min(total, args.max_frames) if args.max_frames else total
    fps = args.fps or info.fps or 16
    audio = None if args.no_audio or not info.has_audio else args.driving
    written = 0
    with VideoWriter(args.output, fps, audio_from=audio, audio_start=args.start / fps) as writer, \
            tqdm(total=total or None, unit="frame", desc="animating") as bar:
        # Frames are written as they come out, so an interrupted render leaves a playable file.
        for frame in pipe.stream(poses, reference, settings, **_backend_options(args)):
            writer.write(frame)
            written += 1
            bar.update(1)
    elapsed = time.perf_counter() - started
    print(f"wrote {written} frames to {args.output} ({elapsed:.1f} s, {written / max(elapsed, 1e-9):.2f} frames/s)")
    if stats is not None:
        print(stats.summary())
    return 0


def _backend_options(args) -> dict:
    if args.backend == "eager":
        return {}
    from .accel.backends import PrintedProgress
    return {"backend": args.backend, "progress": PrintedProgress(),
            "notify": lambda message: print(message, file=sys.stderr)}


def run_make_tiny_models(args) -> int:
    from .devtools import write_tiny_models
    path = write_tiny_models(args.models_dir, seed=args.seed)
    print(f"wrote reduced random models to {path} (frames must be multiples of 8, e.g. 64x64)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from .io import VideoIOError
    from .weights import WeightsError
    handlers = {"download": run_download, "convert": run_convert, "animate": run_animate,
                "make-tiny-models": run_make_tiny_models}
    try:
        return handlers[args.command](args)
    except (WeightsError, VideoIOError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the frames written so far are in the output file", file=sys.stderr)
        return 130
