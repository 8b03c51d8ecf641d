"""Task instances as token tensors for a causal LM, and their scoring.

Every instance becomes one right-padded row of ``inputs`` with a row of ``targets`` of the same
length: ``targets[t]`` is the token the model must predict from position ``t`` (its logits at
``t``), ``-100`` where nothing is scored.

* classification ``(input, label)``: ``inputs = input <sep>``; the one scored position is
  ``<sep>``, whose target is the label's token. The prediction is the label token with the
  largest logit there (an argmax over the label tokens only, so it is always a label).
* generation ``(prompt, answer)``: ``inputs = prompt <sep> answer``; the scored positions are
  ``<sep>`` and every answer character, with targets ``answer <eos>``. The loss in training is
  on these positions only.

Exact match of greedy decoding is computed without decoding: greedy decoding emits exactly
``answer <eos>`` if and only if, fed the true prefix, the argmax at every scored position is
its target (by induction over the answer: each step's prefix is then the true one). So one
teacher-forced forward pass scores a whole batch; ``tests/eval/test_runner.py`` checks this
against token-by-token greedy decoding (a forward pass of the growing prefix per token).

Right padding is safe for every family here: all of them are causal (attention masks the
future, the memories read only earlier tokens), so the padding after a row's last token never
changes the logits of its scored positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nestlearn.eval.tasks.base import Classification, Example, Generation
from nestlearn.eval.tasks.jsonl import CharVocab

__all__ = ["EncodedSet", "Scores", "encode", "score_logits", "task_kind"]

IGNORE = -100


@dataclass(frozen=True)
class EncodedSet:
    """``inputs`` and ``targets`` ``[N, L]`` (long), right-padded to the longest row."""

    kind: str
    inputs: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def rows(self, index: Tensor | slice) -> EncodedSet:
        """The rows ``index``, trimmed to their longest row (less padding to run through)."""
        inputs, targets = self.inputs[index], self.targets[index]
        width = int((inputs != 0).any(0).nonzero().max()) + 1 if len(inputs) else 0
        return EncodedSet(self.kind, inputs[:, :width], targets[:, :width])

    @property
    def tokens(self) -> int:
        """Non-padding tokens."""
        return int((self.inputs != 0).sum())


def task_kind(examples: Sequence[Example]) -> str:
    """``"classification"`` or ``"generation"``: the kind shared by all of ``examples``."""
    if not examples:
        raise ValueError("examples must be non-empty")
    kinds = {"classification" if isinstance(e, Classification) else "generation"
             for e in examples}
    if len(kinds) != 1 or not all(isinstance(e, Classification | Generation) for e in examples):
        raise ValueError("examples must all be Classification or all be Generation instances")
    return kinds.pop()


def encode(examples: Sequence[Example], vocab: CharVocab) -> EncodedSet:
    """The rows of ``examples`` (see the module docstring); ValueError on an unknown character or
    label, naming the example."""
    kind = task_kind(examples)
    rows: list[tuple[list[int], list[int]]] = []
    for i, example in enumerate(examples):
        try:
            if kind == "classification":
                ids = [*vocab.encode(example.input), vocab.sep_id]
                targets = [IGNORE] * (len(ids) - 1) + [vocab.label_id(example.label)]
            else:
                prompt, answer = vocab.encode(example.prompt), vocab.encode(example.answer)
                ids = [*prompt, vocab.sep_id, *answer]
                targets = [IGNORE] * len(prompt) + answer + [vocab.eos_id]
        except ValueError as err:
            raise ValueError(f"example {i}: {err}") from None
        rows.append((ids, targets))
    width = max(len(ids) for ids, _ in rows)
    inputs = torch.full((len(rows), width), vocab.pad_id, dtype=torch.long)
    target = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for r, (ids, targets) in enumerate(rows):
        inputs[r, : len(ids)] = torch.tensor(ids)
        target[r, : len(targets)] = torch.tensor(targets)
    return EncodedSet(kind, inputs, target)


@dataclass(frozen=True)
class Scores:
    """Per-row results of a batch: ``correct`` (exact match, or the right label) and the number
    of scored tokens and of correct ones among them."""

    correct: Tensor
    tokens: Tensor
    tokens_correct: Tensor


def score_logits(logits: Tensor, batch: EncodedSet, vocab: CharVocab) -> Scores:
    """Score ``logits`` ``[N, L, V]`` of ``batch.inputs`` against ``batch.targets``."""
    scored = batch.targets != IGNORE
    if batch.kind == "classification":
        label_ids = torch.tensor([vocab.label_id(x) for x in vocab.labels])
        picked = logits[..., label_ids].argmax(-1)  # index into label_ids
        predictions = label_ids[picked]
    else:
        predictions = logits.argmax(-1)
    hits = (predictions == batch.targets) & scored
    tokens = scored.sum(1)
    tokens_correct = hits.sum(1)
    return Scores(correct=tokens_correct == tokens, tokens=tokens, tokens_correct=tokens_correct)
