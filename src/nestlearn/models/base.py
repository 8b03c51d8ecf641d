"""Hugging Face plumbing shared by every nestlearn causal language model.

A model = ``embed_tokens`` -> blocks -> final ``norm`` -> ``lm_head``. A concrete model (the
Transformer++ baseline, HOPE, Titans) writes only its config, its blocks, its ``_init_weights`` and
two short ``__init__`` methods; the forward passes, the cache, the loss and ``generate()`` support
come from here::

    class HopePreTrainedModel(NestlearnPreTrainedModel):
        config_class = HopeConfig
        _no_split_modules = ["HopeBlock"]
        def _init_weights(self, module): ...           # the one place parameters are initialised

    class HopeModel(DecoderModelMixin, HopePreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
            self.layers = nn.ModuleList(HopeBlock(config, layer_idx=i) for i in range(n))
            self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.post_init()

    class HopeForCausalLM(CausalLMMixin, HopePreTrainedModel, GenerationMixin):
        def __init__(self, config):
            super().__init__(config)
            self.model = HopeModel(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            self.post_init()

The mixins come first in the bases so that their ``forward`` wins over ``nn.Module.forward``;
``GenerationMixin`` must appear literally in the bases of the ``ForCausalLM`` class (that is how
``PreTrainedModel.can_generate`` detects it in ``transformers`` 5).

Block contract (the same as a sequence mixer's in ``nestlearn.layers``)::

    hidden, new_state = block(hidden, state=state, attention_mask=attention_mask,
                              position_ids=position_ids)

``hidden: [B, T, D]``; ``state`` is the block's entry of the ``LayerStateCache`` (``None`` at the
start of a stream); ``attention_mask`` is ``None`` (every new token is real) or the ``[B, T]`` 0/1
padding mask of the *new* tokens: the model slices the ``[B, T_total]`` mask that ``generate()``
passes, so a block that needs to know about earlier padding must keep it in its state (as
``AttentionState.key_mask`` does). Padded tokens must not change a block's state or any real
token's output. ``position_ids`` is ``[B, T]`` or ``None`` (blocks without positional encoding
ignore it). The returned state is stored for the next call when caching.

Training hooks (``NestlearnPreTrainedModel``): the training loop asks a model for its FSDP2
units (``fsdp_units()``), whether its forward takes inner gradients (``takes_inner_grads``), its
slow levels (``slow_parameter_groups()``, ``nestlearn.models.levels.SlowGroup``) and whether its
state is bounded (``state_is_bounded``), so the loop never branches on a family.

Dimension legend: B batch, T new tokens, D model width, V vocabulary.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from nestlearn.models.cache import OUTPUT_CACHE_FIELD, LayerStateCache, pick_cache
from nestlearn.models.levels import SlowGroup

__all__ = [
    "CausalLMMixin",
    "DecoderModelMixin",
    "NestlearnPreTrainedModel",
    "causal_lm_loss",
    "enable_activation_checkpointing",
]


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Turn on activation checkpointing of every block (``activation_checkpointing_enable``, or
    its older name ``gradient_checkpointing_enable`` on transformers releases without it). The
    blocks always use the non-reentrant variant (see ``DecoderModelMixin.forward``)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()


class NestlearnPreTrainedModel(PreTrainedModel):
    """Base of every nestlearn model: the cache policy that ``generate()`` relies on.

    Subclasses set ``config_class``, ``_no_split_modules`` and ``_init_weights``.
    """

    base_model_prefix = "model"
    main_input_name = "input_ids"
    _skip_keys_device_placement: ClassVar[list[str]] = ["past_key_values", "cache"]
    # States cannot be rolled back, so assisted (speculative) decoding is refused by generate().
    _is_stateful = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # Stop generate() from building a DynamicCache: our forward builds a LayerStateCache.
        return False

    # What the training loop asks a model (nestlearn.train), so that the loop never branches on
    # a family. The defaults fit a model whose blocks are self-contained and whose state is
    # bounded; a model overrides the ones that differ.

    def fsdp_units(self) -> list[nn.Module]:
        """The modules FSDP2 shards one by one (``fully_shard``, then the root): every block."""
        return list(self.base_model.layers)

    @property
    def takes_inner_grads(self) -> bool:
        """Whether the forward itself differentiates a loss (``torch.autograd.grad`` inside it);
        under FSDP2 the loop then reshards explicitly (``nestlearn.train.distributed``)."""
        return False

    def slow_parameter_groups(self) -> list[SlowGroup]:
        """The levels the outer optimizer updates once per period of training tokens rather than
        at every step, with their parameters (``nestlearn.train.levels`` schedules them)."""
        return []

    @property
    def state_is_bounded(self) -> bool:
        """Whether the recurrent state has a fixed size however many tokens it has read (false
        for a global-attention KV cache); ``data.mode=stream`` carries it across windows."""
        return True


def check_input_ids(input_ids: Any, vocab_size: int) -> None:
    """``input_ids`` is an integer tensor ``[batch, tokens]`` with at least one token and every
    id in ``[0, vocab_size)``; ``ValueError``/``TypeError`` saying which part is wrong."""
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex \
            or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be an integer tensor (torch.long), got {input_ids.dtype}")
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError("input_ids must be 2-D [batch, tokens] with at least one token, got "
                         f"shape {tuple(input_ids.shape)}")
    if input_ids.numel():
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"input_ids must be token ids in [0, {vocab_size - 1}] (the "
                             f"vocabulary), got values from {low} to {high}")


class DecoderModelMixin:
    """``forward`` of the base model: ``embed_tokens`` -> ``layers`` (blocks) -> ``norm``.

    ``hidden_states`` (when requested) are the input of every block followed by the final,
    normalised output, ``num_layers + 1`` tensors in all.
    """

    def forward(
        self,
        input_ids: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: LayerStateCache | None = None,
        cache: LayerStateCache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if kwargs.get("output_attentions"):
            raise ValueError("output_attentions is not supported by nestlearn models")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        output_hidden_states = (
            self.config.output_hidden_states
            if output_hidden_states is None
            else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict

        if inputs_embeds is None:
            check_input_ids(input_ids, self.config.vocab_size)
            inputs_embeds = self.embed_tokens(input_ids)  # [B, T, D]
        T = inputs_embeds.shape[1]
        attention_mask = _new_tokens_mask(attention_mask, T)
        cache = self._layer_cache(pick_cache(past_key_values, cache), use_cache=use_cache)

        hidden = inputs_embeds
        all_hidden: tuple[Tensor, ...] = ()
        for i, block in enumerate(self.layers):
            if output_hidden_states:
                all_hidden += (hidden,)
            hidden, new_state = self._run_block(
                block, hidden, state=None if cache is None else cache[i],
                attention_mask=attention_mask, position_ids=position_ids)
            if cache is not None:
                cache[i] = new_state
        hidden = self.norm(hidden)  # [B, T, D]
        if output_hidden_states:
            all_hidden += (hidden,)
        if cache is not None:
            cache.advance(T)

        out = BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=all_hidden if output_hidden_states else None,
            **{OUTPUT_CACHE_FIELD: cache},
        )
        return out if return_dict else out.to_tuple()

    def _layer_cache(self, cache: Any, *, use_cache: bool) -> LayerStateCache | None:
        """The cache this call reads and writes: the one passed (checked), a new one when
        ``use_cache`` asks for it, else None. (``cache`` is the transformers 5.24 name.)"""
        if cache is not None and not isinstance(cache, LayerStateCache):
            raise TypeError(
                f"past_key_values must be a nestlearn LayerStateCache, got {type(cache).__name__}"
            )
        if cache is None and use_cache:
            cache = LayerStateCache(len(self.layers))
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(
                f"past_key_values holds {len(cache)} layer states but the model has "
                f"{len(self.layers)} layers"
            )
        return cache

    def _run_block(self, block, hidden: Tensor, **block_kwargs: Any) -> tuple[Tensor, Any]:
        if getattr(block, "gradient_checkpointing", False) and self.training and (
            torch.is_grad_enabled()
        ):
            # Activation checkpointing (``model.gradient_checkpointing_enable()``): keep the
            # block's input, recompute its forward in the backward pass. Always the
            # non-reentrant variant: a block also returns its recurrent state, whose
            # tensors the reentrant variant would cut from the graph.
            return torch.utils.checkpoint.checkpoint(
                block, hidden, use_reentrant=False, **block_kwargs
            )
        return block(hidden, **block_kwargs)


def _new_tokens_mask(attention_mask: Tensor | None, T: int) -> Tensor | None:
    """The ``[B, T]`` padding mask of the ``T`` new tokens, or None when all of them are real."""
    if attention_mask is None:
        return None
    if attention_mask.ndim != 2 or attention_mask.shape[1] < T:
        raise ValueError(
            f"attention_mask must be the 2-D [batch, tokens>={T}] 0/1 padding mask, "
            f"got shape "
            f"{tuple(attention_mask.shape)}"
        )
    attention_mask = attention_mask[:, -T:]  # [B, T]
    if bool(attention_mask.all()):
        # All new tokens are real. Block states remember earlier padding themselves, so the
        # mask carries no information and dropping it lets blocks take unmasked fast paths.
        return None
    return attention_mask


class CausalLMMixin:
    """``forward`` of the language model: ``self.model`` then ``self.lm_head``, plus the loss.

    ``labels: [B, T]`` are the input ids themselves (shifted inside, ``-100`` ignored);
    ``logits_to_keep`` (an int ``k > 0``: the last ``k`` positions, or a 1-D index tensor) limits
    the positions whose logits are computed, which ``generate()`` sets to 1.
    """

    def forward(
        self,
        input_ids: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: LayerStateCache | None = None,
        cache: LayerStateCache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=pick_cache(past_key_values, cache),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden = outputs.last_hidden_state  # [B, T, D]
        if isinstance(logits_to_keep, int):
            if logits_to_keep < 0:
                raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
            if logits_to_keep > 0:
                hidden = hidden[:, -logits_to_keep:]
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)  # [B, T_kept, V]

        loss = None
        if labels is not None:
            if logits.shape[1] != labels.shape[1]:
                raise ValueError(
                    f"labels cover {labels.shape[1]} positions but logits were kept for "
                    f"{logits.shape[1]}; use logits_to_keep=0 with labels"
                )
            loss = causal_lm_loss(logits, labels)

        out = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{OUTPUT_CACHE_FIELD: getattr(outputs, OUTPUT_CACHE_FIELD)},
        )
        return out if return_dict else out.to_tuple()


def causal_lm_loss(logits: Tensor, labels: Tensor, *, ignore_index: int = -100) -> Tensor:
    """Mean next-token cross-entropy: position ``t`` predicts ``labels[:, t + 1]``.

    Computed in fp32 or wider."""
    shifted = logits[:, :-1].flatten(0, 1)  # [B * (T - 1), V]
    targets = labels[:, 1:].flatten().to(logits.device)  # [B * (T - 1)]
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(shifted.to(compute_dtype), targets, ignore_index=ignore_index)
