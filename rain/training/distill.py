"""Consistency distillation (paper §4.3, after LCM and AnimateLCM): 2-D first, then 3-D.

* ``distill2d``: student = the stage-2 denoiser with its motion modules off (they stay frozen and untouched);
  teacher = the same denoiser before distillation. Images, one timestep per sample.
* ``distill3d``: student = the 2-D LCM plus the motion modules (the ``distill2d`` output, whose motion modules are
  stage 2's); teacher = the original UNet plus motion modules (the stage-2 output). Clips noised per group in the
  stream's pattern, on the solver's grid: group g sits g·T/p above the cleanest, so the student learns exactly the
  per-frame timesteps it will be called with (249/499/749/999 after 4-step LCM).

Per step: x_t from a grid timestep t; the teacher takes one DDIM step t → t − k (k = 1000 / ddim_timesteps) with
classifier-free guidance of scale w; the student's consistency output at (x_t, t) is pulled towards the EMA
target's output at (x_{t−k}, t − k) with the pseudo-Huber distance (c = 0.001). The LCM boundary scalings are the
ones the inference step uses. w is drawn per sample from [guidance_min, guidance_max] and reaches the student only
through the guidance-scale embedding (``time_embedding.cond_proj``), with the inference embedding of the same w.

Guidance convention: x̂ = x̂_u + w·(x̂_c − x̂_u) (on x̂₀ and ε̂ alike), AnimateAnyone's classifier-free guidance, whose
default scale 3.5 is the scale RAIN's examples pass to the guidance embedding; so the number a user types at
inference means the guidance the teacher would have applied.

The teacher's unconditional branch is AnimateAnyone's: no reference features (plain self-attention) and a zero
CLIP context, pose kept — exactly what stages 1 and 2 train with probability ``uncond_ratio``, and what
AnimateAnyone's pipelines feed the unconditional half at inference. Keeping the pose makes the guidance amplify
appearance (the reference), not the motion, which the pose fixes in both branches.
"""

from __future__ import annotations

import copy

import torch

from .model_sets import (SD_DENOISER_EXTRA, hold_frozen_in, is_motion_parameter, load_denoiser, load_rain_set,
                         set_trainable)
from .objectives import (DDIMSolver, NoiseSchedule, consistency_scalings, guidance_embeddings, pseudo_huber,
                         sample_guidance)
from .sharding import assign_full
from .stage import Stage

EMA_PREFIX = "ema."


class Distill(Stage):
    def __init__(self, config, device, weight_dtype):
        super().__init__(config, device, weight_dtype)
        self.schedule = NoiseSchedule()
        self.solver = DDIMSolver(self.schedule, config.distill.ddim_timesteps)
        self.video = config.stage == "distill3d"
        self.teacher = None
        self.target = None
        self._ema_pairs: list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]] = []

    def _trains(self, name: str) -> bool:
        if not self.video:
            return not is_motion_parameter(name)
        if self.config.distill.trainable == "motion":
            return is_motion_parameter(name) or name in SD_DENOISER_EXTRA
        return True

    def build(self):
        models = load_rain_set(self.config.models.init)
        self.models = models
        student = models.denoiser
        student.set_motion_modules_enabled(self.video)
        self.trainable = {"motion_unet": set(set_trainable(student, self._trains))}
        if student.time_embedding.cond_proj is None:
            raise ValueError(f"{self.config.models.init}: this denoiser has no guidance projection (cond_proj) to "
                             f"distil guidance into")
        if self.config.train.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        for module in models.modules().values():
            hold_frozen_in(module, self.frozen_dtype)
            module.to(self.device)
        self.target = copy.deepcopy(student).requires_grad_(False).eval()
        for (name, target), (_, online) in zip(self.target.named_parameters(), student.named_parameters()):
            if online.requires_grad:
                self._ema_pairs.append((name, target, online))
            else:
                target.data = online.data        # frozen parts are shared, not copied
        teacher = load_denoiser(self.config.models.teacher)
        teacher.set_motion_modules_enabled(self.video)
        self.teacher = teacher.to(self.device, self.weight_dtype).requires_grad_(False).eval()
        self.load_encoders()
        return student.train()

    # -- one step ----------------------------------------------------------------------------------------------
    def _timesteps(self, batch: int, frames: int, generator: torch.Generator) -> torch.Tensor:
        if self.video:
            data = self.config.data
            return self.solver.sample_grouped(batch, data.num_groups, data.frames_per_group, generator)
        return self.solver.sample_2d(batch, generator).expand(batch, frames).clone()

    def _consistency(self, velocity, sample, timesteps):
        c_skip, c_out = consistency_scalings(timesteps)
        return c_skip * sample + c_out * self.schedule.original_from_velocity(velocity.float(), sample, timesteps)

    def loss(self, model, batch, generator, autocast):
        models, schedule, config = self.models, self.schedule, self.config.distill
        latents = self.encoders.latents(batch["frames"], generator)
        reference = self.encoders.reference_latents(batch["reference"])
        context = self.encoders.context(batch["clip_reference"])
        size, _, frames = latents.shape[:3]
        timesteps = self._timesteps(size, frames, generator)
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        scales = sample_guidance(size, config.guidance_min, config.guidance_max, generator)
        embedding = guidance_embeddings(scales, models.denoiser.config.cond_proj_dim, device=self.device)
        timesteps = timesteps.to(self.device)
        previous = self.solver.previous(timesteps)
        noisy = schedule.add_noise(latents, noise, timesteps)
        with torch.no_grad(), autocast():
            features = models.reference_unet.reference_features(reference, context)
            pose = models.pose_guider(batch["conditions"].to(self.device))

        models.denoiser.set_reference(features)
        with autocast():
            prediction = self._consistency(model(noisy, timesteps, context, pose, embedding), noisy, timesteps)

        with torch.no_grad():
            with autocast():
                self.teacher.set_reference(features)
                conditional = self.teacher(noisy, timesteps, context, pose).float()
                self.teacher.set_reference(None)
                unconditional = self.teacher(noisy, timesteps, torch.zeros_like(context), pose).float()
            w = scales.to(self.device)[:, None, None, None, None]
            original = [schedule.original_from_velocity(v, noisy, timesteps) for v in (conditional, unconditional)]
            eps = [schedule.noise_from_velocity(v, noisy, timesteps) for v in (conditional, unconditional)]
            guided_original = original[1] + w * (original[0] - original[1])
            guided_noise = eps[1] + w * (eps[0] - eps[1])
            cleaner = self.solver.step(guided_original, guided_noise, timesteps)
            with autocast():
                self.target.set_reference(features)
                target = self._consistency(self.target(cleaner, previous, context, pose, embedding), cleaner,
                                           previous)
        if self.sharded:
            # FSDP keeps a root module's gathered weights after a forward without gradients: free them (and the
            # target's next forward gathers its updated shards instead of reusing these).
            self.teacher.reshard()
            self.target.reshard()
        return pseudo_huber(prediction, target, config.huber_c)

    def after_sharding(self, shard):
        shard(self.teacher)
        shard(self.target)
        # FSDP gave the student new (sharded) parameters: pair the target's shards with them.
        online = dict(self.models.denoiser.named_parameters())
        target = dict(self.target.named_parameters())
        self._ema_pairs = [(name, target[name], online[name]) for name, _, _ in self._ema_pairs]

    @torch.no_grad()
    def after_optimizer_step(self):
        rate = 1.0 - self.config.distill.ema_decay
        for _, target, online in self._ema_pairs:
            target.lerp_(online.detach().to(target.dtype), rate)

    def extra_state(self):
        return {EMA_PREFIX + name: target for name, target, _ in self._ema_pairs}

    def load_extra_state(self, state):
        expected = {EMA_PREFIX + name for name, _, _ in self._ema_pairs}
        if set(state) != expected:
            raise ValueError(f"the checkpoint's EMA target holds other parameters than this run trains "
                             f"({len(set(state) - expected)} unexpected, {len(expected - set(state))} missing)")
        for name, target, _ in self._ema_pairs:
            assign_full(target, state[EMA_PREFIX + name])
