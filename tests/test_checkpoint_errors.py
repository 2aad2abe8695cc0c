"""Bad checkpoint files, each with one message that names the file, what is wrong and what to do.

Reduced-size files come from ``rain.devtools`` (the ``tiny_models_dir`` fixture); released-size files are
manifests turned into shapes on the meta device, so no real weights and no memory are needed.
"""

from rain.convert import convert_to_safetensors
import logging
import shutil

import pytest
import safetensors.torch
import torch

from rain import loading, weights
from rain.cli import main
from rain.models.pose_guider import PoseGuider, PoseGuiderConfig
from rain.pipeline import RainPipeline

WIDTH_KEY = "down_blocks.1.resnets.0.conv1.weight"
PROJ_KEY = "down_blocks.1.attentions.0.proj_in.weight"


@pytest.fixture(scope="module")
def tiny_unet(tiny_models_dir):
    return torch.load(tiny_models_dir / "motion_unet.pth", weights_only=True)


def tiny_pose_guider() -> dict[str, torch.Tensor]:
    guider = PoseGuider(PoseGuiderConfig(conditioning_embedding_channels=32))
    return {k: v.detach().clone() for k, v in guider.state_dict().items()}


def released(name: str, **replaced) -> dict[str, torch.Tensor]:
    """The released file's keys and shapes (meta tensors), with some shapes replaced."""
    shapes = {**weights.manifest_shapes(name), **replaced}
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


# ---- training-wrapper prefixes --------------------------------------------------------------------------

@pytest.mark.parametrize("container", ["state_dict", "plain"])
def test_data_parallel_prefix_is_stripped_and_said(tmp_path, caplog, container):
    sd = tiny_pose_guider()
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    path = tmp_path / "pose_guider.pth"
    torch.save({"state_dict": wrapped, "epoch": 7} if container == "state_dict" else wrapped, path)
    with caplog.at_level(logging.WARNING, logger="rain.weights"):
        loaded = weights.load_state_dict(path)
    assert set(loaded) == set(sd)
    [record] = [r for r in caplog.records if "module." in r.getMessage()]
    message = record.getMessage()
    assert str(path) in message and "DataParallel" in message and "prefix removed" in message
    assert f"python -m rain convert {path}" in message
    guider = loading.pose_guider_from_state_dict(loaded, source=path)
    assert torch.equal(guider.conv_out.weight, sd["conv_out.weight"])


def test_compile_and_data_parallel_prefixes_both_go(tmp_path, caplog):
    sd = tiny_pose_guider()
    path = tmp_path / "pose_guider.safetensors"
    safetensors.torch.save_file({f"module._orig_mod.{k}": v for k, v in sd.items()}, path)
    with caplog.at_level(logging.WARNING, logger="rain.weights"):
        assert set(weights.load_state_dict(path)) == set(sd)
    messages = [r.getMessage() for r in caplog.records]
    assert any("'module.'" in m for m in messages) and any("torch.compile" in m for m in messages)
    assert not any("rain convert" in m for m in messages)  # already safetensors: nothing to suggest


def test_prefix_on_some_keys_only_is_left_alone(tmp_path):
    sd = tiny_pose_guider()
    sd["module.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "x.pth")
    assert "module.extra" in weights.load_state_dict(tmp_path / "x.pth")


# ---- empty files --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, content", [("taesdv.safetensors", None), ("taesdv.pth", {}),
                                           ("taesdv.ckpt", {"state_dict": {}})])
def test_file_without_tensors_says_so(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        safetensors.torch.save_file({}, path)  # a valid header listing zero tensors
    else:
        torch.save(content, path)
    with pytest.raises(weights.WeightsError) as error:
        weights.load_state_dict(path)
    message = str(error.value)
    assert message.startswith(f"{path} holds no tensors")
    assert f"python -m rain download --models-dir {tmp_path}" in message


# ---- shapes that do not fit, checked before anything is built ---------------------------------------------

def test_width_off_the_norm_groups_names_file_key_and_shapes(tiny_unet, tmp_path):
    bad = {**tiny_unet, WIDTH_KEY: torch.zeros(60, 32, 3, 3)}
    path = tmp_path / "motion_unet.pth"
    torch.save(bad, path)
    with pytest.raises(weights.WeightsError) as error:
        loading.video_unet_from_state_dict(weights.load_state_dict(path), source=path)
    message = str(error.value)
    assert f"Weights file {path} does not fit the motion_unet model" in message
    assert f"{WIDTH_KEY} has shape [60, 32, 3, 3]" in message and "multiple of the 32 GroupNorm groups" in message
    assert "num_channels" not in message


@pytest.mark.parametrize("key, shape", [("conv_in.weight", lambda s: (s[0], 9, *s[2:])),    # an inpainting UNet
                                         ("conv_out.weight", lambda s: (3, *s[1:]))])
def test_latent_channels_other_than_four_name_file_and_key(tiny_unet, tmp_path, key, shape):
    bad = {**tiny_unet, key: torch.zeros(shape(tuple(tiny_unet[key].shape)))}
    path = tmp_path / "motion_unet.pth"
    torch.save(bad, path)
    with pytest.raises(weights.WeightsError) as error:
        loading.video_unet_from_state_dict(weights.load_state_dict(path), source=path)
    message = str(error.value)
    assert f"Weights file {path} does not fit the motion_unet model: {key} has shape" in message
    assert "4 SD latent channels" in message


def test_key_inconsistent_with_the_widths_read(tiny_unet, tmp_path):
    expected = list(tiny_unet[PROJ_KEY].shape)
    bad = {**tiny_unet, PROJ_KEY: torch.zeros(expected[0], expected[1] - 4, 1, 1)}
    with pytest.raises(weights.WeightsError) as error:
        loading.video_unet_from_state_dict(bad, source=tmp_path / "motion_unet.pth")
    message = str(error.value)
    assert str(tmp_path / "motion_unet.pth") in message
    assert f"{PROJ_KEY} (expected {expected}, found [{expected[0]}, {expected[1] - 4}, 1, 1])" in message


def test_wrong_number_of_dimensions_is_caught_before_widths_are_read(tiny_unet):
    bad = {**tiny_unet, "conv_in.weight": torch.zeros(32, 4)}
    with pytest.raises(weights.WeightsError, match=r"different number of dimensions: conv_in.weight \(expected "
                                                   r"\[320, 4, 3, 3\], found \[32, 4\]\)"):
        loading.video_unet_from_state_dict(bad, source="motion_unet.pth")


def test_released_size_file_is_checked_against_the_manifest():
    bad = released("motion_unet", **{PROJ_KEY: (640, 600, 1, 1)})
    with pytest.raises(weights.WeightsError) as error:
        loading.video_unet_from_state_dict(bad, source="/models/motion_unet.pth")
    message = str(error.value)
    assert "/models/motion_unet.pth" in message and "compared with the released file" in message
    assert f"{PROJ_KEY} (expected [640, 640, 1, 1], found [640, 600, 1, 1])" in message
    assert "python -m rain download --models-dir /models" in message


def test_released_size_file_with_a_bad_width_names_the_released_shape():
    bad = released("reference_unet", **{WIDTH_KEY: (600, 320, 3, 3)})
    with pytest.raises(weights.WeightsError, match=rf"{WIDTH_KEY} \(expected \[640, 320, 3, 3\], "
                                                   rf"found \[600, 320, 3, 3\]\)"):
        loading.reference_unet_from_state_dict(bad, source="reference_unet.pth")


def test_released_pose_guider_with_a_wrong_tensor():
    bad = {k: torch.zeros(v.shape) for k, v in released("pose_guider", **{"conv_out.bias": (300,)}).items()}
    with pytest.raises(weights.WeightsError, match=r"conv_out.bias \(expected \[320\], found \[300\]\)"):
        loading.pose_guider_from_state_dict(bad, source="pose_guider.pth")


@pytest.mark.parametrize("name", ["motion_unet", "reference_unet", "pose_guider", "taesdv"])
def test_released_shapes_pass_every_check(name):
    assert loading.check_checkpoint(released(name), source=f"{name}.pth") == name


def test_pipeline_names_the_file_with_the_bad_shape(tiny_models_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    state = torch.load(models / "motion_unet.pth", weights_only=True)
    state[WIDTH_KEY] = torch.zeros(60, 32, 3, 3)
    torch.save(state, models / "motion_unet.pth")
    with pytest.raises(weights.WeightsError, match=rf"(?s){models / 'motion_unet.pth'} does not fit.*{WIDTH_KEY}"):
        RainPipeline.from_models_dir(models)


# ---- convert never writes a file that will not load -----------------------------------------------------

def test_convert_refuses_a_source_that_does_not_fit(tiny_unet, tmp_path):
    src = tmp_path / "motion_unet.pth"
    torch.save({**tiny_unet, WIDTH_KEY: torch.zeros(60, 32, 3, 3)}, src)
    with pytest.raises(weights.WeightsError) as error:
        convert_to_safetensors(src)
    message = str(error.value)
    assert WIDTH_KEY in message and f"Nothing was written: converting {src}" in message
    assert files_in(tmp_path) == ["motion_unet.pth"]


def test_convert_failure_keeps_the_earlier_output(tmp_path):
    src, dst = tmp_path / "pose_guider.pth", tmp_path / "pose_guider.safetensors"
    dst.write_bytes(b"earlier output")
    torch.save({"foo.weight": torch.zeros(2)}, src)
    with pytest.raises(weights.WeightsError, match="not a checkpoint RAIN loads: its keys match no known model"):
        convert_to_safetensors(src, overwrite=True)
    assert dst.read_bytes() == b"earlier output" and files_in(tmp_path) == [src.name, dst.name]


def test_convert_refuses_what_fp16_cannot_hold(tmp_path):
    sd = tiny_pose_guider()
    sd["conv_out.bias"][0] = 1e6
    torch.save(sd, tmp_path / "pose_guider.pth")
    with pytest.raises(weights.WeightsError, match=r"conv_out.bias holds values up to 1e\+06.*without --fp16"):
        convert_to_safetensors(tmp_path / "pose_guider.pth", dtype=torch.float16)
    assert files_in(tmp_path) == ["pose_guider.pth"]


def test_convert_writes_a_wrapped_file_without_its_prefix(tmp_path):
    sd = tiny_pose_guider()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "pose_guider.pth")
    out = convert_to_safetensors(tmp_path / "pose_guider.pth")
    assert set(safetensors.torch.load_file(out)) == set(sd)


def test_cli_convert_reports_and_writes_nothing(tiny_unet, tmp_path, capsys):
    src = tmp_path / "motion_unet.pth"
    torch.save({**tiny_unet, WIDTH_KEY: torch.zeros(60, 32, 3, 3)}, src)
    assert main(["convert", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Weights file {src} does not fit the motion_unet model") and WIDTH_KEY in err
    assert files_in(tmp_path) == ["motion_unet.pth"]


def test_cli_convert_goes_on_past_a_bad_file(tiny_unet, tmp_path, capsys):
    bad, good = tmp_path / "motion_unet.pth", tmp_path / "pose_guider.pth"
    torch.save({**tiny_unet, WIDTH_KEY: torch.zeros(60, 32, 3, 3)}, bad)
    torch.save(tiny_pose_guider(), good)
    assert main(["convert", str(bad), str(good)]) == 2
    captured = capsys.readouterr()
    assert f"{good} → {tmp_path / 'pose_guider.safetensors'}" in captured.out
    assert WIDTH_KEY in captured.err and "1 of 2 files were not converted" in captured.err
    assert files_in(tmp_path) == ["motion_unet.pth", "pose_guider.pth", "pose_guider.safetensors"]


def test_sizes_a_library_refuses_are_reported_with_the_file(tiny_models_dir):
    import json
    folder = tiny_models_dir / "sd-vae-ft-mse"
    config = json.loads((folder / "config.json").read_text())
    config["block_out_channels"] = [20] + config["block_out_channels"][1:]  # not a multiple of its norm groups
    source = folder / "diffusion_pytorch_model.safetensors"
    with pytest.raises(weights.WeightsError) as error:
        loading.vae_from_state_dict(weights.load_state_dict(source), config, source=source)
    message = str(error.value)
    assert message.startswith(f"Weights file {source}: a vae model cannot be built with the sizes read from it or "
                              f"its config (") and "num_groups" in message
