"""The calibration preview behind the landmark-transform node's widget.

The browser sends the node's widget values; the server answers with a PNG drawn by the engine's own transform and
renderer (one source of truth): the human landmarks as grey points, RAIN's transformed face dots on top, over the
node's last input frame when it has run (else over a synthetic sample face).
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass

import numpy as np

from . import host
from ..rain.pose.sample_face import SAMPLE_FACE

ROUTE = "/rain/calibration/preview"
PREVIEW_SIZE = 320
PRESETS = ("calibration", "startup", "none")
_HUMAN_COLOUR = (150, 150, 150)


def translations_for(preset: str, params: dict):
    """The translation list a node with these widget values applies (the engine's, shared with live sessions)."""
    from ..rain.live.pose_stage import translations_for as engine_translations
    return engine_translations(preset, params)


@dataclass
class SeenFrame:
    """What a landmark-transform node saw last: one face and, if an image was connected, its frame."""
    face: np.ndarray                 # [68, 2] normalised, -1 = missing
    image: np.ndarray | None = None  # H x W x 3 uint8, already cropped like the landmarks
    frame_index: int = 0


_seen: dict[str, SeenFrame] = {}
_lock = threading.Lock()
MAX_NODES = 32


def remember(node_id, seen: SeenFrame) -> None:
    if node_id is None:
        return
    with _lock:
        _seen.pop(str(node_id), None)
        _seen[str(node_id)] = seen
        while len(_seen) > MAX_NODES:
            _seen.pop(next(iter(_seen)))


def seen_frame(node_id) -> SeenFrame | None:
    with _lock:
        return _seen.get(str(node_id)) if node_id is not None else None


def _view(points: list[np.ndarray], frame_size: tuple[int, int], margin: float = 0.35) -> tuple[np.ndarray, float]:
    """(top-left in pixels, side in pixels) of a square around every visible point, with a margin."""
    height, width = frame_size
    visible = np.concatenate([p[np.all(p >= 0, axis=1)] for p in points]) * np.array([width, height])
    if len(visible) == 0:
        return np.array([0.0, 0.0]), float(max(height, width))
    low, high = visible.min(axis=0), visible.max(axis=0)
    side = max(float((high - low).max()) * (1 + 2 * margin), 8.0)
    return (low + high) / 2 - side / 2, side


def _crop_square(image: np.ndarray, origin: np.ndarray, side: float, size: int) -> np.ndarray:
    """The square [origin, origin + side) of ``image`` (pixels; outside the frame is black) at size x size."""
    import cv2
    scale = size / side
    matrix = np.array([[scale, 0.0, -origin[0] * scale], [0.0, scale, -origin[1] * scale]])
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def render_preview(preset: str, params: dict, seen: SeenFrame | None = None, size: int = PREVIEW_SIZE) -> np.ndarray:
    """size x size x 3 uint8, zoomed on the face: background (dimmed frame or dark), human landmarks (grey),
    transformed RAIN dots. The transform runs on the frame's own normalised coordinates, as in the pipeline;
    only the drawing is zoomed."""
    import cv2

    from ..rain.pose.landmark_transform import apply_translations, missing_points
    from ..rain.pose.render import render_face_pose

    face = seen.face if seen is not None else SAMPLE_FACE
    image = seen.image if seen is not None else None
    frame_size = image.shape[:2] if image is not None else (size, size)
    transformed = apply_translations(face, translations_for(preset, params))
    origin, side = _view([face], frame_size)  # the human face only: the view stays put while sliders move
    if image is not None:
        canvas = (_crop_square(image, origin, side, size).astype(np.float32) * 0.45).astype(np.uint8)
    else:
        canvas = np.full((size, size, 3), 24, np.uint8)
    canvas = np.ascontiguousarray(canvas)
    frame_h, frame_w = frame_size

    def to_view(points):
        out = (points * np.array([frame_w, frame_h]) - origin) / side
        out[missing_points(points)] = -1.0
        return out

    human = to_view(face)
    for (x, y), gone in zip(human, missing_points(human)):
        if not gone:
            cv2.circle(canvas, (int(x * size), int(y * size)), 2, _HUMAN_COLOUR, thickness=-1)
    radius = max(3, round(size / 64))
    return render_face_pose(to_view(transformed), None, size, size, radius=radius, canvas=canvas)


def preview_png(preset: str, params: dict, node_id=None, source: str = "auto") -> tuple[bytes, str]:
    """(PNG bytes, "frame" or "sample": what the landmarks were drawn over)."""
    from PIL import Image
    seen = seen_frame(node_id) if source != "sample" else None
    buffer = io.BytesIO()
    Image.fromarray(render_preview(preset, params, seen)).save(buffer, format="PNG")
    return buffer.getvalue(), "frame" if seen is not None else "sample"


async def preview_route(request):
    """POST {node_id, preset, params: {name: value}, source: "auto"|"sample"} → image/png."""
    from aiohttp import web
    try:
        body = await request.json()
        png, drawn_over = preview_png(str(body.get("preset", "calibration")), dict(body.get("params") or {}),
                                      body.get("node_id"), str(body.get("source", "auto")))
    except (ValueError, TypeError, AttributeError, json.JSONDecodeError) as error:
        return web.json_response({"error": str(error)}, status=400)
    headers = {"Cache-Control": "no-store", "X-RAIN-Source": drawn_over}
    return web.Response(body=png, content_type="image/png", headers=headers)


def register_routes() -> bool:
    return host.add_route("post", ROUTE, preview_route)
