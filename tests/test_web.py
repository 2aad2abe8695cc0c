"""The calibration widget and the live panel: the frontend files the pack serves, and what they ask the server for."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
NAME = "ComfyUI-RAIN-web-test"


@pytest.fixture(scope="module")
def pack():
    spec = importlib.util.spec_from_file_location(NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    yield module
    for key in [k for k in sys.modules if k.startswith(NAME)]:
        del sys.modules[key]


@pytest.fixture(scope="module")
def calibration(pack):
    return sys.modules[f"{NAME}.nodes.calibration"]


@pytest.fixture(scope="module")
def script(pack):
    files = sorted((REPO / pack.WEB_DIRECTORY).glob("*.js"))
    assert files, "WEB_DIRECTORY holds no .js file"
    return (REPO / pack.WEB_DIRECTORY / "rain_calibration.js").read_text()


def test_script_targets_our_node_and_route(pack, calibration, script):
    assert f'"{calibration.ROUTE}"' in script
    node = re.search(r'const NODE_TYPE = "([^"]+)"', script).group(1)
    assert node in pack.NODE_CLASS_MAPPINGS
    # Served at /extensions/<pack>/rain_calibration.js: the frontend's modules are two levels up.
    assert 'from "../../scripts/app.js"' in script and 'from "../../scripts/api.js"' in script
    # The preview is not a value: neither saved in workflows nor sent with the prompt.
    assert "serialize: false" in script and "widget.serialize = false" in script


def test_script_parses():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    result = subprocess.run([node, "--check", "--input-type=module"], input=(REPO / "web" / "rain_calibration.js")
                            .read_text(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def decode(png: bytes) -> np.ndarray:
    from io import BytesIO

    from PIL import Image
    return np.asarray(Image.open(BytesIO(png)).convert("RGB"))


def test_preview_follows_the_sliders(calibration):
    base, over = calibration.preview_png("calibration", {}, node_id=None)
    assert over == "sample"
    same, _ = calibration.preview_png("calibration", {"eye_height_ratio": 3.0})   # the default value
    moved, _ = calibration.preview_png("calibration", {"eye_height_ratio": 1.0})
    human, _ = calibration.preview_png("none", {"eye_height_ratio": 1.0})
    startup, _ = calibration.preview_png("startup", {"eye_height_ratio": 1.0})
    image = decode(base)
    assert image.shape == (calibration.PREVIEW_SIZE, calibration.PREVIEW_SIZE, 3)
    assert np.array_equal(decode(same), image)
    assert not np.array_equal(decode(moved), image)
    assert not np.array_equal(decode(human), image)
    assert not np.array_equal(decode(startup), decode(moved))   # startup ignores the sliders
    colours = {tuple(c) for c in image.reshape(-1, 3).tolist()}
    assert (255, 128, 128) in colours and (128, 128, 255) in colours  # both eyes' RAIN dots are drawn


def test_preview_matches_the_engine_transform(calibration):
    """The widget draws exactly what the node applies: the engine's transform of the same face."""
    from rain.pose.landmark_transform import FaceCalibration, apply_translations, calibration_translations

    params = {"eye_width_ratio": 2.2, "jaw_width_ratio": 0.7}
    translations = calibration.translations_for("calibration", params)
    face = calibration.SAMPLE_FACE
    expected = apply_translations(face, calibration_translations(FaceCalibration(**params)))
    np.testing.assert_allclose(apply_translations(face, translations), expected)
    with pytest.raises(ValueError):
        calibration.translations_for("sideways", {})


def test_preview_over_the_last_frame(calibration):
    frame = np.zeros((90, 120, 3), np.uint8)
    frame[:, :60] = 200
    calibration.remember("42", calibration.SeenFrame(calibration.SAMPLE_FACE.copy(), frame, 0))
    png, over = calibration.preview_png("calibration", {}, node_id="42")
    assert over == "frame"
    image = decode(png)
    assert image[..., 0].max() >= 80       # the dimmed frame shows behind the landmarks
    sample, over = calibration.preview_png("calibration", {}, node_id="42", source="sample")
    assert over == "sample"


def test_face_with_missing_points_still_previews(calibration):
    face = calibration.SAMPLE_FACE.copy()
    face[36:42] = -1.0
    calibration.remember("43", calibration.SeenFrame(face, None, 0))
    png, over = calibration.preview_png("calibration", {}, node_id="43")
    colours = {tuple(c) for c in decode(png).reshape(-1, 3).tolist()}
    assert (128, 128, 255) in colours and (255, 128, 128) not in colours  # the unseen eye is not drawn


# -- the live panel ----------------------------------------------------------------------------------------------
LIVE_STATIC = REPO / "rain" / "live" / "static"


def test_live_extension_targets_our_node_and_routes(pack):
    from rain.live.routes import PREFIX
    script = (REPO / pack.WEB_DIRECTORY / "rain_live.js").read_text()
    node = re.search(r'const NODE_TYPE = "([^"]+)"', script).group(1)
    assert node == "RAIN_Live" and getattr(pack.NODE_CLASS_MAPPINGS[node], "OUTPUT_NODE", False)
    assert f'const BASE = "{PREFIX}/"' in script
    assert 'from "../../scripts/app.js"' in script and 'from "../../scripts/api.js"' in script
    assert "serialize: false" in script and "widget.serialize = false" in script
    from rain.pose.landmark_transform import SLIDER_RANGES
    for name in SLIDER_RANGES:                      # every calibration widget reaches the session
        assert f'"{name}"' in script


def test_live_pages_load_only_served_files():
    from rain.live.server import PAGES, STATIC_FILES
    for page in PAGES.values():
        html = (LIVE_STATIC / page).read_text()
        for name in re.findall(r'src="static/([^"]+)"', html):
            assert name in STATIC_FILES, (page, name)
    for name in STATIC_FILES:
        for imported in re.findall(r'from "\./([^"]+)"', (LIVE_STATIC / name).read_text()):
            assert imported in STATIC_FILES, (name, imported)
    assert {p.name for p in LIVE_STATIC.iterdir()} == set(STATIC_FILES) | set(PAGES.values())


@pytest.mark.parametrize("path", [REPO / "web" / "rain_live.js", *sorted(LIVE_STATIC.glob("*.js"))],
                         ids=lambda p: p.name)
def test_live_scripts_parse(path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    result = subprocess.run([node, "--check", "--input-type=module"], input=path.read_text(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_live_protocol_is_the_same_in_python_and_javascript():
    """The page's header code (run in node) and the server's (Python) read each other's messages."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    from rain.live.protocol import FrameLimits, encode_image, output_message, parse_frame
    image = encode_image(np.full((24, 32, 3), 90, np.uint8), "png")
    reply = output_message(2 ** 31 + 3, 1234.5, 17.25, image)
    code = f"""
import {{ frameMessage, parseOutput }} from {(LIVE_STATIC / "live_panel.js").as_uri()!r};
const image = Buffer.from({image.hex()!r}, "hex");
const message = Buffer.from(frameMessage(4000000001, 98765.25, image.buffer.slice(image.byteOffset,
  image.byteOffset + image.byteLength)));
const reply = Buffer.from({reply.hex()!r}, "hex");
const parsed = parseOutput(reply.buffer.slice(reply.byteOffset, reply.byteOffset + reply.byteLength));
console.log(JSON.stringify({{ message: message.toString("hex"), sequence: parsed.sequence,
  captureMs: parsed.captureMs, serverMs: parsed.serverMs, image: Buffer.from(parsed.image).toString("hex") }}));
"""
    result = subprocess.run([node, "--input-type=module", "-e", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    frame = parse_frame(bytes.fromhex(report["message"]), FrameLimits())
    assert (frame.sequence, frame.capture_ms) == (4000000001, 98765.25) and frame.image.data == image
    assert (report["sequence"], report["captureMs"], report["serverMs"]) == (2 ** 31 + 3, 1234.5, 17.25)
    assert bytes.fromhex(report["image"]) == image


def test_render_video_preview_plays_what_the_node_reports(pack):
    script = (REPO / pack.WEB_DIRECTORY / "rain_render_video.js").read_text(encoding="utf-8")
    node = re.search(r'const NODE_TYPE = "([^"]+)"', script).group(1)
    key = re.search(r'const PREVIEW_KEY = "([^"]+)"', script).group(1)
    assert node in pack.NODE_CLASS_MAPPINGS
    source = (REPO / "nodes" / "render_nodes.py").read_text(encoding="utf-8")
    assert f'"{key}": [{{"filename"' in source            # the key the node's ui carries
    assert "/view?" in script and 'createElement("video")' in script
    node_binary = shutil.which("node")
    if node_binary is None:
        pytest.skip("node is not installed: the script's syntax is not checked")
    done = subprocess.run([node_binary, "--check", "--input-type=module"], input=script, text=True,
                          capture_output=True)
    assert done.returncode == 0, done.stderr
