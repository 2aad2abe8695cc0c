"""Evaluation metrics against hand-computed values on small arrays."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metric_stand_ins import i3d_stand_in, write_lpips_weights
from rain.training import metrics


def test_psnr_known_values_and_no_uint8_overflow():
    a = np.zeros((2, 8, 8, 3), np.float32)
    b = np.full((2, 8, 8, 3), 0.1, np.float32)
    assert np.allclose(metrics.psnr(a, b), 20.0)                     # MSE 0.01 → 10·log10(1/0.01)
    dark, light = np.full((8, 8, 3), 10, np.uint8), np.full((8, 8, 3), 20, np.uint8)
    # uint8 arithmetic would wrap 10 - 20 to 246; on floats the error is 10/255.
    assert metrics.psnr(dark, light)[0] == pytest.approx(20 * math.log10(25.5), abs=1e-9)
    assert metrics.psnr(light, light)[0] == math.inf
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(a, b[:, :4])


def test_ssim_known_values():
    ones = np.ones((1, 16, 16, 3))
    assert metrics.ssim(0.5 * ones, 0.5 * ones)[0] == pytest.approx(1.0, abs=1e-12)
    # Flat images: no variance, so SSIM is the luminance term (2ab + C1) / (a² + b² + C1).
    c1 = 0.01 ** 2
    assert metrics.ssim(0.2 * ones, 0.6 * ones)[0] == pytest.approx((2 * 0.12 + c1) / (0.04 + 0.36 + c1), abs=1e-12)
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        metrics.ssim(ones[:, :8], ones[:, :8])


def brute_force_ssim(x, y, size=11, sigma=1.5):
    """SSIM straight from its definition, window by window, for one grey image."""
    offsets = np.arange(size) - (size - 1) / 2
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma ** 2))
    weights /= weights.sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            px, py = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            mx, my = (weights * px).sum(), (weights * py).sum()
            vx, vy = (weights * (px - mx) ** 2).sum(), (weights * (py - my) ** 2).sum()
            cov = (weights * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_definition_on_a_random_image():
    rng = np.random.default_rng(0)
    x = rng.random((14, 17))
    y = np.clip(x + 0.2 * rng.normal(size=x.shape), 0, 1)
    ours = metrics.ssim(np.repeat(x[None, ..., None], 3, -1), np.repeat(y[None, ..., None], 3, -1))[0]
    assert ours == pytest.approx(brute_force_ssim(x, y), abs=1e-12)
    assert 0 < ours < 1


def hand_lpips(trunk, heads, x, y):
    """LPIPS v0.1 (AlexNet) written out with functional ops on the stored tensors."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def conv(z, index, **kw):
        return F.relu(F.conv2d(z, trunk[f"features.{index}.weight"], trunk[f"features.{index}.bias"], **kw))

    def taps(z):
        z = (z * 2 - 1 - shift) / scale
        one = conv(z, 0, stride=4, padding=2)
        two = conv(F.max_pool2d(one, 3, 2), 3, padding=2)
        three = conv(F.max_pool2d(two, 3, 2), 6, padding=1)
        four = conv(three, 8, padding=1)
        return [one, two, three, four, conv(four, 10, padding=1)]

    total = 0.0
    for i, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + ((a - b) ** 2 * heads[f"lin{i}.model.1.weight"].view(1, -1, 1, 1)).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_from_the_weight_files(tmp_path):
    folder = write_lpips_weights(tmp_path / "lpips")
    model = metrics.LPIPS.from_folder(folder)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 64, 64, generator=generator), torch.rand(2, 3, 64, 64, generator=generator)
    trunk, heads = torch.load(folder / "alexnet-owt-7be5be79.pth"), torch.load(folder / "alex.pth")
    with torch.no_grad():
        assert torch.allclose(model(x, y), hand_lpips(trunk, heads, x, y), rtol=1e-5, atol=1e-7)
    frames_x = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    assert np.allclose(model.distance(frames_x, frames_x), 0.0)
    frames_y = y.permute(0, 2, 3, 1).numpy()
    assert np.allclose(model.distance(frames_x, frames_y), model.distance(frames_y, frames_x))
    assert (model.distance(frames_x, frames_y) > 0).all()


def test_lpips_names_the_files_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth.*alex.pth"):
        metrics.LPIPS.from_folder(tmp_path)


def test_frechet_distance_of_known_gaussians():
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = 5.0 + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()        # |Δμ|² + Σ(√a - √b)²
    assert metrics.frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fvd_with_an_i3d_stand_in(tmp_path, channels_last):
    i3d = metrics.I3DFeatures(i3d_stand_in(tmp_path / "i3d.onnx", frames=8, size=32, channels_last=channels_last))
    assert (i3d.frames, i3d.size, i3d.channels_last) == (8, (32, 32), channels_last)
    rng = np.random.default_rng(0)
    real = [rng.integers(0, 256, (10, 24, 20, 3), np.uint8) for _ in range(5)]
    features = i3d(real)
    assert features.shape == (5, 24)
    assert abs(metrics.fvd(features, features)) < 1e-6 * max(1.0, np.trace(np.cov(features, rowvar=False)))
    brighter = [np.clip(v.astype(int) + 60, 0, 255).astype(np.uint8) for v in real]
    assert metrics.fvd(features, i3d(brighter)) > 0.01
    with pytest.raises(ValueError, match="at least 2 clips"):
        metrics.fvd(features[:1], features[:1])
    with pytest.raises(ValueError, match="takes 8 frames"):
        i3d([real[0][:4]])


def test_temporal_stability_hand_values():
    truth = np.zeros((4, 4, 4, 3))
    truth[2:] = 0.5                       # one change of 0.5 between frames 1 and 2
    output = truth.copy()
    output[1] += 0.1                      # a flicker on top: changes 0.1, 0.4, 0
    condition = np.zeros((4, 4, 4, 3), np.uint8)
    condition[2:] = 255
    result = metrics.temporal_stability(output, truth, condition)
    assert result["tdiff_truth"] == pytest.approx(0.5 / 3)
    assert result["tdiff_output"] == pytest.approx(0.5 / 3)
    assert result["tdiff_condition"] == pytest.approx(1 / 3)
    assert result["flicker_ratio"] == pytest.approx(1.0)
    assert result["motion_corr"] == pytest.approx(np.corrcoef([0.1, 0.4, 0.0], [0, 1, 0])[0, 1])
    still = metrics.temporal_stability(truth[:2], truth[:2], condition[:2])
    assert still["tdiff_truth"] == 0 and math.isnan(still["flicker_ratio"]) and math.isnan(still["motion_corr"])
