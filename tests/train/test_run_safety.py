"""Issue 12, cases 1 and 2: splits checked before the first step, the final checkpoint and model
saved before the final evaluation, and one writer per run folder."""

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import debug_config

from nestlearn import cli
from nestlearn.data import prepare_data
from nestlearn.data.corpus import split_of
from nestlearn.data.sources import load_corpus
from nestlearn.train import list_checkpoints, train


def _one_train_document(tmp_path):
    """A corpus of one document that the split rule puts in train (validation is empty)."""
    for i in range(50):
        doc = tmp_path / f"corpus{i}" / "one_doc.txt"
        doc.parent.mkdir()
        doc.write_text("the memory of a model learns while it reads. " * 40)
        if split_of(load_corpus([str(doc)])[0]) == "train":
            return doc
    raise AssertionError("no document name landed in train")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_empty_validation_split_is_refused_before_training(tmp_path, capsys):
    doc = _one_train_document(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "debug_cpu", "--quiet", "--out", str(out), "--set", f"data.sources={doc}",
            f"data.cache_dir={tmp_path / 'cache'}", "train.steps=2"]
    assert cli.main(argv) == 2
    err = _one_line_error(capsys)
    assert not (out / "metrics.jsonl").exists()  # refused before the first step
    assert "validation split has 0 tokens" in err and "data.seq_len=64" in err, err


def test_short_validation_split_is_refused_before_training(tmp_path, debug_overrides, capsys,
                                                           cache_dir, corpus):
    data = prepare_data([str(corpus)], tokenizer="byte", cache_dir=str(cache_dir), progress=False)
    n_val = len(data.validation)
    assert len(data.train) > n_val + 1  # the train split is long enough for seq_len = n_val
    out = tmp_path / "run"
    argv = ["train", "debug_cpu", "--quiet", "--out", str(out), "--steps", "1",
            "--set", *debug_overrides, f"data.seq_len={n_val}", "data.batch_size=1"]
    assert cli.main(argv) == 2
    err = _one_line_error(capsys)
    assert not (out / "metrics.jsonl").exists()
    assert f"validation split has {n_val} tokens" in err and f"data.seq_len={n_val}" in err, err


def test_final_checkpoint_and_model_survive_a_failing_final_evaluation(
        tmp_path, debug_overrides, monkeypatch):
    import nestlearn.train.loop as loop

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(loop, "evaluate", broken)
    out = tmp_path / "run"
    config = debug_config(debug_overrides, out, "train.steps=2", "train.eval_every=0",
                          "train.checkpoint_every=0")
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train(config, progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]
    assert (out / "model" / "model.safetensors").is_file()
    monkeypatch.undo()
    again = train(config, progress=False)  # nothing left to train: model/ and the evaluation
    assert again.resumed_from == 2 and again.step == 2 and not again.interrupted
    assert [s for s, _ in again.val_losses] == [2]
    once_more = train(config, progress=False)  # the final evaluation is logged: not repeated
    assert once_more.val_losses == again.val_losses
    lines = (out / "metrics.jsonl").read_text().count("val_loss")
    assert lines == 1


_HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    f = open(sys.argv[1], "a+")
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush()
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, debug_overrides, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["train", "debug_cpu", "--quiet", "--out", str(out), "--steps", "1",
                "--set", *debug_overrides]
        assert cli.main(argv) == 2
        err = _one_line_error(capsys)
        assert f"PID {holder.pid}" in err and str(out) in err, err
        assert not (out / "train_config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(argv) == 0  # the holder died: its lock went with it


def test_the_lock_is_released_on_error(tmp_path, debug_overrides, monkeypatch):
    import nestlearn.train.loop as loop

    def broken(*args, **kwargs):
        raise RuntimeError("step failed")

    out = tmp_path / "run"
    monkeypatch.setattr(loop, "_step", broken)
    with pytest.raises(RuntimeError, match="step failed"):
        train(debug_config(debug_overrides, out, "train.steps=1"), progress=False)
    monkeypatch.undo()
    import fcntl

    with open(out / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: raises BlockingIOError if held
        fcntl.flock(f, fcntl.LOCK_UN)
    assert train(debug_config(debug_overrides, out, "train.steps=1"), progress=False).step == 1
    assert os.path.isfile(out / "model" / "model.safetensors")


def test_a_full_disk_while_writing_the_model_is_one_line(tmp_path, debug_overrides, monkeypatch,
                                                         capsys):
    import errno

    from transformers import PreTrainedModel

    real = PreTrainedModel.save_pretrained

    def full(self, directory, *args, **kwargs):
        if os.path.basename(directory) == "model":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, directory, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "run"
    argv = ["train", "debug_cpu", "--quiet", "--out", str(out), "--steps", "2",
            "--set", *debug_overrides, "train.eval_every=0"]
    assert cli.main(argv) == 2
    err = _one_line_error(capsys)
    assert f"disk full while writing {out / 'model'}" in err, err
    assert f"the final checkpoint {out / 'checkpoints' / 'step-00000002'} is intact" in err, err
    monkeypatch.undo()
    assert cli.main(argv) == 0  # space freed: the same command writes the model
    assert (out / "model" / "model.safetensors").is_file()
