"""The RAIN Live node inside the ComfyUI host stand-in: running the graph starts or updates the node's session,
the routes sit on ComfyUI's server (the engine loads on the first request), and a live session gives its models
back to ComfyUI's memory manager's care."""

import asyncio
import importlib.util
import sys
import time
import types
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import torch
from test_nodes_run import Host, build_host, tiny_models

REPO = Path(__file__).resolve().parent.parent
PACK = "ComfyUI-RAIN-live-hosted"
SIZE = 64
FAST = dict(frames_per_group=1, num_groups=2, steps_per_group=1, guidance_scale=2.5, seed=3, decoder="taesdv",
            temporal_strength=1.0, backend="eager", crop=0.9, missing="hold", smoothing=False, detector="auto",
            pose_model="auto", provider="cpu", preset="calibration")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    models = tiny_models(tmp_path_factory)
    host = Host(tmp_path_factory.mktemp("comfyui_live"))
    (host.models_dir / "rain").parent.mkdir(parents=True)
    (host.models_dir / "rain").symlink_to(models, target_is_directory=True)
    host.user_rain.mkdir(parents=True)
    modules = build_host(host)
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = pack
        spec.loader.exec_module(pack)
        yield host, pack, sys.modules[f"{PACK}.nodes.live_nodes"]
        sys.modules[f"{PACK}.nodes.live_nodes"].registry().close_all()
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name in [k for k in sys.modules if k.startswith(PACK)]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def graph(env):
    host, pack, live = env
    nodes = pack.NODE_CLASS_MAPPINGS
    (model,) = nodes["RAIN_LoadModel"]().load("motion_unet.pth", "auto", "auto")
    (reference,) = nodes["RAIN_FuseReference"]().fuse(model, torch.rand(1, 64, 64, 3), SIZE, SIZE)
    return model, reference, nodes["RAIN_Live"]()


def wait_for(condition, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def test_routes_are_on_comfyuis_server_without_loading_the_engine(env):
    host, pack, live = env
    for route in ("get /rain/live/", "get /rain/live/viewer", "get /rain/live/static/{name}",
                  "get /rain/live/sessions", "get /rain/live/ws", "post /rain/live/reference"):
        assert route in host.routes, route
    assert live._routes is None   # the handlers are built at the first request


def test_running_the_graph_starts_and_updates_the_session(env, graph):
    host, pack, live = env
    model, reference, node = graph
    host.loads.clear()
    out = node.go_live(model, reference, "pose images", unique_id="17", **FAST)
    info = out["ui"]["rain_live"][0]
    assert info["session"] == "node-17" and info["viewer"] == "/rain/live/viewer?session=node-17"
    assert (info["width"], info["height"], info["latency_frames"]) == (SIZE, SIZE, 1)
    session = live.registry().get("node-17")
    assert session.running and session.pipeline is model.pipeline
    assert host.loads == [[("video_unet,pose_guider,taesdv", True)]]   # through the memory manager

    # Same settings, other calibration: the same session, the transform changes in place.
    node.go_live(model, reference, "pose images", unique_id="17", **FAST, eye_height_ratio=1.5)
    assert live.registry().get("node-17") is session and session.task.calibration["eye_height_ratio"] == 1.5
    # A new character: swapped without a restart.
    (other,) = pack.NODE_CLASS_MAPPINGS["RAIN_FuseReference"]().fuse(model, torch.rand(1, 64, 64, 3), SIZE, SIZE)
    node.go_live(model, other, "pose images", unique_id="17", **FAST)
    assert live.registry().get("node-17") is session and session.reference is other.reference
    assert session.stats.reference_swaps == 1
    # Stopped from the panel: running the graph starts it again.
    session.stop()
    node.go_live(model, other, "pose images", unique_id="17", **FAST)
    assert session.running
    # Other stream settings: a new session replaces the old one.
    node.go_live(model, other, "pose images", unique_id="17", **{**FAST, "num_groups": 3})
    replacement = live.registry().get("node-17")
    assert replacement is not session and not session.running and replacement.running
    assert replacement.latency_frames == 2


def test_face_task_uses_the_dwpose_files_of_the_models_folder(env, graph):
    host, pack, live = env
    model, reference, node = graph
    node.go_live(model, reference, "face", unique_id="18", **FAST)
    session = live.registry().get("node-18")
    assert session.task.kind == "face" and session.task.detector is not None and session.task.crop == 0.9
    with pytest.raises(ValueError, match="same Load RAIN Model"):
        (foreign,) = pack.NODE_CLASS_MAPPINGS["RAIN_LoadModel"]().load("motion_unet.pth", "fp32", "cpu")
        node.go_live(foreign, reference, "face", unique_id="18", **FAST)


def test_the_lazy_routes_serve_the_sessions(env, graph):
    host, pack, live = env
    model, reference, node = graph
    node.go_live(model, reference, "pose images", unique_id="19", **FAST)
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def main():
        app = web.Application()
        for key, handler in host.routes.items():
            method, path = key.split(" ", 1)
            if path.startswith("/rain/live"):
                app.router.add_route(method.upper(), path, handler)
        async with TestClient(TestServer(app)) as client:
            listing = await (await client.get("/rain/live/sessions")).json()
            assert "node-19" in [s["session"] for s in listing["sessions"]]
            refused = await client.get("/rain/live/sessions", headers={"Origin": "http://evil.example"})
            assert refused.status == 403
            async with client.ws_connect("/rain/live/ws?session=node-19&role=viewer") as ws:
                assert (await ws.receive_json())["session"] == "node-19"

    asyncio.run(main())
    assert live._routes is not None


def test_model_guard_puts_moved_models_back(env, monkeypatch):
    host, pack, live = env
    hosted = sys.modules[f"{PACK}.nodes.host"]
    module = torch.nn.Linear(2, 2, device="meta")                  # weights "offloaded" elsewhere
    patcher = types.SimpleNamespace(model=module, load_device=torch.device("cpu"))
    model = types.SimpleNamespace(patchers={"stream": patcher})
    loads = []

    def load_models(patchers):
        loads.append(patchers)
        patcher.model = torch.nn.Linear(2, 2)                        # back on the load device

    monkeypatch.setattr(hosted, "load_models", load_models)
    prepare = live.model_guard(model, ("stream",))
    assert prepare() is True and loads == [[patcher]]
    assert prepare() is False and len(loads) == 1                   # already there: nothing to do
    assert hosted.models_on_device([patcher]) and not hosted.models_on_device(
        [types.SimpleNamespace(model=torch.nn.Linear(1, 1, device="meta"), load_device="cpu")])


def test_session_restarts_its_window_when_models_move_during_a_call(tiny_pipeline):
    """A call that fails because the host moved the weights meanwhile costs the window, not the session; any other
    failure stops the session with its message."""
    from rain.live.protocol import FrameLimits, encode_image, frame_message, parse_frame
    from rain.live.session import LiveSession, LiveSettings
    from rain.sampling.stream import StreamSettings
    reference = tiny_pipeline.fuse_reference(np.zeros((64, 64, 3), np.uint8), SIZE, SIZE)
    moved = {"now": False}

    def prepare():
        was, moved["now"] = moved["now"], False
        return was

    def push_while_offloading(frame):
        moved["now"] = True
        raise RuntimeError("Expected all tensors to be on the same device")

    def push_broken(frame):
        raise RuntimeError("something else")

    settings = LiveSettings(StreamSettings(frames_per_group=1, num_groups=2))
    session = LiveSession(tiny_pipeline, reference, settings=settings, prepare=prepare)
    image = encode_image(np.zeros((48, 64, 3), np.uint8))
    session.start()
    try:
        wait_for(lambda: session.stream is not None, "the stream")
        first = session.stream
        first.push = push_while_offloading
        session.submit(parse_frame(frame_message(0, 0.0, image), FrameLimits()))
        wait_for(lambda: session.stats.restarts == 1, "a restart")
        assert session.running and session.error is None and session.stream is not first
        session.stream.push = push_broken
        session.submit(parse_frame(frame_message(1, 0.0, image), FrameLimits()))
        wait_for(lambda: not session.running, "the session to stop")
        assert session.error == "RuntimeError: something else"
    finally:
        session.close()
