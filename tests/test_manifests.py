"""Full-size models, built on the meta device, have exactly the released checkpoints' keys and shapes."""

import json
from pathlib import Path

import torch

from rain.models.image_encoder import build_image_encoder
from rain.models.pose_guider import PoseGuider
from rain.models.reference_unet import ReferenceUNet
from rain.models.taesdv import TAESDV
from rain.models.vae import build_vae
from rain.models.video_unet import UNetConfig, VideoUNet

MANIFESTS = Path(__file__).resolve().parents[1] / "rain" / "manifests"


def manifest(name):
    return {k: list(v) for k, v in json.loads((MANIFESTS / f"{name}.json").read_text())["tensors"].items()}


def shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_full_size_models_match_the_manifests_exactly():
    with torch.device("meta"):
        built = {"reference_unet": ReferenceUNet.from_config_dataclass(UNetConfig()),
                 "motion_unet": VideoUNet(UNetConfig()), "pose_guider": PoseGuider(), "taesdv": TAESDV()}
    for name, module in built.items():
        expected = manifest(name)
        got = shapes(module)
        assert set(got) == set(expected), f"{name}: missing {set(expected) - set(got)}, extra {set(got) - set(expected)}"
        assert got == expected, f"{name}: shapes differ"
    # Registration order too where the official classes share ours (state dicts load by name either way).
    assert list(shapes(built["reference_unet"])) == list(manifest("reference_unet"))
    assert list(shapes(built["taesdv"])) == list(manifest("taesdv"))
    assert sum(p.numel() for p in built["motion_unet"].parameters()) == 1_312_894_084
    assert sum(p.numel() for p in built["reference_unet"].parameters()) == 859_508_800


def test_full_size_vae_and_image_encoder_parameter_counts():
    with torch.device("meta"):
        vae = build_vae(json.loads((MANIFESTS / "vae_sd-vae-ft-mse_config.json").read_text()))
        clip = build_image_encoder(json.loads((MANIFESTS / "clip_image_encoder_config.json").read_text()))
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert sum(p.numel() for p in clip.parameters()) == 303_966_208


def test_widths_are_read_off_the_checkpoint():
    with torch.device("meta"):
        state = VideoUNet(UNetConfig(block_out_channels=(32, 64, 96, 96))).state_dict()
    config = UNetConfig.from_state_dict(state)
    assert config.block_out_channels == (32, 64, 96, 96) and config.cond_proj_dim == 512
