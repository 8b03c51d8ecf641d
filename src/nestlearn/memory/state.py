"""The carried state of an associative memory (see ``memory/README.md`` section 2).

Dimension legend: B batch, H heads, O / I the output / input width of one weight matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["MemoryState", "anchored_offsets", "written_rows"]


@dataclass(frozen=True)
class MemoryState:
    """Everything a memory needs to continue a stream exactly where it stopped.

    Weights are the memory's fast weights, one ``[B, H, O, I]`` tensor per weight matrix:
    ``(W,)`` for the linear memory (``W: [B, H, Dv, Dk]``) and ``(W1, W2)`` for the 2-layer MLP
    memory ``M(x) = [x +] W1 silu(W2 x)`` of Eq. 89 (``W1: [B, H, Dv, Dh]``,
    ``W2: [B, H, Dh, Dk]``).

    Attributes:
        weights: the fast weights after the last token written.
        momentum: the momentum ``S`` of each weight (Titans Eq. 13-14), or ``None`` when the rule
            has no momentum.
        chunk_start: the weights at the start of the current chunk. Inner gradients and
            ``read="chunk_start"`` reads of a chunk use them (decision D2), so a stream split in
            the middle of a chunk continues exactly.
        offset: how many tokens of the current chunk are already written (``0 <= offset < C``);
            ``0`` means the next token starts a new chunk and ``chunk_start`` equals ``weights``.
            An ``int`` when every row of the batch is at the same place of its chunk, or an
            integer tensor ``[B]`` with one offset per row: a left-padded batch anchors each
            row's chunk grid at its first real token, so a row's chunks are those of the
            sequence run alone (``memory/README.md`` section 9).
        written: ``None`` (every row has written), or a bool tensor ``[B]`` marking the rows
            that have written at least one token (``lr > 0``) since the stream began. With
            ``write_grad="detach"`` a chunk end cuts the graph of written rows only: a row that
            has written nothing still holds its initial weights, and cutting there would drop
            its gradient to them (a left-padded row's chunk ends inside its padding; README
            section 9). Layers set it to all-False on a fresh state with leading padding.
    """

    weights: tuple[Tensor, ...]
    momentum: tuple[Tensor, ...] | None = None
    chunk_start: tuple[Tensor, ...] | None = None
    offset: int | Tensor = 0
    written: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.weights, tuple) or not all(
            isinstance(w, Tensor) for w in self.weights
        ):
            raise TypeError("MemoryState.weights must be a tuple of tensors")
        if self.chunk_start is None:
            object.__setattr__(self, "chunk_start", self.weights)
        if self.momentum is not None and len(self.momentum) != len(self.weights):
            raise ValueError("MemoryState.momentum must have one tensor per weight")
        if len(self.chunk_start) != len(self.weights):
            raise ValueError("MemoryState.chunk_start must have one tensor per weight")
        if isinstance(self.offset, Tensor):
            if self.offset.ndim != 1 or self.offset.is_floating_point() or (
                self.offset.is_complex() or self.offset.dtype == torch.bool
            ):
                raise TypeError(
                    "MemoryState.offset must be an int or a 1-D integer tensor [B], got a "
                    f"{self.offset.dtype} tensor of shape {tuple(self.offset.shape)}"
                )
            if bool((self.offset < 0).any()):
                raise ValueError(f"MemoryState.offset must be >= 0, got {self.offset.tolist()}")
        elif not isinstance(self.offset, int) or isinstance(self.offset, bool):
            raise TypeError(
                f"MemoryState.offset must be an int or a tensor [B], got {self.offset!r}"
            )
        elif self.offset < 0:
            raise ValueError(f"MemoryState.offset must be >= 0, got {self.offset}")
        if self.written is not None and (
            not isinstance(self.written, Tensor) or self.written.dtype != torch.bool
            or self.written.ndim != 1
        ):
            raise TypeError(
                "MemoryState.written must be None or a 1-D bool tensor [B], got "
                + (f"a {self.written.dtype} tensor of shape {tuple(self.written.shape)}"
                   if isinstance(self.written, Tensor) else repr(self.written))
            )

    @classmethod
    def zeros_linear(
        cls, batch: int, heads: int, key_dim: int, value_dim: int, **tensor_kwargs
    ) -> MemoryState:
        """An empty linear memory ``W = 0`` of shape ``[batch, heads, value_dim, key_dim]``."""
        return cls(weights=(torch.zeros(batch, heads, value_dim, key_dim, **tensor_kwargs),))

    def detach(self) -> MemoryState:
        """The same state cut from the autograd graph (truncated backpropagation)."""

        def cut(ts: tuple[Tensor, ...] | None) -> tuple[Tensor, ...] | None:
            return None if ts is None else tuple(t.detach() for t in ts)

        return replace(
            self,
            weights=cut(self.weights),
            momentum=cut(self.momentum),
            chunk_start=cut(self.chunk_start),
        )

    def row_offsets(self, batch: int) -> list[int]:
        """The offset of each of ``batch`` rows, as Python ints."""
        if isinstance(self.offset, Tensor):
            return [int(o) for o in self.offset.tolist()]
        return [self.offset] * batch

    def map(self, fn) -> MemoryState:
        """Apply ``fn`` to every tensor (e.g. ``state.map(lambda t: t[idx])`` to select rows),
        per-row offsets included."""

        def each(ts: tuple[Tensor, ...] | None) -> tuple[Tensor, ...] | None:
            return None if ts is None else tuple(fn(t) for t in ts)

        return replace(
            self,
            weights=each(self.weights),
            momentum=each(self.momentum),
            chunk_start=each(self.chunk_start),
            # offsets stay integers whatever ``fn`` does to dtypes (e.g. ``t.to(torch.float64)``)
            offset=fn(self.offset).long() if isinstance(self.offset, Tensor) else self.offset,
            written=None if self.written is None else fn(self.written).bool(),
        )


def anchored_offsets(keep: Tensor, chunk_size: int) -> int | Tensor:
    """Chunk offsets that start each row's chunks at its first real token.

    ``keep: [B, T]`` (True = real token) of a left-padded batch on a fresh state. A row with
    ``p`` leading pads gets offset ``(-p) mod C``, so its first real token opens a chunk, as it
    does when the sequence runs alone (padded positions write nothing, so the pads' own
    "chunks" change no weights). Returns ``0`` when every row is aligned already (the uniform
    path), else a ``[B]`` tensor."""
    B, T = keep.shape
    if T == 0 or bool(keep[:, 0].all()):
        return 0
    pads = torch.where(keep.any(1), keep.to(torch.int8).argmax(1), T)  # leading pads per row
    offsets = (-pads) % chunk_size
    return 0 if not bool(offsets.any()) else offsets.long()


def written_rows(keep: Tensor) -> Tensor | None:
    """The ``written`` flags of a fresh state about to read ``keep: [B, T]`` (True = real
    token): all False when some row starts with padding (so that chunk ends inside the padding
    do not cut its initial weights from the graph), ``None`` when every row starts with a real
    token (nothing to track)."""
    if keep.shape[1] == 0 or bool(keep[:, 0].all()):
        return None
    return torch.zeros(keep.shape[0], dtype=torch.bool, device=keep.device)

