"""Transformer++ as a Hugging Face model.

Covers cache, padding, generate(), save/load, Auto classes, config.

Dimension legend: B batch, T tokens, V vocabulary.
"""

import math
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from nestlearn import TransformerConfig, TransformerForCausalLM
from nestlearn.models import TRANSFORMER_PRESETS, LayerStateCache, TransformerModel

V = 97


def tiny_config(**overrides):
    kwargs = {
        "vocab_size": V,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "initializer_range": 0.2,
    }
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def make_model(**overrides):
    model = TransformerForCausalLM(tiny_config(**overrides)).to(torch.float64).eval()
    # Non-trivial norm gains, so a skipped or misplaced norm changes the logits.
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "eps"):
                module.weight.copy_(1 + 0.3 * torch.randn_like(module.weight))
    return model


MODEL_VARIANTS = [
    pytest.param({}, id="global"),
    pytest.param({"sliding_window": 3}, id="window3"),
    pytest.param({"num_key_value_heads": 2, "sliding_window": 5}, id="gqa-window5"),
]
TOL = {"rtol": 1e-9, "atol": 1e-9}


def left_padded(seqs):
    """Left-pad a list of 1-D id tensors with id 0: ``ids, mask: [B, T_max]``."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = s
        mask[i, width - len(s) :] = 1
    return ids, mask


@pytest.mark.parametrize("overrides", MODEL_VARIANTS)
def test_causal(overrides):
    model = make_model(**overrides)
    ids = torch.randint(0, V, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % V
    with torch.no_grad():
        a = model(ids).logits
        b = model(changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("overrides", MODEL_VARIANTS)
def test_prefill_then_decode_equals_full_forward(overrides):
    model = make_model(**overrides)
    ids = torch.randint(0, V, (2, 11))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits  # [B, T, V]
        out = model(ids[:, :6], use_cache=True)
        logits = [out.logits]
        cache = out.past_key_values
        for t in range(6, 11):
            out = model(ids[:, t : t + 1], past_key_values=cache)
            assert out.past_key_values is cache
            logits.append(out.logits)
    assert cache.get_seq_length() == 11
    torch.testing.assert_close(torch.cat(logits, dim=1), full, **TOL)


@pytest.mark.parametrize("overrides", MODEL_VARIANTS)
@pytest.mark.parametrize("splits", [(3, 4, 1, 2), (1,) * 10, (7, 3)], ids=str)
def test_streaming_in_pieces_equals_one_pass(overrides, splits):
    model = make_model(**overrides)
    ids = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        cache, pieces, start = None, [], 0
        for n in splits:
            out = model(ids[:, start : start + n], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            pieces.append(out.logits)
            start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL)


@pytest.mark.parametrize("overrides", MODEL_VARIANTS)
def test_left_padded_batch_equals_each_sequence_alone(overrides):
    model = make_model(**overrides)
    seqs = [torch.randint(1, V, (n,)) for n in (7, 4, 6)]
    ids, mask = left_padded(seqs)
    with torch.no_grad():
        # Prefill the padded prompts, then decode 3 tokens with the cache and a growing mask.
        out = model(ids, attention_mask=mask, use_cache=True)
        cache = out.past_key_values
        steps = torch.randint(1, V, (3, 3))  # [B, steps]
        decoded = []
        for s in range(3):
            mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
            decoded.append(
                model(steps[:, s : s + 1], attention_mask=mask, past_key_values=cache).logits
            )
        for i, seq in enumerate(seqs):
            alone = model(torch.cat([seq, steps[i]]).unsqueeze(0)).logits[0]  # [T_i + 3, V]
            n = len(seq)
            torch.testing.assert_close(out.logits[i, -n:], alone[:n], **TOL)
            torch.testing.assert_close(torch.cat([d[i] for d in decoded]), alone[n:], **TOL)


def manual_greedy(model, ids, num_new):
    ids = ids.clone()
    with torch.no_grad():
        for _ in range(num_new):
            next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    return ids


@pytest.mark.parametrize("overrides", MODEL_VARIANTS)
def test_generate_greedy_equals_manual_argmax_loop(overrides):
    model = make_model(**overrides)
    ids = torch.randint(0, V, (2, 5))
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 13)
    torch.testing.assert_close(out, manual_greedy(model, ids, 8), rtol=0, atol=0)


def test_generate_left_padded_equals_each_prompt_alone():
    model = make_model(sliding_window=4)
    seqs = [torch.randint(1, V, (n,)) for n in (6, 3)]
    ids, mask = left_padded(seqs)
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0
    )
    for i, seq in enumerate(seqs):
        alone = model.generate(seq.unsqueeze(0), max_new_tokens=6, do_sample=False, pad_token_id=0)
        torch.testing.assert_close(out[i, ids.shape[1] :], alone[0, len(seq) :], rtol=0, atol=0)


@pytest.mark.parametrize("decoding", ["beam", "greedy"])
def test_generate_with_cache_equals_without(decoding):
    """Beam search reorders the cache (LayerStateCache.reorder_cache).

    It must match a cache-free run.
    """
    model = make_model(sliding_window=5)
    ids = torch.randint(0, V, (2, 4))
    kwargs = {"max_new_tokens": 7, "do_sample": False, "pad_token_id": 0}
    if decoding == "beam":
        kwargs.update(num_beams=3, num_return_sequences=2)
    with_cache = model.generate(ids, use_cache=True, **kwargs)
    without = model.generate(ids, use_cache=False, **kwargs)
    torch.testing.assert_close(with_cache, without, rtol=0, atol=0)


def test_generate_sampling_runs_and_is_seeded():
    model = make_model()
    ids = torch.randint(0, V, (2, 4))
    kwargs = {
        "max_new_tokens": 10,
        "do_sample": True,
        "top_k": 20,
        "temperature": 1.5,
        "pad_token_id": 0,
    }
    torch.manual_seed(1)
    a = model.generate(ids, num_return_sequences=2, **kwargs)
    torch.manual_seed(1)
    b = model.generate(ids, num_return_sequences=2, **kwargs)
    assert a.shape == (4, 14)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a[:, :4], ids.repeat_interleave(2, dim=0), rtol=0, atol=0)
    assert ((a >= 0) & (a < V)).all()
    greedy = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert not torch.equal(a[::2], greedy)


def test_generate_continues_from_a_user_cache():
    model = make_model(sliding_window=4)
    ids = torch.randint(0, V, (1, 6))
    cache = LayerStateCache(model.config.num_hidden_layers)
    with torch.no_grad():
        model(ids[:, :4], past_key_values=cache)
    assert cache.get_seq_length() == 4
    # generate() is given the full ids; it feeds only the 2 tokens the cache has not seen.
    out = model.generate(
        ids, past_key_values=cache, max_new_tokens=5, do_sample=False, pad_token_id=0
    )
    torch.testing.assert_close(out, manual_greedy(model, ids, 5), rtol=0, atol=0)


@pytest.mark.parametrize("window", [2, 4])
def test_sliding_window_generate_cache_is_bounded(window):
    model = make_model(sliding_window=window, num_key_value_heads=2)
    ids = torch.randint(0, V, (2, 9))
    out = model.generate(
        ids, max_new_tokens=6, do_sample=False, pad_token_id=0, return_dict_in_generate=True
    )
    cache = out.past_key_values
    assert isinstance(cache, LayerStateCache)
    assert cache.get_seq_length() == 9 + 6 - 1  # the last sampled token is never fed back
    for state in cache.states:
        assert state.keys.shape == (2, 2, window - 1, model.config.head_dim)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_save_pretrained_from_pretrained_round_trip(tmp_path, tie):
    model = make_model(tie_word_embeddings=tie)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    ids = torch.randint(0, V, (2, 7))
    for loader in (TransformerForCausalLM, AutoModelForCausalLM):
        loaded = loader.from_pretrained(tmp_path, dtype=torch.float64).eval()
        assert type(loaded) is TransformerForCausalLM
        assert loaded.config.tie_word_embeddings is tie
        assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) is tie
        saved, restored = model.state_dict(), loaded.state_dict()
        assert saved.keys() == restored.keys()
        assert all(torch.equal(saved[k], restored[k]) for k in saved)
        with torch.no_grad():
            # Weights are bitwise equal; the logits may differ in the last bits only because
            # safetensors hands back tensors at a different memory alignment, which changes the
            # BLAS kernel's summation order.
            torch.testing.assert_close(
                loaded(ids).logits, model(ids).logits, rtol=1e-12, atol=1e-12
            )


def test_untied_embeddings_are_separate_parameters():
    model = make_model()
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_auto_classes_build_the_model():
    config = tiny_config()
    kwargs = {k: v for k, v in config.to_dict().items() if k != "model_type"}
    assert AutoConfig.for_model("nestlearn_transformer", **kwargs).to_dict() == config.to_dict()
    assert type(AutoModelForCausalLM.from_config(config)) is TransformerForCausalLM
    assert type(AutoModel.from_config(config)) is TransformerModel


def test_config_round_trip(tmp_path):
    config = tiny_config(sliding_window=7, num_key_value_heads=2)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is TransformerConfig

    def without_path(c):
        return {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}

    assert without_path(loaded) == without_path(config)
    assert (loaded.sliding_window, loaded.head_dim, loaded.num_key_value_heads) == (7, 8, 2)


def test_labels_give_shifted_cross_entropy():
    model = make_model()
    ids = torch.randint(0, V, (2, 8))
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(ids, labels=labels)
    logits = out.logits
    terms = [
        -torch.log_softmax(logits[b, t], -1)[labels[b, t + 1]]
        for b in range(2)
        for t in range(7)
        if labels[b, t + 1] != -100
    ]
    torch.testing.assert_close(out.loss, torch.stack(terms).mean(), rtol=1e-12, atol=1e-12)


def test_training_steps_reduce_loss():
    model = TransformerForCausalLM(tiny_config()).train()
    ids = torch.randint(0, V, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_outputs_and_tuple_mode():
    model = make_model()
    ids = torch.randint(0, V, (2, 5))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, use_cache=False)
        assert out.past_key_values is None
        assert len(out.hidden_states) == model.config.num_hidden_layers + 1
        only_last = model(ids, logits_to_keep=1).logits
        as_tuple = model(ids, return_dict=False, use_cache=False)
    # A 1-row matmul may sum in another order than the full one: equal up to rounding.
    torch.testing.assert_close(only_last, out.logits[:, -1:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(as_tuple[0], out.logits, rtol=0, atol=0)


def test_init_follows_init_weights():
    config = tiny_config(num_hidden_layers=8, hidden_size=64, intermediate_size=128)
    config.initializer_range = 0.02
    model = TransformerForCausalLM(config)
    block = model.model.layers[0]
    assert torch.equal(block.attn_norm.weight, torch.ones(64))
    assert abs(block.attn.q_proj.weight.std().item() - 0.02) < 0.002
    residual_std = 0.02 / math.sqrt(16)
    assert abs(block.attn.o_proj.weight.std().item() - residual_std) < 0.1 * residual_std
    assert abs(block.mlp.down_proj.weight.std().item() - residual_std) < 0.1 * residual_std


def analytic_parameter_count(L, d, heads, vocab):
    """Llama shapes, untied: 2 V d + L (4 d^2 + 3 d F + 2 d) + d, F = 8d/3 rounded up to 256."""
    ffn = 256 * math.ceil(int(8 * d / 3) / 256)
    return 2 * vocab * d + L * (4 * d * d + 3 * d * ffn + 2 * d) + d


@pytest.mark.parametrize("name", list(TRANSFORMER_PRESETS))
def test_preset_parameter_counts(name):
    config = TransformerConfig.from_preset(name)
    with torch.device("meta"):
        model = TransformerForCausalLM(config)
    counted = sum(p.numel() for p in model.parameters())
    expected = analytic_parameter_count(
        config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.vocab_size
    )
    assert counted == expected == config.num_parameters()
    assert config.vocab_size == {"task": 32, "tiny": 4096}.get(name, 32000)
    assert config.tie_word_embeddings is False


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="preset"):
        TransformerConfig.from_preset("7B")


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("hidden_size", -8),
        ("num_hidden_layers", 1.5),
        ("num_attention_heads", 5),  # does not divide hidden_size=32
        ("num_key_value_heads", 3),
        ("head_dim", 7),
        ("intermediate_size", 0),
        ("sliding_window", 0),
        ("rope_theta", -1.0),
        ("rms_norm_eps", 0.0),
        ("attention_dropout", 1.0),
        ("initializer_range", -0.1),
    ],
)
def test_invalid_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_wrong_cache_type_raises():
    model = make_model()
    with pytest.raises(TypeError, match="past_key_values"):
        model(torch.randint(0, V, (1, 3)), past_key_values=[None, None])
    with pytest.raises(ValueError, match="layer states"):
        model(torch.randint(0, V, (1, 3)), past_key_values=LayerStateCache(5))


def test_bad_attention_mask_raises():
    model = make_model()
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randint(0, V, (2, 4)), attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randint(0, V, (2, 4)), attention_mask=torch.ones(2, 1, 4, 4))


def test_import_nestlearn_has_no_side_effects():
    code = (
        "import sys, nestlearn; assert 'transformers' not in sys.modules; "
        "from nestlearn import TransformerConfig; "
        "from transformers import CONFIG_MAPPING; "
        "assert CONFIG_MAPPING['nestlearn_transformer'] is TransformerConfig"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
