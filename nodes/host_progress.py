"""Progress bars with previews, interruption (Cancel), text under a node, and the pack's HTTP routes."""

from __future__ import annotations

import logging
from typing import Callable

from .host_lookup import comfy_module as _module, in_comfyui

log = logging.getLogger("ComfyUI-RAIN")

class Interrupted(Exception):
    """Raised by :func:`check_interrupted` outside ComfyUI after :func:`request_interrupt` (tests, scripts)."""


_interrupt_requested = False


def request_interrupt(value: bool = True) -> None:
    global _interrupt_requested
    _interrupt_requested = value


def check_interrupted() -> None:
    """Raise if the user pressed Cancel (ComfyUI's ``InterruptProcessingException``); call it in every loop."""
    global _interrupt_requested
    mm = _module("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
        return
    if _interrupt_requested:
        _interrupt_requested = False
        raise Interrupted("processing interrupted")


def interrupt_requested() -> bool:
    """Whether the user pressed Cancel, without raising (for work that stops cooperatively, e.g. a TensorRT
    build, which then raises itself)."""
    mm = _module("comfy.model_management")
    if mm is not None:
        return bool(getattr(mm, "processing_interrupted", lambda: False)())
    return _interrupt_requested


class _LocalProgressBar:
    def __init__(self, total: int, node_id=None):
        self.total, self.current, self.node_id = total, 0, node_id
        self.previews = 0

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if preview is not None:
            self.previews += 1

    def update(self, value):
        self.update_absolute(self.current + value)


def progress_bar(total: int, node_id=None):
    """ComfyUI's ProgressBar (each update also checks for interruption) or a local one."""
    utils = _module("comfy.utils") if in_comfyui() else None
    if utils is not None and hasattr(utils, "ProgressBar"):
        return utils.ProgressBar(total, node_id=node_id)
    return _LocalProgressBar(total, node_id)


def preview(image) -> tuple:
    """A preview tuple for ``ProgressBar.update_absolute(..., preview=)`` from a PIL image.

    The third item is the size ComfyUI fits the image into before sending it, scaling up as well as down:
    the image's own longest side keeps it as it is, so the preview (and its label) shows the real frame
    size, not a 64×64 frame blown up to 512×512."""
    return ("JPEG", image, max(image.size))


# -- HTTP routes ---------------------------------------------------------------------------------------------
#: Every route the pack defines, whether or not a server was there to take it: (method, path) -> handler.
ROUTES: dict[tuple[str, str], Callable] = {}


def add_route(method: str, path: str, handler: Callable) -> bool:
    """Register an aiohttp handler on ComfyUI's server (it also answers under ``/api``); True if registered."""
    ROUTES[(method.lower(), path)] = handler
    server = _module("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None) if server is not None else None
    if instance is None:
        return False
    getattr(instance.routes, method.lower())(path)(handler)
    return True



def progress_text(text: str, node_id=None) -> None:
    """A line of text under the node's progress bar (ComfyUI's ``send_progress_text``), else the log."""
    server = _module("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None) if server is not None else None
    send = getattr(instance, "send_progress_text", None)
    if send is not None and node_id is not None:
        send(text, node_id)
    else:
        log.info("RAIN: %s", text)
