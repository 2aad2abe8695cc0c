"""Outputs that appear under their final name only when complete.

A render writes to a *partial* name next to the final one (``out.mp4`` → ``out.partial.mp4``, keeping the
suffix so the partial file plays; a PNG folder ``frames/`` → ``frames.partial/``) and is moved into place
only on success. A failed or interrupted render leaves the earlier output untouched and keeps what it
wrote under the partial name (crash-safe MP4/MKV/WebM play up to the last frame written); a later run of
the same output starts the partial name afresh (``--resume`` can continue it instead).

    with AtomicOutput("out.mp4") as target:
        with VideoWriter(target.path, fps) as writer:
            ...
    # out.mp4 replaced here, only if the block finished
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from .errors import VideoIOError

log = logging.getLogger(__name__)

PARTIAL_TAG = ".partial"


def is_png_pattern(path: Path) -> bool:
    return path.suffix.lower() == ".png" and "%" in path.name


def is_folder_output(path: Path) -> bool:
    """A folder of PNGs (a path without suffix, or an existing folder), as ``VideoWriter`` reads it."""
    return path.suffix == "" or path.is_dir()


def partial_path(final: str | os.PathLike) -> Path:
    """Where an output is written until it is complete: ``out.mp4`` → ``out.partial.mp4``, ``frames`` →
    ``frames.partial``, ``shots/f_%05d.png`` → ``shots/f_%05d.partial/f_%05d.png``."""
    final = Path(final)
    if is_png_pattern(final):
        return final.parent / (final.stem + PARTIAL_TAG) / final.name
    if is_folder_output(final):
        return final.with_name(final.name + PARTIAL_TAG)
    return final.with_name(final.stem + PARTIAL_TAG + final.suffix)


def check_writable_folder(folder: Path, purpose: str) -> None:
    """Create ``folder`` if needed and prove a file can be written there, or raise ``VideoIOError``."""
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise VideoIOError(f"Cannot create the folder {folder} for {purpose}: {blocking} is a file, not a folder; "
                           f"choose another output path.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VideoIOError(f"Cannot create the folder {folder} for {purpose} ({error.strerror or error}); "
                           f"choose another output path.") from None
    if not folder.is_dir():
        raise VideoIOError(f"{folder} is not a folder; choose another output path for {purpose}.")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".rain-write-check-"):
            pass
    except OSError as error:
        raise VideoIOError(f"Cannot write into {folder} ({error.strerror or error}); choose another output "
                           f"path for {purpose}, or make that folder writable.") from None


class AtomicOutput:
    """Context manager giving ``path`` (the partial name) to write to; on a clean exit the result replaces
    ``final``; on an exception ``final`` is untouched and a non-empty partial result is kept
    (``kept_partial``)."""

    def __init__(self, final: str | os.PathLike, keep_partial: bool = False):
        self.final = Path(final)
        self.keep_partial = keep_partial   # resume: continue the partial output instead of starting it afresh
        self.path = partial_path(self.final)
        self.kept_partial: Path | None = None
        self.committed = False

    # What the partial output is as a whole: the file, or the folder holding the PNGs.
    @property
    def _partial_root(self) -> Path:
        return self.path.parent if is_png_pattern(self.final) else self.path

    def __enter__(self) -> "AtomicOutput":
        root = self._partial_root
        if root.exists() and not self.keep_partial:
            log.info("replacing %s, left by an earlier run that did not finish", root)
            _remove(root)
        if is_folder_output(self.final) and not is_png_pattern(self.final):
            root.mkdir(parents=True, exist_ok=self.keep_partial)  # an existing folder is a PNG sequence to VideoWriter, whatever its name
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.commit()
            return
        root = self._partial_root
        if _is_empty(root):
            _remove(root)
        else:
            self.kept_partial = root

    def commit(self) -> None:
        root = self._partial_root
        if not root.exists():
            raise VideoIOError(f"Nothing was written for {self.final}.")
        try:
            if is_png_pattern(self.final):
                self._commit_pattern(root)
            elif root.is_dir():
                self._commit_folder(root)
            else:
                replace_patiently(root, self.final)
        except PermissionError as error:
            self.kept_partial = root
            raise OutputInUse(
                f"Cannot replace {self.final}: another program has it open (a video player, or an antivirus "
                f"scan) [{type(error).__name__}: {error}]. Close the file in the player and run again; nothing "
                f"was lost: the finished render is complete in {root}.") from error
        self.committed = True

    def _commit_folder(self, root: Path) -> None:
        if self.final.exists() and not self.final.is_dir():
            raise VideoIOError(f"{self.final} is a file; the PNG sequence stays in {root}.")
        previous = None
        if self.final.exists():
            previous = self.final.with_name(self.final.name + ".previous")
            _remove(previous)
            replace_patiently(self.final, previous)
        replace_patiently(root, self.final)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)

    def _commit_pattern(self, root: Path) -> None:
        # The earlier run's frames go first, so a shorter sequence never ends in stale frames.
        earlier = _pattern_regex(self.final.name)
        for old in self.final.parent.iterdir():
            if old.is_file() and earlier.fullmatch(old.name):
                old.unlink()
        for new in sorted(root.iterdir()):
            os.replace(new, self.final.parent / new.name)
        root.rmdir()


class OutputInUse(VideoIOError):
    """The final name cannot be replaced because another program holds the file open (Windows)."""


#: How long a final rename keeps trying while Windows refuses it: an antivirus scanning a new file holds it for
#: a moment; a player holding it open does not let go, and then the user is told.
REPLACE_TRIES, REPLACE_PAUSE = 10, 0.2


def replace_patiently(source: Path, target: Path) -> None:
    """``os.replace``, retried briefly on PermissionError (a file held open on Windows)."""
    for attempt in range(REPLACE_TRIES):
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if attempt == REPLACE_TRIES - 1:
                raise
            time.sleep(REPLACE_PAUSE)


def _pattern_regex(name: str) -> re.Pattern:
    parts = re.split(r"(%0?\d*d)", name)
    return re.compile("".join(r"\d+" if part.startswith("%") else re.escape(part) for part in parts))


def _is_empty(path: Path) -> bool:
    if not path.exists():
        return True
    if path.is_dir():
        return not any(p.is_file() and not p.name.endswith(".tmp") for p in path.iterdir())
    return path.stat().st_size == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
