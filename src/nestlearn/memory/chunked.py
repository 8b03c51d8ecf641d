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
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.memory import _core
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
    B, H, T, _ = a.k.shape
    C = chunk_size
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
        sl = slice(start, start + n * L)

        def chunks(x: Tensor | None) -> Tensor | None:  # [B, H, n*L, ...] -> [B, H, n, L, ...]
            return None if x is None else x[:, :, sl].unflatten(2, (n, L))

        Kg, Vg, Qg = chunks(a.k), chunks(a.v), chunks(a.q)
        co = chunk_coefficients(
            chunks(log_alpha), chunks(log_beta), chunks(eta), Kg,
            dgd=rule == "dgd", per_token=read == "per_token",
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
            grad = _core.inner_grad(memory, objective, Wc, K_c, V_c, a.huber_delta)
            W_prev, S_prev = W, S
            W, S = _advance(memory, rule, W_prev, S_prev, grad, K_c, co_c,
                            same_start=not continuing)
            saved.append((Wc, W_prev, S_prev, grad))
            completes = st.offset + L == C if continuing else L == C
            if completes and write_grad == "detach":
                if written_after is None:
                    W = tuple(w.detach() for w in W)
                    S = None if S is None else tuple(s.detach() for s in S)
                else:  # rows that have written nothing keep their graph to the initial state
                    cut = written_after[:, c_idx].view(B, 1, 1, 1)
                    W = tuple(torch.where(cut, w.detach(), w) for w in W)
                    S = None if S is None else tuple(torch.where(cut, s.detach(), s) for s in S)
        if read == "chunk_start":
            Wc_g = tuple(torch.stack(ws, dim=2) for ws in zip(*(s[0] for s in saved)))
            outs.append(_core.apply_memory(memory, Wc_g, Qg))
        else:
            outs.append(_read_per_token(memory, Qg, Kg, saved, co))
    o = torch.cat([x.flatten(2, 3) for x in outs], dim=2)  # [B, H, T, Dv]
    offset = (st.offset + T) % C
    final = MemoryState(weights=W, momentum=S, chunk_start=Wc if offset else W, offset=offset,
                        written=written)
    return _core.to_public(o, a.out_dtype), final


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


@dataclass
class _Coeffs:
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

    def map(self, fn) -> _Coeffs:
        """Apply ``fn`` to every tensor (e.g. insert a memory axis to broadcast over memories)."""
        return _Coeffs(**{f: None if t is None else fn(t) for f, t in vars(self).items()})


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


def chunk_coefficients(log_alpha, log_beta, eta, k, *, dgd: bool, per_token: bool) -> _Coeffs:
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
    co = _Coeffs(decay_total=la[..., -1].exp(), eta_e=eta * e, eta=eta)
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


def _unbind_chunks(co: _Coeffs, K: Tensor, V: Tensor):
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


_COEFF_FIELDS = ("decay_total", "mom_r", "mom_total", "eta_e", "eta_b", "dgd_z", "dgd_y",
                 "dgd_rho")


def advance_weight(W: Tensor, S: Tensor | None, u: Tensor, x: Tensor, co, *,
                   kp: Tensor | None = None, K: Tensor | None = None):
    """Advance one weight matrix over one chunk (README eq. 3.4-3.5, and 4.4 when ``kp`` is given).

    ``W``, ``S``: ``[..., O, I]`` before the chunk (``S`` the momentum, or ``None``);
    ``u``, ``x``: ``[..., L, O]``, ``[..., L, I]``, the chunk's gradient factors at its start weights;
    ``co``: the chunk's :class:`_Coeffs` (or a dict of its per-chunk fields) with leading dims that
    broadcast against ``W``'s (so several memories that share keys and rates share ``co``).
    For the DGD weight (the one that sees the key) pass ``kp = K W^T [..., L, O]`` and the keys
    ``K [..., L, I]``. Returns ``(W_L, S_L)``.

    Runs as one autograd node (:class:`_AdvanceWeight`) with a hand-written backward (README
    section 8); ``_advance_weight_autograd`` is the same arithmetic left to autograd, which the
    tests compare it with. The backward is made of differentiable operations (no in-place change
    of a tensor autograd saves), so a double backward (HOPE's second-order CMS meta-gradient)
    differentiates through it.
    """
    get = co.get if isinstance(co, dict) else lambda f: getattr(co, f)
    coeffs = [get(f) for f in _COEFF_FIELDS]
    if kp is None:  # GD-type weight: Z, Y, rho unused
        coeffs[5:] = [None] * 3
        K = None
    else:
        coeffs[3] = None  # eta_e unused with DGD
    if S is None:  # no momentum: r, mom_total, eta_b, rho unused
        for i in (1, 2, 4, 7):
            coeffs[i] = None
    out = _AdvanceWeight.apply(W, S, u, x, kp, K, *coeffs)
    return out[0], (out[1] if S is not None else None)


class _AdvanceWeight(torch.autograd.Function):
    """``advance_weight`` as one autograd node. The forward is the arithmetic of
    ``_advance_weight_autograd``; the backward is written out (below) so that a chunk's backward
    makes no state-sized temporaries beyond the gradients themselves: the gradients of the
    per-chunk scalars are batched dot products (no elementwise product of two states), the two
    products of eq. 4.7 are one product of inner width 2L in both directions, and nothing is
    broadcast-then-reduced. The inputs are flattened to ``[N, ...]`` over the broadcast leading
    dims; gradients are summed back to each input's shape."""

    @staticmethod
    def forward(ctx, W, S, u, x, kp, K, dt, r, mt, eta_e, eta_b, z, y, rho):
        ins = (W, S, u, x, kp, K)
        cos = (dt, r, mt, eta_e, eta_b, z, y, rho)
        lead = torch.broadcast_shapes(
            *(t.shape[:-2] for t in ins if t is not None),
            *(t.shape for t in (dt, r, mt) if t is not None),
            *(t.shape[:-1] for t in (eta_e, eta_b, rho) if t is not None),
            *(t.shape[:-2] for t in (z, y) if t is not None),
        )
        ctx.lead = lead
        ctx.save_for_backward(*ins, *cos)
        f = _Flat(lead)
        Wf, Sf, uf, xf, kpf, Kf = (f.mat(t) for t in ins)
        dtf, rf, mtf = (f.scalar(t) for t in (dt, r, mt))
        O, I = W.shape[-2:]
        u_t = uf.mT  # [N, O, L]
        W_new = Wf * dtf
        if Sf is not None:
            W_new.addcmul_(Sf, rf)
        if kpf is not None:
            mix = _dgd_mix(kpf, dtf, Sf, Kf, f.row(rho))
            W_new.baddbmm_(torch.cat([mix, u_t], -1), torch.cat([f.mat(z), f.mat(y)], -2),
                           alpha=-1)
        else:
            W_new.baddbmm_(u_t, f.col(eta_e) * xf, alpha=-1)
        if Sf is None:
            return W_new.view(*lead, O, I), None
        S_new = Sf * mtf
        S_new.baddbmm_(u_t, f.col(eta_b) * xf, alpha=-1)
        return W_new.view(*lead, O, I), S_new.view(*lead, O, I)

    @staticmethod
    def backward(ctx, gW, gS):
        saved = ctx.saved_tensors
        need = ctx.needs_input_grad
        W, S, u, x, kp, K, dt, r, mt, eta_e, eta_b, z, y, rho = saved
        f = _Flat(ctx.lead)
        Wf, Sf, uf, xf, kpf, Kf = (f.mat(t) for t in (W, S, u, x, kp, K))
        dtf, rf, mtf = (f.scalar(t) for t in (dt, r, mt))
        g = dict.fromkeys(("W", "S", "u", "x", "kp", "K", "dt", "r", "mt", "eta_e", "eta_b",
                           "z", "y", "rho"))
        if gW is not None:
            gW = f.mat(gW)
            g["W"] = gW * dtf
            g["dt"] = _bdot(gW, Wf)
            if Sf is not None:
                g["S"] = gW * rf
                g["r"] = _bdot(gW, Sf)
            if kpf is not None:
                zf, yf, rhof = f.mat(z), f.mat(y), f.row(rho)
                SK = None if Sf is None else torch.bmm(Sf, Kf.mT)  # [N, O, L]
                mix = _dgd_mix(kpf, dtf, Sf, Kf, rhof, SK=SK)
                L = zf.shape[-2]
                g_o = torch.bmm(gW, torch.cat([zf, yf], -2).mT).neg_()  # [N, O, 2L]
                g_i = torch.bmm(torch.cat([mix, uf.mT], -1).mT, gW).neg_()  # [N, 2L, I]
                gmix, gu_t = g_o[..., :L], g_o[..., L:]
                g["z"], g["y"] = g_i[:, :L], g_i[:, L:]
                g["kp"] = (gmix * dtf).mT
                g["dt"] = g["dt"] + (gmix * kpf.mT).sum((-2, -1))
                if Sf is not None:
                    g["rho"] = (gmix * SK).sum(-2)
                    gSK = gmix * rhof[:, None, :]  # [N, O, L]
                    g["K"] = torch.bmm(gSK.mT, Sf)
                    g["S"].baddbmm_(gSK, Kf)
            else:
                eef = f.col(eta_e)
                gu_t = torch.bmm(gW, (eef * xf).mT).neg_()
                gxe = torch.bmm(uf, gW).neg_()  # [N, L, I]
                g["x"] = gxe * eef
                g["eta_e"] = (gxe * xf).sum(-1)
            g["u"] = gu_t.mT
        if gS is not None and Sf is not None:
            gS = f.mat(gS)
            ebf = f.col(eta_b)
            gu_s = torch.bmm(gS, (ebf * xf).mT).neg_().mT  # [N, L, O]
            g["u"] = gu_s if g["u"] is None else g["u"] + gu_s
            gxb = torch.bmm(uf, gS).neg_()
            g["x"] = gxb * ebf if g["x"] is None else g["x"].addcmul_(gxb, ebf)
            g["eta_b"] = (gxb * xf).sum(-1)
            g["S"] = gS * mtf if g["S"] is None else g["S"].addcmul_(gS, mtf)
            g["mt"] = _bdot(gS, Sf)
        order = ("W", "S", "u", "x", "kp", "K", "dt", "r", "mt", "eta_e", "eta_b", "z", "y",
                 "rho")
        return tuple(
            None if (gr := g[name]) is None or not need[i] else f.unflat(gr, saved[i])
            for i, name in enumerate(order)
        )


class _Flat:
    """Views ``[*lead, ...]`` tensors as ``[N, ...]`` (expanding broadcast dims) and sums
    gradients back to an input's shape. A tensor that already has the full leading dims is only
    viewed (a few microseconds of dispatch per op count here: a chunk is small)."""

    def __init__(self, lead):
        self.lead = tuple(lead)
        self.n_lead = len(self.lead)
        self.N = math.prod(self.lead)

    def _flat(self, t, k):  # [..., *tail(k dims)] -> [N, *tail]
        if t is None:
            return None
        tail = t.shape[t.ndim - k:]
        if t.ndim != self.n_lead + k or t.shape[:self.n_lead] != self.lead:
            t = t.expand(*self.lead, *tail)
        return t.reshape(self.N, *tail)

    def mat(self, t):  # [..., m, n] -> [N, m, n]
        return self._flat(t, 2)

    def scalar(self, t):  # [...] -> [N, 1, 1]
        return None if t is None else self._flat(t, 0).view(self.N, 1, 1)

    def row(self, t):  # [..., L] -> [N, L]
        return self._flat(t, 1)

    def col(self, t):  # [..., L] -> [N, L, 1]
        return None if t is None else self._flat(t, 1)[..., None]

    def unflat(self, g, like):
        """``[N, *tail]`` -> ``like``'s shape (``[*lead', *tail]``), summing broadcast dims."""
        g = g.reshape(*self.lead, *g.shape[1:])
        return g if g.shape == like.shape else g.sum_to_size(like.shape)


def _dgd_mix(kpf, dtf, Sf, Kf, rhof, SK=None):
    """The ``[N, O, L]`` bracket of eq. 4.7: ``dt W_0 K^T + (S_0 K^T) diag(rho)``."""
    mix = kpf.mT * dtf
    if Sf is not None:
        mix.addcmul_(torch.bmm(Sf, Kf.mT) if SK is None else SK, rhof[:, None, :])
    return mix


def _bdot(a: Tensor, b: Tensor) -> Tensor:
    """Batched Frobenius product ``[N, m, n] x [N, m, n] -> [N]`` (an elementwise product and a
    sum: on CPU several times faster than the same as a batched ``[1, mn] x [mn, 1]`` product)."""
    return (a * b).sum((-2, -1))


def _advance_weight_autograd(W: Tensor, S: Tensor | None, u: Tensor, x: Tensor, co, *,
                   kp: Tensor | None = None, K: Tensor | None = None):
    """:func:`advance_weight` (same arguments and result) as plain autograd operations: the
    forward of the hand-written node, and the reference its backward is tested against.

    Each new state is one fresh tensor updated in place (``addcmul_``, ``baddbmm_``): fewer
    state-sized temporaries than the textbook form, and nothing autograd saves is overwritten.
    """
    get = co.get if isinstance(co, dict) else lambda f: getattr(co, f)
    O, I = W.shape[-2:]
    lead = torch.broadcast_shapes(*(t.shape[:-2] for t in (W, S, u, x, kp) if t is not None))

    def flat(t: Tensor) -> Tensor:  # [..., m, n] -> [N, m, n] (N = prod(lead))
        return t.expand(*lead, *t.shape[-2:]).reshape(-1, *t.shape[-2:])

    def scalar(name: str) -> Tensor:  # per-chunk scalar [...] -> [N, 1, 1]
        return flat(get(name)[..., None, None])

    dt = scalar("decay_total")
    u_t = flat(u).transpose(-1, -2)  # [N, O, L]
    W_new = dt * flat(W)  # alpha_{0,L} W_0
    if S is not None:
        W_new.addcmul_(scalar("mom_r"), flat(S))  # + r S_0
    if kp is not None:
        # eq. 4.4: the transfers of W_0 and S_0 share Z: (dt W_0 K^T + S_0 K^T diag(rho)) Z
        mix = flat(kp).transpose(-1, -2) * dt  # [N, O, L]
        if S is not None:
            mix.addcmul_(torch.bmm(flat(S), flat(K).transpose(-1, -2)),
                         flat(get("dgd_rho")[..., None, :]))
        W_new.baddbmm_(mix, flat(get("dgd_z")), alpha=-1)
        W_new.baddbmm_(u_t, flat(get("dgd_y")), alpha=-1)  # - U^T diag(eta) Y
    else:  # eq. 3.4: - U^T diag(eta e) X
        W_new.baddbmm_(u_t, flat(get("eta_e")[..., None] * x), alpha=-1)
    if S is None:
        return W_new.view(*lead, O, I), None
    S_new = scalar("mom_total") * flat(S)  # eq. 3.5
    S_new.baddbmm_(u_t, flat(get("eta_b")[..., None] * x), alpha=-1)
    return W_new.view(*lead, O, I), S_new.view(*lead, O, I)


def _linear_read(query, W, S, u, x, co: _Coeffs) -> Tensor:
    """Dual-form read of one weight matrix at every token of the chunks (README section 5):
    ``W_t q_t = a_t W_0 q_t + c_t S_0 q_t - sum_{i<=t} D[t, i] eta_i (x_i . q_t) u_i``."""
    out = co.read_a[..., None] * (query @ W.transpose(-1, -2))
    if S is not None:
        out = out + co.read_c[..., None] * (query @ S.transpose(-1, -2))
    scores = (query @ x.transpose(-1, -2)) * co.read_d * co.eta[..., None, :]
    return out - scores @ u


def _read_per_token(memory, Q, K, saved, co: _Coeffs) -> Tensor:
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
