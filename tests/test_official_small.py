"""Numbers from the official implementation that ship with the repo (tests/fixtures, ~100 KB), so a clone
checks the maths even without the full golden set."""

import json
from pathlib import Path

import numpy as np
import pytest
from diffusers.models.embeddings import Timesteps
from safetensors import safe_open
from safetensors.torch import load_file

from parity import assert_close_to_golden
from rain.models.embeddings import guidance_scale_embedding
from rain.pose.landmark_transform import (STARTUP_TRANSLATIONS, FaceCalibration, FUNCTION_DEFAULTS, DEMO_DEFAULTS,
                                          apply_translations, calibration_translations)
from rain.sampling.lcm import alphas_cumprod

FIXTURE = Path(__file__).parent / "fixtures" / "official_small.safetensors"


@pytest.fixture(scope="module")
def official():
    with safe_open(FIXTURE, "pt") as handle:
        meta = handle.metadata()
    return load_file(FIXTURE), meta


def test_guidance_embeddings(official):
    tensors, meta = official
    for key, w in json.loads(meta["guidance_w"]).items():
        # sin/cos of arguments up to 1000·w: float32 rounds the argument itself, so only the golden set's
        # float32 bound is a promise every CPU keeps.
        assert_close_to_golden(guidance_scale_embedding(w), tensors[f"guidance/{key}"], f"w={w}")


def test_timestep_sinusoid_at_released_width(official):
    tensors, _ = official
    sinusoid = Timesteps(320, flip_sin_to_cos=True, downscale_freq_shift=0)
    for prefix in ("groups", "mixed"):
        got = sinusoid(tensors[f"sinusoid/{prefix}_timesteps"].reshape(-1))
        assert_close_to_golden(got, tensors[f"sinusoid/{prefix}_320"], prefix)


def test_alphas_cumprod(official):
    tensors, _ = official
    assert_close_to_golden(alphas_cumprod(), tensors["lcm/alphas_cumprod"], "alphas_cumprod")


def test_landmark_transform_lists(official):
    tensors, meta = official
    lists = {"startup": STARTUP_TRANSLATIONS,
             "param_function_defaults": calibration_translations(FUNCTION_DEFAULTS),
             "param_demo_defaults": calibration_translations(DEMO_DEFAULTS),
             "param_custom": calibration_translations(FaceCalibration.from_dict(json.loads(meta["param_custom"])))}
    variants = sorted({k.split("/")[1].split("__")[0] for k in tensors if k.startswith("landmarks/")})
    assert variants
    for variant in variants:
        face = tensors[f"landmarks/{variant}__input"].numpy()
        for name, translations in lists.items():
            expected = tensors[f"landmarks/{variant}__{name}"].numpy()
            got = apply_translations(face, translations, keep_missing=False)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9, err_msg=f"{variant} {name}")
