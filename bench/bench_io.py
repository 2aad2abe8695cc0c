"""Throughput of rain.io at the engine's working size: is video I/O ever the bottleneck?

    python bench/bench_io.py [--frames 240] [--size 512]

Prints frames/s for writing (crash-safe and plain H.264, MKV, PNG folder) and for reading
back (as stored, resized, resampled), plus file sizes. RAIN itself produces a few to a few
dozen frames/s, so anything well above that is enough.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rain.io import VideoWriter, read_frames  # noqa: E402


def synthetic_frames(count: int, size: int):
    """Moving gradients: cheap to make, not trivially compressible."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        phase = i / 24
        yield (np.stack([np.sin(6 * x + phase), np.cos(5 * y - phase), np.sin(4 * (x + y) + 2 * phase)],
                        axis=-1) * 127 + 128).astype(np.uint8)


def timed(label: str, count: int, action) -> None:
    started = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - started
    extra = f"  {result}" if result else ""
    print(f"{label:<34} {count / elapsed:8.1f} frames/s{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    frames = list(synthetic_frames(args.frames, args.size))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def write(path: Path, **kwargs):
            def action():
                with VideoWriter(path, 24, **kwargs) as writer:
                    writer.write_many(frames)
                size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir())
                return f"{size / 1e6:.1f} MB"
            return action

        timed("write mp4 (crash-safe)", args.frames, write(tmp / "safe.mp4"))
        timed("write mp4 (crash_safe=False)", args.frames, write(tmp / "plain.mp4", crash_safe=False))
        timed("write mkv (crash-safe)", args.frames, write(tmp / "safe.mkv"))
        timed("write png folder", args.frames, write(tmp / "pngs"))
        timed("read mp4", args.frames, lambda: sum(1 for _ in read_frames(tmp / "safe.mp4")) and None)
        timed("read mp4 resized to half", args.frames,
              lambda: sum(1 for _ in read_frames(tmp / "safe.mp4", size=(args.size // 2,) * 2)) and None)
        timed("read mp4 resampled 24→30 fps", args.frames,
              lambda: sum(1 for _ in read_frames(tmp / "safe.mp4", fps=30)) and None)
        timed("read png folder", args.frames, lambda: sum(1 for _ in read_frames(tmp / "pngs")) and None)


if __name__ == "__main__":
    main()
