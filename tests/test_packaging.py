"""pyproject.toml (Comfy Registry) and requirements.txt (ComfyUI-Manager) describe the same pack."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def test_dependencies_are_requirements_txt(pyproject):
    dependencies = pyproject["project"]["dependencies"]
    assert sorted(dependencies) == sorted(requirement_lines(REPO / "requirements.txt"))
    assert len(set(dependencies)) == len(dependencies)
    assert not any(re.match(r"torch\b", d) for d in dependencies)  # users keep the torch build they have


def test_registry_metadata(pyproject):
    project, comfy = pyproject["project"], pyproject["tool"]["comfy"]
    # The registry's node id: letters, digits, single - _ . between them, not starting with a digit.
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*", project["name"])
    assert len(project["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"] and project["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text(encoding="utf-8")
    assert set(project["license-files"]) == {"LICENSE", "NOTICE"}
    assert project["requires-python"].startswith(">=")
    assert all(url.startswith("https://") for url in project["urls"].values())
    assert comfy["PublisherId"] and comfy["DisplayName"]
    icon = comfy["Icon"]
    if not icon.startswith("https://"):
        assert (REPO / icon).is_file() and (REPO / icon).stat().st_size < 20_000


def test_gpu_only_parts_are_extras(pyproject):
    extras = pyproject["project"]["optional-dependencies"]
    assert set(extras["onnx"]) == {"onnx", "onnxscript"}
    assert set(extras["tensorrt"]) == {"tensorrt", "onnx", "onnxscript"}   # engines are built from the ONNX export
    assert extras["gpu"] == ["onnxruntime-gpu"]
    assert not set(extras["tensorrt"] + extras["gpu"]) & set(pyproject["project"]["dependencies"])


def test_no_dependency_replaces_a_users_build_of_a_shared_module(pyproject):
    """onnxruntime/onnxruntime-gpu and the OpenCV builds share one module each: a hard dependency on one build
    would overwrite a ComfyUI user's other build. install.py installs them only where none is there."""
    from rain.optional import PROVIDERS
    shared = {name for names in PROVIDERS.values() for name in names}
    names = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower() for d in pyproject["project"]["dependencies"]}
    assert not names & shared
    assert set(pyproject["project"]["optional-dependencies"]["standalone"]) == {"onnxruntime", "opencv-python-headless"}


def test_the_wheel_holds_only_the_rain_package(pyproject):
    find = pyproject["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["rain", "rain.*"]   # never nodes (ComfyUI's own top-level module), tests, bench
    data = pyproject["tool"]["setuptools"]["package-data"]["rain"]
    import fnmatch
    shipped = [p.relative_to(REPO / "rain").as_posix() for p in (REPO / "rain").rglob("*")
               if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert shipped and all(any(fnmatch.fnmatch(f, pattern) for pattern in data) for f in shipped), shipped


#: Binary files the project made itself (everything else tracked must be text the project wrote).
MADE_HERE = {
    "tests/fixtures/official_small.safetensors":
        "~100 KB of the official implementation's numbers, extracted by this project for a clone without the golden set",
}
ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".egg", ".jar", ".exe",
                    ".dll", ".so", ".dylib", ".pyd", ".onnx", ".pth", ".pt", ".bin", ".ckpt", ".engine")


def test_no_archive_or_binary_the_project_did_not_make_is_tracked():
    import shutil
    import subprocess
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    foreign = []
    for name in filter(None, tracked.decode("utf-8").split("\0")):
        path = REPO / name
        if name in MADE_HERE or not path.is_file():
            continue
        with open(path, "rb") as handle:
            binary = b"\0" in handle.read(8192)
        if binary or name.lower().endswith(ARCHIVE_SUFFIXES):
            foreign.append(name)
    assert not foreign, f"tracked archives/binaries the project did not make: {foreign}"


def test_runtime_defaults_only_where_no_build_is_installed(monkeypatch):
    import rain.optional as optional
    installed = {"onnxruntime-gpu"}
    monkeypatch.setattr(optional, "installed_distributions", lambda names: [n for n in names if n in installed])
    monkeypatch.setattr(optional.importlib.util, "find_spec", lambda name: None)
    assert optional.runtime_packages_to_install() == ["opencv-python-headless"]   # the GPU onnxruntime is kept
    installed |= {"opencv-python"}
    assert optional.runtime_packages_to_install() == []
    installed |= {"onnxruntime"}
    message = optional.provider_conflict_message("onnxruntime")
    assert "onnxruntime-gpu" in message and message.rstrip().endswith("install onnxruntime-gpu")
