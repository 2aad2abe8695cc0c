"""The accelerated stream on the CPU at reduced size: precomputed constants are the full computation, the
compiled and ONNX (onnxruntime) backends give the eager frames over several calls with carried state, the
TensorRT flow (build, cache, rebuild, run on bound buffers) against a stand-in ``tensorrt`` module, engine cache
keys, and the fallback when TensorRT is missing.

Tolerance: the golden rule for float32, 1e-4·max(1, |eager|) (``tests/parity.py``): Inductor and onnxruntime
fuse and reorder float32 arithmetic, which moves results by ~1e-6 here.

The models are smaller than the tiny set (two UNet levels, one layer per block; TAESDV as released) because
compiling and exporting cost time per graph node: each backend is built once per session (about a minute
each on two cores).
"""

import logging

import sys
from pathlib import Path

import numpy as np

import pytest
import torch

import fake_tensorrt
from parity import assert_close_to_golden
from rain.accel import backends, cache, tensorrt_engine
from rain.accel.fused_step import FusedStreamStep
from rain.devtools import random_reference, random_stream_models
from rain.models.embeddings import guidance_scale_embedding
from rain.pipeline import RainPipeline, to_pose_tensor
from rain.sampling.stream import StreamSettings

SIZE = 64


def pose_tensors(count, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        frame = np.zeros((SIZE, SIZE, 3), np.uint8)
        y, x = rng.integers(4, SIZE - 12, 2)
        frame[y:y + 8, x:x + 8] = rng.integers(0, 255, 3)
        frames.append(to_pose_tensor(frame))
    return frames


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    models = random_stream_models((32, 32), layers_per_block=1, seed=1)
    return RainPipeline(models, models_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def references(micro):
    unet = micro.models.video_unet
    return random_reference(unet, SIZE, SIZE, seed=2), random_reference(unet, SIZE, SIZE, seed=3)


@pytest.fixture(scope="module")
def eager_frames(micro, references):
    """Eager frames of a stream that swaps reference after 16 frames (8 steady calls, drained)."""
    stream = micro.open_stream(references[0], StreamSettings(seed=7))
    frames = pose_tensors(32)
    out = [o for frame in frames[:16] for o in stream.push(frame)]
    stream.set_reference(references[1])
    return out + list(stream.run(frames[16:]))


def run_backend(micro, references, backend, during=None, **options):
    stream = micro.open_stream(references[0], StreamSettings(seed=7), backend=backend, **options)
    frames = pose_tensors(32)
    out = [o for frame in frames[:16] for o in stream.push(frame)]
    if during is not None:
        during(stream)
    stream.set_reference(references[1])  # a live session swaps references: no rebuild, new constants
    out += list(stream.run(frames[16:]))
    return stream, out


# -- doing less work, exactly ------------------------------------------------------------------------------------
def test_precomputed_attention_and_time_embedding_are_the_full_computation(micro, references):
    unet = micro.models.video_unet
    reference = references[0]
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 16, 8, 8, generator=generator)
    pose = torch.randn(1, 32, 16, 8, 8, generator=generator)
    timesteps = torch.tensor([[249] * 4 + [499] * 4 + [749] * 4 + [999] * 4])
    guidance = guidance_scale_embedding(2.5)
    with torch.no_grad():
        unet.set_reference(reference.features)
        full = unet(sample, timesteps, reference.context, pose, guidance)
        unet.set_reference(None)
        attention = unet.attention_inputs(reference.features, reference.context)
        temb = unet.time_embeddings(timesteps, 1, 16, guidance)
        fast = unet(sample, None, None, pose, temb=temb, attention=attention)
    assert {name.rsplit(".", 1)[1] for name in attention} == {"key", "value", "cross"}
    assert attention["d00.cross"].shape == (1, 1, 32)  # one vector per layer, whatever the frame count
    assert_close_to_golden(fast, full, "precomputed")


def test_cross_attention_without_constants_is_full_attention_with_gradients(micro):
    from diffusers.models.attention_processor import AttnProcessor2_0
    block = micro.models.video_unet.down_blocks[0].attentions[0].transformer_blocks[0]
    attn = block.attn2
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 16, 32, generator=generator)
    attn.requires_grad_(True)
    try:
        # Several context tokens: the softmax really weighs them, so every projection gets a real gradient.
        context = torch.randn(2, 3, 768, generator=generator)
        out = attn(hidden, encoder_hidden_states=context)
        assert torch.equal(out, AttnProcessor2_0()(attn, hidden, context))
        out.square().sum().backward()
        for projection in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            assert projection.weight.grad is not None and projection.weight.grad.abs().max() > 1e-3
        attn.zero_grad(set_to_none=True)
        # One token (the CLIP image embedding RAIN uses): the softmax is identically 1, so the output does not
        # depend on to_q/to_k at all. Their gradient is zero up to float32 rounding, whatever the CPU.
        one = context[:, :1]
        out = attn(hidden, encoder_hidden_states=one)
        assert torch.equal(out, AttnProcessor2_0()(attn, hidden, one))
        out.square().sum().backward()
        scale = attn.to_v.weight.grad.abs().max()
        assert scale > 1e-3
        for projection in (attn.to_q, attn.to_k):
            assert projection.weight.grad is None or projection.weight.grad.abs().max() <= 1e-5 * scale
    finally:
        attn.requires_grad_(False)
        attn.zero_grad(set_to_none=True)


# -- backends ----------------------------------------------------------------------------------------------------
def test_fused_eager_backend_gives_the_eager_frames(micro, references, eager_frames):
    assert micro.open_stream(references[0], StreamSettings(), backend="eager").steady_step is None  # plain stream
    from rain.accel.backends import steady_step_for
    stream = micro.open_stream(references[0], StreamSettings(seed=7))
    stream.use_steady_step(steady_step_for(micro, "eager", stream.settings, SIZE, SIZE, stream.steady_constants()))
    frames = pose_tensors(32)
    fused = [o for frame in frames[:16] for o in stream.push(frame)]
    stream.set_reference(references[1])
    fused += list(stream.run(frames[16:]))
    assert len(fused) == len(eager_frames) == 32
    assert_close_to_golden(torch.stack(fused), torch.stack(eager_frames), "fused eager")


def test_compiled_backend_gives_the_eager_frames(micro, references, eager_frames):
    stream, out = run_backend(micro, references, "compiled", compile_on_cpu=True)
    assert stream.steady_step.backend == "compiled"
    assert len(out) == 32
    assert_close_to_golden(torch.stack(out), torch.stack(eager_frames), "compiled")


def test_onnx_backend_gives_the_eager_frames_over_calls_with_carried_state(micro, references, eager_frames,
                                                                            monkeypatch):
    from rain.accel import onnx_export
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_ABOVE", 0)  # exercise the >2 GB layout at test size
    def state_in_bound_buffers(stream):
        # Mid-stream the carried state lives in the runner's bound buffers: the stream holds exactly those.
        runner = stream.steady_step.runner
        assert type(runner).__name__ == "OnnxRuntimeRunner"
        assert stream.state.latents is runner.inputs["latents"]
        assert stream.state.decoder_memory[0] is runner.inputs["memory.0"]

    stream, out = run_backend(micro, references, "onnx", during=state_in_bound_buffers)
    assert_close_to_golden(torch.stack(out), torch.stack(eager_frames), "onnx")
    folders = list((micro.models_dir / "tensorrt" / "onnx").glob("rain_step-*"))
    assert any(p.suffix == ".json" for p in folders)
    graph = next(p for p in folders if p.is_dir())
    assert len(list(graph.iterdir())) == 2  # the graph and its external weights file


# -- TensorRT, against a stand-in module ------------------------------------------------------------------------
@pytest.fixture
def stand_in_tensorrt(monkeypatch):
    fake_tensorrt.builds.clear()
    monkeypatch.setattr(tensorrt_engine, "tensorrt_module", lambda: fake_tensorrt)
    monkeypatch.setattr(backends, "tensorrt_module", lambda: fake_tensorrt)
    gpu = {"name": "Stand-in GPU", "capability": (9, 0)}
    monkeypatch.setattr(tensorrt_engine, "gpu_identity", lambda device: (gpu["name"], gpu["capability"]))
    return gpu


def test_tensorrt_engine_is_built_cached_rebuilt_and_runs_on_bound_buffers(micro, references, eager_frames,
                                                                          stand_in_tensorrt, caplog):
    messages = []
    progress = lambda message, fraction: messages.append((message, fraction))  # noqa: E731
    stream, out = run_backend(micro, references, "tensorrt", progress=progress)
    assert stream.steady_step.backend == "tensorrt"
    assert_close_to_golden(torch.stack(out), torch.stack(eager_frames), "tensorrt stand-in")
    assert len(fake_tensorrt.builds) == 1 and fake_tensorrt.builds[0]["strongly_typed"]
    assert ("TensorRT: Building engine", 1.0) in messages
    folder = micro.models_dir / "tensorrt"
    engine = next(folder.glob("rain_step-*.engine"))
    # TensorRT's own output goes to a log file beside the engine, named in the progress, not to the console.
    build_log = engine.with_suffix(".build.log")
    assert "fake build line 2" in build_log.read_text(encoding="utf-8")
    assert any(str(build_log) in message for message, _ in messages)
    manifest = engine.with_suffix(".json").read_text()
    for part in ('"gpu": "Stand-in GPU"', '"compute_capability": "9.0"', '"precision": "fp32"',
                 f'"tensorrt": "{fake_tensorrt.__version__}"', '"weights"', '"temporal_strength"'):
        assert part in manifest
    assert next(folder.glob("timing-*.cache")).read_bytes()

    micro.accelerated.clear()  # a new session: the engine comes from the cache, nothing is built
    run_backend(micro, references, "tensorrt")
    assert len(fake_tensorrt.builds) == 1

    micro.accelerated.clear()
    engine.write_bytes(b"not an engine")  # e.g. a TensorRT upgrade in place, or a truncated file
    with caplog.at_level(logging.WARNING):
        run_backend(micro, references, "tensorrt")
    assert len(fake_tensorrt.builds) == 2 and "building it again" in caplog.text
    assert fake_tensorrt.builds[1]["timing_entries_before"] == 1  # the timing cache carried over

    micro.accelerated.clear()
    stand_in_tensorrt["capability"] = (8, 9)  # another GPU: another engine
    run_backend(micro, references, "tensorrt")
    assert len(fake_tensorrt.builds) == 3 and len(list(folder.glob("rain_step-*.engine"))) == 2


def test_tensorrt_build_can_be_cancelled(micro, references, stand_in_tensorrt):
    micro.accelerated.clear()
    stand_in_tensorrt["capability"] = (7, 5)  # an engine not built yet (the ONNX graph is reused if exported)
    folder = micro.models_dir / "tensorrt"
    engines = set(folder.glob("*.engine"))
    stream = micro.open_stream(references[0], StreamSettings(seed=7))
    with pytest.raises(InterruptedError, match="cancelled"):
        backends.build_backend(micro, "tensorrt", stream.settings, SIZE, SIZE, stream.steady_constants(),
                               cancelled=lambda: True)
    assert set(folder.glob("*.engine")) == engines and not list(folder.glob("*.partial"))


def test_without_tensorrt_the_stream_falls_back_to_compiled_and_says_how_to_install(monkeypatch):
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",   # as on a GPU machine without TensorRT, with Triton
                        lambda name, *a: None if name == "tensorrt" else object() if name == "triton"
                        else real_find_spec(name, *a))
    said = []
    assert backends.resolve_backend("tensorrt", notify=said.append, device="cuda") == "compiled"
    assert "not installed" in said[0] and "extra 'tensorrt'" in said[0] and "'compiled' backend" in said[0]
    assert backends.resolve_backend("onnx", notify=said.append, device="cuda") == "onnx" and len(said) == 1


def test_a_broken_tensorrt_install_shows_its_import_error_not_not_installed(monkeypatch):
    import importlib
    import importlib.util
    real_import, real_find_spec = importlib.import_module, importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name in ("tensorrt", "triton") else real_find_spec(name, *a))

    def broken(name, *args, **kwargs):
        if name == "tensorrt":
            raise ImportError("libnvinfer.so.10: cannot open shared object file")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(importlib, "import_module", broken)
    said = []
    assert backends.resolve_backend("tensorrt", notify=said.append, device="cuda") == "compiled"
    assert "installed but failed to import" in said[0] and "libnvinfer.so.10" in said[0]
    assert "not installed" not in said[0]


def test_tensorrt_on_a_cpu_says_it_needs_an_nvidia_gpu(monkeypatch):
    monkeypatch.setattr(backends, "tensorrt_module", lambda: None)
    said = []
    assert backends.resolve_backend("tensorrt", notify=said.append, device="cpu") == "eager"
    assert "NVIDIA GPU" in said[0] and "cpu" in said[0]


def test_compiled_on_a_gpu_without_triton_falls_back_to_eager_once(monkeypatch):
    monkeypatch.setattr(backends, "triton_available", lambda: False)   # ComfyUI's Windows portable build
    said = []
    assert backends.resolve_backend("compiled", notify=said.append, device="cuda") == "eager"
    assert "Triton" in said[0] and len(said) == 1
    assert backends.resolve_backend("compiled", notify=said.append, device="cpu") == "compiled"  # C++ codegen
    with pytest.raises(ValueError, match="choose one of eager, compiled, onnx, tensorrt"):
        backends.resolve_backend("fast")


# -- what an engine is keyed by -----------------------------------------------------------------------------------
def test_the_engine_node_shows_build_stages_and_never_goes_back(monkeypatch):
    import importlib.util
    import types
    repo = Path(__file__).resolve().parent.parent
    name = "ComfyUI-RAIN-engine-progress"
    spec = importlib.util.spec_from_file_location(name, repo / "__init__.py", submodule_search_locations=[str(repo)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[name] = pack
    texts, values = [], []
    try:
        spec.loader.exec_module(pack)
        engine_nodes = sys.modules[f"{name}.nodes.engine_nodes"]
        monkeypatch.setattr(engine_nodes.host, "progress_text", lambda text, node_id=None: texts.append(text))
        bar = types.SimpleNamespace(update_absolute=lambda value, total=None, preview=None: values.append(value))
        monkeypatch.setattr(engine_nodes.host, "progress_bar", lambda total, node_id=None: bar)
        report = engine_nodes._progress_reporter("9")
        for message, fraction in [("exporting the stream step to ONNX", None),
                                  ("building the TensorRT engine (fp16, GPU); TensorRT's own output goes to x.log",
                                   None),
                                  ("TensorRT: Building engine", 0.0), ("TensorRT: Tactics (Building engine)", 0.9),
                                  ("TensorRT: Building engine", 0.5), ("TensorRT: Building engine", 1.0)]:
            report(message, fraction)
    finally:
        for key in [k for k in sys.modules if k.startswith(name)]:
            del sys.modules[key]
    # Off zero from the first stage, never backwards (a nested phase's 90 % does not move the bar), done at 99.
    assert values == [2, 20, 20, 20, 59, 99]
    assert texts[0].startswith("exporting") and "x.log" in texts[1] and texts[-1].endswith("100%")


def test_engine_cache_key_changes_with_each_part(micro, references):
    stream = micro.open_stream(references[0], StreamSettings())
    constants = stream.steady_constants()
    step = FusedStreamStep(micro.models.video_unet, micro.models.pose_guider, micro.models.taesdv,
                           [n for n in constants if n != "temb"])
    inputs, outputs = step.specs(SIZE, SIZE, constants)

    def key(**changes):
        graph = dict(weights="w1", temporal_strength=1.0, opset=18)
        engine = dict(tensorrt_version="10.3.0", gpu="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                      precision="fp16")
        specs = changes.pop("specs", (inputs, outputs))
        graph.update({k: v for k, v in changes.items() if k in graph})
        engine.update({k: v for k, v in changes.items() if k in engine})
        return cache.cache_key(cache.engine_parts(cache.graph_parts(*specs, **graph), **engine))

    other_size = step.specs(2 * SIZE, SIZE, constants)
    two_references = {**constants, **{n: torch.cat([v, v], 1) for n, v in constants.items() if n.endswith(".key")
                                      or n.endswith(".value")}}
    variants = [key(), key(tensorrt_version="10.4.0"), key(gpu="NVIDIA GeForce RTX 4090"),
                key(compute_capability=(8, 9)), key(precision="bf16"), key(weights="w2"),
                key(temporal_strength=0.8), key(opset=19), key(specs=other_size),
                key(specs=step.specs(SIZE, SIZE, two_references))]
    assert len(set(variants)) == len(variants)
    assert key() == key()


def test_weights_fingerprint_follows_every_weight():
    models = random_stream_models((32, 32), layers_per_block=1, seed=4)
    parts = {"video_unet": models.video_unet, "pose_guider": models.pose_guider, "taesdv": models.taesdv}
    first = cache.weights_fingerprint(parts)
    assert cache.weights_fingerprint(parts) == first
    with torch.no_grad():
        models.taesdv.decoder[1].bias[3] += 1e-3
    assert cache.weights_fingerprint(parts) != first


def test_manifest_must_match_to_reuse_an_artefact(tmp_path):
    store = cache.ArtefactCache(tmp_path)
    parts = {"a": 1, "shape": [1, 2]}
    path = store.store(parts, ".engine", b"bytes")
    assert store.find(parts, ".engine") == path and path.read_bytes() == b"bytes"
    store.manifest_path(parts).write_text('{"parts": {"a": 2}}')
    assert store.find(parts, ".engine") is None
    assert not list(tmp_path.glob("*.partial"))
