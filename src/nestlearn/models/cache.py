"""``LayerStateCache``: the ``past_key_values`` object of every nestlearn model.

It holds one opaque state per block (a key/value ``AttentionState``, a ``MemoryState``, a tuple of
them, anything) plus the number of tokens seen, and does not look inside the states. Blocks follow
the contract of ``nestlearn.layers`` (``y, new_state = block(x, state=..., ...)``); the model reads
``cache[i]``, calls block ``i``, writes ``cache[i] = new_state``, then ``cache.advance(T)``.

How it works with ``transformers`` 5 ``generate()`` (read from ``generation/utils.py``, 5.x):

- ``GenerationMixin._prepare_cache_for_generation`` builds a ``DynamicCache`` (key/value tensors
  per layer) unless the model's classmethod ``_supports_default_dynamic_cache()`` returns False.
  ``NestlearnPreTrainedModel`` returns False, so ``generate`` creates no cache; the first forward
  (``use_cache=True``) builds a ``LayerStateCache`` and returns it as ``outputs.past_key_values``,
  and ``_update_model_kwargs_for_generation`` passes that object back on every later step. A
  cache given by the user (``generate(..., past_key_values=cache)``) is used as is; ``_prefill``
  then calls ``cache.get_seq_length()`` to drop the prompt tokens the cache has already seen.
- After the prefill, ``generate`` feeds only the last token (``next_sequence_length = 1``), the
  full 2-D ``attention_mask`` grown by one column per step, and ``position_ids`` derived from the
  mask (``cumsum - 1``), so left padding is handled by the model, not by the cache.
  ``cache_position`` no longer exists in ``transformers`` 5 and is not used.
- The object is duck-typed rather than a ``transformers.Cache`` subclass: ``Cache`` is a list of
  key/value ``CacheLayerMixin`` layers, which recurrent memories are not. ``generate`` reads only
  ``is_compileable`` (False: no 4-D mask building, no auto-compile), ``get_seq_length()``,
  ``is_croppable`` (False), ``is_linear`` (5.24+: all False, see there) and, for beam search,
  ``reorder_cache(beam_idx)``.
- ``transformers`` 5.24 renamed the cache argument and output field ``past_key_values`` to
  ``cache`` (the old name still works, with a deprecation warning). The models accept both
  arguments (:func:`pick_cache`) and fill whichever field the installed version's output classes
  have (:data:`OUTPUT_CACHE_FIELD`); read a cache from an output with :func:`output_cache`.
- States cannot be rolled back, so models set ``_is_stateful = True`` and ``generate`` refuses
  assisted (speculative) decoding with a clear error; greedy, sampling and beam search work.

A state stored here should provide ``map(fn)`` (apply ``fn`` to every batch-first tensor and return
the same kind of state) for beam search and batch selection, and ``detach()`` for truncated
backpropagation; tuples/lists of such states and ``None`` are handled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import Tensor
from transformers.modeling_outputs import CausalLMOutputWithPast

__all__ = ["OUTPUT_CACHE_FIELD", "LayerStateCache", "output_cache", "pick_cache"]

OUTPUT_CACHE_FIELD = ("cache"
                      if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
                      else "past_key_values")
"""The cache field of ``transformers``' output classes: ``cache`` from 5.24, ``past_key_values``
before."""


def pick_cache(past_key_values: Any = None, cache: Any = None) -> Any:
    """The cache passed to a forward as ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the cache once: as cache= or as past_key_values=, not both")
    return past_key_values if cache is None else cache


def output_cache(output: Any) -> Any:
    """The cache of a model output, whichever ``transformers`` 5.x version built it."""
    return getattr(output, OUTPUT_CACHE_FIELD)


class LayerStateCache:
    """One opaque state per block, plus the number of tokens (pads included) seen so far.

    Args:
        num_layers: number of blocks of the model (``config.num_hidden_layers``).
    """

    is_compileable = False
    is_croppable = False

    @property
    def is_linear(self) -> list[bool]:
        """Per layer False (read by ``generate`` from transformers 5.24): with an all-True list
        ``generate`` would stop dropping the prompt tokens a user-given cache has already seen.
        The states are recurrent, but they count tokens exactly like a key/value cache."""
        return [False] * len(self.states)

    def __init__(self, num_layers: int) -> None:
        if num_layers <= 0:
            raise ValueError(
                f"LayerStateCache num_layers must be a positive integer, got {num_layers}"
            )
        self.states: list[Any] = [None] * num_layers
        self.num_seen_tokens = 0

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, layer_idx: int) -> Any:
        return self.states[layer_idx]

    def __setitem__(self, layer_idx: int, state: Any) -> None:
        self.states[layer_idx] = state

    def __repr__(self) -> str:
        kinds = ", ".join(type(s).__name__ for s in self.states)
        return f"LayerStateCache(num_seen_tokens={self.num_seen_tokens}, states=[{kinds}])"

    def advance(self, num_new_tokens: int) -> None:
        """Record that the model has consumed ``num_new_tokens`` more tokens.

        Call once per forward.
        """
        self.num_seen_tokens += num_new_tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen so far (the ``transformers`` name); ``layer_idx`` is accepted and ignored."""
        return self.num_seen_tokens

    def map_states(self, fn: Callable[[Tensor], Tensor]) -> None:
        """Apply ``fn`` to every batch-first tensor of every state, in place of the old states."""
        self.states = [_map_state(s, fn) for s in self.states]

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Select batch rows ``beam_idx`` (beam search calls this after each step)."""
        self.map_states(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep only the batch rows ``indices``."""
        self.map_states(lambda t: t[indices.to(t.device)])

    def detach(self) -> LayerStateCache:
        """Cut every state from the autograd graph, in place; returns ``self``."""
        self.states = [_detach_state(s) for s in self.states]
        return self


def _map_state(state: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(_map_state(s, fn) for s in state)
    if hasattr(state, "map"):
        return state.map(fn)
    raise TypeError(
        f"cannot map over a state of type {type(state).__name__}: give it a map(fn) method"
    )


def _detach_state(state: Any) -> Any:
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(_detach_state(s) for s in state)
    if hasattr(state, "detach"):
        return state.detach()
    raise TypeError(
        f"cannot detach a state of type {type(state).__name__}: give it a detach() method"
    )
