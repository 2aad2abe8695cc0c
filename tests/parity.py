"""Comparison helpers for golden parity tests."""

import torch


def tolerance(golden: torch.Tensor) -> float:
    """The golden README's bound for float32 CPU: 1e-4 · max(1, max|golden|)."""
    return 1e-4 * max(1.0, golden.abs().max().item())


def assert_close_to_golden(actual: torch.Tensor, golden: torch.Tensor, name: str = "") -> None:
    assert tuple(actual.shape) == tuple(golden.shape), f"{name}: shape {tuple(actual.shape)} != {tuple(golden.shape)}"
    diff = (actual.float() - golden.float()).abs().max().item()
    assert diff <= tolerance(golden), f"{name}: max abs diff {diff:.3e} > {tolerance(golden):.3e}"
