"""DWPose whole-body pose model: crop preprocessing and SimCC decoding in NumPy/OpenCV (spec section 8, "Pose").

Only the arithmetic lives here; the onnxruntime session is in :mod:`rain.pose.dwpose`.  Sizes are (width, height)
where noted because that is how the pose models' SimCC axes are laid out (simcc_x has 2*W bins, simcc_y 2*H).
"""

from __future__ import annotations

import cv2
import numpy as np

from .skeleton import COCO_SOURCES, NECK_INDEX, OPENPOSE_SLOTS, SHOULDERS_COCO

BOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
PIXEL_MEAN = np.array([123.675, 116.28, 103.53])   # applied to RGB order
PIXEL_STD = np.array([58.395, 57.12, 57.375])
VISIBLE_SCORE = 0.3


def box_to_centre_scale(box: np.ndarray, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """xyxy box -> (centre, padded size), float64."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    centre = np.array([x1 + x2, y1 + y2]) * 0.5
    scale = np.array([x2 - x1, y2 - y1]) * padding
    return centre, scale


def fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Grow the short side so that width / height == ``aspect_ratio`` (the model's input aspect)."""
    width, height = scale
    if width > height * aspect_ratio:
        return np.array([width, width / aspect_ratio])
    return np.array([height * aspect_ratio, height])


def crop_affine_matrix(centre: np.ndarray, scale: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """2x3 matrix mapping the (unrotated) box of ``scale`` around ``centre`` onto ``output_size`` (w, h).

    Built the official way - from three point pairs rounded to float32 and ``cv2.getAffineTransform`` - because
    ``warpAffine`` snaps source coordinates to a 1/32-pixel grid and a last-bit change of the matrix can flip a
    pixel; the result must reproduce the reference crops.
    """
    out_w, out_h = output_size
    half_w = scale[0] * -0.5
    src_0 = centre + scale * 0.0
    src_1 = centre + np.array([0.0, half_w])
    src_2 = src_1 + _perpendicular(src_0 - src_1)
    dst_0 = np.array([out_w * 0.5, out_h * 0.5])
    dst_1 = dst_0 + np.array([0.0, out_w * -0.5])
    dst_2 = dst_1 + _perpendicular(dst_0 - dst_1)
    src = np.array([src_0, src_1, src_2], dtype=np.float32)
    dst = np.array([dst_0, dst_1, dst_2], dtype=np.float32)
    return cv2.getAffineTransform(src, dst)


def _perpendicular(direction: np.ndarray) -> np.ndarray:
    # The third point sits at a right angle (counter-clockwise in image coordinates) from the second.
    return np.array([-direction[1], direction[0]])


# OpenCV 4.x warpAffine (INTER_LINEAR) works in fixed point: source positions on a 1/32-pixel grid via 1/1024
# intermediate steps, integer bilinear weights.  Newer OpenCV releases compute warpAffine differently (OpenCV 5
# changes about 0.6 % of the crop pixels by 1-2 levels), so the reference crops are reproduced by building the
# same fixed-point source map here and handing it to cv2.remap, whose fixed-point path is unchanged.
_AB_SCALE = 1024          # 2**AB_BITS, the precision of the per-row / per-column position increments
_TAB_BITS = 5             # 2**5 = 32 sub-pixel positions per axis
_ROUND_DELTA = _AB_SCALE // (1 << _TAB_BITS) // 2


def _inverse_affine(matrix: np.ndarray) -> list[float]:
    # The destination->source matrix, with OpenCV's own float64 operation order.
    m = [float(v) for v in np.asarray(matrix, dtype=np.float64).ravel()]
    det = m[0] * m[4] - m[1] * m[3]
    det = 1.0 / det if det != 0 else 0.0
    a11, a22 = m[4] * det, m[0] * det
    m[0], m[1], m[3], m[4] = a11, m[1] * -det, m[3] * -det, a22
    b1 = -m[0] * m[2] - m[1] * m[5]
    b2 = -m[3] * m[2] - m[4] * m[5]
    m[2], m[5] = b1, b2
    return m


def warp_affine_linear(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, output_size, INTER_LINEAR, BORDER_CONSTANT 0)`` with OpenCV 4.x's exact
    fixed-point rounding, whatever OpenCV version is installed (see the note above)."""
    out_w, out_h = output_size
    m = _inverse_affine(matrix)
    cols = np.arange(out_w, dtype=np.float64)
    rows = np.arange(out_h, dtype=np.float64)
    col_dx = np.rint(m[0] * cols * _AB_SCALE).astype(np.int64)
    col_dy = np.rint(m[3] * cols * _AB_SCALE).astype(np.int64)
    row_x = np.rint((m[1] * rows + m[2]) * _AB_SCALE).astype(np.int64) + _ROUND_DELTA
    row_y = np.rint((m[4] * rows + m[5]) * _AB_SCALE).astype(np.int64) + _ROUND_DELTA
    shift = _AB_SCALE.bit_length() - 1 - _TAB_BITS
    x = (row_x[:, None] + col_dx[None, :]) >> shift
    y = (row_y[:, None] + col_dy[None, :]) >> shift
    # Positions far outside the image only need to stay far outside once narrowed to int16.
    whole = np.stack([x >> _TAB_BITS, y >> _TAB_BITS], axis=-1).clip(-32768, 32767).astype(np.int16)
    fraction_mask = (1 << _TAB_BITS) - 1
    fraction = ((y & fraction_mask) << _TAB_BITS | (x & fraction_mask)).astype(np.uint16)
    return cv2.remap(image, whole, fraction, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_for_pose(image: np.ndarray, box: np.ndarray | None, input_size: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pose-model input for one person.

    ``image``: H x W x 3 uint8 RGB; ``box``: xyxy or ``None`` (whole image); ``input_size``: model (w, h).
    Returns (CHW float32 normalised crop, centre, scale after the aspect fix).  The normalisation is done in
    float64 and cast to float32 at the end, as the official code hands a float64 array to onnxruntime.
    """
    if box is None:
        box = np.array([0.0, 0.0, image.shape[1], image.shape[0]])
    centre, scale = box_to_centre_scale(box)
    out_w, out_h = input_size
    scale = fix_aspect_ratio(scale, out_w / out_h)
    matrix = crop_affine_matrix(centre, scale, (out_w, out_h))
    warped = warp_affine_linear(image, matrix, (int(out_w), int(out_h)))
    normalised = (warped - PIXEL_MEAN) / PIXEL_STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32), centre, scale


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = SIMCC_SPLIT_RATIO
                 ) -> tuple[np.ndarray, np.ndarray]:
    """SimCC argmax decode: ``[N, K, 2W]``, ``[N, K, 2H]`` -> locations ``[N, K, 2]`` (float32, model-input pixels)
    and scores ``[N, K]`` (float32, min of the two maxima).

    A location whose score is <= 0 becomes -1 *before* the division by ``split_ratio`` - so it ends as -0.5 and
    is back-projected like any other point (golden README 7.4); the score threshold hides it later.
    """
    simcc_x = np.asarray(simcc_x, dtype=np.float32)
    simcc_y = np.asarray(simcc_y, dtype=np.float32)
    locations = np.stack([simcc_x.argmax(axis=-1), simcc_y.argmax(axis=-1)], axis=-1).astype(np.float32)
    scores = np.minimum(simcc_x.max(axis=-1), simcc_y.max(axis=-1))
    locations[scores <= 0.0] = -1.0
    return locations / np.float32(split_ratio), scores


def back_project(locations: np.ndarray, centre: np.ndarray, scale: np.ndarray, input_size: tuple[int, int]
                 ) -> np.ndarray:
    """Model-input pixel locations ``[K, 2]`` -> image pixels (float64), inverse of :func:`crop_for_pose`."""
    size = np.array(input_size, dtype=np.float64)
    return locations.astype(np.float64) / size * scale + centre - scale / 2


def to_openpose_layout(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """133 COCO-WholeBody points -> the 134-point :mod:`rain.pose.skeleton` layout.

    Inserts the neck (mean of the shoulders) at 17 with score 1.0 when both shoulders score > 0.3 else 0.0
    (official: a visibility flag, not a mean score), then moves the body points to OpenPose order.
    ``keypoints`` ``[N, 133, 2]``, ``scores`` ``[N, 133]`` -> ``[N, 134, 2]`` and ``[N, 134]`` float64.
    """
    info = np.concatenate([np.asarray(keypoints, dtype=np.float64),
                           np.asarray(scores, dtype=np.float64)[..., None]], axis=-1)
    left, right = SHOULDERS_COCO
    neck = info[:, [left, right]].mean(axis=1)
    neck[:, 2] = np.logical_and(info[:, left, 2] > VISIBLE_SCORE, info[:, right, 2] > VISIBLE_SCORE)
    info = np.insert(info, NECK_INDEX, neck, axis=1)
    info[:, list(OPENPOSE_SLOTS)] = info[:, list(COCO_SOURCES)]
    return info[..., :2], info[..., 2]
