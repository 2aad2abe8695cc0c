"""The DWPose ONNX files: what they are, where to download them, and where they are looked for.

Plain data for the download command (``python -m rain download --dwpose`` in :mod:`rain.weights`) plus
:func:`locate_dwpose_models`, which also finds copies that comfyui_controlnet_aux already downloaded into its
``ckpts/<hub repo>/<file>`` folders, so users do not keep two copies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

#: Default pair, downloaded by ``python -m rain download --dwpose`` into ``<models>/dwpose/``.
#: ``size_mb`` is approximate (used for progress/disk-space messages, not for validation).
DWPOSE_FILES: list[dict] = [
    {"name": "yolox_l.onnx", "role": "detector", "repo_id": "yzd-v/DWPose", "filename": "yolox_l.onnx",
     "subdir": "dwpose", "size_mb": 217,
     "description": "YOLOX-L person detector, input images [1,3,640,640] -> output [1,8400,85]"},
    {"name": "dw-ll_ucoco_384.onnx", "role": "pose", "repo_id": "yzd-v/DWPose", "filename": "dw-ll_ucoco_384.onnx",
     "subdir": "dwpose", "size_mb": 134,
     "description": "DWPose-L whole body (133 points, SimCC), input [1,3,384,288] -> simcc_x/simcc_y"},
]

#: Alternatives the code accepts when present.  The official RAIN README names yolox_s (Megvii GitHub release
#: 0.1.1rc0, also mirrored on the hub) with dw-mm_ucoco; they are smaller and faster, slightly less accurate.
DWPOSE_ALTERNATIVES: list[dict] = [
    {"name": "yolox_s.onnx", "role": "detector", "repo_id": "hr16/yolox-onnx", "filename": "yolox_s.onnx",
     "subdir": "dwpose", "size_mb": 36,
     "url": "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_s.onnx",
     "description": "YOLOX-S person detector (what the official RAIN demo uses)"},
    {"name": "yolox_m.onnx", "role": "detector", "repo_id": "hr16/yolox-onnx", "filename": "yolox_m.onnx",
     "subdir": "dwpose", "size_mb": 97, "description": "YOLOX-M person detector"},
    {"name": "dw-mm_ucoco.onnx", "role": "pose", "repo_id": "hr16/UnJIT-DWPose", "filename": "dw-mm_ucoco.onnx",
     "subdir": "dwpose", "size_mb": 72,
     "description": "DWPose-M whole body, input [1,3,256,192] (what the official RAIN demo uses)"},
    {"name": "dw-ll_ucoco.onnx", "role": "pose", "repo_id": "hr16/UnJIT-DWPose", "filename": "dw-ll_ucoco.onnx",
     "subdir": "dwpose", "size_mb": 134, "description": "DWPose-L whole body, input [1,3,256,192]"},
    {"name": "dw-ss_ucoco.onnx", "role": "pose", "repo_id": "hr16/UnJIT-DWPose", "filename": "dw-ss_ucoco.onnx",
     "subdir": "dwpose", "size_mb": 22, "description": "DWPose-S whole body, input [1,3,256,192]"},
]

#: Preference order when several files are present and none is named explicitly.
DETECTOR_PREFERENCE = ("yolox_l.onnx", "yolox_m.onnx", "yolox_s.onnx")
POSE_PREFERENCE = ("dw-ll_ucoco_384.onnx", "dw-ll_ucoco.onnx", "dw-mm_ucoco.onnx", "dw-ss_ucoco.onnx")

MODELS_SUBDIR = "dwpose"
DOWNLOAD_COMMAND = "python -m rain download --dwpose"

_CATALOGUE = {entry["name"]: entry for entry in DWPOSE_FILES + DWPOSE_ALTERNATIVES}
_AUX_PACK = "comfyui_controlnet_aux"


class DWPoseModelsNotFound(FileNotFoundError):
    """The DWPose ONNX files are not where they were looked for; the message says what to do."""


def hub_url(name: str) -> str:
    """Direct download address of a catalogued file."""
    entry = _CATALOGUE[name]
    return f"https://huggingface.co/{entry['repo_id']}/resolve/main/{entry['filename']}"


def comfyui_root(models_dir: str | os.PathLike | None) -> Path | None:
    """The ComfyUI folder a models folder belongs to: ``<ComfyUI>`` for ``<ComfyUI>/models/rain`` or
    ``<ComfyUI>/models`` (a ComfyUI install has a ``custom_nodes`` folder next to ``models``); None for a
    standalone models folder."""
    if models_dir is None:
        return None
    folder = Path(models_dir).absolute()  # not resolved: models/rain may be a link to a folder elsewhere
    if folder.name == "rain" and folder.parent.name == "models":
        folder = folder.parent
    if folder.name == "models" and (folder.parent / "custom_nodes").is_dir():
        return folder.parent
    return None


def controlnet_aux_ckpts_dirs(models_dir: str | os.PathLike | None) -> list[Path]:
    """comfyui_controlnet_aux checkpoint roots that may already hold the files: its ``AUX_ANNOTATOR_CKPTS_PATH``
    override, and ``<ComfyUI>/custom_nodes/comfyui_controlnet_aux/ckpts`` when ``models_dir`` is (in) a
    ComfyUI models folder."""
    roots: list[Path] = []
    env = os.environ.get("AUX_ANNOTATOR_CKPTS_PATH")
    if env:
        roots.append(Path(env))
    comfy_root = comfyui_root(models_dir)
    if comfy_root is not None:
        roots.append(comfy_root / "custom_nodes" / _AUX_PACK / "ckpts")
    return roots


def candidate_paths(name: str, models_dir: str | os.PathLike | None,
                    extra_dirs: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Every place ``name`` is looked for, in order."""
    places: list[Path] = []
    if models_dir is not None:
        places += [Path(models_dir) / MODELS_SUBDIR / name, Path(models_dir) / name]
    places += [Path(d) / name for d in extra_dirs]
    entry = _CATALOGUE.get(name)
    for root in controlnet_aux_ckpts_dirs(models_dir):
        repos = [entry["repo_id"]] if entry else []
        # The aux pack fetches some files from other mirrors (e.g. yolox_l also from hr16/yolox-onnx).
        repos += [r for r in ("yzd-v/DWPose", "hr16/yolox-onnx", "hr16/UnJIT-DWPose") if r not in repos]
        places += [root.joinpath(*repo.split("/"), name) for repo in repos]
    return places


def _first_existing(names: Iterable[str], models_dir, extra_dirs) -> Path | None:
    for name in names:
        for path in candidate_paths(name, models_dir, extra_dirs):
            if path.is_file():
                return path
    return None


def locate_dwpose_models(models_dir: str | os.PathLike | None = None, *, detector: str | None = None,
                         pose: str | None = None, extra_dirs: Sequence[str | os.PathLike] = ()
                         ) -> tuple[Path, Path]:
    """Find (detector, pose) ONNX paths.

    ``detector`` / ``pose``: a file name (looked up in the usual places) or a path to an existing file; ``None``
    takes the first present file in :data:`DETECTOR_PREFERENCE` / :data:`POSE_PREFERENCE`.
    Raises :class:`DWPoseModelsNotFound` naming the missing files, the folder to put them in and how to get them.
    """
    found: dict[str, Path | None] = {}
    wanted: dict[str, tuple[str, ...]] = {}
    for role, choice, preference in (("detector", detector, DETECTOR_PREFERENCE), ("pose", pose, POSE_PREFERENCE)):
        if choice is not None and Path(choice).is_file():
            found[role] = Path(choice)
            continue
        names = (Path(choice).name,) if choice is not None else preference
        wanted[role] = names
        found[role] = _first_existing(names, models_dir, extra_dirs)
    missing = [role for role, path in found.items() if path is None]
    if missing:
        raise DWPoseModelsNotFound(_missing_message(missing, wanted, models_dir, extra_dirs))
    return found["detector"], found["pose"]


def download_command(models_dir: str | os.PathLike | None) -> str:
    """The command that downloads the default pair into ``<models_dir>/dwpose`` (where it is looked for)."""
    from ..shell import rain_command
    if models_dir is None:
        return rain_command("download", "--dwpose") + " --models-dir <models folder>"
    return rain_command("download", "--dwpose", "--models-dir", str(Path(models_dir).absolute()))


def _missing_message(missing: list[str], wanted: dict[str, tuple[str, ...]], models_dir, extra_dirs) -> str:
    target = Path(models_dir) / MODELS_SUBDIR if models_dir is not None else Path("<models folder>") / MODELS_SUBDIR
    lines = ["DWPose model files not found:"]
    for role in missing:
        names = wanted[role]
        first = names[0]
        url = hub_url(first) if first in _CATALOGUE else "(not a catalogued file name)"
        alternatives = f" (or any of {', '.join(names[1:])})" if len(names) > 1 else ""
        lines.append(f"  - {role}: {first}{alternatives} - download: {url}")
    lines.append(f"Put them in {target}, or run `{download_command(models_dir)}` (in the ComfyUI-RAIN folder).")
    searched = [str(p) for p in ([target] + [Path(d) for d in extra_dirs] + controlnet_aux_ckpts_dirs(models_dir))]
    lines.append("Looked in: " + "; ".join(searched)
                 + " (copies downloaded by comfyui_controlnet_aux under ckpts/<hub repo>/ are used too).")
    return "\n".join(lines)
