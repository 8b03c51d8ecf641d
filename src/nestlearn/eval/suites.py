"""Suites: the paper's synthetic tables, in small. ``nestlearn eval --suite formal|mad|mqar``.

:func:`run_suite` runs every task of a suite for every family over the seeds (one
:func:`~nestlearn.eval.runner.run_task` directory per task, so a suite resumes cell by cell) and
writes, in its output directory:

* ``table.md``: mean +- std over seeds per family and test set, the budget and time per cell,
  the command, a reading computed from the numbers, and the paper's numbers in a separate table
  (they come from models of ~10^8 parameters trained far longer: a different scale);
* ``suite.json``: the same numbers; ``suite.png``: one panel of bars per task.

Metrics: ``formal`` reports classification accuracy (Irie et al. 2023 and NL Table 5 do);
``mad`` and ``mqar`` report the fraction of answer tokens right (``token_accuracy``: the metric
of the MAD paper and of MQAR); the exact match of whole answers is in each task's
``results.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestlearn.eval.runner import budget_for, run_task, summarize, with_steps
from nestlearn.eval.tasks import FORMAL_TASKS

__all__ = ["SUITES", "Suite", "format_table", "reading", "run_suite", "summarize_suite"]


@dataclass(frozen=True)
class Suite:
    tasks: tuple[str, ...]
    metric: str
    paper_source: str
    paper: dict[str, dict[str, float]] = field(default_factory=dict)
    """``{family: {"task/test": percent}}`` as printed in the paper (only the cells it gives)."""


def _formal_paper() -> dict[str, dict[str, float]]:
    hope = {f"{t}/{b}": 100.0 for t in FORMAL_TASKS for b in ("bin0", "bin1")}
    transformer = {"parity/bin0": 46.4, "parity/bin1": 0.0, "aa_star/bin0": 0.0,
                   "aa_star/bin1": 0.0, "abab_star/bin0": 0.0, "abab_star/bin1": 0.0}
    return {"hope": hope, "transformer": transformer}


def _mad_paper() -> dict[str, dict[str, float]]:
    columns = ("mad_compression", "mad_icr", "mad_fuzzy_icr", "mad_selective_copy",
               "mad_memorization")
    rows = {"transformer": (49.4, 100, 47.9, 96.2, 83.7), "titans": (49.8, 100, 50.0, 99.4, 83.4),
            "hope": (51.2, 100, 52.1, 99.7, 85.2)}
    return {family: {f"{c}/test": float(v) for c, v in zip(columns, values)}
            for family, values in rows.items()}


SUITES: dict[str, Suite] = {
    "formal": Suite(tuple(FORMAL_TASKS), "accuracy", "NL Table 5", _formal_paper()),
    "mad": Suite(("mad_icr", "mad_fuzzy_icr", "mad_noisy_icr", "mad_selective_copy",
                  "mad_compression", "mad_memorization"), "token_accuracy", "NL Table 4",
                 _mad_paper()),
    "mqar": Suite(("mqar_8", "mqar_16", "mqar_32"), "token_accuracy",
                  "the NL paper has no MQAR table"),
}


def run_suite(name: str, out: str | os.PathLike, families: Sequence[str], *, seeds: int = 3,
              steps: int | None = None, tasks: Sequence[str] | None = None,
              progress: bool = True, command: str = "") -> dict[str, Any]:
    """Run suite ``name`` (a key of ``SUITES``); write ``table.md``, ``suite.json`` and
    ``suite.png`` into ``out`` and return the summary. ``steps`` overrides every task's
    budget; ``tasks`` restricts the suite to some of its tasks."""
    if name not in SUITES:
        raise ValueError(f"suite must be one of {sorted(SUITES)}, got {name!r}")
    suite = SUITES[name]
    chosen = tuple(tasks) if tasks else suite.tasks
    unknown = [t for t in chosen if t not in suite.tasks]
    if unknown:
        raise ValueError(f"tasks of suite {name} are {list(suite.tasks)}, got {unknown}")
    out = Path(out)
    per_task: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for task in chosen:
        budget = with_steps(budget_for(task), steps=steps)
        per_task[task] = run_task(task, families, seeds, out / task, budget=budget,
                                  progress=progress, command=command)
    summary = summarize_suite(name, suite, per_task, families, time.perf_counter() - start,
                              command)
    (out / "suite.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "table.md").write_text(format_table(summary))
    plot_suite(summary, out / "suite.png")
    return summary


def summarize_suite(name: str, suite: Suite, per_task: dict[str, dict], families: Sequence[str],
                    seconds: float, command: str) -> dict[str, Any]:
    """The summary of a suite from its tasks' ``results.json`` (what ``suite.json`` holds)."""
    columns, values, budgets, cost = [], {f: {} for f in families}, {}, {f: 0.0 for f in families}
    for task, results in per_task.items():
        table = summarize(results, suite.metric)
        budgets[task] = results["budget"]
        for test in results["test_instances"]:
            columns.append(f"{task}/{test}")
            for family in families:  # a family with no finished cell yet: (nan, nan, 0)
                values[family][f"{task}/{test}"] = table.get(family, {}).get(
                    test, (math.nan, math.nan, 0))
        for cell in results["cells"]:
            if cell["family"] in cost:
                cost[cell["family"]] += cell["train_seconds"] + cell["eval_seconds"]
    seeds = max((n for f in values.values() for _, _, n in f.values()), default=0)
    return {"suite": name, "metric": suite.metric, "columns": columns, "families": list(families),
            "values": values, "seeds": seeds, "budgets": budgets, "seconds": round(seconds, 1),
            "seconds_per_family": {f: round(s, 1) for f, s in cost.items()},
            "paper": suite.paper, "paper_source": suite.paper_source, "command": command}


def reading(summary: dict[str, Any]) -> list[str]:
    """Sentences computed from the numbers: per column the best family and whether its lead
    over the runner-up exceeds their combined spread, and how often HOPE leads."""
    lines, leads = [], 0
    for column in summary["columns"]:
        ranked = sorted((f for f in summary["families"] if summary["values"][f][column][2]),
                        key=lambda f: -summary["values"][f][column][0])
        if len(ranked) < 2:
            continue
        best, best_v = ranked[0], summary["values"][ranked[0]][column]
        second, second_v = ranked[1], summary["values"][ranked[1]][column]
        margin = best_v[0] - second_v[0]
        one_seed = min(best_v[2], second_v[2]) < 2
        clear = margin > best_v[1] + second_v[1] and not one_seed
        leads += best.startswith("hope") and clear
        verdict = ("one seed: no spread to judge the lead by" if one_seed else
                   "ahead by more than the spread" if clear else "within the spread")
        lines.append(f"- {column}: best {best} ({100 * best_v[0]:.1f}%); runner-up {second} "
                     f"({100 * second_v[0]:.1f}%): {verdict}.")
    if "hope" in summary["families"]:
        hope = summary["values"]["hope"]
        solved = sum(hope[c][0] >= 0.99 for c in summary["columns"])
        lines.append(f"- HOPE reaches >= 99% on {solved} of {len(summary['columns'])} columns; "
                     f"a HOPE variant leads beyond the spread on {leads}.")
    return lines


def format_table(summary: dict[str, Any]) -> str:
    """``table.md`` of a suite summary (see the module docstring)."""
    cols, metric = summary["columns"], summary["metric"].replace("_", " ")
    lines = [f"# Suite {summary['suite']}: {metric} (%), mean ± std over {summary['seeds']} seeds",
             "", "| family | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for family in summary["families"]:
        cells = [f"{100 * m:.1f} ± {100 * s:.1f}" if n else "—" for m, s, n in
                 (summary["values"][family][c] for c in cols)]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines += ["", "## Reading (computed from the table above)", "", *reading(summary), "",
              "## Budget", ""]
    for task, b in summary["budgets"].items():
        lines.append(f"- {task}: {b['steps']} steps × batch {b['batch_size']}, lr {b['lr']}, "
                     f"{b['train_size']} training instances, {b['test_size']} per test set")
    per = ", ".join(f"{f} {s / 60:.1f} min" for f, s in summary["seconds_per_family"].items())
    lines += [f"- time (train + eval, all cells): {per}; wall clock of this invocation "
              f"{summary['seconds'] / 60:.1f} min (cells resumed from disk are not re-timed)",
              f"- command: `{summary['command']}`" if summary["command"] else "", ""]
    paper = summary["paper"]
    lines += [f"## Paper ({summary['paper_source']}): a different scale, not comparable cell by "
              "cell", ""]
    if paper:
        shown = [c for c in cols if any(c in row for row in paper.values())]
        lines += ["| family (paper) | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
        for family, row in paper.items():
            lines.append(f"| {family} | " + " | ".join(
                f"{row[c]:.1f}" if c in row else "—" for c in shown) + " |")
    else:
        lines.append("The paper gives no numbers for this suite.")
    return "\n".join(lines) + "\n"


def plot_suite(summary: dict[str, Any], path: str | Path) -> Path:
    """One panel per task: a bar per family and test set (mean, std error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nestlearn.eval.plots import plot_bars

    tasks = list(dict.fromkeys(c.split("/")[0] for c in summary["columns"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.6 * len(tasks) + 1, 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        tests = [c.split("/")[1] for c in summary["columns"] if c.startswith(task + "/")]
        series = {f: [summary["values"][f][f"{task}/{t}"][:2] for t in tests]
                  for f in summary["families"]}
        plot_bars(ax, tests, series, chance=0.5 if summary["suite"] == "formal" else None)
        ax.set_title(task, fontsize=9)
    axes[0][0].set_ylabel(f"{summary['metric'].replace('_', ' ')} (%)")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.suptitle(f"suite {summary['suite']}: mean ± std over {summary['seeds']} seeds",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

