"""Pose guider: a small per-frame conv net that turns a pose image into a feature map the size of
the denoising UNet's ``conv_in`` output, to which it is added (spec §3.5)."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class PoseGuiderConfig:
    conditioning_embedding_channels: int = 320
    conditioning_channels: int = 3
    block_out_channels: tuple[int, ...] = (16, 32, 96, 256)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> "PoseGuiderConfig":
        """Read the widths off a checkpoint, so reduced and full-size files load through one path."""
        blocks = []
        index = 1
        while f"blocks.{index}.weight" in state_dict:
            blocks.append(state_dict[f"blocks.{index}.weight"].shape[0])
            index += 2
        first = state_dict["conv_in.weight"].shape[0]
        return cls(conditioning_embedding_channels=state_dict["conv_out.weight"].shape[0],
                   conditioning_channels=state_dict["conv_in.weight"].shape[1],
                   block_out_channels=(first, *blocks))


class PoseGuider(nn.Module):
    """conv_in → pairs of (same-width conv, stride-2 widening conv) → conv_out; SiLU between convs."""

    def __init__(self, config: PoseGuiderConfig = PoseGuiderConfig()):
        super().__init__()
        self.config = config
        widths = config.block_out_channels
        self.conv_in = nn.Conv2d(config.conditioning_channels, widths[0], 3, padding=1)
        blocks = []
        for narrow, wide in zip(widths[:-1], widths[1:]):
            blocks.append(nn.Conv2d(narrow, narrow, 3, padding=1))
            blocks.append(nn.Conv2d(narrow, wide, 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(widths[-1], config.conditioning_embedding_channels, 3, padding=1)

    def forward(self, pose_images: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] in [0, 1] → [B, C, F, H/8, W/8]; frames are independent."""
        batch, _, frames = pose_images.shape[:3]
        x = pose_images.transpose(1, 2).flatten(0, 1)
        x = F.silu(self.conv_in(x))
        for block in self.blocks:
            x = F.silu(block(x))
        x = self.conv_out(x)
        return x.unflatten(0, (batch, frames)).transpose(1, 2)
