"""Errors of the video I/O layer, worded for the person who chose the file."""


class VideoIOError(RuntimeError):
    """A video or image source cannot be read, or an output cannot be written."""


class VideoNotFoundError(VideoIOError, FileNotFoundError):
    """The input path does not exist."""
