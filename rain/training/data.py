"""The prepared-clip dataset: what ``prepare-data`` writes and every training stage reads.

A dataset is a folder::

    manifest.json            format, task, frame size, clip length, fps, shard list, counts, sources
    shards/00000.safetensors clip_00000.frames     uint8 [T, H, W, 3]  RGB video frames
                             clip_00000.condition  uint8 [T, H, W, 3]  the task's condition image per frame,
                                                                         rendered exactly as inference renders it
                             (safetensors metadata "clips": JSON list of per-clip records: source, first frame)

Shards are safetensors so a clip (or a slice of its frames) is read lazily from disk without unpickling, and a
shard is written under a temporary name and renamed when complete, so an interrupted preparation resumes by
skipping the sources whose shards exist. The manifest is rewritten (atomically) after every shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..messages import describe_error

FORMAT = "rain-clips"
VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"


class DatasetError(RuntimeError):
    """A dataset folder is missing, damaged or of another format; the message says which file and what to do."""


@dataclass
class Manifest:
    task: str                                   # "face", "body", "depth" (or "synthetic" for tests)
    size: tuple[int, int]                       # (H, W) of frames and conditions
    clip_length: int                            # frames per clip (T)
    fps: float | None = None
    shards: list[dict] = field(default_factory=list)    # {"file", "clips", "frames", "bytes"}
    sources: dict[str, dict] = field(default_factory=dict)  # source path -> {"status", "clips", "reason"}
    preparation: dict = field(default_factory=dict)         # the options that made it (prepare-data resumes only
                                                            # with the same ones)
    format: str = FORMAT
    version: int = VERSION

    @property
    def clips(self) -> int:
        return sum(shard["clips"] for shard in self.shards)

    @property
    def frames(self) -> int:
        return sum(shard["frames"] for shard in self.shards)

    @property
    def bytes(self) -> int:
        return sum(shard.get("bytes", 0) for shard in self.shards)

    def to_json(self) -> dict:
        return {"format": self.format, "version": self.version, "task": self.task, "size": list(self.size),
                "clip_length": self.clip_length, "fps": self.fps, "clips": self.clips, "frames": self.frames,
                "bytes": self.bytes, "shards": self.shards, "sources": self.sources,
                "preparation": self.preparation}

    @classmethod
    def read(cls, root: str | os.PathLike) -> "Manifest":
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise DatasetError(f"{root} is not a prepared RAIN dataset (no {MANIFEST}); make one with "
                               f"`python -m rain prepare-data VIDEOS_DIR {root} --task face|body|depth`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path} is damaged ({describe_error(error)}); prepare the dataset again") from None
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise DatasetError(f"{path} is not a {FORMAT} v{VERSION} manifest (found {data.get('format')!r} "
                               f"v{data.get('version')}); prepare the dataset again with this version")
        return cls(task=data["task"], size=tuple(data["size"]), clip_length=int(data["clip_length"]),
                   fps=data.get("fps"), shards=list(data["shards"]), sources=dict(data.get("sources", {})),
                   preparation=dict(data.get("preparation", {})))

    def write(self, root: str | os.PathLike) -> None:
        path = Path(root) / MANIFEST
        partial = path.with_name(path.name + ".tmp")
        partial.write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")
        os.replace(partial, path)


class ShardWriter:
    """Collects clips and writes them as shards of ``clips_per_shard``; call ``flush`` at the end of a source.

    ``on_flush(records)`` is called with the written clips' records after a shard is in place and before the
    manifest is rewritten, so bookkeeping it adds to the manifest (e.g. per-source progress) lands atomically
    with the shard. Numbering continues after the manifest's shards, so a resumed preparation appends."""

    def __init__(self, root: str | os.PathLike, manifest: Manifest, clips_per_shard: int = 64,
                 on_flush: Callable[[list[dict]], None] | None = None):
        self.root = Path(root)
        self.manifest = manifest
        self.clips_per_shard = clips_per_shard
        self.on_flush = on_flush
        self._tensors: dict[str, torch.Tensor] = {}
        self._records: list[dict] = []
        (self.root / SHARDS).mkdir(parents=True, exist_ok=True)

    def add(self, frames: np.ndarray, condition: np.ndarray, **record) -> None:
        height, width = self.manifest.size
        expected = (self.manifest.clip_length, height, width, 3)
        for name, array in (("frames", frames), ("condition", condition)):
            if array.shape != expected or array.dtype != np.uint8:
                raise ValueError(f"clip {name} must be uint8 {list(expected)}, got {array.dtype} {list(array.shape)}")
        index = len(self._records)
        self._tensors[f"clip_{index:05d}.frames"] = torch.from_numpy(np.ascontiguousarray(frames))
        self._tensors[f"clip_{index:05d}.condition"] = torch.from_numpy(np.ascontiguousarray(condition))
        self._records.append(record)
        if len(self._records) >= self.clips_per_shard:
            self.flush()

    def flush(self) -> None:
        """Write the collected clips as one shard (atomically) and record it in the manifest."""
        if not self._records:
            return
        name = f"{SHARDS}/{len(self.manifest.shards):05d}.safetensors"
        path = self.root / name
        partial = path.with_name(path.name + ".tmp")
        save_file(self._tensors, str(partial), metadata={"clips": json.dumps(self._records)})
        os.replace(partial, path)
        self.manifest.shards.append({"file": name, "clips": len(self._records),
                                     "frames": len(self._records) * self.manifest.clip_length,
                                     "bytes": path.stat().st_size})
        if self.on_flush is not None:
            self.on_flush(self._records)
        self.manifest.write(self.root)
        self._tensors, self._records = {}, []


class ClipStore:
    """Read-only access to a prepared dataset: ``len(store)`` clips, ``store.read(i, start, count)``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest = Manifest.read(self.root)
        self._index: list[tuple[int, int]] = []   # clip -> (shard, clip within shard)
        for shard_number, shard in enumerate(self.manifest.shards):
            path = self.root / shard["file"]
            if not path.is_file():
                raise DatasetError(f"{path} is listed in {self.root / MANIFEST} but missing; prepare the "
                                   f"dataset again (preparation resumes where it stopped)")
            self._index.extend((shard_number, i) for i in range(shard["clips"]))
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self._index)

    @property
    def clip_length(self) -> int:
        return self.manifest.clip_length

    @property
    def size(self) -> tuple[int, int]:
        return self.manifest.size

    def _handle(self, shard_number: int):
        if shard_number not in self._handles:
            self._handles[shard_number] = safe_open(str(self.root / self.manifest.shards[shard_number]["file"]), "np")
        return self._handles[shard_number]

    def read(self, index: int, start: int = 0, count: int | None = None,
             frames: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(frames, condition) uint8 [n, H, W, 3] of clip ``index``: frames ``start:start+count``, or the listed
        frame indices. Only those frames are read from disk."""
        shard_number, local = self._index[index]
        handle = self._handle(shard_number)
        out = []
        for kind in ("frames", "condition"):
            sliced = handle.get_slice(f"clip_{local:05d}.{kind}")
            if frames is not None:
                out.append(np.stack([sliced[i:i + 1][0] for i in frames]))
            else:
                stop = self.clip_length if count is None else start + count
                out.append(sliced[start:stop])
        return out[0], out[1]

    def __getstate__(self):
        # Data-loader workers open their own file handles.
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def write_synthetic_dataset(root: str | os.PathLike, *, clips: int = 8, clip_length: int = 16,
                            size: tuple[int, int] = (64, 64), seed: int = 0, clips_per_shard: int = 4) -> Manifest:
    """Moving shapes with their condition images, for tests and for trying the training commands.

    Each clip shows one coloured disc gliding over a coloured background; its condition image marks the disc's
    centre and its four compass points with fixed-colour dots on black (a tiny stand-in for a pose image), so a
    model can only render the target frame well by reading both the reference (colours) and the condition (where).
    """
    generator = np.random.default_rng(seed)
    height, width = size
    manifest = Manifest(task="synthetic", size=(height, width), clip_length=clip_length, fps=16.0)
    writer = ShardWriter(root, manifest, clips_per_shard=clips_per_shard)
    ys, xs = np.mgrid[0:height, 0:width]
    dot_colours = np.array([[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
    for clip in range(clips):
        background = generator.integers(0, 256, 3)
        disc = generator.integers(0, 256, 3)
        radius = generator.uniform(0.12, 0.22) * min(height, width)
        start = generator.uniform(0.25, 0.75, 2) * (height, width)
        velocity = generator.uniform(-0.02, 0.02, 2) * (height, width)
        frames = np.empty((clip_length, height, width, 3), np.uint8)
        condition = np.zeros_like(frames)
        for t in range(clip_length):
            cy, cx = start + velocity * t
            inside = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2
            frames[t] = np.where(inside[..., None], disc, background)
            points = [(cy, cx), (cy - radius, cx), (cy, cx + radius), (cy + radius, cx), (cy, cx - radius)]
            dot = max(1.0, 0.04 * min(height, width))
            for colour, (py, px) in zip(dot_colours, points):
                condition[t][(ys - py) ** 2 + (xs - px) ** 2 <= dot ** 2] = colour
        writer.add(frames, condition, source=f"synthetic:{clip}", start_frame=0)
    writer.flush()
    manifest.sources["synthetic"] = {"status": "done", "clips": clips}
    manifest.write(root)
    return manifest
