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
