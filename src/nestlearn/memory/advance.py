"""Advancing one weight matrix over one chunk (``memory/README.md`` eq. 3.4-3.5 and 4.4), as one
autograd node with a hand-written backward (README section 8).

Dimension legend: see ``_core``; ``[..., O, I]`` a weight with any broadcastable leading dims,
L tokens in the chunk.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["AdvanceInputs", "Advanced", "advance_weight"]


class Advanced(NamedTuple):
    """A weight and its momentum after a chunk (``momentum`` is ``None`` without momentum)."""

    weight: Tensor
    momentum: Tensor | None


class AdvanceInputs(NamedTuple):
    """The inputs of one weight's advance, in the order the autograd node takes them: the state
    and gradient factors, then the chunk coefficients it reads (``None`` when unused; the
    coefficient fields are those of :class:`~nestlearn.memory.coefficients.ChunkCoefficients`)."""

    W: Tensor  # [..., O, I] weight before the chunk
    S: Tensor | None  # [..., O, I] momentum before the chunk
    u: Tensor  # [..., L, O] output-side gradient factors
    x: Tensor  # [..., L, I] input-side gradient factors
    kp: Tensor | None  # [..., L, O] K W^T (DGD weight only)
    K: Tensor | None  # [..., L, I] keys (DGD weight only)
    decay_total: Tensor  # [...]
    mom_r: Tensor | None  # [...] (momentum only)
    mom_total: Tensor | None  # [...] (momentum only)
    eta_e: Tensor | None  # [..., L] (GD weight only)
    eta_b: Tensor | None  # [..., L] (momentum only)
    dgd_z: Tensor | None  # [..., L, I] (DGD weight only)
    dgd_y: Tensor | None  # [..., L, I] (DGD weight only)
    dgd_rho: Tensor | None  # [..., L] (DGD weight with momentum only)


def advance_weight(W: Tensor, S: Tensor | None, u: Tensor, x: Tensor, co, *,
                   kp: Tensor | None = None, K: Tensor | None = None) -> Advanced:
    """Advance one weight matrix over one chunk (README eq. 3.4-3.5, and 4.4 when ``kp`` is given).

    ``W``, ``S``: ``[..., O, I]`` before the chunk (``S`` the momentum, or ``None``);
    ``u``, ``x``: ``[..., L, O]``, ``[..., L, I]``, the chunk's gradient factors at its start
    weights;
    ``co``: the chunk's :class:`~nestlearn.memory.coefficients.ChunkCoefficients` (or a dict of
    its per-chunk fields) with leading dims that broadcast against ``W``'s (so several memories
    that share keys and rates share ``co``).
    For the DGD weight (the one that sees the key) pass ``kp = K W^T [..., L, O]`` and the keys
    ``K [..., L, I]``. Returns ``(W_L, S_L)``.

    Runs as one autograd node (:class:`_AdvanceWeight`) with a hand-written backward (README
    section 8); ``_advance_weight_autograd`` is the same arithmetic left to autograd, which the
    tests compare it with. The backward is made of differentiable operations (no in-place change
    of a tensor autograd saves), so a double backward (HOPE's second-order CMS meta-gradient)
    differentiates through it.
    """
    get = co.get if isinstance(co, dict) else lambda f: getattr(co, f)
    dgd, momentum = kp is not None, S is not None
    ins = AdvanceInputs(
        W=W, S=S, u=u, x=x, kp=kp, K=K if dgd else None,
        decay_total=get("decay_total"),
        mom_r=get("mom_r") if momentum else None,
        mom_total=get("mom_total") if momentum else None,
        eta_e=None if dgd else get("eta_e"),
        eta_b=get("eta_b") if momentum else None,
        dgd_z=get("dgd_z") if dgd else None,
        dgd_y=get("dgd_y") if dgd else None,
        dgd_rho=get("dgd_rho") if dgd and momentum else None,
    )
    W_new, S_new = _AdvanceWeight.apply(*ins)
    return Advanced(W_new, S_new if momentum else None)


class _AdvanceWeight(torch.autograd.Function):
    """``advance_weight`` as one autograd node. The forward is the arithmetic of
    ``_advance_weight_autograd``; the backward is written out (below) so that a chunk's backward
    makes no state-sized temporaries beyond the gradients themselves: the gradients of the
    per-chunk scalars are batched dot products (no elementwise product of two states), the two
    products of eq. 4.7 are one product of inner width 2L in both directions, and nothing is
    broadcast-then-reduced. The inputs are flattened to ``[N, ...]`` over the broadcast leading
    dims; gradients are summed back to each input's shape."""

    @staticmethod
    def forward(ctx, *args):
        a = AdvanceInputs(*args)
        lead = torch.broadcast_shapes(
            *(t.shape[:-2] for t in (a.W, a.S, a.u, a.x, a.kp, a.K) if t is not None),
            *(t.shape for t in (a.decay_total, a.mom_r, a.mom_total) if t is not None),
            *(t.shape[:-1] for t in (a.eta_e, a.eta_b, a.dgd_rho) if t is not None),
            *(t.shape[:-2] for t in (a.dgd_z, a.dgd_y) if t is not None),
        )
        ctx.lead = lead
        ctx.save_for_backward(*a)
        f = _Flat(lead)
        Wf, Sf, uf, xf, kpf, Kf = (f.mat(t) for t in (a.W, a.S, a.u, a.x, a.kp, a.K))
        dtf, rf, mtf = (f.scalar(t) for t in (a.decay_total, a.mom_r, a.mom_total))
        O, I = a.W.shape[-2:]
        u_t = uf.mT  # [N, O, L]
        W_new = Wf * dtf
        if Sf is not None:
            W_new.addcmul_(Sf, rf)
        if kpf is not None:
            mix = _dgd_mix(kpf, dtf, Sf, Kf, f.row(a.dgd_rho))
            W_new.baddbmm_(torch.cat([mix, u_t], -1),
                           torch.cat([f.mat(a.dgd_z), f.mat(a.dgd_y)], -2), alpha=-1)
        else:
            W_new.baddbmm_(u_t, f.col(a.eta_e) * xf, alpha=-1)
        if Sf is None:
            return W_new.view(*lead, O, I), None
        S_new = Sf * mtf
        S_new.baddbmm_(u_t, f.col(a.eta_b) * xf, alpha=-1)
        return W_new.view(*lead, O, I), S_new.view(*lead, O, I)

    @staticmethod
    def backward(ctx, gW, gS):
        a = AdvanceInputs(*ctx.saved_tensors)
        f = _Flat(ctx.lead)
        Wf, Sf, uf, xf, kpf, Kf = (f.mat(t) for t in (a.W, a.S, a.u, a.x, a.kp, a.K))
        dtf, rf, mtf = (f.scalar(t) for t in (a.decay_total, a.mom_r, a.mom_total))
        g = dict.fromkeys(AdvanceInputs._fields)  # the flat gradient of each input
        if gW is not None:
            gW = f.mat(gW)
            g["W"] = gW * dtf
            g["decay_total"] = _bdot(gW, Wf)
            if Sf is not None:
                g["S"] = gW * rf
                g["mom_r"] = _bdot(gW, Sf)
            if kpf is not None:
                zf, yf, rhof = f.mat(a.dgd_z), f.mat(a.dgd_y), f.row(a.dgd_rho)
                SK = None if Sf is None else torch.bmm(Sf, Kf.mT)  # [N, O, L]
                mix = _dgd_mix(kpf, dtf, Sf, Kf, rhof, SK=SK)
                L = zf.shape[-2]
                g_o = torch.bmm(gW, torch.cat([zf, yf], -2).mT).neg_()  # [N, O, 2L]
                g_i = torch.bmm(torch.cat([mix, uf.mT], -1).mT, gW).neg_()  # [N, 2L, I]
                gmix, gu_t = g_o[..., :L], g_o[..., L:]
                g["dgd_z"], g["dgd_y"] = g_i[:, :L], g_i[:, L:]
                g["kp"] = (gmix * dtf).mT
                g["decay_total"] = g["decay_total"] + (gmix * kpf.mT).sum((-2, -1))
                if Sf is not None:
                    g["dgd_rho"] = (gmix * SK).sum(-2)
                    gSK = gmix * rhof[:, None, :]  # [N, O, L]
                    g["K"] = torch.bmm(gSK.mT, Sf)
                    g["S"].baddbmm_(gSK, Kf)
            else:
                eef = f.col(a.eta_e)
                gu_t = torch.bmm(gW, (eef * xf).mT).neg_()
                gxe = torch.bmm(uf, gW).neg_()  # [N, L, I]
                g["x"] = gxe * eef
                g["eta_e"] = (gxe * xf).sum(-1)
            g["u"] = gu_t.mT
        if gS is not None and Sf is not None:
            gS = f.mat(gS)
            ebf = f.col(a.eta_b)
            gu_s = torch.bmm(gS, (ebf * xf).mT).neg_().mT  # [N, L, O]
            g["u"] = gu_s if g["u"] is None else g["u"] + gu_s
            gxb = torch.bmm(uf, gS).neg_()
            g["x"] = gxb * ebf if g["x"] is None else g["x"].addcmul_(gxb, ebf)
            g["eta_b"] = (gxb * xf).sum(-1)
            g["S"] = gS * mtf if g["S"] is None else g["S"].addcmul_(gS, mtf)
            g["mom_total"] = _bdot(gS, Sf)
        need = dict(zip(AdvanceInputs._fields, ctx.needs_input_grad))
        return tuple(
            None if (gr := g[name]) is None or not need[name] else f.unflat(gr, saved)
            for name, saved in a._asdict().items()
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
