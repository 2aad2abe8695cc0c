"""``python -m rain evaluate``: render held-out clips with a models folder and measure them.

Every clip of a prepared dataset is rendered through the inference stream (:meth:`RainPipeline.stream`) driven by
its own condition images, with one of its frames as the reference, and compared with its real frames (PSNR,
SSIM, LPIPS, temporal stability; FVD over the whole set). Drift: a clip looped forth and back (so the motion
stays continuous) into one long stream of ``drift_frames`` frames, measured per ``drift_window`` frames.

Outputs in the output folder, each written whole or not at all: ``metrics.csv`` (one row per clip, then the
mean with FVD), ``drift.csv`` and ``drift.png`` (the drift curves).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import metrics
from .data import ClipStore, DatasetError

#: The paper's guidance per task (§5): whole body 2.0, face 2.5, depth 3.5.
TASK_GUIDANCE = {"face": 2.5, "body": 2.0, "depth": 3.5}
CLIP_COLUMNS = ("clip", "source", "start_frame", "frames", "psnr", "ssim", "lpips", "tdiff_output", "tdiff_truth",
                "tdiff_condition", "flicker_ratio", "motion_corr", "fvd")
DRIFT_COLUMNS = ("clip", "source", "first_frame", "last_frame", "psnr", "ssim", "lpips", "tdiff_output",
                 "flicker_ratio")


@dataclass
class EvaluateOptions:
    clips: int | None = None
    reference_frame: int = 0
    lpips: Path | None = None             # folder; None = <models>/lpips when it holds the files
    i3d: Path | None = None               # ONNX file for FVD
    drift_frames: int = 5000
    drift_window: int = 1000
    drift_clips: int = 1
    guidance: float | None = None         # None = the task's (TASK_GUIDANCE), else 2.5
    seed: int = 42
    frames_per_group: int = 4
    groups: int = 4
    steps_per_group: int = 1
    decoder: str = "taesdv"


@dataclass
class EvaluateReport:
    rows: list[dict]
    summary: dict
    drift: list[dict] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        shown = [c for c in CLIP_COLUMNS if c not in ("source", "start_frame")]
        lines = [_row(shown, {c: c for c in shown})]
        lines += [_row(shown, row) for row in self.rows + [self.summary]]
        if self.drift:
            drift_shown = [c for c in DRIFT_COLUMNS if c != "source"]
            lines += ["", "drift (looped stream):", _row(drift_shown, {c: c for c in drift_shown})]
            lines += [_row(drift_shown, row) for row in self.drift]
        return "\n".join(lines + self.notes)


def _format(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _row(columns, row) -> str:
    return "  ".join(f"{_format(row.get(c)):>{max(8, len(c))}}" for c in columns)


def pingpong(length: int, total: int) -> Iterator[int]:
    """0, 1, …, length-1, length-2, …, 1, 0, 1, … - ``total`` indices of a clip looped without a jump."""
    period = max(1, 2 * length - 2)
    for step in range(total):
        phase = step % period
        yield phase if phase < length else period - phase


def _device_and_dtype(device, dtype):
    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("fp32" if device == "cpu" else "fp16")
    return device, {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]


def _write_atomically(path: Path, write) -> Path:
    partial = path.with_name(path.name + ".tmp")
    write(partial)
    os.replace(partial, path)
    return path


def _write_csv(path: Path, columns, rows) -> Path:
    def write(target):
        with open(target, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return _write_atomically(path, write)


def plot_drift(path: Path, drift: list[dict]) -> Path:
    """PSNR, SSIM, LPIPS (when measured) and flicker ratio against the stream position, one line per clip."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    panels = [("psnr", "PSNR (dB)"), ("ssim", "SSIM")]
    if any(row.get("lpips") is not None for row in drift):
        panels.append(("lpips", "LPIPS"))
    panels.append(("flicker_ratio", "flicker ratio (output / real change)"))
    figure, axes = pyplot.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), sharex=True, squeeze=False)
    for clip in sorted({row["clip"] for row in drift}):
        rows = [row for row in drift if row["clip"] == clip]
        centres = [(row["first_frame"] + row["last_frame"]) / 2 for row in rows]
        for axis, (key, label) in zip(axes[:, 0], panels):
            axis.plot(centres, [row.get(key) if row.get(key) is not None else np.nan for row in rows],
                      marker="o", label=f"clip {clip}")
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
    axes[0, 0].set_title("drift over a long stream (one point per window)")
    axes[0, 0].legend(loc="best", fontsize="small")
    axes[-1, 0].set_xlabel("frame")
    figure.tight_layout()

    def write(target):
        figure.savefig(target, format="png", dpi=100)
    try:
        return _write_atomically(path, write)
    finally:
        pyplot.close(figure)


class _Measure:
    """The per-frame metrics of one rendered sequence against its real frames."""

    def __init__(self, lpips_model):
        self.lpips = lpips_model

    def frames(self, output: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        values = {"psnr": metrics.psnr(output, truth), "ssim": metrics.ssim(output, truth)}
        if self.lpips is not None:
            values["lpips"] = self.lpips.distance(output, truth)
        return values


def _mean(values) -> float:
    return float(np.mean(values))


def evaluate(dataset: str | os.PathLike, models_dir: str | os.PathLike, out_dir: str | os.PathLike,
             options: EvaluateOptions | None = None, *, device=None, dtype=None, vae=None, image_encoder=None,
             progress: bool = False) -> EvaluateReport:
    from tqdm import tqdm

    from ..pipeline import RainPipeline, check_size
    from ..sampling.stream import StreamSettings

    options = options or EvaluateOptions()
    store = ClipStore(dataset)                      # everything that needs no model is checked first
    if len(store) == 0:
        raise DatasetError(f"{dataset} holds no clips")
    height, width = store.size
    check_size(height, width)
    if not 0 <= options.reference_frame < store.clip_length:
        raise ValueError(f"--reference-frame {options.reference_frame}: clips have {store.clip_length} frames")
    if options.drift_frames and options.drift_window < 1:
        raise ValueError("--drift-window must be at least 1 frame")
    lpips_folder = options.lpips or Path(models_dir) / "lpips"
    lpips_model = None
    if options.lpips is not None or (lpips_folder / metrics.LPIPS_LINEAR_FILES[0]).is_file():
        lpips_model = metrics.LPIPS.from_folder(lpips_folder)
    i3d = metrics.I3DFeatures(options.i3d) if options.i3d is not None else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    device, torch_dtype = _device_and_dtype(device, dtype)
    if lpips_model is not None:
        lpips_model.to(device)
    pipe = RainPipeline.from_models_dir(models_dir, device=device, dtype=torch_dtype, vae_path=vae,
                                        image_encoder_path=image_encoder, decoders=(options.decoder,))
    guidance = options.guidance if options.guidance is not None else TASK_GUIDANCE.get(store.manifest.task, 2.5)
    settings = StreamSettings(frames_per_group=options.frames_per_group, num_groups=options.groups,
                              steps_per_group=options.steps_per_group, guidance_scale=guidance, seed=options.seed,
                              decoder=options.decoder)
    measure = _Measure(lpips_model)
    records = _clip_records(store)
    count = min(len(store), options.clips or len(store))
    rows, real_features, generated_features = [], [], []
    for index in tqdm(range(count), desc="evaluating", unit="clip", disable=not progress):
        truth, condition = store.read(index)
        reference = pipe.fuse_reference(truth[options.reference_frame], height, width)
        output = np.stack([f.numpy() for f in pipe.stream(list(condition), reference, settings)])
        values = measure.frames(output, truth)
        row = {"clip": index, "source": records[index].get("source"), "start_frame": records[index].get("start_frame"),
               "frames": len(output), **{k: _mean(v) for k, v in values.items()},
               **metrics.temporal_stability(output, truth, condition)}
        rows.append(row)
        if i3d is not None:  # features now, so the clips need not stay in memory
            real_features.append(i3d([truth])[0])
            generated_features.append(i3d([(np.clip(output, 0, 1) * 255 + 0.5).astype(np.uint8)])[0])
    summary = {"clip": "mean", "frames": sum(r["frames"] for r in rows)}
    for key in CLIP_COLUMNS[4:-1]:
        present = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
        summary[key] = _mean(present) if present else None
    report = EvaluateReport(rows, summary)
    if i3d is not None:
        if count >= 2:
            summary["fvd"] = metrics.fvd(np.stack(real_features), np.stack(generated_features))
            if count <= len(real_features[0]):
                report.notes.append(f"FVD from {count} clips of {len(real_features[0])} I3D features: the "
                                    f"covariances are rank-deficient, so compare it only with runs on the same "
                                    f"clips (the FVD paper uses hundreds of clips)")
        else:
            report.notes.append("FVD needs at least 2 clips; evaluate more clips to get it")
    if lpips_model is None:
        report.notes.append(f"LPIPS not measured: no weights in {lpips_folder} (see README, `evaluate`)")

    if options.drift_frames > 0:
        for index in range(min(options.drift_clips, count)):
            report.drift.extend(_drift(pipe, store, index, records, options, settings, measure, progress))
    report.files.append(_write_csv(out_dir / "metrics.csv", CLIP_COLUMNS, rows + [summary]))
    if report.drift:
        report.files.append(_write_csv(out_dir / "drift.csv", DRIFT_COLUMNS, report.drift))
        report.files.append(plot_drift(out_dir / "drift.png", report.drift))
    return report


def _clip_records(store: ClipStore) -> list[dict]:
    """Per-clip records (source, first frame) from the shards' metadata, in clip order."""
    import json

    from safetensors import safe_open

    records = []
    for shard in store.manifest.shards:
        with safe_open(str(store.root / shard["file"]), "np") as handle:
            meta = (handle.metadata() or {}).get("clips")
        listed = json.loads(meta) if meta else []
        records.extend(listed + [{}] * (shard["clips"] - len(listed)))
    return records


def _drift(pipe, store, index, records, options, settings, measure, progress) -> list[dict]:
    """One clip looped into a long stream, measured per window; frames are measured in small chunks as they
    come out, so a window of 1,000 frames never sits in memory."""
    from tqdm import tqdm

    truth, condition = store.read(index)
    height, width = store.size
    reference = pipe.fuse_reference(truth[options.reference_frame], height, width)
    order = list(pingpong(len(truth), options.drift_frames))
    last = len(order) - 1
    rows: list[dict] = []
    sums: dict[str, float] = {}
    measured = changes = 0
    change_sum = real_change_sum = 0.0
    pending, pending_index = [], []
    previous = previous_index = None   # the frame before the chunk: changes across chunk and window borders count
    window_first = 0
    frames = pipe.stream((condition[k] for k in order), reference, settings)
    for position, frame in enumerate(tqdm(frames, total=len(order), desc=f"drift, clip {index}", unit="frame",
                                          disable=not progress)):
        pending.append(frame.numpy())
        pending_index.append(order[position])
        window_done = (position + 1) % options.drift_window == 0 or position == last
        if len(pending) < 16 and not window_done:
            continue
        output = np.stack(pending)
        for key, values in measure.frames(output, truth[pending_index]).items():
            sums[key] = sums.get(key, 0.0) + float(np.sum(values))
        measured += len(output)
        if previous is not None:
            output = np.concatenate([previous[None], output])
            pending_index = [previous_index] + pending_index
        if len(output) > 1:
            change_sum += float(metrics.frame_changes(output).sum())
            real_change_sum += float(metrics.frame_changes(truth[pending_index]).sum())
            changes += len(output) - 1
        previous, previous_index = output[-1], pending_index[-1]
        pending, pending_index = [], []
        if window_done:
            row = {"clip": index, "source": records[index].get("source"), "first_frame": window_first,
                   "last_frame": position, **{k: v / measured for k, v in sums.items()}}
            if changes:
                row["tdiff_output"] = change_sum / changes
                row["flicker_ratio"] = change_sum / real_change_sum if real_change_sum > 0 else float("nan")
            rows.append(row)
            sums, measured, changes, change_sum, real_change_sum = {}, 0, 0, 0.0, 0.0
            window_first = position + 1
    return rows
