"""The outer optimizer and its learning-rate schedule (``OptimConfig``).

Weight decay applies to matrices only (parameters with ``ndim >= 2``); ``optim.name`` picks AdamW,
SGD or a ``nestlearn.optim`` deep optimizer. The schedule is a linear warmup, then cosine, linear
or constant down to ``min_lr_ratio`` of the peak.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nestlearn.train.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]

_DEEP = {"associative_momentum": "AssociativeMomentum", "delta_momentum": "DeltaMomentum",
         "deep_momentum": "DeepMomentum", "m3": "M3"}


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = config.optim
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": other, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, **o.kwargs)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, **o.kwargs)
    try:
        import nestlearn.optim as nl_optim
    except ImportError as err:
        raise ValueError(f"optim.name={o.name!r} needs nestlearn.optim ({err})") from None
    cls = _DEEP[o.name]
    if not hasattr(nl_optim, cls):
        raise ValueError(f"optim.name={o.name!r}: nestlearn.optim has no {cls}")
    try:
        return getattr(nl_optim, cls)(groups, lr=o.lr, **o.kwargs)
    except TypeError as err:
        raise ValueError(f"optim.kwargs for {cls}: {err}") from None


def lr_factor(config: TrainConfig):
    """The schedule as a multiple of ``optim.lr``, a function of the optimizer steps taken."""
    o, steps = config.optim, config.steps

    def factor(step: int) -> float:  # step = optimizer steps taken so far
        if step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, steps - o.warmup_steps - 1))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if o.schedule == "cosine" else 1 - progress
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * shape

    return factor


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
