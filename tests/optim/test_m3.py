"""M3 (Algorithm 1, decision D9): the single-scale reduction, the slow level against a
hand-written loop, and the AdamW fallback against torch.optim.AdamW."""

from __future__ import annotations

import pytest
import torch

from nestlearn.optim import M3
from nestlearn.optim import functional as F

from ._helpers import clone_params, loss_fn, make_params


def _grads_along(opt, params, steps):
    grads = []
    for t in range(steps):
        opt.zero_grad()
        loss_fn(params, t).backward()
        grads.append([p.grad.clone() for p in params])
        opt.step()
    return grads


def _m3_reference(W, grads, *, lr, b1, b2, b3, alpha, f, eps, scale, slow="sum"):
    """Algorithm 1 with the D9 reading, for one matrix, written as a plain loop."""
    M1 = torch.zeros_like(W)
    V = torch.zeros_like(W)
    M2 = torch.zeros_like(W)
    O2 = torch.zeros_like(W)
    S = torch.zeros_like(W)
    for t, g in enumerate(grads, start=1):
        M1 = b1 * M1 + (1 - b1) * g
        V = b2 * V + (1 - b2) * g * g
        O1 = F.newton_schulz(M1 / (1 - b1**t))
        u = (O1 + alpha * O2) / ((V / (1 - b2**t)).sqrt() + eps)
        if scale == "rms":
            u = u * 0.2 / u.pow(2).mean().sqrt()
        W = W - lr * u
        S = S + g
        if t % f == 0:  # end of a block: lines 3-4 feed the next block
            M2 = M2 + b3 * S if slow == "sum" else b3 * M2 + (1 - b3) * S
            O2 = F.newton_schulz(M2)
            S = torch.zeros_like(W)
    return W


@pytest.mark.parametrize("scale", ["none", "rms"])
def test_alpha_zero_without_slow_level_is_single_scale(scale):
    """alpha = 0, slow level off: W <- W - lr * NS(M1_hat) / (sqrt(V_hat) + eps) (the documented
    single-scale form, Adam with a Newton-Schulz first moment)."""
    params = make_params(shapes=((6, 4),))
    W0 = params[0].detach().clone()
    opt = M3(params, 1e-3, alpha=0.0, slow="none", update_scale=scale)
    grads = [g[0] for g in _grads_along(opt, params, 12)]
    ref = _m3_reference(W0, grads, lr=1e-3, b1=0.9, b2=0.999, b3=0.9, alpha=0.0, f=1,
                        eps=1e-8, scale=scale)
    torch.testing.assert_close(params[0].detach(), ref, rtol=1e-12, atol=1e-12)
    assert "slow_momentum" not in opt.state[params[0]]


def test_alpha_zero_makes_the_slow_level_inert():
    a = make_params(shapes=((6, 4), (5, 7)))
    b = clone_params(a)
    ga = _grads_along(M3(a, 1e-3, alpha=0.0, slow="sum", frequency=2), a, 9)
    _grads_along(M3(b, 1e-3, alpha=0.0, slow="none"), b, 9)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert len(ga) == 9


@pytest.mark.parametrize("slow", ["sum", "ema"])
def test_slow_level_matches_algorithm_1(slow):
    params = make_params(shapes=((5, 8),))
    W0 = params[0].detach().clone()
    kw = {"betas": (0.8, 0.99), "beta3": 0.7, "alpha": 0.4, "frequency": 3, "eps": 1e-6}
    opt = M3(params, 2e-3, slow=slow, **kw)
    grads = [g[0] for g in _grads_along(opt, params, 11)]
    ref = _m3_reference(W0, grads, lr=2e-3, b1=0.8, b2=0.99, b3=0.7, alpha=0.4, f=3, eps=1e-6,
                        scale="rms", slow=slow)
    torch.testing.assert_close(params[0].detach(), ref, rtol=1e-11, atol=1e-12)


def test_non_matrix_params_follow_adamw():
    """Vectors, and groups with kind='adamw', are updated exactly as torch.optim.AdamW."""
    ours = make_params(shapes=((6, 4), (4,), (3, 6)))
    ref = clone_params(ours)
    groups = [{"params": ours[:2]}, {"params": ours[2:], "kind": "adamw"}]
    opt = M3(groups, 1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    grads = _grads_along(opt, ours, 15)
    ref_opt = torch.optim.AdamW(ref[1:], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for gs in grads:
        for p, g in zip(ref[1:], gs[1:]):
            p.grad = g
        ref_opt.step()
    for a, b in zip(ours[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert "slow_momentum" in opt.state[ours[0]] and "slow_momentum" not in opt.state[ours[1]]


def test_kind_m3_rejects_vectors():
    p = torch.zeros(4, requires_grad=True)
    with pytest.raises(ValueError, match="ndim >= 2"):
        M3([{"params": [p], "kind": "m3"}], 1e-3)
