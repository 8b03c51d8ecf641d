"""Properties every optimizer in nestlearn.optim must have: state_dict round-trip continuing
bit-identically, progress with only lr given, ValueError on bad hyperparameters, no global RNG
use, and functional == step()."""

from __future__ import annotations

import copy

import pytest
import torch

from nestlearn.optim import M3, AssociativeMomentum, DeepMomentum, DeltaMomentum

from ._helpers import DT, make_params, run

FACTORIES = {
    "momentum": lambda ps: AssociativeMomentum(ps, 0.05),
    "momentum_rms_nesterov": lambda ps: AssociativeMomentum(
        ps, 0.01, nesterov=True, preconditioner="rms"),
    "muon": lambda ps: AssociativeMomentum(ps, 0.02, momentum=0.95, output="newton_schulz"),
    "delta_left": lambda ps: DeltaMomentum(ps, 0.05, side="left"),
    "delta": lambda ps: DeltaMomentum(ps, 0.05),
    "dmgd": lambda ps: DeepMomentum(ps, 0.1),
    "dmgd_dot_ns": lambda ps: DeepMomentum(ps, 0.02, objective="dot", output="newton_schulz"),
    "m3": lambda ps: M3(ps, 5e-2, frequency=3, weight_decay=0.01),
    "m3_ema": lambda ps: M3(ps, 5e-2, frequency=2, slow="ema"),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_round_trip_continues_identically(name):
    make = FACTORIES[name]
    a = make_params()
    opt = make(a)
    run(opt, a, range(7))
    saved_params = [p.detach().clone() for p in a]
    saved_state = copy.deepcopy(opt.state_dict())
    run(opt, a, range(7, 14))

    b = [p.clone().requires_grad_() for p in saved_params]
    opt_b = make(b)
    opt_b.load_state_dict(saved_state)
    run(opt_b, b, range(7, 14))
    for x, y in zip(a, b):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("name", list(FACTORIES))
def test_progress_with_defaults_on_least_squares(name):
    """Only lr set (plus the factory's choices): a noisy linear regression loss drops by 3x."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 16, generator=g, dtype=DT)
    W_true = torch.randn(8, 16, generator=g, dtype=DT)
    Y = X @ W_true.T + 0.01 * torch.randn(256, 8, generator=g, dtype=DT)
    W = torch.zeros(8, 16, dtype=DT, requires_grad=True)
    bias = torch.zeros(8, dtype=DT, requires_grad=True)
    opt = FACTORIES[name]([W, bias])

    def loss():
        return ((X @ W.T + bias - Y) ** 2).mean()

    first = loss().item()
    for _ in range(150):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < first / 3, (name, first, loss().item())


def test_no_global_rng_use():
    state = torch.get_rng_state()
    ps = make_params()
    run(DeepMomentum(ps, 0.1), ps, range(2))
    torch.set_rng_state(state)
    ps2 = make_params()
    run(DeepMomentum(ps2, 0.1), ps2, range(2))
    for x, y in zip(ps, ps2):
        assert torch.equal(x, y)


BAD = [
    (AssociativeMomentum, {"lr": -1.0}, "lr"),
    (AssociativeMomentum, {"lr": float("nan")}, "lr"),
    (AssociativeMomentum, {"lr": 0.1, "momentum": 1.0}, "momentum"),
    (AssociativeMomentum, {"lr": 0.1, "momentum": -0.1}, "momentum"),
    (AssociativeMomentum, {"lr": 0.1, "objective": "cosine"}, "objective"),
    (AssociativeMomentum, {"lr": 0.1, "output": "svd"}, "output"),
    (AssociativeMomentum, {"lr": 0.1, "preconditioner": "shampoo"}, "preconditioner"),
    (AssociativeMomentum, {"lr": 0.1, "ns_steps": 0}, "ns_steps"),
    (AssociativeMomentum, {"lr": 0.1, "nesterov": 1}, "nesterov"),
    (AssociativeMomentum, {"lr": 0.1, "momentum": 0.0, "nesterov": True}, "nesterov"),
    (AssociativeMomentum, {"lr": 0.1, "eps": 0.0}, "eps"),
    (DeltaMomentum, {"lr": 0.1, "decay": 1.5}, "decay"),
    (DeltaMomentum, {"lr": 0.1, "side": "top"}, "side"),
    (DeltaMomentum, {"lr": 0.1, "objective": "dot"}, "objective"),
    (DeepMomentum, {"lr": 0.1, "memory": "transformer"}, "memory"),
    (DeepMomentum, {"lr": 0.1, "hidden": 0}, "hidden"),
    (DeepMomentum, {"lr": 0.1, "memory_lr": -1.0}, "memory_lr"),
    (DeepMomentum, {"lr": 0.1, "activation": "relu"}, "activation"),
    (M3, {"lr": 0.1, "betas": (0.9,)}, "betas"),
    (M3, {"lr": 0.1, "betas": (0.9, 1.0)}, "betas"),
    (M3, {"lr": 0.1, "beta3": 1.0}, "beta3"),
    (M3, {"lr": 0.1, "alpha": -0.5}, "alpha"),
    (M3, {"lr": 0.1, "frequency": 0}, "frequency"),
    (M3, {"lr": 0.1, "slow": "fast"}, "slow"),
    (M3, {"lr": 0.1, "kind": "sgd"}, "kind"),
    (M3, {"lr": 0.1, "update_scale": "spectral"}, "update_scale"),
]


@pytest.mark.parametrize("cls, kwargs, arg", BAD, ids=[f"{c.__name__}-{a}" for c, _, a in BAD])
def test_bad_hyperparameters_raise(cls, kwargs, arg):
    p = torch.zeros(3, 3, requires_grad=True)
    lr = kwargs.pop("lr")
    with pytest.raises(ValueError, match=arg.split("[")[0]):
        cls([p], lr, **kwargs)


def test_bad_group_override_raises():
    p, q = torch.zeros(3, 3, requires_grad=True), torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="momentum"):
        AssociativeMomentum([{"params": [p]}, {"params": [q], "momentum": 2.0}], 0.1)


def test_functional_equals_step():
    """The optimizer's step is the functional rule plus p <- p - lr u."""
    from nestlearn.optim import functional as F

    ps = make_params(shapes=((5, 4),))
    start = ps[0].detach().clone()
    opt = DeltaMomentum(ps, 0.1, decay=0.7, output="newton_schulz")
    run(opt, ps, range(1))
    buf = torch.zeros(5, 4, dtype=DT)
    u = F.associative_momentum(ps[0].grad, buf, momentum=0.9, objective="l2", decay=0.7,
                               output="newton_schulz")
    torch.testing.assert_close(ps[0].detach(), start - 0.1 * u, rtol=1e-15, atol=1e-15)
