"""nestlearn.eval.lm: the per-token loss and evaluate()'s loss, perplexity and per-position curve,
against closed forms."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.data import TokenArray
from nestlearn.eval import EvalResult, evaluate, token_losses

V = 7


class PositionConfident(nn.Module):
    """Predicts ``(x_t + 1) mod V`` with logit ``t`` (0 on every other token), so on a counting
    sequence the loss at position t is ``log(1 + (V - 1) e^-t)``."""

    def forward(self, ids, use_cache=False):
        B, T = ids.shape
        logits = torch.zeros(B, T, V, dtype=torch.float64)  # [B, T, V]
        confidence = torch.arange(T, dtype=torch.float64).expand(B, T).unsqueeze(-1)
        logits.scatter_(2, ((ids + 1) % V).unsqueeze(-1), confidence)
        return SimpleNamespace(logits=logits)


def counting(n: int) -> TokenArray:
    ids = (np.arange(n) % V).astype(np.uint16)
    return TokenArray(ids, np.array([0, n], dtype=np.int64), eot_id=V - 1, name="count")


def expected(t: int) -> float:
    return math.log(1 + (V - 1) * math.exp(-t))


def test_token_losses_are_per_token_cross_entropy_in_fp32():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, V, generator=g).to(torch.bfloat16)
    targets = torch.randint(0, V, (3, 5), generator=g)
    losses = token_losses(logits, targets)
    assert losses.shape == (3, 5) and losses.dtype == torch.float32
    by_hand = -torch.log_softmax(logits.float(), -1).gather(2, targets.unsqueeze(-1))[..., 0]
    torch.testing.assert_close(losses, by_hand)
    torch.testing.assert_close(losses.mean(), F.cross_entropy(logits.float().flatten(0, 1),
                                                              targets.flatten()))


def test_evaluate_per_position_loss_matches_closed_form():
    seq_len = 5
    tokens = counting(1 + 3 * seq_len + 2)  # three full windows, then a 2-token one
    model = PositionConfident().train()
    result = evaluate(model, tokens, seq_len=seq_len, batch_size=2)
    assert isinstance(result, EvalResult)
    assert model.training  # the mode is restored
    assert result.tokens == 3 * seq_len + 2
    assert result.per_position == pytest.approx([expected(t) for t in range(seq_len)], rel=1e-12)
    counts = [4, 4, 3, 3, 3]  # positions 0 and 1 are also scored in the short last window
    mean = sum(c * expected(t) for t, c in enumerate(counts)) / sum(counts)
    assert result.loss == pytest.approx(mean, rel=1e-12)
    assert result.perplexity == pytest.approx(math.exp(mean), rel=1e-12)


def test_evaluate_max_batches_and_short_curve():
    tokens = counting(1 + 4 * 6)
    result = evaluate(PositionConfident(), tokens, seq_len=6, batch_size=2, max_batches=1)
    assert result.tokens == 2 * 6
    short = evaluate(PositionConfident(), counting(4), seq_len=3, batch_size=1)
    assert len(short.per_position) == 3 and short.tokens == 3
