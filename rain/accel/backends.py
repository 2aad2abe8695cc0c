"""Choosing how the fused stream step runs: the one factory behind ``open_stream(backend=...)``, the CLI's
``--backend`` and the ComfyUI engine node.

* ``eager`` — the fused step in plain PyTorch (the reference every other backend is checked against);
* ``compiled`` — ``torch.compile``, replayed as a CUDA graph on a GPU (``rain.accel.compiled``);
* ``onnx`` — exported to ONNX and run by onnxruntime (CPU, or CUDA with onnxruntime-gpu);
* ``tensorrt`` — a TensorRT engine built from that ONNX graph and cached; without ``tensorrt`` installed it
  says how to install it and falls back to ``compiled``.

What is built (compiled code, ONNX session, engine) is kept on the pipeline per backend, model dtype, frame
size, window settings, reference token count and temporal strength, and reused by every later stream; each
stream gets its own buffers. Exported graphs and engines are also kept on disk (``rain.accel.cache``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ..sampling.stream import StreamSettings
from .cache import ArtefactCache, graph_parts, weights_fingerprint
from .fused_step import FusedStreamStep
from .onnx_export import OPSET, export_step
from .runners import FusedSteadyStep, eager_steady_step
from .tensorrt_engine import Progress, tensorrt_module, unavailable_message

log = logging.getLogger(__name__)

BACKENDS = ("eager", "compiled", "onnx", "tensorrt")
CACHE_FOLDER = "tensorrt"


def default_cache_dir(pipeline) -> Path:
    """``<models dir>/tensorrt`` (ComfyUI: ``models/rain/tensorrt``): engines, and the ONNX graphs in ``onnx/``."""
    if pipeline.models_dir is None:
        raise ValueError("this pipeline was not loaded from a models folder: pass cache_dir=… to say where "
                         "exported graphs and engines are kept")
    return Path(pipeline.models_dir) / CACHE_FOLDER


GPU_ONLY_MESSAGE = ("TensorRT engines run only on an NVIDIA GPU with CUDA, and this stream runs on {device}; it uses the "
                    "'{fallback}' backend instead (on a CPU the 'onnx' backend is the fast one)")
NO_TRITON_MESSAGE = ("the 'compiled' backend on a GPU needs Triton (torch.compile's GPU code generator), which is not "
                     "installed here (ComfyUI's Windows portable build has none: {install}); the stream runs with "
                     "the 'eager' backend instead")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, *, notify: Callable[[str], None] = log.warning, device=None) -> str:
    """The backend that will really run on ``device``, saying once why when it is not the one asked for:
    ``tensorrt`` needs an NVIDIA GPU (else ``eager``) and the tensorrt module (else ``compiled``, with the
    install command or the real import error); ``compiled`` on a GPU needs Triton (else ``eager``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    on_gpu = device is None or torch.device(device).type == "cuda"
    if backend == "tensorrt" and tensorrt_module() is None:
        if not on_gpu:
            notify(GPU_ONLY_MESSAGE.format(device=torch.device(device).type, fallback="eager"))
            return "eager"
        notify(unavailable_message())
        backend = "compiled"
    if backend == "compiled" and device is not None and on_gpu and not triton_available():
        from ..shell import pip_command
        install = pip_command("install", "triton-windows" if os.name == "nt" else "triton")
        notify(NO_TRITON_MESSAGE.format(install=install))
        return "eager"
    return backend


def fused_step_for(pipeline, settings: StreamSettings, constants: dict[str, torch.Tensor]) -> FusedStreamStep:
    """The fused step over the pipeline's models for these settings (TAESDV inside when it decodes)."""
    models = pipeline.models
    if settings.steps_per_group != 1:
        raise ValueError("the fused steady-state step does one LCM step per group; use steps_per_group=1 or the "
                         "eager backend")
    return FusedStreamStep(models.video_unet, models.pose_guider,
                           models.taesdv if settings.decoder == "taesdv" else None,
                           [name for name in constants if name != "temb"],
                           frames_per_group=settings.frames_per_group, num_groups=settings.num_groups)


def shape_only_constants(pipeline, settings: StreamSettings, height: int, width: int, *,
                          references: int = 1) -> dict[str, torch.Tensor]:
    """Constants of the right shapes (zeros) for building a backend before any reference is fused: what is
    built depends only on shapes, and each stream hands in its own reference's constants."""
    from ..models.reference_attention import feature_shapes
    unet = pipeline.models.video_unet
    weight = unet.conv_in.weight
    features = {name: torch.zeros(shape, device=weight.device, dtype=weight.dtype)
                for name, shape in feature_shapes(unet, height, width, references).items()}
    context = torch.zeros(1, 1, unet.config.cross_attention_dim, device=weight.device, dtype=weight.dtype)
    from .fused_step import steady_constants
    return steady_constants(unet, features, context, guidance_scale=settings.guidance_scale,
                            frames_per_group=settings.frames_per_group, num_groups=settings.num_groups)


def _fingerprint(pipeline) -> str:
    # Hashing ~2.7 GB of weights takes seconds: once per loaded model set.
    if "weights_fingerprint" not in pipeline.accelerated:
        models = pipeline.models
        pipeline.accelerated["weights_fingerprint"] = weights_fingerprint(
            {"video_unet": models.video_unet, "pose_guider": models.pose_guider, "taesdv": models.taesdv})
    return pipeline.accelerated["weights_fingerprint"]


def _exporter(step: FusedStreamStep, height: int, width: int, constants, graph: dict, cache_dir: Path,
              progress: Progress | None) -> Callable[[], Path]:
    """A function that returns the ONNX graph for ``graph`` parts, exporting it first if it is not cached."""
    def export() -> Path:
        cache = ArtefactCache(Path(cache_dir) / "onnx")
        folder = cache.find(graph, "")
        if folder is not None:
            return folder / "rain_step.onnx"
        if progress is not None:
            progress("exporting the stream step to ONNX", None)
        example = tuple(t.clone() for t in step.example_inputs(height, width, constants))
        path = export_step(step, example, cache.path(graph, ""))
        cache.describe(graph, path.parent)
        return path
    return export


def build_backend(pipeline, backend: str, settings: StreamSettings, height: int, width: int,
                  constants: dict[str, torch.Tensor], *, cache_dir: str | Path | None = None,
                  progress: Progress | None = None, cancelled: Callable[[], bool] | None = None,
                  rebuild: bool = False, notify: Callable[[str], None] = log.warning, **options):
    """The built artefact for a backend (cached on the pipeline): has ``backend`` and ``steady_step(constants)``."""
    backend = resolve_backend(backend, notify=notify, device=pipeline.device)
    unet = pipeline.models.video_unet
    unet.set_temporal_strength(settings.temporal_strength)  # baked into compiled graphs and engines
    key = (backend, str(pipeline.dtype), str(pipeline.device), height, width, settings.frames_per_group,
           settings.num_groups, settings.decoder == "taesdv", float(settings.temporal_strength),
           tuple((name, tuple(value.shape)) for name, value in constants.items()))
    if not rebuild and key in pipeline.accelerated:
        return pipeline.accelerated[key]
    step = fused_step_for(pipeline, settings, constants)
    if backend == "eager":
        built = _EagerStep(step, height, width)
    elif backend == "compiled":
        from .compiled import CompiledStep
        built = CompiledStep(step, height, width, constants, **options)
    else:
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(pipeline)
        specs = step.specs(height, width, constants)
        graph = graph_parts(*specs, weights=_fingerprint(pipeline), temporal_strength=settings.temporal_strength,
                            opset=OPSET)
        export = _exporter(step, height, width, constants, graph, cache_dir, progress)
        if backend == "onnx":
            from .onnx_export import OnnxStep
            built = OnnxStep(step, export(), height, width, constants)
        else:
            from .tensorrt_engine import TensorRTStep
            built = TensorRTStep(tensorrt_module(), step, height, width, constants, graph=graph,
                                 cache_dir=cache_dir, export=export, progress=progress, cancelled=cancelled,
                                 rebuild=rebuild)
    pipeline.accelerated[key] = built
    return built


def steady_step_for(pipeline, backend: str, settings: StreamSettings, height: int, width: int,
                    constants: dict[str, torch.Tensor], **options) -> FusedSteadyStep:
    """A per-stream fused steady step of ``backend`` (see ``build_backend``)."""
    return build_backend(pipeline, backend, settings, height, width, constants, **options).steady_step(constants)


class PrintedProgress:
    """A ``Progress`` for terminals: each phase once, then every tenth of it (TensorRT builds take minutes)."""

    def __init__(self, write: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)):
        self.write = write
        self._last: tuple[str, int] | None = None

    def __call__(self, message: str, fraction: float | None) -> None:
        tenth = -1 if fraction is None else int(fraction * 10)
        if self._last is not None and self._last[0] == message and self._last[1] == tenth:
            return
        self._last = (message, tenth)
        self.write(message if fraction is None else f"{message}: {100 * fraction:.0f}%")


class _EagerStep:
    backend = "eager"

    def __init__(self, step: FusedStreamStep, height: int, width: int):
        self.step, self.height, self.width = step, height, width

    def steady_step(self, constants):
        return eager_steady_step(self.step, self.height, self.width, constants)
