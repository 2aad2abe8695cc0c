"""Safe loading, strict loading, identification, manifests, conversion and lookup of checkpoints."""

from rain.convert import convert_to_safetensors
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from rain import weights
from rain.weights import MissingWeightsError, WeightsError


def fake_state_dict(manifest: str, *, tiny: bool = False) -> dict[str, torch.Tensor]:
    """Zeros with a manifest's keys; ``tiny`` gives every tensor one element (keys only matter)."""
    return {k: torch.zeros(1 if tiny else s) for k, s in weights.manifest_shapes(manifest).items()}


class Tiny(torch.nn.Module):
    def __init__(self, dtype=torch.float32, device=None):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, dtype=dtype, device=device)
        self.norm = torch.nn.LayerNorm(4, dtype=dtype, device=device)
        self.register_buffer("position_ids", torch.arange(5, device=device))


def tiny_sd() -> dict[str, torch.Tensor]:
    return {k: torch.randn(v.shape) if v.is_floating_point() else v.clone()
            for k, v in Tiny().state_dict().items()}


# ---- load_state_dict ------------------------------------------------------------------------

def test_load_pth_and_safetensors_roundtrip(tmp_path):
    sd = tiny_sd()
    torch.save(sd, tmp_path / "a.pth")
    safetensors.torch.save_file(sd, tmp_path / "a.safetensors")
    for name in ("a.pth", "a.safetensors"):
        loaded = weights.load_state_dict(tmp_path / name)
        assert set(loaded) == set(sd)  # safetensors stores keys sorted
        for k in sd:
            assert torch.equal(loaded[k], sd[k]) and loaded[k].dtype == sd[k].dtype


def test_load_legacy_pickle_format(tmp_path):
    sd = tiny_sd()
    torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(weights.load_state_dict(tmp_path / "old.pt")["conv.weight"], sd["conv.weight"])


def test_state_dict_container_is_unwrapped(tmp_path):
    sd = tiny_sd()
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "c.ckpt")
    assert set(weights.load_state_dict(tmp_path / "c.ckpt")) == set(sd)


def test_missing_file_names_file_and_command(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        weights.load_state_dict(tmp_path / "motion_unet.pth")
    assert "motion_unet.pth" in str(err.value)
    assert f"python -m rain download --models-dir {tmp_path}" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_says_redownload(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    if suffix == ".pth":
        torch.save(tiny_sd(), good)
    else:
        safetensors.torch.save_file(tiny_sd(), good)
    bad = tmp_path / f"pose_guider{suffix}"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(WeightsError) as err:
        weights.load_state_dict(bad)
    message = str(err.value)
    assert str(bad) in message and "corrupt or incomplete" in message
    assert "python -m rain download" in message


class NotATensor:
    pass


def test_unsafe_pickle_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": NotATensor()}, path)
    with pytest.raises(WeightsError) as err:
        weights.load_state_dict(path)
    message = str(err.value)
    assert "Refusing" in message and "NotATensor" in message
    assert "safetensors" in message and "trusted machine" in message


def test_lfs_pointer_and_html_are_recognised(tmp_path):
    lfs = tmp_path / "motion_unet.pth"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 5256000000\n")
    with pytest.raises(WeightsError, match="Git LFS pointer"):
        weights.load_state_dict(lfs)
    html = tmp_path / "pose_guider.pth"
    html.write_text("<!DOCTYPE html><html><body>Not found</body></html>")
    with pytest.raises(WeightsError, match="web page"):
        weights.load_state_dict(html)
    empty = tmp_path / "taesdv.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        weights.load_state_dict(empty)


def test_non_tensor_entries_rejected(tmp_path):
    torch.save({"w": torch.zeros(1), "step": 3}, tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="not a plain state dict"):
        weights.load_state_dict(tmp_path / "x.pth")


def test_unknown_suffix(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"\x08\x01")
    with pytest.raises(WeightsError, match="Unsupported weights file type"):
        weights.load_state_dict(tmp_path / "x.onnx")


# ---- load_strict ----------------------------------------------------------------------------

def test_load_strict_casts_floats_keeps_int_buffers():
    module = Tiny(dtype=torch.float16)
    sd = tiny_sd()
    weights.load_strict(module, sd, source="tiny.pth", model_name="tiny")
    assert module.conv.weight.dtype == torch.float16
    assert torch.allclose(module.conv.weight.float(), sd["conv.weight"], atol=1e-2)
    assert module.position_ids.dtype == torch.int64


def test_load_strict_meta_module_is_materialised():
    module = Tiny(dtype=torch.bfloat16, device="meta")
    sd = tiny_sd()
    weights.load_strict(module, sd, source="tiny.pth", model_name="tiny")
    assert not module.conv.weight.is_meta
    assert module.conv.weight.dtype == torch.bfloat16
    assert module.position_ids.dtype == torch.int64
    assert torch.equal(module.position_ids, torch.arange(5))


def test_load_strict_reports_missing_unexpected_and_shapes():
    sd = tiny_sd()
    del sd["norm.bias"]
    sd["extra.weight"] = torch.zeros(2)
    sd["conv.bias"] = torch.zeros(7)
    with pytest.raises(WeightsError) as err:
        weights.load_strict(Tiny(), sd, source="/models/tiny.pth", model_name="tiny")
    message = str(err.value)
    assert "/models/tiny.pth" in message and "tiny" in message
    assert "1 missing keys" in message and "norm.bias" in message
    assert "1 unexpected keys" in message and "extra.weight" in message
    assert "conv.bias (expected [4], found [7])" in message
    assert "python -m rain download --models-dir /models" in message


def test_load_strict_lists_at_most_ten_keys_and_counts_the_rest():
    module = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(15)])
    with pytest.raises(WeightsError) as err:
        weights.load_strict(module, {}, source="m.pth", model_name="seq")
    message = str(err.value)
    assert "30 missing keys" in message and "(20 more)" in message


def test_load_strict_names_the_model_the_file_looks_like():
    class PoseGuiderStandIn(torch.nn.Module):
        pass

    with pytest.raises(WeightsError) as err:
        weights.load_strict(PoseGuiderStandIn(), fake_state_dict("taesdv", tiny=True),
                            source="pose_guider.pth", model_name="pose_guider")
    assert "looks like a taesdv checkpoint" in str(err.value)


def test_load_into_reads_and_loads(tmp_path):
    sd = tiny_sd()
    safetensors.torch.save_file(sd, tmp_path / "tiny.safetensors")
    module = Tiny()
    weights.load_into(module, tmp_path / "tiny.safetensors", model_name="tiny")
    assert torch.equal(module.conv.weight, sd["conv.weight"])


# ---- identify_checkpoint / check_manifest ------------------------------------------------------

@pytest.mark.parametrize("name", weights.MANIFEST_MODELS)
def test_identify_exact_manifest_key_sets(name):
    assert weights.identify_checkpoint(fake_state_dict(name, tiny=True)) == name


def test_identify_partial_motion_unet_and_reference_in_motion():
    keys = list(weights.manifest_shapes("motion_unet"))
    assert weights.identify_checkpoint(keys[:-40]) == "motion_unet"
    # A full diffusers SD1.5 UNet = reference UNet keys + output head.
    sd15 = list(weights.manifest_shapes("reference_unet")) + [
        "conv_norm_out.weight", "conv_norm_out.bias", "conv_out.weight", "conv_out.bias"]
    assert weights.identify_checkpoint(sd15) == "reference_unet"


def test_identify_motion_module_only():
    keys = [k for k in weights.manifest_shapes("motion_unet") if ".motion_modules." in k]
    assert weights.identify_checkpoint(keys) == "animatediff_motion_module"


def test_identify_pattern_models():
    diffusers_vae = ["encoder.conv_in.weight", "encoder.down_blocks.0.resnets.0.norm1.weight",
                     "decoder.up_blocks.0.resnets.0.norm1.weight", "quant_conv.weight",
                     "post_quant_conv.weight"]
    ldm_vae = ["first_stage_model.encoder.down.0.block.0.norm1.weight",
               "first_stage_model.decoder.up.0.block.0.norm1.weight",
               "first_stage_model.quant_conv.weight"]
    assert weights.identify_checkpoint(diffusers_vae) == "sd_vae"
    assert weights.identify_checkpoint(ldm_vae) == "sd_vae"
    assert weights.identify_checkpoint(["model.diffusion_model.input_blocks.0.0.weight",
                                        "first_stage_model.encoder.conv_in.weight",
                                        "cond_stage_model.transformer.x"]) == "sd15_unet"
    assert weights.identify_checkpoint(["vision_model.embeddings.patch_embedding.weight",
                                        "visual_projection.weight"]) == "clip_vision"
    assert weights.identify_checkpoint(["foo.weight", "bar.bias"]) is None
    assert weights.identify_checkpoint({}) is None


def test_check_manifest_shapes_and_reduced_models():
    real = fake_state_dict("pose_guider")
    weights.check_manifest(real, "pose_guider", source="pose_guider.pth")
    reduced = fake_state_dict("pose_guider", tiny=True)
    weights.check_manifest(reduced, "pose_guider", source="x", check_shapes=False)
    with pytest.raises(WeightsError, match="wrong shape"):
        weights.check_manifest(reduced, "pose_guider", source="x")


def test_check_manifest_missing_motion_key_is_an_error():
    sd = fake_state_dict("motion_unet", tiny=True)
    del sd["time_embedding.cond_proj.weight"]
    with pytest.raises(WeightsError) as err:
        weights.check_manifest(sd, "motion_unet", source="motion_unet.pth", check_shapes=False)
    assert "time_embedding.cond_proj.weight" in str(err.value)
    assert "1 missing keys" in str(err.value)


def test_check_manifest_unknown_name():
    with pytest.raises(WeightsError, match="No manifest named"):
        weights.check_manifest({}, "nope", source="x")


def test_manifests_have_expected_key_counts():
    counts = {name: len(weights.manifest_shapes(name)) for name in weights.MANIFEST_MODELS}
    assert counts == {"reference_unet": 682, "motion_unet": 1275, "pose_guider": 16, "taesdv": 134}


# ---- convert_to_safetensors -----------------------------------------------------------------

def pose_guider_sd() -> dict[str, torch.Tensor]:
    """A reduced pose guider (convert only writes files RAIN loads)."""
    from rain.models.pose_guider import PoseGuider, PoseGuiderConfig
    return {k: torch.randn(v.shape) for k, v in
            PoseGuider(PoseGuiderConfig(conditioning_embedding_channels=32)).state_dict().items()}


def test_convert_roundtrip_and_overwrite_guard(tmp_path):
    sd = pose_guider_sd()
    sd["blocks.0.bias"] = sd["conv_in.bias"]  # shared storage (tied weights) must not break safetensors
    torch.save(sd, tmp_path / "m.pth")
    out = convert_to_safetensors(tmp_path / "m.pth")
    assert out == tmp_path / "m.safetensors"
    back = weights.load_state_dict(out)
    assert all(torch.equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype for k in sd)
    with pytest.raises(WeightsError, match="already exists"):
        convert_to_safetensors(tmp_path / "m.pth")
    convert_to_safetensors(tmp_path / "m.pth", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth", "m.safetensors"]


def test_convert_with_dtype_keeps_integer_buffers(tmp_path):
    """A CLIP file of older transformers carries the integer position_ids table; it stays integer."""
    from rain.models.image_encoder import build_image_encoder

    config = json.loads((Path(__file__).parents[1] / "rain" / "configs" / "tiny.json").read_text())["image_encoder"]
    sd = {k: v.clone() for k, v in build_image_encoder(config).state_dict().items()}
    sd["vision_model.embeddings.position_ids"] = torch.arange(
        (config["image_size"] // config["patch_size"]) ** 2 + 1)[None]
    folder = tmp_path / "image_encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(sd, folder / "pytorch_model.bin")
    out = convert_to_safetensors(folder / "pytorch_model.bin", dtype=torch.float16)
    assert out == folder / "model.safetensors"  # the name the loader looks for
    back = weights.load_state_dict(out)
    assert back["vision_model.embeddings.patch_embedding.weight"].dtype == torch.float16
    assert back["vision_model.embeddings.position_ids"].dtype == torch.int64


# ---- catalogue and lookup -------------------------------------------------------------------

def touch(path: Path, size: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


def test_find_weight_prefers_safetensors(tmp_path):
    assert weights.find_weight(tmp_path, "pose_guider") is None
    touch(tmp_path / "pose_guider.pth")
    assert weights.find_weight(tmp_path, "pose_guider") == tmp_path / "pose_guider.pth"
    touch(tmp_path / "pose_guider.safetensors")
    assert weights.find_weight(tmp_path, "pose_guider") == tmp_path / "pose_guider.safetensors"


def test_find_weight_folders(tmp_path):
    touch(tmp_path / "sd-vae-ft-mse" / "config.json")
    assert weights.find_weight(tmp_path, "vae") is None
    touch(tmp_path / "sd-vae-ft-mse" / "diffusion_pytorch_model.bin")
    assert weights.find_weight(tmp_path, "sd-vae-ft-mse") == tmp_path / "sd-vae-ft-mse"
    touch(tmp_path / "image_encoder" / "config.json")
    touch(tmp_path / "image_encoder" / "model.safetensors")
    assert weights.find_weight(tmp_path, "image_encoder") == tmp_path / "image_encoder"


def test_require_weights_names_every_missing_file(tmp_path):
    touch(tmp_path / "reference_unet.safetensors")
    names = ["reference_unet", "motion_unet", "pose_guider", "taesdv", "vae", "image_encoder"]
    with pytest.raises(MissingWeightsError) as err:
        weights.require_weights(tmp_path, names)
    message = str(err.value)
    for expected in ("motion_unet.pth", "pose_guider.pth", "taesdv.pth", "sd-vae-ft-mse/",
                     "image_encoder/", "Pscgylotti/RAIN-v0.1", "stabilityai/sd-vae-ft-mse",
                     "lambdalabs/sd-image-variations-diffusers", "madebyollin/taesdv"):
        assert expected in message
    assert "reference_unet" not in message
    assert f"Put them in {tmp_path}" in message
    assert f"python -m rain download --models-dir {tmp_path}" in message


def test_require_weights_returns_paths(tmp_path):
    touch(tmp_path / "motion_unet.pth")
    assert weights.require_weights(tmp_path, ["motion_unet"]) == {
        "motion_unet": tmp_path / "motion_unet.pth"}


def test_download_command_quotes_paths():
    assert weights.download_command("/my models") == "python -m rain download --models-dir '/my models'"


def test_model_files_catalogue_is_data():
    assert {"reference_unet", "motion_unet", "pose_guider", "taesdv", "vae",
            "image_encoder"} <= set(weights.MODEL_FILES)
    entry = weights.MODEL_FILES["image_encoder"]
    assert entry.group == "image_encoder" and entry.folder == "image_encoder"
    bin_file = [d for d in entry.downloads if d.dest.endswith(".bin")][0]
    assert bin_file.repo_path == "image_encoder/pytorch_model.bin" and bin_file.size == 1_215_993_967
    assert weights.MODEL_FILES["sd-vae-ft-mse"] is not None
    for name, manifest in [(n, weights.MODEL_FILES[n].manifest) for n in weights.MANIFEST_MODELS]:
        assert manifest == name
    with pytest.raises(KeyError):
        weights.MODEL_FILES["nope"]
    json.dumps({n: [d.dest for d in e.downloads] for n, e in weights.MODEL_FILES.items()})
