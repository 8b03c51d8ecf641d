"""Reference points that need no model: the unigram language model.

A unigram model predicts every token with its frequency in the training split, whatever the
context. Its loss is the entropy floor a language model must beat to show that it uses context at
all; the main job reports it beside the trained models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

__all__ = ["unigram_log_probs", "unigram_loss"]


def unigram_log_probs(tokens, vocab_size: int, *, smoothing: float = 1.0) -> Tensor:
    """Log-probabilities ``[vocab_size]`` (float64) of the unigram model of ``tokens``.

    Args:
        tokens: token ids: a :class:`~nestlearn.data.TokenArray` (its ``ids``), a NumPy array
            or a tensor.
        vocab_size: the tokenizer's vocabulary size; every id must be below it.
        smoothing: add-``smoothing`` (Laplace) pseudo-count per vocabulary entry, so an id unseen
            in ``tokens`` keeps a finite loss. Must be > 0.
    """
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if not smoothing > 0:
        raise ValueError(f"smoothing must be > 0 (a zero count would give an infinite loss), "
                         f"got {smoothing!r}")
    if isinstance(tokens, Tensor):
        tokens = tokens.cpu().numpy()
    ids = np.asarray(getattr(tokens, "ids", tokens)).reshape(-1).astype(np.int64)
    if ids.size == 0:
        raise ValueError("tokens is empty: a unigram model needs training tokens")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"token ids must lie in [0, vocab_size={vocab_size}), found "
                         f"[{ids.min()}, {ids.max()}]")
    counts = np.bincount(ids, minlength=vocab_size).astype(np.float64) + smoothing
    return torch.from_numpy(np.log(counts) - math.log(counts.sum()))


def unigram_loss(log_probs: Tensor, targets: Iterable[Tensor]) -> float:
    """Mean next-token loss (nats) of the unigram model ``log_probs`` over every id in
    ``targets`` (an iterable of id tensors, e.g. the targets of the evaluation windows)."""
    total, count = 0.0, 0
    for y in targets:
        y = torch.as_tensor(y).reshape(-1).long()
        total -= float(log_probs[y].sum())
        count += y.numel()
    if count == 0:
        raise ValueError("no targets to score")
    return total / count
