"""The MQAR generator: answers follow from the prompt by a solver written here, determinism,
the alphabets, the knobs, the capacity sweep and the errors for bad settings."""

from __future__ import annotations

import string

import pytest

from nestlearn.eval.tasks.mqar import MQAR_TASKS, mqar, mqar_capacity_sweep

# The documented symbol rules, restated independently of the module.
LETTERS = string.ascii_lowercase + string.ascii_uppercase
DIGITS = string.digits


def parse(prompt: str, *, vocab_size: int, num_keys: int, filler: str):
    """The pairs (in order), the queried keys and the filler characters of a prompt."""
    keys, values = LETTERS[:num_keys], LETTERS[num_keys:vocab_size]
    context, queries = prompt.split("|")
    kept = "".join(c for c in context if c not in filler)
    assert len(kept) % 2 == 0
    pairs = [(kept[i], kept[i + 1]) for i in range(0, len(kept), 2)]
    assert all(k in keys and v in values for k, v in pairs), pairs
    # Filler never splits a pair: every key is directly followed by its value.
    for key, value in pairs:
        assert key + value in context
    return pairs, queries, [c for c in context if c in filler]


def solve(prompt: str, **layout) -> str:
    pairs, queries, _ = parse(prompt, **layout)
    mapping = dict(pairs)
    assert len(mapping) == len(pairs), "a key is bound twice"
    return "".join(mapping[q] for q in queries)


def _layout(settings: dict) -> dict:
    filler = DIGITS[: settings["noise_vocab_size"]] if settings["filler"] == "noise" else "_"
    return {"vocab_size": settings["vocab_size"], "num_keys": settings["num_keys"],
            "filler": filler}


def _all_splits():
    for name, spec in MQAR_TASKS.items():
        yield pytest.param(name, dict(spec.train), id=f"{name}-train")
        for split, settings in spec.tests.items():
            yield pytest.param(name, dict(settings), id=f"{name}-{split}")


@pytest.mark.parametrize("name,settings", list(_all_splits()))
def test_answer_solved_from_prompt(name, settings):
    layout = _layout(settings)
    for ex in MQAR_TASKS[name].generate(100, seed=1, **settings):
        assert ex.answer == solve(ex.prompt, **layout)
        pairs, queries, _ = parse(ex.prompt, **layout)
        assert len(ex.prompt) == settings["seq_len"]
        assert len(pairs) == settings["num_kv_pairs"]
        assert len(queries) == settings["num_queries"] == len(set(queries))
        assert set(queries) <= {k for k, _ in pairs}


@pytest.mark.parametrize("name,settings", list(_all_splits()))
def test_deterministic_and_seed_dependent(name, settings):
    generate = MQAR_TASKS[name].generate
    first = generate(20, seed=5, **settings)
    assert first == generate(20, seed=5, **settings)
    assert first != generate(20, seed=6, **settings)
    assert first[:7] == generate(7, seed=5, **settings)


@pytest.mark.parametrize("name,settings", list(_all_splits()))
def test_symbols_are_characters_and_separator_stays_out(name, settings):
    examples = MQAR_TASKS[name].generate(100, seed=2, **settings)
    vocab = set("".join(ex.prompt + ex.answer for ex in examples))
    assert len(vocab) <= 60
    assert vocab <= set(LETTERS) | set(DIGITS) | {"|"}
    assert all(ex.prompt.count("|") == 1 for ex in examples)
    assert all(set(ex.answer) <= set(LETTERS[32:48]) for ex in examples)


def test_num_queries_and_seq_len_knobs():
    layout = {"vocab_size": 48, "num_keys": 32, "filler": DIGITS}
    for pairs, queries, seq_len in ((4, 1, 10), (4, 4, 13), (10, 3, 200), (32, 32, 97)):
        for ex in mqar(30, seed=3, num_kv_pairs=pairs, num_queries=queries, seq_len=seq_len,
                       num_keys=32):
            parsed_pairs, parsed_queries, filler = parse(ex.prompt, **layout)
            assert len(parsed_pairs) == pairs and len(parsed_queries) == queries
            assert len(ex.answer) == queries
            assert len(filler) == seq_len - 2 * pairs - 1 - queries
    # num_queries defaults to every pair.
    assert {len(ex.answer) for ex in mqar(10, seed=3, num_kv_pairs=5, num_keys=32)} == {5}


def test_vocab_size_and_num_keys_set_the_alphabets():
    examples = mqar(300, seed=4, vocab_size=20, num_keys=12, num_kv_pairs=6, seq_len=30)
    context = "".join(ex.prompt.split("|")[0] for ex in examples)
    letters = {c for c in context if c in LETTERS}
    assert letters == set(LETTERS[:20])
    assert set("".join(ex.answer for ex in examples)) == set(LETTERS[12:20])
    # num_keys defaults to half the vocabulary.
    answers = "".join(ex.answer for ex in mqar(300, seed=4, vocab_size=10, num_kv_pairs=5))
    assert set(answers) == set(LETTERS[5:10])


def test_filler_knob():
    padded = mqar(50, seed=5, filler="pad", num_keys=32)
    assert all(set(ex.prompt) & set(DIGITS) == set() for ex in padded)
    assert all(ex.answer == solve(ex.prompt, vocab_size=48, num_keys=32, filler="_")
               for ex in padded)
    noisy = mqar(200, seed=5, noise_vocab_size=3, num_keys=32)
    assert set("".join(ex.prompt for ex in noisy)) & set(DIGITS) == set(DIGITS[:3])


def test_queries_are_a_random_subset_in_random_order():
    layout = {"vocab_size": 48, "num_keys": 32, "filler": DIGITS}
    asked_positions, reordered = set(), False
    for ex in mqar(100, seed=7, num_kv_pairs=6, num_queries=3, seq_len=30, num_keys=32):
        pairs, queries, _ = parse(ex.prompt, **layout)
        order = [k for k, _ in pairs]
        positions = [order.index(q) for q in queries]
        asked_positions.update(positions)
        reordered |= positions != sorted(positions)
    assert asked_positions == set(range(6)) and reordered


def test_filler_lands_in_every_gap():
    # Filler before the first pair, between pairs and after the last one, varying by instance.
    starts, ends, middles = set(), set(), False
    for ex in mqar(200, seed=6, num_kv_pairs=4, seq_len=40, num_keys=32):
        context = ex.prompt.split("|")[0]
        starts.add(len(context) - len(context.lstrip(DIGITS)))
        ends.add(len(context) - len(context.rstrip(DIGITS)))
        middles |= any(c in DIGITS for c in context.strip(DIGITS))
    assert len(starts) > 5 and len(ends) > 5 and middles


def test_capacity_sweep():
    sweep = mqar_capacity_sweep((2, 8, 24), seq_len_per_pair=6, vocab_size=40, num_keys=24)
    assert list(sweep) == ["mqar_2", "mqar_8", "mqar_24"]
    for pairs, spec in zip((2, 8, 24), sweep.values(), strict=True):
        assert spec.name == f"mqar_{pairs}" and spec.kind == "generation"
        assert spec.train["num_kv_pairs"] == spec.train["num_queries"] == pairs
        assert spec.train["seq_len"] == 6 * pairs
        assert spec.tests["long"]["seq_len"] == 12 * pairs
        assert spec.train["vocab_size"] == 40
        for ex in spec.generate(5, seed=0, **spec.tests["long"]):
            assert len(ex.answer) == pairs and len(ex.prompt) == 12 * pairs
    assert {"mqar", "mqar_8", "mqar_16", "mqar_32"} <= set(MQAR_TASKS)
    assert [MQAR_TASKS[f"mqar_{p}"].train["num_kv_pairs"] for p in (8, 16, 32)] == [8, 16, 32]


@pytest.mark.parametrize("settings,field", [
    ({"n": -2}, "n"),
    ({"seed": -1}, "seed"),
    ({"num_kv_pairs": 33, "num_keys": 32}, "num_kv_pairs"),
    ({"num_kv_pairs": 25}, "num_kv_pairs"),
    ({"num_kv_pairs": 0}, "num_kv_pairs"),
    ({"num_queries": 9, "num_kv_pairs": 8}, "num_queries"),
    ({"seq_len": 24, "num_kv_pairs": 8}, "seq_len"),
    ({"vocab_size": 60}, "vocab_size"),
    ({"num_keys": 48}, "num_keys"),
    ({"filler": "zeros"}, "filler"),
    ({"noise_vocab_size": 0}, "noise_vocab_size"),
], ids=lambda p: p if isinstance(p, str) else None)
def test_bad_settings_raise_value_error_naming_the_setting(settings, field):
    settings = {"n": 3, "seed": 0, **settings}
    n = settings.pop("n")
    with pytest.raises(ValueError, match=rf"^{field} "):
        mqar(n, **settings)


def test_bad_sweep_fails_when_built():
    with pytest.raises(ValueError, match="^num_kv_pairs "):
        mqar_capacity_sweep((8, 64))
    with pytest.raises(ValueError, match="^seq_len_per_pair "):
        mqar_capacity_sweep((8,), seq_len_per_pair=2)
