"""Continuum Memory System (NL section 7.1-7.3, Eq. 70-74; decision D7).

A chain of MLP levels, each with its own update period. Level l is a pre-norm residual SwiGLU
block, ``x <- x + MLP_l(norm_l(x))`` (HOPE's "high-, mid-, low-frequency FFN", Fig. 5), ordered
from the fastest level to the slowest. A level's update (Eq. 71) is the sum, over the tokens of
one of its chunks, of the task-loss gradients taken at the chunk-start parameters, applied once
at the chunk end with the level's inner learning rate:

    theta <- theta - lr_l * sum_{t in chunk} grad_theta loss_t(theta_chunk_start)

What counts as a level's context and who computes that gradient depends on its period:

* ``period > 0`` and ``inner_lr > 0``: an **in-context** level. Its fast weights live in the
  per-sequence state (start from the meta-learned parameters, reset with the stream), and the
  *model* computes the next-token loss of each chunk and calls :meth:`ContinuumMemory.apply_update`
  (the loss needs the whole network above the level; see ``nestlearn.models.hope``).
* ``period == 0`` or ``inner_lr == 0``: the level changes only through the outer optimizer (a
  "slow" level in the training loop's sense). With every inner learning rate 0 the CMS is exactly
  a stack of ordinary residual MLP blocks, i.e. its pre-trained initialisation (section 3.3).

Variants (knowledge transfer between levels, section 3.2): ``"sequential"`` (Eq. 73, default):
the chain above; ``"nested"`` (Eq. 72): the same chain, and a level's fast weights are reset to
their meta-learned initial values whenever the next slower in-context level completes a chunk;
``"independent"`` (Eq. 74): every level reads the same input (through its own norm) and the
block adds a learned weighted sum of the levels' outputs.

Dimension legend: B batch, T time, D model width, F hidden width of a level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.layers.norm import RMSNorm

__all__ = ["CMSState", "ContinuumMemory", "swiglu_apply"]

Variant = Literal["sequential", "nested", "independent"]
VARIANTS = ("sequential", "nested", "independent")


def swiglu_apply(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """``W_down (silu(W_gate x) * W_up x)`` with weights ``[(B,) F, D]``, ``[(B,) F, D]``,
    ``[(B,) D, F]`` (a leading batch axis gives every sequence its own weights)."""
    h = F.silu(x @ w_gate.transpose(-1, -2)) * (x @ w_up.transpose(-1, -2))  # [B, T, F]
    return h @ w_down.transpose(-1, -2)  # [B, T, D]


@dataclass(frozen=True)
class CMSState:
    """Per-sequence state of the in-context levels of one CMS block.

    ``fast[l]`` holds level l's current weights ``(w_gate [B, F, D], w_up [B, F, D],
    w_down [B, D, F])`` or ``None`` when the level uses its parameters (not in-context, or not
    yet updated); ``grad_sum[l]`` the gradient summed over the tokens of the level's current
    chunk so far (``None`` when empty); ``position`` the number of tokens seen.
    """

    fast: tuple[tuple[Tensor, Tensor, Tensor] | None, ...]
    grad_sum: tuple[tuple[Tensor, Tensor, Tensor] | None, ...]
    position: int = 0

    def map(self, fn) -> CMSState:
        def each(group):
            return tuple(None if g is None else tuple(fn(t) for t in g) for g in group)

        return CMSState(each(self.fast), each(self.grad_sum), self.position)

    def detach(self) -> CMSState:
        return self.map(lambda t: t.detach())


class CMSLevel(nn.Module):
    """One level: an RMSNorm and the meta-learned SwiGLU weights (its initial state)."""

    def __init__(self, d_model: int, hidden: int, *, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=eps)
        self.w_gate = nn.Parameter(torch.empty(hidden, d_model))
        self.w_up = nn.Parameter(torch.empty(hidden, d_model))
        self.w_down = nn.Parameter(torch.empty(d_model, hidden))

    def weights(self) -> tuple[Tensor, Tensor, Tensor]:
        return (self.w_gate, self.w_up, self.w_down)


class ContinuumMemory(nn.Module):
    """The CMS block: ``forward(x [B, T, D], *, state)`` -> ``(y [B, T, D], state)``.

    ``forward`` only reads (with each level's current weights); in-context writes happen in
    :meth:`apply_update`, called by the model with the chunk's task-loss gradients.

    Args:
        d_model: model width D.
        hidden_sizes: hidden width F of each level, fastest first.
        periods: update period of each level in tokens (0: updated only by the outer optimizer).
        inner_lrs: in-context learning rate of each level (0: not updated in context).
        variant: ``"sequential"``, ``"nested"`` or ``"independent"``.
        eps: RMSNorm epsilon.
    """

    def __init__(
        self,
        d_model: int,
        *,
        hidden_sizes: list[int],
        periods: list[int],
        inner_lrs: list[float],
        variant: Variant = "sequential",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        k = len(hidden_sizes)
        if k < 1:
            raise ValueError("hidden_sizes must name at least one CMS level")
        if len(periods) != k or len(inner_lrs) != k:
            raise ValueError(
                f"hidden_sizes, periods and inner_lrs must have one entry per level, got "
                f"{len(hidden_sizes)}, {len(periods)}, {len(inner_lrs)}"
            )
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        for i, (h, p, lr) in enumerate(zip(hidden_sizes, periods, inner_lrs)):
            if not isinstance(h, int) or h < 1:
                raise ValueError(f"hidden_sizes[{i}] must be an integer >= 1, got {h!r}")
            if not isinstance(p, int) or p < 0:
                raise ValueError(f"periods[{i}] must be an integer >= 0, got {p!r}")
            if not (isinstance(lr, (int, float)) and lr >= 0):
                raise ValueError(f"inner_lrs[{i}] must be a number >= 0, got {lr!r}")
        self.d_model, self.variant = d_model, variant
        self.periods = list(periods)
        self.inner_lrs = [float(x) for x in inner_lrs]
        self.levels = nn.ModuleList(CMSLevel(d_model, h, eps=eps) for h in hidden_sizes)
        if variant == "independent":
            self.mix = nn.Parameter(torch.empty(k))
        self.reset_parameters()

    def reset_parameters(self, init=nn.init, *, std: float = 0.02,
                         out_std: float | None = None) -> None:
        """Initial values (``init`` is a ``torch.nn.init``-like namespace): ``w_gate``, ``w_up``
        ~ N(0, std^2); ``w_down`` ~ N(0, out_std^2) (models pass a depth-scaled std); norms 1; the
        independent variant's mixing weights 1/k."""
        out_std = std if out_std is None else out_std
        for level in self.levels:
            init.normal_(level.w_gate, mean=0.0, std=std)
            init.normal_(level.w_up, mean=0.0, std=std)
            init.normal_(level.w_down, mean=0.0, std=out_std)
            init.ones_(level.norm.weight)
        if self.variant == "independent":
            init.constant_(self.mix, 1.0 / len(self.levels))

    @property
    def in_context(self) -> list[int]:
        """Indices of the levels updated in context (period > 0 and inner_lr > 0)."""
        return [i for i, (p, lr) in enumerate(zip(self.periods, self.inner_lrs)) if p and lr]

    def initial_state(self) -> CMSState:
        k = len(self.levels)
        return CMSState(fast=(None,) * k, grad_sum=(None,) * k, position=0)

    def level_weights(self, state: CMSState, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """The weights level ``i`` reads with: its fast weights, else its parameters."""
        fast = state.fast[i]
        return self.levels[i].weights() if fast is None else fast

    def forward(self, x: Tensor, *, state: CMSState | None = None) -> tuple[Tensor, CMSState]:
        st = self.initial_state() if state is None else state
        if self.variant == "independent":
            y = x
            for i, level in enumerate(self.levels):
                y = y + self.mix[i] * swiglu_apply(level.norm(x), *self.level_weights(st, i))
            return y, st
        for i, level in enumerate(self.levels):
            x = x + swiglu_apply(level.norm(x), *self.level_weights(st, i))
        return x, st

    def fast_tensors(self, state: CMSState, batch: int, *, leaf: bool = False
                     ) -> tuple[CMSState, list[Tensor]]:
        """Give every in-context level per-sequence fast weights ``[B, ...]`` (expanding the
        parameters where needed) and return them flat, for ``torch.autograd.grad``.

        ``leaf=True`` (inference) makes new fast weights leaves cut from the parameters, so a
        state carried across calls holds no graph beyond what the inner gradients need."""
        fast = list(state.fast)
        flat = []
        for i in self.in_context:
            if fast[i] is None:
                fast[i] = tuple(_maybe_leaf(w.expand(batch, *w.shape), leaf)
                                for w in self.levels[i].weights())
            elif not all(w.requires_grad for w in fast[i]):
                # carried in from a detached state (truncated backpropagation across windows,
                # data.mode=stream): a fresh leaf, so the inner gradient can still be taken
                fast[i] = tuple(_maybe_leaf(w, True) for w in fast[i])
            flat.extend(fast[i])
        return CMSState(tuple(fast), state.grad_sum, state.position), flat

    def apply_update(self, state: CMSState, grads: list[Tensor], num_tokens: int, *,
                     leaf: bool = False) -> CMSState:
        """Advance ``state`` by ``num_tokens`` tokens whose summed task-loss gradient w.r.t. the
        tensors of :meth:`fast_tensors` is ``grads`` (same order). Levels whose chunk ends inside
        this span (``position`` crosses a multiple of their period) apply ``-lr * sum`` (Eq. 71);
        the caller splits spans so that no chunk ends strictly inside one."""
        fast, acc = list(state.fast), list(state.grad_sum)
        end = state.position + num_tokens
        completed = []
        it = iter(grads)
        for i in self.in_context:
            g = tuple(next(it) for _ in range(3))
            acc[i] = g if acc[i] is None else tuple(a + b for a, b in zip(acc[i], g))
            if end % self.periods[i] == 0:
                lr = self.inner_lrs[i]
                fast[i] = tuple(_maybe_leaf(w - lr * a, leaf) for w, a in zip(fast[i], acc[i]))
                acc[i] = None
                completed.append(i)
        if self.variant == "nested":
            ctx = self.in_context
            for i in completed:
                # a completed chunk of level i re-initialises the next faster in-context level
                pos = ctx.index(i)
                if pos > 0:
                    child = ctx[pos - 1]
                    fast[child], acc[child] = None, None
        return CMSState(tuple(fast), tuple(acc), end)

    def at_rest(self, position: int) -> bool:
        """Whether no in-context level is inside a chunk at ``position``."""
        return all(position % self.periods[i] == 0 for i in self.in_context)

    def next_boundary(self, position: int) -> int | None:
        """Tokens from ``position`` to the nearest chunk end of any in-context level."""
        gaps = [p - position % p for i, p in enumerate(self.periods) if i in self.in_context]
        return min(gaps) if gaps else None


def _maybe_leaf(t: Tensor, leaf: bool) -> Tensor:
    return t.detach().requires_grad_(True) if leaf else t
