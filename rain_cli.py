"""Run ``python -m rain`` where ``-m rain`` cannot find the package: ComfyUI's Windows portable build.

Its ``python_embeded\\python.exe`` ignores the current folder (a ``._pth`` file fixes its import path), so from
the ComfyUI_windows_portable folder run, for example::

    python_embeded\\python.exe ComfyUI\\custom_nodes\\ComfyUI-RAIN\\rain_cli.py download --models-dir ComfyUI\\models\\rain

Any other Python may use it too; it is the same as ``python -m rain`` run from this folder.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rain.cli import main  # noqa: E402  (the path above must come first)

if __name__ == "__main__":
    raise SystemExit(main())
