"""One size syntax for every command: ``512`` or ``WxH``."""

from __future__ import annotations

import argparse


def parse_size(text: str) -> tuple[int, int]:
    """'512' or 'WxH' → (height, width)."""
    try:
        if "x" in text.lower():
            width, height = (int(v) for v in text.lower().split("x"))
        else:
            width = height = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or WxH (e.g. 512 or 512x768), got {text!r}") from None
    return height, width
