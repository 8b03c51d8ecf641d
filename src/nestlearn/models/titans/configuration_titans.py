"""Configuration of the Titans baseline (Titans sections 3-4; decision D10).

Two variants: ``"lmm"`` (the neural long-term memory alone as the sequence mixer, followed by a
SwiGLU MLP; the "Titans (LMM)" rows of the papers' tables) and ``"mag"`` (memory as a gate:
sliding-window attention and the memory read the same input and are combined as
``RMSNorm(attn) * SiLU(RMSNorm(memory))``, Titans Eq. 26-28; persistent memory tokens are not
used). Presets share width, depth and vocabulary with Transformer++ and set ``intermediate_size``
so the parameter counts match (``nestlearn.models.presets``).
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from nestlearn.layers.mlp import swiglu_hidden_size
from nestlearn.models._checks import check_choice, check_number, check_positive_int

__all__ = ["TitansConfig"]


class TitansConfig(PreTrainedConfig):
    r"""Titans: a chunked neural memory (GD + momentum + retention) per block.

    Args:
        variant (`str`, defaults to `"lmm"`):
            `"lmm"` or `"mag"`.
        vocab_size (`int`, defaults to 4096):
            Number of token ids.
        hidden_size (`int`, defaults to 256):
            Model width D.
        num_hidden_layers (`int`, defaults to 4):
            Number of blocks.
        num_attention_heads (`int`, defaults to 4):
            Heads of the memory (and of the attention in `mag`).
        memory (`str`, defaults to `"residual_mlp"`):
            `"residual_mlp"` (deep memory, L_M = 2) or `"linear"`.
        memory_expansion (`int`, defaults to 2):
            Hidden width of the memory MLP in head widths.
        chunk_size (`int`, defaults to 16):
            Chunk size of the memory update.
        conv_size (`int`, defaults to 4):
            Window of the causal depthwise convolutions.
        lr_max (`float`, *optional*):
            Upper bound of the memory's inner learning rate theta. Default `1 / chunk_size`:
            the steps of a chunk are all taken at its start weights (Titans section 3.2), so
            along similar keys they add up to `chunk_size` steps (with `lr_max = 1` the tiny
            preset diverged: docs/stability.md).
        memory_objective (`str`, defaults to `"huber"`):
            The memory's inner objective: `"l2"` (Titans Eq. 12) or `"huber"`, the same l2
            regression with each token's error norm capped at `memory_huber_delta` (identical
            below the cap). Default `"huber"`, as for HOPE: with `"l2"` the tiny preset diverged
            (docs/stability.md).
        memory_huber_delta (`float`, defaults to 1.0):
            The cap of `memory_objective="huber"`.
        memory_read (`str`, defaults to `"chunk_start"`):
            `"chunk_start"` or `"per_token"`.
        intermediate_size (`int`, *optional*):
            SwiGLU hidden width; defaults to the Transformer++ rule (8/3 D rounded to 256).
        sliding_window (`int`, defaults to 512):
            Attention window of `mag`.
        rope_theta (`float`, defaults to 10000.0):
            RoPE base of the attention in `mag`.
        rms_norm_eps (`float`, defaults to 1e-6):
            RMSNorm epsilon.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of linear and embedding weights.
        tie_word_embeddings (`bool`, defaults to `False`):
            Share the input embedding with the output projection.
        use_cache (`bool`, defaults to `True`):
            Return a cache of the recurrent states from forward.
    """

    model_type = "nestlearn_titans"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    variant: str = "lmm"
    vocab_size: int = 4096
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    memory: str = "residual_mlp"
    memory_expansion: int = 2
    chunk_size: int = 16
    conv_size: int = 4
    lr_max: float | None = None
    memory_objective: str = "huber"
    memory_huber_delta: float = 1.0
    memory_read: str = "chunk_start"
    intermediate_size: int | None = None
    sliding_window: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        for name, allowed in (("variant", ("lmm", "mag")), ("memory", ("residual_mlp", "linear")),
                              ("memory_read", ("chunk_start", "per_token"))):
            check_choice(name, getattr(self, name), allowed)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "memory_expansion", "chunk_size", "conv_size", "sliding_window"):
            check_positive_int(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.intermediate_size is None:
            self.intermediate_size = swiglu_hidden_size(self.hidden_size)
        check_positive_int("intermediate_size", self.intermediate_size)
        if self.lr_max is None:  # chunk_size was checked above
            self.lr_max = 1.0 / self.chunk_size
        check_choice("memory_objective", self.memory_objective, ("l2", "huber"))
        for name in ("lr_max", "memory_huber_delta", "rope_theta", "rms_norm_eps"):
            check_number(name, getattr(self, name))
        check_number("initializer_range", self.initializer_range, strict=False)
        super().__post_init__(**kwargs)
