"""Shared pieces of the memory update rules: argument checking, the memories' forward maps, the
inner objectives and their closed-form gradients.

Dimension legend (used across ``nestlearn.memory``):
    B batch, T time (tokens), H heads, N chunks, L tokens in one chunk (L <= C),
    Dk key/query width, Dv value width, Dh hidden width of the MLP memory,
    O / I output / input width of one weight matrix.
Public functions take ``[B, T, H, D]`` tensors; internally time moves next to the feature axis
(``[B, H, T, D]``) so that per-(batch, head) memories are batched matrix products.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.memory.state import MemoryState

MemoryKind = Literal["linear", "mlp", "residual_mlp"]
Objective = Literal["dot", "l2", "huber"]
Rule = Literal["gd", "dgd"]
Read = Literal["chunk_start", "per_token"]
WriteGrad = Literal["full", "detach"]

MEMORY_KINDS = ("linear", "mlp", "residual_mlp")
OBJECTIVES = ("dot", "l2", "huber")
RULES = ("gd", "dgd")
READS = ("chunk_start", "per_token")
WRITE_GRADS = ("full", "detach")


@dataclass(frozen=True)
class Args:
    """Checked arguments in the internal ``[B, H, T, D]`` layout."""

    q: Tensor  # [B, H, T, Dk]
    k: Tensor  # [B, H, T, Dk]
    v: Tensor  # [B, H, T, Dv]
    lr: Tensor  # [B, H, T]
    alpha: Tensor | None  # [B, H, T] retention gate, None = no retention (alpha = 1)
    beta: Tensor | None  # [B, H, T] momentum factor, None = no momentum
    memory: MemoryKind
    objective: Objective
    huber_delta: float
    rule: Rule
    chunk_size: int
    read: Read
    write_grad: WriteGrad
    state: MemoryState  # weights broadcast to [B, H, O, I]
    out_dtype: torch.dtype


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _bthd(name: str, x, ndim: int = 4) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        layout = "[batch, time, heads, dim]" if ndim == 4 else "[batch, time, heads]"
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def _finite(name: str, x: Tensor, *, positive: bool = False) -> None:
    bad = ~torch.isfinite(x)
    if positive:
        bad = bad | (x <= 0)
    if bool(bad.any()):
        need = "finite and > 0" if positive else "finite"
        raise ValueError(f"{name} must be {need}; found {int(bad.sum())} bad value(s)")


def check_args(
    q, k, v, lr, alpha, beta, *, memory, objective, rule, chunk_size, read, initial_state,
    write_grad, huber_delta=1.0,
) -> Args:
    """Validate the public arguments (``ValueError``/``TypeError`` naming the argument) and move
    them to the internal layout and compute dtype."""
    _choice("memory", memory, MEMORY_KINDS)
    _choice("objective", objective, OBJECTIVES)
    _choice("rule", rule, RULES)
    _choice("read", read, READS)
    _choice("write_grad", write_grad, WRITE_GRADS)
    if isinstance(huber_delta, bool) or not isinstance(huber_delta, (int, float)) \
            or not 0 < huber_delta < float("inf"):
        raise ValueError(f"huber_delta must be a finite number > 0, got {huber_delta!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if read == "per_token" and rule == "dgd":
        raise ValueError(
            "read='per_token' is available for rule='gd' only; use read='chunk_start' with "
            "rule='dgd' (see nestlearn/memory/README.md, section 5)"
        )
    q, k, v = _bthd("q", q), _bthd("k", k), _bthd("v", v)
    B, T, H, Dk = k.shape
    if q.shape != k.shape:
        raise ValueError(f"q must have the shape of k {tuple(k.shape)}, got {tuple(q.shape)}")
    if v.shape[:3] != (B, T, H):
        raise ValueError(f"v must have shape [{B}, {T}, {H}, Dv], got {tuple(v.shape)}")
    Dv = v.shape[-1]
    if memory == "residual_mlp" and Dv != Dk:
        raise ValueError(
            f"memory='residual_mlp' (Eq. 89) needs value dim == key dim, got {Dv} != {Dk}"
        )
    rates = {"lr": lr, "alpha": alpha, "beta": beta}
    for name, r in rates.items():
        if r is None and name == "lr":
            raise ValueError("lr is required")
        if r is not None:
            _bthd(name, r, ndim=3)
            if r.shape != (B, T, H):
                raise ValueError(f"{name} must have shape [{B}, {T}, {H}], got {tuple(r.shape)}")
    _finite("lr", lr)
    # Retention and momentum products are taken in log space (memory/README.md section 3).
    if alpha is not None:
        _finite("alpha", alpha, positive=True)
    if beta is not None:
        _finite("beta", beta, positive=True)

    out_dtype = q.dtype
    dtype = torch.promote_types(q.dtype, torch.float32)

    def to_internal(x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        return x.to(dtype).transpose(1, 2)

    state = _check_state(initial_state, memory=memory, B=B, H=H, Dk=Dk, Dv=Dv, q=q, dtype=dtype)
    if beta is None and state.momentum is not None:
        raise ValueError("initial_state carries momentum but beta is None; pass beta")
    _check_offsets(state, B=B, chunk_size=chunk_size)
    return Args(
        q=to_internal(q), k=to_internal(k), v=to_internal(v), lr=to_internal(lr),
        alpha=to_internal(alpha), beta=to_internal(beta), memory=memory, objective=objective,
        huber_delta=float(huber_delta), rule=rule, chunk_size=chunk_size, read=read,
        write_grad=write_grad, state=state,
        out_dtype=out_dtype,
    )


def _check_offsets(state: MemoryState, *, B: int, chunk_size: int) -> None:
    """The state's chunk offsets (an int or one per row) and written flags fit the batch."""
    offsets = state.offset
    if isinstance(offsets, Tensor):
        if offsets.shape != (B,):
            raise ValueError(
                f"initial_state.offset must be an int or a tensor of shape [{B}] (one offset "
                f"per row), got shape {tuple(offsets.shape)}"
            )
        offsets = int(offsets.max()) if offsets.numel() else 0
    if state.written is not None and state.written.shape != (B,):
        raise ValueError(
            f"initial_state.written must be None or a bool tensor of shape [{B}], got shape "
            f"{tuple(state.written.shape)}"
        )
    if offsets >= chunk_size:
        raise ValueError(
            f"initial_state.offset ({state.offset}) must be < chunk_size ({chunk_size}); a "
            "stream must keep its chunk size"
        )


def _check_state(state, *, memory, B, H, Dk, Dv, q, dtype) -> MemoryState:
    if state is None:
        if memory != "linear":
            raise ValueError(
                f"memory={memory!r} needs an initial_state (its weights (W1, W2)); an all-zero "
                "MLP memory has zero inner gradients and never learns"
            )
        return MemoryState.zeros_linear(B, H, Dk, Dv, dtype=dtype, device=q.device)
    if not isinstance(state, MemoryState):
        raise TypeError(f"initial_state must be a MemoryState, got {type(state).__name__}")
    if memory == "linear":
        shapes = [("W", (Dv, Dk))]
    else:
        if len(state.weights) != 2 or state.weights[1].ndim < 2:
            raise ValueError(f"memory={memory!r} needs initial_state.weights = (W1, W2)")
        Dh = state.weights[1].shape[-2]
        shapes = [("W1", (Dv, Dh)), ("W2", (Dh, Dk))]
    if len(state.weights) != len(shapes):
        raise ValueError(
            f"memory={memory!r} needs {len(shapes)} weight(s) in initial_state, got "
            f"{len(state.weights)}"
        )

    def fit(group: str, ts: tuple[Tensor, ...] | None) -> tuple[Tensor, ...] | None:
        if ts is None:
            return None
        out = []
        for t, (name, (o, i)) in zip(ts, shapes):
            if t.shape[-2:] != (o, i) or t.ndim not in (3, 4) or t.shape[-3] != H or (
                t.ndim == 4 and t.shape[0] != B
            ):
                raise ValueError(
                    f"initial_state.{group} {name} must have shape [{B}, {H}, {o}, {i}] or "
                    f"[{H}, {o}, {i}], got {tuple(t.shape)}"
                )
            out.append(t.to(dtype).expand(B, H, o, i))
        return tuple(out)

    return MemoryState(
        weights=fit("weights", state.weights),
        momentum=fit("momentum", state.momentum),
        chunk_start=fit("chunk_start", state.chunk_start),
        offset=state.offset,
        written=state.written,
    )


# --- the memories (Eq. 89 for the MLP) ---------------------------------------------------------


def silu_grad(h: Tensor) -> Tensor:
    """d/dh of h * sigmoid(h)."""
    s = torch.sigmoid(h)
    return s * (1 + h * (1 - s))


def apply_memory(memory: MemoryKind, weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """Read the memory: ``x [..., L, Dk]`` with weights ``[..., O, I]`` -> ``[..., L, Dv]``.

    linear: ``W x``; mlp: ``W1 silu(W2 x)``; residual_mlp (Eq. 89): ``x + W1 silu(W2 x)``.
    """
    if memory == "linear":
        return x @ weights[0].transpose(-1, -2)
    W1, W2 = weights
    y = F.silu(x @ W2.transpose(-1, -2)) @ W1.transpose(-1, -2)
    return x + y if memory == "residual_mlp" else y


def objective_loss(objective: Objective, y: Tensor, v: Tensor, delta: float = 1.0) -> Tensor:
    """The inner objective summed over every memory and token.

    dot (Hebbian, Eq. 14-18): ``-<M(k), v>``; l2 (delta rule, Titans Eq. 12):
    ``1/2 ||M(k) - v||^2``. The factor 1/2 makes the l2 step ``-lr (M k - v) k^T``, the delta
    rule with step ``lr``.
    huber (Miras' robust attentional bias): ``1/2 ||e||^2`` for ``||e|| <= delta``, else
    ``delta (||e|| - delta/2)``, per token, ``e = M(k) - v``: the l2 step with the error's norm
    capped at ``delta`` (README section 1).
    """
    if objective == "dot":
        return -(y * v).sum()
    if objective == "huber":
        n2 = (y - v).pow(2).sum(-1)
        linear = delta * (n2.clamp_min(delta * delta).sqrt() - 0.5 * delta)
        return torch.where(n2 <= delta * delta, 0.5 * n2, linear).sum()
    return 0.5 * (y - v).pow(2).sum()


def huber_error(e: Tensor, delta: float) -> Tensor:
    """The gradient of the huber objective w.r.t. the memory's output: ``e`` with its norm
    (over the last axis) capped at ``delta``."""
    n2 = e.pow(2).sum(-1, keepdim=True)
    return e * torch.where(n2 <= delta * delta, 1.0, delta / n2.clamp_min(delta * delta).sqrt())


@dataclass
class InnerGrad:
    """Per-token inner gradients at the chunk-start weights, one rank-1 factor pair per weight:
    the gradient of the loss of token i w.r.t. weight w is
    ``us[w][..., i, :] (x) xs[w][..., i, :]``. ``key_proj`` is ``k @ W_in^T`` for the input-side
    weight (reused by the DGD transfer term)."""

    us: tuple[Tensor, ...]  # each [..., L, O]
    xs: tuple[Tensor, ...]  # each [..., L, I]
    key_proj: Tensor  # [..., L, O_in]


def inner_grad(
    memory: MemoryKind, objective: Objective, weights: tuple[Tensor, ...], k: Tensor, v: Tensor,
    delta: float = 1.0,
) -> InnerGrad:
    """Closed-form per-token gradients of the inner objective (derivation: README section 1)."""
    if memory == "linear":
        (W,) = weights
        p = k @ W.transpose(-1, -2)  # [..., L, Dv]
        e = -v if objective == "dot" else p - v
        if objective == "huber":
            e = huber_error(e, delta)
        return InnerGrad(us=(e,), xs=(k,), key_proj=p)
    W1, W2 = weights
    h = k @ W2.transpose(-1, -2)  # [..., L, Dh]
    a = F.silu(h)
    if objective == "dot":
        e = -v
    else:
        y = a @ W1.transpose(-1, -2)
        e = (k + y if memory == "residual_mlp" else y) - v  # [..., L, Dv]
        if objective == "huber":
            e = huber_error(e, delta)
    dh = (e @ W1) * silu_grad(h)  # [..., L, Dh]
    return InnerGrad(us=(e, dh), xs=(a, k), key_proj=h)


def input_side(memory: MemoryKind) -> int:
    """Index of the weight that sees the key; DGD's factor right-multiplies it (decision D5)."""
    return 0 if memory == "linear" else 1


def dgd_lr(lr: Tensor, k: Tensor) -> Tensor:
    """eta' = eta / (1 + eta ||k||^2): the exact Sherman-Morrison step of Eq. 56-57 (README 4)."""
    return lr / (1 + lr * k.pow(2).sum(-1))


def effective_lr(a: Args) -> Tensor:
    return dgd_lr(a.lr, a.k) if a.rule == "dgd" else a.lr


def to_public(o: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, H, T, Dv]`` -> ``[B, T, H, Dv]`` in the caller's dtype."""
    return o.transpose(1, 2).to(dtype)


def log_or_zero(x: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if x is None else torch.log(x)



def autocast_off(fn):
    """Run a memory rule with autocast off: the recurrence runs in float32 or wider (inputs are
    promoted by ``check_args``), because a bf16 state would drift over a long stream."""

    @functools.wraps(fn)
    def wrapper(q, *args, **kwargs):
        device = q.device.type if isinstance(q, Tensor) else "cpu"
        with torch.autocast(device, enabled=False):
            return fn(q, *args, **kwargs)

    return wrapper
