"""Model, reference and sampling nodes. Each converts ComfyUI types and calls the engine (``rain.pipeline``)."""

from __future__ import annotations

import logging

import torch

from . import downloads, host, model_set
from .rain_model import LATENT_SCALE, RainReference, denoiser_choices, fingerprint, load_model_set

log = logging.getLogger("ComfyUI-RAIN")

CATEGORY = "RAIN"
RAIN_MODEL = "RAIN_MODEL"
RAIN_REFERENCE = "RAIN_REFERENCE"
DECODERS = ["taesdv", "vae", "none"]
MAX_SIZE = 4096


def _pil(frame: torch.Tensor):
    from PIL import Image
    return Image.fromarray((frame.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())


class RainLoadModel:
    DESCRIPTION = ("Loads a RAIN model set from models/rain: pick its denoiser file; the pose guider, reference UNet "
                   "and TAESDV are found next to it, the SD VAE (sd-vae-ft-mse/) and CLIP image encoder "
                   "(image_encoder/) next to it or at the top of models/rain. Connect ComfyUI's own VAE / CLIP "
                   "vision models to use those instead of RAIN's copies.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = (RAIN_MODEL,)
    RETURN_NAMES = ("rain_model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        choices = denoiser_choices(host.list_model_files())
        return {
            "required": {
                "motion_unet": (choices, {"default": choices[0], "tooltip": "The denoiser checkpoint (motion_unet.pth, "
                                          "or one in a subfolder for another RAIN model, e.g. a depth-trained one)."}),
                "dtype": (["auto", "fp16", "bf16", "fp32"], {"default": "auto", "tooltip": "auto: ComfyUI's choice "
                          "for the device (fp16/bf16 on GPUs, fp32 on the CPU)."}),
                "device": (["auto", "cpu"], {"default": "auto", "tooltip": "auto: ComfyUI's device; models are "
                           "offloaded by ComfyUI's memory manager when other models need the room."}),
            },
            "optional": {
                "download_missing": ("BOOLEAN", {"default": True, "tooltip": "Download the released files that are "
                                     "missing (face set ≈8.7 GB, TAESDV, SD VAE, CLIP image encoder, DWPose) into "
                                     "ComfyUI/models/rain on the first run, with progress on this node; resumable, "
                                     "checked against the published hashes. Off: only use files already there."}),
                "vae": ("VAE", {"tooltip": "Use this SD1.x VAE (e.g. vae-ft-mse-840000) instead of "
                                "models/rain/sd-vae-ft-mse/."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "Use this CLIP vision model (ViT-L/14, as "
                                                "sd-image-variations' image_encoder) instead of models/rain/image_encoder/."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def IS_CHANGED(cls, motion_unet, dtype="auto", device="auto", **_):
        # Reload when a file of the set is replaced on disk, not on every run.
        return fingerprint(motion_unet)

    def load(self, motion_unet, dtype="auto", device="auto", vae=None, clip_vision=None, download_missing=False,
             unique_id=None):
        # The widget defaults to on (a graph downloads what it lacks); a script calling load() decides itself.
        if download_missing:
            downloads.fetch_missing(motion_unet, unique_id)
        return (load_model_set(motion_unet, dtype_choice=dtype, device_choice=device, vae=vae,
                               clip_vision=clip_vision),)


class RainFuseReference:
    DESCRIPTION = ("Encodes the character image once (CLIP + VAE + reference UNet) into a reference that every "
                   "sampler run reuses. A batch of several images is attended to together. Only a new image (or "
                   "model) fuses again; the reference is re-fitted automatically if the pose frames have another size.")
    CATEGORY = f"{CATEGORY}/reference"
    RETURN_TYPES = (RAIN_REFERENCE,)
    RETURN_NAMES = ("reference",)
    FUNCTION = "fuse"

    @classmethod
    def INPUT_TYPES(cls):
        size = {"min": 64, "max": MAX_SIZE, "step": 8}
        return {"required": {
            "rain_model": (RAIN_MODEL,),
            "image": ("IMAGE", {"tooltip": "The character (upper body, any size; stretched to width × height)."}),
            "width": ("INT", {"default": 512, **size, "tooltip": "Frame width the reference is fused for "
                              "(the pose frames' width; multiple of 8)."}),
            "height": ("INT", {"default": 512, **size, "tooltip": "Frame height (multiple of 8)."}),
        }}

    # No IS_CHANGED on purpose: ComfyUI's cache keys on the inputs, so only a new image/model/size re-fuses.
    def fuse(self, rain_model, image, width, height):
        from ..rain.io.images import MIN_REFERENCE_SIDE

        host.check_interrupted()
        if image.ndim != 4 or image.shape[0] == 0:
            raise ValueError(f"Fuse RAIN Reference: the image input must be an IMAGE batch [images, H, W, C], got "
                             f"shape {list(image.shape)}")
        if min(image.shape[1], image.shape[2]) < MIN_REFERENCE_SIDE:
            raise ValueError(f"Fuse RAIN Reference: the image is {image.shape[2]}×{image.shape[1]} pixels, too small "
                             f"for a reference (it is stretched to {width}×{height}). Use an image at least "
                             f"{MIN_REFERENCE_SIDE} pixels on each side, ideally around the frame size.")
        height, width = model_set.frame_size(rain_model, height, width, "Fuse RAIN Reference")
        rain_model.load("reference", "vae")
        reference = rain_model.pipeline.fuse_reference(image, int(height), int(width))
        return (RainReference(rain_model, reference),)


class RainStreamSampler:
    DESCRIPTION = ("Animates the reference with a sequence of pose images through RAIN's stream: a window of "
                   "num_groups groups of frames_per_group frames at rising noise, one LCM step per group move. "
                   "Frames come out in input order; previews show while it runs.")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("frames", "latents")
    OUTPUT_TOOLTIPS = ("Decoded frames [T,H,W,3]. With decoder 'none', a cheap latent preview at the same size.",
                       "The same frames as SD1.x latents (unscaled, as ComfyUI's VAE Decode expects).")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "rain_model": (RAIN_MODEL,),
                "reference": (RAIN_REFERENCE,),
                "poses": ("IMAGE", {"tooltip": "Pose images (face dots, skeletons or depth maps matching the "
                                    "checkpoint), all one size, sides multiples of 8."}),
                "frames_per_group": ("INT", {"default": 4, "min": 1, "max": 16,
                                             "tooltip": "Frames that share a noise level (official: 4)."}),
                "num_groups": ("INT", {"default": 4, "min": 1, "max": 16, "tooltip": "Noise levels in the window "
                                       "(official: 4); frames_per_group × num_groups ≤ 32."}),
                "steps_per_group": ("INT", {"default": 1, "min": 1, "max": 8, "tooltip": "LCM steps per level "
                                            "(total steps = num_groups × steps_per_group; official: 1 → 4 steps)."}),
                "guidance_scale": ("FLOAT", {"default": 2.5, "min": 0.0, "max": 20.0, "step": 0.05,
                                             "tooltip": "LCM guidance embedding w (official stream: 2.5)."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "decoder": (DECODERS, {"default": "taesdv", "tooltip": "taesdv: tiny temporal decoder (fast); "
                                       "vae: full SD VAE (slower, sharper); none: latents only, the image output "
                                       "is a rough preview."}),
                "temporal_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                                "tooltip": "Scales the motion modules' contribution (1 = as trained)."}),
            },
            "optional": {
                "engine": ("RAIN_ENGINE", {"tooltip": "From Build RAIN TensorRT Engine: run the steady-state calls "
                           "as one fused TensorRT / compiled graph (steps_per_group 1)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sample(self, rain_model, reference, poses, frames_per_group, num_groups, steps_per_group, guidance_scale,
               seed, decoder, temporal_strength, engine=None, unique_id=None):
        from ..rain.pipeline import check_size, to_pose_tensor
        from ..rain.progress import stream_steps, stream_work
        from ..rain.sampling.stream import StreamSettings

        if poses.ndim != 4 or poses.shape[0] == 0:
            raise ValueError(f"poses must be an IMAGE batch [frames, H, W, 3], got shape {list(poses.shape)}")
        total, height, width = int(poses.shape[0]), int(poses.shape[1]), int(poses.shape[2])
        size = model_set.frame_size(rain_model, height, width, "RAIN Stream Sampler")
        check_size(*size)
        height, width = size
        if not rain_model.has_decoder(decoder):
            rain_model.decoder(decoder)  # raises the message that says what to do
        settings = StreamSettings(frames_per_group=int(frames_per_group), num_groups=int(num_groups),
                                  steps_per_group=int(steps_per_group), guidance_scale=float(guidance_scale),
                                  seed=int(seed), decoder="none", temporal_strength=float(temporal_strength))
        if reference.model is not rain_model:
            raise ValueError("This reference was fused with another RAIN model: connect the same Load RAIN Model "
                             "node to Fuse RAIN Reference and to the sampler.")
        fitted = reference.for_size(height, width)
        rain_model.load("stream", *(["vae"] if decoder == "vae" else []))
        if engine is not None and engine.model is not rain_model:
            raise ValueError("This engine was built for another RAIN model: connect the same Load RAIN Model node "
                             "to Build RAIN TensorRT Engine and to the sampler.")
        if engine is not None:
            engine.check_fits(height, width, settings, "RAIN Stream Sampler")
        stream = rain_model.pipeline.open_stream(fitted, settings, height=height, width=width,
                                                 **(engine.stream_options() if engine is not None else {}))
        decode = rain_model.decoder(decoder)
        memory = None  # the decoder's memory across groups (TAESDV): one continuous video
        # Counted in pushed frames and UNet calls, so the bar moves from the first frame (the first finished
        # frame only comes after the window has filled).
        work = stream_work(total, settings)
        progress = host.progress_bar(work, node_id=unique_id)
        frames, latents = [], []

        def collect(finished):
            nonlocal memory
            if not finished:
                return None
            batch = torch.stack(finished)
            latents.append(batch.float().cpu())
            decoded, memory = decode(batch, memory)
            frames.append(decoded)
            return host.preview(_pil(decoded[-1]))

        def pose_tensors():
            for index in range(total):
                yield to_pose_tensor(model_set.fit_pose(poses[index], size))

        for step in stream_steps(stream, pose_tensors()):
            host.check_interrupted()
            preview = collect(step.frames)
            progress.update_absolute(step.work_done, work, preview)
        images = torch.cat(frames).contiguous()
        samples = torch.cat(latents) / LATENT_SCALE
        return (images, {"samples": samples.contiguous()})


class RainDecodeLatents:
    DESCRIPTION = ("Decodes latents from the RAIN sampler into frames with TAESDV (temporal, carries memory "
                   "from frame to frame) or the SD VAE.")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "decode"
    CHUNK = 8

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "rain_model": (RAIN_MODEL,),
            "latents": ("LATENT",),
            "decoder": (["taesdv", "vae"], {"default": "vae"}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def decode(self, rain_model, latents, decoder, unique_id=None):
        samples = latents["samples"]
        if samples.ndim == 5:  # [B, C, T, h, w] video latents → frames
            samples = samples.permute(0, 2, 1, 3, 4).reshape(-1, samples.shape[1], *samples.shape[3:])
        if samples.ndim != 4 or samples.shape[1] != 4:
            raise ValueError(f"expected SD1.x latents [frames, 4, h, w], got shape {list(samples.shape)}")
        rain_model.load(*(["vae"] if decoder == "vae" else ["stream"]))
        decode = rain_model.decoder(decoder)
        total = int(samples.shape[0])
        progress = host.progress_bar(total, node_id=unique_id)
        frames, memory = [], None
        for start in range(0, total, self.CHUNK):
            host.check_interrupted()
            decoded, memory = decode(samples[start:start + self.CHUNK] * LATENT_SCALE, memory)
            frames.append(decoded)
            progress.update_absolute(min(start + self.CHUNK, total), total, host.preview(_pil(frames[-1][-1])))
        return (torch.cat(frames).contiguous(),)


NODE_CLASS_MAPPINGS = {
    "RAIN_LoadModel": RainLoadModel,
    "RAIN_FuseReference": RainFuseReference,
    "RAIN_StreamSampler": RainStreamSampler,
    "RAIN_DecodeLatents": RainDecodeLatents,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RAIN_LoadModel": "Load RAIN Model",
    "RAIN_FuseReference": "Fuse RAIN Reference",
    "RAIN_StreamSampler": "RAIN Stream Sampler",
    "RAIN_DecodeLatents": "Decode RAIN Latents",
}
