"""The slow CMS level is updated only every P optimizer steps, with its summed gradients."""

import math

import torch
from conftest import debug_config
from safetensors.torch import load_file

from nestlearn.train import build_model, list_checkpoints, slow_levels, train


def test_slow_level_schedule_from_the_config(debug_overrides, tmp_path):
    config = debug_config(debug_overrides, tmp_path)
    model = build_model(config, vocab_size=257)
    (level,) = slow_levels(model, tokens_per_step=4 * 64)  # period 1024 tokens
    assert level.every == 4 and level.name == "cms level 1"
    names = {n for n, _ in level.params}
    assert "model.layers.0.cms.levels.1.w_gate" in names
    assert "model.layers.1.cms.levels.1.norm.weight" in names
    assert not any(".levels.0." in n for n in names)
    assert slow_levels(model, tokens_per_step=4096)[0].every == 1
    transformer = build_model(debug_config(debug_overrides, tmp_path, family="transformer"),
                              vocab_size=257)
    assert slow_levels(transformer, tokens_per_step=256) == []


def test_slow_level_changes_only_every_p_steps(tmp_path, debug_overrides):
    run = tmp_path / "run"
    train(debug_config(debug_overrides, run, "train.steps=9", "train.checkpoint_every=1",
                       "train.keep_checkpoints=20", "optim.warmup_steps=0"), progress=False)
    states = [load_file(p / "model.safetensors") for p in list_checkpoints(run)]
    assert len(states) == 9
    slow = "model.layers.0.cms.levels.1.w_up"
    fast = "model.layers.0.cms.levels.0.w_up"
    for step in range(1, 9):  # states[step - 1] is after `step` steps
        before, after = states[step - 1], states[step]
        changed = not torch.equal(before[slow], after[slow])
        assert changed == ((step + 1) % 4 == 0), f"slow level at step {step + 1}"
        assert not torch.equal(before[fast], after[fast])
        assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])


def test_in_context_level_trains_on_a_stream(tmp_path, debug_overrides):
    """data.mode=stream carries the in-context level's fast weights (detached) into the next
    window; its inner gradient must still be taken there (regression: it raised at step 2)."""
    extra = ["train.steps=3", "train.checkpoint_every=0", "train.eval_every=0",
             "data.mode=stream", "model.cms_hidden_sizes=[64,64,64]",
             "model.cms_periods=[0,16,1024]", "model.cms_inner_lrs=[0.0,0.1,0.0]"]
    result = train(debug_config(debug_overrides, tmp_path / "run", *extra), progress=False)
    assert result.step == 3 and len(result.losses) == 3
    assert all(math.isfinite(x) for x in result.losses)
