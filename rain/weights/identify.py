"""Which model a checkpoint belongs to, and whether it fits: manifests, key comparison, strict loading.

Only file names, key sets and shapes are known here — never the models' internals. Loading is
strict: a missing key is an error even for ``motion_unet.pth``, which the official code loads
with ``strict=False`` (spec §14 pitfall 1), and a mismatching file is told which known model
it looks like.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import WeightsError, preview_keys, redownload_hint
from .safe_load import load_state_dict

MANIFEST_DIR = Path(__file__).resolve().parent.parent / "manifests"

# Manifest-backed models, in the order identify_checkpoint prefers them on ties.
MANIFEST_MODELS = ("reference_unet", "motion_unet", "pose_guider", "taesdv")

# Below this Jaccard overlap of key names a state dict is not called "like" a known model.
IDENTIFY_MIN_OVERLAP = 0.5


@functools.cache
def load_manifest(name: str) -> dict[str, Any]:
    """The manifest ``rain/manifests/<name>.json`` (keys and shapes of an official checkpoint)."""
    path = MANIFEST_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in MANIFEST_DIR.glob("*.json") if "tensors" in p.read_text(encoding="utf-8"))
        raise WeightsError(f"No manifest named '{name}' in {MANIFEST_DIR}; known: {', '.join(known)}.")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if "tensors" not in manifest:
        raise WeightsError(f"{path} is a config, not a checkpoint manifest (it has no 'tensors').")
    return manifest


def manifest_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of the named manifest, in registration order."""
    return {key: tuple(shape) for key, shape in load_manifest(name)["tensors"].items()}


def identify_checkpoint(state_dict: Mapping[str, Any] | Iterable[str]) -> str | None:
    """Guess which known model a state dict (or a collection of its keys) belongs to.

    Returns one of ``"reference_unet"``, ``"motion_unet"``, ``"pose_guider"``, ``"taesdv"``
    (exact key-set match with a manifest, or the best overlap of key names above
    ``IDENTIFY_MIN_OVERLAP``), ``"sd_vae"`` (diffusers or LDM/ComfyUI single-file VAE keys,
    optionally prefixed ``first_stage_model.``), ``"sd15_unet"`` (a full SD checkpoint with
    ``model.diffusion_model.*`` keys), ``"clip_vision"`` (``vision_model.*``),
    ``"animatediff_motion_module"`` (only ``*.motion_modules.*`` keys) — or ``None``.
    """
    keys = set(state_dict.keys() if isinstance(state_dict, Mapping) else state_dict)
    if not keys:
        return None
    for name in MANIFEST_MODELS:
        if keys == set(manifest_shapes(name)):
            return name
    by_pattern = _identify_by_pattern(keys)
    if by_pattern:
        return by_pattern
    best_name, best_overlap = None, 0.0
    for name in MANIFEST_MODELS:
        expected = set(manifest_shapes(name))
        overlap = len(keys & expected) / len(keys | expected)
        if overlap > best_overlap:
            best_name, best_overlap = name, overlap
    return best_name if best_overlap >= IDENTIFY_MIN_OVERLAP else None


_VAE_BODY_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# Key fragments only a full SD VAE has: diffusers (down_blocks/up_blocks/mid_block) and
# LDM/ComfyUI (down.N.block / up.N.block / mid.block_1) layouts. TAESD-style keys
# ("encoder.0.weight") have none of them.
_VAE_MARKERS = ("encoder.down_blocks.", "decoder.up_blocks.", "encoder.mid_block.",
                "encoder.down.", "decoder.up.", "encoder.mid.")


def _identify_by_pattern(keys: set[str]) -> str | None:
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "sd15_unet"
    vae_keys = {k.removeprefix("first_stage_model.") for k in keys}
    if (all(k.startswith(_VAE_BODY_PREFIXES) for k in vae_keys)
            and any(k.startswith(_VAE_MARKERS) for k in vae_keys)):
        return "sd_vae"
    if any(k.startswith("vision_model.") for k in keys) and all(
            k.startswith(("vision_model.", "visual_projection.")) for k in keys):
        return "clip_vision"
    if all(".motion_modules." in f".{k}" for k in keys):
        return "animatediff_motion_module"
    return None


@dataclass(frozen=True)
class KeyMismatch:
    """Differences between the keys/shapes a model expects and what a file provides."""

    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # key, file shape, expected

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)


def compare_keys(state_dict: Mapping[str, torch.Tensor],
                 expected: Mapping[str, tuple[int, ...]], *, check_shapes: bool = True) -> KeyMismatch:
    """Compare a state dict to expected ``{key: shape}``; lists keep the expected order."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = []
    if check_shapes:
        for key, shape in expected.items():
            if key in state_dict and tuple(state_dict[key].shape) != tuple(shape):
                wrong_shape.append((key, tuple(state_dict[key].shape), tuple(shape)))
    return KeyMismatch(missing, unexpected, wrong_shape)


def check_manifest(state_dict: Mapping[str, torch.Tensor], manifest_name: str, *,
                   source: str | os.PathLike[str], check_shapes: bool = True) -> None:
    """Raise ``WeightsError`` unless ``state_dict`` has exactly the manifest's keys (and shapes).

    ``check_shapes=False`` accepts reduced-size test models, which share the key set but not
    the shapes.
    """
    mismatch = compare_keys(state_dict, manifest_shapes(manifest_name), check_shapes=check_shapes)
    if mismatch:
        raise WeightsError(_mismatch_message(mismatch, state_dict, source=source,
                                             model_name=manifest_name, against="the released file"))


def check_ranks(state_dict: Mapping[str, torch.Tensor], manifest_name: str, *,
                source: str | os.PathLike[str]) -> None:
    """Raise ``WeightsError`` if a key the manifest knows has another number of dimensions.

    Reduced-size files keep every tensor's rank, so this holds for every size; it runs before
    any code reads widths off the shapes.
    """
    expected = manifest_shapes(manifest_name)
    wrong = [(key, tuple(tensor.shape), expected[key]) for key, tensor in state_dict.items()
             if key in expected and tensor.dim() != len(expected[key])]
    if wrong:
        raise WeightsError(_mismatch_message(KeyMismatch([], [], wrong), state_dict, source=source,
                                             model_name=manifest_name, against="the released file",
                                             what="a different number of dimensions"))


def check_fits(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *,
               source: str | os.PathLike[str], model_name: str) -> None:
    """Raise ``WeightsError`` unless ``state_dict`` has exactly ``module``'s keys and shapes.

    Nothing is loaded, so ``module`` may live on the meta device.
    """
    expected = {key: tuple(t.shape) for key, t in module.state_dict().items()}
    mismatch = compare_keys(state_dict, expected)
    if mismatch:
        raise WeightsError(_mismatch_message(mismatch, state_dict, source=source,
                                             model_name=model_name))


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                source: str | os.PathLike[str], model_name: str) -> None:
    """Load ``state_dict`` into ``module``, refusing any missing/unexpected key or wrong shape.

    Floating tensors are cast to the dtype of the parameter they land in (by
    ``nn.Module.load_state_dict``); integer buffers stay integer. A module built on the meta
    device is materialised from the state dict (``assign=True``), with floating tensors
    cast to the dtype the module was built with.
    """
    check_fits(module, state_dict, source=source, model_name=model_name)
    targets = module.state_dict()
    if any(t.is_meta for t in targets.values()):
        cast = {k: v.to(targets[k].dtype) if v.is_floating_point() and targets[k].is_floating_point()
                else v for k, v in state_dict.items()}
        module.load_state_dict(cast, strict=True, assign=True)
    else:
        module.load_state_dict(dict(state_dict), strict=True)


def load_into(module: torch.nn.Module, path: str | os.PathLike[str], *, model_name: str) -> None:
    """``load_state_dict(path)`` then ``load_strict`` — the usual way to fill a model."""
    load_strict(module, load_state_dict(path), source=path, model_name=model_name)


def _mismatch_message(mismatch: KeyMismatch, state_dict: Mapping[str, Any], *,
                      source: str | os.PathLike[str], model_name: str, against: str = "the model",
                      what: str = "the wrong shape") -> str:
    lines = [f"Weights file {source} does not fit the {model_name} model (compared with {against}):"]
    if mismatch.missing:
        lines.append(f"  {len(mismatch.missing)} missing keys (the model needs them, the file "
                     f"lacks them): {preview_keys(mismatch.missing)}")
    if mismatch.unexpected:
        lines.append(f"  {len(mismatch.unexpected)} unexpected keys (in the file, not in the "
                     f"model): {preview_keys(mismatch.unexpected)}")
    if mismatch.wrong_shape:
        shown = [f"{key} (expected {list(want)}, found {list(got)})"
                 for key, got, want in mismatch.wrong_shape]
        lines.append(f"  {len(shown)} keys with {what}: {preview_keys(shown)}")
    looks_like = identify_checkpoint(state_dict)
    if looks_like and looks_like != model_name:
        lines.append(f"This file looks like a {looks_like} checkpoint, not {model_name} — "
                     f"check which file was put where.")
    lines.append(redownload_hint(source))
    return "\n".join(lines)
