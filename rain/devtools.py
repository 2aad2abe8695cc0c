"""Reduced-size models with random weights, written in the released files' layout.

``python -m rain make-tiny-models DIR`` fills a models folder so the whole pack (CLI, nodes, workflows)
can be tried end to end without downloading 10 GB; the plumbing is real, the weights are random.

Plain random weights render an almost black frame whatever the pose, which looks the same as a broken
pipeline. So the random weights are shaped, not trained, to make working plumbing visible: the output is
blocky coloured noise that changes with the pose images (see ``shape_for_display``), never black or flat.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .models.image_encoder import build_image_encoder
from .models.pose_guider import PoseGuider, PoseGuiderConfig
from .models.reference_unet import ReferenceUNet
from .models.taesdv import TAESDV
from .models.vae import build_vae
from .models.video_unet import UNetConfig, VideoUNet

TINY_CONFIG = Path(__file__).parent / "configs" / "tiny.json"
#: Written next to the denoiser by ``make-tiny-models``: what the set is (see ``rain.model_set``).
TINY_NATIVE_SIZE = (128, 128)

# How the random weights are shaped for display (measured on the reduced widths; see shape_for_display).
_OFF_CENTRE_TAPS = 0.1        # weight of a 3×3 kernel's outer taps relative to its centre
_RESIDUAL_BRANCH_SCALE = 0.1  # resnet / attention branches, against the skip paths that carry the pose
_POSE_FEATURE_STD = 40.0      # pose features against conv_in's output (about 1 for unit noise)
_DENOISER_OUTPUT_SCALE = 4.0  # v-predictions well above the noise the LCM step re-injects
_DECODED_MEAN, _DECODED_STD = 0.5, 0.2


def randomise_weights(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every weight a visible random value (official constructors zero some layers, which would hide
    whole paths: motion-module outputs, the guidance projection, the pose guider's last conv)."""
    for name, parameter in module.named_parameters():
        with torch.no_grad():
            if parameter.ndim >= 2:
                fan_in = parameter[0].numel()
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / fan_in ** 0.5)
            elif name.endswith("weight"):
                parameter.copy_(1 + 0.1 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))


@torch.no_grad()
def local_kernels(module: torch.nn.Module, off_centre: float) -> None:
    """Weight every 3×3 kernel towards its centre tap (output variance kept), so a feature stays near the
    place that caused it instead of spreading over a small frame after a few random layers."""
    mask = torch.full((3, 3), float(off_centre))
    mask[1, 1] = 1.0
    mask *= (9.0 / (1.0 + 8.0 * off_centre ** 2)) ** 0.5
    for parameter in module.parameters():
        if parameter.ndim == 4 and tuple(parameter.shape[-2:]) == (3, 3):
            parameter.mul_(mask)


@torch.no_grad()
def damp_residual_branches(unet: torch.nn.Module, scale: float) -> None:
    """Scale what every resnet and transformer adds to its input: the skip paths from ``conv_in`` (where
    the pose features enter) to ``conv_out`` then dominate the random mixing."""
    for name, parameter in unet.named_parameters():
        if name.endswith(("conv2.weight", "conv2.bias")) or ".proj_out." in name:
            parameter.mul_(scale)


@torch.no_grad()
def shape_for_display(unet: VideoUNet, guider: PoseGuider, taesdv: TAESDV) -> None:
    """Shape randomised reduced models so their output shows the plumbing (mean pixel near 0.5, the pose
    image visible in it) rather than a near-black frame: local kernels, damped residual branches, pose
    features that dominate the UNet input, large v-predictions, and a decoder calibrated to mid-grey.
    Only ever applied to random weights: the released checkpoints are loaded as they are."""
    local_kernels(unet, _OFF_CENTRE_TAPS)
    local_kernels(guider, _OFF_CENTRE_TAPS)
    local_kernels(taesdv.decoder, 0.0)  # per-pixel decoding: latent structure becomes picture structure
    damp_residual_branches(unet, _RESIDUAL_BRANCH_SCALE)
    unet.conv_out.weight.mul_(_DENOISER_OUTPUT_SCALE)
    unet.conv_out.bias.mul_(_DENOISER_OUTPUT_SCALE)

    # Calibrated on probes, not constants: the scales then hold for any seed.
    probe = torch.zeros(1, 3, 1, 64, 64)
    probe[..., 16:48, 20:44] = 1.0  # a pose-like blob on black
    features = guider(probe)
    guider.conv_out.weight.mul_(_POSE_FEATURE_STD / features.std())
    guider.conv_out.bias.mul_(_POSE_FEATURE_STD / features.std())

    latents = _DENOISER_OUTPUT_SCALE * torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    decoded = taesdv.decode(latents)
    mean, std = decoded.mean(dim=(0, 2, 3)), decoded.std(dim=(0, 2, 3))
    last = taesdv.decoder[-1]
    gain = _DECODED_STD / std
    last.weight.mul_(gain[:, None, None, None])
    last.bias.copy_((last.bias - mean) * gain + _DECODED_MEAN)
def random_stream_models(block_out_channels=(32, 64, 96, 96), *, layers_per_block: int = 2,
                         pose_channels: int | None = None, seed: int = 0, randomise: bool = True):
    """The stream's models (denoiser, pose guider, TAESDV) with random weights, built in memory — for speed
    measurements and the accelerated-backend tests (speed and graph structure do not depend on the values)."""
    from .loading import RainModels
    generator = torch.Generator().manual_seed(seed)
    unet = VideoUNet(UNetConfig(block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block))
    guider = PoseGuider(PoseGuiderConfig(conditioning_embedding_channels=pose_channels or block_out_channels[0]))
    taesdv = TAESDV()
    if randomise:
        for module in (unet, guider, taesdv):
            randomise_weights(module, generator)
    return RainModels(unet.eval().requires_grad_(False), guider.eval().requires_grad_(False),
                      taesdv=taesdv.eval().requires_grad_(False))


def random_reference(unet: VideoUNet, height: int, width: int, *, images: int = 1, seed: int = 0,
                     dtype: torch.dtype = torch.float16):
    """A ``Reference`` with random features of the right shapes for ``unet`` at ``height``×``width``."""
    from .models.reference_attention import feature_shapes
    from .pipeline import Reference
    generator = torch.Generator().manual_seed(seed)
    device = unet.conv_in.weight.device
    features = {name: torch.randn(shape, generator=generator).to(device, dtype)
                for name, shape in feature_shapes(unet, height, width, images).items()}
    context = torch.randn(1, 1, unet.config.cross_attention_dim, generator=generator).to(device)
    return Reference(features, context, height, width)


def write_tiny_models(models_dir: str | Path, seed: int = 0) -> Path:
    """Write reference_unet.pth, motion_unet.pth, pose_guider.pth, taesdv.pth, sd-vae-ft-mse/ and
    image_encoder/ with reduced widths and random weights (shaped for display) into ``models_dir``."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads(TINY_CONFIG.read_text(encoding="utf-8"))
    generator = torch.Generator().manual_seed(seed)
    unet_config = UNetConfig(block_out_channels=tuple(config["unet_block_out_channels"]))

    def save_pth(module: torch.nn.Module, name: str) -> None:
        torch.save({k: v.contiguous() for k, v in module.state_dict().items()}, models_dir / f"{name}.pth")

    reference_unet = ReferenceUNet.from_config_dataclass(unet_config)
    unet = VideoUNet(unet_config)
    guider = PoseGuider(PoseGuiderConfig(conditioning_embedding_channels=config["pose_guider_out_channels"]))
    taesdv = TAESDV()
    for module in (reference_unet, unet, guider, taesdv):
        randomise_weights(module, generator)
    shape_for_display(unet, guider, taesdv)
    save_pth(reference_unet, "reference_unet")
    save_pth(unet, "motion_unet")
    save_pth(guider, "pose_guider")
    save_pth(taesdv, "taesdv")

    def save_folder(module: torch.nn.Module, folder: str, filename: str, folder_config: dict) -> None:
        """A diffusers/transformers-style folder: config.json next to the weights."""
        randomise_weights(module, generator)
        (models_dir / folder).mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, models_dir / folder / filename)
        (models_dir / folder / "config.json").write_text(json.dumps(folder_config, indent=1), encoding="utf-8")

    save_folder(build_vae(config["vae"]), "sd-vae-ft-mse", "diffusion_pytorch_model.safetensors", config["vae"])
    save_folder(build_image_encoder(config["image_encoder"]), "image_encoder", "model.safetensors",
                config["image_encoder"])
    return models_dir


def write_tiny_depth_model(folder: str | Path, *, family: str = "dpt", seed: int = 0) -> Path:
    """A reduced random depth estimator in transformers' folder layout (config.json, model.safetensors,
    preprocessor_config.json) that :class:`rain.depth.DepthEstimator` loads like a real one: ``family`` "dpt"
    (DPT / MiDaS) or "depth_anything" (Depth Anything, DINOv2 backbone)."""
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTConfig,
                              DPTForDepthEstimation)
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    folder = Path(folder)
    generator = torch.Generator().manual_seed(seed)
    neck = dict(neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, head_hidden_size=8)
    if family == "dpt":
        model = DPTForDepthEstimation(DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                                intermediate_size=32, image_size=32, patch_size=8,
                                                backbone_out_indices=[0, 1, 2, 3], **neck))
        processor = DPTImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False,
                                         ensure_multiple_of=8)
    elif family == "depth_anything":
        backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                                image_size=28, patch_size=14, reshape_hidden_states=False,
                                out_features=["stage1", "stage2", "stage3", "stage4"])
        model = DepthAnythingForDepthEstimation(DepthAnythingConfig(backbone_config=backbone, patch_size=14,
                                                                    reassemble_hidden_size=16, **neck))
        processor = DPTImageProcessorPil(size={"height": 28, "width": 28}, keep_aspect_ratio=True,
                                         ensure_multiple_of=14, image_mean=[0.485, 0.456, 0.406],
                                         image_std=[0.229, 0.224, 0.225])
    else:
        raise ValueError(f"family={family!r}: choose 'dpt' or 'depth_anything'")
    randomise_weights(model, generator)
    last_conv = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last_conv.bias.fill_(0.5)  # the head ends in a ReLU: keep most of a random map above zero
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_tiny_sd_unet(folder: str | Path, seed: int = 0) -> Path:
    """A reduced sd-image-variations ``unet/`` folder (diffusers layout: config.json + safetensors) with the tiny
    set's widths, for trying stage-1 training from an SD UNet without the 3.4 GB download."""
    from diffusers import UNet2DConditionModel

    config = json.loads(TINY_CONFIG.read_text(encoding="utf-8"))
    widths = tuple(config["unet_block_out_channels"])
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=widths, layers_per_block=2,
        attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D",) * (len(widths) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(widths) - 1))
    randomise_weights(unet, torch.Generator().manual_seed(seed))
    unet.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)
# -- what make-tiny-models writes besides the weights (one function per item) ----------------------------------
#: Subfolders the shipped workflows pick for checkpoints trained on other pose images (whole body, depth).
TASK_SETS = ("body", "depth")
#: Models (``rain.weights`` names) write_tiny_models writes; make-tiny-models refuses a folder holding others'.
TINY_MODEL_NAMES = ("motion_unet", "reference_unet", "pose_guider", "taesdv", "vae", "image_encoder")
_LARGEST_STAND_IN = 8 * 2 ** 20  # the DWPose stand-ins are ~3 MB; the smallest real file is 22 MB
SET_FILES = ("motion_unet.pth", "pose_guider.pth", "reference_unet.pth")
README_NAME = "README.txt"


def write_tiny_declaration(models_dir: str | Path) -> Path:
    """``rain_model_set.json`` next to the tiny denoiser: native size and "reduced random weights", so the
    nodes and the CLI run the set at the size it is meant for whatever a workflow asks (``rain.model_set``)."""
    from .model_set import write_declaration
    return write_declaration(Path(models_dir) / "motion_unet.pth", native_size=TINY_NATIVE_SIZE,
                             reduced_random_weights=True)


def write_tiny_task_sets(models_dir: str | Path, names: tuple[str, ...] = TASK_SETS) -> list[Path]:
    """``body/`` and ``depth/`` sets (the files the whole-body and style-transfer workflows pick), sharing the
    tiny weights (hard links where the file system allows, copies otherwise) and the declaration."""
    import os
    import shutil
    models_dir = Path(models_dir)
    folders = []
    for name in names:
        folder = models_dir / name
        folder.mkdir(exist_ok=True)
        for file in SET_FILES:
            target = folder / file
            target.unlink(missing_ok=True)
            try:
                os.link(models_dir / file, target)
            except OSError:
                shutil.copy2(models_dir / file, target)
        write_tiny_declaration(folder)
        folders.append(folder)
    return folders


def write_tiny_dwpose(models_dir: str | Path) -> list[Path]:
    """``dwpose/yolox_l.onnx`` and ``dwpose/dw-ll_ucoco_384.onnx``: stand-ins under the real names that report
    one made-up upper-body person in every frame (``rain.pose.stand_in_models``); needs the onnx package.
    Real DWPose files already there are kept (they work with any RAIN models): returns [] then."""
    from .pose.model_files import DETECTOR_PREFERENCE, MODELS_SUBDIR, POSE_PREFERENCE
    from .pose.stand_in_models import write_dwpose_stand_ins
    folder = Path(models_dir) / MODELS_SUBDIR
    names = (DETECTOR_PREFERENCE[0], POSE_PREFERENCE[0])
    if any((folder / name).is_file() and (folder / name).stat().st_size > _LARGEST_STAND_IN for name in names):
        return []
    return write_dwpose_stand_ins(models_dir)


def write_tiny_readme(models_dir: str | Path) -> Path:
    """A README.txt in the folder saying what its files are, for whoever finds it later."""
    text = f"""These are NOT the RAIN weights. They were written by `python -m rain make-tiny-models` to try the
pack end to end without downloading ~10 GB:

* motion_unet.pth, reference_unet.pth, pose_guider.pth, taesdv.pth, sd-vae-ft-mse/, image_encoder/:
  the released files' layout with reduced widths and random weights (shaped so the output is blocky coloured
  noise that changes with the driving frames, not a picture of the character);
* {', '.join(f'{name}/' for name in TASK_SETS)}: the same weights under the names the whole-body and
  style-transfer workflows pick (body/motion_unet.pth, depth/motion_unet.pth);
* rain_model_set.json: declares the set's native frame size ({TINY_NATIVE_SIZE[1]}×{TINY_NATIVE_SIZE[0]}); the
  nodes and `python -m rain animate` render at that size whatever the workflow asks, and say so;
* dwpose/yolox_l.onnx, dwpose/dw-ll_ucoco_384.onnx: stand-ins under the real DWPose names that ignore the
  picture and report the same made-up upper-body person in every frame;
* depth_estimator/: a reduced random DPT depth model (transformers layout) for --task depth and RAIN Depth
  Maps, unless a real depth model was already there.

For the real models: delete this folder's contents and run
    python -m rain download --models-dir {Path(models_dir).resolve()}
"""
    path = Path(models_dir) / README_NAME
    path.write_text(text, encoding="utf-8")
    return path


def write_tiny_depth_estimator(models_dir: str | Path, seed: int = 0) -> str:
    """``depth_estimator/``: a reduced random DPT for ``--task depth`` and RAIN Depth Maps, unless a real depth
    model is already there (kept). Returns the phrase make-tiny-models reports."""
    from .depth import DEPTH_FOLDER
    folder = Path(models_dir) / DEPTH_FOLDER
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.bin"))
    if any(path.stat().st_size > _LARGEST_STAND_IN for path in weights):
        return ", kept the real depth estimator"
    write_tiny_depth_model(folder, seed=seed)
    return ", a random depth estimator"
