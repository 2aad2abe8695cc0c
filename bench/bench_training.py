"""Training at reduced size on the CPU: step time, peak memory and the loss curve of each stage.

Reduced random models (``rain.devtools``) and the synthetic moving-disc dataset; stage 1 → stage 2 → 2-D → 3-D
distillation, each starting from the previous output (stage 1 from the reduced "released" set), like the tests.

    python bench/bench_training.py                      # 64², clips of 4 groups × 1 frame
    python bench/bench_training.py --size 128 --frames-per-group 4
    python bench/bench_training.py --processes      # stage 1: 1 process (accumulation 2) vs 2 (torchrun, gloo)
"""

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rain.devtools import write_tiny_models  # noqa: E402
from rain.training.config import config_from_dict  # noqa: E402
from rain.training.data import write_synthetic_dataset  # noqa: E402
from rain.training.loop import train  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare_processes(args) -> None:
    """Stage 1, the same global batch: one process accumulating 2 micro-batches versus 2 CPU processes (torchrun,
    gloo) of one micro-batch each, one torch thread per process. Wall time from launch, so both include start-up;
    the samples/s line divides the steps' samples by the time between the first and the last logged step."""
    import csv
    import os
    import subprocess
    root = Path(tempfile.mkdtemp(prefix="rain-train-procs-"))
    write_tiny_models(root / "models")
    write_synthetic_dataset(root / "data", clips=8, clip_length=8, size=(args.size, args.size))
    results = {}
    for processes in (1, 2):
        out = root / f"run{processes}"
        config = root / f"run{processes}.toml"
        config.write_text(f"""stage = "stage1"
dataset = "{(root / 'data').as_posix()}"
output_dir = "{out.as_posix()}"
seed = 7
[models]
init = "{(root / 'models').as_posix()}"
shared = "{(root / 'models').as_posix()}"
[train]
steps = {args.steps}
batch_size = 2
micro_batch_size = 1
learning_rate = 1e-3
num_workers = 0
checkpoint_every = 100000
mixed_precision = "no"
[data]
frames_per_group = {args.frames_per_group}
num_groups = 4
[samples]
every = 0
""", encoding="utf-8")
        launch = ([sys.executable, "-m", "rain"] if processes == 1 else
                  [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "rain"])
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        started = time.perf_counter()
        subprocess.run([*launch, "train", str(config), "--no-progress"], env=env, check=True,
                       capture_output=True)
        wall = time.perf_counter() - started
        with (out / "log.csv").open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        span = float(rows[-1]["seconds"]) - float(rows[0]["seconds"])
        results[processes] = (wall, 2 * (len(rows) - 1) / span, [float(r["loss"]) for r in rows])
    (w1, s1, l1), (w2, s2, l2) = results[1], results[2]
    worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(l1, l2))
    print(f"stage 1, {args.size}², {args.steps} steps of 2 samples: 1 process (accumulation 2) {w1:.1f} s, "
          f"{s1:.2f} samples/s; 2 processes {w2:.1f} s, {s2:.2f} samples/s: {s2 / s1:.2f}×; losses agree within "
          f"{worst:.1e} relative (final {l1[-1]:.4f} vs {l2[-1]:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames-per-group", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--processes", action="store_true",
                        help="instead: stage 1 on 1 process with accumulation 2 versus 2 processes (torchrun), "
                             "samples/s and the losses reached")
    args = parser.parse_args()
    if args.processes:
        return compare_processes(args)
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="rain-train-bench-"))
    models = write_tiny_models(root / "models")
    write_synthetic_dataset(root / "data", clips=6, clip_length=max(8, 4 * args.frames_per_group),
                            size=(args.size, args.size))
    plan = [("stage1", models, None, 1e-3, 2), ("stage2", models, None, 1e-3, 1),
            ("distill2d", root / "stage2/model", root / "stage2/model", 1e-4, 2),
            ("distill3d", root / "distill2d/model", root / "stage2/model", 1e-4, 1)]
    print(f"{args.size}², clips of 4 × {args.frames_per_group} frames, {args.threads} thread(s), {args.steps} steps")
    for stage, init, teacher, lr, batch in plan:
        data = {"stage": stage, "dataset": str(root / "data"), "output_dir": str(root / stage), "seed": 7,
                "models": {"init": str(init), "shared": str(models), "export_dir": str(root / stage / "model")},
                "train": {"steps": args.steps, "batch_size": batch, "micro_batch_size": batch, "learning_rate": lr,
                          "num_workers": 0, "checkpoint_every": 10 ** 6},
                "data": {"frames_per_group": args.frames_per_group}, "distill": {"ddim_timesteps": 8},
                "samples": {"every": 0}}
        if teacher is not None:
            data["models"]["teacher"] = str(teacher)
        config = config_from_dict(data)
        started, cpu = time.perf_counter(), time.process_time()
        result = train(config, show_progress=False)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        rows = (root / stage / "log.csv").read_text().splitlines()[1:]
        seconds = [float(r.split(",")[3]) for r in rows]
        steps = [b - a for a, b in zip(seconds, seconds[1:])]
        losses = result.losses
        fifth = max(1, len(losses) // 5)
        print(f"{stage:9} step {statistics.median(steps):.2f} s (median wall), run {wall:.0f} s wall / {cpu:.0f} s CPU "
              f"incl. loading and export, peak RSS {peak_rss_mib():.0f} MiB; loss first {fifth} steps "
              f"{statistics.mean(losses[:fifth]):.3f} → last {fifth} {statistics.mean(losses[-fifth:]):.3f}")
        print("          losses: " + " ".join(f"{v:.3f}" for v in losses))


if __name__ == "__main__":
    main()
