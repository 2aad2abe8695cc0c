"""Optional modules: imported when a feature needs them, with one message that says how to get them.

A module that is not installed names the pack's extra that brings it (and the plain packages, for a ComfyUI
Python where the pack is not pip-installed); a module that is installed but fails to import (a CUDA library
missing, a build for another Python) shows the real ImportError, never "not installed".
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from pathlib import Path

from .shell import pip_command

#: module -> (the pack's extra that installs it, the packages to pip install without the extra)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnx": ("onnx", ("onnx", "onnxscript")),
    "onnxscript": ("onnx", ("onnx", "onnxscript")),
    "tensorrt": ("tensorrt", ("tensorrt",)),
    "onnxruntime": ("standalone", ("onnxruntime",)),
    "cv2": ("standalone", ("opencv-python-headless",)),
    "ray": ("farm", ("ray>=2.12",)),
}

#: Distributions that provide one module: installing a second one over the first replaces its files.
PROVIDERS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                    "onnxruntime-silicon", "onnxruntime-qnn", "onnxruntime-training"),
    "cv2": ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"),
}

_PACK_ROOT = Path(__file__).resolve().parent.parent


class OptionalModuleMissing(ImportError):
    """An optional module a feature needs is not installed or does not import; the message says what to do."""


def install_hint(module: str) -> str:
    """The command that installs ``module``: the pack's extra from a clone, else the plain packages."""
    extra, packages = EXTRAS.get(module, (None, (module,)))
    plain = pip_command("install", *packages)
    if extra and (_PACK_ROOT / "pyproject.toml").is_file():
        return f"{pip_command('install', f'{_PACK_ROOT}[{extra}]')} (the pack's extra '{extra}'), or {plain}"
    if extra:
        return f"{plain} (what the pack's extra '{extra}' installs)"
    return plain


def installed_distributions(names) -> list[str]:
    found = []
    for name in names:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def import_optional(module: str, purpose: str):
    """``import module``, or :class:`OptionalModuleMissing` saying ``purpose`` needs it and how to get it."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise OptionalModuleMissing(f"{purpose} needs the Python module '{module}', which is not installed: "
                                    f"{install_hint(module)}")
    try:
        return importlib.import_module(module)
    except Exception as error:   # installed but broken: say what broke, not "not installed"
        raise OptionalModuleMissing(
            f"{purpose} needs '{module}', which is installed but failed to import "
            f"({type(error).__name__}: {error}). Reinstall a build that matches this machine "
            f"({install_hint(module)}), or see the error above.") from error


def conflicting_providers(module: str) -> list[str]:
    """Installed distributions that all write ``module``'s files (e.g. onnxruntime next to onnxruntime-gpu):
    the one installed last decides which build runs, and uninstalling either one breaks the module."""
    found = installed_distributions(PROVIDERS.get(module, ()))
    return found if len(found) > 1 else []


def provider_conflict_message(module: str) -> str | None:
    found = conflicting_providers(module)
    if not found:
        return None
    keep = next((d for d in found if d.endswith(("-gpu", "-directml", "-openvino"))), None) \
        or next((d for d in found if d == "opencv-contrib-python"), None) \
        or next((d for d in found if d == "opencv-python"), found[0])
    return (f"{' and '.join(found)} are all installed and share the module '{module}', so one overwrote the "
            f"other's files. Keep one: {pip_command('uninstall', '-y', *found)} then "
            f"{pip_command('install', keep)}")


#: What the pack needs from each shared-module family when none is installed (the CPU/headless builds: a GPU
#: onnxruntime needs CUDA libraries matching the user's, so it is the user's choice, never ours to force).
RUNTIME_DEFAULTS = {"onnxruntime": "onnxruntime", "cv2": "opencv-python-headless"}


def runtime_packages_to_install() -> list[str]:
    """The default builds of onnxruntime / OpenCV to install, only for the families with no build at all: a
    user's onnxruntime-gpu or full opencv-python is kept (``install.py``, which ComfyUI-Manager runs)."""
    return [default for module, default in RUNTIME_DEFAULTS.items()
            if not installed_distributions(PROVIDERS[module]) and importlib.util.find_spec(module) is None]
