"""RAIN Batch Render: many videos from a job file, or one character over a folder of driving videos, through the
render farm (``rain.farm``): in ComfyUI's process, or on a Ray cluster. Cancel stops every running job at a
saved state; running the same graph again skips finished videos and continues the interrupted ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import host
from .rain_model import denoiser_choices, resolve_model_set

log = logging.getLogger("ComfyUI-RAIN")

SOURCES = ["folder of driving videos", "job file"]
TASKS = ["pose", "face", "body", "depth"]
FORMATS = ["mp4", "webm", "mkv", "png frames"]


def _inside_input(name: str, what: str) -> Path:
    problem = host.leaves_folder(name)
    if problem:
        raise ValueError(f"{what} {name!r} {problem}; give a path inside ComfyUI's input folder "
                         f"{host.input_directory()}")
    return host.input_directory() / name.replace("\\", "/")


def folder_rows(folder: Path, reference: Path, output_folder: Path, extension: str) -> list[tuple[str, dict]]:
    """One job per video in ``folder`` (sorted by name): the reference over it, written to ``output_folder``."""
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in host.VIDEO_SUFFIXES)
    if not videos:
        raise ValueError(f"{folder} holds no video ({', '.join(sorted(host.VIDEO_SUFFIXES))})")
    suffix = "" if extension == "png frames" else f".{extension}"   # no suffix: a folder of PNG frames
    return [(video.name, {"reference": str(reference), "driving": str(video),
                          "output": str(output_folder / (video.stem + suffix))}) for video in videos]


class RainBatchRender:
    DESCRIPTION = ("Renders many videos through RAIN's render farm: one character over every video of an input "
                   "subfolder, or a job file (CSV/JSON/JSONL: reference, driving, output and any animate option per "
                   "row). The models load once per worker; with a Ray address the jobs spread over a Ray cluster "
                   "(one worker per GPU), and a job whose worker dies continues on another from its saved state. "
                   "Cancel saves every running job; running again skips finished videos and continues the rest. "
                   "Outputs: the JSON report.")
    CATEGORY = "RAIN/render"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    OUTPUT_TOOLTIPS = ("The farm's JSON report: per job status (done/failed/skipped/interrupted), frames, seconds, "
                       "frames/s, node and GPU, what it resumed from, the error.",)
    FUNCTION = "render"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        choices = denoiser_choices(host.list_model_files())
        return {
            "required": {
                "motion_unet": (choices, {"default": choices[0], "tooltip": "The RAIN model set (its denoiser "
                                          "file), as on Load RAIN Model; every worker loads it once."}),
                "source": (SOURCES, {"default": SOURCES[0], "tooltip": "folder: the reference image over every "
                                     "video of driving_folder; job file: the jobs listed in job_file."}),
                "driving_folder": ("STRING", {"default": "rain_batch", "tooltip": "A subfolder of ComfyUI's input "
                                              "folder holding the driving videos (folder source)."}),
                "job_file": ("STRING", {"default": "rain_jobs.csv", "tooltip": "A CSV/JSON/JSONL job file in "
                                        "ComfyUI's input folder (job file source); its relative paths are relative "
                                        "to it."}),
                "filename_prefix": ("STRING", {"default": "RAIN/batch", "tooltip": "Folder of the outputs inside "
                                               "ComfyUI's output folder (folder source): <prefix>/<video name>."}),
                "format": (FORMATS, {"default": "mp4", "tooltip": "Output type of the folder source's videos; mp4 "
                                     "plays everywhere and resumes."}),
                "task": (TASKS, {"default": "face", "tooltip": "pose: the videos show pose images; face/body: DWPose "
                                 "detects them; depth: depth maps drive a depth-trained set."}),
                "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8}),
                "frames_per_group": ("INT", {"default": 4, "min": 1, "max": 16}),
                "num_groups": ("INT", {"default": 4, "min": 1, "max": 16}),
                "guidance_scale": ("FLOAT", {"default": 2.5, "min": 0.0, "max": 20.0, "step": 0.05}),
                # A plain seed: a rerun must keep it, or every interrupted video's resume would refuse.
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False}),
                "save_every": ("INT", {"default": 64, "min": 0, "max": 100000, "tooltip": "Frames between saved "
                                       "states: what a cancelled or crashed job loses at most (0: none)."}),
            },
            "optional": {
                "reference": ("IMAGE", {"tooltip": "The character (folder source): the first image of the batch."}),
                "ray_address": ("STRING", {"default": "", "tooltip": "Empty: render in ComfyUI's process, one "
                                           "job after another. 'local': a Ray cluster on this machine (one worker "
                                           "per GPU). Or an address from `ray start --head` (host:6379): every "
                                           "machine must see ComfyUI's input and output folders at the same paths."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")   # the folder's videos and the outputs on disk decide what runs: look every time

    def render(self, motion_unet, source, driving_folder, job_file, filename_prefix, format, task, width, height,
               frames_per_group, num_groups, guidance_scale, seed, save_every, reference=None, ray_address="",
               unique_id=None):
        import argparse

        from ..rain.farm import check_jobs, load_jobs, run_batch, summary_table

        from ..rain.model_set import read_declaration

        paths, home = resolve_model_set(motion_unet)
        if paths.get("motion_unet") is None:
            raise FileNotFoundError(f"RAIN model set '{motion_unet}' not found in {home}")
        size = (int(height), int(width))
        declaration = read_declaration(paths["motion_unet"])
        if declaration is not None and declaration.native_size is not None:
            size = declaration.fit(*size)   # as the other nodes: a set renders at the size it declares
        defaults = argparse.Namespace(models_dir=str(paths["motion_unet"].parent), task=task, size=size,
                                      frames_per_group=int(frames_per_group),
                                      groups=int(num_groups), guidance=float(guidance_scale), seed=int(seed),
                                      save_every=int(save_every), vae=paths.get("vae"),
                                      image_encoder=paths.get("image_encoder"))
        if source == "job file":
            listed = load_jobs(_inside_input(job_file, "job_file"), defaults)
        else:
            if reference is None:
                raise ValueError("The folder source needs the reference input (the character image).")
            folder = _inside_input(driving_folder, "driving_folder")
            if not folder.is_dir():
                raise FileNotFoundError(f"driving_folder {folder} does not exist: put the driving videos in a "
                                        f"subfolder of ComfyUI's input folder and name it here")
            problem = host.leaves_folder(filename_prefix)
            if problem:
                raise ValueError(f"filename_prefix {filename_prefix!r} {problem}")
            output_folder = host.output_directory() / filename_prefix.replace("\\", "/")
            output_folder.mkdir(parents=True, exist_ok=True)
            character = output_folder / "reference.png"
            _save_reference(reference, character)
            listed = check_jobs(folder_rows(folder, character, output_folder, format), folder, folder, defaults)
        for job in listed.bad:
            log.warning("RAIN Batch Render: %s: %s (skipped)", job.where, job.problem)

        bar = host.progress_bar(1, node_id=unique_id)

        def progress(state):
            bar.update_absolute(state.frames_done, max(state.frames_total, state.frames_done, 1))
            rate = f", {state.frames_per_second:.1f} frames/s" if state.frames_per_second else ""
            left = f", {state.seconds_left:.0f} s left" if state.seconds_left is not None else ""
            host.progress_text(f"{state.jobs_done}/{state.jobs_total} videos, {state.frames_done} frames{rate}{left}",
                               unique_id)

        cancelled: list[BaseException] = []

        def check_cancel():
            try:
                host.check_interrupted()
            except BaseException as error:   # kept to raise again once every job has saved its state
                cancelled.append(error)
                raise

        address = ray_address.strip()
        result = run_batch(listed, ray_address=(True if address == "local" else address) or None,
                           on_progress=progress, check_cancel=check_cancel,
                           on_finished=lambda e: log.info("RAIN Batch Render: %s: %s", e["where"], e["status"]))
        report = json.dumps({"jobs": result.entries, "interrupted": result.interrupted}, indent=1, default=str)
        log.info("RAIN Batch Render:\n%s", summary_table(result))
        if cancelled:
            host.progress_text("cancelled: every running video saved its state; run again to continue", unique_id)
            raise cancelled[0]
        done = sum(1 for e in result.entries if e["status"] == "done")
        host.progress_text(f"{done} of {len(result.entries)} videos rendered", unique_id)
        return {"ui": {"text": [summary_table(result)]}, "result": (report,)}


def _save_reference(image, path: Path) -> None:
    """The IMAGE batch's first image as a PNG the workers read (only rewritten when it changed: a rerun must not
    look like a new reference to the resume check)."""
    import io

    import numpy as np
    from PIL import Image

    array = (image[0, ..., :3].clamp(0, 1) * 255).round().byte().cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, "PNG")
    data = buffer.getvalue()
    if not path.is_file() or path.read_bytes() != data:
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)


NODE_CLASS_MAPPINGS = {"RAIN_BatchRender": RainBatchRender}
NODE_DISPLAY_NAME_MAPPINGS = {"RAIN_BatchRender": "RAIN Batch Render"}
