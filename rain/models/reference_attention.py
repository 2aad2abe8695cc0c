"""Reference ("mutual self-") attention, spec §4.

The reference UNet runs once per reference image; the input of self-attention (the ``norm1`` output)
of each of its 16 transformer blocks is cached. Each matching block of the denoising UNet then
attends over its own tokens followed by the cached reference tokens, with its own projections:
``softmax(Q·[K_own; K_ref]ᵀ)·[V_own; V_ref]``. Because ``to_k``/``to_v`` act row-wise,
``to_k(cat(n, r)) == cat(to_k(n), to_k(r))``, so the reference keys and values are projected once per
reference instead of once per frame per call (15% of a UNet call at 512²).
"""

import re

import torch
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

    With no reference set it is plain self-attention, so the denoiser also runs unconditioned.
    """

    def __init__(self):
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
            ref = self.reference.to(device=attn.to_k.weight.device, dtype=dtype)
            self._projected = (attn.to_k(ref), attn.to_v(ref))
        return self._projected

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs) -> torch.Tensor:
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        if self.reference is not None:
            ref_key, ref_value = self._reference_kv(attn, key.dtype)
            key = torch.cat([key, _for_every_frame(ref_key, batch)], dim=1)
            value = torch.cat([value, _for_every_frame(ref_value, batch)], dim=1)

        heads = attn.heads

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (heads, x.shape[-1] // heads)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split_heads(query), split_heads(key), split_heads(value))
        out = out.transpose(1, 2).flatten(2).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


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
