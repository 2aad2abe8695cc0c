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
    assert project["description"] and project["license"] == {"text": "Apache-2.0"}
    assert project["requires-python"].startswith(">=")
    assert all(url.startswith("https://") for url in project["urls"].values())
    assert comfy["PublisherId"] and comfy["DisplayName"]
    icon = comfy["Icon"]
    if not icon.startswith("https://"):
        assert (REPO / icon).is_file() and (REPO / icon).stat().st_size < 20_000


def test_gpu_only_parts_are_extras(pyproject):
    extras = pyproject["project"]["optional-dependencies"]
    assert set(extras["tensorrt"]) == {"tensorrt", "onnx"}
    assert extras["gpu"] == ["onnxruntime-gpu"]
    assert not set(extras["tensorrt"] + extras["gpu"]) & set(pyproject["project"]["dependencies"])
