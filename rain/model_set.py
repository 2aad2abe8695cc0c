"""What a model set says about itself: ``rain_model_set.json`` next to its denoiser (optional).

Released checkpoints carry no declaration. ``python -m rain make-tiny-models`` writes one for its reduced
random weights, so the CLI and the nodes can follow it instead of the sizes a workflow or a default asks for:

    {"native_size": {"width": 128, "height": 128}, "reduced_random_weights": true,
     "denoiser": {"file": "motion_unet.pth", "bytes": 40247008}}

``native_size``: the frame size the set is meant to run at; a request of another size is scaled to about
that many pixels, keeping its aspect (``fit``), and said so. ``reduced_random_weights``: the weights are random stand-ins, their output is structured noise.
A set a training run exports also says what it is: ``"task": "depth", "stage": "distill3d", "training": {…}``
(the dataset's frame size is its ``native_size``); loaders warn when a run draws other conditions than it was
trained on. ``denoiser``: the file described; when real weights replace it, the declaration no longer applies and is
ignored (with a warning), so it can never shrink a real model's frames.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .messages import describe_error

DECLARATION_FILE = "rain_model_set.json"

log = logging.getLogger(__name__)


class ModelSetDeclarationError(ValueError):
    """A declaration file that cannot be read; the message names it and says what to do."""


@dataclass(frozen=True)
class ModelSetDeclaration:
    path: Path
    native_size: tuple[int, int] | None = None   # (height, width)
    reduced_random_weights: bool = False
    task: str | None = None                      # what a trained set was trained on: face, body or depth
    stage: str | None = None                     # the training stage that exported it

    def check_task(self, task: str, where: str) -> str | None:
        """A warning when ``task`` (face / body / depth; pose images fit any set) is not what the set was trained
        on, or None."""
        if self.task is None or task in (None, "pose") or task == self.task:
            return None
        return (f"{where}: the model set {self.path.parent} was trained for '{self.task}' conditions "
                f"({self.path.name}), but this run draws '{task}' conditions; the output will not follow them "
                f"well. Pick the set trained for {task}, or the task '{self.task}'.")

    def describe_size(self) -> str:
        return "" if self.native_size is None else f"{self.native_size[1]}×{self.native_size[0]}"

    def fit(self, height: int, width: int) -> tuple[int, int]:
        """The frame size to render for a request of ``height``×``width``: the request when there is no native
        size; else about the native size's pixel count at the request's aspect (a portrait request stays
        portrait), sides multiples of 8 and at least 64."""
        if self.native_size is None:
            return int(height), int(width)
        native_h, native_w = self.native_size
        if height * native_w == width * native_h:
            return native_h, native_w
        scale = ((native_h * native_w) / (height * width)) ** 0.5

        def side(value: float) -> int:
            return max(64, int(round(value * scale / 8)) * 8)
        return side(height), side(width)


def declaration_path(denoiser: str | os.PathLike) -> Path:
    return Path(denoiser).parent / DECLARATION_FILE


def read_declaration(denoiser: str | os.PathLike | None) -> ModelSetDeclaration | None:
    """The declaration of the set whose denoiser file is ``denoiser``, or None when it has none (or it
    describes another file)."""
    if denoiser is None:
        return None
    denoiser = Path(denoiser)
    path = declaration_path(denoiser)
    if not path.is_file():
        return None
    fix = f"Fix or delete {path} (it only describes the set; the weights load without it)."
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelSetDeclarationError(f"{path} is not readable JSON ({describe_error(error)}). {fix}") from None
    if not isinstance(data, dict):
        raise ModelSetDeclarationError(f"{path} must hold a JSON object. {fix}")
    described = data.get("denoiser")
    if isinstance(described, dict) and denoiser.is_file():
        if described.get("file") == denoiser.name and described.get("bytes") != denoiser.stat().st_size:
            log.warning("%s describes another %s (%s bytes, this one has %d); ignored: delete it if the real "
                        "weights replaced the reduced ones", path, denoiser.name, described.get("bytes"),
                        denoiser.stat().st_size)
            return None
        if described.get("file") not in (None, denoiser.name):
            return None
    size = data.get("native_size")
    native = None
    if size is not None:
        try:
            width, height = int(size["width"]), int(size["height"])
        except (TypeError, KeyError, ValueError):
            raise ModelSetDeclarationError(f"{path}: native_size must look like {{\"width\": 128, \"height\": "
                                           f"128}}, got {size!r}. {fix}") from None
        if width < 64 or height < 64 or width % 8 or height % 8:
            raise ModelSetDeclarationError(f"{path}: native_size {width}×{height} is not a RAIN frame size "
                                           f"(multiples of 8, at least 64). {fix}")
        native = (height, width)
    task = data.get("task") if isinstance(data.get("task"), str) else None
    stage = data.get("stage") if isinstance(data.get("stage"), str) else None
    return ModelSetDeclaration(path, native, bool(data.get("reduced_random_weights", False)), task, stage)


def write_declaration(denoiser: str | os.PathLike, *, native_size: tuple[int, int] | None,
                      reduced_random_weights: bool, task: str | None = None, stage: str | None = None,
                      training: dict | None = None) -> Path:
    """Write ``rain_model_set.json`` next to the denoiser file it describes; ``native_size`` is (height, width).
    A trained set also records its ``task``, the ``stage`` that exported it and the ``training`` config."""
    denoiser = Path(denoiser)
    data: dict = {}
    if native_size is not None:
        data["native_size"] = {"width": int(native_size[1]), "height": int(native_size[0])}
    data["reduced_random_weights"] = bool(reduced_random_weights)
    if task is not None:
        data["task"] = task
    if stage is not None:
        data["stage"] = stage
    if training is not None:
        data["training"] = training
    data["denoiser"] = {"file": denoiser.name, "bytes": denoiser.stat().st_size}
    path = declaration_path(denoiser)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path
