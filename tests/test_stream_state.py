"""The stream state: save and restore mid-stream (exact), the fused steady step (same frames as the eager
call), a reference swapped mid-stream, and non-finite values stopped with the frame named."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from parity import assert_close_to_golden
from rain.accel.fused_step import FusedStreamStep
from rain.accel.runners import eager_steady_step
from rain.pipeline import to_pose_tensor
from rain.sampling.noise import SeededNoise
from rain.sampling.state import StreamState
from rain.sampling.stream import NonFiniteError, RainStream, StreamSettings


def pose_tensors(count, size=64, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        frame = np.zeros((size, size, 3), np.uint8)
        y, x = rng.integers(8, size - 16, 2)
        frame[y:y + 8, x:x + 8] = rng.integers(0, 255, 3)
        frames.append(to_pose_tensor(frame))
    return frames


@pytest.fixture(scope="module")
def reference(tiny_pipeline):
    return tiny_pipeline.fuse_reference(np.full((90, 70, 3), 200, np.uint8), 64, 64)


@pytest.mark.parametrize("decoder", ["taesdv", "vae", "none"])
@pytest.mark.parametrize("stop_after", [13, 22])  # inside a group, and after the window has filled
def test_a_restored_state_continues_the_stream_exactly(tiny_pipeline, reference, tmp_path, decoder, stop_after):
    frames = pose_tensors(30)
    settings = StreamSettings(decoder=decoder, seed=5)
    whole = list(tiny_pipeline.open_stream(reference, settings).run(frames))

    first = tiny_pipeline.open_stream(reference, settings)
    before = [out for frame in frames[:stop_after] for out in first.push(frame)]
    tensors, meta = first.state.to_tensors()
    save_file(tensors, str(tmp_path / "state.safetensors"))
    del first  # nothing of the first stream object survives but the file and the metadata
    state = StreamState.from_tensors(load_file(str(tmp_path / "state.safetensors")), meta,
                                     device=tiny_pipeline.device, dtype=tiny_pipeline.dtype)
    resumed = tiny_pipeline.open_stream(reference, settings, state=state)
    assert resumed.frames_in == stop_after and resumed.frames_out == len(before)
    after = list(resumed.run(frames[stop_after:]))
    assert len(before) + len(after) == len(whole) == 30
    for index, (a, b) in enumerate(zip(before + after, whole)):
        assert torch.equal(a, b), f"frame {index}"


@pytest.mark.parametrize("decoder", ["taesdv", "vae"])
def test_fused_steady_step_gives_the_eager_frames(tiny_pipeline, reference, decoder):
    frames = pose_tensors(26)
    settings = StreamSettings(decoder=decoder, seed=3)
    eager = list(tiny_pipeline.open_stream(reference, settings).run(frames))
    models = tiny_pipeline.models
    stream = tiny_pipeline.open_stream(reference, settings)
    constants = stream.steady_constants()
    fused = FusedStreamStep(models.video_unet, models.pose_guider, models.taesdv if decoder == "taesdv" else None,
                            [name for name in constants if name != "temb"])
    stream.use_steady_step(eager_steady_step(fused, 64, 64, constants))
    out = list(stream.run(frames))
    assert stream.unet_calls == 10 and not stream.state.groups  # 7 calls for 26 frames, then 3 drain calls
    assert_close_to_golden(torch.stack(out), torch.stack(eager), f"{decoder} frames")


def test_fused_step_refuses_what_it_cannot_do(tiny_pipeline, reference):
    models = tiny_pipeline.models
    constants = tiny_pipeline.open_stream(reference, StreamSettings()).steady_constants()
    fused = eager_steady_step(FusedStreamStep(models.video_unet, models.pose_guider, None,
                                              [name for name in constants if name != "temb"]), 64, 64, constants)
    with pytest.raises(ValueError, match="steps_per_group=1"):
        tiny_pipeline.open_stream(reference, StreamSettings(steps_per_group=2), steady_step=fused)
    with pytest.raises(ValueError, match="single-token"):
        FusedStreamStep(models.video_unet, models.pose_guider, None, [])


def test_reference_swapped_mid_stream(tiny_pipeline, reference):
    other = tiny_pipeline.fuse_reference(np.full((40, 40, 3), 30, np.uint8), 64, 64)
    frames = pose_tensors(24)
    settings = StreamSettings(seed=9)
    plain = list(tiny_pipeline.open_stream(reference, settings).run(frames))
    stream = tiny_pipeline.open_stream(reference, settings)
    out = [o for frame in frames[:16] for o in stream.push(frame)]
    stream.set_reference(other)
    out += list(stream.run(frames[16:]))
    assert len(out) == 24
    assert all(torch.equal(a, b) for a, b in zip(out[:4], plain[:4]))   # finished before the swap
    assert not torch.allclose(torch.stack(out[8:]), torch.stack(plain[8:]))


def test_non_finite_values_stop_the_stream_naming_the_frames():
    calls = []

    def denoise(sample, timesteps, features):
        calls.append(1)
        return torch.full_like(sample, float("nan")) if len(calls) == 2 else torch.zeros_like(sample)

    stream = RainStream(pose_features=lambda poses: poses[:, :1, :, ::8, ::8], denoise=denoise,
                        decode=lambda latents, memory: (latents[:, :3].permute(0, 2, 3, 1), memory),
                        noise=SeededNoise(0), latent_shape=(4, 2, 2), settings=StreamSettings(decoder="vae"))
    with pytest.raises(NonFiniteError, match=r"NaN or infinite latents for frames 0–3 .*bfloat16"):
        stream.run([torch.zeros(3, 16, 16)] * 20).__next__()


def test_non_finite_decoder_output_names_the_frame():
    stream = RainStream(pose_features=lambda poses: poses[:, :1, :, ::8, ::8],
                        denoise=lambda sample, timesteps, features: torch.zeros_like(sample),
                        decode=lambda latents, memory: (torch.full((len(latents), 16, 16, 3), float("inf")), memory),
                        noise=SeededNoise(0), latent_shape=(4, 2, 2),
                        settings=StreamSettings(frames_per_group=1, num_groups=1))
    with pytest.raises(NonFiniteError, match="infinite frames for frame 0"):
        stream.push(torch.zeros(3, 16, 16))


def test_injected_noise_cannot_be_saved(tiny_pipeline, reference):
    stream = tiny_pipeline.open_stream(reference, StreamSettings(), noise=[torch.zeros(1, 4, 4, 8, 8)] * 4)
    with pytest.raises(ValueError, match="injected"):
        stream.state.to_tensors()
