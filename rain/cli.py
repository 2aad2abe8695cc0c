"""``python -m rain``: download and convert weights, animate a reference from a driving video.

    python -m rain download --models-dir models
    python -m rain convert models/motion_unet.pth
    python -m rain animate --models-dir models --reference character.png --driving poses.mp4 -o out.mp4
    python -m rain animate ... --driving webcam_take.mp4 --task face      # raw video → landmarks → RAIN
    python -m rain make-tiny-models /tmp/tiny                              # random reduced weights for trying
    python -m rain live --models-dir models --reference character.png     # webcam → character on 127.0.0.1
    python -m rain prepare-data videos/ data/ --task depth                 # training clips (rain/training)
    python -m rain evaluate data/ --models-dir models -o eval/
"""

import argparse
import logging
import sys
from pathlib import Path

from .animate_options import DEFAULT_MODELS_DIR, add_animate_arguments
from .sizes import parse_size



class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default: appended as ArgumentDefaultsHelpFormatter does, unless the help already
    says it in words (options whose default is computed say what it is)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is argparse.SUPPRESS:
            return text
        if action.default is False and action.nargs == 0:
            return f"{text} (default: off)"
        if action.default is None:
            return text  # a test holds such options to saying their default in words
        return super()._get_help_string(action)


#: Help for the options several commands share, used where a command adds one without its own text.
COMMON_HELP = {
    "--models-dir": "the models folder (see README)",
    "--reference": "the character image",
    "--size": "frame size N or WxH, multiples of 8",
    "--crop": "centre-square crop keeping this fraction of the short side",
    "--missing": "frames without a face: repeat the last landmarks or draw nothing",
    "--frames-per-group": "frames that share a noise level",
    "--groups": "noise levels in the window",
    "--steps-per-group": "LCM steps per level",
    "--guidance": "LCM guidance embedding w",
    "--seed": "noise seed",
    "--temporal-strength": "scale of the motion modules' contribution (1 = as trained)",
    "--decoder": "taesdv: tiny temporal decoder (fast); vae: the SD VAE (slower, sharper)",
    "--device": "cuda, cpu, cuda:1 … (default: cuda when available)",
    "--dtype": "default: fp16 on CUDA, fp32 on CPU",
    "--vae": "a VAE folder or single file to use instead (default: MODELS_DIR/sd-vae-ft-mse)",
    "--image-encoder": "a CLIP vision folder or file to use instead (default: MODELS_DIR/image_encoder)",
}


class Parser(argparse.ArgumentParser):
    """Every (sub)command parser: defaults shown in --help, shared options explained once (``COMMON_HELP``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        if not kwargs.get("help"):
            shared = next((COMMON_HELP[n] for n in names if n in COMMON_HELP), None)
            if shared is not None:
                kwargs["help"] = shared
        return super().add_argument(*names, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m rain", description="RAIN: real-time character animation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print progress details (INFO log)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                     title="commands", metavar="COMMAND")

    download = commands.add_parser("download", help="fetch the released weights into a models folder (resumable)")
    download.add_argument("--models-dir", default=DEFAULT_MODELS_DIR, help="the models folder to fill")
    download.add_argument("--only", nargs="+", metavar="GROUP",
                          help="groups or model names: rain taesdv vae image_encoder dwpose, and the optional depth (depth "
                               "estimator for --task depth) and lpips (evaluate's LPIPS) (default: all but the "
                               "optional ones)")
    download.add_argument("--dwpose", action="store_true", help="only the DWPose ONNX files")
    download.add_argument("--force", action="store_true", help="download again even if present")

    convert = commands.add_parser("convert", help="write .safetensors copies of .pth checkpoints")
    convert.add_argument("paths", nargs="+", type=Path, help=".pth/.bin checkpoints to convert")
    convert.add_argument("--fp16", action="store_true", help="store floating tensors as float16")
    convert.add_argument("--overwrite", action="store_true", help="replace existing .safetensors copies")

    animate = commands.add_parser("animate", help="reference image + driving video → output video")
    add_animate_arguments(animate)

    from .live import standalone as live  # argparse only; the engine loads when the command runs
    live.add_arguments(commands.add_parser("live", help=live.HELP))

    tiny = commands.add_parser("make-tiny-models",
                               help="write reduced random weights and DWPose stand-ins (for trying the plumbing)")
    tiny.add_argument("models_dir", type=Path, help="the folder to fill (e.g. ComfyUI/models/rain)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")

    from .training.commands import add_parsers as add_training_data_parsers
    add_training_data_parsers(commands, size_type=parse_size, models_dir_default=DEFAULT_MODELS_DIR)
    from .training import cli as training_cli
    training_cli.add_parser(commands)
    from .farm import cli as farm_cli
    farm_cli.add_parser(commands)
    return parser


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
    from .convert import convert_to_safetensors
    failed = 0
    for path in args.paths:  # one bad file does not stop the others
        try:
            out = convert_to_safetensors(path, dtype=torch.float16 if args.fp16 else None,
                                         overwrite=args.overwrite)
        except weights.WeightsError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path} → {out}")
    if failed and len(args.paths) > 1:
        print(f"{failed} of {len(args.paths)} files were not converted (see above)", file=sys.stderr)
    return 2 if failed else 0


def run_animate(args) -> int:
    from .animate import load_pipeline, prepare_job, render, summary_lines
    job = prepare_job(args)             # every check that needs no model
    pipe, reference = load_pipeline(job)
    report = render(job, pipe, reference)
    for line in summary_lines(job, report):
        print(line)
    return 0


def run_make_tiny_models(args) -> int:
    from . import devtools
    from .model_set import read_declaration
    from .weights import find_weight

    folder = args.models_dir
    if folder.is_dir():
        denoiser = find_weight(folder, "motion_unet")
        ours = denoiser is not None and read_declaration(denoiser) is not None
        present = [str(path.relative_to(folder)) for name in devtools.TINY_MODEL_NAMES
                   if (path := find_weight(folder, name)) is not None]
        if present and not ours:
            raise FileExistsError(f"{folder} already holds {', '.join(present)}, which make-tiny-models did not "
                                  f"write (real weights?); nothing was changed. Give an empty folder instead.")
    path = devtools.write_tiny_models(folder, seed=args.seed)
    devtools.write_tiny_declaration(path)
    devtools.write_tiny_task_sets(path)
    devtools.write_tiny_readme(path)
    dwpose = "DWPose stand-ins"
    try:
        if not devtools.write_tiny_dwpose(path):
            dwpose = "kept the real DWPose files there"
    except ImportError:
        from .optional import install_hint
        dwpose = "no DWPose stand-ins"
        print(f"DWPose stand-ins skipped: they are built with the onnx package ({install_hint('onnx')}); "
              "--task face/body and the landmark nodes need them", file=sys.stderr)
    depth = devtools.write_tiny_depth_estimator(path)
    height, width = devtools.TINY_NATIVE_SIZE
    print(f"wrote reduced random models ({dwpose}{depth}) to {path} (see {devtools.README_NAME} there); they render "
          f"{width}×{height} structured noise that follows the pose")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .shell import tolerant_console
    tolerant_console()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from .animate import RenderFailed
    from .io import VideoIOError
    from .weights import WeightsError
    from .live.standalone import run as run_live
    from .training import cli as training_cli
    from .training.commands import run_evaluate, run_prepare_data
    from .farm.cli import run as run_batch
    handlers = {"batch": run_batch, "download": run_download, "convert": run_convert, "animate": run_animate,
                "make-tiny-models": run_make_tiny_models, "live": run_live, "prepare-data": run_prepare_data,
                "evaluate": run_evaluate, "train": training_cli.run}
    try:
        return handlers[args.command](args)
    except (WeightsError, VideoIOError, ValueError, FileNotFoundError, FileExistsError, RenderFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        print(f"interrupted{': ' + str(error) if str(error) else ''}", file=sys.stderr)
        return 130
