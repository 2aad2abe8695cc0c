"""Reference ("mutual self-") attention, spec §4.

The reference UNet runs once per reference image; the input of self-attention (the ``norm1`` output)
of each of its 16 transformer blocks is cached. Each matching block of the denoising UNet then
attends over its own tokens followed by the cached reference tokens, with its own projections:
``softmax(Q·[K_own; K_ref]ᵀ)·[V_own; V_ref]``. Because ``to_k``/``to_v`` act row-wise,
``to_k(cat(n, r)) == cat(to_k(n), to_k(r))``, so the reference keys and values are projected once per
reference instead of once per frame per call (15% of a UNet call at 512²).

Cross-attention (``attn2``) has a single context token (the CLIP image embedding), so its softmax is
identically 1 and its output is ``to_out(to_v(context))`` for every query token (spec §3.1): a constant
per layer and reference. ``attention_inputs`` computes those constants and the projected reference
keys/values once; a UNet forward given them (``attention=``) reads them instead of recomputing, and
the same tensors are the inputs of the compiled and exported graphs (``rain.accel``), so a new
reference needs no rebuild. Without them every attention runs in full, as trained.
"""

import re

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.nn import functional as F

_BLOCK_PATTERN = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.transformer_blocks\.0$|"
                            r"^mid_block\.attentions\.0\.transformer_blocks\.0$")


def feature_name(block_path: str) -> str | None:
    """Official feature name for a transformer block path (``d00`` … ``m`` … ``u32``), else None."""
    match = _BLOCK_PATTERN.match(block_path)
    if match is None:
        return None
    if block_path.startswith("mid_block"):
        return "m"
    kind, level, index = match.groups()
    return f"{kind[0]}{level}{index}"


def reference_blocks(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The spatial transformer blocks of a UNet keyed by official feature name, in forward order."""
    blocks = {}
    for path, module in unet.named_modules():
        name = feature_name(path)
        if name is not None:
            blocks[name] = module
    order = [n for n in FEATURE_ORDER if n in blocks]
    return {n: blocks[n] for n in order}


def feature_shapes(unet: torch.nn.Module, height: int, width: int, references: int = 1) -> dict[str, tuple]:
    """Shape of each cached reference feature for frames of ``height``×``width`` ([1, tokens, channels])."""
    levels = len(unet.config.block_out_channels)
    shapes = {}
    for name, block in reference_blocks(unet).items():
        level = levels - 1 if name == "m" else int(name[1]) if name[0] == "d" else levels - 1 - int(name[1])
        tokens = (height // 8 >> level) * (width // 8 >> level) * references
        shapes[name] = (1, tokens, block.norm1.normalized_shape[0])
    return shapes


FEATURE_ORDER = ("d00", "d01", "d10", "d11", "d20", "d21", "m",
                 "u10", "u11", "u12", "u20", "u21", "u22", "u30", "u31", "u32")


def _for_every_frame(reference: torch.Tensor, batch_frames: int) -> torch.Tensor:
    """[1, N, C] shared by every frame, or [B, N, C] (one per clip) repeated over each clip's frames."""
    clips = reference.shape[0]
    if clips == 1:
        return reference.expand(batch_frames, -1, -1)
    if batch_frames % clips:
        raise ValueError(f"{clips} references for {batch_frames} frames: give one reference per clip")
    return reference.repeat_interleave(batch_frames // clips, dim=0)


class ReferenceAttnProcessor:
    """Self-attention processor for the denoiser's ``attn1`` that appends reference keys/values.

    The keys/values come from ``rain_attention`` (``<name>.key`` / ``<name>.value``, see
    ``attention_inputs``) when the forward is given them, else from ``set_reference`` (projected on first
    use and kept). With neither it is plain self-attention, so the denoiser also runs unconditioned.
    """

    def __init__(self, name: str = ""):
        self.name = name
        self.reference: torch.Tensor | None = None
        self._projected: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_reference(self, tokens: torch.Tensor | None) -> None:
        """tokens [1, N, C] (several references: concatenated along N), or [B, N, C] for a batch of B clips
        whose frames are folded into the batch clip-major (training). Replaces any previous one."""
        self.reference = tokens
        self._projected = None

    def _reference_kv(self, attn, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled():
            # Training: the projections change every step and gradients flow through them, so nothing is cached.
            ref = self.reference.to(device=attn.to_k.weight.device, dtype=dtype)
            return attn.to_k(ref), attn.to_v(ref)
        if self._projected is None or self._projected[0].dtype != dtype:
            self._projected = project_reference(attn, self.reference, dtype)
        return self._projected

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, rain_attention: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        given = rain_attention is not None and f"{self.name}.key" in rain_attention
        if given or self.reference is not None:
            if given:
                ref_key, ref_value = rain_attention[f"{self.name}.key"], rain_attention[f"{self.name}.value"]
            else:
                ref_key, ref_value = self._reference_kv(attn, key.dtype)
            key = torch.cat([key, _for_every_frame(ref_key.to(key.dtype), batch)], dim=1)
            value = torch.cat([value, _for_every_frame(ref_value.to(value.dtype), batch)], dim=1)

        heads = attn.heads

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (heads, x.shape[-1] // heads)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split_heads(query), split_heads(key), split_heads(value))
        out = out.transpose(1, 2).flatten(2).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class CrossAttnProcessor:
    """The denoiser's ``attn2``: full cross-attention (diffusers' SDPA processor, gradients and all), unless
    the forward is given this layer's precomputed output ``<name>.cross`` — then that constant, broadcast
    over every query token, and no query projection, softmax or output projection per token."""

    def __init__(self, name: str = ""):
        self.name = name
        self.full = AttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, rain_attention: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        constant = None if rain_attention is None else rain_attention.get(f"{self.name}.cross")
        if constant is None:
            return self.full(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        batch = hidden_states.shape[0]
        if constant.shape[0] not in (1, batch):  # one constant per video of the batch → one per frame
            constant = constant.repeat_interleave(batch // constant.shape[0], dim=0)
        return constant.to(hidden_states.dtype).expand(batch, hidden_states.shape[1], -1)


def project_reference(attn, tokens: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference tokens through a block's own key and value projections."""
    tokens = tokens.to(device=attn.to_k.weight.device, dtype=dtype)
    return attn.to_k(tokens), attn.to_v(tokens)


def cross_attention_constant(attn, context: torch.Tensor) -> torch.Tensor | None:
    """``attn2``'s output for a single-token context [B, 1, D] — the same for every query — as [B, 1, C];
    None when the shortcut would not be exact (several tokens, or a normalisation/residual in the layer)."""
    plain = (attn.spatial_norm is None and attn.group_norm is None and not attn.norm_cross
             and not attn.residual_connection and attn.rescale_output_factor == 1.0)
    if context.ndim != 3 or context.shape[1] != 1 or not plain:
        return None
    weight = attn.to_v.weight
    # softmax over one key is exactly 1, so attention returns that key's value for every query.
    value = attn.to_v(context.to(device=weight.device, dtype=weight.dtype))
    return attn.to_out[1](attn.to_out[0](value))


@torch.no_grad()
def attention_inputs(unet: torch.nn.Module, features: dict[str, torch.Tensor] | None,
                     context: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Everything attention needs that depends only on the reference, per block in forward order:
    ``<name>.key`` / ``<name>.value`` (the reference tokens projected, [1, N, C]) when ``features`` are
    given, and ``<name>.cross`` (the cross-attention output, [B, 1, C]) when ``context`` has one token."""
    dtype = next(unet.parameters()).dtype
    inputs: dict[str, torch.Tensor] = {}
    for name, block in reference_blocks(unet).items():
        if features is not None:
            if name not in features:
                raise ValueError(f"reference features are missing {name}")
            inputs[f"{name}.key"], inputs[f"{name}.value"] = project_reference(block.attn1, features[name], dtype)
        if context is not None and block.attn2 is not None:
            constant = cross_attention_constant(block.attn2, context)
            if constant is not None:
                inputs[f"{name}.cross"] = constant
    return inputs


class ReferenceRecorder:
    """Forward hooks that record the ``norm1`` output of each reference-UNet transformer block."""

    class _Done(Exception):
        """Raised after the last feature is recorded: the rest of the reference UNet is dead compute."""

    def __init__(self, unet: torch.nn.Module, stop: bool = True):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        blocks = reference_blocks(unet)
        last = next(reversed(blocks))
        for name, block in blocks.items():
            self._handles.append(block.norm1.register_forward_hook(self._recorder(name, stop=stop and name == last)))

    def _recorder(self, name: str, stop: bool):
        def hook(module, inputs, output):
            self.features[name] = output
            if stop:
                raise ReferenceRecorder._Done()
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
