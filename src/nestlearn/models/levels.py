"""The levels view of a model (decision D1; NL section 1.3, Fig. 5).

Everything that learns is a level: a set of tensors, the context it is optimised on, an objective,
an update rule and an update period counted in tokens of that context. ``model.levels()`` returns
one row per level, fastest first, with the keys of ``COLUMNS``; ``format_levels`` prints them.
The slowest level is pre-training: the outer optimizer updating every parameter once per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["COLUMNS", "SlowGroup", "format_levels", "hope_levels", "titans_levels",
           "transformer_levels"]

COLUMNS = ("name", "parameters", "period", "objective", "update", "reset")


@dataclass
class SlowGroup:
    """A level that the outer optimizer updates less often than every step (NL Eq. 71 with the
    outer optimizer as the update rule): ``model.slow_parameter_groups()`` returns one per level.
    The training loop sums its gradients over ``period`` training tokens and applies the sum."""

    name: str
    """e.g. ``"cms level 1"``."""
    period: int
    """Update period in training tokens (> 0)."""
    params: list[tuple[str, nn.Parameter]]
    """(qualified name in the model, parameter) of every tensor of the level, all layers."""


def _count(*tensors) -> int:
    return sum(t.numel() for t in tensors)


def _outer(model: nn.Module) -> dict[str, Any]:
    return dict(
        name="pre-training (outer loop)",
        parameters=sum(p.numel() for p in model.parameters()),
        period="1 optimizer step (batch x sequence tokens)",
        objective="next-token cross-entropy",
        update="the training optimizer (AdamW by default)",
        reset="never",
    )


def hope_levels(model) -> list[dict[str, Any]]:
    cfg = model.config
    base = getattr(model, "model", model)
    rows = []
    if cfg.variant == "hope":
        smt = base.layers[0].mixer
        n_layers = len(base.layers)
        proj = ["k", "v"] + (["q"] if cfg.smt_q_projection == "adaptive" else []) + ["eta"] + (
            ["alpha"] if cfg.smt_retention == "learned" else [])
        rule = "DGD" if cfg.smt_rule == "dgd" else "GD"
        rule += " + retention" if cfg.smt_retention == "learned" else ""
        rule += " + momentum" if cfg.smt_momentum == "learned" else ""
        loss = ("l2" if getattr(cfg, "smt_objective", "l2") == "l2"
                else f"l2, error norm capped at {cfg.smt_huber_delta:g} (huber),")
        objective = f"{loss} to self-generated targets M(v) (Eq. 84-85)"
        rows.append(dict(
            name=f"SMT projection memories ({', '.join(proj)}) x {n_layers} layers",
            parameters=n_layers * _count(smt.vec_w1, smt.vec_w2, smt.gate_w1, smt.gate_w2),
            period=f"{cfg.smt_proj_chunk_size} tokens",
            objective=objective,
            update=rule + " (Eq. 88)", reset="every sequence, to meta-learned initial state"))
        rows.append(dict(
            name=f"SMT main memory x {n_layers} layers",
            parameters=n_layers * _count(smt.main_w1, smt.main_w2),
            period=f"{cfg.smt_chunk_size} tokens",
            objective=objective,
            update=rule + " (Eq. 88)", reset="every sequence, to meta-learned initial state"))
    else:
        rows.append(dict(
            name=f"softmax attention x {len(base.layers)} layers", parameters=0,
            period="1 token (non-parametric, frequency infinity)",
            objective="closed form (attention over the context)", update="KV cache append",
            reset="every sequence"))
    cms = base.layers[0].cms
    def speed(i):  # in-context levels, then every optimizer step, then slow levels
        p, lr = cms.periods[i], cms.inner_lrs[i]
        return (0, p) if p and lr else ((1, 0) if p == 0 else (2, p))

    order = sorted(range(len(cms.levels)), key=speed)
    for i in order:
        p, lr = cms.periods[i], cms.inner_lrs[i]
        params = len(base.layers) * _count(*cms.levels[i].weights())
        name = f"CMS level {i} (hidden {cms.levels[i].w_gate.shape[0]}) x {len(base.layers)} layers"
        if p and lr:
            rows.append(dict(name=name, parameters=params, period=f"{p} tokens",
                             objective="next-token loss of the chunk (Eq. 71)",
                             update=f"GD, lr {lr}, summed over the chunk",
                             reset="every sequence, to meta-learned initial state"))
        elif p:
            rows.append(dict(name=name, parameters=params, period=f"{p} training tokens",
                             objective="next-token cross-entropy",
                             update="training optimizer, gradients accumulated over the period",
                             reset="never"))
        else:
            rows.append(dict(name=name, parameters=params,
                             period="1 optimizer step", objective="next-token cross-entropy",
                             update="training optimizer", reset="never"))
    rows.append(_outer(model))
    return rows


def titans_levels(model) -> list[dict[str, Any]]:
    cfg = model.config
    base = getattr(model, "model", model)
    mem = base.layers[0].memory
    weights = (mem.mem_w,) if cfg.memory == "linear" else (mem.mem_w1, mem.mem_w2)
    rows = []
    if cfg.variant == "mag":
        rows.append(dict(name=f"sliding-window attention x {len(base.layers)} layers",
                         parameters=0, period="1 token (window "
                         f"{cfg.sliding_window})", objective="closed form",
                         update="KV cache (bounded)", reset="every sequence"))
    rows.append(dict(
        name=f"neural memory ({cfg.memory}) x {len(base.layers)} layers",
        parameters=len(base.layers) * _count(*weights), period=f"{cfg.chunk_size} tokens",
        objective="l2: ||M(k) - v||^2 (Titans Eq. 12)",
        update="GD + momentum + retention (Titans Eq. 13-14)",
        reset="every sequence, to meta-learned initial state"))
    rows.append(_outer(model))
    return rows


def transformer_levels(model) -> list[dict[str, Any]]:
    base = getattr(model, "model", model)
    return [
        dict(name=f"softmax attention x {len(base.layers)} layers", parameters=0,
             period="1 token (non-parametric, frequency infinity)",
             objective="closed form (attention over the context)", update="KV cache append",
             reset="every sequence"),
        _outer(model),
    ]


def format_levels(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``rows`` (as returned by ``model.levels()``)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
