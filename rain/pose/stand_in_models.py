"""Tiny ONNX models with the DWPose files' input/output names and shapes, built with ``onnx.helper``.

They ignore the picture (the output is a stored constant; the image enters only through a zero-weighted mean so it
stays a real input) and make the whole detection runner testable and benchmarkable without the 350 MB of real
weights.  Signatures, as in the real files:

* YOLOX: ``images`` [1, 3, 640, 640] float32 -> ``output`` [1, 8400, 85]
* DWPose: ``input`` [batch, 3, H, W] float32 -> ``simcc_x`` [batch, 133, 2W], ``simcc_y`` [batch, 133, 2H]

Needs the ``onnx`` package (a test/benchmark dependency, not a runtime one).
"""

from __future__ import annotations

import numpy as np

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
