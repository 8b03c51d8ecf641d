"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology: Measuring and Improving
Recall in Efficient Language Models") as character-level prompt-answer instances.

An instance binds ``num_kv_pairs`` distinct keys to values, then asks for the values of
``num_queries`` of those keys at once::

    prompt = [filler] k1 V1 [filler] k2 V2 ... kP VP [filler] | q1 q2 ... qQ
    answer = value(q1) value(q2) ... value(qQ)

Every key, value and filler symbol is one character (the symbols of
:mod:`nestlearn.eval.tasks.mad`): keys are the first ``num_keys`` letters of ``LETTERS``, values
the next ``vocab_size - num_keys``, filler is noise digits (``filler="noise"``, the first
``noise_vocab_size`` digits) or ``_`` padding (``filler="pad"``), and ``|`` separates the context
from the queries. ``seq_len`` is ``len(prompt)``: the ``2 * num_kv_pairs`` pair characters, the
marker, the ``num_queries`` query keys and ``seq_len - 2 * num_kv_pairs - 1 - num_queries``
filler characters, split into the ``num_kv_pairs + 1`` gaps around the pairs uniformly at random
(never inside a pair). The keys of an instance are distinct; the queried keys are distinct and in
random order.

Zoology's setting (its reference generator and paper): a vocabulary of 8,192 tokens split into
keys and values; sequence lengths 64-512 with 4-64 pairs (``4 * num_kv_pairs <= seq_len``);
every key queried once; queries placed in the part after the pairs at gaps drawn from a power
law (exponent 0.01), the other positions filled with random tokens; about 100,000 training
examples across the configurations (as we recall it).

Where we depart from Zoology:

* Queries come together after ``|`` and the answer lists their values in order, instead of
  queries scattered through the second half with the value predicted after each. The filler sits
  between the pairs, so a pair's distance to the queries varies as it does in Zoology.
* The vocabulary is at most 52 letters, so key and value symbols are few; a value is drawn with
  replacement (Zoology's values are distinct), so 32 pairs fit beside a 16-value alphabet. The
  filler is noise digits outside the key and value alphabets (Zoology's random filler is drawn
  from the whole vocabulary).
* The settings of :data:`MQAR_TASKS` are our choice: 48 letters (32 keys, 16 values), every
  pair queried, ``seq_len = 8 * num_kv_pairs``, 12,800 training and 1,280 test instances
  (``extra``); ``mqar`` has 8 pairs, as ``mqar_8``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from itertools import pairwise

from nestlearn.eval.tasks.base import Generation, TaskSpec
from nestlearn.eval.tasks.mad import (
    NOISE_SYMBOLS,
    PAD,
    QUERY,
    instance_rng,
    key_value_alphabets,
    require_int,
)

__all__ = ["FILLERS", "MQAR_TASKS", "mqar", "mqar_capacity_sweep"]

FILLERS = ("noise", "pad")

_SOURCE = "Arora et al. 2023, Zoology: Measuring and Improving Recall in Efficient Language Models"
_SIZES = {"num_train": 12_800, "num_test": 1_280}


def _filler_alphabet(filler: str, noise_vocab_size: int) -> str:
    if filler not in FILLERS:
        raise ValueError(f"filler must be one of {FILLERS}, got {filler!r}")
    require_int("noise_vocab_size", noise_vocab_size, low=1, high=len(NOISE_SYMBOLS))
    return NOISE_SYMBOLS[:noise_vocab_size] if filler == "noise" else PAD


def _gaps(rng: random.Random, total: int, count: int) -> list[int]:
    # A uniform composition of total into count parts (stars and bars): count - 1 bars among
    # total + count - 1 places.
    bars = sorted(rng.sample(range(total + count - 1), count - 1))
    edges = [-1, *bars, total + count - 1]
    return [right - left - 1 for left, right in pairwise(edges)]


def _mqar_prompt(rng: random.Random, keys: str, values: str, filler: str, *, seq_len: int,
                 num_kv_pairs: int, num_queries: int) -> Generation:
    pair_keys = rng.sample(keys, num_kv_pairs)
    value_of = {key: rng.choice(values) for key in pair_keys}
    num_filler = seq_len - 2 * num_kv_pairs - 1 - num_queries
    gaps = _gaps(rng, num_filler, num_kv_pairs + 1)
    parts = []
    for gap, key in zip(gaps, [*pair_keys, None], strict=True):
        parts.append("".join(rng.choice(filler) for _ in range(gap)))
        if key is not None:
            parts.append(key + value_of[key])
    queries = rng.sample(pair_keys, num_queries)
    prompt = "".join(parts) + QUERY + "".join(queries)
    return Generation(prompt, "".join(value_of[key] for key in queries))


def mqar(n: int, *, seed: int, num_kv_pairs: int = 8, num_queries: int | None = None,
         seq_len: int = 64, vocab_size: int = 48, num_keys: int | None = None,
         filler: str = "noise", noise_vocab_size: int = 10) -> list[Generation]:
    """``n`` MQAR instances (format in the module docstring).

    Args:
        num_kv_pairs: key-value pairs in the context, at most ``num_keys`` (keys are distinct).
        num_queries: keys asked, in ``[1, num_kv_pairs]``; ``None`` asks every pair.
        seq_len: ``len(prompt)``, at least ``2 * num_kv_pairs + 1 + num_queries``; the rest is
            filler.
        vocab_size: key and value letters, in ``[2, 52]``.
        num_keys: how many of them are keys (``None``: ``vocab_size // 2``); the rest are values.
        filler: ``"noise"`` (random digits) or ``"pad"`` (``_``).
        noise_vocab_size: noise digits used by ``filler="noise"``, in ``[1, 10]``.
    """
    rng = instance_rng(n, seed)
    keys, values = key_value_alphabets(vocab_size, num_keys)
    filler_symbols = _filler_alphabet(filler, noise_vocab_size)
    require_int("num_kv_pairs", num_kv_pairs, low=1, high=len(keys))
    if num_queries is None:
        num_queries = num_kv_pairs
    require_int("num_queries", num_queries, low=1, high=num_kv_pairs)
    require_int("seq_len", seq_len, low=2 * num_kv_pairs + 1 + num_queries)
    return [_mqar_prompt(rng, keys, values, filler_symbols, seq_len=seq_len,
                         num_kv_pairs=num_kv_pairs, num_queries=num_queries) for _ in range(n)]


def _mqar_spec(name: str, train: dict, description: str) -> TaskSpec:
    # Probe the settings once, so a bad sweep fails where it is built.
    mqar(0, seed=0, **train)
    long = {**train, "seq_len": 2 * train["seq_len"]}
    return TaskSpec(name=name, kind="generation", generate=mqar, train=train,
                    tests={"test": dict(train), "long": long}, description=description,
                    source=_SOURCE, extra=dict(_SIZES))


def mqar_capacity_sweep(num_kv_pairs: Iterable[int] = (4, 8, 16, 32), *,
                        seq_len_per_pair: int = 8, **settings) -> dict[str, TaskSpec]:
    """One MQAR task ``mqar_<P>`` per pair count P: every pair queried, ``seq_len`` =
    ``seq_len_per_pair * P`` (the ``long`` test set doubles it), the other settings shared
    (``settings`` overrides the vocabulary, the filler...).

    A bad pair count or setting raises here, not when the task is first generated.
    """
    require_int("seq_len_per_pair", seq_len_per_pair, low=4)
    base = {"vocab_size": 48, "num_keys": 32, "filler": "noise", "noise_vocab_size": 10,
            **settings}
    specs = {}
    for pairs in num_kv_pairs:
        require_int("num_kv_pairs", pairs, low=1)
        train = {**base, "num_kv_pairs": pairs, "num_queries": pairs,
                 "seq_len": seq_len_per_pair * pairs}
        specs[f"mqar_{pairs}"] = _mqar_spec(
            f"mqar_{pairs}", train, f"multi-query associative recall, {pairs} pairs")
    return specs


MQAR_TASKS: dict[str, TaskSpec] = {
    "mqar": _mqar_spec(
        "mqar",
        {"vocab_size": 48, "num_keys": 32, "filler": "noise", "noise_vocab_size": 10,
         "num_kv_pairs": 8, "num_queries": 8, "seq_len": 64},
        "multi-query associative recall: key-value pairs, then keys; answer their values"),
    **mqar_capacity_sweep((8, 16, 32)),
}
