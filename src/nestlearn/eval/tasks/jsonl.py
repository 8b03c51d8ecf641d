"""Tasks from JSON Lines files, and the character vocabulary of a task.

A task file holds one example a line, all of one kind:

* classification: ``{"input": "abba", "label": 1}`` (``input`` a non-empty string, ``label`` an
  int; ``true``/``false`` are not ints here);
* generation: ``{"prompt": "k1v1k2v2|k1", "answer": "v1"}`` (both non-empty strings).

Blank lines are skipped. Anything else (a line that is not JSON, a missing, extra or misspelled
key, a kind different from the file's first example, an empty string, a label that is not an int)
is a ``ValueError`` naming the file and the line number. Files are UTF-8.

:class:`CharVocab` maps a task's characters to token ids. Its tokens are, in order: the special
tokens ``<pad>``, ``<sep>``, ``<eos>``; the characters of the training examples, sorted; then,
for classification, one token per label seen in training, in increasing order of the label.
Decision: a character (or label) absent from the training examples is an error when encoding,
not an "unknown" token. Every task here has a closed alphabet, so an unseen character in a test
file means the test file does not belong to the training file, which should be reported rather
than scored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from nestlearn.eval.tasks.base import Classification, Example, Generation

__all__ = ["CharVocab", "read_jsonl", "write_jsonl"]

_KEYS = {"classification": ("input", "label"), "generation": ("prompt", "answer")}
_KINDS = {frozenset(keys): kind for kind, keys in _KEYS.items()}


def _kind_of(example: Example) -> str:
    if isinstance(example, Classification):
        return "classification"
    if isinstance(example, Generation):
        return "generation"
    raise TypeError(f"examples must be Classification or Generation, got "
                    f"{type(example).__name__}")


def _check_string(value, key: str) -> str | None:
    """The problem with ``value`` as the string field ``key``, or None."""
    if not isinstance(value, str):
        return f'"{key}" must be a string, got {type(value).__name__}'
    if not value:
        return f'"{key}" must be a non-empty string'
    return None


def _parse(line: str) -> tuple[str, Example]:
    """The kind and example of one non-blank line; ValueError (without location) if malformed."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg})") from None
    kind = _KINDS.get(frozenset(record)) if isinstance(record, dict) else None
    if kind is None:
        got = (f"keys {{{', '.join(json.dumps(k) for k in sorted(record))}}}"
               if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object")
        raise ValueError(f"expected an object with keys exactly {{input, label}} or "
                         f"{{prompt, answer}}, got {got}")
    if kind == "classification":
        problem = _check_string(record["input"], "input")
        label = record["label"]
        if problem is None and (isinstance(label, bool) or not isinstance(label, int)):
            problem = f'"label" must be an int, got {json.dumps(label)}'
        if problem:
            raise ValueError(problem)
        return kind, Classification(record["input"], label)
    problem = _check_string(record["prompt"], "prompt") or _check_string(record["answer"],
                                                                          "answer")
    if problem:
        raise ValueError(problem)
    return kind, Generation(record["prompt"], record["answer"])


def read_jsonl(path: str | os.PathLike) -> list[Example]:
    """The examples of the JSON Lines file ``path`` (see the module docstring for the format)."""
    examples: list[Example] = []
    file_kind = None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                kind, example = _parse(line)
                if file_kind is not None and kind != file_kind:
                    raise ValueError(f"a {kind} example in a file of {file_kind} examples "
                                     f"(keys {' and '.join(_KEYS[file_kind])})")
            except ValueError as err:
                raise ValueError(f"{path}, line {number}: {err}") from None
            file_kind = kind
            examples.append(example)
    if not examples:
        raise ValueError(f"{path}: no examples (every line is blank)")
    return examples


def write_jsonl(path: str | os.PathLike, examples: Iterable[Example]) -> None:
    """Write ``examples`` (all of one kind) to ``path``, one JSON object a line, UTF-8."""
    lines = []
    first_kind = None
    for i, example in enumerate(examples):
        kind = _kind_of(example)
        if first_kind is not None and kind != first_kind:
            raise ValueError(f"examples must all be of one kind: example {i} is {kind}, "
                             f"the first is {first_kind}")
        first_kind = kind
        if kind == "classification":
            record = {"input": example.input, "label": example.label}
        else:
            record = {"prompt": example.prompt, "answer": example.answer}
        line = json.dumps(record, ensure_ascii=False)
        # Checked by the reader's own parser, so that whatever is written can be read back.
        try:
            _parse(line)
        except ValueError as err:
            raise ValueError(f"example {i}: {err}") from None
        lines.append(line + "\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


class CharVocab:
    """Token ids of a task: special tokens, then characters, then label tokens (see the module
    docstring). Build it from the training examples with :meth:`from_examples`."""

    PAD, SEP, EOS = "<pad>", "<sep>", "<eos>"
    SPECIALS = (PAD, SEP, EOS)

    def __init__(self, chars: Iterable[str], labels: Iterable[int] = ()):
        chars = sorted(set(chars))
        labels = sorted(set(labels))
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("chars must be single characters")
        if any(isinstance(x, bool) or not isinstance(x, int) for x in labels):
            raise ValueError("labels must be ints")
        self.chars = chars
        self.labels = labels
        self.tokens = [*self.SPECIALS, *chars, *(f"<label:{x}>" for x in labels)]
        self._char_ids = {c: i + len(self.SPECIALS) for i, c in enumerate(chars)}
        first_label = len(self.SPECIALS) + len(chars)
        self._label_ids = {x: first_label + i for i, x in enumerate(labels)}
        self._id_labels = {i: x for x, i in self._label_ids.items()}

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> CharVocab:
        """The vocabulary of ``examples`` (the training set): their characters and labels."""
        if not examples:
            raise ValueError("examples must be non-empty to build a vocabulary")
        chars: set[str] = set()
        labels: set[int] = set()
        for example in examples:
            if _kind_of(example) == "classification":
                chars.update(example.input)
                labels.add(example.label)
            else:
                chars.update(example.prompt)
                chars.update(example.answer)
        return cls(chars, labels)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def sep_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    def encode(self, text: str) -> list[int]:
        """The ids of the characters of ``text``; ValueError for a character not in training."""
        ids = []
        for position, ch in enumerate(text):
            i = self._char_ids.get(ch)
            if i is None:
                raise ValueError(f"unknown character {ch!r} (U+{ord(ch):04X}) at position "
                                 f"{position} of {text[:40]!r}: not in the training examples, "
                                 f"whose characters are {''.join(self.chars)!r}")
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` up to the first ``<eos>``: ``<pad>`` is skipped, characters are
        themselves, ``<sep>`` and label tokens are written as their names (so a prediction that
        emits one never equals a plain-text answer)."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id must be in 0..{len(self.tokens) - 1}, got {i}")
            if i == self.eos_id:
                break
            if i != self.pad_id:
                out.append(self.tokens[i])
        return "".join(out)

    def label_id(self, label: int) -> int:
        """The token id of ``label``; ValueError for a label not in training."""
        if label not in self._label_ids or isinstance(label, bool):
            raise ValueError(f"unknown label {label!r}: the training labels are {self.labels}")
        return self._label_ids[label]

    def label_of(self, token_id: int) -> int:
        """The label whose token is ``token_id``; ValueError if it is not a label token."""
        if token_id not in self._id_labels:
            raise ValueError(f"token id {token_id} is not a label token; label tokens are "
                             f"{sorted(self._id_labels)}")
        return self._id_labels[token_id]

    def __repr__(self) -> str:
        return f"CharVocab(chars={''.join(self.chars)!r}, labels={self.labels})"
