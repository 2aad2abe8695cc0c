"""The steady-state stream call as one static-shape module (spec §6.4, in the eager call's order).

Pose guider on the new group → UNet over the full window (the carried groups plus the new noise group) →
per-frame LCM step with supplied noise → TAESDV decode of the group that came out clean, with carried
memories → the window without that group. All shapes are fixed and all state is explicit tensors, which is what
graph capture (CUDA graphs, ``torch.compile``), ONNX export and TensorRT need; the plain stream in
``rain.sampling.stream`` stays the readable reference, and this module computes exactly what its steady call
does, with the same random draws in the same order (the official TensorRT graph appends next call's noise at
the end of this one instead; golden case j checks the two agree once that shift is accounted for).

Everything that depends only on the reference or the stream settings is an *input*, computed once outside
(``steady_constants``): the time embedding of the fixed per-frame timesteps with the guidance embedding, the
reference keys/values projected by each block, and each block's constant cross-attention output. So one
compiled graph or engine serves every reference and guidance scale; only the LCM factors of the fixed
timestep pattern (a function of the window settings) are baked in.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from ..models.embeddings import guidance_scale_embedding
from ..models.pose_guider import PoseGuider
from ..models.reference_attention import reference_blocks
from ..models.taesdv import TAESDV, MemBlock, TAESDVMemory
from ..models.video_unet import VideoUNet
from ..sampling.lcm import PerFrameLCM, StepCoefficients
from ..sampling.stream import group_timesteps

STATE_INPUTS = ("latents", "pose_features", "poses", "new_latents", "step_noise")
_COEFFICIENTS = tuple(item.name for item in fields(StepCoefficients))


def memory_shapes(taesdv: TAESDV, height: int, width: int) -> list[tuple[int, ...]]:
    """Shape of each TAESDV MemBlock's carried input at this frame size."""
    shapes, scale = [], 1
    for layer in taesdv.decoder:
        if isinstance(layer, nn.Upsample):
            scale *= 2
        if isinstance(layer, MemBlock):
            channels = layer.conv[0].in_channels // 2
            shapes.append((1, channels, height // 8 * scale, width // 8 * scale))
    return shapes


def zero_memories(taesdv: TAESDV, height: int, width: int, device, dtype) -> list[torch.Tensor]:
    """TAESDV memories for the start of a stream: zeros at each MemBlock's resolution."""
    return [torch.zeros(shape, device=device, dtype=dtype) for shape in memory_shapes(taesdv, height, width)]


def steady_timesteps(frames_per_group: int, num_groups: int) -> torch.Tensor:
    """The per-frame timesteps of a full window, oldest group first: [[249]*G, [499]*G, …] for K = 4 (§6.2)."""
    scheduler = PerFrameLCM(num_groups)
    levels = group_timesteps(num_groups, num_groups, scheduler.timesteps)
    return torch.tensor(levels).repeat_interleave(frames_per_group)[None]


@torch.no_grad()
def steady_constants(unet: VideoUNet, features: dict[str, torch.Tensor] | None, context: torch.Tensor, *,
                     guidance_scale: float, frames_per_group: int = 4, num_groups: int = 4) -> dict[str, torch.Tensor]:
    """The fused step's per-reference / per-stream inputs: ``temb`` and the attention constants."""
    weight = unet.conv_in.weight
    timesteps = steady_timesteps(frames_per_group, num_groups).to(weight.device)
    guidance = guidance_scale_embedding(guidance_scale, dtype=weight.dtype, device=weight.device)
    temb = unet.time_embeddings(timesteps, 1, timesteps.shape[1], guidance)
    return {"temb": temb, **unet.attention_inputs(features, context)}


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


class FusedStreamStep(nn.Module):
    """forward(latents [1,4,(K-1)G,h,w], pose_features [1,C0,(K-1)G,h,w], poses [1,3,G,H,W] in [0,1],
    new_latents [1,4,G,h,w], step_noise [1,4,KG,h,w] float32, temb [KG, 4·C0], *memories, *attention) →
    (frames [G,3,H,W] in [0,1] — or the clean latents [G,4,h,w] without TAESDV —, next latents,
    next pose features, *next memories). ``attention`` are the tensors named ``attention_names``, in that order
    (``steady_constants`` gives them)."""

    def __init__(self, unet: VideoUNet, pose_guider: PoseGuider, taesdv: TAESDV | None, attention_names, *,
                 frames_per_group: int = 4, num_groups: int = 4):
        super().__init__()
        self.unet, self.pose_guider, self.taesdv = unet, pose_guider, taesdv
        self.frames_per_group, self.num_groups = frames_per_group, num_groups
        # An inference step: exporters read this flag; the wrapped models keep their own mode (not recursed).
        self.training = False
        self.attention_names = tuple(attention_names)
        self.memory_count = sum(isinstance(layer, MemBlock) for layer in taesdv.decoder) if taesdv else 0
        lacking = [name for name in reference_blocks(unet) if f"{name}.cross" not in self.attention_names]
        if lacking:
            raise ValueError(f"the fused step takes every cross-attention output precomputed (a single-token "
                             f"context); none given for {lacking}")
        device = unet.conv_in.weight.device
        coefficients = PerFrameLCM(num_groups).coefficients(steady_timesteps(frames_per_group, num_groups), device)
        for name in _COEFFICIENTS:
            self.register_buffer(f"lcm_{name}", getattr(coefficients, name), persistent=False)

    # -- names and shapes of the graph's inputs and outputs ---------------------------------------------------
    @property
    def memory_names(self) -> list[str]:
        return [f"memory.{k}" for k in range(self.memory_count)]

    @property
    def input_names(self) -> list[str]:
        return [*STATE_INPUTS, "temb", *self.memory_names, *self.attention_names]

    @property
    def output_names(self) -> list[str]:
        return ["frames" if self.taesdv is not None else "clean", "next_latents", "next_pose_features",
                *(f"next_{name}" for name in self.memory_names)]

    @property
    def carried(self) -> dict[str, str]:
        """Output → the input it becomes on the next call."""
        return {"next_latents": "latents", "next_pose_features": "pose_features",
                **{f"next_{name}": name for name in self.memory_names}}

    def specs(self, height: int, width: int, constants: dict[str, torch.Tensor]
              ) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
        """(inputs, outputs) name → shape and dtype, for frames of ``height``×``width``."""
        dtype = self.unet.conv_in.weight.dtype
        group, window = self.frames_per_group, self.frames_per_group * self.num_groups
        held = window - group
        h, w = height // 8, width // 8
        channels = self.unet.config.in_channels
        pose_channels = self.pose_guider.config.conditioning_embedding_channels
        memories = memory_shapes(self.taesdv, height, width) if self.taesdv is not None else []
        inputs = {"latents": TensorSpec((1, channels, held, h, w), dtype),
                  "pose_features": TensorSpec((1, pose_channels, held, h, w), dtype),
                  "poses": TensorSpec((1, 3, group, height, width), dtype),
                  "new_latents": TensorSpec((1, channels, group, h, w), dtype),
                  "step_noise": TensorSpec((1, channels, window, h, w), torch.float32),
                  "temb": TensorSpec(tuple(constants["temb"].shape), dtype)}
        inputs.update({name: TensorSpec(shape, dtype) for name, shape in zip(self.memory_names, memories)})
        inputs.update({name: TensorSpec(tuple(constants[name].shape), dtype) for name in self.attention_names})
        first = (TensorSpec((group, 3, height, width), dtype) if self.taesdv is not None
                 else TensorSpec((group, channels, h, w), dtype))
        outputs = {self.output_names[0]: first, "next_latents": inputs["latents"],
                   "next_pose_features": inputs["pose_features"],
                   **{f"next_{name}": inputs[name] for name in self.memory_names}}
        return inputs, outputs

    def example_inputs(self, height: int, width: int, constants: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Inputs of the right shapes (random state, the real constants), e.g. for tracing or export."""
        inputs, _ = self.specs(height, width, constants)
        device = self.unet.conv_in.weight.device
        generator = torch.Generator().manual_seed(0)
        values = []
        for name, spec in inputs.items():
            if name in constants:
                values.append(constants[name].to(device, spec.dtype))
            elif name == "poses":
                values.append(torch.rand(spec.shape, generator=generator).to(device, spec.dtype))
            elif name.startswith("memory."):
                values.append(torch.zeros(spec.shape, device=device, dtype=spec.dtype))
            else:
                values.append(torch.randn(spec.shape, generator=generator).to(device, spec.dtype))
        return tuple(values)

    # -- the call -----------------------------------------------------------------------------------------------
    def coefficients(self) -> StepCoefficients:
        return StepCoefficients(**{name: getattr(self, f"lcm_{name}") for name in _COEFFICIENTS})

    def forward(self, latents: torch.Tensor, pose_features: torch.Tensor, poses: torch.Tensor,
                new_latents: torch.Tensor, step_noise: torch.Tensor, temb: torch.Tensor, *rest: torch.Tensor):
        memories = rest[:self.memory_count]
        attention = dict(zip(self.attention_names, rest[self.memory_count:]))
        group = self.frames_per_group
        sample = torch.cat([latents, new_latents.to(latents.dtype)], dim=2)
        pose_all = torch.cat([pose_features, self.pose_guider(poses)], dim=2)
        v = self.unet(sample, None, None, pose_all, temb=temb, attention=attention)
        result, _ = self.coefficients().apply(v, sample, step_noise)
        result = result.to(sample.dtype)
        clean = result[0, :, :group].transpose(0, 1)
        next_window = (result[:, :, group:], pose_all[:, :, group:])
        if self.taesdv is None:
            return (clean, *next_window)
        memory = TAESDVMemory()
        memory.inputs = list(memories)
        frames = self.taesdv.decode(clean, memory).clamp(0, 1)
        return (frames, *next_window, *memory.inputs)
