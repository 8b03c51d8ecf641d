"""Causal depthwise 1-D convolution with a carried state (Titans section 4.4, NL section 8.3).

Dimension legend: B batch, T time, C channels, K kernel size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CausalDepthwiseConv", "new_token_mask"]


class CausalDepthwiseConv(nn.Module):
    """``y_t = x_t + sum_{j<K} w_j * x_{t-K+1+j}`` per channel (a residual filter, so a fresh
    layer passes its input through); the last ``K-1`` inputs are the state, so a stream processed
    in pieces gives the same output as one pass.

    Args:
        channels: number of channels C (one filter each).
        kernel_size: window K (NL uses 4).
    """

    def __init__(self, channels: int, kernel_size: int = 4) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.reset_parameters()

    def reset_parameters(self, init=nn.init) -> None:
        """Filter taps ~ N(0, 0.02^2). ``init`` is a ``torch.nn.init``-like namespace (models pass
        ``transformers.initialization``, which skips weights loaded from a checkpoint)."""
        init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, x: Tensor, *, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x: [B, T, C]``, ``state: [B, K-1, C]`` (zeros if None) -> ``(y [B, T, C], state)``."""
        B, T, C = x.shape
        K = self.kernel_size
        if state is None:
            state = x.new_zeros(B, K - 1, C)
        xp = torch.cat([state.to(x.dtype), x], dim=1)  # [B, K-1+T, C]
        w = self.weight.to(x.dtype)
        if T <= _SHORT:  # a chunk of a recurrent layer: a few fused ops instead of conv1d's call
            y = _ShortCausalConv.apply(xp, w)
        else:
            y = x + F.conv1d(xp.transpose(1, 2), w, groups=C).transpose(1, 2)
        return y, xp[:, xp.shape[1] - (K - 1):]


_SHORT = 64  # inputs up to this length use _ShortCausalConv (measured faster on CPU up to ~64)


class _ShortCausalConv(torch.autograd.Function):
    """``y_t = x_t + sum_j w_j x_{t-K+1+j}`` from the padded input ``xp = [state, x]``
    ``[B, K-1+T, C]`` and the taps ``w [C, 1, K]``, as ``K`` multiply-adds over shifted views
    (forward) and their transposes (backward). For the short segments of the recurrent layers
    (``T`` = a chunk) the dispatch of ``conv1d`` and its backward costs more than the arithmetic.
    The backward uses differentiable operations only (a double backward goes through it); tests
    compare it with ``conv1d`` (values, gradients, ``gradcheck``, ``gradgradcheck``)."""

    @staticmethod
    def forward(ctx, xp, w):
        K = w.shape[-1]
        T = xp.shape[1] - (K - 1)
        wt = w[:, 0].t()  # [K, C]
        y = xp[:, K - 1:].clone()
        for j in range(K):
            y.addcmul_(xp[:, j:j + T], wt[j])
        ctx.save_for_backward(xp, w)
        return y

    @staticmethod
    def backward(ctx, g):
        xp, w = ctx.saved_tensors
        K = w.shape[-1]
        wt = w[:, 0].t()
        gxp = None
        if ctx.needs_input_grad[0]:
            parts = [g * wt[j] for j in range(K)]
            gxp = F.pad(parts[0], (0, 0, 0, K - 1))
            for j in range(1, K):
                gxp = gxp + F.pad(parts[j], (0, 0, j, K - 1 - j))
            gxp = gxp + F.pad(g, (0, 0, K - 1, 0))  # the skip connection
        gw = None
        if ctx.needs_input_grad[1]:
            # [C, K]: sum over batch and time of g_t * x_{t-K+1+j}
            gw = (xp.unfold(1, K, 1) * g[..., None]).sum((0, 1))[:, None, :]
        return gxp, gw


def new_token_mask(attention_mask: Tensor, batch: int, num_new: int) -> Tensor:
    """The ``[B, T]`` bool mask of the new tokens from a Hugging Face 2-D padding mask
    ``[B, T_total]`` (its last ``T`` columns; generation passes the mask of the whole sequence)."""
    if attention_mask.ndim != 2 or attention_mask.shape[0] != batch or (
        attention_mask.shape[1] < num_new
    ):
        raise ValueError(
            f"attention_mask must have shape [{batch}, >= {num_new}], got "
            f"{tuple(attention_mask.shape)}"
        )
    return attention_mask[:, attention_mask.shape[1] - num_new:].to(torch.bool)
