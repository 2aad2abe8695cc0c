"""Tiny ONNX models with the DWPose files' input/output names and shapes, built with ``onnx.helper``.

They ignore the picture (the output is a stored constant; the image enters only through a zero-weighted mean so it
stays a real input) and make the whole detection runner testable and benchmarkable without the 350 MB of real
weights.  ``write_dwpose_stand_ins`` writes a pair under the real file names that "finds" the same upper-body
person (:func:`stand_in_person`) in every frame, so the face and body paths draw a plausible pose image without
the real files (``python -m rain make-tiny-models``).  Signatures, as in the real files:

* YOLOX: ``images`` [1, 3, 640, 640] float32 -> ``output`` [1, 8400, 85]
* DWPose: ``input`` [batch, 3, H, W] float32 -> ``simcc_x`` [batch, 133, 2W], ``simcc_y`` [batch, 133, 2H]

Needs the ``onnx`` package (a test/benchmark dependency, not a runtime one).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .model_files import DETECTOR_PREFERENCE, MODELS_SUBDIR, POSE_PREFERENCE
from .sample_face import SAMPLE_FACE
from .wholebody import SIMCC_SPLIT_RATIO, box_to_centre_scale, fix_aspect_ratio
from .yolox import STRIDES, decode_output

#: Input size (H, W) of the real dw-ll_ucoco_384.onnx, which the written stand-in copies.
STAND_IN_POSE_INPUT = (384, 288)
_DETECTION_SIZE = (512, 512)  # rain.pose.dwpose.DEFAULT_DETECTION_SIZE (not imported: that needs onnxruntime)

_OPSET = 17
_IR_VERSION = 8  # opset 17 needs IR >= 8; staying low keeps older onnxruntime builds happy


def _zero_weighted_mean(helper, name: str, image: str, keep_rank: int) -> list:
    """Nodes computing 0 * mean(image) with shape [N] + [1] * (keep_rank - 1), so constants broadcast per item."""
    return [
        helper.make_node("ReduceMean", [image], [f"{name}_mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", [f"{name}_mean", "zero"], [f"{name}_zero"]),
        helper.make_node("Unsqueeze", [f"{name}_zero", "tail_axes"], [f"{name}_bcast"]),
    ]


def _model_bytes(helper, numpy_helper, onnx, nodes, inputs, outputs, constants: dict[str, np.ndarray]) -> bytes:
    initializers = [numpy_helper.from_array(np.asarray(v), name=k) for k, v in constants.items()]
    graph = helper.make_graph(nodes, "rain_stand_in", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                              producer_name="rain.pose.stand_in_models")
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def yolox_stand_in(raw_output: np.ndarray | None = None, input_size: tuple[int, int] = (640, 640)) -> bytes:
    """A YOLOX-shaped model returning ``raw_output`` ([rows, 85] or [1, rows, 85]; zeros = nobody) for any image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows = sum((input_size[0] // s) * (input_size[1] // s) for s in (8, 16, 32))
    raw = np.zeros((1, rows, 85), np.float32) if raw_output is None else np.asarray(raw_output, np.float32)
    raw = raw.reshape(1, rows, -1)
    nodes = _zero_weighted_mean(helper, "img", "images", 3)
    nodes.append(helper.make_node("Add", ["img_bcast", "raw"], ["output"]))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *input_size])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(raw.shape))]
    constants = {"raw": raw, "zero": np.zeros((), np.float32), "tail_axes": np.array([1, 2], np.int64)}
    return _model_bytes(helper, numpy_helper, onnx, nodes, inputs, outputs, constants)


def dwpose_stand_in(simcc_x: np.ndarray | None = None, simcc_y: np.ndarray | None = None,
                    input_size: tuple[int, int] = (256, 192), dynamic_batch: bool = True) -> bytes:
    """A DWPose-shaped model returning the given SimCC maps ([133, 2W] / [133, 2H], or with a leading 1) for
    every item of the batch.  Zeros (the default) mean "no keypoint found".  ``input_size`` is (H, W)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    height, width = input_size
    x = np.zeros((133, 2 * width), np.float32) if simcc_x is None else np.asarray(simcc_x, np.float32)
    y = np.zeros((133, 2 * height), np.float32) if simcc_y is None else np.asarray(simcc_y, np.float32)
    x, y = x.reshape(1, 133, 2 * width), y.reshape(1, 133, 2 * height)
    batch = "batch" if dynamic_batch else 1
    nodes = _zero_weighted_mean(helper, "img", "input", 3)
    nodes += [helper.make_node("Add", ["img_bcast", "const_x"], ["simcc_x"]),
              helper.make_node("Add", ["img_bcast", "const_y"], ["simcc_y"])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, height, width])]
    outputs = [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [batch, 133, 2 * width]),
               helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [batch, 133, 2 * height])]
    constants = {"const_x": x, "const_y": y, "zero": np.zeros((), np.float32),
                 "tail_axes": np.array([1, 2], np.int64)}
    return _model_bytes(helper, numpy_helper, onnx, nodes, inputs, outputs, constants)


# -- a plausible person for the written stand-ins -----------------------------------------------------------------
def _hand(wrist: tuple[float, float], direction: float) -> np.ndarray:
    """21 hand points (wrist, then thumb, index, middle, ring, little finger, 4 joints each), fingers up and
    towards the body's middle (``direction`` +1 or -1 along x)."""
    points = [wrist]
    for finger, spread in enumerate((-0.9, -0.35, 0.0, 0.3, 0.6)):
        for joint in range(1, 5):
            length = 0.018 * joint * (0.8 if finger == 0 else 1.0)
            points.append((wrist[0] + direction * (0.02 + length * np.cos(spread + 1.2)),
                           wrist[1] - length * np.sin(spread + 1.2) - 0.01))
    return np.array(points)


def stand_in_person() -> np.ndarray:
    """The 133 COCO-WholeBody points of a person seen from the front, chest up (webcam framing), normalised to
    the detection image; (-1, -1) where a point lies outside the frame (hips, legs, feet)."""
    face = (SAMPLE_FACE - 0.5) * 0.75 + np.array([0.5, 0.36])
    points = np.full((133, 2), -1.0)
    points[23:91] = face
    # COCO body: "left" is the person's left, the image's right for a frontal person.
    points[0] = face[30]                       # nose tip
    points[1], points[2] = face[42:48].mean(0), face[36:42].mean(0)
    points[3], points[4] = face[16], face[0]   # ears: the jaw's top ends
    points[5], points[6] = (0.76, 0.70), (0.24, 0.70)
    points[7], points[8] = (0.88, 0.92), (0.12, 0.92)
    points[9], points[10] = (0.68, 0.95), (0.32, 0.95)
    points[91:112] = _hand(tuple(points[9]), -1.0)
    points[112:133] = _hand(tuple(points[10]), 1.0)
    return points


#: Where the written detector stand-in "sees" the person: normalised xyxy in the detection image.
STAND_IN_BOX = (0.06, 0.1, 0.94, 1.0)


def yolox_raw_for_box(box: tuple[float, float, float, float], detection_size: tuple[int, int] = _DETECTION_SIZE,
                      input_size: tuple[int, int] = (640, 640)) -> np.ndarray:
    """Raw YOLOX output [rows, 85] holding one person at ``box`` (normalised xyxy in the detection image)."""
    det_h, det_w = detection_size
    ratio = min(input_size[0] / det_h, input_size[1] / det_w)  # the letterbox scale
    x1, y1, x2, y2 = np.asarray(box, np.float64) * np.array([det_w, det_h, det_w, det_h]) * ratio
    stride = STRIDES[-1]
    columns = input_size[1] // stride
    rows = sum((input_size[0] // s) * (input_size[1] // s) for s in STRIDES)
    centre_x, centre_y = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
    cell_x, cell_y = int(centre_x), int(centre_y)
    raw = np.zeros((rows, 85), np.float32)
    row = rows - (input_size[0] // stride) * columns + cell_y * columns + cell_x
    raw[row, :4] = (centre_x - cell_x, centre_y - cell_y, np.log((x2 - x1) / stride), np.log((y2 - y1) / stride))
    raw[row, 4] = raw[row, 5] = 1.0  # objectness, person
    return raw


def simcc_for_points(points: np.ndarray, pose_input: tuple[int, int] = STAND_IN_POSE_INPUT,
                     detection_size: tuple[int, int] = _DETECTION_SIZE, box: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """SimCC maps ([133, 2W], [133, 2H]) that decode to normalised ``points`` ([133, 2]; negative = not seen)
    when the pose model looked at ``box`` (xyxy pixels of the detection image; None: nobody was found, the
    whole image). ``pose_input`` and ``detection_size`` are (H, W)."""
    height, width = pose_input
    det_h, det_w = detection_size
    if box is None:
        box = np.array([0.0, 0.0, det_w, det_h])
    centre, scale = box_to_centre_scale(np.asarray(box, np.float64))
    scale = fix_aspect_ratio(scale, width / height)
    simcc_x = np.zeros((133, int(SIMCC_SPLIT_RATIO * width)), np.float32)
    simcc_y = np.zeros((133, int(SIMCC_SPLIT_RATIO * height)), np.float32)
    for index, point in enumerate(np.asarray(points, np.float64)):
        if (point < 0).any():
            continue
        model = (point * np.array([det_w, det_h]) - centre + scale / 2) / scale * np.array([width, height])
        column, row = (int(round(v * SIMCC_SPLIT_RATIO)) for v in model)
        if 0 <= column < simcc_x.shape[1] and 0 <= row < simcc_y.shape[1]:
            simcc_x[index, column] = simcc_y[index, row] = 1.0
    return simcc_x, simcc_y


def write_dwpose_stand_ins(models_dir: str | os.PathLike) -> list[Path]:
    """Write ``<models_dir>/dwpose/yolox_l.onnx`` and ``dw-ll_ucoco_384.onnx``: stand-ins under the real names
    (found like the real files) whose answer is :func:`stand_in_person` in :data:`STAND_IN_BOX`, every frame."""
    folder = Path(models_dir) / MODELS_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    detector, pose = folder / DETECTOR_PREFERENCE[0], folder / POSE_PREFERENCE[0]
    raw = yolox_raw_for_box(STAND_IN_BOX)
    detector.write_bytes(yolox_stand_in(raw))
    # The box as the runner will decode it (float32), so the points land exactly where they are meant to.
    boxes, _ = decode_output(raw, (640, 640), 640 / _DETECTION_SIZE[0], classes=slice(0, 1))
    box = boxes[int(np.argmax(raw[:, 4]))].astype(np.float64)
    simcc_x, simcc_y = simcc_for_points(stand_in_person(), box=box)
    pose.write_bytes(dwpose_stand_in(simcc_x, simcc_y, input_size=STAND_IN_POSE_INPUT))
    return [detector, pose]
