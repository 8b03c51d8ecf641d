"""The task runner: train a small model from scratch on a task, score it on the task's test sets.

``run_task(task, families, seeds, out)`` trains one model per (family, seed) "cell" and writes
``out/results.json`` (accuracy per family, seed and test set; the budget; the command) and
``out/results.png`` (mean and spread over seeds). A task is a generated one (a name of
:data:`nestlearn.eval.tasks.TASKS`, see :func:`generated_task`) or one read from JSON Lines files
(:func:`file_task`). ``nestlearn task`` is the command line of this module.

What a cell does (all of it seeded by the run seed, so a cell is reproducible):

* data: the training set (``budget.train_size`` instances) and each test set
  (``budget.test_size``) are generated from seeds derived from the run seed and the set's name
  (:func:`split_seed`), so train and test come from different seeds and test sets of longer
  strings are never seen in training. Instances are encoded as in
  :mod:`nestlearn.eval.tasks.encoding` (the loss is on the label token, or on the answer);
* model: the family's ``task`` preset (:func:`nestlearn.models.presets.preset_config`) with the
  task's vocabulary, initialised from the derived seed ``"init"``;
* training: ``budget.steps`` AdamW steps on batches drawn from shuffled epochs of the training
  set, learning rate with a linear warm-up then a cosine decay to 10%, gradient norm clipped at 1.
  HOPE's slow CMS levels are updated as the training loop does (:mod:`nestlearn.train.levels`:
  the sum of their gradients, applied every ``period / tokens_per_step`` steps);
* scores: per test set, ``accuracy`` (the label, or exact match of greedy decoding of the whole
  answer) and ``token_accuracy`` (the fraction of answer tokens right: the MAD and MQAR papers'
  metric; equal to ``accuracy`` for classification).

Resuming: every finished cell is written atomically to ``out/cells/``, and a rerun with the same
``out`` skips the cells there. Processes claim cells, so N processes started with one command
on one machine split the work. The unit of resumption is a cell (at the default budgets a cell
is seconds to a few minutes), not a step: an interrupted cell is trained again from its start,
which gives the same result since everything in it is seeded. A rerun with a different task or
budget is refused rather than mixed into the same table.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nestlearn.eval.tasks import FORMAL_TASKS, MAD_TASKS, MQAR_TASKS, TASKS, CharVocab, read_jsonl
from nestlearn.eval.tasks.encoding import EncodedSet, encode, score_logits, task_kind
from nestlearn.models.presets import TASK_FAMILIES, preset_config, preset_model_class
from nestlearn.train.levels import SlowSchedule

__all__ = ["BUDGETS", "TaskBudget", "TaskData", "budget_for", "file_task", "generated_task",
           "run_task", "split_seed", "train_cell"]


@dataclass(frozen=True)
class TaskBudget:
    """What one cell may spend: optimizer steps, batch, learning rate and data sizes."""

    steps: int
    batch_size: int
    lr: float
    train_size: int
    """Instances in the training set (cycled in shuffled epochs)."""
    test_size: int
    """Instances in each generated test set (a test file is used whole)."""
    warmup: float = 0.1
    """Fraction of the steps with a linearly rising learning rate."""
    weight_decay: float = 0.01

    def __post_init__(self):
        for name in ("steps", "batch_size", "train_size", "test_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"budget.{name} must be a positive int, got {value!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"budget.lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"budget.warmup must be in [0, 1), got {self.warmup!r}")


BUDGETS: dict[str, TaskBudget] = {
    "formal": TaskBudget(steps=400, batch_size=32, lr=3e-3, train_size=8192, test_size=512),
    "mad": TaskBudget(steps=400, batch_size=32, lr=3e-3, train_size=8192, test_size=256),
    "mqar": TaskBudget(steps=400, batch_size=32, lr=3e-3, train_size=8192, test_size=256),
    "file": TaskBudget(steps=400, batch_size=32, lr=3e-3, train_size=8192, test_size=512),
}
"""The default budget of each task group (``budget_for`` picks one); the one place to change
them. Sized so a cell of the ``task`` preset takes seconds (Transformer++) to a few minutes
(HOPE) on two CPU cores; the measured times are in ``docs/evaluation.md``."""


def budget_for(task: str) -> TaskBudget:
    """The default budget of ``task``: its group's entry of :data:`BUDGETS`."""
    for group, tasks in (("formal", FORMAL_TASKS), ("mad", MAD_TASKS), ("mqar", MQAR_TASKS)):
        if task in tasks:
            return BUDGETS[group]
    return BUDGETS["file"]


def split_seed(seed: int, name: str) -> int:
    """A seed for the part ``name`` of run ``seed`` (stable across Python runs and platforms):
    different names give unrelated seeds, so train and test sets never share one."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class TaskData:
    """A task ready to train on: its vocabulary, the encoded training set and test sets."""

    name: str
    kind: str
    vocab: CharVocab
    train: EncodedSet
    tests: dict[str, EncodedSet]
    source: str


def generated_task(name: str, seed: int, budget: TaskBudget) -> TaskData:
    """The generated task ``name`` (a key of ``TASKS``) for run ``seed``.

    The vocabulary is the generator's alphabet as seen in the training set and the test sets
    (characters only: the test labels and answers are not used to build it), so a character that
    happens to be rare never makes a test instance unencodable."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)} (or use train/test files), "
                         f"got {name!r}")
    spec = TASKS[name]
    train = spec.generate(budget.train_size, seed=split_seed(seed, "train"), **spec.train)
    tests = {test: spec.generate(budget.test_size, seed=split_seed(seed, f"test/{test}"),
                                 **settings) for test, settings in spec.tests.items()}
    vocab = CharVocab.from_examples([*train, *(e for t in tests.values() for e in t)])
    return TaskData(name=name, kind=spec.kind, vocab=vocab, train=encode(train, vocab),
                    tests={t: encode(e, vocab) for t, e in tests.items()}, source=spec.source)


def file_task(train_file: str | os.PathLike, test_files: Sequence[str | os.PathLike]) -> TaskData:
    """A task read from JSON Lines files (format: :mod:`nestlearn.eval.tasks.jsonl`); the
    vocabulary is the training file's, and each test file is a test set named by its stem."""
    if not test_files:
        raise ValueError("test_files must name at least one test file")
    train = read_jsonl(train_file)
    vocab = CharVocab.from_examples(train)
    kind = task_kind(train)
    tests: dict[str, EncodedSet] = {}
    for path in test_files:
        examples = read_jsonl(path)
        if task_kind(examples) != kind:
            raise ValueError(f"{path}: {task_kind(examples)} examples, but the training file "
                             f"{train_file} holds {kind} examples")
        name = Path(path).stem
        while name in tests:
            name += "'"
        try:
            tests[name] = encode(examples, vocab)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return TaskData(name=Path(train_file).stem, kind=kind, vocab=vocab,
                    train=encode(train, vocab), tests=tests, source=str(train_file))


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


def _schedule(budget: TaskBudget) -> Callable[[int], float]:
    warm = max(1, round(budget.warmup * budget.steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, budget.steps - warm)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _batches(n: int, batch_size: int, seed: int):
    """Row indices of successive batches: shuffled epochs of ``range(n)``."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    while True:
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        yield order[:batch_size]
        order = order[batch_size:]


@torch.no_grad()
def score(model: torch.nn.Module, data: EncodedSet, vocab: CharVocab, *,
          batch_size: int = 256) -> dict[str, float]:
    """``accuracy`` and ``token_accuracy`` of ``model`` on ``data`` (see the module docstring)."""
    was_training = model.training
    model.eval()
    correct = tokens = tokens_correct = 0
    for start in range(0, len(data), batch_size):
        batch = data.rows(slice(start, start + batch_size))
        result = score_logits(model(input_ids=batch.inputs).logits, batch, vocab)
        correct += int(result.correct.sum())
        tokens += int(result.tokens.sum())
        tokens_correct += int(result.tokens_correct.sum())
    model.train(was_training)
    return {"accuracy": correct / len(data), "token_accuracy": tokens_correct / tokens}


def model_config(family: str, vocab_size: int, overrides: dict[str, Any] | None = None):
    """The ``task`` preset of ``family`` with a vocabulary of ``vocab_size`` and the config
    fields ``overrides`` (those the family's config has; others are ignored)."""
    config = preset_config(family, "task", vocab_size=vocab_size)
    fields = config.to_dict()
    known = {k: v for k, v in (overrides or {}).items() if k in fields}
    return preset_config(family, "task", vocab_size=vocab_size, **known) if known else config


def build_model(family: str, vocab_size: int, seed: int,
                overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    """The model of :func:`model_config`, initialised from run ``seed``."""
    config = model_config(family, vocab_size, overrides)
    torch.manual_seed(split_seed(seed, "init"))
    return preset_model_class(family)(config)


def train_cell(family: str, data: TaskData, budget: TaskBudget, seed: int, *,
               overrides: dict[str, Any] | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Train ``family`` on ``data`` with ``budget`` and run ``seed``; the cell's results.
    ``overrides``: model config fields (see :func:`build_model`)."""
    from tqdm.auto import tqdm

    model = build_model(family, len(data.vocab), seed, overrides)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": budget.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}],
                                  lr=budget.lr, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(budget))
    row_tokens = data.train.tokens / len(data.train)
    slow = SlowSchedule(model, tokens_per_step=max(1, round(row_tokens * budget.batch_size)))
    batches = _batches(len(data.train), budget.batch_size, split_seed(seed, "order"))
    curve, tokens, start = [], 0, time.perf_counter()
    every = max(1, budget.steps // 100)
    bar = tqdm(range(budget.steps), desc=f"{data.name} {family} seed {seed}", unit="step",
               disable=not progress, leave=False, dynamic_ncols=True)
    for step in bar:
        batch = data.train.rows(next(batches))
        loss = _loss(model(input_ids=batch.inputs).logits, batch.targets)
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"{family} on {data.name}: training loss is {float(loss)} "
                                     f"at step {step + 1} (seed {seed}); lower the lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        slow.step(step + 1)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch.tokens
        if step % every == 0 or step == budget.steps - 1:
            curve.append([step + 1, round(float(loss.detach()), 5)])
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = {name: score(model, test, data.vocab) for name, test in data.tests.items()}
    return {
        "family": family, "seed": seed,
        "accuracy": {name: s["accuracy"] for name, s in scores.items()},
        "token_accuracy": {name: s["token_accuracy"] for name, s in scores.items()},
        "final_loss": curve[-1][1], "curve": curve, "train_tokens": tokens,
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - start, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # processes may share a directory
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def _header(data: TaskData, budget: TaskBudget) -> dict[str, Any]:
    return {"task": data.name, "kind": data.kind, "source": data.source,
            "budget": asdict(budget), "vocab_size": len(data.vocab),
            "train_instances": len(data.train),
            "test_instances": {name: len(t) for name, t in data.tests.items()}}


def _check_header(path: Path, header: dict[str, Any]) -> None:
    """Write ``header`` to ``path`` or, if a run wrote one there, check it is the same run."""
    if not path.is_file():
        _write_json(path, header)
        return
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not a task runner's file; use a new --out") from None
    differs = [k for k in ("task", "kind", "budget", "vocab_size", "overrides")
               if saved.get(k) != header[k]]
    if differs:
        raise ValueError(f"{path.parent} holds results of a different run ({', '.join(differs)} "
                         f"differ); use a new --out or the same task and budget")


def _config_json(config) -> dict[str, Any]:
    """The config as it reads back from JSON, without the library version stamp."""
    fields = json.loads(json.dumps(config.to_dict()))
    fields.pop("transformers_version", None)
    return fields


def _cell_path(out: Path, family: str, seed: int) -> Path:
    return out / "cells" / f"{family}-seed{seed}.json"


def _cells(out: Path, order: Sequence[str]) -> list[dict[str, Any]]:
    """Every finished cell under ``out/cells``, families in ``order`` first, then by seed."""
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    rank = {f: i for i, f in enumerate(order)}
    return sorted(cells, key=lambda c: (rank.get(c["family"], len(rank)), c["family"], c["seed"]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(out: Path, family: str, seed: int) -> bool:
    """Take cell (family, seed) for this process: ``cells/<cell>.claim`` created exclusively,
    holding the PID. False when a live process holds it; a dead holder's claim is taken over.
    (PIDs are per host: processes sharing ``out`` must run on one machine.)"""
    path = out / "cells" / f"{family}-seed{seed}.claim"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text() or 0)
                age = time.time() - path.stat().st_mtime
            except (OSError, ValueError):
                continue
            if (pid and _alive(pid)) or (not pid and age < 60):
                return False  # held, or just created and its PID not written yet
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _finished(out: Path, family: str, seed: int, config: dict[str, Any]) -> bool:
    path = _cell_path(out, family, seed)
    if not path.is_file():
        return False
    saved = json.loads(path.read_text()).get("config")
    if saved != config:
        raise ValueError(f"{path} was trained with another {family} config; use a new --out")
    return True


def run_task(task: str | TaskData, families: Sequence[str], seeds: int | Sequence[int],
             out: str | os.PathLike, *, budget: TaskBudget | None = None,
             overrides: dict[str, Any] | None = None, progress: bool = True,
             command: str = "") -> dict[str, Any]:
    """Run every (family, seed) cell of ``task`` (a generated task's name or a
    :class:`TaskData` from :func:`file_task`); write and return ``out/results.json``.

    ``seeds``: a count (seeds ``0..N-1``) or the seeds themselves; ``overrides``: model config
    fields applied to every family that has them.

    Each finished cell is a file ``out/cells/<family>-seed<s>.json`` (written atomically, with
    the model config it was trained with), and ``results.json`` is rebuilt from all of them
    after every cell. So a rerun skips finished cells, and several processes on one machine may
    share ``out``, even with the same families and seeds: a process claims a cell before
    training it (``<cell>.claim``, holding its PID) and skips cells claimed by a live process,
    so N processes started with the same command split the cells between them (the last one to
    finish writes the complete ``results.json``)."""
    from nestlearn.eval.plots import plot_task

    families = list(families)
    bad = [f for f in families if f not in TASK_FAMILIES]
    if bad or not families:
        raise ValueError(f"families must be a non-empty list from {list(TASK_FAMILIES)}, "
                         f"got {families!r}")
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a positive count or non-negative ints, got {seeds!r}")
    name = task if isinstance(task, str) else task.name
    budget = budget or budget_for(name)
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    datasets: dict[int, TaskData] = {}

    def data_of(seed: int) -> TaskData:
        if not isinstance(task, str):
            return task
        if seed not in datasets:
            datasets.clear()
            datasets[seed] = generated_task(task, seed, budget)
        return datasets[seed]

    first = data_of(seeds[0])
    header = {**_header(first, budget), "overrides": dict(overrides or {})}
    _check_header(out / "task.json", header)
    configs = {f: _config_json(model_config(f, len(first.vocab), overrides)) for f in families}
    todo = [(f, s) for s in seeds for f in families if not _finished(out, f, s, configs[f])]
    from tqdm.auto import tqdm

    for family, seed in tqdm(todo, desc=f"{name} cells", unit="cell", disable=not progress):
        if _finished(out, family, seed, configs[family]) or not _claim(out, family, seed):
            continue  # another process sharing ``out`` did it or is doing it
        try:
            cell = train_cell(family, data_of(seed), budget, seed, overrides=overrides,
                              progress=progress)
            _write_json(_cell_path(out, family, seed), {**cell, "config": configs[family]})
        finally:
            (out / "cells" / f"{family}-seed{seed}.claim").unlink(missing_ok=True)
        _write_json(out / "results.json", _results(out, header, command, families))
    results = _results(out, header, command, families)
    _write_json(out / "results.json", results)
    plot_task(results, out / "results.png")
    return results


def _results(out: Path, header: dict[str, Any], command: str,
             families: Sequence[str]) -> dict[str, Any]:
    cells = [{k: v for k, v in c.items() if k != "config"} for c in _cells(out, families)]
    return {**header, "command": command, "cells": cells}


def summarize(results: dict[str, Any], metric: str = "accuracy") -> dict[str, dict[str, Any]]:
    """``{family: {test set: (mean, std, n)}}`` of ``metric`` over the seeds of ``results``
    (std is the sample standard deviation; 0 for one seed)."""
    table: dict[str, dict[str, Any]] = {}
    for cell in results["cells"]:
        for test, value in cell[metric].items():
            table.setdefault(cell["family"], {}).setdefault(test, []).append(value)
    return {family: {test: _mean_std(values) for test, values in tests.items()}
            for family, tests in table.items()}


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std()) if len(values) > 1 else 0.0
    return float(t.mean()), std, len(values)


def with_steps(budget: TaskBudget, steps: int | None = None, batch_size: int | None = None,
               lr: float | None = None) -> TaskBudget:
    """``budget`` with the given fields replaced (``None`` keeps a field)."""
    changes = {k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("lr", lr))
               if v is not None}
    return replace(budget, **changes)
