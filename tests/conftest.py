import os
from pathlib import Path

import pytest
import torch

GOLDEN_ENV = "RAIN_GOLDEN_DIR"


@pytest.fixture(scope="session", autouse=True)
def _cpu_determinism():
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The official implementation's reference data (the golden set), if the environment points at it."""
    value = os.environ.get(GOLDEN_ENV)
    if not value:
        pytest.skip(f"golden parity data not available: set {GOLDEN_ENV} to the folder holding the official "
                    f"implementation's golden set (CI sets it)")
    path = Path(value)
    if not (path / "index.json").is_file():
        pytest.skip(f"{GOLDEN_ENV}={value} does not contain the golden set (no index.json there)")
    return path


@pytest.fixture(scope="session")
def golden_models_dir(golden_dir, tmp_path_factory) -> Path:
    """The golden set's reduced weights laid out as a user's models folder (exercises the real loader)."""
    import shutil
    target = tmp_path_factory.mktemp("golden_models")
    weights = golden_dir / "weights"
    for name in ("reference_unet", "motion_unet", "pose_guider", "taesdv"):
        shutil.copy(weights / f"{name}.safetensors", target / f"{name}.safetensors")
    (target / "sd-vae-ft-mse").mkdir()
    shutil.copy(weights / "vae.safetensors", target / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors")
    shutil.copy(golden_dir / "configs" / "vae_config.json", target / "sd-vae-ft-mse" / "config.json")
    (target / "image_encoder").mkdir()
    shutil.copy(weights / "image_encoder.safetensors", target / "image_encoder" / "model.safetensors")
    shutil.copy(golden_dir / "configs" / "image_encoder_config.json", target / "image_encoder" / "config.json")
    return target


@pytest.fixture(scope="session")
def golden_pipeline(golden_models_dir):
    from rain.pipeline import RainPipeline
    return RainPipeline.from_models_dir(golden_models_dir)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """Reduced-size random models in the released files' layout (.pth state dicts and folders)."""
    from rain.devtools import write_tiny_models
    return write_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_models_dir):
    from rain.pipeline import RainPipeline
    return RainPipeline.from_models_dir(tiny_models_dir)
