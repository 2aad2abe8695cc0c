"""The reduced random models render visible, pose-following noise (not a near-black frame), so a newcomer
can tell working plumbing from a collapse."""

import numpy as np
import pytest
import torch
from PIL import Image

from rain.devtools import TINY_NATIVE_SIZE
from rain.sampling.stream import StreamSettings


def blob_poses(count, size, left):
    height, width = size
    quarter = width // 4
    frames = []
    for _ in range(count):
        frame = torch.zeros(height, width, 3)
        frame[height // 4:3 * height // 4, left:left + quarter] = 1.0
        frames.append(frame)
    return frames


@pytest.mark.parametrize("decoder", ["taesdv", "vae"])
def test_tiny_models_render_mid_grey_noise_that_follows_the_pose(tiny_pipeline, decoder):
    height, width = TINY_NATIVE_SIZE
    reference = tiny_pipeline.fuse_reference(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)), height, width)
    quarter = width // 4
    left, right = width // 16, width - width // 16 - quarter
    settings = StreamSettings(decoder=decoder)
    on_left = torch.stack(list(tiny_pipeline.stream(blob_poses(8, (height, width), left), reference, settings)))
    on_right = torch.stack(list(tiny_pipeline.stream(blob_poses(8, (height, width), right), reference, settings)))

    for frame in on_left:  # from the first frame on: neither black nor white
        assert 0.25 < frame.mean() < 0.75
    assert on_left.std() > 0.1  # structured, not a flat colour

    moved = torch.zeros(height, width, dtype=torch.bool)
    moved[height // 4:3 * height // 4, left:left + quarter] = True
    moved[height // 4:3 * height // 4, right:right + quarter] = True
    change = (on_left - on_right).abs().mean(-1)[2:]  # past the first frames' decoder start-up
    # Moving the pose changes the picture where the pose was and is, much more than elsewhere.
    assert change[:, moved].mean() > 2 * change[:, ~moved].mean()
