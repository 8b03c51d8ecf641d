"""The `nestlearn task` and `nestlearn eval --suite` verbs: runs written, errors are one line."""

from __future__ import annotations

import json
import sys

import pytest

from nestlearn import cli
from nestlearn.eval import runner, suites
from nestlearn.eval.runner import TaskBudget
from nestlearn.eval.tasks import Generation, write_jsonl

SMALL = TaskBudget(steps=400, batch_size=4, lr=1e-3, train_size=16, test_size=8)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")
    return err


@pytest.mark.parametrize("args, message", [
    ([], "give either --task (one of the generated tasks) or --train-file"),
    (["--task", "aa_star", "--train-file", "t.jsonl", "--test-file", "u.jsonl"],
     "give either --task"),
    (["--task", "nope"], "--task must be one of ["),
    (["--train-file", "t.jsonl"], "--train-file needs at least one --test-file"),
    (["--task", "aa_star", "--test-file", "u.jsonl"], "--test-file is for a task of files"),
    (["--task", "aa_star", "--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--task", "aa_star", "--seeds", "-1"], "--seeds must be a positive integer"),
    (["--task", "aa_star", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--task", "aa_star", "--lr", "0"], "--lr must be positive"),
    (["--task", "aa_star", "--family", "transformer,gpt"],
     "--family must be one of ['transformer', 'hope'"),
])
def test_task_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert cli.main(["task", *args, "--out", str(out), "--quiet"]) == 2
    assert message in _error(capsys)
    assert not out.exists()  # refused before anything was run or written


def test_task_with_a_missing_train_file_is_an_error(tmp_path, capsys):
    assert cli.main(["task", "--train-file", str(tmp_path / "no.jsonl"), "--test-file",
                     str(tmp_path / "no2.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "no.jsonl" in _error(capsys)


@pytest.mark.parametrize("args, message", [
    ([], "give a RUN directory to evaluate, or --suite formal|mad|mqar"),
    (["runs/x", "--suite", "formal"], "give either a RUN to evaluate or --suite, not both"),
    (["--suite", "mqar", "--steps", "0"], "--steps must be a positive integer"),
    (["--suite", "mqar", "--family", "gpt"], "--family must be one of"),
    (["--suite", "mqar", "--tasks", "parity"], "tasks of suite mqar are"),
])
def test_eval_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    assert cli.main(["eval", *args, "--out", str(tmp_path / "s"), "--quiet"]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "s").exists()


def test_families_parsing():
    assert cli._families(None, ("transformer",)) == ["transformer"]
    assert cli._families(["hope,titans", "hope", "hope_no_cms"], ()) == ["hope", "titans",
                                                                          "hope_no_cms"]
    assert cli._families(["all"], ()) == ["transformer", "hope", "hope_attention", "titans",
                                          "titans_mag"]


def test_task_run_writes_results(tmp_path, capsys, monkeypatch):
    # The task's default budget with small data sizes; --steps must still reach the run.
    monkeypatch.setattr(runner, "budget_for", lambda task: SMALL)
    argv = ["task", "--task", "aa_star", "--family", "transformer", "--seeds", "1",
            "--steps", "3", "--out", str(tmp_path), "--quiet"]
    monkeypatch.setattr(sys, "argv", ["nestlearn", *argv])
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task"] == "aa_star" and results["budget"]["steps"] == 3
    assert [(c["family"], c["seed"]) for c in results["cells"]] == [("transformer", 0)]
    assert results["command"] == "nestlearn " + " ".join(argv)
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert out.startswith("transformer ") and "bin0" in out and "bin1" in out
    assert "results.json" in out


def test_task_of_files_runs(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", [Generation("ab", "ba"), Generation("b", "b")] * 4)
    write_jsonl(tmp_path / "test.jsonl", [Generation("ba", "ab")])
    argv = ["task", "--train-file", str(tmp_path / "train.jsonl"), "--test-file",
            str(tmp_path / "test.jsonl"), "--family", "transformer", "--seeds", "1",
            "--steps", "2", "--batch-size", "2", "--lr", "0.01", "--out", str(tmp_path / "o"),
            "--quiet"]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["kind"] == "generation" and results["test_instances"] == {"test": 1}
    assert (results["budget"]["steps"], results["budget"]["batch_size"],
            results["budget"]["lr"]) == (2, 2, 0.01)
    assert "(tokens " in capsys.readouterr().out  # generation: token accuracy shown too


def test_eval_suite_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(suites, "budget_for", lambda task: SMALL)
    argv = ["eval", "--suite", "formal", "--tasks", "aa_star", "--family", "transformer",
            "--seeds", "1", "--steps", "2", "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("# Suite formal: accuracy (%), mean ± std over 1 seeds")
    assert "- aa_star: 2 steps × batch 4" in table
    assert (tmp_path / "suite.json").exists() and (tmp_path / "suite.png").exists()
    assert table in capsys.readouterr().out
