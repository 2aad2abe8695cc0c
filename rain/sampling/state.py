"""The stream state: everything a stream carries from one call to the next, as plain tensors and ints.

One object serves the plain stream, the fused step of every backend, resume and live sessions alike:

* the window — the latents of the groups in flight, oldest first, as one ``[1, 4, L·G, h, w]`` tensor, with
  each group's noise level, first input frame and number of real frames;
* the pose features of those groups, ``[1, C0, L·G, h, w]`` (computed once per group, spec §3.5);
* the pose frames of a group that has not filled yet;
* the decoder's memory (TAESDV: the previous frame's input of each MemBlock; spec §3.6);
* the noise source and its generator state;
* the position: frames taken in, frames given out, UNet calls.

``to_tensors`` / ``from_tensors`` turn it into a flat ``{name: tensor}`` dict plus JSON-able metadata, which is
what a resume file stores; restoring it continues the stream bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .noise import InjectedNoise, SeededNoise

FORMAT_VERSION = 1


@dataclass
class StreamState:
    noise: SeededNoise | InjectedNoise | object
    latents: torch.Tensor | None = None          # [1, C, L·G, h, w], model dtype, on the model's device
    pose_features: torch.Tensor | None = None    # [1, C0, L·G, h, w]
    levels: list[int] = field(default_factory=list)        # per group: 0 = one step from clean
    first_frames: list[int] = field(default_factory=list)  # per group: input index of its first frame
    valid: list[int] = field(default_factory=list)         # per group: real frames (the last may be padded)
    pending: list[torch.Tensor] = field(default_factory=list)  # pose frames [3, H, W] of the unfilled group
    decoder_memory: list[torch.Tensor] | None = None
    frames_in: int = 0
    frames_out: int = 0
    unet_calls: int = 0
    finished: bool = False

    @property
    def groups(self) -> int:
        return len(self.levels)

    def append_group(self, latents: torch.Tensor, pose_features: torch.Tensor, level: int, first_frame: int,
                     valid: int) -> None:
        self.latents = latents if self.latents is None else torch.cat([self.latents, latents], dim=2)
        self.pose_features = (pose_features if self.pose_features is None
                              else torch.cat([self.pose_features, pose_features], dim=2))
        self.levels.append(level)
        self.first_frames.append(first_frame)
        self.valid.append(valid)

    def drop_oldest(self, count: int, frames_per_group: int) -> None:
        """Forget the ``count`` oldest groups (they left the window clean)."""
        keep = self.groups - count
        if keep == 0:
            self.latents = self.pose_features = None
        else:
            self.latents = self.latents[:, :, count * frames_per_group:]
            self.pose_features = self.pose_features[:, :, count * frames_per_group:]
        del self.levels[:count], self.first_frames[:count], self.valid[:count]

    # -- saving and restoring ----------------------------------------------------------------------------------
    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors on the CPU, JSON-able metadata) holding the whole state; see ``from_tensors``."""
        if not hasattr(self.noise, "state_dict"):
            raise ValueError("this stream's noise is injected from outside, so its state cannot be saved")
        tensors: dict[str, torch.Tensor] = {}
        if self.latents is not None:
            tensors["latents"] = self.latents
            tensors["pose_features"] = self.pose_features
        for index, frame in enumerate(self.pending):
            tensors[f"pending.{index}"] = frame
        for index, memory in enumerate(self.decoder_memory or []):
            tensors[f"decoder_memory.{index}"] = memory
        tensors["noise.generator"] = self.noise.state_dict()["generator"]
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
        meta = {"version": FORMAT_VERSION, "levels": list(self.levels), "first_frames": list(self.first_frames),
                "valid": list(self.valid), "pending": len(self.pending),
                "decoder_memory": None if self.decoder_memory is None else len(self.decoder_memory),
                "frames_in": self.frames_in, "frames_out": self.frames_out, "unet_calls": self.unet_calls,
                "finished": self.finished}
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> "StreamState":
        """The state ``to_tensors`` described, on ``device``; window and decoder memory in ``dtype``."""
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"stream state format {meta.get('version')} is not {FORMAT_VERSION}; it was saved by "
                             f"another version of the pack")
        noise = SeededNoise(0)
        noise.load_state_dict({"generator": tensors["noise.generator"]})

        def on_device(tensor):
            return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)

        memory_count = meta["decoder_memory"]
        return cls(
            noise=noise,
            latents=on_device(tensors["latents"]) if "latents" in tensors else None,
            pose_features=on_device(tensors["pose_features"]) if "pose_features" in tensors else None,
            levels=list(meta["levels"]), first_frames=list(meta["first_frames"]), valid=list(meta["valid"]),
            pending=[tensors[f"pending.{i}"].float() for i in range(meta["pending"])],
            decoder_memory=None if memory_count is None else [on_device(tensors[f"decoder_memory.{i}"])
                                                              for i in range(memory_count)],
            frames_in=int(meta["frames_in"]), frames_out=int(meta["frames_out"]),
            unet_calls=int(meta["unet_calls"]), finished=bool(meta["finished"]))
