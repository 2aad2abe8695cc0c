"""Training on several processes, for real: `torchrun` and `accelerate launch` with 2 CPU processes (gloo), tiny
models, a synthetic dataset. 2 processes equal 1 process with accumulation; a run resumes with 2 or 1 processes;
Ctrl+C in the middle of an accumulation or at a step boundary, on 1 process or on one rank of 2, saves at a
consistent point and the resumed run ends with bit-identical weights. The same with ``[train] sharding = "fsdp"``
(FSDP2 over the two processes), whose checkpoints are ordinary files that resume sharded or not."""

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "distributed_train.py"
STEPS = 4


def config_text(root: Path, output: Path, steps: int = STEPS, stage: str = "stage1", sharding: str = "none",
                samples: int = 0) -> str:
    video = stage in ("stage2", "distill3d")      # 2 frames per group: clips of 8 frames, one per micro-batch
    models = (root / "models").as_posix()
    distill = f'teacher = "{models}"\n' if stage.startswith("distill") else ""
    return f'''stage = "{stage}"
dataset = "{(root / 'data').as_posix()}"
output_dir = "{output.as_posix()}"
seed = 7
[models]
init = "{(root / 'models').as_posix()}"
shared = "{(root / 'models').as_posix()}"
export_dir = "{(output / 'model').as_posix()}"
{distill}[train]
sharding = "{sharding}"
steps = {steps}
batch_size = {2 if video else 4}
micro_batch_size = 1
learning_rate = 1e-3
num_workers = 0
checkpoint_every = 2
mixed_precision = "no"
[data]
frames_per_group = {2 if video else 1}
num_groups = 4
uncond_ratio = 0.5                  # some steps see no reference at all (sharded AdamW must skip it then)
[distill]
ddim_timesteps = 20
[samples]
every = {samples}
frames = 8
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_models_dir):
    from rain.training.data import write_synthetic_dataset
    root = tmp_path_factory.mktemp("distributed")
    write_synthetic_dataset(root / "data", clips=6, clip_length=8, size=(64, 64))
    manifest = root / "data" / "manifest.json"    # as if prepared with --task depth: the export records it
    manifest.write_text(manifest.read_text(encoding="utf-8").replace('"task": "synthetic"', '"task": "depth"'),
                        encoding="utf-8")
    shutil.copytree(tiny_models_dir, root / "models")
    return root


def env() -> dict:
    path = os.pathsep.join(p for p in (str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def launch(root: Path, name: str, processes: int, *, launcher: str = "torchrun", extra=(), hooks=None,
           output: str | None = None, stage: str = "stage1", sharding: str = "none",
           samples: int = 0) -> tuple[int, Path, str]:
    """Run the tiny ``stage`` as ``name`` on ``processes`` processes; (exit code, output folder, console)."""
    out = root / (output or name)
    config = root / f"{name}.toml"
    config.write_text(config_text(root, out, stage=stage, sharding=sharding, samples=samples), encoding="utf-8")
    if processes == 1:
        command = [sys.executable, str(SCRIPT)]
    elif launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(29500 + abs(hash(name)) % 2000), str(SCRIPT)]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(31500 + abs(hash(name)) % 2000), str(SCRIPT)]
    variables = {**env(), "RAIN_TEST_WEIGHTS": str(root / "weights" / name), **(hooks or {})}
    done = subprocess.run([*command, str(config), *extra], env=variables, capture_output=True, text=True,
                          timeout=600)
    return done.returncode, out, done.stdout + done.stderr


def losses(out: Path) -> list[float]:
    with (out / "log.csv").open(encoding="utf-8") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def weights(root: Path, name: str, rank: int = 0) -> dict[str, torch.Tensor]:
    return load_file(str(root / "weights" / name / f"rank-{rank}.safetensors"))


def initial(root: Path, names) -> dict[str, torch.Tensor]:
    """The starting weights (the tiny set) of the trained parameters ``names``."""
    from rain import weights as files
    loaded = {}
    for module in ("reference_unet", "motion_unet", "pose_guider"):
        state = files.load_state_dict(files.find_weight(root / "models", module))
        loaded.update({f"{module}.{k}": v for k, v in state.items()})
    found = {name: loaded[name] for name in names if name in loaded}
    assert len(found) > len(names) // 2, "the trained parameters are not named as in the files"
    return found


@pytest.fixture(scope="module")
def references(workspace):
    """Uninterrupted runs: 1 process accumulating 4 micro-batches, 2 processes (torchrun) accumulating 2."""
    one = launch(workspace, "one", 1)
    two = launch(workspace, "two", 2)
    assert one[0] == 0, one[2]
    assert two[0] == 0, two[2]
    return workspace


def test_two_processes_equal_one_process_with_accumulation(references):
    root = references
    code, accelerated, console = launch(root, "accelerate", 2, launcher="accelerate")
    assert code == 0, console
    one, two = losses(root / "one"), losses(root / "two")
    assert len(one) == len(two) == STEPS                      # written once: only the main process logs
    assert losses(accelerated) == pytest.approx(two, rel=1e-4)
    assert two == pytest.approx(one, rel=1e-4)
    single, rank0, rank1 = weights(root, "one"), weights(root, "two", 0), weights(root, "two", 1)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # every rank holds the same weights
    moved_within_one_percent(root, single, rank0)
    for out in (root / "one", root / "two", accelerated):     # the exported set, by the main process only
        assert (out / "model" / "motion_unet.safetensors").is_file()


@pytest.fixture(scope="module")
def half(references):
    """A run of 2 processes stopped after 2 of its 4 steps."""
    code, first, console = launch(references, "half", 2, extra=["--stop-after", "2"])
    assert code == 0 and "stopped at step 2" in console, console
    return first


def moved_within_one_percent(root: Path, reference: dict, other: dict) -> None:
    """``other`` is apart from ``reference`` by at most 1 % of how far training moved ``reference``."""
    travelled = max((reference[k] - v).abs().max().item() for k, v in initial(root, reference).items())
    moved = max((reference[k] - other[k]).abs().max().item() for k in reference)
    assert travelled > 0 and moved <= 0.01 * travelled, (moved, travelled)


def test_a_run_of_two_processes_resumes_with_two_or_one(references, half):
    root, first = references, half
    for name, processes in (("again-two", 2), ("again-one", 1)):
        shutil.copytree(first, root / name)
        code, _, console = launch(root, name, processes)
        assert code == 0, console
        assert losses(root / name)[:2] == losses(first)[:2]
    two, again_two, again_one = weights(root, "two"), weights(root, "again-two"), weights(root, "again-one")
    assert all(torch.equal(two[k], again_two[k]) for k in two)           # 2 → 2: bit-identical
    moved_within_one_percent(root, two, again_one)                       # 2 → 1


@pytest.mark.parametrize("processes, at, rank, where", [
    (1, 2, 0, "middle"),      # 1 process, accumulation 4: the 2nd micro-batch of step 1
    (1, 5, 0, "boundary"),    # the first micro-batch of step 2
    (2, 2, 1, "middle"),      # 2 processes, accumulation 2: Ctrl+C to rank 1 alone, at its 2nd micro-batch
    (2, 3, 0, "boundary"),
], ids=["1-middle", "1-boundary", "2-middle", "2-boundary"])
def test_ctrl_c_saves_a_consistent_point_and_the_resumed_weights_are_bit_identical(references, processes, at,
                                                                                   rank, where):
    root = references
    name = f"ctrl-c-{processes}-{where}"
    hooks = {"RAIN_TEST_SIGINT_AT": str(at), "RAIN_TEST_SIGINT_RANK": str(rank)}
    code, out, console = launch(root, name, processes, hooks=hooks)
    assert code != 0 and "interrupted at step" in console, console
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved and not any(p.endswith(".partial") for p in saved)
    code, _, console = launch(root, name, processes)          # the same command continues
    assert code == 0, console
    reference = weights(root, "one" if processes == 1 else "two")
    resumed = weights(root, name)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference), where
    assert losses(out) == losses(root / ("one" if processes == 1 else "two"))


def test_the_exported_set_says_what_it_is_and_the_loaders_read_it(references, caplog):
    from argparse import Namespace

    from rain.animate import frame_size
    from rain.live.standalone import native_size
    from rain.model_set import read_declaration
    export = references / "one" / "model"
    declaration = read_declaration(export / "motion_unet.safetensors")
    assert declaration.native_size == (64, 64) and declaration.task == "depth" and declaration.stage == "stage1"
    recorded = (export / "rain_model_set.json").read_text(encoding="utf-8")
    assert '"training"' in recorded and '"micro_batch_size": 1' in recorded and '"step": 4' in recorded
    notes = []
    info = Namespace(height=240, width=320)
    args = Namespace(models_dir=export, task="face", size=None)
    assert frame_size(args, info, notes) == (64, 64)          # animate renders at the trained size
    assert any("trained for 'depth'" in note for note in notes)
    assert frame_size(Namespace(models_dir=export, task="depth", size=None), info, []) == (64, 64)
    with caplog.at_level("WARNING"):
        assert native_size(export, "body") == (64, 64)       # rain live too
    assert "trained for 'depth'" in caplog.text


# -- sharded (FSDP) ------------------------------------------------------------------------------------------------
def only_ordinary_files(checkpoint: Path) -> None:
    """A sharded run's checkpoint holds whole tensors in safetensors and JSON, nothing to unpickle, no shards."""
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == ["model.safetensors", "optimizer.json", "optimizer.safetensors", "progress.json",
                     "random_states.safetensors", "scheduler.json"], names


@pytest.fixture(scope="module")
def sharded(references):
    """Stage 1 on 2 processes with [train] sharding = "fsdp", uninterrupted, a sample video every 2 steps."""
    code, out, console = launch(references, "sharded", 2, sharding="fsdp", samples=2)
    assert code == 0, console
    found = re.search(r"sharded over 2 processes \(FSDP\): this one holds ([\d.]+) M of the model's ([\d.]+) M",
                      console)
    assert found, console
    held, whole = float(found[1]), float(found[2])
    assert 0.45 * whole <= held <= 0.55 * whole          # each process holds half the weights
    return out


def test_sharded_training_equals_one_process_and_writes_ordinary_files(references, sharded):
    root = references
    assert losses(sharded) == pytest.approx(losses(root / "one"), rel=1e-4)
    single, rank0, rank1 = weights(root, "one"), weights(root, "sharded", 0), weights(root, "sharded", 1)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)   # gathered, the shards make one model
    moved_within_one_percent(root, single, rank0)
    for checkpoint in (sharded / "checkpoints").iterdir():
        only_ordinary_files(checkpoint)
    exported = load_file(str(sharded / "model" / "motion_unet.safetensors"))
    unsharded = load_file(str(root / "one" / "model" / "motion_unet.safetensors"))
    assert set(exported) == set(unsharded)                # the same set, frozen parts bit for bit
    assert all(torch.equal(exported[k], unsharded[k]) for k in exported if "motion_modules" in k)
    trained = [k for k in exported if f"motion_unet.{k}" in rank0]
    assert trained and all(torch.equal(exported[k], rank0[f"motion_unet.{k}"]) for k in trained)


def test_a_sharded_run_renders_its_samples_with_the_whole_model(references, sharded, tmp_path):
    """The sample video of the last step equals the one the exported set renders (the sharded model is gathered
    into whole copies for it, by every process)."""
    import av
    import numpy as np

    from rain.training.config import load_config
    from rain.training.loop import make_stage
    from rain.training.preview import render_sample, sample_clip, write_sample_video

    def decoded(path):
        with av.open(str(path)) as container:
            return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])

    assert sorted(p.name for p in (sharded / "samples").iterdir()) == ["step-000002.mp4", "step-000004.mp4"]
    config = load_config(references / "sharded.toml")
    config.models.init = str(sharded / "model")
    stage = make_stage(config, torch.device("cpu"), torch.float32)
    stage.build()
    frames, conditions = sample_clip(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # as the training processes: 32 sampling steps magnify a changed summation order
    try:
        rendered = render_sample(config, stage.preview_models(), torch.device("cpu"), frames, conditions)
    finally:
        torch.set_num_threads(threads)
    expected = write_sample_video(tmp_path / "expected.mp4", conditions, rendered, frames, config.samples.fps)
    assert np.array_equal(decoded(sharded / "samples" / "step-000004.mp4"), decoded(expected))


def test_sharded_ctrl_c_resumes_bit_identical_and_its_checkpoint_resumes_unsharded(references, sharded):
    root = references
    hooks = {"RAIN_TEST_SIGINT_AT": "2", "RAIN_TEST_SIGINT_RANK": "1"}   # rank 1 alone, mid-accumulation
    code, out, console = launch(root, "sharded-ctrl-c", 2, hooks=hooks, sharding="fsdp")
    assert code != 0 and "interrupted at step 1" in console, console
    only_ordinary_files(out / "checkpoints" / "step-000001")
    shutil.copytree(out, root / "sharded-then-one")
    code, _, console = launch(root, "sharded-ctrl-c", 2, sharding="fsdp")
    assert code == 0, console
    resumed, uninterrupted = weights(root, "sharded-ctrl-c"), weights(root, "sharded")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert losses(out) == losses(sharded)
    code, _, console = launch(root, "sharded-then-one", 1, sharding="fsdp")   # 2 → 1 process: trains unsharded
    assert code == 0 and "sharded over" not in console, console
    moved_within_one_percent(root, uninterrupted, weights(root, "sharded-then-one"))


def test_an_unsharded_checkpoint_resumes_sharded(references, half):
    root = references
    shutil.copytree(half, root / "half-then-sharded")
    code, _, console = launch(root, "half-then-sharded", 2, sharding="fsdp")
    assert code == 0 and "sharded over 2 processes" in console, console
    moved_within_one_percent(root, weights(root, "two"), weights(root, "half-then-sharded"))
    assert losses(root / "half-then-sharded")[:2] == losses(half)


def test_sharded_distillation_equals_one_process(references):
    """3-D distillation: the student sharded, its teacher and EMA target too (accelerate launch), stopped after 2
    steps and resumed (the EMA target comes back from the checkpoint into its shards)."""
    root = references
    code, one, console = launch(root, "distill-one", 1, stage="distill3d")
    assert code == 0, console
    code, out, console = launch(root, "distill-sharded", 2, launcher="accelerate", stage="distill3d",
                                sharding="fsdp", extra=["--stop-after", "2"])
    assert code == 0 and "sharded over 2 processes" in console and "stopped at step 2" in console, console
    code, out, console = launch(root, "distill-sharded", 2, launcher="accelerate", stage="distill3d",
                                sharding="fsdp")
    assert code == 0 and "continued from the checkpoint of step 2" in console, console
    assert losses(out) == pytest.approx(losses(one), rel=1e-4)
    moved_within_one_percent(root, weights(root, "distill-one"), weights(root, "distill-sharded"))
    ema_one = load_file(str(one / "checkpoints" / "step-000004" / "extra.safetensors"))
    ema_sharded = load_file(str(out / "checkpoints" / "step-000004" / "extra.safetensors"))
    assert set(ema_one) == set(ema_sharded)               # the EMA target, gathered whole
    as_set = lambda ema: {f"motion_unet.{k[len('ema.'):]}": v for k, v in ema.items()}   # noqa: E731
    moved_within_one_percent(root, as_set(ema_one), as_set(ema_sharded))
