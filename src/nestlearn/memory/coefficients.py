"""Chunk coefficients: everything in a chunk's update that depends only on the rates and keys
(``memory/README.md`` sections 3-4), computed for all chunks of a group at once.

Dimension legend: see ``_core``; N chunks in a group, L tokens per chunk.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ChunkCoefficients", "chunk_coefficients"]


@dataclass
class ChunkCoefficients:
    """Per-chunk scalars and factors that depend only on rates and keys (README section 3-4).

    Shapes: ``[B, H, N]`` for totals, ``[B, H, N, L]`` per token, ``[B, H, N, L, Dk]`` for the
    DGD factors, ``[B, H, N, L, L]`` for the per-token read matrices.
    """

    decay_total: Tensor  # prod_{j<=L} alpha_j
    eta_e: Tensor  # eta_i * e_i: weight of token i's gradient step in W_L
    eta: Tensor  # eta_i (the effective step)
    mom_r: Tensor | None = None  # r: weight of S_0 in W_L
    mom_total: Tensor | None = None  # prod_{j<=L} beta_j
    eta_b: Tensor | None = None  # eta_i * prod_{j>i} beta_j: weight of step i in S_L
    dgd_z: Tensor | None = None  # Z of the WY form (README eq. 4.2-4.3)
    dgd_y: Tensor | None = None  # diag(eta) Y: W_L gets - U^T diag(eta) Y (eq. 4.4-4.5)
    dgd_rho: Tensor | None = None  # rho_j: S_0 enters W_L as r S_0 - S_0 K^T diag(rho) Z
    read_a: Tensor | None = None  # a_t = prod_{j<=t} alpha_j
    read_c: Tensor | None = None  # c_t: weight of S_0 in W_t
    read_d: Tensor | None = None  # D[t, i]: weight of step i in W_t (lower triangular)

    def map(self, fn) -> ChunkCoefficients:
        """Apply ``fn`` to every tensor (e.g. insert a memory axis to broadcast over memories)."""
        return ChunkCoefficients(
            **{f: None if t is None else fn(t) for f, t in vars(self).items()}
        )


def _seg_exp(cum: Tensor) -> Tensor:
    """``[..., L]`` cumulative log-sums -> ``[..., L, L]`` with ``[t, s] = exp(cum_t - cum_s)`` for
    ``s <= t`` (the product of the factors ``s+1..t``) and 0 above the diagonal."""
    diff = cum[..., :, None] - cum[..., None, :]
    return diff.masked_fill(_above_diagonal(cum.shape[-1], cum.device), float("-inf")).exp()


@functools.lru_cache(maxsize=16)
def _above_diagonal(L: int, device: torch.device) -> Tensor:
    """The ``[L, L]`` bool mask of ``s > t`` (cached: a chunk's coefficients are a few small ops
    and each op's dispatch counts)."""
    with torch.inference_mode(False):  # a normal tensor even if first made in inference mode
        return torch.ones(L, L, dtype=torch.bool, device=device).triu(1)


def chunk_coefficients(
    log_alpha: Tensor, log_beta: Tensor | None, eta: Tensor, k: Tensor, *, dgd: bool,
    per_token: bool,
) -> ChunkCoefficients:
    """The coefficients of chunks ``[B, H, N, L]`` (log retention ``log_alpha``, log momentum
    factors ``log_beta`` or ``None``, effective rates ``eta``; keys ``k [B, H, N, L, Dk]``).
    ``dgd`` adds the WY factors of Delta Gradient Descent (README section 4), ``per_token`` the
    matrices of the dual-form read (section 5). Leading dims may be any that broadcast."""
    la = log_alpha.cumsum(-1)  # [B, H, N, L]
    amat = _seg_exp(la)  # [t, s] = alpha_{s,t} = prod_{j=s+1..t} alpha_j
    a_end = amat[..., -1, :]  # alpha_{s,L}
    e = a_end  # e_i = sum_s alpha_{s,L} B_{s,i}; B = I without momentum
    bmat = E = None
    if log_beta is not None:
        lb = log_beta.cumsum(-1)
        bmat = _seg_exp(lb)  # [s, i] = B_{s,i} = prod_{j=i+1..s} beta_j
        b0 = lb.exp()  # B_{s,0}
        E = a_end[..., :, None] * bmat  # E[s, i] = B_{s,i} alpha_{s,L}
        e = E.sum(-2)
    co = ChunkCoefficients(decay_total=la[..., -1].exp(), eta_e=eta * e, eta=eta)
    if bmat is not None:
        co.mom_r = (a_end * b0).sum(-1)
        co.mom_total = b0[..., -1]
        co.eta_b = eta * bmat[..., -1, :]
    if dgd:
        # E[s, i] = B_{s,i} alpha_{s,L};  F[i, j] = sum_{s=i}^{j-1} E[s, i]  (README eq. 4.6)
        if E is None:
            E = torch.diag_embed(a_end)
        F_ji = E.cumsum(-2) - E  # [j, i]: the cumulative sum over s < j
        kk_upper = (k @ k.transpose(-1, -2)).triu(1)  # [i, j] = k_i . k_j for j > i
        gamma = eta / log_alpha.exp()  # eta' / alpha
        # (I + diag(gamma) triu(K K^T, 1)) Z = diag(gamma) K; unitriangular: the solver takes the
        # diagonal as ones and never reads it, so the identity need not be added
        z = torch.linalg.solve_triangular(
            gamma[..., :, None] * kk_upper, gamma[..., None] * k, upper=True, unitriangular=True,
        )
        y = e[..., None] * k - (kk_upper * F_ji.transpose(-1, -2)) @ z
        co.dgd_z = z
        co.dgd_y = eta[..., None] * y
        if bmat is not None:
            w = b0 * a_end
            co.dgd_rho = w.cumsum(-1) - w  # rho_j = sum_{s<j} B_{s,0} alpha_{s,L}
    if per_token:
        co.read_a = la.exp()
        co.read_d = amat if bmat is None else amat @ bmat
        if bmat is not None:
            co.read_c = (amat @ b0[..., None]).squeeze(-1)
    return co
