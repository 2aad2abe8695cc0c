"""What the shared loop (``loop.py``) asks of a stage: the module to optimise, the data, one micro-batch's loss,
what happens after an optimizer step, and the model set to export and preview."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from ..loading import RainModels
from .config import TrainingConfig
from .data import ClipStore
from .datasets import ClipWindows, FramePairs
from .encoders import FrozenEncoders
from .model_sets import ModelSet, export_state, write_set


class Stage(ABC):
    def __init__(self, config: TrainingConfig, device: torch.device, weight_dtype: torch.dtype):
        self.config = config
        self.device = device
        self.weight_dtype = weight_dtype
        self.encoders: FrozenEncoders | None = None
        self.models: ModelSet | None = None
        self.trainable: dict[str, set[str]] = {}     # per set file: the parameter names that train

    # -- set up ----------------------------------------------------------------------------------------------
    @abstractmethod
    def build(self) -> torch.nn.Module:
        """Load the models and mark what trains; returns the module the optimizer works on."""

    def dataset(self) -> torch.utils.data.Dataset:
        store = ClipStore(self.config.dataset)
        if self.config.is_video_stage:
            return ClipWindows(store, self.config.seed, self.config.frames_per_clip, self.config.data.frame_stride)
        return FramePairs(store, self.config.seed)

    def load_encoders(self) -> FrozenEncoders:
        self.encoders = FrozenEncoders.from_config(self.config, self.device, self.weight_dtype)
        return self.encoders

    # -- one step ----------------------------------------------------------------------------------------------
    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: dict, generator: torch.Generator, autocast) -> torch.Tensor:
        """One micro-batch's loss (``model`` is the prepared module ``build`` returned)."""

    def after_optimizer_step(self) -> None:
        """Called once per optimizer step (distillation updates its EMA target here)."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint must hold besides the trainable weights and the optimizer."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"this stage keeps no extra state, but the checkpoint holds {sorted(state)[:3]}")

    # -- output ------------------------------------------------------------------------------------------------
    def export(self, folder: Path, metadata: dict, dtype: torch.dtype = torch.float32) -> Path:
        """The trained set in the official layout (the files ``rain.loading`` and the Load RAIN Model node read)."""
        states = {name: export_state(module, self.models.sources.get(name), self.trainable.get(name, set()), dtype)
                  for name, module in self.models.modules().items()}
        return write_set(folder, states, metadata)

    def preview_models(self) -> RainModels:
        return RainModels(video_unet=self.models.denoiser, pose_guider=self.models.pose_guider,
                          reference_unet=self.models.reference_unet, image_encoder=self.encoders.image_encoder,
                          vae=self.encoders.vae)
