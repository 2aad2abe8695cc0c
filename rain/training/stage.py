"""What the shared loop (``loop.py``) asks of a stage: the module to optimise, the data, one micro-batch's loss,
what happens after an optimizer step, and the model set to export and preview."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from .. import loading
from ..loading import RainModels
from .config import TrainingConfig
from .data import ClipStore
from .datasets import ClipWindows, FramePairs
from .encoders import FrozenEncoders
from .model_sets import ModelSet, export_state, write_set
from .sharding import gathered_state


class Stage(ABC):
    def __init__(self, config: TrainingConfig, device: torch.device, weight_dtype: torch.dtype):
        self.config = config
        self.device = device
        self.weight_dtype = weight_dtype
        self.encoders: FrozenEncoders | None = None
        self.models: ModelSet | None = None
        self.trainable: dict[str, set[str]] = {}     # per set file: the parameter names that train
        self.sharded = False                         # set by the loop before build: FSDP will shard the model

    @property
    def frozen_dtype(self) -> torch.dtype:
        """What frozen weights are held in: the compute dtype, or float32 when sharded (an FSDP unit holds one
        dtype; it gathers in the compute dtype)."""
        return torch.float32 if self.sharded else self.weight_dtype

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

    def kept_whole(self) -> list[torch.nn.Module]:
        """Units of the trained model whose output does not reach the loss (see ``sharding.shard_units``)."""
        return []

    def after_sharding(self, shard) -> None:
        """Called once FSDP has sharded the trained model; ``shard(module)`` shards a module that never trains."""

    def before_optimizer_step(self, accelerator) -> None:
        """Called on every process once the step's gradients are complete, before clipping and the update."""

    def after_optimizer_step(self) -> None:
        """Called once per optimizer step (distillation updates its EMA target here)."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint must hold besides the trainable weights and the optimizer."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"this stage keeps no extra state, but the checkpoint holds {sorted(state)[:3]}")

    # -- output ------------------------------------------------------------------------------------------------
    def live_states(self, keep: bool) -> dict[str, dict[str, torch.Tensor]]:
        """Each set file's module's whole state on the CPU. Every process calls it (gathering shards is
        collective); only those with ``keep`` get the tensors."""
        return {name: gathered_state(module, keep) for name, module in self.models.modules().items()}

    def export(self, folder: Path, live: dict[str, dict[str, torch.Tensor]], metadata: dict,
               dtype: torch.dtype = torch.float32) -> Path:
        """The trained set in the official layout (the files ``rain.loading`` and the Load RAIN Model node read),
        from ``live_states``."""
        states = {name: export_state(live[name], self.models.sources.get(name), self.trainable.get(name, set()),
                                     dtype)
                  for name in self.models.modules()}
        return write_set(folder, states, metadata)

    def preview_models(self, live: dict[str, dict[str, torch.Tensor]] | None = None) -> RainModels:
        """The models to render a sample with: the trained ones, or whole copies built from ``live_states`` (a
        sharded model only computes with every process taking part)."""
        models = self.models
        if live is None:
            return RainModels(video_unet=models.denoiser, pose_guider=models.pose_guider,
                              reference_unet=models.reference_unet, image_encoder=self.encoders.image_encoder,
                              vae=self.encoders.vae)
        video_unet = loading.video_unet_from_state_dict(live["motion_unet"], device=self.device)
        video_unet.set_motion_modules_enabled(any(getattr(m, "enabled", False) for m in models.denoiser.modules()
                                                  if type(m).__name__ == "MotionModule"))
        return RainModels(video_unet=video_unet,
                          pose_guider=loading.pose_guider_from_state_dict(live["pose_guider"], device=self.device),
                          reference_unet=loading.reference_unet_from_state_dict(live["reference_unet"],
                                                                                device=self.device),
                          image_encoder=self.encoders.image_encoder, vae=self.encoders.vae)
