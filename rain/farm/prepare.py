"""``prepare-data --ray``: the videos spread over Ray workers, the dataset written here, equal to a local run.

Each worker builds its annotator once (DWPose, or the depth model) and turns whole videos into annotated clips with
``rain.training.prepare.source_clips`` — the very function a local run uses — staging them as files in
``.OUT.staging/`` beside the dataset (the shared folder). The driver asks for the videos in order and writes the shards exactly as a
local run does, from the staged clips, so clip order, shard boundaries and the manifest come out the same.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path


STAGING = ".staging"


def _stage_dir(out_dir: Path, source: str) -> Path:
    """Beside the dataset (``.NAME.staging/``), never inside it: the dataset folder holds only what it lists."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source)
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}{STAGING}" / safe


class PrepareWorkerCore:
    """What a worker does, without Ray (tests can use it directly)."""

    def __init__(self, options: dict, annotator_args: dict, threads: int | None = None):
        from ..training.prepare import PrepareOptions, make_annotator
        if threads:
            import torch
            torch.set_num_threads(int(threads))
        self.options = PrepareOptions(**options)
        self.annotator = make_annotator(self.options.task, self.options.size, self.options.face_transform,
                                        **annotator_args)

    def prepare(self, path: str, source: str, out_dir: str, resume_at: int) -> dict:
        from safetensors.numpy import save_file

        from ..training.prepare import source_clips
        stage = _stage_dir(Path(out_dir), source)
        shutil.rmtree(stage, ignore_errors=True)
        partial = stage.with_name(stage.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        found = source_clips(Path(path), source, self.options, self.annotator, resume_at)
        events = []
        for event in found.clips:
            if event[0] == "dropped":
                events.append({"kind": "dropped", "clip_index": event[1]})
                continue
            _, clip_index, start, frames, conditions, window = event
            name = f"clip_{clip_index:06d}.safetensors"
            save_file({"frames": frames, "conditions": conditions}, str(partial / name))
            events.append({"kind": "clip", "clip_index": clip_index, "start": start, "window": window,
                           "file": name})
        failure = found.failures[0] if found.failures else None
        result = {"seen": found.seen, "fps": found.fps, "events": events,
                  "failure": None if failure is None else f"{type(failure).__name__}: {failure}"}
        (partial / "result.json").write_text(json.dumps(result), encoding="utf-8")
        partial.rename(stage)   # whole, or not there
        return {"source": source, "clips": sum(1 for e in events if e["kind"] == "clip")}


def read_staged(out_dir: Path, source: str):
    """The staged clips of one video as ``SourceClips`` (removed once read)."""
    from safetensors.numpy import load_file

    from ..training.prepare import SourceClips
    stage = _stage_dir(out_dir, source)
    result = json.loads((stage / "result.json").read_text(encoding="utf-8"))
    found = SourceClips(iter(()), seen=result["seen"], fps=result["fps"],
                        failures=[result["failure"]] if result["failure"] else [])

    def clips():
        for event in result["events"]:
            if event["kind"] == "dropped":
                yield ("dropped", event["clip_index"])
                continue
            arrays = load_file(str(stage / event["file"]))
            yield ("clip", event["clip_index"], event["start"], arrays["frames"], arrays["conditions"],
                   list(event["window"]))
        shutil.rmtree(stage, ignore_errors=True)

    found.clips = clips()
    return found


class RayClipSource:
    """``clip_source`` for ``prepare_dataset``: every pending video handed to a Ray worker up front (a free worker
    takes the next one), each one's clips read back when the writer reaches it."""

    def __init__(self, videos_dir, out_dir, options, annotator_args: dict, *, address=None, workers=None,
                 threads=None):
        from ..training.data import MANIFEST, Manifest
        from ..training.prepare import find_videos
        from .driver import default_workers, start_ray

        self.ray = ray = start_ray(address)
        self.out_dir = Path(out_dir)
        videos_dir = Path(videos_dir)
        cpu_threads = threads or 1
        count, gpus = default_workers(ray, cpu_threads)
        Worker = ray.remote(PrepareWorkerCore).options(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else cpu_threads)
        self.workers = [Worker.remote(asdict(options), annotator_args, None if gpus else cpu_threads)
                        for _ in range(workers or count)]
        done, resume = set(), {}
        if (self.out_dir / MANIFEST).is_file():
            manifest = Manifest.read(self.out_dir)
            for source, record in manifest.sources.items():
                if record.get("status") == "done":
                    done.add(source)
                elif record.get("status") == "partial":
                    resume[source] = int(record.get("next_clip", 0))
        self.queue = [(path, path.relative_to(videos_dir).as_posix()) for path in find_videos(videos_dir)]
        self.queue = [(p, s, resume.get(s, 0)) for p, s in self.queue if s not in done]
        self.refs: dict[str, object] = {}
        self.idle = list(self.workers)
        self.busy: dict = {}   # ref -> worker
        self._deal()

    def _deal(self) -> None:
        while self.idle and self.queue:
            path, source, resume_at = self.queue.pop(0)
            worker = self.idle.pop(0)
            ref = worker.prepare.remote(str(path), source, str(self.out_dir), resume_at)
            self.refs[source], self.busy[ref] = ref, worker

    def __call__(self, path: Path, source: str, resume_at: int):
        ref = self.refs.pop(source)
        while ref in self.busy:   # meanwhile every worker that frees up takes the next video
            done, _ = self.ray.wait(list(self.busy), num_returns=1)
            for finished in done:
                self.idle.append(self.busy.pop(finished))
            self._deal()
        self.ray.get(ref)   # raises the worker's error, if any
        return read_staged(self.out_dir, source)
