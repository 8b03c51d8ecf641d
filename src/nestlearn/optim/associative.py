"""Momentum as an associative memory: ``AssociativeMomentum`` and ``DeltaMomentum``.

Nested Learning (arXiv 2512.24695) section 4.2 reads momentum as a value-less associative memory
that compresses the gradients (Eq. 33-37), and section 4.4 makes it more expressive along three
axes, each an option here:

* the *values* it memorises: preconditioned momentum ``P g`` (Eq. 46-47), ``preconditioner=``;
* the *inner objective*: dot product (Hebbian, classical momentum) or l2 (delta rule, "Delta
  Momentum", Eq. 48-49), ``objective=``;
* the *read-out*: ``W <- W - lr * sigma(m)`` (Eq. 52), ``output=``; Newton-Schulz on a linear
  dot-product memory is Muon (Eq. 42-44).

With its defaults ``AssociativeMomentum(params, lr, momentum=0.9)`` is exactly
``torch.optim.SGD(params, lr, momentum=0.9)``. Use it (``output="newton_schulz"``,
``nesterov=True``, ``momentum=0.95``) as Muon on the hidden weight matrices of a network; 0-D and
1-D parameters get the identity read-out, so biases and norms fall back to SGD-momentum.
The update rules live in :mod:`nestlearn.optim.functional`; this file only handles groups and state.
No distributed collectives are issued: under DDP every rank computes the same update from the
all-reduced gradient.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from nestlearn.optim import _checks
from nestlearn.optim import functional as F

__all__ = ["AssociativeMomentum", "DeltaMomentum"]

OBJECTIVES = ("dot", "l2")
SIDES = ("right", "left")
OUTPUTS = ("identity", "newton_schulz", "sign")
PRECONDITIONERS = ("none", "rms", "adagrad")


class AssociativeMomentum(torch.optim.Optimizer):
    """Momentum as an associative memory with a configurable inner objective (NL section 4.2-4.4).

    Args:
        params: parameters or parameter groups (every argument below can be set per group).
        lr: learning rate (the outer level's step), >= 0.
        momentum: retention ``mu`` of the memory, in [0, 1).
        objective: ``"dot"`` (Hebbian write, classical momentum, Eq. 33) or ``"l2"`` (delta rule,
            Eq. 48-49; see :class:`DeltaMomentum`).
        decay: delta-rule forgetting strength ``beta`` in [0, 1] (used by ``objective="l2"``).
        side: ``"right"`` (arXiv Eq. 49, ``b (mu I - beta G^T G)``) or ``"left"`` (NeurIPS form).
        nesterov: read ``P g + mu b`` instead of ``b`` (as ``torch.optim.SGD``).
        preconditioner: values memorised, ``"none"`` (g), ``"rms"`` (g / (sqrt(v) + eps), v an EMA
            of g^2 with ``beta2``, as ``torch.optim.RMSprop``) or ``"adagrad"`` (v a sum),
            Eq. 46-47.
        beta2, eps: of the preconditioner.
        output: read-out ``sigma`` of Eq. 52: ``"identity"``, ``"newton_schulz"`` (quintic,
            matrix parameters only; with ``objective="dot"`` this is Muon) or ``"sign"``.
        ns_steps: Newton-Schulz iterations (>= 1).
        weight_decay: L2 penalty added to the gradient (``torch.optim.SGD`` convention).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        *,
        momentum: float = 0.9,
        objective: str = "dot",
        decay: float = 0.0,
        side: str = "right",
        nesterov: bool = False,
        preconditioner: str = "none",
        beta2: float = 0.99,
        eps: float = 1e-8,
        output: str = "identity",
        ns_steps: int = 5,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {
            "lr": lr, "momentum": momentum, "objective": objective, "decay": decay, "side": side,
            "nesterov": nesterov, "preconditioner": preconditioner, "beta2": beta2, "eps": eps,
            "output": output, "ns_steps": ns_steps, "weight_decay": weight_decay,
        }
        self._validate(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _validate(g: dict) -> None:
        _checks.number("lr", g["lr"], lo=0.0)
        _checks.number("momentum", g["momentum"], lo=0.0, hi=1.0, hi_open=True)
        _checks.choice("objective", g["objective"], OBJECTIVES)
        _checks.number("decay", g["decay"], lo=0.0, hi=1.0)
        _checks.choice("side", g["side"], SIDES)
        _checks.boolean("nesterov", g["nesterov"])
        _checks.choice("preconditioner", g["preconditioner"], PRECONDITIONERS)
        _checks.number("beta2", g["beta2"], lo=0.0, hi=1.0, hi_open=True)
        _checks.number("eps", g["eps"], lo=0.0, lo_open=True)
        _checks.choice("output", g["output"], OUTPUTS)
        _checks.integer("ns_steps", g["ns_steps"], lo=1)
        _checks.number("weight_decay", g["weight_decay"], lo=0.0)
        if g["nesterov"] and g["momentum"] == 0:
            raise ValueError("nesterov=True requires momentum > 0")

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._validate(self.param_groups[-1])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
                    if group["preconditioner"] != "none":
                        state["square_avg"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format)
                grad: Tensor = p.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                u = F.associative_momentum(
                    grad, state["momentum_buffer"], state.get("square_avg"),
                    momentum=group["momentum"], objective=group["objective"],
                    decay=group["decay"], side=group["side"], nesterov=group["nesterov"],
                    preconditioner=group["preconditioner"], beta2=group["beta2"],
                    eps=group["eps"], output=group["output"], ns_steps=group["ns_steps"],
                )
                p.add_(u, alpha=-group["lr"])
        return loss


class DeltaMomentum(AssociativeMomentum):
    """Delta Momentum (NL Eq. 48-49): momentum whose inner objective is the l2 (delta) rule.

    ``b <- b (mu I - beta G^T G / ||G||_F^2) + P g``,  ``W <- W - lr * sigma(b)``.

    The l2 objective makes the forgetting gradient-dependent: before writing the new gradient,
    the memory erases (a fraction ``decay`` of) what it stored along the current gradient's
    directions. Decision D9: the paper prints no step size on the ``g^T g`` term; here it is the
    normalised-LMS step ``decay / ||G||_F^2`` (stable for any gradient scale when decay <= 1).
    ``side="right"`` is the arXiv form (default), ``"left"`` the NeurIPS one. All other arguments
    as :class:`AssociativeMomentum`; ``decay=0`` is classical momentum.
    """

    def __init__(self, params: Iterable, lr: float, *, momentum: float = 0.9, decay: float = 0.5,
                 **kwargs) -> None:
        if "objective" in kwargs:
            raise ValueError(
                "objective is fixed to 'l2' for DeltaMomentum; use AssociativeMomentum")
        super().__init__(params, lr, momentum=momentum, decay=decay, objective="l2", **kwargs)
