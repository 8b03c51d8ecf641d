"""Carried memory state (``data.mode=stream``): one cache per micro-batch, passed from step to
step and detached (truncated BPTT), saved in checkpoints and rebuilt on resume.

A model whose state grows with the tokens it has read (``model.state_is_bounded`` false: a global
KV cache) is refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from nestlearn.models.cache import output_cache
from nestlearn.train.config import TrainConfig
from nestlearn.train.distributed import Dist

__all__ = ["StreamCaches", "check_streamable"]


def check_streamable(config: TrainConfig, model: nn.Module) -> None:
    if config.data.mode == "stream" and not model.state_is_bounded:
        raise ValueError(f"data.mode=stream carries the state across windows, and the KV cache of "
                         f"global attention ({config.model.family}) would grow without bound; set "
                         f"model.sliding_window or use data.mode=random")


def _cache_tensors(cache) -> list[Tensor]:
    found: list[Tensor] = []

    def record(t: Tensor) -> Tensor:
        found.append(t)
        return t

    cache.map_states(record)
    return found


def _restore_cache(cache, saved: list[Tensor]) -> None:
    it = iter(saved)

    def put(t: Tensor) -> Tensor:
        s = next(it, None)
        if s is None or s.shape != t.shape:
            raise ValueError("the checkpoint's carried memory state does not match this model "
                             "(data.mode=stream resumes only models with fixed-size states)")
        return s.to(device=t.device, dtype=t.dtype)

    cache.map_states(put)
    if next(it, None) is not None:
        raise ValueError("the checkpoint's carried memory state does not match this model")


class StreamCaches:
    """The per-micro-batch caches of this process (all None in ``data.mode=random``)."""

    def __init__(self, config: TrainConfig) -> None:
        self.enabled = config.data.mode == "stream"
        self.caches: list[Any] = [None] * config.grad_accum

    def __getitem__(self, i: int):
        return self.caches[i]

    def carry(self, i: int, out) -> None:
        """Keep micro-batch ``i``'s output state, detached, for the next step (stream mode)."""
        if self.enabled:
            self.caches[i] = output_cache(out).detach()

    def gather(self, d: Dist) -> list[list[list[Tensor]]] | None:
        """Every rank's caches as lists of CPU tensors (a collective; None in random mode)."""
        if not self.enabled:
            return None
        mine = [[torch.tensor(c.num_seen_tokens), *(t.detach().cpu() for t in _cache_tensors(c))]
                if c is not None else [] for c in self.caches]
        if d.world == 1:
            return [mine]
        everyone: list[Any] = [None] * d.world
        dist.all_gather_object(everyone, mine)  # tensors and lists only; rank 0 writes them
        return everyone

    def restore(self, forward_model: nn.Module, saved: list[list[Tensor]], *, micro: int,
                seq_len: int, device: torch.device) -> None:
        """Rebuild the carried states: a throw-away forward gives the cache's structure."""
        caches = []
        for tensors in saved:
            if not tensors:
                caches.append(None)
                continue
            probe = torch.zeros(micro, seq_len, dtype=torch.long, device=device)
            with torch.no_grad():
                cache = output_cache(forward_model(probe, use_cache=True))
            _restore_cache(cache, tensors[1:])
            cache.num_seen_tokens = int(tensors[0])
            caches.append(cache)
        self.caches = caches
