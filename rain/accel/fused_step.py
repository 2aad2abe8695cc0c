"""The steady-state stream call as one static-shape module (spec §6.4, in the eager call's order).

Pose guider on the new group → UNet over the full window (the carried groups plus the new noise group) →
per-frame LCM step with supplied noise → TAESDV decode of the group that came out clean, with carried
memories → the window without that group. All shapes are fixed and all state is explicit tensors, which is what
graph capture (CUDA graphs, ``torch.compile``) and ONNX export need; the plain stream in
``rain.sampling.stream`` stays the readable reference, and this module computes exactly what its steady call
does, with the same random draws in the same order (the official TensorRT graph appends next call's noise at
the end of this one instead; golden case j checks the two agree once that shift is accounted for).
"""

import torch
from torch import nn

from ..models.embeddings import guidance_scale_embedding
from ..models.pose_guider import PoseGuider
from ..models.taesdv import TAESDV, MemBlock, TAESDVMemory
from ..models.video_unet import VideoUNet
from ..sampling.lcm import PerFrameLCM
from ..sampling.stream import group_timesteps


def zero_memories(taesdv: TAESDV, height: int, width: int, device, dtype) -> list[torch.Tensor]:
    """TAESDV memories for the start of a stream: zeros at each MemBlock's resolution."""
    memories, scale = [], 1
    for layer in taesdv.decoder:
        if isinstance(layer, nn.Upsample):
            scale *= 2
        if isinstance(layer, MemBlock):
            channels = layer.conv[0].in_channels // 2
            memories.append(torch.zeros(1, channels, height // 8 * scale, width // 8 * scale, device=device,
                                        dtype=dtype))
    return memories


class FusedStreamStep(nn.Module):
    """forward(latents [1,4,(K-1)G,h,w], pose_features [1,C0,(K-1)G,h,w], poses [1,3,G,H,W] in [0,1],
    new_latents [1,4,G,h,w], step_noise [1,4,KG,h,w], *memories) →
    (frames [G,3,H,W] in [0,1] — or the clean latents [G,4,h,w] without TAESDV —, next latents, next pose
    features, *next memories). The reference is whatever is attached to the UNet (``set_reference``)."""

    def __init__(self, unet: VideoUNet, pose_guider: PoseGuider, taesdv: TAESDV | None, context: torch.Tensor, *,
                 guidance_scale: float = 2.5, frames_per_group: int = 4, num_groups: int = 4):
        super().__init__()
        self.unet, self.pose_guider, self.taesdv = unet, pose_guider, taesdv
        self.frames_per_group = frames_per_group
        self.scheduler = PerFrameLCM(num_groups)
        levels = group_timesteps(num_groups, num_groups, self.scheduler.timesteps)
        self.register_buffer("timesteps", torch.tensor(levels).repeat_interleave(frames_per_group)[None],
                             persistent=False)
        dtype = unet.conv_in.weight.dtype
        self.register_buffer("guidance", guidance_scale_embedding(guidance_scale, dtype=dtype), persistent=False)
        self.register_buffer("context", context.to(dtype), persistent=False)

    @torch.no_grad()
    def forward(self, latents: torch.Tensor, pose_features: torch.Tensor, poses: torch.Tensor,
                new_latents: torch.Tensor, step_noise: torch.Tensor, *memories: torch.Tensor):
        group = self.frames_per_group
        sample = torch.cat([latents, new_latents.to(latents.dtype)], dim=2)
        pose_all = torch.cat([pose_features, self.pose_guider(poses)], dim=2)
        v = self.unet(sample, self.timesteps, self.context, pose_all, self.guidance)
        result, _ = self.scheduler.step(v, self.timesteps, sample, step_noise)
        result = result.to(sample.dtype)
        clean = result[0, :, :group].transpose(0, 1)
        next_window = (result[:, :, group:], pose_all[:, :, group:])
        if self.taesdv is None:
            return (clean, *next_window)
        memory = TAESDVMemory()
        memory.inputs = list(memories)
        frames = self.taesdv.decode(clean, memory).clamp(0, 1)
        return (frames, *next_window, *memory.inputs)


class EagerSteadyStep:
    """A ``FusedStreamStep`` run as is (PyTorch eager), adapted to the stream's ``SteadyStep`` protocol."""

    def __init__(self, step: FusedStreamStep, height: int, width: int):
        self.step = step
        self.decodes = step.taesdv is not None
        self.height, self.width = height, width

    def __call__(self, latents, pose_features, poses, new_latents, step_noise, memory):
        if self.decodes and memory is None:
            weight = self.step.unet.conv_in.weight
            memory = zero_memories(self.step.taesdv, self.height, self.width, weight.device, weight.dtype)
        outputs = self.step(latents, pose_features, poses, new_latents, step_noise, *(memory or []))
        out, next_latents, next_pose_features = outputs[:3]
        if self.decodes:
            return out.permute(0, 2, 3, 1).float().cpu(), next_latents, next_pose_features, list(outputs[3:])
        return out, next_latents, next_pose_features, memory
