"""nestlearn.models.base + LayerStateCache with a recurrent (non key/value) block.

A toy model whose blocks carry an exponential moving average ``h_t = a h_{t-1} + (1 - a) x_t`` as
their state stands in for HOPE: the plumbing must thread any opaque state through forward calls,
``generate()`` (greedy, sampling, beam search) and left padding, without knowing what it holds.

Dimension legend: B batch, T tokens, D width.
"""

import pytest
import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig

from nestlearn.layers import RMSNorm
from nestlearn.models import (
    CausalLMMixin,
    DecoderModelMixin,
    LayerStateCache,
    NestlearnPreTrainedModel,
)

V = 41


class ToyConfig(PreTrainedConfig):
    model_type = "nestlearn_test_toy_ema"
    vocab_size: int = V
    hidden_size: int = 16
    num_hidden_layers: int = 2
    use_cache: bool = True


class EMABlock(nn.Module):
    """``y = x + W h`` with ``h`` the running average of ``x`` over real tokens.

    State ``h: [B, D]``.
    """

    def __init__(self, dim):
        super().__init__()
        self.decay_logit = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, *, state=None, attention_mask=None, position_ids=None):
        B, T, D = x.shape
        a = torch.sigmoid(self.decay_logit)  # [D]
        h = x.new_zeros(B, D) if state is None else state  # [B, D]
        real = (
            torch.ones(B, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        outs = []
        for t in range(T):
            updated = a * h + (1 - a) * x[:, t]
            h = torch.where(real[:, t : t + 1], updated, h)  # padding leaves the state unchanged
            outs.append(h)
        return x + self.proj(torch.stack(outs, dim=1)), h


class ToyPreTrainedModel(NestlearnPreTrainedModel):
    config_class = ToyConfig

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.5)
        elif isinstance(module, EMABlock):
            nn.init.normal_(module.decay_logit)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class ToyModel(DecoderModelMixin, ToyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            EMABlock(config.hidden_size) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size)
        self.post_init()


class ToyForCausalLM(CausalLMMixin, ToyPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = ToyModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


@pytest.fixture
def model():
    return ToyForCausalLM(ToyConfig()).to(torch.float64).eval()


def test_streaming_and_decode_equal_one_pass(model):
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :4])
        pieces, cache = [out.logits], out.past_key_values
        assert isinstance(cache, LayerStateCache) and cache[0].shape == (2, 16)
        for t in range(4, 9):
            pieces.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-12, atol=1e-12)


def test_generate_greedy_and_beam_match_cache_free_runs(model):
    ids = torch.randint(0, V, (2, 5))
    for extra in ({}, {"num_beams": 3, "num_return_sequences": 2}):
        kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, **extra}
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
        torch.testing.assert_close(cached, uncached, rtol=0, atol=0)


def test_generate_left_padded_equals_alone_and_sampling_runs(model):
    seqs = [torch.randint(1, V, (n,)) for n in (5, 2)]
    ids = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.zeros(2, 5, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, 5 - len(s) :] = s
        mask[i, 5 - len(s) :] = 1
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0
    )
    for i, s in enumerate(seqs):
        alone = model.generate(s.unsqueeze(0), max_new_tokens=5, do_sample=False, pad_token_id=0)
        torch.testing.assert_close(out[i, 5:], alone[0, len(s) :], rtol=0, atol=0)
    sampled = model.generate(
        ids, attention_mask=mask, max_new_tokens=5, do_sample=True, pad_token_id=0
    )
    assert sampled.shape == (2, 10) and ((sampled >= 0) & (sampled < V)).all()


def test_assisted_generation_is_refused(model):
    ids = torch.randint(0, V, (1, 3))
    with pytest.raises(ValueError, match="stateful"):
        model.generate(ids, assistant_model=model, max_new_tokens=2, pad_token_id=0)


def test_cache_detach_and_select():
    cache = LayerStateCache(2)
    w = torch.randn(3, 4, requires_grad=True)
    cache[0] = (w * 2, None)
    cache[1] = w * 3
    cache.batch_select_indices(torch.tensor([2, 0]))
    torch.testing.assert_close(cache[1], (w * 3)[[2, 0]])
    assert cache.detach() is cache and not cache[0][0].requires_grad and cache[0][1] is None
    cache[1] = object()
    with pytest.raises(TypeError, match="map"):
        cache.reorder_cache(torch.tensor([0]))
