"""The errors of the weights package and the commands its messages suggest."""

from __future__ import annotations

import os
from pathlib import Path

from ..shell import rain_command


class WeightsError(RuntimeError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """One or more model files are not where they should be."""


class DownloadError(WeightsError):
    """A download failed or produced a file of the wrong size or content."""


def download_command(models_dir: str | os.PathLike[str]) -> str:
    """The shell command that fetches every missing model file into ``models_dir``."""
    return rain_command("download", "--models-dir", str(models_dir))


def convert_command(path: str | os.PathLike[str]) -> str:
    """The shell command that converts a pickle checkpoint to safetensors."""
    return rain_command("convert", str(path))


def redownload_hint(source: str | os.PathLike[str]) -> str:
    """The closing line of a message about a checkpoint that does not fit."""
    path = Path(source)
    folder = path.parent if path.suffix else path
    return f"If the file is damaged or the wrong one, download it again with: {download_command(folder)}"


# How many offending keys an error message lists per kind; the rest are counted.
MAX_KEYS_SHOWN = 10


def preview_keys(keys: list[str], limit: int = MAX_KEYS_SHOWN) -> str:
    """The first ``limit`` keys, comma-separated, and how many more there are."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
