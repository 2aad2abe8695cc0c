"""The pack imports the way ComfyUI imports it, without ComfyUI, and every node declares a valid interface."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def load_pack(name: str):
    """Import the repo root as a package, as ComfyUI's ``load_custom_node`` does (a name ComfyUI could use,
    with a dash, so nothing inside may rely on importing the pack by name)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pack():
    module = load_pack("ComfyUI-RAIN-import-test")
    yield module
    for key in [k for k in sys.modules if k.startswith("ComfyUI-RAIN-import-test")]:
        del sys.modules[key]


def test_pack_imports_without_comfyui_and_without_heavy_modules():
    """In a fresh interpreter: no ComfyUI, no onnxruntime/tensorrt/diffusers at import, no top-level ``nodes``."""
    code = f"""
import importlib.util, json, sys, time
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("ComfyUI-RAIN", {str(REPO / "__init__.py")!r},
                                              submodule_search_locations=[{str(REPO)!r}])
module = importlib.util.module_from_spec(spec)
sys.modules["ComfyUI-RAIN"] = module
spec.loader.exec_module(module)
print(json.dumps({{
    "nodes": sorted(module.NODE_CLASS_MAPPINGS),
    "web": module.WEB_DIRECTORY,
    "loaded": sorted(k for k in ("onnxruntime", "tensorrt", "diffusers", "transformers", "cv2", "nodes",
                                 "folder_paths", "comfy", "server", "rain") if k in sys.modules),
    "seconds": time.perf_counter() - start,
}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["nodes"] == sorted(["RAIN_LoadModel", "RAIN_FuseReference", "RAIN_StreamSampler",
                                      "RAIN_DecodeLatents", "RAIN_BuildEngine", "RAIN_FaceLandmarks",
                                      "RAIN_WholeBodyPose", "RAIN_LandmarkTransform", "RAIN_DrawPose",
                                      "RAIN_DepthMaps", "RAIN_Live", "RAIN_RenderVideo", "RAIN_BatchRender"])
    # "rain" would mean the engine was imported as a top-level package instead of relatively inside the pack.
    assert report["loaded"] == [], f"imported at pack import: {report['loaded']}"
    assert (REPO / report["web"]).is_dir()
    assert list((REPO / report["web"]).glob("*.js"))


def test_ids_names_and_categories(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("RAIN_")
        name = pack.NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert isinstance(name, str) and "_" not in name and name[0].isupper(), name
        assert cls.CATEGORY == "RAIN" or cls.CATEGORY.startswith("RAIN/"), cls.CATEGORY
        assert isinstance(getattr(cls, "DESCRIPTION", ""), str) and cls.DESCRIPTION
        assert callable(getattr(cls, cls.FUNCTION))


def _check_option(node_id, name, spec):
    assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, (node_id, name, spec)
    kind = spec[0]
    options = spec[1] if len(spec) == 2 else {}
    assert isinstance(options, dict)
    if isinstance(kind, list):
        assert kind and all(isinstance(v, str) for v in kind), (node_id, name)
        assert options.get("default", kind[0]) in kind, (node_id, name)
        return
    assert isinstance(kind, str) and kind == kind.upper(), (node_id, name, kind)
    if kind in ("INT", "FLOAT") and "default" in options:
        assert options.get("min", options["default"]) <= options["default"] <= options.get("max", options["default"])
        if kind == "INT":
            assert all(isinstance(options[k], int) for k in ("default", "min", "max", "step") if k in options)
    if kind == "BOOLEAN":
        assert isinstance(options.get("default", False), bool)


def test_every_input_types_is_valid(pack):
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        types = cls.INPUT_TYPES()
        assert set(types) <= {"required", "optional", "hidden"}, node_id
        assert types["required"], node_id
        for section in ("required", "optional"):
            for name, spec in types.get(section, {}).items():
                _check_option(node_id, name, spec)
        for name, value in types.get("hidden", {}).items():
            assert value in ("UNIQUE_ID", "PROMPT", "EXTRA_PNGINFO", "DYNPROMPT"), (node_id, name)
        assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
        if hasattr(cls, "RETURN_NAMES"):
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
        if hasattr(cls, "OUTPUT_TOOLTIPS"):
            assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)


def test_calibration_parameters_are_all_widgets(pack):
    from rain.pose.landmark_transform import DEMO_DEFAULTS, SLIDER_RANGES

    required = pack.NODE_CLASS_MAPPINGS["RAIN_LandmarkTransform"].INPUT_TYPES()["required"]
    for name, (low, high, step) in SLIDER_RANGES.items():
        kind, options = required[name]
        assert kind == "FLOAT"
        assert (options["min"], options["max"], options["step"]) == (low, high, step)
        assert options["default"] == getattr(DEMO_DEFAULTS, name)
    assert len(SLIDER_RANGES) == 13
    assert required["preset"][0] == ["calibration", "startup", "none"]


def test_only_the_loader_fingerprints_its_inputs(pack):
    # ComfyUI's cache keys on the inputs: that alone makes "only a new image re-fuses" true. An IS_CHANGED on the
    # fuse or sampler nodes would re-run them needlessly; the loader's fingerprints the files on disk. RAIN Live
    # runs on every queued prompt: running the graph is how a stopped session starts again.
    with_fingerprint = {k for k, cls in pack.NODE_CLASS_MAPPINGS.items() if hasattr(cls, "IS_CHANGED")}
    # RAIN Batch Render looks at the disk every run: finished videos are skipped, interrupted ones continue.
    assert with_fingerprint == {"RAIN_LoadModel", "RAIN_Live", "RAIN_BatchRender"}
    for name in ("RAIN_Live", "RAIN_BatchRender"):
        value = pack.NODE_CLASS_MAPPINGS[name].IS_CHANGED()
        assert value != value   # NaN: never equal to the previous run's value


def test_engine_imports_inside_the_pack_are_relative():
    for path in (REPO / "nodes").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import rain", "from rain", "import nodes", "from nodes")), (path, line)
            assert not stripped.startswith(("import onnxruntime", "import tensorrt")), (path, line)
    root = (REPO / "__init__.py").read_text()
    assert "from .nodes import" in root


def test_every_node_input_has_a_tooltip():
    import importlib.util
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    name = "ComfyUI-RAIN-tooltips"
    spec = importlib.util.spec_from_file_location(name, repo / "__init__.py", submodule_search_locations=[str(repo)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[name] = pack
    try:
        spec.loader.exec_module(pack)
        missing = [f"{node_id}.{input_name}" for node_id, node in pack.NODE_CLASS_MAPPINGS.items()
                   for group in ("required", "optional")
                   for input_name, input_spec in node.INPUT_TYPES().get(group, {}).items()
                   if len(input_spec) < 2 or not input_spec[1].get("tooltip")]
    finally:
        for key in [k for k in sys.modules if k.startswith(name)]:
            del sys.modules[key]
    assert not missing, missing
