"""A stand-in for the ``tensorrt`` module (TensorRT 10 Python API, the parts RAIN uses), for tests on a machine
without TensorRT or a GPU.

It keeps TensorRT's contracts that RAIN's code relies on: the builder parses an ONNX file, reports progress
through the config's ``IProgressMonitor`` (and stops when a step returns False), reads and writes the timing
cache, and returns a serialized engine; the runtime refuses bytes that are not an engine; the engine lists its
I/O tensors (names, modes, shapes, dtypes, read from the ONNX graph); the execution context reads its inputs
from, and writes its outputs to, the raw addresses it was given. The arithmetic is onnxruntime's on the CPU.
"""

from __future__ import annotations

import ctypes
import enum
import json

import numpy as np

__version__ = "10.99.0+fake"
builds: list[dict] = []  # every engine built, for assertions


class Logger:
    WARNING = 2

    def __init__(self, level=None):
        self.level = level


class ILogger:
    """Base of a user logger: TensorRT calls ``log(severity, message)`` for every line it would print."""

    class Severity(enum.Enum):
        INFO = 3
        VERBOSE = 4

    def __init__(self):
        pass


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    BF16 = 7
    INT64 = 8


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class OnnxParserFlag(enum.Enum):
    NATIVE_INSTANCENORM = 0


class IProgressMonitor:
    def __init__(self):
        pass


_ONNX_TYPES = {1: (DataType.FLOAT, np.float32), 10: (DataType.HALF, np.float16), 7: (DataType.INT64, np.int64),
               6: (DataType.INT32, np.int32)}


class _Network:
    def __init__(self, flags):
        self.flags = flags
        self.onnx_path = None


class OnnxParser:
    def __init__(self, network, logger):
        self.network = network
        self.flags = set()
        self.num_errors = 0

    def set_flag(self, flag):
        self.flags.add(flag)

    def parse_from_file(self, path):
        if not str(path).isascii():   # as TensorRT's C++ file reader does on Windows
            raise RuntimeError(f"cannot open {path}")
        import onnx
        onnx.load(path, load_external_data=False)  # a real ONNX file, or this raises
        self.network.onnx_path = path
        return True

    def parse(self, model, path=None):
        import onnx
        onnx.load_from_string(bytes(model))  # a real ONNX graph, or this raises
        self.network.onnx_path = path
        return True

    def get_error(self, index):
        return ""


class _TimingCache:
    def __init__(self, data: bytes):
        self.entries = json.loads(data.decode())["entries"] if data else 0

    def serialize(self):
        return json.dumps({"entries": self.entries}).encode()


class _BuilderConfig:
    def __init__(self):
        self.builder_optimization_level = 3
        self.progress_monitor = None
        self._timing = None

    def create_timing_cache(self, data):
        return _TimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch=False):
        self._timing = cache
        return True

    def get_timing_cache(self):
        return self._timing


class Builder:
    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags):
        return _Network(flags)

    def create_builder_config(self):
        return _BuilderConfig()

    def build_serialized_network(self, network, config):
        if isinstance(self.logger, ILogger):   # a real build prints its phases and tactics, ~1,400 lines
            for line in range(3):
                self.logger.log(ILogger.Severity.VERBOSE, f"fake build line {line}")
        monitor = config.progress_monitor
        monitor.phase_start("Building engine", None, 3)
        for step in range(3):
            if not monitor.step_complete("Building engine", step):
                monitor.phase_finish("Building engine")
                return None
        monitor.phase_finish("Building engine")
        config._timing.entries += 1
        record = {"onnx": network.onnx_path, "strongly_typed": bool(network.flags & 2),
                  "timing_entries_before": config._timing.entries - 1}
        builds.append(record)
        return memoryview(json.dumps({"fake_engine": network.onnx_path}).encode())


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data):
        try:
            return _Engine(json.loads(bytes(data).decode())["fake_engine"])
        except (ValueError, KeyError, UnicodeDecodeError):
            return None  # TensorRT logs an error and returns None for bytes that are not an engine


class _Engine:
    def __init__(self, onnx_path):
        import onnx
        import onnxruntime as ort
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        graph = onnx.load(onnx_path, load_external_data=False).graph
        self.io = []
        for mode, values in ((TensorIOMode.INPUT, graph.input), (TensorIOMode.OUTPUT, graph.output)):
            for value in values:
                tensor = value.type.tensor_type
                self.io.append((value.name, mode, tuple(d.dim_value for d in tensor.shape.dim),
                                _ONNX_TYPES[tensor.elem_type]))

    @property
    def num_io_tensors(self):
        return len(self.io)

    def _entry(self, name):
        return next(entry for entry in self.io if entry[0] == name)

    def get_tensor_name(self, index):
        return self.io[index][0]

    def get_tensor_mode(self, name):
        return self._entry(name)[1]

    def get_tensor_shape(self, name):
        return self._entry(name)[2]

    def get_tensor_dtype(self, name):
        return self._entry(name)[3][0]

    def create_execution_context(self):
        return _Context(self)


class _Context:
    def __init__(self, engine):
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.runs = 0

    def set_tensor_address(self, name, address):
        self.addresses[name] = int(address)
        return True

    def _view(self, name):
        _, _, shape, (_, dtype) = self.engine._entry(name)
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * count).from_address(self.addresses[name]))
        return raw.view(dtype).reshape(shape)

    def execute_async_v3(self, stream_handle):
        feed = {name: self._view(name).copy() for name, mode, _, _ in self.engine.io if mode is TensorIOMode.INPUT}
        names = [name for name, mode, _, _ in self.engine.io if mode is TensorIOMode.OUTPUT]
        for name, value in zip(names, self.engine.session.run(names, feed)):
            np.copyto(self._view(name), value)
        self.runs += 1
        return True
