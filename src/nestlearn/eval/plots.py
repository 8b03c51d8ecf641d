"""Plots of task results: bars of the mean over seeds with the spread (one std) as error bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_bars", "plot_task"]


def plot_bars(ax, groups: list[str], series: dict[str, list[tuple[float, float]]], *,
              chance: float | None = None) -> None:
    """On ``ax``: for each group a bar per series (``(mean, std)`` per group), in percent."""
    n = max(1, len(series))
    width = 0.8 / n
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [100 * m for m, _ in values], width, yerr=[100 * s for _, s in values],
               capsize=2, label=label)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)


def plot_task(results: dict[str, Any], path: str | Path, metric: str = "accuracy") -> Path:
    """``results.json`` of one task as a bar chart: test sets on the x axis, a bar per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nestlearn.eval.runner import summarize

    table = summarize(results, metric)
    tests = list(results["test_instances"])
    series = {family: [table[family][t][:2] for t in tests] for family in table}
    chance = 0.5 if results["kind"] == "classification" else None
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(tests) * max(1, len(series)) / 2), 3.6))
    plot_bars(ax, tests, series, chance=chance)
    seeds = max((n for f in table.values() for _, _, n in f.values()), default=0)
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax.set_title(f"{results['task']}: {results['budget']['steps']} steps, "
                 f"mean ± std over {seeds} seed{'s' if seeds != 1 else ''}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
