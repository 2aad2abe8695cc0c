"""The steady-state stream call as one static-shape module (the official TensorRT path, spec §6.4).

Pose guider on the new group → UNet over the full window → LCM step with supplied noise → TAESDV
decode of the finished group with carried memories → shifted window. All shapes are fixed and all
state is explicit tensors, which is what graph capture (CUDA graphs, ``torch.compile``) and ONNX
export need; the plain stream in ``rain.sampling.stream`` stays the readable reference.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ..models.embeddings import guidance_scale_embedding
from ..models.pose_guider import PoseGuider
from ..models.taesdv import TAESDV, MemBlock, TAESDVMemory
from ..models.video_unet import VideoUNet
from ..sampling.lcm import PerFrameLCM
from ..sampling.stream import group_timesteps


@dataclass
class FusedState:
    """What one call hands to the next: the window, the older frames' pose features, TAESDV memories."""
    sample: torch.Tensor          # [1, 4, K·G, h, w]
    pose_features: torch.Tensor   # [1, C0, (K-1)·G, h, w]
    memories: list[torch.Tensor]  # 10 × [1, 64, ...]


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
    def __init__(self, unet: VideoUNet, pose_guider: PoseGuider, taesdv: TAESDV, *, guidance_scale: float = 2.5,
                 frames_per_group: int = 4, num_groups: int = 4):
        super().__init__()
        self.unet, self.pose_guider, self.taesdv = unet, pose_guider, taesdv
        self.frames_per_group = frames_per_group
        self.scheduler = PerFrameLCM(num_groups)
        levels = group_timesteps(num_groups, num_groups, self.scheduler.timesteps)
        self.register_buffer("timesteps", torch.tensor(levels).repeat_interleave(frames_per_group)[None],
                             persistent=False)
        dtype = unet.conv_in.weight.dtype
        self.register_buffer("guidance", guidance_scale_embedding(guidance_scale, dtype=dtype), persistent=False)

    @torch.no_grad()
    def forward(self, state: FusedState, pose: torch.Tensor, context: torch.Tensor, add_noise: torch.Tensor,
                new_noise: torch.Tensor) -> tuple[torch.Tensor, FusedState]:
        """pose [1,3,G,H,W] in [0,1] → (frames [G,3,H,W] in [0,1], next state)."""
        group = self.frames_per_group
        new_features = self.pose_guider(pose)
        pose_all = torch.cat([state.pose_features, new_features], dim=2)
        v = self.unet(state.sample, self.timesteps, context, pose_all, self.guidance)
        result, _ = self.scheduler.step(v, self.timesteps, state.sample, add_noise)
        result = result.to(state.sample.dtype)
        memory = TAESDVMemory()
        memory.inputs = state.memories
        frames = self.taesdv.decode(result[0, :, :group].transpose(0, 1), memory).clamp(0, 1)
        next_state = FusedState(torch.cat([result[:, :, group:], new_noise.to(result.dtype)], dim=2),
                                pose_all[:, :, group:], memory.inputs)
        return frames, next_state
