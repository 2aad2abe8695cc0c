"""Resident memory over a long file-to-file render through the engine behind RAIN Render Video
(``rain.render.render_video``): reduced-size random models, a generated driving video, a real MP4 output written
frame by frame with the resume state saved every ``--save-every`` frames.

    python bench/bench_render_memory.py                      # 20,000 frames at 64x64 on the CPU
    python bench/bench_render_memory.py --frames 2000        # a quick look

Prints the resident set size (RSS) every 1,000 frames written and the growth in MB per 1,000 frames: a least-
squares slope over the samples after the first 2,000 frames (warm-up: allocator pools, codec buffers), and the
same slope over the first and the second half of those samples side by side (flat memory: both near 0).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from rain.devtools import write_tiny_models  # noqa: E402
from rain.pipeline import RainPipeline  # noqa: E402
from rain.render import Callbacks, OutputSpec, ResumeSpec, SourceSpec, render_video  # noqa: E402
from rain.sampling.stream import StreamSettings  # noqa: E402


def rss_mb() -> float:
    import psutil
    return psutil.Process(os.getpid()).memory_info().rss / 1e6


def write_driving(path: Path, frames: int, size: int) -> None:
    """A moving block, x264 (the writer's crash-safe settings): cheap to make for any length."""
    from rain.io import VideoWriter
    frame = np.zeros((size, size, 3), np.uint8)
    with VideoWriter(path, 16) as writer:
        for i in range(frames):
            frame[:] = 0
            x = (3 * i) % (size - 16)
            frame[size // 4:size // 2, x:x + 16] = (255, 128, 0)
            writer.write(frame)


def slope(points) -> float:
    if len(points) < 2:
        return float("nan")
    x, y = np.array(points, dtype=float).T
    return float(np.polyfit(x / 1000.0, y, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--save-every", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="rain_render_memory_"))
    models = write_tiny_models(work / "models")
    driving = work / "driving.mp4"
    started = time.perf_counter()
    write_driving(driving, args.frames, args.size)
    print(f"driving video: {args.frames} frames at {args.size}x{args.size} in {time.perf_counter() - started:.0f} s")
    pipe = RainPipeline.from_models_dir(models)
    rng = np.random.default_rng(0)
    reference = pipe.fuse_reference(rng.integers(0, 255, (96, 96, 3), np.uint8), args.size, args.size)
    settings = StreamSettings(frames_per_group=4, num_groups=4, seed=1, decoder="taesdv")
    samples: list[tuple[int, float]] = []
    next_sample = [0]
    clock = [time.perf_counter()]

    def progress(step):
        if step.frames_out >= next_sample[0]:
            samples.append((step.frames_out, rss_mb()))
            now = time.perf_counter()
            rate = f", {1000 / (now - clock[0]):.1f} frames/s" if next_sample[0] else ""
            clock[0] = now
            print(f"{step.frames_out:>7} frames  RSS {samples[-1][1]:8.1f} MB{rate}", flush=True)
            next_sample[0] += 1000

    started = time.perf_counter()
    result = render_video(pipe, reference, settings, SourceSpec(driving, "pose", (args.size, args.size)),
                          OutputSpec(work / "out.mp4", 16.0), expected_frames=args.frames,
                          resume=ResumeSpec(inputs={"driving video": driving}, save_every=args.save_every),
                          callbacks=Callbacks(progress=progress))
    seconds = time.perf_counter() - started
    samples.append((result.frames_out, rss_mb()))
    steady = [(f, m) for f, m in samples if f >= 2000]
    half = len(steady) // 2
    print(f"\nrendered {result.frames_out} frames in {seconds:.0f} s ({result.frames_out / seconds:.1f} frames/s), "
          f"output {(work / 'out.mp4').stat().st_size / 1e6:.1f} MB")
    low, high = min(m for _, m in steady), max(m for _, m in steady)
    print(f"RSS: {samples[0][1]:.1f} MB at the start, {low:.1f}–{high:.1f} MB after 2,000 frames, "
          f"{samples[-1][1]:.1f} MB at the end")
    print(f"growth after warm-up: {slope(steady):+.3f} MB per 1,000 frames "
          f"(first half {slope(steady[:half + 1]):+.3f}, second half {slope(steady[half:]):+.3f})")


if __name__ == "__main__":
    main()
