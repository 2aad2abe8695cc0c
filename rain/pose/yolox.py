"""YOLOX person detector: pre- and post-processing in NumPy/OpenCV (spec section 8, "Detector").

Only the arithmetic lives here; the onnxruntime session is in :mod:`rain.pose.dwpose`.  Numbers follow the
official DWPose port: float32 decode, class-aware NMS with the "+1 pixel" area convention.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

PAD_VALUE = 114
STRIDES = (8, 16, 32)
PERSON_CLASS = 0
NMS_IOU = 0.45
SCORE_PREFILTER = 0.1   # candidates below this never reach NMS
PERSON_SCORE = 0.3      # persons kept after NMS


def letterbox(image: np.ndarray, input_size: tuple[int, int] = (640, 640)) -> tuple[np.ndarray, float]:
    """Resize ``image`` (H x W x 3 uint8, fed as-is: RGB in RAIN, pitfall 18) by ``r = min(h/H, w/W)`` and paste it
    top-left into a canvas of ``input_size`` (h, w) filled with 114.

    Returns the HWC uint8 canvas and ``r`` (detections are divided by it).  No mean/std normalisation.
    """
    in_h, in_w = input_size
    height, width = image.shape[:2]
    ratio = min(in_h / height, in_w / width)
    canvas = np.full((in_h, in_w, 3), PAD_VALUE, dtype=np.uint8)
    new_w, new_h = int(width * ratio), int(height * ratio)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[:new_h, :new_w] = resized
    return canvas, ratio


def to_network_input(canvas: np.ndarray) -> np.ndarray:
    """HWC uint8 -> contiguous CHW float32 with a batch axis, values 0-255."""
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32)


@lru_cache(maxsize=4)
def _grids(input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (x, y) grid offsets and strides for the concatenated 8/16/32 feature maps (x fastest)."""
    grids, strides = [], []
    for stride in STRIDES:
        rows, cols = input_size[0] // stride, input_size[1] // stride
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=-1))
        strides.append(np.full((rows * cols, 1), stride))
    return np.concatenate(grids), np.concatenate(strides)


def decode_output(raw: np.ndarray, input_size: tuple[int, int], ratio: float,
                  classes: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Decode one image's raw output ``[rows, 5 + classes]`` into xyxy boxes (pixels of the un-letterboxed image)
    and per-class scores ``objectness * class_prob`` (only for ``classes``).  float32 throughout, as the official
    decoder."""
    raw = np.asarray(raw, dtype=np.float32)
    grid, stride = _grids(tuple(input_size))
    if raw.shape[0] != grid.shape[0]:
        raise ValueError(f"YOLOX output has {raw.shape[0]} rows; a {input_size[0]}x{input_size[1]} input with strides "
                         f"{STRIDES} gives {grid.shape[0]}")
    centres = ((raw[:, :2] + grid) * stride).astype(np.float32)
    sizes = (np.exp(raw[:, 2:4]) * stride).astype(np.float32)
    scores = raw[:, 4:5] * raw[:, 5:][:, classes]
    boxes = np.empty((raw.shape[0], 4), dtype=np.float32)
    boxes[:, :2] = centres - sizes / 2.0
    boxes[:, 2:] = centres + sizes / 2.0
    boxes /= ratio
    return boxes, scores


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_IOU) -> list[int]:
    """Greedy single-class NMS, highest score first; areas and overlaps use the inclusive "+1 pixel" convention."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        overlap_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        overlap_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = overlap_w * overlap_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return keep


def class_aware_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_IOU,
                    score_threshold: float = SCORE_PREFILTER) -> np.ndarray:
    """NMS per class.  Returns ``[K, 6]`` float64 rows (x1, y1, x2, y2, score, class), grouped by class in class
    order, best first within a class; ``[0, 6]`` when nothing passes ``score_threshold``."""
    found = []
    for cls in range(scores.shape[1]):
        cls_scores = scores[:, cls]
        passing = cls_scores > score_threshold
        if not passing.any():
            continue
        cls_boxes, cls_scores = boxes[passing], cls_scores[passing]
        keep = nms(cls_boxes, cls_scores, iou_threshold)
        rows = np.concatenate([cls_boxes[keep], cls_scores[keep, None], np.full((len(keep), 1), float(cls))], axis=1)
        found.append(rows.astype(np.float64))
    if not found:
        return np.zeros((0, 6), dtype=np.float64)
    return np.concatenate(found, axis=0)


def person_boxes(raw: np.ndarray, input_size: tuple[int, int], ratio: float,
                 min_score: float = PERSON_SCORE) -> np.ndarray:
    """Full post-processing of one image: decode, class-aware NMS, keep persons with score > ``min_score``.
    Returns ``[N, 4]`` float64 xyxy boxes in detection order (official order, before any size choice)."""
    # NMS is per class, so the other 79 classes cannot change the person rows: decode the person column only.
    boxes, scores = decode_output(raw, input_size, ratio, classes=slice(PERSON_CLASS, PERSON_CLASS + 1))
    dets = class_aware_nms(boxes, scores)
    return dets[dets[:, 4] > min_score, :4]


def largest_box(boxes: np.ndarray) -> np.ndarray | None:
    """RAIN keeps only the largest-area person (the first one on ties); ``None`` when there is none."""
    if len(boxes) == 0:
        return None
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(boxes[int(np.argmax(areas))], dtype=np.float64)
