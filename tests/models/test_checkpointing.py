"""Activation checkpointing (``model.gradient_checkpointing_enable()``): the loss and the gradient
of every parameter equal the run without it, also when a stream carries its state between calls;
and peak activation memory goes down. CPU, float64."""

from __future__ import annotations

import pytest
import torch

from nestlearn import HopeConfig, HopeForCausalLM, TitansConfig, TitansForCausalLM
from nestlearn.models.base import enable_activation_checkpointing
from nestlearn.models.transformer import TransformerConfig, TransformerForCausalLM

DT = torch.float64
V = 37
SMALL = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
MODELS = {
    "hope": lambda: HopeForCausalLM(HopeConfig(**SMALL, smt_chunk_size=4,
                                               smt_proj_chunk_size=4, cms_hidden_sizes=[8, 8])),
    "hope-cms-in-context": lambda: HopeForCausalLM(HopeConfig(
        **SMALL, smt_chunk_size=4, smt_proj_chunk_size=4, cms_hidden_sizes=[8, 8],
        cms_periods=[4, 8], cms_inner_lrs=[0.5, 0.25])),
    "hope_attention": lambda: HopeForCausalLM(HopeConfig(**SMALL, variant="hope_attention",
                                                         cms_hidden_sizes=[8, 8])),
    "titans-mag": lambda: TitansForCausalLM(TitansConfig(**SMALL, variant="mag", chunk_size=4,
                                                         sliding_window=5, intermediate_size=24)),
    "transformer": lambda: TransformerForCausalLM(TransformerConfig(**SMALL,
                                                                    intermediate_size=24)),
}


def _loss_and_grads(model, ids, mask, pieces):
    """Loss of a stream fed in ``pieces`` calls with the state carried (and differentiated
    through) between them, and the gradient of every parameter."""
    cache, total = None, 0.0
    bounds = [0, *pieces, ids.shape[1]]
    for lo, hi in zip(bounds, bounds[1:]):
        out = model(ids[:, lo:hi], attention_mask=mask[:, :hi], labels=ids[:, lo:hi],
                    past_key_values=cache, use_cache=True)
        total = total + out.loss
        cache = out.past_key_values
    params = [p for p in model.parameters() if p.requires_grad]
    return total, torch.autograd.grad(total, params, allow_unused=True)


@pytest.mark.parametrize("name", list(MODELS))
def test_checkpointing_gives_the_same_loss_and_gradients(name):
    torch.manual_seed(0)
    model = MODELS[name]().to(DT).train()
    ids = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :3] = 0  # a left-padded row
    loss, grads = _loss_and_grads(model, ids, mask, [6])
    enable_activation_checkpointing(model)
    assert all(block.gradient_checkpointing for block in model.model.layers)
    loss_ck, grads_ck = _loss_and_grads(model, ids, mask, [6])
    torch.testing.assert_close(loss_ck, loss, rtol=1e-12, atol=1e-12)
    for (n, p), a, b in zip(model.named_parameters(), grads, grads_ck):
        zero = torch.zeros_like(p)
        torch.testing.assert_close(zero if b is None else b, zero if a is None else a,
                                   rtol=1e-10, atol=1e-12, msg=lambda m, n=n: f"d/d{n}: {m}")
    model.activation_checkpointing_disable()
    assert not any(block.gradient_checkpointing for block in model.model.layers)


def test_checkpointing_recomputes_instead_of_storing(monkeypatch):
    """With checkpointing the backward pass runs each block's forward again and the saved
    activations shrink."""
    torch.manual_seed(0)
    model = MODELS["hope"]().train()
    ids = torch.randint(0, V, (2, 32))
    calls = []
    block_type = type(model.model.layers[0])
    forward = block_type.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(block_type, "forward", counted)

    def saved_bytes():
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(ids, labels=ids).loss
        loss.backward()
        return sum(total)

    plain = saved_bytes()
    assert len(calls) == 2  # two blocks, once each
    enable_activation_checkpointing(model)
    calls.clear()
    checkpointed = saved_bytes()
    assert len(calls) == 4  # forward, then the recomputation in backward
    assert checkpointed < plain / 2, (checkpointed, plain)
