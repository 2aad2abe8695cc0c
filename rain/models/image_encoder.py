"""The CLIP image encoder (sd-image-variations' ViT-L/14 vision tower) and its preprocessing (spec §3.1).

Its projected embedding is the single cross-attention token of both UNets. Preprocessing is written out
with PIL rather than taken from transformers' ``CLIPImageProcessor``, whose default backend now depends
on whether torchvision is installed (and resizes differently); the official code used the PIL path.
"""

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixel_values(image: Image.Image, size: int = 224) -> torch.Tensor:
    """Shortest side → ``size`` (bicubic, long side truncated), centre crop, CLIP normalisation: [1,3,size,size]."""
    image = image.convert("RGB")
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_width, new_height = (size, new_long) if width <= height else (new_long, size)
    resized = image.resize((new_width, new_height), resample=Image.BICUBIC)
    top = (new_height - size) // 2
    left = (new_width - size) // 2
    cropped = np.asarray(resized, dtype=np.float32)[top:top + size, left:left + size]
    pixels = cropped * np.float32(1 / 255)
    pixels = (pixels - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]


def build_image_encoder(config: dict) -> CLIPVisionModelWithProjection:
    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    vision_config = CLIPVisionConfig(**fields)
    # Eager attention keeps the maths identical across transformers versions; the encoder runs once per
    # reference, so speed does not matter here.
    vision_config._attn_implementation = "eager"
    return CLIPVisionModelWithProjection(vision_config)


@torch.no_grad()
def encode_image(encoder: CLIPVisionModelWithProjection, image: Image.Image) -> torch.Tensor:
    """PIL image → the [1, 1, projection_dim] context both UNets attend to."""
    parameter = next(encoder.parameters())
    pixels = clip_pixel_values(image).to(device=parameter.device, dtype=parameter.dtype)
    return encoder(pixel_values=pixels).image_embeds[:, None, :]
