"""The six MAD tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures") as character-level prompt-answer instances.

MAD ("mechanistic architecture design") probes a sequence model with six small synthetic tasks:
three kinds of in-context recall, selective copying, compression and memorization. MAD trains
next-token prediction on whole token sequences; here every instance is a :class:`Generation`
(a prompt, then an answer decoded greedily and scored by exact match), and every token is one
character. The formats:

========================  ==========================================  =====================
task                      prompt                                      answer
========================  ==========================================  =====================
``mad_icr``               ``kVkV...kV`` then ``|`` and a key seen     that key's value
``mad_noisy_icr``         as ``mad_icr``, some pairs replaced by two  that key's value
                          noise digits
``mad_fuzzy_icr``         ``_`` padding, pairs of a key span and a    that key's value span
                          value span, ``|`` and a key span seen
``mad_selective_copy``    data symbols scattered among ``.`` blanks,  the data symbols in
                          then ``=``                                  order
``mad_compression``       a random string, then ``#``                 the same string
``mad_memorization``      a key of a fixed map, then ``:``            its value
========================  ==========================================  =====================

Symbols. Keys, values and data symbols are ascii letters (:data:`LETTERS`, 52): with
``vocab_size`` V, the keys are the first ``V // 2`` letters and the values the next
``V - V // 2`` (MAD splits its vocabulary in the same way); copying and compression draw from the
first V letters. Noise symbols are digits (:data:`NOISE_SYMBOLS`, at most 10). The separators
``| _ . = # :`` (:data:`SEPARATORS`) are neither letters nor digits, so no separator occurs
inside a key, a value or a noise span. ``vocab_size`` counts key, value and data symbols only; a
task's character vocabulary adds its noise symbols and the one or two separators it uses, at most
52 + 10 + 1. A key or value of the fuzzy task is a span of distinct characters (a MAD motif).

``seq_len`` is the length of the model's input as MAD counts it: the prompt of the recall tasks
(context, ``|``, query key) and the prompt and answer of copying and compression (the answer
stands in for MAD's trailing placeholder tokens).

MAD's settings (from the MAD-Lab reference generators and the paper's appendix; "sweep" lists the
difficulty levels of the paper; MAD's vocabulary sizes count its special tokens):

===================  =========================================  ==========================
task                 MAD default                                sweep
===================  =========================================  ==========================
in-context recall    vocab 16, seq_len 128                      vocab 16-128,
                                                                seq_len 128-1024
noisy recall         vocab 32 of which 16 noise, seq_len 128,   noise 0.2-0.8
                     noise 0.2
fuzzy recall         vocab 16, seq_len 128, key and value       as in-context recall
                     spans of 1-3 tokens
selective copying    vocab 16, seq_len 256, 16 tokens to copy   seq_len 256-1024, vocab
                                                                16-128, 16-96 to copy
compression          vocab 16, seq_len 32                       seq_len 32-256, vocab 16-128
memorization         vocab 256 (127 facts), seq_len 32 (16      vocab 256-8192
                     facts a sequence), 256 training sequences
===================  =========================================  ==========================

MAD sweeps the training-set size over 800-12,800 instances for every task but memorization and
evaluates on 1,280. :data:`MAD_TASKS` records sizes as ``extra["num_train"]`` and
``extra["num_test"]``: 12,800 and 1,280 (our choice of sweep point: the largest, the easiest).
MAD trains for 200 epochs at batch size 128 with AdamW and cosine decay.

Where we depart from MAD:

* ``vocab_size`` excludes special and noise tokens (MAD counts them) and is at most 52. The
  training defaults keep MAD's 16 where MAD uses 16. Noisy recall: 16 key/value symbols and
  10 noise digits (our choice; MAD has 15 and 16).
* Noisy recall replaces exactly ``floor(frac_noise * slots)`` of the ``seq_len // 2 - 1`` context
  pair slots by noise (our choice; MAD draws each slot with probability ``frac_noise``), so the
  noise fraction of the context is the setting up to rounding.
* Fuzzy recall: probe keys have any span length in training and test alike (MAD probes its test
  instances with the longest keys); the probe is drawn among the keys of the context, and the
  prompt is left-padded with ``_`` to ``seq_len`` (MAD pads likewise).
* Selective copying places the data symbols at uniformly drawn distinct positions.
* Compression: MAD feeds the hidden state at its compression token to a small decoder that must
  rebuild the whole sequence from that one vector. A prompt-answer instance cannot restrict the
  decoder to that state: the answer (the string again) is decoded with the prompt in context. For
  a recurrent or memory model, whose state is all it keeps, this is still a compression test;
  attention can solve it by copying.
* Memorization: one fact an instance (prompt = key and ``:``, MAD's insert token; answer = value)
  instead of 16 a sequence. Keys and values are distinct 2-letter strings (our choice: one letter
  gives at most 26 facts); 128 facts over 32 letters and 4,096 training instances give each fact
  about 32 presentations, as MAD's default does. The map depends only on the ``map_seed`` setting,
  never on the instance seed, so it is the same in every split; the test set asks the same facts.
* The ``long`` test sets (twice the training ``seq_len``) are our choice, to probe length
  generalization.
"""

from __future__ import annotations

import math
import random
import string

from nestlearn.eval.tasks.base import Generation, TaskSpec

__all__ = [
    "LETTERS",
    "MAD_TASKS",
    "NOISE_SYMBOLS",
    "SEPARATORS",
    "compression",
    "fuzzy_in_context_recall",
    "in_context_recall",
    "key_value_alphabets",
    "memorization",
    "memorization_map",
    "noisy_in_context_recall",
    "selective_copying",
]

LETTERS = string.ascii_lowercase + string.ascii_uppercase
NOISE_SYMBOLS = string.digits
QUERY, PAD, BLANK, COPY, COMPRESS, INSERT = "|", "_", ".", "=", "#", ":"
SEPARATORS = QUERY + PAD + BLANK + COPY + COMPRESS + INSERT

_SOURCE = "Poli et al. 2024, Mechanistic Design and Scaling of Hybrid Architectures (MAD)"
_MAD_SIZES = {"num_train": 12_800, "num_test": 1_280}


def require_int(name: str, value, *, low: int, high: int | None = None) -> int:
    """``value`` if it is an int in ``[low, high]``; else a one-line error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def instance_rng(n: int, seed: int) -> random.Random:
    """Check ``n`` and ``seed`` and return the one random stream an instance list is drawn from."""
    require_int("n", n, low=0)
    # random.Random folds a negative seed onto its absolute value: -s would repeat s.
    require_int("seed", seed, low=0)
    return random.Random(seed)


def key_value_alphabets(vocab_size: int, num_keys: int | None = None) -> tuple[str, str]:
    """The key and value symbols of a ``vocab_size``-letter vocabulary.

    Keys are the first ``num_keys`` letters of :data:`LETTERS` (default ``vocab_size // 2``) and
    values the remaining ``vocab_size - num_keys``.
    """
    require_int("vocab_size", vocab_size, low=2, high=len(LETTERS))
    if num_keys is None:
        num_keys = vocab_size // 2
    require_int("num_keys", num_keys, low=1, high=vocab_size - 1)
    return LETTERS[:num_keys], LETTERS[num_keys:vocab_size]


def _noise_alphabet(noise_vocab_size: int) -> str:
    require_int("noise_vocab_size", noise_vocab_size, low=1, high=len(NOISE_SYMBOLS))
    return NOISE_SYMBOLS[:noise_vocab_size]


def _require_even_seq_len(seq_len: int) -> int:
    require_int("seq_len", seq_len, low=4)
    if seq_len % 2:
        raise ValueError(f"seq_len must be even (pairs of one key and one value), got {seq_len}")
    return seq_len


def _recall_prompt(rng: random.Random, keys: str, values: str, noise: str, *, num_slots: int,
                   num_noise: int) -> Generation:
    # A key's value is drawn at its first occurrence and repeated at later ones (MAD).
    noise_slots = set(rng.sample(range(num_slots), num_noise))
    mapping: dict[str, str] = {}
    parts = []
    for slot in range(num_slots):
        if slot in noise_slots:
            parts.append(rng.choice(noise) + rng.choice(noise))
            continue
        key = rng.choice(keys)
        if key not in mapping:
            mapping[key] = rng.choice(values)
        parts.append(key + mapping[key])
    probe = rng.choice(list(mapping))
    return Generation("".join(parts) + QUERY + probe, mapping[probe])


def in_context_recall(n: int, *, seed: int, vocab_size: int = 16,
                      seq_len: int = 128) -> list[Generation]:
    """In-context recall: ``seq_len // 2 - 1`` one-letter key-value pairs, ``|``, a key seen.

    Keys are drawn with replacement, so a key recurs with the same value; the probe is drawn among
    the keys of the context. ``len(prompt) == seq_len``, the answer is one letter.
    """
    rng = instance_rng(n, seed)
    keys, values = key_value_alphabets(vocab_size)
    num_slots = _require_even_seq_len(seq_len) // 2 - 1
    return [_recall_prompt(rng, keys, values, "", num_slots=num_slots, num_noise=0)
            for _ in range(n)]


def noisy_in_context_recall(n: int, *, seed: int, vocab_size: int = 16, seq_len: int = 128,
                            frac_noise: float = 0.2,
                            noise_vocab_size: int = 10) -> list[Generation]:
    """In-context recall where ``floor(frac_noise * slots)`` of the ``seq_len // 2 - 1`` pair
    slots of the context hold two noise digits instead of a key-value pair.

    ``frac_noise`` in ``[0, 1)``: at least one slot is a pair, so a probe always exists.
    """
    rng = instance_rng(n, seed)
    keys, values = key_value_alphabets(vocab_size)
    num_slots = _require_even_seq_len(seq_len) // 2 - 1
    noise = _noise_alphabet(noise_vocab_size)
    if (isinstance(frac_noise, bool) or not isinstance(frac_noise, int | float)
            or not 0 <= frac_noise < 1):
        raise ValueError(f"frac_noise must be a number in [0, 1), got {frac_noise!r}")
    num_noise = math.floor(frac_noise * num_slots)
    return [_recall_prompt(rng, keys, values, noise, num_slots=num_slots, num_noise=num_noise)
            for _ in range(n)]


def _span(rng: random.Random, alphabet: str, max_len: int) -> str:
    return "".join(rng.sample(alphabet, rng.randint(1, max_len)))


def _fuzzy_prompt(rng: random.Random, keys: str, values: str, *, seq_len: int,
                  k_motif_size: int, v_motif_size: int) -> Generation:
    # Room for the longest probe key after the context and the query marker.
    budget = seq_len - 1 - k_motif_size
    mapping: dict[str, str] = {}
    parts, length = [], 0
    while length + k_motif_size + v_motif_size <= budget:
        key = _span(rng, keys, k_motif_size)
        if key not in mapping:
            mapping[key] = _span(rng, values, v_motif_size)
        parts.append(key + mapping[key])
        length += len(parts[-1])
    probe = rng.choice(list(mapping))
    padding = PAD * (seq_len - length - 1 - len(probe))
    return Generation(padding + "".join(parts) + QUERY + probe, mapping[probe])


def fuzzy_in_context_recall(n: int, *, seed: int, vocab_size: int = 16, seq_len: int = 128,
                            k_motif_size: int = 3, v_motif_size: int = 3) -> list[Generation]:
    """In-context recall where keys and values are spans of 1 to ``k_motif_size`` (resp.
    ``v_motif_size``) distinct letters; the answer is the probed key's value span.

    A span of key letters always ends where value letters begin, so the pairs are unambiguous.
    The context is left-padded with ``_`` so that ``len(prompt) == seq_len``.
    """
    rng = instance_rng(n, seed)
    keys, values = key_value_alphabets(vocab_size)
    require_int("k_motif_size", k_motif_size, low=1, high=len(keys))
    require_int("v_motif_size", v_motif_size, low=1, high=len(values))
    min_len = 2 * k_motif_size + v_motif_size + 1
    require_int("seq_len", seq_len, low=min_len)
    return [_fuzzy_prompt(rng, keys, values, seq_len=seq_len, k_motif_size=k_motif_size,
                          v_motif_size=v_motif_size) for _ in range(n)]


def _data_alphabet(vocab_size: int) -> str:
    require_int("vocab_size", vocab_size, low=2, high=len(LETTERS))
    return LETTERS[:vocab_size]


def selective_copying(n: int, *, seed: int, vocab_size: int = 16, seq_len: int = 256,
                      num_tokens_to_copy: int = 16) -> list[Generation]:
    """Selective copying: ``num_tokens_to_copy`` letters scattered among ``.`` blanks in a region
    of ``seq_len - num_tokens_to_copy - 1`` characters, then ``=``; the answer is the letters in
    order. ``len(prompt) + len(answer) == seq_len``.
    """
    rng = instance_rng(n, seed)
    alphabet = _data_alphabet(vocab_size)
    require_int("num_tokens_to_copy", num_tokens_to_copy, low=1)
    require_int("seq_len", seq_len, low=2 * num_tokens_to_copy + 1)
    region_len = seq_len - num_tokens_to_copy - 1
    out = []
    for _ in range(n):
        tokens = [rng.choice(alphabet) for _ in range(num_tokens_to_copy)]
        region = [BLANK] * region_len
        for position, token in zip(sorted(rng.sample(range(region_len), num_tokens_to_copy)),
                                   tokens, strict=True):
            region[position] = token
        out.append(Generation("".join(region) + COPY, "".join(tokens)))
    return out


def compression(n: int, *, seed: int, vocab_size: int = 16, seq_len: int = 32) -> list[Generation]:
    """Compression: a random string of ``seq_len - 1`` letters, then ``#``; the answer is the
    string again (see the module docstring for what this keeps of MAD's compression task)."""
    rng = instance_rng(n, seed)
    alphabet = _data_alphabet(vocab_size)
    require_int("seq_len", seq_len, low=2)
    out = []
    for _ in range(n):
        text = "".join(rng.choice(alphabet) for _ in range(seq_len - 1))
        out.append(Generation(text + COMPRESS, text))
    return out


def _spell(index: int, alphabet: str, length: int) -> str:
    # The base-len(alphabet) digits of index, most significant first.
    chars = []
    for _ in range(length):
        index, digit = divmod(index, len(alphabet))
        chars.append(alphabet[digit])
    return "".join(reversed(chars))


def memorization_map(*, vocab_size: int = 32, num_facts: int = 128, key_len: int = 2,
                     value_len: int = 2, map_seed: int = 12345) -> dict[str, str]:
    """The fixed fact map of :func:`memorization`: ``num_facts`` distinct keys of ``key_len``
    key letters, mapped one-to-one to distinct values of ``value_len`` value letters.

    It depends only on these settings (``map_seed`` included), never on an instance seed.
    """
    keys, values = key_value_alphabets(vocab_size)
    require_int("key_len", key_len, low=1, high=8)
    require_int("value_len", value_len, low=1, high=8)
    require_int("map_seed", map_seed, low=0)
    capacity = min(len(keys) ** key_len, len(values) ** value_len)
    require_int("num_facts", num_facts, low=1, high=capacity)
    rng = random.Random(map_seed)
    key_ids = rng.sample(range(len(keys) ** key_len), num_facts)
    value_ids = rng.sample(range(len(values) ** value_len), num_facts)
    return {_spell(k, keys, key_len): _spell(v, values, value_len)
            for k, v in zip(key_ids, value_ids, strict=True)}


def memorization(n: int, *, seed: int, vocab_size: int = 32, num_facts: int = 128,
                 key_len: int = 2, value_len: int = 2,
                 map_seed: int = 12345) -> list[Generation]:
    """Memorization: prompt = a key of the fixed :func:`memorization_map` and ``:``, answer = its
    value. The facts are drawn uniformly with replacement; only the weights can hold the map."""
    rng = instance_rng(n, seed)
    facts = list(memorization_map(vocab_size=vocab_size, num_facts=num_facts, key_len=key_len,
                                  value_len=value_len, map_seed=map_seed).items())
    out = []
    for _ in range(n):
        key, value = rng.choice(facts)
        out.append(Generation(key + INSERT, value))
    return out


def _spec(name: str, generate, train: dict, *, long: dict | None, description: str,
          extra: dict | None = None) -> TaskSpec:
    tests = {"test": dict(train)}
    if long is not None:
        tests["long"] = {**train, **long}
    return TaskSpec(name=name, kind="generation", generate=generate, train=train, tests=tests,
                    description=description, source=_SOURCE,
                    extra=dict(extra if extra is not None else _MAD_SIZES))


MAD_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _spec("mad_icr", in_context_recall, {"vocab_size": 16, "seq_len": 128},
              long={"seq_len": 256},
              description="in-context recall: key-value pairs, then a key; answer its value"),
        _spec("mad_fuzzy_icr", fuzzy_in_context_recall,
              {"vocab_size": 16, "seq_len": 128, "k_motif_size": 3, "v_motif_size": 3},
              long={"seq_len": 256},
              description="fuzzy in-context recall: keys and values are spans of 1-3 letters"),
        _spec("mad_noisy_icr", noisy_in_context_recall,
              {"vocab_size": 16, "seq_len": 128, "frac_noise": 0.2, "noise_vocab_size": 10},
              long={"seq_len": 256},
              description="noisy in-context recall: noise digits replace some key-value pairs"),
        _spec("mad_selective_copy", selective_copying,
              {"vocab_size": 16, "seq_len": 256, "num_tokens_to_copy": 16},
              long={"seq_len": 512},
              description="selective copying: copy the letters scattered among blanks, in order"),
        _spec("mad_compression", compression, {"vocab_size": 16, "seq_len": 32},
              long={"seq_len": 64},
              description="compression: reproduce the string read before the marker"),
        _spec("mad_memorization", memorization,
              {"vocab_size": 32, "num_facts": 128, "key_len": 2, "value_len": 2,
               "map_seed": 12345},
              long=None,
              description="memorization: a fixed key-value map, the same in every split",
              extra={"num_train": 4_096, "num_test": 1_280}),
    )
}
