"""The two kinds of task instance, shared by every generator and by the JSONL task format.

* :class:`Classification`: a string and an integer label (formal-language recognition:
  accept = 1, reject = 0). A model reads the string and predicts the label.
* :class:`Generation`: a prompt and an answer. A model reads the prompt and greedily decodes the
  answer; it is scored by exact match, and in training the loss is on the answer tokens only.

Characters are the tokens: a task's vocabulary is the set of characters of its training
instances. Every generator is a pure function ``generate(n, *, seed, **settings) -> list[Example]``:
the same seed gives the same list, and train and test instances are drawn from disjoint seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Classification", "Example", "Generation", "TaskSpec"]


@dataclass(frozen=True)
class Classification:
    """A sequence-classification instance: ``input`` (a non-empty string) and ``label`` (an int)."""

    input: str
    label: int


@dataclass(frozen=True)
class Generation:
    """A prompt-answer instance: ``answer`` is scored by exact match of greedy decoding."""

    prompt: str
    answer: str


Example = Classification | Generation


@dataclass(frozen=True)
class TaskSpec:
    """A named generated task: its generator, the settings of its training set and test sets.

    ``generate(n, seed=..., **settings)`` returns ``n`` instances; ``train`` holds the settings of
    the training instances and ``tests`` maps a test-set name (for example ``"bin0"``, ``"bin1"``
    for a length bin never seen in training) to its settings.
    """

    name: str
    kind: Literal["classification", "generation"]
    generate: Callable[..., list[Example]]
    train: dict[str, Any]
    tests: dict[str, dict[str, Any]]
    description: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
