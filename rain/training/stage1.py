"""Stage 1 (paper §4.2, after AnimateAnyone): image pairs from one clip. The reference UNet, the pose guider and
the denoising UNet (motion modules off) learn to render the target frame from a reference frame and the target's
condition image, with the v-prediction loss on the zero-SNR schedule (spec §5).

With probability ``[data] uncond_ratio`` a step sees neither the reference features nor the CLIP context (zero
context), as AnimateAnyone trains: that unconditional branch is what classifier-free guidance, and the
distillation that absorbs guidance, extrapolate from. The pose condition is always given.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .model_sets import (SD_DENOISER_EXTRA, ModelSet, from_sd_unet, hold_frozen_in, is_motion_parameter,
                         load_motion_modules, load_rain_set, reference_dead_parameters, set_trainable)
from .objectives import NoiseSchedule, uniform_timesteps
from .stage import Stage


class DenoisingNet(torch.nn.Module):
    """Reference UNet + pose guider + denoising UNet as one module (what several GPUs keep in sync)."""

    def __init__(self, models: ModelSet, train_reference: bool, run_every_module: bool = False):
        super().__init__()
        self.reference_unet = models.reference_unet
        self.pose_guider = models.pose_guider
        self.denoiser = models.denoiser
        self.train_reference = train_reference
        # Sharded, every process must gather (and back-propagate through) the same modules at every step, so a
        # step without reference still runs the reference UNet and uses its features with weight zero.
        self.run_every_module = run_every_module

    def forward(self, noisy, timesteps, reference_latents, context, conditions, use_reference: bool):
        """noisy [B,4,F,h,w], timesteps [B,F], reference_latents [B,4,h,w], context [B,1,D], conditions
        [B,3,F,H,W] in [0,1] → v-prediction [B,4,F,h,w]."""
        features = None
        if use_reference or self.run_every_module:
            if self.train_reference:
                features = self.reference_unet.reference_features_for_training(reference_latents, context)
            else:
                features = self.reference_unet.reference_features(reference_latents, context)
        self.denoiser.set_reference(features if use_reference else None)
        prediction = self.denoiser(noisy, timesteps, context, self.pose_guider(conditions))
        if features is not None and not use_reference and self.train_reference:
            unused = sum(feature.float().sum() for feature in features.values())
            prediction = prediction + (0.0 * unused).to(prediction.dtype)
        return prediction


class DenoisingStage(Stage):
    """What stages 1 and 2 share: the diffusion loss on v, with the stage's own timesteps."""

    def __init__(self, config, device, weight_dtype):
        super().__init__(config, device, weight_dtype)
        self.schedule = NoiseSchedule()
        self._reference_used = False      # by any micro-batch of this process since the last optimizer step
        self.trains_reference = False

    def starting_set(self) -> ModelSet:
        models_config = self.config.models
        models = from_sd_unet(models_config.sd_unet) if models_config.sd_unet else load_rain_set(models_config.init)
        if models_config.motion_modules:
            load_motion_modules(models.denoiser, models_config.motion_modules)
            models.sources["motion_unet"] = None     # no longer the file's: export the motion modules from memory
        return models

    def finish_build(self, models: ModelSet, train_reference: bool) -> DenoisingNet:
        self.models = models
        if self.config.train.gradient_checkpointing:
            models.reference_unet.enable_gradient_checkpointing()
            models.denoiser.enable_gradient_checkpointing()
        for name, module in models.modules().items():
            if models.sources.get(name) is not None:
                hold_frozen_in(module, self.frozen_dtype)
            module.to(self.device)
        self.load_encoders()
        self.trains_reference = train_reference
        return DenoisingNet(models, train_reference=train_reference, run_every_module=self.sharded).train()

    def kept_whole(self):
        # The trained reference UNet stops after its last up block, whose spatial transformers only hand their
        # recorded inputs to the denoiser (their outputs are dropped).
        return list(self.models.reference_unet.up_blocks[-1].attentions) if self.trains_reference else []

    def before_optimizer_step(self, accelerator):
        used, self._reference_used = self._reference_used, False
        if not (self.sharded and self.trains_reference):
            return
        # Sharded, the reference UNet's gradients are zeros where unsharded they would be missing. Where no
        # micro-batch of the whole step used the reference, unsharded AdamW skips those weights (no decay, no
        # momentum step): so must this.
        flag = torch.tensor([1.0 if used else 0.0], device=accelerator.device)
        if accelerator.reduce(flag, "max").item() == 0:
            for parameter in self.models.reference_unet.parameters():
                parameter.grad = None

    def timesteps(self, batch: int, frames: int, generator: torch.Generator) -> torch.Tensor:
        return uniform_timesteps(batch, frames, generator, self.schedule.num_train_timesteps)

    def loss(self, model, batch, generator, autocast):
        latents = self.encoders.latents(batch["frames"], generator)
        reference = self.encoders.reference_latents(batch["reference"])
        context = self.encoders.context(batch["clip_reference"])
        size, _, frames = latents.shape[:3]
        timesteps = self.timesteps(size, frames, generator)
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        use_reference = bool(torch.rand((), generator=generator) >= self.config.data.uncond_ratio)
        self._reference_used |= use_reference
        if not use_reference:
            context = torch.zeros_like(context)
        timesteps = timesteps.to(self.device)
        noisy = self.schedule.add_noise(latents, noise, timesteps)
        target = self.schedule.velocity(latents, noise, timesteps)
        with autocast():
            prediction = model(noisy, timesteps, reference, context, batch["conditions"].to(self.device),
                               use_reference)
        return F.mse_loss(prediction.float(), target)


class Stage1(DenoisingStage):
    def build(self):
        models = self.starting_set()
        models.denoiser.set_motion_modules_enabled(False)
        dead = reference_dead_parameters(models.reference_unet)
        self.trainable = {
            "reference_unet": set(set_trainable(models.reference_unet, lambda n: n not in dead)),
            # Motion modules are off; cond_proj only matters once guidance is distilled in.
            "motion_unet": set(set_trainable(models.denoiser,
                                             lambda n: not is_motion_parameter(n) and n not in SD_DENOISER_EXTRA)),
            "pose_guider": set(set_trainable(models.pose_guider, lambda n: True)),
        }
        return self.finish_build(models, train_reference=True)
