"""Language-model evaluation: validation loss, perplexity and the per-position loss curve.

:func:`evaluate` scores ``eval_windows`` of a token split, each window from a fresh memory state;
the training loop calls it every ``train.eval_every`` steps and ``nestlearn eval RUN`` on a saved
model. :func:`token_losses` is the per-token next-token loss that both the loop and
:func:`evaluate` take the mean of.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EvalResult", "evaluate", "token_losses"]


@dataclass
class EvalResult:
    loss: float
    """Mean next-token loss over every scored token."""
    perplexity: float
    per_position: list[float]
    """Mean loss at each position 0..T-1 of a window (the context-usage curve, NL Fig. 10)."""
    tokens: int


def token_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token next-token loss ``[B, T]`` of ``logits: [B, T, V]`` against ``targets: [B, T]``
    (the sampler's shifted ids), computed in fp32 or wider."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.to(dtype).flatten(0, 1), targets.flatten(),
                           reduction="none").view(targets.shape)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokens,
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int = 0,
    device: torch.device | str = "cpu",
    autocast=contextlib.nullcontext,
    progress: bool = False,
) -> EvalResult:
    """Validation loss, perplexity and per-position loss over ``eval_windows`` of ``tokens``
    (the first ``max_batches`` batches; 0 = all). Each window starts from a fresh memory state."""
    from tqdm.auto import tqdm

    from nestlearn.data import eval_windows

    was_training = model.training
    model.eval()
    sums = torch.zeros(seq_len, dtype=torch.float64)
    counts = torch.zeros(seq_len, dtype=torch.float64)
    windows = eval_windows(tokens, seq_len=seq_len, batch_size=batch_size)
    total = math.ceil((len(tokens) - 1) / (seq_len * batch_size))
    total = min(total, max_batches) if max_batches else total
    bar = tqdm(windows, total=total, desc="eval", unit="batch", disable=not progress,
               leave=False)
    for i, (x, y, _) in enumerate(bar):
        if max_batches and i >= max_batches:
            break
        with autocast():
            logits = model(x.to(device), use_cache=False).logits
        losses = token_losses(logits, y.to(device)).double().cpu()  # [B, T]
        sums[: losses.shape[1]] += losses.sum(0)
        counts[: losses.shape[1]] += losses.shape[0]
    bar.close()
    model.train(was_training)
    if not counts.any():
        raise ValueError(f"split '{tokens.name}' has no window of seq_len={seq_len}")
    loss = float(sums.sum() / counts.sum())
    per_position = (sums / counts.clamp(min=1)).tolist()
    return EvalResult(loss=loss, perplexity=math.exp(min(loss, 700.0)),
                      per_position=per_position[: int((counts > 0).sum())],
                      tokens=int(counts.sum()))
