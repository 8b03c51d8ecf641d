"""Transformer++ baseline (decision D10): the Llama architecture as a Hugging Face model.

embedding -> N x [x + Attention(RMSNorm(x)); x + SwiGLU(RMSNorm(x))] -> RMSNorm -> LM head.
Attention is causal softmax attention with RoPE (optionally sliding-window and grouped-query),
computed with ``F.scaled_dot_product_attention`` (``nestlearn.layers.attention``). The forward
passes, the ``LayerStateCache`` and ``generate()`` support come from ``nestlearn.models.base``;
this file only builds the modules and initialises them.

Dimension legend: B batch, T tokens, D model width.
"""

from __future__ import annotations

import math
from typing import ClassVar

from torch import Tensor, nn
from transformers import GenerationMixin

from nestlearn.layers.attention import Attention, AttentionState
from nestlearn.layers.mlp import SwiGLU
from nestlearn.layers.norm import RMSNorm
from nestlearn.models.base import CausalLMMixin, DecoderModelMixin, NestlearnPreTrainedModel
from nestlearn.models.transformer.configuration_transformer import TransformerConfig

try:
    # transformers 5: init functions that skip parameters already loaded from a checkpoint.
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4
    from torch.nn import init

__all__ = [
    "TransformerBlock",
    "TransformerForCausalLM",
    "TransformerModel",
    "TransformerPreTrainedModel",
]


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``.

    Follows the block contract of ``nestlearn.models.base``; its state is the attention's
    ``AttentionState``.
    """

    gradient_checkpointing = False  # set by model.gradient_checkpointing_enable()

    def __init__(self, config: TransformerConfig, *, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attn = Attention(
            config.hidden_size,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            window=config.sliding_window,
            rope_theta=config.rope_theta,
            dropout=config.attention_dropout,
        )
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, hidden_size=config.intermediate_size)

    def forward(
        self,
        hidden: Tensor,
        *,
        state: AttentionState | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, AttentionState]:
        mixed, state = self.attn(
            self.attn_norm(hidden),
            state=state,
            attention_mask=attention_mask,
            position_ids=position_ids,
        )
        hidden = hidden + mixed  # [B, T, D]
        hidden = hidden + self.mlp(self.mlp_norm(hidden))  # [B, T, D]
        return hidden, state


class TransformerPreTrainedModel(NestlearnPreTrainedModel):
    config_class = TransformerConfig
    config: TransformerConfig
    _no_split_modules: ClassVar[list[str]] = ["TransformerBlock"]
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        """The only place parameters of this model are initialised.

        | parameter                                   | init                                      |
        | ------------------------------------------- | ----------------------------------------- |
        | embeddings, q/k/v, MLP gate/up, LM head     | normal(0, initializer_range)              |
        | attention ``o_proj``, MLP ``down_proj``     | normal(0, initializer_range / sqrt(2 N))  |
        | RMSNorm gains                               | 1                                         |

        N is the number of blocks: the two residual writes per block are scaled down so the
        residual stream's variance does not grow with depth (GPT-2, Radford et al. 2019, sec. 2.3).
        ``transformers`` 5 calls this only on modules that own parameters directly (for custom code
        it skips parameter-free containers such as ``Attention``), so the residual projections are
        recognised by their path, ``*.attn.o_proj`` and ``*.mlp.down_proj``.
        """
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if _is_residual_projection(self, module):
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)


    def levels(self) -> list[dict]:
        """The model's levels (decision D1): attention, then pre-training."""
        from nestlearn.models.levels import transformer_levels

        return transformer_levels(self)

    @property
    def state_is_bounded(self) -> bool:
        """The KV cache has a fixed size only with a sliding window."""
        return self.config.sliding_window is not None


def _is_residual_projection(model: nn.Module, linear: nn.Linear) -> bool:
    """Whether ``linear`` is a block's output projection into the residual stream."""
    return any(
        m is linear and name.endswith(("attn.o_proj", "mlp.down_proj"))
        for name, m in model.named_modules()
    )


class TransformerModel(DecoderModelMixin, TransformerPreTrainedModel):
    """The decoder without the LM head; returns ``BaseModelOutputWithPast``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            TransformerBlock(config, layer_idx=i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()


class TransformerForCausalLM(CausalLMMixin, TransformerPreTrainedModel, GenerationMixin):
    """Transformer++ language model; returns ``CausalLMOutputWithPast`` (loss when given labels)."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.model = TransformerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
