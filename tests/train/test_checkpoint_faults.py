"""Issue 12, case 3: leftovers of killed writers, fallback to the newest intact checkpoint, a full
disk, and a run killed at chosen points of checkpoint writes and pruning, resumed exactly."""

import errno
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import debug_config

from nestlearn import cli
from nestlearn.train import build_model, list_checkpoints, load_checkpoint, train
from nestlearn.train import checkpoint as ckpt
from nestlearn.train.checkpoint import CHECKPOINT_DIR, DiskFullError, save_checkpoint


@pytest.fixture
def model(debug_overrides, tmp_path):
    return build_model(debug_config(debug_overrides, tmp_path), vocab_size=257)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_removed_only_when_their_writer_is_dead(tmp_path, model):
    save_checkpoint(tmp_path, step=1, model=model, state={"step": 1}, keep=5)
    root = tmp_path / CHECKPOINT_DIR
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_tmp = root / f".step-00000002.tmp-{_dead_pid()}"
        dead_old = root / f".step-00000000.old-{_dead_pid()}"
        live_tmp = root / f".step-00000002.tmp-{alive.pid}"
        incomplete = root / "step-00000003"  # e.g. a kill while an older version pruned it
        for folder in (dead_tmp, dead_old, live_tmp, incomplete):
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"x")
        save_checkpoint(tmp_path, step=4, model=model, state={"step": 4}, keep=5)
        assert sorted(p.name for p in root.iterdir()) == [
            live_tmp.name, "step-00000001", "step-00000004"]
    finally:
        alive.kill()
        alive.wait()


def test_a_symlinked_checkpoint_is_pruned(tmp_path, model):
    elsewhere = tmp_path / "elsewhere"
    save_checkpoint(elsewhere, step=1, model=model, state={"step": 1}, keep=1)
    root = tmp_path / "run" / CHECKPOINT_DIR
    root.mkdir(parents=True)
    (root / "step-00000001").symlink_to(elsewhere / CHECKPOINT_DIR / "step-00000001")
    save_checkpoint(tmp_path / "run", step=2, model=model, state={"step": 2}, keep=1)
    save_checkpoint(tmp_path / "run", step=3, model=model, state={"step": 3}, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000003"]
    assert (elsewhere / CHECKPOINT_DIR / "step-00000001" / "meta.json").is_file()  # not followed


def test_resume_falls_back_to_the_newest_intact_checkpoint(trained_run, tmp_path, capsys,
                                                           debug_overrides):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    newest = list_checkpoints(run)[-1]
    assert newest.name == "step-00000006"
    (newest / "model.safetensors").unlink()
    argv = ["train", "debug_cpu", "--quiet", "--out", str(run), "--steps", "8",
            "--set", *debug_overrides, "train.checkpoint_every=3"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert f"note: skipping incomplete checkpoint {newest} (missing model.safetensors)" in err
    assert "(resumed from step 3)" in out
    assert [p.name for p in list_checkpoints(run)][-1] == "step-00000008"


def test_an_untrusted_state_file_is_named_as_such(tmp_path, model):
    path = save_checkpoint(tmp_path, step=1, model=model, state={"step": 1}, keep=1)
    torch.save({"evil": _Pickled()}, path / "training_state.pt")
    with pytest.raises(ValueError, match="corrupt or untrusted checkpoint") as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


class _Pickled:
    pass


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos 4160 vs 4054"),
])
def test_a_full_disk_says_which_checkpoint_is_intact(tmp_path, model, monkeypatch, failure):
    first = save_checkpoint(tmp_path, step=1, model=model, state={"step": 1}, keep=3)

    def full(obj, file, *args, **kwargs):
        open(file, "wb").write(b"partial")
        raise failure

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError) as info:
        save_checkpoint(tmp_path, step=2, model=model, state={"step": 2}, keep=3)
    message = str(info.value)
    assert message.startswith("disk full while writing checkpoint step-00000002")
    assert f"the previous checkpoint {first} is intact" in message and "\n" not in message
    assert [p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()] == ["step-00000001"]


class _Killed(BaseException):
    """A kill -9 at a chosen point: no ``except Exception`` clean-up runs."""


def _fault(monkeypatch, target: str, nth: int) -> None:
    """Kill the process (raise _Killed) at the ``nth`` call of ``target`` in the checkpoint
    writer: mid-way through torch.save, at a directory sync (after the checkpoint's files are
    written, after its rename into place, after a pruned checkpoint's rename), or mid-way
    through deleting a pruned checkpoint; ``enospc``: torch.save finds the disk full."""
    calls = {"n": 0}

    def due() -> bool:
        calls["n"] += 1
        return calls["n"] == nth

    real_save, real_sync, real_rmtree = torch.save, ckpt._fsync_dir, shutil.rmtree

    def save(obj, file, *args, **kwargs):
        if due():
            open(file, "wb").write(b"half a file")
            if target == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise _Killed
        real_save(obj, file, *args, **kwargs)

    def sync(path):
        real_sync(path)
        if due():
            raise _Killed

    def rmtree(path, *args, **kwargs):
        if due():
            next(p for p in sorted(path.iterdir())).unlink()
            raise _Killed
        real_rmtree(path, *args, **kwargs)

    name, patched = {"save": ("save", save), "enospc": ("save", save), "sync": ("sync", sync),
                     "rmtree": ("rmtree", rmtree)}[target]
    if name == "save":
        monkeypatch.setattr(torch, "save", patched)
    elif name == "sync":
        monkeypatch.setattr(ckpt, "_fsync_dir", patched)
    else:
        monkeypatch.setattr(shutil, "rmtree", patched)


# (where the writer is killed, at which call, the checkpoint the next run must resume from);
# checkpoints every 2 steps, the latest 2 kept
FAULTS = [
    ("save", 2, 2),    # step 4's training_state.pt half written
    ("sync", 2, 4),    # step 4 renamed into place, nothing pruned yet
    ("rmtree", 1, 6),  # step 6 saved, step 2 half deleted while pruning
    ("sync", 3, 8),    # step 8 saved, step 4 renamed away for pruning, not yet deleted
    ("enospc", 1, 8),  # step 10: the disk is full
]


def test_killed_checkpoint_writes_and_pruning_resume_exactly(tmp_path, debug_overrides,
                                                              monkeypatch):
    extra = ("train.steps=11", "train.precision=fp64", "train.checkpoint_every=2",
             "train.keep_checkpoints=2", "train.eval_every=0", "data.seq_len=32")
    whole = train(debug_config(debug_overrides, tmp_path / "whole", *extra), progress=False)
    run = tmp_path / "run"
    config = debug_config(debug_overrides, run, *extra)
    resumed_from = 0
    for target, nth, intact in FAULTS:
        _fault(monkeypatch, target, nth)
        expected = DiskFullError if target == "enospc" else _Killed
        with pytest.raises(expected) as info:
            train(config, progress=False)
        monkeypatch.undo()
        if target == "enospc":
            assert f"step-{intact:08d} is intact" in str(info.value)
        newest = list_checkpoints(run)[-1]  # what the next run resumes from
        assert newest.name == f"step-{intact:08d}"
        assert load_checkpoint(newest)["losses"] == whole.losses[:intact]
        resumed_from = intact
    resumed = train(config, progress=False)
    assert resumed.resumed_from == resumed_from and resumed.step == 11
    assert resumed.losses == whole.losses  # bitwise, through five interrupted runs
    root = run / CHECKPOINT_DIR
    assert sorted(p.name for p in root.iterdir()) == ["step-00000010", "step-00000011"]
