"""ComfyUI-RAIN: animate a character from one reference image, driven by face / body / depth pose images, with
RAIN's streaming diffusion (arXiv 2412.19489).

ComfyUI imports this folder as a package; the engine lives in ``rain/`` (no ComfyUI imports), the nodes in
``nodes/``, the calibration widget in ``web/``, example graphs in ``workflows/``. Model files go in
``ComfyUI/models/rain/`` (see README).
"""

import importlib.util as _importlib_util

if _importlib_util.find_spec("cv2") is None:
    # ComfyUI shows this as the pack's import error: say how to fix it rather than "No module named 'cv2'".
    raise ImportError("ComfyUI-RAIN needs OpenCV, which is not installed in ComfyUI's Python: run the pack's "
                      "install.py with that Python (ComfyUI-Manager does), or pip install opencv-python-headless "
                      "(any OpenCV build will do), and restart ComfyUI.")

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, setup as _setup

WEB_DIRECTORY = "./web"

_setup()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
