"""Long file-to-file renders with exact resume: one engine (``engine.render_video``) behind ``python -m rain
animate`` and the RAIN Render Video node, fed by a driving source whose state can be saved (``sources``)."""

from .engine import (Callbacks, OutputSpec, RenderCancelled, RenderFailed, RenderInterrupted, RenderProgress,
                     RenderResult, ResumeSpec, render_video)
from .sources import DrivingSource, SourceSpec

__all__ = ["Callbacks", "OutputSpec", "RenderCancelled", "RenderFailed", "RenderInterrupted", "RenderProgress",
           "RenderResult", "ResumeSpec", "render_video", "DrivingSource", "SourceSpec"]
