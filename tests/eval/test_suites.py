"""Suites: table.md (mean ± std from the per-seed values, the paper apart), reading, JSON, PNG."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import pytest

from nestlearn.eval import suites
from nestlearn.eval.runner import TaskBudget
from nestlearn.eval.suites import SUITES, format_table, reading, run_suite

TINY = TaskBudget(steps=7, batch_size=4, lr=1e-3, train_size=16, test_size=8)

# Per-seed accuracies of a fake run of parity: {family: {test: [seed 0, 1, 2]}}.
PARITY = {
    "hope": {"bin0": [1.0, 0.9, 0.8], "bin1": [0.6, 0.7, 0.5]},
    "transformer": {"bin0": [0.5, 0.6, 0.7], "bin1": [0.55, 0.45, 0.65]},
}
# mean ± sample std in percent, computed by hand
PARITY_CELLS = {"hope": ("90.0 ± 10.0", "60.0 ± 10.0"),
                "transformer": ("60.0 ± 10.0", "55.0 ± 10.0")}


def _fake_run_task(per_seed, calls):
    def run_task(task, families, seeds, out, *, budget, progress, command):
        calls.append((task, list(families), seeds, budget))
        cells = [{"family": f, "seed": s,
                  "accuracy": {t: v[s] for t, v in per_seed[f].items()},
                  "token_accuracy": {t: v[s] / 2 for t, v in per_seed[f].items()},
                  "train_seconds": 30.0, "eval_seconds": 6.0}
                 for s in range(seeds) for f in families]
        return {"task": task, "kind": "classification", "budget": asdict(budget),
                "test_instances": {t: 8 for t in next(iter(per_seed.values()))},
                "cells": cells, "command": command}
    return run_task


@pytest.fixture
def parity_suite(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(suites, "run_task", _fake_run_task(PARITY, calls))
    monkeypatch.setattr(suites, "budget_for", lambda task: TINY)
    summary = run_suite("formal", tmp_path, ["hope", "transformer"], seeds=3, steps=5,
                        tasks=["parity"], progress=False, command="nestlearn eval --suite formal")
    return summary, calls, tmp_path


def test_run_suite_passes_the_budget_and_writes_its_files(parity_suite):
    summary, calls, out = parity_suite
    ((task, families, seeds, budget),) = calls
    assert (task, families, seeds) == ("parity", ["hope", "transformer"], 3)
    assert budget == TaskBudget(steps=5, batch_size=4, lr=1e-3, train_size=16, test_size=8)
    assert json.loads((out / "suite.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["columns"] == ["parity/bin0", "parity/bin1"]
    assert summary["seeds"] == 3 and summary["metric"] == "accuracy"
    assert summary["seconds_per_family"] == {"hope": 108.0, "transformer": 108.0}
    assert (out / "suite.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "table.md").read_text() == format_table(summary)


def test_table_cells_are_mean_and_std_over_seeds(parity_suite):
    summary, _, out = parity_suite
    table = (out / "table.md").read_text()
    ours, paper = table.split("## Paper")
    assert ours.startswith("# Suite formal: accuracy (%), mean ± std over 3 seeds")
    for family, (bin0, bin1) in PARITY_CELLS.items():
        assert f"| {family} | {bin0} | {bin1} |" in ours
    assert "- parity: 5 steps × batch 4, lr 0.001, 16 training instances, 8 per test set" in ours
    assert "hope 1.8 min, transformer 1.8 min" in ours
    assert "- command: `nestlearn eval --suite formal`" in ours
    # The paper's numbers (NL Table 5) only in their own section, for the columns shown.
    assert paper.startswith(" (NL Table 5): a different scale")
    assert "| hope | 100.0 | 100.0 |" in paper
    assert "| transformer | 46.4 | 0.0 |" in paper
    assert "46.4" not in ours and "100.0" not in ours
    assert "aa_star" not in table  # columns of tasks not run are not shown


def test_reading_names_the_best_family_and_the_spread(parity_suite):
    summary, _, _ = parity_suite
    lines = reading(summary)
    # bin0: 90 vs 60, a lead of 30 > 10 + 10; bin1: 60 vs 55, 5 < 20.
    assert lines[0] == ("- parity/bin0: best hope (90.0%); runner-up transformer (60.0%): "
                        "ahead by more than the spread.")
    assert lines[1] == ("- parity/bin1: best hope (60.0%); runner-up transformer (55.0%): "
                        "within the spread.")
    assert lines[2] == ("- HOPE reaches >= 99% on 0 of 2 columns; a HOPE variant leads beyond "
                        "the spread on 1.")


def test_reading_follows_the_numbers():
    summary = {"columns": ["t/x"], "families": ["hope", "titans", "transformer"],
               "values": {"hope": {"t/x": (0.995, 0.001, 3)},
                          "titans": {"t/x": (0.999, 0.005, 3)},
                          "transformer": {"t/x": (0.2, 0.3, 3)}}}
    assert reading(summary) == [
        "- t/x: best titans (99.9%); runner-up hope (99.5%): within the spread.",
        "- HOPE reaches >= 99% on 1 of 1 columns; a HOPE variant leads beyond the spread on 0."]
    summary["values"]["titans"]["t/x"] = (0.98, 0.001, 3)
    assert reading(summary)[0] == ("- t/x: best hope (99.5%); runner-up titans (98.0%): ahead "
                                   "by more than the spread.")
    summary["values"]["titans"]["t/x"] = (0.98, 0.0, 1)  # one seed of titans: no spread
    assert reading(summary)[0] == ("- t/x: best hope (99.5%); runner-up titans (98.0%): one "
                                   "seed: no spread to judge the lead by.")
    summary["families"] = ["transformer"]
    assert reading(summary) == []  # one family: nothing to compare


def test_token_accuracy_suite_and_a_suite_without_paper_numbers(tmp_path, monkeypatch):
    per_seed = {"transformer": {"test": [0.4, 0.8]}}
    monkeypatch.setattr(suites, "run_task", _fake_run_task(per_seed, []))
    summary = run_suite("mqar", tmp_path, ["transformer"], seeds=2, tasks=["mqar_8"],
                        progress=False)
    assert summary["metric"] == "token_accuracy"
    table = (tmp_path / "table.md").read_text()
    # token accuracy of the fake is half the accuracy: 0.2 and 0.4 -> 30.0 ± 14.1
    assert "| transformer | 30.0 ± 14.1 |" in table
    assert "The paper gives no numbers for this suite." in table
    assert "command" not in table  # no command given, no command line


def test_a_real_tiny_suite(tmp_path, monkeypatch):
    monkeypatch.setattr(suites, "budget_for", lambda task: TINY)
    summary = run_suite("formal", tmp_path, ["transformer"], seeds=2, steps=2,
                        tasks=["aa_star"], progress=False)
    results = json.loads((tmp_path / "aa_star" / "results.json").read_text())
    assert results["budget"]["steps"] == 2 and len(results["cells"]) == 2
    assert summary["columns"] == ["aa_star/bin0", "aa_star/bin1"]
    for column in summary["columns"]:
        values = [c["accuracy"][column.split("/")[1]] for c in results["cells"]]
        mean, std, n = summary["values"]["transformer"][column]
        assert n == 2 and mean == pytest.approx(sum(values) / 2)
        assert std == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    row = re.search(r"\| transformer \| (.*) \|", (tmp_path / "table.md").read_text())
    assert row and len(row.group(1).split(" | ")) == 2
    assert (tmp_path / "suite.png").exists() and (tmp_path / "aa_star" / "results.png").exists()


def test_run_suite_refuses_unknown_suites_and_tasks(tmp_path):
    with pytest.raises(ValueError, match=r"suite must be one of \['formal', 'mad', 'mqar'\]"):
        run_suite("glue", tmp_path, ["transformer"])
    with pytest.raises(ValueError, match=r"tasks of suite mqar are .*\['mad_icr'\]"):
        run_suite("mqar", tmp_path, ["transformer"], tasks=["mqar_8", "mad_icr"])
    assert not any(tmp_path.iterdir())


def test_suites_use_the_papers_metrics_and_tasks():
    assert SUITES["formal"].metric == "accuracy"
    assert SUITES["mad"].metric == SUITES["mqar"].metric == "token_accuracy"
    assert all(c.split("/")[0] in SUITES["mad"].tasks
               for row in SUITES["mad"].paper.values() for c in row)
    assert SUITES["mad"].paper["hope"]["mad_memorization/test"] == 85.2


def test_a_family_without_finished_cells_is_a_dash(tmp_path, monkeypatch):
    """Processes sharing an --out: one may write the table while another still holds a
    family's only cells; that family is shown as '—' and left out of the reading."""
    fake = _fake_run_task(PARITY, [])

    def only_transformer(task, families, seeds, out, **kwargs):
        return fake(task, ["transformer"], seeds, out, **kwargs)
    monkeypatch.setattr(suites, "run_task", only_transformer)
    monkeypatch.setattr(suites, "budget_for", lambda task: TINY)
    summary = run_suite("formal", tmp_path, ["hope", "transformer"], seeds=3, tasks=["parity"],
                        progress=False)
    assert summary["values"]["hope"]["parity/bin0"][2] == 0
    assert "| hope | — | — |" in (tmp_path / "table.md").read_text()
    assert not any(line.startswith("- parity") for line in reading(summary))
