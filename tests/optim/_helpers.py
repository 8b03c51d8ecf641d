"""Shared helpers of the optimizer tests: a tiny deterministic problem stepped by any optimizer."""

from __future__ import annotations

import torch

DT = torch.float64


def make_params(seed: int = 0, shapes=((6, 4), (4,), (3, 6))) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=DT).requires_grad_() for s in shapes]


def clone_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


def loss_fn(params: list[torch.Tensor], step: int) -> torch.Tensor:
    """A smooth, non-quadratic loss whose data change every step (so gradients keep changing)."""
    g = torch.Generator().manual_seed(100 + step)
    total = 0.0
    for p in params:
        x = torch.randn(*p.shape, generator=g, dtype=DT)
        total = total + (torch.tanh(p * x) ** 2).sum() + 0.1 * (p**2).sum()
    return total


def run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range,
        scheduler=None) -> None:
    for t in steps:
        opt.zero_grad(set_to_none=True)
        loss_fn(params, t).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
