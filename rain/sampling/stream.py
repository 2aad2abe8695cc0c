"""The infinite stream (spec §6): a window of noise groups at rising noise levels.

The window holds up to ``num_groups`` groups of ``frames_per_group`` latent frames. Each call takes one
group of new pose frames, appends a group of fresh noise at the highest level, runs the UNet once per
pass over the whole window with a timestep per frame, and moves every group one level down; the
group that reaches "clean" leaves the window and is decoded. So a call emits one finished group once
the window has filled (soft start), and at the end of a finite input the remaining groups keep
stepping down without new noise (drain) until every frame is out.

Everything carried between calls lives in one ``StreamState`` (``sampling.state``). The stream knows
nothing of models: it is given callables (pose features, denoise, decode) and, optionally, a fused
steady-state step (``rain.accel``) that does a whole steady call — pose guider, UNet, LCM step, decode —
as one graph with the same inputs, outputs and random draws as the eager call below.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .lcm import PerFrameLCM
from .state import StreamState


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

    @property
    def window_frames(self) -> int:
        return self.num_groups * self.frames_per_group


def group_timesteps(num_inference_steps: int, num_groups: int, timesteps: list[int]) -> list[int]:
    """Timestep of each level, cleanest first: ``timesteps[floor(linspace(N, 0, K+1)[1:])]`` (§6.2)."""
    indices = torch.linspace(num_inference_steps, 0, num_groups + 1)[1:].floor().long().tolist()
    return [timesteps[i] for i in indices]


class NonFiniteError(FloatingPointError):
    """The stream produced NaN or infinite values; the message names the frames."""


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
# (clean latents [G,4,h,w], decoder memory) → (frames [G,H,W,3] in [0,1] on the CPU, new memory); see rain.decoders
DecodeFn = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
NoiseFn = Callable[[tuple, str], torch.Tensor]


class SteadyStep(Protocol):
    """One steady-state call as a single step (``rain.accel``): the window holds ``num_groups - 1`` groups at
    levels 0 … K-2 and a full group of pose frames arrives.

    ``(latents [1,4,(K-1)G,h,w], pose_features [1,C0,(K-1)G,h,w], poses [1,3,G,H,W], new_latents [1,4,G,h,w],
    step_noise [1,4,KG,h,w], decoder memory)`` → ``(out, next latents, next pose features, next memory)``, where
    ``out`` is the finished group: frames [G,H,W,3] on the CPU when ``decodes`` is true, else clean latents
    [G,4,h,w] (decoded by the stream's decoder). Exactly what the eager call computes, with the same draws.
    """
    decodes: bool

    def __call__(self, latents, pose_features, poses, new_latents, step_noise, memory): ...


class RainStream:
    """Stateful stream: ``push`` pose frames, get finished frames back; ``finish`` drains.

    pose_features(poses [1,3,G,H,W] in [0,1]) → [1,C0,G,h,w]
    denoise(sample [1,4,F,h,w], timesteps [1,F], pose_features [1,C0,F,h,w]) → v-prediction
    decode: see ``DecodeFn``; None to emit clean latents [G,4,h,w] instead of frames.
    steady_step: an optional ``SteadyStep`` used for every steady-state call (one step per group only).
    state: a ``StreamState`` to continue from (resume); else a new one drawing from ``noise``.
    """

    def __init__(self, *, pose_features: PoseFeaturesFn, denoise: DenoiseFn, decode: DecodeFn | None,
                 noise: NoiseFn | None, latent_shape: tuple[int, int, int], settings: StreamSettings,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 record_calls: bool = False, steady_step: SteadyStep | None = None,
                 state: StreamState | None = None):
        self.settings = settings
        self.scheduler = PerFrameLCM(settings.num_inference_steps)
        self.level_timesteps = group_timesteps(settings.num_inference_steps, settings.num_groups,
                                               self.scheduler.timesteps)
        self._pose_features = pose_features
        self._denoise = denoise
        self._decode = decode
        self.latent_shape = tuple(latent_shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self.record_calls = record_calls
        self.calls: list[CallRecord] = []
        if steady_step is not None and settings.steps_per_group != 1:
            raise ValueError("the fused steady-state step does one LCM step per group; use steps_per_group=1 "
                             "or the eager backend")
        if steady_step is not None and record_calls:
            raise ValueError("record_calls inspects the eager call; open the stream without a fused step")
        self.steady_step = steady_step
        if state is None:
            if noise is None:
                raise ValueError("a new stream needs a noise source")
            state = StreamState(noise=noise)
        self.state = state
        # Per-frame timesteps of every window shape the stream meets, and their LCM step factors, built once
        # (a handful over a stream).
        self._timestep_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._coefficient_cache: dict[tuple[int, ...], object] = {}

    # -- counters (kept in the state, so they survive resume) -------------------------------------------
    @property
    def frames_in(self) -> int:
        return self.state.frames_in

    @property
    def frames_out(self) -> int:
        return self.state.frames_out

    @property
    def unet_calls(self) -> int:
        return self.state.unet_calls

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def latency_frames(self) -> int:
        """Input frames that must arrive after a frame before it comes out (3 groups = 12 by default)."""
        return (self.settings.num_groups - 1) * self.settings.frames_per_group

    # -- public API --------------------------------------------------------------------------------------
    def push(self, frames: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
        """Add pose frames ([3,H,W] each, or a [N,3,H,W] batch, in [0,1]); returns frames finished by them."""
        if self.state.finished:
            raise RuntimeError("this stream has been finished; open a new one")
        if isinstance(frames, torch.Tensor) and frames.ndim == 3:
            frames = [frames]
        out: list[torch.Tensor] = []
        state = self.state
        for frame in frames:
            state.pending.append(frame)
            state.frames_in += 1
            if len(state.pending) == self.settings.frames_per_group:
                group, state.pending = state.pending, []
                out.extend(self._call(group, valid=len(group)))
        return out

    def drain(self) -> Iterator[list[torch.Tensor]]:
        """End of input, one UNet call at a time (so a host can check for interruption between calls):
        pad a partial group with its last frame, then step the groups still in flight until all are out."""
        state = self.state
        if state.pending:
            valid = len(state.pending)
            group = state.pending + [state.pending[-1]] * (self.settings.frames_per_group - valid)
            state.pending = []
            yield self._call(group, valid=valid)
        if self.settings.drain:
            while state.groups:
                yield self._call(None, valid=0)
        state.finished = True

    def finish(self) -> list[torch.Tensor]:
        """End of input: every remaining frame (see ``drain``)."""
        return [frame for frames in self.drain() for frame in frames]

    def run(self, frames: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Generator over a whole input: yields each finished frame as soon as it is clean, in input order."""
        for frame in frames:
            yield from self.push(frame)
        yield from self.finish()

    # -- one call ------------------------------------------------------------------------------------------
    def _timesteps(self, levels: list[int], step: int) -> torch.Tensor:
        key = (*levels, step)
        if key not in self._timestep_cache:
            per_group = [self.level_timesteps[level] - self.scheduler.stride * step for level in levels]
            self._timestep_cache[key] = torch.tensor(per_group, device=self.device).repeat_interleave(
                self.settings.frames_per_group)[None]
        return self._timestep_cache[key]

    def _coefficients(self, levels: list[int], step: int):
        key = (*levels, step)
        if key not in self._coefficient_cache:
            self._coefficient_cache[key] = self.scheduler.coefficients(self._timesteps(levels, step), self.device)
        return self._coefficient_cache[key]

    def _is_steady(self) -> bool:
        return self.state.levels == list(range(self.settings.num_groups - 1))

    def _call(self, new_frames: list[torch.Tensor] | None, valid: int) -> list[torch.Tensor]:
        state, settings = self.state, self.settings
        channels, height, width = self.latent_shape
        group = settings.frames_per_group
        first_frame = state.frames_in - valid if new_frames is not None else None
        if new_frames is not None:
            poses = torch.stack([f.to(self.device, self.dtype) for f in new_frames], dim=1)[None]
            if self.steady_step is not None and self._is_steady():
                return self._steady_call(poses, first_frame, valid)
            features = self._pose_features(poses)
            latents = state.noise((1, channels, group, height, width), "new_latents")
            state.append_group(latents.to(self.device, self.dtype), features, settings.num_groups - 1,
                               first_frame, valid)
        if not state.groups:
            return []

        sample = state.latents
        record = None
        for step in range(settings.steps_per_group):
            timesteps = self._timesteps(state.levels, step)
            model_output = self._denoise(sample, timesteps, state.pose_features)
            noise = state.noise(tuple(sample.shape), "step_noise").to(self.device)
            if self.record_calls and step == 0:
                record = CallRecord(sample.clone(), timesteps.clone(), model_output.float().clone(), None)
            sample, _ = self.scheduler.step(model_output, timesteps, sample, noise,
                                            self._coefficients(state.levels, step))
            # Scheduler maths runs in float32; the window is kept in the model's dtype, as officially.
            sample = sample.to(self.dtype)
        state.latents = sample
        state.unet_calls += 1
        state.levels = [level - 1 for level in state.levels]

        out: list[torch.Tensor] = []
        clean = 0
        while clean < state.groups and state.levels[clean] < 0:
            clean += 1
        for index in range(clean):
            finished = sample[0, :, index * group:(index + 1) * group].transpose(0, 1)  # [G, C, h, w]
            first, count = state.first_frames[index], state.valid[index]
            self._check_finite(finished, first, count, "latents")
            out.extend(self._decoded(finished, first, count))
            if record is not None:
                record.emitted.extend(range(first, first + count))
        state.drop_oldest(clean, group)
        state.frames_out += len(out)
        if record is not None:
            record.window_after = state.latents
            self.calls.append(record)
        return out

    def _steady_call(self, poses: torch.Tensor, first_frame: int, valid: int) -> list[torch.Tensor]:
        state, settings = self.state, self.settings
        channels, height, width = self.latent_shape
        group = settings.frames_per_group
        # The eager call's draws, in its order: the new group's latents, then the step noise of the whole window.
        new_latents = state.noise((1, channels, group, height, width), "new_latents").to(self.device, self.dtype)
        step_noise = state.noise((1, channels, settings.window_frames, height, width), "step_noise")
        out, latents, pose_features, memory = self.steady_step(state.latents, state.pose_features, poses,
                                                               new_latents, step_noise.to(self.device),
                                                               state.decoder_memory)
        first, count = state.first_frames[0], state.valid[0]
        window_first = state.first_frames[1] if state.groups > 1 else first_frame
        self._check_finite(latents, window_first, first_frame + valid - window_first, "latents")
        state.latents, state.pose_features, state.decoder_memory = latents, pose_features, memory
        # The oldest group left clean, the others moved one level down, the new one sits just below the top.
        del state.first_frames[0], state.valid[0]
        state.levels = list(range(settings.num_groups - 1))
        state.first_frames.append(first_frame)
        state.valid.append(valid)
        state.unet_calls += 1
        if self.steady_step.decodes:
            self._check_finite(out, first, count, "frames")
            frames = list(out[:count])
        else:
            self._check_finite(out, first, count, "latents")
            frames = self._decoded(out, first, count)
        state.frames_out += len(frames)
        return frames

    def _decoded(self, finished: torch.Tensor, first: int, count: int) -> list[torch.Tensor]:
        if self._decode is None:
            return list(finished[:count])
        frames, self.state.decoder_memory = self._decode(finished, self.state.decoder_memory)
        self._check_finite(frames, first, count, "frames")
        return list(frames[:count])

    def _check_finite(self, values: torch.Tensor, first: int, count: int, what: str) -> None:
        """Stop at the first NaN/inf rather than write black or white frames without a word."""
        if bool(torch.isfinite(values).all()):
            return
        frames = f"frame {first}" if count <= 1 else f"frames {first}–{first + count - 1}"
        raise NonFiniteError(
            f"the stream produced NaN or infinite {what} for {frames} (UNet call {self.state.unet_calls}). "
            f"In float16 this is usually an overflow: run in bfloat16 or float32 (dtype setting). Otherwise a "
            f"checkpoint holds NaN/inf weights: download it again.")
