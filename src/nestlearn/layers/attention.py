"""Causal multi-head softmax self-attention with RoPE, optional sliding window and grouped KV heads.

The Transformer++ baseline's sequence mixer (decision D10) and the mixer of HOPE-Attention (D8). It
follows the sequence-mixing layer contract shared by every mixer in ``nestlearn.layers``:

    y, new_state = layer(x, state=state, attention_mask=attention_mask, position_ids=position_ids)

- ``x``: ``[B, T, D]``, the new tokens of a stream.
- ``state``: what the layer carried over from the previous call on the same stream (here an
  ``AttentionState``), or ``None`` at the start of a stream. It is opaque to the model: the model
  only stores it in the cache and hands it back. A state has ``map(fn)`` (apply ``fn`` to every
  tensor whose first dimension is the batch, e.g. to reorder beams) and ``detach()``.
- ``attention_mask``: ``None`` (all tokens real) or the 0/1 padding mask of the new tokens,
  ``[B, T]``. A wider Hugging Face mask ``[B, T_total]`` (the whole sequence so far, as
  ``generate()`` builds it) is accepted too: only its last ``T`` columns are read, because the
  state remembers which earlier tokens were padding. Positions with 0 are never attended to.
- ``position_ids``: ``None`` or ``[B, T]`` / ``[1, T]`` RoPE positions. When ``None`` they are
  derived from the state and the mask: each row counts only its real (mask 1) tokens, so a
  left-padded row gets the same positions as the same sequence without padding.
- returns ``y: [B, T, D]`` and the state after the last token of ``x``; running a sequence in one
  call or in pieces with the state threaded through gives the same ``y`` (up to rounding).

Masking uses *columns*: the index of a token in the stream, pads included. Query column i may
attend key column j iff ``j <= i``, ``i - j < window`` (when a window is set) and key j is not
padding. A padded query (whose output no real token ever reads) is also allowed its own key, so
no softmax row is empty and no NaN appears at padded positions (with left padding it sees only
itself).

Dimension legend: B batch, T new tokens, S cached tokens, D model width, H query heads,
G key/value heads (H is a multiple of G), Dh head width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attention", "AttentionState", "RotaryEmbedding", "apply_rotary"]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding in the Llama half-split layout.

    Su et al., 2021, "RoFormer", Eq. 34.

    It has no parameters or buffers: the inverse frequencies ``base^(-2i/Dh)`` are recomputed on
    each call (``Dh / 2`` numbers), so the module is safe under meta-device construction and
    ``from_pretrained`` without any initialisation step.

    Args:
        head_dim: the rotated width Dh (even).
        base: the frequency base (``rope_theta``).
    """

    def __init__(self, head_dim: int, *, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim <= 0 or head_dim % 2 != 0:
            raise ValueError(
                f"RotaryEmbedding head_dim must be a positive even integer, got {head_dim}"
            )
        if base <= 0:
            raise ValueError(f"RotaryEmbedding base must be > 0, got {base}")
        self.head_dim = head_dim
        self.base = float(base)

    def forward(self, positions: Tensor, *, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``cos, sin: [..., Dh]`` for integer ``positions: [...]``, computed in at least fp32."""
        compute_dtype = torch.promote_types(dtype, torch.float32)
        exponent = torch.arange(0, self.head_dim, 2, device=positions.device, dtype=compute_dtype)
        inv_freq = self.base ** (-exponent / self.head_dim)  # [Dh/2]
        angle = positions.to(compute_dtype).unsqueeze(-1) * inv_freq  # [..., Dh/2]
        angle = torch.cat([angle, angle], dim=-1)  # [..., Dh]
        return angle.cos().to(dtype), angle.sin().to(dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x: [B, H, T, Dh]`` by ``cos, sin: [B, T, Dh]`` (pairs ``(i, i + Dh/2)``)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)  # [B, H, T, Dh]
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


@dataclass(frozen=True)
class AttentionState:
    """The key/value cache of one attention layer for a batch of streams.

    Attributes:
        keys: ``[B, G, S, Dh]`` cached keys, RoPE already applied. With a sliding window ``S`` is at
            most ``window - 1`` (all a future query can still see), so decoding memory is bounded.
        values: ``[B, G, S, Dh]`` cached values.
        key_mask: ``[B, S]`` bool, True where the cached token is real (not padding); ``None`` when
            no padding has been seen.
        num_seen: tokens seen so far in the stream, pads included (the next token's column).
        next_position: ``[B]`` long, the RoPE position the next real token of each row gets.
    """

    keys: Tensor
    values: Tensor
    key_mask: Tensor | None
    num_seen: int
    next_position: Tensor

    def map(self, fn: Callable[[Tensor], Tensor]) -> AttentionState:
        """Apply ``fn`` to every batch-first tensor (e.g. ``lambda t: t[beam_idx]``)."""
        return replace(
            self,
            keys=fn(self.keys),
            values=fn(self.values),
            key_mask=None if self.key_mask is None else fn(self.key_mask),
            next_position=fn(self.next_position),
        )

    def detach(self) -> AttentionState:
        """The same state cut from the autograd graph (truncated backpropagation)."""
        return self.map(Tensor.detach)


class Attention(nn.Module):
    """Causal softmax attention ``softmax(q k^T / sqrt(Dh) + mask) v``.

    Vaswani et al., 2017, Eq. 1.

    Computed with ``F.scaled_dot_product_attention``; RoPE on q and k; ``num_kv_heads < num_heads``
    shares each key/value head among ``num_heads / num_kv_heads`` query heads (GQA, Ainslie et al.,
    2023). See the module docstring for the call contract and the masking rule.

    Args:
        hidden_size: model width D.
        num_heads: query heads H.
        num_kv_heads: key/value heads G (divides H); ``None`` means H (plain multi-head attention).
        head_dim: per-head width Dh (even); ``None`` means ``D // H``.
        window: sliding-window length (a query sees itself and the ``window - 1`` tokens before it),
            or ``None`` for global attention.
        rope_theta: RoPE frequency base.
        dropout: attention-probability dropout, applied in training mode only.
    """

    def __init__(
        self,
        hidden_size: int,
        *,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        window: int | None = None,
        rope_theta: float = 10000.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if hidden_size <= 0:
            raise ValueError(f"Attention hidden_size must be a positive integer, got {hidden_size}")
        if num_heads <= 0:
            raise ValueError(f"Attention num_heads must be a positive integer, got {num_heads}")
        if num_kv_heads <= 0 or num_heads % num_kv_heads != 0:
            raise ValueError(
                f"Attention num_kv_heads must be a positive divisor of num_heads={num_heads}, "
                f"got {num_kv_heads}"
            )
        if head_dim is None:
            if hidden_size % num_heads != 0:
                raise ValueError(
                    f"Attention hidden_size={hidden_size} must be divisible by "
                    f"num_heads={num_heads} when head_dim is not given"
                )
            head_dim = hidden_size // num_heads
        if window is not None and window < 1:
            raise ValueError(f"Attention window must be None or an integer >= 1, got {window}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Attention dropout must be in [0, 1), got {dropout}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.window = window
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        self.rotary = RotaryEmbedding(head_dim, base=rope_theta)

    def _mask(self, T: int, num_past: int, num_seen: int, key_mask: Tensor | None, *,
              device: torch.device) -> Tensor | None:
        """The attention mask (causal, sliding window, padding) or None when SDPA's causal
        flag suffices."""
        # Column indices of queries and keys in the stream (pads included).
        q_col = num_seen + torch.arange(T, device=device)  # [T]
        k_col = num_seen - num_past + torch.arange(num_past + T, device=device)  # [S + T]
        needs_mask = (
            num_past > 0 or key_mask is not None or (self.window is not None and T > self.window)
        )
        attn_mask = None
        if needs_mask:
            delta = q_col.unsqueeze(-1) - k_col.unsqueeze(0)  # [T, S + T]
            allowed = delta >= 0
            if self.window is not None:
                allowed = allowed & (delta < self.window)
            if key_mask is not None:
                # A padded query keeps its own key so that its softmax row is never empty.
                allowed = (allowed.unsqueeze(0) & key_mask.unsqueeze(1)) | (
                    delta == 0
                )  # [B, T, S + T]
            attn_mask = (
                allowed.unsqueeze(-3) if allowed.ndim == 3 else allowed
            )  # [B, 1, T, S+T] | [T, S+T]
        return attn_mask

    def forward(
        self,
        x: Tensor,
        *,
        state: AttentionState | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, AttentionState]:
        B, T, _ = x.shape
        H, G, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        new_mask = _new_token_mask(attention_mask, batch=B, num_new=T)  # [B, T] bool or None
        if state is not None and state.keys.shape[0] != B:
            raise ValueError(
                f"state batch size {state.keys.shape[0]} does not match x batch size {B}"
            )

        positions, next_position = _rope_positions(x, state, new_mask, position_ids)  # [B, T]

        q = self.q_proj(x).view(B, T, H, Dh).transpose(1, 2)  # [B, H, T, Dh]
        k = self.k_proj(x).view(B, T, G, Dh).transpose(1, 2)  # [B, G, T, Dh]
        v = self.v_proj(x).view(B, T, G, Dh).transpose(1, 2)  # [B, G, T, Dh]
        cos, sin = self.rotary(positions, dtype=q.dtype)  # [B, T, Dh]
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)

        num_past = 0 if state is None else state.keys.shape[2]
        num_seen = 0 if state is None else state.num_seen
        if state is not None:
            k = torch.cat([state.keys, k], dim=2)  # [B, G, S + T, Dh]
            v = torch.cat([state.values, v], dim=2)  # [B, G, S + T, Dh]
        key_mask = _concat_masks(
            None if state is None else state.key_mask,
            new_mask,
            batch=B,
            num_past=num_past,
            num_new=T,
        )  # [B, S + T] bool or None

        attn_mask = self._mask(T, num_past, num_seen, key_mask, device=x.device)

        k_h = k.repeat_interleave(H // G, dim=1) if G != H else k  # [B, H, S + T, Dh]
        v_h = v.repeat_interleave(H // G, dim=1) if G != H else v  # [B, H, S + T, Dh]
        out = F.scaled_dot_product_attention(
            q,
            k_h,
            v_h,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None,
        )  # [B, H, T, Dh]
        y = self.o_proj(out.transpose(1, 2).reshape(B, T, H * Dh))  # [B, T, D]

        keep = num_past + T if self.window is None else min(self.window - 1, num_past + T)
        first = num_past + T - keep
        new_state = AttentionState(
            keys=k[:, :, first:],
            values=v[:, :, first:],
            key_mask=None if key_mask is None else key_mask[:, first:],
            num_seen=num_seen + T,
            next_position=next_position,
        )
        return y, new_state

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"window={self.window}"
        )


def _new_token_mask(attention_mask: Tensor | None, *, batch: int, num_new: int) -> Tensor | None:
    """The padding mask of the ``num_new`` new tokens as ``[B, T]`` bool (``None`` if none given).

    An all-ones mask is kept rather than dropped: checking would cost a device sync per layer. The
    model drops it once per forward instead (``nestlearn.models.base``).
    """
    if attention_mask is None:
        return None
    if (
        attention_mask.ndim != 2
        or attention_mask.shape[0] != batch
        or attention_mask.shape[1] < num_new
    ):
        raise ValueError(
            f"attention_mask must be a 2-D [batch={batch}, T_total>={num_new}] 0/1 padding mask, "
            f"got shape {tuple(attention_mask.shape)}"
        )
    return attention_mask[:, attention_mask.shape[1] - num_new :].bool()  # [B, T]


def _concat_masks(
    past: Tensor | None, new: Tensor | None, *, batch: int, num_past: int, num_new: int
) -> Tensor | None:
    """Key mask ``[B, S + T]`` from the cached and new masks; ``None`` when every key is real."""
    if past is None and new is None:
        return None
    if past is None:
        past = torch.ones(batch, num_past, dtype=torch.bool, device=new.device)
    if new is None:
        new = torch.ones(batch, num_new, dtype=torch.bool, device=past.device)
    return torch.cat([past, new], dim=1)


def _rope_positions(x: Tensor, state, new_mask: Tensor | None,
                   position_ids: Tensor | None) -> tuple[Tensor, Tensor]:
    """RoPE positions ``[B, T]`` and the next position ``[B]``: real tokens are counted per row,
    continuing from the state, unless ``position_ids`` are given."""
    B, T, _ = x.shape
    if position_ids is None:
        start = (
            state.next_position
            if state is not None
            else torch.zeros(B, dtype=torch.long, device=x.device)
        )  # [B]
        if new_mask is None:
            offsets = torch.arange(T, device=x.device).expand(B, T)
            next_position = start + T
        else:
            offsets = (new_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
            next_position = start + new_mask.long().sum(dim=-1)
        positions = start.unsqueeze(-1) + offsets  # [B, T]
    else:
        if position_ids.ndim != 2 or position_ids.shape[-1] != T:
            raise ValueError(
                f"position_ids must have shape [B, {T}] or [1, {T}], "
                f"got {tuple(position_ids.shape)}"
            )
        positions = position_ids.to(x.device).expand(B, T)  # [B, T]
        next_position = positions[:, -1] + 1
    return positions, next_position

