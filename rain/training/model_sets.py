"""The models a stage starts from, which of their parameters train, and the official-layout set a stage writes.

A *model set* is the three RAIN files (reference_unet, motion_unet, pose_guider). A stage starts from one:

* a RAIN set folder (fine-tuning the released face model, or continuing from the previous stage's output), or
* for stage 1, the sd-image-variations diffusers ``unet/`` folder: its SD1.5 weights fill both UNets (the
  reference UNet drops the output head), the motion modules are new (AnimateDiff's zero-initialised output
  projection, so the video UNet starts as the image UNet) and the guidance projection ``cond_proj`` starts at zero
  (LCM practice: the distilled student starts equal to its teacher).

An AnimateDiff motion-module file (e.g. ``mm_sd_v15_v2``) can replace the motion modules in either case.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import loading, weights
from ..models.motion_module import MotionModule
from ..models.pose_guider import PoseGuider, PoseGuiderConfig
from ..models.reference_attention import reference_blocks
from ..models.reference_unet import ReferenceUNet
from ..models.video_unet import UNetConfig, VideoUNet

SET_FILES = ("reference_unet", "motion_unet", "pose_guider")
SD_DENOISER_EXTRA = ("time_embedding.cond_proj.weight",)


@dataclass
class ModelSet:
    reference_unet: ReferenceUNet
    denoiser: VideoUNet
    pose_guider: PoseGuider
    # The file each model's weights came from: frozen parameters are exported from it unchanged (bit for bit,
    # whatever precision they were held in while training). None: the model was assembled in memory.
    sources: dict[str, Path | None] = field(default_factory=dict)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"reference_unet": self.reference_unet, "motion_unet": self.denoiser, "pose_guider": self.pose_guider}


def load_rain_set(folder: str | os.PathLike) -> ModelSet:
    """The three RAIN models of ``folder`` in float32 on the CPU, loaded strictly, frozen."""
    paths = weights.require_weights(folder, SET_FILES)
    reference = loading.reference_unet_from_state_dict(weights.load_state_dict(paths["reference_unet"]),
                                                       source=paths["reference_unet"])
    denoiser = loading.video_unet_from_state_dict(weights.load_state_dict(paths["motion_unet"]),
                                                  source=paths["motion_unet"])
    guider = loading.pose_guider_from_state_dict(weights.load_state_dict(paths["pose_guider"]),
                                                 source=paths["pose_guider"])
    return ModelSet(reference, denoiser, guider, sources=dict(paths))


def load_denoiser(folder: str | os.PathLike) -> VideoUNet:
    path = weights.require_weights(folder, ["motion_unet"])["motion_unet"]
    return loading.video_unet_from_state_dict(weights.load_state_dict(path), source=path)


def _sd_unet_file(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise weights.MissingWeightsError(
        f"{folder} is not a diffusers UNet folder (no diffusion_pytorch_model.safetensors or .bin); point "
        f"[models] sd_unet at the unet/ folder of lambdalabs/sd-image-variations-diffusers")


def _check_sd_config(folder: Path, config: UNetConfig) -> None:
    """The folder's config.json must describe the SD1.5 layout RAIN inflates (same blocks, heads, context size)."""
    path = folder / "config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    expected = {"in_channels": config.in_channels, "out_channels": config.out_channels,
                "layers_per_block": config.layers_per_block, "cross_attention_dim": config.cross_attention_dim,
                "attention_head_dim": config.attention_heads, "flip_sin_to_cos": True, "freq_shift": 0}
    wrong = {k: (data.get(k), v) for k, v in expected.items() if k in data and data[k] != v}
    if data.get("prediction_type") not in (None, "v_prediction"):
        wrong["prediction_type"] = (data["prediction_type"], "v_prediction")
    if wrong:
        described = ", ".join(f"{k} = {got!r} (RAIN needs {want!r})" for k, (got, want) in wrong.items())
        raise weights.WeightsError(f"{path}: not an SD1.5 image-variations UNet: {described}")


def fresh_motion_modules(denoiser: VideoUNet) -> None:
    """Zero each motion module's output projection (AnimateDiff): the temporal branch starts as a no-op."""
    for module in denoiser.modules():
        if isinstance(module, MotionModule):
            with torch.no_grad():
                module.temporal_transformer.proj_out.weight.zero_()
                module.temporal_transformer.proj_out.bias.zero_()


def from_sd_unet(folder: str | os.PathLike, pose_guider_channels: int | None = None) -> ModelSet:
    """Both UNets from the sd-image-variations ``unet/`` folder, new motion modules, ``cond_proj`` = 0 and a new
    pose guider (AnimateAnyone's: zero last convolution, so the pose starts by adding nothing)."""
    folder = Path(folder)
    file = _sd_unet_file(folder)
    state = weights.load_state_dict(file)
    if "conv_out.weight" not in state or any(is_motion_parameter(k) for k in state):
        kind = weights.identify_checkpoint(state) or "other"
        raise weights.WeightsError(f"{file} is not a diffusers SD UNet (it looks like a {kind} checkpoint); a RAIN set "
                                   f"is given as [models] init instead")
    try:
        config = UNetConfig.from_state_dict(state)
    except KeyError as error:
        raise weights.WeightsError(f"{file}: not a diffusers SD1.5 UNet (no {error} key)") from None
    _check_sd_config(folder, config)
    head = ("conv_norm_out.weight", "conv_norm_out.bias", "conv_out.weight", "conv_out.bias")
    reference = ReferenceUNet.from_config_dataclass(config)
    weights.load_strict(reference, {k: v for k, v in state.items() if k not in head}, source=file,
                        model_name="reference_unet (from the SD UNet)")
    denoiser = VideoUNet(config)
    fresh_motion_modules(denoiser)
    with torch.no_grad():
        denoiser.time_embedding.cond_proj.weight.zero_()
    own = denoiser.state_dict()
    filled = {k: v for k, v in own.items() if ".motion_modules." in k or k in SD_DENOISER_EXTRA}
    weights.load_strict(denoiser, {**state, **filled}, source=file, model_name="motion_unet (from the SD UNet)")
    channels = pose_guider_channels or config.block_out_channels[0]
    guider = PoseGuider(PoseGuiderConfig(conditioning_embedding_channels=channels))
    with torch.no_grad():
        guider.conv_out.weight.zero_()
        guider.conv_out.bias.zero_()
    for module in (reference, denoiser, guider):
        module.requires_grad_(False).eval()
    return ModelSet(reference, denoiser, guider, sources={name: None for name in SET_FILES})


def load_motion_modules(denoiser: VideoUNet, path: str | os.PathLike) -> None:
    """Replace the motion modules with those of an AnimateDiff-layout file (``*.motion_modules.*`` keys only;
    a full RAIN motion_unet file also works: its motion-module keys are taken)."""
    path = Path(path)
    state = weights.load_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items() if ".motion_modules." in f".{k}"}
    expected = {k: v for k, v in denoiser.state_dict().items() if ".motion_modules." in k}
    mismatch = weights.compare_keys(state, {k: tuple(v.shape) for k, v in expected.items()})
    if mismatch:
        shown = (mismatch.missing or mismatch.unexpected or [w[0] for w in mismatch.wrong_shape])[:5]
        raise weights.WeightsError(f"{path}: its motion modules do not fit this UNet ({len(mismatch.missing)} "
                                   f"missing, {len(mismatch.unexpected)} unexpected, {len(mismatch.wrong_shape)} "
                                   f"of another shape, e.g. {shown}); AnimateDiff v2 (mm_sd_v15_v2) modules fit "
                                   f"the SD1.5 widths")
    with torch.no_grad():
        for key, value in state.items():
            expected[key].copy_(value)


# -- which parameters train -------------------------------------------------------------------------------------
def is_motion_parameter(name: str) -> bool:
    return ".motion_modules." in f".{name}"


def reference_dead_parameters(reference_unet: ReferenceUNet) -> set[str]:
    """Parameters of the reference UNet that no cached feature depends on: everything of the last transformer
    block after its ``norm1`` (the feature), and the rest of its transformer. They get no gradient, so they are
    frozen (several GPUs would otherwise wait for their gradients)."""
    blocks = reference_blocks(reference_unet)
    last_name, last_block = next(reversed(blocks.items()))
    prefix = {id(m): n for n, m in reference_unet.named_modules()}[id(last_block)]
    transformer = prefix.rsplit(".transformer_blocks.", 1)[0]
    dead = set()
    for name, _ in reference_unet.named_parameters():
        if name.startswith(prefix + ".") and not name.startswith(prefix + ".norm1."):
            dead.add(name)
        elif name.startswith(transformer + ".proj_out."):
            dead.add(name)
    return dead


def set_trainable(module: torch.nn.Module, predicate) -> list[str]:
    """requires_grad = predicate(name) for every parameter; returns the trainable names."""
    names = []
    for name, parameter in module.named_parameters():
        train = bool(predicate(name))
        parameter.requires_grad_(train)
        if train:
            names.append(name)
    return names


def hold_frozen_in(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Keep frozen floating parameters in ``dtype`` (bf16/fp16 under mixed precision) to save memory; trainable
    ones stay float32 (the optimizer's master weights)."""
    if dtype == torch.float32:
        return
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.requires_grad and parameter.is_floating_point():
                parameter.data = parameter.data.to(dtype)


# -- export -------------------------------------------------------------------------------------------------------
def export_state(live: dict[str, torch.Tensor], source: Path | None, trainable: set[str],
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A module's state in the official key layout: trained parameters from memory (``live``, its whole
    ``state_dict``), everything else from the file the module came from (unchanged), or from memory when it was
    assembled there."""
    if source is not None:
        state = weights.load_state_dict(source)
        missing = set(live) - set(state)
        if missing:
            raise weights.WeightsError(f"{source} changed since training started: it lacks {sorted(missing)[:5]}")
        state = {k: state[k] for k in live}
        for name in trainable:
            state[name] = live[name]
    else:
        state = dict(live)
    return {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in state.items()}


def write_set(folder: str | os.PathLike, states: dict[str, dict[str, torch.Tensor]], metadata: dict) -> Path:
    """Write reference_unet / motion_unet / pose_guider .safetensors into ``folder``: each under a temporary name
    first, then all renamed, so a crash never leaves a half-written file under a final name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = {"format": "pt", "rain_training": json.dumps(metadata)}
    partials = []
    for name, state in states.items():
        final = folder / f"{name}.safetensors"
        partial = final.with_name(final.name + ".partial")
        save_file(state, str(partial), metadata=text)
        partials.append((partial, final))
    for partial, final in partials:
        os.replace(partial, final)
    info = folder / "training.json"
    partial = info.with_name(info.name + ".partial")
    partial.write_text(json.dumps(metadata, indent=1), encoding="utf-8")
    os.replace(partial, info)
    return folder
