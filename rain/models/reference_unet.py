"""The reference UNet: diffusers' SD1.5 ``UNet2DConditionModel`` without its output head (spec §3.3).

It runs once per reference image at timestep 0; what it is for is the 16 ``norm1`` outputs its
transformer blocks produce, which the denoiser attends to (see ``reference_attention``).
"""

import torch
from diffusers import UNet2DConditionModel

from .reference_attention import ReferenceRecorder
from .video_unet import UNetConfig


class ReferenceUNet(UNet2DConditionModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # The released reference_unet.pth has no output head; up_blocks.3 stays (it yields u30-u32).
        self.conv_norm_out = None
        self.conv_act = None
        self.conv_out = None

    @classmethod
    def from_config_dataclass(cls, config: UNetConfig) -> "ReferenceUNet":
        return cls(sample_size=64, in_channels=config.in_channels, out_channels=config.out_channels,
                   block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
                   attention_head_dim=config.attention_heads, cross_attention_dim=config.cross_attention_dim,
                   norm_num_groups=config.norm_num_groups, norm_eps=config.norm_eps, flip_sin_to_cos=True,
                   freq_shift=0, down_block_types=("CrossAttnDownBlock2D",) * (len(config.block_out_channels) - 1)
                   + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(config.block_out_channels) - 1))

    @torch.no_grad()
    def reference_features(self, latent: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """latent [B,4,h,w] (VAE mean × 0.18215), context [B,1,768] → {``d00`` … ``u32``: [B, h_l·w_l, C_l]}."""
        return self._record(latent, context, stop_in_block=True)

    def reference_features_for_training(self, latent: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """``reference_features`` with gradients, for training the reference UNet.

        The forward stops after the last up block instead of inside it: the early stop above raises from a
        transformer block, which gradient checkpointing would run again during the backward pass.
        """
        return self._record(latent, context, stop_in_block=False)

    def _record(self, latent, context, *, stop_in_block: bool) -> dict[str, torch.Tensor]:
        recorder = ReferenceRecorder(self, stop=stop_in_block)
        stop = None if stop_in_block else self.up_blocks[-1].register_forward_hook(_stop_forward)
        try:
            timestep = torch.zeros(1, device=latent.device, dtype=latent.dtype)
            super().forward(latent, timestep, encoder_hidden_states=context)
        except ReferenceRecorder._Done:
            pass
        finally:
            if stop is not None:
                stop.remove()
            recorder.remove()
        return recorder.features


def _stop_forward(module, inputs, output):
    raise ReferenceRecorder._Done()
