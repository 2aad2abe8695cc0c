"""Finding ComfyUI's modules at call time (never cached at import, so a test can swap in a stand-in host)."""

from __future__ import annotations

import importlib
import sys


def comfy_module(name: str):
    """The host module ``name`` if ComfyUI provides it, else None (never raises)."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    if name != "folder_paths" and comfy_module("folder_paths") is None:
        return None  # outside ComfyUI: do not import unrelated packages that happen to be called "comfy"/"server"
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or a host module failing at import outside its app
        return None


def in_comfyui() -> bool:
    return comfy_module("folder_paths") is not None and comfy_module("comfy.model_management") is not None
