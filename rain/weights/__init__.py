"""Checkpoint files: where they live, where they come from, and how to load them safely.

One module per job, each readable on its own:

* ``safe_load``  — read a file as a flat state dict without unpickling arbitrary objects;
* ``identify``   — manifests, which known model a state dict looks like, strict loading;
* ``catalogue``  — the files of a models folder (``MODEL_FILES``), finding them, saying what is missing;
* ``fetch``      — downloading missing files (Hugging Face Hub, resumable HTTP);
* ``errors``     — the error types and the commands messages suggest.

Callers use the names re-exported here: ``from rain import weights; weights.load_state_dict(...)``.
"""

from .catalogue import (ALIASES, DOWNLOAD_GROUPS, OPTIONAL_GROUPS, IMAGE_ENCODER_REPO, MODEL_FILES, RAIN_REPO, TAESDV_COMMIT,
                        TAESDV_URL, VAE_REPO, ModelEntry, RemoteFile, find_weight, missing_weights_message,
                        require_weights)
from .errors import (MAX_KEYS_SHOWN, DownloadError, MissingWeightsError, WeightsError, convert_command,
                     download_command, redownload_hint)
from .fetch import download, fetch_file, git_blob_sha1, http_download
from .identify import (IDENTIFY_MIN_OVERLAP, MANIFEST_DIR, MANIFEST_MODELS, KeyMismatch, check_fits,
                       check_manifest, check_ranks, compare_keys, identify_checkpoint, load_into, load_manifest,
                       load_strict, manifest_shapes)
from .safe_load import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, WEIGHT_SUFFIXES, WRAPPER_PREFIXES, load_state_dict

__all__ = [
    "ALIASES", "DOWNLOAD_GROUPS", "OPTIONAL_GROUPS", "IDENTIFY_MIN_OVERLAP", "IMAGE_ENCODER_REPO", "MANIFEST_DIR", "MANIFEST_MODELS",
    "MAX_KEYS_SHOWN", "MODEL_FILES", "PICKLE_SUFFIXES", "RAIN_REPO", "SAFETENSORS_SUFFIXES", "TAESDV_COMMIT",
    "TAESDV_URL", "VAE_REPO", "WEIGHT_SUFFIXES", "WRAPPER_PREFIXES",
    "DownloadError", "KeyMismatch", "MissingWeightsError", "ModelEntry", "RemoteFile", "WeightsError",
    "check_fits", "check_manifest", "check_ranks", "compare_keys", "convert_command", 
    "download", "download_command", "fetch_file", "find_weight", "git_blob_sha1",
    "http_download", "identify_checkpoint", "load_into", "load_manifest", "load_state_dict", "load_strict",
    "manifest_shapes", "missing_weights_message", "redownload_hint", "require_weights",
]
