"""The one door of the pack to ComfyUI: every node reaches the host through this module's names.

Each job is a module of its own: ``host_models`` (the ``models/rain`` folder), ``host_memory`` (devices, dtypes,
the memory manager), ``host_progress`` (progress bars, previews, Cancel, routes), ``host_files`` (input/output
folders, videos); ``host_lookup`` finds ComfyUI's modules at call time. Each function has a fallback used when
ComfyUI is not importable (unit tests, the standalone engine), so the pack always imports and its nodes run
without a host. Nodes call ``host.name(...)`` (never ``from .host import name``), so a test can replace one.
"""

from __future__ import annotations

import logging

from .host_lookup import in_comfyui  # noqa: F401
from .host_models import (  # noqa: F401
    MODEL_FOLDER, MODEL_EXTENSIONS, MODELS_DIR_ENV, register_model_folder, set_fallback_models_dirs,
    model_roots, comfy_models_dir, list_model_files, ModelNameError, check_model_name, model_file_path,
)
from .host_memory import (  # noqa: F401
    DTYPES, torch_device, offload_device, pick_dtype, LocalPatcher, wrap_model, load_models, models_on_device,
    soft_empty_cache,
)
from .host_progress import (  # noqa: F401
    Interrupted, request_interrupt, check_interrupted, interrupt_requested, progress_bar, preview, ROUTES,
    add_route, progress_text,
)
from .host_files import (  # noqa: F401
    INPUT_DIR_ENV, OUTPUT_DIR_ENV, VIDEO_SUFFIXES, set_fallback_folders, input_directory, output_directory,
    input_videos, input_file_path, numbered_output, VideoFile, leaves_folder, safe_file_name, video_from_file,
    video_source_path,
)

log = logging.getLogger("ComfyUI-RAIN")
