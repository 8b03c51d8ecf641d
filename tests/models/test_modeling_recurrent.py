"""HOPE, HOPE-Attention and Titans as Hugging Face causal LMs: causality, cached decoding and
streaming equal one forward, generate(), batch == one by one, padding, save/load, Auto classes,
the in-context CMS update (Eq. 71) against an independent autograd computation, the levels
table, presets and config validation. CPU, float64 where comparing."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from nestlearn import HopeConfig, HopeForCausalLM, TitansConfig, TitansForCausalLM
from nestlearn.layers.continuum_memory import ContinuumMemory, swiglu_apply
from nestlearn.models import format_levels
from nestlearn.models.presets import FAMILIES, count_parameters, preset_config

DT = torch.float64
V = 37
SMALL = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)

CONFIGS = {
    "hope": lambda: HopeConfig(**SMALL, smt_chunk_size=4, smt_proj_chunk_size=4,
                               cms_hidden_sizes=[8, 8]),
    "hope-cms-in-context": lambda: HopeConfig(
        **SMALL, smt_chunk_size=4, smt_proj_chunk_size=4, cms_hidden_sizes=[8, 8],
        cms_periods=[4, 8], cms_inner_lrs=[0.5, 0.25]),
    "hope-cms-nested": lambda: HopeConfig(
        **SMALL, smt_chunk_size=4, smt_proj_chunk_size=4, cms_hidden_sizes=[8, 8],
        cms_periods=[2, 4], cms_inner_lrs=[0.5, 0.25], cms_variant="nested"),
    "hope_attention-cms-independent": lambda: HopeConfig(
        **SMALL, variant="hope_attention", cms_hidden_sizes=[8, 8, 8], cms_periods=[3, 0, 6],
        cms_inner_lrs=[0.5, 0.0, 0.25], cms_variant="independent"),
    "hope_attention": lambda: HopeConfig(**SMALL, variant="hope_attention",
                                         cms_hidden_sizes=[8, 8]),
    "titans": lambda: TitansConfig(**SMALL, chunk_size=4, intermediate_size=24),
    "titans-mag": lambda: TitansConfig(**SMALL, variant="mag", chunk_size=4, sliding_window=5,
                                       intermediate_size=24),
}
NAMES = list(CONFIGS)


def make(name):
    torch.manual_seed(0)
    config = CONFIGS[name]()
    cls = HopeForCausalLM if isinstance(config, HopeConfig) else TitansForCausalLM
    return cls(config).to(DT).eval()


def ids_of(B=2, T=13, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def close(a, b, what=""):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"{what}: {m}")


def run_in_pieces(model, ids, splits):
    cache, logits = None, []
    bounds = [0, *splits, ids.shape[1]]
    for lo, hi in zip(bounds, bounds[1:]):
        out = model(ids[:, lo:hi], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits.append(out.logits)
    return torch.cat(logits, 1), cache


@pytest.mark.parametrize("name", NAMES)
def test_causal(name):
    model = make(name)
    ids = ids_of()
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 5) % V
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    close(a[:, :8], b[:, :8], "logits before the change")
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-6


@pytest.mark.parametrize("splits", [[7], [4, 8], [3, 5, 6, 9, 10, 11, 12], list(range(1, 13))],
                         ids=["prefill-7", "on-chunks", "mixed", "token-by-token"])
@pytest.mark.parametrize("name", NAMES)
def test_cached_decoding_and_streaming_equal_full_forward(name, splits):
    model = make(name)
    ids = ids_of()
    with torch.no_grad():
        full = model(ids).logits
        pieces, _ = run_in_pieces(model, ids, splits)
    close(pieces, full, "streamed logits")


@pytest.mark.parametrize("name", ["hope", "hope-cms-in-context", "titans"])
def test_streaming_with_gradients_equals_one_pass(name):
    """Training on a stream cut in pieces (carried state, grad enabled) gives the same loss
    gradient as one pass."""
    model = make(name).train()
    ids = ids_of(T=12)
    g_full = torch.autograd.grad(model(ids).logits.square().sum(), list(model.parameters()))
    pieces, _ = run_in_pieces(model, ids, [5, 8])
    g_split = torch.autograd.grad(pieces.square().sum(), list(model.parameters()))
    for a, b in zip(g_full, g_split):
        close(a, b, "parameter gradient")


@pytest.mark.parametrize("name", ["hope", "hope-cms-in-context", "hope_attention", "titans"])
def test_generate_greedy_equals_manual_argmax(name):
    model = make(name)
    prompt = ids_of(T=6)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=7, do_sample=False, pad_token_id=0)
        seq = prompt
        for _ in range(7):
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("name", ["hope", "titans"])
def test_generate_sampling_runs(name):
    model = make(name)
    torch.manual_seed(3)
    out = model.generate(ids_of(T=4), max_new_tokens=5, do_sample=True, top_k=5, pad_token_id=0)
    assert out.shape == (2, 9)


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_one_by_one(name):
    model = make(name)
    ids = ids_of(B=3, T=10)
    with torch.no_grad():
        batch = model(ids).logits
        for b in range(3):
            close(batch[b:b + 1], model(ids[b:b + 1]).logits, f"sequence {b}")


@pytest.mark.parametrize("name", ["hope", "hope_attention", "titans", "titans-mag"])
def test_left_padding_writes_nothing(name):
    """A row left-padded by one chunk (4 tokens) gives the logits of the sequence alone."""
    model = make(name)
    ids = ids_of(B=2, T=9)
    full_row = torch.cat([ids[:1, :4], ids[:1]], 1)  # 13 real tokens
    padded_row = torch.cat([torch.full((1, 4), 3), ids[1:]], 1)  # 4 pads (garbage ids) + 9
    mask = torch.tensor([[1] * 13, [0] * 4 + [1] * 9])
    with torch.no_grad():
        out = model(torch.cat([full_row, padded_row]), attention_mask=mask).logits
        alone = model(ids[1:]).logits
    close(out[1:, 4:], alone, "padded row")


PADS = [0, 1, 3, 6]  # leading pads: every phase of a chunk of 4


@pytest.mark.parametrize("name", ["hope", "hope_attention", "titans", "titans-mag"])
def test_left_padded_batch_any_pad_count_equals_each_alone(name):
    """Rows with 0, 1, 3 and 6 leading pads: the prefill logits, three cached decoding steps
    (growing mask) and greedy ``generate()`` equal each sequence run alone."""
    model = make(name)
    T = 10
    seqs = [ids_of(B=1, T=T - p, seed=10 + b)[0] for b, p in enumerate(PADS)]
    ids = torch.stack([torch.cat([torch.full((p,), 5), s]) for p, s in zip(PADS, seqs)])
    mask = torch.tensor([[0] * p + [1] * (T - p) for p in PADS])
    steps = ids_of(B=len(PADS), T=3, seed=99)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True)
        logits, cache = [out.logits], out.past_key_values
        for t in range(3):
            mask = torch.cat([mask, torch.ones(len(PADS), 1, dtype=mask.dtype)], 1)
            out = model(steps[:, t:t + 1], attention_mask=mask, past_key_values=cache,
                        use_cache=True)
            logits.append(out.logits)
            cache = out.past_key_values
        batch = torch.cat(logits, 1)
        for b, (p, seq) in enumerate(zip(PADS, seqs)):
            alone = model(torch.cat([seq, steps[b]])[None]).logits
            close(batch[b:b + 1, p:], alone, f"row {b} ({p} pads)")
        gen = model.generate(ids, attention_mask=mask[:, :T], max_new_tokens=5, do_sample=False,
                             pad_token_id=0)
        for b, (p, seq) in enumerate(zip(PADS, seqs)):
            alone = model.generate(seq[None], attention_mask=torch.ones(1, len(seq)),
                                   max_new_tokens=5, do_sample=False, pad_token_id=0)
            assert gen[b, p:].tolist() == alone[0].tolist(), f"row {b} ({p} pads)"


@pytest.mark.parametrize("name,write_grad", [("hope", "full"), ("hope", "detach"),
                                             ("titans", "full")])
def test_left_padded_batch_loss_gradients_equal_each_alone(name, write_grad):
    """Training on a left-padded batch (0, 1, 3 and 6 pads; labels -100 on the pads): the loss
    summed over rows has the gradients of the rows' losses alone, for every parameter,
    the meta-learned initial memories included (with ``smt_write_grad="detach"`` the chunk ends
    inside the padding do not cut them off; TitansConfig has no such option, its layer is
    tested with it in tests/layers)."""
    torch.manual_seed(0)
    config = CONFIGS[name]()
    if write_grad != "full":
        config.smt_write_grad = write_grad
    cls = HopeForCausalLM if isinstance(config, HopeConfig) else TitansForCausalLM
    model = cls(config).to(DT).train()
    T = 11
    seqs = [ids_of(B=1, T=T - p, seed=30 + b)[0] for b, p in enumerate(PADS)]
    ids = torch.stack([torch.cat([torch.full((p,), 5), s]) for p, s in zip(PADS, seqs)])
    mask = torch.tensor([[0] * p + [1] * (T - p) for p in PADS])
    params = [p for p in model.parameters() if p.requires_grad]

    def summed_nll(logits, ids, real):  # the sum over the pairs of real tokens
        targets = ids[:, 1:].masked_fill(~(real[:, 1:] & real[:, :-1]), -100)
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")

    logits = model(ids, attention_mask=mask).logits
    g_batch = torch.autograd.grad(summed_nll(logits, ids, mask.bool()), params,
                                  allow_unused=True)
    total = sum(summed_nll(model(s[None]).logits, s[None], torch.ones(1, len(s), dtype=bool))
                for s in seqs)
    g_alone = torch.autograd.grad(total, params, allow_unused=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for n, p, a, b in zip(names, params, g_batch, g_alone):
        zero = torch.zeros_like(p)
        close(zero if a is None else a, zero if b is None else b, f"d/d{n}")
    main = [a for n, a in zip(names, g_batch) if n.endswith(("main_w1", "main_w2", "mem_w1"))]
    assert main and all(a is not None and bool(a.abs().max() > 0) for a in main)


@pytest.mark.parametrize("name", ["hope", "titans"])
def test_beam_search_on_left_padded_prompts_equals_each_alone(name):
    """Beam search reorders the cache rows, per-row chunk offsets included: a left-padded batch
    (0, 1, 3 and 6 pads) returns each prompt's own beam-search result."""
    model = make(name)
    T = 10
    seqs = [ids_of(B=1, T=T - p, seed=20 + b)[0] for b, p in enumerate(PADS)]
    ids = torch.stack([torch.cat([torch.full((p,), 5), s]) for p, s in zip(PADS, seqs)])
    mask = torch.tensor([[0] * p + [1] * (T - p) for p in PADS])
    kwargs = dict(max_new_tokens=4, num_beams=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=mask, **kwargs)
        for b, (p, seq) in enumerate(zip(PADS, seqs)):
            alone = model.generate(seq[None], attention_mask=torch.ones(1, len(seq)), **kwargs)
            assert gen[b, p:].tolist() == alone[0].tolist(), f"row {b} ({p} pads)"


def test_in_context_cms_left_padding_by_whole_periods_equals_alone():
    """In-context CMS levels share the batch's update positions: a row padded by a multiple of
    every in-context period (4 and 8 here) equals its sequence alone (documented limit). With
    gradients on, the second-order inner step differentiates through the padded positions:
    the logits and the outer gradients stay finite (they were NaN through F.normalize)."""
    model = make("hope-cms-in-context").train()
    seqs = [ids_of(B=1, T=14, seed=3)[0], ids_of(B=1, T=6, seed=4)[0]]
    ids = torch.stack([seqs[0], torch.cat([torch.full((8,), 5), seqs[1]])])
    mask = torch.tensor([[1] * 14, [0] * 8 + [1] * 6])
    out = model(ids, attention_mask=mask).logits
    close(out[:1], model(seqs[0][None]).logits, "unpadded row")
    close(out[1:, 8:], model(seqs[1][None]).logits, "row padded by 8")
    out[1:, 8:].square().sum().backward()
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    model = make(name).train()
    ids = ids_of(T=12)
    model(ids, labels=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("name", ["hope", "hope-cms-in-context", "titans-mag"])
def test_save_pretrained_round_trip(tmp_path, name):
    model = make(name)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=DT).eval()
    assert type(loaded) is type(model)
    for (n, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(p, q), n
    ids = ids_of()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_auto_from_config(name):
    model = AutoModelForCausalLM.from_config(CONFIGS[name]())
    assert type(model).__name__ in ("HopeForCausalLM", "TitansForCausalLM")


def test_in_context_cms_update_matches_autograd():
    """After the first chunk, an in-context CMS level's fast weights are
    W0 - lr * grad_W sum_{t, t+1 in chunk} -log p(x_{t+1} | x_<=t) (Eq. 71), computed here
    independently with autograd on a forward that never updates."""
    cfg = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               variant="hope_attention", cms_hidden_sizes=[8, 8])
    torch.manual_seed(0)
    learner = HopeForCausalLM(HopeConfig(**cfg, cms_periods=[4, 0], cms_inner_lrs=[0.3, 0.0]))
    learner = learner.to(DT).eval()
    ids = ids_of(B=2, T=6)
    with torch.no_grad():
        cache = learner(ids, use_cache=True).past_key_values
    static = HopeForCausalLM(HopeConfig(**cfg)).to(DT)
    static.load_state_dict(learner.state_dict())
    for b in range(2):
        logits = static(ids[b:b + 1, :4]).logits[0]  # positions 0..3 of the first chunk
        nll = torch.nn.functional.cross_entropy(logits[:-1], ids[b, 1:4], reduction="sum")
        level0 = [blk.cms.levels[0] for blk in static.model.layers]
        weights = [w for lvl in level0 for w in lvl.weights()]
        grads = torch.autograd.grad(nll, weights)
        for i, blk in enumerate(static.model.layers):
            fast = cache[i][1].fast[0]
            for j, (w, g) in enumerate(zip(blk.cms.levels[0].weights(), grads[3 * i:3 * i + 3])):
                close(fast[j][b], w - 0.3 * g, f"layer {i} weight {j} sequence {b}")


def test_cms_with_zero_inner_lrs_is_a_plain_mlp_stack():
    cms = ContinuumMemory(12, hidden_sizes=[8, 6], periods=[4, 16], inner_lrs=[0.0, 0.0]).to(DT)
    x = torch.randn(2, 5, 12, dtype=DT)
    y, _ = cms(x)
    expected = x
    for level in cms.levels:
        h = level.norm(expected)
        expected = expected + torch.nn.functional.silu(h @ level.w_gate.T) * (
            h @ level.w_up.T) @ level.w_down.T
    close(y, expected, "CMS with inner lr 0")
    close(swiglu_apply(x, *cms.levels[0].weights()),
          (torch.nn.functional.silu(x @ cms.levels[0].w_gate.T) * (x @ cms.levels[0].w_up.T))
          @ cms.levels[0].w_down.T, "swiglu")


def test_levels_table():
    model = make("hope-cms-in-context")
    rows = model.levels()
    names = [r["name"] for r in rows]
    assert names[0].startswith("SMT projection memories") and names[-1].startswith("pre-training")
    assert any("4 tokens" == r["period"] for r in rows)
    assert rows[-1]["parameters"] == sum(p.numel() for p in model.parameters())
    assert "| name | parameters | period |" in format_levels(rows)
    assert make("titans").levels()[0]["period"] == "4 tokens"


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_presets_match_transformer_parameter_count(family):
    ref = count_parameters(preset_config("transformer", "tiny"))
    n = count_parameters(preset_config(family, "tiny"))
    assert abs(n / ref - 1) < 0.01, (family, n, ref)


@pytest.mark.parametrize(
    "field,value",
    [("variant", "hopeless"), ("hidden_size", 15), ("smt_chunk_size", 0), ("smt_rule", "adam"),
     ("cms_variant", "parallel"), ("cms_periods", [4]), ("cms_inner_lrs", [0.1, -1.0]),
     ("smt_eta_max", 0.0), ("cms_meta_grad", "third_order"), ("smt_q_projection", "dynamic"),
     ("smt_objective", "cauchy"), ("smt_huber_delta", -1.0)],
)
def test_invalid_hope_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        HopeConfig(**{**SMALL, field: value})


def test_eta_max_defaults_to_one_over_the_larger_chunk():
    config = HopeConfig(**{**SMALL, "smt_chunk_size": 8, "smt_proj_chunk_size": 4})
    assert config.smt_eta_max == 1 / 8
    assert HopeConfig(**{**SMALL, "smt_eta_max": 0.5}).smt_eta_max == 0.5
    # the resolved value is saved, so a reloaded model has the same bound
    saved = HopeConfig.from_dict(HopeConfig(**SMALL).to_dict())
    assert saved.smt_eta_max == HopeConfig(**SMALL).smt_eta_max


def test_in_context_level_needs_a_period():
    with pytest.raises(ValueError, match="cms_periods"):
        HopeConfig(**SMALL, cms_periods=[0, 0], cms_inner_lrs=[0.1, 0.0])


@pytest.mark.parametrize("field,value", [("variant", "mac"), ("memory", "deep"),
                                         ("chunk_size", -1), ("lr_max", 0)])
def test_invalid_titans_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TitansConfig(**{**SMALL, field: value})


@pytest.mark.parametrize("name", ["hope", "titans"])
def test_bf16_autocast_trains_with_float32_memories(name):
    """Under bf16 autocast the projections run in bf16 while the memory recurrences stay float32;
    the loss matches float32 to bf16 precision and every parameter gets a finite gradient."""
    model = make(name).float().train()
    ids = ids_of(T=12)
    ref = model(ids, labels=ids).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    assert abs(loss.item() - ref.item()) < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_titans_lr_max_defaults_to_one_over_the_chunk():
    from nestlearn.models import TitansConfig

    assert TitansConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
                        vocab_size=32, chunk_size=8).lr_max == 1 / 8
    assert TitansConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
                        vocab_size=32, lr_max=0.5).lr_max == 0.5


def test_invalid_titans_config_raises_naming_the_field_memory_objective():
    from nestlearn.models import TitansConfig

    with pytest.raises(ValueError, match="memory_objective"):
        TitansConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, vocab_size=32,
                     memory_objective="cauchy")
