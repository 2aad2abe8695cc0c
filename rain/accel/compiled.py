"""The fused step compiled: ``torch.compile`` (Inductor), and on a GPU replayed as one CUDA graph.

On CUDA the compiled step is captured once per stream into a CUDA graph over static buffers (``StepRunner``
with ``static``): a call copies the new pose frames and noise in, replays the whole step — pose guider, UNet,
LCM step, TAESDV — as one launch, and copies the carried outputs back into the input buffers the next call reads,
so the window, pose features and decoder memory never leave the GPU and there is no per-kernel launch overhead.
All streams of one compiled step share one memory pool for the graphs' activations (they run one at a time).
On the CPU there is nothing to capture, and Inductor's code was not faster than eager PyTorch on the dev
machine (bench/NOTES.md), so there the fused step runs eagerly unless ``compile_on_cpu=True``.
"""

from __future__ import annotations

import logging

import torch

from .fused_step import FusedStreamStep
from .runners import FusedSteadyStep, ModuleRunner, StepRunner

log = logging.getLogger(__name__)


def compile_step(step: FusedStreamStep, *, channels_last: bool | None = None, mode: str | None = None):
    """``torch.compile`` of the fused step for its fixed shapes (one graph, no recompiles for new values).

    ``channels_last`` (default: on CUDA) stores the conv weights NHWC, which cuDNN/Inductor prefer for the pose
    guider, the UNet's resnets and TAESDV."""
    device = step.unet.conv_in.weight.device
    if channels_last is None:
        channels_last = device.type == "cuda"
    if channels_last:
        step.to(memory_format=torch.channels_last)
    return torch.compile(step, fullgraph=True, dynamic=False, mode=mode)


class CudaGraphRunner(StepRunner):
    """The compiled step captured as a CUDA graph over this runner's static buffers."""

    static = True

    def __init__(self, step: FusedStreamStep, function, input_specs, output_specs, *, pool=None, warmup: int = 2):
        super().__init__(input_specs, output_specs, step.carried, step.unet.conv_in.weight.device)
        order = [self.inputs[name] for name in step.input_names]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        # Warm-up outside the capture: compilation, autotuning and cuDNN/cuBLAS workspace allocation.
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(warmup):
                function(*order)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool), torch.inference_mode():
            outputs = function(*order)
        self.outputs = dict(zip(step.output_names, outputs))

    def _run(self, inputs):
        self.graph.replay()
        return self.outputs


class CompiledStep:
    """One compiled fused step (per model, frame size and window settings); ``steady_step`` gives each stream
    its own runner (on CUDA: its own captured graph and buffers) sharing the compiled code."""

    backend = "compiled"

    def __init__(self, step: FusedStreamStep, height: int, width: int, constants: dict[str, torch.Tensor], *,
                 cuda_graphs: bool | None = None, channels_last: bool | None = None, mode: str | None = None,
                 compile_on_cpu: bool = False):
        self.step = step
        self.height, self.width = height, width
        self.device = step.unet.conv_in.weight.device
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.device.type == "cpu" and not compile_on_cpu:
            log.info("RAIN: on the CPU the fused step runs eagerly (torch.compile was not faster there)")
            self.function = step
        else:
            self.function = compile_step(step, channels_last=channels_last, mode=mode)
        self.input_specs, self.output_specs = step.specs(height, width, constants)
        self.pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    def steady_step(self, constants: dict[str, torch.Tensor]) -> FusedSteadyStep:
        if self.cuda_graphs:
            runner = CudaGraphRunner(self.step, self.function, self.input_specs, self.output_specs, pool=self.pool)
        else:
            runner = ModuleRunner(self.step, self.function, self.input_specs, self.output_specs)
        return FusedSteadyStep(runner, constants, decodes=self.step.taesdv is not None, backend=self.backend)
