"""Reading reference images: any file Pillow opens, any mode, upright, as 8-bit RGB.

``load_image`` is for files (one clear ``ImageError`` naming the file for every way it can be wrong);
``to_rgb`` for images already in memory. High bit depths are scaled to 8 bits (Pillow's own conversion
clips a 16-bit grey PNG to almost white), transparency is composited on white, and the EXIF orientation
of phone photos is applied.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import VideoIOError
from ..messages import describe_error

#: Shortest side a reference may have. RAIN stretches the reference to the frame size (512 as trained), and
#: its image encoder sees it at 224×224: a smaller image is an icon or a mistake, not a character.
MIN_REFERENCE_SIDE = 32


class ImageError(VideoIOError, ValueError):
    """An image file that cannot be used; the message names it, says what is wrong and what to do."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """The image at ``path``, fully decoded, upright (EXIF orientation applied), as RGB."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"Image not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a folder; give the image file itself.")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise ImageError(f"No permission to read {path}.") from None
    except OSError as error:
        raise ImageError(f"{path} cannot be read ({type(error).__name__}: {error}).") from None
    return decode_image(data, path)


def decode_image(data: bytes, source: str | os.PathLike) -> Image.Image:
    """Image file contents → upright 8-bit RGB, with the same checks and messages for every entry point (a
    file on disk, an upload to the live panel); ``source`` names it in the messages."""
    if not data:
        raise ImageError(f"{source} is empty (0 bytes): the file was not saved or copied completely; use "
                         f"another copy of the image.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image = image.copy()  # keeps info (transparency) and EXIF
    except Image.UnidentifiedImageError:
        raise ImageError(f"{source} is not an image Pillow can read (PNG, JPEG, WebP, BMP, TIFF, GIF…); "
                         f"convert it to PNG or JPEG.") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{source} is too large to open safely ({describe_error(error)}); scale it down first.") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Truncated downloads and damaged files fail while decoding.
        raise ImageError(f"{source} is damaged or incomplete ({type(error).__name__}: {error}); use another copy "
                         f"of the image.") from None
    try:
        return to_rgb(image)
    except ValueError as error:
        raise ImageError(f"{source}: {describe_error(error)}") from None


def check_reference_size(image: Image.Image, source: str | os.PathLike) -> Image.Image:
    """``image``, or ``ImageError`` when a side is shorter than :data:`MIN_REFERENCE_SIDE`."""
    width, height = image.size
    if min(width, height) < MIN_REFERENCE_SIDE:
        raise ImageError(f"{source} is {width}×{height} pixels: too small for a reference (it is stretched to "
                         f"the frame size, 512×512 as trained). Use an image at least {MIN_REFERENCE_SIDE} "
                         f"pixels on each side, ideally around the frame size.")
    return image


def load_reference(path: str | os.PathLike) -> Image.Image:
    """A reference image file, checked (readable, large enough), upright, RGB."""
    return check_reference_size(load_image(path), path)


def decode_reference(data: bytes, source: str) -> Image.Image:
    """A reference image's file contents (e.g. uploaded to the live panel), read exactly as a file is."""
    return check_reference_size(decode_image(data, source), source)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image → 8-bit RGB: EXIF orientation applied, high bit depths scaled (not clipped),
    transparency composited on white."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _deep_to_rgb(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # On white rather than on whatever colour hides under alpha 0.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError:
        raise ValueError(f"a {image.mode} image cannot be converted to RGB; save it as an RGB PNG or JPEG") from None


def _deep_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer and float greyscale → 8 bits, keeping the picture's range."""
    values = np.asarray(image).astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)
    if image.mode.startswith("I;16"):
        scaled = values / 65535.0
    elif image.mode == "I" and values.min() >= 0 and values.max() <= 65535:
        scaled = values / 65535.0   # what Pillow makes of 16-bit PNGs in some versions
    elif image.mode == "F" and values.min() >= 0 and values.max() <= 1:
        scaled = values
    else:  # no natural range (32-bit integers, floats beyond [0, 1]): stretch what is there
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    grey = Image.fromarray((np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "L")
    return grey.convert("RGB")
