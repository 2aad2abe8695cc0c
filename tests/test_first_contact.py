"""A newcomer's first hour: ``make-tiny-models`` fills a models folder (reduced random weights, DWPose stand-ins,
a declaration of the set's native size), and then the CLI and the shipped workflows run on it unedited."""

import importlib.util
import json
import logging
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from rain.cli import main
from rain.devtools import TINY_NATIVE_SIZE
from rain.io import probe
from test_nodes_run import Host, build_host

REPO = Path(__file__).resolve().parent.parent
PACK = "ComfyUI-RAIN-first-contact"


def write_take(path, frames=10, height=120, width=160):
    """A raw 'webcam' take (the stand-in detector ignores its pixels)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = np.full((height, width, 3), 40 + 10 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    """A ComfyUI folder whose models/rain was filled by ``python -m rain make-tiny-models``, with the host
    stand-in of test_nodes_run installed and the pack loaded."""
    base = tmp_path_factory.mktemp("comfyui")
    (base / "custom_nodes").mkdir()
    models = base / "models" / "rain"
    assert main(["make-tiny-models", str(models)]) == 0
    host = Host(base)
    host.user_rain = models
    modules = build_host(host)
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = pack
        spec.loader.exec_module(pack)
        yield host, pack, models
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name in [k for k in sys.modules if k.startswith(PACK)]:
            del sys.modules[name]


def test_make_tiny_models_writes_everything_a_newcomer_needs(comfyui):
    _, _, models = comfyui
    for name in ("motion_unet.pth", "reference_unet.pth", "pose_guider.pth", "taesdv.pth", "rain_model_set.json",
                 "README.txt", "dwpose/yolox_l.onnx", "dwpose/dw-ll_ucoco_384.onnx", "body/motion_unet.pth",
                 "depth/motion_unet.pth", "body/rain_model_set.json"):
        assert (models / name).is_file(), name
    declaration = json.loads((models / "rain_model_set.json").read_text())
    assert declaration["reduced_random_weights"] is True
    assert declaration["native_size"] == {"width": TINY_NATIVE_SIZE[1], "height": TINY_NATIVE_SIZE[0]}
    readme = (models / "README.txt").read_text()
    assert "NOT the RAIN weights" in readme and "stand-ins" in readme and "python -m rain download" in readme


@pytest.mark.parametrize("name", ["motion_unet.pth", "taesdv.safetensors"])
def test_make_tiny_models_never_overwrites_real_weights(tmp_path, capsys, name):
    (tmp_path / name).write_bytes(b"real weights")
    assert main(["make-tiny-models", str(tmp_path)]) == 2
    assert f"already holds {name}, which make-tiny-models did not write" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == [name] and (tmp_path / name).read_bytes() == b"real weights"


def test_make_tiny_models_keeps_real_dwpose_files(tmp_path, capsys):
    real = tmp_path / "dwpose" / "yolox_l.onnx"
    real.parent.mkdir()
    real.write_bytes(b"\0" * (9 * 2 ** 20))  # the size of a real file, not of a stand-in
    assert main(["make-tiny-models", str(tmp_path)]) == 0
    assert "kept the real DWPose files" in capsys.readouterr().out
    assert real.stat().st_size == 9 * 2 ** 20 and not (tmp_path / "dwpose" / "dw-ll_ucoco_384.onnx").exists()


def widget_values(node_class, values) -> dict:
    """A workflow node's widgets_values as keyword arguments, in the order ComfyUI stores them."""
    kwargs, index = {}, 0
    types = node_class.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            if not (isinstance(spec[0], list) or spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN")):
                continue  # a link
            kwargs[name] = values[index]
            index += 1
            if len(spec) > 1 and spec[1].get("control_after_generate"):
                index += 1
    assert index == len(values)
    return kwargs


def workflow_nodes(name):
    workflow = json.loads((REPO / "workflows" / name).read_text())
    return {node["type"]: node.get("widgets_values") for node in workflow["nodes"]}


def run_chain(pack, workflow, detector_type, video_frames, character):
    """Our nodes of a shipped workflow, with its widgets exactly as shipped."""
    classes = pack.NODE_CLASS_MAPPINGS
    stored = workflow_nodes(workflow)

    def run(node_type, *links):
        node = classes[node_type]()
        return getattr(node, node.FUNCTION)(*links, **widget_values(classes[node_type], stored[node_type]))

    (model,) = run("RAIN_LoadModel")
    (reference,) = run("RAIN_FuseReference", model, character)
    (keypoints,) = run(detector_type, video_frames)
    if "RAIN_LandmarkTransform" in stored:
        keypoints = run("RAIN_LandmarkTransform", keypoints)["result"][0]
    (pose_images,) = run("RAIN_DrawPose", keypoints)
    frames, latents = run("RAIN_StreamSampler", model, reference, pose_images)
    return pose_images, frames, latents


@pytest.mark.parametrize("workflow, detector_type, requested, expected", [
    ("rain_face_morphing.json", "RAIN_FaceLandmarks", (512, 512), TINY_NATIVE_SIZE),
    ("rain_whole_body.json", "RAIN_WholeBodyPose", (768, 512), (160, 104)),  # portrait stays portrait
])
def test_shipped_workflow_runs_unedited_on_the_tiny_models(comfyui, caplog, workflow, detector_type, requested,
                                                           expected):
    host, pack, _ = comfyui
    video = torch.rand(9, 120, 160, 3)
    character = torch.rand(1, 96, 80, 3)
    with caplog.at_level(logging.WARNING, logger="ComfyUI-RAIN"):
        pose_images, frames, latents = run_chain(pack, workflow, detector_type, video, character)
    assert pose_images.shape == (9, *requested, 3)
    assert pose_images.sum() > 0                    # the stand-ins found a person: the pose images are drawn
    assert frames.shape == (9, *expected, 3)        # rendered at the set's size, not 512 wide
    assert latents["samples"].shape == (9, 4, expected[0] // 8, expected[1] // 8)
    assert 0.15 < frames.mean() < 0.85
    said = [r.getMessage() for r in caplog.records if "instead of the" in r.getMessage()]
    assert any("Fuse RAIN Reference" in m for m in said) and any("RAIN Stream Sampler" in m for m in said)
    assert all(f"{expected[1]}×{expected[0]}" in m for m in said)


def test_native_size_is_said_once(comfyui, caplog):
    host, pack, _ = comfyui
    classes = pack.NODE_CLASS_MAPPINGS
    (model,) = classes["RAIN_LoadModel"]().load("motion_unet.pth", "auto", "auto")
    with caplog.at_level(logging.WARNING, logger="ComfyUI-RAIN"):
        for _ in range(2):
            classes["RAIN_FuseReference"]().fuse(model, torch.rand(1, 64, 64, 3), 256, 256)
    assert sum("instead of the 256×256" in r.getMessage() for r in caplog.records) <= 1


@pytest.mark.parametrize("task", ["face", "body"])
def test_cli_runs_face_and_body_on_the_tiny_models(comfyui, tmp_path, capsys, caplog, task):
    _, _, models = comfyui
    write_take(tmp_path / "take.mp4", frames=6)
    Image.new("RGB", (96, 128), (200, 120, 90)).save(tmp_path / "character.png")
    out = tmp_path / f"{task}.mp4"
    code = main(["animate", "--models-dir", str(models), "--reference", str(tmp_path / "character.png"),
                 "--driving", str(tmp_path / "take.mp4"), "--task", task, "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    info = probe(out)
    assert (info.height, info.width) == TINY_NATIVE_SIZE and info.frame_count == 6
    assert "6 frames: 0 without a face/person (0 held, 0 blank), 0 without a person box" in captured.out
    assert "reduced random weights" in caplog.text
