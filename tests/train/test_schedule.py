"""The slow-level schedule (nestlearn.train.levels) driven by the model hook
``slow_parameter_groups()``: gradients withheld, summed and applied every ``every`` steps."""

import pytest
import torch
from torch import nn

from nestlearn.models.levels import SlowGroup
from nestlearn.models.presets import preset_config, preset_model_class
from nestlearn.train import SlowSchedule, slow_levels


class TwoLevels(nn.Module):
    """A slow level of period 3 steps (``a``), one of period below a step (``b``), a fast ``c``."""

    def __init__(self, tokens_per_step: int) -> None:
        super().__init__()
        self.a, self.b, self.c = (nn.Parameter(torch.zeros(2)) for _ in range(3))
        self.tokens_per_step = tokens_per_step

    def slow_parameter_groups(self):
        return [SlowGroup("a", period=3 * self.tokens_per_step - 1, params=[("a", self.a)]),
                SlowGroup("b", period=self.tokens_per_step // 2, params=[("b", self.b)])]


def test_schedule_withholds_and_applies_sums():
    model = TwoLevels(tokens_per_step=64)
    schedule = SlowSchedule(model, tokens_per_step=64)
    assert schedule.summary() == {"a": 3, "b": 1}
    seen = []
    for step in range(1, 7):
        for p in model.parameters():
            p.grad = torch.full((2,), float(step))
        schedule.step(step)
        seen.append(None if model.a.grad is None else model.a.grad[0].item())
        assert model.b.grad[0].item() == step and model.c.grad[0].item() == step
    assert seen == [None, None, 1 + 2 + 3, None, None, 4 + 5 + 6]
    assert torch.equal(schedule.sums["a"], torch.zeros(2))


def test_schedule_counts_missing_gradients_as_zero():
    model = TwoLevels(tokens_per_step=64)
    schedule = SlowSchedule(model, tokens_per_step=64)
    for step in range(1, 4):
        model.a.grad = torch.ones(2) if step == 2 else None
        schedule.step(step)
    assert torch.equal(model.a.grad, torch.ones(2))


def test_schedule_refuses_parameters_that_are_not_the_models():
    model = TwoLevels(tokens_per_step=64)
    stale = nn.Parameter(torch.zeros(2))
    model.slow_parameter_groups = lambda: [SlowGroup("a", period=64, params=[("a", stale)])]
    with pytest.raises(RuntimeError, match="not the model's"):
        SlowSchedule(model, tokens_per_step=64)


def _tiny(family, **overrides):
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "vocab_size": 64}
    return preset_model_class(family)(preset_config(family, "tiny", **small, **overrides))


def test_hope_slow_groups_come_from_its_config():
    model = _tiny("hope", cms_hidden_sizes=[32, 32, 32], cms_periods=[0, 16, 1024],
                  cms_inner_lrs=[0.0, 0.1, 0.0])
    (group,) = model.slow_parameter_groups()  # level 1 learns in context, level 0 every step
    assert (group.name, group.period) == ("cms level 2", 1024)
    names = {n for n, _ in group.params}
    assert names == {f"model.layers.{i}.cms.levels.2.{w}" for i in range(2)
                     for w in ("w_gate", "w_up", "w_down", "norm.weight")}
    (level,) = slow_levels(model, tokens_per_step=300)
    assert level.every == 4  # ceil(1024 / 300)


@pytest.mark.parametrize("family", ["transformer", "titans"])
def test_models_without_slow_levels(family):
    model = _tiny(family, intermediate_size=64)
    assert model.slow_parameter_groups() == []
    assert SlowSchedule(model, tokens_per_step=64).summary() == {}
