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
from nestlearn.models.hope import HopeCache, HopeConfig, HopeForCausalLM, HopeModel
from nestlearn.models.levels import format_levels
from nestlearn.models.titans import TitansConfig, TitansForCausalLM, TitansModel
from nestlearn.models.transformer import (
    TRANSFORMER_PRESETS,
    TransformerConfig,
    TransformerForCausalLM,
    TransformerModel,
)

for _config, _model, _lm in (
    (TransformerConfig, TransformerModel, TransformerForCausalLM),
    (HopeConfig, HopeModel, HopeForCausalLM),
    (TitansConfig, TitansModel, TitansForCausalLM),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForCausalLM.register(_config, _lm, exist_ok=True)

__all__ = [
    "TRANSFORMER_PRESETS",
    "CausalLMMixin",
    "DecoderModelMixin",
    "HopeCache",
    "HopeConfig",
    "HopeForCausalLM",
    "HopeModel",
    "LayerStateCache",
    "TitansConfig",
    "TitansForCausalLM",
    "TitansModel",
    "format_levels",
    "NestlearnPreTrainedModel",
    "TransformerConfig",
    "TransformerForCausalLM",
    "TransformerModel",
    "causal_lm_loss",
]
