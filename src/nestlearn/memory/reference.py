"""Token-by-token reference of the associative-memory update rules: the executable specification.

A plain loop over tokens that does, for token t of chunk j (decision D2, Titans Eq. 13-16,
NL Eq. 57/88/90):

    W_c  = weights at the end of chunk j-1                      (gradients frozen at chunk start)
    g_t  = grad_W  L(W_c; k_t, v_t)                            (autograd, torch.func.grad)
    eta  = lr_t, or lr_t / (1 + lr_t ||k_t||^2) for DGD          (Sherman-Morrison step, Eq. 57)
    S_t  = beta_t S_{t-1} - eta g_t       (momentum; S_t = -eta g_t without it)
    W_t  = W_{t-1} A_t + S_t,  A_t = alpha_t I, or alpha_t I - eta k_t k_t^T on the input-side
                                          weight for DGD (Eq. 88, decision D5)
    read = M(W_c; q_t)  for read="chunk_start" (Eq. 90),  M(W_t; q_t)  for read="per_token".

Rows may sit at different places of their chunks (``initial_state.offset`` a tensor ``[B]``):
each row then starts its chunks at its own tokens (``W_c`` is chosen row by row). With
``write_grad="detach"`` a chunk end cuts the graph of a row that has written (``lr > 0``) at
least once, or of every row when ``initial_state.written`` is ``None``.

With ``chunk_size=1`` this is exact online learning. It is deliberately slow and obvious; the
fast path in ``chunked.py`` must reproduce it (outputs, final state and gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.memory import _core
from nestlearn.memory.state import MemoryState

__all__ = ["memory_reference"]


@_core.autocast_off
def memory_reference(
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
    """Token-by-token reference; same signature and results as :func:`memory_chunked`."""
    a = _core.check_args(
        q, k, v, lr, alpha, beta, memory=memory, objective=objective, huber_delta=huber_delta,
        rule=rule, chunk_size=chunk_size, read=read, initial_state=initial_state,
        write_grad=write_grad,
    )
    st = a.state
    W, Wc = list(st.weights), list(st.chunk_start)
    S = None
    if a.beta is not None:
        S = list(st.momentum) if st.momentum is not None else [torch.zeros_like(w) for w in W]
    B = a.k.shape[0]
    per_row = isinstance(st.offset, Tensor)
    offset = st.offset.to(a.k.device).long() if per_row else torch.full((B,), st.offset,
                                                                       device=a.k.device)

    def rows(mask: Tensor) -> Tensor:  # [B] -> [B, 1, 1, 1] against [B, H, O, I]
        return mask.view(B, 1, 1, 1)
    lr_eff = _core.effective_lr(a)  # [B, H, T]
    written = st.written  # None: every row counts as written
    w_in = _core.input_side(memory)

    inner_grad = torch.func.grad(lambda weights, k_t, v_t: _core.objective_loss(
        objective, _core.apply_memory(memory, weights, k_t), v_t, huber_delta))
    outs = []
    for t in range(a.k.shape[2]):
        starts = rows(offset == 0)  # rows whose chunk begins at this token
        Wc = [torch.where(starts, w, c) for w, c in zip(W, Wc)]
        q_t, k_t, v_t = a.q[:, :, t, None], a.k[:, :, t, None], a.v[:, :, t, None]  # [B,H,1,D]
        g = inner_grad(tuple(Wc), k_t, v_t)
        eta = lr_eff[:, :, t, None, None]  # [B, H, 1, 1]
        ret = 1.0 if a.alpha is None else a.alpha[:, :, t, None, None]
        for i in range(len(W)):
            step = -eta * g[i]
            if S is not None:
                S[i] = a.beta[:, :, t, None, None] * S[i] + step
                step = S[i]
            if rule == "dgd" and i == w_in:
                # W (alpha I - eta k k^T) = alpha W - eta (W k) k^T
                W[i] = ret * W[i] - eta * (W[i] @ k_t.transpose(-1, -2)) @ k_t + step
            else:
                W[i] = ret * W[i] + step
        read_from = Wc if read == "chunk_start" else W
        outs.append(_core.apply_memory(memory, tuple(read_from), q_t))
        offset = (offset + 1) % chunk_size
        if written is not None:  # rows that have taken a step so far
            written = written | (lr_eff[:, :, t] > 0).any(1)
        if write_grad == "detach":  # cut the graph at the written rows whose chunk ends here
            ends = rows(offset == 0 if written is None else (offset == 0) & written)
            W = [torch.where(ends, w.detach(), w) for w in W]
            S = None if S is None else [torch.where(ends, s.detach(), s) for s in S]
    T = a.k.shape[2]
    o = torch.cat(outs, dim=2) if outs else a.v.new_zeros(a.v.shape)
    ends = rows(offset == 0)
    final = MemoryState(
        weights=tuple(W),
        momentum=None if S is None else tuple(S),
        chunk_start=tuple(torch.where(ends, w, c) for w, c in zip(W, Wc)),
        offset=offset if per_row else int(offset[0]) if B else (st.offset + T) % chunk_size,
        written=written,
    )
    return _core.to_public(o, a.out_dtype), final

