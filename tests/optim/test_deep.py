"""DeepMomentum (DMGD, Eq. 50-52): reductions of the linear memory, and the MLP memory's
closed-form inner gradients against autograd of its inner objective."""

from __future__ import annotations

import pytest
import torch

from nestlearn.optim import DeepMomentum
from nestlearn.optim import functional as F

from ._helpers import DT, clone_params, make_params, run


def test_linear_dot_memory_is_momentum():
    ours = make_params()
    ref = clone_params(ours)
    run(DeepMomentum(ours, 0.05, memory="linear", objective="dot", momentum=0.9), ours, range(20))
    run(torch.optim.SGD(ref, lr=0.05, momentum=0.9), ref, range(20))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_linear_l2_memory_is_ema_momentum():
    """l2 objective, alpha = 1, eta = 1 - mu: M <- mu M + (1 - mu) G (Adam's first moment)."""
    g = torch.Generator().manual_seed(0)
    M = torch.zeros(4, 3, dtype=DT)
    ref = torch.zeros(4, 3, dtype=DT)
    for _ in range(5):
        G = torch.randn(4, 3, generator=g, dtype=DT)
        u = F.deep_momentum(G, M, retention=1.0, inner_lr=0.2, objective="l2")
        ref = 0.8 * ref + 0.2 * G
        torch.testing.assert_close(u, ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("objective", ["dot", "l2"])
@pytest.mark.parametrize("activation", ["silu", "tanh"])
def test_mlp_memory_step_is_gd_on_its_inner_objective(objective, activation):
    """One DMGD step == one retention + GD step on L2(read(M, A, B); G) by autograd."""
    g = torch.Generator().manual_seed(0)
    R, C, h = 5, 7, 3
    G = torch.randn(R, C, generator=g, dtype=DT)
    M = torch.randn(R, C, generator=g, dtype=DT)
    A = torch.randn(R, h, generator=g, dtype=DT)
    B = torch.randn(h, C, generator=g, dtype=DT)
    alpha, eta, eta_m = 0.9, 0.3, 0.7
    act = torch.nn.functional.silu if activation == "silu" else torch.tanh

    w = [t.clone().requires_grad_() for t in (M, A, B)]
    read = w[0] + w[1] @ act(w[2])
    inner = -(read * G).sum() if objective == "dot" else 0.5 * ((read - G) ** 2).sum()
    dM, dA, dB = torch.autograd.grad(inner, w)
    ref_M = alpha * M - eta * dM
    ref_A = alpha * A - eta_m / C * dA
    ref_B = alpha * B - eta_m / C * dB
    ref_read = ref_M + ref_A @ act(ref_B)

    u = F.deep_momentum(G, M, A, B, retention=alpha, inner_lr=eta, memory_lr=eta_m,
                        objective=objective, activation=activation)
    for got, want in ((M, ref_M), (A, ref_A), (B, ref_B), (u, ref_read)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_mlp_memory_zero_memory_lr_is_ema_momentum():
    """With memory_lr = 0 and A = 0 at init the MLP part stays silent: read = M."""
    ours = make_params()
    ref = clone_params(ours)
    run(DeepMomentum(ours, 0.05, memory_lr=0.0), ours, range(8))
    run(DeepMomentum(ref, 0.05, memory="linear"), ref, range(8))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_mlp_memory_changes_the_update():
    ours = make_params()
    ref = clone_params(ours)
    run(DeepMomentum(ours, 0.05), ours, range(8))
    run(DeepMomentum(ref, 0.05, memory="linear"), ref, range(8))
    assert not torch.allclose(ours[0], ref[0], rtol=1e-6, atol=1e-9)


def test_newton_schulz_output_on_deep_memory():
    """Eq. 52 with sigma = Newton-Schulz: the step of a matrix is near-orthogonal."""
    p = torch.randn(16, 32, dtype=DT, requires_grad=True)
    start = p.detach().clone()
    opt = DeepMomentum([p], 1.0, output="newton_schulz")
    p.grad = torch.randn(16, 32, dtype=DT)
    opt.step()
    s = torch.linalg.svdvals(start - p.detach())
    assert s.min() > 0.65 and s.max() < 1.16
