"""Memory per process of sharded training (``[train] sharding = "fsdp"``) for 1, 2, 4 and 8 processes: measured at
reduced size, projected to 512².

Measured: stage 2 and 3-D distillation of the tiny random models (64², clips of 8 frames) really train for one
optimizer step on N CPU processes (torchrun, gloo; N = 1 trains unsharded). Right after that step every process
adds up the bytes of the tensors it holds (each storage once): its optimizer state, its gradients, its weights
(trained model, teacher, EMA target, encoders — a shard counts its local part only) and the rest. Beside the
measurement, the formula the projection uses, from the same models' parameter counts:
U + S/N, where S is what sharding splits (trained weights × 16 bytes: fp32 weight, gradient, AdamW's two moments; the
trained model's frozen weights and distillation's EMA target and teacher × 4 bytes on the CPU) and U what every
process keeps whole (the encoders; distillation's reference UNet and pose guider).

Projected: the same formula at the released sizes under bf16 (frozen weights held in fp32 when sharded, the teacher
and everything unsharded in bf16), plus what FSDP gathers while a unit computes (the root unit and two units in
bf16, one unit's fp32 gradients), from the models built on the meta device.

    python bench/bench_sharded_memory.py                      # stage2 and distill3d, 1/2/4/8 processes
    python bench/bench_sharded_memory.py --processes 1 2 --stages stage2
"""

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GB = 1e9


# -- one process of a measured run (started by torchrun) -----------------------------------------------------------
def _measure(optimizer) -> dict:
    from rain.training.sharding import is_sharded
    seen: dict[int, tuple[str, int]] = {}

    def add(tensor, kind):
        if is_sharded(tensor):
            tensor = tensor.to_local()
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        if storage.data_ptr() and storage.data_ptr() not in seen:
            seen[storage.data_ptr()] = (kind, storage.nbytes())

    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                add(value, "optimizer")
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if parameter.grad is not None:
                add(parameter.grad, "gradients")
    objects = gc.get_objects()
    for obj in objects:
        if isinstance(obj, torch.nn.Parameter):
            add(obj, "weights")
    for obj in objects:
        if torch.is_tensor(obj) and not isinstance(obj, torch.nn.Parameter):
            add(obj, "other")
    totals = {"optimizer": 0, "gradients": 0, "weights": 0, "other": 0}
    for kind, size in seen.values():
        totals[kind] += size
    return totals


def _formula(stage) -> dict:
    """S and U (bytes) from the stage's parameter counts, as the module docstring says; S1 is S of an unsharded run
    (one process), whose EMA target shares the student's frozen weights."""
    def count(module, trained=None):
        return sum(p.numel() for p in module.parameters() if trained is None or p.requires_grad == trained)

    models = stage.models
    encoders = count(stage.encoders.vae) + count(stage.encoders.image_encoder)
    if stage.config.stage.startswith("distill"):
        trained, frozen = count(models.denoiser, True), count(models.denoiser, False)
        extra, extra_unsharded = count(stage.target) + count(stage.teacher), trained + count(stage.teacher)
        whole = encoders + count(models.reference_unet) + count(models.pose_guider)
    else:
        modules = list(models.modules().values())
        trained = sum(count(m, True) for m in modules)
        frozen = sum(count(m, False) for m in modules)
        extra = extra_unsharded = 0
        whole = encoders
    return {"S": trained * 16 + (frozen + extra) * 4, "S1": trained * 16 + (frozen + extra_unsharded) * 4,
            "U": whole * 4}


def worker(config: str, out: str) -> int:
    from rain.cli import main as rain_main
    from rain.training import loop
    rank = int(os.environ.get("RANK", "0"))
    stages, measured = [], {}
    make_stage = loop.make_stage

    def recording(*args, **kwargs):
        stages.append(make_stage(*args, **kwargs))
        return stages[-1]

    def after_step(optimizer, args, kwargs):
        if not measured:
            measured.update(_measure(optimizer))

    loop.make_stage = recording
    from torch.optim.optimizer import register_optimizer_step_post_hook
    register_optimizer_step_post_hook(after_step)
    code = rain_main(["train", config, "--no-progress"])
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank-{rank}.json").write_text(json.dumps({"measured": measured, **_formula(stages[0])}))
    return code


# -- the driver --------------------------------------------------------------------------------------------------
def _config(root: Path, stage: str, output: Path, processes: int) -> Path:
    models = (root / "models").as_posix()
    teacher = f'teacher = "{models}"\n' if stage.startswith("distill") else ""
    text = f'''stage = "{stage}"
dataset = "{(root / 'data').as_posix()}"
output_dir = "{output.as_posix()}"
[models]
init = "{models}"
shared = "{models}"
{teacher}[train]
sharding = "fsdp"
steps = 1
batch_size = 8
micro_batch_size = 1
num_workers = 0
mixed_precision = "no"
[data]
frames_per_group = 2
num_groups = 4
[distill]
ddim_timesteps = 20
[samples]
every = 0
'''
    path = root / f"{stage}-{processes}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def measure(root: Path, stage: str, processes: int) -> list[dict]:
    output = root / f"{stage}-{processes}"
    shutil.rmtree(output, ignore_errors=True)
    config = _config(root, stage, output, processes)
    report = root / f"{stage}-{processes}-report"
    shutil.rmtree(report, ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(29700 + processes), __file__, "--worker", str(config), str(report)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{stage} on {processes} processes failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return [json.loads((report / f"rank-{r}.json").read_text()) for r in range(processes)]


def measured_table(stages: list[str], counts: list[int]) -> None:
    from rain.devtools import write_tiny_models
    from rain.training.data import write_synthetic_dataset
    root = Path(tempfile.mkdtemp(prefix="rain-sharded-memory-"))
    try:
        write_synthetic_dataset(root / "data", clips=4, clip_length=8, size=(64, 64))
        write_tiny_models(root / "models")
        print("measured at reduced size (tiny models, 64², 8-frame clips, fp32 on the CPU), per process, MB:")
        print(f"{'stage':10} {'N':>2} {'optimizer':>9} {'gradients':>9} {'weights':>8} {'other':>6} {'total':>7} "
              f"{'U + S/N':>8} {'sharded part × N / S':>21}")
        for stage in stages:
            for n in counts:
                ranks = measure(root, stage, n)
                worst = max(ranks, key=lambda r: sum(r["measured"].values()))
                m, u = worst["measured"], worst["U"]
                s = worst["S"] if n > 1 else worst["S1"]
                total = sum(m.values())
                sharded = m["optimizer"] + m["gradients"] + m["weights"] - u     # what is not kept whole
                print(f"{stage:10} {n:2d} {m['optimizer'] / 1e6:9.2f} {m['gradients'] / 1e6:9.2f} "
                      f"{m['weights'] / 1e6:8.2f} {m['other'] / 1e6:6.2f} {total / 1e6:7.2f} {(u + s / n) / 1e6:8.2f} "
                      f"{sharded * n / s:21.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def projection(counts: list[int]) -> None:
    """The formula at the released sizes, bf16, AdamW (see the module docstring)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_training_memory import _count, build   # the models on the meta device
    from rain.training.model_sets import SD_DENOISER_EXTRA, is_motion_parameter
    from rain.training.sharding import WRAPPED_CLASSES
    reference, denoiser, guider, clip, vae = build()
    encoders = _count(clip) + _count(vae)
    motion = _count(denoiser, is_motion_parameter)
    denoiser_all = _count(denoiser)

    def units(nets):
        return [m for net in nets for m in net.modules() if type(m).__name__ in WRAPPED_CLASSES]

    largest = max(_count(u) for u in units((reference, denoiser)))
    stages = {
        # name: (trained, frozen inside the trained model, EMA target + teacher (bytes), whole params, model params)
        "stage2": (motion, _count(reference) + denoiser_all - motion + _count(guider), 0, encoders,
                   _count(reference) + denoiser_all + _count(guider)),
        "distill3d (all)": (denoiser_all, 0, denoiser_all * (4 + 2), encoders + _count(reference) + _count(guider),
                            denoiser_all),
    }
    unsharded = {"stage2": 10.7, "distill3d (all)": 29.2}   # bench_training_memory.py (GiB), frozen in bf16
    print("\nprojected to 512², bf16, AdamW: static memory per GPU in GB (add activations: 31.4 GiB per clip plain, "
          "5.2 GiB with gradient checkpointing, and ~2 GB of CUDA context)")
    print(f"{'stage':18} " + " ".join(f"{n:>7}" for n in counts))
    for name, (trained, frozen, extra_bytes, whole, model) in stages.items():
        nets = (denoiser,) if name.startswith("distill") else (reference, denoiser)
        root_params = model - sum(_count(u) for u in units(nets))
        row = []
        for n in counts:
            if n == 1:
                row.append(f"{unsharded[name] * 2 ** 30 / GB:7.1f}")
                continue
            sharded = trained * 16 + frozen * 4 + extra_bytes
            gathered = root_params * 2 + 2 * largest * 2 + largest * 4
            row.append(f"{(whole * 2 + sharded / n + gathered) / GB:7.1f}")
        print(f"{name:18} " + " ".join(row))
    root_stage2 = (_count(reference) + denoiser_all + _count(guider)
                   - sum(_count(u) for u in units((reference, denoiser))))
    root_distill = denoiser_all - sum(_count(u) for u in units((denoiser,)))
    print(f"(largest unit {largest / 1e6:.1f} M parameters; the root unit, gathered throughout: "
          f"{root_stage2 / 1e6:.0f} M for stage 2, {root_distill / 1e6:.0f} M for distillation)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        torch.set_num_threads(1)
        raise SystemExit(worker(sys.argv[2], sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--stages", nargs="+", default=["stage2", "distill3d"], choices=["stage2", "distill3d"])
    parser.add_argument("--projection-only", action="store_true")
    args = parser.parse_args()
    if not args.projection_only:
        measured_table(args.stages, args.processes)
    projection(args.processes)


if __name__ == "__main__":
    main()
