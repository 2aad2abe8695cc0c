"""RAIN Render Video without ComfyUI (host fallbacks): a driving video in the input folder becomes a numbered video
file in the output folder plus a bounded preview batch; Cancel leaves a playable partial file, and resume
continues it to the frames an uninterrupted render gives."""

import importlib.util
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from test_render_resume import write_driving

REPO = Path(__file__).resolve().parent.parent
PACK = "ComfyUI-RAIN-render-node"
FRAMES = 30
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN"}


@pytest.fixture(scope="module")
def pack(tiny_models_dir, tmp_path_factory):
    spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    host = sys.modules[f"{PACK}.nodes.host"]
    folders = tmp_path_factory.mktemp("comfy_folders")
    (folders / "input").mkdir()
    write_driving(folders / "input" / "dance.mp4", frames=FRAMES, audio=True)
    host.set_fallback_models_dirs([tiny_models_dir])
    host.set_fallback_folders(folders / "input", folders / "output")
    yield module, host, folders
    host.set_fallback_models_dirs(None)
    host.set_fallback_folders()
    for key in [k for k in sys.modules if k.startswith(PACK)]:
        del sys.modules[key]


@pytest.fixture(scope="module")
def graph(pack):
    module, host, folders = pack
    nodes = module.NODE_CLASS_MAPPINGS
    (model,) = nodes["RAIN_LoadModel"]().load("motion_unet.pth", "fp32", "cpu")
    (reference,) = nodes["RAIN_FuseReference"]().fuse(model, torch.rand(1, 72, 72, 3), 64, 64)
    return model, reference, nodes["RAIN_RenderVideo"]


def inputs(node_class, **changes):
    types = node_class.INPUT_TYPES()["required"]
    values = {name: (spec[1] or {}).get("default", spec[0][0] if isinstance(spec[0], list) else None)
              for name, spec in types.items() if isinstance(spec[0], list) or spec[0] in WIDGETS}
    values.update(video="dance.mp4", task="pose images", frames_per_group=2, num_groups=2, seed=5,
                  filename_prefix="RAIN/test", preview_frames=5, save_every=4)
    values.update(changes)
    return values


def decoded(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_video_list_offers_the_input_folder_with_upload(pack):
    module, host, folders = pack
    spec = module.NODE_CLASS_MAPPINGS["RAIN_RenderVideo"].INPUT_TYPES()
    assert spec["required"]["video"][0] == ["dance.mp4"] and spec["required"]["video"][1]["video_upload"]
    assert spec["optional"]["driving_video"][0] == "VIDEO"


def test_renders_a_numbered_file_with_sound_and_a_bounded_preview(pack, graph):
    module, host, folders = pack
    model, reference, node = graph
    out = node().render(model, reference, **inputs(node))
    video, previews = out["result"]
    path = Path(video.get_stream_source())
    assert path == folders / "output" / "RAIN" / "test_00001_.mp4"
    assert out["ui"]["rain_video"] == [{"filename": "test_00001_.mp4", "subfolder": "RAIN", "type": "output",
                                        "format": "mp4"}]
    assert len(decoded(path)) == FRAMES
    with av.open(str(path)) as container:
        assert container.streams.audio and abs(float(container.streams.video[0].average_rate) - 16) < 1e-6
    assert previews.shape == (4, 64, 64, 3)     # evenly spaced: frames 0, 8, 16, 24 (at most 5)
    frames = decoded(path)
    assert np.abs(previews[1].numpy() * 255 - frames[8]).mean() < 8
    assert not list(path.parent.glob("*.resume")) and not list(path.parent.glob("*partial*"))
    again = node().render(model, reference, **inputs(node))
    assert Path(again["result"][0].get_stream_source()).name == "test_00002_.mp4"


def test_cancel_leaves_a_playable_partial_and_resume_finishes_it(pack, graph, monkeypatch):
    module, host, folders = pack
    model, reference, node = graph
    real = host.check_interrupted
    calls = []

    def cancel_after_17():
        calls.append(1)
        if len(calls) == 17:
            host.request_interrupt()
        real()
    monkeypatch.setattr(host, "check_interrupted", cancel_after_17)
    with pytest.raises(host.Interrupted):
        node().render(model, reference, **inputs(node, filename_prefix="cut/take"))
    monkeypatch.undo()
    partial = folders / "output" / "cut" / "take_00001_.partial.mp4"
    written = len(decoded(partial))
    assert 0 < written < FRAMES                    # playable, every finished frame
    out = node().render(model, reference, **inputs(node, filename_prefix="cut/take", resume=True))
    path = Path(out["result"][0].get_stream_source())
    assert path.name == "take_00001_.mp4" and not partial.exists()
    whole = node().render(model, reference, **inputs(node, filename_prefix="cut/whole"))
    ours, theirs = decoded(path), decoded(Path(whole["result"][0].get_stream_source()))
    assert len(ours) == len(theirs) == FRAMES
    assert np.array_equal(ours[0], theirs[0])      # kept packets are the very same
    assert all(np.abs(a.astype(int) - b.astype(int)).mean() < 3 for a, b in zip(ours, theirs))


def test_resume_with_changed_settings_says_which(pack, graph, monkeypatch):
    module, host, folders = pack
    model, reference, node = graph
    monkeypatch.setattr(host, "check_interrupted", lambda: (_ for _ in ()).throw(host.Interrupted("stop")))
    with pytest.raises(host.Interrupted):
        node().render(model, reference, **inputs(node, filename_prefix="changed/x"))
    monkeypatch.undo()
    from importlib import import_module
    refused = import_module(f"{PACK}.rain.io").ResumeRefused
    with pytest.raises(refused, match="the setting 'guidance_scale' changed"):
        node().render(model, reference, **inputs(node, filename_prefix="changed/x", resume=True, guidance_scale=3.0))


def test_an_engine_from_the_build_node_runs_the_render(pack, graph, monkeypatch):
    module, host, folders = pack
    model, reference, node = graph
    (engine,) = module.NODE_CLASS_MAPPINGS["RAIN_BuildEngine"]().build(model, "compiled", 64, 64, 2, 2, 1.0)
    plain = node().render(model, reference, **inputs(node, filename_prefix="RAIN/plain", frame_load_cap=12))
    backends = sys.modules[type(model.pipeline).__module__.rsplit(".", 1)[0] + ".accel.backends"]
    steady_steps = []
    original = backends.steady_step_for
    monkeypatch.setattr(backends, "steady_step_for",
                        lambda *a, **k: steady_steps.append(a[1]) or original(*a, **k))
    fused = node().render(model, reference, engine=engine,
                          **inputs(node, filename_prefix="RAIN/engine", frame_load_cap=12))
    assert steady_steps == ["compiled"]
    ours, theirs = (torch.from_numpy(np.stack(decoded(out["result"][0].path))).float() for out in (fused, plain))
    assert ours.shape == theirs.shape and ours.shape[0] == 12
    # Both went through H.264: compare the decoded videos within a few grey levels.
    assert (ours - theirs).abs().mean() < 2.0
