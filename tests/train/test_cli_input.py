"""Issue 12, case 5 (part): repeated --set accumulates; zero, negative and non-finite values are
one-line errors naming the field, never a silent default."""

import pytest

import nestlearn.train
from nestlearn import cli


class _Captured(ValueError):
    pass


@pytest.fixture
def captured(monkeypatch):
    """Replace the training by a capture of its config (the CLI then exits with code 2)."""
    seen = []

    def fake_train(config, **kwargs):
        seen.append(config)
        raise _Captured("captured")

    monkeypatch.setattr(nestlearn.train, "train", fake_train)
    return seen


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_repeated_set_accumulates(captured, debug_overrides, tmp_path, capsys):
    argv = ["train", "debug_cpu", "--out", str(tmp_path), "--set", "train.steps=3",
            "optim.lr=0.002", "--set", *debug_overrides, "--set", "data.seq_len=16"]
    assert cli.main(argv) == 2 and "captured" in _error(capsys)
    config = captured[0]
    assert (config.steps, config.optim.lr, config.data.seq_len) == (3, 0.002, 16)
    assert config.data.sources == [debug_overrides[0].partition("=")[2]]


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--steps", "-2"], "--steps must be a positive integer, got -2"),
    (["--set", "optim.weight_decay=1e999"], "optim.weight_decay must be a finite number"),
    (["--set", "optim.eps=-1e999"], "optim.eps must be a finite number"),
    (["--set", "optim.betas=[0.9, nan]"], "optim.betas"),
    (["--set", "model.rope_theta=1e999"], "model.rope_theta must be a finite number"),
    (["--set", "optim.lr=nan"], "optim.lr"),
])
def test_train_refuses_zero_and_non_finite_values(argv, message, captured, tmp_path, capsys):
    assert cli.main(["train", "debug_cpu", "--out", str(tmp_path), *argv]) == 2
    assert message in _error(capsys)
    assert not captured  # refused before training


@pytest.mark.parametrize(("argv", "message"), [
    (["--seq-len", "0"], "--seq-len must be a positive integer, got 0"),
    (["--seq-len", "-5"], "--seq-len must be a positive integer, got -5"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--max-batches", "-1"], "--max-batches must be 0 (the whole split) or a positive integer"),
])
def test_eval_refuses_zero_and_negative_values(argv, message, trained_run, capsys, tmp_path):
    out = tmp_path / "eval.json"
    assert cli.main(["eval", str(trained_run), "--quiet", "--out", str(out), *argv]) == 2
    assert message in _error(capsys)
    assert not out.exists()  # nothing was evaluated


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_generate_refuses_a_non_finite_temperature(value, trained_run, capsys):
    argv = ["generate", str(trained_run), "--max-new-tokens", "2", "--temperature", value]
    assert cli.main(argv) == 2
    assert "--temperature must be a finite number >= 0 (0 = greedy)" in _error(capsys)
