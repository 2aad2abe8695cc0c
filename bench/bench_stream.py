"""Stream speed and memory.

    python bench/bench_stream.py                         # reduced models, 128x128, CPU float32
    python bench/bench_stream.py --full --size 512       # released sizes (random weights), e.g. on a GPU in fp16
    python bench/bench_stream.py --memory-frames 5000    # resident memory over a long stream (reduced size)
    python bench/bench_stream.py --backend eager-full eager compiled onnx          # backends side by side
    python bench/bench_stream.py --full --size 512 --backend eager compiled tensorrt   # on a GPU (fp16)
    python bench/bench_stream.py --full --size 512 --unet-ratio --unet-frames 4    # precomputed attention, 1 call

Backends (``--backend``, several in one run, each against the same models, with the ratio to the first):
eager-full (cross-attention and time embeddings computed on every call, as the official code), eager
(precomputed per-stream constants), fused-eager (the fused steady step in PyTorch), compiled (torch.compile,
CUDA graphs on a GPU), onnx (onnxruntime), tensorrt. For each: steady-state frames/s, time per stage, latency
from a frame's push to its output (p50/p95), and peak memory.

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


BACKEND_CHOICES = ("eager-full", "eager", "fused-eager", "compiled", "onnx", "tensorrt")


def _percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


class _BackendRun:
    """One backend's stream, warmed up, timed in rounds of consecutive frames (rounds of all backends are
    interleaved, so a busy shared machine slows them alike)."""

    def __init__(self, args, pipe, reference, backend, device, cache_dir):
        self.backend, self.args = backend, args
        self.settings = StreamSettings(decoder="taesdv", drain=False)
        self.cuda = torch.device(device).type == "cuda"
        started = time.perf_counter()
        self.stream = self._open(pipe, reference, cache_dir)
        # Warm-up: the soft start, then steady calls (compilation, graph capture, autotuning happen here).
        self.frames = pose_frames(10 ** 9, args.size, args.size)
        for _ in range(self.settings.window_frames + 2 * self.settings.frames_per_group):
            self.stream.push(next(self.frames))
        self.setup = time.perf_counter() - started
        self.timer = StageTimer(device)
        stream = self.stream
        self.actual = getattr(stream.steady_step, "backend", None) or backend
        if stream.steady_step is not None:
            stream.steady_step = _TimedStep(stream.steady_step, self.timer)
        else:
            stream._pose_features = self.timer.wrap("pose guider", stream._pose_features)
            stream._denoise = self.timer.wrap("unet", stream._denoise)
            stream._decode = self.timer.wrap("decode (taesdv)", stream._decode)
            stream.scheduler.step = self.timer.wrap("scheduler", stream.scheduler.step)
        stream.state.noise = self.timer.wrap("noise (host)", stream.state.noise)
        self.elapsed, self.produced, self.latencies, self.peak = 0.0, 0, [], 0

    def _open(self, pipe, reference, cache_dir):
        settings = self.settings
        if self.backend == "eager-full":
            return pipe.open_stream(reference, settings, precompute=False)
        if self.backend == "eager":
            return pipe.open_stream(reference, settings)
        if self.backend == "fused-eager":
            from rain.accel.backends import steady_step_for
            stream = pipe.open_stream(reference, settings)
            stream.use_steady_step(steady_step_for(pipe, "eager", settings, reference.height, reference.width,
                                                   stream.steady_constants()))
            return stream

        def progress(message, fraction):
            print(f"    {message}" + (f" {100 * fraction:.0f}%" if fraction else ""), flush=True)
        return pipe.open_stream(reference, settings, backend=self.backend, cache_dir=cache_dir, progress=progress)

    def round(self, count):
        stream = self.stream
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        pushed, produced = {}, stream.frames_out
        first_out = produced
        start = time.perf_counter()
        for _ in range(count):
            pushed[stream.frames_in] = time.perf_counter()
            out = stream.push(next(self.frames))
            now = time.perf_counter()
            for _ in out:  # frames pushed before this round come out first: no push time for them
                if produced in pushed:
                    self.latencies.append(now - pushed.pop(produced))
                produced += 1
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = max(self.peak, torch.cuda.max_memory_allocated())
        self.elapsed += time.perf_counter() - start
        self.produced += stream.frames_out - first_out

    def report(self):
        fps = self.produced / self.elapsed
        stages = {name: 1000 * total / max(self.produced, 1) for name, total in self.timer.totals.items()}
        stages["other (host)"] = 1000 * (self.elapsed - sum(self.timer.totals.values())) / max(self.produced, 1)
        if self.cuda:
            free, total = torch.cuda.mem_get_info()
            memory = (f"peak torch {self.peak / 2**30:.2f} GiB, device in use {(total - free) / 2**30:.2f} GiB "
                      f"(all streams of this run)")
        else:
            import psutil
            memory = f"process RSS {psutil.Process().memory_info().rss / 2**20:.0f} MiB (all streams of this run)"
        return fps, stages, memory


class _TimedStep:
    """A fused steady step timed as one stage (pose guider, UNet, LCM step and TAESDV are one graph)."""

    def __init__(self, step, timer):
        self.step, self.decodes = step, step.decodes
        self._call = timer.wrap(f"fused step ({getattr(step, 'backend', '?')})", step)

    def __call__(self, *args):
        return self._call(*args)

    def set_constants(self, constants):
        self.step.set_constants(constants)


def run_backends(args, device, dtype):
    import tempfile
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here: skipping the GPU backends run (use --device cpu for the CPU figures)")
        return
    models = build(args.full, device, dtype)
    pipe = RainPipeline(models, device=device, dtype=dtype)
    reference = random_reference(models, args.size, args.size, device, dtype)
    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="rain-bench-"))
    where = (torch.cuda.get_device_name() if torch.device(device).type == "cuda"
             else f"{os.cpu_count()} cores, {torch.get_num_threads()} threads")
    rounds = max(1, args.rounds)
    per_round = max(1, args.frames // rounds)
    print(f"device {device} ({where}), {dtype}, {'released' if args.full else 'reduced'} widths, "
          f"{args.size}x{args.size}, 4 steps, 16-frame window, TAESDV; {rounds} interleaved rounds of {per_round} "
          f"frames per backend")
    runs = {}
    for backend in args.backend:
        print(f"  {backend}: building and warming up …", flush=True)
        try:
            runs[backend] = _BackendRun(args, pipe, reference, backend, device, cache_dir)
        except Exception as error:  # one backend failing (e.g. not installed) must not hide the others
            print(f"  {backend}: FAILED: {type(error).__name__}: {error}")
    for index in range(rounds):
        for run in runs.values():
            run.round(per_round)
        print(f"  round {index + 1}/{rounds} done", flush=True)
    results = {}
    for backend, run in runs.items():
        fps, stages, memory = run.report()
        results[backend] = fps
        latencies = run.latencies or [float("nan")]
        label = backend if run.actual in backend else f"{backend} (ran as {run.actual})"
        print(f"  {label}: {fps:.2f} frames/s ({1000 / fps:.1f} ms/frame); latency push→out p50 "
              f"{1000 * _percentile(latencies, 0.5):.0f} ms, p95 {1000 * _percentile(latencies, 0.95):.0f} ms "
              f"({len(run.latencies)} frames); {memory}; setup + warm-up {run.setup:.1f} s")
        for name, ms in sorted(stages.items(), key=lambda kv: -kv[1]):
            print(f"      {name:30s} {ms:9.2f} ms/frame")
    if not results:
        return
    base = "eager" if "eager" in results else next(iter(results))
    print(f"ratios to {base} (frames/s, higher is faster):")
    for backend, fps in results.items():
        print(f"  {backend:12s} {fps / results[base]:6.3f}x")


def run_unet_ratio(args, device, dtype):
    """One UNet call over a window with per-call attention/time embeddings vs precomputed ones."""
    from rain.models.embeddings import guidance_scale_embedding
    models = build(args.full, device, dtype)
    unet = models.video_unet
    reference = random_reference(models, args.size, args.size, device, dtype)
    frames = args.unet_frames
    h = args.size // 8
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, frames, h, h, generator=generator).to(device, dtype)
    pose = torch.randn(1, unet.config.block_out_channels[0], frames, h, h, generator=generator).to(device, dtype)
    timesteps = torch.tensor([[249, 499, 749, 999]]).repeat_interleave(max(1, frames // 4), dim=1)[:, :frames]
    timesteps = timesteps.to(device)
    context = reference.context.to(device, dtype)
    guidance = guidance_scale_embedding(2.5, dtype=dtype, device=device)
    unet.set_reference(reference.features)
    attention = unet.attention_inputs(reference.features, context)
    temb = unet.time_embeddings(timesteps, 1, frames, guidance)
    cuda = torch.device(device).type == "cuda"

    def once(fn):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    # Alternated, best of each: on a shared machine load comes and goes; the minimum is the least disturbed.
    full = pre = float("inf")
    for _ in range(args.unet_repeats):
        seconds, out_full = once(lambda: unet(sample, timesteps, context, pose, guidance))
        full = min(full, seconds)
        seconds, out_pre = once(lambda: unet(sample, timesteps, context, pose, temb=temb, attention=attention))
        pre = min(pre, seconds)
    diff = (out_full.float() - out_pre.float()).abs().max().item()
    print(f"UNet call, {'released' if args.full else 'reduced'} widths, {args.size}x{args.size}, {frames} frames, "
          f"{dtype}, best of {args.unet_repeats}: full {full:.2f} s, precomputed {pre:.2f} s, "
          f"speed-up {full / pre:.3f}x, max |diff| {diff:.2e}")


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
    parser.add_argument("--backend", nargs="+", choices=BACKEND_CHOICES, default=None,
                        help="measure these backends side by side (see above) instead of the stage breakdown")
    parser.add_argument("--cache-dir", default=None, help="where onnx/tensorrt artefacts go (default: a temp dir)")
    parser.add_argument("--rounds", type=int, default=2, help="--backend: interleaved timing rounds")
    parser.add_argument("--unet-ratio", action="store_true", help="time one UNet call, precomputed vs full")
    parser.add_argument("--unet-frames", type=int, default=16)
    parser.add_argument("--unet-repeats", type=int, default=2)
    args = parser.parse_args()
    args.size = args.size or (512 if args.full else 128)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")]
    if args.unet_ratio:
        with torch.inference_mode():
            run_unet_ratio(args, args.device, dtype)
        return
    if args.backend:
        run_backends(args, args.device, dtype)
        return
    with torch.inference_mode():
        run_speed(args, args.device, dtype)
        if args.memory_frames:
            run_memory(args, args.device, dtype)


if __name__ == "__main__":
    main()
