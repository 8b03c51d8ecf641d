"""HOPE and HOPE-Attention (NL section 8.3)."""

from nestlearn.models.hope.configuration_hope import HopeConfig
from nestlearn.models.hope.modeling_hope import (
    HopeBlock,
    HopeCache,
    HopeForCausalLM,
    HopeModel,
    HopePreTrainedModel,
)

__all__ = ["HopeBlock", "HopeCache", "HopeConfig", "HopeForCausalLM", "HopeModel",
           "HopePreTrainedModel"]
