"""From checkpoint files to ready models: the one place that knows both the file layout
(``weights``) and the model classes (``models``).

Big models are built on the meta device and filled straight from the checkpoint, so loading the
released 1.3 B-parameter denoiser costs no random initialisation. Widths are read off the files,
so the reduced-size test models and the released ones load through the same code.
"""

import functools
import json
from collections.abc import Callable
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
from .messages import describe_error

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


@dataclass
class _Plan:
    """What a checkpoint becomes: the model to build (its sizes already checked) and the tensors that fill it."""
    model_name: str
    build: Callable[[], torch.nn.Module]
    state_dict: dict
    repair: Callable[[torch.nn.Module], None] | None = None


def _on_meta(plan: _Plan, *, source, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The model built without memory, after checking that the file's keys and shapes fit it exactly."""
    try:
        with torch.device("meta"):
            module = plan.build()
    except Exception as error:  # a library's own size check, on sizes that came from the file
        raise weights.WeightsError(f"Weights file {source}: a {plan.model_name} model cannot be built with the "
                                   f"sizes read from it or its config ({describe_error(error)}).\n"
                                   f"{weights.redownload_hint(source)}") from error
    # nn.Module.to, not diffusers' ModelMixin.to, which warns about fp32-pinned modules these models lack.
    module = torch.nn.Module.to(module, dtype)
    weights.check_fits(module, plan.state_dict, source=source, model_name=plan.model_name)
    return module


def _fill(plan: _Plan, *, source, dtype: torch.dtype, device: torch.device | str) -> torch.nn.Module:
    module = _on_meta(plan, source=source, dtype=dtype)
    weights.load_strict(module, _floats_to(plan.state_dict, dtype), source=source, model_name=plan.model_name)
    if plan.repair is not None:
        plan.repair(module)
    leftovers = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftovers:
        raise weights.WeightsError(f"{source}: {plan.model_name} has tensors the checkpoint does not provide: "
                                   f"{leftovers[:5]}")
    return torch.nn.Module.to(module, device).eval().requires_grad_(False)


def _check_kind(state_dict: dict, *, source, expected: str) -> None:
    kind = weights.identify_checkpoint(state_dict)
    if kind is not None and kind != expected:
        raise weights.WeightsError(f"{source} does not hold the {expected} weights: it looks like a {kind} "
                                   f"checkpoint. Check which file is where in the models folder.")


@functools.cache
def _released_config(model_name: str, read_config):
    """The sizes ``read_config`` reads off the released file (its manifest, as shapes without data)."""
    shapes = weights.manifest_shapes(model_name)
    return read_config({key: torch.empty(shape, device="meta") for key, shape in shapes.items()})


def _plan_sized(state_dict, *, source, model_name: str, description: str, read_config, build) -> _Plan:
    """A RAIN model whose widths are read off its checkpoint (reduced test files and released ones alike).

    Shapes are checked before anything is built: ranks against the manifest (every size keeps them), the
    widths by the reader, and a file in the released sizes against the manifest key by key. What remains
    (each key consistent with the widths read) is checked against the model built on the meta device.
    """
    _check_kind(state_dict, source=source, expected=model_name)
    weights.check_ranks(state_dict, model_name, source=source)
    try:
        config = read_config(state_dict)
    except KeyError as error:
        raise weights.WeightsError(f"{source}: not a RAIN {description} checkpoint (no {error} key)") from None
    except ValueError as error:
        released = weights.compare_keys(state_dict, weights.manifest_shapes(model_name))
        if len(released.wrong_shape) <= len(state_dict) // 10:  # the released file but for a few tensors
            weights.check_manifest(state_dict, model_name, source=source)
        raise weights.WeightsError(f"Weights file {source} does not fit the {model_name} model: {error}.\n"
                                   f"{weights.redownload_hint(source)}") from None
    if config == _released_config(model_name, read_config):
        weights.check_manifest(state_dict, model_name, source=source)
    return _Plan(model_name, lambda: build(config), state_dict)


def _plan_video_unet(state_dict, source) -> _Plan:
    return _plan_sized(state_dict, source=source, model_name="motion_unet", description="denoising UNet",
                       read_config=UNetConfig.from_state_dict, build=VideoUNet)


def _plan_reference_unet(state_dict, source) -> _Plan:
    return _plan_sized(state_dict, source=source, model_name="reference_unet", description="reference UNet",
                       read_config=UNetConfig.from_state_dict, build=ReferenceUNet.from_config_dataclass)


def _plan_pose_guider(state_dict, source) -> _Plan:
    return _plan_sized(state_dict, source=source, model_name="pose_guider", description="pose guider",
                       read_config=PoseGuiderConfig.from_state_dict, build=PoseGuider)


def _plan_taesdv(state_dict, source) -> _Plan:
    _check_kind(state_dict, source=source, expected="taesdv")
    weights.check_manifest(state_dict, "taesdv", source=source)  # one size only: the released one
    return _Plan("taesdv", TAESDV, state_dict)


def _plan_vae(state_dict, config: dict | None, source) -> _Plan:
    config = config or json.loads(DEFAULT_VAE_CONFIG.read_text(encoding="utf-8"))
    _check_kind(state_dict, source=source, expected="sd_vae")
    if is_ldm_layout(state_dict):
        state_dict = ldm_to_diffusers(state_dict, config)
    return _Plan("vae", lambda: build_vae(config), state_dict)


def _plan_image_encoder(state_dict, config: dict | None, source) -> _Plan:
    config = config or json.loads(DEFAULT_IMAGE_ENCODER_CONFIG.read_text(encoding="utf-8"))
    state_dict = {k: v for k, v in state_dict.items() if k not in _BENIGN_EXTRA_KEYS}
    _check_kind(state_dict, source=source, expected="clip_vision")
    return _Plan("image_encoder", lambda: build_image_encoder(config), state_dict, repair=_rebuild_position_ids)


def video_unet_from_state_dict(state_dict, *, source="motion_unet", dtype=torch.float32, device="cpu") -> VideoUNet:
    return _fill(_plan_video_unet(state_dict, source), source=source, dtype=dtype, device=device)


def reference_unet_from_state_dict(state_dict, *, source="reference_unet", dtype=torch.float32,
                                   device="cpu") -> ReferenceUNet:
    return _fill(_plan_reference_unet(state_dict, source), source=source, dtype=dtype, device=device)


def pose_guider_from_state_dict(state_dict, *, source="pose_guider", dtype=torch.float32, device="cpu") -> PoseGuider:
    return _fill(_plan_pose_guider(state_dict, source), source=source, dtype=dtype, device=device)


def taesdv_from_state_dict(state_dict, *, source="taesdv", dtype=torch.float32, device="cpu") -> TAESDV:
    return _fill(_plan_taesdv(state_dict, source), source=source, dtype=dtype, device=device)


def vae_from_state_dict(state_dict, config: dict | None = None, *, source="vae", dtype=torch.float32, device="cpu"):
    return _fill(_plan_vae(state_dict, config, source), source=source, dtype=dtype, device=device)


def _rebuild_position_ids(module: torch.nn.Module) -> None:
    """Meta-built transformers models keep their non-persistent ``position_ids`` table on meta: rebuild it."""
    for owner in module.modules():
        ids = owner._buffers.get("position_ids")
        if ids is not None and ids.is_meta:
            owner._buffers["position_ids"] = torch.arange(ids.shape[-1]).expand(ids.shape).clone()


def image_encoder_from_state_dict(state_dict, config: dict | None = None, *, source="image_encoder",
                                  dtype=torch.float32, device="cpu"):
    return _fill(_plan_image_encoder(state_dict, config, source), source=source, dtype=dtype, device=device)


# Models RAIN loads, by the kind identify_checkpoint gives their files.
_PLANNERS = {
    "motion_unet": lambda state_dict, config, source: _plan_video_unet(state_dict, source),
    "reference_unet": lambda state_dict, config, source: _plan_reference_unet(state_dict, source),
    "pose_guider": lambda state_dict, config, source: _plan_pose_guider(state_dict, source),
    "taesdv": lambda state_dict, config, source: _plan_taesdv(state_dict, source),
    "sd_vae": _plan_vae,
    "clip_vision": _plan_image_encoder,
}


def check_checkpoint(state_dict: dict, *, source) -> str:
    """Every check loading makes, without loading anything: the kind of model the file holds, or WeightsError.

    A VAE or CLIP file is checked against the ``config.json`` beside it (the released config when there is
    none), as ``load_vae`` / ``load_image_encoder`` read it. Lets ``convert`` refuse to write a file that would
    not load.
    """
    kind = weights.identify_checkpoint(state_dict)
    if kind not in _PLANNERS:
        seen = f"it looks like a {kind} checkpoint" if kind else "its keys match no known model"
        raise weights.WeightsError(
            f"{source} is not a checkpoint RAIN loads: {seen}. RAIN loads reference_unet, motion_unet, "
            f"pose_guider, taesdv, an SD VAE and a CLIP image encoder; check that this is the file you meant.")
    config = _folder_config(Path(source).parent) if kind in ("sd_vae", "clip_vision") else None
    _on_meta(_PLANNERS[kind](state_dict, config, source), source=source)
    return kind


def _folder_config(folder: Path) -> dict | None:
    config = folder / "config.json"
    return json.loads(config.read_text(encoding="utf-8")) if config.is_file() else None


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
