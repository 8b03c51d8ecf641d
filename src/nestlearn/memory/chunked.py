"""Chunk-parallel associative-memory update rules (the fast path of ``reference.py``).

Same signature and same results as :func:`nestlearn.memory.memory_reference`. With the inner
gradients of a chunk frozen at the chunk-start weights (decision D2), a chunk is a *linear*
recurrence in the weights, ``W_t = W_{t-1} A_t + S_t``, so:

1. everything that depends only on the rates and keys (decay products, momentum sums, the WY/UT
   factors of the DGD products) is computed for all chunks at once (``chunk_coefficients``);
2. a short loop over chunks computes each chunk's inner gradients at its start weights, in closed
   form and batched over the chunk's tokens, and jumps to the chunk's end state with a few
   matrix products (``_advance``);
3. reads are batched over all chunks after the loop (``_read_chunk_start`` / ``_read_per_token``).

The derivation, with equation numbers, is in ``memory/README.md`` (sections 2-5).
Dimension legend: see ``_core``; N chunks in a group, L tokens per chunk.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.memory import _core
from nestlearn.memory.advance import advance_weight
from nestlearn.memory.coefficients import ChunkCoefficients, chunk_coefficients
from nestlearn.memory.state import MemoryState

__all__ = ["memory_chunked", "memory_read"]


@_core.autocast_off
def memory_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    alpha: Tensor | None = None,
    beta: Tensor | None = None,
    *,
    memory: _core.MemoryKind = "linear",
    objective: _core.Objective = "l2",
    huber_delta: float = 1.0,
    rule: _core.Rule = "gd",
    chunk_size: int = 16,
    read: _core.Read = "chunk_start",
    initial_state: MemoryState | None = None,
    write_grad: _core.WriteGrad = "full",
) -> tuple[Tensor, MemoryState]:
    """Write ``(k, v)`` pairs into an associative memory chunk by chunk and read it at ``q``.

    Args:
        q, k, v: queries, keys ``[B, T, H, Dk]`` and values ``[B, T, H, Dv]``.
        lr: per-token inner learning rate eta_t ``[B, T, H]`` (Titans' theta_t).
        alpha: per-token retention gate alpha_t ``[B, T, H]`` (> 0; Titans' 1 - alpha_t);
            ``None`` means no retention (alpha = 1).
        beta: per-token momentum factor ``[B, T, H]`` (> 0; Titans' eta_t); ``None`` means no
            momentum.
        memory: ``"linear"`` (a matrix, ``W k``), ``"residual_mlp"`` (Eq. 89,
            ``k + W1 silu(W2 k)``) or ``"mlp"`` (the same without the skip, any value width).
        objective: ``"dot"`` (Hebbian ``-<M(k), v>``, Eq. 14-18), ``"l2"``
            (``1/2 ||M(k) - v||^2``, the delta rule) or ``"huber"`` (l2 with each token's error
            norm capped at ``huber_delta``: bounded inner steps, Miras' robust objective).
        huber_delta: the cap of ``objective="huber"`` (> 0; ignored otherwise).
        rule: ``"gd"`` (gradient descent, with momentum/retention when given) or ``"dgd"``
            (Delta Gradient Descent, Eq. 57/88: the input-side weight is right-multiplied by
            ``alpha I - eta' k k^T`` with ``eta' = eta / (1 + eta ||k||^2)``, which is also the
            gradient step).
        chunk_size: C; inner gradients of a chunk are taken at the chunk-start weights. C = 1
            is exact online learning.
        read: ``"chunk_start"`` (Eq. 90: token t reads the weights at the start of its chunk) or
            ``"per_token"`` (dual form: token t reads ``W_t``, after its own write; rule
            ``"gd"`` only).
        initial_state: the state to continue from (weights may be ``[H, O, I]``, shared across
            the batch, or ``[B, H, O, I]``). ``None`` is an all-zero linear memory; the MLP
            memories need one. Gradients flow into it (decision D3).
        write_grad: ``"full"`` backpropagates through every write; ``"detach"`` cuts the graph
            at chunk boundaries (truncated backpropagation through the stream).

    Returns:
        ``(o, state)``: reads ``[B, T, H, Dv]`` and the :class:`MemoryState` to continue from.
    """
    a = _core.check_args(
        q, k, v, lr, alpha, beta, memory=memory, objective=objective, huber_delta=huber_delta,
        rule=rule,
        chunk_size=chunk_size, read=read, initial_state=initial_state, write_grad=write_grad,
    )
    st = a.state
    if isinstance(st.offset, Tensor):  # one offset per row
        offsets = st.row_offsets(q.shape[0])
        if len(set(offsets)) > 1:
            return _per_row(
                (q, k, v, lr, alpha, beta), st, offsets, chunk_size, write_grad,
                dict(memory=memory, objective=objective, huber_delta=huber_delta, rule=rule,
                     read=read),
            )
        o, final = memory_chunked(
            q, k, v, lr, alpha, beta, memory=memory, objective=objective,
            huber_delta=huber_delta, rule=rule, chunk_size=chunk_size, read=read,
            initial_state=dataclasses.replace(st, offset=offsets[0] if offsets else 0),
            write_grad=write_grad,
        )
        return o, dataclasses.replace(final, offset=torch.full_like(st.offset, final.offset))
    return _chunked_uniform(a)


def _chunked_uniform(a: _core.Args) -> tuple[Tensor, MemoryState]:
    """``memory_chunked`` with every row at the same place of its chunk (``a.state.offset`` an
    int): a head segment finishing a chunk begun by an earlier call, full chunks, a tail."""
    st = a.state
    T = a.k.shape[2]
    C = a.chunk_size
    if T == 0:
        return _core.to_public(a.v, a.out_dtype), st
    eta = _core.effective_lr(a)  # [B, H, T]
    log_alpha = _core.log_or_zero(a.alpha, eta)
    log_beta = None if a.beta is None else torch.log(a.beta)
    with_momentum = log_beta is not None

    # Segments: the rest of a chunk begun by an earlier call, full chunks, then a partial tail.
    head = min((C - st.offset) % C, T)
    n_full = (T - head) // C
    tail = T - head - n_full * C
    groups = [(s, n, L) for s, n, L in ((0, 1, head), (head, n_full, C),
                                          (head + n_full * C, 1, tail)) if n and L]

    W = st.weights
    S = (st.momentum or tuple(torch.zeros_like(w) for w in W)) if with_momentum else None
    outs = []
    Wc = st.chunk_start
    written = st.written  # [B] or None (README section 9)
    for start, n, L in groups:
        o, W, S, Wc, written = _chunk_group(a, (eta, log_alpha, log_beta), start, n, L,
                                            W, S, written)
        outs.append(o)
    o = torch.cat([x.flatten(2, 3) for x in outs], dim=2)  # [B, H, T, Dv]
    offset = (st.offset + T) % C
    final = MemoryState(weights=W, momentum=S, chunk_start=Wc if offset else W, offset=offset,
                        written=written)
    return _core.to_public(o, a.out_dtype), final


def _chunk_group(a: _core.Args, rates, start: int, n: int, L: int, W, S, written):
    """``n`` chunks of ``L`` tokens from ``start`` (README sections 3-5): their reads
    ``[B, H, n, L, Dv]`` and the weights, momentum, last chunk-start weights and ``written``
    flags after them."""
    st, memory, rule, C = a.state, a.memory, a.rule, a.chunk_size
    B = a.k.shape[0]
    eta, log_alpha, log_beta = rates
    sl = slice(start, start + n * L)

    def chunks(x: Tensor | None) -> Tensor | None:  # [B, H, n*L, ...] -> [B, H, n, L, ...]
        return None if x is None else x[:, :, sl].unflatten(2, (n, L))

    Kg, Vg, Qg = chunks(a.k), chunks(a.v), chunks(a.q)
    co = chunk_coefficients(
        chunks(log_alpha), chunks(log_beta), chunks(eta), Kg,
        dgd=rule == "dgd", per_token=a.read == "per_token",
    )
    written_after = None  # [B, n]: whether each row has written by the end of each chunk
    if written is not None:
        wrote = (chunks(eta) > 0).any(-1).any(1)  # [B, n]
        written_after = (wrote.cumsum(1) > 0) | written[:, None]
        written = written_after[:, -1]
    per_chunk = _unbind_chunks(co, Kg, Vg)
    saved = []  # what the reads need from each chunk
    for c_idx, (co_c, K_c, V_c) in enumerate(per_chunk):
        continuing = start == 0 and st.offset > 0  # head segment: W_c != W_prev
        Wc = st.chunk_start if continuing else W
        grad = _core.inner_grad(memory, a.objective, Wc, K_c, V_c, a.huber_delta)
        W_prev, S_prev = W, S
        W, S = _advance(memory, rule, W_prev, S_prev, grad, K_c, co_c,
                        same_start=not continuing)
        saved.append((Wc, W_prev, S_prev, grad))
        completes = st.offset + L == C if continuing else L == C
        if completes and a.write_grad == "detach":
            if written_after is None:
                W = tuple(w.detach() for w in W)
                S = None if S is None else tuple(s.detach() for s in S)
            else:  # rows that have written nothing keep their graph to the initial state
                cut = written_after[:, c_idx].view(B, 1, 1, 1)
                W = tuple(torch.where(cut, w.detach(), w) for w in W)
                S = None if S is None else tuple(torch.where(cut, s.detach(), s) for s in S)
    if a.read == "chunk_start":
        Wc_g = tuple(torch.stack(ws, dim=2) for ws in zip(*(s[0] for s in saved)))
        o = _core.apply_memory(memory, Wc_g, Qg)
    else:
        o = _read_per_token(memory, Qg, Kg, saved, co)
    return o, W, S, Wc, written


def _per_row(inputs, st: MemoryState, offsets: list[int], C: int, write_grad, kw):
    """``memory_chunked`` for rows at different places of their chunks (README section 9).

    The sequence is cut at every chunk boundary of every row. Inside a piece no row crosses a
    boundary, so the piece is one call of the uniform path in which every row continues a chunk
    (offset ``C - L``: the gradients are taken at the per-row chunk-start weights ``W_c`` and
    the weights advance from ``W``); before a piece, the rows whose chunk begins there take
    ``W_c = W``. ``write_grad="detach"`` cuts the graph of each row at its own chunk ends."""
    B, T = inputs[1].shape[:2]
    if T == 0:
        return inputs[2].to(inputs[0].dtype), st
    plan = []  # (piece length, offsets at its start)
    pos = 0
    while pos < T:
        L = min(T - pos, min(C - o for o in offsets))
        plan.append((L, offsets))
        offsets = [(o + L) % C for o in offsets]
        pos += L
    pieces = [None if x is None else x.split([L for L, _ in plan], dim=1) for x in inputs]
    device = st.weights[0].device

    def rows(flags: list[bool]) -> Tensor:  # -> [B, 1, 1, 1] against [B, H, O, I]
        return torch.tensor(flags, device=device).view(B, 1, 1, 1)

    W, S, Wc, written = st.weights, st.momentum, st.chunk_start, st.written
    outs = []
    for i, (L, offs) in enumerate(plan):
        starts = rows([o == 0 for o in offs])
        Wc = tuple(torch.where(starts, w, c) for w, c in zip(W, Wc))
        piece = [None if p is None else p[i] for p in pieces]
        o, nxt = memory_chunked(
            *piece, chunk_size=C, write_grad="full", **kw,
            initial_state=MemoryState(weights=W, momentum=S, chunk_start=Wc, offset=C - L,
                                      written=written),
        )
        W, S, written = nxt.weights, nxt.momentum, nxt.written
        ends = [(o_ + L) % C == 0 for o_ in offs]
        if write_grad == "detach" and any(ends):
            cut = rows(ends) if written is None else rows(ends) & written.view(B, 1, 1, 1)
            W = tuple(torch.where(cut, w.detach(), w) for w in W)
            S = None if S is None else tuple(torch.where(cut, s.detach(), s) for s in S)
        outs.append(o)
    ends = rows([o == 0 for o in offsets])
    final = MemoryState(
        weights=W, momentum=S, chunk_start=tuple(torch.where(ends, w, c) for w, c in zip(W, Wc)),
        offset=torch.tensor(offsets, dtype=st.offset.dtype, device=st.offset.device),
        written=written,
    )
    return torch.cat(outs, dim=1), final



def _unbind_chunks(co: ChunkCoefficients, K: Tensor, V: Tensor):
    """Split the group's tensors into per-chunk views (one unbind per tensor, not per chunk)."""
    fields = ("decay_total", "eta_e", "mom_r", "mom_total", "eta_b", "dgd_z", "dgd_y",
              "dgd_rho")
    cols = {f: getattr(co, f).unbind(2) for f in fields if getattr(co, f) is not None}
    n = K.shape[2]
    return [
        ({f: c[i] for f, c in cols.items()}, K_c, V_c)
        for i, K_c, V_c in zip(range(n), K.unbind(2), V.unbind(2))
    ]


def _advance(memory, rule, W, S, grad: _core.InnerGrad, K, co: dict, *, same_start: bool):
    """Jump from the state before a chunk to the state after it (README section 3-4).

    ``W``/``S`` are the weights/momentum before the chunk; ``grad`` holds the chunk's per-token
    gradient factors taken at the chunk-start weights.
    """
    w_in = _core.input_side(memory)
    new_W, new_S = [], []
    for i, (W_i, u, x) in enumerate(zip(W, grad.us, grad.xs)):
        dgd = rule == "dgd" and i == w_in
        kp = None
        if dgd:
            kp = grad.key_proj if same_start else K @ W_i.transpose(-1, -2)
        Wn, Sn = advance_weight(W_i, None if S is None else S[i], u, x, co, kp=kp, K=K)
        new_W.append(Wn)
        new_S.append(Sn)
    return tuple(new_W), (tuple(new_S) if S is not None else None)



def _linear_read(query, W, S, u, x, co: ChunkCoefficients) -> Tensor:
    """Dual-form read of one weight matrix at every token of the chunks (README section 5):
    ``W_t q_t = a_t W_0 q_t + c_t S_0 q_t - sum_{i<=t} D[t, i] eta_i (x_i . q_t) u_i``."""
    out = co.read_a[..., None] * (query @ W.transpose(-1, -2))
    if S is not None:
        out = out + co.read_c[..., None] * (query @ S.transpose(-1, -2))
    scores = (query @ x.transpose(-1, -2)) * co.read_d * co.eta[..., None, :]
    return out - scores @ u


def _read_per_token(memory, Q, K, saved, co: ChunkCoefficients) -> Tensor:
    def stack(pick) -> tuple[Tensor, ...] | None:
        items = [pick(s) for s in saved]
        if items[0] is None:
            return None
        return tuple(torch.stack(ts, dim=2) for ts in zip(*items))

    W = stack(lambda s: s[1])
    S = stack(lambda s: s[2])
    us = stack(lambda s: s[3].us)
    xs = stack(lambda s: s[3].xs)

    def mom(i: int) -> Tensor | None:
        return None if S is None else S[i]

    if memory == "linear":
        return _linear_read(Q, W[0], mom(0), us[0], xs[0], co)
    h = _linear_read(Q, W[1], mom(1), us[1], xs[1], co)  # W2_t q_t
    y = _linear_read(F.silu(h), W[0], mom(0), us[0], xs[0], co)  # W1_t silu(W2_t q_t)
    return Q + y if memory == "residual_mlp" else y


def memory_read(q: Tensor, state: MemoryState, *, memory: _core.MemoryKind = "linear") -> Tensor:
    """Read a memory without writing: ``M(W; q)`` with the state's current weights.

    ``q: [B, T, H, Dk]`` -> ``[B, T, H, Dv]``; the weights are ``[B, H, O, I]`` or ``[H, O, I]``.
    """
    _core._choice("memory", memory, _core.MEMORY_KINDS)
    q = _core._bthd("q", q)
    weights = tuple(w.unsqueeze(0) if w.ndim == 3 else w for w in state.weights)
    return _core.apply_memory(memory, weights, q.transpose(1, 2)).transpose(1, 2)
