"""RAIN engine: real-time animation of a reference character driven by a pose stream.

The engine never imports ComfyUI; the node pack in ``nodes/`` is a thin adapter over it.
Import the pieces you need from their modules (``rain.pipeline``, ``rain.weights``, ...);
this package keeps its import cheap so the node pack loads fast.
"""

__version__ = "0.1.0"
