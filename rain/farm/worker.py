"""A farm worker: loads the models once and renders job after job through ``rain.animate.render_job`` (the same
engine as ``animate`` and RAIN Render Video), each from its saved state when it has one.

``JobRunner`` is plain Python (the in-process farm uses it directly); ``ray_worker_class`` wraps it as a Ray
actor: one per GPU (or per few CPU cores), created by the driver, which only deals out jobs.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

#: How often (seconds) a worker reports a job's progress to the driver.
REPORT_EVERY = 0.5


class StopRequested(Exception):
    """The driver asked the worker to stop (Ctrl+C on the driver): the render saves its state and ends."""


def model_key(args) -> tuple:
    """What a loaded pipeline depends on: jobs with the same key share one."""
    from ..animate import device_and_dtype
    device, dtype = device_and_dtype(args.device, args.dtype)
    return (str(Path(args.models_dir).resolve()), str(device), str(dtype), str(args.vae), str(args.image_encoder),
            args.decoder)


def where_it_runs(device: str | None = None) -> tuple[str, str]:
    """(node, GPU or 'cpu') for the report."""
    import torch
    gpu = "cpu"
    if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
        index = torch.device(device or "cuda").index or 0
        gpu = f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return socket.gethostname(), gpu


class JobRunner:
    """Renders jobs with models loaded once per model set (kept while jobs share it)."""

    def __init__(self, threads: int | None = None):
        if threads:
            import torch
            torch.set_num_threads(int(threads))
        self.pipelines: dict[tuple, object] = {}
        self.stop_event = threading.Event()

    def pipeline(self, args):
        from ..animate import device_and_dtype
        from ..pipeline import RainPipeline
        key = model_key(args)
        if key not in self.pipelines:
            self.pipelines.clear()   # one model set in memory at a time
            device, dtype = device_and_dtype(args.device, args.dtype)
            self.pipelines[key] = RainPipeline.from_models_dir(args.models_dir, device=device, dtype=dtype,
                                                               vae_path=args.vae,
                                                               image_encoder_path=args.image_encoder,
                                                               decoders=(args.decoder,))
        return self.pipelines[key]

    def run(self, job, progress: Callable[[dict], None] | None = None,
            check_cancel: Callable[[], None] | None = None) -> dict:
        """Render one job; the report entry for it (status done / failed / interrupted, never raises for the
        job's own problems)."""
        from ..animate import prepare_job, render_job
        from ..io import ResumeStore

        args = job.args
        started = time.perf_counter()
        node, gpu = where_it_runs(args.device)
        entry = job.entry("running", node=node, gpu=gpu, pid=os.getpid())
        try:
            # Checked again here: the worker may be another machine, which must see the same shared folder.
            args.resume = ResumeStore(args.output).record() is not None
            checked = prepare_job(args)
        except Exception as error:
            return {**entry, "status": "failed", "error": _unreachable(error, node)}
        last = [0.0]

        def report(step):
            now = time.monotonic()
            if progress is not None and (now - last[0] >= REPORT_EVERY or step.draining):
                last[0] = now
                progress({"job": job.number, "frames_in": step.frames_in, "frames_out": step.frames_out,
                          "total": checked.expected_frames, "pid": os.getpid(), "node": node})

        def check_stop():
            if self.stop_event.is_set():
                raise StopRequested("stopped by the farm's driver (Ctrl+C)")
            if check_cancel is not None:
                check_cancel()

        try:
            pipe = self.pipeline(args)
            reference = pipe.fuse_reference(checked.reference, *checked.size)
            pipe.offload_reference(keep_vae=args.decoder == "vae")   # as animate: synthesis alone on the GPU
            result = render_job(checked, pipe, reference, progress=report, check_cancel=check_stop)
        except Exception as error:   # RenderCancelled / RenderFailed say where the frames are
            from ..render.engine import RenderCancelled
            status = "interrupted" if isinstance(error, RenderCancelled) else "failed"
            detail = str(error) or traceback.format_exc(limit=3)   # an error without a message: where it came from
            return {**entry, "status": status, "error": detail, "seconds": round(time.perf_counter() - started, 3)}
        seconds = time.perf_counter() - started
        new_frames = result.frames_out - result.resumed_from
        return {**entry, "status": "done", "frames": result.frames_out, "resumed_from": result.resumed_from,
                "seconds": round(seconds, 3),
                "frames_per_second": round(new_frames / seconds, 3) if seconds > 0 else None,
                "warnings": result.warnings}


def _unreachable(error: Exception, node: str) -> str:
    text = str(error)
    if isinstance(error, (FileNotFoundError, PermissionError)) or "not found" in text or "ermission" in text:
        return (f"{text} (on worker {node}: the farm reads inputs and writes outputs in a folder every worker "
                f"must see at the same path, e.g. a network share)")
    return text


def ray_worker_class(ray):
    """The Ray actor around ``JobRunner``: ``run`` renders; ``stop`` (a second concurrent call) asks the running
    render to save its state and end; ``pid`` for tests and the report."""

    class FarmWorker:
        def __init__(self, threads=None, board=None):
            self.runner = JobRunner(threads)
            self.board = board

        def run(self, job):
            self.runner.stop_event.clear()
            board = self.board
            return self.runner.run(job, None if board is None else lambda update: board.update.remote(update))

        def stop(self):
            self.runner.stop_event.set()
            return True

        def pid(self):
            return os.getpid()

    return ray.remote(FarmWorker)


def ray_board_class(ray):
    """A small actor holding the running jobs' progress: workers push to it, the driver reads it."""

    class ProgressBoard:
        def __init__(self):
            self.jobs: dict[int, dict] = {}

        def update(self, update: dict):
            self.jobs[update["job"]] = update

        def snapshot(self) -> dict:
            return dict(self.jobs)

    return ray.remote(ProgressBoard)
