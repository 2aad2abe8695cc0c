"""The one module of the pack that touches ComfyUI.

Everything the nodes need from the host goes through here: the ``models/rain`` folder (``folder_paths``),
devices, dtypes and the memory manager (``comfy.model_management`` / ``ModelPatcher``), progress bars with
previews (``comfy.utils.ProgressBar``), interruption, and HTTP routes (``server.PromptServer``).

Each function has a fallback used when ComfyUI is not importable (unit tests, the standalone engine), so the
pack always imports and its nodes run without a host. Host modules are looked up at call time, never cached at
import, so a test can swap in a stand-in host.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Iterable

import torch

log = logging.getLogger("ComfyUI-RAIN")

#: The models folder name: ``<ComfyUI>/models/rain`` plus any ``rain:`` paths from extra_model_paths.yaml.
MODEL_FOLDER = "rain"
#: What the folder lists in dropdowns (``.json`` configs belong to model folders and are found by path).
MODEL_EXTENSIONS = frozenset({".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".sft", ".onnx"})
#: Where models are looked for when there is no ComfyUI (os.pathsep-separated list of folders).
MODELS_DIR_ENV = "RAIN_MODELS_DIR"

_fallback_roots: list[Path] | None = None


def _module(name: str):
    """The host module ``name`` if ComfyUI provides it, else None (never raises)."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    if name != "folder_paths" and _module("folder_paths") is None:
        return None  # outside ComfyUI: do not import unrelated packages that happen to be called "comfy"/"server"
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or a host module failing at import outside its app
        return None


def in_comfyui() -> bool:
    return _module("folder_paths") is not None and _module("comfy.model_management") is not None


# -- models folder -------------------------------------------------------------------------------------------
def register_model_folder() -> None:
    """Add ``<models_dir>/rain`` to ComfyUI's folder registry, merging with any existing ``rain`` entry (from a
    user's extra_model_paths.yaml or another pack): never replace its paths, only add ours and our extensions."""
    folder_paths = _module("folder_paths")
    if folder_paths is None:
        return
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    registry = folder_paths.folder_names_and_paths
    entry = registry.get(MODEL_FOLDER)
    if entry is None:
        registry[MODEL_FOLDER] = ([default], set(MODEL_EXTENSIONS))
        return
    paths, extensions = entry
    if default not in paths:
        paths.append(default)
    if isinstance(extensions, set):
        extensions.update(MODEL_EXTENSIONS)
    else:
        registry[MODEL_FOLDER] = (paths, set(extensions) | MODEL_EXTENSIONS)


def set_fallback_models_dirs(dirs: Iterable[str | os.PathLike] | None) -> None:
    """Where to look for models when ComfyUI is absent (tests, scripts); None = back to the default."""
    global _fallback_roots
    _fallback_roots = None if dirs is None else [Path(d) for d in dirs]


def model_roots() -> list[Path]:
    """The folders that make up ``models/rain``, in ComfyUI's order."""
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(MODEL_FOLDER)]
        except KeyError:
            return [Path(folder_paths.models_dir) / MODEL_FOLDER]
    if _fallback_roots is not None:
        return list(_fallback_roots)
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [Path(__file__).resolve().parent.parent / "models" / MODEL_FOLDER]


def comfy_models_dir() -> Path | None:
    """``<ComfyUI>/models`` (to find files other packs downloaded), or None outside ComfyUI."""
    folder_paths = _module("folder_paths")
    return Path(folder_paths.models_dir) if folder_paths is not None else None


def list_model_files() -> list[str]:
    """Relative paths of the model files in ``models/rain`` (subfolders included), sorted, for dropdowns."""
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        try:
            return list(folder_paths.get_filename_list(MODEL_FOLDER))
        except KeyError:
            return []
    found: set[str] = set()
    for root in model_roots():
        if not root.is_dir():
            continue
        inside = root.resolve()
        for path in root.rglob("*"):
            if (path.is_file() and path.suffix.lower() in MODEL_EXTENSIONS and ".git" not in path.parts
                    and path.resolve().is_relative_to(inside)):
                found.add(path.relative_to(root).as_posix())
    return sorted(found)


class ModelNameError(ValueError):
    """A model name (from a workflow or a widget) that would reach outside the models folders."""


def check_model_name(name: str) -> PurePosixPath:
    """``name`` as a relative path, or ``ModelNameError``: absolute paths, ``..`` and NUL are refused.

    Names come from workflows, which anyone can share: like ComfyUI's folder_paths, a name may only point
    inside a models folder."""
    problem = None
    if "\0" in name:
        problem = "contains a NUL character"
    elif not name.strip():
        problem = "is empty"
    else:
        posix = PurePosixPath(name.replace("\\", "/"))
        if posix.is_absolute() or PureWindowsPath(name).drive:
            problem = "is an absolute path"
        elif ".." in posix.parts:
            problem = "contains a '..' component"
    if problem:
        raise ModelNameError(f"Model name {name!r} {problem}; RAIN model names are paths relative to a "
                             f"{MODEL_FOLDER} models folder ({', '.join(str(r) for r in model_roots())}). "
                             f"Pick the file from the list, or put it in that folder.")
    return posix


def _inside(root: Path, relative: PurePosixPath) -> Path | None:
    """``root / relative`` if it is a file that resolves inside ``root``; a link leaving it is refused."""
    candidate = root / relative
    if not candidate.is_file():
        return None
    target = candidate.resolve()
    if not target.is_relative_to(root.resolve()):
        raise ModelNameError(f"{candidate} is a link to {target}, outside the models folder {root}; RAIN only "
                             f"loads files inside its models folders. Move or copy the file into {root}, or add "
                             f"its folder to {MODELS_DIR_ENV}.")
    return candidate


def model_file_path(relative: str) -> Path | None:
    """Absolute path of a dropdown entry, or None when it is in none of the folders.

    Without ComfyUI the name is confined to the folders here (``ModelNameError`` otherwise); ComfyUI's
    ``get_full_path`` confines it itself."""
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        try:
            full = folder_paths.get_full_path(MODEL_FOLDER, relative)
        except KeyError:
            full = None
        return Path(full) if full else None
    name = check_model_name(relative)
    for root in model_roots():
        found = _inside(root, name)
        if found is not None:
            return found
    return None


# -- devices, dtypes, memory ---------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_device() -> torch.device:
    mm = _module("comfy.model_management")
    if mm is not None:
        return torch.device(mm.get_torch_device())
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    mm = _module("comfy.model_management")
    if mm is not None:
        return torch.device(mm.unet_offload_device())
    return torch.device("cpu")


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    """``auto`` follows ComfyUI (and its --fp16-unet / --bf16-unet flags); fp32 on the CPU."""
    if choice != "auto":
        return DTYPES[choice]
    if torch.device(device).type == "cpu":
        return torch.float32
    mm = _module("comfy.model_management")
    if mm is not None:
        return mm.unet_dtype(device=device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    return torch.float16


class LocalPatcher:
    """What the pack needs of a ``ModelPatcher`` when there is no ComfyUI: move the module to the device."""

    def __init__(self, model: torch.nn.Module, load_device, offload_device):
        self.model = model
        self.load_device = torch.device(load_device)
        self.offload_device = torch.device(offload_device)
        self.loads = 0

    def load(self) -> None:
        self.model.to(self.load_device)
        self.loads += 1

    def offload(self) -> None:
        self.model.to(self.offload_device)

    def model_size(self) -> int:
        return sum(t.numel() * t.element_size() for t in list(self.model.parameters()) + list(self.model.buffers()))


def wrap_model(module: torch.nn.Module, load_device, offload_device):
    """Hand a module to ComfyUI's memory manager: a ``ModelPatcher`` (weights are moved to the device when
    :func:`load_models` asks, and offloaded when other models need the room), or a :class:`LocalPatcher`."""
    model_patcher = _module("comfy.model_patcher")
    if model_patcher is not None and _module("comfy.model_management") is not None:
        return model_patcher.ModelPatcher(module, load_device=torch.device(load_device),
                                          offload_device=torch.device(offload_device))
    return LocalPatcher(module, load_device, offload_device)


def load_models(patchers) -> None:
    """Make sure these models are on their device (freeing others first when ComfyUI needs the room).

    Always a full load: RAIN's modules are plain torch modules without ComfyUI's cast-on-the-fly layers, so a
    partial (lowvram) load would leave weights on the wrong device."""
    patchers = [p for p in patchers if p is not None]
    host = [p for p in patchers if not isinstance(p, LocalPatcher)]
    for patcher in patchers:
        if isinstance(patcher, LocalPatcher):
            patcher.load()
    if host:
        mm = _module("comfy.model_management")
        mm.load_models_gpu(host, force_full_load=True)


def _same_device(tensor_device: torch.device, target: torch.device) -> bool:
    return tensor_device.type == target.type and (target.index is None or tensor_device.index == target.index)


def models_on_device(patchers) -> bool:
    """True when every weight of these models sits on its load device. ComfyUI's memory manager offloads models
    when other work needs the room; a background user (a live session) checks this before each call."""
    for patcher in patchers:
        if patcher is None:
            continue
        target = torch.device(patcher.load_device)
        module = patcher.model
        for tensor in list(module.parameters()) + list(module.buffers()):
            if not _same_device(tensor.device, target):
                return False
    return True


def soft_empty_cache() -> None:
    mm = _module("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- progress, previews, interruption ------------------------------------------------------------------------
class Interrupted(Exception):
    """Raised by :func:`check_interrupted` outside ComfyUI after :func:`request_interrupt` (tests, scripts)."""


_interrupt_requested = False


def request_interrupt(value: bool = True) -> None:
    global _interrupt_requested
    _interrupt_requested = value


def check_interrupted() -> None:
    """Raise if the user pressed Cancel (ComfyUI's ``InterruptProcessingException``); call it in every loop."""
    global _interrupt_requested
    mm = _module("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
        return
    if _interrupt_requested:
        _interrupt_requested = False
        raise Interrupted("processing interrupted")


def interrupt_requested() -> bool:
    """Whether the user pressed Cancel, without raising (for work that stops cooperatively, e.g. a TensorRT
    build, which then raises itself)."""
    mm = _module("comfy.model_management")
    if mm is not None:
        return bool(getattr(mm, "processing_interrupted", lambda: False)())
    return _interrupt_requested


class _LocalProgressBar:
    def __init__(self, total: int, node_id=None):
        self.total, self.current, self.node_id = total, 0, node_id
        self.previews = 0

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if preview is not None:
            self.previews += 1

    def update(self, value):
        self.update_absolute(self.current + value)


def progress_bar(total: int, node_id=None):
    """ComfyUI's ProgressBar (each update also checks for interruption) or a local one."""
    utils = _module("comfy.utils") if in_comfyui() else None
    if utils is not None and hasattr(utils, "ProgressBar"):
        return utils.ProgressBar(total, node_id=node_id)
    return _LocalProgressBar(total, node_id)


def preview(image) -> tuple:
    """A preview tuple for ``ProgressBar.update_absolute(..., preview=)`` from a PIL image.

    The third item is the size ComfyUI fits the image into before sending it, scaling up as well as down:
    the image's own longest side keeps it as it is, so the preview (and its label) shows the real frame
    size, not a 64×64 frame blown up to 512×512."""
    return ("JPEG", image, max(image.size))


# -- HTTP routes ---------------------------------------------------------------------------------------------
#: Every route the pack defines, whether or not a server was there to take it: (method, path) -> handler.
ROUTES: dict[tuple[str, str], Callable] = {}


def add_route(method: str, path: str, handler: Callable) -> bool:
    """Register an aiohttp handler on ComfyUI's server (it also answers under ``/api``); True if registered."""
    ROUTES[(method.lower(), path)] = handler
    server = _module("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None) if server is not None else None
    if instance is None:
        return False
    getattr(instance.routes, method.lower())(path)(handler)
    return True


# -- input and output folders, videos -------------------------------------------------------------------------
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
    if relative.is_absolute() or ".." in relative.parts or PureWindowsPath(name).drive or "\0" in name:
        raise ValueError(f"{name!r} is not a file name inside the input folder {input_directory()}; pick the video "
                         f"from the list or upload it.")
    return input_directory() / relative


def numbered_output(prefix: str, suffix: str) -> tuple[Path, str, str]:
    """(path, subfolder, file name) of a new output ``<prefix>_00001_<suffix>`` in the output folder, numbered
    after the files already there (as core Save Video / Save Image number theirs)."""
    import re

    output = output_directory()
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, str(output))
        name = f"{filename}_{counter:05}_{suffix}"
        return Path(folder) / name, subfolder, name
    relative = PurePosixPath(prefix.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"filename_prefix {prefix!r} would save outside the output folder {output}")
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


def progress_text(text: str, node_id=None) -> None:
    """A line of text under the node's progress bar (ComfyUI's ``send_progress_text``), else the log."""
    server = _module("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None) if server is not None else None
    send = getattr(instance, "send_progress_text", None)
    if send is not None and node_id is not None:
        send(text, node_id)
    else:
        log.info("RAIN: %s", text)
