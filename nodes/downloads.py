"""The released files, fetched from inside ComfyUI on first use: Load RAIN Model downloads what is missing of
the face set (reference UNet, denoiser, pose guider), TAESDV, the SD VAE, the CLIP image encoder and the DWPose
detectors into ``ComfyUI/models/rain`` with progress on the node (bytes and speed), resumable (an interrupted or
cancelled download continues where it stopped), checked against the published sizes and hashes, and usable at
once (no restart). Offline or behind a blocking proxy: one message naming the files, the folder, and the
command to run on a machine with a network."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import host

log = logging.getLogger("ComfyUI-RAIN")

#: What a set at the top of models/rain needs (the released face set); a subfolder set (body/, depth/) is a
#: user's own training and only takes the shared files from the top.
TOP_LEVEL_GROUPS = ("rain", "taesdv", "vae", "image_encoder", "dwpose")
SHARED_GROUPS = ("taesdv", "vae", "image_encoder", "dwpose")


def download_folder() -> Path:
    """``<ComfyUI>/models/rain`` (where the README says files go), or the first models folder without ComfyUI."""
    comfy_models = host.comfy_models_dir()
    if comfy_models is not None:
        return comfy_models / host.MODEL_FOLDER
    return host.model_roots()[0]


def missing_entries(choice: str) -> list:
    """Catalogue entries of the released files this choice needs and no models/rain folder holds."""
    from ..rain.weights import MODEL_FILES, find_weight

    groups = TOP_LEVEL_GROUPS if "/" not in choice.replace("\\", "/") else SHARED_GROUPS
    roots = [*host.model_roots(), download_folder()]
    missing = []
    for entry in MODEL_FILES.values():
        if entry.group in groups and not any(find_weight(root, entry.name) for root in roots if root.is_dir()):
            missing.append(entry)
    return missing


class NodeProgress:
    """Download progress on the node: the bar follows the current file's bytes, the text under it gives the
    file, bytes done and in all, speed and the file's place in the list. Each update is also ComfyUI's Cancel
    check (the partial file stays and resumes on the next run)."""

    def __init__(self, node_id, files: int):
        self.node_id, self.files = node_id, files
        self.bar = host.progress_bar(100, node_id=node_id)
        self.current, self.index, self.started, self.first = None, 0, 0.0, 0
        self.last_text = 0.0

    def __call__(self, name: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if name != self.current:
            self.current, self.started, self.first = name, now, done
            self.index += 1
        if total:
            self.bar.update_absolute(min(done, total), total)
        else:
            host.check_interrupted()
        if now - self.last_text >= 0.5 or (total and done >= total):
            self.last_text = now
            seconds = now - self.started
            speed = (done - self.first) / seconds if seconds > 0 else 0.0
            size = f"{_bytes(done)} of {_bytes(total)}" if total else _bytes(done)
            host.progress_text(f"downloading {name} ({self.index} of {self.files}): {size} at {_bytes(speed)}/s",
                               self.node_id)


def _bytes(value: float | None) -> str:
    if value is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000.0
    return f"{value:.1f} GB"


def fetch_missing(choice: str, node_id=None) -> list[str]:
    """Download what ``choice`` needs and is missing; the names fetched. Raises one clear error when offline."""
    from ..rain.weights import DownloadError, download
    from ..rain.shell import rain_command

    entries = missing_entries(choice)
    if not entries:
        return []
    folder = download_folder()
    files = [remote.dest for entry in entries for remote in entry.downloads]
    log.info("RAIN: downloading %s into %s", ", ".join(files), folder)
    progress = NodeProgress(node_id, len(files))
    try:
        download(folder, [entry.name for entry in entries], progress=False, report=progress)
    except DownloadError as error:
        reason = str(error).splitlines()[0]
        raise DownloadError(
            f"RAIN could not download {', '.join(files)} into {folder}: {reason}\nOn a machine with a network, "
            f"run {rain_command('download', '--models-dir', 'models')} in the ComfyUI-RAIN folder (or download "
            f"the files the README lists), then copy them into {folder}. Partial downloads resume on the next "
            f"run.") from error
    host.progress_text(f"downloaded {len(files)} files into {folder}", node_id)
    return [entry.name for entry in entries]
