"""Checkpoint files: where they live, where they come from, and how to load them safely.

This module knows file names, key sets and sizes — never the models' internals. It

* loads state dicts without unpickling arbitrary objects (``torch.load(weights_only=True)``
  or safetensors) and explains corrupt / truncated / wrong files in plain words;
* loads them strictly: a missing key is an error even for ``motion_unet.pth``, which the
  official code loads with ``strict=False`` (spec §14 pitfall 1), and says which known
  model a mismatching file looks like;
* checks state dicts against the manifests in ``rain/manifests`` without building a model;
* converts ``.pth`` files to ``.safetensors``;
* catalogues the files of a models folder (``MODEL_FILES``), finds them and downloads the
  missing ones (Hugging Face Hub with resume, or a resumable HTTP download).

Folder layout (standalone: the folder given to the CLI; ComfyUI: ``models/rain/``)::

    reference_unet.{safetensors,pth}   motion_unet.{safetensors,pth}
    pose_guider.{safetensors,pth}      taesdv.{safetensors,pth}
    sd-vae-ft-mse/   config.json + diffusion_pytorch_model.{safetensors,bin}
    image_encoder/   config.json + {model.safetensors,pytorch_model.bin}
    dwpose/          the ONNX files listed by rain.pose.model_files.DWPOSE_FILES
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import re
import shlex
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
# Lookup order for single-file checkpoints: safetensors first (safe and memory-mapped).
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

# How many offending keys an error message lists per kind; the rest are counted.
MAX_KEYS_SHOWN = 10


class WeightsError(RuntimeError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """One or more model files are not where they should be."""


class DownloadError(WeightsError):
    """A download failed or produced a file of the wrong size or content."""


# --------------------------------------------------------------------------------------------
# Commands shown in messages
# --------------------------------------------------------------------------------------------

def download_command(models_dir: str | os.PathLike[str]) -> str:
    """The shell command that fetches every missing model file into ``models_dir``."""
    return f"python -m rain download --models-dir {shlex.quote(str(models_dir))}"


def convert_command(path: str | os.PathLike[str]) -> str:
    """The shell command that converts a pickle checkpoint to safetensors."""
    return f"python -m rain convert {shlex.quote(str(path))}"


# --------------------------------------------------------------------------------------------
# Safe loading
# --------------------------------------------------------------------------------------------

def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a checkpoint file as a flat ``{key: tensor}`` dict on the CPU.

    ``.safetensors`` files are read with safetensors; ``.pth/.pt/.bin/.ckpt`` files only
    with ``torch.load(weights_only=True)``, so no arbitrary object is ever unpickled.
    A top-level ``{"state_dict": {...}}`` container is unwrapped. Tensors keep the dtype
    they were stored in (``nn.Module.load_state_dict`` casts floats on copy).

    Raises ``MissingWeightsError`` if the file does not exist and ``WeightsError`` if it is
    unreadable, truncated, not a checkpoint, or a pickle that ``weights_only`` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"Weights file not found: {path}\n"
            f"Fetch the model files with: {download_command(path.parent)}")
    _reject_non_checkpoint(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        state_dict = _load_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        state_dict = _load_pickle(path)
    else:
        raise WeightsError(
            f"Unsupported weights file type '{path.suffix}' for {path}; expected one of "
            f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}.")
    return _as_flat_state_dict(state_dict, path)


def _corrupt_file_error(path: Path, detail: str) -> WeightsError:
    return WeightsError(
        f"Cannot read weights file {path}: it is corrupt or incomplete ({detail}).\n"
        f"Delete it and download it again with: {download_command(path.parent)}")


def _reject_non_checkpoint(path: Path) -> None:
    """Recognise the usual impostors (LFS pointers, HTML error pages, empty files) early."""
    with path.open("rb") as f:
        head = f.read(64)
    if not head:
        raise _corrupt_file_error(path, "the file is empty")
    if head.startswith(b"version https://git-lfs"):
        raise WeightsError(
            f"{path} is a Git LFS pointer, not the weights themselves (the repository was cloned "
            f"without git-lfs).\nDelete it and download the real file with: "
            f"{download_command(path.parent)}")
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        raise WeightsError(
            f"{path} is a web page, not a checkpoint (a browser download of the wrong link?).\n"
            f"Delete it and download the real file with: {download_command(path.parent)}")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    import safetensors.torch

    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError is not importable under a stable name
        raise _corrupt_file_error(path, f"safetensors: {exc}") from exc


def _load_pickle(path: Path) -> Any:
    with path.open("rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    try:
        # mmap keeps multi-GB checkpoints out of anonymous memory; only the zip format supports it.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:
        message = str(exc)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", message)
        if refused:
            raise WeightsError(
                f"Refusing to load {path}: it is a pickle that contains the object "
                f"'{refused.group(1)}', which safe loading (torch.load weights_only=True) does not "
                f"allow, because unpickling it could run arbitrary code.\n"
                f"If you trust where the file came from, convert it to safetensors on a trusted "
                f"machine (e.g. load it there with weights_only=False and save the state dict with "
                f"safetensors), or download the official file with: "
                f"{download_command(path.parent)}") from exc
        first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        raise _corrupt_file_error(path, first_line) from exc


def _as_flat_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} does not contain a state dict (found a {type(obj).__name__}).")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(
            f"{path} is not a plain state dict: {len(not_tensors)} entries are not tensors "
            f"({_preview(not_tensors)}).")
    return {str(k): v for k, v in obj.items()}


# --------------------------------------------------------------------------------------------
# Manifests and identification
# --------------------------------------------------------------------------------------------

# Manifest-backed models, in the order identify_checkpoint prefers them on ties.
MANIFEST_MODELS = ("reference_unet", "motion_unet", "pose_guider", "taesdv")

# Below this Jaccard overlap of key names a state dict is not called "like" a known model.
IDENTIFY_MIN_OVERLAP = 0.5


@functools.cache
def load_manifest(name: str) -> dict[str, Any]:
    """The manifest ``rain/manifests/<name>.json`` (keys and shapes of an official checkpoint)."""
    path = MANIFEST_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in MANIFEST_DIR.glob("*.json") if "tensors" in p.read_text())
        raise WeightsError(f"No manifest named '{name}' in {MANIFEST_DIR}; known: {', '.join(known)}.")
    manifest = json.loads(path.read_text())
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
                                             model_name=manifest_name))


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                source: str | os.PathLike[str], model_name: str) -> None:
    """Load ``state_dict`` into ``module``, refusing any missing/unexpected key or wrong shape.

    Floating tensors are cast to the dtype of the parameter they land in (by
    ``nn.Module.load_state_dict``); integer buffers stay integer. A module built on the meta
    device is materialised from the state dict (``assign=True``), with floating tensors
    cast to the dtype the module was built with.
    """
    expected = {key: tuple(t.shape) for key, t in module.state_dict().items()}
    mismatch = compare_keys(state_dict, expected)
    if mismatch:
        raise WeightsError(_mismatch_message(mismatch, state_dict, source=source,
                                             model_name=model_name))
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


def _preview(keys: list[str], limit: int = MAX_KEYS_SHOWN) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _mismatch_message(mismatch: KeyMismatch, state_dict: Mapping[str, Any], *,
                      source: str | os.PathLike[str], model_name: str) -> str:
    lines = [f"Weights file {source} does not fit the {model_name} model:"]
    if mismatch.missing:
        lines.append(f"  {len(mismatch.missing)} missing keys (the model needs them, the file "
                     f"lacks them): {_preview(mismatch.missing)}")
    if mismatch.unexpected:
        lines.append(f"  {len(mismatch.unexpected)} unexpected keys (in the file, not in the "
                     f"model): {_preview(mismatch.unexpected)}")
    if mismatch.wrong_shape:
        shown = [f"{key} file {list(got)} vs model {list(want)}"
                 for key, got, want in mismatch.wrong_shape]
        lines.append(f"  {len(shown)} keys with the wrong shape: {_preview(shown)}")
    looks_like = identify_checkpoint(state_dict)
    if looks_like and looks_like != model_name:
        lines.append(f"This file looks like a {looks_like} checkpoint, not {model_name} — "
                     f"check which file was put where.")
    source_path = Path(source)
    lines.append(f"If the file is damaged or the wrong one, download it again with: "
                 f"{download_command(source_path.parent if source_path.suffix else source_path)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------

def convert_to_safetensors(src: str | os.PathLike[str], dst: str | os.PathLike[str] | None = None,
                           *, dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Write the state dict of ``src`` as safetensors (default: same name, ``.safetensors``).

    Tensors keep their dtype unless ``dtype`` is given, in which case only floating tensors
    are cast (integer buffers such as ``position_ids`` stay integer). The file is written
    under a temporary name and renamed, so an interrupted conversion leaves no half file.
    """
    import safetensors.torch

    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_suffix(".safetensors")
    if dst.resolve() == src.resolve():
        raise WeightsError(f"Source and destination are the same file: {src}")
    if dst.exists() and not overwrite:
        raise WeightsError(f"{dst} already exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    state_dict = load_state_dict(src)
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[tuple[int, int]] = set()
    for key, tensor in state_dict.items():
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.contiguous()
        # safetensors refuses tensors that share memory (tied weights); give each its own copy.
        storage_id = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and storage_id in seen_storage:
            tensor = tensor.clone()
        seen_storage.add(storage_id)
        tensors[key] = tensor
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


# --------------------------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: from the Hugging Face Hub (``repo_id``) or a plain URL (``url``)."""

    dest: str                       # path relative to the models folder
    repo_id: str | None = None
    repo_path: str | None = None    # path inside the repo (may include a subfolder)
    revision: str = "main"
    url: str | None = None
    size: int | None = None         # exact byte size when known without asking the server
    approx_size: str = ""           # for people: "3.44 GB"
    git_blob_sha1: str | None = None  # content check for files taken from a git repository

    @property
    def origin(self) -> str:
        return f"huggingface.co/{self.repo_id}" if self.repo_id else str(self.url)


@dataclass(frozen=True)
class ModelEntry:
    """A model the engine needs, how to recognise it on disk, and how to fetch it."""

    name: str
    group: str                              # download group: rain, taesdv, vae, image_encoder, dwpose
    description: str
    layouts: tuple[tuple[str, ...], ...]    # alternative sets of files that make the model complete
    downloads: tuple[RemoteFile, ...]
    folder: str | None = None               # folder models are returned as the folder path
    manifest: str | None = None

    def describe_files(self) -> str:
        if self.folder:
            names = " or ".join(" + ".join(Path(p).name for p in layout) for layout in self.layouts[:2])
            more = " or another accepted set" if len(self.layouts) > 2 else ""
            return f"{self.folder}/ ({names}{more})"
        return f"{self.downloads[0].dest} (or {self.name}.safetensors)"


DOWNLOAD_GROUPS = ("rain", "taesdv", "vae", "image_encoder", "dwpose")

RAIN_REPO = "Pscgylotti/RAIN-v0.1"
VAE_REPO = "stabilityai/sd-vae-ft-mse"
IMAGE_ENCODER_REPO = "lambdalabs/sd-image-variations-diffusers"
# Pinned to the commit whose taesdv.pth is current (madebyollin/taesdv, "Remove silly bias
# thingy", 2024-10-05; the checkpoint itself last changed 2024-09-29). Same file as raw/main.
TAESDV_COMMIT = "1b2655e57693c2bf2bd016451f86f5cbf5aa5169"
TAESDV_URL = f"https://github.com/madebyollin/taesdv/raw/{TAESDV_COMMIT}/taesdv.pth"


def _single_file(name: str, description: str, download: RemoteFile, group: str,
                 manifest: str | None) -> ModelEntry:
    layouts = tuple((f"{name}{suffix}",) for suffix in WEIGHT_SUFFIXES)
    return ModelEntry(name, group, description, layouts, (download,), manifest=manifest)


def _static_entries() -> dict[str, ModelEntry]:
    entries = [
        _single_file("reference_unet", "reference UNet (ReferenceNet)",
                     RemoteFile("reference_unet.pth", RAIN_REPO, "reference_unet.pth",
                                approx_size="3.44 GB"), "rain", "reference_unet"),
        _single_file("motion_unet", "denoising video UNet with motion modules",
                     RemoteFile("motion_unet.pth", RAIN_REPO, "motion_unet.pth",
                                approx_size="5.26 GB"), "rain", "motion_unet"),
        _single_file("pose_guider", "pose guider",
                     RemoteFile("pose_guider.pth", RAIN_REPO, "pose_guider.pth",
                                approx_size="4.35 MB"), "rain", "pose_guider"),
        _single_file("taesdv", "TAESDV tiny video decoder",
                     RemoteFile("taesdv.pth", url=TAESDV_URL, approx_size="about 11 MB",
                                git_blob_sha1="ffbcfae958d6364adddffca405f8dac44d03ace2"),
                     "taesdv", "taesdv"),
        ModelEntry(
            "vae", "vae", "SD VAE (sd-vae-ft-mse, diffusers folder)",
            (("sd-vae-ft-mse/config.json", "sd-vae-ft-mse/diffusion_pytorch_model.safetensors"),
             ("sd-vae-ft-mse/config.json", "sd-vae-ft-mse/diffusion_pytorch_model.bin")),
            (RemoteFile("sd-vae-ft-mse/config.json", VAE_REPO, "config.json"),
             RemoteFile("sd-vae-ft-mse/diffusion_pytorch_model.safetensors", VAE_REPO,
                        "diffusion_pytorch_model.safetensors", approx_size="335 MB")),
            folder="sd-vae-ft-mse"),
        ModelEntry(
            "image_encoder", "image_encoder", "CLIP image encoder (transformers folder)",
            (("image_encoder/config.json", "image_encoder/model.safetensors"),
             ("image_encoder/config.json", "image_encoder/pytorch_model.bin")),
            (RemoteFile("image_encoder/config.json", IMAGE_ENCODER_REPO, "image_encoder/config.json"),
             RemoteFile("image_encoder/pytorch_model.bin", IMAGE_ENCODER_REPO,
                        "image_encoder/pytorch_model.bin", size=1_215_993_967, approx_size="1.22 GB")),
            folder="image_encoder"),
    ]
    return {entry.name: entry for entry in entries}


def _field(spec: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = spec.get(name) if isinstance(spec, Mapping) else getattr(spec, name, None)
        if value is not None:
            return value
    return default


def _dwpose_entry() -> ModelEntry | None:
    """Build the dwpose entry from ``rain.pose.model_files`` if that module exists.

    ``DWPOSE_FILES`` (a sequence or mapping) lists the default files as dicts or objects with:
    ``name`` (file name on disk), ``repo_id`` + ``filename`` (path in the repo) + optional
    ``revision``, or ``url``; optional ``subdir`` (default ``dwpose``), ``size`` (exact bytes),
    ``size_mb`` / ``approx_size`` (for messages). If the module also has
    ``DETECTOR_PREFERENCE`` and ``POSE_PREFERENCE``, any detector + pose pair found in the
    folder counts as present (the pose stage accepts alternatives); otherwise all default
    files are required.
    """
    try:  # lazily: weights must work without (or before) the pose package
        model_files = importlib.import_module(".pose.model_files", __package__)
    except ImportError:
        return None
    specs = getattr(model_files, "DWPOSE_FILES", None)
    if specs is None:
        return None
    items = specs.values() if isinstance(specs, Mapping) else specs
    downloads = []
    for spec in items:
        if isinstance(spec, RemoteFile):
            downloads.append(spec)
            continue
        name = str(_field(spec, "name", "filename", "dest"))
        subdir = _field(spec, "subdir", default="dwpose")
        size_mb = _field(spec, "size_mb")
        downloads.append(RemoteFile(
            dest=f"{subdir}/{Path(name).name}",
            repo_id=_field(spec, "repo_id"),
            repo_path=_field(spec, "repo_path", "filename", default=Path(name).name),
            revision=_field(spec, "revision", default="main"),
            url=None if _field(spec, "repo_id") else _field(spec, "url"),
            size=_field(spec, "size"),
            approx_size=str(_field(spec, "approx_size", default=f"{size_mb} MB" if size_mb else "")),
        ))
    layouts: tuple[tuple[str, ...], ...] = (tuple(d.dest for d in downloads),)
    detectors = getattr(model_files, "DETECTOR_PREFERENCE", None)
    poses = getattr(model_files, "POSE_PREFERENCE", None)
    if detectors and poses:
        folder = Path(downloads[0].dest).parent.as_posix() if downloads else "dwpose"
        pairs = [(f"{folder}/{det}", f"{folder}/{pose}") for det in detectors for pose in poses]
        layouts += tuple(pair for pair in pairs if set(pair) != set(layouts[0]))
    return ModelEntry("dwpose", "dwpose", "DWPose face-landmark detector (ONNX)", layouts,
                      tuple(downloads), folder="dwpose")


class _Catalogue(Mapping[str, ModelEntry]):
    """``MODEL_FILES``: the static entries plus dwpose once ``rain.pose.model_files`` exists."""

    def _entries(self) -> dict[str, ModelEntry]:
        entries = _static_entries()
        dwpose = _dwpose_entry()
        if dwpose is not None:
            entries["dwpose"] = dwpose
        return entries

    def __getitem__(self, name: str) -> ModelEntry:
        entries = self._entries()
        name = ALIASES.get(name, name)
        if name not in entries:
            if name == "dwpose":
                raise KeyError("dwpose: the DWPose file list (rain.pose.model_files) is not available")
            raise KeyError(f"{name!r} is not a known model; known: {', '.join(entries)}")
        return entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())


ALIASES = {"sd-vae-ft-mse": "vae", "sd_vae": "vae", "clip_vision": "image_encoder"}
MODEL_FILES: Mapping[str, ModelEntry] = _Catalogue()


# --------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------

def find_weight(models_dir: str | os.PathLike[str], name: str) -> Path | None:
    """Path of model ``name`` in ``models_dir`` if complete there, else ``None``.

    Single-file models return the file (``.safetensors`` preferred over ``.pth``);
    folder models (``vae``/``sd-vae-ft-mse``, ``image_encoder``, ``dwpose``) return the
    folder once all files of one accepted layout are present.
    """
    models_dir = Path(models_dir)
    if name == "dwpose" and "dwpose" not in MODEL_FILES:
        # Without the DWPose file list, any ONNX file in dwpose/ is the best we can check.
        folder = models_dir / "dwpose"
        return folder if folder.is_dir() and any(folder.glob("*.onnx")) else None
    entry = MODEL_FILES[name]
    for layout in entry.layouts:
        if all((models_dir / rel).is_file() for rel in layout):
            return models_dir / entry.folder if entry.folder else models_dir / layout[0]
    return None


def require_weights(models_dir: str | os.PathLike[str], names: Iterable[str]) -> dict[str, Path]:
    """Paths of all ``names`` in ``models_dir``; ``MissingWeightsError`` naming every missing one."""
    models_dir = Path(models_dir)
    found, missing = {}, []
    for name in names:
        path = find_weight(models_dir, name)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        raise MissingWeightsError(missing_weights_message(models_dir, missing))
    return found


def missing_weights_message(models_dir: str | os.PathLike[str], names: Iterable[str]) -> str:
    """The text of ``MissingWeightsError``: every missing file, its folder, and the fix."""
    names = list(names)
    lines = [f"Missing model files in {models_dir} ({len(names)}):"]
    for name in names:
        if name == "dwpose" and "dwpose" not in MODEL_FILES:
            lines.append("  - dwpose/ (DWPose ONNX files)")
            continue
        entry = MODEL_FILES[name]
        sources = sorted({d.origin for d in entry.downloads})
        size = " + ".join(d.approx_size for d in entry.downloads if d.approx_size)
        detail = ", ".join(filter(None, [entry.description, size, "from " + ", ".join(sources)]))
        lines.append(f"  - {entry.describe_files()} — {detail}")
    lines.append(f"Put them in {models_dir}, or fetch them all with:\n  {download_command(models_dir)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------

def download(models_dir: str | os.PathLike[str], which: Iterable[str] = DOWNLOAD_GROUPS, *,
             progress: bool = True, force: bool = False) -> dict[str, Path]:
    """Fetch the model files of the given groups (or model names) into ``models_dir``.

    Files already present with the right size are skipped, as are models already present
    in another accepted form (e.g. a converted ``.safetensors``). Hub files go through
    ``huggingface_hub.hf_hub_download`` (which resumes partial downloads); plain URLs use
    an HTTP Range download into a ``.part`` file. Every file's size is checked against the
    server's afterwards. Returns ``{model name: path}`` of the models now complete.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    result = {}
    for entry in _select_entries(which):
        present = find_weight(models_dir, entry.name)
        if present is not None and not force and not any(
                (models_dir / d.dest).exists() for d in entry.downloads):
            logger.info("%s: already present as %s", entry.name, present)
            result[entry.name] = present
            continue
        for remote in entry.downloads:
            if present is not None and not force and not (models_dir / remote.dest).exists():
                continue  # complete in another accepted layout (e.g. a .bin instead of .safetensors)
            fetch_file(remote, models_dir, progress=progress, force=force)
        path = find_weight(models_dir, entry.name)
        if path is None:  # a catalogue bug rather than a user problem, but say it clearly
            raise DownloadError(f"Downloaded {entry.name} but it is still incomplete in {models_dir}.")
        result[entry.name] = path
    return result


def _select_entries(which: Iterable[str]) -> list[ModelEntry]:
    if isinstance(which, str):
        which = [which]
    catalogue = {name: MODEL_FILES[name] for name in MODEL_FILES}
    selected: dict[str, ModelEntry] = {}
    for item in which:
        item = ALIASES.get(item, item)
        matches = [e for e in catalogue.values() if item in (e.group, e.name)]
        if not matches:
            if item == "dwpose":
                logger.warning("Skipping dwpose: its file list (rain.pose.model_files) is not "
                               "available in this installation.")
                continue
            known = sorted({e.group for e in catalogue.values()} | set(catalogue))
            raise WeightsError(f"Nothing to download for {item!r}; choose from {', '.join(known)}.")
        selected.update((e.name, e) for e in matches)
    return list(selected.values())


def fetch_file(remote: RemoteFile, models_dir: str | os.PathLike[str], *, progress: bool = True,
               force: bool = False) -> Path:
    """Make ``models_dir/remote.dest`` present and complete; returns its path."""
    models_dir = Path(models_dir)
    if remote.repo_id:
        return _fetch_from_hub(remote, models_dir, progress=progress, force=force)
    if remote.url:
        return _fetch_from_url(remote, models_dir / remote.dest, progress=progress, force=force)
    raise WeightsError(f"Catalogue entry for {remote.dest} has neither a repo nor a URL.")


def _size_error(path: Path, got: int, expected: int, origin: str, models_dir: Path) -> DownloadError:
    return DownloadError(
        f"{path} is {got:,} bytes but {origin} says it should be {expected:,} bytes; the download "
        f"is incomplete or corrupt. Delete it and run again: {download_command(models_dir)}")


def _hub_file_size(remote: RemoteFile) -> int | None:
    """The file's size according to the Hub, or ``None`` when the Hub cannot be asked."""
    import huggingface_hub

    url = huggingface_hub.hf_hub_url(remote.repo_id, remote.repo_path, revision=remote.revision)
    try:
        return huggingface_hub.get_hf_file_metadata(url).size
    except Exception as exc:  # offline, gated, rate-limited...: decided by the caller
        logger.warning("Could not get the size of %s from the Hub: %s", remote.repo_path, exc)
        return None


def _fetch_from_hub(remote: RemoteFile, models_dir: Path, *, progress: bool, force: bool) -> Path:
    import huggingface_hub

    dest = models_dir / remote.dest
    # hf_hub_download puts repo_path below local_dir, so local_dir is dest minus that suffix;
    # a file stored under another name is fetched into a staging folder and moved.
    if remote.dest.endswith(remote.repo_path):
        local_dir = models_dir / remote.dest[: len(remote.dest) - len(remote.repo_path)]
    else:
        local_dir = models_dir / ".hub-staging" / remote.repo_id
    if dest.is_file() and not force and remote.size is not None and dest.stat().st_size == remote.size:
        logger.info("%s: already present (%s bytes)", remote.dest, f"{remote.size:,}")
        return dest
    expected = _hub_file_size(remote)
    if dest.is_file() and not force:
        if expected is None:
            logger.warning("%s: present but its size cannot be checked right now; keeping it.",
                           remote.dest)
            return dest
        if dest.stat().st_size == expected:
            logger.info("%s: already present (%s bytes)", remote.dest, f"{expected:,}")
            return dest
        logger.warning("%s: present with the wrong size (%s, expected %s); downloading it again.",
                       remote.dest, f"{dest.stat().st_size:,}", f"{expected:,}")
        force = True
    logger.info("Downloading %s from %s", remote.repo_path, remote.origin)
    bars_were_disabled = huggingface_hub.utils.are_progress_bars_disabled()
    if not progress:
        huggingface_hub.utils.disable_progress_bars()
    try:
        path = Path(huggingface_hub.hf_hub_download(
            remote.repo_id, remote.repo_path, revision=remote.revision, local_dir=local_dir,
            force_download=force))
    except Exception as exc:
        raise DownloadError(
            f"Could not download {remote.repo_path} from {remote.origin} into {local_dir}: {exc}\n"
            f"Check the network connection and run again (partial downloads resume): "
            f"{download_command(models_dir)}") from exc
    finally:
        if not progress and not bars_were_disabled:
            huggingface_hub.utils.enable_progress_bars()
    expected = expected if expected is not None else remote.size
    if expected is not None and path.stat().st_size != expected:
        raise _size_error(path, path.stat().st_size, expected, remote.origin, models_dir)
    if path != dest:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    return dest


def git_blob_sha1(path: str | os.PathLike[str]) -> str:
    """The git object id of a file's content (what ``git hash-object`` prints)."""
    path = Path(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_from_url(remote: RemoteFile, dest: Path, *, progress: bool, force: bool) -> Path:
    models_dir = dest.parent
    if dest.is_file() and not force:
        if _existing_file_ok(remote, dest):
            logger.info("%s: already present", remote.dest)
            return dest
        logger.warning("%s: present but does not match the expected file; downloading it again.",
                       remote.dest)
    logger.info("Downloading %s from %s", remote.dest, remote.url)
    http_download(remote.url, dest, expected_size=remote.size, progress=progress)
    if remote.git_blob_sha1 and git_blob_sha1(dest) != remote.git_blob_sha1:
        dest.unlink()
        raise DownloadError(
            f"The file downloaded from {remote.url} does not have the expected content (git blob "
            f"{remote.git_blob_sha1}); it was deleted. Run again: {download_command(models_dir)}")
    return dest


def _existing_file_ok(remote: RemoteFile, dest: Path) -> bool:
    if remote.size is not None and dest.stat().st_size != remote.size:
        return False
    if remote.git_blob_sha1 is not None:
        return git_blob_sha1(dest) == remote.git_blob_sha1
    return True


def _open_url(request: urllib.request.Request, timeout: float):
    """Indirection so tests can replace the network."""
    return urllib.request.urlopen(request, timeout=timeout)


_CHUNK = 1 << 20


def http_download(url: str, dest: str | os.PathLike[str], *, expected_size: int | None = None,
                  progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a previous ``.part``.

    A partial ``.part`` file is continued with an HTTP Range request (servers that ignore
    the range restart from zero). The size is checked against ``Content-Length`` /
    ``Content-Range`` and ``expected_size``; the ``.part`` file is renamed only when complete.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "ComfyUI-RAIN"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = _open_url(urllib.request.Request(url, headers=headers), timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part already holds the whole file
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            if total == offset:
                return _finish_part(part, dest, total, expected_size, url)
            part.unlink()
            return http_download(url, dest, expected_size=expected_size, progress=progress,
                                 timeout=timeout)
        raise DownloadError(f"Downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"Downloading {url} failed: {exc}. Check the network connection and "
                            f"run again; the download will resume.") from exc
    with response:
        status = getattr(response, "status", None) or response.getcode()
        length = response.headers.get("Content-Length")
        if offset and status == 206:
            total = _total_from_content_range(response.headers.get("Content-Range"))
            if total is None and length is not None:
                total = offset + int(length)
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # no range support: start again
            total = int(length) if length is not None else None
        with part.open(mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=dest.name,
                                         disable=not progress) as bar:
            try:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
            except OSError as exc:
                raise DownloadError(f"Download of {url} was interrupted ({exc}); run again to "
                                    f"resume from {part.stat().st_size:,} bytes.") from exc
    return _finish_part(part, dest, total, expected_size, url)


def _total_from_content_range(value: str | None) -> int | None:
    # "bytes 100-199/200" or "bytes */200"
    match = re.search(r"/(\d+)\s*$", value or "")
    return int(match.group(1)) if match else None


def _finish_part(part: Path, dest: Path, total: int | None, expected_size: int | None,
                 url: str) -> Path:
    size = part.stat().st_size
    if total is not None and size < total:
        raise DownloadError(f"Download of {url} stopped at {size:,} of {total:,} bytes; run again "
                            f"to resume.")
    for want in (total, expected_size):
        if want is not None and size != want:
            part.unlink()
            raise DownloadError(
                f"The download of {dest.name} from {url} is {size:,} bytes but should be "
                f"{want:,} bytes; the partial file was deleted. Run again: "
                f"{download_command(dest.parent)}")
    os.replace(part, dest)
    return dest
