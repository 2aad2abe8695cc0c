"""The infinite stream (spec §6): a window of noise groups at rising noise levels.

The window holds up to ``num_groups`` groups of ``frames_per_group`` latent frames. Each call takes one
group of new pose frames, appends a group of fresh noise at the highest level, runs the UNet once per
pass over the whole window with a timestep per frame, and moves every group one level down; the
group that reaches "clean" leaves the window and is decoded. So a call emits one finished group once
the window has filled (soft start), and at the end of a finite input the remaining groups keep
stepping down without new noise (drain) until every frame is out.

The stream knows nothing of models: it is given three callables (pose features, denoise, decode).
"""

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from .lcm import PerFrameLCM


@dataclass
class StreamSettings:
    frames_per_group: int = 4
    num_groups: int = 4
    steps_per_group: int = 1
    guidance_scale: float = 2.5
    seed: int | None = 42
    decoder: str = "taesdv"
    temporal_strength: float = 1.0
    drain: bool = True

    def __post_init__(self):
        for name in ("frames_per_group", "num_groups", "steps_per_group"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.frames_per_group * self.num_groups > 32:
            raise ValueError(f"a window of {self.frames_per_group} × {self.num_groups} frames exceeds the motion "
                             f"modules' 32 positions; lower frames_per_group or num_groups")
        if self.decoder not in ("taesdv", "vae", "none"):
            raise ValueError(f"decoder must be 'taesdv', 'vae' or 'none', got {self.decoder!r}")

    @property
    def num_inference_steps(self) -> int:
        return self.num_groups * self.steps_per_group


def group_timesteps(num_inference_steps: int, num_groups: int, timesteps: list[int]) -> list[int]:
    """Timestep of each level, cleanest first: ``timesteps[floor(linspace(N, 0, K+1)[1:])]`` (§6.2)."""
    indices = torch.linspace(num_inference_steps, 0, num_groups + 1)[1:].floor().long().tolist()
    return [timesteps[i] for i in indices]


@dataclass
class _Group:
    latents: torch.Tensor            # [1, C, G, h, w], in the model's dtype
    pose_features: torch.Tensor      # [1, C0, G, h, w]
    level: int                       # index into the level timesteps; 0 = next to clean
    first_frame: int                 # index of its first input frame
    valid: int                       # frames that are real (the last group of a finite input may be padded)


@dataclass
class CallRecord:
    """What one UNet call saw and did (kept only when ``record_calls``), for parity checks and debugging."""
    sample: torch.Tensor
    timesteps: torch.Tensor
    model_output: torch.Tensor
    window_after: torch.Tensor | None
    emitted: list[int] = field(default_factory=list)


PoseFeaturesFn = Callable[[torch.Tensor], torch.Tensor]
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
DecodeFn = Callable[[torch.Tensor], torch.Tensor]
NoiseFn = Callable[[tuple, str], torch.Tensor]


class RainStream:
    """Stateful stream: ``push`` pose frames, get finished frames back; ``finish`` drains.

    pose_features(poses [1,3,G,H,W] in [0,1]) → [1,C0,G,h,w]
    denoise(sample [1,4,F,h,w], timesteps [1,F], pose_features [1,C0,F,h,w]) → v-prediction
    decode(latents [G,4,h,w]) → frames [G,H,W,3] in [0,1]; None to emit latents [G,4,h,w] instead.
    """

    def __init__(self, *, pose_features: PoseFeaturesFn, denoise: DenoiseFn, decode: DecodeFn | None,
                 noise: NoiseFn, latent_shape: tuple[int, int, int], settings: StreamSettings,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 record_calls: bool = False):
        self.settings = settings
        self.scheduler = PerFrameLCM(settings.num_inference_steps)
        self.level_timesteps = group_timesteps(settings.num_inference_steps, settings.num_groups,
                                               self.scheduler.timesteps)
        self._pose_features = pose_features
        self._denoise = denoise
        self._decode = decode
        self._noise = noise
        self.latent_shape = tuple(latent_shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self.record_calls = record_calls
        self.calls: list[CallRecord] = []

        self._window: deque[_Group] = deque()
        self._pending: list[torch.Tensor] = []
        self.frames_in = 0
        self.frames_out = 0
        self.unet_calls = 0
        self.finished = False

    # -- public API --------------------------------------------------------------------------------------
    @property
    def latency_frames(self) -> int:
        """Input frames that must arrive after a frame before it comes out (3 groups = 12 by default)."""
        return (self.settings.num_groups - 1) * self.settings.frames_per_group

    def push(self, frames: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
        """Add pose frames ([3,H,W] each, or a [N,3,H,W] batch, in [0,1]); returns frames finished by them."""
        if self.finished:
            raise RuntimeError("this stream has been finished; open a new one")
        if isinstance(frames, torch.Tensor) and frames.ndim == 3:
            frames = [frames]
        out: list[torch.Tensor] = []
        for frame in frames:
            self._pending.append(frame)
            self.frames_in += 1
            if len(self._pending) == self.settings.frames_per_group:
                group, self._pending = self._pending, []
                out.extend(self._call(group, valid=len(group)))
        return out

    def drain(self) -> Iterator[list[torch.Tensor]]:
        """End of input, one UNet call at a time (so a host can check for interruption between calls):
        pad a partial group with its last frame, then step the groups still in flight until all are out."""
        if self._pending:
            valid = len(self._pending)
            group = self._pending + [self._pending[-1]] * (self.settings.frames_per_group - valid)
            self._pending = []
            yield self._call(group, valid=valid)
        if self.settings.drain:
            while self._window:
                yield self._call(None, valid=0)
        self.finished = True

    def finish(self) -> list[torch.Tensor]:
        """End of input: every remaining frame (see ``drain``)."""
        return [frame for frames in self.drain() for frame in frames]

    def run(self, frames: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Generator over a whole input: yields each finished frame as soon as it is clean, in input order."""
        for frame in frames:
            yield from self.push(frame)
        yield from self.finish()

    # -- one call ------------------------------------------------------------------------------------------
    def _call(self, new_frames: list[torch.Tensor] | None, valid: int) -> list[torch.Tensor]:
        settings = self.settings
        channels, height, width = self.latent_shape
        if new_frames is not None:
            poses = torch.stack([f.to(self.device, self.dtype) for f in new_frames], dim=1)[None]
            features = self._pose_features(poses)
            latents = self._noise((1, channels, settings.frames_per_group, height, width), "new_latents")
            self._window.append(_Group(latents.to(self.device, self.dtype), features, settings.num_groups - 1,
                                       self.frames_in - valid, valid))
        if not self._window:
            return []

        groups = list(self._window)
        sample = torch.cat([g.latents for g in groups], dim=2)
        pose_features = torch.cat([g.pose_features for g in groups], dim=2)
        record = None
        for step in range(settings.steps_per_group):
            per_group = [self.level_timesteps[g.level] - self.scheduler.stride * step for g in groups]
            timesteps = torch.tensor(per_group, device=self.device).repeat_interleave(settings.frames_per_group)[None]
            model_output = self._denoise(sample, timesteps, pose_features)
            noise = self._noise(tuple(sample.shape), "step_noise").to(self.device)
            if self.record_calls and step == 0:
                record = CallRecord(sample.clone(), timesteps.clone(), model_output.float().clone(), None)
            sample, _ = self.scheduler.step(model_output, timesteps, sample, noise)
            # Scheduler maths runs in float32; the window is kept in the model's dtype, as officially.
            sample = sample.to(self.dtype)
        self.unet_calls += 1

        frames_per_group = settings.frames_per_group
        for index, group in enumerate(groups):
            group.latents = sample[:, :, index * frames_per_group:(index + 1) * frames_per_group]
            group.level -= 1

        out: list[torch.Tensor] = []
        while self._window and self._window[0].level < 0:
            group = self._window.popleft()
            finished = group.latents[0].transpose(0, 1)  # [G, C, h, w]
            frames = self._decode(finished) if self._decode is not None else finished
            out.extend(frames[:group.valid])
            if record is not None:
                record.emitted.extend(range(group.first_frame, group.first_frame + group.valid))
        self.frames_out += len(out)
        if record is not None:
            record.window_after = torch.cat([g.latents for g in self._window], dim=2) if self._window else None
            self.calls.append(record)
        return out
