"""The render farm: job files checked before any model loads, jobs rendered in this process or on a real local Ray
cluster on the CPU, frames equal to plain renders, a worker killed with SIGKILL mid-job and the job finishing with
equal frames, Ctrl+C on the driver then a rerun that continues."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_cli import write_pose_video

from rain.farm import JobFileError, load_jobs, run_batch
from rain.farm.cli import run as run_batch_cli

REPO = Path(__file__).resolve().parent.parent
SIZE = 64
FAST = ["--size", str(SIZE), "--frames-per-group", "2", "--groups", "2", "--save-every", "8"]


def batch(*argv) -> int:
    from rain.cli import build_parser
    return run_batch_cli(build_parser().parse_args(["batch", *map(str, argv)]))


def frames_of(folder: Path) -> np.ndarray:
    files = sorted(Path(folder).glob("*.png"))
    assert files, f"no frames in {folder}"
    return np.stack([np.asarray(Image.open(f)) for f in files])


@pytest.fixture(scope="module")
def farm(tmp_path_factory, tiny_models_dir):
    """A shared folder: tiny models, a reference, three driving videos of different lengths."""
    root = tmp_path_factory.mktemp("farm")
    Image.new("RGB", (SIZE, SIZE), (200, 120, 40)).save(root / "ref.png")
    for name, frames in (("short", 12), ("long", 40), ("mid", 24)):
        write_pose_video(root / f"{name}.mp4", frames=frames, height=SIZE, width=SIZE)
    return root, tiny_models_dir


def job_file(root: Path, name: str, jobs: list[dict], kind=".json") -> Path:
    path = root / f"{name}{kind}"
    if kind == ".json":
        path.write_text(json.dumps(jobs), encoding="utf-8")
    elif kind == ".jsonl":
        path.write_text("\n".join(json.dumps(j) for j in jobs), encoding="utf-8")
    else:
        keys = list(dict.fromkeys(k for j in jobs for k in j))
        lines = [",".join(keys)] + [",".join(str(j.get(k, "")) for k in keys) for j in jobs]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def defaults(models, **extra) -> argparse.Namespace:
    values = dict(models_dir=str(models), size=(SIZE, SIZE), frames_per_group=2, groups=2, save_every=8)
    values.update(extra)
    return argparse.Namespace(**values)


# -- the job file, checked before any model -------------------------------------------------------------------
def test_every_bad_job_is_named_with_its_number_and_what_to_fix(farm, monkeypatch):
    root, models = farm
    import rain.pipeline
    monkeypatch.setattr(rain.pipeline.RainPipeline, "from_models_dir",
                        classmethod(lambda *a, **k: pytest.fail("a model was loaded while checking the job file")))
    path = job_file(root, "checks", [
        {"reference": "ref.png", "driving": "short.mp4", "output": "checks/ok/"},
        {"reference": "ref.png", "driving": "short.mp4", "output": "checks/a/", "colour": "blue"},
        {"reference": "ref.png", "driving": "short.mp4", "output": "checks/b/", "seed": "forty"},
        {"reference": "nobody.png", "driving": "short.mp4", "output": "checks/c/"},
        {"reference": "ref.png", "driving": "gone.mp4", "output": "checks/d/"},
        {"reference": "ref.png", "driving": "mid.mp4", "output": "checks/ok/"},
        {"reference": "ref.png", "driving": "short.mp4", "output": "checks/e.avi"},
        {"reference": "ref.png", "driving": "short.mp4", "output": "checks/f/", "resume": "true"},
        {"driving": "short.mp4", "output": "checks/g/"},
    ], ".csv")
    listed = load_jobs(path, defaults(models))
    problems = {job.number: job.problem for job in listed.jobs}
    assert problems[1] is None and listed.jobs[0].expected_frames == 12
    assert "unknown column/key 'colour'" in problems[2] and "frames_per_group" in problems[2]
    assert "--seed" in problems[3] and "forty" in problems[3]
    assert "nobody.png" in problems[4]
    assert "gone.mp4" in problems[5]
    assert "as job 1 (line 2) does" in problems[6]
    assert "'.avi' is not an output type" in problems[7]
    assert "'resume' is decided by batch" in problems[8]
    assert "--reference" in problems[9]
    assert [j.where for j in listed.bad][:2] == ["job 2 (line 3)", "job 3 (line 4)"]


@pytest.mark.parametrize("name, content, says", [
    ("jobs.txt", "reference,driving,output\n", "is .csv, .json or .jsonl"),
    ("empty.csv", "", "is empty"),
    ("blank.json", "[]", "holds no job"),
    ("broken.json", "[{", "not valid JSON"),
    ("broken.jsonl", '{"reference": "a"}\nnot json\n', "line 2 is not JSON"),
    ("dict.json", '{"reference": "a"}', "expected a list of jobs"),
])
def test_an_unusable_job_file_exits_2(farm, tmp_path, capsys, name, content, says):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(JobFileError, match=says):
        load_jobs(path)
    assert batch(path) == 2
    assert says in capsys.readouterr().err
    assert batch(tmp_path / "absent.csv") == 2


def test_paths_are_relative_to_the_job_file_and_the_cli_options_are_defaults(farm, tmp_path):
    root, models = farm
    path = job_file(root, "rel", [{"reference": "ref.png", "driving": "mid.mp4", "output": "rel/x/",
                                   "frames-per-group": 1},
                                  {"reference": str(root / "ref.png"), "driving": "short.mp4",
                                   "output": "rel/y/"}], ".jsonl")
    listed = load_jobs(path, defaults(models, seed=7))
    first, second = listed.jobs
    assert Path(first.args.reference) == root / "ref.png" and Path(first.args.output) == root / "rel" / "x"
    assert first.args.frames_per_group == 1 and second.args.frames_per_group == 2   # the row wins, else the CLI
    assert first.args.seed == second.args.seed == 7
    assert first.args.task == "pose" and second.args.guidance == 2.5              # animate's own defaults


# -- in this process ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_renders(farm, tmp_path_factory):
    """Each driving video rendered alone by `animate` (one torch thread, as the farm's CPU workers)."""
    from rain.cli import main
    root, models = farm
    out = tmp_path_factory.mktemp("plain")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, seed in (("short", 1), ("long", 2), ("mid", 3)):
            assert main(["animate", "--models-dir", str(models), "--reference", str(root / "ref.png"),
                         "--driving", str(root / f"{name}.mp4"), "-o", str(out / name), "--seed", str(seed),
                         *FAST]) == 0
    finally:
        torch.set_num_threads(threads)
    return {name: frames_of(out / name) for name in ("short", "long", "mid")}


def three_jobs(root: Path, tag: str) -> Path:
    return job_file(root, tag, [
        {"reference": "ref.png", "driving": "short.mp4", "output": f"{tag}/short/", "seed": 1},
        {"reference": "ref.png", "driving": "long.mp4", "output": f"{tag}/long/", "seed": 2},
        {"reference": "ref.png", "driving": "missing.mp4", "output": f"{tag}/bad/", "seed": 9},
        {"reference": "ref.png", "driving": "mid.mp4", "output": f"{tag}/mid/", "seed": 3},
    ])


def test_in_process_batch_equals_plain_renders_and_a_rerun_skips(farm, plain_renders, capsys):
    root, models = farm
    path = three_jobs(root, "local")
    report = root / "local-report.json"
    threads = torch.get_num_threads()
    try:
        code = batch(path, "--models-dir", models, *FAST, "--threads", 1, "--report", report)
    finally:
        torch.set_num_threads(threads)
    assert code == 1                                  # one job failed (its input is missing); the others ran
    for name in ("short", "long", "mid"):
        np.testing.assert_array_equal(frames_of(root / "local" / name), plain_renders[name])
    data = json.loads(report.read_text(encoding="utf-8"))
    status = {e["job"]: e["status"] for e in data["jobs"]}
    assert status == {1: "done", 2: "done", 3: "failed", 4: "done"}
    long_job = next(e for e in data["jobs"] if e["job"] == 2)
    assert long_job["frames"] == 40 and long_job["frames_per_second"] > 0 and long_job["gpu"] == "cpu"
    assert "missing.mp4" in next(e for e in data["jobs"] if e["job"] == 3)["error"]
    out = capsys.readouterr().out
    assert "job  status" in out and "failed" in out
    # A rerun: finished jobs are skipped, nothing is loaded, only the bad job is reported again.
    import rain.pipeline
    original = rain.pipeline.RainPipeline.from_models_dir
    rain.pipeline.RainPipeline.from_models_dir = classmethod(lambda *a, **k: pytest.fail("a model was loaded"))
    try:
        assert batch(path, "--models-dir", models, *FAST, "--report", report) == 1
    finally:
        rain.pipeline.RainPipeline.from_models_dir = original
    rerun = {e["job"]: e["status"] for e in json.loads(report.read_text(encoding="utf-8"))["jobs"]}
    assert rerun == {1: "skipped", 2: "skipped", 3: "failed", 4: "skipped"}


# -- on a local Ray cluster -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the farm's Ray tests need ray (requirements-test.txt)")
    from rain.farm.driver import _runtime_env
    # "local": a cluster of its own, even when one started with `ray start` runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=_runtime_env())
    yield ray
    ray.shutdown()


def test_two_ray_workers_render_what_the_plain_runs_render(farm, plain_renders, ray_cluster):
    root, models = farm
    listed = load_jobs(three_jobs(root, "ray"), defaults(models))
    seen = []
    result = run_batch(listed, ray_address=True, workers=2, threads=1, on_progress=lambda s: seen.append(
        (s.jobs_done, s.frames_done, dict(s.running))))
    status = {e["job"]: e["status"] for e in result.entries}
    assert status == {1: "done", 2: "done", 3: "failed", 4: "done"} and result.exit_code == 1
    for name in ("short", "long", "mid"):
        np.testing.assert_array_equal(frames_of(root / "ray" / name), plain_renders[name])
    workers = {e["pid"] for e in result.entries if e["status"] == "done"}
    assert len(workers) == 2 and os.getpid() not in workers          # two worker processes, not the driver
    assert any(running for _, _, running in seen)                     # progress came back while they rendered
    assert max(frames for _, frames, _ in seen) == 12 + 40 + 24


def test_a_worker_killed_mid_job_is_replaced_and_the_job_resumes_to_equal_frames(farm, plain_renders, ray_cluster):
    root, models = farm
    path = job_file(root, "killed", [{"reference": "ref.png", "driving": "long.mp4", "output": "killed/long/",
                                      "seed": 2}])
    listed = load_jobs(path, defaults(models))
    killed = {}

    def kill_once(state):
        for job, update in state.running.items():
            # Past the first saved state (every 8 frames): a state exists, and frames after it are lost.
            if not killed and update.get("frames_out", 0) >= 12:
                killed.update(pid=update["pid"], at=update["frames_out"])
                os.kill(update["pid"], signal.SIGKILL)

    result = run_batch(listed, ray_address=True, workers=1, threads=1, on_progress=kill_once)
    (entry,) = result.entries
    assert killed and entry["status"] == "done" and entry["tries"] == 2, entry
    assert entry["pid"] != killed["pid"]
    # From a saved state (every 8 frames) inside the video: the frames after it were rendered again.
    assert 8 <= entry["resumed_from"] < 40 and entry["resumed_from"] % 8 == 0
    np.testing.assert_array_equal(frames_of(root / "killed" / "long"), plain_renders["long"])


@pytest.mark.parametrize("where", [["--ray", "--workers", "1"], []], ids=["ray", "in-process"])
def test_ctrl_c_on_the_driver_saves_every_running_job_and_the_rerun_continues(farm, plain_renders, tmp_path, where):
    if where:
        pytest.importorskip("ray", reason="the farm's Ray tests need ray (requirements-test.txt)")
    root, models = farm
    tag = f"sigint-{'ray' if where else 'local'}"
    path = job_file(root, tag, [{"reference": "ref.png", "driving": "long.mp4", "output": f"{tag}/long/",
                                 "seed": 2}])
    report = root / f"{tag}-report.json"
    command = [sys.executable, "-m", "rain", "batch", str(path), "--models-dir", str(models), *FAST, *where,
               "--threads", "1", "--report", str(report)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = root / tag / "long.resume" / "state.json"
    deadline = time.monotonic() + 240
    while not state.exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state.exists(), "the job never saved a state"
    driver.send_signal(signal.SIGINT)
    output, _ = driver.communicate(timeout=240)
    assert driver.returncode == 130, output
    stopped = json.loads(report.read_text(encoding="utf-8"))
    assert stopped["interrupted"] and stopped["jobs"][0]["status"] == "interrupted", stopped
    assert "run the same command again" in output
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    finished = json.loads(report.read_text(encoding="utf-8"))["jobs"][0]
    assert finished["status"] == "done" and finished["resumed_from"] > 0
    np.testing.assert_array_equal(frames_of(root / tag / "long"), plain_renders["long"])


def test_prepare_data_on_ray_workers_equals_the_local_run(ray_cluster, tmp_path):
    """Depth conditions (a model on each worker) for three videos over two workers: the same shards, bit for bit,
    and the same manifest as preparing here."""
    from test_prepare_data import write_video

    from rain.cli import main
    from rain.devtools import write_tiny_depth_model
    videos = tmp_path / "videos"
    write_video(videos / "a.mp4", 20, (60, 80))
    write_video(videos / "sub" / "b.mkv", 40, (72, 48), seed=5)
    write_video(videos / "c.mp4", 28, (64, 64), seed=2)
    (videos / "broken.mp4").write_bytes(b"not a video" * 20)
    write_tiny_depth_model(tmp_path / "models" / "depth_estimator")
    common = ["--task", "depth", "--size", "32", "--clip-length", "8", "--models-dir", str(tmp_path / "models"),
              "--device", "cpu", "--batch-size", "3", "--clips-per-shard", "3"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as the workers (one thread each): the same float sums
    try:
        assert main(["prepare-data", str(videos), str(tmp_path / "local"), *common]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main(["prepare-data", str(videos), str(tmp_path / "farm"), *common, "--ray", "--workers", "2",
                 "--threads", "1"]) == 0
    local, farm = (json.loads((tmp_path / name / "manifest.json").read_text(encoding="utf-8"))
                   for name in ("local", "farm"))
    assert local == farm and local["clips"] > 6
    for shard in local["shards"]:   # byte for byte: frames, conditions and the clip records in the header
        assert (tmp_path / "local" / shard["file"]).read_bytes() == (tmp_path / "farm" / shard["file"]).read_bytes()
    assert not (tmp_path / ".farm.staging").exists() or not any((tmp_path / ".farm.staging").iterdir())


# -- the ComfyUI node -------------------------------------------------------------------------------------------------
@pytest.fixture
def node_host(farm, tmp_path):
    """The pack without ComfyUI: models/rain = the tiny set, an input folder with two driving videos."""
    from test_nodes_model_paths import PACK
    import importlib.util
    root, models = farm
    spec = importlib.util.spec_from_file_location(PACK + "-farm", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)
    host = sys.modules[f"{spec.name}.nodes.host"]
    (tmp_path / "input" / "takes").mkdir(parents=True)
    for name in ("short", "mid"):
        (tmp_path / "input" / "takes" / f"{name}.mp4").write_bytes((root / f"{name}.mp4").read_bytes())
    host.set_fallback_models_dirs([models])
    host.set_fallback_folders(input_dir=tmp_path / "input", output_dir=tmp_path / "output")
    yield pack, host, tmp_path
    host.set_fallback_models_dirs(None)
    host.set_fallback_folders()
    for key in [k for k in sys.modules if k.startswith(spec.name)]:
        del sys.modules[key]


def node_inputs(**changes):
    values = dict(motion_unet="motion_unet.pth", source="folder of driving videos", driving_folder="takes",
                  job_file="", filename_prefix="RAIN/batch", format="png frames", task="pose", width=SIZE,
                  height=SIZE, frames_per_group=2, num_groups=2, guidance_scale=2.5, seed=5, save_every=8,
                  reference=torch.full((1, SIZE, SIZE, 3), 0.6))
    values.update(changes)
    return values


def test_batch_render_node_renders_a_folder_cancels_with_states_saved_and_continues(node_host, monkeypatch):
    pack, host, folders = node_host
    node = pack.NODE_CLASS_MAPPINGS["RAIN_BatchRender"]
    assert "reference" in node.INPUT_TYPES()["optional"] and "ray_address" in node.INPUT_TYPES()["optional"]
    real, calls = host.check_interrupted, []

    def cancel_after(count=8):   # inside the first (longest) video, after its first saved state
        calls.append(1)
        if len(calls) == count:
            host.request_interrupt()
        real()
    monkeypatch.setattr(host, "check_interrupted", cancel_after)
    with pytest.raises(host.Interrupted):
        node().render(**node_inputs())
    monkeypatch.undo()
    outputs = folders / "output" / "RAIN" / "batch"
    assert list(outputs.glob("*.resume/state.json")), "the cancelled video saved no state"
    out = node().render(**node_inputs())
    report = json.loads(out["result"][0])
    status = {Path(e["output"]).name: (e["status"], e["resumed_from"]) for e in report["jobs"]}
    assert {name for name, (s, _) in status.items() if s == "done"} == {"short", "mid"}, report
    assert status["mid"][1] > 0 and status["short"][1] == 0         # the cancelled one continued
    assert len(list((outputs / "mid").glob("*.png"))) == 24 and len(list((outputs / "short").glob("*.png"))) == 12
    again = json.loads(node().render(**node_inputs())["result"][0])
    assert {e["status"] for e in again["jobs"]} == {"skipped"}       # finished videos are not rendered again
    with pytest.raises(ValueError, match="outside|absolute|'..'"):
        node().render(**node_inputs(driving_folder="../elsewhere"))


def test_a_worker_that_cannot_see_an_input_says_so(farm, tmp_path):
    """Checked by the driver, gone when the worker starts (a path only the driver's machine has)."""
    root, models = farm
    video = tmp_path / "only-here.mp4"
    video.write_bytes((root / "short.mp4").read_bytes())
    path = job_file(tmp_path, "gone", [{"reference": str(root / "ref.png"), "driving": "only-here.mp4",
                                        "output": "gone/out/"}])
    listed = load_jobs(path, defaults(models))
    video.unlink()
    (entry,) = run_batch(listed, threads=1).entries
    assert entry["status"] == "failed" and "only-here.mp4" in entry["error"]
    assert "every worker" in entry["error"] and "same path" in entry["error"]


def test_a_job_that_keeps_killing_its_workers_is_given_up(farm, ray_cluster, tmp_path):
    root, models = farm
    path = job_file(tmp_path, "deadly", [{"reference": str(root / "ref.png"), "driving": str(root / "long.mp4"),
                                          "output": "deadly/out/"}])
    kills = []

    def kill_every_worker(state):
        for update in state.running.values():
            if update["pid"] not in kills:
                kills.append(update["pid"])
                os.kill(update["pid"], signal.SIGKILL)

    result = run_batch(load_jobs(path, defaults(models)), ray_address=True, workers=1, threads=1, max_tries=2,
                       on_progress=kill_every_worker)
    (entry,) = result.entries
    assert len(kills) == 2 and entry["status"] == "failed" and entry["tries"] == 2
    assert "died 2 times" in entry["error"] and result.exit_code == 1


def test_an_unreachable_cluster_is_one_clear_message_in_seconds(farm, capsys):
    from rain.farm.driver import FarmUnavailable, start_ray
    started = time.monotonic()
    with pytest.raises(FarmUnavailable, match="cannot reach the Ray cluster at 127.0.0.1:1 .*ray start --head"):
        start_ray("127.0.0.1:1")
    with pytest.raises(FarmUnavailable, match="HOST:PORT"):
        start_ray("head-without-port")
    assert time.monotonic() - started < 30
    root, models = farm
    path = job_file(root, "unreachable", [{"reference": "ref.png", "driving": "short.mp4",
                                           "output": "unreachable/out/"}])
    assert batch(path, "--models-dir", models, *FAST, "--ray", "127.0.0.1:1") == 2
    assert "cannot reach the Ray cluster" in capsys.readouterr().err
