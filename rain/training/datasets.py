"""What each stage trains on, read from a prepared dataset (``data.ClipStore``).

* ``FramePairs`` (stage 1, 2-D distillation): a reference frame and a target frame of one clip, with the target's
  condition image.
* ``ClipWindows`` (stage 2, 3-D distillation): K consecutive frames of one clip (every ``stride``-th) with their
  condition images, and a reference frame from anywhere in the same clip (paper §5).

Items are addressed by their *position* in an endless stream of samples, not by clip: position p belongs to epoch
p // len(clips), which visits the clips in a permutation fixed by (seed, epoch), and every random choice for the
item (which frames) comes from a generator seeded with (seed, p). So the data a run sees is a pure function of the
seed, and resuming at a position reproduces it exactly, with any number of loader workers.

Pixels are prepared the way inference prepares them: reference → ``vae_pixels`` and ``clip_pixel_values``
(``rain.models``), conditions → [0, 1] like ``pipeline.to_pose_tensor``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..models.image_encoder import clip_pixel_values
from ..models.vae import vae_pixels
from .data import ClipStore, DatasetError


def frames_to_vae_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 [n, H, W, 3] → float32 [3, n, H, W] in [-1, 1] (what ``vae_pixels`` gives at the frame's own size)."""
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0
    return pixels.permute(3, 0, 1, 2) * 2.0 - 1.0


def conditions_to_tensor(conditions: np.ndarray) -> torch.Tensor:
    """uint8 [n, H, W, 3] → float32 [3, n, H, W] in [0, 1] (the pose guider's input)."""
    return (torch.from_numpy(np.ascontiguousarray(conditions)).float() / 255.0).permute(3, 0, 1, 2)


def reference_inputs(frame: np.ndarray) -> dict[str, torch.Tensor]:
    """One reference frame as the reference UNet's VAE input and CLIP's input, exactly as ``fuse_reference``."""
    image = Image.fromarray(frame)
    height, width = frame.shape[:2]
    return {"reference": vae_pixels(image, height, width)[0], "clip_reference": clip_pixel_values(image)[0]}


class _PositionedDataset(torch.utils.data.Dataset):
    def __init__(self, store: ClipStore, seed: int):
        if len(store) == 0:
            raise DatasetError(f"{store.root} holds no clips; prepare it again from a folder with readable videos")
        self.store = store
        self.seed = int(seed)
        self._permutation: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        # Positions are endless; this only bounds samplers that ask.
        return 2 ** 62

    def clip_at(self, position: int) -> int:
        epoch, offset = divmod(int(position), len(self.store))
        if self._permutation is None or self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.store)))
        return int(self._permutation[1][offset])

    def rng(self, position: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 1, int(position)])


class FramePairs(_PositionedDataset):
    """{reference [3,H,W], clip_reference [3,224,224], frames [3,1,H,W], conditions [3,1,H,W]}."""

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        clip = self.clip_at(position)
        length = self.store.clip_length
        rng = self.rng(position)
        if length >= 2:
            reference, target = (int(i) for i in rng.choice(length, size=2, replace=False))
        else:
            reference = target = 0
        frames, conditions = self.store.read(clip, frames=[reference, target])
        return {**reference_inputs(frames[0]), "frames": frames_to_vae_pixels(frames[1:]),
                "conditions": conditions_to_tensor(conditions[1:])}


class ClipWindows(_PositionedDataset):
    """{reference, clip_reference, frames [3,K,H,W], conditions [3,K,H,W]}: K frames ``stride`` apart."""

    def __init__(self, store: ClipStore, seed: int, frames: int, stride: int = 1):
        super().__init__(store, seed)
        self.frames = frames
        self.stride = stride
        span = (frames - 1) * stride + 1
        if store.clip_length < span:
            raise DatasetError(f"{store.root}: clips hold {store.clip_length} frames, but {frames} frames "
                               f"{stride} apart need {span}; prepare longer clips or lower [data] frame_stride")
        self.span = span

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        clip = self.clip_at(position)
        rng = self.rng(position)
        start = int(rng.integers(0, self.store.clip_length - self.span + 1))
        reference = int(rng.integers(0, self.store.clip_length))
        indices = [start + i * self.stride for i in range(self.frames)]
        frames, conditions = self.store.read(clip, frames=[reference] + indices)
        return {**reference_inputs(frames[0]), "frames": frames_to_vae_pixels(frames[1:]),
                "conditions": conditions_to_tensor(conditions[1:])}


class PositionSampler(torch.utils.data.Sampler):
    """Endless positions for one process: micro-batch b of process r holds positions (b·world + r)·m … + m − 1.

    ``start`` is the first micro-batch to yield, so a resumed run continues where the checkpoint stopped."""

    def __init__(self, micro_batch_size: int, start: int = 0, rank: int = 0, world: int = 1):
        self.micro_batch_size = micro_batch_size
        self.start = start
        self.rank = rank
        self.world = world

    def __len__(self) -> int:
        return 2 ** 62

    def __iter__(self):
        batch = self.start
        while True:
            first = (batch * self.world + self.rank) * self.micro_batch_size
            yield from range(first, first + self.micro_batch_size)
            batch += 1


def make_loader(dataset: torch.utils.data.Dataset, micro_batch_size: int, *, start: int, rank: int, world: int,
                num_workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=micro_batch_size,
        sampler=PositionSampler(micro_batch_size, start=start, rank=rank, world=world),
        num_workers=num_workers, pin_memory=torch.cuda.is_available(), persistent_workers=False,
        prefetch_factor=2 if num_workers else None)
