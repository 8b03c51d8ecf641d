"""Root-mean-square layer normalisation (Zhang & Sennrich, 2019), as used by Llama and HOPE (D8),
and the l2 normalisation of keys and queries.

Dimension legend: ``...`` any leading dimensions, D the normalised (last) dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["RMSNorm", "l2_normalize"]


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x^2) + eps) * weight`` over the last dimension.

    The statistic is computed in at least fp32 (fp64 inputs stay fp64), then cast back to the input
    dtype before the learned gain is applied. The gain starts at one; it is set in the model's
    ``_init_weights``, not here, so every model has a single place where parameters are initialised.

    Args:
        dim: size D of the normalised dimension.
        eps: added to the mean square for stability.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"RMSNorm dim must be a positive integer, got {dim}")
        if eps <= 0:
            raise ValueError(f"RMSNorm eps must be > 0, got {eps}")
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        x_f = x.to(compute_dtype)  # [..., D]
        y = x_f * torch.rsqrt(x_f.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``x / max(||x||, eps)`` over the last dimension (the value of ``F.normalize``), written
    with smooth operations so that a zero vector (a padded position) has a zero gradient at
    every order. ``F.normalize`` differentiates the norm, whose second derivative at zero is
    0/0: a second-order meta-gradient through a padded position was NaN."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True).clamp_min(eps * eps))

