"""The model features training needs (batched references, gradients through the reference, gradient checkpointing,
motion modules off, one guidance scale per clip), on reduced random models. Inference stays as it was: the golden
tests check that bit for bit."""

import json

import pytest
import torch

from parity import assert_close_to_golden
from rain.devtools import TINY_CONFIG, randomise_weights
from rain.models.embeddings import guidance_scale_embedding
from rain.models.motion_module import MotionModule
from rain.models.reference_unet import ReferenceUNet
from rain.models.video_unet import UNetConfig, VideoUNet
from rain.training.model_sets import reference_dead_parameters


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Small tensors on a shared 2-core machine: a second OpenMP thread mostly waits for the first.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unets():
    widths = tuple(json.loads(TINY_CONFIG.read_text())["unet_block_out_channels"])
    config = UNetConfig(block_out_channels=widths)
    generator = torch.Generator().manual_seed(0)
    reference, denoiser = ReferenceUNet.from_config_dataclass(config), VideoUNet(config)
    randomise_weights(reference, generator)
    randomise_weights(denoiser, generator)
    return reference.eval().requires_grad_(False), denoiser.eval().requires_grad_(False)


def _inputs(batch, frames, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, frames, 8, 8, generator=generator),
            torch.randint(0, 1000, (batch, frames), generator=generator),
            torch.randn(batch, 1, 768, generator=generator),
            torch.randn(batch, 4, 8, 8, generator=generator))


def test_a_batch_of_clips_attends_to_its_own_references(unets):
    reference_unet, denoiser = unets
    sample, timesteps, context, reference_latents = _inputs(2, 3)
    with torch.no_grad():
        features = reference_unet.reference_features(reference_latents, context)
        denoiser.set_reference(features)
        batched = denoiser(sample, timesteps, context)
        for clip in range(2):
            denoiser.set_reference({k: v[clip:clip + 1] for k, v in features.items()})
            alone = denoiser(sample[clip:clip + 1], timesteps[clip:clip + 1], context[clip:clip + 1])
            assert_close_to_golden(batched[clip:clip + 1], alone, name=f"clip {clip}")
    denoiser.set_reference(None)


def test_reference_features_for_training_equal_inference_and_carry_gradients(unets):
    reference_unet, _ = unets
    _, _, _, latents = _inputs(1, 1)
    # Three context tokens: with RAIN's one (the CLIP image embedding) the softmax of every cross-attention is
    # identically 1 and to_q/to_k get a gradient that is zero up to rounding, which proves nothing either way.
    context = torch.randn(1, 3, 768, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference_unet.reference_features(latents, context)
    reference_unet.requires_grad_(True)
    try:
        features = reference_unet.reference_features_for_training(latents, context)
        assert list(features) == list(expected)
        for name in expected:
            assert torch.equal(features[name], expected[name]), name
        sum(f.square().sum() for f in features.values()).backward()
        # What no feature depends on is exactly the set stage 1 freezes (several GPUs need it frozen). "Depends"
        # is structural: outside the autograd graph, no gradient at all. (Some parameters in the graph have a
        # gradient that is mathematically zero, e.g. a bias a one-channel-per-group GroupNorm removes; their
        # computed value is rounding noise, so the test never looks at its size.)
        outside_graph = {n for n, p in reference_unet.named_parameters() if p.grad is None}
        assert outside_graph == reference_dead_parameters(reference_unet)
        attn2 = reference_unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
        assert attn2.to_q.weight.grad.abs().max() > 1e-3 and attn2.to_k.weight.grad.abs().max() > 1e-3
    finally:
        reference_unet.zero_grad(set_to_none=True)
        reference_unet.requires_grad_(False)


def test_reference_projections_are_not_cached_while_training(unets):
    reference_unet, denoiser = unets
    sample, timesteps, context, latents = _inputs(1, 2)
    with torch.no_grad():
        features = reference_unet.reference_features(latents, context)
    tokens = {k: v.clone().requires_grad_(True) for k, v in features.items()}
    denoiser.set_reference(tokens)
    first = denoiser(sample, timesteps, context)
    first.square().mean().backward()
    assert all(t.grad is not None and t.grad.any() for t in tokens.values())
    projection = denoiser.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_k
    with torch.no_grad():
        projection.weight.mul_(1.5)
    try:
        changed = denoiser(sample, timesteps, context)
        assert not torch.allclose(first, changed), "a changed projection must change the output while training"
    finally:
        with torch.no_grad():
            projection.weight.div_(1.5)
        denoiser.set_reference(None)


def test_gradient_checkpointing_gives_the_same_gradients(unets):
    reference_unet, denoiser = unets
    sample, timesteps, context, latents = _inputs(1, 2)
    results = []
    for checkpointing in (False, True):
        reference_unet.requires_grad_(True)
        denoiser.requires_grad_(True)
        denoiser.enable_gradient_checkpointing(checkpointing)
        if checkpointing:
            reference_unet.enable_gradient_checkpointing()
        else:
            reference_unet.disable_gradient_checkpointing()
        denoiser.set_reference(reference_unet.reference_features_for_training(latents, context))
        loss = denoiser(sample, timesteps, context).square().mean()
        loss.backward()
        grads = {n: p.grad.clone() for m in (reference_unet, denoiser) for n, p in m.named_parameters()
                 if p.grad is not None}
        results.append((loss.detach(), grads))
        for module in (reference_unet, denoiser):
            module.zero_grad(set_to_none=True)
            module.requires_grad_(False)
    denoiser.enable_gradient_checkpointing(False)
    reference_unet.disable_gradient_checkpointing()
    denoiser.set_reference(None)
    (loss_plain, plain), (loss_checkpointed, checkpointed) = results
    assert_close_to_golden(loss_checkpointed, loss_plain, name="loss")
    assert set(plain) == set(checkpointed)
    for name in plain:
        assert_close_to_golden(checkpointed[name], plain[name], name=name)


def test_motion_modules_off_make_frames_independent_and_cost_nothing(unets):
    _, denoiser = unets
    sample, timesteps, context, _ = _inputs(1, 3)
    calls = []
    hooks = [m.temporal_transformer.register_forward_hook(lambda *a: calls.append(1))
             for m in denoiser.modules() if isinstance(m, MotionModule)]
    denoiser.set_motion_modules_enabled(False)
    try:
        with torch.no_grad():
            together = denoiser(sample, timesteps, context)
            for frame in range(3):
                alone = denoiser(sample[:, :, frame:frame + 1], timesteps[:, frame:frame + 1], context)
                assert_close_to_golden(together[:, :, frame:frame + 1], alone, name=f"frame {frame}")
        assert not calls
        denoiser.set_motion_modules_enabled(True)
        with torch.no_grad():
            coupled = denoiser(sample, timesteps, context)
        assert calls and not torch.allclose(coupled, together)
    finally:
        denoiser.set_motion_modules_enabled(True)
        for hook in hooks:
            hook.remove()


def test_one_guidance_scale_per_clip(unets):
    _, denoiser = unets
    sample, timesteps, context, _ = _inputs(2, 2)
    scales = (2.0, 3.5)
    embeddings = torch.cat([guidance_scale_embedding(w) for w in scales])
    with torch.no_grad():
        batched = denoiser(sample, timesteps, context, guidance_embedding=embeddings)
        for clip, w in enumerate(scales):
            alone = denoiser(sample[clip:clip + 1], timesteps[clip:clip + 1], context[clip:clip + 1],
                             guidance_embedding=guidance_scale_embedding(w))
            assert_close_to_golden(batched[clip:clip + 1], alone, name=f"clip {clip}")
