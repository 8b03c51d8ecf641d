"""``DeepMomentum``: Deep Momentum Gradient Descent (DMGD).

Nested Learning, arXiv 2512.24695, Eq. 50-52.

The momentum of each parameter is a small residual MLP memory, trained online (one GD step per
optimiser step) on the gradients with its own inner objective; the weight update is the memory's
read-out, optionally through a nonlinearity (Eq. 52; Newton-Schulz gives a deep-memory Muon).
The memory maps the layer's input space to its output space (the reading of momentum in Eq. 33),
keys are the input basis and values are the gradient's columns, so the read-out is a matrix of
the parameter's shape; see :func:`nestlearn.optim.functional.deep_momentum` and the README.

This is an experimental optimizer (the paper reports no experiment with it). With
``memory="linear", objective="dot"`` it is classical momentum, with ``"l2"`` EMA momentum.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nestlearn.optim import _checks
from nestlearn.optim import functional as F

__all__ = ["DeepMomentum"]

OBJECTIVES = ("dot", "l2")
MEMORIES = ("linear", "mlp")
ACTIVATIONS = ("silu", "tanh")
OUTPUTS = ("identity", "newton_schulz", "sign")


class DeepMomentum(torch.optim.Optimizer):
    """DMGD (Eq. 50): momentum as an MLP memory ``read = M + A sigma(B)`` learned on gradients.

    Args:
        params: parameters or parameter groups (every argument below can be set per group).
        lr: learning rate of the outer step ``W <- W - lr * sigma(read)``, >= 0.
        momentum: ``mu`` in [0, 1). ``objective="dot"`` uses retention ``mu`` and inner step 1
            (``M <- mu M + G``, SGD units); ``"l2"`` uses retention 1 and inner step ``1 - mu``
            (``M <- mu M + (1 - mu) G`` for the linear memory, Adam's first-moment units).
        objective: inner objective of the memory, ``"l2"`` (regress the gradient, default) or
            ``"dot"`` (Hebbian, unbounded growth of the MLP part is held only by retention).
        memory: ``"mlp"`` (residual 2-layer MLP, default) or ``"linear"`` (plain momentum).
        hidden: hidden width ``h`` of the MLP memory (>= 1).
        memory_lr: inner step of the MLP weights A, B (normalised by the number of keys), >= 0.
        activation: ``"silu"`` or ``"tanh"``.
        output: read-out of Eq. 52, ``"identity"``, ``"newton_schulz"`` (matrices) or ``"sign"``.
        ns_steps: Newton-Schulz iterations (>= 1).
        weight_decay: L2 penalty added to the gradient.
        seed: seed of the MLP memory's initial first-layer weights (deterministic, no global RNG).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        *,
        momentum: float = 0.9,
        objective: str = "l2",
        memory: str = "mlp",
        hidden: int = 8,
        memory_lr: float = 0.03,
        activation: str = "silu",
        output: str = "identity",
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        defaults = {
            "lr": lr, "momentum": momentum, "objective": objective, "memory": memory,
            "hidden": hidden, "memory_lr": memory_lr, "activation": activation, "output": output,
            "ns_steps": ns_steps, "weight_decay": weight_decay, "seed": seed,
        }
        self._validate(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _validate(g: dict) -> None:
        _checks.number("lr", g["lr"], lo=0.0)
        _checks.number("momentum", g["momentum"], lo=0.0, hi=1.0, hi_open=True)
        _checks.choice("objective", g["objective"], OBJECTIVES)
        _checks.choice("memory", g["memory"], MEMORIES)
        _checks.integer("hidden", g["hidden"], lo=1)
        _checks.number("memory_lr", g["memory_lr"], lo=0.0)
        _checks.choice("activation", g["activation"], ACTIVATIONS)
        _checks.choice("output", g["output"], OUTPUTS)
        _checks.integer("ns_steps", g["ns_steps"], lo=1)
        _checks.number("weight_decay", g["weight_decay"], lo=0.0)
        _checks.integer("seed", g["seed"], lo=0)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._validate(self.param_groups[-1])

    def _init_state(self, p: torch.Tensor, group: dict, index: int) -> dict:
        state = {"memory": torch.zeros_like(p, memory_format=torch.contiguous_format)}
        if group["memory"] == "mlp":
            R, C = F.matrix_view(p).shape
            gen = torch.Generator(device="cpu").manual_seed(group["seed"] * 1_000_003 + index)
            # B's rows are random features of the keys; A starts at 0 so the first read is M.
            B = torch.randn(group["hidden"], C, generator=gen, dtype=p.dtype)  # [h, C]
            state["mlp_in"] = B.to(p.device)
            state["mlp_out"] = torch.zeros(R, group["hidden"], dtype=p.dtype, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            dot = group["objective"] == "dot"
            mu = group["momentum"]
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("DeepMomentum does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state.update(self._init_state(p, group, index))
                grad = p.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                u = F.deep_momentum(
                    grad, state["memory"], state.get("mlp_out"), state.get("mlp_in"),
                    retention=mu if dot else 1.0, inner_lr=1.0 if dot else 1.0 - mu,
                    memory_lr=group["memory_lr"], objective=group["objective"],
                    activation=group["activation"], output=group["output"],
                    ns_steps=group["ns_steps"],
                )
                p.add_(u, alpha=-group["lr"])
        return loss
