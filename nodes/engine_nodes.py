"""The accelerated stream in ComfyUI: build (once, cached under models/rain/tensorrt) the engine the sampler
runs its steady-state calls with."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import host, model_set

log = logging.getLogger("ComfyUI-RAIN")

RAIN_ENGINE = "RAIN_ENGINE"
BACKENDS = ["tensorrt", "compiled", "onnx", "eager"]


@dataclass
class RainEngine:
    """The RAIN_ENGINE payload: which backend runs the sampler's steady calls, and where artefacts are kept.
    What is built lives on the model's pipeline (keyed by size and window), so a sampler run with other
    settings builds what it needs itself."""
    model: object
    backend: str            # the backend that runs (tensorrt falls back to compiled without TensorRT)
    requested: str
    cache_dir: str
    messages: list[str] = field(default_factory=list)
    built_for: tuple = ()   # (height, width, frames_per_group, num_groups, temporal_strength)

    def check_fits(self, height: int, width: int, settings, node: str) -> None:
        """Say so when a run streams another size or window than the engine was built for: the engine node's
        engine then goes unused and the run builds (or exports) one for its own shapes, which with TensorRT takes
        minutes."""
        wanted = (int(height), int(width), int(settings.frames_per_group), int(settings.num_groups),
                  float(settings.temporal_strength))
        if self.built_for and wanted != self.built_for and self.backend != "eager":
            h, w, fpg, groups, strength = self.built_for
            log.warning("%s: the engine from Build RAIN TensorRT Engine was built for %d×%d, window %d×%d, "
                        "temporal strength %g; this run streams %d×%d, window %d×%d, temporal strength %g, so an "
                        "engine for these shapes is built now (minutes with TensorRT, then cached). Set the engine "
                        "node to the same values to use the one it built.", node, w, h, fpg, groups, strength,
                        wanted[1], wanted[0], wanted[2], wanted[3], wanted[4])

    def stream_options(self, progress=None) -> dict:
        return {"backend": self.backend, "cache_dir": self.cache_dir, "progress": progress,
                "cancelled": host.interrupt_requested, "notify": log.warning}


#: Where each stage of a build starts on the node's bar (percent): the export, then TensorRT's own phases.
STAGE_FLOORS = (("exporting", 2), ("building the TensorRT engine", 20))


def _progress_reporter(node_id):
    """The build's stages on the node: the bar moves through the export and TensorRT's top-level phases (never
    back), the text under it names the stage; TensorRT's nested phases only change the text."""
    bar = host.progress_bar(100, node_id=node_id)
    reached = [0]

    def progress(message, fraction):
        log.info("RAIN: %s%s", message, "" if fraction is None else f" {100 * fraction:.0f}%")
        value = next((floor for start, floor in STAGE_FLOORS if message.startswith(start)), None)
        if value is None and fraction is not None and message.startswith("TensorRT:") and "(" not in message:
            value = 20 + int(79 * fraction)   # a top-level TensorRT phase
        if value is not None and value > reached[0]:
            reached[0] = value
        bar.update_absolute(reached[0], 100)
        host.progress_text(message if fraction is None else f"{message} {100 * fraction:.0f}%", node_id)
    return progress


class RainBuildEngine:
    DESCRIPTION = ("Builds the fused stream step (pose guider → UNet → LCM step, one graph) for a frame size and "
                   "window, once: a TensorRT engine cached in models/rain/tensorrt/ (rebuilt only when TensorRT, the "
                   "GPU, the shapes, the dtype or the weights change; minutes the first time), or torch.compile with "
                   "CUDA graphs, or onnxruntime. Connect it to the sampler's engine input. The engine's precision is "
                   "the model's dtype (choose fp16 or bf16 on Load RAIN Model). Without TensorRT installed it says "
                   "how to install it and uses 'compiled'.")
    CATEGORY = "RAIN/sampling"
    RETURN_TYPES = (RAIN_ENGINE,)
    RETURN_NAMES = ("engine",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        size = {"min": 64, "max": 4096, "step": 8}
        return {
            "required": {
                "rain_model": ("RAIN_MODEL",),
                "backend": (BACKENDS, {"default": "tensorrt", "tooltip": "tensorrt: fastest on NVIDIA GPUs (needs "
                            "the pack's 'tensorrt' extra); compiled: torch.compile + CUDA graphs; onnx: onnxruntime; "
                            "eager: plain PyTorch."}),
                "width": ("INT", {"default": 512, **size, "tooltip": "Frame width the engine is built for."}),
                "height": ("INT", {"default": 512, **size}),
                "frames_per_group": ("INT", {"default": 4, "min": 1, "max": 16}),
                "num_groups": ("INT", {"default": 4, "min": 1, "max": 16}),
                "temporal_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                                "tooltip": "Baked into the engine; must match the sampler's."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def build(self, rain_model, backend, width, height, frames_per_group, num_groups, temporal_strength,
              unique_id=None):
        from ..rain.accel.backends import build_backend, shape_only_constants, resolve_backend
        from ..rain.pipeline import check_size
        from ..rain.sampling.stream import StreamSettings

        # The sampler renders a set at its declared size: build for the frames it will really stream.
        height, width = model_set.frame_size(rain_model, height, width, "Build RAIN TensorRT Engine")
        check_size(height, width)
        messages: list[str] = []
        resolved = resolve_backend(backend, notify=messages.append, device=rain_model.device)
        for message in messages:
            log.warning("RAIN: %s", message)
        cache_dir = str(host.model_roots()[0] / "tensorrt")
        engine = RainEngine(rain_model, resolved, backend, cache_dir, messages,
                            built_for=(int(height), int(width), int(frames_per_group), int(num_groups),
                                       float(temporal_strength)))
        # The sampler decodes itself (it also outputs latents), so the graph ends at the clean latents.
        settings = StreamSettings(frames_per_group=int(frames_per_group), num_groups=int(num_groups),
                                  temporal_strength=float(temporal_strength), decoder="none")
        rain_model.load("stream")
        pipeline = rain_model.pipeline
        constants = shape_only_constants(pipeline, settings, int(height), int(width))
        options = engine.stream_options(_progress_reporter(unique_id))
        del options["backend"]
        build_backend(pipeline, resolved, settings, int(height), int(width), constants, **options)
        return (engine,)


NODE_CLASS_MAPPINGS = {"RAIN_BuildEngine": RainBuildEngine}
NODE_DISPLAY_NAME_MAPPINGS = {"RAIN_BuildEngine": "Build RAIN TensorRT Engine"}
