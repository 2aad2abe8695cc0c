"""The render farm's cost and its speed-up, at reduced size on the CPU (tiny random models, one torch thread per
worker):

1. per-job overhead of the farm over a plain render: K jobs through ``rain.farm.run_batch`` in this process versus
   the same K renders through ``rain.animate.render_job`` with the pipeline already loaded (the least a render
   needs); and through Ray with one worker, from the cluster being up;
2. two Ray workers versus one on the same job list (wall time).

    python bench/bench_farm.py --jobs 6 --frames 48

Prints ratios; record them with the machine in bench/NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def make_jobs(root: Path, models: Path, count: int, frames: int, size: int, tag: str) -> Path:
    from PIL import Image

    from test_cli import write_pose_video
    Image.new("RGB", (size, size), (200, 120, 40)).save(root / "ref.png")
    for i in range(count):
        video = root / f"d{i}.mp4"
        if not video.exists():
            write_pose_video(video, frames=frames, height=size, width=size)
    jobs = [{"reference": "ref.png", "driving": f"d{i}.mp4", "output": f"{tag}/out{i}/", "seed": i}
            for i in range(count)]
    path = root / f"{tag}.json"
    path.write_text(json.dumps(jobs), encoding="utf-8")
    return path


def defaults(models: Path, size: int):
    return argparse.Namespace(models_dir=str(models), size=(size, size), frames_per_group=2, groups=2,
                              save_every=16)


def plain(job_path: Path, models: Path, size: int) -> float:
    """The same renders with the models loaded before the clock starts: what a render needs at least."""
    from rain.animate import prepare_job, render_job
    from rain.farm import load_jobs
    from rain.farm.worker import JobRunner
    listed = load_jobs(job_path, defaults(models, size))
    runner = JobRunner(1)
    pipe = runner.pipeline(listed.jobs[0].args)
    checked = [prepare_job(job.args) for job in listed.jobs]
    started = time.perf_counter()
    for job in checked:
        reference = pipe.fuse_reference(job.reference, *job.size)
        render_job(job, pipe, reference)
    return time.perf_counter() - started


def farm(job_path: Path, models: Path, size: int, **options) -> float:
    from rain.farm import load_jobs, run_batch
    started = time.perf_counter()
    result = run_batch(load_jobs(job_path, defaults(models, size)), **options)
    seconds = time.perf_counter() - started
    assert all(e["status"] == "done" for e in result.entries), result.entries
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    import torch

    from rain import devtools
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="rain-bench-farm-"))
    try:
        models = devtools.write_tiny_models(work / "models")
        path = make_jobs(work, models, args.jobs, args.frames, args.size, "plain")
        farm(make_jobs(work, models, 1, args.frames, args.size, "warm"), models, args.size, threads=1)  # imports
        base = plain(path, models, args.size)
        local = farm(make_jobs(work, models, args.jobs, args.frames, args.size, "local"), models, args.size,
                     threads=1)
        print(f"{args.jobs} jobs × {args.frames} frames at {args.size}²: plain renders {base:.1f} s; farm in this "
              f"process {local:.1f} s (incl. its one model load): overhead {(local - base) / args.jobs:+.2f} s per job")
        if args.no_ray:
            return 0
        from rain.farm.driver import _runtime_env
        import ray
        # "local": a cluster of its own, even when one started with `ray start` runs on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env=_runtime_env())
        farm(make_jobs(work, models, 2, args.frames, args.size, "ray-warm"), models, args.size, ray_address=True,
             workers=2, threads=1)    # workers' imports and first model load, outside the comparison
        one = farm(make_jobs(work, models, args.jobs, args.frames, args.size, "ray1"), models, args.size,
                   ray_address=True, workers=1, threads=1)
        two = farm(make_jobs(work, models, args.jobs, args.frames, args.size, "ray2"), models, args.size,
                   ray_address=True, workers=2, threads=1)
        print(f"Ray, 1 worker: {one:.1f} s (overhead over plain {(one - base) / args.jobs:+.2f} s per job, "
              f"incl. the new worker's start and model load); 2 workers: {two:.1f} s: speed-up {one / two:.2f}×")
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
