"""The pipeline on reduced random models in the released file layout: loading, fusing, streaming, errors."""

from rain.convert import convert_to_safetensors
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from rain import weights
from rain.pipeline import RainPipeline, to_pil
from rain.sampling.stream import StreamSettings


def poses(count, height=64, width=64, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        y, x = rng.integers(8, height - 16), rng.integers(8, width - 16)
        frame[y:y + 8, x:x + 8] = rng.integers(0, 255, 3)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def reference(tiny_pipeline):
    return tiny_pipeline.fuse_reference(np.full((90, 70, 3), 200, np.uint8), 64, 64)


def test_render_returns_every_frame_in_comfy_layout(tiny_pipeline, reference):
    out = tiny_pipeline.render(poses(6), reference, StreamSettings(decoder="taesdv"))
    assert out.shape == (6, 64, 64, 3) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1 and out.std() > 0


def test_same_seed_same_video_and_settings_matter(tiny_pipeline, reference):
    frames = poses(4)
    base = tiny_pipeline.render(frames, reference, StreamSettings(seed=1))
    assert torch.equal(base, tiny_pipeline.render(frames, reference, StreamSettings(seed=1)))
    for changed in (StreamSettings(seed=2), StreamSettings(seed=1, guidance_scale=5.0),
                    StreamSettings(seed=1, temporal_strength=0.0), StreamSettings(seed=1, decoder="vae")):
        assert not torch.allclose(base, tiny_pipeline.render(frames, reference, changed), atol=1e-6), changed


def test_non_square_frames(tiny_pipeline, reference):
    out = tiny_pipeline.render(poses(5, 64, 96), reference)
    assert out.shape == (5, 64, 96, 3)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "I;16"])
def test_reference_images_of_any_mode(tiny_pipeline, mode):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3), np.uint8)).convert(mode) \
        if mode != "I;16" else Image.fromarray(np.full((50, 40), 300, np.uint16))
    reference = tiny_pipeline.fuse_reference(image, 64, 64)
    assert reference.features["d00"].shape == (1, 64, 32)


def test_reference_from_comfy_image_tensor_and_several_references(tiny_pipeline):
    batch = torch.rand(2, 40, 30, 3)
    single = tiny_pipeline.fuse_reference(batch[:1], 64, 64)
    double = tiny_pipeline.fuse_reference(batch, 64, 64)
    assert double.features["d00"].shape[1] == 2 * single.features["d00"].shape[1]
    assert double.count == 2


def test_fusing_a_new_reference_replaces_the_old(tiny_pipeline):
    frames = poses(4)
    first = tiny_pipeline.fuse_reference(np.zeros((64, 64, 3), np.uint8), 64, 64)
    second = tiny_pipeline.fuse_reference(np.full((64, 64, 3), 255, np.uint8), 64, 64)
    a = tiny_pipeline.render(frames, first)
    b = tiny_pipeline.render(frames, second)
    assert not torch.allclose(a, b)
    assert torch.equal(a, tiny_pipeline.render(frames, first))  # nothing of `second` lingers


def test_reference_is_refit_to_the_pose_size(tiny_pipeline, reference):
    out = tiny_pipeline.render(poses(4, 72, 64), reference)
    assert out.shape == (4, 72, 64, 3)


def test_bad_inputs_get_clear_errors(tiny_pipeline, reference):
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_pipeline.render(poses(4, 60, 64), reference)
    nan = np.full((64, 64, 3), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        tiny_pipeline.render([nan], reference)
    with pytest.raises(ValueError, match="NaN"):
        to_pil(torch.full((8, 8, 3), float("inf")))
    with pytest.raises(ValueError, match="no pose frames"):
        tiny_pipeline.render([], reference)
    with pytest.raises(ValueError, match="change size"):
        tiny_pipeline.render(poses(1) + poses(1, 72, 64), reference)


def test_live_stream_push_and_finish(tiny_pipeline, reference):
    stream = tiny_pipeline.open_stream(reference, StreamSettings())
    emitted = [len(stream.push(torch.from_numpy(f).permute(2, 0, 1) / 255)) for f in poses(16)]
    assert sum(emitted) == 4 and emitted[-1] == 4
    assert len(stream.finish()) == 12


def test_wrong_checkpoint_is_named(tiny_models_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    shutil.copy(models / "pose_guider.pth", models / "motion_unet.pth")
    with pytest.raises(weights.WeightsError, match="looks like a pose_guider"):
        RainPipeline.from_models_dir(models)


def test_missing_keys_are_an_error_naming_file_and_keys(tiny_models_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    state = torch.load(models / "motion_unet.pth", weights_only=True)
    dropped = "time_embedding.cond_proj.weight"
    del state[dropped]
    torch.save(state, models / "motion_unet.pth")
    with pytest.raises(weights.WeightsError) as error:
        RainPipeline.from_models_dir(models)
    assert dropped in str(error.value) and "motion_unet.pth" in str(error.value)


def test_missing_files_are_all_named_with_the_fix(tmp_path):
    (tmp_path / "pose_guider.pth").write_bytes(b"")
    with pytest.raises(weights.MissingWeightsError) as error:
        RainPipeline.from_models_dir(tmp_path)
    message = str(error.value)
    for name in ("motion_unet", "reference_unet", "taesdv", "sd-vae-ft-mse", "image_encoder"):
        assert name in message
    assert "python -m rain download" in message


def test_converted_safetensors_load_to_the_same_model(tiny_models_dir, tmp_path, reference):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    for name in ("reference_unet", "motion_unet", "pose_guider", "taesdv"):
        convert_to_safetensors(models / f"{name}.pth")
        (models / f"{name}.pth").unlink()
    converted = RainPipeline.from_models_dir(models)
    original = RainPipeline.from_models_dir(tiny_models_dir)
    for a, b in zip(converted.models.video_unet.state_dict().values(),
                    original.models.video_unet.state_dict().values()):
        assert torch.equal(a, b)
