"""Resume state of a long render: a folder next to the output, ``out.mp4`` → ``out.mp4.resume/``.

It holds ``state.json`` (settings the render belongs to, fingerprints of its input files, frames written, the
input position and the metadata of the saved objects) and the tensors of one checkpoint in
``state-<frames>.safetensors`` (stream window, pose features, decoder memory, noise generator, landmark tracking).

Saving is atomic in two steps: the tensors go to a new file named by its frame count, then ``state.json`` is
replaced to point at it, then older tensor files are removed. A crash at any moment leaves a ``state.json`` whose
tensor file exists. The folder is removed when the render completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .errors import VideoIOError
from ..messages import describe_error

FORMAT_VERSION = 2
STATE_NAME = "state.json"
FINGERPRINT_BYTES = 1 << 20  # hashed at each end of an input file


class ResumeRefused(ValueError):
    """The saved state belongs to other settings or inputs; the message says which and what to do."""


def resume_dir(output: str | os.PathLike) -> Path:
    """``render.mp4`` → ``render.mp4.resume`` (next to the output)."""
    output = Path(output)
    return output.with_name(output.name + ".resume")


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Size plus a hash of the first and last MiB (of every file, for a folder of images): enough to notice a
    replaced or re-encoded input without reading hours of video."""
    path = Path(path)
    if path.is_dir():
        digest = hashlib.sha256()
        files = sorted(p for p in path.iterdir() if p.is_file())
        for file in files:
            digest.update(f"{file.name}:{file.stat().st_size}\n".encode())
        return {"files": len(files), "sha256": digest.hexdigest()}
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            handle.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(handle.read(FINGERPRINT_BYTES))
    return {"bytes": size, "sha256": digest.hexdigest()}


def _jsonable(value):
    return json.loads(json.dumps(value))


def check_same(saved: dict, settings: dict, inputs: dict, output: Path) -> None:
    """Raise ``ResumeRefused`` naming the first setting or input file that differs from the saved render."""
    how = (f"Resume with the settings and inputs it was started with, or render without resume to start from the "
           f"beginning (the state saved in {resume_dir(output)} is kept until then).")
    before, now = saved.get("settings", {}), _jsonable(settings)
    for key in list(now) + [k for k in before if k not in now]:
        if before.get(key) != now.get(key):
            raise ResumeRefused(f"Cannot resume {output}: the setting '{key}' changed — it was "
                                f"{before.get(key)!r} when the render started, now {now.get(key)!r}. {how}")
    saved_inputs = saved.get("inputs", {})
    for label, path in inputs.items():
        old = saved_inputs.get(label)
        if old is None or old.get("path") != str(path):
            raise ResumeRefused(f"Cannot resume {output}: the {label} is now {path}, the render started with "
                                f"{None if old is None else old.get('path')}. {how}")
        if old.get("fingerprint") != file_fingerprint(path):
            raise ResumeRefused(f"Cannot resume {output}: the {label} {path} changed since the render started "
                                f"(its size or content differ). {how}")


class ResumeStore:
    """The resume folder of one output."""

    def __init__(self, output: str | os.PathLike):
        self.output = Path(output)
        self.folder = resume_dir(self.output)

    @property
    def exists(self) -> bool:
        return (self.folder / STATE_NAME).is_file()

    def save(self, tensors: dict, record: dict) -> Path:
        """Write one checkpoint: ``tensors`` (name → CPU tensor) and ``record`` (JSON-able, ``frames_written``
        required)."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"state-{int(record['frames_written']):09d}.safetensors"
        partial = self.folder / (name + ".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial))
        os.replace(partial, self.folder / name)
        record = {**record, "version": FORMAT_VERSION, "tensors": name, "updated": time.time()}
        partial_json = self.folder / (STATE_NAME + ".tmp")
        partial_json.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(partial_json, self.folder / STATE_NAME)
        for old in self.folder.glob("state-*.safetensors*"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return self.folder / STATE_NAME

    def record(self) -> dict | None:
        """The last checkpoint's ``state.json`` (no tensors), or None."""
        try:
            return json.loads((self.folder / STATE_NAME).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def load(self) -> tuple[dict, dict] | None:
        """(tensors, record) of the last checkpoint, or None when there is none."""
        from safetensors import SafetensorError, safe_open

        path = self.folder / STATE_NAME
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise VideoIOError(f"The resume state {path} is damaged ({describe_error(error)}); delete {self.folder} and render "
                               f"again without resume.") from error
        if record.get("version") != FORMAT_VERSION:
            raise VideoIOError(f"{path} was written by another version of RAIN (format {record.get('version')}); "
                               f"delete {self.folder} and render again without resume.")
        tensors_path = self.folder / str(record.get("tensors"))
        try:
            # Copied, the file closed: the next save deletes this file, which Windows refuses while it is mapped.
            with safe_open(str(tensors_path), framework="pt", device="cpu") as handle:
                tensors = {name: handle.get_tensor(name).clone() for name in handle.keys()}
        except (OSError, SafetensorError) as error:
            raise VideoIOError(f"The resume state {tensors_path} cannot be read ({describe_error(error)}); delete {self.folder} "
                               f"and render again without resume.") from error
        return tensors, record

    def clear(self) -> None:
        """Remove the state (the render completed, or starts again from the beginning)."""
        if self.folder.is_dir():
            shutil.rmtree(self.folder, ignore_errors=True)
