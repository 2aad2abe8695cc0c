"""Progress of a finite stream from its first frame on.

A stream emits nothing until its window has filled (12 frames and one more UNet call with the default
settings), so counting finished frames leaves a bar still for the whole warm-up. The work is UNet calls: one
per group of pushed frames, plus the drain calls that bring the last groups out. ``stream_steps`` drives a
stream and reports after every pushed frame and every drain call; the nodes' and the CLI's bars show it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch


def stream_calls(frames: int, settings) -> int:
    """UNet calls a stream makes for ``frames`` input frames (``settings``: a ``StreamSettings``): one per
    group, the last one padded, then one per level still in flight when ``settings.drain``."""
    groups = -(-int(frames) // settings.frames_per_group)
    if groups == 0:
        return 0
    return groups + (settings.num_groups - 1 if settings.drain else 0)


def stream_work(frames: int, settings) -> int:
    """The same in pose-frame slots (``frames_per_group`` per call), the unit of ``StreamStep.work_done``."""
    return stream_calls(frames, settings) * settings.frames_per_group


@dataclass
class StreamStep:
    frames: list[torch.Tensor]   # the frames this step finished (often none during the warm-up)
    frames_in: int               # pose frames pushed so far
    frames_out: int              # finished frames so far
    unet_calls: int              # UNet calls so far
    work_done: int               # pose-frame slots: frames_per_group per call plus the frames waiting for one
    draining: bool = False       # after the input ended


def stream_steps(stream, poses: Iterable[torch.Tensor]) -> Iterator[StreamStep]:
    """Push ``poses`` ([3,H,W] tensors) into ``stream`` (a ``RainStream``) one by one, then drain it; yields a
    ``StreamStep`` after every push and every drain call."""
    group = stream.settings.frames_per_group

    def step(frames, draining=False):
        done = stream.unet_calls * group + len(stream.state.pending)
        return StreamStep(frames, stream.frames_in, stream.frames_out, stream.unet_calls, done, draining)

    for pose in poses:
        yield step(stream.push(pose))
    for frames in stream.drain():
        yield step(frames, draining=True)
