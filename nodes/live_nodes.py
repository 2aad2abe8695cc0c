"""The RAIN Live node: running the graph starts (or updates) a live session; the panel on the node (web/
rain_live.js) sends the webcam to it and shows the animated frames.

The session runs in a background thread, outside ComfyUI's queue, so the queue stays free (re-run the graph to
change settings). It uses the models ComfyUI loaded for it; when another prompt makes the memory manager offload
them, the session puts them back before its next call (and restarts its window if they moved during a call) —
see README, "Live".
"""

from __future__ import annotations

import logging
import math

from . import calibration, host
from .model_nodes import DECODERS, RAIN_MODEL, RAIN_REFERENCE
from .pose_nodes import MISSING_POLICIES, PROVIDERS, _onnx_choices, get_detector

log = logging.getLogger("ComfyUI-RAIN")

CATEGORY = "RAIN/live"
TASKS = {"face": "face", "body": "body", "pose images": "pose"}
BACKENDS = ["eager", "compiled", "onnx", "tensorrt"]  # rain.accel.backends.BACKENDS

_registry = None
_routes = None


def registry():
    """The live sessions of this ComfyUI server, one per RAIN Live node (session id ``node-<node id>``)."""
    global _registry
    if _registry is None:
        from ..rain.live.server import LiveRegistry
        _registry = LiveRegistry()
    return _registry


def live_routes():
    """The handlers (engine side, shared with the standalone server): the page's origin only; ComfyUI decides
    which addresses it listens on."""
    global _routes
    if _routes is None:
        from ..rain.live.server import LiveRoutes, OriginPolicy
        _routes = LiveRoutes(registry(), policy=OriginPolicy(allowed_hosts=None))
    return _routes


def _lazy(name: str):
    async def handle(request):
        return await getattr(live_routes(), name)(request)
    handle.__name__ = name
    return handle


def register_routes() -> bool:
    """Register the live routes on ComfyUI's server (they also answer under /api). The engine loads at the first
    request, not at pack import."""
    from ..rain.live.routes import PREFIX, ROUTES
    registered = [host.add_route(method, PREFIX + path, _lazy(name)) for method, path, name in ROUTES]
    return all(registered)


def session_id(unique_id) -> str:
    return f"node-{unique_id if unique_id is not None else 'live'}"


def model_guard(rain_model, groups: tuple[str, ...]):
    """``prepare`` for the session: put the models back on the device if ComfyUI moved them; True if it had to."""
    patchers = [rain_model.patchers.get(group) for group in groups]

    def prepare() -> bool:
        if host.models_on_device(patchers):
            return False
        log.info("RAIN live: the memory manager had moved the live models; loading them again")
        host.load_models(patchers)
        return True
    return prepare


class RainLive:
    DESCRIPTION = ("Live mode: your webcam drives the character. Running the graph starts a live session; the "
                   "panel on this node opens the camera (Start), shows the animated frames with frames/s, latency "
                   "and dropped frames, swaps the character (Reference) and links an output-only page for OBS "
                   "(Browser Source). Calibration sliders change the live output at once. Frames have the "
                   "reference's size (set on Fuse RAIN Reference).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "go_live"

    @classmethod
    def INPUT_TYPES(cls):
        from ..rain.pose.landmark_transform import DEMO_DEFAULTS, SLIDER_RANGES

        required = {
            "rain_model": (RAIN_MODEL,),
            "reference": (RAIN_REFERENCE, {"tooltip": "The character; frames have the size it was fused for."}),
            "task": (list(TASKS), {"default": "face", "tooltip": "face: DWPose face landmarks → the transform below "
                     "→ RAIN's face dots (the released model); body: whole-body skeleton; pose images: the camera "
                     "already shows pose images (e.g. from another program)."}),
            "frames_per_group": ("INT", {"default": 4, "min": 1, "max": 16, "tooltip": "Frames that share a noise "
                                 "level. A frame leaves (num_groups - 1) × frames_per_group frames after its group "
                                 "fills: 2 halves that wait (shorter motion context)."}),
            "num_groups": ("INT", {"default": 4, "min": 1, "max": 16, "tooltip": "Noise levels in the window "
                           "(official: 4); fewer = fewer LCM steps, lower latency, lower quality."}),
            "steps_per_group": ("INT", {"default": 1, "min": 1, "max": 8}),
            "guidance_scale": ("FLOAT", {"default": 2.5, "min": 0.0, "max": 20.0, "step": 0.05}),
            "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                              "control_after_generate": True}),
            "decoder": ([d for d in DECODERS if d != "none"], {"default": "taesdv", "tooltip": "taesdv: fast "
                        "temporal decoder (live); vae: sharper, much slower."}),
            "temporal_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05}),
            "backend": (BACKENDS, {"default": "eager", "tooltip": "eager: plain PyTorch; compiled: torch.compile "
                        "(+ CUDA graphs on a GPU); onnx: onnxruntime; tensorrt: an engine built once (minutes) and "
                        "cached in models/rain/tensorrt (compiled when TensorRT is not installed)."}),
            "crop": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "face/body: the "
                     "detector sees a centred square of this fraction of the short side (the official live demo's "
                     "0.9); 0 = the whole frame, stretched."}),
            "missing": (MISSING_POLICIES, {"default": "hold"}),
            "smoothing": ("BOOLEAN", {"default": False, "tooltip": "One-Euro filter against landmark jitter."}),
            "detector": (_onnx_choices("detector"), {"default": "auto"}),
            "pose_model": (_onnx_choices("pose"), {"default": "auto"}),
            "provider": (PROVIDERS, {"default": "auto"}),
            "preset": (list(calibration.PRESETS), {"default": "calibration", "tooltip": "Face transform: the "
                       "sliders below (they change the live output at once), the official startup list, or none."}),
        }
        defaults = DEMO_DEFAULTS.to_dict()
        for name, (low, high, step) in SLIDER_RANGES.items():
            required[name] = ("FLOAT", {"default": defaults[name], "min": low, "max": high, "step": step,
                                        "display": "slider", "round": step})
        return {"required": required, "hidden": {"unique_id": "UNIQUE_ID"}}

    @classmethod
    def IS_CHANGED(cls, **_):
        # Every run (re)starts the session, even with unchanged inputs (NaN never equals the previous value).
        return math.nan

    def go_live(self, rain_model, reference, task, frames_per_group, num_groups, steps_per_group, guidance_scale,
                seed, decoder, temporal_strength, backend, crop, missing, smoothing, detector, pose_model, provider,
                preset, unique_id=None, **params):
        from ..rain.live.pose_stage import LiveTask
        from ..rain.live.routes import PREFIX
        from ..rain.live.session import LiveSession, LiveSettings
        from ..rain.sampling.stream import StreamSettings

        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        if reference.model is not rain_model:
            raise ValueError("This reference was fused with another RAIN model: connect the same Load RAIN Model "
                             "node to Fuse RAIN Reference and to RAIN Live.")
        if not rain_model.has_decoder(decoder):
            rain_model.decoder(decoder)  # raises the message that says what to do
        settings = LiveSettings(StreamSettings(frames_per_group=int(frames_per_group), num_groups=int(num_groups),
                                               steps_per_group=int(steps_per_group),
                                               guidance_scale=float(guidance_scale), seed=int(seed), decoder=decoder,
                                               temporal_strength=float(temporal_strength)), backend=backend)
        kind = TASKS[task]
        found = get_detector(detector, pose_model, provider) if kind != "pose" else None
        live_task = LiveTask(kind=kind, detector=found, preset=preset, calibration=params,
                             crop=float(crop) or None, missing=missing, smoothing=bool(smoothing))
        groups = ("stream", "vae") if decoder == "vae" else ("stream",)
        rain_model.load(*groups)
        name = session_id(unique_id)
        session = registry().get(name)
        same = (session is not None and session.pipeline is rain_model.pipeline and session.settings == settings
                and session.task.same_pipeline(live_task) and session.error is None
                and (session.height, session.width) == reference.size)
        if same:
            if session.reference is not reference.reference:
                session.set_reference(reference.reference)
            if (session.task.preset, session.task.calibration) != (live_task.preset, live_task.calibration):
                session.set_calibration(live_task.preset, live_task.calibration)
        else:
            height, width = reference.size

            def fuse(image):
                rain_model.load("reference", "vae")
                return rain_model.pipeline.fuse_reference(image, height, width)

            session = registry().add(LiveSession(rain_model.pipeline, reference.reference, live_task, settings,
                                                 session_id=name, prepare=model_guard(rain_model, groups), fuse=fuse))
        session.start()
        info = {"session": name, "viewer": f"{PREFIX}/viewer?session={name}", "width": session.width,
                "height": session.height, "task": kind, "latency_frames": session.latency_frames}
        return {"ui": {"rain_live": [info]}}


NODE_CLASS_MAPPINGS = {"RAIN_Live": RainLive}
NODE_DISPLAY_NAME_MAPPINGS = {"RAIN_Live": "RAIN Live"}
