"""The fused step as a TensorRT engine: built from the ONNX graph, cached, and run on torch's CUDA buffers.

Build (minutes for the released model): TensorRT's ONNX parser with native InstanceNormalization (GroupNorm is
exported as InstanceNorm + affine), a strongly typed network — the graph's own dtypes decide the precision, so
an fp16 (or bf16, on GPUs of compute capability 8.0 and up) model gives an fp16 (bf16) engine whose LCM step
still runs in float32, as in PyTorch —, a timing cache shared by every build on this GPU and TensorRT version,
and an ``IProgressMonitor`` that reports each phase and can cancel the build. Engines are cached under the
models folder (``rain.accel.cache``) keyed by TensorRT version, GPU, compute capability, shapes, dtype and the
weights; a stale or undeserialisable engine is rebuilt.

Run: no pycuda. Every input and output is a torch tensor on the GPU; the execution context is given their
addresses and enqueued on torch's current stream. One execution context (and its activation memory) serves
every stream of an engine, each stream binding its own buffers before it runs.

``tensorrt`` is imported only when an engine is built or loaded; ``install_message`` says how to get it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..optional import OptionalModuleMissing, import_optional
from .cache import ArtefactCache, engine_parts
from .fused_step import FusedStreamStep
from .runners import FusedSteadyStep, StepRunner

log = logging.getLogger(__name__)

Progress = Callable[[str, float | None], None]  # (message, fraction done of the current phase or None)

PURPOSE = "TensorRT engines"
FALLBACK = ("so the stream runs with the 'compiled' backend (torch.compile + CUDA graphs) instead; restart after "
            "installing (NVIDIA's wheels need a GPU machine, with a CUDA matching torch's)")


def tensorrt_module():
    """The ``tensorrt`` module, or None when it is not installed or does not load on this machine
    (:func:`unavailable_message` says which, with the real import error)."""
    try:
        return import_optional("tensorrt", PURPOSE)
    except OptionalModuleMissing:
        return None


def unavailable_message() -> str:
    """Why ``tensorrt`` cannot be used: not installed (and which extra brings it), or the import error."""
    try:
        import_optional("tensorrt", PURPOSE)
    except OptionalModuleMissing as error:
        return f"{error}; {FALLBACK}."
    return "TensorRT imports."


class EngineMismatch(RuntimeError):
    """The engine's inputs/outputs are not what the fused step needs (a stale engine)."""


def _torch_dtypes(trt) -> dict:
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
    return {getattr(trt.DataType, name): dtype for name, dtype in table.items() if hasattr(trt.DataType, name)}


def precision_of(dtype: torch.dtype, compute_capability: tuple[int, int]) -> str:
    if dtype == torch.bfloat16 and compute_capability < (8, 0):
        raise ValueError("bf16 TensorRT engines need a GPU of compute capability 8.0 or newer (Ampere); load the "
                         "model in fp16")
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]


def make_progress_monitor(trt, progress: Progress | None, cancelled: Callable[[], bool] | None):
    """An ``IProgressMonitor`` forwarding TensorRT's build phases to ``progress``; returning False from a step
    cancels the build when ``cancelled()`` says so (e.g. the user pressed Cancel in ComfyUI)."""

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                self._steps[phase_name] = max(int(num_steps), 1)
            if progress is not None:
                progress(f"TensorRT: {phase_name}" + (f" ({parent_phase})" if parent_phase else ""), 0.0)

        def step_complete(self, phase_name, step):
            with self._lock:
                total = self._steps.get(phase_name, 1)
            if progress is not None:
                progress(f"TensorRT: {phase_name}", min(1.0, (int(step) + 1) / total))
            return not (cancelled is not None and cancelled())

        def phase_finish(self, phase_name):
            with self._lock:
                self._steps.pop(phase_name, None)
            if progress is not None:
                progress(f"TensorRT: {phase_name} done", 1.0)

    return BuildProgress()


def file_logger(trt, log_file: Path | None):
    """A TensorRT logger writing every message to ``log_file`` (a build prints ~1,400 lines: they belong in a
    file the user can open, not in ComfyUI's console), or TensorRT's console logger without a file."""
    if log_file is None or not hasattr(trt, "ILogger"):
        return trt.Logger(trt.Logger.WARNING)

    class FileLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.path = log_file

        def log(self, severity, message):
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(f"[{getattr(severity, 'name', severity)}] {message}\n")
    return FileLogger()


def build_engine(trt, onnx_path: Path, timing_cache: Path, *, progress: Progress | None = None,
                 cancelled: Callable[[], bool] | None = None, optimization_level: int = 3,
                 log_file: Path | None = None) -> bytes:
    """Serialized engine for the graph at ``onnx_path``; the timing cache file is read and updated; TensorRT's own
    output goes to ``log_file`` when given."""
    logger = file_logger(trt, log_file)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    # From bytes: TensorRT's parse_from_file fails on a path with non-ASCII characters (a Windows user folder
    # named José); the path argument only tells it where the external weights file sits.
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.builder_optimization_level = optimization_level
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = make_progress_monitor(trt, progress, cancelled)
    config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        if cancelled is not None and cancelled():
            raise InterruptedError("the TensorRT build was cancelled")
        where = f"its log {log_file}" if log_file is not None else "its log above"
        raise RuntimeError(f"TensorRT failed to build the engine ({where} says why)")
    from .cache import write_atomically
    write_atomically(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


class LoadedEngine:
    """A deserialized engine, its shared execution context and the I/O it declares."""

    def __init__(self, trt, data: bytes):
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        self.bound_to = None  # the runner whose buffers the context points at
        dtypes = _torch_dtypes(trt)
        self.tensors: dict[str, tuple[bool, tuple[int, ...], torch.dtype]] = {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            self.tensors[name] = (is_input, shape, dtypes[self.engine.get_tensor_dtype(name)])

    def check(self, input_specs, output_specs) -> None:
        wanted = {**{n: (True, s.shape, s.dtype) for n, s in input_specs.items()},
                  **{n: (False, s.shape, s.dtype) for n, s in output_specs.items()}}
        if wanted != self.tensors:
            differing = sorted(n for n in set(wanted) | set(self.tensors) if wanted.get(n) != self.tensors.get(n))
            raise EngineMismatch(f"the engine's inputs/outputs differ from the stream step's: {differing[:6]}")


class TensorRTRunner(StepRunner):
    """Carried outputs ping-pong with their inputs: each call binds last call's output buffers as inputs."""

    static = True
    swaps_carried = True

    def __init__(self, loaded: LoadedEngine, input_specs, output_specs, carried, device):
        super().__init__(input_specs, output_specs, carried, device)
        self.loaded = loaded
        self.outputs = {name: torch.empty(spec.shape, dtype=spec.dtype, device=self.device)
                        for name, spec in output_specs.items()}

    def _buffers_moved(self) -> None:
        self.loaded.bound_to = None

    def _run(self, inputs):
        context = self.loaded.context
        if self.loaded.bound_to is not self:
            for name, tensor in {**self.inputs, **self.outputs}.items():
                context.set_tensor_address(name, tensor.data_ptr())
            self.loaded.bound_to = self
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        if not context.execute_async_v3(stream):
            raise RuntimeError("TensorRT failed to run the stream step")
        return self.outputs


def gpu_identity(device: torch.device) -> tuple[str, tuple[int, int]]:
    if device.type != "cuda":
        raise ValueError("TensorRT engines run on an NVIDIA GPU; this model is on the CPU")
    return torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device))


class TensorRTStep:
    """One engine for the fused step (built or loaded from the cache); ``steady_step`` gives each stream its
    own buffers."""

    backend = "tensorrt"

    def __init__(self, trt, step: FusedStreamStep, height: int, width: int, constants: dict[str, torch.Tensor],
                 *, graph: dict, cache_dir: Path, export: Callable[[], Path], progress: Progress | None = None,
                 cancelled: Callable[[], bool] | None = None, rebuild: bool = False,
                 device: torch.device | None = None, gpu: tuple[str, tuple[int, int]] | None = None):
        self.step = step
        self.device = torch.device(device) if device is not None else step.unet.conv_in.weight.device
        self.input_specs, self.output_specs = step.specs(height, width, constants)
        name, capability = gpu or gpu_identity(self.device)
        precision = precision_of(step.unet.conv_in.weight.dtype, capability)
        self.parts = engine_parts(graph, tensorrt_version=trt.__version__, gpu=name,
                                  compute_capability=capability, precision=precision)
        cache = ArtefactCache(cache_dir)
        self.path = cache.path(self.parts, ".engine")
        self.built = False
        found = None if rebuild else cache.find(self.parts, ".engine")
        loaded = None
        if found is not None:
            try:
                loaded = LoadedEngine(trt, found.read_bytes())
                loaded.check(self.input_specs, self.output_specs)
                log.info("RAIN: TensorRT engine %s loaded", found.name)
            except (RuntimeError, OSError) as error:
                log.warning("RAIN: the cached TensorRT engine %s cannot be used (%s); building it again",
                            found.name, error)
                loaded = None
        if loaded is None:
            onnx_path = export()
            timing = cache_dir / f"timing-trt{trt.__version__}-sm{capability[0]}{capability[1]}.cache"
            started = time.perf_counter()
            build_log = self.path.with_suffix(".build.log")
            build_log.unlink(missing_ok=True)
            if progress is not None:
                progress(f"building the TensorRT engine ({precision}, {name}); this takes minutes once; TensorRT's "
                         f"own output goes to {build_log}", None)
            data = build_engine(trt, onnx_path, timing, progress=progress, cancelled=cancelled, log_file=build_log)
            cache.store(self.parts, ".engine", data, onnx=str(onnx_path),
                        build_seconds=round(time.perf_counter() - started, 1))
            loaded = LoadedEngine(trt, data)
            loaded.check(self.input_specs, self.output_specs)
            self.built = True
            log.info("RAIN: TensorRT engine built in %.0f s: %s", time.perf_counter() - started, self.path)
        self.loaded = loaded

    def steady_step(self, constants: dict[str, torch.Tensor]) -> FusedSteadyStep:
        runner = TensorRTRunner(self.loaded, self.input_specs, self.output_specs, self.step.carried, self.device)
        return FusedSteadyStep(runner, constants, decodes=self.step.taesdv is not None, backend=self.backend)
