"""Configuration of the Transformer++ baseline (decision D10): a Llama-style decoder-only LM.

Fields are typed class attributes (the ``transformers`` 5 dataclass-style ``PreTrainedConfig``);
derived defaults are filled and every field is checked in ``__post_init__``, which the generated
``__init__`` runs, so an invalid value raises ``ValueError`` naming the field at construction.

Presets (``TransformerConfig.from_preset(name)``) follow spec section 5.4: ``tiny`` trains on a
CPU in minutes (D11); ``340M``, ``760M`` and ``1.3B`` are the GPT-3-style shapes of the Titans / fla
line of work with vocabulary 32000 and untied embeddings; ``task`` is the small model of the
synthetic tasks (``nestlearn.eval.runner``), whose vocabulary (a task's characters plus special
tokens) is set per task. Parameter counts: ``num_parameters()``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PreTrainedConfig

from nestlearn.layers.mlp import swiglu_hidden_size
from nestlearn.models._checks import check_number, check_positive_int

__all__ = ["TRANSFORMER_PRESETS", "TransformerConfig"]

TRANSFORMER_PRESETS: dict[str, dict[str, Any]] = {
    "task": {
        "vocab_size": 32,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
    "tiny": {
        "vocab_size": 4096,
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
    },
    "340M": {
        "vocab_size": 32000,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
    },
    "760M": {
        "vocab_size": 32000,
        "hidden_size": 1536,
        "num_hidden_layers": 24,
        "num_attention_heads": 24,
    },
    "1.3B": {
        "vocab_size": 32000,
        "hidden_size": 2048,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
    },
}


class TransformerConfig(PreTrainedConfig):
    r"""Transformer++: RMSNorm pre-norm blocks, SwiGLU MLP, RoPE, causal SDPA attention.

    Args:
        vocab_size (`int`, defaults to 4096):
            Number of token ids.
        hidden_size (`int`, defaults to 256):
            Model width D.
        num_hidden_layers (`int`, defaults to 4):
            Number of blocks.
        num_attention_heads (`int`, defaults to 4):
            Query heads H.
        num_key_value_heads (`int`, *optional*):
            Key/value heads (grouped-query attention); divides `num_attention_heads`. Defaults to
            it.
        head_dim (`int`, *optional*):
            Per-head width, even. Defaults to `hidden_size // num_attention_heads`.
        intermediate_size (`int`, *optional*):
            SwiGLU hidden width. Defaults to 8/3 `hidden_size` rounded up to a multiple of 256.
        sliding_window (`int`, *optional*):
            Every layer attends to itself and the `sliding_window - 1` previous tokens; `None` is
            global attention. Bounds the decoding cache to `sliding_window - 1` tokens.
        rope_theta (`float`, defaults to 10000.0):
            RoPE frequency base.
        rms_norm_eps (`float`, defaults to 1e-6):
            RMSNorm epsilon.
        attention_dropout (`float`, defaults to 0.0):
            Dropout on attention probabilities (training only).
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of linear and embedding weights.
        tie_word_embeddings (`bool`, defaults to `False`):
            Share the input embedding with the output projection (the paper's setting is untied).
        use_cache (`bool`, defaults to `True`):
            Return a `LayerStateCache` from forward unless told otherwise.
    """

    model_type = "nestlearn_transformer"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values", "cache"]

    vocab_size: int = 4096
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    sliding_window: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            check_positive_int(name, getattr(self, name))
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        check_positive_int("num_key_value_heads", self.num_key_value_heads)
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_key_value_heads must divide num_attention_heads={self.num_attention_heads}, "
                f"got {self.num_key_value_heads}"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(
                    "hidden_size must be divisible by "
                    f"num_attention_heads={self.num_attention_heads} "
                    f"when head_dim is not set, got {self.hidden_size}"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        check_positive_int("head_dim", self.head_dim)
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even (RoPE rotates pairs), got {self.head_dim}")
        if self.intermediate_size is None:
            self.intermediate_size = swiglu_hidden_size(self.hidden_size)
        check_positive_int("intermediate_size", self.intermediate_size)
        if self.sliding_window is not None:
            check_positive_int("sliding_window", self.sliding_window)
        for name in ("rope_theta", "rms_norm_eps"):
            check_number(name, getattr(self, name))
        check_number("initializer_range", self.initializer_range, strict=False)
        if (
            isinstance(self.attention_dropout, bool)
            or not isinstance(self.attention_dropout, (int, float))
            or not 0.0 <= self.attention_dropout < 1.0
        ):
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout!r}")
        super().__post_init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TransformerConfig:
        """The preset ``name`` (one of ``TRANSFORMER_PRESETS``) with ``overrides`` applied."""
        if name not in TRANSFORMER_PRESETS:
            raise ValueError(f"preset must be one of {sorted(TRANSFORMER_PRESETS)}, got {name!r}")
        return cls(**{**TRANSFORMER_PRESETS[name], **overrides})

    def num_parameters(self) -> int:
        """Parameter count of ``TransformerForCausalLM`` with this config, computed analytically."""
        D, V = self.hidden_size, self.vocab_size
        q_width = self.num_attention_heads * self.head_dim
        kv_width = self.num_key_value_heads * self.head_dim
        attention = D * q_width + 2 * D * kv_width + q_width * D
        mlp = 3 * D * self.intermediate_size
        block = attention + mlp + 2 * D  # two RMSNorm gains
        embeddings = V * D * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_hidden_layers * block + D  # final RMSNorm gain
