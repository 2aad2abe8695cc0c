"""ComfyUI's input and output folders: dropdowns of input videos, numbered outputs, VIDEO values."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from .host_lookup import comfy_module as _module

#: Where the input / output folders are when there is no ComfyUI (tests, scripts).
INPUT_DIR_ENV, OUTPUT_DIR_ENV = "RAIN_INPUT_DIR", "RAIN_OUTPUT_DIR"
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif", ".mpg", ".mpeg", ".wmv"})
_fallback_folders: dict[str, Path] = {}


def set_fallback_folders(input_dir=None, output_dir=None) -> None:
    """The input/output folders to use when ComfyUI is absent (None: back to the environment or ./input, ./output)."""
    for kind, value in (("input", input_dir), ("output", output_dir)):
        if value is None:
            _fallback_folders.pop(kind, None)
        else:
            _fallback_folders[kind] = Path(value)


def _folder(kind: str) -> Path:
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        return Path(getattr(folder_paths, f"get_{kind}_directory")())
    if kind in _fallback_folders:
        return _fallback_folders[kind]
    env = os.environ.get(INPUT_DIR_ENV if kind == "input" else OUTPUT_DIR_ENV)
    return Path(env) if env else Path.cwd() / kind


def input_directory() -> Path:
    return _folder("input")


def output_directory() -> Path:
    return _folder("output")


def input_videos() -> list[str]:
    """Video files in ComfyUI's input folder, for a dropdown with upload (as core Load Video lists them)."""
    folder = input_directory()
    if not folder.is_dir():
        return []
    files = [f.name for f in folder.iterdir() if f.is_file()]
    folder_paths = _module("folder_paths")
    if folder_paths is not None and hasattr(folder_paths, "filter_files_content_types"):
        return sorted(folder_paths.filter_files_content_types(files, ["video"]))
    return sorted(f for f in files if Path(f).suffix.lower() in VIDEO_SUFFIXES)


def input_file_path(name: str) -> Path:
    """The file a dropdown entry names (``name [input]`` / ``[output]`` annotations as ComfyUI writes them);
    a name leaving the folder is refused."""
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_annotated_filepath(name))
    relative = PurePosixPath(name.replace("\\", "/"))
    if leaves_folder(name):
        raise ValueError(f"{name!r} is not a file name inside the input folder {input_directory()}; pick the video "
                         f"from the list or upload it.")
    return input_directory() / relative


def leaves_folder(name: str) -> str | None:
    """Why ``name`` would not stay inside a folder, judged as on Windows and POSIX alike (a workflow made on
    one runs on the other): absolute, a drive letter (``C:``, ``C:x``), a UNC path (``\\\\server\\share``),
    a ``..`` component, a NUL character; or None."""
    windows = PureWindowsPath(name)
    posix = PurePosixPath(name.replace("\\", "/"))
    if "\0" in name:
        return "contains a NUL character"
    if name.startswith(("\\\\", "//")):
        return "is a UNC network path"
    if windows.drive:
        return f"names the drive {windows.drive}"
    if posix.is_absolute():
        return "is an absolute path"
    if ".." in posix.parts:
        return "contains a '..' component"
    return None


#: Characters Windows refuses in a file name, and its reserved device names.
_NOT_IN_NAMES = set('<>:"/\\|?*') | {chr(c) for c in range(32)}
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def safe_file_name(text: str) -> str:
    """``text`` as one file name every OS accepts: a node id inside a subgraph (``12:5``) has a ':', which
    Windows refuses."""
    name = "".join("_" if c in _NOT_IN_NAMES else c for c in str(text)).rstrip(" .") or "_"
    return f"_{name}" if name.split(".")[0].upper() in _RESERVED else name


def numbered_output(prefix: str, suffix: str) -> tuple[Path, str, str]:
    """(path, subfolder, file name) of a new output ``<prefix>_00001_<suffix>`` in the output folder, numbered
    after the files already there (as core Save Video / Save Image number theirs). A prefix leaving the output
    folder is refused before ComfyUI sees it (its own check follows the OS it runs on: ``C:x`` passes on Linux)."""
    import re

    output = output_directory()
    problem = leaves_folder(prefix)
    if problem:
        raise ValueError(f"filename_prefix {prefix!r} {problem}: it would save outside the output folder {output}. "
                         f"Use a name, or subfolder/name, inside it.")
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, str(output))
        name = f"{filename}_{counter:05}_{suffix}"
        return Path(folder) / name, subfolder, name
    relative = PurePosixPath(prefix.replace("\\", "/"))
    folder = output / relative.parent
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(relative.name) + r"_(\d+)_")
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    name = f"{relative.name}_{max(numbers, default=0) + 1:05}_{suffix}"
    subfolder = "" if str(relative.parent) == "." else relative.parent.as_posix()
    return folder / name, subfolder, name


class VideoFile:
    """What a VIDEO output is without ComfyUI: a file, with the calls core's video nodes make most."""

    def __init__(self, path):
        self.path = Path(path)

    def get_stream_source(self) -> str:
        return str(self.path)

    def save_to(self, path, **_) -> None:
        import shutil
        shutil.copyfile(self.path, path)

    def get_dimensions(self) -> tuple[int, int]:
        import av
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            return stream.codec_context.width, stream.codec_context.height


def video_from_file(path):
    """A core VIDEO value for a written file (``comfy_api``'s VideoFromFile), or :class:`VideoFile`."""
    for module_name, attribute in (("comfy_api.latest", "InputImpl"), ("comfy_api.input_impl", None)):
        module = _module(module_name)
        if module is None:
            continue
        holder = getattr(module, attribute) if attribute else module
        video_class = getattr(holder, "VideoFromFile", None)
        if video_class is not None:
            return video_class(str(path))
    return VideoFile(path)


def video_source_path(video, scratch_name: str) -> Path:
    """A file to read a VIDEO input from lazily: its own file when it has one, else (a video held in memory,
    e.g. from Create Video) it is saved once into the temp folder under ``scratch_name``."""
    source = video.get_stream_source() if hasattr(video, "get_stream_source") else getattr(video, "path", None)
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        return Path(source)
    folder_paths = _module("folder_paths")
    temp = Path(folder_paths.get_temp_directory()) if folder_paths is not None else output_directory() / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    path = temp / scratch_name
    video.save_to(str(path))
    return path
