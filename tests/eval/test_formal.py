"""Formal-language generators, checked against recognizers written here, independently of
``formal.in_language``."""

from __future__ import annotations

import re

import pytest

from nestlearn.eval import tasks
from nestlearn.eval.tasks.base import Classification
from nestlearn.eval.tasks.formal import BIN0, BIN1, FORMAL_TASKS, generate_formal
from nestlearn.models.presets import FAMILIES, count_parameters, preset_config

N = 60
SETS = ("train", "bin0", "bin1")
ALPHABETS = {"parity": "ab", "aa_star": "a", "abab_star": "ab", "anbn": "ab", "anbncn": "abc",
             "shuffle2": "()[]"}


def _equal_runs(s: str, pattern: str) -> bool:
    m = re.fullmatch(pattern, s)
    return m is not None and len({len(g) for g in m.groups()}) == 1


def _reduces_to_empty(s: str, keep: str) -> bool:
    # Cancel adjacent matched pairs until none is left: balanced and well nested iff nothing stays.
    t = "".join(ch for ch in s if ch in keep)
    pair = keep
    while pair in t:
        t = t.replace(pair, "")
    return t == ""


def _shuffle2(s: str) -> bool:
    if re.fullmatch(r"[()\[\]]+", s) is None:
        return False
    return _reduces_to_empty(s, "()") and _reduces_to_empty(s, "[]")


RECOGNIZERS = {
    "parity": lambda s: re.fullmatch(r"[ab]+", s) is not None and s.count("b") % 2 == 0,
    "aa_star": lambda s: re.fullmatch(r"(?:aa)+", s) is not None,
    "abab_star": lambda s: re.fullmatch(r"(?:abab)+", s) is not None,
    "anbn": lambda s: _equal_runs(s, r"(a+)(b+)"),
    "anbncn": lambda s: _equal_runs(s, r"(a+)(b+)(c+)"),
    "shuffle2": _shuffle2,
}

STEP = {"parity": 1, "aa_star": 2, "abab_star": 4, "anbn": 2, "anbncn": 3, "shuffle2": 2}


def _neighbours(s: str, alphabet: str):
    """Every string one substitution, insertion, deletion or adjacent swap away from ``s``."""
    for i in range(len(s)):
        yield s[:i] + s[i + 1:]
        for c in alphabet:
            yield s[:i] + c + s[i + 1:]
        if i + 1 < len(s):
            yield s[:i] + s[i + 1] + s[i] + s[i + 2:]
    for i in range(len(s) + 1):
        for c in alphabet:
            yield s[:i] + c + s[i:]


def _near_miss(language: str, s: str) -> bool:
    """The promise of the generator: one edit from a member, or ``(ab)^(odd)`` for ``(abab)*``."""
    if language == "abab_star" and re.fullmatch(r"(?:ab)+", s) and (len(s) // 2) % 2 == 1:
        return True
    recognize = RECOGNIZERS[language]
    return any(recognize(t) for t in _neighbours(s, ALPHABETS[language]))


def _settings(name: str, which: str) -> dict:
    spec = FORMAL_TASKS[name]
    return spec.train if which == "train" else spec.tests[which]


def _make(name: str, which: str, seed: int = 0, n: int = N):
    return FORMAL_TASKS[name].generate(n, seed=seed, **_settings(name, which))


def test_registry_covers_the_six_languages_with_their_bins():
    assert set(FORMAL_TASKS) == set(RECOGNIZERS)
    for name, spec in FORMAL_TASKS.items():
        assert spec.name == name and spec.kind == "classification"
        assert spec.train == {"min_len": BIN0[0], "max_len": BIN0[1]}
        assert spec.tests == {"bin0": {"min_len": BIN0[0], "max_len": BIN0[1]},
                              "bin1": {"min_len": BIN1[0], "max_len": BIN1[1]}}
    assert BIN1[0] > BIN0[1]


@pytest.mark.parametrize("which", SETS)
@pytest.mark.parametrize("name", sorted(RECOGNIZERS))
def test_labels_agree_with_independent_recognizer(name, which):
    data = _make(name, which)
    recognize = RECOGNIZERS[name]
    assert all(isinstance(ex, Classification) for ex in data)
    wrong = [ex for ex in data if recognize(ex.input) != bool(ex.label)]
    assert not wrong, wrong[:3]


@pytest.mark.parametrize("which", SETS)
@pytest.mark.parametrize("name", sorted(RECOGNIZERS))
def test_labels_are_exactly_balanced_and_shuffled(name, which):
    labels = [ex.label for ex in _make(name, which)]
    assert set(labels) == {0, 1}
    assert labels.count(1) == labels.count(0) == N // 2
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)


@pytest.mark.parametrize("which", SETS)
@pytest.mark.parametrize("name", sorted(RECOGNIZERS))
def test_lengths_lie_in_the_bin(name, which):
    lo, hi = _settings(name, which)["min_len"], _settings(name, which)["max_len"]
    data = _make(name, which)
    assert all(lo <= len(ex.input) <= hi for ex in data)
    assert all(len(ex.input) % STEP[name] == 0 for ex in data if ex.label == 1)
    if which == "bin1":
        train_max = max(len(ex.input) for ex in _make(name, "train", n=200))
        assert train_max <= BIN0[1]
        assert min(len(ex.input) for ex in data) > train_max


@pytest.mark.parametrize("which", SETS)
@pytest.mark.parametrize("name", sorted(RECOGNIZERS))
def test_negatives_are_near_misses(name, which):
    negatives = [ex.input for ex in _make(name, which) if ex.label == 0]
    far = [s for s in negatives if not _near_miss(name, s)]
    assert not far, far[:3]


def test_near_miss_check_rejects_a_far_string():
    assert not _near_miss("anbn", "aaaaab")
    assert not _near_miss("abab_star", "ababababbb")
    assert _near_miss("anbn", "aaabb")
    assert _near_miss("abab_star", "ababab")


@pytest.mark.parametrize("name", sorted(RECOGNIZERS))
def test_same_seed_same_data_other_seed_other_data(name):
    assert _make(name, "train", seed=3) == _make(name, "train", seed=3)
    assert _make(name, "train", seed=3) != _make(name, "train", seed=4)
    assert _make(name, "bin1", seed=3) == _make(name, "bin1", seed=3)


@pytest.mark.parametrize("n", [7, 1, 0, -2, 3.0, True])
def test_n_must_be_a_positive_even_int(n):
    with pytest.raises(ValueError, match="n must be an even int"):
        generate_formal("anbn", n, seed=0, min_len=1, max_len=40)
    with pytest.raises(ValueError, match="n must be an even int"):
        FORMAL_TASKS["parity"].generate(n, seed=0, **FORMAL_TASKS["parity"].train)


def test_bad_language_and_bin_are_rejected():
    with pytest.raises(ValueError, match="language must be one of"):
        generate_formal("dyck3", 4, seed=0, min_len=1, max_len=40)
    with pytest.raises(ValueError, match="min_len and max_len"):
        generate_formal("anbn", 4, seed=0, min_len=10, max_len=5)
    with pytest.raises(ValueError, match="no member"):
        generate_formal("abab_star", 4, seed=0, min_len=5, max_len=7)


def test_independent_recognizers_on_hand_examples():
    assert RECOGNIZERS["shuffle2"]("([)]") and not RECOGNIZERS["shuffle2"]("(]")
    assert not RECOGNIZERS["shuffle2"](")(") and RECOGNIZERS["shuffle2"]("[(])")
    assert RECOGNIZERS["anbn"]("aabb") and not RECOGNIZERS["anbn"]("aab")
    assert RECOGNIZERS["anbncn"]("abc") and not RECOGNIZERS["anbncn"]("aabbc")
    assert RECOGNIZERS["parity"]("abba") and not RECOGNIZERS["parity"]("ab")
    assert not RECOGNIZERS["aa_star"]("") and not RECOGNIZERS["parity"]("")


@pytest.mark.parametrize("family", FAMILIES)
def test_task_preset_keeps_every_family_within_one_percent(family):
    ref = count_parameters(preset_config("transformer", "task"))
    n = count_parameters(preset_config(family, "task"))
    assert abs(n / ref - 1) < 0.01, (family, n, ref)


def test_package_registry_holds_every_formal_task():
    assert set(FORMAL_TASKS) <= set(tasks.TASKS)
    assert all(tasks.TASKS[name] is spec for name, spec in FORMAL_TASKS.items())
    assert all(spec.name == name for name, spec in tasks.TASKS.items())
    assert all(hasattr(tasks, name) for name in tasks.__all__)
