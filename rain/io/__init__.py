"""Video input/output for the engine: lazy reading, incremental crash-tolerant writing,
audio copy and resume state. Knows nothing of models."""

from .errors import VideoIOError, VideoNotFoundError
from .frames import pad_to_even, to_uint8_rgb
from .resume import (ResumeState, clear_resume_state, load_resume_state, resume_state_path,
                     save_resume_state)
from .video import IMAGE_SUFFIXES, VideoInfo, count_frames, frames_total, probe, read_frames
from .writer import VideoWriter

__all__ = [
    "VideoIOError", "VideoNotFoundError", "VideoInfo", "probe", "read_frames", "count_frames",
    "frames_total", "VideoWriter", "to_uint8_rgb", "pad_to_even", "IMAGE_SUFFIXES",
    "ResumeState", "save_resume_state", "load_resume_state", "clear_resume_state",
    "resume_state_path",
]
