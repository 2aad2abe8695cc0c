"""Clean latents → frames: the one decoder factory of the pack (engine, CLI and nodes alike).

A decoder is a function ``(latents [T,4,h,w] in UNet space, memory) → (frames [T,H,W,3] float32 in [0,1] on the
CPU, memory)``. TAESDV's memory is the previous frame's input of each of its MemBlocks (spec §3.6), so
consecutive calls decode one continuous video; it lives in the caller's state (a stream keeps it in its
``StreamState``, so it is saved with the rest for resume). The SD VAE and the latent preview have no memory
and pass it through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .models.taesdv import TAESDVMemory
from .models.vae import decode_latents

Decoder = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
NAMES = ("taesdv", "vae", "preview", "none")

#: latent → RGB factors of SD1.x latents (UNet space), for a cheap preview without a decoder.
SD15_LATENT_RGB = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
                   (-0.2120, -0.2616, -0.7177))


def latent_preview_frames(latents: torch.Tensor) -> torch.Tensor:
    """Cheap RGB approximation of UNet-space SD1.x latents [T,4,h,w] → [T,8h,8w,3] in [0, 1] (no decoder)."""
    factors = torch.tensor(SD15_LATENT_RGB, dtype=torch.float32)
    rgb = torch.einsum("tchw,cr->thwr", latents.float().cpu(), factors)
    rgb = ((rgb + 1) / 2).clamp(0, 1)
    return rgb.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2).contiguous()


def make_decoder(models, name: str, device: torch.device | str, dtype: torch.dtype) -> Decoder | None:
    """The decoder ``name`` of a loaded model set (``rain.loading.RainModels``); None for 'none' (latents out).
    Raises with what to do when the model it needs is not loaded."""
    device = torch.device(device)
    if name == "none":
        return None
    if name == "preview":
        return lambda latents, memory: (latent_preview_frames(latents), memory)
    if name == "taesdv":
        taesdv = models.taesdv
        if taesdv is None:
            raise RuntimeError("the TAESDV decoder is not loaded: put taesdv.pth (or .safetensors) next to the "
                               "other RAIN files, or choose the 'vae' decoder")

        def decode_taesdv(latents: torch.Tensor, memory: list[torch.Tensor] | None):
            carried = TAESDVMemory()
            carried.inputs = memory
            frames = taesdv.decode(latents.to(device, dtype), carried)
            return frames.clamp(0, 1).permute(0, 2, 3, 1).float().cpu(), carried.inputs
        return decode_taesdv
    if name == "vae":
        vae = models.vae
        if vae is None:
            raise RuntimeError("the SD VAE is not loaded: load it (sd-vae-ft-mse/ or a VAE input) or choose the "
                               "'taesdv' decoder")
        return lambda latents, memory: (decode_latents(vae, latents.to(device)).permute(0, 2, 3, 1).float().cpu(),
                                        memory)
    raise ValueError(f"unknown decoder {name!r}: choose one of {', '.join(NAMES)}")
