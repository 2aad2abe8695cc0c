"""Every node runs on reduced-size random-weight models, inside a stand-in of ComfyUI's host modules
(folder_paths, comfy.model_management, comfy.model_patcher, comfy.utils, server) that records what the pack asks
of the host. The stand-in mirrors the signatures of ComfyUI 0.3.x."""

import asyncio
import importlib
import importlib.util
import logging
import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from rain.progress import stream_work
from rain.sampling.stream import StreamSettings

REPO = Path(__file__).resolve().parent.parent
PACK = "ComfyUI-RAIN-hosted"
SIZE = 64  # reduced models run at 64 x 64


# -- the host stand-in -----------------------------------------------------------------------------------------
class InterruptProcessingException(Exception):
    pass


class Host:
    """What the fake ComfyUI recorded."""

    def __init__(self, base: Path):
        self.base = base
        self.models_dir = base / "models"
        self.user_rain = base / "elsewhere" / "rain"       # a path from the user's extra_model_paths.yaml
        self.loads: list[list] = []
        self.progress: list[tuple] = []
        self.routes: dict[str, object] = {}
        self.interrupt = False
        self.patchers: list = []


def build_host(host: Host) -> dict[str, types.ModuleType]:
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.models_dir = str(host.models_dir)
    folder_paths.supported_pt_extensions = {".ckpt", ".pt", ".bin", ".pth", ".safetensors"}
    # As extra_model_paths.yaml leaves it: created by add_model_folder_path, empty extension set.
    folder_paths.folder_names_and_paths = {"rain": ([str(host.user_rain)], set())}

    def get_folder_paths(name):
        return list(folder_paths.folder_names_and_paths[name][0])

    def get_filename_list(name):
        dirs, extensions = folder_paths.folder_names_and_paths[name]
        found = set()
        for directory in dirs:
            for root, _, files in os.walk(directory, followlinks=True):
                for file in files:
                    if not extensions or os.path.splitext(file)[1].lower() in extensions:
                        found.add(os.path.relpath(os.path.join(root, file), directory).replace(os.sep, "/"))
        return sorted(found)

    def get_full_path(name, filename):
        for directory in folder_paths.folder_names_and_paths[name][0]:
            path = os.path.join(directory, filename)
            if os.path.isfile(path):
                return path
        return None

    folder_paths.get_folder_paths = get_folder_paths
    folder_paths.get_filename_list = get_filename_list
    folder_paths.get_full_path = get_full_path

    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.unet_dtype = lambda device=None, model_params=0, supported_dtypes=(), weight_dtype=None: torch.float32
    mm.soft_empty_cache = lambda force=False: None

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        host.loads.append([(p.name, force_full_load) for p in models])
        for patcher in models:
            patcher.model.to(patcher.load_device)

    def throw_exception_if_processing_interrupted():
        if host.interrupt:
            host.interrupt = False
            raise InterruptProcessingException()

    mm.load_models_gpu = load_models_gpu
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted

    patcher_module = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            assert isinstance(model, torch.nn.Module)
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            self.name = ",".join(name for name, _ in model.named_children())
            host.patchers.append(self)

        def model_size(self):
            return sum(p.numel() * p.element_size() for p in self.model.parameters())

    patcher_module.ModelPatcher = ModelPatcher

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current, self.node_id = total, 0, node_id

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            self.current = min(value, self.total)
            host.progress.append((self.node_id, self.current, self.total, preview))
            throw_exception_if_processing_interrupted()  # as ComfyUI's progress hook does

        def update(self, value):
            self.update_absolute(self.current + value)

    utils.ProgressBar = ProgressBar

    server = types.ModuleType("server")

    class Routes:
        def __getattr__(self, method):
            def register(path):
                def decorator(handler):
                    host.routes[f"{method} {path}"] = handler
                    return handler
                return decorator
            return register

    class PromptServer:
        instance = None

    PromptServer.instance = types.SimpleNamespace(routes=Routes())
    server.PromptServer = PromptServer
    comfy.model_management, comfy.model_patcher, comfy.utils = mm, patcher_module, utils
    return {"folder_paths": folder_paths, "comfy": comfy, "comfy.model_management": mm,
            "comfy.model_patcher": patcher_module, "comfy.utils": utils, "server": server}


# -- fixtures --------------------------------------------------------------------------------------------------
def tiny_models(tmp_path_factory) -> Path:
    """Reduced random weights plus DWPose stand-ins that always find the same face; written once per session."""
    folder = tmp_path_factory.getbasetemp() / "rain_nodes_tiny_models"
    if not (folder / "dwpose" / "dw-ll_ucoco_384.onnx").is_file():
        from rain.devtools import write_tiny_models
        from rain.pose.stand_in_models import dwpose_stand_in, yolox_stand_in

        write_tiny_models(folder)
        (folder / "dwpose").mkdir(exist_ok=True)
        (folder / "dwpose" / "yolox_l.onnx").write_bytes(yolox_stand_in())
        simcc_x, simcc_y = face_simcc()
        (folder / "dwpose" / "dw-ll_ucoco_384.onnx").write_bytes(dwpose_stand_in(simcc_x, simcc_y))
    return folder


def sample_face():
    from rain.pose.sample_face import SAMPLE_FACE
    return SAMPLE_FACE


def face_simcc(pose_hw=(256, 192), detection=512):
    """SimCC maps that put the sample face in a detection image where nobody was found (box = whole image)."""
    height, width = pose_hw
    centre = np.array([detection / 2, detection / 2])
    scale = np.array([detection * 1.25, detection * 1.25])
    scale[1] = scale[0] * height / width  # aspect fixed to the model's w/h by enlarging the short side
    simcc_x = np.zeros((133, 2 * width), np.float32)
    simcc_y = np.zeros((133, 2 * height), np.float32)
    for index, point in enumerate(sample_face()):
        model = (point * detection - centre + scale / 2) / scale * np.array([width, height])
        simcc_x[23 + index, int(round(model[0] * 2))] = 1.0
        simcc_y[23 + index, int(round(model[1] * 2))] = 1.0
    for index, point in enumerate([(0.5, 0.3), (0.4, 0.5), (0.6, 0.5)]):  # nose, shoulders: some body points too
        model = (np.array(point) * detection - centre + scale / 2) / scale * np.array([width, height])
        simcc_x[index if index == 0 else 4 + index, int(round(model[0] * 2))] = 1.0
        simcc_y[index if index == 0 else 4 + index, int(round(model[1] * 2))] = 1.0
    return simcc_x, simcc_y


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(host record, the pack) with the stand-in installed for this module's tests."""
    models = tiny_models(tmp_path_factory)
    base = tmp_path_factory.mktemp("comfyui")
    host = Host(base)
    (base / "custom_nodes").mkdir()
    (host.models_dir / "rain").parent.mkdir(parents=True)
    (host.models_dir / "rain").symlink_to(models, target_is_directory=True)
    depth = host.user_rain / "depth"
    depth.mkdir(parents=True)
    for name in ("motion_unet.pth", "pose_guider.pth", "reference_unet.pth"):
        (depth / name).symlink_to(models / name)
    (host.user_rain / "notes.txt").write_text("not a model")

    modules = build_host(host)
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = pack
        spec.loader.exec_module(pack)
        yield host, pack
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name in [k for k in sys.modules if k.startswith(PACK)]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def nodes(env):
    return {k: v() for k, v in env[1].NODE_CLASS_MAPPINGS.items()}


@pytest.fixture(scope="module")
def model(env, nodes):
    (rain_model,) = nodes["RAIN_LoadModel"].load("motion_unet.pth", "auto", "auto")
    return rain_model


@pytest.fixture(scope="module")
def reference(model, nodes):
    image = torch.rand(1, 80, 60, 3)
    (fused,) = nodes["RAIN_FuseReference"].fuse(model, image, SIZE, SIZE)
    return fused


def poses(count=3, size=(SIZE, SIZE), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, *size, 3, generator=generator) > 0.97).float()


FAST = dict(frames_per_group=1, num_groups=2, steps_per_group=1, guidance_scale=2.5, seed=3, temporal_strength=1.0)


# -- host integration ------------------------------------------------------------------------------------------
def test_models_folder_is_merged_not_replaced(env):
    host, pack = env
    import folder_paths  # the stand-in
    paths, extensions = folder_paths.folder_names_and_paths["rain"]
    assert paths[0] == str(host.user_rain)                     # the user's path kept, first
    assert str(host.models_dir / "rain") in paths             # ours added
    assert {".pth", ".safetensors", ".onnx"} <= extensions    # and our extensions


def test_dropdowns_come_from_the_folder(env):
    host, pack = env
    loader = pack.NODE_CLASS_MAPPINGS["RAIN_LoadModel"].INPUT_TYPES()["required"]["motion_unet"]
    assert loader[0] == ["motion_unet.pth", "depth/motion_unet.pth"]   # the top-level set is the default
    detector = pack.NODE_CLASS_MAPPINGS["RAIN_FaceLandmarks"].INPUT_TYPES()["required"]["detector"][0]
    pose_model = pack.NODE_CLASS_MAPPINGS["RAIN_FaceLandmarks"].INPUT_TYPES()["required"]["pose_model"][0]
    assert detector == ["auto", "dwpose/yolox_l.onnx"]
    assert pose_model == ["auto", "dwpose/dw-ll_ucoco_384.onnx"]


def test_route_registered_on_the_server(env):
    host, pack = env
    assert "post /rain/calibration/preview" in host.routes


def test_loader_wraps_models_for_the_memory_manager(env, model):
    host, pack = env
    assert set(model.patchers) == {"stream", "reference", "vae"}
    assert all(type(p).__name__ == "ModelPatcher" for p in model.patchers.values())
    names = {key: p.name for key, p in model.patchers.items()}
    assert names == {"stream": "video_unet,pose_guider,taesdv", "reference": "reference_unet,image_encoder",
                     "vae": "vae"}
    assert model.dtype == torch.float32 and model.device.type == "cpu"


def test_model_set_in_a_subfolder_shares_the_top_level_files(env, nodes):
    host, pack = env
    (depth_model,) = nodes["RAIN_LoadModel"].load("depth/motion_unet.pth", "fp32", "cpu")
    paths = depth_model.paths
    assert paths["motion_unet"].parent == host.user_rain / "depth"
    assert paths["pose_guider"].parent == host.user_rain / "depth"
    assert paths["vae"] == host.models_dir / "rain" / "sd-vae-ft-mse"
    assert paths["taesdv"] == host.models_dir / "rain" / "taesdv.pth"


def test_loader_fingerprint_follows_the_files(env):
    host, pack = env
    cls = pack.NODE_CLASS_MAPPINGS["RAIN_LoadModel"]
    first = cls.IS_CHANGED("depth/motion_unet.pth", "auto", "auto")
    assert first == cls.IS_CHANGED("depth/motion_unet.pth", "auto", "auto")
    target = host.user_rain / "depth" / "pose_guider.pth"
    target.unlink()
    target.write_bytes((host.models_dir / "rain" / "pose_guider.pth").read_bytes())  # the file replaced
    assert cls.IS_CHANGED("depth/motion_unet.pth", "auto", "auto") != first


def test_missing_files_are_named_with_where_they_go(env, nodes, tmp_path):
    host, pack = env
    lonely = host.user_rain / "lonely"
    lonely.mkdir()
    (lonely / "motion_unet.pth").symlink_to(host.models_dir / "rain" / "motion_unet.pth")
    import folder_paths
    saved = folder_paths.folder_names_and_paths["rain"]
    folder_paths.folder_names_and_paths["rain"] = ([str(host.user_rain)], saved[1])
    try:
        with pytest.raises(FileNotFoundError) as error:
            nodes["RAIN_LoadModel"].load("lonely/motion_unet.pth", "auto", "auto")
    finally:
        folder_paths.folder_names_and_paths["rain"] = saved
        (lonely / "motion_unet.pth").unlink()
        lonely.rmdir()
    message = str(error.value)
    for name in ("pose_guider", "reference_unet", "sd-vae-ft-mse", "image_encoder", "python -m rain download"):
        assert name in message


# -- reference and sampling ------------------------------------------------------------------------------------
def test_fuse_loads_the_reference_part_and_keeps_the_reference(env, model, reference):
    host, pack = env
    assert ["reference_unet,image_encoder", "vae"] in [[name for name, _ in call] for call in host.loads]
    assert all(full for call in host.loads for _, full in call)  # always full loads
    assert reference.size == (SIZE, SIZE)
    assert reference.model is model


def test_sampler_outputs_images_and_latents_with_progress_previews(env, model, reference, nodes):
    host, pack = env
    host.progress.clear()
    host.loads.clear()
    count = 3
    images, latents = nodes["RAIN_StreamSampler"].sample(model, reference, poses(count), decoder="taesdv",
                                                         unique_id="11", **FAST)
    assert images.shape == (count, SIZE, SIZE, 3) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and images.is_contiguous()
    assert latents["samples"].shape == (count, 4, SIZE // 8, SIZE // 8)
    assert host.loads == [[("video_unet,pose_guider,taesdv", True)]]
    # The bar counts pushed frames and UNet calls: it moves from the first frame, before any frame is finished.
    work = stream_work(count, StreamSettings(**FAST))
    assert host.progress[0][:3] == ("11", 1, work) and host.progress[0][3] is None
    assert host.progress[-1][:3] == ("11", work, work)
    assert [p[1] for p in host.progress] == sorted(p[1] for p in host.progress)
    previews = [p[3] for p in host.progress if p[3] is not None]
    # ComfyUI fits a preview into its third item (scaling up too): the frame's own size keeps the label true.
    assert previews and previews[0][0] == "JPEG" and previews[0][1].size == (SIZE, SIZE) and previews[0][2] == SIZE

    (decoded,) = nodes["RAIN_DecodeLatents"].decode(model, latents, "taesdv")
    # Decoded in chunks of another length than the sampler's groups: the same maths, float32-rounded differently.
    torch.testing.assert_close(decoded, images, atol=1e-4, rtol=0)


def test_engine_node_feeds_the_sampler_and_says_how_to_get_tensorrt(env, model, reference, nodes, monkeypatch,
                                                                    caplog):
    from parity import assert_close_to_golden
    host, pack = env
    backends = importlib.import_module(f"{pack.__name__}.rain.accel.backends")
    monkeypatch.setattr(backends, "tensorrt_module", lambda: None)  # as on a machine without TensorRT
    settings = dict(width=SIZE, height=SIZE, frames_per_group=FAST["frames_per_group"],
                    num_groups=FAST["num_groups"], temporal_strength=FAST["temporal_strength"])
    (engine,) = nodes["RAIN_BuildEngine"].build(model, "tensorrt", unique_id="5", **settings)
    # On this CPU: TensorRT needs an NVIDIA GPU, said once, and the plain stream runs.
    assert engine.requested == "tensorrt" and engine.backend == "eager"
    assert "NVIDIA GPU" in engine.messages[0] and "'onnx' backend" in engine.messages[0]
    # As on a GPU machine without TensorRT (with Triton): the fused step runs as 'compiled'.
    real_resolve = backends.resolve_backend
    monkeypatch.setattr(backends, "resolve_backend",
                        lambda backend, notify, device=None: real_resolve(backend, notify=notify, device=None))
    (engine,) = nodes["RAIN_BuildEngine"].build(model, "tensorrt", unique_id="5", **settings)
    assert engine.backend == "compiled" and "extra 'tensorrt'" in engine.messages[0]
    assert engine.cache_dir.endswith("tensorrt")
    plain, plain_latents = nodes["RAIN_StreamSampler"].sample(model, reference, poses(5), decoder="taesdv", **FAST)
    fused, fused_latents = nodes["RAIN_StreamSampler"].sample(model, reference, poses(5), decoder="taesdv",
                                                              engine=engine, **FAST)
    assert_close_to_golden(fused_latents["samples"], plain_latents["samples"], "latents")
    assert_close_to_golden(fused, plain, "frames")
    with pytest.raises(ValueError, match="steps_per_group"):
        nodes["RAIN_StreamSampler"].sample(model, reference, poses(2), decoder="none", engine=engine,
                                           **{**FAST, "steps_per_group": 2})
    # A run at another size than the engine was built for says so (the engine would go unused silently).
    window = types.SimpleNamespace(frames_per_group=FAST["frames_per_group"], num_groups=FAST["num_groups"],
                                   temporal_strength=FAST["temporal_strength"])
    with caplog.at_level(logging.WARNING):
        engine.check_fits(SIZE, SIZE, window, "RAIN Stream Sampler")
        assert "was built for" not in caplog.text
        engine.check_fits(SIZE + 8, SIZE, window, "RAIN Stream Sampler")
    assert f"was built for {SIZE}×{SIZE}" in caplog.text and f"this run streams {SIZE}×{SIZE + 8}" in caplog.text


def test_sampler_is_deterministic_and_the_seed_matters(model, reference, nodes):
    first, _ = nodes["RAIN_StreamSampler"].sample(model, reference, poses(2), decoder="none", **FAST)
    again, _ = nodes["RAIN_StreamSampler"].sample(model, reference, poses(2), decoder="none", **FAST)
    other, _ = nodes["RAIN_StreamSampler"].sample(model, reference, poses(2), decoder="none",
                                                  **{**FAST, "seed": 4})
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert first.shape == (2, SIZE, SIZE, 3)  # 'none': a latent preview at frame size


def test_vae_decoder_and_vae_decode_node(env, model, reference, nodes):
    host, pack = env
    host.loads.clear()
    images, latents = nodes["RAIN_StreamSampler"].sample(model, reference, poses(1), decoder="vae", **FAST)
    assert host.loads == [[("video_unet,pose_guider,taesdv", True), ("vae", True)]]
    (decoded,) = nodes["RAIN_DecodeLatents"].decode(model, latents, "vae")
    torch.testing.assert_close(decoded, images, atol=1e-4, rtol=0)


def test_other_frame_size_refits_the_reference_once(env, model, reference, nodes):
    host, pack = env
    host.loads.clear()
    size = (SIZE + 8, SIZE)
    images, _ = nodes["RAIN_StreamSampler"].sample(model, reference, poses(1, size), decoder="taesdv", **FAST)
    assert images.shape == (1, *size, 3)
    refits = sum(1 for call in host.loads if ("vae", True) in call and len(call) == 2)
    nodes["RAIN_StreamSampler"].sample(model, reference, poses(1, size), decoder="taesdv", **FAST)
    assert sum(1 for call in host.loads if ("vae", True) in call and len(call) == 2) == refits == 1


def test_interrupt_stops_the_frame_loop(env, model, reference, nodes):
    host, pack = env
    host.interrupt = True
    with pytest.raises(InterruptProcessingException):
        nodes["RAIN_StreamSampler"].sample(model, reference, poses(3), decoder="taesdv", **FAST)
    assert host.interrupt is False


def test_bad_pose_size_says_how_to_fix_it(model, reference, nodes):
    with pytest.raises(ValueError, match="multiples of 8"):
        nodes["RAIN_StreamSampler"].sample(model, reference, poses(1, (SIZE + 4, SIZE)), decoder="taesdv", **FAST)


def test_loader_takes_comfyui_vae_and_clip_vision(env, model, reference, nodes):
    host, pack = env
    comfy_vae = types.SimpleNamespace(first_stage_model=model.pipeline.models.vae)   # ComfyUI's VAE object
    clip_vision = types.SimpleNamespace(model=model.pipeline.models.image_encoder)   # ComfyUI's CLIP_VISION
    (other,) = nodes["RAIN_LoadModel"].load("motion_unet.pth", "auto", "auto", vae=comfy_vae,
                                            clip_vision=clip_vision)
    assert other.pipeline.models.vae is not model.pipeline.models.vae
    with pytest.raises(ValueError, match="same Load RAIN Model"):
        nodes["RAIN_StreamSampler"].sample(other, reference, poses(1), decoder="taesdv", **FAST)
    for ours, theirs in ((other.pipeline.models.vae, model.pipeline.models.vae),
                         (other.pipeline.models.image_encoder, model.pipeline.models.image_encoder)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b if k in a)


# -- pose nodes ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keypoints(nodes):
    frames = torch.rand(3, 72, 96, 3)
    (result,) = nodes["RAIN_FaceLandmarks"].detect(frames, "auto", "auto", 1.0, "hold", False, "cpu",
                                                   unique_id="7")
    return frames, result


def test_face_landmarks_give_pose_keypoint(env, keypoints):
    host, pack = env
    frames, result = keypoints
    assert len(result) == 3
    frame = result[0]
    assert (frame["canvas_height"], frame["canvas_width"]) == (72, 72)   # the centred square that was detected
    assert frame["rain_crop"] == 1.0
    face = np.array(frame["people"][0]["face_keypoints_2d"]).reshape(-1, 3)
    assert face.shape == (70, 3) and (face[:68, 2] == 1).all()
    expected = sample_face() * 72
    np.testing.assert_allclose(face[:68, :2], expected, atol=72 / 512 * 2)
    assert host.progress[-1][1:3] == (3, 3)


def test_whole_body_pose(nodes):
    (result,) = nodes["RAIN_WholeBodyPose"].detect(torch.rand(2, 64, 64, 3), "dwpose/yolox_l.onnx",
                                                   "dwpose/dw-ll_ucoco_384.onnx", 0.0, "hold", True, "auto")
    person = result[0]["people"][0]
    body = np.array(person["pose_keypoints_2d"]).reshape(-1, 3)
    assert body.shape == (18, 3) and body[0, 2] == 1 and body[1, 2] == 1   # nose and neck (from the shoulders)
    assert "rain_crop" not in result[0]


def test_landmark_transform_presets(env, nodes, keypoints):
    host, pack = env
    _, source = keypoints
    node = nodes["RAIN_LandmarkTransform"]

    def face(preset, **params):
        out = node.transform(source, preset, unique_id="8", **params)
        assert out["ui"]["rain_calibration"][0]["frame"] == 0
        return np.array(out["result"][0][0]["people"][0]["face_keypoints_2d"]).reshape(-1, 3), out["result"][0]

    human = np.array(source[0]["people"][0]["face_keypoints_2d"]).reshape(-1, 3)
    unchanged, _ = face("none")
    np.testing.assert_allclose(unchanged, human)
    calibrated, result = face("calibration", eye_height_ratio=3.0)
    startup, _ = face("startup")
    wider, _ = face("calibration", eye_height_ratio=1.0)
    assert not np.allclose(calibrated[:68], human[:68])
    assert not np.allclose(calibrated[:68], startup[:68])
    assert not np.allclose(calibrated[36:48], wider[36:48]) and np.allclose(calibrated[:36], wider[:36])
    assert result[0]["people"][0]["rain_face_untransformed"] == source[0]["people"][0]["face_keypoints_2d"]
    assert source[0]["people"][0].get("rain_face_untransformed") is None   # the input is not modified


def test_transform_remembers_the_frame_for_the_preview(env, nodes, keypoints):
    host, pack = env
    frames, source = keypoints
    nodes["RAIN_LandmarkTransform"].transform(source, "calibration", preview_images=frames, unique_id="9")
    calibration = sys.modules[f"{PACK}.nodes.calibration"]
    seen = calibration.seen_frame("9")
    assert seen.image.shape == (72, 72, 3)            # cropped like the landmarks
    png, drawn_over = calibration.preview_png("calibration", {"eye_height_ratio": 2.0}, "9")
    assert drawn_over == "frame" and png[:8] == b"\x89PNG\r\n\x1a\n"


def test_draw_pose_styles(nodes, keypoints):
    _, source = keypoints
    out = nodes["RAIN_LandmarkTransform"].transform(source, "calibration")["result"][0]
    (faces,) = nodes["RAIN_DrawPose"].draw(out, "face dots", SIZE, SIZE + 16)
    assert faces.shape == (3, SIZE + 16, SIZE, 3) and faces.dtype == torch.float32
    colours = {tuple(c) for c in (faces[0].reshape(-1, 3) * 255).round().int().tolist()}
    assert (255, 128, 128) in colours and (0, 255, 255) in colours   # eye and jaw dots
    (bodies,) = nodes["RAIN_DrawPose"].draw(out, "whole body", SIZE, SIZE)
    assert bodies.shape == (3, SIZE, SIZE, 3) and bodies.sum() > 0


def test_draw_pose_reads_other_packs_keypoints(nodes):
    """comfyui_controlnet_aux-style POSE_KEYPOINT (pixels, or normalised coordinates from other producers)."""
    face = sample_face()
    for scale in (1.0, 200.0):
        triples = np.concatenate([face * scale, np.ones((68, 1))], axis=1).reshape(-1).tolist()
        data = [{"people": [{"pose_keypoints_2d": None, "face_keypoints_2d": triples}],
                 "canvas_height": 200, "canvas_width": 200}]
        transformed = nodes["RAIN_LandmarkTransform"].transform(data, "startup")["result"][0]
        (image,) = nodes["RAIN_DrawPose"].draw(transformed, "face dots", SIZE, SIZE)
        assert image.sum() > 0


def test_missing_dwpose_files_explain_where_to_put_them(env, nodes):
    host, pack = env
    with pytest.raises(FileNotFoundError, match="dwpose") as error:
        nodes["RAIN_FaceLandmarks"].detect(torch.rand(1, 64, 64, 3), "auto", "dw-xx_missing.onnx", 0.0, "hold",
                                           False, "cpu")
    message = str(error.value)
    rain_folder = host.models_dir / "rain"
    assert f"Put them in {rain_folder / 'dwpose'}" in message
    # The command downloads into the folder that is searched, and comfyui_controlnet_aux's downloads are looked
    # for next to models/, not inside it.
    assert f"python -m rain download --dwpose --models-dir {rain_folder}" in message
    assert str(host.base / "custom_nodes" / "comfyui_controlnet_aux" / "ckpts") in message
    assert "models/custom_nodes" not in message


# -- the calibration route -------------------------------------------------------------------------------------
def test_calibration_route_answers_png(env):
    aiohttp = pytest.importorskip("aiohttp")  # ComfyUI always ships it; the engine's requirements do not
    host, pack = env
    handler = host.routes["post /rain/calibration/preview"]

    class Request:
        def __init__(self, body):
            self.body = body

        async def json(self):
            return json.loads(self.body)

    response = asyncio.run(handler(Request(json.dumps({"node_id": "nobody", "preset": "startup", "params": {}}))))
    assert response.status == 200 and response.content_type == "image/png"
    assert response.headers["X-RAIN-Source"] == "sample"
    bad = asyncio.run(handler(Request(json.dumps({"preset": "sideways"}))))
    assert bad.status == 400 and isinstance(bad, aiohttp.web.Response)


# -- without any host ------------------------------------------------------------------------------------------
def test_nodes_run_without_comfyui(tmp_path_factory, monkeypatch):
    """The host module's own fallbacks: models from a given folder, modules moved by hand, local progress and
    interruption - what scripts and other tests get when ComfyUI is absent."""
    for name in ("folder_paths", "comfy", "comfy.model_management", "comfy.model_patcher", "comfy.utils", "server"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    models = tiny_models(tmp_path_factory)
    name = "ComfyUI-RAIN-no-host"
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[name] = pack
    try:
        spec.loader.exec_module(pack)
        host = sys.modules[f"{name}.nodes.host"]
        assert not host.in_comfyui()
        host.set_fallback_models_dirs([models])
        classes = pack.NODE_CLASS_MAPPINGS
        assert classes["RAIN_LoadModel"].INPUT_TYPES()["required"]["motion_unet"][0] == ["motion_unet.pth"]
        (rain_model,) = classes["RAIN_LoadModel"]().load("motion_unet.pth", "auto", "cpu")
        assert all(isinstance(p, host.LocalPatcher) for p in rain_model.patchers.values())
        (reference,) = classes["RAIN_FuseReference"]().fuse(rain_model, torch.rand(1, 64, 64, 3), SIZE, SIZE)
        assert rain_model.patchers["reference"].loads == 1
        images, _ = classes["RAIN_StreamSampler"]().sample(rain_model, reference, poses(2), decoder="taesdv", **FAST)
        assert images.shape == (2, SIZE, SIZE, 3)
        host.request_interrupt()
        with pytest.raises(host.Interrupted):
            classes["RAIN_StreamSampler"]().sample(rain_model, reference, poses(2), decoder="taesdv", **FAST)
        assert ("post", "/rain/calibration/preview") in host.ROUTES   # defined, with no server to take it
    finally:
        for key in [k for k in sys.modules if k.startswith(name)]:
            del sys.modules[key]


def test_face_dots_follow_the_largest_person(nodes):
    face = sample_face()
    small = face * 0.3 + 0.05                       # a second, smaller face in the corner
    people = []
    for points in (small, face):
        triples = np.concatenate([points * 100, np.ones((68, 1))], axis=1).reshape(-1).tolist()
        people.append({"pose_keypoints_2d": None, "face_keypoints_2d": triples})
    both = [{"people": people, "canvas_height": 100, "canvas_width": 100}]
    alone = [{"people": people[1:], "canvas_height": 100, "canvas_width": 100}]
    (drawn,) = nodes["RAIN_DrawPose"].draw(both, "face dots", SIZE, SIZE)
    (expected,) = nodes["RAIN_DrawPose"].draw(alone, "face dots", SIZE, SIZE)
    torch.testing.assert_close(drawn, expected)


def test_depth_maps_through_the_memory_manager(env):
    """RAIN Depth Maps in a host: the model folder from the user's models/rain path, its weights handed to the
    memory manager, progress reported per batch."""
    from rain.devtools import write_tiny_depth_model
    host, pack = env
    folder = write_tiny_depth_model(host.user_rain / "estimators" / "small_depth")
    try:
        cls = pack.NODE_CLASS_MAPPINGS["RAIN_DepthMaps"]
        assert cls.INPUT_TYPES()["required"]["model"][0] == ["auto", "estimators/small_depth"]
        loads_before = len(host.loads)
        (maps,) = cls().estimate(torch.rand(5, SIZE, SIZE, 3), "estimators/small_depth", 0.9, 2, unique_id="7")
        assert maps.shape == (5, SIZE, SIZE, 3) and 0 <= float(maps.min()) and float(maps.max()) == 1.0
        assert host.loads[loads_before:] == [[("dpt,neck,head", True)]]
        assert [entry[1:3] for entry in host.progress if entry[0] == "7"][-3:] == [(2, 5), (4, 5), (5, 5)]
        with pytest.raises(FileNotFoundError, match="no depth estimator at .*depth_estimator"):
            cls().estimate(torch.rand(1, SIZE, SIZE, 3), "auto", 0.9, 2)
    finally:
        shutil.rmtree(folder.parent)
