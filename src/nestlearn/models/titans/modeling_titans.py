"""Titans baseline as a Hugging Face causal language model (Titans sections 3-4; decision D10).

``lmm``: ``x <- x + LMM(norm(x))``, ``x <- x + SwiGLU(norm(x))``.
``mag``: ``h = norm(x)``, ``x <- x + RMSNorm(SWA(h)) * SiLU(RMSNorm(LMM(h)))`` (Titans Eq. 26-28,
without persistent tokens), then the SwiGLU MLP. The memory layer is
``nestlearn.layers.TitansMemory``; its state (the memory, not a growing KV cache) is the cache.

Dimension legend: B batch, T tokens, D model width.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin

from nestlearn.layers.attention import Attention
from nestlearn.layers.mlp import SwiGLU
from nestlearn.layers.norm import RMSNorm
from nestlearn.layers.titans_memory import TitansMemory
from nestlearn.models.base import CausalLMMixin, DecoderModelMixin, NestlearnPreTrainedModel
from nestlearn.models.initialization import init_module
from nestlearn.models.titans.configuration_titans import TitansConfig

__all__ = ["TitansBlock", "TitansForCausalLM", "TitansModel", "TitansPreTrainedModel"]


class TitansBlock(nn.Module):
    """One Titans block; state: the memory's ``TitansState`` (lmm) or ``(attention, memory)``."""

    gradient_checkpointing = False  # set by model.gradient_checkpointing_enable()

    def __init__(self, config: TitansConfig, *, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.variant = config.variant
        D, H = config.hidden_size, config.num_attention_heads
        self.mixer_norm = RMSNorm(D, eps=config.rms_norm_eps)
        self.memory = TitansMemory(
            D, H, memory=config.memory, expansion=config.memory_expansion,
            chunk_size=config.chunk_size, conv_size=config.conv_size, lr_max=config.lr_max,
            objective=config.memory_objective, huber_delta=config.memory_huber_delta,
            read=config.memory_read,
        )
        if config.variant == "mag":
            self.attn = Attention(D, num_heads=H, window=config.sliding_window,
                                  rope_theta=config.rope_theta)
            self.attn_out_norm = RMSNorm(D, eps=config.rms_norm_eps)
            self.memory_out_norm = RMSNorm(D, eps=config.rms_norm_eps)
        self.mlp_norm = RMSNorm(D, eps=config.rms_norm_eps)
        self.mlp = SwiGLU(D, hidden_size=config.intermediate_size)

    def forward(
        self,
        hidden: Tensor,
        *,
        state: Any = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, Any]:
        h = self.mixer_norm(hidden)
        if self.variant == "lmm":
            mixed, state = self.memory(h, state=state, attention_mask=attention_mask)
        else:
            attn_state, mem_state = (None, None) if state is None else state
            y, attn_state = self.attn(h, state=attn_state, attention_mask=attention_mask,
                                      position_ids=position_ids)
            m, mem_state = self.memory(h, state=mem_state, attention_mask=attention_mask)
            mixed = self.attn_out_norm(y) * F.silu(self.memory_out_norm(m))
            state = (attn_state, mem_state)
        hidden = hidden + mixed  # [B, T, D]
        return hidden + self.mlp(self.mlp_norm(hidden)), state


class TitansPreTrainedModel(NestlearnPreTrainedModel):
    config_class = TitansConfig
    config: TitansConfig
    _no_split_modules = ["TitansBlock"]
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        """The only place parameters are initialised: ``nestlearn.models.initialization``."""
        init_module(self, module)

    def levels(self) -> list[dict[str, Any]]:
        """The model's levels (decision D1), from the fastest to the slowest."""
        from nestlearn.models.levels import titans_levels

        return titans_levels(self)


class TitansModel(DecoderModelMixin, TitansPreTrainedModel):
    """The Titans decoder without the LM head."""

    def __init__(self, config: TitansConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            TitansBlock(config, layer_idx=i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()


class TitansForCausalLM(CausalLMMixin, TitansPreTrainedModel, GenerationMixin):
    """Titans language model; returns ``CausalLMOutputWithPast`` (loss when given labels)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TitansConfig) -> None:
        super().__init__(config)
        self.model = TitansModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
