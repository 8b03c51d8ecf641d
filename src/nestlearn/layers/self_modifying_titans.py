"""Self-modifying Titans, the sequence mixer of HOPE (NL section 8, Eq. 83-96; decisions D4-D6).

Every projection that a Titans layer would compute with a static matrix is itself an associative
memory updated in context, and every memory writes its *own* target (Eq. 83-85):

    k_t = M_k(x_t), v_t = M_v(x_t), eta_t = M_eta(x_t), alpha_t = M_alpha(x_t),  o_t = M_mem(q_t)
    v_hat_t = M_(v_t)   for each memory M_ in {k, v, eta, alpha, mem} (and q when adaptive)
    M_ <- DGD step on 1/2 ||M_(k_t) - v_hat_t||^2 with retention alpha_t and momentum  (Eq. 88)

Project decisions written down here:

* Memories (D4). Each memory is multi-head: the width D is split into H heads of size d, each head
  has its own memory. k, v (and an adaptive q) and the main memory are the residual 2-layer MLP of
  Eq. 89 (``x + W1 silu(W2 x)``, hidden width ``expansion * d``); eta and alpha are 2-layer MLPs
  to one scalar per head (they cannot be residual) read out as ``eta = eta_max sigmoid(. + b_eta)``
  and ``alpha = sigmoid(. + b_alpha)``, with ``b_alpha`` initialised so alpha starts near 1.
* Update (D5). DGD with retention and Titans-style momentum, ``beta_t = sigmoid(x_t W_beta)`` a
  static projection; ``nestlearn.memory`` does the arithmetic (its README has the derivation).
  Targets are self-generated with no stop-gradient. q is a static projection (Eq. 83);
  ``q_projection="adaptive"`` makes it a memory too (Eq. 85/96).
* Chunks (D6, NL section 8.2). k, v, eta, alpha and the targets of a chunk come from the memories'
  states at the end of the previous chunk, so the layer walks over chunks (the only sequential
  part); inside a chunk the memory core is chunk-parallel. Two chunk sizes: ``proj_chunk_size``
  for the projection memories, ``chunk_size`` for the main memory.
* Input scale. The projection memories read each head's slice of x l2-normalised: their writes
  use the unit-norm keys (Eq. 57 assumes ||k|| = 1), and reads at a different scale (an RMS-normed
  slice has norm sqrt(d)) feed the self-generated targets back at a growing scale, which diverges.
* Wiring (Titans section 4.4, NL section 8.3). Causal depthwise convolutions (window 4) on the q,
  k, v paths, then l2-normalised q and k; an output RMSNorm per head and a SiLU output gate
  before the output projection.
* Padding. With an ``attention_mask`` (left padding), padded positions write nothing (learning
  rate 0, retention 1) and enter the convolutions as zeros.

Dimension legend: B batch, T time, L tokens in a segment, D model width, H heads, d = D / H head
width, h hidden width of a memory MLP, n number of memories stacked in a group.
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
from nestlearn.layers.titans_memory import GatedHeadOutput
from nestlearn.memory import MemoryState, memory_chunked, memory_read, memory_reference

__all__ = ["SelfModifyingTitans", "SMTState"]


@dataclass(frozen=True)
class SMTState:
    """The recurrent state of one self-modifying Titans layer (the generation cache).

    ``vec`` stacks the vector-valued projection memories (k, v[, q]) along the head axis,
    ``gate`` the scalar ones (eta, alpha), ``main`` is the main memory; ``conv`` holds the last
    inputs of the q, k, v convolutions. Its size does not grow with the context.
    """

    vec: MemoryState
    gate: MemoryState
    main: MemoryState
    conv: tuple[Tensor | None, Tensor | None, Tensor | None]

    def map(self, fn) -> SMTState:
        """Apply ``fn`` to every batch-first tensor (beam reordering, batch selection)."""
        return SMTState(
            vec=self.vec.map(fn), gate=self.gate.map(fn), main=self.main.map(fn),
            conv=tuple(None if c is None else fn(c) for c in self.conv),
        )

    def detach(self) -> SMTState:
        return self.map(lambda t: t.detach())


class SelfModifyingTitans(nn.Module):
    """Self-modifying Titans layer: ``forward(x [B, T, D], *, state, attention_mask)`` returns
    ``(y [B, T, D], state)``.

    Args:
        d_model: model width D.
        num_heads: heads H (D must be divisible by H).
        expansion: hidden width of the memory MLPs, in units of the head width.
        chunk_size: chunk size of the main memory (D6).
        proj_chunk_size: chunk size shared by the projection memories (D6).
        conv_size: window of the causal depthwise convolutions on q, k, v.
        eta_max: upper bound of the inner learning rate (``eta = eta_max sigmoid(.)``).
        rule: ``"dgd"`` (D5) or ``"gd"`` (the "w/o DGD" ablation of NL Table 6).
        momentum: ``"learned"`` (D5) or ``"none"`` (the "w/o momentum" ablation).
        retention: ``"learned"`` or ``"none"`` (alpha = 1, the "w/o weight decay" ablation).
        q_projection: ``"static"`` (Eq. 83, default) or ``"adaptive"`` (a memory, Eq. 96).
        write_grad: ``"full"`` (D3) or ``"detach"`` (truncate backpropagation at chunk ends).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        expansion: int = 2,
        chunk_size: int = 16,
        proj_chunk_size: int = 16,
        conv_size: int = 4,
        eta_max: float = 1.0,
        rule: Literal["dgd", "gd"] = "dgd",
        momentum: Literal["learned", "none"] = "learned",
        retention: Literal["learned", "none"] = "learned",
        q_projection: Literal["static", "adaptive"] = "static",
        write_grad: Literal["full", "detach"] = "full",
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        for name, val, allowed in (
            ("rule", rule, ("dgd", "gd")), ("momentum", momentum, ("learned", "none")),
            ("retention", retention, ("learned", "none")),
            ("q_projection", q_projection, ("static", "adaptive")),
            ("write_grad", write_grad, ("full", "detach")),
        ):
            if val not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {val!r}")
        for name, val in (("expansion", expansion), ("chunk_size", chunk_size),
                          ("proj_chunk_size", proj_chunk_size), ("conv_size", conv_size)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {val!r}")
        if not eta_max > 0:
            raise ValueError(f"eta_max must be > 0, got {eta_max}")
        self.d_model, self.num_heads = d_model, num_heads
        self.head_dim = d = d_model // num_heads
        self.hidden = h = expansion * d
        self.chunk_size, self.proj_chunk_size = chunk_size, proj_chunk_size
        self.eta_max = eta_max
        self.rule, self.momentum, self.retention = rule, momentum, retention
        self.q_projection, self.write_grad = q_projection, write_grad
        H = num_heads
        n_vec = 3 if q_projection == "adaptive" else 2  # k, v[, q]
        n_gate = 2 if retention == "learned" else 1  # eta[, alpha]
        self.n_vec, self.n_gate = n_vec, n_gate

        if q_projection == "static":
            self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.beta_proj = nn.Linear(d_model, H) if momentum == "learned" else None
        self.conv_q = CausalDepthwiseConv(d_model, conv_size)
        self.conv_k = CausalDepthwiseConv(d_model, conv_size)
        self.conv_v = CausalDepthwiseConv(d_model, conv_size)
        # Meta-learned initial states of the memories (D3), [heads, out, in] per weight.
        self.vec_w1 = nn.Parameter(torch.empty(n_vec * H, d, h))
        self.vec_w2 = nn.Parameter(torch.empty(n_vec * H, h, d))
        self.gate_w1 = nn.Parameter(torch.empty(n_gate * H, 1, h))
        self.gate_w2 = nn.Parameter(torch.empty(n_gate * H, h, d))
        self.main_w1 = nn.Parameter(torch.empty(H, d, h))
        self.main_w2 = nn.Parameter(torch.empty(H, h, d))
        self.eta_bias = nn.Parameter(torch.empty(H))
        self.alpha_bias = nn.Parameter(torch.empty(H)) if retention == "learned" else None
        self.output = GatedHeadOutput(d_model, d)
        self.reset_parameters()

    def reset_parameters(self, init=nn.init, *, out_std: float = 0.02) -> None:
        """Initial values (``init`` is a ``torch.nn.init``-like namespace; models pass
        ``transformers.initialization``, which skips weights loaded from a checkpoint, and a
        depth-scaled ``out_std`` for the output projection):

        ============================  ==========================================================
        memory input weights ``W2``   N(0, 1/d): hidden pre-activations of unit keys ~ N(0, 1/d)
        memory output weights ``W1``  N(0, 0.02^2): residual memories start near the identity
        ``b_eta``                     logit(0.1): eta starts at 0.1 eta_max
        ``b_alpha``                   logit(0.99): retention starts near 1 (D4)
        linear layers                 N(0, 0.02^2), biases 0
        convolutions                  taps N(0, 0.02^2) (residual filters)
        ============================  ==========================================================
        """
        d = self.head_dim
        for w2 in (self.vec_w2, self.gate_w2, self.main_w2):
            init.normal_(w2, mean=0.0, std=d**-0.5)
        for w1 in (self.vec_w1, self.gate_w1, self.main_w1):
            init.normal_(w1, mean=0.0, std=0.02)
        init.constant_(self.eta_bias, _logit(0.1))
        if self.alpha_bias is not None:
            init.constant_(self.alpha_bias, _logit(0.99))
        init.normal_(self.output.out_proj.weight, mean=0.0, std=out_std)
        linears = [self.output.gate_proj]
        if self.q_projection == "static":
            linears.append(self.q_proj)
        if self.beta_proj is not None:
            linears.append(self.beta_proj)
        for lin in linears:
            init.normal_(lin.weight, mean=0.0, std=0.02)
            if lin.bias is not None:
                init.zeros_(lin.bias)
        init.ones_(self.output.norm.weight)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            conv.reset_parameters(init)

    def initial_state(self) -> SMTState:
        """The state before any token: the meta-learned memories, empty convolution windows."""
        return SMTState(
            vec=MemoryState(weights=(self.vec_w1, self.vec_w2)),
            gate=MemoryState(weights=(self.gate_w1, self.gate_w2)),
            main=MemoryState(weights=(self.main_w1, self.main_w2)),
            conv=(None, None, None),
        )

    def forward(
        self,
        x: Tensor,
        *,
        state: SMTState | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        impl: Literal["chunked", "reference"] = "chunked",
    ) -> tuple[Tensor, SMTState]:
        """``x: [B, T, D]`` -> ``(y [B, T, D], state)``.

        ``attention_mask: [B, T]`` (1 = token, 0 = padding). ``impl="reference"`` walks token by
        token with ``memory_reference`` (for tests; same results).
        """
        B, T, D = x.shape
        H, d = self.num_heads, self.head_dim
        st = self.initial_state() if state is None else state
        keep = None
        if attention_mask is not None:
            keep = _new_token_mask(attention_mask, B, T)  # [B, T]
            x = x * keep[..., None].to(x.dtype)
        conv_q, conv_k, conv_v = st.conv
        xh = F.normalize(x.view(B, T, H, d), dim=-1)
        q_all = None
        if self.q_projection == "static":
            q_lin, conv_q = self.conv_q(self.q_proj(x), state=conv_q)
            q_all = F.normalize(q_lin.view(B, T, H, d), dim=-1)
        beta_all = None if self.beta_proj is None else torch.sigmoid(self.beta_proj(x))  # [B,T,H]

        update = memory_chunked if impl == "chunked" else memory_reference
        vec, gate, main = st.vec, st.gate, st.main
        outs = []
        start = 0
        while start < T:
            L = self._segment_length(T - start, vec.offset, main.offset, impl)
            seg = slice(start, start + L)
            xs = xh[:, seg]  # [B, L, H, d]
            # 1. projections from the projection memories' chunk-start states (Eq. 83, 8.2)
            raw = _read_stacked(xs, vec, self.n_vec, "residual_mlp")  # [B, L, n_vec*H, d]
            k_raw, v_raw = raw[:, :, :H], raw[:, :, H:2 * H]
            k_lin, conv_k = self.conv_k(k_raw.flatten(2), state=conv_k)
            v_lin, conv_v = self.conv_v(v_raw.flatten(2), state=conv_v)
            k = F.normalize(k_lin.view(B, L, H, d), dim=-1)
            v = v_lin.view(B, L, H, d)
            if q_all is None:
                q_lin, conv_q = self.conv_q(raw[:, :, 2 * H:].flatten(2), state=conv_q)
                q = F.normalize(q_lin.view(B, L, H, d), dim=-1)
            else:
                q = q_all[:, seg]
            gates = _read_stacked(xs, gate, self.n_gate, "mlp")[..., 0]  # [B, L, n_gate*H]
            eta = self.eta_max * torch.sigmoid(gates[..., :H] + self.eta_bias)
            if self.retention == "learned":
                # bounded away from 0: the memory core takes retention products in log space
                alpha = torch.sigmoid(gates[..., H:] + self.alpha_bias).clamp_min(1e-4)
            else:
                alpha = None
            beta = None if beta_all is None else beta_all[:, seg]
            if keep is not None:
                m = keep[:, seg, None]  # [B, L, 1]
                eta = eta * m
                alpha = None if alpha is None else torch.where(m, alpha, torch.ones_like(alpha))
            # 2. self-generated targets v_hat = M(v) at each memory's chunk-start state (Eq. 84)
            vhat_vec = _read_stacked(v, vec, self.n_vec, "residual_mlp")
            vhat_gate = _read_stacked(v, gate, self.n_gate, "mlp")
            vhat_main = _read_stacked(v, main, 1, "residual_mlp")

            # 3. DGD + retention + momentum writes (Eq. 88); the main memory also reads q (Eq. 94)
            def write(mem_state, n, vhat, kind, chunk, query=None):
                return update(
                    query if query is not None else k.repeat(1, 1, n, 1), k.repeat(1, 1, n, 1),
                    vhat, eta.repeat(1, 1, n), _rep(alpha, n), _rep(beta, n), memory=kind,
                    objective="l2", rule=self.rule, chunk_size=chunk, read="chunk_start",
                    initial_state=mem_state, write_grad=self.write_grad,
                )

            _, vec = write(vec, self.n_vec, vhat_vec, "residual_mlp", self.proj_chunk_size)
            _, gate = write(gate, self.n_gate, vhat_gate, "mlp", self.proj_chunk_size)
            o, main = write(main, 1, vhat_main, "residual_mlp", self.chunk_size, query=q)
            outs.append(o)
            start += L
        o = torch.cat(outs, dim=1) if outs else x.new_zeros(B, 0, H, d)  # [B, T, H, d]
        new_state = SMTState(vec=vec, gate=gate, main=main, conv=(conv_q, conv_k, conv_v))
        return self.output(o, x), new_state

    def _segment_length(self, remaining: int, proj_offset: int, main_offset: int, impl) -> int:
        """Tokens until the next chunk boundary of either memory grid (the targets and
        projections of a segment must all come from the same chunk-start states)."""
        if impl == "reference":
            return 1
        return min(remaining, self.proj_chunk_size - proj_offset, self.chunk_size - main_offset)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _rep(x: Tensor | None, n: int) -> Tensor | None:
    return None if x is None else x.repeat(1, 1, n)


def _read_stacked(x: Tensor, state: MemoryState, n: int, kind: str) -> Tensor:
    """Read ``n`` memories stacked on the head axis at the same input: ``x [B, L, H, d]`` ->
    ``[B, L, n*H, O]``, with the chunk-start weights."""
    return memory_read(x.repeat(1, 1, n, 1), replace(state, weights=state.chunk_start), memory=kind)
