"""The Titans baseline (LMM and MAG)."""

from nestlearn.models.titans.configuration_titans import TitansConfig
from nestlearn.models.titans.modeling_titans import (
    TitansBlock,
    TitansForCausalLM,
    TitansModel,
    TitansPreTrainedModel,
)

__all__ = ["TitansBlock", "TitansConfig", "TitansForCausalLM", "TitansModel",
           "TitansPreTrainedModel"]
