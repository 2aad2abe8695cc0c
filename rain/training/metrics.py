"""The paper's Table 1 metrics, computed offline, plus temporal stability.

* PSNR and SSIM on floats in [0, 1] (uint8 input is converted first: subtracting uint8 arrays wraps around, which
  is the overflow behind the PSNR values above 30 the paper's Table 1 warns about). SSIM is Wang et al.'s: an
  11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample) variances, averaged over
  the pixels whose window lies inside the image and over the RGB channels.
* LPIPS v0.1 with the AlexNet trunk (Zhang et al.), defined here because torchvision does not import beside
  every torch; the weights are read from a folder (see :meth:`LPIPS.from_folder`).
* FVD: the Fréchet distance between Gaussians fitted to I3D features of real and generated clips; the I3D network
  is an ONNX export run with onnxruntime (see :class:`I3DFeatures`).
* Temporal stability: the mean absolute frame-to-frame change of the output, of the real clip and of the driving
  condition; ``flicker_ratio`` = output change / real change (1: as lively as the real video, above: flicker),
  ``motion_corr`` = correlation over time between output change and condition change (the output should move
  when, and only when, the driver moves).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def to_float_frames(frames) -> torch.Tensor:
    """[N, H, W, 3] (or one [H, W, 3]) uint8 or float in [0, 1], numpy or torch → float64 [N, 3, H, W]."""
    tensor = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    tensor = tensor.detach().cpu()
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected frames shaped [N, H, W, 3], got {list(tensor.shape)}")
    tensor = tensor.double() / 255.0 if tensor.dtype == torch.uint8 else tensor.double()
    return tensor.permute(0, 3, 1, 2)


def psnr(output, target) -> np.ndarray:
    """Per-frame PSNR in dB (peak 1.0 on float frames); inf for identical frames."""
    a, b = to_float_frames(output), to_float_frames(target)
    _same_shape(a, b)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / mse.numpy())


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    window = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    return window / window.sum()


def ssim(output, target, *, window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Per-frame SSIM (see the module docstring for the exact variant)."""
    a, b = to_float_frames(output), to_float_frames(target)
    _same_shape(a, b)
    if min(a.shape[2:]) < window:
        raise ValueError(f"frames of {a.shape[3]}x{a.shape[2]} are smaller than the {window}x{window} SSIM window")
    channels = a.shape[1]
    g = gaussian_window(window, sigma)
    kernel_h = g.view(1, 1, window, 1).repeat(channels, 1, 1, 1)
    kernel_w = g.view(1, 1, 1, window).repeat(channels, 1, 1, 1)

    def blur(x):  # separable, 'valid': only windows inside the image
        return F.conv2d(F.conv2d(x, kernel_h, groups=channels), kernel_w, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = k1 ** 2, k2 ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return index.mean(dim=(1, 2, 3)).numpy()


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"compared frames differ in shape: {list(a.shape)} vs {list(b.shape)}")


def frame_changes(frames) -> np.ndarray:
    """Mean absolute change between consecutive frames, [N - 1], on [0, 1] floats."""
    x = to_float_frames(frames)
    return (x[1:] - x[:-1]).abs().mean(dim=(1, 2, 3)).numpy()


def temporal_stability(output, target, condition) -> dict[str, float]:
    out_change, real_change, cond_change = frame_changes(output), frame_changes(target), frame_changes(condition)
    result = {"tdiff_output": float(out_change.mean()), "tdiff_truth": float(real_change.mean()),
              "tdiff_condition": float(cond_change.mean())}
    result["flicker_ratio"] = result["tdiff_output"] / result["tdiff_truth"] if result["tdiff_truth"] > 0 \
        else float("nan")
    if len(out_change) > 1 and out_change.std() > 0 and cond_change.std() > 0:
        result["motion_corr"] = float(np.corrcoef(out_change, cond_change)[0, 1])
    else:
        result["motion_corr"] = float("nan")
    return result


# -- LPIPS --------------------------------------------------------------------------------------------------
LPIPS_TRUNK_FILES = ("alexnet-owt-7be5be79.pth", "alexnet.safetensors")
LPIPS_LINEAR_FILES = ("alex.pth", "alex.safetensors")
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_ALEX_TAPS = (1, 4, 7, 9, 11)          # the ReLUs LPIPS compares, as indices of AlexNet's ``features``
_ALEX_WIDTHS = (64, 192, 384, 256, 256)


class LPIPSWeightsMissing(FileNotFoundError):
    pass


class LPIPS(torch.nn.Module):
    """LPIPS v0.1 (AlexNet): ``lpips(a, b)`` → per-frame distance for [N, 3, H, W] floats in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(  # torchvision's AlexNet feature layout, so its keys load as they are
            torch.nn.Conv2d(3, 64, 11, stride=4, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2),
            torch.nn.Conv2d(64, 192, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2),
            torch.nn.Conv2d(192, 384, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(384, 256, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(256, 256, 3, padding=1), torch.nn.ReLU())
        self.heads = torch.nn.ModuleList(torch.nn.Conv2d(c, 1, 1, bias=False) for c in _ALEX_WIDTHS)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "LPIPS":
        """Read ``alexnet-owt-7be5be79.pth`` (torchvision's ImageNet AlexNet, only ``features.*`` is used) and
        ``alex.pth`` (LPIPS v0.1's linear heads, from the lpips package's ``weights/v0.1/``); ``.safetensors``
        copies with the same keys are accepted too."""
        folder = Path(folder)
        trunk, linear = (_first_file(folder, names) for names in (LPIPS_TRUNK_FILES, LPIPS_LINEAR_FILES))
        if trunk is None or linear is None:
            raise LPIPSWeightsMissing(
                f"LPIPS needs {LPIPS_TRUNK_FILES[0]} (torchvision's AlexNet, "
                f"https://download.pytorch.org/models/alexnet-owt-7be5be79.pth) and {LPIPS_LINEAR_FILES[0]} "
                f"(LPIPS v0.1 linear layers, github.com/richzhang/PerceptualSimilarity, "
                f"lpips/weights/v0.1/alex.pth) in {folder}; `python -m rain download --only lpips --models-dir "
                f"MODELS_DIR` puts both in MODELS_DIR/lpips")
        model = cls()
        from ..weights import load_state_dict
        trunk_state = {k: v for k, v in load_state_dict(trunk).items() if k.startswith("features.")}
        heads = {}
        for key, value in load_state_dict(linear).items():
            # lpips names them lin{i}.model.1.weight (a Dropout precedes each 1x1 conv).
            index = key.split(".")[0].removeprefix("lin")
            if not index.isdigit():
                raise ValueError(f"{linear}: unexpected key {key!r}; expected LPIPS v0.1 linear layers (lin0..lin4)")
            heads[f"heads.{index}.weight"] = value
        missing, unexpected = model.load_state_dict({**trunk_state, **heads}, strict=False)
        if missing or unexpected:
            raise ValueError(f"LPIPS weights in {folder} do not fit AlexNet-LPIPS v0.1: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}")
        return model.eval().requires_grad_(False)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        a = (output * 2 - 1 - self.shift) / self.scale
        b = (target * 2 - 1 - self.shift) / self.scale
        total = torch.zeros(a.shape[0], device=a.device, dtype=a.dtype)
        tap = 0
        for index, layer in enumerate(self.features):
            a, b = layer(a), layer(b)
            if index == _ALEX_TAPS[tap]:
                diff = (_unit(a) - _unit(b)) ** 2
                total = total + self.heads[tap](diff).mean(dim=(1, 2, 3))
                tap += 1
        return total

    @torch.no_grad()
    def distance(self, output, target, batch_size: int = 8) -> np.ndarray:
        """Per-frame LPIPS of [N, H, W, 3] frames (uint8 or [0, 1] floats), in batches."""
        a, b = to_float_frames(output), to_float_frames(target)
        _same_shape(a, b)
        parameter = next(self.parameters())
        values = [self(a[i:i + batch_size].to(parameter), b[i:i + batch_size].to(parameter)).double().cpu()
                  for i in range(0, len(a), batch_size)]
        return torch.cat(values).numpy()


def _unit(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def _first_file(folder: Path, names) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


# -- FVD ----------------------------------------------------------------------------------------------------
class I3DFeatures:
    """An I3D ONNX export: videos → one feature vector each (its first output, flattened; for the Kinetics-400
    I3D of the FVD paper these are the 400 logits).

    Input layout from the file: ``[N, 3, T, H, W]`` (PyTorch exports) or ``[N, T, H, W, 3]`` (TensorFlow
    exports), float32 in [-1, 1]; frames are resized to the file's H x W (224 x 224 when left open) and a fixed
    T takes the first T frames of each clip."""

    def __init__(self, path: str | os.PathLike, providers=None):
        from ..pose.dwpose import default_providers
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"I3D model not found: {path} (give an ONNX export of I3D for FVD)")
        self.session = ort.InferenceSession(str(path), providers=list(providers or default_providers()))
        first = self.session.get_inputs()[0]
        shape = list(first.shape)
        if len(shape) != 5:
            raise ValueError(f"{path}: expected a video input [N, 3, T, H, W] or [N, T, H, W, 3], got {shape}")
        self.input_name = first.name
        self.channels_last = shape[-1] == 3

        def fixed(d):
            return d if isinstance(d, int) and d > 0 else None
        self.batch = fixed(shape[0])
        time_axis, spatial = (1, shape[2:4]) if self.channels_last else (2, shape[3:5])
        self.frames = fixed(shape[time_axis])
        self.size = tuple(fixed(d) or 224 for d in spatial)

    def _prepare(self, video) -> np.ndarray:
        x = to_float_frames(video).float()                                    # [T, 3, H, W] in [0, 1]
        if self.frames is not None:
            if len(x) < self.frames:
                raise ValueError(f"the I3D model takes {self.frames} frames, a clip has {len(x)}")
            x = x[:self.frames]
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False) * 2 - 1
        return (x.permute(0, 2, 3, 1) if self.channels_last else x.permute(1, 0, 2, 3)).numpy()

    def __call__(self, videos) -> np.ndarray:
        batch = np.stack([self._prepare(v) for v in videos]).astype(np.float32)
        step = self.batch or len(batch)
        outputs = [self.session.run(None, {self.input_name: batch[i:i + step]})[0]
                    for i in range(0, len(batch), step)]
        return np.concatenate([o.reshape(len(o), -1) for o in outputs]).astype(np.float64)


def frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """||mu_a - mu_b||² + Tr(cov_a + cov_b - 2 (cov_a cov_b)^½), as FID/FVD compute it."""
    from scipy import linalg

    with warnings.catch_warnings():
        # Fewer clips than features make the covariances singular; the offset below handles a failed root.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        # Nearly singular product (few clips, many features): the usual small diagonal offset.
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = np.real(root)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        raise ValueError("FVD needs at least 2 clips per set")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def fvd(real_features: np.ndarray, generated_features: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(real_features), *feature_statistics(generated_features))
