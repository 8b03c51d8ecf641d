"""Gated feed-forward block: SwiGLU, as in Llama.

Shazeer, 2020, "GLU Variants Improve Transformer".

Dimension legend: B batch, T tokens, D model width, F hidden (intermediate) width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SwiGLU", "swiglu_hidden_size"]


def swiglu_hidden_size(dim: int, *, multiple_of: int = 256) -> int:
    """The Llama default hidden width: ``8/3 * dim`` rounded up to a multiple of ``multiple_of``.

    Two thirds of a ``4 * dim`` MLP, so the three SwiGLU matrices hold about as many parameters as
    the two matrices of a plain ``4 * dim`` MLP.
    """
    if dim <= 0 or multiple_of <= 0:
        raise ValueError(
            f"dim and multiple_of must be positive, got dim={dim}, multiple_of={multiple_of}"
        )
    hidden = int(8 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """``y = W_down (silu(W_gate x) * W_up x)``, no biases.

    Args:
        dim: input and output width D.
        hidden_size: hidden width F.
    """

    def __init__(self, dim: int, *, hidden_size: int) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"SwiGLU dim must be a positive integer, got {dim}")
        if hidden_size <= 0:
            raise ValueError(f"SwiGLU hidden_size must be a positive integer, got {hidden_size}")
        self.gate_proj = nn.Linear(dim, hidden_size, bias=False)
        self.up_proj = nn.Linear(dim, hidden_size, bias=False)
        self.down_proj = nn.Linear(hidden_size, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.gate_proj(x)) * self.up_proj(x)  # [B, T, F]
        return self.down_proj(h)  # [B, T, D]
