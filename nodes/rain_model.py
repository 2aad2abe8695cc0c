"""What travels on RAIN_MODEL and RAIN_REFERENCE links, and how a model set is found in ``models/rain``.

A *model set* is chosen by its denoiser file (``motion_unet.pth``, or e.g. ``depth/motion_unet.pth`` for a
depth-trained checkpoint in a subfolder). Its other files are looked for next to it first (same name with
``motion_unet`` replaced, then the standard names), then in the top of every ``models/rain`` folder, so several
sets can share one VAE, CLIP image encoder and TAESDV.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import host

log = logging.getLogger("ComfyUI-RAIN")

DENOISER = "motion_unet"
SINGLE_FILES = ("reference_unet", "pose_guider", "taesdv")
FOLDERS = ("vae", "image_encoder")
DEFAULT_CHOICE = "motion_unet.pth"
#: SD1.x latent scale: RAIN's latents are scaled ("UNet space"); ComfyUI's LATENT holds them unscaled.
LATENT_SCALE = 0.18215


def denoiser_choices(files: list[str]) -> list[str]:
    """Dropdown entries for the loader: every file in models/rain whose name mentions ``motion_unet``.

    With none present the standard name is still offered, so the node and shipped workflows validate and the
    run ends with the message that says which files to put where. The default (first) entry is a set at the top
    of the folder (where ``download`` puts the released face set), not a subfolder set such as ``body/``, which
    only a user's own training makes."""
    choices = [f for f in files if DENOISER in Path(f).name.lower() and not f.lower().endswith(".onnx")]
    return sorted(choices, key=lambda f: ("/" in f.replace("\\", "/"), f)) or [DEFAULT_CHOICE]


def _weights():
    from ..rain import weights
    return weights


def _sibling(denoiser: Path, name: str) -> Path | None:
    if DENOISER not in denoiser.stem:
        return None
    stem = denoiser.stem.replace(DENOISER, name)
    for suffix in (denoiser.suffix,) + tuple(_weights().WEIGHT_SUFFIXES):
        candidate = denoiser.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def resolve_model_set(choice: str) -> tuple[dict[str, Path | None], Path]:
    """(paths of every component or None when absent, the folder to name in messages) for a dropdown entry."""
    weights = _weights()
    roots = host.model_roots()
    denoiser = host.model_file_path(choice)
    paths: dict[str, Path | None] = {DENOISER: denoiser}
    set_dir = denoiser.parent if denoiser is not None else None
    search = ([set_dir] if set_dir is not None else []) + [r for r in roots if r != set_dir]
    for name in SINGLE_FILES + FOLDERS:
        found = _sibling(denoiser, name) if denoiser is not None and name in SINGLE_FILES else None
        for folder in search:
            if found is not None:
                break
            if folder.is_dir():
                found = weights.find_weight(folder, name)
        paths[name] = found
    home = set_dir or (roots[0] if roots else Path("models") / host.MODEL_FOLDER)
    return paths, home


def missing_message(missing: list[str], home: Path, choice: str) -> str:
    weights = _weights()
    text = weights.missing_weights_message(home, missing)
    roots = ", ".join(str(r) for r in host.model_roots())
    return (f"RAIN model set '{choice}' is incomplete.\n{text}\n"
            f"Shared files (VAE, image encoder, TAESDV) may also sit at the top of a models/rain folder ({roots}); "
            f"the VAE and image encoder can instead come from ComfyUI's VAE Loader / Load CLIP Vision nodes.")


def fingerprint(choice: str) -> str:
    """Changes when a file of the set is replaced, so ComfyUI reloads the set (IS_CHANGED)."""
    try:
        paths, _ = resolve_model_set(choice)
    except Exception as error:  # resolution problems are reported when the node runs
        return f"unresolved:{error}"
    parts = []
    for name, path in sorted(paths.items()):
        if path is None:
            parts.append(f"{name}:-")
            continue
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for file in files:
            stat = file.stat()
            parts.append(f"{name}:{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


class _Parts(torch.nn.Module):
    """A plain container, so the memory manager can move several modules as one model."""

    def __init__(self, **modules):
        super().__init__()
        for name, module in modules.items():
            if module is not None:
                self.add_module(name, module)


# Named per group: ComfyUI's log says "Requested to load <class name>".
class RainStreamModels(_Parts):
    """Denoising UNet, pose guider, TAESDV."""


class RainReferenceModels(_Parts):
    """Reference UNet, CLIP image encoder."""


class RainVAE(_Parts):
    """The SD VAE (reference encoding, full-quality decoding)."""


@dataclass
class RainModel:
    """The RAIN_MODEL payload: the engine pipeline plus its modules wrapped for ComfyUI's memory manager.

    Three groups load independently: the stream part (denoiser, pose guider, TAESDV), the reference part
    (reference UNet, CLIP image encoder) and the VAE (used by both). Fusing loads reference + VAE; sampling loads
    the stream part (+ VAE for VAE decoding), so ComfyUI may offload the reference part once a reference is fused.
    """
    pipeline: object                      # rain.pipeline.RainPipeline
    patchers: dict[str, object]           # "stream", "reference", "vae" -> ModelPatcher / LocalPatcher
    paths: dict[str, Path | None] = field(default_factory=dict)
    name: str = ""

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.dtype

    def load(self, *groups: str) -> None:
        host.load_models([self.patchers.get(g) for g in groups])

    def has_decoder(self, decoder: str) -> bool:
        models = self.pipeline.models
        return {"taesdv": models.taesdv, "vae": models.vae}.get(decoder, True) is not None

    def decoder(self, name: str):
        """A decoder of this set (``rain.decoders``): (UNet-space latents [T,4,h,w], memory) → (frames [T,H,W,3]
        float32 CPU in [0, 1], memory). The nodes' 'none' is the cheap latent → RGB preview."""
        from ..rain.decoders import make_decoder
        return make_decoder(self.pipeline.models, "preview" if name == "none" else name, self.device, self.dtype)


def _host_state_dict(model, kind: str) -> dict:
    """State dict of a model object coming from ComfyUI's own loaders (VAE / CLIP_VISION)."""
    if kind == "vae":
        inner = getattr(model, "first_stage_model", None)
    else:
        inner = getattr(model, "model", None)
    if inner is None and isinstance(model, torch.nn.Module):
        inner = model
    if inner is None:
        raise TypeError(f"expected ComfyUI's {kind.upper()} object, got {type(model).__name__}")
    return {k: v for k, v in inner.state_dict().items()}


def _folder_config(path: Path | None, folder: str, roots) -> dict | None:
    """The config.json of a set's VAE / image encoder folder, to build a host model with the same widths."""
    import json
    candidates = [path] if path is not None else []
    candidates += [Path(r) / folder for r in roots]
    for candidate in candidates:
        config = Path(candidate) / "config.json"
        if config.is_file():
            return json.loads(config.read_text(encoding="utf-8"))
    return None


def load_model_set(choice: str, *, dtype_choice: str = "auto", device_choice: str = "auto",
                   vae=None, clip_vision=None) -> RainModel:
    """Load a model set (see module doc) into a RainPipeline wrapped for the memory manager."""
    weights = _weights()
    from ..rain import loading
    from ..rain.pipeline import RainPipeline

    paths, home = resolve_model_set(choice)
    required = [DENOISER, "pose_guider", "reference_unet"]
    if vae is None:
        required.append("vae")
    if clip_vision is None:
        required.append("image_encoder")
    missing = [name for name in required if paths.get(name) is None]
    if missing:
        raise weights.MissingWeightsError(missing_message(missing, home, choice))

    load_device = host.torch_device() if device_choice == "auto" else torch.device(device_choice)
    offload = host.offload_device() if device_choice == "auto" else load_device
    dtype = host.pick_dtype(dtype_choice, load_device)
    # Build on the offload device; the memory manager moves the weights to the load device when they are needed.
    common = dict(dtype=dtype, device=offload)

    def state(name):
        return weights.load_state_dict(paths[name])

    models = loading.RainModels(
        video_unet=loading.video_unet_from_state_dict(state(DENOISER), source=paths[DENOISER], **common),
        pose_guider=loading.pose_guider_from_state_dict(state("pose_guider"), source=paths["pose_guider"], **common))
    models.reference_unet = loading.reference_unet_from_state_dict(state("reference_unet"),
                                                                   source=paths["reference_unet"], **common)
    roots = host.model_roots()
    if clip_vision is not None:
        try:
            models.image_encoder = loading.image_encoder_from_state_dict(
                _host_state_dict(clip_vision, "clip_vision"),
                _folder_config(paths.get("image_encoder"), "image_encoder", roots),
                source="the CLIP_VISION input", **common)
        except weights.WeightsError as error:
            raise weights.WeightsError(f"{error}\nRAIN needs the ViT-L/14 CLIP vision model with its 768-d "
                                       f"projection (sd-image-variations' image_encoder, i.e. OpenAI "
                                       f"clip-vit-large-patch14); ViT-H/ViT-bigG files do not fit.") from None
    else:
        models.image_encoder = loading.load_image_encoder(paths["image_encoder"], **common)
    if vae is not None:
        models.vae = loading.vae_from_state_dict(_host_state_dict(vae, "vae"),
                                                 _folder_config(paths.get("vae"), "sd-vae-ft-mse", roots),
                                                 source="the VAE input", **common)
    else:
        models.vae = loading.load_vae(paths["vae"], **common)
    if paths.get("taesdv") is not None:
        models.taesdv = loading.taesdv_from_state_dict(state("taesdv"), source=paths["taesdv"], **common)
    else:
        log.info("RAIN: no taesdv.pth next to %s; only the 'vae' decoder is available", paths[DENOISER])

    pipeline = RainPipeline(models, device=load_device, dtype=dtype)
    patchers = {
        "stream": host.wrap_model(RainStreamModels(video_unet=models.video_unet, pose_guider=models.pose_guider,
                                         taesdv=models.taesdv), load_device, offload),
        "reference": host.wrap_model(RainReferenceModels(reference_unet=models.reference_unet,
                                            image_encoder=models.image_encoder), load_device, offload),
        "vae": host.wrap_model(RainVAE(vae=models.vae), load_device, offload),
    }
    return RainModel(pipeline, patchers, paths, name=choice)


class RainReference:
    """The RAIN_REFERENCE payload: a fused reference, re-fitted (once per frame size) when the pose frames
    have another size than the one it was fused for."""

    MAX_SIZES = 4

    def __init__(self, model: RainModel, reference):
        self.model = model
        self.reference = reference
        self._fitted = {(reference.height, reference.width): reference}

    @property
    def size(self) -> tuple[int, int]:
        return self.reference.height, self.reference.width

    def for_size(self, height: int, width: int):
        key = (int(height), int(width))
        if key not in self._fitted:
            log.info("RAIN: re-fusing the reference for %dx%d frames (it was fused for %dx%d)",
                     width, height, self.reference.width, self.reference.height)
            self.model.load("reference", "vae")
            if len(self._fitted) >= self.MAX_SIZES:
                oldest = next(k for k in self._fitted if k != self.size)
                del self._fitted[oldest]
            self._fitted[key] = self.model.pipeline.refit(self.reference, *key)
        return self._fitted[key]
