"""nestlearn.layers: modules with parameters, free of ``transformers`` (see the package docstring).

Every sequence mixer follows one call contract (documented in ``layers/attention.py``)::

    y, new_state = mixer(x, state=None, attention_mask=None, position_ids=None)
"""

from nestlearn.layers.attention import Attention, AttentionState, RotaryEmbedding, apply_rotary
from nestlearn.layers.mlp import SwiGLU, swiglu_hidden_size
from nestlearn.layers.norm import RMSNorm

__all__ = [
    "Attention",
    "AttentionState",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "apply_rotary",
    "swiglu_hidden_size",
]
