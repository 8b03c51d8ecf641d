"""``M3``: Multi-scale Momentum Muon (Nested Learning arXiv 2512.24695, section 7.2, Algorithm 1).

M3 replaces Adam's first-moment memory with a two-level Continuum Memory System (the independent
variant, Eq. 74): a fast momentum updated every step and a slow momentum updated once every
``frequency`` steps with the summed gradients of that block; each is orthogonalised by
Newton-Schulz, combined with weight ``alpha`` on the slow term, and divided by an Adam-style second
moment ("Adam + Muon + CMS"). It is for the 2-D weight matrices of a network; every other
parameter (vectors, norms, and any group with ``kind="adamw"``, e.g. embeddings and the output
head) is updated by AdamW inside the same optimizer, with the same betas, eps and weight decay.

Decisions (D9 and the README): the fast momentum and the second moment are EMAs with bias
correction; the slow momentum follows line 3 as printed (``slow="sum"``); the slow read-out
``O2 = NS(M2)`` is recomputed only at block ends, so M3 costs one Newton-Schulz per step plus one
per block; weight decay is decoupled (AdamW). ``update_scale="rms"`` (default) rescales each
matrix's direction to RMS 0.2, the Adam-matching convention of Muon variants, because the raw
``NS(M1) / sqrt(V)`` of line 10 scales as 1 / |g| and has no fixed size; ``"none"`` is line 10
as printed. No distributed collectives are issued (DDP-correct, every rank computes the same step).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nestlearn.optim import _checks
from nestlearn.optim import functional as F

__all__ = ["M3"]

SLOWS = ("sum", "ema", "none")
KINDS = ("auto", "m3", "adamw")
SCALES = ("rms", "none")
RMS_TARGET = 0.2


class M3(torch.optim.Optimizer):
    """Multi-scale Momentum Muon (Algorithm 1) with an AdamW fallback for non-matrix parameters.

    Args:
        params: parameters or parameter groups (every argument below can be set per group).
        lr: learning rate ``eta``, >= 0 (shared by the M3 and the AdamW parameters).
        betas: ``(beta1, beta2)``, EMA factors of the fast momentum and of the second moment.
        beta3: slow-momentum factor (the coefficient of line 3 for ``slow="sum"``; the EMA decay
            for ``slow="ema"``), in [0, 1).
        alpha: weight of the slow term in line 10, >= 0.
        frequency: the slow level's period ``f`` in steps (>= 1).
        slow: ``"sum"`` (Algorithm 1 line 3), ``"ema"`` or ``"none"`` (slow level disabled).
        eps: added to sqrt(V) (> 0).
        ns_steps: Newton-Schulz iterations ``T`` (>= 1).
        weight_decay: decoupled weight decay (``p <- p (1 - lr wd)``), >= 0.
        update_scale: ``"rms"`` (each matrix's direction rescaled to RMS 0.2) or ``"none"``.
        kind: ``"auto"`` (M3 for parameters with ndim >= 2, AdamW otherwise), ``"m3"`` or
            ``"adamw"``; set it per group, e.g. ``kind="adamw"`` for embeddings and the head.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float = 0.9,
        alpha: float = 0.5,
        frequency: int = 10,
        slow: str = "sum",
        eps: float = 1e-8,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        update_scale: str = "rms",
        kind: str = "auto",
    ) -> None:
        defaults = {
            "lr": lr, "betas": betas, "beta3": beta3, "alpha": alpha, "frequency": frequency,
            "slow": slow, "eps": eps, "ns_steps": ns_steps, "weight_decay": weight_decay,
            "update_scale": update_scale, "kind": kind,
        }
        self._validate(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _validate(g: dict) -> None:
        _checks.number("lr", g["lr"], lo=0.0)
        betas = g["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        _checks.number("betas[0]", betas[0], lo=0.0, hi=1.0, hi_open=True)
        _checks.number("betas[1]", betas[1], lo=0.0, hi=1.0, hi_open=True)
        _checks.number("beta3", g["beta3"], lo=0.0, hi=1.0, hi_open=True)
        _checks.number("alpha", g["alpha"], lo=0.0)
        _checks.integer("frequency", g["frequency"], lo=1)
        _checks.choice("slow", g["slow"], SLOWS)
        _checks.number("eps", g["eps"], lo=0.0, lo_open=True)
        _checks.integer("ns_steps", g["ns_steps"], lo=1)
        _checks.number("weight_decay", g["weight_decay"], lo=0.0)
        _checks.choice("update_scale", g["update_scale"], SCALES)
        _checks.choice("kind", g["kind"], KINDS)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        self._validate(g)
        if g["kind"] == "m3":
            for p in g["params"]:
                if p.ndim < 2:
                    raise ValueError(
                        f"kind='m3' needs parameters with ndim >= 2, got shape {tuple(p.shape)}")

    @staticmethod
    def _is_m3(p: torch.Tensor, group: dict) -> bool:
        return group["kind"] == "m3" or (group["kind"] == "auto" and p.ndim >= 2)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("M3 does not support sparse gradients")
                state = self.state[p]
                m3 = self._is_m3(p, group)
                if not state:
                    # A Python int: bias corrections and the block test need no device sync.
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    if m3 and group["slow"] != "none":
                        for name in ("slow_momentum", "slow_output", "chunk_sum"):
                            state[name] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                state["step"] += 1
                step = state["step"]
                if wd != 0:
                    p.mul_(1 - lr * wd)
                if not m3:
                    u = F.adamw_direction(
                        p.grad, state["exp_avg"], state["exp_avg_sq"], step,
                        beta1=beta1, beta2=beta2, eps=group["eps"],
                    )
                    p.add_(u, alpha=-lr)
                    continue
                view = F.matrix_view
                slow_on = "slow_output" in state
                u = F.m3_direction(
                    view(p.grad), view(state["exp_avg"]), view(state["exp_avg_sq"]),
                    view(state["slow_output"]) if slow_on else None, step,
                    beta1=beta1, beta2=beta2, alpha=group["alpha"], eps=group["eps"],
                    ns_steps=group["ns_steps"],
                )  # [R, C]
                if group["update_scale"] == "rms":
                    u = u * (RMS_TARGET / u.square().mean().sqrt().clamp_min(1e-12))
                p.add_(u.view_as(p), alpha=-lr)
                if slow_on:
                    # Lines 3-4: the block's gradients reach the slow level at its end and
                    # O2 = NS(M2) is used during the next block.
                    state["chunk_sum"].add_(p.grad)
                    if step % group["frequency"] == 0:
                        F.m3_fold_slow_(
                            state["slow_momentum"], state["slow_output"], state["chunk_sum"],
                            slow=group["slow"], beta3=group["beta3"], ns_steps=group["ns_steps"],
                        )
        return loss
