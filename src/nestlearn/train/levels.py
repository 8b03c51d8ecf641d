"""The level schedule hook: the only model-specific code of the training loop.

A slow CMS level (``cms_periods[l] > 0`` with ``cms_inner_lrs[l] == 0``, NL Eq. 71 with the outer
optimizer as the update rule) is updated once every ``ceil(period / tokens_per_step)`` optimizer
steps with the sum of its gradients over those steps; in between its parameters stay unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

__all__ = ["SlowLevel", "slow_levels"]


@dataclass
class SlowLevel:
    name: str
    """e.g. ``"cms level 1"``."""
    every: int
    """Optimizer steps between updates."""
    params: list[tuple[str, nn.Parameter]]
    """(qualified name, parameter) of every tensor of the level, all layers."""


def slow_levels(model: nn.Module, *, tokens_per_step: int) -> list[SlowLevel]:
    """The slow levels of ``model`` (empty for models without a CMS)."""
    config = model.config
    periods = getattr(config, "cms_periods", None)
    if not periods:
        return []
    inner = getattr(config, "cms_inner_lrs", None) or [0.0] * len(periods)
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for level, (period, lr) in enumerate(zip(periods, inner, strict=True)):
        if period <= 0 or lr > 0:
            continue
        params = []
        for layer in model.model.layers:
            cms_level = layer.cms.levels[level]
            for p in (*cms_level.weights(), *cms_level.norm.parameters()):
                params.append((names[id(p)], p))
        out.append(SlowLevel(name=f"cms level {level}",
                             every=max(1, math.ceil(period / tokens_per_step)), params=params))
    return out
