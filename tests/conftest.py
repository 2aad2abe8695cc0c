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
    """The official implementation's reference data (``shared/golden``), if the environment points at it."""
    value = os.environ.get(GOLDEN_ENV)
    if not value:
        pytest.skip(f"golden parity data not available: set {GOLDEN_ENV} to the shared/golden folder "
                    f"(.ci/run sets it to ../shared/golden)")
    path = Path(value)
    if not (path / "index.json").is_file():
        pytest.skip(f"{GOLDEN_ENV}={value} does not contain the golden set (no index.json there)")
    return path
