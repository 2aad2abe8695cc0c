"""From checkpoint files to ready models: the one place that knows both the file layout
(``weights``) and the model classes (``models``).

Big models are built on the meta device and filled straight from the checkpoint, so loading the
released 1.3 B-parameter denoiser costs no random initialisation. Widths are read off the files,
so the reduced-size test models and the released ones load through the same code.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import weights
from .models.image_encoder import build_image_encoder
from .models.pose_guider import PoseGuider, PoseGuiderConfig
from .models.reference_unet import ReferenceUNet
from .models.taesdv import TAESDV
from .models.vae import build_vae, is_ldm_layout, ldm_to_diffusers
from .models.video_unet import UNetConfig, VideoUNet

_MANIFESTS = Path(__file__).parent / "manifests"
DEFAULT_VAE_CONFIG = _MANIFESTS / "vae_sd-vae-ft-mse_config.json"
DEFAULT_IMAGE_ENCODER_CONFIG = _MANIFESTS / "clip_image_encoder_config.json"

# transformers ≥ 4.31 no longer stores this index table in the state dict; older files carry it.
_BENIGN_EXTRA_KEYS = {"vision_model.embeddings.position_ids"}


@dataclass
class RainModels:
    video_unet: VideoUNet
    pose_guider: PoseGuider
    reference_unet: ReferenceUNet | None = None
    image_encoder: torch.nn.Module | None = None
    vae: torch.nn.Module | None = None
    taesdv: TAESDV | None = None

    def modules(self) -> dict[str, torch.nn.Module]:
        return {name: module for name, module in vars(self).items() if module is not None}


def _floats_to(state_dict: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}


def _fill(build, state_dict: dict, *, source, model_name: str, dtype: torch.dtype,
          device: torch.device | str, repair=None) -> torch.nn.Module:
    with torch.device("meta"):
        module = build()
    # nn.Module.to, not diffusers' ModelMixin.to, which warns about fp32-pinned modules these models lack.
    module = torch.nn.Module.to(module, dtype)
    weights.load_strict(module, _floats_to(state_dict, dtype), source=source, model_name=model_name)
    if repair is not None:
        repair(module)
    leftovers = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftovers:
        raise weights.WeightsError(f"{source}: {model_name} has tensors the checkpoint does not provide: "
                                   f"{leftovers[:5]}")
    return torch.nn.Module.to(module, device).eval().requires_grad_(False)


def _check_kind(state_dict: dict, *, source, expected: str) -> None:
    kind = weights.identify_checkpoint(state_dict)
    if kind is not None and kind != expected:
        raise weights.WeightsError(f"{source} does not hold the {expected} weights: it looks like a {kind} "
                                   f"checkpoint. Check which file is where in the models folder.")


def _sized_from_state_dict(state_dict, *, source, model_name: str, description: str, read_config, build,
                           dtype, device):
    """A RAIN model whose widths are read off its checkpoint (reduced test files and released ones alike)."""
    _check_kind(state_dict, source=source, expected=model_name)
    try:
        config = read_config(state_dict)
    except KeyError as error:
        raise weights.WeightsError(f"{source}: not a RAIN {description} checkpoint (no {error} key)") from None
    return _fill(lambda: build(config), state_dict, source=source, model_name=model_name, dtype=dtype, device=device)


def video_unet_from_state_dict(state_dict, *, source="motion_unet", dtype=torch.float32, device="cpu") -> VideoUNet:
    return _sized_from_state_dict(state_dict, source=source, model_name="motion_unet", description="denoising UNet",
                                  read_config=UNetConfig.from_state_dict, build=VideoUNet, dtype=dtype, device=device)


def reference_unet_from_state_dict(state_dict, *, source="reference_unet", dtype=torch.float32,
                                   device="cpu") -> ReferenceUNet:
    return _sized_from_state_dict(state_dict, source=source, model_name="reference_unet",
                                  description="reference UNet", read_config=UNetConfig.from_state_dict,
                                  build=ReferenceUNet.from_config_dataclass, dtype=dtype, device=device)


def pose_guider_from_state_dict(state_dict, *, source="pose_guider", dtype=torch.float32, device="cpu") -> PoseGuider:
    return _sized_from_state_dict(state_dict, source=source, model_name="pose_guider", description="pose guider",
                                  read_config=PoseGuiderConfig.from_state_dict, build=PoseGuider, dtype=dtype,
                                  device=device)


def taesdv_from_state_dict(state_dict, *, source="taesdv", dtype=torch.float32, device="cpu") -> TAESDV:
    _check_kind(state_dict, source=source, expected="taesdv")
    return _fill(TAESDV, state_dict, source=source, model_name="taesdv", dtype=dtype, device=device)


def vae_from_state_dict(state_dict, config: dict | None = None, *, source="vae", dtype=torch.float32, device="cpu"):
    config = config or json.loads(DEFAULT_VAE_CONFIG.read_text())
    _check_kind(state_dict, source=source, expected="sd_vae")
    if is_ldm_layout(state_dict):
        state_dict = ldm_to_diffusers(state_dict, config)
    return _fill(lambda: build_vae(config), state_dict, source=source, model_name="vae", dtype=dtype, device=device)


def _rebuild_position_ids(module: torch.nn.Module) -> None:
    """Meta-built transformers models keep their non-persistent ``position_ids`` table on meta: rebuild it."""
    for owner in module.modules():
        ids = owner._buffers.get("position_ids")
        if ids is not None and ids.is_meta:
            owner._buffers["position_ids"] = torch.arange(ids.shape[-1]).expand(ids.shape).clone()


def image_encoder_from_state_dict(state_dict, config: dict | None = None, *, source="image_encoder",
                                  dtype=torch.float32, device="cpu"):
    config = config or json.loads(DEFAULT_IMAGE_ENCODER_CONFIG.read_text())
    state_dict = {k: v for k, v in state_dict.items() if k not in _BENIGN_EXTRA_KEYS}
    _check_kind(state_dict, source=source, expected="clip_vision")
    return _fill(lambda: build_image_encoder(config), state_dict, source=source, model_name="image_encoder",
                 dtype=dtype, device=device, repair=_rebuild_position_ids)


def _folder_config(folder: Path) -> dict | None:
    config = folder / "config.json"
    return json.loads(config.read_text()) if config.is_file() else None


def _folder_weights(folder: Path, candidates: tuple[str, ...]) -> Path:
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    raise weights.MissingWeightsError(f"{folder} holds none of {', '.join(candidates)}")


def load_vae(path: str | Path, *, dtype=torch.float32, device="cpu"):
    """A diffusers VAE folder, or a single file (diffusers or LDM/ComfyUI layout, sd-vae-ft-mse config)."""
    path = Path(path)
    if path.is_dir():
        file = _folder_weights(path, ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"))
        return vae_from_state_dict(weights.load_state_dict(file), _folder_config(path), source=file, dtype=dtype,
                                   device=device)
    return vae_from_state_dict(weights.load_state_dict(path), None, source=path, dtype=dtype, device=device)


def load_image_encoder(path: str | Path, *, dtype=torch.float32, device="cpu"):
    """A transformers CLIP vision folder, or a single file (ViT-L/14 config of sd-image-variations)."""
    path = Path(path)
    if path.is_dir():
        file = _folder_weights(path, ("model.safetensors", "pytorch_model.bin"))
        return image_encoder_from_state_dict(weights.load_state_dict(file), _folder_config(path), source=file,
                                             dtype=dtype, device=device)
    return image_encoder_from_state_dict(weights.load_state_dict(path), None, source=path, dtype=dtype,
                                         device=device)


def load_models(models_dir: str | Path, *, device="cpu", dtype=torch.float32, reference: bool = True,
                decoders: tuple[str, ...] = ("taesdv", "vae"), vae_path: str | Path | None = None,
                image_encoder_path: str | Path | None = None) -> RainModels:
    """Load what a stream needs from a models folder (see README for the layout).

    ``reference=False`` skips the reference UNet and CLIP (a stream can run from a saved reference);
    ``decoders`` picks which decoders to load. Missing files raise one error that names all of them.
    """
    needed = ["motion_unet", "pose_guider"]
    if reference:
        needed.append("reference_unet")
        if image_encoder_path is None:
            needed.append("image_encoder")
    if "vae" in decoders or reference:
        if vae_path is None:
            needed.append("vae")
    if "taesdv" in decoders:
        needed.append("taesdv")
    paths = weights.require_weights(models_dir, needed)

    def state(name):
        return weights.load_state_dict(paths[name])

    common = dict(dtype=dtype, device=device)
    models = RainModels(
        video_unet=video_unet_from_state_dict(state("motion_unet"), source=paths["motion_unet"], **common),
        pose_guider=pose_guider_from_state_dict(state("pose_guider"), source=paths["pose_guider"], **common))
    if reference:
        models.reference_unet = reference_unet_from_state_dict(state("reference_unet"),
                                                               source=paths["reference_unet"], **common)
        models.image_encoder = load_image_encoder(image_encoder_path or paths["image_encoder"], **common)
    if "vae" in decoders or reference:
        models.vae = load_vae(vae_path or paths["vae"], **common)
    if "taesdv" in decoders:
        models.taesdv = taesdv_from_state_dict(state("taesdv"), source=paths["taesdv"], **common)
    return models
