"""An interrupted run resumed from its last checkpoint continues exactly (float64, bitwise)."""

import json

import pytest
from conftest import debug_config

from nestlearn.train import list_checkpoints, train


@pytest.mark.parametrize("mode", ["random", "stream"])
def test_resume_equals_uninterrupted(tmp_path, debug_overrides, mode):
    # 4 x 32 tokens per step: the slow level (512 tokens) updates at steps 4 and 8, i.e. once
    # from gradient sums restored from the checkpoint
    extra = ("train.steps=9", "train.precision=fp64", "train.checkpoint_every=3",
             "data.seq_len=32", "model.cms_periods=[0, 512]", f"data.mode={mode}")
    whole = train(debug_config(debug_overrides, tmp_path / "whole", *extra), progress=False)

    run = tmp_path / "interrupted"
    first = train(debug_config(debug_overrides, run, *extra), progress=False, interrupt_after=5)
    assert first.step == 5 and first.interrupted and first.model_dir is None
    assert [p.name for p in list_checkpoints(run)] == ["step-00000003"]  # steps 4-5 are lost
    resumed = train(debug_config(debug_overrides, run, *extra), progress=False)

    assert resumed.resumed_from == 3 and resumed.step == 9
    assert resumed.losses == whole.losses  # bitwise
    assert resumed.val_losses == whole.val_losses
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged if "loss" in r] == whole.losses  # no duplicated steps 4-5


def test_resume_refuses_a_different_config(tmp_path, debug_overrides):
    run = tmp_path / "run"
    train(debug_config(debug_overrides, run, "train.steps=2"), progress=False)
    with pytest.raises(ValueError, match="optim.lr"):
        train(debug_config(debug_overrides, run, "train.steps=3", "optim.lr=0.1"), progress=False)
    longer = train(debug_config(debug_overrides, run, "train.steps=3"), progress=False)
    assert longer.resumed_from == 2 and len(longer.losses) == 3


def test_activation_checkpointing_gives_the_same_losses(tmp_path, debug_overrides):
    """train.activation_checkpointing=true recomputes blocks in the backward pass: the loss
    curve is the same (float64), and it is a plain bool override."""
    extra = ("train.steps=4", "train.precision=fp64", "data.seq_len=32")
    plain = train(debug_config(debug_overrides, tmp_path / "plain", *extra), progress=False)
    ckpt = train(debug_config(debug_overrides, tmp_path / "ckpt", *extra,
                              "train.activation_checkpointing=true"), progress=False)
    assert len(plain.losses) == 4
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError, match="activation_checkpointing"):
        debug_config(debug_overrides, tmp_path / "bad", "train.activation_checkpointing=3")
