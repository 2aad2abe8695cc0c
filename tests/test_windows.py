"""What ComfyUI's Windows portable build does differently, simulated on Linux: '\\' in model lists, drive letters
and UNC paths in names, ':' in node ids, files held open (mapped, or by a player), cmd.exe quoting, the embedded
Python, legacy console code pages, DirectShow cameras, reserved ports."""

import asyncio
import io
import json
import socket
import sys
import types
from pathlib import Path

import pytest
import torch

from test_nodes_model_paths import REPO
from test_nodes_model_paths import host  # noqa: F401  (fixture)


# -- names ------------------------------------------------------------------------------------------------------
@pytest.fixture
def windows_host(host, tmp_path, monkeypatch):  # noqa: F811
    """The pack under a stand-in ComfyUI whose folder_paths lists files as ComfyUI on Windows does."""
    root = tmp_path / "models" / "rain"
    for name in ("motion_unet.pth", "body/motion_unet.pth", "depth/motion_unet.pth"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.models_dir = str(tmp_path / "models")
    folder_paths.folder_names_and_paths = {"rain": ([str(root)], set())}
    folder_paths.get_folder_paths = lambda name: [str(root)]
    folder_paths.get_filename_list = lambda name: ["body\\motion_unet.pth", "depth\\motion_unet.pth",
                                                   "motion_unet.pth"]
    folder_paths.get_full_path = lambda name, relative: str(root / relative.replace("\\", "/"))
    folder_paths.get_output_directory = lambda: str(tmp_path / "output")
    folder_paths.get_save_image_path = lambda prefix, output: (output, prefix, 1, "", prefix)  # accepts anything
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    return host, root


def test_model_lists_use_forward_slashes_so_shared_workflows_validate(windows_host):
    host, root = windows_host
    listed = host.list_model_files()
    assert listed == ["body/motion_unet.pth", "depth/motion_unet.pth", "motion_unet.pth"]
    workflows = [json.loads(p.read_text(encoding="utf-8")) for p in (REPO / "workflows").glob("*.json")]
    stored = {value for workflow in workflows for node in workflow["nodes"] if node["type"] == "RAIN_LoadModel"
              for value in node.get("widgets_values", [])[:1]}
    assert stored and stored <= set(listed)          # every shipped Load RAIN Model value is in the list
    assert host.model_file_path("body/motion_unet.pth") == root / "body" / "motion_unet.pth"


def test_the_default_model_is_the_released_set_at_the_top_of_the_folder(windows_host):
    host, _ = windows_host
    rain_model = sys.modules[host.__name__.rsplit(".", 1)[0] + ".rain_model"]
    choices = rain_model.denoiser_choices(host.list_model_files())
    assert choices[0] == "motion_unet.pth" and set(choices[1:]) == {"body/motion_unet.pth", "depth/motion_unet.pth"}


@pytest.mark.parametrize("name", ["C:\\models\\x.pth", "C:x.pth", "\\\\server\\share\\x.pth", "//server/share/x"])
def test_drive_and_unc_model_names_are_refused_even_when_comfyui_would_take_them(windows_host, name):
    host, _ = windows_host
    with pytest.raises(host.ModelNameError):
        host.model_file_path(name)


@pytest.mark.parametrize("prefix, problem", [("C:\\out\\video", "drive"), ("C:video", "drive"),
                                             ("\\\\server\\share\\video", "UNC"), ("../video", "'..'"),
                                             ("/tmp/video", "absolute")])
def test_filename_prefix_leaving_the_output_folder_is_refused_with_and_without_comfyui(host, windows_host, prefix,  # noqa: F811
                                                                                    problem, tmp_path, monkeypatch):
    hosted, _ = windows_host
    with pytest.raises(ValueError, match=problem):
        hosted.numbered_output(prefix, ".mp4")           # the stand-in ComfyUI would have accepted it
    monkeypatch.delitem(sys.modules, "folder_paths")
    hosted.set_fallback_folders(output_dir=tmp_path / "out")
    try:
        with pytest.raises(ValueError, match=problem):
            hosted.numbered_output(prefix, ".mp4")
    finally:
        hosted.set_fallback_folders()


def test_names_built_from_node_ids_are_valid_windows_file_names(host):  # noqa: F811
    assert host.safe_file_name("rain_render_12:5.mp4") == "rain_render_12_5.mp4"   # a node inside a subgraph
    assert host.safe_file_name('a<b>c"d|e?f*g.mp4') == "a_b_c_d_e_f_g.mp4"
    assert host.safe_file_name("CON.mp4") == "_CON.mp4" and host.safe_file_name("name. ") == "name"


def test_depth_model_names_stay_inside_the_models_folder(tmp_path):
    from rain.depth import DepthModelNotFound, find_depth_model
    for name in ("..\\elsewhere", "../elsewhere", "C:\\models\\depth", "\\\\server\\depth", str(tmp_path)):
        with pytest.raises(DepthModelNotFound, match="inside the models folder"):
            find_depth_model(tmp_path / "models", name)


# -- files held open ------------------------------------------------------------------------------------------------
def _mapped(path: Path) -> bool:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc/self/maps on this system: mappings cannot be listed")
    return str(path.resolve()) in maps.read_text()


def test_a_loaded_resume_state_holds_no_mapping_of_its_file(tmp_path):
    """Windows cannot delete a file that is memory-mapped; the next save deletes the state it resumed from."""
    from rain.io.resume import ResumeStore
    store = ResumeStore(tmp_path / "out.mp4")
    store.save({"window": torch.arange(1000.0)}, {"frames_written": 4})
    tensors, record = store.load()
    path = store.folder / record["tensors"]
    assert not _mapped(path)
    assert torch.equal(tensors["window"], torch.arange(1000.0))


def test_loaded_weights_hold_no_mapping_of_their_file(tmp_path):
    import safetensors.torch

    from rain.weights import load_state_dict
    path = tmp_path / "pose_guider.safetensors"
    safetensors.torch.save_file({"w": torch.ones(4096)}, str(path))
    state = load_state_dict(path)
    assert not _mapped(path) and float(state["w"].sum()) == 4096.0


def test_an_output_open_in_a_player_is_reported_and_nothing_is_lost(tmp_path, monkeypatch):
    from rain.io import atomic
    final = tmp_path / "out.mp4"
    final.write_bytes(b"earlier render")
    monkeypatch.setattr(atomic, "REPLACE_PAUSE", 0.0)
    real_replace = atomic.os.replace
    refusals = []

    def locked(source, target):
        if Path(target) == final and len(refusals) < 12:
            refusals.append(target)
            raise PermissionError(32, "The process cannot access the file because it is being used by another "
                                      "process", str(target))
        return real_replace(source, target)
    monkeypatch.setattr(atomic.os, "replace", locked)
    with pytest.raises(atomic.OutputInUse) as error:
        with atomic.AtomicOutput(final) as target:
            target.path.write_bytes(b"new render")
    message = str(error.value)
    assert "Close the file in the player and run again; nothing was lost" in message
    assert final.read_bytes() == b"earlier render" and target.kept_partial.read_bytes() == b"new render"
    assert len(refusals) == atomic.REPLACE_TRIES
    # An antivirus holding a new file for a moment: the retries get through.
    refusals.clear()
    monkeypatch.setattr(atomic, "REPLACE_TRIES", 20)
    with atomic.AtomicOutput(final) as target:
        target.path.write_bytes(b"newer render")
    assert final.read_bytes() == b"newer render"


# -- commands, consoles, devices ---------------------------------------------------------------------------------------
def test_suggested_commands_are_quoted_for_cmd_and_powershell():
    from rain.shell import command, quote
    assert quote("C:\\Users\\Jo Doe\\models", windows=True) == '"C:\\Users\\Jo Doe\\models"'
    assert quote("C:\\models", windows=True) == "C:\\models"
    assert quote("/home/jo doe/models", windows=False) == "'/home/jo doe/models'"
    assert command("python", "-m", "rain", "download", "--models-dir", "a b", windows=True) == \
        'python -m rain download --models-dir "a b"'


def test_the_embedded_python_runs_the_pack_through_its_launcher(tmp_path):
    from rain.shell import LAUNCHER, pip_command, rain_command
    portable = tmp_path / "ComfyUI_windows_portable" / "python_embeded"
    portable.mkdir(parents=True)
    (portable / "python311._pth").write_text("python311.zip\n.\n", encoding="utf-8")
    python = str(portable / "python.exe")
    assert rain_command("download", executable=python, windows=False) == \
        f"{python} {LAUNCHER} download"
    assert pip_command("install", "onnx", executable=python) == f"{python} -m pip install onnx"
    assert rain_command("download", executable=sys.executable) == "python -m rain download"
    assert LAUNCHER.is_file()


def test_the_launcher_runs_the_cli_without_the_current_folder_on_the_path(tmp_path):
    import subprocess
    done = subprocess.run([sys.executable, "-I", str(REPO / "rain_cli.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "make-tiny-models" in done.stdout


def test_printing_to_a_legacy_code_page_never_crashes(monkeypatch):
    from rain.shell import tolerant_console
    raw = io.BytesIO()
    console = io.TextIOWrapper(raw, encoding="cp1252")
    monkeypatch.setattr(sys, "stdout", console)
    tolerant_console()
    print("motion_unet.pth → motion_unet.safetensors")
    console.flush()
    assert raw.getvalue() == "motion_unet.pth ? motion_unet.safetensors\n".replace("\n", "\r\n" if sys.platform
                                                                                  == "win32" else "\n").encode()


def test_training_configs_are_read_as_utf8_whatever_the_locale(tmp_path):
    from rain.training.config import load_config
    shipped = (REPO / "rain" / "training" / "configs" / "depth_stage1.toml").read_text(encoding="utf-8")
    path = tmp_path / "stage1.toml"
    text = shipped.replace('dataset = "data/depth"', 'dataset = "données/dépth"  # réglages → étape 1')
    path.write_bytes(text.encode("utf-8"))
    assert load_config(path).dataset == "données/dépth"


def test_cameras_use_directshow_on_windows():
    cv2 = pytest.importorskip("cv2")
    from rain.live.devices import capture_backend
    assert capture_backend(0, platform="win32") == (cv2.CAP_DSHOW,)
    assert capture_backend("take.mp4", platform="win32") == ()
    assert capture_backend(0, platform="linux") == ()


def test_a_taken_port_says_so_and_suggests_port_0():
    from aiohttp import web

    from rain.live.standalone import PortUnavailable, serve
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        async def main():
            await serve(web.Application(), "127.0.0.1", port, lambda p: None, asyncio.Event())
        with pytest.raises(PortUnavailable, match="--port 0"):
            asyncio.run(main())
