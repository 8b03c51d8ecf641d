"""``advance_weight`` runs as one autograd node with a hand-written backward
(``advance._AdvanceWeight``). Its outputs and its gradients into every input (weights, momentum,
gradient factors, keys, key projection and every chunk coefficient) equal autograd through the
same arithmetic (``_advance_weight_autograd``), in float64, for the DGD and GD weights, with and
without momentum, with coefficients broadcast over a memory axis and a weight shared across the
batch; ``gradcheck`` checks the backward against finite differences and ``gradgradcheck`` the
double backward (HOPE's second-order CMS meta-gradient differentiates through it)."""

from __future__ import annotations

import pytest
import torch

from nestlearn.memory.advance import _advance_weight_autograd, advance_weight

DT = torch.float64
FIELDS = ("decay_total", "mom_r", "mom_total", "eta_e", "eta_b", "dgd_z", "dgd_y", "dgd_rho")


def _case(*, dgd: bool, momentum: bool, mem_axis: bool, shared_w: bool, seed: int = 0):
    """Random inputs: lead dims [B, H] (+ a memory axis M the coefficients broadcast over)."""
    g = torch.Generator().manual_seed(seed)
    B, H, M, O, I, L = 2, 3, 2, 4, 5, 3

    def rnd(*shape, lo=None):
        t = torch.randn(*shape, generator=g, dtype=DT)
        if lo is not None:  # positive rates
            t = lo + (1 - lo) * torch.rand(*shape, generator=g, dtype=DT)
        return t.requires_grad_(True)

    wl = (B, H, M) if mem_axis else (B, H)  # weights' lead dims
    cl = (B, H, 1) if mem_axis else (B, H)  # coefficients' lead dims (broadcast)
    W = rnd(*((H, M) if mem_axis else (H,)), O, I) if shared_w else rnd(*wl, O, I)
    ins = {
        "W": W, "S": rnd(*wl, O, I) if momentum else None, "u": rnd(*wl, L, O),
        "x": rnd(*wl, L, I),
        "kp": rnd(*wl, L, O) if dgd else None,
        "K": rnd(*cl, L, I) if dgd else None,
    }
    co = {
        "decay_total": rnd(*cl, lo=0.5), "eta_e": rnd(*cl, L, lo=0.1),
        "mom_r": rnd(*cl, lo=0.2) if momentum else None,
        "mom_total": rnd(*cl, lo=0.2) if momentum else None,
        "eta_b": rnd(*cl, L, lo=0.1) if momentum else None,
        "dgd_z": rnd(*cl, L, I) if dgd else None, "dgd_y": rnd(*cl, L, I) if dgd else None,
        "dgd_rho": rnd(*cl, L) if dgd and momentum else None,
    }
    if dgd:
        co["eta_e"] = None
    return ins, co


def _leaves(ins, co):
    return [t for t in (*ins.values(), *co.values()) if t is not None]


CASES = [dict(dgd=d, momentum=m, mem_axis=a, shared_w=s)
         for d in (True, False) for m in (True, False) for a, s in ((False, False), (True, False),
                                                                    (False, True))]


def _ids(c):
    return "-".join(k if v else f"no_{k}" for k, v in c.items())


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_outputs_and_gradients_equal_autograd(case):
    ins, co = _case(**case)
    leaves = _leaves(ins, co)
    fast = advance_weight(ins["W"], ins["S"], ins["u"], ins["x"], co, kp=ins["kp"], K=ins["K"])
    ref = _advance_weight_autograd(ins["W"], ins["S"], ins["u"], ins["x"], co, kp=ins["kp"],
                                   K=ins["K"])
    outs_f = [t for t in fast if t is not None]
    outs_r = [t for t in ref if t is not None]
    assert len(outs_f) == len(outs_r) == (2 if case["momentum"] else 1)
    for a, b in zip(outs_f, outs_r):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(7)
    cot = [torch.randn(t.shape, generator=g, dtype=DT) for t in outs_r]
    g_f = torch.autograd.grad(outs_f, leaves, cot, allow_unused=True)
    g_r = torch.autograd.grad(outs_r, leaves, cot, allow_unused=True)
    for i, (a, b) in enumerate(zip(g_f, g_r)):
        assert (a is None) == (b is None) or (a if b is None else b).abs().max() == 0, i
        if b is not None:
            assert a is not None and a.shape == leaves[i].shape, i
            assert b.abs().max() > 0, i  # every input gets a nonzero gradient
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, i=i: f"{i}: {m}")


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[6]], ids=_ids)
def test_gradcheck_and_gradgradcheck(case):
    ins, co = _case(**case)
    names_i = [k for k, v in ins.items() if v is not None]
    names_c = [k for k, v in co.items() if v is not None]

    def fn(*ts):
        d = dict(zip(names_i + names_c, ts))
        c = {f: d.get(f) for f in FIELDS}
        W, S = advance_weight(d["W"], d.get("S"), d["u"], d["x"], c, kp=d.get("kp"),
                              K=d.get("K"))
        return (W,) if S is None else (W, S)

    args = tuple(_leaves(ins, co))
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_only_state_gradient_flows():
    """Gradient into the momentum output only (the new weights unused) still reaches the inputs
    that make the momentum, and no others."""
    ins, co = _case(dgd=True, momentum=True, mem_axis=False, shared_w=False)
    _, S_new = advance_weight(ins["W"], ins["S"], ins["u"], ins["x"], co, kp=ins["kp"],
                              K=ins["K"])
    gS, gu, gW = torch.autograd.grad(S_new.sum(), [ins["S"], ins["u"], ins["W"]],
                                     allow_unused=True)
    _, S_ref = _advance_weight_autograd(ins["W"], ins["S"], ins["u"], ins["x"], co,
                                        kp=ins["kp"], K=ins["K"])
    rS, ru = torch.autograd.grad(S_ref.sum(), [ins["S"], ins["u"]])
    torch.testing.assert_close(gS, rS)
    torch.testing.assert_close(gu, ru)
    assert gW is None or gW.abs().max() == 0


@pytest.mark.parametrize("case", [CASES[0], CASES[7]], ids=_ids)
def test_chained_double_backward_equals_autograd(case):
    """Two chunks in a row sharing inputs (as the layers chain them), first and second order with
    ``create_graph``: a backward that re-entered autograd on the saved inputs would count the
    shared inputs' paths through the earlier chunk twice; this catches that."""
    ins, co = _case(**case)
    leaves = _leaves(ins, co)
    res = []
    for fn in (advance_weight, _advance_weight_autograd):
        W, S = ins["W"], ins["S"]
        for _ in range(2):
            W, S = fn(W, S, ins["u"] * W.mean(), ins["x"], co, kp=ins["kp"], K=ins["K"])
        loss = W.square().sum() + (0 if S is None else S.pow(3).sum())
        g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        gg = torch.autograd.grad(sum(t.square().sum() for t in g if t is not None), leaves,
                                 allow_unused=True)
        res.append((g, gg))
    for order in range(2):
        for i, (a, b) in enumerate(zip(res[0][order], res[1][order])):
            assert (a is None) == (b is None), (order, i)
            if b is not None:
                torch.testing.assert_close(
                    a, b, rtol=1e-9, atol=1e-9,
                    msg=lambda m, order=order, i=i: f"order {order + 1}, input {i}: {m}")


def test_cached_mask_made_in_inference_mode_still_trains():
    """The chunk coefficients' cached triangle mask, first built under ``inference_mode`` (e.g.
    generation), must not be an inference tensor that a later training step cannot save."""
    from nestlearn.memory import memory_chunked
    from nestlearn.memory.coefficients import _above_diagonal

    _above_diagonal.cache_clear()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 5, 2, 3, generator=g, dtype=DT) for _ in range(3))
    lr = torch.full((1, 5, 2), 0.1, dtype=DT)
    alpha = torch.full((1, 5, 2), 0.9, dtype=DT, requires_grad=True)
    with torch.inference_mode():
        memory_chunked(q, k, v, lr, alpha.detach(), chunk_size=4, rule="dgd")
    o, _ = memory_chunked(q, k, v, lr, alpha, chunk_size=4, rule="dgd")
    (grad,) = torch.autograd.grad(o.sum(), alpha)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
