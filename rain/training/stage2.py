"""Stage 2 (paper §4.1–4.2): temporal-adaptive motion. Clips of K = frames_per_group × num_groups frames are noised
per group with the timesteps of eq. (7) — t₀ uniform over the first T/p levels, each later group T/p above — the
way the stream's window holds them, and only the motion modules train. Everything else is frozen and exported
bit for bit as it was read.
"""

from __future__ import annotations

from .model_sets import is_motion_parameter, set_trainable
from .objectives import grouped_timesteps
from .stage1 import DenoisingStage


class Stage2(DenoisingStage):
    def build(self):
        models = self.starting_set()
        models.denoiser.set_motion_modules_enabled(True)
        self.trainable = {"motion_unet": set(set_trainable(models.denoiser, is_motion_parameter))}
        models.reference_unet.requires_grad_(False)
        models.pose_guider.requires_grad_(False)
        return self.finish_build(models, train_reference=False)

    def timesteps(self, batch, frames, generator):
        data = self.config.data
        return grouped_timesteps(batch, data.num_groups, data.frames_per_group, generator,
                                 self.schedule.num_train_timesteps)
