"""Titans neural long-term memory (LMM), the Titans baseline's sequence mixer (Titans section 3-4;
NL section 4.1-4.2 of our spec).

    q, k, v = SiLU(conv(x W_q)), SiLU(conv(x W_k)), SiLU(conv(x W_v));  q, k l2-normalised per head
    theta_t, alpha_t, beta_t = theta_max sigmoid(x W_theta), sigmoid(x W_alpha), sigmoid(x W_beta)
    M_t = alpha_t M_{t-1} + S_t,  S_t = beta_t S_{t-1} - theta_t grad 1/2 ||M_c(k_t) - v_t||^2
    o_t = M_c(q_t),  y = W_o (RMSNorm(o) * SiLU(x W_g))

with the gradient of chunk c taken at the chunk-start weights (Titans Eq. 16-18, decision D2).
Naming: Titans calls the learning rate theta, the momentum eta and the forget gate alpha (so its
retention is 1 - alpha); here ``lr``, ``beta`` and the retention ``alpha`` follow NL. The memory is
a matrix (``memory="linear"``) or the 2-layer residual MLP (``"residual_mlp"``, Titans' deep
memory with L_M = 2). Unlike self-modifying Titans, all projections are static, so the whole
sequence goes through the memory core in one chunk-parallel call.

Dimension legend: B batch, T time, D model width, H heads, d = D / H, h memory hidden width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.layers.conv import CausalDepthwiseConv
from nestlearn.layers.conv import new_token_mask as _new_token_mask
from nestlearn.layers.norm import RMSNorm, l2_normalize
from nestlearn.memory import (
    MemoryState,
    anchored_offsets,
    memory_chunked,
    memory_reference,
    written_rows,
)

__all__ = ["GatedHeadOutput", "TitansMemory", "TitansState"]


class GatedHeadOutput(nn.Module):
    """Titans' output block (section 4.4): per-head RMSNorm, SiLU gate from the layer input, and
    the output projection. ``o [B, T, H, d]``, ``x [B, T, D]`` -> ``[B, T, D]``."""

    def __init__(self, d_model: int, head_dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(head_dim)
        self.gate_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, o: Tensor, x: Tensor) -> Tensor:
        return self.out_proj(self.norm(o).flatten(2) * F.silu(self.gate_proj(x)))


@dataclass(frozen=True)
class TitansState:
    """Recurrent state of a Titans memory layer: the memory and the q, k, v convolution windows."""

    memory: MemoryState
    conv: tuple[Tensor | None, Tensor | None, Tensor | None]

    def map(self, fn) -> TitansState:
        """Apply ``fn`` to every batch-first tensor (beam reordering, batch selection)."""
        return TitansState(self.memory.map(fn),
                           tuple(None if c is None else fn(c) for c in self.conv))

    def detach(self) -> TitansState:
        return self.map(lambda t: t.detach())


class TitansMemory(nn.Module):
    """The Titans LMM layer: ``forward(x [B, T, D], *, state, attention_mask)`` ->
    ``(y [B, T, D], state)``.

    Args:
        d_model: model width D; num_heads: heads H (D divisible by H).
        memory: ``"residual_mlp"`` (deep memory, default) or ``"linear"``.
        expansion: hidden width of the MLP memory in units of the head width.
        chunk_size: C of the chunked update (Titans section 3.2).
        conv_size: window of the causal depthwise convolutions.
        lr_max: upper bound of the inner learning rate theta (default ``1 / chunk_size``, see
            ``TitansConfig.lr_max``).
        read: ``"chunk_start"`` (D2) or ``"per_token"`` (the dual form: token t reads M_t).
        write_grad: ``"full"`` or ``"detach"`` (see ``nestlearn.memory``).
        objective: ``"l2"`` (Titans Eq. 12) or ``"huber"`` (l2 with each token's error norm
            capped at ``huber_delta``; see ``TitansConfig.memory_objective``).
        huber_delta: the cap of ``objective="huber"``.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        memory: Literal["residual_mlp", "linear"] = "residual_mlp",
        expansion: int = 2,
        chunk_size: int = 16,
        conv_size: int = 4,
        lr_max: float | None = None,
        read: Literal["chunk_start", "per_token"] = "chunk_start",
        write_grad: Literal["full", "detach"] = "full",
        objective: Literal["l2", "huber"] = "l2",
        huber_delta: float = 1.0,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        for name, val, allowed in (("memory", memory, ("residual_mlp", "linear")),
                                   ("read", read, ("chunk_start", "per_token")),
                                   ("write_grad", write_grad, ("full", "detach")),
                                   ("objective", objective, ("l2", "huber"))):
            if val not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {val!r}")
        for name, val in (("expansion", expansion), ("chunk_size", chunk_size),
                          ("conv_size", conv_size)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {val!r}")
        if not 0 < huber_delta < float("inf"):
            raise ValueError(f"huber_delta must be a finite number > 0, got {huber_delta}")
        self.objective, self.huber_delta = objective, float(huber_delta)
        if lr_max is None:  # a chunk's summed steps within one step (TitansConfig.lr_max)
            lr_max = 1.0 / chunk_size
        if not lr_max > 0:
            raise ValueError(f"lr_max must be > 0, got {lr_max}")
        self.d_model, self.num_heads = d_model, num_heads
        self.head_dim = d = d_model // num_heads
        self.memory, self.chunk_size, self.lr_max = memory, chunk_size, lr_max
        self.read, self.write_grad = read, write_grad
        H = num_heads
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=False)
        self.lr_proj = nn.Linear(d_model, H)  # theta logits
        self.alpha_proj = nn.Linear(d_model, H)  # retention logits
        self.beta_proj = nn.Linear(d_model, H)  # momentum logits
        self.conv_q = CausalDepthwiseConv(d_model, conv_size)
        self.conv_k = CausalDepthwiseConv(d_model, conv_size)
        self.conv_v = CausalDepthwiseConv(d_model, conv_size)
        if memory == "linear":
            self.mem_w = nn.Parameter(torch.empty(H, d, d))
        else:
            self.mem_w1 = nn.Parameter(torch.empty(H, d, expansion * d))
            self.mem_w2 = nn.Parameter(torch.empty(H, expansion * d, d))
        self.output = GatedHeadOutput(d_model, d)
        self.reset_parameters()

    def reset_parameters(self, init=nn.init, *, out_std: float = 0.02) -> None:
        """Initial values (``init`` is a ``torch.nn.init``-like namespace, see
        ``SelfModifyingTitans.reset_parameters``): projections N(0, 0.02^2); rate biases so that
        theta = 0.1 lr_max, alpha = 0.99, beta = 0.5 at the start; the memory's initial weights as
        in ``SelfModifyingTitans`` (W2 ~ N(0, 1/d); W1 and a linear memory ~ N(0, 0.02^2)); the
        output projection N(0, out_std^2)."""
        d = self.head_dim
        for lin in (self.qkv_proj, self.lr_proj, self.alpha_proj, self.beta_proj,
                    self.output.gate_proj):
            init.normal_(lin.weight, mean=0.0, std=0.02)
        init.normal_(self.output.out_proj.weight, mean=0.0, std=out_std)
        init.constant_(self.lr_proj.bias, math.log(0.1 / 0.9))
        init.constant_(self.alpha_proj.bias, math.log(0.99 / 0.01))
        init.zeros_(self.beta_proj.bias)
        init.ones_(self.output.norm.weight)
        if self.memory == "linear":
            init.normal_(self.mem_w, mean=0.0, std=0.02)
        else:
            init.normal_(self.mem_w1, mean=0.0, std=0.02)
            init.normal_(self.mem_w2, mean=0.0, std=d**-0.5)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            conv.reset_parameters(init)

    def initial_state(self) -> TitansState:
        weights = (self.mem_w,) if self.memory == "linear" else (self.mem_w1, self.mem_w2)
        return TitansState(memory=MemoryState(weights=weights), conv=(None, None, None))

    def forward(
        self,
        x: Tensor,
        *,
        state: TitansState | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        impl: Literal["chunked", "reference"] = "chunked",
    ) -> tuple[Tensor, TitansState]:
        B, T, D = x.shape
        H, d = self.num_heads, self.head_dim
        st = self.initial_state() if state is None else state
        keep = None
        if attention_mask is not None:
            keep = _new_token_mask(attention_mask, B, T)[..., None]  # [B, T, 1]
            x = x * keep.to(x.dtype)
            if state is None:  # each row's chunks start at its first real token
                offset = anchored_offsets(keep[..., 0], self.chunk_size)
                st = replace(st, memory=replace(st.memory, offset=offset,
                                                written=written_rows(keep[..., 0])))
        q_lin, k_lin, v_lin = self.qkv_proj(x).chunk(3, dim=-1)
        cq, ck, cv = st.conv
        q_lin, cq = self.conv_q(q_lin, state=cq)
        k_lin, ck = self.conv_k(k_lin, state=ck)
        v_lin, cv = self.conv_v(v_lin, state=cv)
        q = l2_normalize(F.silu(q_lin).view(B, T, H, d))
        k = l2_normalize(F.silu(k_lin).view(B, T, H, d))
        v = F.silu(v_lin).view(B, T, H, d)
        lr = self.lr_max * torch.sigmoid(self.lr_proj(x))  # [B, T, H]
        # bounded away from 0: the memory core takes gate products in log space
        alpha = torch.sigmoid(self.alpha_proj(x)).clamp_min(1e-4)
        beta = torch.sigmoid(self.beta_proj(x))
        if keep is not None:  # padding writes nothing
            lr = lr * keep
            alpha = torch.where(keep, alpha, torch.ones_like(alpha))
        update = memory_chunked if impl == "chunked" else memory_reference
        o, mem = update(
            q, k, v, lr, alpha, beta, memory=self.memory, objective=self.objective,
            huber_delta=self.huber_delta, rule="gd",
            chunk_size=self.chunk_size, read=self.read, initial_state=st.memory,
            write_grad=self.write_grad,
        )
        return self.output(o, x), TitansState(memory=mem, conv=(cq, ck, cv))
