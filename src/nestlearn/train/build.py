"""Construction of a run: the model, the data, the precision context, and :func:`build_run`,
which puts them together with the optimizer, the slow-level schedule and the stream caches."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nestlearn.models.base import enable_activation_checkpointing
from nestlearn.train.config import TrainConfig
from nestlearn.train.distributed import Dist, Parallel, parallelize
from nestlearn.train.levels import SlowSchedule
from nestlearn.train.optimizer import build_optimizer, build_scheduler
from nestlearn.train.stream import StreamCaches, check_streamable

__all__ = ["Run", "autocast_for", "build_model", "build_run", "check_model_overrides",
           "check_splits", "make_sampler", "prepare_run_data"]


def check_model_overrides(config: TrainConfig) -> None:
    """Every ``model.<name>`` override must be a field of the family's HF config."""
    from nestlearn.models.presets import preset_config

    default = preset_config(config.model.family, config.model.size)
    unknown = [k for k in config.model.overrides if not hasattr(default, k)]
    if unknown:
        raise ValueError(f"model override {unknown[0]!r} is not a field of "
                         f"{type(default).__name__}")


def build_model(config: TrainConfig, *, vocab_size: int) -> nn.Module:
    """The model of ``config.model`` with ``vocab_size`` tokens, initialised from ``train.seed``."""
    check_model_overrides(config)
    return _build_checked_model(config, vocab_size=vocab_size)


def _build_checked_model(config: TrainConfig, *, vocab_size: int) -> nn.Module:
    """:func:`build_model` for a config whose overrides were checked already (the loop checks
    them once, before the data preparation)."""
    from nestlearn.models.presets import preset_config, preset_model_class

    overrides = dict(config.model.overrides)
    overrides.setdefault("vocab_size", vocab_size)
    if overrides["vocab_size"] < vocab_size:
        raise ValueError(f"model.vocab_size={overrides['vocab_size']} is smaller than the "
                         f"tokenizer's {vocab_size}")
    model_config = preset_config(config.model.family, config.model.size, **overrides)
    torch.manual_seed(config.seed)
    model = preset_model_class(config.model.family)(model_config)
    if config.precision == "fp64":
        model = model.double()
    return model


def prepare_run_data(config: TrainConfig, d: Dist, *, progress: bool):
    """The tokenized splits of ``config.data``: rank 0 builds the cache, the others then read
    it."""
    from nestlearn.data import prepare_data

    def run(show):
        return prepare_data(config.data.sources, tokenizer=config.data.tokenizer,
                            vocab_size=config.data.vocab_size, cache_dir=config.data.cache_dir,
                            progress=show)

    data = run(progress) if d.main else None
    d.barrier()
    return data if d.main else run(False)


def check_splits(config: TrainConfig, data) -> None:
    """The train and validation splits must each hold a window of ``data.seq_len`` tokens plus
    its next-token target; checked before the first step, not at the final evaluation."""
    seq_len = config.data.seq_len
    for name in ("train", "validation"):
        n = len(data[name])
        if n < seq_len + 1:
            raise ValueError(f"the {name} split has {n} tokens, fewer than data.seq_len={seq_len}"
                             f" + 1; give more text in data.sources or a smaller data.seq_len")


def make_sampler(config: TrainConfig, train_tokens):
    """Global batches of ``data.batch_size`` windows: random windows, or sequential lanes in
    ``data.mode=stream``."""
    from nestlearn.data import RandomWindows, SequentialWindows

    if config.data.mode == "random":
        return RandomWindows(train_tokens, seq_len=config.data.seq_len,
                             batch_size=config.data.batch_size, seed=config.data.seed)
    return SequentialWindows(train_tokens, seq_len=config.data.seq_len,
                             batch_size=config.data.batch_size, epochs=None)


def autocast_for(config: TrainConfig, device: torch.device):
    """A context factory: bf16 autocast under ``precision=bf16`` (or ``auto`` on a bf16 GPU),
    else a null context."""
    # Every family runs under bf16 autocast; the memories' recurrences switch it off for
    # themselves and run in float32 (nestlearn.memory, SelfModifyingTitans).
    bf16 = config.precision == "bf16" or (
        config.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


@dataclass
class Run:
    """Everything a training run holds between steps."""

    config: TrainConfig
    d: Dist
    par: Parallel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: Any
    schedule: SlowSchedule
    caches: StreamCaches
    tokenizer: Any
    validation: Any
    autocast: Any
    step: int = 0
    """Optimizer steps completed."""
    losses: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        return self.config.data.batch_size * self.config.data.seq_len

    @property
    def per_rank(self) -> int:
        """Rows of the global batch that this process takes."""
        return self.config.data.batch_size // self.d.world

    @property
    def micro(self) -> int:
        """Rows of one micro-batch."""
        return self.per_rank // self.config.grad_accum


def build_run(config: TrainConfig, d: Dist, data) -> Run:
    """The model (wrapped for ``d``), optimizer, schedule, sampler and stream caches of a fresh
    run on ``data``; ``config.model.overrides`` must have been checked."""
    model = _build_checked_model(config, vocab_size=data.tokenizer.vocab_size).to(d.device)
    check_streamable(config, model)
    if config.activation_checkpointing:
        enable_activation_checkpointing(model)
    par = parallelize(model, config, d)
    # After parallelize: fully_shard replaces the parameters (see SlowSchedule).
    schedule = SlowSchedule(par.raw, tokens_per_step=config.data.batch_size * config.data.seq_len)
    optimizer = build_optimizer(config, par.raw)
    return Run(config=config, d=d, par=par, optimizer=optimizer,
               scheduler=build_scheduler(config, optimizer),
               sampler=make_sampler(config, data.train), schedule=schedule,
               caches=StreamCaches(config), tokenizer=data.tokenizer,
               validation=data.validation, autocast=autocast_for(config, d.device))
