"""Live latency: a synthetic camera drives a live session; camera frame → shown frame, p50 and p95.

    python bench/bench_live.py                              # reduced models, 64x64, CPU: 30 and 60 frames/s,
                                                            # 4 and 2 frames per group
    python bench/bench_live.py --full --size 512            # released widths (random weights), e.g. on a GPU
    python bench/bench_live.py --soak 3600 --fps 15         # one hour: latency and resident memory per minute

Each output frame's latency is split in two:
  window  = the wait RAIN's window imposes: from the frame's arrival to the arrival of the camera frame that
            completed the last group it needed (latency_frames + the wait for its own group to fill);
  machine = the rest: pose stage, the UNet call, decoding, JPEG encoding of the frame sent back.
The camera submits pre-encoded JPEG frames through the same checks as the websocket route; "shown" is the moment
the JPEG sent back is ready (on loopback the socket adds well under a millisecond).
"""

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from queue import Empty, Queue

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from rain.live.protocol import FrameLimits, encode_image, frame_message, parse_frame  # noqa: E402
from rain.live.session import CallbackSubscriber, LiveSession, LiveSettings  # noqa: E402
from rain.sampling.stream import StreamSettings  # noqa: E402


def rss_mib() -> float:
    import psutil
    return psutil.Process(os.getpid()).memory_info().rss / 2 ** 20


def camera_frames(count: int, width: int = 320, height: int = 240) -> list[bytes]:
    """A loop of JPEG frames: a bright disc moving over a dark background (what a pose image looks like)."""
    frames = []
    yy, xx = np.mgrid[0:height, 0:width]
    for index in range(count):
        angle = 2 * np.pi * index / count
        cx, cy = width / 2 + width / 4 * np.cos(angle), height / 2 + height / 4 * np.sin(angle)
        image = np.zeros((height, width, 3), np.uint8)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < (height / 8) ** 2] = (255, 200, 80)
        frames.append(encode_image(image, "jpeg", 85))
    return frames


class Recorder:
    """Stands in for the websocket sender: encodes each frame (as the route does) in its own thread and notes when
    it is ready to be shown."""

    def __init__(self):
        self.queue: Queue = Queue()
        self.records: list[tuple[float, float, float, int]] = []   # (received, trigger, shown, sequence)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def deliver(self, frame) -> None:
        self.queue.put(frame)

    def notify(self, event: dict) -> None:
        pass

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                frame = self.queue.get(timeout=0.1)
            except Empty:
                continue
            frame.message("jpeg", 85)
            with self.lock:
                self.records.append((frame.received, frame.trigger_received, time.perf_counter(), frame.sequence))

    def since(self, since: float, forget_older: bool = False) -> list:
        with self.lock:
            kept = [r for r in self.records if r[0] >= since]
            if forget_older:
                self.records = kept
            return kept


def drive(session: LiveSession, fps: float, seconds: float, frames: list[bytes], on_tick=None) -> int:
    """Submit frames at ``fps`` for ``seconds``; returns how many were sent."""
    limits = FrameLimits()
    period = 1.0 / fps
    start = next_time = time.perf_counter()
    sent = 0
    while time.perf_counter() - start < seconds:
        now = time.perf_counter()
        session.submit(parse_frame(frame_message(sent, now * 1000.0, frames[sent % len(frames)]), limits, now))
        sent += 1
        if on_tick is not None:
            on_tick(now - start)
        next_time += period
        time.sleep(max(0.0, next_time - time.perf_counter()))
    return sent


def summary(records, since: float) -> dict:
    rows = np.array([(r, t, s) for r, t, s, _ in records if r >= since]) if records else np.zeros((0, 3))
    if len(rows) == 0:
        return {"frames": 0}
    total = (rows[:, 2] - rows[:, 0]) * 1000
    window = (rows[:, 1] - rows[:, 0]) * 1000
    machine = total - window
    return {"frames": len(rows), "p50": np.percentile(total, 50), "p95": np.percentile(total, 95),
            "window_p50": np.percentile(window, 50), "window_p95": np.percentile(window, 95),
            "machine_p50": np.percentile(machine, 50), "machine_p95": np.percentile(machine, 95)}


def build(args):
    from PIL import Image

    from rain.pipeline import RainPipeline
    if args.full:
        from bench_stream import build as build_models, random_reference
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        pipeline = RainPipeline(build_models(True, device, dtype), device=device, dtype=dtype)
        return pipeline, random_reference(pipeline.models, args.size, args.size, device, dtype)
    models_dir = args.models_dir
    if models_dir is None:
        from rain.devtools import write_tiny_models
        models_dir = write_tiny_models(Path(tempfile.mkdtemp(prefix="rain_bench_live_")))
    pipeline = RainPipeline.from_models_dir(models_dir)
    picture = Image.fromarray((np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8))
    return pipeline, pipeline.fuse_reference(picture, args.size, args.size)


def run_latency(args, pipeline, reference, frames) -> None:
    print(f"{'camera':>7} {'window':>9} {'in/s':>6} {'out/s':>6} {'dropped':>8} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'window p50':>11} {'machine p50':>12} {'machine p95':>12} {'predicted window':>17}")
    for group in args.frames_per_group:
        for fps in args.fps:
            settings = LiveSettings(StreamSettings(frames_per_group=group, num_groups=args.groups,
                                                   decoder="taesdv"))
            session = LiveSession(pipeline, reference, settings=settings)
            recorder = Recorder()
            session.subscribe(recorder)
            session.start()
            started = time.perf_counter()
            sent = drive(session, fps, args.warmup + args.seconds, frames)
            time.sleep(1.0)
            session.stop()
            recorder.stop.set()
            stats = session.stats.snapshot()
            result = summary(recorder.since(started + args.warmup), started + args.warmup)
            accepted = stats["frames_received"] - stats["frames_dropped"]
            rate_in = accepted / (args.warmup + args.seconds)
            out = result["frames"] / args.seconds
            # A frame waits for the rest of its group (on average (G-1)/2 frames) and then latency_frames more,
            # counted in frames that enter the stream (dropped frames do not advance the window).
            predicted = ((args.groups - 1) * group + (group - 1) / 2) / max(rate_in, 1e-9) * 1000
            print(f"{fps:>5.0f}/s {args.groups}x{group:<7} {rate_in:6.1f} {out:6.1f} "
                  f"{stats['frames_dropped'] / max(sent, 1):7.0%} {result.get('p50', float('nan')):8.0f} "
                  f"{result.get('p95', float('nan')):8.0f} {result.get('window_p50', float('nan')):11.0f} "
                  f"{result.get('machine_p50', float('nan')):12.0f} {result.get('machine_p95', float('nan')):12.0f} "
                  f"{predicted:17.0f}", flush=True)


def run_soak(args, pipeline, reference, frames) -> None:
    settings = LiveSettings(StreamSettings(frames_per_group=args.frames_per_group[0], num_groups=args.groups))
    session = LiveSession(pipeline, reference, settings=settings)
    recorder = Recorder()
    session.subscribe(recorder)
    session.start()
    started = time.perf_counter()
    marks = {"next": 60.0, "first": None}
    print("minute  rss_MiB  frames_out  dropped  p50_ms  p95_ms  machine_p50_ms", flush=True)

    def tick(elapsed):
        if elapsed < marks["next"]:
            return
        gc.collect()
        since = started + marks["next"] - 60.0
        result = summary(recorder.since(since, forget_older=True), since)  # the recorder stays bounded
        stats = session.stats.snapshot()
        row = (marks["next"] / 60, rss_mib(), stats["frames_emitted"], stats["frames_dropped"],
               result.get("p50", float("nan")), result.get("p95", float("nan")), result.get("machine_p50", float("nan")))
        print("%6.0f  %7.1f  %10d  %7d  %6.0f  %6.0f  %14.0f" % row, flush=True)
        marks["first"] = marks["first"] or row
        marks["last"] = row
        marks["next"] += 60.0

    drive(session, args.fps[0], args.soak, frames, on_tick=tick)
    session.stop()
    recorder.stop.set()
    first, last = marks["first"], marks.get("last")
    if first and last:
        print(f"soak: {args.soak / 60:.0f} min at {args.fps[0]:.0f} camera frames/s; RSS {first[1]:.1f} → "
              f"{last[1]:.1f} MiB ({last[1] - first[1]:+.1f}); p50 {first[4]:.0f} → {last[4]:.0f} ms, "
              f"p95 {first[5]:.0f} → {last[5]:.0f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", default=None, help="default: reduced random models in a temporary folder")
    parser.add_argument("--full", action="store_true", help="released widths, random weights")
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=float, nargs="+", default=[30.0, 60.0])
    parser.add_argument("--frames-per-group", type=int, nargs="+", default=[4, 2])
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of soak instead of the latency table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline, reference = build(args)
    frames = camera_frames(30)
    print(f"RAIN live bench: {'released widths' if args.full else 'reduced models'}, {args.size}², "
          f"{pipeline.device} {str(pipeline.dtype).replace('torch.', '')}, {torch.get_num_threads()} threads, "
          f"camera 320x240 JPEG, pose task, TAESDV", flush=True)
    if args.soak:
        run_soak(args, pipeline, reference, frames)
    else:
        run_latency(args, pipeline, reference, frames)


if __name__ == "__main__":
    main()
