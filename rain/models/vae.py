"""The SD VAE (sd-vae-ft-mse, diffusers ``AutoencoderKL``): reference encoding and full-quality decoding.

ComfyUI users keep this VAE as one LDM-layout ``.safetensors`` in ``models/vae``; diffusers' own
converter maps those keys to the diffusers layout.
"""

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

# RAIN hard-codes the SD1.x latent scale (spec §3.2).
LATENT_SCALE = 0.18215


def build_vae(config: dict) -> AutoencoderKL:
    return AutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")})


def is_ldm_layout(state_dict: dict) -> bool:
    return any(k.startswith(("encoder.down.", "first_stage_model.", "decoder.up.")) for k in state_dict)


def ldm_to_diffusers(state_dict: dict, config: dict) -> dict:
    """Convert a single-file (LDM / ComfyUI) VAE state dict to diffusers key names."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state_dict, {k: v for k, v in config.items() if not k.startswith("_")})


def vae_pixels(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """Stretch (Lanczos, aspect not kept — official framing, pitfall 14) to H×W, map to [-1, 1]: [1,3,H,W]."""
    image = image.convert("RGB").resize((width, height), resample=Image.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None] * 2.0 - 1.0


@torch.no_grad()
def encode_reference(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """[1,3,H,W] in [-1,1] → posterior mean × 0.18215 (no sampling), [1,4,H/8,W/8]."""
    parameter = next(vae.parameters())
    posterior = vae.encode(pixels.to(device=parameter.device, dtype=parameter.dtype)).latent_dist
    return posterior.mean * LATENT_SCALE


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """[T,4,h,w] UNet-space latents → [T,3,H,W] RGB in [0,1] (multiply by 1/0.18215 as the official does)."""
    parameter = next(vae.parameters())
    images = vae.decode(latents.to(device=parameter.device, dtype=parameter.dtype) * (1 / LATENT_SCALE)).sample
    return (images / 2 + 0.5).clamp(0, 1)
