"""Reduced-size models with random weights, written in the released files' layout.

``python -m rain make-tiny-models DIR`` fills a models folder so the whole pack (CLI, nodes, workflows)
can be tried end to end without downloading 10 GB; the output is noise, the plumbing is real.
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


def write_tiny_models(models_dir: str | Path, seed: int = 0) -> Path:
    """Write reference_unet.pth, motion_unet.pth, pose_guider.pth, taesdv.pth, sd-vae-ft-mse/ and
    image_encoder/ with reduced widths and random weights into ``models_dir``."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads(TINY_CONFIG.read_text())
    generator = torch.Generator().manual_seed(seed)
    unet_config = UNetConfig(block_out_channels=tuple(config["unet_block_out_channels"]))

    def save_pth(module: torch.nn.Module, name: str) -> None:
        randomise_weights(module, generator)
        torch.save({k: v.contiguous() for k, v in module.state_dict().items()}, models_dir / f"{name}.pth")

    save_pth(ReferenceUNet.from_config_dataclass(unet_config), "reference_unet")
    save_pth(VideoUNet(unet_config), "motion_unet")
    guider = PoseGuider(PoseGuiderConfig(conditioning_embedding_channels=config["pose_guider_out_channels"]))
    randomise_weights(guider, generator)
    with torch.no_grad():
        guider.conv_out.weight.mul_(5.0)  # sparse dot images otherwise give near-zero features
    torch.save(guider.state_dict(), models_dir / "pose_guider.pth")
    save_pth(TAESDV(), "taesdv")

    def save_folder(module: torch.nn.Module, folder: str, filename: str, folder_config: dict) -> None:
        """A diffusers/transformers-style folder: config.json next to the weights."""
        randomise_weights(module, generator)
        (models_dir / folder).mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, models_dir / folder / filename)
        (models_dir / folder / "config.json").write_text(json.dumps(folder_config, indent=1))

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

    config = json.loads(TINY_CONFIG.read_text())
    widths = tuple(config["unet_block_out_channels"])
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=widths, layers_per_block=2,
        attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D",) * (len(widths) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(widths) - 1))
    randomise_weights(unet, torch.Generator().manual_seed(seed))
    unet.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)
