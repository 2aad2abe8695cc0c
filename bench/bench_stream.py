"""Stream speed and memory.

    python bench/bench_stream.py                         # reduced models, 128x128, CPU float32
    python bench/bench_stream.py --full --size 512       # released sizes (random weights), e.g. on a GPU in fp16
    python bench/bench_stream.py --memory-frames 5000    # resident memory over a long stream (reduced size)

Prints the warm-up (until the window has filled and the first frames come out) and the steady-state frames/s
separately, and milliseconds per output frame for each stage (pose guider, UNet, scheduler, decode),
and with --memory-frames the resident memory sampled along the stream with its growth ratio.
Weights are random (built in memory): speed and memory do not depend on their values.
"""

import argparse
import gc
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rain.devtools import randomise_weights  # noqa: E402
from rain.loading import RainModels  # noqa: E402
from rain.models.pose_guider import PoseGuider, PoseGuiderConfig  # noqa: E402
from rain.models.taesdv import TAESDV  # noqa: E402
from rain.models.video_unet import UNetConfig, VideoUNet  # noqa: E402
from rain.pipeline import Reference, RainPipeline  # noqa: E402
from rain.models.reference_attention import FEATURE_ORDER  # noqa: E402
from rain.sampling.stream import StreamSettings  # noqa: E402


def build(full: bool, device, dtype) -> RainModels:
    widths = (320, 640, 1280, 1280) if full else (32, 64, 96, 96)
    generator = torch.Generator().manual_seed(0)
    unet = VideoUNet(UNetConfig(block_out_channels=widths))
    guider = PoseGuider(PoseGuiderConfig(conditioning_embedding_channels=widths[0]))
    taesdv = TAESDV()
    for module in (unet, guider, taesdv):
        if not full:  # random init of 1.3 B parameters on the CPU takes minutes; default init is fine for speed
            randomise_weights(module, generator)
    return RainModels(unet.to(device, dtype).eval(), guider.to(device, dtype).eval(), taesdv=taesdv.to(device, dtype).eval())


def random_reference(models: RainModels, height: int, width: int, device, dtype) -> Reference:
    """Reference features of the right shapes (speed does not depend on their values)."""
    features = {}
    for name, block in zip(FEATURE_ORDER, _blocks_in_order(models.video_unet)):
        channels = block.norm1.normalized_shape[0]
        level = {"d0": 0, "d1": 1, "d2": 2, "m": 3, "u1": 2, "u2": 1, "u3": 0}[name[:2] if name != "m" else "m"]
        tokens = (height // 8 >> level) * (width // 8 >> level)
        features[name] = torch.randn(1, tokens, channels, device=device).to(torch.float16)
    context = torch.randn(1, 1, 768, device=device, dtype=dtype)
    return Reference(features, context, height, width)


def _blocks_in_order(unet):
    from rain.models.reference_attention import reference_blocks
    return list(reference_blocks(unet).values())


class StageTimer:
    def __init__(self, device):
        self.totals = defaultdict(float)
        self.cuda = torch.device(device).type == "cuda"

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            if self.cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            if self.cuda:
                torch.cuda.synchronize()
            self.totals[name] += time.perf_counter() - start
            return out
        return timed


def pose_frames(count, height, width):
    for i in range(count):
        frame = torch.zeros(3, height, width)
        y, x = (i * 7) % (height - 16), (i * 11) % (width - 16)
        frame[:, y:y + 12, x:x + 12] = 1.0
        yield frame


def run_speed(args, device, dtype):
    models = build(args.full, device, dtype)
    pipe = RainPipeline(models, device=device, dtype=dtype)
    reference = random_reference(models, args.size, args.size, device, dtype)
    settings = StreamSettings(decoder="taesdv", drain=False)
    # Warm-up (allocator, kernel selection), not timed.
    warm = pipe.open_stream(reference, settings)
    for frame in pose_frames(4 * settings.num_groups + 8, args.size, args.size):
        warm.push(frame)
    stream = pipe.open_stream(reference, settings)
    timer = StageTimer(device)
    stream._pose_features = timer.wrap("pose guider", stream._pose_features)
    stream._denoise = timer.wrap("unet", stream._denoise)
    stream._decode = timer.wrap("decode (taesdv)", stream._decode)
    stream.scheduler.step = timer.wrap("scheduler", stream.scheduler.step)
    frames_out = 0
    first_out = None    # seconds until the window had filled and the first group came out (the warm-up)
    start = time.perf_counter()
    for frame in pose_frames(args.frames, args.size, args.size):
        out = stream.push(frame)
        if out and first_out is None:
            if timer.cuda:
                torch.cuda.synchronize()
            first_out, first_group = time.perf_counter() - start, len(out)
        frames_out += len(out)
    if timer.cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(f"device {device} ({torch.cuda.get_device_name() if timer.cuda else os.cpu_count()} "
          f"{'' if timer.cuda else 'cores, ' + str(torch.get_num_threads()) + ' threads'}), {dtype}, "
          f"{'released' if args.full else 'reduced'} widths, {args.size}x{args.size}")
    print(f"{args.frames} frames in, {frames_out} out in {elapsed:.2f} s ({stream.unet_calls} UNet calls)")
    if first_out is None:
        print(f"warm-up: no frame out yet (the window fills after {stream.latency_frames} frames and one more "
              f"call); no steady-state rate: use --frames > {stream.latency_frames + settings.frames_per_group}")
    else:
        print(f"warm-up: first {first_group} frames out after {first_out:.2f} s "
              f"({stream.latency_frames + first_group} frames in)")
        steady_frames, steady_seconds = frames_out - first_group, elapsed - first_out
        if steady_frames > 0 and steady_seconds > 0:
            print(f"steady state: {steady_frames} frames in {steady_seconds:.2f} s: "
                  f"{steady_frames / steady_seconds:.2f} frames/s, {1000 * steady_seconds / steady_frames:.1f} ms/frame")
        else:
            print("steady state: not reached (only the first group came out); use more --frames")
    per, unit = (frames_out, "frame") if frames_out else (max(stream.unet_calls, 1), "call")
    accounted = sum(timer.totals.values())
    for name, total in sorted(timer.totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:18s} {1000 * total / per:8.2f} ms/{unit}  {100 * total / elapsed:5.1f}%")
    print(f"  {'other (host)':18s} {1000 * (elapsed - accounted) / per:8.2f} ms/{unit}")
    if timer.cuda:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def run_memory(args, device, dtype):
    import psutil
    process = psutil.Process()
    models = build(False, device, dtype)
    pipe = RainPipeline(models, device=device, dtype=dtype)
    size = args.memory_size
    reference = random_reference(models, size, size, device, dtype)
    stream = pipe.open_stream(reference, StreamSettings(decoder="taesdv", drain=False))
    samples = []
    produced = 0
    start = time.perf_counter()
    for index, frame in enumerate(pose_frames(args.memory_frames, size, size)):
        produced += len(stream.push(frame))
        if index % 250 == 0 or index == args.memory_frames - 1:
            gc.collect()
            samples.append((index + 1, process.memory_info().rss / 2**20))
            print(f"  after {index + 1:6d} frames in, {produced:6d} out: RSS {samples[-1][1]:8.1f} MiB "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    elapsed = time.perf_counter() - start
    print(f"memory: {args.memory_frames} frames in, {produced} out, {size}x{size}, {elapsed:.0f} s")
    settled = [rss for frames, rss in samples if frames >= 500]
    print(f"RSS ratio last/first after warm-up: {settled[-1] / settled[0]:.4f} "
          f"(min {min(settled):.1f}, max {max(settled):.1f} MiB)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="released model widths (random weights)")
    parser.add_argument("--size", type=int, default=None, help="frame side (default 128 reduced, 512 full)")
    parser.add_argument("--frames", type=int, default=64, help="timed frames")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None)
    parser.add_argument("--memory-frames", type=int, default=0, help="also sample RSS over this many frames")
    parser.add_argument("--memory-size", type=int, default=64)
    args = parser.parse_args()
    args.size = args.size or (512 if args.full else 128)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")]
    with torch.inference_mode():
        run_speed(args, args.device, dtype)
        if args.memory_frames:
            run_memory(args, args.device, dtype)


if __name__ == "__main__":
    main()
