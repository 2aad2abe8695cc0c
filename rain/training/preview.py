"""Sample videos during training, rendered by the inference stream, so the user watches the model learn.

Each video shows, side by side, the condition images that drive it, what the model renders from the clip's first
frame as reference, and the real frames. Distilled stages stream exactly as the pack will (``RainPipeline.stream``:
4 LCM steps over the window, the guidance embedding of ``[samples] guidance``). The diffusion stages (1 and 2)
are not distilled yet, so they stream the same window with more steps per group (``[samples] steps_per_group``,
32 steps by default) and without a guidance embedding, which they were not trained with.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from ..io import VideoWriter
from ..loading import RainModels
from ..pipeline import RainPipeline
from ..sampling.noise import SeededNoise
from ..sampling.stream import RainStream, StreamSettings
from .config import DIFFUSION_STAGES, TrainingConfig
from .data import ClipStore


def sample_clip(config: TrainingConfig) -> tuple[np.ndarray, np.ndarray]:
    """(frames, conditions) uint8 [n, H, W, 3] of the clip that drives the sample videos."""
    store = ClipStore(config.samples.dataset or config.dataset)
    index = min(config.samples.clip, len(store) - 1)
    count = min(config.samples.frames, store.clip_length)
    return store.read(index, 0, count)


@torch.no_grad()
def render_sample(config: TrainingConfig, models: RainModels, device: torch.device,
                  frames: np.ndarray, conditions: np.ndarray, autocast=contextlib.nullcontext) -> np.ndarray:
    """The model's rendering of ``conditions`` with ``frames[0]`` as reference: uint8 [n, H, W, 3]."""
    pipe = RainPipeline(models, device=device, dtype=torch.float32)
    height, width = frames.shape[1:3]
    distilled = config.stage not in DIFFUSION_STAGES
    settings = StreamSettings(frames_per_group=config.data.frames_per_group, num_groups=config.data.num_groups,
                              steps_per_group=config.samples.steps_per_group, guidance_scale=config.samples.guidance,
                              seed=config.seed, decoder="vae")
    poses = [torch.from_numpy(c) for c in conditions]
    was_training = {name: module.training for name, module in models.modules().items()}
    for module in models.modules().values():
        module.eval()
    try:
        with autocast():
            reference = pipe.fuse_reference(frames[0], height, width)
            if distilled:
                out = list(pipe.stream(poses, reference, settings))
            else:
                out = list(_diffusion_stream(pipe, reference, settings, height, width).run(
                    [p.permute(2, 0, 1).float() / 255.0 for p in poses]))
    finally:
        for name, module in models.modules().items():
            module.train(was_training[name])
        models.video_unet.set_reference(None)
    return (torch.stack(out).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def _diffusion_stream(pipe: RainPipeline, reference, settings: StreamSettings, height: int, width: int) -> RainStream:
    unet = pipe.models.video_unet
    context = reference.context.to(pipe.device, pipe.dtype)

    def denoise(sample, timesteps, pose_features):
        unet.set_reference(reference.features)
        return unet(sample, timesteps, context, pose_features, None)

    def pose_features(poses):
        return pipe.models.pose_guider(poses.to(pipe.device, pipe.dtype))

    return RainStream(pose_features=pose_features, denoise=denoise, decode=pipe.make_decoder("vae"),
                      noise=SeededNoise(settings.seed), latent_shape=(4, height // 8, width // 8), settings=settings,
                      device=pipe.device, dtype=pipe.dtype)


def write_sample_video(path: str | Path, conditions: np.ndarray, rendered: np.ndarray, frames: np.ndarray,
                       fps: float) -> Path:
    """condition | rendered | real, side by side, as one video (written under a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    count = min(len(conditions), len(rendered), len(frames))
    with VideoWriter(partial, fps) as writer:
        for i in range(count):
            writer.write(np.concatenate([conditions[i], rendered[i], frames[i]], axis=1))
    partial.replace(path)
    return path
