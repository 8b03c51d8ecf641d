"""The main job's synthetic panel: one task of the evaluation suite, every family, a few seeds.

The panel trains the ``task`` preset of each family from scratch on one generated task with the
task runner (one ``nestlearn task`` process per lane, all sharing ``<out>/synthetic/<task>`` and
splitting its cells by the runner's cell claims; finished cells are reused by a rerun)
and adds a table to the report: accuracy per test set (mean ± std over seeds), the reading
computed from it by :func:`nestlearn.eval.suites.reading`, and the paper's number for the same
cells in a separate column where the paper gives one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.main_job.config import MainJob, family_name

__all__ = ["panel_lanes", "panel_lines", "panel_summary", "run_panel"]


def panel_lanes(families: tuple[str, ...], lanes: int) -> list[list[str]]:
    """The family order of each lane's process. Every lane runs every cell it can claim (the
    runner's cell claims split the work), HOPE (the slowest per step) first in lane 0 and last
    in the others, whose other families are rotated so each starts at a different one."""
    first = "hope" if "hope" in families else families[0]
    rest = [f for f in families if f != first]
    out = [[first, *rest]]
    for i in range(1, max(1, lanes)):
        k = (i - 1) % len(rest) if rest else 0
        out.append([*rest[k:], *rest[:k], first])
    return out


def run_panel(job: MainJob, *, progress: bool) -> dict[str, Any] | None:
    """Run the panel of ``job`` (``None`` when ``job.synthetic_task`` is empty): one
    ``nestlearn task`` process per lane (:func:`panel_lanes`, ``job.threads`` threads each),
    sharing one output directory, then the table from their cells."""
    if not job.synthetic_task:
        return None
    import os
    import subprocess
    import sys
    import time

    from nestlearn.eval.runner import budget_for, run_task, with_steps
    from nestlearn.eval.suites import SUITES, Suite, summarize_suite

    task = job.synthetic_task
    out = Path(job.out) / "synthetic" / task
    out.mkdir(parents=True, exist_ok=True)
    budget = with_steps(budget_for(task), steps=job.synthetic_steps)
    start = time.monotonic()
    print(f"[main] synthetic panel: {task}, {', '.join(job.families)}, "
          f"{job.synthetic_seeds} seeds x {budget.steps} steps; log {out / 'panel.log'}",
          flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(job.threads)}
    with open(out / "panel.log", "a") as log:
        procs = [subprocess.Popen(
            [sys.executable, "-m", "nestlearn", "task", "--task", task, "--family", ",".join(g),
             "--seeds", str(job.synthetic_seeds), "--steps", str(budget.steps), "--threads",
             str(job.threads), "--out", str(out), "--quiet"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
            for g in panel_lanes(job.families, job.lanes)]
        codes = [proc.wait() for proc in procs]
    if any(codes):
        raise RuntimeError(f"the synthetic panel failed (exit codes {codes}); see "
                           f"{out / 'panel.log'}")
    # every cell is on disk now: this only assembles results.json and draws results.png
    results = run_task(task, job.families, job.synthetic_seeds, out, budget=budget,
                       progress=False, command="bash scripts/main.sh")
    suite = next((s for s in SUITES.values() if task in s.tasks),
                 Suite((task,), "accuracy", "none"))
    summary = summarize_suite("panel", suite, {task: results}, job.families,
                              time.monotonic() - start, "bash scripts/main.sh")
    summary["png"] = f"synthetic/{task}/results.png"
    return summary


def panel_lines(summary: dict[str, Any] | None) -> list[str]:
    """The report's section for the panel ``summary`` (from :func:`run_panel`)."""
    if summary is None:
        return []
    from nestlearn.eval.suites import reading

    task = summary["columns"][0].split("/")[0]
    budget = summary["budgets"][task]
    metric = summary["metric"].replace("_", " ")
    paper = summary["paper"]
    lines = ["## Synthetic panel", "",
             f"Task `{task}` (nestlearn.eval.tasks), the `task` model preset (~135K parameters) "
             f"trained from scratch: {budget['steps']} AdamW steps × batch "
             f"{budget['batch_size']}, lr {budget['lr']}, {budget['train_size']} training "
             f"instances, {budget['test_size']} per test set; {metric} (%), mean ± std over "
             f"{summary['seeds']} seeds. Test sets named `bin1` hold longer strings than any "
             "seen in training.", "",
             "| model | " + " | ".join(summary["columns"]) + " | paper (NL, other scale) |",
             "|---|" + "---:|" * len(summary["columns"]) + "---|"]
    for family in summary["families"]:
        cells = [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s, _ in
                 (summary["values"][family][c] for c in summary["columns"])]
        row = paper.get(family, {})
        quoted = ", ".join(f"{c.split('/')[1]} {row[c]:.1f}" for c in summary["columns"]
                           if c in row) or "—"
        lines.append(f"| {family_name(family)} | " + " | ".join(cells) + f" | {quoted} |")
    per = ", ".join(f"{family_name(f)} {s:.0f} s" for f, s in
                    summary["seconds_per_family"].items())
    lines += ["", "Reading (computed from the table):", "", *reading(summary), "",
              f"Time (train + eval, all seeds): {per}. Paper column: {summary['paper_source']}.",
              "", f"![synthetic panel]({summary['png']})", ""]
    return lines


def panel_summary(summary: dict[str, Any] | None) -> str:
    """A clause for the report's one-line summary: the best model per column of the panel."""
    if summary is None:
        return ""
    best = []
    for column in summary["columns"]:
        family = max(summary["families"], key=lambda f: summary["values"][f][column][0])
        value = summary["values"][family][column][0]
        best.append(f"{column} {family_name(family)} {100 * value:.0f}%")
    return "; synthetic best: " + ", ".join(best)
