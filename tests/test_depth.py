"""Depth condition images: the running-range normalisation, the transformers estimator (tiny random DPT and
Depth Anything built from small configs), the CLI's --task depth, and the RAIN Depth Maps node."""

import importlib.util
import shutil
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from rain.depth import (DEPTH_FOLDER, DepthConditioner, DepthEstimator, DepthModelNotFound, RunningDepthRange,
                        find_depth_model)
from rain.devtools import write_tiny_depth_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_dpt(tmp_path_factory) -> Path:
    return write_tiny_depth_model(tmp_path_factory.mktemp("depth") / DEPTH_FOLDER)


def frames(count=5, size=(40, 56), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), np.uint8) for _ in range(count)]


def test_running_range_hand_values():
    norm = RunningDepthRange(momentum=0.5)
    first = norm(torch.tensor([[0.0, 1.0], [2.0, 4.0]]))
    assert first.shape == (2, 2, 3) and first.dtype == np.uint8
    assert np.array_equal(first[..., 0], [[0, 64], [128, 255]])        # (d - 0) / 4 * 255, rounded
    assert np.array_equal(first[..., 0], first[..., 2])                 # grey
    # Next frame spans [2, 10]: the range moves halfway, to [1, 7]; values outside clamp.
    second = norm(torch.tensor([[2.0, 10.0], [4.0, 7.0]]))
    assert (norm.low, norm.high) == (1.0, 7.0)
    assert np.array_equal(second[..., 0], [[round(255 / 6), 255], [round(3 / 6 * 255), 255]])
    norm.reset()
    assert np.array_equal(norm(torch.tensor([[2.0, 10.0], [4.0, 7.0]]))[..., 0], [[0, 255], [64, 159]])
    flat = RunningDepthRange()(torch.full((3, 3), 5.0))
    assert not flat.any()
    with pytest.raises(ValueError, match="momentum"):
        RunningDepthRange(momentum=1.0)


def test_running_range_does_not_pump_like_per_frame_normalisation():
    """A bright object entering the scene: per-frame min/max rescales the whole background, the running range
    changes it by at most a tenth of the jump per frame."""
    background = torch.linspace(0, 1, 64).repeat(64, 1)
    stream = [background.clone() for _ in range(6)]
    for frame in stream[3:]:
        frame[:8, :8] = 4.0   # something near
    per_frame = [RunningDepthRange(momentum=0.0)(f)[..., 0].astype(float) for f in stream]
    running_norm = RunningDepthRange(momentum=0.9)
    running = [running_norm(f)[..., 0].astype(float) for f in stream]
    region = (slice(16, None), slice(None))
    per_frame_jump = np.abs(per_frame[3][region] - per_frame[2][region]).mean()
    running_jump = np.abs(running[3][region] - running[2][region]).mean()
    assert per_frame_jump > 50 and running_jump < per_frame_jump / 2


def test_missing_or_wrong_model_folder_says_what_to_do(tmp_path):
    with pytest.raises(DepthModelNotFound, match="depth_estimator.*python -m rain download --only depth"):
        find_depth_model(tmp_path)
    (tmp_path / DEPTH_FOLDER).mkdir()
    (tmp_path / DEPTH_FOLDER / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(DepthModelNotFound, match="does not describe a depth"):
        find_depth_model(tmp_path)


@pytest.mark.parametrize("family", ["dpt", "depth_anything"])
def test_estimator_from_a_transformers_folder(tmp_path, family):
    folder = write_tiny_depth_model(tmp_path / family, family=family)
    estimator = DepthEstimator.from_folder(folder, device="cpu")
    depth = estimator.predict(frames(3))
    assert depth.shape == (3, 40, 56) and depth.dtype == torch.float32
    assert depth.std() > 0
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(DepthModelNotFound, match="preprocessor_config.json"):
        DepthEstimator.from_folder(folder)


def test_conditioner_batches_and_streams_the_same(tiny_dpt):
    estimator = DepthEstimator.from_folder(tiny_dpt, device="cpu")
    clip = frames(7)
    one_by_one = DepthConditioner(estimator, batch_size=1).render(clip)
    batched = DepthConditioner(estimator, batch_size=3).render(clip)
    streamed = list(DepthConditioner(estimator, batch_size=4).stream(iter(clip)))
    for a, b, c in zip(one_by_one, batched, streamed):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1 and np.array_equal(b, c)
    assert all(img.shape == (40, 56, 3) and (img[..., 0] == img[..., 1]).all() for img in batched)
    assert any(img.max() == 255 for img in batched)


def write_video(path, count=6, size=(48, 64)):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for image in frames(count, size):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_animate_task_depth_from_a_raw_video(tiny_models_dir, tiny_dpt, tmp_path, capsys):
    from rain.cli import main

    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    driving = tmp_path / "take.mp4"
    write_video(driving, count=6)
    Image.new("RGB", (64, 64), (90, 120, 200)).save(tmp_path / "r.png")
    base = ["animate", "--models-dir", str(models), "--reference", str(tmp_path / "r.png"), "--driving",
            str(driving), "--task", "depth", "--size", "64", "-o"]
    assert main(base + [str(tmp_path / "missing.mp4")]) == 2
    assert "no depth estimator" in capsys.readouterr().err
    # A depth model is named by its folder inside the models folder; a path outside it is refused.
    assert main(base + [str(tmp_path / "out.mkv"), "--depth-model", str(tiny_dpt)]) == 2
    assert "is an absolute path" in capsys.readouterr().err
    assert main(base + [str(tmp_path / "out.mkv"), "--depth-model", "../elsewhere"]) == 2
    assert "'..'" in capsys.readouterr().err and not (tmp_path / "out.mkv").exists()
    shutil.copytree(tiny_dpt, models / "estimators" / "dpt")
    code = main(base + [str(tmp_path / "out.mkv"), "--depth-model", "estimators/dpt"])
    assert code == 0
    assert sum(1 for _ in av.open(str(tmp_path / "out.mkv")).decode(video=0)) == 6


def test_make_tiny_models_includes_a_depth_estimator(tmp_path):
    from rain.cli import main

    assert main(["make-tiny-models", str(tmp_path / "m")]) == 0
    assert find_depth_model(tmp_path / "m") == tmp_path / "m" / DEPTH_FOLDER


@pytest.fixture
def pack(tiny_dpt, monkeypatch):
    for name in ("folder_paths", "comfy", "comfy.model_management", "comfy.model_patcher", "comfy.utils", "server"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    name = "ComfyUI-RAIN-depth-test"
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    host = sys.modules[f"{name}.nodes.host"]
    host.set_fallback_models_dirs([tiny_dpt.parent])
    try:
        yield module, host
    finally:
        host.set_fallback_models_dirs(None)
        for key in [k for k in sys.modules if k.startswith(name)]:
            del sys.modules[key]


def test_depth_maps_node_matches_the_engine(pack, tiny_dpt):
    module, host = pack
    cls = module.NODE_CLASS_MAPPINGS["RAIN_DepthMaps"]
    assert module.NODE_DISPLAY_NAME_MAPPINGS["RAIN_DepthMaps"] == "RAIN Depth Maps"
    required = cls.INPUT_TYPES()["required"]
    assert required["model"][0] == ["auto", DEPTH_FOLDER]
    clip = frames(5, (48, 64))
    images = torch.from_numpy(np.stack(clip)).float() / 255
    (maps,) = cls().estimate(images, "auto", 0.9, 2)
    assert maps.shape == (5, 48, 64, 3) and maps.dtype == torch.float32
    expected = DepthConditioner(DepthEstimator.from_folder(tiny_dpt, device="cpu"), batch_size=2).render(clip)
    assert torch.equal((maps * 255).round().to(torch.uint8), torch.from_numpy(np.stack(expected)))
    estimator, patcher = sys.modules["ComfyUI-RAIN-depth-test.nodes.depth_nodes"].get_estimator(tiny_dpt)
    assert isinstance(patcher, host.LocalPatcher) and patcher.loads >= 1
    host.request_interrupt()
    with pytest.raises(host.Interrupted):
        cls().estimate(images, "auto", 0.9, 2)


def test_depth_maps_node_says_where_the_model_goes(pack, tmp_path):
    module, host = pack
    host.set_fallback_models_dirs([tmp_path])
    with pytest.raises(FileNotFoundError, match="no depth estimator at .*depth_estimator"):
        module.NODE_CLASS_MAPPINGS["RAIN_DepthMaps"]().estimate(torch.rand(1, 8, 8, 3), "auto", 0.9, 1)
