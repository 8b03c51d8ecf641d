"""Checkpoints: atomic writes, keep-last-N, safe loading, one-line errors when damaged."""

import pytest
import torch
from conftest import debug_config

from nestlearn import cli
from nestlearn.train import build_model, list_checkpoints, load_checkpoint
from nestlearn.train.checkpoint import CHECKPOINT_DIR, save_checkpoint


@pytest.fixture
def model(debug_overrides, tmp_path):
    return build_model(debug_config(debug_overrides, tmp_path), vocab_size=257)


def test_keeps_the_latest_n(tmp_path, model):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step=step, model=model, state={"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    state = load_checkpoint(list_checkpoints(tmp_path)[-1], model=model)
    assert state == {"step": 4}


def test_crash_while_writing_leaves_no_partial_checkpoint(tmp_path, model, monkeypatch):
    save_checkpoint(tmp_path, step=1, model=model, state={"step": 1}, keep=3)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, step=2, model=model, state={"step": 2}, keep=3)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    root = tmp_path / CHECKPOINT_DIR
    assert not (root / "step-00000002").exists()
    save_checkpoint(tmp_path, step=2, model=model, state={"step": 2}, keep=3)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001", "step-00000002"]


def test_loading_never_unpickles_objects(tmp_path, model):
    path = save_checkpoint(tmp_path, step=1, model=model, state={"step": 1}, keep=1)
    torch.save({"evil": _Pickled()}, path / "training_state.pt")
    with pytest.raises(ValueError, match="corrupt or untrusted checkpoint .*training_state.pt"):
        load_checkpoint(path)


class _Pickled:
    pass


@pytest.mark.parametrize("damage", ["weights", "state", "config"])
def test_corrupt_checkpoint_is_a_one_line_error(trained_run, tmp_path, capsys, damage,
                                                debug_overrides):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "model")  # make eval and resume read the checkpoint
    checkpoint = list_checkpoints(run)[-1]
    file = {"weights": "model.safetensors", "state": "training_state.pt",
            "config": "config.json"}[damage]
    data = (checkpoint / file).read_bytes()
    (checkpoint / file).write_bytes(data[: len(data) // 3])
    if damage == "state":
        argv = ["train", "debug_cpu", "--quiet", "--out", str(run), "--steps", "8",
                "--set", *debug_overrides, "train.checkpoint_every=3"]
    else:
        argv = ["eval", str(checkpoint), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(checkpoint) in err, err
