"""The slow-level schedule: the loop's only contact with a model's levels.

A model names its slow levels in ``model.slow_parameter_groups()`` (``SlowGroup``: parameters and
an update period in training tokens; for HOPE a CMS level with ``cms_periods[l] > 0`` and
``cms_inner_lrs[l] == 0``, NL Eq. 71 with the outer optimizer as the update rule). Such a level is
updated once every ``ceil(period / tokens_per_step)`` optimizer steps with the sum of its (clipped)
gradients over those steps; in between its gradients are withheld, so the optimizer (and weight
decay) leave it unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["SlowLevel", "SlowSchedule", "slow_levels"]


@dataclass
class SlowLevel:
    name: str
    """e.g. ``"cms level 1"``."""
    every: int
    """Optimizer steps between updates."""
    params: list[tuple[str, nn.Parameter]]
    """(qualified name, parameter) of every tensor of the level, all layers."""


def slow_levels(model: nn.Module, *, tokens_per_step: int) -> list[SlowLevel]:
    """The slow levels of ``model`` (empty when it has none), with their period in steps."""
    return [SlowLevel(name=group.name, every=max(1, math.ceil(group.period / tokens_per_step)),
                      params=group.params)
            for group in model.slow_parameter_groups()]


class SlowSchedule:
    """Withholds the gradients of the slow levels and applies their sums on schedule.

    Build it after any ``fully_shard``: that replaces every parameter of the sharded modules by a
    new (DTensor) ``nn.Parameter``, so parameters collected before it are stale objects that never
    receive a gradient (withholding/applying on them left the real slow level to the optimizer at
    every step; FSDP2 HOPE drifted by ~lr).
    """

    def __init__(self, model: nn.Module, *, tokens_per_step: int) -> None:
        self.levels = slow_levels(model, tokens_per_step=tokens_per_step)
        params = dict(model.named_parameters())
        if any(params[n] is not p for level in self.levels for n, p in level.params):
            raise RuntimeError("slow-level parameters are not the model's (sharded) parameters")
        self.sums: dict[str, Tensor] = {n: torch.zeros_like(p) for level in self.levels
                                        for n, p in level.params}

    def step(self, step: int) -> None:
        """After backward and clipping of optimizer step ``step`` (counted from 1), before the
        optimizer: add each slow gradient to its sum and withhold it, except at a level's update
        step, where the level's gradient becomes the sum (NL Eq. 71)."""
        for level in self.levels:
            apply = step % level.every == 0
            for n, p in level.params:
                if p.grad is not None:
                    self.sums[n] += p.grad
                p.grad = None
                if apply:
                    p.grad, self.sums[n] = self.sums[n], torch.zeros_like(self.sums[n])

    def summary(self) -> dict[str, int]:
        """Level name -> optimizer steps between its updates (for ``train_config.json``)."""
        return {level.name: level.every for level in self.levels}
