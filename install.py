"""Install what requirements.txt cannot express: onnxruntime and OpenCV, only when no build of them is there.

ComfyUI-Manager runs this file after installing requirements.txt (run it yourself after a manual install:
``python install.py``, or ``python_embeded\\python.exe ComfyUI\\custom_nodes\\ComfyUI-RAIN\\install.py`` on
the Windows portable build). onnxruntime and onnxruntime-gpu share one module, as do opencv-python and
opencv-python-headless: listing the CPU/headless builds in requirements.txt would overwrite a user's GPU or full
build. So they are installed here, and only when no build of the module is installed.
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rain.optional import provider_conflict_message, runtime_packages_to_install  # noqa: E402


def main() -> int:
    missing = runtime_packages_to_install()
    if missing:
        print(f"ComfyUI-RAIN: installing {', '.join(missing)}", flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", *missing])
        if done.returncode:
            return done.returncode
    else:
        print("ComfyUI-RAIN: onnxruntime and OpenCV are already installed; keeping the builds you have")
    for module in ("onnxruntime", "cv2"):
        message = provider_conflict_message(module)
        if message:
            print(f"ComfyUI-RAIN: warning: {message}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
