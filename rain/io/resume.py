"""Resume state of a long render: a small JSON file next to the output.

The render loop saves the state every few frames (``save_resume_state``) and deletes it
when the output is complete (``clear_resume_state``). ``--resume`` loads it
(``load_resume_state``), checks that the settings still match, and continues after the
frames that are really in the file — after a killed process that can be fewer than the
state says, so take ``min(state.frames_done, count_frames(output))``
(``rain.io.video.count_frames``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import VideoIOError

FORMAT_VERSION = 1


@dataclass
class ResumeState:
    """How far a render got, and what it was rendering."""

    output: str                      # the output path, as given
    frames_done: int                 # frames finished and handed to the writer
    total_frames: int | None = None  # expected length, when known
    settings: dict[str, Any] = field(default_factory=dict)  # whatever must match to resume
    updated: float = field(default_factory=time.time)
    version: int = FORMAT_VERSION

    def matches(self, settings: dict[str, Any]) -> bool:
        """Whether the saved settings equal ``settings`` (after a JSON round trip)."""
        return self.settings == json.loads(json.dumps(settings))


def resume_state_path(output: str | os.PathLike[str]) -> Path:
    """``render.mp4`` → ``render.mp4.resume.json`` (next to the output)."""
    output = Path(output)
    return output.with_name(output.name + ".resume.json")


def save_resume_state(state: ResumeState) -> Path:
    """Write the state atomically (temporary file + rename), so a crash never leaves half a file."""
    path = resume_state_path(state.output)
    state.updated = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(asdict(state), indent=1, sort_keys=True))
    os.replace(partial, path)
    return path


def load_resume_state(output: str | os.PathLike[str]) -> ResumeState | None:
    """The saved state for ``output``, or ``None`` if there is none."""
    path = resume_state_path(output)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("version") != FORMAT_VERSION:
            raise VideoIOError(f"{path} was written by another version (format {data.get('version')}); "
                               f"delete it to start the render again.")
        return ResumeState(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise VideoIOError(f"The resume file {path} is damaged ({exc}); delete it to start the render "
                           f"again.") from exc


def clear_resume_state(output: str | os.PathLike[str]) -> None:
    """Remove the state file once the render is complete."""
    resume_state_path(output).unlink(missing_ok=True)
