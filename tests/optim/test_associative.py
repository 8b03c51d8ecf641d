"""AssociativeMomentum / DeltaMomentum: reductions to torch.optim references and to hand-written
formulas of Eq. 46-49."""

from __future__ import annotations

import pytest
import torch

from nestlearn.optim import AssociativeMomentum, DeltaMomentum
from nestlearn.optim import functional as F

from ._helpers import DT, clone_params, make_params, run


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"momentum": 0.9}, id="plain"),
        pytest.param({"momentum": 0.8, "nesterov": True}, id="nesterov"),
        pytest.param({"momentum": 0.9, "weight_decay": 0.05}, id="weight_decay"),
        pytest.param({"momentum": 0.0}, id="no_momentum"),
    ],
)
def test_dot_objective_equals_sgd(kwargs):
    """Dot-product momentum memory (Eq. 33-34) == torch.optim.SGD, bit for bit, 20 steps."""
    ours = make_params()
    ref = clone_params(ours)
    run(AssociativeMomentum(ours, 0.05, **kwargs), ours, range(20))
    run(torch.optim.SGD(ref, lr=0.05, **kwargs), ref, range(20))
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)


def test_param_groups_and_scheduler_equal_sgd():
    """Per-group hyperparameters and an LR scheduler act exactly as on torch.optim.SGD."""
    ours = make_params()
    ref = clone_params(ours)

    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.2, "momentum": 0.5}]

    opt = AssociativeMomentum(groups(ours), 0.05, momentum=0.9)
    ref_opt = torch.optim.SGD(groups(ref), lr=0.05, momentum=0.9)
    run(opt, ours, range(20), torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5))
    run(ref_opt, ref, range(20), torch.optim.lr_scheduler.StepLR(ref_opt, step_size=5, gamma=0.5))
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**4)


def test_rms_preconditioner_equals_rmsprop():
    """Preconditioned momentum (Eq. 46-47) with P = diag(1/(sqrt(v)+eps)) is RMSprop+momentum."""
    ours = make_params()
    ref = clone_params(ours)
    run(AssociativeMomentum(ours, 0.01, momentum=0.9, preconditioner="rms", beta2=0.95,
                            eps=1e-6), ours, range(20))
    run(torch.optim.RMSprop(ref, lr=0.01, momentum=0.9, alpha=0.95, eps=1e-6), ref, range(20))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_adagrad_preconditioner_formula():
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(5, 3, generator=g, dtype=DT) for _ in range(4)]
    buf, sq = torch.zeros(5, 3, dtype=DT), torch.zeros(5, 3, dtype=DT)
    ref_buf, ref_sq = torch.zeros(5, 3, dtype=DT), torch.zeros(5, 3, dtype=DT)
    for G in grads:
        u = F.associative_momentum(G, buf, sq, momentum=0.7, preconditioner="adagrad", eps=1e-3)
        ref_sq = ref_sq + G**2
        ref_buf = 0.7 * ref_buf + G / (ref_sq.sqrt() + 1e-3)
        torch.testing.assert_close(u, ref_buf, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (7,)], ids=["tall", "wide", "vector"])
def test_delta_momentum_formula(side, shape):
    """Eq. 49 with the D9 step: b <- b (mu I - beta G^T G/||G||^2) + g (right) / left form."""
    g = torch.Generator().manual_seed(1)
    mu, beta = 0.9, 0.6
    buf = torch.zeros(shape, dtype=DT)
    ref = torch.zeros(shape if len(shape) == 2 else (1, shape[0]), dtype=DT)  # [R, C] view
    for _ in range(6):
        G = torch.randn(shape, generator=g, dtype=DT)
        u = F.associative_momentum(G, buf, momentum=mu, objective="l2", decay=beta, side=side)
        Gm = G.reshape(ref.shape)
        nrm = (Gm**2).sum()
        if side == "right":
            ref = ref @ (mu * torch.eye(Gm.shape[1], dtype=DT) - beta * Gm.T @ Gm / nrm) + Gm
        else:
            ref = (mu * torch.eye(Gm.shape[0], dtype=DT) - beta * Gm @ Gm.T / nrm) @ ref + Gm
        torch.testing.assert_close(u.reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)


def test_delta_momentum_zero_decay_is_momentum():
    ours = make_params()
    ref = clone_params(ours)
    run(DeltaMomentum(ours, 0.05, decay=0.0), ours, range(10))
    run(torch.optim.SGD(ref, lr=0.05, momentum=0.9), ref, range(10))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_delta_decay_is_scale_free_and_erases_the_gradient_direction():
    """The normalised step makes the forgetting independent of the gradient's scale, and with
    decay = 1 a rank-1 gradient's direction is fully erased (the delta rule's 'replace')."""
    g = torch.Generator().manual_seed(2)
    b0 = torch.randn(4, 6, generator=g, dtype=DT)
    v = torch.randn(6, generator=g, dtype=DT)
    G = torch.outer(torch.randn(4, generator=g, dtype=DT), v)  # rank 1, row space = span(v)
    small = F.delta_decay_(b0.clone(), G, momentum=1.0, decay=1.0, side="right")
    large = F.delta_decay_(b0.clone(), 1e8 * G, momentum=1.0, decay=1.0, side="right")
    torch.testing.assert_close(small, large, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(small @ v, torch.zeros(4, dtype=DT), rtol=0, atol=1e-12)
    # A zero gradient forgets nothing beyond mu.
    kept = F.delta_decay_(b0.clone(), torch.zeros_like(G), momentum=0.5, decay=1.0, side="right")
    torch.testing.assert_close(kept, 0.5 * b0)


def test_delta_momentum_beats_momentum_on_an_ill_conditioned_quadratic():
    """Eq. 49's gradient-dependent decay damps the oscillating stiff direction."""
    scales = torch.tensor([100.0, 1.0], dtype=DT)

    def final(opt_cls, **kw):
        x = torch.tensor([1.0, 1.0], dtype=DT, requires_grad=True)
        opt = opt_cls([x], 0.015, **kw)
        for _ in range(60):
            opt.zero_grad()
            (0.5 * (scales * x**2).sum()).backward()
            opt.step()
        return (0.5 * (scales * x.detach() ** 2).sum()).item()

    assert final(DeltaMomentum, momentum=0.9, decay=0.5) < 0.1 * final(AssociativeMomentum,
                                                                        momentum=0.9)
