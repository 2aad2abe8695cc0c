"""The options of ``python -m rain animate``, shared with ``python -m rain batch`` (where, given on the command
line, they are the defaults of every job, and each job may set them again as a column or key)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .sizes import parse_size

DEFAULT_MODELS_DIR = "models"
#: Options that name files: in a job file they are relative to the job file's folder.
PATH_OPTIONS = ("models_dir", "reference", "driving", "output", "vae", "image_encoder")


def add_animate_arguments(parser, *, batch_defaults: bool = False) -> None:
    """Add animate's options to ``parser``. ``batch_defaults``: nothing is required and an option not given is
    absent from the result (so that only what the user typed becomes a default for every job)."""

    def add(*names, **options):
        if batch_defaults and "--resume" in names:
            return   # batch resumes every interrupted job itself
        if batch_defaults:
            options.pop("required", None)
            options["default"] = argparse.SUPPRESS
            options["help"] = ((options.get("help") or "as for animate") +
                               " (default for every job; default: the job's own column, else animate's default)")
        parser.add_argument(*names, **options)

    add("--models-dir", default=DEFAULT_MODELS_DIR)
    add("--reference", required=True, type=Path,
                         help="the character image (any size ≥ 32 px and mode; stretched to the frame size)")
    add("--driving", required=True, type=Path,
                         help="a video (or image folder) of pose images, or a raw video with --task face/body")
    add("-o", "--output", required=True, type=Path,
                         help=".mp4 .mkv .webm .mov .gif, or a folder (PNGs); written as NAME.partial.EXT until "
                              "complete")
    add("--task", choices=("pose", "face", "body", "depth"), default="pose",
                         help="pose: the driving video already shows pose images; face/body: detect with DWPose; "
                              "depth: depth maps from the depth estimator (--depth-model)")
    add("--depth-model", default=None, metavar="NAME",
                         help="--task depth: the depth model's folder name inside MODELS_DIR (default: depth_estimator)")
    add("--size", type=parse_size, default=None,
                         help="output size N or WxH, multiples of 8 (default: the size the models declare, else "
                              "the driving video's size rounded down to multiples of 8, or 512 with "
                              "--task face/body/depth)")
    add("--fps", type=float, default=None,
                         help="resample the driving video to this rate (default: its own rate; a variable-rate "
                              "video is resampled to its average rate)")
    add("--start", type=int, default=0, help="skip this many driving frames")
    add("--max-frames", type=int, default=None,
                         help="stop after this many frames (default: every frame)")
    add("--crop", type=float, default=None,
                         help="--task face/body: centre-square crop keeping this fraction of the short side "
                              "(the demo's 0.9); default: stretch the frame like the official batch example")
    add("--missing", choices=("hold", "blank"), default="hold",
                         help="frames without a face: repeat the last landmarks or draw nothing")
    add("--guidance", type=float, default=2.5)
    add("--seed", type=int, default=42)
    add("--frames-per-group", type=int, default=4)
    add("--groups", type=int, default=4)
    add("--steps-per-group", type=int, default=1)
    add("--temporal-strength", type=float, default=1.0)
    add("--decoder", choices=("taesdv", "vae"), default="taesdv")
    add("--backend", choices=("eager", "compiled", "onnx", "tensorrt"), default="eager",
                         help="how steady-state calls run: eager PyTorch, torch.compile (+ CUDA graphs), onnxruntime, "
                              "or a TensorRT engine cached in <models-dir>/tensorrt (falls back to compiled, saying "
                              "how to install it, when TensorRT is missing; default: eager)")
    add("--device", default=None, help="cuda, cpu, cuda:1 … (default: cuda when available)")
    add("--dtype", choices=("fp16", "bf16", "fp32"), default=None,
                         help="default: fp16 on CUDA, fp32 on CPU")
    add("--vae", type=Path, default=None)
    add("--image-encoder", type=Path, default=None)
    add("--no-audio", action="store_true", help="do not copy the driving video's sound")
    add("--save-every", type=int, default=64, metavar="FRAMES",
                         help="save the complete render state next to the output (OUTPUT.resume/) every this many "
                              "frames, so --resume can continue an interrupted render; 0 saves none")
    add("--resume", action="store_true",
                         help="continue the interrupted render of -o from its last saved state (same settings and "
                              "inputs; it says which changed otherwise); the frames equal an uninterrupted render's")
