"""`nestlearn train / eval / generate / bench`: results, and one-line errors for user mistakes."""

import json

import pytest

from nestlearn import cli


@pytest.mark.parametrize(("argv", "message"), [
    pytest.param(["train", "gigantic"], "unknown recipe 'gigantic'", id="unknown-recipe"),
    pytest.param(["train", "debug_cpu", "--family", "gpt"], "model.family", id="unknown-family"),
    pytest.param(["train", "debug_cpu", "--set", "train.steps=many"], "train.steps",
                 id="bad-override"),
    pytest.param(["train", "debug_cpu", "--set", "model.hidden_sise=8"], "hidden_sise",
                 id="unknown-model-field"),
    pytest.param(["train", "debug_cpu", "--set", "data.sources=/no/such/corpus"],
                 "/no/such/corpus", id="missing-corpus"),
    pytest.param(["train", "debug_cpu", "--set", "data.sources=no_such_source"],
                 "no_such_source", id="unknown-source"),
    pytest.param(["eval", "/no/such/run"], "/no/such/run", id="missing-run"),
    pytest.param(["generate", "/no/such/run"], "/no/such/run", id="generate-missing-run"),
    pytest.param(["bench", "nope"], "unknown benchmark 'nope'", id="unknown-benchmark"),
])
def test_user_mistakes_are_one_line_errors(argv, message, capsys, tmp_path):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "run"), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert message in err


def test_train_writes_the_run_directory(tmp_path, debug_overrides, capsys):
    out = tmp_path / "run"
    argv = ["train", "debug_cpu", "--family", "transformer", "--quiet", "--out", str(out),
            "--steps", "3", "--set", *debug_overrides, "train.checkpoint_every=2"]
    assert cli.main(argv) == 0
    assert "step 3/3" in capsys.readouterr().out
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["config"]["train"]["steps"] == 3 and saved["config"]["model"]["family"] == \
        "transformer"
    assert "git_sha" in saved
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "model" / "tokenizer.json").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert any("val_loss" in r for r in records)

    from transformers import AutoModelForCausalLM

    import nestlearn.models  # noqa: F401

    assert AutoModelForCausalLM.from_pretrained(out / "model").config.model_type.endswith(
        "transformer")


def test_eval_reports_the_per_position_curve(trained_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert cli.main(["eval", str(trained_run), "--quiet", "--out", str(out)]) == 0
    assert "perplexity" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert len(result["per_position"]) == 64 == result["seq_len"]
    assert result["perplexity"] > 1
    assert out.with_suffix(".png").stat().st_size > 1000


def test_generate_streams_text(trained_run, capsys):
    argv = ["generate", str(trained_run), "--prompt", "The memory", "--max-new-tokens", "20"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("The memory") and len(out) > len("The memory")


def test_bench_lists_the_benchmarks(capsys):
    assert cli.main(["bench", "--list"]) == 0
    assert "models" in capsys.readouterr().out.split()


def test_every_benchmark_takes_the_options_bench_passes():
    """``nestlearn bench --quick --out D`` passes ``--quick`` and ``--out`` to every script."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    scripts = sorted(p for p in root.glob("*.py") if not p.stem.startswith("_"))
    assert scripts
    for script in scripts:
        text = script.read_text()
        assert '"--quick"' in text and '"--out"' in text, script.name


def test_metrics_are_written_for_tensorboard(trained_run):
    """The training loss of every logged step is in the TensorBoard events, as in metrics.jsonl."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tensorboard"))
    events.Reload()
    logged = {r["step"]: r["loss"] for r in map(json.loads,
              (trained_run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}
    board = {e.step: e.value for e in events.Scalars("loss")}
    assert set(board) == set(logged) and len(board) >= 6
    for step, loss in logged.items():
        assert abs(board[step] - loss) <= 1e-6 * abs(loss)
    assert "val_loss" in events.Tags()["scalars"]


def test_bench_ignores_the_current_directorys_benchmarks(tmp_path, monkeypatch, capsys):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "stranger.py").write_text("raise SystemExit('ran')\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "stranger" not in listed and "models" in listed


def test_levels_takes_a_run_directory_like_eval(trained_run, capsys):
    for path in (trained_run, trained_run / "model"):
        assert cli.main(["levels", "--model", str(path)]) == 0
        assert "pre-training (outer loop)" in capsys.readouterr().out


def test_a_diverging_training_is_a_one_line_error(tmp_path, debug_overrides, capsys):
    code = cli.main(["train", "debug_cpu", "--quiet", "--out", str(tmp_path / "run"),
                     "--steps", "3", "--set", *debug_overrides, "optim.eps=0"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert err.startswith("error: FloatingPointError: training loss is nan at step")
    assert "Traceback" not in err
