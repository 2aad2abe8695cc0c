"""Video and image input/output for the engine: lazy reading, reference images, incremental crash-tolerant
writing under a partial name, audio copy and resume state. Knows nothing of models."""

from .atomic import AtomicOutput, check_writable_folder, partial_path
from .errors import VideoIOError, VideoNotFoundError
from .frames import pad_to_even, to_uint8_rgb
from .images import MIN_REFERENCE_SIDE, ImageError, load_image, load_reference, to_rgb
from .resume import ResumeRefused, ResumeStore, file_fingerprint, resume_dir
from .timing import VideoTiming, scan_timing
from .video import IMAGE_SUFFIXES, VideoInfo, count_frames, frames_total, probe, read_frames
from .writer import OUTPUT_SUFFIXES, VideoWriter

__all__ = [
    "VideoIOError", "VideoNotFoundError", "VideoInfo", "probe", "read_frames", "count_frames",
    "frames_total", "VideoWriter", "to_uint8_rgb", "pad_to_even", "IMAGE_SUFFIXES",
    "ResumeRefused", "ResumeStore", "file_fingerprint", "resume_dir", "AtomicOutput", "partial_path",
    "check_writable_folder", "OUTPUT_SUFFIXES",
    "ImageError", "load_image", "load_reference", "to_rgb", "MIN_REFERENCE_SIDE", "VideoTiming", "scan_timing",
]
