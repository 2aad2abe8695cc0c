"""RAIN Render Video: a driving video of any length → an animated video file in ComfyUI's output folder.

The video is read lazily, turned into pose frames (face landmarks, whole-body pose, depth maps, or used as pose
images) and streamed through RAIN frame by frame; frames are written as they come out (under a ``.partial`` name
until complete), so memory does not depend on the video's length. The engine is ``rain.render`` — the same one
``python -m rain animate`` runs. Cancel leaves a playable partial file; with ``resume`` on, the next run continues
the interrupted render of this prefix from its last saved state.
"""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import torch

from . import calibration, host, model_set
from .model_nodes import RAIN_MODEL, RAIN_REFERENCE, _pil
from .pose_nodes import MISSING_POLICIES, PROVIDERS, _onnx_choices, get_detector

log = logging.getLogger("ComfyUI-RAIN")

TASKS = {"face landmarks": "face", "whole body": "body", "pose images": "pose", "depth": "depth"}
FORMATS = ["mp4", "webm", "mkv", "mov"]
MAX_PREVIEW = 256


class EvenlySpaced:
    """At most ``limit`` frames of a stream of unknown length, evenly spaced: every ``stride``-th frame is kept
    and the stride doubles (dropping every other kept frame) whenever the batch would grow past the limit."""

    def __init__(self, limit: int):
        self.limit, self.stride = limit, 1
        self.frames: list[tuple[int, torch.Tensor]] = []

    def add(self, frame: torch.Tensor, index: int) -> None:
        if self.limit <= 0 or index % self.stride:
            return
        self.frames.append((index, (frame.clamp(0, 1) * 255).round().to(torch.uint8)))
        while len(self.frames) > self.limit:
            self.stride *= 2
            self.frames = [(i, f) for i, f in self.frames if i % self.stride == 0]

    def batch(self, height: int, width: int) -> torch.Tensor:
        if not self.frames:
            return torch.zeros(1, height, width, 3)
        return torch.stack([f for _, f in self.frames]).float() / 255.0


def unfinished_render(prefix: str, suffix: str):
    """The newest numbered output of ``prefix`` with a saved resume state, as (path, subfolder, name), or None."""
    from ..rain.io import resume_dir

    path, subfolder, _ = host.numbered_output(prefix, suffix)
    stem = re.escape(path.name.rsplit("_", 2)[0])
    found = []
    for candidate in path.parent.glob(f"*{suffix}.resume"):
        match = re.fullmatch(stem + r"_(\d+)_" + re.escape(suffix), candidate.name[:-len(".resume")])
        if match and candidate.is_dir():
            found.append((int(match.group(1)), candidate.name[:-len(".resume")]))
    if not found:
        return None
    name = max(found)[1]
    final = path.parent / name
    return (final, subfolder, name) if resume_dir(final).is_dir() else None


class RainRenderVideo:
    DESCRIPTION = ("Renders a driving video of any length into a video file in ComfyUI's output folder, frame by "
                   "frame: memory does not grow with the video's length. Reads the video lazily from the input folder "
                   "(or the optional VIDEO input), makes the pose frames (face landmarks → transform, whole body, "
                   "depth, or pose images as they are), keeps the frame rate and sound. Cancel leaves a playable "
                   "<name>.partial file; with resume on, the next run continues it from the last saved state with "
                   "exactly the frames an uninterrupted render gives. Frames have the reference's size.")
    CATEGORY = "RAIN/sampling"
    RETURN_TYPES = ("VIDEO", "IMAGE")
    RETURN_NAMES = ("video", "preview_frames")
    OUTPUT_TOOLTIPS = ("The written file (core VIDEO: connect Save Video only to copy it elsewhere).",
                       "At most preview_frames frames of the render, evenly spaced (never the whole video).")
    OUTPUT_NODE = True
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls):
        from ..rain.pose.landmark_transform import DEMO_DEFAULTS, SLIDER_RANGES
        from .depth_nodes import depth_model_choices

        videos = host.input_videos()
        required = {
            "rain_model": (RAIN_MODEL,),
            "reference": (RAIN_REFERENCE, {"tooltip": "The character; frames have the size it was fused for."}),
            "video": (videos or ["driving.mp4"], {"video_upload": True, "tooltip": "The driving video, from "
                      "ComfyUI's input folder (upload one here); the optional VIDEO input replaces it."}),
            "task": (list(TASKS), {"default": "face landmarks", "tooltip": "face landmarks: DWPose face → the "
                     "transform below → RAIN's face dots (the released model); whole body: DWPose skeleton; depth: "
                     "depth maps (a depth-trained model); pose images: the video already shows pose images."}),
            "frames_per_group": ("INT", {"default": 4, "min": 1, "max": 16}),
            "num_groups": ("INT", {"default": 4, "min": 1, "max": 16}),
            "steps_per_group": ("INT", {"default": 1, "min": 1, "max": 8}),
            "guidance_scale": ("FLOAT", {"default": 2.5, "min": 0.0, "max": 20.0, "step": 0.05}),
            # No "randomize after run": resuming a cancelled render needs the seed it started with.
            "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False}),
            "decoder": (["taesdv", "vae"], {"default": "taesdv", "tooltip": "taesdv: fast temporal decoder; vae: "
                        "sharper, slower."}),
            "temporal_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05}),
            "filename_prefix": ("STRING", {"default": "RAIN/render", "tooltip": "Saved as <prefix>_00001_.mp4 in "
                                "the output folder (subfolders allowed)."}),
            "format": (FORMATS, {"default": "mp4"}),
            "fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 240.0, "step": 0.01, "tooltip": "0: the driving "
                    "video's frame rate (a variable rate is resampled to its average); else resample to this."}),
            "skip_first_frames": ("INT", {"default": 0, "min": 0, "max": 10_000_000}),
            "frame_load_cap": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "tooltip": "0: every frame."}),
            "keep_audio": ("BOOLEAN", {"default": True, "tooltip": "Copy the driving video's sound."}),
            "resume": ("BOOLEAN", {"default": False, "tooltip": "Continue the last interrupted render of this "
                       "prefix from its saved state (refused, saying why, if a setting or the video changed). "
                       "Off: always a new file."}),
            "save_every": ("INT", {"default": 64, "min": 0, "max": 100_000, "tooltip": "Save the resume state "
                           "every this many frames (0: never; Cancel also saves where it stopped)."}),
            "preview_frames": ("INT", {"default": 16, "min": 0, "max": MAX_PREVIEW}),
            "crop": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "face/body/depth: "
                     "a centred square of this fraction of the short side (the live demo's 0.9); 0 = whole frame."}),
            "missing": (MISSING_POLICIES, {"default": "hold"}),
            "smoothing": ("BOOLEAN", {"default": False, "tooltip": "One-Euro filter against landmark jitter."}),
            "detector": (_onnx_choices("detector"), {"default": "auto"}),
            "pose_model": (_onnx_choices("pose"), {"default": "auto"}),
            "provider": (PROVIDERS, {"default": "auto"}),
            "depth_model": (depth_model_choices(), {"default": "auto"}),
            "preset": (list(calibration.PRESETS), {"default": "calibration"}),
        }
        defaults = DEMO_DEFAULTS.to_dict()
        for name, (low, high, step) in SLIDER_RANGES.items():
            required[name] = ("FLOAT", {"default": defaults[name], "min": low, "max": high, "step": step,
                                        "display": "slider", "round": step})
        return {"required": required,
                "optional": {"driving_video": ("VIDEO", {"tooltip": "Use this video instead of the list above."}),
                             "engine": ("RAIN_ENGINE", {"tooltip": "From Build RAIN TensorRT Engine: run the "
                                        "steady-state calls with that backend (TensorRT, compiled, ONNX)."})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def render(self, rain_model, reference, video, task, frames_per_group, num_groups, steps_per_group,
               guidance_scale, seed, decoder, temporal_strength, filename_prefix, format, fps, skip_first_frames,
               frame_load_cap, keep_audio, resume, save_every, preview_frames, crop, missing, smoothing, detector,
               pose_model, provider, depth_model, preset, driving_video=None, engine=None, unique_id=None, **params):
        from ..rain.animate import driving_rates, expected_frame_count
        from ..rain.io import probe, scan_timing
        from ..rain.render import (Callbacks, OutputSpec, RenderCancelled, ResumeSpec, SourceSpec,
                                   render_video)
        from ..rain.sampling.stream import StreamSettings

        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        if reference.model is not rain_model:
            raise ValueError("This reference was fused with another RAIN model: connect the same Load RAIN Model "
                             "node to Fuse RAIN Reference and to RAIN Render Video.")
        kind = TASKS[task]
        model_set.warn_task(rain_model, kind, "RAIN Render Video")
        path = (host.video_source_path(driving_video,
                                          host.safe_file_name(f"rain_render_{unique_id or 'input'}.mp4"))
                if driving_video is not None else host.input_file_path(video))
        info = probe(path)     # names the file and says what is wrong, before any model is loaded
        timing = scan_timing(path) if info.kind == "video" else None
        args = SimpleNamespace(fps=float(fps) or None, driving=path, start=int(skip_first_frames),
                               max_frames=int(frame_load_cap) or None)
        notes: list[str] = []
        out_fps, resample = driving_rates(args, info, timing, notes)
        expected, exact = expected_frame_count(args, info, timing, resample, notes)
        for note in notes:
            log.warning("RAIN Render Video: %s", note)
        height, width = reference.size
        settings = StreamSettings(frames_per_group=int(frames_per_group), num_groups=int(num_groups),
                                  steps_per_group=int(steps_per_group), guidance_scale=float(guidance_scale),
                                  seed=int(seed), decoder=decoder, temporal_strength=float(temporal_strength))
        source = SourceSpec(path, kind, (height, width), fps=resample, start=args.start, max_frames=args.max_frames,
                            crop=float(crop) or None, missing=missing, smoothing=bool(smoothing),
                            smoothing_rate=out_fps,
                            translations=calibration.translations_for(preset, params) if kind == "face" else (),
                            detector=get_detector(detector, pose_model, provider) if kind in ("face", "body") else None,
                            detect_batch=int(frames_per_group),
                            depth_model=self._depth_folder(depth_model) if kind == "depth" else None,
                            device=str(rain_model.device))
        suffix = f".{format}"
        found = unfinished_render(filename_prefix, suffix) if resume else None
        final, subfolder, name = found or host.numbered_output(filename_prefix, suffix)
        if resume and found is None:
            log.info("RAIN Render Video: no interrupted render of %s to resume; starting %s", filename_prefix, name)
        audio = path if keep_audio and info.has_audio else None
        if engine is not None and engine.model is not rain_model:
            raise ValueError("This engine was built for another RAIN model: connect the same Load RAIN Model node "
                             "to Build RAIN TensorRT Engine and to RAIN Render Video.")
        if engine is not None:
            engine.check_fits(source.size[0], source.size[1], settings, "RAIN Render Video")
        identity = _identity(rain_model, reference, settings, source, out_fps, audio)
        identity["backend"] = "eager" if engine is None else engine.backend   # backends agree within float tolerance
        if kind in ("face", "body"):
            identity.update(detector=detector, pose_model=pose_model, provider=provider)
        resume_spec = ResumeSpec(settings=identity,
                                 inputs={"driving video": path}, save_every=int(save_every),
                                 resume=found is not None)

        rain_model.load("stream", *(["vae"] if decoder == "vae" else []))
        fitted = reference.for_size(height, width)
        work = [None]
        bar = host.progress_bar(1, node_id=unique_id)
        previews = EvenlySpaced(int(preview_frames))
        latest = [None]

        def progress(step):
            total = step.work_total or max(step.work_done, 1)
            shown = host.preview(_pil(latest[0])) if latest[0] is not None else None
            latest[0] = None
            bar.update_absolute(step.work_done, total, shown)
            if step.frames_out != work[0]:
                work[0] = step.frames_out
                host.progress_text(step.describe(), unique_id)

        def preview(frame, index):
            latest[0] = frame

        callbacks = Callbacks(progress=progress, frame=previews.add, preview=preview,
                              preview_every=max(1, int(out_fps)), check_cancel=host.check_interrupted)
        try:
            result = render_video(rain_model.pipeline, fitted, settings, source,
                                  OutputSpec(final, out_fps, audio, args.start / out_fps),
                                  expected_frames=expected, expected_exact=exact, resume=resume_spec,
                                  callbacks=callbacks,
                                  stream_options=engine.stream_options() if engine is not None else None)
        except RenderCancelled as stopped:
            log.warning("RAIN Render Video cancelled. %s", stopped)
            host.progress_text(f"cancelled. {stopped}", unique_id)
            raise stopped.__cause__ from None
        done = f"wrote {result.frames_out} frames to {final}"
        if result.resumed_from:
            done += f" (continued after frame {result.resumed_from})"
        log.info("RAIN Render Video: %s", done)
        host.progress_text(done, unique_id)
        # web/rain_render_video.js plays it on the node (the stock frontend shows a video file only as a name).
        ui = {"rain_video": [{"filename": name, "subfolder": subfolder, "type": "output",
                              "format": final.suffix.lstrip(".").lower() or "png"}]}
        return {"ui": ui, "result": (host.video_from_file(final), previews.batch(height, width))}

    @staticmethod
    def _depth_folder(choice: str):
        from .depth_nodes import depth_model_folder
        return depth_model_folder(choice)


def _identity(rain_model, reference, settings, source, fps, audio) -> dict:
    """What the frames depend on besides the driving file, for the resume check."""
    import hashlib
    from dataclasses import asdict

    fused = reference.reference
    digest = hashlib.sha256(fused.context.float().cpu().numpy().tobytes())
    for name in sorted(fused.features)[:2]:
        digest.update(fused.features[name].float().cpu().numpy().tobytes())
    return {**asdict(settings), **source.settings(), "output_fps": fps, "sound": audio is not None,
            "model": rain_model.name, "dtype": str(rain_model.dtype).replace("torch.", ""),
            "device": rain_model.device.type, "reference": digest.hexdigest()[:16]}


NODE_CLASS_MAPPINGS = {"RAIN_RenderVideo": RainRenderVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"RAIN_RenderVideo": "RAIN Render Video"}
