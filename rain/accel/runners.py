"""One fused stream step, run by a backend, plugged into the stream.

A *runner* executes the fused step's graph (``FusedStreamStep``) by input/output name: eager PyTorch,
``torch.compile`` (+ CUDA-graph replay), onnxruntime or TensorRT. The per-reference constants are handed to it
once (``set_constants``); each call gets only the state inputs. A *static* runner (CUDA graphs, TensorRT,
onnxruntime with bound buffers) owns fixed input and output buffers: per-call inputs are copied in, and each
carried output (next window, pose features, decoder memory) is copied back into the buffer of the input it
feeds, which is what the stream keeps — so the next call finds its state already in place and nothing of the
window crosses to the host.

``FusedSteadyStep`` adapts a runner to the stream's ``SteadyStep`` protocol (``rain.sampling.stream``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from .fused_step import STATE_INPUTS, FusedStreamStep, TensorSpec


class ConstantsChanged(ValueError):
    """New constants have other shapes than the graph was built for (e.g. several fused references)."""


class StepRunner(ABC):
    """Runs a fused step by name. Subclasses implement ``_run(inputs) → outputs`` (dicts of tensors)."""

    static = False

    def __init__(self, input_specs: dict[str, TensorSpec], output_specs: dict[str, TensorSpec],
                 carried: dict[str, str], device: torch.device):
        self.input_specs, self.output_specs = input_specs, output_specs
        self.carried = carried
        self.device = torch.device(device)
        self.constants: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        if self.static:
            self.inputs = {name: torch.zeros(spec.shape, dtype=spec.dtype, device=self.device)
                           for name, spec in input_specs.items()}

    @property
    def constant_names(self) -> list[str]:
        return [name for name in self.input_specs if name not in STATE_INPUTS and not name.startswith("memory.")]

    def set_constants(self, constants: dict[str, torch.Tensor]) -> None:
        """The per-reference inputs (``steady_constants``); kept until replaced."""
        for name in self.constant_names:
            spec, value = self.input_specs[name], constants[name]
            if tuple(value.shape) != spec.shape:
                raise ConstantsChanged(f"{name} has shape {list(value.shape)}, the graph was built for "
                                       f"{list(spec.shape)}")
            value = value.to(self.device, spec.dtype)
            if self.static:
                self.inputs[name].copy_(value)
            else:
                self.constants[name] = value

    def __call__(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.static:
            return self._run({**feed, **self.constants})
        for name, value in feed.items():
            buffer = self.inputs[name]
            if value is not buffer:  # carried state from the last call is already in place
                buffer.copy_(value)
        outputs = dict(self._run(self.inputs))
        for output, target in self.carried.items():
            if self.swaps_carried:
                # Ping-pong: this call's output buffer is the next call's input, no copy.
                self.inputs[target], self.outputs[output] = self.outputs[output], self.inputs[target]
            else:
                self.inputs[target].copy_(outputs[output])
            outputs[output] = self.inputs[target]
        if self.swaps_carried:
            self._buffers_moved()
        return outputs

    swaps_carried = False  # static runners whose buffers can be re-bound per call (not CUDA graphs)

    def _buffers_moved(self) -> None:
        """Called after carried buffers were swapped (``swaps_carried``): bind the new addresses."""

    @abstractmethod
    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Execute the graph on ``inputs`` (all of them, by name) → outputs by name."""


class ModuleRunner(StepRunner):
    """A PyTorch callable taking the inputs positionally (the eager module, or ``torch.compile`` of it)."""

    def __init__(self, step: FusedStreamStep, function: Callable, input_specs, output_specs, *, static=False):
        self.static = static
        super().__init__(input_specs, output_specs, step.carried, step.unet.conv_in.weight.device)
        self.function = function
        self.input_order, self.output_order = step.input_names, step.output_names

    def _run(self, inputs):
        with torch.inference_mode():
            outputs = self.function(*(inputs[name] for name in self.input_order))
        return dict(zip(self.output_order, outputs))


class FusedSteadyStep:
    """A runner adapted to the stream's ``SteadyStep`` protocol (state tensors in, state tensors out)."""

    def __init__(self, runner: StepRunner, constants: dict[str, torch.Tensor], *, decodes: bool,
                 backend: str = "eager"):
        self.runner = runner
        self.decodes = decodes
        self.backend = backend
        self.memory_names = sorted((n for n in runner.input_specs if n.startswith("memory.")),
                                   key=lambda n: int(n.split(".")[1]))
        self.set_constants(constants)

    def set_constants(self, constants: dict[str, torch.Tensor]) -> None:
        """A new reference (or guidance scale): from the next call on."""
        self.runner.set_constants(constants)

    def _zero_memory(self) -> list[torch.Tensor]:
        specs = self.runner.input_specs
        return [torch.zeros(specs[n].shape, dtype=specs[n].dtype, device=self.runner.device)
                for n in self.memory_names]

    def __call__(self, latents, pose_features, poses, new_latents, step_noise, memory):
        specs = self.runner.input_specs
        feed = {"latents": latents, "pose_features": pose_features, "poses": poses, "new_latents": new_latents,
                "step_noise": step_noise}
        feed = {name: value.to(self.runner.device, specs[name].dtype) for name, value in feed.items()}
        if self.decodes:
            if memory is None:  # the stream's first decoded group: TAESDV starts from zeros
                memory = self._zero_memory()
            feed.update(zip(self.memory_names, memory))
        outputs = self.runner(feed)
        next_latents, next_pose_features = outputs["next_latents"], outputs["next_pose_features"]
        # A static runner overwrites its output buffers on the next call: what leaves the step is a copy.
        if self.decodes:
            frames = outputs["frames"].permute(0, 2, 3, 1).to("cpu", torch.float32, copy=True)
            return frames, next_latents, next_pose_features, [outputs[f"next_{n}"] for n in self.memory_names]
        return outputs["clean"].clone(), next_latents, next_pose_features, memory


def eager_steady_step(step: FusedStreamStep, height: int, width: int,
                      constants: dict[str, torch.Tensor]) -> FusedSteadyStep:
    """The fused step run as is (PyTorch eager): the reference for every other backend."""
    inputs, outputs = step.specs(height, width, constants)
    runner = ModuleRunner(step, step, inputs, outputs)
    return FusedSteadyStep(runner, constants, decodes=step.taesdv is not None, backend="eager")
