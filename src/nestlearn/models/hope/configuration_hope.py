"""Configuration of HOPE and HOPE-Attention (NL section 8.3, Eq. 94-97; decisions D4-D8).

HOPE block (D8): ``x <- x + SMT(norm(x))``, then for each CMS level ``x <- x + MLP_l(norm_l(x))``.
HOPE-Attention replaces self-modifying Titans (SMT) by causal softmax attention with RoPE.

CMS levels are lists, fastest first. ``cms_periods[l]`` is the level's update period in tokens of
its context flow (D1, D7):

* ``0``: updated by the outer optimizer at every step (an ordinary MLP);
* ``> 0`` with ``cms_inner_lrs[l] > 0``: an in-context level, updated inside the forward pass at the
  end of each chunk of that many tokens with the gradient of the chunk's next-token loss (Eq. 71);
* ``> 0`` with ``cms_inner_lrs[l] == 0``: a slow level, updated by the outer optimizer once every
  ``period`` training tokens (the training loop accumulates its gradients in between).

The settings of the SMT layer are the fields ``smt_<name>``, one per keyword argument ``<name>``
of ``SelfModifyingTitans`` (``SMT_SETTINGS``; ``HopeConfig.smt_layer_kwargs()`` is the mapping).
Configs saved before the prefix (``chunk_size``, ``eta_max``, ... see ``LEGACY_NAMES``) still load,
with a ``FutureWarning`` per old name; saving writes the new names.

Presets (``nestlearn.models.presets.preset_config("hope", size)``) use the Transformer++ presets'
width, depth and vocabulary (the paper's 340M-1.3B shapes) and size the CMS so the total
parameter count matches the Transformer++ of the same preset (within 1.3%); see
``nestlearn.models.presets`` for the counts.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from typing import Any

import huggingface_hub
import transformers
from transformers import PreTrainedConfig

from nestlearn.models._checks import check_choice, check_number, check_positive_int

__all__ = ["LEGACY_NAMES", "SMT_SETTINGS", "HopeConfig"]

VARIANTS = ("hope", "hope_attention")

SMT_SETTINGS = (
    "expansion", "chunk_size", "proj_chunk_size", "conv_size", "eta_max", "rule", "objective",
    "huber_delta", "momentum", "retention", "q_projection", "write_grad",
)
"""Keyword arguments of ``SelfModifyingTitans`` that the config sets, from field ``smt_<name>``."""

LEGACY_NAMES = {
    "memory_expansion": "smt_expansion",
    "chunk_size": "smt_chunk_size",
    "proj_chunk_size": "smt_proj_chunk_size",
    "conv_size": "smt_conv_size",
    "eta_max": "smt_eta_max",
    "q_projection": "smt_q_projection",
    "write_grad": "smt_write_grad",
}
"""Old field name -> new name, for configs saved before the ``smt_`` prefix."""


def _warn_renamed(old: str) -> None:
    # Point the warning at the first caller outside this module and the transformers /
    # huggingface_hub config machinery (the user's constructor, from_pretrained or attribute).
    skip = (__file__, os.path.dirname(transformers.__file__),
            os.path.dirname(huggingface_hub.__file__))
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        level, frame = level + 1, frame.f_back
    warnings.warn(f"HopeConfig: {old} -> {LEGACY_NAMES[old]} (the old name is deprecated)",
                  FutureWarning, stacklevel=level)


def _rename_legacy_fields(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with every old field name replaced by its new name (warning once per name)."""
    for old, new in LEGACY_NAMES.items():
        if old not in kwargs:
            continue
        value = kwargs.pop(old)
        if new in kwargs and kwargs[new] != value:
            raise ValueError(
                f"{old} (old name of {new}) = {value!r} conflicts with {new} = {kwargs[new]!r}; "
                f"pass only {new}"
            )
        _warn_renamed(old)
        kwargs[new] = value
    return kwargs


def _accept_legacy_names(cls: type[HopeConfig]) -> type[HopeConfig]:
    """Let ``cls(**kwargs)`` (and so ``from_dict`` / ``from_pretrained``) take the old field names,
    and keep the old names as deprecated attribute aliases of the new ones."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **_rename_legacy_fields(kwargs))

    cls.__init__ = __init__
    for old, new in LEGACY_NAMES.items():
        setattr(cls, old, _alias(old, new))
    return cls


def _alias(old: str, new: str) -> property:
    def get(self: HopeConfig) -> Any:
        _warn_renamed(old)
        return getattr(self, new)

    def set_(self: HopeConfig, value: Any) -> None:
        _warn_renamed(old)
        setattr(self, new, value)

    return property(get, set_, doc=f"Deprecated name of ``{new}``.")


@_accept_legacy_names

class HopeConfig(PreTrainedConfig):
    r"""HOPE: self-modifying Titans + Continuum Memory System as a causal language model.

    Args:
        variant (`str`, defaults to `"hope"`):
            `"hope"` (SMT + CMS) or `"hope_attention"` (attention + CMS).
        vocab_size (`int`, defaults to 4096):
            Number of token ids.
        hidden_size (`int`, defaults to 256):
            Model width D.
        num_hidden_layers (`int`, defaults to 4):
            Number of HOPE blocks.
        num_attention_heads (`int`, defaults to 4):
            Heads H of the memories (and of attention in `hope_attention`).
        smt_expansion (`int`, defaults to 2):
            Hidden width of every SMT memory MLP, in head widths (D4).
        smt_chunk_size (`int`, defaults to 16):
            Chunk size of the main memory (D6).
        smt_proj_chunk_size (`int`, defaults to 16):
            Chunk size of the projection memories (D6).
        smt_conv_size (`int`, defaults to 4):
            Window of the causal depthwise convolutions on q, k, v.
        smt_eta_max (`float`, *optional*):
            Upper bound of the memories' inner learning rate (eta = smt_eta_max sigmoid(.)).
            Default: `1 / max(smt_chunk_size, smt_proj_chunk_size)`. Within a chunk every token's
            step is taken at the chunk-start weights (Eq. 90), so up to C steps add up along
            similar keys; the DGD normalisation (Eq. 57) keeps one token's step stable, and this
            bound keeps the chunk's summed step within one such step (the measured divergence
            without it: docs/stability.md).
        smt_rule (`str`, defaults to `"dgd"`):
            Inner optimizer of the memories: `"dgd"` (D5) or `"gd"`.
        smt_objective (`str`, defaults to `"huber"`):
            The memories' inner objective: `"l2"` (Eq. 85-88, literally) or `"huber"`: the same
            l2 regression with each token's error norm capped at `smt_huber_delta` (Miras'
            robust objective). Below the cap the two are identical; the cap bounds the step
            when a self-generated target (Eq. 84) runs away. Default `"huber"`: with `"l2"` the
            tiny preset's memories diverged (docs/stability.md).
        smt_huber_delta (`float`, defaults to 1.0):
            The cap of `smt_objective="huber"`.
        smt_momentum (`str`, defaults to `"learned"`):
            `"learned"` or `"none"`.
        smt_retention (`str`, defaults to `"learned"`):
            `"learned"` or `"none"`.
        smt_q_projection (`str`, defaults to `"static"`):
            `"static"` (Eq. 83) or `"adaptive"` (a memory, Eq. 96).
        smt_write_grad (`str`, defaults to `"full"`):
            Backpropagation through memory writes: `"full"` (D3) or `"detach"` (cut at chunk
            ends; chunk ends inside a row's left padding do not cut, so a padded row's
            gradient still reaches the meta-learned initial memories).
        cms_hidden_sizes (`list[int]`, defaults to `[256, 256]`):
            Hidden width of each CMS level, fastest first.
        cms_periods (`list[int]`, defaults to `[0, 0]`):
            Update period of each level in tokens (see the module docstring).
        cms_inner_lrs (`list[float]`, defaults to `[0.0, 0.0]`):
            In-context learning rate of each level. In-context levels update the whole batch at
            the same positions, so a left-padded row equals its sequence alone when its pad
            count is a multiple of every in-context level's period (the memories of SMT anchor
            each row's chunks at its first token for any pad count). Shared positions keep
            inference memory bounded: the states keep their graph while any row is inside a
            chunk (the chunk gradient runs through them), and with per-row positions some row
            always would be.
        cms_variant (`str`, defaults to `"sequential"`):
            `"sequential"` (Eq. 73), `"nested"` (Eq. 72) or `"independent"` (Eq. 74).
        cms_meta_grad (`str`, defaults to `"second_order"`):
            How the outer gradient passes an in-context CMS update `W - lr * G`: `"second_order"`
            differentiates through `G` (exact, D3); `"first_order"` treats `G` as a constant
            (cheaper approximation, first-order MAML).
        sliding_window (`int`, *optional*):
            Attention window of `hope_attention` (`None`: global).
        rope_theta (`float`, defaults to 10000.0):
            RoPE base of `hope_attention`.
        rms_norm_eps (`float`, defaults to 1e-6):
            RMSNorm epsilon.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of linear, embedding and CMS weights.
        tie_word_embeddings (`bool`, defaults to `False`):
            Share the input embedding with the output projection.
        use_cache (`bool`, defaults to `True`):
            Return a cache of the recurrent states from forward.
    """

    model_type = "hope"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    variant: str = "hope"
    vocab_size: int = 4096
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    smt_expansion: int = 2
    smt_chunk_size: int = 16
    smt_proj_chunk_size: int = 16
    smt_conv_size: int = 4
    smt_eta_max: float | None = None
    smt_rule: str = "dgd"
    smt_objective: str = "huber"
    smt_huber_delta: float = 1.0
    smt_momentum: str = "learned"
    smt_retention: str = "learned"
    smt_q_projection: str = "static"
    smt_write_grad: str = "full"
    cms_hidden_sizes: list[int] | None = None
    cms_periods: list[int] | None = None
    cms_inner_lrs: list[float] | None = None
    cms_variant: str = "sequential"
    cms_meta_grad: str = "second_order"
    sliding_window: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        check_choice("variant", self.variant, VARIANTS)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "smt_expansion", "smt_chunk_size", "smt_proj_chunk_size", "smt_conv_size"):
            check_positive_int(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.variant == "hope_attention" and (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("hope_attention needs an even head width (RoPE rotates pairs)")
        check_choice("smt_rule", self.smt_rule, ("dgd", "gd"))
        check_choice("smt_objective", self.smt_objective, ("l2", "huber"))
        check_choice("smt_momentum", self.smt_momentum, ("learned", "none"))
        check_choice("smt_retention", self.smt_retention, ("learned", "none"))
        check_choice("smt_q_projection", self.smt_q_projection, ("static", "adaptive"))
        check_choice("smt_write_grad", self.smt_write_grad, ("full", "detach"))
        check_choice("cms_variant", self.cms_variant, ("sequential", "nested", "independent"))
        check_choice("cms_meta_grad", self.cms_meta_grad, ("second_order", "first_order"))
        if self.cms_hidden_sizes is None:
            self.cms_hidden_sizes = [self.hidden_size, self.hidden_size]
        self.cms_hidden_sizes = list(self.cms_hidden_sizes)
        k = len(self.cms_hidden_sizes)
        if k < 1:
            raise ValueError("cms_hidden_sizes must name at least one CMS level")
        if self.cms_periods is None:
            self.cms_periods = [0] * k
        if self.cms_inner_lrs is None:
            self.cms_inner_lrs = [0.0] * k
        self.cms_periods, self.cms_inner_lrs = list(self.cms_periods), list(self.cms_inner_lrs)
        if len(self.cms_periods) != k or len(self.cms_inner_lrs) != k:
            raise ValueError(
                f"cms_hidden_sizes, cms_periods and cms_inner_lrs must have the same length, got "
                f"{k}, {len(self.cms_periods)}, {len(self.cms_inner_lrs)}"
            )
        for i, (h, p, lr) in enumerate(zip(self.cms_hidden_sizes, self.cms_periods,
                                           self.cms_inner_lrs)):
            check_positive_int(f"cms_hidden_sizes[{i}]", h)
            if isinstance(p, bool) or not isinstance(p, int) or p < 0:
                raise ValueError(f"cms_periods[{i}] must be an integer >= 0, got {p!r}")
            check_number(f"cms_inner_lrs[{i}]", lr, strict=False)
            if lr > 0 and p == 0:
                raise ValueError(
                    f"cms_inner_lrs[{i}] = {lr} needs cms_periods[{i}] > 0 (an in-context level "
                    "updates at the end of each chunk of that many tokens)"
                )
        ctx = [p for p, lr in zip(self.cms_periods, self.cms_inner_lrs) if p and lr]
        if ctx != sorted(ctx):
            raise ValueError(
                f"in-context CMS levels must be listed fastest first (non-decreasing periods), "
                f"got periods {ctx}"
            )
        if self.smt_eta_max is None:  # chunk sizes were checked above
            self.smt_eta_max = 1.0 / max(self.smt_chunk_size, self.smt_proj_chunk_size)
        for name in ("smt_eta_max", "smt_huber_delta", "rope_theta", "rms_norm_eps"):
            check_number(name, getattr(self, name))
        if self.sliding_window is not None:
            check_positive_int("sliding_window", self.sliding_window)
        check_number("initializer_range", self.initializer_range, strict=False)
        super().__post_init__(**kwargs)

    def smt_layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``SelfModifyingTitans`` (after width and heads): field
        ``smt_<name>`` gives argument ``<name>``, for every name in ``SMT_SETTINGS``."""
        return {name: getattr(self, f"smt_{name}") for name in SMT_SETTINGS}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def has_in_context_cms(self) -> bool:
        return any(p and lr for p, lr in zip(self.cms_periods, self.cms_inner_lrs))
