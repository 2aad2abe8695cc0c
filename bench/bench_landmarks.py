"""Per-frame cost of each landmark stage: detector pre/run/post, pose pre/run/post, transform, render.

    python bench/bench_landmarks.py                      # tiny stand-in ONNX models (no downloads), CPU
    python bench/bench_landmarks.py --models ComfyUI/models   # also the real DWPose files (<models>/dwpose/...)

With onnxruntime's CUDA provider available, every configuration is measured on CPU and on CUDA.  The stand-in
models return constants, so their "run" rows measure only onnxruntime call overhead plus input transfer; the
pre/post/transform/render rows are the real per-frame work either way.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rain.pose.dwpose import DWPoseDetector, OnnxModel, StageTimes  # noqa: E402
from rain.pose.face_tracking import FaceLandmarkTracker  # noqa: E402
from rain.pose.landmark_transform import STARTUP_TRANSLATIONS, apply_translations  # noqa: E402
from rain.pose.model_files import locate_dwpose_models  # noqa: E402
from rain.pose.render import render_face_pose  # noqa: E402
from rain.pose.stand_in_models import dwpose_stand_in, yolox_stand_in  # noqa: E402

STAGES = ("resize", "detector_pre", "detector_run", "detector_post", "pose_pre", "pose_run", "pose_post",
          "tracking", "transform", "render")


def stand_in_models(pose_hw: tuple[int, int]) -> tuple[bytes, bytes]:
    """One confident person in the middle; every keypoint peaked at a distinct bin so decoding does real work."""
    raw = np.zeros((8400, 85), np.float32)
    raw[6400 + 20 * 40 + 20, :6] = [0.5, 0.5, np.log(14.0), np.log(20.0), 0.95, 0.95]
    rng = np.random.default_rng(0)
    height, width = pose_hw
    simcc_x = rng.uniform(0, 0.2, (133, 2 * width)).astype(np.float32)
    simcc_y = rng.uniform(0, 0.2, (133, 2 * height)).astype(np.float32)
    simcc_x[np.arange(133), rng.integers(width // 2, 3 * width // 2, 133)] = 0.9
    simcc_y[np.arange(133), rng.integers(height // 2, 3 * height // 2, 133)] = 0.9
    return yolox_stand_in(raw), dwpose_stand_in(simcc_x, simcc_y, input_size=pose_hw)


def measure(detector: DWPoseDetector, frames: list[np.ndarray], size: tuple[int, int], warmup: int = 3
            ) -> dict[str, float]:
    times = StageTimes()
    tracker = FaceLandmarkTracker()
    for i, frame in enumerate(frames):
        if i == warmup:  # first calls include session warm-up / allocations
            times = StageTimes()
        detector.stage_times = times
        detection = detector.detect(frame)
        with times.stage("tracking"):
            face = tracker.update(detection)
        if face is None:
            continue
        with times.stage("transform"):
            moved = apply_translations(face, STARTUP_TRANSLATIONS)
        with times.stage("render"):
            render_face_pose(moved, face, *size)
    return times.milliseconds_per_call()


def report(label: str, ms: dict[str, float]) -> None:
    print(f"\n{label}")
    for stage in STAGES:
        if stage in ms:
            print(f"  {stage:<14s} {ms[stage]:8.3f} ms")
    print(f"  {'total':<14s} {sum(ms.values()):8.3f} ms/frame")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="ComfyUI models folder (or any folder) holding the real DWPose files")
    parser.add_argument("--frames", type=int, default=40, help="frames per configuration (default 40)")
    parser.add_argument("--frame-size", default="480x640", help="driving frame HxW (default 480x640)")
    parser.add_argument("--size", type=int, default=512, help="pose image side (default 512)")
    parser.add_argument("--pose-input", default="256x192", help="stand-in pose model input HxW (default 256x192)")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    frame_h, frame_w = (int(v) for v in args.frame_size.split("x"))
    pose_hw = tuple(int(v) for v in args.pose_input.split("x"))
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (frame_h, frame_w, 3), dtype=np.uint8) for _ in range(args.frames)]
    provider_sets = [["CPUExecutionProvider"]]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        provider_sets.append(["CUDAExecutionProvider", "CPUExecutionProvider"])

    print(f"onnxruntime {ort.__version__}, providers available: {ort.get_available_providers()}")
    print(f"{args.frames} frames of {frame_h}x{frame_w}, detection 512x512, pose image {args.size}x{args.size}")
    det_bytes, pose_bytes = stand_in_models(pose_hw)
    configurations = [(f"stand-in models (pose input {pose_hw[0]}x{pose_hw[1]})", det_bytes, pose_bytes)]
    if args.models:
        det_path, pose_path = locate_dwpose_models(args.models)
        configurations.append((f"real models {det_path.name} + {pose_path.name}", det_path, pose_path))
    for label, det, pose in configurations:
        for providers in provider_sets:
            start = time.perf_counter()
            detector = DWPoseDetector(OnnxModel(det, providers), OnnxModel(pose, providers))
            load_s = time.perf_counter() - start
            ms = measure(detector, frames, (args.size, args.size))
            report(f"{label} on {detector.pose.providers[0]} (sessions opened in {load_s:.2f} s)", ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
