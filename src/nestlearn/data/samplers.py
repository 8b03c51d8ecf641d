"""Samplers that cut a :class:`TokenArray` into (input, target) windows.

They yield :class:`Batch` ``(inputs [B, T], targets [B, T], positions [B])`` of int64 tensors,
``targets`` being ``inputs`` shifted by one and ``positions`` the offset of ``inputs[:, 0]``:

- :class:`RandomWindows` (pre-training): windows at uniform random offsets; batch ``k`` depends
  only on ``(seed, k)``, so ``state_dict()`` is two integers and resuming is exact.
- :class:`SequentialWindows` (continual learning, streaming): the split, in document order, is cut
  into ``batch_size`` contiguous lanes; row ``b`` of batch ``k + 1`` continues row ``b`` of batch
  ``k`` (carry the memory state across batches; reset it where ``inputs == eot_id``).
- :func:`eval_windows` (evaluation): non-overlapping windows from the start, every target token
  scored exactly once; the remainder is a final shorter batch of one row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from .tokens import TokenArray

__all__ = ["Batch", "RandomWindows", "SequentialWindows", "eval_windows"]


class Batch(NamedTuple):
    """One batch; ``inputs == eot_id`` marks document ends (where per-sequence memory resets)."""

    inputs: torch.Tensor  # [B, T] int64
    targets: torch.Tensor  # [B, T] int64, inputs shifted left by one
    positions: torch.Tensor  # [B] int64, offset of inputs[:, 0] in the split


def _batch(tokens: TokenArray, starts: np.ndarray, seq_len: int) -> Batch:
    rows = np.stack([tokens.window(int(s), seq_len + 1) for s in starts])  # [B, T + 1]
    data = torch.from_numpy(rows)
    inputs, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    return Batch(inputs, targets, torch.from_numpy(starts.astype(np.int64)))


def _check_window(tokens: TokenArray, seq_len: int, batch_size: int) -> None:
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(tokens) < seq_len + 1:
        raise ValueError(
            f"split '{tokens.name}' has {len(tokens)} tokens, "
            f"fewer than seq_len + 1 = {seq_len + 1}"
        )


class RandomWindows:
    """Endless batches of windows at uniform random offsets.

    Batch ``k`` is a function of ``(seed, k)`` only, so resuming from ``state_dict()`` is exact.
    """

    def __init__(self, tokens: TokenArray, *, seq_len: int, batch_size: int, seed: int = 0) -> None:
        _check_window(tokens, seq_len, batch_size)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.seed = seed
        self.step = 0

    def __iter__(self) -> RandomWindows:
        return self

    def __next__(self) -> Batch:
        rng = np.random.default_rng([self.seed, self.step])
        high = len(self.tokens) - self.seq_len  # last valid start + 1
        starts = rng.integers(0, high, size=self.batch_size, dtype=np.int64)
        self.step += 1
        return _batch(self.tokens, starts, self.seq_len)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "random", "seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, "random")
        self.seed, self.step = int(state["seed"]), int(state["step"])


class SequentialWindows:
    """Stream the split in document order as ``batch_size`` contiguous lanes of ``seq_len`` windows.

    Lane ``b`` covers tokens ``[b * L, (b + 1) * L + 1)`` with ``L = (N - 1) // batch_size``; one
    epoch is ``L // seq_len`` batches (the tail of each lane that does not fill a window is
    skipped). ``epochs=None`` streams forever; otherwise iteration stops after ``epochs`` passes.
    """

    def __init__(
        self, tokens: TokenArray, *, seq_len: int, batch_size: int = 1, epochs: int | None = 1
    ) -> None:
        _check_window(tokens, seq_len, batch_size)
        if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"epochs must be a positive integer or None, got {epochs!r}")
        self.tokens, self.seq_len, self.batch_size, self.epochs = (
            tokens,
            seq_len,
            batch_size,
            epochs,
        )
        self.lane_len = (len(tokens) - 1) // batch_size
        self.batches_per_epoch = self.lane_len // seq_len
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"split '{tokens.name}' ({len(tokens)} tokens) is too short for "
                f"batch_size={batch_size} lanes of seq_len={seq_len}"
            )
        self.step = 0

    def __len__(self) -> int:
        return self.batches_per_epoch * (self.epochs or 1)

    @property
    def epoch(self) -> int:
        return self.step // self.batches_per_epoch

    def __iter__(self) -> SequentialWindows:
        return self

    def __next__(self) -> Batch:
        if self.epochs is not None and self.step >= self.batches_per_epoch * self.epochs:
            raise StopIteration
        k = self.step % self.batches_per_epoch
        starts = np.arange(self.batch_size, dtype=np.int64) * self.lane_len + k * self.seq_len
        self.step += 1
        return _batch(self.tokens, starts, self.seq_len)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "sequential", "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, "sequential")
        self.step = int(state["step"])


def _check_state(state: dict[str, Any], kind: str) -> None:
    if not isinstance(state, dict) or state.get("kind") != kind:
        got = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"sampler state is for '{got}', expected '{kind}'")


def eval_windows(tokens: TokenArray, *, seq_len: int, batch_size: int) -> Iterator[Batch]:
    """Non-overlapping windows from position 0; every one of the ``N - 1`` targets appears once."""
    _check_window(tokens, seq_len, batch_size)
    n_targets = len(tokens) - 1
    full = n_targets // seq_len
    starts = np.arange(full, dtype=np.int64) * seq_len
    for i in range(0, full, batch_size):
        yield _batch(tokens, starts[i : i + batch_size], seq_len)
    rest = n_targets - full * seq_len
    if rest:
        yield _batch(tokens, np.array([full * seq_len], dtype=np.int64), rest)
