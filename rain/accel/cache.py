"""Where built graphs and engines are kept, and what they are keyed by.

An artefact (an exported ONNX graph, a TensorRT engine) is valid only for exactly what it was built from: the
graph's code version, the input/output shapes and dtypes (frame size, window, reference tokens), the temporal
strength baked into it, the weights, and for an engine the TensorRT version, the GPU model and its compute
capability. All of that goes into a manifest; the file name carries a hash of the manifest, so a change to any
part looks up another file (and builds it), and the manifest next to each file says in words what it is for.
Files are written under a temporary name and renamed, so an interrupted build never leaves a file that looks
finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

#: Bump when ``FusedStreamStep`` computes something else or takes other inputs: old artefacts stop matching.
GRAPH_VERSION = 1


def weights_fingerprint(modules: dict[str, torch.nn.Module | None]) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes) of the modules in the graph."""
    digest = hashlib.sha256()
    for prefix, module in sorted(modules.items()):
        if module is None:
            digest.update(f"{prefix}:none;".encode())
            continue
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            tensor = tensor.detach()
            digest.update(f"{prefix}.{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
            digest.update(tensor.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def _spec_entries(specs) -> dict[str, list]:
    return {name: [list(spec.shape), str(spec.dtype).replace("torch.", "")] for name, spec in specs.items()}


def graph_parts(input_specs, output_specs, *, weights: str, temporal_strength: float, opset: int) -> dict:
    """What an exported graph depends on (any device can run it)."""
    return {"graph_version": GRAPH_VERSION, "opset": opset, "torch": torch.__version__.split("+")[0],
            "inputs": _spec_entries(input_specs), "outputs": _spec_entries(output_specs),
            "temporal_strength": float(temporal_strength), "weights": weights}


def engine_parts(graph: dict, *, tensorrt_version: str, gpu: str, compute_capability: tuple[int, int],
                 precision: str) -> dict:
    """What a TensorRT engine depends on: its graph, plus the builder and the GPU it was tuned for."""
    return {**graph, "tensorrt": tensorrt_version, "gpu": gpu,
            "compute_capability": f"{compute_capability[0]}.{compute_capability[1]}", "precision": precision}


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


class ArtefactCache:
    """A folder of ``<stem>-<key><suffix>`` files, each with ``<stem>-<key>.json`` describing it."""

    def __init__(self, root: str | Path, stem: str = "rain_step"):
        self.root = Path(root)
        self.stem = stem

    def path(self, parts: dict, suffix: str) -> Path:
        return self.root / f"{self.stem}-{cache_key(parts)}{suffix}"

    def manifest_path(self, parts: dict) -> Path:
        return self.root / f"{self.stem}-{cache_key(parts)}.json"

    def find(self, parts: dict, suffix: str) -> Path | None:
        """The artefact built for exactly these parts, or None (absent, or its manifest disagrees)."""
        path, manifest = self.path(parts, suffix), self.manifest_path(parts)
        if not path.exists() or not manifest.is_file():
            return None
        try:
            recorded = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return path if recorded.get("parts") == json.loads(json.dumps(parts)) else None

    def store(self, parts: dict, suffix: str, data: bytes, **extra) -> Path:
        """Write the artefact, then its manifest (a manifest therefore always describes a complete file)."""
        path = self.path(parts, suffix)
        write_atomically(path, data)
        self.describe(parts, path, **extra)
        return path

    def describe(self, parts: dict, path: Path, **extra) -> None:
        manifest = {"file": path.name, "parts": parts, **extra}
        write_atomically(self.manifest_path(parts), json.dumps(manifest, indent=1, sort_keys=True).encode())

    def forget(self, parts: dict, suffix: str) -> None:
        for path in (self.path(parts, suffix), self.manifest_path(parts)):
            if path.is_file():
                path.unlink()
