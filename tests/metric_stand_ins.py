"""Stand-ins for the evaluation networks: LPIPS weight files in the real layouts (random values) and a tiny
I3D-shaped ONNX model, so the metrics run without downloads."""

from pathlib import Path

import numpy as np
import torch

ALEX_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
LPIPS_WIDTHS = (64, 192, 384, 256, 256)


def write_lpips_weights(folder: Path, seed: int = 0) -> Path:
    """torchvision's AlexNet key layout (classifier included, as in the real file) + LPIPS v0.1 linear heads."""
    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    trunk = {}
    for index, (out_c, in_c, k) in ALEX_CONVS.items():
        trunk[f"features.{index}.weight"] = torch.randn(out_c, in_c, k, k, generator=generator) / (in_c * k * k) ** 0.5
        trunk[f"features.{index}.bias"] = 0.05 * torch.randn(out_c, generator=generator)
    trunk["classifier.1.weight"] = torch.randn(16, 9216, generator=generator)
    torch.save(trunk, folder / "alexnet-owt-7be5be79.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) for i, c in enumerate(LPIPS_WIDTHS)}
    torch.save(heads, folder / "alex.pth")
    return folder


def i3d_stand_in(path: Path, *, frames: int = 16, size: int = 224, features: int = 24, channels_last: bool = False,
                 seed: int = 0) -> Path:
    """An ONNX model with I3D's video input ([N, 3, T, H, W], or [N, T, H, W, 3]) and a [N, features] output:
    per-frame channel means through a fixed random projection and tanh - content-dependent, deterministic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    projection = rng.normal(size=(3 * frames, features)).astype(np.float32)
    if channels_last:
        shape, axes = ["batch", frames, size, size, 3], [2, 3]
    else:
        shape, axes = ["batch", 3, frames, size, size], [3, 4]
    nodes = [helper.make_node("ReduceMean", ["video", "axes"], ["means"], keepdims=0),
             helper.make_node("Reshape", ["means", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "projection"], ["mixed"]),
             helper.make_node("Tanh", ["mixed"], ["logits"])]
    constants = {"axes": np.array(axes, np.int64), "flat_shape": np.array([0, -1], np.int64),
                 "projection": projection}
    graph = helper.make_graph(nodes, "i3d_stand_in",
                              [helper.make_tensor_value_info("video", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", features])],
                              initializer=[numpy_helper.from_array(v, name=k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
