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
* Implementation. All five memories are written with the same keys and rates, so the default
  path (``_fused_segment``, driving ``nestlearn.memory.stacked``) advances them together: one set
  of chunk coefficients per segment, the input-side weights of all memories stacked into one
  ``[M*h, d]`` matrix per head, the output-side weights on a memory axis
  (``nestlearn/memory/README.md`` section 7). The targets and the inner gradients share one
  product with the chunk-start weights. ``impl="per_group"``
  (one ``memory_chunked`` call per group of memories) and ``impl="reference"`` (token by token)
  give the same results and are kept for tests and benchmarks.
* Input scale. The projection memories read each head's slice of x l2-normalised: their writes
  use the unit-norm keys (Eq. 57 assumes ||k|| = 1), and reads at a different scale (an RMS-normed
  slice has norm sqrt(d)) feed the self-generated targets back at a growing scale, which diverges.
* Wiring (Titans section 4.4, NL section 8.3). Causal depthwise convolutions (window 4) on the q,
  k, v paths, then l2-normalised q and k; an output RMSNorm per head and a SiLU output gate
  before the output projection.
* Padding. With an ``attention_mask`` (left padding), padded positions write nothing (learning
  rate 0, retention 1) and enter the convolutions as zeros. On a fresh state each row's chunk
  grid is anchored at its first real token (per-row offsets, ``anchored_offsets``), so a
  left-padded row gives exactly the outputs and states of its sequence run alone, whatever the
  number of pads; rows at different places of their chunks cut the segments at every row's
  boundary (more, shorter segments).

Dimension legend: B batch, T time, L tokens in a segment, D model width, H heads, d = D / H head
width, h hidden width of a memory MLP, n number of memories stacked in a group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn

from nestlearn.layers.conv import CausalDepthwiseConv
from nestlearn.layers.conv import new_token_mask as _new_token_mask
from nestlearn.layers.norm import l2_normalize
from nestlearn.layers.titans_memory import GatedHeadOutput
from nestlearn.memory import (
    MemoryState,
    anchored_offsets,
    memory_chunked,
    memory_reference,
    plan_segments,
    read_chunk_start,
    stack_memories,
    stacked_project,
    stacked_write,
    unstack_memories,
    written_rows,
)

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
        eta_max: upper bound of the inner learning rate (``eta = eta_max sigmoid(.)``); default
            ``1 / max(chunk_size, proj_chunk_size)`` (see ``HopeConfig.eta_max``).
        rule: ``"dgd"`` (D5) or ``"gd"`` (the "w/o DGD" ablation of NL Table 6).
        momentum: ``"learned"`` (D5) or ``"none"`` (the "w/o momentum" ablation).
        retention: ``"learned"`` or ``"none"`` (alpha = 1, the "w/o weight decay" ablation).
        q_projection: ``"static"`` (Eq. 83, default) or ``"adaptive"`` (a memory, Eq. 96).
        write_grad: ``"full"`` (D3) or ``"detach"`` (truncate backpropagation at the chunk
            ends of rows that have written; a left-padded row's chunk ends inside its padding
            keep its graph to the initial memories, ``MemoryState.written``).
        objective: the memories' inner objective, ``"l2"`` (Eq. 85-88) or ``"huber"`` (l2 with
            each token's error norm capped at ``huber_delta``; see ``HopeConfig.smt_objective``).
        huber_delta: the cap of ``objective="huber"``.
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
        eta_max: float | None = None,
        rule: Literal["dgd", "gd"] = "dgd",
        momentum: Literal["learned", "none"] = "learned",
        retention: Literal["learned", "none"] = "learned",
        q_projection: Literal["static", "adaptive"] = "static",
        write_grad: Literal["full", "detach"] = "full",
        objective: Literal["l2", "huber"] = "l2",
        huber_delta: float = 1.0,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        for name, val, allowed in (
            ("rule", rule, ("dgd", "gd")), ("momentum", momentum, ("learned", "none")),
            ("retention", retention, ("learned", "none")),
            ("q_projection", q_projection, ("static", "adaptive")),
            ("write_grad", write_grad, ("full", "detach")),
            ("objective", objective, ("l2", "huber")),
        ):
            if val not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {val!r}")
        for name, val in (("expansion", expansion), ("chunk_size", chunk_size),
                          ("proj_chunk_size", proj_chunk_size), ("conv_size", conv_size)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {val!r}")
        if eta_max is None:  # the chunk's summed step within one DGD step (HopeConfig.eta_max)
            eta_max = 1.0 / max(chunk_size, proj_chunk_size)
        if not eta_max > 0:
            raise ValueError(f"eta_max must be > 0, got {eta_max}")
        if not 0 < huber_delta < float("inf"):
            raise ValueError(f"huber_delta must be a finite number > 0, got {huber_delta}")
        self.objective, self.huber_delta = objective, float(huber_delta)
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
        impl: Literal["chunked", "per_group", "reference"] = "chunked",
    ) -> tuple[Tensor, SMTState]:
        """``x: [B, T, D]`` -> ``(y [B, T, D], state)``.

        ``attention_mask: [B, T]`` (1 = token, 0 = padding). ``impl`` selects one of three
        implementations with the same results: ``"chunked"`` (default) advances all five memories
        of a segment together (``_fused_segment``); ``"per_group"`` calls ``memory_chunked`` once
        per group of memories; ``"reference"`` walks token by token with ``memory_reference``
        (the specification, for tests).
        """
        if impl not in ("chunked", "per_group", "reference"):
            raise ValueError(f"impl must be 'chunked', 'per_group' or 'reference', got {impl!r}")
        B, T, _ = x.shape
        H, d = self.num_heads, self.head_dim
        st = self.initial_state() if state is None else state
        keep = None
        if attention_mask is not None:
            keep = _new_token_mask(attention_mask, B, T)  # [B, T]
            x = x * keep[..., None].to(x.dtype)
            if state is None:  # each row's chunks start at its first real token
                proj = anchored_offsets(keep, self.proj_chunk_size)
                main = anchored_offsets(keep, self.chunk_size)
                w = written_rows(keep)  # padding's chunk ends keep the initial memories' graph
                st = replace(st, vec=replace(st.vec, offset=proj, written=w),
                             gate=replace(st.gate, offset=proj, written=w),
                             main=replace(st.main, offset=main, written=w))
        conv_q, conv_k, conv_v = st.conv
        xh = l2_normalize(x.view(B, T, H, d))
        q_all = None
        if self.q_projection == "static":
            q_lin, conv_q = self.conv_q(self.q_proj(x), state=conv_q)
            q_all = l2_normalize(q_lin.view(B, T, H, d))
        beta_all = None if self.beta_proj is None else torch.sigmoid(self.beta_proj(x))  # [B,T,H]
        st = replace(st, conv=(conv_q, conv_k, conv_v))
        # The memories' recurrences run in float32 or wider with autocast off (a bf16 state would
        # drift over a long stream); projections before and after may use autocast.
        compute = torch.promote_types(x.dtype, torch.float32)
        xh, q_all, beta_all = (None if t is None else t.to(compute) for t in (xh, q_all, beta_all))
        with torch.autocast(x.device.type, enabled=False):
            if impl == "chunked":
                o, new_state = self._forward_fused(xh, q_all, beta_all, keep, st)
            else:
                o, new_state = self._forward_per_group(xh, q_all, beta_all, keep, st, impl)
        return self.output(o.to(x.dtype), x), new_state

    def _forward_per_group(self, xh, q_all, beta_all, keep, st: SMTState, impl):
        """One ``memory_chunked`` (or ``memory_reference``) call per group of memories and
        segment, the memories of a group stacked on the head axis. ``-> o [B, T, H, d]``."""
        B, T, H, d = xh.shape
        conv_q, conv_k, conv_v = st.conv
        update = memory_chunked if impl == "per_group" else memory_reference
        vec, gate, main = st.vec, st.gate, st.main
        outs = []
        start = 0
        lengths = (1,) * T if impl == "reference" else plan_segments(
            T, vec.offset, main.offset, proj_chunk=self.proj_chunk_size,
            main_chunk=self.chunk_size).lengths
        for L in lengths:
            seg = slice(start, start + L)
            xs = xh[:, seg]  # [B, L, H, d]
            # 1. projections from the projection memories' chunk-start states (Eq. 83, 8.2)
            raw = read_chunk_start(xs, vec, self.n_vec, "residual_mlp")  # [B, L, n_vec*H, d]
            k_raw, v_raw = raw[:, :, :H], raw[:, :, H:2 * H]
            k_lin, conv_k = self.conv_k(k_raw.flatten(2), state=conv_k)
            v_lin, conv_v = self.conv_v(v_raw.flatten(2), state=conv_v)
            k = l2_normalize(k_lin.view(B, L, H, d))
            v = v_lin.view(B, L, H, d)
            if q_all is None:
                q_lin, conv_q = self.conv_q(raw[:, :, 2 * H:].flatten(2), state=conv_q)
                q = l2_normalize(q_lin.view(B, L, H, d))
            else:
                q = q_all[:, seg]
            gates = read_chunk_start(xs, gate, self.n_gate, "mlp")[..., 0]  # [B, L, n_gate*H]
            eta, alpha = self._rates(gates[..., :H], gates[..., H:], None if keep is None
                                     else keep[:, seg, None])
            beta = None if beta_all is None else beta_all[:, seg]
            # 2. self-generated targets v_hat = M(v) at each memory's chunk-start state (Eq. 84)
            vhat_vec = read_chunk_start(v, vec, self.n_vec, "residual_mlp")
            vhat_gate = read_chunk_start(v, gate, self.n_gate, "mlp")
            vhat_main = read_chunk_start(v, main, 1, "residual_mlp")

            # 3. DGD + retention + momentum writes (Eq. 88); the main memory also reads q (Eq. 94)
            # (k, eta, alpha, beta bound as defaults: this segment's values, as in the calls below)
            def write(mem_state, n, vhat, kind, chunk, query=None, k=k, eta=eta, alpha=alpha,
                      beta=beta):
                return update(
                    query if query is not None else k.repeat(1, 1, n, 1), k.repeat(1, 1, n, 1),
                    vhat, eta.repeat(1, 1, n), _rep(alpha, n), _rep(beta, n), memory=kind,
                    objective=self.objective, huber_delta=self.huber_delta, rule=self.rule,
                    chunk_size=chunk, read="chunk_start",
                    initial_state=mem_state, write_grad=self.write_grad,
                )

            _, vec = write(vec, self.n_vec, vhat_vec, "residual_mlp", self.proj_chunk_size)
            _, gate = write(gate, self.n_gate, vhat_gate, "mlp", self.proj_chunk_size)
            o, main = write(main, 1, vhat_main, "residual_mlp", self.chunk_size, query=q)
            outs.append(o)
            start += L
        o = torch.cat(outs, dim=1) if outs else xh.new_zeros(B, 0, H, d)  # [B, T, H, d]
        return o, SMTState(vec=vec, gate=gate, main=main, conv=(conv_q, conv_k, conv_v))

    def _rates(self, eta_logit: Tensor, alpha_logit: Tensor | None, keep: Tensor | None, *,
               time_last: bool = False):
        """``eta = eta_max sigmoid(. + b_eta)``, ``alpha = sigmoid(. + b_alpha)`` from the gate
        memories' reads ``[B, L, H]`` (``[B, H, L]`` with ``time_last``); padded positions
        (``keep`` False, broadcastable) write nothing."""

        def bias(b: Tensor) -> Tensor:  # [H] against the head axis
            return b[:, None] if time_last else b

        eta = self.eta_max * torch.sigmoid(eta_logit + bias(self.eta_bias))
        alpha = None
        if self.retention == "learned":
            # bounded away from 0: the memory core takes retention products in log space
            alpha = torch.sigmoid(alpha_logit + bias(self.alpha_bias)).clamp_min(1e-4)
        if keep is not None:
            eta = eta * keep
            alpha = None if alpha is None else torch.where(keep, alpha, torch.ones_like(alpha))
        return eta, alpha

    # --- the fused path -------------------------------------------------------------------------

    def _forward_fused(self, xh, q_all, beta_all, keep, st: SMTState):
        """All five memories advance together, one segment at a time (``nestlearn.memory.stacked``).
        ``-> o [B, T, H, d]`` in the compute dtype."""
        B, T, H, d = xh.shape
        dtype = torch.promote_types(xh.dtype, torch.float32)
        plan = plan_segments(T, st.vec.offset, st.main.offset, proj_chunk=self.proj_chunk_size,
                             main_chunk=self.chunk_size)
        stack = stack_memories(
            st.gate, st.vec, st.main, n_gate=self.n_gate, n_vec=self.n_vec, heads=H, batch=B,
            dtype=dtype, proj_offset=plan.proj_offset, main_offset=plan.main_offset,
            momentum=beta_all is not None,
        )
        conv = st.conv

        def internal(t: Tensor | None) -> Tensor | None:  # [B, T, H, ...] -> [B, H, T, ...]
            return None if t is None else t.to(dtype).transpose(1, 2)

        x_i, q_i, beta_i = internal(xh), internal(q_all), internal(beta_all)
        keep_i = None if keep is None else keep[:, None, :]  # [B, 1, T]
        # The segments are known in advance: split the inputs once. (Slicing each segment out
        # instead costs a zero-filled [B, H, T, d] gradient per segment in the backward pass,
        # quadratic in T.)
        lengths = list(plan.lengths)
        pieces = [[None] * len(lengths) if t is None else t.split(lengths, dim=2)
                  for t in (x_i, q_i, beta_i, keep_i)]
        outs = []
        for x_s, q_s, beta_s, keep_s in zip(*pieces):
            o, stack, conv = self._fused_segment(stack, conv, x_s, q_s, beta_s, keep_s)
            outs.append(o)
        o = torch.cat(outs, dim=2) if outs else x_i.new_zeros(B, H, 0, d)  # [B, H, T, d]
        gate, vec, main = unstack_memories(stack)
        return o.transpose(1, 2), SMTState(vec=vec, gate=gate, main=main, conv=conv)

    def _fused_segment(self, stk, conv, x: Tensor, q: Tensor | None, beta: Tensor | None,
                       keep: Tensor | None):
        """One segment (``L`` tokens inside one chunk of both grids) of all memories at once
        (``nestlearn.memory.stacked``, README section 7).

        ``x``, ``q``: ``[B, H, L, d]`` (the l2-normalised input slices and static queries, or
        ``None`` for the adaptive q); ``beta``: ``[B, H, L]``; ``keep``: ``[B, 1, L]``.
        Returns ``(o [B, H, L, d], memories, conv)``.
        """
        B, H, L, d = x.shape
        conv_q, conv_k, conv_v = conv

        def public(t: Tensor) -> Tensor:  # [B, H, L, d] -> [B, L, H*d]
            return t.transpose(1, 2).reshape(B, L, H * d)

        def internal(t: Tensor) -> Tensor:  # [B, L, H*d] -> [B, H, L, d]
            return t.view(B, L, H, d).transpose(1, 2)

        # projections k, v[, q], eta, alpha from the chunk-start memories (Eq. 83, NL 8.2)
        gx, vx = stacked_project(stk, x)  # [B, H, G, L], [B, H, R, L, d]
        k_lin, conv_k = self.conv_k(public(vx[:, :, 0]), state=conv_k)
        v_lin, conv_v = self.conv_v(public(vx[:, :, 1]), state=conv_v)
        k = l2_normalize(internal(k_lin))  # [B, H, L, d]
        v = internal(v_lin)
        if q is None:  # adaptive q (Eq. 96)
            q_lin, conv_q = self.conv_q(public(vx[:, :, 2]), state=conv_q)
            q = l2_normalize(internal(q_lin))
        alpha_logit = gx[:, :, 1] if self.n_gate > 1 else None
        eta, alpha = self._rates(gx[:, :, 0], alpha_logit, keep, time_last=True)  # [B, H, L]
        # targets, inner gradients and writes of every memory (Eq. 84, 88), the main read (Eq. 94)
        o, new = stacked_write(
            stk, k, v, q, eta, alpha, beta, keep, rule=self.rule, objective=self.objective,
            huber_delta=self.huber_delta, proj_chunk=self.proj_chunk_size,
            main_chunk=self.chunk_size, detach=self.write_grad == "detach",
        )
        return o, new, (conv_q, conv_k, conv_v)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _rep(x: Tensor | None, n: int) -> Tensor | None:
    return None if x is None else x.repeat(1, 1, n)
