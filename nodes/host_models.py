"""The ``models/rain`` folder: registering it with ComfyUI (merged with a user's extra_model_paths.yaml), listing
its files for dropdowns, and resolving a dropdown name to a file that stays inside the folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable

from .host_lookup import comfy_module as _module

log = logging.getLogger("ComfyUI-RAIN")

#: The models folder name: ``<ComfyUI>/models/rain`` plus any ``rain:`` paths from extra_model_paths.yaml.
MODEL_FOLDER = "rain"
#: What the folder lists in dropdowns (``.json`` configs belong to model folders and are found by path).
MODEL_EXTENSIONS = frozenset({".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".sft", ".onnx"})
#: Where models are looked for when there is no ComfyUI (os.pathsep-separated list of folders).
MODELS_DIR_ENV = "RAIN_MODELS_DIR"

_fallback_roots: list[Path] | None = None

def register_model_folder() -> None:
    """Add ``<models_dir>/rain`` to ComfyUI's folder registry, merging with any existing ``rain`` entry (from a
    user's extra_model_paths.yaml or another pack): never replace its paths, only add ours and our extensions."""
    folder_paths = _module("folder_paths")
    if folder_paths is None:
        return
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    registry = folder_paths.folder_names_and_paths
    entry = registry.get(MODEL_FOLDER)
    if entry is None:
        registry[MODEL_FOLDER] = ([default], set(MODEL_EXTENSIONS))
        return
    paths, extensions = entry
    if default not in paths:
        paths.append(default)
    if isinstance(extensions, set):
        extensions.update(MODEL_EXTENSIONS)
    else:
        registry[MODEL_FOLDER] = (paths, set(extensions) | MODEL_EXTENSIONS)


def set_fallback_models_dirs(dirs: Iterable[str | os.PathLike] | None) -> None:
    """Where to look for models when ComfyUI is absent (tests, scripts); None = back to the default."""
    global _fallback_roots
    _fallback_roots = None if dirs is None else [Path(d) for d in dirs]


def model_roots() -> list[Path]:
    """The folders that make up ``models/rain``, in ComfyUI's order."""
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(MODEL_FOLDER)]
        except KeyError:
            return [Path(folder_paths.models_dir) / MODEL_FOLDER]
    if _fallback_roots is not None:
        return list(_fallback_roots)
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [Path(__file__).resolve().parent.parent / "models" / MODEL_FOLDER]


def comfy_models_dir() -> Path | None:
    """``<ComfyUI>/models`` (to find files other packs downloaded), or None outside ComfyUI."""
    folder_paths = _module("folder_paths")
    return Path(folder_paths.models_dir) if folder_paths is not None else None


def list_model_files() -> list[str]:
    """Relative paths of the model files in ``models/rain`` (subfolders included), sorted, for dropdowns."""
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        try:
            listed = folder_paths.get_filename_list(MODEL_FOLDER)
        except KeyError:
            return []
        # ComfyUI on Windows lists 'body\\motion_unet.pth'; workflows store 'body/motion_unet.pth'. One spelling
        # everywhere, or a shared workflow fails validation with "Value not in list" on the other OS.
        return sorted({name.replace("\\", "/") for name in listed})
    found: set[str] = set()
    for root in model_roots():
        if not root.is_dir():
            continue
        inside = root.resolve()
        for path in root.rglob("*"):
            if (path.is_file() and path.suffix.lower() in MODEL_EXTENSIONS and ".git" not in path.parts
                    and path.resolve().is_relative_to(inside)):
                found.add(path.relative_to(root).as_posix())
    return sorted(found)


class ModelNameError(ValueError):
    """A model name (from a workflow or a widget) that would reach outside the models folders."""


def check_model_name(name: str) -> PurePosixPath:
    """``name`` as a relative path, or ``ModelNameError``: absolute paths, ``..`` and NUL are refused.

    Names come from workflows, which anyone can share: like ComfyUI's folder_paths, a name may only point
    inside a models folder."""
    problem = None
    if "\0" in name:
        problem = "contains a NUL character"
    elif not name.strip():
        problem = "is empty"
    else:
        posix = PurePosixPath(name.replace("\\", "/"))
        if posix.is_absolute() or PureWindowsPath(name).drive:
            problem = "is an absolute path"
        elif ".." in posix.parts:
            problem = "contains a '..' component"
    if problem:
        raise ModelNameError(f"Model name {name!r} {problem}; RAIN model names are paths relative to a "
                             f"{MODEL_FOLDER} models folder ({', '.join(str(r) for r in model_roots())}). "
                             f"Pick the file from the list, or put it in that folder.")
    return posix


def _inside(root: Path, relative: PurePosixPath) -> Path | None:
    """``root / relative`` if it is a file that resolves inside ``root``; a link leaving it is refused."""
    candidate = root / relative
    if not candidate.is_file():
        return None
    target = candidate.resolve()
    if not target.is_relative_to(root.resolve()):
        raise ModelNameError(f"{candidate} is a link to {target}, outside the models folder {root}; RAIN only "
                             f"loads files inside its models folders. Move or copy the file into {root}, or add "
                             f"its folder to {MODELS_DIR_ENV}.")
    return candidate


def model_file_path(relative: str) -> Path | None:
    """Absolute path of a dropdown entry, or None when it is in none of the folders.

    Without ComfyUI the name is confined to the folders here (``ModelNameError`` otherwise); ComfyUI's
    ``get_full_path`` confines it itself."""
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        check_model_name(relative)   # before ComfyUI's own check, which judges 'C:x' by the OS it runs on
        try:
            full = folder_paths.get_full_path(MODEL_FOLDER, relative)
        except KeyError:
            full = None
        return Path(full) if full else None
    name = check_model_name(relative)
    for root in model_roots():
        found = _inside(root, name)
        if found is not None:
            return found
    return None
