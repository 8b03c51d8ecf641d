"""Formal-language recognition: a string in, accept (label 1) or reject (label 0) out.

The setting of Irie et al. (2023), Table 5 of the NL paper: a model is trained on strings whose
lengths lie in one range and tested on that range (test set ``"bin0"``) and on longer strings never
seen in training (``"bin1"``). Every language here uses the same bins:

* train and ``bin0``: lengths 1..40;
* ``bin1``: lengths 41..80.

A language only has positives at some lengths (``(abab)*`` at multiples of 4, ``a^n b^n c^n`` at
multiples of 3); positives are drawn at a uniformly random allowed length of the bin, negatives at
the lengths their construction gives, always inside the bin.

The languages (``FORMAL_TASKS`` keys):

* ``parity``: strings over {a, b}, accepted iff the number of b's is even (the empty count, an
  all-a string, is even). Positives and negatives are uniform over the strings of their parity at
  a uniformly random length of the bin, so both classes have the same length distribution.
* ``aa_star``: ``(aa)*`` over {a}: a^n accepted iff n is even. Negatives are a^n with n odd.
* ``abab_star``: ``(abab)*`` over {a, b}.
* ``anbn``: ``a^n b^n``, n >= 1.
* ``anbncn``: ``a^n b^n c^n``, n >= 1.
* ``shuffle2``: the shuffle (any interleaving) of two Dyck-1 languages with the bracket pairs
  ``()`` and ``[]``: accepted iff the ``()`` brackets alone are balanced and well nested, and so
  are the ``[]`` brackets (their interleaving is free: ``([)]`` is accepted).

Negatives are hard near misses of a positive, each one checked to be outside the language: one
symbol substituted, inserted or deleted, two adjacent symbols swapped, a count off by one
(``a^n b^(n+1)``, ``(ab)^(2k+1)``), a single unmatched or misordered bracket. Every set holds
exactly ``n / 2`` positives and ``n / 2`` negatives, shuffled.

Determinism: ``generate(n, seed=s, ...)`` draws everything from ``random.Random(s)``, so the same
seed gives the same list. The runner (``nestlearn.eval.runner.split_seed``) derives the seed of
each set (train, each test set) from the run seed and the set's name, so train and test
instances are drawn from different seeds; short strings of a small language (``(aa)*`` has twenty
positives of length <= 40) still occur in both, as in any finite-alphabet recognition benchmark.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from nestlearn.eval.tasks.base import Classification, TaskSpec

__all__ = ["BIN0", "BIN1", "FORMAL_TASKS", "LANGUAGES", "generate_formal", "in_language"]

BIN0 = (1, 40)
"""Inclusive length range of the training set and of test set ``bin0``."""
BIN1 = (41, 80)
"""Inclusive length range of test set ``bin1`` (never seen in training)."""

_MAX_TRIES = 10_000


def _in_parity(s: str) -> bool:
    return set(s) <= {"a", "b"} and s.count("b") % 2 == 0


def _in_shuffle2(s: str) -> bool:
    if not set(s) <= set("()[]"):
        return False
    for opener, closer in ("()", "[]"):
        depth = 0
        for ch in s:
            depth += (ch == opener) - (ch == closer)
            if depth < 0:
                return False
        if depth:
            return False
    return True


def _in_counted(s: str, letters: str) -> bool:
    n = len(s) // len(letters)
    return n >= 1 and s == "".join(ch * n for ch in letters)


_MEMBERSHIP: dict[str, Callable[[str], bool]] = {
    "parity": _in_parity,
    "aa_star": lambda s: re.fullmatch(r"(aa)*", s) is not None,
    "abab_star": lambda s: re.fullmatch(r"(abab)*", s) is not None,
    "anbn": lambda s: _in_counted(s, "ab"),
    "anbncn": lambda s: _in_counted(s, "abc"),
    "shuffle2": _in_shuffle2,
}


def in_language(language: str, string: str) -> bool:
    """Whether ``string`` is in ``language`` (one of ``LANGUAGES``); the empty string never is."""
    _check_language(language)
    return bool(string) and _MEMBERSHIP[language](string)


def _dyck(rng: random.Random, pairs: int, opener: str, closer: str) -> str:
    """A uniformly random Dyck word with ``pairs`` bracket pairs (cycle lemma: of the cyclic
    shifts of a word with ``pairs`` openers and ``pairs + 1`` closers, exactly one, the one
    starting after the first minimum of the height, keeps every proper prefix >= 0)."""
    word = [opener] * pairs + [closer] * (pairs + 1)
    rng.shuffle(word)
    height, low, cut = 0, 0, 0
    for i, ch in enumerate(word):
        height += 1 if ch == opener else -1
        if height < low:
            low, cut = height, i + 1
    rotated = word[cut:] + word[:cut]
    assert rotated[-1] == closer
    return "".join(rotated[:-1])


def _positive(language: str, rng: random.Random, length: int) -> str:
    """A random member of ``language`` of exactly ``length`` symbols (an allowed length)."""
    if language == "parity":
        word = [rng.choice("ab") for _ in range(length)]
        if word.count("b") % 2:
            i = rng.randrange(length)
            word[i] = "a" if word[i] == "b" else "b"
        return "".join(word)
    if language == "aa_star":
        return "a" * length
    if language == "abab_star":
        return "abab" * (length // 4)
    if language == "anbn":
        return "a" * (length // 2) + "b" * (length // 2)
    if language == "anbncn":
        return "".join(ch * (length // 3) for ch in "abc")
    assert language == "shuffle2"
    round_pairs = rng.randint(0, length // 2)
    left = _dyck(rng, round_pairs, "(", ")")
    right = _dyck(rng, length // 2 - round_pairs, "[", "]")
    slots = sorted(rng.sample(range(length), len(left)))
    out, i, j = [], 0, 0
    for pos in range(length):
        if i < len(slots) and slots[i] == pos:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    return "".join(out)


def _allowed(language: str, length: int) -> bool:
    step = {"parity": 1, "aa_star": 2, "abab_star": 4, "anbn": 2, "anbncn": 3, "shuffle2": 2}
    return length >= 1 and length % step[language] == 0


_ALPHABETS = {"parity": "ab", "aa_star": "a", "abab_star": "ab", "anbn": "ab", "anbncn": "abc",
              "shuffle2": "()[]"}


def _edit(rng: random.Random, s: str, alphabet: str) -> str:
    """One random edit of ``s``: substitute, insert or delete a symbol, or swap two neighbours."""
    op = rng.choice(("substitute", "insert", "delete", "swap"))
    i = rng.randrange(len(s))
    if op == "substitute":
        return s[:i] + rng.choice([c for c in alphabet if c != s[i]] or [s[i]]) + s[i + 1:]
    if op == "insert":
        j = rng.randrange(len(s) + 1)
        return s[:j] + rng.choice(alphabet) + s[j:]
    if op == "delete":
        return s[:i] + s[i + 1:]
    if len(s) < 2:
        return s
    i = rng.randrange(len(s) - 1)
    return s[:i] + s[i + 1] + s[i] + s[i + 2:]


def _off_by_one(language: str, rng: random.Random, s: str) -> str:
    """A count off by one: one block of ``a^n b^n (c^n)`` one longer or shorter, or one ``ab``
    too many or too few in ``(abab)*``; for ``shuffle2`` one bracket removed or doubled."""
    delta = rng.choice((-1, 1))
    if language == "abab_star":
        return s + "ab" if delta > 0 else s[:-2]
    if language in ("anbn", "anbncn"):
        letters = "ab" if language == "anbn" else "abc"
        n = len(s) // len(letters)
        block = rng.randrange(len(letters))
        return "".join(ch * (n + delta * (k == block)) for k, ch in enumerate(letters))
    i = rng.randrange(len(s))
    return s[:i] + s[i] * (1 + delta) + s[i + 1:]


def _negative(language: str, rng: random.Random, lo: int, hi: int) -> str:
    """A near miss of ``language`` with a length in ``[lo, hi]``."""
    if language == "parity":
        s = _positive("parity", rng, rng.randint(lo, hi))
        i = rng.randrange(len(s))
        return s[:i] + ("a" if s[i] == "b" else "b") + s[i + 1:]
    if language == "aa_star":
        odd = [n for n in range(lo, hi + 1) if n % 2]
        return "a" * rng.choice(odd)
    # a near miss of a positive of length up to 2 beyond the bin lands inside it
    sources = [n for n in range(max(1, lo - 2), hi + 3) if _allowed(language, n)]
    for _ in range(_MAX_TRIES):
        s = _positive(language, rng, rng.choice(sources))
        if rng.random() < 0.5:
            s = _edit(rng, s, _ALPHABETS[language])
        else:
            s = _off_by_one(language, rng, s)
        if lo <= len(s) <= hi and not in_language(language, s):
            return s
    raise RuntimeError(f"no near miss of {language} found in lengths {lo}..{hi}")


def generate_formal(language: str, n: int, *, seed: int, min_len: int, max_len: int
                    ) -> list[Classification]:
    """``n`` labelled strings of ``language`` with lengths in ``[min_len, max_len]``: exactly
    ``n / 2`` members (label 1) and ``n / 2`` near-miss non-members (label 0), shuffled."""
    _check_language(language)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n % 2:
        raise ValueError(f"n must be an even int >= 2 (half positives, half negatives), got {n!r}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"min_len and max_len must satisfy 1 <= min_len <= max_len, got "
                         f"{min_len}, {max_len}")
    lengths = [m for m in range(min_len, max_len + 1) if _allowed(language, m)]
    if not lengths:
        raise ValueError(f"{language} has no member with a length in {min_len}..{max_len}")
    rng = random.Random(seed)
    pos = [Classification(_positive(language, rng, rng.choice(lengths)), 1) for _ in range(n // 2)]
    neg = [Classification(_negative(language, rng, min_len, max_len), 0) for _ in range(n // 2)]
    out = pos + neg
    rng.shuffle(out)
    return out


def _check_language(language: str) -> None:
    if language not in _MEMBERSHIP:
        raise ValueError(f"language must be one of {list(_MEMBERSHIP)}, got {language!r}")


LANGUAGES = tuple(_MEMBERSHIP)


@dataclass(frozen=True)
class _Generator:
    """``generate(n, seed=..., min_len=..., max_len=...)`` for one language (picklable)."""

    language: str

    def __call__(self, n: int, *, seed: int, min_len: int, max_len: int) -> list[Classification]:
        return generate_formal(self.language, n, seed=seed, min_len=min_len, max_len=max_len)


_DESCRIPTIONS = {
    "parity": "strings over {a,b}; accept iff the number of b's is even",
    "aa_star": "(aa)*: a^n, accept iff n is even",
    "abab_star": "(abab)*",
    "anbn": "a^n b^n, n >= 1",
    "anbncn": "a^n b^n c^n, n >= 1",
    "shuffle2": "shuffle of Dyck-1 over () and Dyck-1 over []",
}

FORMAL_TASKS: dict[str, TaskSpec] = {
    name: TaskSpec(
        name=name,
        kind="classification",
        generate=_Generator(name),
        train={"min_len": BIN0[0], "max_len": BIN0[1]},
        tests={"bin0": {"min_len": BIN0[0], "max_len": BIN0[1]},
               "bin1": {"min_len": BIN1[0], "max_len": BIN1[1]}},
        description=_DESCRIPTIONS[name],
        source="Irie et al. 2023; NL paper Table 5",
    )
    for name in _MEMBERSHIP
}
