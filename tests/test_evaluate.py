"""``python -m rain evaluate`` end to end on the reduced models and the synthetic dataset."""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from metric_stand_ins import i3d_stand_in, write_lpips_weights
from rain.cli import main
from rain.training import metrics
from rain.training.data import write_synthetic_dataset
from rain.training.evaluate import pingpong

FAST = ["--frames-per-group", "1", "--groups", "2"]   # a 2-frame window: the plumbing, at a fraction of the cost


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("held_out")
    write_synthetic_dataset(root, clips=2, clip_length=8, size=(64, 64), clips_per_shard=2, seed=3)
    return root


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_writes_the_table_csv_and_drift_plot(tiny_models_dir, tiny_pipeline, dataset, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    write_lpips_weights(models / "lpips")          # found in the models folder without an option
    i3d = i3d_stand_in(tmp_path / "i3d.onnx", frames=8, size=32)
    out = tmp_path / "eval"
    code = main(["evaluate", str(dataset), "--models-dir", str(models), "-o", str(out), "--i3d", str(i3d),
                 "--drift-frames", "12", "--drift-window", "4", *FAST])
    assert code == 0
    printed = capsys.readouterr().out
    assert "psnr" in printed and "drift (looped stream)" in printed and "metrics.csv" in printed

    rows = read_csv(out / "metrics.csv")
    assert [r["clip"] for r in rows] == ["0", "1", "mean"]
    assert [r["source"] for r in rows[:2]] == ["synthetic:0", "synthetic:1"]
    assert all(r["fvd"] == "" for r in rows[:2]) and float(rows[2]["fvd"]) >= 0
    for key in ("psnr", "ssim", "lpips", "tdiff_output", "flicker_ratio"):
        values = [float(r[key]) for r in rows[:2]]
        assert float(rows[2][key]) == pytest.approx(np.mean(values), rel=1e-9)
    assert all(0 < float(r["lpips"]) for r in rows[:2]) and all(-1 <= float(r["ssim"]) <= 1 for r in rows[:2])

    # The numbers are those of the inference stream: clip 1, driven by its conditions, reference = its frame 0.
    from rain.sampling.stream import StreamSettings
    from rain.training.data import ClipStore
    truth, condition = ClipStore(dataset).read(1)
    reference = tiny_pipeline.fuse_reference(truth[0], 64, 64)
    output = np.stack([f.numpy() for f in tiny_pipeline.stream(list(condition), reference,
                                                              StreamSettings(frames_per_group=1, num_groups=2,
                                                                             guidance_scale=2.5, seed=42))])
    assert float(rows[1]["psnr"]) == pytest.approx(metrics.psnr(output, truth).mean(), rel=1e-6)
    assert float(rows[1]["ssim"]) == pytest.approx(metrics.ssim(output, truth).mean(), rel=1e-6, abs=1e-7)

    drift = read_csv(out / "drift.csv")
    assert [(int(r["first_frame"]), int(r["last_frame"])) for r in drift] == [(0, 3), (4, 7), (8, 11)]
    assert all(float(r["psnr"]) > 0 and float(r["lpips"]) > 0 and float(r["flicker_ratio"]) > 0 for r in drift)
    with Image.open(out / "drift.png") as plot:
        assert plot.format == "PNG" and plot.width > 300
    assert not list(out.glob("*.tmp"))


def test_evaluate_without_lpips_or_i3d_and_without_drift(tiny_models_dir, dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(dataset), "--models-dir", str(tiny_models_dir), "-o", str(out), "--clips", "1",
                 "--drift-frames", "0", "--reference-frame", "5", "--decoder", "vae", *FAST]) == 0
    assert "LPIPS not measured" in capsys.readouterr().out
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == 2 and rows[0]["lpips"] == "" and rows[1]["fvd"] == ""
    assert not (out / "drift.csv").exists() and not (out / "drift.png").exists()


def test_evaluate_checks_inputs_before_loading_models(dataset, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")]) == 2
    assert "prepare-data" in capsys.readouterr().err
    assert main(["evaluate", str(dataset), "--models-dir", str(tmp_path / "no_models"), "-o", str(tmp_path / "o"),
                 "--lpips", str(tmp_path)]) == 2
    assert "alexnet-owt-7be5be79.pth" in capsys.readouterr().err
    assert main(["evaluate", str(dataset), "--models-dir", str(tmp_path), "-o", str(tmp_path / "o"),
                 "--reference-frame", "8"]) == 2
    assert "clips have 8 frames" in capsys.readouterr().err


def test_pingpong_loops_without_a_jump():
    assert list(pingpong(4, 10)) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert list(pingpong(1, 3)) == [0, 0, 0]
