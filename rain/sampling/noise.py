"""Where the stream's random numbers come from: a seeded generator, or tensors the caller injects."""

from collections.abc import Iterable, Sequence

import torch


class SeededNoise:
    """Standard normal noise from a CPU ``torch.Generator``.

    Drawing on the CPU and moving the result makes a seed mean the same video on every machine
    (CUDA and CPU generators differ for one seed); the cost is negligible next to a UNet call.
    """

    def __init__(self, seed: int | None = 42):
        self.generator = torch.Generator("cpu")
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def __call__(self, shape: Sequence[int], kind: str) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class InjectedNoise:
    """Replays given tensors in order (e.g. the official run's recorded draws); checks every shape."""

    def __init__(self, tensors: Iterable[torch.Tensor]):
        self._tensors = iter(tensors)
        self.drawn = 0

    def __call__(self, shape: Sequence[int], kind: str) -> torch.Tensor:
        try:
            tensor = next(self._tensors)
        except StopIteration:
            raise ValueError(f"injected noise ran out after {self.drawn} tensors (needed {kind} {list(shape)})")
        if list(tensor.shape) != list(shape):
            raise ValueError(f"injected noise #{self.drawn} has shape {list(tensor.shape)}, "
                             f"the stream needs {kind} {list(shape)}")
        self.drawn += 1
        return tensor.to(torch.float32)
