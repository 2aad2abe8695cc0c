"""Estimate the GPU memory of each training stage at full size (512², the released widths) without a GPU.

Two parts, both computed here, neither measured on a GPU:

* static bytes: the stage's trainable / frozen parameter counts (the models built on the meta device, trainable sets
  from ``rain.training``) × bytes per parameter under bf16 mixed precision: trainable 4 (fp32 master) + 4 (grad) +
  8 (AdamW) or 2 (8-bit AdamW); frozen 2 (held in bf16); the distillation's EMA target 4 per trained parameter.
* activations: a forward pass of the stage's training computation on the meta device (shapes only, no memory),
  counting every tensor autograd saves for the backward pass (parameters excluded) at 2 bytes per element (bf16),
  with attention saving what flash / memory-efficient attention saves (q, k, v, output, log-sum-exp), not the
  attention matrix. With gradient checkpointing: what is saved outside the checkpointed layers + the inputs each
  checkpointed layer keeps + the largest single layer, recomputed during the backward pass.

    python bench/bench_training_memory.py            # 512², micro-batch 1
    python bench/bench_training_memory.py --size 768x512
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rain.models.image_encoder import build_image_encoder  # noqa: E402
from rain.models.motion_module import MotionModule  # noqa: E402
from rain.models.pose_guider import PoseGuider  # noqa: E402
from rain.models.reference_unet import ReferenceUNet  # noqa: E402
from rain.models.vae import build_vae  # noqa: E402
from rain.models.video_unet import UNetConfig, VideoUNet  # noqa: E402
from rain.training.model_sets import SD_DENOISER_EXTRA, is_motion_parameter, reference_dead_parameters  # noqa: E402

GIB = 2 ** 30
MANIFESTS = Path(__file__).resolve().parents[1] / "rain" / "manifests"
CHECKPOINTED = (ResnetBlock2D, BasicTransformerBlock, MotionModule)


class _FlashLikeAttention(torch.autograd.Function):
    """Attention that saves what fused kernels save (the meta device would otherwise take the math path)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = _ORIGINAL_SDPA(q, k, v)
        lse = torch.empty(q.shape[:-1], device=q.device, dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("shape-only model")


_ORIGINAL_SDPA = F.scaled_dot_product_attention


def _sdpa(q, k, v, *args, **kwargs):
    return _FlashLikeAttention.apply(q, k, v)


class SavedBytes:
    """Counts saved tensors, split by the outermost checkpointable layer that saved them."""

    def __init__(self, modules):
        self.outside = 0
        self.per_layer: list[int] = []
        self.layer_inputs = 0
        self._active = 0
        self._hooks = []
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, CHECKPOINTED):
                    self._hooks.append(layer.register_forward_pre_hook(self._enter))
                    self._hooks.append(layer.register_forward_hook(self._leave))

    def _enter(self, module, inputs):
        if self._active == 0:
            self.per_layer.append(0)
            self.layer_inputs += sum(_bytes(t) for t in inputs if isinstance(t, torch.Tensor))
        self._active += 1

    def _leave(self, module, inputs, output):
        self._active -= 1

    def pack(self, tensor):
        base = tensor._base if tensor._base is not None else tensor
        if not isinstance(base, torch.nn.Parameter):
            if self._active:
                self.per_layer[-1] += _bytes(tensor)
            else:
                self.outside += _bytes(tensor)
        return tensor

    @property
    def plain(self) -> int:
        return self.outside + sum(self.per_layer)

    @property
    def checkpointed(self) -> int:
        return self.outside + self.layer_inputs + max(self.per_layer, default=0)


def _bytes(tensor) -> int:
    """bf16 for activations; the fp32 statistics (softmax log-sum-exp, norm means) are negligible."""
    return tensor.numel() * (2 if tensor.is_floating_point() else tensor.element_size())


def _count(module, predicate=lambda n: True) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if predicate(n))


def build():
    with torch.device("meta"):
        config = UNetConfig()
        reference = ReferenceUNet.from_config_dataclass(config)
        denoiser = VideoUNet(config)
        guider = PoseGuider()
        clip = build_image_encoder(json.loads((MANIFESTS / "clip_image_encoder_config.json").read_text()))
        vae = build_vae(json.loads((MANIFESTS / "vae_sd-vae-ft-mse_config.json").read_text()))
    return reference, denoiser, guider, clip, vae


def activations(stage, reference, denoiser, guider, height, width, frames, trainable_reference):
    h, w = height // 8, width // 8
    meta = dict(device="meta")
    for unet in (reference, denoiser):
        unet.requires_grad_(True)
    denoiser.set_motion_modules_enabled(stage in ("stage2", "distill3d"))
    # A frozen reference UNet runs without gradients and stops inside a layer: count only what trains through.
    counter = SavedBytes([reference, denoiser, guider] if trainable_reference else [denoiser, guider])
    F.scaled_dot_product_attention = _sdpa
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            latent = torch.empty(1, 4, h, w, **meta)
            context = torch.empty(1, 1, 768, **meta)
            if trainable_reference:
                features = reference.reference_features_for_training(latent, context)
            else:
                with torch.no_grad():
                    features = reference.reference_features(latent, context)
            denoiser.set_reference(features)
            pose = guider(torch.empty(1, 3, frames, height, width, **meta))
            embedding = torch.empty(1, 512, **meta) if stage.startswith("distill") else None
            denoiser(torch.empty(1, 4, frames, h, w, **meta), torch.zeros(1, frames, dtype=torch.long, **meta),
                     context, pose, embedding)
    finally:
        F.scaled_dot_product_attention = _ORIGINAL_SDPA
        denoiser.set_reference(None)
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="512", help="N or WxH (default 512)")
    parser.add_argument("--debug", action="store_true", help="print the activation split per stage")
    args = parser.parse_args()
    if "x" in args.size:
        width, height = (int(v) for v in args.size.split("x"))
    else:
        width = height = int(args.size)
    reference, denoiser, guider, clip, vae = build()
    dead = reference_dead_parameters(reference)
    n = {"reference": _count(reference), "reference_live": _count(reference, lambda k: k not in dead),
         "spatial": _count(denoiser, lambda k: not is_motion_parameter(k) and k not in SD_DENOISER_EXTRA),
         "cond_proj": _count(denoiser, lambda k: k in SD_DENOISER_EXTRA),
         "motion": _count(denoiser, is_motion_parameter), "guider": _count(guider),
         "encoders": _count(clip) + _count(vae)}
    denoiser_all = n["spatial"] + n["cond_proj"] + n["motion"]
    stages = {
        # name: (trained, frozen held in bf16, EMA, frames, trains the reference UNet)
        "stage1": (n["reference_live"] + n["spatial"] + n["guider"],
                   n["reference"] - n["reference_live"] + n["motion"] + n["cond_proj"] + n["encoders"], 0, 1, True),
        "stage2": (n["motion"], n["reference"] + n["spatial"] + n["cond_proj"] + n["guider"] + n["encoders"], 0, 16,
                   False),
        "distill2d": (n["spatial"] + n["cond_proj"], n["motion"] + n["reference"] + n["guider"] + n["encoders"]
                      + denoiser_all, n["spatial"] + n["cond_proj"], 1, False),
        "distill3d (all)": (denoiser_all, n["reference"] + n["guider"] + n["encoders"] + denoiser_all, denoiser_all,
                            16, False),
        "distill3d (motion)": (n["motion"] + n["cond_proj"], n["spatial"] + n["reference"] + n["guider"]
                               + n["encoders"] + denoiser_all, n["motion"] + n["cond_proj"], 16, False),
    }
    print(f"parameters (M): " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in n.items()))
    print(f"{width}x{height}, bf16 mixed precision, per micro-batch sample (1 image pair, or 1 clip of 16 frames)")
    print(f"{'stage':20} {'trained M':>9} {'static AdamW':>12} {'static 8-bit':>12} {'act. plain':>10} "
          f"{'act. ckpt':>9}   GiB")
    for name, (trained, frozen, ema, frames, trains_reference) in stages.items():
        base = name.split(" ")[0]
        counter = activations(base, reference, denoiser, guider, height, width, frames, trains_reference)
        static_adamw = (trained * 16 + frozen * 2 + ema * 4) / GIB
        static_8bit = (trained * 10 + frozen * 2 + ema * 4) / GIB
        if "--debug" in sys.argv:
            print(counter.outside / GIB, sum(counter.per_layer) / GIB, counter.layer_inputs / GIB, len(counter.per_layer))
        print(f"{name:20} {trained / 1e6:9.1f} {static_adamw:12.1f} {static_8bit:12.1f} "
              f"{counter.plain / GIB:10.1f} {counter.checkpointed / GIB:9.2f}")
    print("static = weights + gradients + optimizer + EMA + frozen models (teacher, CLIP, VAE); add the activations "
          "× micro-batch, plus ~1-3 GiB of CUDA context, allocator slack and VAE-encoding workspace. "
          "Not measured on a GPU.")


if __name__ == "__main__":
    main()
