"""The whole stream against the official run (golden §4.3 and case j), with the official noise injected."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from parity import assert_close_to_golden
from rain.accel.fused_step import FusedStreamStep, steady_constants, zero_memories
from rain.pipeline import to_pose_tensor
from rain.sampling.stream import StreamSettings


@pytest.fixture(scope="module")
def stream_data(golden_dir):
    tensors = load_file(golden_dir / "stream" / "stream.safetensors")
    meta = json.loads((golden_dir / "stream" / "stream.json").read_text())
    poses = sorted((golden_dir / "stream" / "pose").glob("frame_*.png"))
    frames = [to_pose_tensor(np.asarray(Image.open(p).convert("RGB"))) for p in poses]
    noise = [tensors[entry["key"]] for entry in meta["noise_draw_order"]]
    return tensors, meta, frames, noise


@pytest.fixture(scope="module")
def reference(golden_dir, golden_pipeline, stream_data):
    height, width = stream_data[2][0].shape[1:]
    return golden_pipeline.fuse_reference(Image.open(golden_dir / "inputs" / "reference_image.png"), height, width)


@pytest.mark.parametrize("decoder", ["vae", "taesdv"])
def test_stream_reproduces_official_run(stream_data, reference, golden_pipeline, decoder):
    tensors, meta, frames, noise = stream_data
    settings = StreamSettings(decoder=decoder, guidance_scale=meta["guidance_scale"], seed=meta["seed"], drain=False)
    stream = golden_pipeline.open_stream(reference, settings,
                                         noise=noise, record_calls=True)
    out = []
    for frame in frames:
        out.extend(stream.push(frame))
    assert len(stream.calls) == len(meta["unet_calls"])
    for index, record in enumerate(stream.calls, start=1):
        official = meta["unet_calls"][index - 1]
        assert record.timesteps.tolist() == official["timesteps"], f"call {index} timesteps"
        assert_close_to_golden(record.sample, tensors[f"call{index:02d}_unet_sample"], f"call {index} sample")
        assert_close_to_golden(record.model_output, tensors[f"call{index:02d}_unet_v"], f"call {index} v")
        window = tensors[f"call{index:02d}_window_after"]
        if record.window_after is not None:
            assert_close_to_golden(record.window_after, window, f"call {index} window")
    emissions = {int(e["call"]): e["output_frames"] for e in meta["emissions"]}
    for index, record in enumerate(stream.calls, start=1):
        assert record.emitted == emissions.get(index, []), f"call {index} emitted frames"
    golden_frames = tensors["vae_frames" if decoder == "vae" else "taesdv_frames"]
    assert_close_to_golden(torch.stack(out), golden_frames, f"{decoder} frames")


def test_emitted_latents(stream_data, reference, golden_pipeline):
    tensors, meta, frames, noise = stream_data
    settings = StreamSettings(decoder="none", guidance_scale=meta["guidance_scale"], seed=meta["seed"], drain=False)
    stream = golden_pipeline.open_stream(reference, settings, noise=noise)
    latents = [latent for frame in frames for latent in stream.push(frame)]
    assert_close_to_golden(torch.stack(latents, dim=1)[None], tensors["emitted_latents"])


def test_fused_step_two_calls(golden_dir, golden_pipeline, stream_data):
    """Golden case j (the official fused TensorRT-path module) through our fused step. The official graph carries
    a 16-frame window whose last group is the noise appended at the end of the previous call; ours takes that
    group as ``new_latents`` of this call (the eager stream's order), so official call k maps to: latents =
    sample[:12], new_latents = sample[12:], step noise = add_noise, and its latents output = ours + new_noise."""
    case = load_file(golden_dir / "cases" / "j_fused_trt_step.safetensors")
    refs = load_file(golden_dir / "cases" / "g_denoising_unet_forward.safetensors")
    models = golden_pipeline.models
    models.video_unet.set_temporal_strength(1.0)
    meta = stream_data[1]
    # The reference enters as inputs: projected keys/values and cross-attention outputs, computed once.
    constants = steady_constants(models.video_unet, {k[4:]: v for k, v in refs.items() if k.startswith("ref_")},
                                 refs["encoder_hidden_states"], guidance_scale=meta["guidance_scale"])
    attention = [name for name in constants if name != "temb"]
    step = FusedStreamStep(models.video_unet, models.pose_guider, models.taesdv, attention)
    frames = stream_data[2]
    height, width = frames[0].shape[1:]
    group = case["call1_in_new_noise"].shape[2]
    held = case["call1_in_pose_cond_fea"].shape[2]  # pose features of the older groups
    sample = case["call1_in_sample"]
    latents, new_latents = sample[:, :, :held], sample[:, :, held:]
    pose_features = case["call1_in_pose_cond_fea"]
    memories = zero_memories(models.taesdv, height, width, "cpu", torch.float32)
    for call in (1, 2):
        first = held + group * (call - 1)
        pose = torch.stack(frames[first:first + group], dim=1)[None]
        with torch.no_grad():
            image, latents, pose_features, *memories = step(latents, pose_features, pose, new_latents,
                                                            case[f"call{call}_in_add_noise"], constants["temb"],
                                                            *memories, *(constants[n] for n in attention))
        new_latents = case[f"call{call}_in_new_noise"]
        assert_close_to_golden(image[None], case[f"call{call}_out_image"], f"call {call} image")
        assert_close_to_golden(torch.cat([latents, new_latents], dim=2), case[f"call{call}_out_latents"],
                               f"call {call} latents")
        assert_close_to_golden(pose_features, case[f"call{call}_out_pose_cond_fea"], f"call {call} pose")
        stored = [k for k in range(len(memories)) if f"call{call}_out_omem{k}" in case]  # the set keeps a few
        assert stored
        for k in stored:
            assert_close_to_golden(memories[k], case[f"call{call}_out_omem{k}"], f"call {call} omem{k}")
