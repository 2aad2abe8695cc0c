"""The shipped workflows (ComfyUI UI format 0.4) reference only nodes that exist, with matching link types and
the right widget values, and say which model files they need."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

# Core ComfyUI (0.3.64) and ComfyUI-VideoHelperSuite nodes the workflows may use, from their /object_info:
# node id -> ([(input name, type, widget values it stores)], [output types]).
HOST_NODES = {
    "LoadImage": ([("image", "COMBO", 2)], ["IMAGE", "MASK"]),
    "LoadVideo": ([("file", "COMBO", 2)], ["VIDEO"]),
    "GetVideoComponents": ([("video", "VIDEO", 0)], ["IMAGE", "AUDIO", "FLOAT"]),
    "CreateVideo": ([("images", "IMAGE", 0), ("fps", "FLOAT", 1), ("audio", "AUDIO", 0)], ["VIDEO"]),
    "SaveVideo": ([("video", "VIDEO", 0), ("filename_prefix", "STRING", 1), ("format", "COMBO", 1),
                   ("codec", "COMBO", 1)], []),
    "PreviewImage": ([("images", "IMAGE", 0)], []),
    "SaveImage": ([("images", "IMAGE", 0), ("filename_prefix", "STRING", 1)], []),
    "ImageFromBatch": ([("image", "IMAGE", 0), ("batch_index", "INT", 1), ("length", "INT", 1)], ["IMAGE"]),
    "ImageScale": ([("image", "IMAGE", 0), ("upscale_method", "COMBO", 1), ("width", "INT", 1), ("height", "INT", 1),
                    ("crop", "COMBO", 1)], ["IMAGE"]),
    "CheckpointLoaderSimple": ([("ckpt_name", "COMBO", 1)], ["MODEL", "CLIP", "VAE"]),
    "CLIPTextEncode": ([("text", "STRING", 1), ("clip", "CLIP", 0)], ["CONDITIONING"]),
    "ControlNetLoader": ([("control_net_name", "COMBO", 1)], ["CONTROL_NET"]),
    "ControlNetApplyAdvanced": ([("positive", "CONDITIONING", 0), ("negative", "CONDITIONING", 0),
                                 ("control_net", "CONTROL_NET", 0), ("image", "IMAGE", 0), ("strength", "FLOAT", 1),
                                 ("start_percent", "FLOAT", 1), ("end_percent", "FLOAT", 1), ("vae", "VAE", 0)],
                                ["CONDITIONING", "CONDITIONING"]),
    "VAEEncode": ([("pixels", "IMAGE", 0), ("vae", "VAE", 0)], ["LATENT"]),
    "KSampler": ([("model", "MODEL", 0), ("seed", "INT", 2), ("steps", "INT", 1), ("cfg", "FLOAT", 1),
                  ("sampler_name", "COMBO", 1), ("scheduler", "COMBO", 1), ("positive", "CONDITIONING", 0),
                  ("negative", "CONDITIONING", 0), ("latent_image", "LATENT", 0), ("denoise", "FLOAT", 1)],
                 ["LATENT"]),
    "VAEDecode": ([("samples", "LATENT", 0), ("vae", "VAE", 0)], ["IMAGE"]),
    "VAELoader": ([("vae_name", "COMBO", 1)], ["VAE"]),
    "CLIPVisionLoader": ([("clip_name", "COMBO", 1)], ["CLIP_VISION"]),
    "VHS_LoadVideo": ([("video", "COMBO", 1), ("force_rate", "FLOAT", 1), ("custom_width", "INT", 1),
                       ("custom_height", "INT", 1), ("frame_load_cap", "INT", 1), ("skip_first_frames", "INT", 1),
                       ("select_every_nth", "INT", 1), ("meta_batch", "VHS_BatchManager", 0), ("vae", "VAE", 0),
                       ("format", "COMBO", 1)], ["IMAGE", "INT", "AUDIO", "VHS_VIDEOINFO"]),
    "VHS_VideoInfoLoaded": ([("video_info", "VHS_VIDEOINFO", 0)], ["FLOAT", "INT", "FLOAT", "INT", "INT"]),
    "VHS_VideoCombine": ([("images", "IMAGE", 0), ("frame_rate", "FLOAT", 1), ("loop_count", "INT", 1),
                          ("filename_prefix", "STRING", 1), ("format", "COMBO", 1), ("pingpong", "BOOLEAN", 1),
                          ("save_output", "BOOLEAN", 1), ("audio", "AUDIO", 0), ("meta_batch", "VHS_BatchManager", 0),
                          ("vae", "VAE", 0)], ["VHS_FILENAMES"]),
}
FRONTEND_ONLY = {"Note", "MarkdownNote"}          # drawn by the frontend, never executed
HOST_OUTPUT_NODES = {"SaveVideo", "PreviewImage", "SaveImage", "VHS_VideoCombine"}
DWPOSE_NODES = {"RAIN_FaceLandmarks", "RAIN_WholeBodyPose", "RAIN_Live", "RAIN_RenderVideo"}
DICT_WIDGETS = {"VHS_LoadVideo", "VHS_VideoCombine", "VHS_VideoInfoLoaded"}  # VHS saves widgets_values by name
MODEL_FILES = ("models/rain", "motion_unet.pth", "reference_unet.pth", "pose_guider.pth", "taesdv.pth",
               "sd-vae-ft-mse", "image_encoder", "Pscgylotti/RAIN-v0.1")


@pytest.fixture(scope="module")
def pack():
    name = "ComfyUI-RAIN-workflow-test"
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    for key in [k for k in sys.modules if k.startswith(name)]:
        del sys.modules[key]


def our_node(cls) -> tuple[list, list, dict]:
    """(inputs as in HOST_NODES, outputs, {input name: choices or type}) from a node class."""
    types = cls.INPUT_TYPES()
    inputs, kinds = [], {}
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            options = spec[1] if len(spec) > 1 else {}
            # The frontend gives an INT named seed/noise_seed a "control after generate" widget unless told not to.
            control = options.get("control_after_generate", kind == "INT" and name in ("seed", "noise_seed"))
            count = (1 if kind in WIDGET_TYPES else 0) + (1 if control else 0)
            count += 1 if options.get("video_upload") else 0   # the frontend's upload button stores a value too
            inputs.append((name, kind, count))
            kinds[name] = spec[0]
    return inputs, list(cls.RETURN_TYPES), kinds


def frontend_widget_names(cls) -> list[str]:
    """The names of a node's stored widget values in the order ComfyUI's frontend saves them: each widget, then
    its "control after generate" ("NAME control"), and upload buttons ("NAME upload") after everything else."""
    names, uploads = [], []
    for section in ("required", "optional"):
        for name, spec in cls.INPUT_TYPES().get(section, {}).items():
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            options = spec[1] if len(spec) > 1 else {}
            if kind not in WIDGET_TYPES:
                continue
            names.append(name)
            if options.get("control_after_generate", kind == "INT" and name in ("seed", "noise_seed")):
                names.append(f"{name} control")
            if options.get("video_upload"):
                uploads.append(f"{name} upload")
    return names + uploads


def definitions(pack):
    defs = {node_id: our_node(cls)[:2] for node_id, cls in pack.NODE_CLASS_MAPPINGS.items()}
    defs.update(HOST_NODES)
    return defs


def load(path):
    return json.loads(path.read_text())


def output_nodes(pack) -> set[str]:
    ours = {node_id for node_id, cls in pack.NODE_CLASS_MAPPINGS.items() if getattr(cls, "OUTPUT_NODE", False)}
    return HOST_OUTPUT_NODES | ours


def test_workflows_are_shipped():
    names = {p.stem for p in WORKFLOWS}
    assert {"rain_face_morphing", "rain_style_transfer", "rain_whole_body", "rain_live_face",
            "rain_long_video"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_ui_format_and_graph_consistency(path):
    data = load(path)
    assert data["version"] == 0.4
    nodes = {n["id"]: n for n in data["nodes"]}
    assert len(nodes) == len(data["nodes"])
    assert data["last_node_id"] >= max(nodes)
    links = {link[0]: link for link in data["links"]}
    assert len(links) == len(data["links"]) and data["last_link_id"] >= max(links)
    for link_id, origin, origin_slot, target, target_slot, kind in data["links"]:
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[origin]["outputs"][origin_slot]["type"] == kind
    for node in data["nodes"]:
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                assert slot["link"] in links, (node["type"], slot)
        for slot in node.get("outputs", []):
            for link_id in slot.get("links") or []:
                assert links[link_id][1] == node["id"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_nodes_exist_and_links_have_matching_types(pack, path):
    defs = definitions(pack)
    data = load(path)
    nodes = {n["id"]: n for n in data["nodes"]}
    for node in data["nodes"]:
        assert node["type"] in defs or node["type"] in FRONTEND_ONLY, f"unknown node {node['type']}"
    for _, origin, origin_slot, target, target_slot, kind in data["links"]:
        source, sink = nodes[origin], nodes[target]
        assert defs[source["type"]][1][origin_slot] == kind, (source["type"], origin_slot)
        name = sink["inputs"][target_slot]["name"]
        declared = {n: t for n, t, _ in defs[sink["type"]][0]}
        assert name in declared, (sink["type"], name)
        assert declared[name] == kind, (sink["type"], name, declared[name], kind)
    assert any(n["type"] in output_nodes(pack) for n in data["nodes"]), "nothing would execute without an output node"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_widget_values(pack, path):
    defs = definitions(pack)
    data = load(path)
    for node in data["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            assert isinstance(node["widgets_values"][0], str)
            continue
        inputs = defs[node["type"]][0]
        values = node.get("widgets_values")
        widget_names = [name for name, _, count in inputs if count]
        if node["type"] in DICT_WIDGETS:
            assert set(widget_names) <= set(values or {}), (node["type"], widget_names)
            continue
        expected = sum(count for _, _, count in inputs)
        assert len(values or []) == expected, (node["type"], values)
        if node["type"] in pack.NODE_CLASS_MAPPINGS:
            check_our_values(pack, node, values)


def check_our_values(pack, node, values):
    """Positional values line up with our widgets: choices are valid, numbers are numbers and in range."""
    cls = pack.NODE_CLASS_MAPPINGS[node["type"]]
    types = cls.INPUT_TYPES()
    specs = {**types.get("required", {}), **types.get("optional", {})}
    position = uploads = 0
    for name, spec in specs.items():
        kind = spec[0]
        options = spec[1] if len(spec) > 1 else {}
        if not (isinstance(kind, list) or kind in WIDGET_TYPES):
            continue
        value = values[position]
        position += 1
        if isinstance(kind, list):
            if node["type"] == "RAIN_LoadModel" and name == "motion_unet":
                assert value.endswith("motion_unet.pth")   # depends on the user's folder
            elif options.get("video_upload"):
                # The user's input folder; the frontend adds the upload button after every other widget, and
                # its value ("image") is stored last.
                assert isinstance(value, str) and values[-1] == "image"
                uploads += 1
            else:
                assert value in kind, (node["type"], name, value)
        elif kind in ("INT", "FLOAT"):
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (node["type"], name, value)
            assert options.get("min", value) <= value <= options.get("max", value), (node["type"], name, value)
        elif kind == "BOOLEAN":
            assert isinstance(value, bool), (node["type"], name, value)
        if options.get("control_after_generate", kind == "INT" and name in ("seed", "noise_seed")):
            assert values[position] in ("fixed", "increment", "decrement", "randomize")
            position += 1
    assert position + uploads == len(values)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_note_says_which_model_files_and_where(path):
    data = load(path)
    notes = [n["widgets_values"][0] for n in data["nodes"] if n["type"] in FRONTEND_ONLY]
    assert notes, "each workflow explains itself in a note"
    text = "\n".join(notes)
    for needed in MODEL_FILES:
        assert needed in text, f"{path.name}: the note does not mention {needed}"
    types = {n["type"] for n in data["nodes"]}
    if types & DWPOSE_NODES:
        assert "dwpose" in text and "yolox_l.onnx" in text and "dw-ll_ucoco_384.onnx" in text
    if "RAIN_DepthMaps" in types:
        assert "depth_estimator" in text and "preprocessor_config.json" in text


def test_specific_workflows(pack):
    face = load(REPO / "workflows" / "rain_face_morphing.json")
    chain = [n["type"] for n in face["nodes"]]
    for node_type in ("RAIN_LoadModel", "RAIN_FuseReference", "RAIN_FaceLandmarks", "RAIN_LandmarkTransform",
                      "RAIN_DrawPose", "RAIN_StreamSampler", "SaveVideo"):
        assert node_type in chain
    style = load(REPO / "workflows" / "rain_style_transfer.json")
    style_types = {n["type"] for n in style["nodes"]}
    assert {"CheckpointLoaderSimple", "ControlNetLoader", "ControlNetApplyAdvanced", "KSampler",
            "RAIN_FuseReference", "RAIN_StreamSampler"} <= style_types
    style_note = "\n".join(n["widgets_values"][0] for n in style["nodes"] if n["type"] in FRONTEND_ONLY)
    assert "depth-trained" in style_note.lower()
    # The depth maps come from the source video through our node, not from a second video made elsewhere.
    assert [n["type"] for n in style["nodes"]].count("LoadVideo") == 1
    style_nodes = {n["id"]: n for n in style["nodes"]}
    depth = next(n for n in style["nodes"] if n["type"] == "RAIN_DepthMaps")
    fed = {style_nodes[link[3]]["type"] for link in style["links"] if link[1] == depth["id"]}
    assert fed == {"RAIN_StreamSampler", "ImageFromBatch"}   # the sampler's poses, the ControlNet's first map
    body = load(REPO / "workflows" / "rain_whole_body.json")
    body_nodes = {n["type"]: n for n in body["nodes"]}
    assert "RAIN_WholeBodyPose" in body_nodes
    assert body_nodes["RAIN_DrawPose"]["widgets_values"][0] == "whole body"


def test_live_workflow(pack):
    live = load(REPO / "workflows" / "rain_live_face.json")
    nodes = {n["type"]: n for n in live["nodes"]}
    assert {"LoadImage", "RAIN_LoadModel", "RAIN_FuseReference", "RAIN_Live"} <= set(nodes)
    assert pack.NODE_CLASS_MAPPINGS["RAIN_Live"].OUTPUT_NODE
    widgets = frontend_widget_names(pack.NODE_CLASS_MAPPINGS["RAIN_Live"])
    assert len(widgets) == len(nodes["RAIN_Live"]["widgets_values"])
    values = dict(zip(widgets, nodes["RAIN_Live"]["widgets_values"]))
    assert values["seed control"] == "fixed" and values["backend"] == "eager"
    assert values["task"] == "face" and values["preset"] == "calibration" and values["decoder"] == "taesdv"
    fuse = dict(zip(["width", "height"], nodes["RAIN_FuseReference"]["widgets_values"]))
    assert fuse == {"width": 512, "height": 512}
    note = "\n".join(n["widgets_values"][0] for n in live["nodes"] if n["type"] in FRONTEND_ONLY)
    for needed in ("OBS", "Browser Source", "/rain/live/viewer?session=node-" + str(nodes["RAIN_Live"]["id"]),
                   "python -m rain live", "frames_per_group"):
        assert needed in note, needed


def test_long_video_workflow(pack):
    long = load(REPO / "workflows" / "rain_long_video.json")
    nodes = {n["type"]: n for n in long["nodes"]}
    assert {"LoadImage", "RAIN_LoadModel", "RAIN_FuseReference", "RAIN_RenderVideo", "PreviewImage"} <= set(nodes)
    node = pack.NODE_CLASS_MAPPINGS["RAIN_RenderVideo"]
    assert node.OUTPUT_NODE and node.RETURN_TYPES == ("VIDEO", "IMAGE")
    widgets = frontend_widget_names(node)
    assert len(widgets) == len(nodes["RAIN_RenderVideo"]["widgets_values"])
    values = dict(zip(widgets, nodes["RAIN_RenderVideo"]["widgets_values"]))
    assert values["video"] == "YOUR_DRIVING_VIDEO.mp4" and values["video upload"] == "image" and "seed control" not in values
    assert values["task"] == "face landmarks" and values["format"] == "mp4" and values["keep_audio"] is True
    assert values["resume"] is False and values["save_every"] > 0 and values["filename_prefix"] == "RAIN/long"
    note = "\n".join(n["widgets_values"][0] for n in long["nodes"] if n["type"] in FRONTEND_ONLY)
    for needed in ("resume", ".partial.mp4", ".resume/", "python -m rain animate", "--resume", "frames/s"):
        assert needed in note, needed


def test_batch_render_workflow(pack):
    batch = load(REPO / "workflows" / "rain_batch_render.json")
    nodes = {n["id"]: n for n in batch["nodes"]}
    render = next(n for n in batch["nodes"] if n["type"] == "RAIN_BatchRender")
    values = dict(zip(frontend_widget_names(pack.NODE_CLASS_MAPPINGS["RAIN_BatchRender"]), render["widgets_values"]))
    assert values["source"] == "folder of driving videos" and values["ray_address"] == ""
    assert "seed control" not in values          # a rerun keeps the seed, so interrupted videos resume
    fed = {nodes[link[1]]["type"] for link in batch["links"] if link[3] == render["id"]}
    assert fed == {"LoadImage"}


def test_face_workflow_crops_as_its_note_says(pack):
    face = load(REPO / "workflows" / "rain_face_morphing.json")
    landmarks = next(n for n in face["nodes"] if n["type"] == "RAIN_FaceLandmarks")
    values = dict(zip(frontend_widget_names(pack.NODE_CLASS_MAPPINGS["RAIN_FaceLandmarks"]),
                      landmarks["widgets_values"]))
    note = "\n".join(n["widgets_values"][0] for n in face["nodes"] if n["type"] in FRONTEND_ONLY)
    assert "Crop 0.9" in note and values["crop"] == 0.9
