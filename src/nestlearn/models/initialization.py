"""The one initialisation routine of the recurrent models (HOPE, HOPE-Attention, Titans).

``transformers`` 5 calls a model's ``_init_weights(module)`` on every module that owns
parameters directly, in an order we do not control, and its ``initialization`` functions skip
tensors loaded from a checkpoint. ``init_module`` gives the same result whatever the order:
memory layers (self-modifying Titans, the Titans memory) initialise themselves and everything
inside them; every other module is initialised by its type.

| parameter                                               | init                               |
| ------------------------------------------------------- | ---------------------------------- |
| embeddings, q/k/v and MLP gate/up projections, LM head  | N(0, r^2)                          |
| writes into the residual stream (attention ``o_proj``,  | N(0, r^2 / (2 N))                  |
| MLP ``down_proj``, CMS ``w_down``, memory output proj.) |                                    |
| memory layers' own parameters                           | their ``reset_parameters``         |
| causal convolutions                                   | ``CausalDepthwiseConv.reset_parameters`` |
| RMSNorm gains                                           | 1                                  |

r is ``config.initializer_range`` and N the number of blocks (GPT-2's depth scaling).
"""

from __future__ import annotations

import math

from torch import nn

from nestlearn.layers.continuum_memory import CMSLevel, ContinuumMemory
from nestlearn.layers.conv import CausalDepthwiseConv
from nestlearn.layers.norm import RMSNorm
from nestlearn.layers.self_modifying_titans import SelfModifyingTitans
from nestlearn.layers.titans_memory import TitansMemory

try:
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4
    from torch.nn import init

__all__ = ["init_module"]

_SELF_INITIALISING = (SelfModifyingTitans, TitansMemory)
_RESIDUAL_SUFFIXES = ("attn.o_proj", "mixer.o_proj", "mlp.down_proj")


def init_module(model: nn.Module, module: nn.Module) -> None:
    """Initialise ``module`` of ``model`` (the body of ``_init_weights``; table above)."""
    std = model.config.initializer_range
    out_std = std / math.sqrt(2 * model.config.num_hidden_layers)
    if isinstance(module, _SELF_INITIALISING):
        module.reset_parameters(init, out_std=out_std)
    elif isinstance(module, CMSLevel):
        init.normal_(module.w_gate, mean=0.0, std=std)
        init.normal_(module.w_up, mean=0.0, std=std)
        init.normal_(module.w_down, mean=0.0, std=out_std)
    elif isinstance(module, ContinuumMemory) and module.variant == "independent":
        init.constant_(module.mix, 1.0 / len(module.levels))
    elif _inside_memory_layer(model, module):
        return
    elif isinstance(module, CausalDepthwiseConv):
        module.reset_parameters(init)
    elif isinstance(module, nn.Linear):
        residual = any(m is module and name.endswith(_RESIDUAL_SUFFIXES)
                       for name, m in model.named_modules())
        init.normal_(module.weight, mean=0.0, std=out_std if residual else std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, RMSNorm):
        init.ones_(module.weight)


def _inside_memory_layer(model: nn.Module, module: nn.Module) -> bool:
    """Whether ``module`` belongs to a memory layer (which initialises its own submodules)."""
    return any(
        isinstance(layer, _SELF_INITIALISING) and layer is not module
        and any(m is module for m in layer.modules())
        for layer in model.modules()
    )
