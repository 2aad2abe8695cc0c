"""Stream bookkeeping with stand-in models whose output tells which input frame a latent came from."""

import pytest
import torch

from rain.sampling.lcm import alphas_cumprod
from rain.sampling.noise import InjectedNoise, SeededNoise
from rain.sampling.stream import RainStream, StreamSettings, group_timesteps

TABLE = alphas_cumprod()


class Tagged:
    """Pose frame i is the constant image i/1000. The fake denoiser predicts the v that makes x̂₀ equal
    to the frame's tag, so a frame that comes out clean carries its input index."""

    def __init__(self):
        self.pose_calls = 0
        self.unet_calls = []

    def pose_features(self, poses):
        self.pose_calls += 1
        return poses[:, :1, :, ::8, ::8] * 1000

    def denoise(self, sample, timesteps, pose_features):
        self.unet_calls.append(timesteps[0].tolist())
        alpha = TABLE[timesteps][:, None, :, None, None]
        target = pose_features.expand_as(sample)
        return (alpha.sqrt() * sample - target) / (1 - alpha).sqrt()

    @staticmethod
    def decode(latents, memory):
        return latents[:, 0].mean(dim=(1, 2)), memory


def make_stream(models, **settings):
    return RainStream(pose_features=models.pose_features, denoise=models.denoise, decode=models.decode,
                      noise=SeededNoise(0), latent_shape=(4, 2, 2), settings=StreamSettings(**settings))


def frame(i):
    return torch.full((3, 16, 16), i / 1000)


@pytest.mark.parametrize("count", [1, 3, 4, 5, 15, 16, 17, 33])
@pytest.mark.parametrize("groups,group_size,steps", [(4, 4, 1), (3, 2, 1), (2, 4, 2), (1, 1, 1)])
def test_every_frame_comes_out_once_in_order(count, groups, group_size, steps):
    models = Tagged()
    stream = make_stream(models, num_groups=groups, frames_per_group=group_size, steps_per_group=steps)
    out = list(stream.run(frame(i) for i in range(count)))
    assert len(out) == count
    assert torch.allclose(torch.stack(out), torch.arange(count, dtype=torch.float32), atol=2e-3)
    assert models.pose_calls == -(-count // group_size)  # pose features once per group, never again


def test_soft_start_then_one_group_per_call():
    models = Tagged()
    stream = make_stream(models)
    emitted_per_call = [len(stream.push([frame(4 * c + k) for k in range(4)])) for c in range(8)]
    assert emitted_per_call == [0, 0, 0, 4, 4, 4, 4, 4]
    assert models.unet_calls[:4] == [[999] * 4, [749] * 4 + [999] * 4, [499] * 4 + [749] * 4 + [999] * 4,
                                     [249] * 4 + [499] * 4 + [749] * 4 + [999] * 4]
    assert stream.latency_frames == 12
    drained = stream.finish()
    assert len(drained) == 12
    assert models.unet_calls[-3:] == [[249] * 4 + [499] * 4 + [749] * 4, [249] * 4 + [499] * 4, [249] * 4]


def test_short_input_drains_from_its_own_levels():
    models = Tagged()
    stream = make_stream(models)
    out = list(stream.run(frame(i) for i in range(8)))
    # Two groups only: 999 → 749 → ... each group keeps its own level during the drain.
    assert models.unet_calls == [[999] * 4, [749] * 4 + [999] * 4, [499] * 4 + [749] * 4, [249] * 4 + [499] * 4,
                                 [249] * 4]
    assert len(out) == 8


def test_several_steps_per_group_use_intermediate_timesteps():
    models = Tagged()
    stream = make_stream(models, steps_per_group=2)
    stream.push([frame(i) for i in range(16)])
    assert group_timesteps(8, 4, stream.scheduler.timesteps) == [249, 499, 749, 999]
    assert models.unet_calls[-2:] == [[249] * 4 + [499] * 4 + [749] * 4 + [999] * 4,
                                      [124] * 4 + [374] * 4 + [624] * 4 + [874] * 4]


def test_state_stays_bounded_on_a_long_stream():
    models = Tagged()
    stream = make_stream(models)
    for i in range(400):
        stream.push(frame(i % 50))
        assert stream.state.groups <= 4 and len(stream.state.pending) < 4
        if stream.state.groups:
            assert stream.state.latents.shape[2] == 4 * stream.state.groups
    assert stream.calls == [] and stream.frames_out == 400 - 12


def test_injected_noise_order_and_exhaustion():
    shapes = []

    def noise(shape, kind):
        shapes.append((kind, tuple(shape)))
        return torch.zeros(shape)
    models = Tagged()
    stream = RainStream(pose_features=models.pose_features, denoise=models.denoise, decode=models.decode, noise=noise,
                        latent_shape=(4, 2, 2), settings=StreamSettings())
    stream.push([frame(i) for i in range(8)])
    assert shapes == [("new_latents", (1, 4, 4, 2, 2)), ("step_noise", (1, 4, 4, 2, 2)),
                      ("new_latents", (1, 4, 4, 2, 2)), ("step_noise", (1, 4, 8, 2, 2))]
    injected = InjectedNoise([torch.zeros(1, 4, 4, 2, 2)])
    with pytest.raises(ValueError, match="ran out"):
        RainStream(pose_features=models.pose_features, denoise=models.denoise, decode=models.decode,
                   noise=injected, latent_shape=(4, 2, 2), settings=StreamSettings()).push(
            [frame(i) for i in range(4)])


def test_seeded_noise_is_reproducible():
    a, b = SeededNoise(7), SeededNoise(7)
    assert torch.equal(a((2, 3), "x"), b((2, 3), "x"))
    assert not torch.equal(SeededNoise(8)((2, 3), "x"), SeededNoise(7)((2, 3), "x"))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="frames_per_group"):
        StreamSettings(frames_per_group=0)
    with pytest.raises(ValueError, match="32 positions"):
        StreamSettings(frames_per_group=8, num_groups=5)
    with pytest.raises(ValueError, match="decoder"):
        StreamSettings(decoder="jpeg")
