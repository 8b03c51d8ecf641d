"""nestlearn.models: Hugging Face-compatible causal language models (see the package docstring).

Importing this package registers every model with ``AutoConfig`` / ``AutoModel`` /
``AutoModelForCausalLM`` (its only side effect), so ``AutoModelForCausalLM.from_pretrained`` loads
a saved nestlearn checkpoint once ``nestlearn`` is imported.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from nestlearn.models.base import (
    CausalLMMixin,
    DecoderModelMixin,
    NestlearnPreTrainedModel,
    causal_lm_loss,
)
from nestlearn.models.cache import LayerStateCache
from nestlearn.models.transformer import (
    TRANSFORMER_PRESETS,
    TransformerConfig,
    TransformerForCausalLM,
    TransformerModel,
)

AutoConfig.register(TransformerConfig.model_type, TransformerConfig, exist_ok=True)
AutoModel.register(TransformerConfig, TransformerModel, exist_ok=True)
AutoModelForCausalLM.register(TransformerConfig, TransformerForCausalLM, exist_ok=True)

__all__ = [
    "TRANSFORMER_PRESETS",
    "CausalLMMixin",
    "DecoderModelMixin",
    "LayerStateCache",
    "NestlearnPreTrainedModel",
    "TransformerConfig",
    "TransformerForCausalLM",
    "TransformerModel",
    "causal_lm_loss",
]
