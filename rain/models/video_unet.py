"""The denoising video UNet: Stable Diffusion 1.5 applied per frame, plus motion modules, per-frame
timesteps, reference attention and the pose-feature input (spec §3.4).

Frames travel folded into the batch, ``[(B·F), C, h, w]``: every 2-D op (convs, GroupNorms, spatial
transformers) is then exactly the official "inflated" per-frame op, and only the motion modules
unfold the frame axis. Submodule names follow the released ``motion_unet.pth`` so it loads as is.
"""

from dataclasses import dataclass

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from .motion_module import MotionModule
from .reference_attention import CrossAttnProcessor, ReferenceAttnProcessor, attention_inputs, reference_blocks


@dataclass(frozen=True)
class UNetConfig:
    """The shape of an SD1.5-layout UNet (both RAIN UNets share it); defaults are the released sizes."""
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_heads: int = 8
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    in_channels: int = 4
    out_channels: int = 4
    cond_proj_dim: int | None = 512
    motion_heads: int = 8
    motion_max_len: int = 32

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> "UNetConfig":
        """Read the widths off a checkpoint (reduced test models and released files share one path)."""
        widths = []
        while f"down_blocks.{len(widths)}.resnets.0.conv1.weight" in state_dict:
            key = f"down_blocks.{len(widths)}.resnets.0.conv1.weight"
            shape = tuple(state_dict[key].shape)
            # Checked here, where the key is known: GroupNorm would otherwise fail deep inside the build.
            if not shape or shape[0] <= 0 or shape[0] % cls.norm_num_groups:
                raise ValueError(f"{key} has shape {list(shape)}: its first dimension is a block width, which "
                                 f"must be a positive multiple of the {cls.norm_num_groups} GroupNorm groups "
                                 f"(the released widths are {', '.join(map(str, cls.block_out_channels))})")
            widths.append(shape[0])
        if not widths:
            raise KeyError("down_blocks.0.resnets.0.conv1.weight")
        # Only sizes are read here, never whether a part exists: a file that lacks the guidance
        # projection or a position table must fail the strict load, not build a smaller model.
        cond = state_dict.get("time_embedding.cond_proj.weight")
        pe = state_dict.get("down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0."
                            "attention_blocks.0.pos_encoder.pe")
        for key, axis in (("conv_in.weight", 1), ("conv_out.weight", 0)):
            shape = tuple(state_dict[key].shape) if key in state_dict else None
            if shape is not None and (len(shape) <= axis or shape[axis] != cls.in_channels):
                raise ValueError(f"{key} has shape {list(shape)}: RAIN's UNets read and write the "
                                 f"{cls.in_channels} SD latent channels, so this is another kind of UNet (an "
                                 f"inpainting UNet has 9 input channels) or a damaged file")
        cross = state_dict["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape[1]
        return cls(block_out_channels=tuple(widths), cross_attention_dim=cross,
                   in_channels=state_dict["conv_in.weight"].shape[1],
                   cond_proj_dim=512 if cond is None else cond.shape[1],
                   motion_max_len=32 if pe is None else pe.shape[1])


def _resnet(config: UNetConfig, in_channels: int, out_channels: int) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=config.time_embed_dim,
                         eps=config.norm_eps, groups=config.norm_num_groups, non_linearity="silu")


def _spatial_transformer(config: UNetConfig, channels: int) -> Transformer2DModel:
    return Transformer2DModel(config.attention_heads, channels // config.attention_heads, in_channels=channels,
                              num_layers=1, cross_attention_dim=config.cross_attention_dim,
                              norm_num_groups=config.norm_num_groups)


def _motion(config: UNetConfig, channels: int) -> MotionModule:
    return MotionModule(channels, heads=config.motion_heads, max_len=config.motion_max_len)


def _run(layer: nn.Module, *args):
    """Call a resnet or motion module, recomputing its activations in the backward pass when training
    with gradient checkpointing (``VideoUNet.enable_gradient_checkpointing``)."""
    if getattr(layer, "gradient_checkpointing", False) and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


class VideoDownBlock(nn.Module):
    def __init__(self, config: UNetConfig, in_channels: int, out_channels: int, with_attention: bool,
                 add_downsample: bool):
        super().__init__()
        layers = config.layers_per_block
        if with_attention:
            self.attentions = nn.ModuleList([_spatial_transformer(config, out_channels) for _ in range(layers)])
        self.resnets = nn.ModuleList(
            [_resnet(config, in_channels if i == 0 else out_channels, out_channels) for i in range(layers)])
        self.motion_modules = nn.ModuleList([_motion(config, out_channels) for _ in range(layers)])
        if add_downsample:
            self.downsamplers = nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=1, name="op")])
        self.with_attention = with_attention
        self.add_downsample = add_downsample

    def forward(self, hidden, temb, context, frames, attention_kwargs=None):
        skips = []
        for i, (resnet, motion) in enumerate(zip(self.resnets, self.motion_modules)):
            hidden = _run(resnet, hidden, temb)
            if self.with_attention:
                hidden = self.attentions[i](hidden, encoder_hidden_states=context,
                                            cross_attention_kwargs=attention_kwargs, return_dict=False)[0]
            hidden = _run(motion, hidden, frames)
            skips.append(hidden)
        if self.add_downsample:
            hidden = self.downsamplers[0](hidden)
            skips.append(hidden)
        return hidden, skips


class VideoUpBlock(nn.Module):
    def __init__(self, config: UNetConfig, in_channels: int, out_channels: int, prev_channels: int,
                 with_attention: bool, add_upsample: bool):
        super().__init__()
        layers = config.layers_per_block + 1
        if with_attention:
            self.attentions = nn.ModuleList([_spatial_transformer(config, out_channels) for _ in range(layers)])
        resnets = []
        for i in range(layers):
            skip_channels = in_channels if i == layers - 1 else out_channels
            resnet_in = prev_channels if i == 0 else out_channels
            resnets.append(_resnet(config, resnet_in + skip_channels, out_channels))
        self.resnets = nn.ModuleList(resnets)
        self.motion_modules = nn.ModuleList([_motion(config, out_channels) for _ in range(layers)])
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
        self.with_attention = with_attention
        self.add_upsample = add_upsample

    def forward(self, hidden, skips, temb, context, frames, upsample_size=None, attention_kwargs=None):
        for i, (resnet, motion) in enumerate(zip(self.resnets, self.motion_modules)):
            hidden = torch.cat([hidden, skips.pop()], dim=1)
            hidden = _run(resnet, hidden, temb)
            if self.with_attention:
                hidden = self.attentions[i](hidden, encoder_hidden_states=context,
                                            cross_attention_kwargs=attention_kwargs, return_dict=False)[0]
            hidden = _run(motion, hidden, frames)
        if self.add_upsample:
            hidden = self.upsamplers[0](hidden, upsample_size)
        return hidden


class VideoMidBlock(nn.Module):
    def __init__(self, config: UNetConfig, channels: int):
        super().__init__()
        self.attentions = nn.ModuleList([_spatial_transformer(config, channels)])
        self.resnets = nn.ModuleList([_resnet(config, channels, channels), _resnet(config, channels, channels)])
        self.motion_modules = nn.ModuleList([_motion(config, channels)])

    def forward(self, hidden, temb, context, frames, attention_kwargs=None):
        hidden = _run(self.resnets[0], hidden, temb)
        hidden = self.attentions[0](hidden, encoder_hidden_states=context, cross_attention_kwargs=attention_kwargs,
                                    return_dict=False)[0]
        hidden = _run(self.motion_modules[0], hidden, frames)
        return _run(self.resnets[1], hidden, temb)


class VideoUNet(nn.Module):
    """forward(sample [B,4,F,h,w], timesteps [B,F] | [B] | scalar, context [B,1,768],
    pose_features [B,C0,F,h,w] | None, guidance_embedding [1,512] | [B,512] | None) → v-prediction [B,4,F,h,w].

    For inference the per-stream constants can be given precomputed: ``temb`` (``time_embeddings`` of the
    timesteps and guidance, [(B·F), 4·C0]) and ``attention`` (``attention_inputs``: projected reference
    keys/values and constant cross-attention outputs); then ``timesteps``, ``guidance_embedding`` and, when
    every cross-attention constant is given, ``context`` are not read."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        widths = config.block_out_channels
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(widths[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(widths[0], config.time_embed_dim, cond_proj_dim=config.cond_proj_dim)

        levels = len(widths)
        self.down_blocks = nn.ModuleList()
        for level in range(levels):
            self.down_blocks.append(VideoDownBlock(
                config, widths[max(level - 1, 0)], widths[level], with_attention=level < levels - 1,
                add_downsample=level < levels - 1))
        self.up_blocks = nn.ModuleList()
        reversed_widths = list(reversed(widths))
        for level in range(levels):
            out_channels = reversed_widths[level]
            in_channels = reversed_widths[min(level + 1, levels - 1)]
            prev_channels = reversed_widths[max(level - 1, 0)]
            self.up_blocks.append(VideoUpBlock(
                config, in_channels, out_channels, prev_channels, with_attention=level > 0,
                add_upsample=level < levels - 1))
        self.mid_block = VideoMidBlock(config, widths[-1])
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, widths[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(widths[0], config.out_channels, kernel_size=3, padding=1)

        self.reference_processors: dict[str, ReferenceAttnProcessor] = {}
        for name, block in reference_blocks(self).items():
            processor = ReferenceAttnProcessor(name)
            block.attn1.set_processor(processor)
            self.reference_processors[name] = processor
            # Full cross-attention unless a forward passes this layer's precomputed output.
            block.attn2.set_processor(CrossAttnProcessor(name))

    # -- reference and temporal controls --------------------------------------------------------------
    def set_reference(self, features: dict[str, torch.Tensor] | None) -> None:
        """Attend to these cached reference features (``d00`` … ``u32``); None removes the reference."""
        if features is not None:
            missing = [n for n in self.reference_processors if n not in features]
            if missing:
                raise ValueError(f"reference features are missing {missing}")
        for name, processor in self.reference_processors.items():
            processor.set_reference(None if features is None else features[name])

    def set_temporal_strength(self, strength: float) -> None:
        if getattr(self, "_temporal_strength", None) == float(strength):
            return  # a stream sets it before every call: skip the walk over every module
        self._temporal_strength = float(strength)
        for module in self.modules():
            if isinstance(module, MotionModule):
                module.strength = float(strength)

    # -- training controls --------------------------------------------------------------------------------
    def set_motion_modules_enabled(self, enabled: bool) -> None:
        """False: every motion module is the identity (image training and 2-D distillation)."""
        for module in self.modules():
            if isinstance(module, MotionModule):
                module.enabled = bool(enabled)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute activations of every resnet, spatial transformer block and motion module in the backward
        pass instead of keeping them (training only; inference runs without gradients and is unaffected)."""
        for module in self.modules():
            if isinstance(module, Transformer2DModel):
                if enabled:
                    module.enable_gradient_checkpointing()
                else:
                    module.disable_gradient_checkpointing()
            elif isinstance(module, (ResnetBlock2D, MotionModule)):
                module.gradient_checkpointing = bool(enabled)

    # -- forward ----------------------------------------------------------------------------------------
    def time_embeddings(self, timesteps: torch.Tensor, batch: int, frames: int,
                        guidance_embedding: torch.Tensor | None) -> torch.Tensor:
        """One embedding per frame, [(B·F), 4·C0]."""
        timesteps = torch.as_tensor(timesteps, device=self.conv_in.weight.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        if timesteps.ndim == 1:
            timesteps = timesteps[:, None].expand(batch, frames)
        sinusoid = self.time_proj(timesteps.reshape(-1)).to(self.conv_in.weight.dtype)
        condition = None
        if guidance_embedding is not None and self.time_embedding.cond_proj is not None:
            condition = guidance_embedding.to(sinusoid.dtype)
            if condition.shape[0] == batch > 1:
                # One guidance scale per clip (distillation samples w per clip): repeat it over the clip's frames.
                condition = condition.repeat_interleave(frames, dim=0)
            condition = condition.expand(sinusoid.shape[0], -1)
        return self.time_embedding(sinusoid, condition)

    def attention_inputs(self, features: dict[str, torch.Tensor] | None,
                         context: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The reference-only attention constants for ``forward(attention=...)`` (see ``reference_attention``)."""
        return attention_inputs(self, features, context)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor | None, context: torch.Tensor | None,
                pose_features: torch.Tensor | None = None,
                guidance_embedding: torch.Tensor | None = None, *, temb: torch.Tensor | None = None,
                attention: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        batch, _, frames, height, width = sample.shape
        if temb is None:
            temb = self.time_embeddings(timesteps, batch, frames, guidance_embedding)
        if context is not None:
            context = context.repeat_interleave(frames, dim=0)
        attention_kwargs = None if attention is None else {"rain_attention": attention}

        hidden = self.conv_in(sample.transpose(1, 2).flatten(0, 1))
        if pose_features is not None:
            hidden = hidden + pose_features.transpose(1, 2).flatten(0, 1)

        # SD's rule: when a side is not divisible by 2**levels, upsampling must restore the skip sizes.
        levels = len(self.up_blocks) - 1
        restore_sizes = height % (2 ** levels) != 0 or width % (2 ** levels) != 0

        skips = [hidden]
        for block in self.down_blocks:
            hidden, block_skips = block(hidden, temb, context, frames, attention_kwargs)
            skips.extend(block_skips)
        hidden = self.mid_block(hidden, temb, context, frames, attention_kwargs)
        for index, block in enumerate(self.up_blocks):
            layers = len(block.resnets)
            block_skips, skips = skips[-layers:], skips[:-layers]
            upsample_size = skips[-1].shape[2:] if restore_sizes and skips else None
            hidden = block(hidden, block_skips, temb, context, frames, upsample_size, attention_kwargs)

        hidden = self.conv_out(F.silu(self.conv_norm_out(hidden)))
        return hidden.unflatten(0, (batch, frames)).transpose(1, 2)
