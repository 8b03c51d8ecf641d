"""Several MLP memories written with the same keys and rates, advanced together (README section 7).

The memories share the keys, the effective learning rates, the retention and the momentum gates,
so one set of chunk coefficients serves all of them, and their input-side weights are one
``[M*h, d]`` matrix per head (a memory with ``M*h`` hidden units as far as the keys, the DGD
transfer and the momentum are concerned). The stacked layout, :class:`StackedMemories`:

* memory axis m (size ``M = G + V + 1``): ``G`` gate memories (2-layer MLPs to one scalar per
  head), ``V`` vector memories (residual MLPs of Eq. 89), one main memory (a residual MLP);
  the ``R = V + 1`` residual memories are the last ``R``;
* ``w2 [B, H, M*h, d]``: the input-side weights, memory m in rows ``m*h:(m+1)*h``;
* ``w1r [B, H, R, d, h]`` and ``w1g [B, H, G, 1, h]``: the output-side weights.

The vector and gate memories ("projection memories") share one chunk grid, the main memory has
its own. A segment is a run of tokens inside one chunk of both grids in every row
(:func:`plan_segments`); within it every read and every inner gradient uses the chunk-start
weights (decision D2). Per segment a caller reads the projection memories at its inputs
(:func:`stacked_project`), turns the reads into keys, values, queries and rates (its own
convolutions and gates), and writes every memory (:func:`stacked_write`), which also reads the
main memory at the queries. :func:`stack_memories` / :func:`unstack_memories` convert from and to
one :class:`~nestlearn.memory.MemoryState` per group.

Chunk offsets (the position inside the current chunk) are an ``int`` when every row is at the
same place, else a ``[B]`` integer tensor; :func:`plan_segments` reads a tensor once (one host
sync per grid) and hands back an ``int`` when its rows agree.

Dimension legend: B batch, H heads, L tokens in a segment, d key width (the head width), h hidden
width of one memory, G / V gate / vector memories, M = G + V + 1, R = V + 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.memory import _core
from nestlearn.memory.advance import advance_weight
from nestlearn.memory.chunked import memory_read
from nestlearn.memory.coefficients import chunk_coefficients
from nestlearn.memory.state import MemoryState

__all__ = [
    "SegmentPlan", "StackedMemories", "plan_segments", "read_chunk_start", "stack_memories",
    "stacked_project", "stacked_write", "unstack_memories",
]

Offset = int | Tensor


@dataclass(frozen=True)
class StackedMemories:
    """The memories of one layer in the stacked layout (module docstring).

    ``w2``, ``w1r``, ``w1g``: the weights; ``s2``, ``s1r``, ``s1g``: their momentum (or ``None``);
    ``c2``, ``c1r``, ``c1g``: the chunk-start weights; ``proj_offset`` / ``main_offset``: the
    chunk offset of the projection memories / the main memory (an ``int``, or a ``[B]`` tensor
    when the rows differ); ``written``: as :attr:`MemoryState.written`.
    """

    w2: Tensor
    w1r: Tensor
    w1g: Tensor
    s2: Tensor | None
    s1r: Tensor | None
    s1g: Tensor | None
    c2: Tensor
    c1r: Tensor
    c1g: Tensor
    proj_offset: Offset
    main_offset: Offset
    n_gate: int
    n_vec: int
    written: Tensor | None = None


class SegmentPlan(NamedTuple):
    """The segment lengths of ``T`` tokens and the starting offsets (a tensor whose rows agree
    made an ``int``)."""

    lengths: tuple[int, ...]
    proj_offset: Offset
    main_offset: Offset


def plan_segments(T: int, proj_offset: Offset, main_offset: Offset, *, proj_chunk: int,
                  main_chunk: int) -> SegmentPlan:
    """Cut ``T`` tokens at every chunk boundary of either grid in any row (the reads and inner
    gradients of a segment must all come from the same chunk-start weights)."""

    def rows(offset: Offset) -> list[int]:
        if isinstance(offset, Tensor):
            return [int(o) for o in offset.tolist()] or [0]
        return [offset]

    def normal(offset: Offset, r: list[int]) -> Offset:
        return r[0] if len(set(r)) == 1 else offset.long()

    po, mo = rows(proj_offset), rows(main_offset)
    plan = SegmentPlan((), normal(proj_offset, po), normal(main_offset, mo))
    lengths, done = [], 0
    while done < T:
        L = min(T - done, proj_chunk - max(po), main_chunk - max(mo))
        lengths.append(L)
        done += L
        po = [(o + L) % proj_chunk for o in po]
        mo = [(o + L) % main_chunk for o in mo]
    return plan._replace(lengths=tuple(lengths))


def stack_memories(gate: MemoryState, vec: MemoryState, main: MemoryState, *, n_gate: int,
                   n_vec: int, heads: int, batch: int, dtype: torch.dtype, proj_offset: Offset,
                   main_offset: Offset, momentum: bool) -> StackedMemories:
    """The three groups (each ``(W1, W2)`` with the memories of the group stacked on the head
    axis, memory-major: ``[(B,) n*H, O, I]``) in the stacked layout, cast to ``dtype``; the
    offsets come from :func:`plan_segments`; ``momentum`` starts a zero momentum if there is
    none."""
    G, V, H = n_gate, n_vec, heads

    def heads_of(t: Tensor, n: int) -> Tensor:  # [(B,) n*H, O, I] -> [B, H, n, O, I]
        t = t.to(dtype)
        t = t.expand(batch, *t.shape[-3:]) if t.ndim == 3 else t
        return t.unflatten(1, (n, H)).transpose(1, 2)

    def gather(pick) -> tuple[Tensor, Tensor, Tensor]:
        g, v, m = pick(gate), pick(vec), pick(main)
        w2 = torch.cat([heads_of(g[1], G), heads_of(v[1], V), heads_of(m[1], 1)], dim=2)
        w1r = torch.cat([heads_of(v[0], V), heads_of(m[0], 1)], dim=2)
        return w2.flatten(2, 3), w1r, heads_of(g[0], G).contiguous()

    w2, w1r, w1g = gather(lambda m: m.weights)
    if all(m.chunk_start is m.weights for m in (gate, vec, main)):
        c2, c1r, c1g = w2, w1r, w1g
    else:
        c2, c1r, c1g = gather(lambda m: m.chunk_start)
    s2 = s1r = s1g = None
    if main.momentum is not None:
        s2, s1r, s1g = gather(lambda m: m.momentum)
    elif momentum:
        s2, s1r, s1g = torch.zeros_like(w2), torch.zeros_like(w1r), torch.zeros_like(w1g)
    return StackedMemories(w2, w1r, w1g, s2, s1r, s1g, c2, c1r, c1g, proj_offset, main_offset,
                           G, V, main.written)


def unstack_memories(stk: StackedMemories) -> tuple[MemoryState, MemoryState, MemoryState]:
    """``(gate, vec, main)``: the inverse of :func:`stack_memories` (weights ``[B, n*H, O, I]``)."""
    G, V = stk.n_gate, stk.n_vec

    def split(w2: Tensor, w1r: Tensor, w1g: Tensor):
        """-> ((W1, W2) of gate, vec, main), each ``[B, n*H, O, I]`` (memory-major heads)."""
        w2m = w2.unflatten(2, (G + V + 1, -1))  # [B, H, M, h, d]

        def flat(t: Tensor) -> Tensor:  # [B, H, n, O, I] -> [B, n*H, O, I]
            return t.transpose(1, 2).flatten(1, 2)

        return (
            (flat(w1g), flat(w2m[:, :, :G])),
            (flat(w1r[:, :, :V]), flat(w2m[:, :, G:G + V])),
            (flat(w1r[:, :, V:]), flat(w2m[:, :, G + V:])),
        )

    ws = split(stk.w2, stk.w1r, stk.w1g)
    same = stk.c2 is stk.w2 and stk.c1r is stk.w1r and stk.c1g is stk.w1g
    cs = ws if same else split(stk.c2, stk.c1r, stk.c1g)
    ss = (None,) * 3 if stk.s2 is None else split(stk.s2, stk.s1r, stk.s1g)
    offsets = (stk.proj_offset, stk.proj_offset, stk.main_offset)
    gate, vec, main = (
        MemoryState(weights=w, momentum=s, chunk_start=c, offset=off, written=stk.written)
        for w, s, c, off in zip(ws, ss, cs, offsets)
    )
    return gate, vec, main


def _per_memory(t: Tensor, M: int) -> Tensor:  # [B, H, L, M*h] -> [B, H, M, L, h]
    return t.unflatten(-1, (M, -1)).transpose(2, 3)


def stacked_project(stk: StackedMemories, x: Tensor) -> tuple[Tensor, Tensor]:
    """Read every memory at ``x [B, H, L, d]`` with the chunk-start weights (Eq. 83, NL 8.2):
    ``(gates [B, H, G, L], vectors [B, H, R, L, d])``; the main memory's read is the last of
    ``vectors`` (computing it is cheaper than slicing its weights out)."""
    G = stk.n_gate
    M = G + stk.n_vec + 1
    ax = _per_memory(F.silu(x @ stk.c2.mT), M)  # [B, H, M, L, h]
    gx = (ax[:, :, :G] @ stk.c1g.mT)[..., 0]  # [B, H, G, L]
    vx = x[:, :, None] + ax[:, :, G:] @ stk.c1r.mT  # [B, H, R, L, d] (residual, Eq. 89)
    return gx, vx


def stacked_write(
    stk: StackedMemories, k: Tensor, v: Tensor, q: Tensor, eta: Tensor, alpha: Tensor | None,
    beta: Tensor | None, keep: Tensor | None, *, rule: Literal["dgd", "gd"],
    objective: Literal["l2", "huber"], huber_delta: float, proj_chunk: int, main_chunk: int,
    detach: bool,
) -> tuple[Tensor, StackedMemories]:
    """One segment's writes of every memory and the main memory's read.

    ``k`` (unit keys), ``v``, ``q``: ``[B, H, L, d]``; ``eta``, ``alpha`` (or ``None``: no
    retention), ``beta`` (or ``None``: no momentum): ``[B, H, L]``; ``keep``: ``[B, 1, L]``
    (True = real token) or ``None``. Every memory writes its own target ``M(v)`` (Eq. 84) by
    ``rule`` on the ``objective`` (Eq. 88); with ``detach`` a chunk end cuts the graph in the
    rows that have written. Returns ``(o [B, H, L, d], memories after the segment)``, ``o`` the
    main memory's read of ``q`` at its chunk-start weights (Eq. 90, 94).
    """
    L = k.shape[2]
    G, V = stk.n_gate, stk.n_vec
    M, R = G + V + 1, V + 1
    h = stk.w1r.shape[-1]
    c2, c1r, c1g = stk.c2, stk.c1r, stk.c1g  # chunk-start weights (D6)

    # targets v_hat = M(v) (Eq. 84) and the inner gradients at the keys, both at the chunk-start
    # weights: one product for k and v (README section 1)
    hkv = torch.cat([k, v], dim=2) @ c2.mT  # [B, H, 2L, M*h]
    akv = F.silu(hkv)
    a_m = _per_memory(akv, M)  # [B, H, M, 2L, h]
    yg = a_m[:, :, :G] @ c1g.mT  # [B, H, G, 2L, 1]
    yr = a_m[:, :, G:] @ c1r.mT  # [B, H, R, 2L, d]
    eg = yg[..., :L, :] - yg[..., L:, :]  # e = M(k) - v_hat  [B, H, G, L, 1]  (mlp)
    er = yr[..., :L, :] - yr[..., L:, :] + (k - v)[:, :, None]  # [B, H, R, L, d]  (residual)
    if objective == "huber":  # capped error norms
        eg, er = _core.huber_error(eg, huber_delta), _core.huber_error(er, huber_delta)
    hk = hkv[:, :, :L]  # [B, H, L, M*h]
    a_k = a_m[..., :L, :]  # [B, H, M, L, h]
    # dL/dh = (W1^T e) * silu'(h),  silu'(h) = s + a (1 - s)
    back = torch.cat([eg * c1g, er @ c1r], dim=2)  # [B, H, M, L, h]
    u2 = _SiluGradTimes.apply(back.transpose(2, 3).flatten(3), hk)  # [B, H, L, M*h]

    # one set of chunk coefficients for every memory: they share keys and rates (README 3-4)
    dgd = rule == "dgd"
    lr = _core.dgd_lr(eta, k) if dgd else eta
    co = chunk_coefficients(
        _core.log_or_zero(alpha, lr), None if beta is None else torch.log(beta), lr, k,
        dgd=dgd, per_token=False,
    )
    co_m = co.map(lambda t: t.unsqueeze(2))  # broadcast over the memory axis of w1r, w1g

    # the writes (Eq. 88): DGD on the input side, scalar retention on the output side
    kp = None
    if dgd:  # W_0 K^T with the weights before the segment (== chunk start unless mid-chunk)
        kp = hk if _at_chunk_start(stk) else k @ stk.w2.mT
    w2, s2 = advance_weight(stk.w2, stk.s2, u2, k, co, kp=kp, K=k)
    w1r, s1r = advance_weight(stk.w1r, stk.s1r, er, a_k[:, :, G:], co_m)
    w1g, s1g = advance_weight(stk.w1g, stk.s1g, eg, a_k[:, :, :G], co_m)

    # the main memory reads q at its chunk-start weights (Eq. 90, 94)
    o = q + F.silu(q @ c2[:, :, (M - 1) * h:].mT) @ c1r[:, :, R - 1].mT  # [B, H, L, d]

    written = stk.written
    if written is not None:  # a row has written once it has a real token
        written = written | keep.flatten(1).any(1) if keep is not None else None
    new = _advanced(stk, (w2, w1r, w1g), (s2, s1r, s1g), L=L, proj_chunk=proj_chunk,
                    main_chunk=main_chunk, detach=detach, written=written)
    return o, new


def _at_chunk_start(stk: StackedMemories) -> bool:
    """Every row of both grids at a chunk start (an offset tensor means the rows differ)."""
    return all(isinstance(o, int) and o == 0 for o in (stk.proj_offset, stk.main_offset))


def _ended(offset: Offset) -> bool | Tensor:
    """Whether a chunk has just ended: a bool, or one bool per row."""
    return offset == 0


def _advanced(stk: StackedMemories, W, S, *, L: int, proj_chunk: int, main_chunk: int,
              detach: bool, written: Tensor | None) -> StackedMemories:
    """The memories after a segment of ``L`` tokens with new weights ``W`` and momentum ``S``
    (each ``(w2, w1r, w1g)``): a group whose chunk ends takes its new weights as chunk start
    (and with ``detach`` cuts the graph there, like ``memory_chunked``, in the rows that have
    written: ``written`` after the segment, ``None`` = all rows)."""
    po = (stk.proj_offset + L) % proj_chunk
    mo = (stk.main_offset + L) % main_chunk
    done = (_ended(po), _ended(mo))  # (projection memories, main memory)
    per_row = any(isinstance(d, Tensor) for d in done)
    # the main memory's share of each tensor: the last h rows of w2, the last w1r, no w1g
    splits = ((stk.n_gate + stk.n_vec) * stk.w1r.shape[-1], stk.n_vec, None)
    dim = 2

    def by_group(new: Tensor, old: Tensor, split) -> Tensor:
        """``new`` for the groups that ended, ``old`` for the others."""
        if per_row:
            return torch.where(_row_mask(new, split, dim, done), new, old)
        if split is None:  # projection memories only
            return new if done[0] else old
        if done[0] == done[1]:
            return new if done[0] else old
        first, second = (new, old) if done[0] else (old, new)
        n = new.shape[dim]
        return torch.cat([first.narrow(dim, 0, split), second.narrow(dim, split, n - split)],
                         dim)

    # with per-row offsets the cut runs whether or not a row ended (no host sync; a mask that
    # selects nothing leaves the values and gradients as they are)
    if detach and (per_row or any(done)):
        if written is None:
            def cut(new: Tensor, sp) -> Tensor:
                return by_group(new.detach(), new, sp)
        else:  # rows that have written nothing keep their graph to the initial memories
            def cut(new: Tensor, sp) -> Tensor:
                rows = written.view([-1] + [1] * (new.ndim - 1))
                return torch.where(_row_mask(new, sp, dim, done) & rows, new.detach(), new)
        W = tuple(cut(w, sp) for w, sp in zip(W, splits))
        if S[0] is not None:
            S = tuple(cut(s, sp) for s, sp in zip(S, splits))
    C = tuple(by_group(w, c, sp) for w, c, sp in zip(W, (stk.c2, stk.c1r, stk.c1g), splits))
    return replace(stk, w2=W[0], w1r=W[1], w1g=W[2], s2=S[0], s1r=S[1], s1g=S[2],
                   c2=C[0], c1r=C[1], c1g=C[2], proj_offset=po, main_offset=mo, written=written)


def _row_mask(like: Tensor, split: int | None, dim: int, take) -> Tensor:
    """A bool mask broadcastable to ``like`` ``[B, ...]``: row b, index i of ``dim`` is True when
    that row's group (projection memories below ``split``, the main memory from it on; all
    projection memories when ``split`` is None) is in ``take`` (per group a bool or a ``[B]``
    bool tensor)."""
    B, n = like.shape[0], like.shape[dim]

    def rows(flags) -> Tensor:  # bool or [B] -> [B, 1]
        if not isinstance(flags, Tensor):
            flags = torch.tensor((flags,) * B, device=like.device)
        return flags[:, None]

    proj = rows(take[0])
    if split is None:
        mask = proj.expand(B, n)
    else:
        first = torch.arange(n, device=like.device) < split  # [n]
        mask = torch.where(first, proj, rows(take[1]))  # [B, n]
    shape = [B] + [1] * (like.ndim - 1)
    shape[dim] = n
    return mask.view(shape)


def read_chunk_start(x: Tensor, state: MemoryState, n: int,
                     memory: Literal["mlp", "residual_mlp"]) -> Tensor:
    """Read ``n`` memories stacked on the head axis (memory-major) at the same input, with their
    chunk-start weights: ``x [B, L, H, d]`` -> ``[B, L, n*H, O]``."""
    return memory_read(x.repeat(1, 1, n, 1), replace(state, weights=state.chunk_start),
                       memory=memory)


class _SiluGradTimes(torch.autograd.Function):
    """``g * silu'(h)`` (the backpropagated error at a memory's hidden layer, README section 1)
    as one node: the forward is ``aten.silu_backward`` (one fused kernel, where the elementwise
    formula takes four ops and saves three more tensors), the backward is written out with
    ``silu''(h) = s (1 - s) (2 + h (1 - 2 s))``, ``s = sigmoid(h)``. ``aten.silu_backward`` has no
    derivative of its own, so when a double backward is being recorded the backward uses the
    differentiable formula. Tested against the formula in float64 (gradcheck, gradgradcheck)."""

    @staticmethod
    def forward(ctx, g, h):
        ctx.save_for_backward(g, h)
        return torch.ops.aten.silu_backward(g, h)

    @staticmethod
    def backward(ctx, grad):
        g, h = ctx.saved_tensors
        s = torch.sigmoid(h)
        if torch.is_grad_enabled():  # recording a double backward: differentiable ops only
            d_g = grad * (s * (1 + h * (1 - s)))
        else:
            d_g = torch.ops.aten.silu_backward(grad, h)
        d_h = None
        if ctx.needs_input_grad[1]:
            d_h = grad * g * (s * (1 - s) * (2 + h * (1 - 2 * s)))
        return d_g, d_h
