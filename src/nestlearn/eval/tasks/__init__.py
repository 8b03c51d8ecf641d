"""Synthetic tasks: generated instances and task files, for comparing the model families.

* :mod:`~nestlearn.eval.tasks.base`: the instance kinds :class:`Classification` (a string and an
  int label) and :class:`Generation` (a prompt and an exact-match answer), and :class:`TaskSpec`
  (a named generator with the settings of its training set and test sets).
* :mod:`~nestlearn.eval.tasks.formal`: formal-language recognition (``FORMAL_TASKS``): parity,
  ``(aa)*``, ``(abab)*``, ``a^n b^n``, ``a^n b^n c^n`` and the shuffle of two Dyck-1 languages,
  trained on lengths 1..40 and tested on 1..40 (``bin0``) and 41..80 (``bin1``).
* :mod:`~nestlearn.eval.tasks.jsonl`: tasks from JSON Lines files (:func:`read_jsonl`,
  :func:`write_jsonl`) and the character vocabulary of a task (:class:`CharVocab`).
* :mod:`~nestlearn.eval.tasks.mad`: the six MAD tasks (``MAD_TASKS``: in-context recall, fuzzy
  and noisy in-context recall, selective copying, compression, memorization) at the character level.
* :mod:`~nestlearn.eval.tasks.mqar`: multi-query associative recall (``MQAR_TASKS``) with the
  number of key-value pairs as the capacity knob.

``TASKS`` maps every generated task's name to its :class:`TaskSpec`.
"""

from nestlearn.eval.tasks.base import Classification, Example, Generation, TaskSpec
from nestlearn.eval.tasks.formal import FORMAL_TASKS, generate_formal
from nestlearn.eval.tasks.jsonl import CharVocab, read_jsonl, write_jsonl
from nestlearn.eval.tasks.mad import MAD_TASKS
from nestlearn.eval.tasks.mqar import MQAR_TASKS

__all__ = [
    "FORMAL_TASKS",
    "MAD_TASKS",
    "MQAR_TASKS",
    "TASKS",
    "CharVocab",
    "Classification",
    "Example",
    "Generation",
    "TaskSpec",
    "generate_formal",
    "read_jsonl",
    "write_jsonl",
]

TASKS: dict[str, TaskSpec] = {**FORMAL_TASKS, **MAD_TASKS, **MQAR_TASKS}
