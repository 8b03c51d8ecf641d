"""HOPE and HOPE-Attention as Hugging Face causal language models (NL section 8.3; D1, D7, D8).

embedding -> N x HopeBlock -> RMSNorm -> LM head, where a HopeBlock is

    x <- x + Mixer(RMSNorm(x))            Mixer = self-modifying Titans (hope) or attention
    x <- x + MLP_l(RMSNorm_l(x))  for each CMS level l, fastest first (Eq. 97)

In-context CMS levels (period P > 0, inner lr > 0) learn while the sequence is read (Eq. 71): the
forward pass walks the input in segments that end at every level's chunk boundary; after each
segment it takes the next-token loss of the token pairs inside the segment (summed, padding
excluded), backpropagates it through the whole network to the levels' per-sequence fast weights
(through every path inside the current chunk, including the recurrent states carried from its
earlier segments: the total derivative of the chunk's loss at the chunk-start weights), sums it
into each level's chunk gradient and, at a level's chunk end, applies ``W <- W - lr * sum``. A
pair that straddles two calls (streaming, or one token per decoding step)
is scored when its target arrives, from the log-probabilities kept in the cache, and counted for
the levels whose chunk it lies in. So the loss of a chunk is the same however the stream is cut,
and a chunk's update uses only tokens of that chunk (causal). ``cms_meta_grad`` decides whether
the outer gradient differentiates through the update (``second_order``) or not.

Dimension legend: B batch, T tokens, L tokens in a segment, D model width, V vocabulary.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from nestlearn.layers.attention import Attention
from nestlearn.layers.continuum_memory import CMSState, ContinuumMemory
from nestlearn.layers.norm import RMSNorm
from nestlearn.layers.self_modifying_titans import SelfModifyingTitans
from nestlearn.models.base import (
    CausalLMMixin,
    DecoderModelMixin,
    NestlearnPreTrainedModel,
    causal_lm_loss,
)
from nestlearn.models.cache import OUTPUT_CACHE_FIELD, LayerStateCache, pick_cache
from nestlearn.models.hope import parallelize
from nestlearn.models.hope.configuration_hope import HopeConfig
from nestlearn.models.initialization import init_module
from nestlearn.models.levels import SlowGroup

__all__ = ["HopeBlock", "HopeCache", "HopeForCausalLM", "HopeModel", "HopePreTrainedModel"]


class HopeBlock(nn.Module):
    """``x + Mixer(norm(x))`` then the CMS chain; state ``(mixer_state, CMSState)``."""

    gradient_checkpointing = False  # set by model.gradient_checkpointing_enable()

    def __init__(self, config: HopeConfig, *, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        D, H = config.hidden_size, config.num_attention_heads
        self.mixer_norm = RMSNorm(D, eps=config.rms_norm_eps)
        if config.variant == "hope":
            self.mixer = SelfModifyingTitans(D, H, **config.smt_layer_kwargs())
        else:
            self.mixer = Attention(D, num_heads=H, window=config.sliding_window,
                                   rope_theta=config.rope_theta)
        self.cms = ContinuumMemory(
            D, hidden_sizes=config.cms_hidden_sizes, periods=config.cms_periods,
            inner_lrs=config.cms_inner_lrs, variant=config.cms_variant, eps=config.rms_norm_eps,
        )

    def forward(
        self,
        hidden: Tensor,
        *,
        state: tuple[Any, CMSState] | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Any, CMSState]]:
        mixer_state, cms_state = (None, None) if state is None else state
        mixed, mixer_state = self.mixer(
            self.mixer_norm(hidden), state=mixer_state, attention_mask=attention_mask,
            position_ids=position_ids,
        )
        hidden, cms_state = self.cms(hidden + mixed, state=cms_state)  # [B, T, D]
        return hidden, (mixer_state, cms_state)


class HopeCache(LayerStateCache):
    """``LayerStateCache`` plus the log-probabilities of the last position seen, ``[B, V]``, whose
    target is the next call's first token (scored then for the in-context CMS levels)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__(num_layers)
        self.pending_logprobs: Tensor | None = None

    def map_states(self, fn) -> None:
        super().map_states(fn)
        if self.pending_logprobs is not None:
            self.pending_logprobs = fn(self.pending_logprobs)

    def detach(self) -> HopeCache:
        super().detach()
        if self.pending_logprobs is not None:
            self.pending_logprobs = self.pending_logprobs.detach()
        return self


class HopePreTrainedModel(NestlearnPreTrainedModel):
    config_class = HopeConfig
    config: HopeConfig
    _no_split_modules = ["HopeBlock"]
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        """The only place parameters are initialised: ``nestlearn.models.initialization``."""
        init_module(self, module)

    def levels(self) -> list[dict[str, Any]]:
        """The model's levels (decision D1), from the fastest to the slowest."""
        from nestlearn.models.levels import hope_levels

        return hope_levels(self)

    def slow_parameter_groups(self) -> list[SlowGroup]:
        """One group per slow CMS level (``cms_periods[l] > 0`` with ``cms_inner_lrs[l] == 0``):
        the level's MLP weights and norm gain in every layer, updated by the outer optimizer
        once every ``cms_periods[l]`` training tokens (NL Eq. 71)."""
        names = {id(p): n for n, p in self.named_parameters()}
        groups = []
        for level, (period, lr) in enumerate(zip(self.config.cms_periods,
                                                 self.config.cms_inner_lrs, strict=True)):
            if period <= 0 or lr > 0:
                continue
            params = []
            for block in self.base_model.layers:
                cms_level = block.cms.levels[level]
                for p in (*cms_level.weights(), *cms_level.norm.parameters()):
                    params.append((names[id(p)], p))
            groups.append(SlowGroup(name=f"cms level {level}", period=period, params=params))
        return groups

    def fsdp_units(self) -> list[nn.Module]:
        """Every block, or only its mixer when it has in-context CMS levels (``parallelize``)."""
        return parallelize.fsdp_units(self)

    @property
    def takes_inner_grads(self) -> bool:
        """True with in-context CMS levels (``parallelize.takes_inner_grads``)."""
        return parallelize.takes_inner_grads(self)

    @property
    def state_is_bounded(self) -> bool:
        """HOPE's memories have fixed sizes; HOPE-Attention's KV cache only with a window."""
        return self.config.variant == "hope" or self.config.sliding_window is not None


class HopeModel(DecoderModelMixin, HopePreTrainedModel):
    """The HOPE decoder without the LM head; returns ``BaseModelOutputWithPast``."""

    def __init__(self, config: HopeConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            HopeBlock(config, layer_idx=i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()


class HopeForCausalLM(CausalLMMixin, HopePreTrainedModel, GenerationMixin):
    """HOPE language model; returns ``CausalLMOutputWithPast`` (loss when given labels).

    With in-context CMS levels the forward pass learns while it reads (module docstring) and
    needs ``input_ids`` (the targets of the inner loss); ``past_key_values`` is a ``HopeCache``.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HopeConfig) -> None:
        super().__init__(config)
        self.model = HopeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

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
        past_key_values = pick_cache(past_key_values, cache)  # `cache` from transformers 5.24
        if not self.config.has_in_context_cms:
            return super().forward(
                input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                use_cache=use_cache, output_hidden_states=output_hidden_states,
                return_dict=return_dict, logits_to_keep=logits_to_keep, **kwargs,
            )
        if input_ids is None:
            raise ValueError("in-context CMS levels need input_ids (their inner loss targets)")
        if output_hidden_states:
            raise ValueError("output_hidden_states is not supported with in-context CMS levels")
        return_dict = self.config.return_dict if return_dict is None else return_dict
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = past_key_values
        if cache is None:
            cache = HopeCache(self.config.num_hidden_layers)
        elif not isinstance(cache, HopeCache):
            raise TypeError(
                f"past_key_values must be a HopeCache for in-context CMS, "
                f"got {type(cache).__name__}"
            )
        logits = self._read_and_learn(input_ids, attention_mask, position_ids, cache)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            logits = logits[:, -logits_to_keep:]
        elif not isinstance(logits_to_keep, int):
            logits = logits[:, logits_to_keep]
        out = CausalLMOutputWithPast(loss=loss, logits=logits,
                                     **{OUTPUT_CACHE_FIELD: cache if use_cache else None})
        return out if return_dict else out.to_tuple()

    def _read_and_learn(self, input_ids, attention_mask, position_ids, cache: HopeCache) -> Tensor:
        """The segment walk of the module docstring; returns the logits ``[B, T, V]``."""
        B, T = input_ids.shape
        outer_grad = torch.is_grad_enabled()
        create_graph = outer_grad and self.config.cms_meta_grad == "second_order"
        blocks = self.model.layers
        schedule = blocks[0].cms
        past = cache.get_seq_length()
        if attention_mask is not None and attention_mask.shape[1] != past + T:
            raise ValueError(
                f"attention_mask must cover the {past} cached and {T} new tokens, got "
                f"{attention_mask.shape[1]} columns"
            )
        real = (torch.ones(B, past + T, dtype=torch.bool, device=input_ids.device)
                if attention_mask is None else attention_mask.to(torch.bool))
        outs = []
        a = 0
        with torch.enable_grad():
            while a < T:
                pos = past + a
                b = min(T, a + schedule.next_boundary(pos))
                flat = []
                for i, block in enumerate(blocks):
                    mixer_state, cms_state = (None, None) if cache[i] is None else cache[i]
                    cms_state = block.cms.initial_state() if cms_state is None else cms_state
                    cms_state, tensors = block.cms.fast_tensors(cms_state, B, leaf=not outer_grad)
                    cache[i] = (mixer_state, cms_state)
                    flat.append(tensors)
                # Second-order meta-gradients need double-differentiable attention: the fused CPU
                # SDPA kernels have no double backward, the math backend does.
                with (sdpa_kernel(SDPBackend.MATH) if create_graph else nullcontext()):
                    hidden = self.model(
                        input_ids[:, a:b],
                        attention_mask=(None if attention_mask is None
                                        else attention_mask[:, :pos + b - a]),
                        position_ids=None if position_ids is None else position_ids[:, a:b],
                        past_key_values=cache, use_cache=True,
                    ).last_hidden_state
                logits = self.lm_head(hidden)  # [B, L, V]
                logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)),
                                     dim=-1)
                # pairs inside the segment: position t predicts t + 1
                ids = input_ids[:, a:b]
                inner = -(logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
                          * (real[:, pos:pos + b - a - 1] & real[:, pos + 1:pos + b - a])).sum()
                grads = self._grads(inner, flat, create_graph)
                if cache.pending_logprobs is not None and pos > 0:
                    # the pair (pos - 1 -> pos) straddles the call boundary
                    term = -(cache.pending_logprobs.gather(-1, ids[:, :1]).squeeze(-1)
                             * (real[:, pos - 1] & real[:, pos])).sum()
                    straddle = self._grads(term, flat, create_graph, boundary=pos)
                    grads = [[g + s for g, s in zip(gb, sb)] for gb, sb in zip(grads, straddle)]
                for i, block in enumerate(blocks):
                    mixer_state, cms_state = cache[i]
                    cms_state = block.cms.apply_update(cms_state, grads[i], b - a,
                                                       leaf=not outer_grad)
                    cache[i] = (mixer_state, cms_state)
                cache.pending_logprobs = logp[:, -1]
                outs.append(logits if outer_grad else logits.detach())
                a = b
        if not outer_grad and schedule.at_rest(past + T):
            # Inference at a point where no in-context level is inside a chunk: drop the graphs
            # the states carry (within a chunk they are needed: the chunk's loss is
            # differentiated through every path back to the chunk-start fast weights, so the
            # gradient does not depend on how the stream was cut into calls). The graph kept is
            # therefore bounded by the longest period.
            cache.pending_logprobs = cache.pending_logprobs.detach()
            for i in range(len(blocks)):
                mixer_state, cms_state = cache[i]
                cache[i] = (None if mixer_state is None else mixer_state.detach(), cms_state)
        return torch.cat(outs, dim=1)

    def _grads(self, loss: Tensor, flat: list[list[Tensor]], create_graph: bool,
               boundary: int | None = None) -> list[list[Tensor]]:
        """d loss / d fast weights, per block (zeros where unused). With ``boundary``, levels
        whose chunk starts at ``boundary`` get zeros: the pair belongs to their previous chunk."""
        keep = []
        for block, tensors in zip(self.model.layers, flat):
            ctx = block.cms.in_context
            for j in range(len(tensors)):
                level = ctx[j // 3]
                skip = boundary is not None and boundary % block.cms.periods[level] == 0
                keep.append(not skip)
        targets = [t for ts in flat for t in ts]
        wanted = [t for t, k in zip(targets, keep) if k]
        got = iter(torch.autograd.grad(loss, wanted, create_graph=create_graph,
                                       retain_graph=True, allow_unused=True) if wanted else [])
        result, it = [], iter(keep)
        for tensors in flat:
            row = []
            for t in tensors:
                g = next(got) if next(it) else None
                row.append(torch.zeros_like(t) if g is None else g)
            result.append(row)
        return result
