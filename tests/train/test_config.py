"""Configs, dotted overrides and recipes."""

import json

import pytest

from nestlearn.train import (
    RECIPES,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    get_recipe,
)


def test_overrides_apply_and_round_trip_through_json():
    config = apply_overrides(get_recipe("debug_cpu"), [
        "train.steps=7", "optim.lr=1e-3", "optim.betas=(0.9, 0.99)", "data.sources=shakespeare",
        "model.hidden_size=48", "optim.kwargs.foreach=False", "data.mode=stream",
        "train.parallel=none", "data.cache_dir=None"])
    assert config.steps == 7 and config.optim.lr == 1e-3 and config.optim.betas == (0.9, 0.99)
    assert config.data.sources == ["shakespeare"] and config.data.mode == "stream"
    assert config.model.overrides["hidden_size"] == 48
    assert config.parallel == "none" and config.data.cache_dir is None
    assert config.optim.kwargs == {"foreach": False}
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config


@pytest.mark.parametrize(("override", "message"), [
    pytest.param("train.steps=abc", "train.steps", id="type"),
    pytest.param("train.stepz=3", "no field 'stepz'", id="unknown-field"),
    pytest.param("trian.steps=3", "unknown section 'trian'", id="unknown-section"),
    pytest.param("steps", "expected section.field=value", id="no-equals"),
    pytest.param("optim.lr=-1", "optim.lr", id="range"),
    pytest.param("data.mode=shuffle", "data.mode", id="choice"),
    pytest.param("model.family=gpt", "model.family", id="family"),
    pytest.param("data.batch_size=6", "train.grad_accum", id="accum"),
])
def test_bad_override_names_the_field(override, message):
    config = get_recipe("debug_cpu")
    config.grad_accum = 4
    with pytest.raises(ValueError, match=message):
        apply_overrides(config if "batch_size" in override else TrainConfig(), [override])


def test_every_recipe_builds_for_every_family():
    from nestlearn.models.presets import FAMILIES

    for name in RECIPES:
        for family in FAMILIES:
            assert get_recipe(name, family=family).model.family == family
    with pytest.raises(ValueError, match="unknown recipe 'huge'"):
        get_recipe("huge")
