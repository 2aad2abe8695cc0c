"""The fused step as an ONNX graph (for onnxruntime and TensorRT), and its onnxruntime runner.

Export uses torch's ``torch.export``-based exporter (``dynamo=True``, the default since torch 2.9; the
TorchScript exporter is deprecated). With static shapes it writes a clean graph at opset 18: GroupNorm becomes
InstanceNormalization + affine (TensorRT's native instance norm), SDPA becomes MatMul-Softmax-MatMul (which
TensorRT fuses into its attention kernels), LayerNorm becomes LayerNormalization (computed in float32). The
weights go to an external data file when the model is over ONNX's 2 GB protobuf limit (the released UNet in
fp16 is 2.6 GB). Every graph is written into a folder of its own, atomically: a half-written export is never
found under the final name.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .fused_step import FusedStreamStep
from .runners import FusedSteadyStep, StepRunner

log = logging.getLogger(__name__)

OPSET = 18
GRAPH_FILE = "rain_step.onnx"
#: ONNX stores a graph in one protobuf, which cannot exceed 2 GiB; leave room for the graph itself.
EXTERNAL_DATA_ABOVE = 1_800_000_000
EXPORT_REQUIREMENTS = ("onnx", "onnxscript")


class BackendUnavailable(ValueError):
    """A package the chosen backend needs is missing; the message says what to install."""


def check_export_requirements() -> None:
    """Both export modules import, or one message naming the extra ('onnx', also inside 'tensorrt') that brings
    them, or the real import error of a broken install."""
    from ..optional import OptionalModuleMissing, import_optional
    for name in EXPORT_REQUIREMENTS:
        try:
            import_optional(name, "exporting the stream step to ONNX (the onnx and tensorrt backends)")
        except OptionalModuleMissing as error:
            raise BackendUnavailable(str(error)) from error


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def export_step(step: FusedStreamStep, example_inputs: tuple[torch.Tensor, ...], folder: str | Path, *,
                external_data: bool | None = None, opset: int = OPSET) -> Path:
    """Write ``folder/rain_step.onnx`` (+ its weights file when large) and return its path."""
    check_export_requirements()
    folder = Path(folder)
    if external_data is None:
        external_data = parameter_bytes(step) > EXTERNAL_DATA_ABOVE
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.perf_counter()
    log.info("RAIN: exporting the stream step to ONNX (opset %d) in %s …", opset, folder)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(step, example_inputs, dynamo=True, opset_version=opset,
                                    input_names=step.input_names, output_names=step.output_names,
                                    optimize=True, verbose=False)
    program.save(str(partial / GRAPH_FILE), external_data=external_data)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    log.info("RAIN: ONNX export done in %.0f s", time.perf_counter() - started)
    return folder / GRAPH_FILE


_NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32}


class OnnxRuntimeRunner(StepRunner):
    """The exported graph in onnxruntime, with every input and output bound to this runner's torch buffers
    (``IOBinding``): no copies in or out of the session, on the CPU and with the CUDA provider alike."""

    static = True

    def __init__(self, session, input_specs, output_specs, carried, device):
        super().__init__(input_specs, output_specs, carried, device)
        self.session = session
        self.outputs = {name: torch.empty(spec.shape, dtype=spec.dtype, device=self.device)
                        for name, spec in output_specs.items()}
        self.binding = session.io_binding()
        kind = "cuda" if self.device.type == "cuda" else "cpu"
        index = self.device.index or 0
        for name, tensor in self.inputs.items():
            self.binding.bind_input(name, kind, index, _NUMPY_TYPES[tensor.dtype], list(tensor.shape),
                                    tensor.data_ptr())
        for name, tensor in self.outputs.items():
            self.binding.bind_output(name, kind, index, _NUMPY_TYPES[tensor.dtype], list(tensor.shape),
                                     tensor.data_ptr())

    def _run(self, inputs):
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # our copies in, before ORT's stream reads
        self.session.run_with_iobinding(self.binding)
        return self.outputs


def session_providers(device: torch.device) -> list:
    """CUDA (on torch's current stream, so no extra synchronisation is needed) when the step runs on a GPU and
    onnxruntime-gpu is installed; else the CPU."""
    import onnxruntime as ort
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("the onnx backend on a GPU needs onnxruntime-gpu (pip install onnxruntime-gpu, or "
                               "the pack's optional extra 'gpu'); use the compiled or tensorrt backend otherwise")
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxStep:
    """One exported fused step in an onnxruntime session; ``steady_step`` gives each stream its own buffers."""

    backend = "onnx"

    def __init__(self, step: FusedStreamStep, graph: Path, height: int, width: int,
                 constants: dict[str, torch.Tensor]):
        import onnxruntime as ort
        self.step = step
        self.device = step.unet.conv_in.weight.device
        if step.unet.conv_in.weight.dtype not in _NUMPY_TYPES:
            raise ValueError("the onnx backend runs float32 or float16 models; load the model in one of those")
        self.input_specs, self.output_specs = step.specs(height, width, constants)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(graph), sess_options=options,
                                            providers=session_providers(self.device))
        names = {i.name for i in self.session.get_inputs()}
        missing = [name for name in self.input_specs if name not in names]
        if missing:
            raise ValueError(f"{graph} does not take the inputs {missing}: export it again (delete the folder)")

    def steady_step(self, constants: dict[str, torch.Tensor]) -> FusedSteadyStep:
        runner = OnnxRuntimeRunner(self.session, self.input_specs, self.output_specs, self.step.carried,
                                   self.device)
        return FusedSteadyStep(runner, constants, decodes=self.step.taesdv is not None, backend=self.backend)
