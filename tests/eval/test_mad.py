"""The MAD task generators: every answer follows from its prompt by a solver written here,
determinism, the character alphabets, the knobs, and the errors for bad settings."""

from __future__ import annotations

import math
import re
import string

import pytest

from nestlearn.eval.tasks.base import Generation
from nestlearn.eval.tasks.mad import (
    MAD_TASKS,
    compression,
    fuzzy_in_context_recall,
    in_context_recall,
    memorization,
    memorization_map,
    noisy_in_context_recall,
    selective_copying,
)

# The documented symbol rules, restated independently of the module.
LETTERS = string.ascii_lowercase + string.ascii_uppercase
DIGITS = string.digits
SEPARATORS = set("|_.=#:")


def _alphabets(vocab_size: int) -> tuple[str, str]:
    return LETTERS[: vocab_size // 2], LETTERS[vocab_size // 2 : vocab_size]


def _pair_map(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Key -> value of a context, checking that a repeated key keeps its value."""
    mapping: dict[str, str] = {}
    for key, value in pairs:
        assert mapping.setdefault(key, value) == value, f"key {key!r} has two values"
    return mapping


def solve_recall(prompt: str, *, vocab_size: int, noise: str = "") -> str:
    """Answer a (noisy) in-context recall prompt by reading it slot by slot."""
    keys, values = _alphabets(vocab_size)
    context, probe = prompt.split("|")
    assert len(context) % 2 == 0 and len(probe) == 1
    pairs = []
    for i in range(0, len(context), 2):
        a, b = context[i], context[i + 1]
        if a in noise:
            assert b in noise, f"half a noise slot in {context!r}"
            continue
        assert a in keys and b in values, (a, b)
        pairs.append((a, b))
    return _pair_map(pairs)[probe]


def solve_fuzzy(prompt: str, *, vocab_size: int) -> str:
    keys, values = _alphabets(vocab_size)
    context, probe = prompt.lstrip("_").split("|")
    pattern = f"([{re.escape(keys)}]+)([{re.escape(values)}]+)"
    pairs = re.findall(pattern, context)
    assert "".join(k + v for k, v in pairs) == context, "context is not a run of pairs"
    assert set(probe) <= set(keys)
    return _pair_map(pairs)[probe]


def _settings(name: str) -> dict:
    return dict(MAD_TASKS[name].train)


def _all_splits():
    for name, spec in MAD_TASKS.items():
        yield pytest.param(name, dict(spec.train), id=f"{name}-train")
        for split, settings in spec.tests.items():
            yield pytest.param(name, dict(settings), id=f"{name}-{split}")


# ---------------------------------------------------------------------------- solvers


@pytest.mark.parametrize("vocab_size,seq_len", [(16, 128), (4, 8), (52, 256)])
def test_in_context_recall_solved_from_prompt(vocab_size, seq_len):
    for ex in in_context_recall(200, seed=3, vocab_size=vocab_size, seq_len=seq_len):
        assert len(ex.prompt) == seq_len
        assert ex.answer == solve_recall(ex.prompt, vocab_size=vocab_size)


@pytest.mark.parametrize("frac_noise", [0.0, 0.2, 0.6, 0.95])
def test_noisy_in_context_recall_solved_from_prompt(frac_noise):
    for ex in noisy_in_context_recall(200, seed=4, frac_noise=frac_noise, noise_vocab_size=7):
        assert len(ex.prompt) == 128
        assert ex.answer == solve_recall(ex.prompt, vocab_size=16, noise=DIGITS[:7])


@pytest.mark.parametrize("k,v", [(3, 3), (1, 1), (2, 4)])
def test_fuzzy_in_context_recall_solved_from_prompt(k, v):
    for ex in fuzzy_in_context_recall(200, seed=5, k_motif_size=k, v_motif_size=v):
        assert len(ex.prompt) == 128
        answer = solve_fuzzy(ex.prompt, vocab_size=16)
        assert ex.answer == answer and 1 <= len(answer) <= v


def test_selective_copying_solved_from_prompt():
    for ex in selective_copying(100, seed=6, seq_len=64, num_tokens_to_copy=10):
        assert ex.prompt.endswith("=") and ex.prompt.count("=") == 1
        assert ex.answer == ex.prompt[:-1].replace(".", "")
        assert len(ex.prompt) + len(ex.answer) == 64


def test_selective_copying_scatters_the_tokens():
    firsts, gaps = set(), False
    for ex in selective_copying(100, seed=6):
        region = ex.prompt[:-1]
        firsts.add(len(region) - len(region.lstrip(".")))
        gaps |= "." in region.strip(".")
    assert len(firsts) > 10 and gaps


def test_compression_solved_from_prompt():
    for ex in compression(100, seed=7, seq_len=20):
        assert ex.prompt == ex.answer + "#" and len(ex.prompt) == 20


def test_memorization_consistent_across_instances_and_seeds():
    seen: dict[str, str] = {}
    for seed in (0, 1, 99):
        for ex in memorization(3000, seed=seed):
            assert ex.prompt.endswith(":")
            key = ex.prompt[:-1]
            assert seen.setdefault(key, ex.answer) == ex.answer, f"{key!r} has two values"
    # 9000 uniform draws of 128 facts see all of them; the map is one-to-one.
    assert len(seen) == 128
    assert len(set(seen.values())) == 128
    assert seen == memorization_map()
    keys, values = _alphabets(32)
    assert all(len(k) == 2 and set(k) <= set(keys) for k in seen)
    assert all(len(v) == 2 and set(v) <= set(values) for v in seen.values())


def test_memorization_map_depends_on_map_seed_only():
    assert memorization_map(map_seed=1) != memorization_map(map_seed=2)
    test = MAD_TASKS["mad_memorization"].tests["test"]
    assert test == MAD_TASKS["mad_memorization"].train
    facts = {ex.prompt: ex.answer for ex in memorization(500, seed=11, **test)}
    train = {ex.prompt: ex.answer for ex in memorization(500, seed=12, **test)}
    assert all(train[k] == v for k, v in facts.items() if k in train)


# ---------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name,settings", list(_all_splits()))
def test_same_seed_same_data_other_seed_other_data(name, settings):
    generate = MAD_TASKS[name].generate
    first = generate(30, seed=1, **settings)
    assert first == generate(30, seed=1, **settings)
    assert first != generate(30, seed=2, **settings)
    assert first[:10] == generate(10, seed=1, **settings)
    assert all(isinstance(ex, Generation) for ex in first)
    assert generate(0, seed=1, **settings) == []


# ---------------------------------------------------------------------------- symbols


@pytest.mark.parametrize("name,settings", list(_all_splits()))
def test_symbols_are_characters_and_separators_stay_out(name, settings):
    examples = MAD_TASKS[name].generate(200, seed=8, **settings)
    vocab = set("".join(ex.prompt + ex.answer for ex in examples))
    assert len(vocab) <= 60
    assert vocab <= set(LETTERS) | set(DIGITS) | SEPARATORS
    for ex in examples:
        assert ex.answer and not set(ex.answer) & (SEPARATORS | set(DIGITS))
    separators = vocab & SEPARATORS
    expected = {
        "mad_icr": {"|"}, "mad_noisy_icr": {"|"}, "mad_fuzzy_icr": {"|", "_"},
        "mad_selective_copy": {".", "="}, "mad_compression": {"#"}, "mad_memorization": {":"},
    }[name]
    assert separators == expected
    # The marker that ends the context occurs once per prompt.
    marker = {"mad_fuzzy_icr": "|", "mad_selective_copy": "="}.get(name, min(expected))
    assert all(ex.prompt.count(marker) == 1 for ex in examples)


def test_key_value_and_noise_alphabets_are_disjoint():
    keys, values = _alphabets(16)
    examples = noisy_in_context_recall(100, seed=9, frac_noise=0.5)
    context = "".join(ex.prompt.split("|")[0] for ex in examples)
    assert set(context) == set(keys) | set(values) | set(DIGITS)
    assert set("".join(ex.answer for ex in examples)) <= set(values)


# ---------------------------------------------------------------------------- knobs


def test_seq_len_sets_the_length():
    for seq_len in (16, 64, 300):
        assert {len(ex.prompt) for ex in in_context_recall(20, seed=0, seq_len=seq_len)} == {
            seq_len}
        assert {len(ex.prompt) for ex in fuzzy_in_context_recall(20, seed=0, seq_len=seq_len)} \
            == {seq_len}
        copies = selective_copying(20, seed=0, seq_len=seq_len + 40, num_tokens_to_copy=8)
        assert {len(ex.prompt + ex.answer) for ex in copies} == {seq_len + 40}
        assert {len(ex.answer) for ex in compression(20, seed=0, seq_len=seq_len)} == {
            seq_len - 1}
    for name in ("mad_icr", "mad_fuzzy_icr", "mad_noisy_icr", "mad_selective_copy",
                 "mad_compression"):
        spec = MAD_TASKS[name]
        assert spec.tests["long"]["seq_len"] > spec.train["seq_len"]


@pytest.mark.parametrize("frac_noise", [0.0, 0.2, 0.5, 0.8])
def test_frac_noise_sets_the_noise_share(frac_noise):
    slots = 128 // 2 - 1
    for ex in noisy_in_context_recall(50, seed=10, frac_noise=frac_noise):
        context = ex.prompt.split("|")[0]
        noise_chars = sum(c in DIGITS for c in context)
        assert noise_chars == 2 * math.floor(frac_noise * slots)
        assert abs(noise_chars / len(context) - frac_noise) <= 2 / len(context)


@pytest.mark.parametrize("vocab_size", [4, 16, 40])
def test_vocab_size_sets_the_alphabets(vocab_size):
    keys, values = _alphabets(vocab_size)
    examples = in_context_recall(300, seed=11, vocab_size=vocab_size)
    context = "".join(ex.prompt[:-2] for ex in examples)
    assert set(context[0::2]) == set(keys) and set(context[1::2]) == set(values)
    data = "".join(ex.answer for ex in compression(300, seed=11, vocab_size=vocab_size))
    assert set(data) == set(LETTERS[:vocab_size])


def test_motif_sizes_bound_the_spans():
    for k, v in ((1, 1), (2, 3), (4, 2)):
        examples = fuzzy_in_context_recall(200, seed=12, k_motif_size=k, v_motif_size=v)
        spans = [re.findall("[a-h]+|[i-p]+", ex.prompt.lstrip("_").split("|")[0])
                 for ex in examples]
        key_lens = {len(s) for row in spans for s in row if s[0] in "abcdefgh"}
        value_lens = {len(s) for row in spans for s in row if s[0] in "ijklmnop"}
        assert key_lens == set(range(1, k + 1)) and value_lens == set(range(1, v + 1))
        # A span is a motif of distinct characters.
        assert all(len(set(s)) == len(s) for row in spans for s in row)


def test_num_tokens_to_copy_and_num_facts():
    for count in (1, 5, 30):
        examples = selective_copying(20, seed=13, num_tokens_to_copy=count)
        assert {len(ex.answer) for ex in examples} == {count}
    keys = {ex.prompt for ex in memorization(2000, seed=14, num_facts=10)}
    assert len(keys) == 10
    lengths = {(len(ex.prompt), len(ex.answer))
               for ex in memorization(50, seed=14, key_len=3, value_len=1, num_facts=16)}
    assert lengths == {(4, 1)}


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("generate,settings,field", [
    (in_context_recall, {"n": -1}, "n"),
    (in_context_recall, {"seed": -3}, "seed"),
    (in_context_recall, {"vocab_size": 1}, "vocab_size"),
    (in_context_recall, {"vocab_size": 53}, "vocab_size"),
    (in_context_recall, {"seq_len": 127}, "seq_len"),
    (in_context_recall, {"seq_len": 2}, "seq_len"),
    (noisy_in_context_recall, {"frac_noise": 1.0}, "frac_noise"),
    (noisy_in_context_recall, {"frac_noise": -0.1}, "frac_noise"),
    (noisy_in_context_recall, {"noise_vocab_size": 11}, "noise_vocab_size"),
    (fuzzy_in_context_recall, {"k_motif_size": 9}, "k_motif_size"),
    (fuzzy_in_context_recall, {"v_motif_size": 0}, "v_motif_size"),
    (fuzzy_in_context_recall, {"seq_len": 9}, "seq_len"),
    (selective_copying, {"num_tokens_to_copy": 0}, "num_tokens_to_copy"),
    (selective_copying, {"num_tokens_to_copy": 16, "seq_len": 32}, "seq_len"),
    (compression, {"seq_len": 1}, "seq_len"),
    (memorization, {"num_facts": 65, "vocab_size": 16}, "num_facts"),
    (memorization, {"key_len": 0}, "key_len"),
    (memorization, {"map_seed": -1}, "map_seed"),
], ids=lambda p: p if isinstance(p, str) else None)
def test_bad_settings_raise_value_error_naming_the_setting(generate, settings, field):
    settings = {"n": 3, "seed": 0, **settings}
    n = settings.pop("n")
    with pytest.raises(ValueError, match=rf"^{field} "):
        generate(n, **settings)


def test_non_integer_settings_raise_type_error():
    with pytest.raises(TypeError, match="^n "):
        in_context_recall(1.5, seed=0)
    with pytest.raises(TypeError, match="^seq_len "):
        compression(2, seed=0, seq_len=True)
    with pytest.raises(TypeError, match="unexpected keyword"):
        compression(2, seed=0, num_pairs=3)


def test_task_table():
    assert set(MAD_TASKS) == {"mad_icr", "mad_fuzzy_icr", "mad_noisy_icr",
                              "mad_selective_copy", "mad_compression", "mad_memorization"}
    for name, spec in MAD_TASKS.items():
        assert spec.name == name and spec.kind == "generation"
        assert "test" in spec.tests and spec.extra["num_train"] > 0
