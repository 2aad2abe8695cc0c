"""Without ComfyUI, model names from workflows stay inside the models folders (host.py's own fallbacks).

Files are planted next to and outside the folder; a name must never reach them."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACK = "ComfyUI-RAIN-paths-test"
HOST_MODULES = ("folder_paths", "comfy", "comfy.model_management", "comfy.model_patcher", "comfy.utils", "server")


@pytest.fixture
def host(monkeypatch):
    for name in HOST_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = pack
    try:
        spec.loader.exec_module(pack)
        module = sys.modules[f"{PACK}.nodes.host"]
        assert not module.in_comfyui()
        yield module
        module.set_fallback_models_dirs(None)
    finally:
        for key in [k for k in sys.modules if k.startswith(PACK)]:
            del sys.modules[key]


@pytest.fixture
def layout(tmp_path, host):
    """models/rain with a model set, a subfolder and files planted outside it."""
    root = tmp_path / "models" / "rain"
    (root / "depth").mkdir(parents=True)
    (root / "motion_unet.pth").write_bytes(b"inside")
    (root / "depth" / "motion_unet.pth").write_bytes(b"depth")
    (tmp_path / "models" / "motion_unet.pth").write_bytes(b"planted")   # models/rain/../motion_unet.pth
    (tmp_path / "secret.pth").write_bytes(b"planted")
    host.set_fallback_models_dirs([root])
    return root


def test_names_inside_the_folder_resolve(host, layout):
    assert host.model_file_path("motion_unet.pth") == layout / "motion_unet.pth"
    assert host.model_file_path("depth/motion_unet.pth") == layout / "depth" / "motion_unet.pth"
    assert host.model_file_path("depth/./motion_unet.pth") == layout / "depth" / "motion_unet.pth"
    assert host.model_file_path("absent.pth") is None


@pytest.mark.parametrize("name, problem", [
    ("../motion_unet.pth", "'..' component"),
    ("depth/../../motion_unet.pth", "'..' component"),
    ("..\\motion_unet.pth", "'..' component"),
    ("motion_unet.pth\0.png", "NUL character"),
    ("", "is empty"),
])
def test_escaping_names_are_refused(host, layout, name, problem):
    with pytest.raises(host.ModelNameError) as error:
        host.model_file_path(name)
    message = str(error.value)
    assert repr(name) in message and problem in message and str(layout) in message


def test_absolute_paths_are_refused(host, layout, tmp_path):
    for name in (str(tmp_path / "secret.pth"), str(layout / "motion_unet.pth"), "C:\\models\\motion_unet.pth"):
        with pytest.raises(host.ModelNameError, match="is an absolute path"):
            host.model_file_path(name)


def test_links_leaving_the_folder_are_refused_and_not_listed(host, layout, tmp_path):
    os.symlink(tmp_path / "secret.pth", layout / "linked.pth")
    os.symlink(tmp_path, layout / "outside")
    os.symlink(layout / "depth" / "motion_unet.pth", layout / "alias.pth")  # stays inside: fine
    with pytest.raises(host.ModelNameError) as error:
        host.model_file_path("linked.pth")
    message = str(error.value)
    assert str(layout / "linked.pth") in message and str(tmp_path / "secret.pth") in message
    assert "outside the models folder" in message and "RAIN_MODELS_DIR" in message
    with pytest.raises(host.ModelNameError, match="outside the models folder"):
        host.model_file_path("outside/secret.pth")
    assert host.model_file_path("alias.pth") == layout / "alias.pth"
    listed = host.list_model_files()
    assert "alias.pth" in listed and "linked.pth" not in listed
    assert not any(name.startswith("outside/") for name in listed)


def test_the_loader_refuses_a_planted_file_before_reading_anything(host, layout):
    rain_model = sys.modules[f"{PACK}.nodes.rain_model"]
    with pytest.raises(host.ModelNameError, match=r"'\.\./motion_unet\.pth' contains a '\.\.' component"):
        rain_model.load_model_set("../motion_unet.pth")
    assert rain_model.fingerprint("../motion_unet.pth").startswith("unresolved:")
