"""The catalogue of model files: what a models folder holds, where each file comes from, what is missing.

Folder layout (standalone: the folder given to the CLI; ComfyUI: ``models/rain/``)::

    reference_unet.{safetensors,pth}   motion_unet.{safetensors,pth}
    pose_guider.{safetensors,pth}      taesdv.{safetensors,pth}
    sd-vae-ft-mse/   config.json + diffusion_pytorch_model.{safetensors,bin}
    image_encoder/   config.json + {model.safetensors,pytorch_model.bin}
    dwpose/          the ONNX files listed by rain.pose.model_files.DWPOSE_FILES
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MissingWeightsError, download_command
from .safe_load import WEIGHT_SUFFIXES


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
#: Fetched only when asked for (``download --only depth lpips``): depth conditions (``--task depth``, RAIN Depth
#: Maps, depth training data) and the LPIPS metric of ``evaluate``.
OPTIONAL_GROUPS = ("depth", "lpips")

RAIN_REPO = "Pscgylotti/RAIN-v0.1"
VAE_REPO = "stabilityai/sd-vae-ft-mse"
IMAGE_ENCODER_REPO = "lambdalabs/sd-image-variations-diffusers"
# Pinned to the commit whose taesdv.pth is current (madebyollin/taesdv, "Remove silly bias
# thingy", 2024-10-05; the checkpoint itself last changed 2024-09-29). Same file as raw/main.
TAESDV_COMMIT = "1b2655e57693c2bf2bd016451f86f5cbf5aa5169"
TAESDV_URL = f"https://github.com/madebyollin/taesdv/raw/{TAESDV_COMMIT}/taesdv.pth"
DEPTH_ESTIMATOR_REPO = "depth-anything/Depth-Anything-V2-Small-hf"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet
# LPIPS v0.1 linear heads, pinned (richzhang/PerceptualSimilarity, last change 2023-12-19).
LPIPS_COMMIT = "082bb24f84c091ea94de2867d34c4544f68e0963"
LPIPS_LINEAR_URL = f"https://github.com/richzhang/PerceptualSimilarity/raw/{LPIPS_COMMIT}/lpips/weights/v0.1/alex.pth"


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
        ModelEntry(
            "depth_estimator", "depth", "depth estimator for depth conditions (Depth Anything V2 Small, transformers "
            "folder)",
            (("depth_estimator/config.json", "depth_estimator/model.safetensors",
              "depth_estimator/preprocessor_config.json"),),
            tuple(RemoteFile(f"depth_estimator/{name}", DEPTH_ESTIMATOR_REPO, name, approx_size=size)
                  for name, size in (("config.json", ""), ("model.safetensors", "99 MB"),
                                     ("preprocessor_config.json", ""))),
            folder="depth_estimator"),
        ModelEntry(
            "lpips", "lpips", "LPIPS v0.1 metric weights (AlexNet trunk + linear heads)",
            (("lpips/alexnet-owt-7be5be79.pth", "lpips/alex.pth"),),
            (RemoteFile("lpips/alexnet-owt-7be5be79.pth", url=ALEXNET_URL, approx_size="233 MB"),
             RemoteFile("lpips/alex.pth", url=LPIPS_LINEAR_URL, size=6009, approx_size="6 kB",
                        git_blob_sha1="1df9dfe62abb1fc89cc7f82b4e5fe886c979708e")),
            folder="lpips"),
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
        model_files = importlib.import_module("..pose.model_files", __package__)
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
