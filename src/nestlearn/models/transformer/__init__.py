"""The Transformer++ baseline (decision D10)."""

from nestlearn.models.transformer.configuration_transformer import (
    TRANSFORMER_PRESETS,
    TransformerConfig,
)
from nestlearn.models.transformer.modeling_transformer import (
    TransformerBlock,
    TransformerForCausalLM,
    TransformerModel,
    TransformerPreTrainedModel,
)

__all__ = [
    "TRANSFORMER_PRESETS",
    "TransformerBlock",
    "TransformerConfig",
    "TransformerForCausalLM",
    "TransformerModel",
    "TransformerPreTrainedModel",
]
