"""Random inputs for the memory tests (float64, CPU)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nestlearn.memory import MemoryState

DT = torch.float64


@dataclass(frozen=True)
class Rule:
    """One configuration of the update rule under test."""

    memory: str
    objective: str
    rule: str
    read: str
    momentum: bool
    retention: bool

    @property
    def id(self) -> str:
        extras = [x for x, on in (("mom", self.momentum), ("ret", self.retention)) if on]
        return "-".join([self.memory, self.objective, self.rule, self.read, *extras])


def make_inputs(rule: Rule, *, B=2, T=9, H=2, D=4, hidden=8, initial_state=False,
                requires_grad=True):
    """q, k, v, rates and (optionally) an initial state; keys l2-normalised as in HOPE."""
    Dv = D
    g = dict(dtype=DT)
    q = torch.randn(B, T, H, D, **g)
    k = F.normalize(torch.randn(B, T, H, D, **g), dim=-1)
    v = torch.randn(B, T, H, Dv, **g)
    lr = 0.1 + 0.4 * torch.rand(B, T, H, **g)
    alpha = 0.7 + 0.3 * torch.rand(B, T, H, **g) if rule.retention else None
    beta = 0.3 + 0.6 * torch.rand(B, T, H, **g) if rule.momentum else None
    leaves = {"q": q, "k": k, "v": v, "lr": lr, "alpha": alpha, "beta": beta}
    state = None
    if rule.memory != "linear" or initial_state:
        if rule.memory == "linear":
            weights = (0.5 * torch.randn(B, H, Dv, D, **g),)
        else:
            # [H, O, I]: one meta-learned initial memory shared by the batch
            weights = (0.4 * torch.randn(H, Dv, hidden, **g), 0.4 * torch.randn(H, hidden, D, **g))
        momentum = None
        if initial_state and rule.momentum:
            momentum = tuple(0.1 * torch.randn(B, *w.shape[-3:], **g) for w in weights)
        for i, w in enumerate(weights):
            leaves[f"W{i}"] = w
        for i, m in enumerate(momentum or ()):
            leaves[f"S{i}"] = m
        state = (weights, momentum)
    if requires_grad:
        for t in leaves.values():
            if t is not None:
                t.requires_grad_(True)
    if state is not None:
        state = MemoryState(weights=state[0], momentum=state[1])
    return leaves, state


def call(fn, rule: Rule, leaves, state, chunk_size, **kw):
    if rule.objective == "huber":  # a cap inside the errors' range: both branches are taken
        kw.setdefault("huber_delta", 1.5)
    return fn(
        leaves["q"], leaves["k"], leaves["v"], leaves["lr"], leaves["alpha"], leaves["beta"],
        memory=rule.memory, objective=rule.objective, rule=rule.rule, read=rule.read,
        chunk_size=chunk_size, initial_state=state, **kw,
    )


def state_tensors(state: MemoryState):
    ts = list(state.weights) + list(state.chunk_start)
    if state.momentum is not None:
        ts += list(state.momentum)
    return ts


def scalar_of(o, state, seed=1):
    """A random linear functional of the outputs and the final state, for gradient checks."""
    gen = torch.Generator().manual_seed(seed)
    total = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    for t in state_tensors(state):
        total = total + (t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum()
    return total


def grads(leaves, total):
    names = [n for n, t in leaves.items() if t is not None and t.requires_grad]
    gs = torch.autograd.grad(total, [leaves[n] for n in names], allow_unused=True)
    return dict(zip(names, gs))
